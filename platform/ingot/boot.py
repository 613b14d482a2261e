"""The boot sequence behind :mod:`ingot.runtime` (see there for the order and exit codes)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types
from collections.abc import Mapping
from typing import Any

from . import log as logmod
from .errors import BootError, IngotError, KeyValueError
from .keys import PLATFORM_KEYS, Key, parse_argv, resolve
from .plan import Plan
from .registry import DeviceContext, DeviceSpec, device_key_name

EXIT_OK, EXIT_FAILED, EXIT_BOOT = 0, 1, 2


def _import(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


class Booted:
    """The state of a booted image: plan, keys, plugins and devices."""

    def __init__(self, plan: Plan, image: str | None, log: logmod.Logger) -> None:
        self.plan = plan
        self.image = image
        self.log = log
        self.pm: Any = None
        self.specs: dict[str, DeviceSpec] = {}
        self.devices: dict[str, Any] = {}
        self.keys: dict[str, Any] = {}
        self.device_keys: dict[str, dict[str, Any]] = {}

    # -- keys ------------------------------------------------------------
    def all_keys(self) -> tuple[list[Key], dict[str, tuple[str, Key]]]:
        manifest = importlib.import_module(self.plan.manifest).appliance
        app_keys = list(PLATFORM_KEYS) + list(manifest.keys)
        dev_keys: dict[str, tuple[str, Key]] = {}
        for dev in self.plan.devices:
            for k in self.specs[dev.name].keys:
                dev_keys[device_key_name(dev.name, k.name)] = (dev.name, k)
        return app_keys, dev_keys

    def parse_keys(self, argv: list[str], env: Mapping[str, str],
                   extra: Mapping[str, str] | None = None) -> None:
        given, rest = parse_argv(argv)
        if rest:
            raise KeyValueError(f"unexpected argument {rest[0]!r}",
                                hint="runtime keys are given as --name value; see --help")
        app_keys, dev_keys = self.all_keys()
        by_name = {k.name: k for k in app_keys}
        for name in given:
            k = by_name.get(name) or (dev_keys[name][1] if name in dev_keys else None)
            if k is None:
                raise KeyValueError(f"unknown key --{name}",
                                    hint=f"'{self.image_hint()} --help' lists the keys")
            if k.stage == "build":
                raise KeyValueError(f"--{name} is a build key, fixed when the image was "
                                    "configured", hint="run 'ingot configure' with it and rebuild")
        runtime_app = [k for k in app_keys if k.stage == "runtime"]
        self.keys = resolve(runtime_app, given, env, self.plan.keys, extra_sources=extra)
        for k in app_keys:
            if k.stage == "build":
                self.keys[k.name] = self.plan.keys.get(k.name, k.default)
        for dev in self.plan.devices:
            spec = self.specs[dev.name]
            renamed = [_rename(k, device_key_name(dev.name, k.name)) for k in spec.keys
                       if k.stage == "runtime"]
            baked = {device_key_name(dev.name, n): v for n, v in dev.keys.items()}
            full = resolve(renamed, given, env, baked, extra_sources=extra,
                           context=f" (device {dev.name!r}, {dev.kind}/{dev.backend})")
            values = {k.name: full[device_key_name(dev.name, k.name)]
                      for k in spec.keys if k.stage == "runtime"}
            for k in spec.keys:
                if k.stage == "build":
                    values[k.name] = dev.keys.get(k.name, k.default)
            self.device_keys[dev.name] = values

    def image_hint(self) -> str:
        return f"python3 {os.path.basename(self.image)}" if self.image else "the image"

    def help_text(self) -> str:
        app_keys, dev_keys = self.all_keys()
        lines = [f"{self.plan.image_name}: {importlib.import_module(self.plan.manifest).appliance.doc}",
                 "", "runtime keys (also INGOT_<NAME> in the environment):"]
        rows = [(k, self.plan.keys.get(k.name)) for k in app_keys]
        for dev in self.plan.devices:
            for k in self.specs[dev.name].keys:
                rows.append((_rename(k, device_key_name(dev.name, k.name)),
                             dev.keys.get(k.name)))
        for k, baked in rows:
            if k.stage != "runtime":
                continue
            value = baked if baked is not None else (None if k.required else k.default)
            shown = "required" if value is None and k.required else f"default {value!r}"
            if k.secret and value is not None:
                shown = "default set"
            lines.append(f"  --{k.name} {k.type_name.upper()}  {k.doc} ({shown})")
        return "\n".join(lines)

    # -- devices ---------------------------------------------------------
    async def connect(self) -> None:
        from .image import DirData

        for dev in self.plan.devices:
            spec = self.specs[dev.name]
            data = None
            if self.image is not None:
                data = (DirData(os.path.join(self.image, "_ingot", "data", dev.name))
                        if os.path.isdir(self.image) else _LazyZipData(self.image, dev.name))
            ctx = DeviceContext(name=dev.name, kind=dev.kind, backend=dev.backend,
                                target=self.plan.target, keys=self.device_keys[dev.name],
                                deps={role: self.devices[n] for role, n in dev.deps.items()},
                                data=data, log=self.log.child(dev.name))
            try:
                factory = _import(spec.factory)
                device = factory(ctx)
                if inspect.isawaitable(device):
                    device = await device
            except Exception as exc:  # noqa: BLE001 - one line naming the device
                flags = " ".join("--" + device_key_name(dev.name, k.name) for k in spec.keys)
                raise BootError(
                    f"device {dev.name!r} ({dev.kind}/{dev.backend}) failed to connect: "
                    f"{_describe(exc)}",
                    hint=(f"it is configured by {flags}" if flags else
                          f"choose another backend with 'ingot configure "
                          f"--{dev.name.replace('_', '-')} BACKEND'")) from exc
            self.devices[dev.name] = device
            self.log.info("device connected", device=dev.name, kind=dev.kind,
                          backend=dev.backend)
            self.pm.hook.ingot_device_connected(name=dev.name, spec=spec, device=device)

    async def close(self) -> None:
        for name in reversed(list(self.devices)):
            device = self.devices.pop(name)
            close = getattr(device, "close", None)
            if close is None:
                continue
            try:
                result = close()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - close never stops the shutdown
                self.log.warning("device close failed", device=name, error=_describe(exc))

    def construct(self) -> Any:
        cls = _import(self.plan.main)
        params = inspect.signature(cls).parameters
        namespace = types.SimpleNamespace(
            **{n.replace("-", "_"): v for n, v in self.keys.items()})
        available: dict[str, Any] = dict(self.devices)
        available["keys"] = namespace
        available["log"] = self.log.child(self.plan.appliance)
        kwargs = {}
        for pname, param in params.items():
            if pname in available:
                kwargs[pname] = available[pname]
            elif param.default is inspect.Parameter.empty and param.kind in (
                    param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                raise BootError(f"{self.plan.main}: constructor parameter {pname!r} is not a "
                                "device of the plan, 'keys' or 'log'",
                                hint="name constructor parameters after the manifest's devices")
        try:
            return cls(**kwargs)
        except Exception as exc:  # noqa: BLE001 - e.g. a key value the appliance rejects
            import traceback
            for line in traceback.format_exception(exc):
                for sub in line.rstrip().splitlines():
                    self.log.debug("traceback", line=sub)
            raise BootError(f"appliance {self.plan.appliance!r} cannot start: {_describe(exc)}",
                            hint="check its keys (run the image with --help)") from exc


class _LazyZipData:
    """Opens the image's zip only when a device reads its data."""

    def __init__(self, archive: str, device: str) -> None:
        self._archive = archive
        self._device = device
        self._real: Any = None

    def _get(self) -> Any:
        if self._real is None:
            from .image import ZipData
            self._real = ZipData(self._archive, self._device)
        return self._real

    def paths(self) -> list[str]:
        return self._get().paths()

    def read(self, path: str) -> bytes:
        return self._get().read(path)

    def info(self, path: str) -> tuple[int, str]:
        return self._get().info(path)


