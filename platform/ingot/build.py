"""``ingot build``: turn a plan into a sealed image.

The ``unix`` image is one zipapp (``images/<name>-unix.pyz``) holding:

* ``__main__.py``: the bootstrap (seals ``sys.path`` to the image and the
  standard library, unpacks native code once into a cache, calls the runtime);
* every module of the import closure as source plus unchecked hash-based
  bytecode (PEP 552), so start-up compiles nothing and the bytes do not
  depend on file times;
* ``_ingot/plan.json``, data added by plugins under ``_ingot/data/``, native
  packages under ``_ingot/native/`` and ``_ingot/contents.json``.

Next to it, ``images/<name>-unix.contents.json`` lists every file with its
size and sha256. Entries are sorted, timestamps fixed and compression fixed:
the same inputs give a byte-identical image.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import marshal
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import closure as closure_mod
from . import plugin
from .errors import BuildError
from .image import CONTENTS_PATH, NATIVE_PREFIX, PLAN_PATH, ImageWriter
from .plan import Plan

SHEBANG = b"#!/usr/bin/env python3\n"
EPOCH = (1980, 1, 1, 0, 0, 0)

BOOTSTRAP = '''\
"""Bootstrap of an Ingot image (written by 'ingot build')."""
import os
import sys


def _seal():
    """Only the image and the standard library are importable."""
    image = sys.path[0]
    stdlib = os.path.dirname(os.__file__)
    keep = [image]
    for entry in sys.path[1:]:
        if "site-packages" in entry or "dist-packages" in entry:
            continue
        if entry == stdlib or entry.startswith(stdlib + os.sep) or (
                entry.endswith(".zip") and os.path.basename(entry).startswith("python")):
            keep.append(entry)
    sys.path[:] = keep
    for name, mod in list(sys.modules.items()):
        where = getattr(mod, "__file__", None) or ""
        if "site-packages" in where or "dist-packages" in where:
            del sys.modules[name]
    return image


def _natives(image):
    """Unpack native packages once into a content-addressed cache folder."""
    try:
        listing = __loader__.get_data("_ingot/native.json")
    except OSError:
        return
    import json
    import zipfile
    info = json.loads(listing)
    base = os.environ.get("INGOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ingot")
    target = os.path.join(base, "native", info["key"])
    if not os.path.isdir(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".tmp%d" % os.getpid()
        with zipfile.ZipFile(image) as zf:
            for name in info["files"]:
                dest = os.path.join(tmp, name[len("_ingot/native/"):])
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as fh:
                    fh.write(zf.read(name))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; use its copy
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(1, target)


_image = _seal()
_natives(_image)
from ingot.runtime import main  # noqa: E402

sys.exit(main(sys.argv[1:], image=_image))
'''


@dataclass
class BuildResult:
    image: Path
    contents: Path
    size: int
    files: int


def _pyc(source: bytes, path: str) -> bytes:
    """Unchecked hash-based bytecode (PEP 552): no timestamps inside."""
    code = compile(source, path, "exec", dont_inherit=True, optimize=0)
    header = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
    return header + importlib.util.source_hash(source) + marshal.dumps(code)


def _strip(data: bytes, name: str) -> bytes:
    """Native code without its symbol tables (``strip --strip-unneeded``).

    Debug symbols are most of a typical wheel's extension module (uvloop:
    13 MB before, 1.6 MB after). Deterministic; skipped when binutils'
    ``strip`` is not installed or fails (the file is then kept as it is).
    """
    import shutil
    import subprocess

    tool = shutil.which("strip")
    if tool is None:
        return data
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.so"), os.path.join(tmp, "out.so")
        with open(src, "wb") as fh:
            fh.write(data)
        proc = subprocess.run([tool, "--strip-unneeded", "-o", dst, src],
                              capture_output=True)
        if proc.returncode != 0:
            return data
        with open(dst, "rb") as fh:
            return fh.read()


def _zipinfo(name: str, mode: int = 0o644) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=EPOCH)
    zi.compress_type = zipfile.ZIP_DEFLATED
    zi.create_system = 3
    zi.external_attr = (0o100000 | mode) << 16
    return zi


def write_atomic(path: Path, blob: bytes, mode: int = 0o644) -> None:
    """Write ``blob`` to ``path`` through a temporary file and a rename: never half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def roots_of(plan: Plan) -> list[str]:
    """The modules an image starts from."""
    roots = ["ingot.runtime", plan.manifest, plan.main.partition(":")[0]]
    roots += [d.factory.partition(":")[0] for d in plan.devices]
    roots += list(plan.plugins.values())
    roots += list(plan.modules)
    return list(dict.fromkeys(roots))


