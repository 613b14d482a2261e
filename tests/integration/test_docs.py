"""The commands the docs show are run, so the docs stay true.

In docs/*.md and docs/appliances/*.md, every fenced block tagged ``console``
is a script: ``$ command`` lines run with bash in a scratch folder that sees
the repository's appliances/, configs/ and docs/; a ``# expect: TEXT`` line
after a command asserts that its output contains TEXT. A command ending in
``&`` starts a server: it runs in the background until the block ends, must
print its ``# expect:`` texts (or "appliance started") before the next command runs,
and must stop with exit 0 on SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "docs" / "appliances").glob("*.md"))
BLOCK = re.compile(r"^```console\n(.*?)^```", re.S | re.M)


def _blocks(path: Path) -> list[list[tuple[str, list[str]]]]:
    blocks = []
    for body in BLOCK.findall(path.read_text()):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif line.startswith("# expect: ") and steps:
                steps[-1][1].append(line[len("# expect: "):])
        blocks.append(steps)
    return blocks


def _doc_params():
    return [pytest.param(p, id=str(p.relative_to(ROOT))) for p in DOCS if _blocks(p)]


def test_every_appliance_has_a_guide_with_tested_commands():
    for app in sorted((ROOT / "appliances").iterdir()):
        if (app / "manifest.py").is_file():
            guide = ROOT / "docs" / "appliances" / f"{app.name}.md"
            assert guide.is_file(), f"appliance {app.name} has no guide"
            text = guide.read_text()
            for section in ("## Deploy", "## Configure", "## Operate", "## Troubleshoot"):
                assert section in text, f"{guide.name} lacks {section}"
            assert _blocks(guide), f"{guide.name} shows no tested commands"


def test_plugin_guide_shows_the_example_files_verbatim():
    guide = (ROOT / "docs" / "plugin-guide.md").read_text()
    for path in sorted((ROOT / "docs" / "examples").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".toml") and path.stat().st_size:
            assert path.read_text() in guide, f"{path.name} differs from its copy in the guide"


@pytest.mark.parametrize("doc", _doc_params())
def test_doc_commands_run(doc: Path, tmp_path: Path):
    for name in ("appliances", "configs", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("INGOT_DEBUG", None)
    for steps in _blocks(doc):
        background: list[tuple[str, subprocess.Popen]] = []
        try:
            for command, expects in steps:
                if command.endswith("&"):
                    ready = expects or ["appliance started"]
                    background.append((command, _start(command[:-1], tmp_path, env, ready)))
                    continue
                proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=120)
                out = proc.stdout + proc.stderr
                assert proc.returncode == 0, f"{doc.name}: `{command}` failed:\n{out}"
                for text in expects:
                    assert text in out, f"{doc.name}: `{command}` lacks {text!r}:\n{out}"
        finally:
            for command, proc in background:
                proc.send_signal(signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = "killed"
                assert rc == 0, f"{doc.name}: `{command}` did not stop cleanly ({rc})"


def _start(command: str, cwd: Path, env: dict[str, str], ready: list[str]) -> subprocess.Popen:
    log = open(cwd / f"bg-{time.monotonic_ns()}.log", "w+")
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120  # a vm image boots under software emulation
    while time.monotonic() < deadline:
        log.seek(0)
        text = log.read()
        if all(t in text for t in ready):
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"`{command}` exited ({proc.returncode}):\n{text}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"`{command}` did not start in 120 s")
