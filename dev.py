#!/usr/bin/env python3
"""Set up and run Ingot on a fresh machine with only python3 on it.

    python3 dev.py demo     build the DNS appliance, run it, query it, stop it
    python3 dev.py hello    build the hello appliance and run it
    python3 dev.py test     run the whole test suite (pytest arguments may follow)
    python3 dev.py bench    run the benchmarks (tests/bench)
    python3 dev.py setup    only create .venv and install Ingot into it

Everything goes into .venv beside this file. When run as root on Debian,
the system packages the tests need (.ci/debian-packages.txt) are installed
with apt-get first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".ingot-installed"


def run(*cmd: str | os.PathLike[str], check: bool = True, **kw) -> int:
    print("+ " + " ".join(map(str, cmd)), flush=True)
    rc = subprocess.call([str(c) for c in cmd], **kw)
    if check and rc:
        sys.exit(rc)
    return rc


def debian_packages() -> None:
    lines = (ROOT / ".ci" / "debian-packages.txt").read_text().splitlines()
    wanted = [word for line in lines for word in line.partition("#")[0].split()]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    missing = [p for p in wanted
               if subprocess.call(["dpkg", "-s", p], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) != 0]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run("apt-get", "update", "-q", env=env)
    run("apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "-q",
        "--no-install-recommends", *missing, env=env)


def setup(extras: str = "test,fast") -> None:
    if not PY.exists():
        run(sys.executable, "-m", "venv", VENV)
    inputs = (ROOT / "pyproject.toml").read_bytes() + extras.encode()
    if STAMP.exists() and STAMP.read_bytes() == inputs:
        return
    run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extras}]")
    STAMP.write_bytes(inputs)


def ingot(*args: str) -> None:
    run(VENV / "bin" / "ingot", *args, cwd=ROOT)


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "demo"
    if what == "setup":
        setup()
    elif what == "demo":
        setup()
        return run(PY, ROOT / "tests" / "demo_dns.py", *argv[1:], check=False, cwd=ROOT)
    elif what == "hello":
        setup()
        ingot("configure", "appliances/hello", "--target", "unix")
        ingot("build", "appliances/hello")
        ingot("inspect", "images/hello-unix.pyz")
        return run(PY, ROOT / "images" / "hello-unix.pyz", *argv[1:], check=False, cwd=ROOT)
    elif what == "test":
        debian_packages()
        setup()
        rc = run(PY, "-m", "pytest", *(argv[1:] or ["tests"]), check=False, cwd=ROOT)
        return rc
    elif what == "bench":
        setup()
        return run(PY, ROOT / "tests" / "bench" / "run.py", *argv[1:], check=False, cwd=ROOT)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