def _rename(k: Key, name: str) -> Key:
    from dataclasses import replace
    return replace(k, name=name)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, (OSError, IngotError)) or type(exc).__module__.startswith("ingot"):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _serve(booted: Booted) -> int:
    import asyncio
    import signal

    log = booted.log
    guard = _sandbox_guard(booted)
    try:
        await booted.connect()
        app = booted.construct()
        early = guard is not None and not _sandbox().has_ready(app)
        if early:  # no readiness signal: sandboxed before start() (docs/sandbox.md)
            _install(guard, log, "before start")
    except BaseException:
        await booted.close()
        raise
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(app.start())
    stop_signal: list[str] = []

    def on_signal(name: str) -> None:
        stop_signal.append(name)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass
    log.info("appliance started", appliance=booted.plan.appliance)
    code = EXIT_OK
    try:
        if guard is not None and not early and await _sandbox().when_ready(app, task):
            _install(guard, log, "ready")
        await task
        log.info("appliance finished", appliance=booted.plan.appliance)
    except BootError as exc:  # the sandbox could not be installed: never run without it
        log.error(exc.message, **({"hint": exc.hint} if exc.hint else {}))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        code = EXIT_BOOT
    except asyncio.CancelledError:
        if stop_signal:
            log.info("stopping", signal=stop_signal[0])
        else:
            raise
    except Exception as exc:  # noqa: BLE001 - the appliance failed: one line, exit 1
        log.error("appliance failed", error=_describe(exc))
        import traceback
        for line in traceback.format_exception(exc):
            for sub in line.rstrip().splitlines():
                log.debug("traceback", line=sub)
        code = EXIT_FAILED
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover
                pass
        await booted.close()
    booted.pm.hook.ingot_appliance_stopped(plan=booted.plan, exit_code=code)
    log.info("stopped", exit_code=code)
    return code


