"""``ingot build`` for the ``vm``, ``qubes`` and ``oci`` targets: a minimal root.

The root (see :mod:`ingot.rootfs` for its layout) holds only:

* the interpreter (``usr/bin/python3``) and the shared libraries it and the
  closure's extension modules load, found with ``ldd`` on the build host and
  stripped (``strip --strip-unneeded``);
* the import closure *including* the standard library, as unchecked
  hash-based bytecode without sources (the appliance's code too), and the
  standard library's extension modules under ``lib-dynload``;
* the appliance's plan, its data (crunched stores) and the contents listing
  under ``usr/lib/ingot/_ingot/``;
* on VM targets: the kernel modules the appliance needs with their
  dependencies (``modules.dep``), PID 1 (``/init``, :mod:`ingot.init`) and the
  few device nodes the kernel and Python need before devtmpfs is mounted.

No shell, no package manager, no other program. ``vm`` writes
``images/<name>-vm/`` with ``vmlinuz``, ``initramfs`` (gzip cpio),
``cmdline`` (the kernel command line it boots with) and ``contents.json``;
``qubes`` writes the same files as a Qubes VM kernel folder; ``oci`` writes
``images/<name>-oci.tar`` (an OCI image layout). Same inputs, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from . import closure as closure_mod
from . import kernel as kernel_mod
from .build import BuildResult, _pyc, _strip, prepare, write_atomic
from .errors import BuildError
from .plan import Plan
from .rootfs import APP_DIR, Entry, tree

PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
STDLIB_DIR = f"usr/lib/python{PYVER}"
LIB_DIR = "usr/lib"
LOADER = "lib64/ld-linux-x86-64.so.2"
VM_CONFIG = f"{APP_DIR}/_ingot/vm.json"

STARTUP = ("encodings", "encodings.aliases", "encodings.utf_8", "encodings.ascii",
           "encodings.latin_1", "ingot.init", "ingot.runtime")
"""Modules the interpreter and PID 1 need before the appliance's own."""

LEFT_OUT = ("uvloop",)
"""Optional packages a root does not take: the socket stack runs on asyncio's
own loop in a VM or container image, because uvloop needs OpenSSL (5.6 MB
of shared libraries; 3 MB more gzip-compressed initramfs) and the image is
meant to stay under 10 MiB with the minimal kernel."""

DEFAULT_CMDLINE = "console=ttyS0 random.trust_cpu=on panic=-1 quiet"
"""The kernel command line a ``vm`` image is built to boot with: serial
console, the CPU's RNG trusted (Python needs entropy at once), reboot
instead of hanging on a panic, kernel messages above warnings kept off the
console. Runtime keys follow after ``--``."""

INIT_SCRIPT = f"""#!/usr/bin/python3 -IS
import sys
sys.path.insert(0, "/{APP_DIR}")
from ingot.init import main
sys.exit(main(sys.argv[1:]))
"""

ENTRY_SCRIPT = f"""\"\"\"Run the appliance of this root (the entry point when no PID 1 is needed).\"\"\"
import sys
sys.path.insert(0, "/{APP_DIR}")
from ingot.runtime import main
sys.exit(main(sys.argv[1:], image="/{APP_DIR}"))
"""


def _is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def _ldd(path: str) -> list[str]:
    """Host paths of the shared libraries ``path`` loads (the dynamic loader included)."""
    tool = shutil.which("ldd")
    if tool is None:
        raise BuildError("ldd is not installed (it finds the shared libraries to copy)",
                         hint="install Debian's libc-bin")
    proc = subprocess.run([tool, path], capture_output=True, text=True)
    if proc.returncode != 0:
        if "not a dynamic executable" in (proc.stdout + proc.stderr):
            return []
        raise BuildError(f"ldd {path} failed: {(proc.stderr or proc.stdout).strip()}")
    found: list[str] = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            name, _, rest = line.partition("=>")
            target = rest.strip().split(" (")[0].strip()
            if target == "not found":
                raise BuildError(f"{path} needs {name.strip()}, which is not installed")
            if target:
                found.append(target)
        elif line.startswith("/"):
            found.append(line.split(" (")[0])
    return found


