"""The ``ingot`` command: configure, build, run, inspect, plugins, keygen, sign, verify.

Errors are one line (``ingot: error: ...``) plus a hint, never a traceback,
unless ``--debug`` (or ``INGOT_DEBUG=1``) is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from . import __version__
from .errors import IngotError

BUILD_DIR = Path("_build")
IMAGES_DIR = Path("images")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(message: str) -> None:
    _err(message)


# --------------------------------------------------------------------------
# commands


def cmd_configure(args: argparse.Namespace, extra: list[str]) -> int:
    from . import configure, manifest, plugin

    loaded = manifest.load(args.appliance)
    pm, registry = plugin.load()
    plan = configure.resolve(loaded, args.target, extra, pm, registry)
    out = Path(args.build_dir) / plan.appliance / "plan.toml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".toml.tmp")
    tmp.write_text(configure.plan_toml(plan))
    os.replace(tmp, out)
    print(f"appliance {plan.appliance} for target {plan.target}:")
    for dev in plan.devices:
        keys = " ".join(f"{k}={v!r}" for k, v in dev.keys.items())
        print(f"  device {dev.name:<12} {dev.kind}/{dev.backend}"
              f" (plugin {dev.plugin}){'  ' + keys if keys else ''}")
    for name, value in plan.keys.items():
        print(f"  key    {name:<12} = {value!r}")
    print(f"wrote {out}")
    return 0


def _plan_path(args: argparse.Namespace) -> Path:
    from . import manifest
    from .errors import BuildError

    base = Path(args.build_dir)
    if args.appliance:
        name = manifest.load(args.appliance).appliance.name
        path = base / name / "plan.toml"
        if not path.is_file():
            raise BuildError(f"{args.appliance} is not configured ({path} is missing)",
                             hint=f"run 'ingot configure {args.appliance} --target unix' first")
        return path
    plans = sorted(base.glob("*/plan.toml")) if base.is_dir() else []
    if len(plans) != 1:
        raise BuildError("which appliance? " + (
            "none is configured" if not plans else
            f"{len(plans)} are configured: " + ", ".join(p.parent.name for p in plans)),
            hint="give the appliance folder: 'ingot build appliances/NAME'")
    return plans[0]


def cmd_build(args: argparse.Namespace, extra: list[str]) -> int:
    from .build import build
    from .plan import Plan

    path = _plan_path(args)
    plan = Plan.from_toml(path.read_text(), str(path))
    _progress(f"building {plan.image_name} from {path}")
    result = build(plan, Path(args.output_dir), progress=_progress, kernel=args.kernel)
    print(f"wrote {result.image} ({result.size / 1024:.1f} KiB, {result.files} files)")
    print(f"wrote {result.contents}")
    return 0


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    image = Path(args.image)
    if image.is_dir():
        return _run_vm(image, extra)
    if not image.is_file():
        from .errors import IngotError as E
        raise E(f"no image at {image}", hint="build one with 'ingot build'")
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, str(image), *extra])
    return 0  # pragma: no cover


def _run_vm(folder: Path, extra: list[str]) -> int:
    """A vm or qubes image folder under QEMU; ``--vm-*`` options are QEMU's, the rest keys."""
    from .keys import parse_argv
    from .qemu import Vm

    given, rest = parse_argv(extra)
    vm_opts = {k[3:]: v for k, v in given.items() if k.startswith("vm-")}
    unknown = set(vm_opts) - {"memory", "net", "cmdline", "accel"}
    if unknown:
        from .errors import IngotError as E
        raise E(f"unknown option --vm-{sorted(unknown)[0]}",
                hint="vm options: --vm-memory MiB, --vm-net QEMU-NETDEV (';' between "
                     "several), --vm-cmdline 'ingot.ip=...', --vm-accel tcg|kvm")
    keys = [w for k, v in given.items() if not k.startswith("vm-") for w in (f"--{k}", v)]
    nets = [n for n in vm_opts.get("net", "user").split(";") if n]
    vm = Vm(folder, memory=int(vm_opts.get("memory", "256")), netdevs=nets,
            net=vm_opts.get("cmdline", ""), keys=keys + rest, log="/dev/stdout",
            accel=vm_opts.get("accel", "tcg"))
    import signal

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    vm.start()
    try:
        return vm.wait(timeout=None)
    except KeyboardInterrupt:
        _err("ingot: pressing the VM's power button")
        try:
            return vm.powerdown(timeout=60)
        finally:
            vm.close()
    finally:
        vm.close()