def _sandbox() -> Any:
    from . import sandbox

    return sandbox


def _sandbox_guard(booted: Booted) -> Any:
    """The ``--sandbox``/``--user`` guard, checked before any device connects; or None."""
    mode, user = booted.keys.get("sandbox", "off"), booted.keys.get("user", "")
    if mode == "off" and not user:
        return None
    try:
        sandbox = _sandbox()
    except ImportError:  # a closure of module-level imports only (the vm target)
        raise BootError("sandbox: --sandbox and --user are not in this image",
                        hint="they work on the unix target; run with --sandbox off") from None
    extra: list[str] = []
    if mode != "off":
        for names in booted.pm.hook.ingot_sandbox_syscalls(plan=booted.plan):
            extra.extend(names or ())
    try:
        return sandbox.Guard.prepare(mode, user, extra)
    except sandbox.SandboxError as exc:
        raise BootError(f"sandbox: {exc.message}", hint=exc.hint) from None


def _install(guard: Any, log: logmod.Logger, when: str) -> None:
    sandbox = _sandbox()
    try:
        guard.install(log, when)
    except (sandbox.SandboxError, OSError) as exc:
        raise BootError(f"sandbox: {getattr(exc, 'message', None) or exc}",
                        hint=getattr(exc, "hint", "")) from None


def run(raw_plan: dict[str, Any], argv: list[str], image: str | None,
        env: Mapping[str, str], log: logmod.Logger) -> int:
    """Everything after the first log line; returns the exit code."""
    try:
        plan = Plan.from_dict(raw_plan)
    except IngotError as exc:
        log.error("cannot read the plan", error=exc.message)
        return EXIT_BOOT
    booted = Booted(plan, image, log)
    try:
        from . import plugin

        booted.pm, registry = plugin.load(plan.plugins)
        for dev in plan.devices:
            booted.specs[dev.name] = registry.get(dev.kind, dev.backend)
        if "--help" in argv or "-h" in argv:
            print(booted.help_text())
            return EXIT_OK
        booted.parse_keys(argv, env)
        logmod.SINK.set_level(booted.keys.get("log-level", "info"))
        shown = {n: ("<secret>" if _is_secret(booted, n) else v) for n, v in booted.keys.items()}
        log.debug("keys", **{n.replace("-", "_"): v for n, v in shown.items()})
    except IngotError as exc:
        log.error(exc.message, **({"hint": exc.hint} if exc.hint else {}))
        return EXIT_BOOT
    import asyncio

    factory = booted.pm.hook.ingot_loop_select(plan=plan, device_keys=booted.device_keys)
    if factory is not None and (booted.keys.get("sandbox", "off") != "off"
                                or booted.keys.get("user")):
        # libuv's io_uring escapes seccomp and keeps root's credentials: docs/sandbox.md
        log.info("sandboxed: running on asyncio's loop, not the one a plugin chose")
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_serve(booted))
    except BootError as exc:
        log.error(exc.message, **({"hint": exc.hint} if exc.hint else {}))
        return EXIT_BOOT
    except KeyboardInterrupt:  # a second ^C while closing
        return EXIT_FAILED


def _is_secret(booted: Booted, name: str) -> bool:
    app_keys, _ = booted.all_keys()
    return any(k.name == name and k.secret for k in app_keys)
