"""A plugin package from outside the tree, installed into a fresh venv with pip,
provides a new device kind and a backend; an out-of-tree appliance uses it;
the image runs on a Python that has neither installed."""

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Cli, run_image

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "ingot-fortune"
version = "1.0"

[project.entry-points."ingot.plugins"]
fortune = "ingot_fortune"

[tool.setuptools]
py-modules = ["ingot_fortune", "ingot_fortune_device"]
"""

PLUGIN = '''
"""Fortunes: a device kind of its own, with one backend."""
from typing import Protocol

import ingot
from ingot.keys import key
from ingot.registry import DeviceSpec


class Fortune(Protocol):
    """Hands out sayings."""

    def next(self) -> str:
        """The next saying."""
        ...


@ingot.hookimpl
def ingot_kinds_register():
    return {"fortune": Fortune}


@ingot.hookimpl
def ingot_devices_register():
    return [DeviceSpec("fortune", "cookie", "ingot_fortune_device:connect",
                       "Sayings from a list", default_on=("unix",),
                       keys=(key("sayings", list, "Comma-separated sayings", ["fortune"]),))]


@ingot.hookimpl
def ingot_device_connected(name, spec, device):
    print(f"fortune plugin saw device {name} ({spec.kind}/{spec.backend})", flush=True)
'''

DEVICE = '''
class Cookie:
    def __init__(self, sayings):
        self.sayings = list(sayings)
        self.i = 0

    def next(self):
        self.i += 1
        return self.sayings[(self.i - 1) % len(self.sayings)]


def connect(ctx):
    if not ctx.keys["sayings"]:
        raise ValueError("no sayings given")
    return Cookie(ctx.keys["sayings"])
'''

MANIFEST = '''
from ingot.manifest import Appliance, device
from ingot.keys import key
from ingot_fortune import Fortune

appliance = Appliance(name="oracle", main="app:Oracle", doc="says things", ambient=False,
                      devices=[device("fortune", Fortune)],
                      keys=[key("n", int, "how many", 2)])
'''

APP = '''
class Oracle:
    def __init__(self, fortune, keys, log):
        self.fortune, self.keys, self.log = fortune, keys, log

    async def start(self):
        for _ in range(self.keys.n):
            self.log.info("oracle says", saying=self.fortune.next())
'''


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    base = tmp_path_factory.mktemp("thirdparty")
    pkg = base / "ingot-fortune"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (pkg / "ingot_fortune.py").write_text(PLUGIN)
    (pkg / "ingot_fortune_device.py").write_text(DEVICE)
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", env_dir], check=True)
    py = env_dir / "bin" / "python"
    # Ingot itself comes from the test environment (a .pth), the plugin is pip-installed
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "ingot-under-test.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    # a normal pip install (its build backend comes from the package index)
    proc = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(pkg)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    app = base / "apps" / "oracle"
    app.mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "manifest.py").write_text(textwrap.dedent(MANIFEST))
    (app / "app.py").write_text(textwrap.dedent(APP))
    return py, app, base


def _cli(py, cwd):
    class VenvCli(Cli):
        def __call__(self, *args, check=True, timeout=120):
            proc = subprocess.run([str(py), "-m", "ingot.cli", *map(str, args)], cwd=self.cwd,
                                  env=self.env, capture_output=True, text=True, timeout=timeout)
            from tests.conftest import Result
            res = Result(proc.returncode, proc.stdout, proc.stderr)
            if check and res.rc:
                raise AssertionError(res.out + res.err)
            return res
    return VenvCli(cwd)


def test_plugin_is_listed(venv, tmp_path):
    py, _app, _ = venv
    res = _cli(py, tmp_path)("plugins")
    assert "fortune  (ingot_fortune, entry point of ingot-fortune)" in res.out
    assert "fortune/cookie [default on unix]" in res.out


def test_not_visible_without_the_plugin(tmp_path, venv):
    _py, app, _ = venv
    res = Cli(tmp_path)("configure", app, check=False)
    assert res.rc == 1 and "Traceback" not in res.err
    assert "ingot_fortune" in res.err  # the manifest imports the plugin's signature


def test_image_with_third_party_plugin(venv, tmp_path):
    py, app, _ = venv
    cli = _cli(py, tmp_path)
    cli("configure", app, "--fortune-sayings", "carpe diem,memento mori")
    cli("build", app)
    image = tmp_path / "images" / "oracle-unix.pyz"
    contents = cli("inspect", "--files", image).out
    assert "ingot_fortune_device.py" in contents and "oracle/app.py" in contents
    # run with the base interpreter: neither the plugin nor ingot is installed there
    res = run_image(image, "--n", "3", python=sys.executable)
    assert res.rc == 0, res.out + res.err
    says = [line for line in res.out.splitlines() if "oracle says" in line]
    assert [s.split("saying=")[1] for s in says] == ['"carpe diem"', '"memento mori"',
                                                    '"carpe diem"']
    assert "fortune plugin saw device fortune (fortune/cookie)" in res.out
    # with -S -I: no site-packages at all
    proc = subprocess.run(["python3", "-S", "-I", str(image), "--n", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "carpe" in proc.stdout


def test_device_failure_stops_boot_with_one_line(venv, tmp_path):
    py, app, _ = venv
    cli = _cli(py, tmp_path)
    cli("configure", app)
    cli("build", app)
    res = run_image(tmp_path / "images" / "oracle-unix.pyz", "--fortune-sayings", ",")
    assert res.rc == 2
    errors = [line for line in res.out.splitlines() if "level=error" in line]
    assert len(errors) == 1, res.out
    assert ("device 'fortune' (fortune/cookie) failed to connect: ValueError: no sayings given"
            in errors[0])
    assert "--fortune-sayings" in errors[0]
    assert "Traceback" not in res.out + res.err