def prepare(plan: Plan, say: Callable[[str], None], *, include_stdlib: bool = False,
            extra_roots: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
            ) -> tuple[object, closure_mod.Closure, ImageWriter]:
    """Steps 1-3 of every build: plugins, the import closure, the plugins' data."""
    if plan.path_entry and plan.path_entry not in sys.path:
        sys.path.insert(0, plan.path_entry)
    say("[1/4] loading plugins")
    pm, _registry = plugin.load()
    for name, module in plan.plugins.items():
        got = pm.get_plugin(name)
        if got is None or got.__name__ != module:
            raise BuildError(f"plugin {name!r} ({module}) of the plan is not installed",
                             hint="install it, or run 'ingot configure' again")
    say("[2/4] finding the import closure")
    roots = list(dict.fromkeys(roots_of(plan) + list(extra_roots)))
    for root in roots:
        if closure_mod._find(root) is None:
            raise BuildError(f"module {root!r} needed by the plan cannot be found",
                             hint="is the appliance or plugin installed?")
    clo = closure_mod.compute(roots, include_stdlib=include_stdlib, exclude=exclude)
    say(f"      {len(clo.modules)} modules, {len(clo.native)} native packages, "
        f"{len(clo.stdlib)} standard-library packages used")
    say("[3/4] collecting data")
    writer = ImageWriter()
    pm.hook.ingot_image_collect(plan=plan, image=writer)  # type: ignore[attr-defined]
    return pm, clo, writer


def build(plan: Plan, out_dir: Path, *,
          progress: Callable[[str], None] | None = None,
          kernel: str = "debian") -> BuildResult:
    """Build ``plan`` into ``out_dir``; see the module docstring.

    ``kernel`` (``debian`` or ``minimal``) matters on the ``vm`` and ``qubes``
    targets only (:mod:`ingot.kernel`).
    """
    say = progress or (lambda _msg: None)
    if plan.target != "unix":
        from .vmimage import build_target
        return build_target(plan, out_dir, kernel=kernel, progress=say)
    _pm, clo, writer = prepare(plan, say)

    say("[4/4] writing the image")
    entries: dict[str, tuple[bytes, str, str]] = {}  # path -> (bytes, kind, module)

    def add(path: str, data: bytes, kind: str, module: str = "") -> None:
        if path in entries and entries[path][0] != data:
            raise BuildError(f"two different files want the image path {path!r}")
        entries[path] = (data, kind, module)

    add("__main__.py", BOOTSTRAP.encode(), "bootstrap")
    add("__main__.pyc", _pyc(BOOTSTRAP.encode(), "__main__.py"), "bytecode")
    native_files: list[str] = []
    for mod in sorted(clo.modules.values(), key=lambda m: m.name):
        if mod.path is None or mod.origin is None:
            continue
        with open(mod.origin, "rb") as fh:
            data = fh.read()
        top = mod.name.split(".")[0]
        if top in clo.native:
            path = NATIVE_PREFIX + mod.path
            if mod.kind == "extension":
                data = _strip(data, mod.name)
            add(path, data, "native" if mod.kind == "extension" else "module", mod.name)
            native_files.append(path)
            continue
        add(mod.path, data, "module", mod.name)
        if mod.origin.endswith(".py"):
            try:
                add(mod.path + "c", _pyc(data, mod.path), "bytecode", mod.name)
            except SyntaxError as exc:
                raise BuildError(f"{mod.origin}:{exc.lineno}: cannot compile: {exc.msg}") from None
    for path, host in sorted(clo.data.items()):
        with open(host, "rb") as fh:
            data = fh.read()
        if path.split("/")[0] in clo.native:
            add(NATIVE_PREFIX + path, data, "native-data")
            native_files.append(NATIVE_PREFIX + path)
        else:
            add(path, data, "data")
    for path, data in sorted(writer.data.items()):
        add(path, data, "data")
    if native_files:
        native_files.sort()
        key = hashlib.sha256()
        for path in native_files:
            key.update(path.encode() + b"\0" + hashlib.sha256(entries[path][0]).digest())
        listing = {"key": key.hexdigest()[:32], "files": native_files}
        add("_ingot/native.json", json.dumps(listing, sort_keys=True).encode(), "meta")
    add(PLAN_PATH, plan.to_json(for_image=True).encode(), "meta")

    files = [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest(),
              "kind": k, **({"module": m} if m else {})}
             for p, (d, k, m) in sorted(entries.items())]
    contents = {
        "image": plan.image_name, "appliance": plan.appliance, "target": plan.target,
        "python": plan.python, "files": files,
        "total_size": sum(f["size"] for f in files),
        "stdlib": sorted(clo.stdlib), "missing_optional": sorted(clo.missing),
        "native_packages": sorted(clo.native),
    }
    inner = json.dumps(contents, sort_keys=True, indent=1).encode()
    add(CONTENTS_PATH, inner, "meta")

    out_dir.mkdir(parents=True, exist_ok=True)
    image_path = out_dir / f"{plan.image_name}.pyz"
    fd, tmp = tempfile.mkstemp(prefix=f".{plan.image_name}.", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(SHEBANG)
            with zipfile.ZipFile(fh, "w") as zf:
                for path, (data, _kind, _mod) in sorted(entries.items()):
                    zf.writestr(_zipinfo(path), data, compresslevel=9)
        os.chmod(tmp, 0o755)
        os.replace(tmp, image_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    blob = image_path.read_bytes()
    contents["image_size"] = len(blob)
    contents["image_sha256"] = hashlib.sha256(blob).hexdigest()
    contents_path = out_dir / f"{plan.image_name}.contents.json"
    contents_path.write_text(json.dumps(contents, sort_keys=True, indent=1) + "\n")
    return BuildResult(image_path, contents_path, len(blob), len(files))
