"""The DNS appliance's zones from the two other kv_ro backends, asked with real ``dig``.

* ``crunch``: the zone files are baked into the image; it answers with the
  source folder gone, and its contents listing holds the zone file (with its
  sha256) and no git code.
* ``git`` (as MirageOS's dns-primary-git): the image serves the zone of a
  branch of a bare repository that an admin pushes to; a pushed change with a
  higher serial is served within ``--reload``; a pushed broken zone file is
  rejected with ``file:line`` in the log while the last good version keeps
  answering; a fix after it is picked up again.

Also: every example zone of configs/dns/zones/ loads; the example env files
name only keys the image has, and their TSIG keys are those of the key files
and of the Knot and NSD configs (which knotc and nsd-checkconf accept); the
guide documents every key of the manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli
from tests.integration.test_dns_image import free_port

ZONES = ROOT / "configs" / "dns" / "zones"
ZONE = """$ORIGIN example.test.
$TTL 300
@    IN SOA ns1 hostmaster 2026120101 60 30 600 60
     IN NS  ns1
ns1  IN A   192.0.2.1
www  IN A   192.0.2.10
"""
GIT_ENV = {"GIT_AUTHOR_NAME": "DNS admin", "GIT_AUTHOR_EMAIL": "admin@example.test",
           "GIT_COMMITTER_NAME": "DNS admin", "GIT_COMMITTER_EMAIL": "admin@example.test",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed (see .ci/debian-packages.txt)"
    return path


def dig(port: int, *args: str) -> str:
    proc = subprocess.run([need("dig"), "@127.0.0.1", "-p", str(port), "+norec", "+time=2",
                           "+tries=2", *args], capture_output=True, text=True, timeout=30)
    return proc.stdout


def short(port: int, name: str, rtype: str = "A") -> str:
    return dig(port, "+short", name, rtype).strip()


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env=dict(os.environ, **GIT_ENV), timeout=60)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


class LoggedServer:
    """The image as a process whose log goes to a file, so a test can wait for a line."""

    def __init__(self, image: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(image), "--port", str(self.port),
                                      *args], stdout=self._out, stderr=subprocess.STDOUT)
        self.wait_log("msg=listening")

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, "dns exited:\n" + self.text()
            assert time.monotonic() < deadline, f"no {needle!r} in the log:\n" + self.text()
            time.sleep(0.05)
        return next(line for line in self.text().splitlines() if needle in line)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        return self.text()


def wait_for(what: str, predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def contents(cli: Cli) -> list[dict]:
    return json.loads((cli.cwd / "images" / "dns-unix.contents.json").read_text())["files"]


def is_git_code(path: str) -> bool:
    return path.split("/")[0] == "dulwich" or path.startswith("ingot/plugins/kv/git.")


# -- crunch -------------------------------------------------------------------

def test_crunched_zones_are_served_with_no_folder_and_no_git_code(cli: Cli, tmp_path: Path):
    source = tmp_path / "bake"
    shutil.copytree(ZONES, source)
    cli("configure", ROOT / "appliances" / "dns", "--zones", "crunch", "--zones-source", source)
    cli("build", ROOT / "appliances" / "dns")
    baked = (source / "example.test.zone").read_bytes()
    shutil.rmtree(source)  # nothing of the zones is read from the host at run time

    files = contents(cli)
    by_path = {f["path"]: f for f in files}
    entry = by_path["_ingot/data/zones/example.test.zone"]
    assert entry["kind"] == "data" and entry["size"] == len(baked)
    assert entry["sha256"] == hashlib.sha256(baked).hexdigest()
    assert "ingot/plugins/kv/crunch.py" in by_path or any(
        p.startswith("ingot/plugins/kv/crunch.") for p in by_path)
    assert not [p for p in by_path if is_git_code(p)], "a crunch image holds git code"
    assert not [p for p in by_path if p.startswith("ingot/plugins/kv/direct.")]

    srv = LoggedServer(cli.image("dns-unix"), tmp_path / "dns.log")
    try:
        assert short(srv.port, "www.example.test") == "example.test.\n192.0.2.10"
        assert short(srv.port, "example.test", "MX") == "10 mail.example.test."
        assert "status: NXDOMAIN" in dig(srv.port, "nothing.example.test", "A")
        assert "192.0.2.80" in short(srv.port, "x.apps.example.test")
        tcp = dig(srv.port, "+tcp", "_sip._tcp.example.test", "SRV")
        assert "10 60 5060 mail.example.test." in tcp and "flags: qr aa" in tcp
    finally:
        out = srv.stop()
    assert srv.proc.returncode == 0, out
    assert 'msg="zone loaded" zone=example.test. serial=2026112801' in out
    assert "device connected\" device=zones kind=kv_ro backend=crunch" in out


# -- git ----------------------------------------------------------------------

@pytest.fixture
def git_zones(cli: Cli, tmp_path: Path):
    """A bare repository ``zones.git`` (what the image reads) and a clone to commit in."""
    bare = tmp_path / "zones.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "symbolic-ref", "HEAD", "refs/heads/main")
    (work / "example.test.zone").write_text(ZONE)
    (work / "README").write_text("not a zone: ignored\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "example.test: first version")
    git(work, "push", "-q", "origin", "main")
    cli("configure", ROOT / "appliances" / "dns", "--zones", "git", "--zones-repo", bare,
        "--zones-ref", "main")
    cli("build", ROOT / "appliances" / "dns")
    return bare, work


def commit(work: Path, text: str, message: str) -> None:
    (work / "example.test.zone").write_text(text)
    git(work, "commit", "-q", "-am", message)
    git(work, "push", "-q", "origin", "main")


def test_git_zones_follow_the_branch_and_keep_the_last_good_version(cli: Cli, git_zones,
                                                                    tmp_path: Path):
    bare, work = git_zones
    assert [p for p in (f["path"] for f in contents(cli)) if is_git_code(p)]
    srv = LoggedServer(cli.image("dns-unix"), tmp_path / "dns.log", "--reload", "0.2")
    try:
        assert short(srv.port, "www.example.test") == "192.0.2.10"
        assert "2026120101" in short(srv.port, "example.test", "SOA")
        assert "backend=git" in srv.text()

        # a change with a higher serial is served within a few --reload intervals
        commit(work, ZONE.replace("2026120101", "2026120102").replace("192.0.2.10",
                                                                      "192.0.2.11"),
               "www moves")
        wait_for("the new commit to be served",
                 lambda: short(srv.port, "www.example.test") == "192.0.2.11")
        assert "2026120102" in short(srv.port, "example.test", "SOA")
        srv.wait_log("serial=2026120102 previous=2026120101")

        # a change without a higher serial is not loaded (and says so)
        commit(work, ZONE.replace("2026120101", "2026120102").replace("192.0.2.10",
                                                                      "192.0.2.12"),
               "forgot the serial")
        srv.wait_log("zone file changed without a higher serial")
        assert short(srv.port, "www.example.test") == "192.0.2.11"

        # a broken file: rejected with file:line, the last good version answers
        broken = ZONE.replace("2026120101", "2026120103") + "bad  IN A   300.1.2.3\n"
        bad_line = broken.splitlines().index("bad  IN A   300.1.2.3") + 1
        commit(work, broken, "a typo")
        line = srv.wait_log('msg="zone rejected"')
        assert f'reason="example.test.zone:{bad_line}: ' in line, line
        assert "300.1.2.3" in line and 'serving="last good version"' in line
        for _ in range(5):  # several reload intervals later: still the good version
            assert short(srv.port, "www.example.test") == "192.0.2.11"
            assert "2026120102" in short(srv.port, "example.test", "SOA")
            time.sleep(0.2)
        assert srv.proc.poll() is None

        # the fix is picked up again
        commit(work, ZONE.replace("2026120101", "2026120104").replace("192.0.2.10",
                                                                      "192.0.2.14"),
               "fix the typo")
        wait_for("the fixed zone", lambda: short(srv.port, "www.example.test") == "192.0.2.14")
    finally:
        out = srv.stop()
    assert srv.proc.returncode == 0, out
    assert out.count('msg="zone rejected"') == 1, out
    assert "README" not in out
    # the image only read the repository: nothing was committed by it
    assert len(git(bare, "log", "--format=%s", "main").splitlines()) == 5


def test_git_zones_name_a_missing_ref_in_one_line(cli: Cli, git_zones, tmp_path: Path):
    proc = subprocess.run([sys.executable, str(cli.image("dns-unix")), "--port",
                           str(free_port()), "--zones-ref", "nope"], capture_output=True,
                          text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "zones" in out and "'nope' names no commit" in out, out


# -- the example configs ------------------------------------------------------

def test_every_example_zone_loads():
    from ingot.plugins.dns.zonefile import load_zone

    found = sorted(ZONES.glob("*.zone"))
    assert len(found) >= 2
    for path in found:
        origin = path.name[: -len(".zone")] + "."
        zone = load_zone(path.read_text(), origin, file=path.name)
        assert zone.serial > 0


def _env(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / "configs" / "dns" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key.startswith("INGOT_") and value and " " not in value, line
            out[key] = value
    return out


def test_example_env_files_hold_keys_of_the_image_and_matching_tsig_keys():
    from ingot import manifest
    from ingot.plugins.dns import tsig
    from ingot.plugins.kv import ingot_devices_register

    app = manifest.load(ROOT / "appliances" / "dns").appliance
    known = {k.env for k in app.keys} | {"INGOT_LOG_LEVEL"}
    for spec in ingot_devices_register():
        for k in spec.keys:
            for dev in ("zones", "store"):
                known.add(f"INGOT_{dev.upper()}_{k.name.upper().replace('-', '_')}")
    primary, secondary = _env("primary.env"), _env("secondary.env")
    assert set(primary) <= known and set(secondary) <= known, (set(primary) | set(secondary))\
        - known
    ring = {k.name: k for k in map(tsig.parse_key, primary["INGOT_TSIG_KEYS"].split(","))}
    for name in ("update.key", "transfer.key"):
        (from_file,) = tsig.parse_key_file((ROOT / "configs" / "dns" / name).read_text())
        assert ring[from_file.name] == from_file
    xfr = ring["transfer.key"]
    secret = base64.b64encode(xfr.secret).decode()
    for conf in ("knot-secondary.conf", "nsd-secondary.conf"):
        assert secret in (ROOT / "configs" / "dns" / conf).read_text(), conf
    assert secondary["INGOT_SECONDARY_OF"] == f"127.0.0.1:{primary['INGOT_PORT']}"
    assert f"127.0.0.1:{secondary['INGOT_PORT']}" in primary["INGOT_NOTIFY"].split(",")


def test_knot_and_nsd_accept_the_example_secondary_configs(tmp_path: Path):
    conf = ROOT / "configs" / "dns"
    proc = subprocess.run([need("nsd-checkconf"), str(conf / "nsd-secondary.conf")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "knot-secondary").mkdir()
    proc = subprocess.run([need("knotc"), "-c", str(conf / "knot-secondary.conf"),
                           "conf-check"], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "valid" in proc.stdout + proc.stderr, proc.stderr


def test_the_guide_documents_every_key_of_the_manifest():
    from ingot import manifest

    guide = (ROOT / "docs" / "appliances" / "dns.md").read_text()
    app = manifest.load(ROOT / "appliances" / "dns").appliance
    missing = [k.flag for k in app.keys if f"`{k.flag}`" not in guide]
    assert not missing, f"docs/appliances/dns.md lacks {missing}"
    for section in ("## Deploy", "## Configure", "## Operate", "## Troubleshoot", "## Limits"):
        assert section in guide
