"""The ``minimal`` kernel: Debian's ``linux-source-6.1`` with a committed fragment.

Recipe (:func:`build_minimal`):

1. the source is Debian's tarball ``/usr/src/linux-source-6.1.tar.xz``
   (package ``linux-source-6.1``). When it or a build tool is missing,
   ``install`` decides: ``True`` installs the packages with apt-get,
   ``False`` raises :class:`~ingot.errors.BuildError` naming the
   ``apt-get install`` line, and the default (``None``) installs only when
   running as root on a system with apt-get, as the ``debian`` kernel does;
2. the tarball is unpacked once into the cache, keyed by its name, size and
   modification time; that tree is never written to again (every build is
   out of tree, ``make O=...``);
3. ``make ARCH=x86_64 tinyconfig``, then the fragment ``kernel-minimal.config``
   (next to this module) merged with ``scripts/kconfig/merge_config.sh -m``,
   then ``make olddefconfig``;
4. every symbol of the fragment is checked in the final ``.config``: a ``=y``
   that did not stick (a missing dependency, a symbol that does not exist)
   or a "not set" that came back fails the build, naming the symbols;
5. ``make -j<jobs> bzImage``, and ``arch/x86/boot/bzImage`` becomes
   ``<cache>/kernels/minimal-<key>/vmlinuz`` (with the final ``config`` beside it).

The cache key is the sha256, cut to 16 hex digits, of the fragment's bytes,
the source tarball's name and size, and :data:`RECIPE_VERSION`
(:func:`config_hash`). The cache is ``$INGOT_CACHE``, else
``$XDG_CACHE_HOME/ingot`` or ``~/.cache/ingot``: never inside the repository.

Concurrency and crashes: one lock file (``<cache>/locks/kernel-minimal.lock``,
``flock``) serialises builds; a kernel is compiled in ``<cache>/build/`` and
its folder under ``kernels/`` appears by one ``rename`` at the end, so a
killed build never becomes the cached result (the next build wipes it).

Reproducibility: ``KBUILD_BUILD_TIMESTAMP``, ``..._USER``, ``..._HOST`` and
``..._VERSION`` are fixed (:data:`BUILD_ENV`), and the source and build
folders have fixed paths, so two builds of one key give the same bzImage.

Command line: ``python -m ingot.kernel_minimal`` builds (or finds) the kernel
and prints the path of its ``vmlinuz``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BuildError, IngotError

RECIPE_VERSION = "ingot-kernel-minimal/1"
"""Part of the cache key: change it when the recipe above changes."""

FRAGMENT = Path(__file__).with_name("kernel-minimal.config")
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
BUILD_PACKAGES = (SOURCE_PACKAGE, "build-essential", "flex", "bison", "bc", "libelf-dev",
                  "libssl-dev")
BUILD_TOOLS = ("make", "gcc", "ld", "flex", "bison", "bc", "tar", "xz", "perl")
ARCH = "x86_64"
BUILD_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "1970-01-01 00:00:00 UTC",
    "KBUILD_BUILD_USER": "ingot",
    "KBUILD_BUILD_HOST": "ingot",
    "KBUILD_BUILD_VERSION": "1",
    "LC_ALL": "C",
    "TZ": "UTC",
}
"""Fixed for every ``make``: the kernel's version banner and its built-in
initramfs carry no date, user or host of the machine that built it."""

INSTALL_HINT = "apt-get install " + " ".join(BUILD_PACKAGES)

_SET = re.compile(r"CONFIG_([A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# CONFIG_([A-Za-z0-9_]+) is not set")

Progress = Callable[[str], None]


# ---------------------------------------------------------------- fragment


def parse_fragment(text: str) -> dict[str, str]:
    """Symbol (without ``CONFIG_``) -> ``"y"`` or ``"n"`` (``# CONFIG_X is not set``).

    Other ``#`` lines and blank lines are comments. A value other than ``y``,
    a symbol given twice, or any other line is a :class:`BuildError`.
    """
    wanted: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        unset = _UNSET.fullmatch(line)
        if unset:
            name, value = unset.group(1), "n"
        elif not line or line.startswith("#"):
            continue
        else:
            match = _SET.fullmatch(line)
            if not match or match.group(2) != "y":
                raise BuildError(f"{FRAGMENT.name}:{number}: expected 'CONFIG_X=y' or "
                                 f"'# CONFIG_X is not set', got {line!r}",
                                 hint="everything is built in: no =m, no values")
            name, value = match.group(1), "y"
        if name in wanted:
            raise BuildError(f"{FRAGMENT.name}:{number}: CONFIG_{name} is given twice")
        wanted[name] = value
    return wanted


def read_config(text: str) -> dict[str, str]:
    """A kernel ``.config``: symbol -> its value (``"n"`` for "is not set")."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        unset = _UNSET.fullmatch(line)
        if unset:
            found[unset.group(1)] = "n"
            continue
        match = _SET.fullmatch(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def unstuck(wanted: dict[str, str], final: dict[str, str]) -> list[str]:
    """The fragment's symbols whose value did not survive ``make olddefconfig``."""
    bad = []
    for name, value in wanted.items():
        got = final.get(name, "n")
        if value == "y" and got != "y":
            how = "absent (unknown symbol or unmet dependency)" if name not in final \
                else f"={got}" if got != "n" else "not set (unmet dependency)"
            bad.append(f"CONFIG_{name} is {how}")
        elif value == "n" and got not in ("n", ""):
            bad.append(f"CONFIG_{name}={got} (wanted not set; something selects it)")
    return bad


# ---------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$INGOT_CACHE``, else ``$XDG_CACHE_HOME/ingot``, else ``~/.cache/ingot``."""
    base = os.environ.get("INGOT_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "ingot"


def config_hash(fragment: bytes, tarball: Path, size: int | None = None) -> str:
    """sha256 (hex) over the fragment, the tarball's name and size, and the recipe."""
    if size is None:
        size = tarball.stat().st_size
    h = hashlib.sha256()
    for part in (fragment, tarball.name.encode(), str(size).encode(), RECIPE_VERSION.encode()):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def kernel_path(cache_dir: Path, key: str) -> Path:
    """Where the kernel of cache key ``key`` lives: ``kernels/minimal-<key16>/vmlinuz``."""
    return cache_dir / "kernels" / f"minimal-{key[:16]}" / "vmlinuz"


@contextmanager
def _locked(cache_dir: Path, progress: Progress) -> Iterator[None]:
    locks = cache_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / "kernel-minimal.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("      kernel: another build holds the lock; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- source and tools


def _missing() -> list[str]:
    missing = [] if SOURCE_TARBALL.is_file() else [str(SOURCE_TARBALL)]
    return missing + [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]


def ensure_prerequisites(*, install: bool | None = None, progress: Progress = print) -> Path:
    """The source tarball, after checking the build tools (see the module docstring)."""
    missing = _missing()
    if not missing:
        return SOURCE_TARBALL
    may = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if install is False or (install is None and not may):
        raise BuildError("the minimal kernel needs " + ", ".join(missing),
                         hint=f"install them: {INSTALL_HINT} (as root)")
    if not may:
        raise BuildError("cannot install the minimal kernel's build packages: "
                         "that needs root and apt-get", hint=f"as root: {INSTALL_HINT}")
    progress(f"      kernel: installing {' '.join(BUILD_PACKAGES)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q",
                           "--no-install-recommends", *BUILD_PACKAGES],
                          env=env, capture_output=True, text=True)
    missing = _missing()
    if proc.returncode != 0 or missing:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["still missing"]
        raise BuildError(f"apt-get install failed: {tail[0]}",
                         hint="run 'apt-get update' first, or use --kernel debian")
    return SOURCE_TARBALL


def _source_tree(tarball: Path, cache_dir: Path, progress: Progress) -> Path:
    """The unpacked tarball, once per (name, size, mtime); older unpackings are removed."""
    st = tarball.stat()
    stem = tarball.name.split(".tar")[0]
    base = cache_dir / "kernel-src"
    tree = base / f"{stem}-{st.st_size}-{int(st.st_mtime)}"
    if (tree / "Makefile").is_file():
        return tree
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{tree.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    progress(f"      kernel: unpacking {tarball}")
    proc = subprocess.run(["tar", "-x", "-f", str(tarball), "-C", str(tmp)],
                          capture_output=True, text=True)
    tops = [p for p in tmp.iterdir() if p.is_dir()]
    if proc.returncode != 0 or len(tops) != 1 or not (tops[0] / "Makefile").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        why = (proc.stderr.strip().splitlines() or ["not one kernel tree inside"])[-1]
        raise BuildError(f"cannot unpack {tarball}: {why}",
                         hint=f"reinstall it: apt-get install --reinstall {SOURCE_PACKAGE}")
    shutil.rmtree(tree, ignore_errors=True)
    os.rename(tops[0], tree)
    shutil.rmtree(tmp, ignore_errors=True)
    for old in base.glob(f"{stem}-*"):
        if old != tree:
            shutil.rmtree(old, ignore_errors=True)
    return tree


# ---------------------------------------------------------------- build


def _run(cmd: list[str], *, cwd: Path, log: Path, what: str) -> None:
    env = dict(os.environ, **BUILD_ENV)
    for name in ("KCONFIG_CONFIG", "KBUILD_OUTPUT", "O", "ARCH", "CROSS_COMPILE", "MAKEFLAGS"):
        env.pop(name, None)
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-12:]
        raise BuildError(f"minimal kernel: {what} failed (exit {proc.returncode}); "
                         f"the log is {log}:\n  " + "\n  ".join(tail),
                         hint=f"the build needs: {INSTALL_HINT}")


def build_minimal(*, cache_dir: Path | None = None, jobs: int | None = None,
                  progress: Progress = print, install: bool | None = None) -> Path:
    """The path of the cached ``vmlinuz`` (a bzImage) of the minimal kernel.

    Builds it when the cache has none for the current fragment (3 to 10
    minutes on two cores), with ``jobs`` parallel jobs (default: the number
    of CPUs). ``install`` says what to do about a missing source tarball or
    build tool (see the module docstring).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fragment = FRAGMENT.read_bytes()
    wanted = parse_fragment(fragment.decode())
    tarball = ensure_prerequisites(install=install, progress=progress)
    key = config_hash(fragment, tarball)
    target = kernel_path(cache_dir, key)
    if target.is_file():
        return target
    with _locked(cache_dir, progress):
        if target.is_file():  # built by whoever held the lock
            return target
        src = _source_tree(tarball, cache_dir, progress)
        build = cache_dir / "build" / target.parent.name
        shutil.rmtree(build, ignore_errors=True)  # left by a build that died
        build.mkdir(parents=True)
        log = build / "build.log"
        make = ["make", "-C", str(src), f"O={build}", f"ARCH={ARCH}"]
        started = time.monotonic()
        progress(f"      kernel: make tinyconfig + {FRAGMENT.name} (key {key[:16]})")
        _run(make + ["tinyconfig"], cwd=src, log=log, what="make tinyconfig")
        _run([str(src / "scripts" / "kconfig" / "merge_config.sh"), "-m", "-O", str(build),
              str(build / ".config"), str(FRAGMENT)], cwd=src, log=log, what="merge_config.sh")
        _run(make + ["olddefconfig"], cwd=src, log=log, what="make olddefconfig")
        bad = unstuck(wanted, read_config((build / ".config").read_text()))
        if bad:
            raise BuildError(f"{len(bad)} symbol(s) of {FRAGMENT.name} did not stick after "
                             "make olddefconfig: " + "; ".join(bad),
                             hint=f"add their dependencies to {FRAGMENT}, or drop them "
                                  f"(the final config is {build / '.config'})")
        jobs = jobs or os.cpu_count() or 1
        progress(f"      kernel: make -j{jobs} bzImage (3 to 10 minutes on two cores)")
        _run(make + [f"-j{jobs}", "bzImage"], cwd=src, log=log, what="make bzImage")
        image = build / "arch" / "x86" / "boot" / "bzImage"
        if not image.is_file():
            raise BuildError(f"minimal kernel: make gave no {image}", hint=f"see {log}")
        staging = target.parent.with_name(f".{target.parent.name}.tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copyfile(image, staging / "vmlinuz")
        shutil.copyfile(build / ".config", staging / "config")
        shutil.rmtree(target.parent, ignore_errors=True)  # a folder without a vmlinuz
        os.replace(staging, target.parent)
        shutil.rmtree(build, ignore_errors=True)
        spent = time.monotonic() - started
        progress(f"      kernel: built {target} ({target.stat().st_size} bytes, "
                 f"{int(spent) // 60}:{int(spent) % 60:02d})")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingot.kernel_minimal",
        description="Build (or find in the cache) the minimal kernel and print its path.")
    parser.add_argument("--cache-dir", type=Path, help="default: $INGOT_CACHE or ~/.cache/ingot")
    parser.add_argument("-j", "--jobs", type=int, help="parallel make jobs (default: CPUs)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--install", action="store_true", default=None,
                       help="install missing build packages with apt-get")
    group.add_argument("--no-install", dest="install", action="store_false",
                       help="never install; fail naming the packages")
    args = parser.parse_args(argv)
    try:
        path = build_minimal(cache_dir=args.cache_dir, jobs=args.jobs, install=args.install,
                             progress=lambda m: print(m, file=sys.stderr))
    except IngotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