def _read_image(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plan and contents listing of a unix (.pyz), vm/qubes (folder) or oci (.tar) image."""
    from .errors import IngotError as E

    try:
        if path.is_dir():
            from . import cpio
            contents = json.loads((path / "contents.json").read_text())
            entries = {e.path: e for e in cpio.read((path / "initramfs").read_bytes())}
            return json.loads(entries["usr/lib/ingot/_ingot/plan.json"].data), contents
        if path.suffix == ".tar":
            return _read_oci(path)
        with zipfile.ZipFile(path) as zf:
            plan = json.loads(zf.read("_ingot/plan.json"))
            contents = json.loads(zf.read("_ingot/contents.json"))
    except FileNotFoundError as exc:
        raise E(f"no image at {path} ({exc.filename} is missing)",
                hint="build one with 'ingot build'") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise E(f"{path} is not an Ingot image ({exc})") from None
    return plan, contents


def _read_oci(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import gzip
    import io
    import tarfile

    with tarfile.open(path) as outer:
        def blob(digest: str) -> bytes:
            member = outer.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert member is not None
            return member.read()

        index = json.loads(outer.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        layer = gzip.decompress(blob(manifest["layers"][0]["digest"]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        plan_file = inner.extractfile("usr/lib/ingot/_ingot/plan.json")
        contents_file = inner.extractfile("usr/lib/ingot/_ingot/contents.json")
        assert plan_file is not None and contents_file is not None
        return json.loads(plan_file.read()), json.loads(contents_file.read())


def cmd_inspect(args: argparse.Namespace, extra: list[str]) -> int:
    from .sign import signature_state

    path = Path(args.image)
    try:
        plan, contents = _read_image(path)
    except IngotError:
        if path.exists() and not args.json:  # a damaged image: say what its signature says
            print(f"image     {path}")
            print(f"signature: {signature_state(path)}")
        raise
    size = (sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if path.is_dir()
            else path.stat().st_size)
    if args.json:
        print(json.dumps({"plan": plan, "contents": contents, "size": size,
                          "signature": signature_state(path)}, indent=1, sort_keys=True))
        return 0
    print(f"image     {path} ({size / 1024:.1f} KiB{', folder' if path.is_dir() else ''})")
    if contents.get("kernel"):
        print(f"kernel    {contents['kernel']} {contents.get('kernel_release', '')} "
              f"({contents['vmlinuz_size'] / 1024:.1f} KiB), initramfs "
              f"{contents['initramfs_size'] / 1024:.1f} KiB gzip, "
              f"{contents['unpacked_size'] / 1024:.1f} KiB unpacked; modules: "
              + (", ".join(contents.get("kernel_modules", [])) or "none"))
    print(f"signature: {signature_state(path)}")
    print(f"appliance {plan['appliance']} ({plan['main']}), target {plan['target']}, "
          f"python {plan['python']}, ingot {plan['ingot']}")
    print("devices:")
    for dev in plan["devices"]:
        deps = ", ".join(f"{r}={n}" for r, n in dev["deps"].items())
        keys = ", ".join(f"{k}={v!r}" for k, v in dev["keys"].items())
        print(f"  {dev['name']:<12} {dev['kind']}/{dev['backend']} (plugin {dev['plugin']})"
              + (f" deps: {deps}" if deps else "") + (f" keys: {keys}" if keys else ""))
    if plan["keys"]:
        print("baked keys:")
        for k, v in plan["keys"].items():
            print(f"  {k} = {v!r}")
    print("plugins: " + ", ".join(plan["plugins"]))
    files = contents["files"]
    by_kind: dict[str, list[int]] = {}
    for f in files:
        by_kind.setdefault(f["kind"], []).append(f["size"])
    print(f"contents: {len(files)} files, {contents['total_size'] / 1024:.1f} KiB uncompressed")
    for kind, sizes in sorted(by_kind.items()):
        print(f"  {kind:<12} {len(sizes):>5} files {sum(sizes) / 1024:>9.1f} KiB")
    tops: dict[str, int] = {}
    for f in files:
        if f.get("module"):
            top = f["module"].split(".")[0]
            if top == "ingot":
                top = ".".join(f["module"].split(".")[:3])
            tops[top] = tops.get(top, 0) + f["size"]
    print("packages:")
    for top, total in sorted(tops.items()):
        print(f"  {top:<32} {total / 1024:>9.1f} KiB")
    if contents.get("native_packages"):
        print("native: " + ", ".join(contents["native_packages"]))
    print("standard library used: " + ", ".join(contents.get("stdlib", [])))
    if args.files:
        for f in files:
            print(f"  {f['sha256'][:16]} {f['size']:>9} {f['path']}")
    return 0


def cmd_keygen(args: argparse.Namespace, extra: list[str]) -> int:
    from .sign import generate_key

    pair = generate_key(args.path, force=args.force)
    print(f"wrote {pair.private} (private key: keep it secret, mode 0600)")
    print(f"wrote {pair.public} (public key {pair.key_id}: give it to who verifies)")
    return 0


def cmd_sign(args: argparse.Namespace, extra: list[str]) -> int:
    from .sign import sign

    sig = sign(args.image, args.key)
    env = json.loads(sig.read_text())
    print(f"wrote {sig} (key {env['key_id']}, {len(env['statement']['files'])} files)")
    return 0


def cmd_verify(args: argparse.Namespace, extra: list[str]) -> int:
    from .sign import verify

    result = verify(args.image, args.key)
    print(f"signature good: key {result.key_id}, {result.files} files")
    return 0


def cmd_plugins(args: argparse.Namespace, extra: list[str]) -> int:
    from . import plugin

    found = plugin.discover()
    pm, registry = plugin.load()
    by_plugin: dict[str, list[Any]] = {}
    for spec in registry.specs():
        by_plugin.setdefault(spec.plugin, []).append(spec)
    for name in sorted(found):
        module, origin = found[name]
        print(f"{name}  ({module}, {origin})")
        for spec in by_plugin.get(name, []):
            default = f" [default on {', '.join(spec.default_on)}]" if spec.default_on else ""
            print(f"  {spec.kind}/{spec.backend}{default}: {spec.doc}")
            for k in spec.keys:
                print(f"      --<device>-{k.name} {k.type_name.upper()} ({k.stage}): {k.doc}")
        if not by_plugin.get(name):
            print("  (no devices: a library or hook plugin)")
    return 0


# --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ingot", description="Build single-purpose appliances into sealed images.")
    p.add_argument("--version", action="version", version=f"ingot {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("configure", help="resolve an appliance for a target into a plan",
                       description="Resolve APPLIANCE_DIR's manifest for a target; further "
                       "options are --<device> BACKEND and --<key> VALUE.")
    c.add_argument("appliance", metavar="APPLIANCE_DIR")
    c.add_argument("--target", "-t", default="unix", help="unix (default), vm, qubes, oci")
    c.add_argument("--build-dir", default=str(BUILD_DIR), help="where plans go (_build)")
    c.set_defaults(func=cmd_configure, extra_ok=True)

    b = sub.add_parser("build", help="build an image from a configured plan")
    b.add_argument("appliance", metavar="APPLIANCE_DIR", nargs="?")
    b.add_argument("--build-dir", default=str(BUILD_DIR))
    b.add_argument("--output-dir", "-o", default=str(IMAGES_DIR), help="where images go")
    b.add_argument("--kernel", default="debian", choices=("debian", "minimal"),
                   help="vm and qubes targets: Debian's cloud kernel (default) or a minimal "
                        "one built from linux-source-6.1")
    b.set_defaults(func=cmd_build, extra_ok=False)

    r = sub.add_parser("run", help="run an image (further options are its runtime keys)")
    r.add_argument("image", metavar="IMAGE")
    r.set_defaults(func=cmd_run, extra_ok=True)

    i = sub.add_parser("inspect", help="show an image's devices, keys and contents")
    i.add_argument("image", metavar="IMAGE")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--files", action="store_true", help="list every file")
    i.set_defaults(func=cmd_inspect, extra_ok=False)

    k = sub.add_parser("keygen", help="make an Ed25519 key pair for signing images",
                       description="Write a private key to PATH (mode 0600) and its public "
                       "key to PATH.pub.")
    k.add_argument("path", metavar="PATH")
    k.add_argument("--force", action="store_true", help="replace an existing key")
    k.set_defaults(func=cmd_keygen, extra_ok=False)

    s = sub.add_parser("sign", help="sign an image (a file or a folder)",
                       description="Write IMAGE.sig (or IMAGE/signature.json for a folder) "
                       "over the image and its contents listing.")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("--key", required=True, metavar="PRIVATE", help="private key file")
    s.set_defaults(func=cmd_sign, extra_ok=False)

    v = sub.add_parser("verify", help="check an image's signature with a trusted public key",
                       description="Exit 0 when IMAGE is signed by a trusted key and no "
                       "file changed since; 1 with the reason otherwise.")
    v.add_argument("image", metavar="IMAGE")
    v.add_argument("--key", required=True, action="append", metavar="PUBLIC",
                   help="trusted public key file (repeat to trust several)")
    v.set_defaults(func=cmd_verify, extra_ok=False)

    pl = sub.add_parser("plugins", help="list installed plugins and what they provide")
    pl.set_defaults(func=cmd_plugins, extra_ok=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    # 'run IMAGE ...' passes everything after IMAGE to the image untouched
    if "run" in argv:
        idx = argv.index("run")
        if idx + 1 < len(argv) and not argv[idx + 1].startswith("-"):
            args = p.parse_args(argv[: idx + 2])
            extra = argv[idx + 2:]
        else:
            args, extra = p.parse_known_args(argv)
    else:
        args, extra = p.parse_known_args(argv)
    debug = args.debug or os.environ.get("INGOT_DEBUG", "") not in ("", "0")
    if not getattr(args, "command", None):
        p.print_help()
        return 2
    if extra and not args.extra_ok:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra)
    except IngotError as exc:
        if debug:
            raise
        _err(f"ingot: error: {exc.message}")
        if exc.hint:
            _err(f"hint: {exc.hint}")
        return 1
    except KeyboardInterrupt:
        _err("ingot: interrupted")
        return 130
    except BrokenPipeError:  # ingot inspect ... | head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
