"""Shared fixtures: run the `ingot` CLI and built images as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (reproducible failures, no flaky CI)
# and have no deadline (a loaded 2-core machine is slow at times); HYPOTHESIS_PROFILE=explore
# draws new examples each run.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["ingot.testing.pytest_netns", "tests.interop.mail_harness",
                  "tests.interop.vpn_harness"]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in (self.out + self.err).splitlines() if line.strip()]


class Cli:
    """Runs ``python -m ingot.cli`` with its own working folder (for _build/ and images/)."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("INGOT_DEBUG", None)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> Result:
        proc = subprocess.run([sys.executable, "-m", "ingot.cli", *map(str, args)],
                              cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and res.rc != 0:
            raise AssertionError(f"ingot {' '.join(map(str, args))} failed ({res.rc}):\n"
                                 f"{res.out}\n{res.err}")
        return res

    def image(self, name: str) -> Path:
        return self.cwd / "images" / f"{name}.pyz"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    return Cli(work)


def run_image(image: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
              python: str = sys.executable) -> Result:
    proc = subprocess.run([python, str(image), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def appliances() -> Path:
    return ROOT / "appliances"
