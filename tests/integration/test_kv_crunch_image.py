"""An image with a ``crunch`` kv_ro holds its data and no git code, and serves it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import pytest

from ingot import build, configure, manifest, plugin
from ingot.errors import ConfigureError

MANIFEST = textwrap.dedent('''
    from ingot.keys import key
    from ingot.manifest import Appliance, device
    from ingot.signatures import KvRO

    appliance = Appliance(
        name="kvprobe",
        main="app:Probe",
        doc="Print one value of a kv_ro store",
        ambient=False,
        devices=[device("zones", KvRO, doc="the data to read")],
        keys=[key("show", str, "The key to print", "hello.txt")],
    )
''')

APP = textwrap.dedent('''
    class Probe:
        def __init__(self, zones, keys):
            self.zones = zones
            self.keys = keys

        async def start(self):
            value = await self.zones.get(self.keys.show)
            listing = await self.zones.list("")
            print("VALUE=" + value.decode(), "ENTRIES=" + ",".join(n for n, _ in listing),
                  flush=True)
''')


@pytest.fixture
def probe(tmp_path):
    folder = tmp_path / "apps" / "kvprobe"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "manifest.py").write_text(MANIFEST)
    (folder / "app.py").write_text(APP)
    data = tmp_path / "zones"
    (data / "sub").mkdir(parents=True)
    (data / "hello.txt").write_text("hi there")
    (data / "sub" / "deep").write_text("deep")
    (data / ".git").mkdir()
    (data / ".git" / "HEAD").write_text("not baked")
    return folder, data


def _plan(folder, *argv):
    pm, registry = plugin.load()
    return configure.resolve(manifest.load(folder), "unix", list(argv), pm, registry)


def test_crunch_image_holds_data_and_no_git_code(probe, tmp_path):
    folder, data = probe
    plan = _plan(folder, "--zones", "crunch", "--zones-source", str(data))
    assert plan.device("zones").keys == {"source": str(data)}
    result = build.build(plan, tmp_path / "images")
    with zipfile.ZipFile(result.image) as zf:
        names = set(zf.namelist())
    assert "ingot/plugins/kv/crunch.py" in names
    assert {"_ingot/data/zones/hello.txt", "_ingot/data/zones/sub/deep"} <= names
    assert not any(".git" in n for n in names if n.startswith("_ingot/data/"))
    assert "ingot/plugins/kv/git.py" not in names
    assert not any(n.split("/")[0] == "dulwich" or "/dulwich/" in n for n in names)
    assert "ingot/plugins/kv/direct.py" not in names  # other backends stay out too

    run = subprocess.run([sys.executable, str(result.image)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "VALUE=hi there ENTRIES=hello.txt,sub" in run.stdout
    run = subprocess.run([sys.executable, str(result.image), "--show", "sub/deep"],
                         capture_output=True, text=True, timeout=60)
    assert "VALUE=deep" in run.stdout


def test_configure_refuses_a_missing_crunch_folder(probe, tmp_path):
    folder, _data = probe
    with pytest.raises(ConfigureError, match="--zones-source"):
        _plan(folder, "--zones", "crunch", "--zones-source", str(tmp_path / "nope"))


def test_a_relative_crunch_folder_may_live_in_the_appliance(probe, tmp_path, monkeypatch):
    folder, data = probe
    (folder / "bundled").mkdir()
    (folder / "bundled" / "hello.txt").write_text("bundled")
    monkeypatch.chdir(tmp_path)
    plan = _plan(folder, "--zones", "crunch", "--zones-source", "bundled")
    result = build.build(plan, tmp_path / "images")
    with zipfile.ZipFile(result.image) as zf:
        assert zf.read("_ingot/data/zones/hello.txt") == b"bundled"