class Root:
    """Entries of a root being assembled, with what each one is for the listing."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.kinds: dict[str, tuple[str, str]] = {}

    def add(self, path: str, data: bytes, kind: str, module: str = "", mode: int = 0o644,
            entry_kind: str = "file", rdev: tuple[int, int] = (0, 0)) -> None:
        old = self.entries.get(path)
        if old is not None and old.data != data:
            raise BuildError(f"two different files want the image path /{path}")
        self.entries[path] = Entry(path, entry_kind, mode, data, rdev)
        self.kinds[path] = (kind, module)

    def folder(self, path: str, mode: int = 0o755) -> None:
        self.entries[path] = Entry(path, "dir", mode)
        self.kinds[path] = ("dir", "")

    def listing(self) -> list[dict[str, object]]:
        out = []
        for path, e in sorted(self.entries.items()):
            if e.kind != "file":
                continue
            kind, module = self.kinds[path]
            out.append({"path": path, "size": len(e.data),
                        "sha256": hashlib.sha256(e.data).hexdigest(), "kind": kind,
                        **({"module": module} if module else {})})
        return out


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def assemble(plan: Plan, clo: closure_mod.Closure, data: dict[str, bytes],
             kernel: kernel_mod.Kernel | None, module_names: list[str],
             *, progress: Callable[[str], None] = lambda _m: None) -> tuple[Root, dict]:
    """The root of ``plan`` (``kernel`` None: no PID 1 and no kernel modules, for ``oci``)."""
    root = Root()
    stdlib = sysconfig.get_paths()["stdlib"]
    elves: dict[str, str] = {}  # root path -> host path, to follow with ldd

    python = os.path.realpath(sys.executable)
    root.add("usr/bin/python3", _strip(_read(python), "python3"), "interpreter", mode=0o755)
    elves["usr/bin/python3"] = python
    # the landmarks by which the interpreter finds its prefix (/usr) and lib-dynload
    root.add(f"{STDLIB_DIR}/os.pyc", _pyc(_read(os.path.join(stdlib, "os.py")), "os.py"),
             "bytecode", "os")
    root.folder(f"{STDLIB_DIR}/lib-dynload")

    for mod in sorted(clo.modules.values(), key=lambda m: m.name):
        if mod.path is None or mod.origin is None:
            continue
        src = _read(mod.origin)
        in_stdlib = closure_mod.is_stdlib(mod.name)
        if mod.kind == "extension":
            path = (f"{STDLIB_DIR}/lib-dynload/{os.path.basename(mod.origin)}" if in_stdlib
                    else f"{APP_DIR}/{mod.path}")
            root.add(path, _strip(src, mod.name), "native", mod.name, mode=0o755)
            elves[path] = mod.origin
            continue
        base = STDLIB_DIR if in_stdlib else APP_DIR
        if mod.origin.endswith(".py"):
            try:
                root.add(f"{base}/{mod.path}c", _pyc(src, mod.path), "bytecode", mod.name)
            except SyntaxError as exc:
                raise BuildError(f"{mod.origin}:{exc.lineno}: cannot compile: {exc.msg}") \
                    from None
        else:
            root.add(f"{base}/{mod.path}", src, "module", mod.name)
    for path, host in sorted(clo.data.items()):
        base = STDLIB_DIR if closure_mod.is_stdlib(path.split("/")[0]) else APP_DIR
        blob = _read(host)
        if _is_elf(blob):
            root.add(f"{base}/{path}", _strip(blob, path), "native", mode=0o755)
            elves[f"{base}/{path}"] = host
        else:
            root.add(f"{base}/{path}", blob, "data")
    for path, blob in sorted(data.items()):
        root.add(f"{APP_DIR}/{path}", blob, "data")
    root.add(f"{APP_DIR}/_ingot/plan.json", plan.to_json(for_image=True).encode(), "meta")
    root.add(f"{APP_DIR}/__main__.py", ENTRY_SCRIPT.encode(), "bootstrap")

    progress("      shared libraries")
    libs: dict[str, str] = {}
    for path, host in sorted(elves.items()):
        for lib in _ldd(host):
            libs.setdefault(os.path.basename(lib), lib)
    for name, host in sorted(libs.items()):
        target = LOADER if name == os.path.basename(LOADER) else f"{LIB_DIR}/{name}"
        root.add(target, _strip(_read(os.path.realpath(host)), name), "library", mode=0o755)

    vm: dict[str, object] = {}
    if kernel is not None:
        root.add("init", INIT_SCRIPT.encode(), "init", mode=0o755)
        for node, rdev in (("console", (5, 1)), ("null", (1, 3)), ("urandom", (1, 9))):
            root.add(f"dev/{node}", b"", "device", mode=0o600 if node == "console" else 0o666,
                     entry_kind="chardev", rdev=rdev)
        for folder in ("proc", "sys", "tmp", "run"):
            root.folder(folder, 0o1777 if folder == "tmp" else 0o755)
        order = kernel_mod.modules_in_order(kernel, module_names)
        files = []
        for rel in order:
            assert kernel.modules_dir is not None
            target = f"lib/modules/{kernel.release}/{rel}"
            root.add(target, _read(str(kernel.modules_dir / rel)), "kernel-module",
                     os.path.basename(rel))
            files.append("/" + target)
        vm = {"kernel": kernel.option, "release": kernel.release, "modules": files}
        root.add(VM_CONFIG, json.dumps(vm, sort_keys=True, indent=1).encode(), "meta")
    return root, vm


def contents_of(plan: Plan, root: Root, clo: closure_mod.Closure, extra: dict) -> dict:
    files = root.listing()
    return {
        "image": plan.image_name, "appliance": plan.appliance, "target": plan.target,
        "python": plan.python, "files": files,
        "total_size": sum(int(f["size"]) for f in files),  # type: ignore[call-overload]
        "stdlib": sorted(clo.stdlib | {m.split(".")[0] for m in clo.modules
                                       if closure_mod.is_stdlib(m)}),
        "missing_optional": sorted(clo.missing),
        "native_packages": sorted(n for n in clo.native if not closure_mod.is_stdlib(n)),
        **extra,
    }


def kernel_modules_of(pm: object, plan: Plan, kernel: kernel_mod.Kernel) -> list[str]:
    """Kernel modules the image loads: the base set, then what the plugins ask for."""
    names = list(kernel_mod.BASE_MODULES)
    if plan.target == "qubes":
        names += ["xen_netfront"]
    for extra in pm.hook.ingot_modules_require(plan=plan):  # type: ignore[attr-defined]
        names += list(extra or ())
    return list(dict.fromkeys(names))


def build_target(plan: Plan, out_dir: Path, *, kernel: str = "debian",
                 progress: Callable[[str], None] = lambda _m: None):
    """Build a ``vm``, ``qubes`` or ``oci`` image (see the module docstring)."""
    from . import cpio

    if plan.target not in ("vm", "qubes", "oci"):
        raise BuildError(f"target {plan.target!r} cannot be built",
                         hint="targets: unix, vm, qubes, oci")
    pm, clo, writer = prepare(plan, progress, include_stdlib=True, extra_roots=STARTUP,
                              exclude=LEFT_OUT)
    kern = None
    names: list[str] = []
    if plan.target != "oci":
        progress(f"      kernel: {kernel}")
        kern = kernel_mod.get(kernel, progress=progress)
        names = kernel_modules_of(pm, plan, kern)
    progress("[4/4] writing the image")
    root, vm = assemble(plan, clo, writer.data, kern, names, progress=progress)
    extra: dict[str, object] = {}
    if kern is not None:
        extra = {"kernel": kern.option, "kernel_release": kern.release,
                 "kernel_modules": [os.path.basename(m) for m in vm["modules"]],  # type: ignore
                 "cmdline": DEFAULT_CMDLINE}
    contents = contents_of(plan, root, clo, extra)
    inner = json.dumps(contents, sort_keys=True, indent=1).encode()
    root.add(f"{APP_DIR}/_ingot/contents.json", inner, "meta")
    entries = tree(root.entries)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan.target == "oci":
        from .oci import write_oci
        image = out_dir / f"{plan.image_name}.tar"
        write_oci(entries, image, name=plan.image_name,
                  entrypoint=["/usr/bin/python3", "-IS", f"/{APP_DIR}/__main__.py"])
        blob = image.read_bytes()
        contents["image_size"] = len(blob)
        contents["image_sha256"] = hashlib.sha256(blob).hexdigest()
        listing = out_dir / f"{plan.image_name}.contents.json"
        write_atomic(listing, (json.dumps(contents, sort_keys=True, indent=1) + "\n").encode())
        return BuildResult(image, listing, len(blob), len(contents["files"]))
    assert kern is not None
    folder = out_dir / plan.image_name
    folder.mkdir(parents=True, exist_ok=True)
    initrd = cpio.initramfs(entries)
    vmlinuz = kern.vmlinuz.read_bytes()
    outputs = {"vmlinuz": vmlinuz, "initramfs": initrd, "cmdline": DEFAULT_CMDLINE.encode()
               + b"\n"}
    if plan.target == "qubes":
        # Qubes reads a VM kernel folder's options from this file and appends the VM's
        # kernelopts without a space (so it ends with one); under Xen PVH the console is hvc0.
        outputs["default-kernelopts-common.txt"] = (
            DEFAULT_CMDLINE.replace("console=ttyS0", "console=hvc0") + " \n").encode()
    unpacked = sum(len(e.data) for e in entries)
    contents.update({"image_size": len(vmlinuz) + len(initrd), "initramfs_size": len(initrd),
                     "initramfs_sha256": hashlib.sha256(initrd).hexdigest(),
                     "unpacked_size": unpacked, "vmlinuz_size": len(vmlinuz),
                     "vmlinuz_sha256": hashlib.sha256(vmlinuz).hexdigest()})
    for name, blob in outputs.items():
        write_atomic(folder / name, blob)
    listing = folder / "contents.json"
    write_atomic(listing, (json.dumps(contents, sort_keys=True, indent=1) + "\n").encode())
    (folder / "signature.json").unlink(missing_ok=True)  # an earlier build's signature
    return BuildResult(folder, listing, len(vmlinuz) + len(initrd), len(entries))
