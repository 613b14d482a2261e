"""``ingot configure``: resolve a manifest for a target into a :class:`Plan`.

Resolution, in order:

1. load the manifest; the target must be one it supports;
2. the device list: the ambient kinds (unless ``ambient=False``) then the
   manifest's devices; each gets a backend from ``--<device> BACKEND``, else
   the manifest's default for the target, else the registry's default for
   the kind on the target; the backend must support the target;
3. what backends ``require`` is added as further devices (an existing device
   of that kind is reused when there is exactly one);
4. options left are keys: appliance keys ``--name``, backend keys
   ``--<device>-<key>`` and platform keys; build keys must end up with a
   value, runtime keys given here become the image's defaults;
5. devices are put in dependency order, plugins consulted
   (``ingot_plan_validate``), and the plan returned.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from . import __version__, manifest as manifest_mod
from .errors import ConfigureError, KeyValueError, ManifestError
from .keys import PLATFORM_KEYS, Key, parse_argv
from .plan import Plan, PlannedDevice
from .plugin import plugin_module
from .registry import TARGETS, DeviceSpec, Registry, device_key_name


@dataclass
class _Dev:
    name: str
    kind: str
    spec: DeviceSpec
    deps: dict[str, str]
    origin: str  # "ambient", "manifest" or "required by <device>"


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _kind_of(signature: type, registry: Registry, where: str) -> str:
    for kind, cls in registry.kinds.items():
        if cls is signature:
            return kind
    raise ManifestError(f"{where}: {getattr(signature, '__name__', signature)!r} is not a "
                        "device signature", hint="use a Protocol from ingot.signatures "
                        "(or a kind a plugin declares)")


def _choose(name: str, kind: str, target: str, options: dict[str, str],
            manifest_default: str | None, registry: Registry) -> DeviceSpec:
    flag = _flag(name)
    if flag in options:
        backend = options.pop(flag)
        try:
            spec = registry.get(kind, backend)
        except Exception as exc:  # RegistryError: re-worded with the device name
            raise ConfigureError(f"--{flag}: {exc}", hint=getattr(exc, "hint", None)) from None
    elif manifest_default:
        try:
            spec = registry.get(kind, manifest_default)
        except Exception as exc:
            raise ConfigureError(
                f"the manifest's default backend for device {name!r} is "
                f"{manifest_default!r}, which is not registered",
                hint=getattr(exc, "hint", None)) from None
    else:
        found = registry.default(kind, target)
        if found is None:
            raise ConfigureError(
                f"device {name!r}: no default {kind} backend on target {target!r}",
                hint=f"choose one with --{flag} BACKEND (available: "
                + (", ".join(registry.backends(kind)) or "none") + ")")
        spec = found
    if target not in spec.targets:
        raise ConfigureError(
            f"device {name!r}: backend {spec.backend!r} does not work on target {target!r} "
            f"(only {', '.join(spec.targets)})",
            hint=f"choose another with --{flag} BACKEND")
    return spec


def resolve(loaded: manifest_mod.Loaded, target: str, argv: Sequence[str],
            pm: pluggy.PluginManager, registry: Registry) -> Plan:
    """Resolve a loaded manifest into a plan (see the module docstring)."""
    app = loaded.appliance
    if target not in TARGETS:
        raise ConfigureError(f"unknown target {target!r}", hint="targets: " + ", ".join(TARGETS))
    if target not in app.targets:
        raise ConfigureError(f"appliance {app.name!r} does not support target {target!r}",
                             hint="it supports: " + ", ".join(app.targets))
    options = parse_argv(list(argv))
    values, rest = options
    if rest:
        raise ConfigureError(f"unexpected argument {rest[0]!r}",
                             hint="options are --device BACKEND and --key VALUE")
    opts = dict(values)

    devices: list[_Dev] = []
    requests: list[tuple[str, str, str | None, str]] = []
    declared = {d.name for d in app.devices}
    if app.ambient:
        for kind in ("mclock", "pclock", "sleep", "random"):
            if kind not in declared:
                requests.append((kind, kind, None, "ambient"))
    for req in app.devices:
        kind = _kind_of(req.signature, registry, f"appliance {app.name!r}, device {req.name!r}")
        requests.append((req.name, kind, req.default.get(target), "manifest"))
    for name, kind, default, origin in requests:
        spec = _choose(name, kind, target, opts, default, registry)
        devices.append(_Dev(name, kind, spec, {}, origin))

    # what backends require, breadth first; reuse a single existing device of that kind
    i = 0
    while i < len(devices):
        dev = devices[i]
        for role, kind in dev.spec.requires:
            same = [d for d in devices if d.kind == kind and d is not dev]
            if len(same) == 1:
                dev.deps[role] = same[0].name
                continue
            # named after its role (--net tap) unless that name is taken
            sub = role if not any(d.name == role for d in devices) else f"{dev.name}_{role}"
            if not any(d.name == sub for d in devices):
                spec = _choose(sub, kind, target, opts, None, registry)
                devices.append(_Dev(sub, kind, spec, {}, f"required by {dev.name}"))
            dev.deps[role] = sub
        i += 1

    # keys
    app_keys: dict[str, Key] = {}
    for k in list(PLATFORM_KEYS) + list(app.keys):
        app_keys[k.name] = k
    dev_keys: dict[str, tuple[_Dev, Key]] = {}
    for dev in devices:
        for k in dev.spec.keys:
            full = device_key_name(dev.name, k.name)
            if full in app_keys or full in dev_keys:
                raise ConfigureError(f"key --{full} is declared twice (device {dev.name!r} "
                                     "and the appliance or another device)")
            dev_keys[full] = (dev, k)
    unknown = [n for n in opts if n not in app_keys and n not in dev_keys]
    if unknown:
        known = sorted(["--" + n for n in app_keys] + ["--" + n for n in dev_keys]
                       + ["--" + _flag(d.name) for d in devices])
        raise KeyValueError(f"unknown option --{unknown[0]} for appliance {app.name!r}",
                            hint="known options: " + " ".join(known))

    def value_of(full: str, k: Key, into: dict[str, Any], short: str) -> None:
        if full in opts:
            into[short] = _plain(k, k.parse(opts[full], "ingot configure"))
        elif k.stage == "build":
            if k.required:
                raise KeyValueError(f"missing build key --{full}",
                                    hint=f"give it to 'ingot configure': {k.doc}")
            into[short] = _plain(k, k.check(k.default))

    plan_keys: dict[str, Any] = {}
    for name, k in app_keys.items():
        value_of(name, k, plan_keys, name)
    planned: dict[str, PlannedDevice] = {}
    for dev in devices:
        pd = PlannedDevice(dev.name, dev.kind, dev.spec.backend, dev.spec.plugin,
                           dev.spec.factory, {}, dict(dev.deps))
        for k in dev.spec.keys:
            value_of(device_key_name(dev.name, k.name), k, pd.keys, k.name)
        planned[dev.name] = pd

    ordered = _order(devices, planned)
    plugins: dict[str, str] = {}
    for dev in devices:
        plugins[dev.spec.plugin] = plugin_module(pm, dev.spec.plugin)
    for name in app.plugins:
        try:
            plugins[name] = plugin_module(pm, name)
        except Exception:
            raise ConfigureError(f"appliance {app.name!r} needs plugin {name!r}, which is "
                                 "not installed", hint="'ingot plugins' lists what is") from None
    modules = sorted({m for d in devices for m in d.spec.modules} | set(app.modules))
    plan = Plan(appliance=app.name, target=target, package=loaded.package,
                main=loaded.main_ref, manifest=loaded.manifest_module, devices=ordered,
                keys=plan_keys, plugins=dict(sorted(plugins.items())), modules=modules,
                source=str(loaded.directory), path_entry=loaded.path_entry or "",
                python=f"{sys.version_info.major}.{sys.version_info.minor}", ingot=__version__)
    problems = [p for result in pm.hook.ingot_plan_validate(plan=plan) for p in (result or [])]
    if problems:
        raise ConfigureError(problems[0], hint=("; ".join(problems[1:]) or None))
    return plan


def _plain(k: Key, value: Any) -> Any:
    """A value as it is stored in a plan (TOML/JSON types)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, list):
        return [str(v) for v in value]
    return k.to_text(value)


def _order(devices: list[_Dev], planned: dict[str, PlannedDevice]) -> list[PlannedDevice]:
    """Dependencies first, otherwise in declaration order; a cycle is an error."""
    out: list[PlannedDevice] = []
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ConfigureError("device dependency cycle: " + " -> ".join(path + (name,)))
        state[name] = 1
        for dep in planned[name].deps.values():
            visit(dep, path + (name,))
        state[name] = 2
        out.append(planned[name])

    for dev in devices:
        visit(dev.name, ())
    return out


def plan_toml(plan: Plan) -> str:
    """The plan as the readable TOML file ``ingot configure`` writes."""
    import tomli_w

    header = (f"# Build plan of appliance {plan.appliance!r} for target {plan.target!r}.\n"
              "# Written by 'ingot configure'; read by 'ingot build'. Review it; rerun\n"
              "# 'ingot configure' rather than editing it by hand.\n\n")
    return header + tomli_w.dumps(_toml_safe(plan.to_dict()))


def _toml_safe(value: Any) -> Any:
    """TOML has no null: drop None values from tables (absent means default)."""
    if isinstance(value, dict):
        return {k: _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_toml_safe(v) for v in value]
    return value
