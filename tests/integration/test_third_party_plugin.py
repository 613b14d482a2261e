"""The plugin guide's worked example (docs/examples/), a plugin package from outside the tree, installed into a fresh venv with pip,
provides a new device kind and a backend; an out-of-tree appliance uses it;
the image runs on a Python that has neither installed."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli, run_image

EXAMPLES = ROOT / "docs" / "examples"


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    base = tmp_path_factory.mktemp("thirdparty")
    pkg = base / "ingot-fortune"
    shutil.copytree(EXAMPLES / "ingot-fortune", pkg)
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
    shutil.copytree(EXAMPLES / "oracle", app)
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
