"""The DNS appliance image against real peers: nsupdate with TSIG (one git commit per
update, refused without the key), Knot as its secondary (AXFR, then IXFR after NOTIFY),
and the appliance as a secondary of Knot."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli
from tests.integration.test_dns_image import Server, free_port

SECRET = base64.b64encode(b"ingot-test-secret-0123456789abcd").decode()
TSIG = f"hmac-sha256:upd.key:{SECRET}"
ZONE = """$ORIGIN example.test.
$TTL 300
@ IN SOA ns1 hostmaster 2026112801 60 30 600 60
  IN NS ns1
ns1 IN A 192.0.2.1
www IN A 192.0.2.10
"""


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed (see .ci/debian-packages.txt)"
    return path


def dig(port: int, *args: str) -> str:
    return subprocess.run([need("dig"), "@127.0.0.1", "-p", str(port), "+norec", "+time=2",
                           "+tries=2", *args], capture_output=True, text=True, timeout=30).stdout


def wait_for(what, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def nsupdate(port: int, commands: str, key: str | None = TSIG) -> subprocess.CompletedProcess:
    script = f"server 127.0.0.1 {port}\nzone example.test.\n{commands}\nsend\n"
    args = [need("nsupdate")] + (["-y", key] if key else [])
    return subprocess.run(args, input=script, capture_output=True, text=True, timeout=30)


class Knot:
    def __init__(self, folder: Path, *, primary: int | None = None, zone: str | None = None,
                 notify_to: int | None = None, port: int | None = None) -> None:
        need("knotd")
        self.folder, self.port = folder, port or free_port()
        (folder / "zones").mkdir(parents=True)
        (folder / "db").mkdir()
        if zone is not None:
            (folder / "zones" / "example.test.zone").write_text(zone)
        remotes = []
        if primary is not None:
            remotes.append(f"  - id: primary\n    address: 127.0.0.1@{primary}\n")
        if notify_to is not None:
            remotes.append(f"  - id: ingot\n    address: 127.0.0.1@{notify_to}\n")
        zone_conf = "  - domain: example.test.\n    file: example.test.zone\n    acl: [xfr, notify]\n"
        if primary is not None:
            zone_conf += "    master: primary\n"
        if notify_to is not None:
            zone_conf += "    notify: ingot\n"
        self.conf = folder / "knot.conf"
        self.conf.write_text(
            f"server:\n  rundir: {folder}\n  listen: 127.0.0.1@{self.port}\n"
            "  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n"
            f"database:\n  storage: {folder / 'db'}\n"
            "log:\n  - target: stderr\n    any: info\n"
            + (("remote:\n" + "".join(remotes)) if remotes else "")
            + "acl:\n  - id: xfr\n    address: 127.0.0.0/8\n    action: transfer\n"
            "  - id: notify\n    address: 127.0.0.0/8\n    action: notify\n"
            f"template:\n  - id: default\n    storage: {folder / 'zones'}\n"
            "    zonefile-sync: -1\n    journal-content: changes\n"
            f"zone:\n{zone_conf}")
        self.log = open(folder / "knotd.log", "wb")
        self.proc = subprocess.Popen(["knotd", "-c", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def knotc(self, *args: str) -> str:
        return subprocess.run(["knotc", "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=30).stdout

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return (self.folder / "knotd.log").read_text(errors="replace")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def primary(cli: Cli, tmp_path: Path):
    """A primary with zones from a folder, updates allowed for upd.key, kept in git."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "example.test.zone").write_text(ZONE)
    repo = tmp_path / "store.git"
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct", "--store", "git",
        "--store-repo", str(repo), "--store-init", "true")
    cli("build", ROOT / "appliances" / "dns")

    def start(*extra: str) -> Server:
        return Server(cli.image("dns-unix"), "--zones-path", str(zones), "--tsig-keys", TSIG,
                      "--update-acl", "key:upd.key", "--transfer-acl", "127.0.0.0/8", *extra)
    return start, repo


def test_nsupdate_with_tsig_changes_the_answer_and_makes_one_commit(primary):
    start, repo = primary
    srv = start()
    try:
        res = nsupdate(srv.port, "update add new.example.test. 300 A 192.0.2.77")
        assert res.returncode == 0, res.stderr
        assert "192.0.2.77" in dig(srv.port, "+short", "new.example.test", "A")
        assert "2026112802" in dig(srv.port, "+short", "example.test", "SOA")
        log = git(repo, "log", "--format=%s", "main")
        assert log.splitlines() == ["update example.test. serial 2026112802"]
        stored = git(repo, "show", "main:example.test.zone")
        assert "192.0.2.77" in stored
        # without the key: refused, nothing changes
        res = nsupdate(srv.port, "update add bad.example.test. 300 A 192.0.2.66", key=None)
        assert res.returncode != 0 and "REFUSED" in res.stdout + res.stderr
        assert dig(srv.port, "+short", "bad.example.test", "A").strip() == ""
        assert len(git(repo, "log", "--format=%s", "main").splitlines()) == 1
    finally:
        srv.stop()
    # a restart serves the updated version from the store (its serial is higher)
    srv = start()
    try:
        assert "192.0.2.77" in dig(srv.port, "+short", "new.example.test", "A")
    finally:
        srv.stop()


def test_knot_secondary_follows_by_axfr_then_ixfr_after_notify(primary, tmp_path):
    start, _repo = primary
    knot_port = free_port()
    srv = start("--notify", f"127.0.0.1:{knot_port}")
    knot = Knot(tmp_path / "knot", primary=srv.port, port=knot_port)
    try:
        wait_for("knot to transfer the zone",
                 lambda: "192.0.2.10" in dig(knot.port, "+short", "www.example.test"))
        res = nsupdate(srv.port, "update add late.example.test. 300 A 192.0.2.88")
        assert res.returncode == 0, res.stderr
        wait_for("knot to follow the update",
                 lambda: "192.0.2.88" in dig(knot.port, "+short", "late.example.test"))
    finally:
        out = srv.stop()
        log = knot.stop()
    assert "IXFR" in log, log
    assert 'msg="notify answered"' in out


def test_appliance_as_secondary_of_knot(cli: Cli, tmp_path):
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct")
    cli("build", ROOT / "appliances" / "dns")
    ingot_port = free_port()
    knot = Knot(tmp_path / "knot", zone=ZONE, notify_to=ingot_port)
    empty = tmp_path / "nozones"
    empty.mkdir()
    try:
        wait_for("knot to start", lambda: "2026112801" in dig(knot.port, "+short", "example.test",
                                                              "SOA"))
        srv = Server(cli.image("dns-unix"), "--zones-path", str(empty), "--secondary-of",
                     f"127.0.0.1:{knot.port}", "--secondary-zones", "example.test",
                     "--transfer-acl", "127.0.0.0/8", port=ingot_port)
        try:
            wait_for("the appliance to pull the zone",
                     lambda: "192.0.2.10" in dig(srv.port, "+short", "www.example.test"))
            # change the zone on Knot: its NOTIFY makes the appliance pull an IXFR
            for args in (("zone-begin",), ("zone-set", "fresh", "300", "A", "192.0.2.99"),
                         ("zone-commit",)):
                knot.knotc(args[0], "example.test.", *args[1:])
            wait_for("knot to change", lambda: "192.0.2.99" in dig(knot.port, "+short",
                                                                   "fresh.example.test"))
            wait_for("the appliance to follow Knot",
                     lambda: "192.0.2.99" in dig(srv.port, "+short", "fresh.example.test"))
            # and it serves AXFR of what it holds
            axfr = dig(srv.port, "example.test", "AXFR")
            assert "fresh.example.test." in axfr and axfr.count("SOA") == 2
        finally:
            out = srv.stop()
    finally:
        knot.stop()
    assert 'msg="zone transferred"' in out and "kind=ixfr" in out


def test_appliance_as_secondary_of_two_zones_pulls_both(cli: Cli, tmp_path):
    """Each zone's transfer has its own connection (their numbers start at 1 in every zone)."""
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct")
    cli("build", ROOT / "appliances" / "dns")
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "example.test.zone").write_text(ZONE)
    (zones / "other.test.zone").write_text(ZONE.replace("example.test.", "other.test.")
                                           .replace("192.0.2.10", "192.0.2.20"))
    empty = tmp_path / "nozones"
    empty.mkdir()
    image = cli.image("dns-unix")
    primary = Server(image, "--zones-path", str(zones), "--transfer-acl", "127.0.0.0/8")
    try:
        for _ in range(3):  # both zones are due at once, every time
            srv = Server(image, "--zones-path", str(empty), "--secondary-of",
                         f"127.0.0.1:{primary.port}", "--secondary-zones",
                         "example.test,other.test")
            try:
                wait_for("both zones", lambda: "192.0.2.10" in dig(srv.port, "+short",
                                                                   "www.example.test")
                         and "192.0.2.20" in dig(srv.port, "+short", "www.other.test"))
            finally:
                out = srv.stop()
            assert out.count('msg="zone transferred"') == 2, out
    finally:
        primary.stop()


XFR_TSIG = f"hmac-sha256:xfr.key:{base64.b64encode(b'ingot-xfr-secret-0123456789abcde').decode()}"


def test_signed_query_gets_a_signed_answer_kdig_and_dig_verify(primary):
    """RFC 8945: a signed QUERY is verified and answered signed with the same key."""
    start, _repo = primary
    srv = start()
    try:
        for tool in ("kdig", "dig"):
            out = subprocess.run([need(tool), "@127.0.0.1", "-p", str(srv.port), "-y", TSIG,
                                  "+norec", "example.test", "SOA"], capture_output=True,
                                 text=True, timeout=30).stdout
            assert "2026112801" in out and "NOERROR" in out, out
            assert "upd.key" in out and "BADSIG" not in out and "failed" not in out.lower(), out
        bad = f"hmac-sha256:upd.key:{base64.b64encode(b'x' * 32).decode()}"
        out = subprocess.run([need("kdig"), "@127.0.0.1", "-p", str(srv.port), "-y", bad,
                              "example.test", "SOA"], capture_output=True, text=True,
                             timeout=30)
        assert "BADSIG" in out.stdout + out.stderr, out
    finally:
        srv.stop()


def test_ingot_secondary_with_key_follows_ingot_primary_with_signed_notify(cli: Cli, tmp_path):
    """Transfers and SOA queries signed by --secondary-key, NOTIFY signed by `--notify
    host:port key:NAME`: AXFR, then IXFR after an update."""
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct")
    cli("build", ROOT / "appliances" / "dns")
    image = cli.image("dns-unix")
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "example.test.zone").write_text(ZONE)
    empty = tmp_path / "nozones"
    empty.mkdir()
    sec_port = free_port()
    prim = Server(image, "--zones-path", str(zones), "--tsig-keys", f"{TSIG},{XFR_TSIG}",
                  "--update-acl", "key:upd.key", "--transfer-acl", "key:xfr.key",
                  "--notify", f"127.0.0.1:{sec_port} key:xfr.key")
    try:
        sec = Server(image, "--zones-path", str(empty), "--tsig-keys", XFR_TSIG,
                     "--secondary-of", f"127.0.0.1:{prim.port}", "--secondary-zones",
                     "example.test", "--secondary-key", "xfr.key", port=sec_port)
        try:
            wait_for("the secondary to pull the zone",
                     lambda: "192.0.2.10" in dig(sec.port, "+short", "www.example.test"))
            res = nsupdate(prim.port, "update add late.example.test. 300 A 192.0.2.88")
            assert res.returncode == 0, res.stderr
            wait_for("the secondary to follow the update",
                     lambda: "192.0.2.88" in dig(sec.port, "+short", "late.example.test"))
        finally:
            out = sec.stop()
    finally:
        pout = prim.stop()
    assert "refresh failed" not in out, out
    assert "kind=axfr" in out and "kind=ixfr" in out, out
    assert f'msg="notify answered" zone=example.test. peer=127.0.0.1:{sec_port} rcode=0' \
        in pout, pout


def test_store_remote_is_pushed_after_each_update(primary, tmp_path):
    """--store-remote: each stored update is pushed; a failed push is one warning, keeps the
    local commit and is made good by the next update's push."""
    start, repo = primary
    remote = tmp_path / "remote.git"
    srv = start("--store-remote", f"file://{remote}")
    try:
        # the remote does not exist yet: the push fails, the update stands
        res = nsupdate(srv.port, "update add one.example.test. 300 A 192.0.2.71")
        assert res.returncode == 0, res.stderr
        def read_until(text: str) -> None:  # the log is read line by line, kept for stop()
            watchdog = threading.Timer(30, srv.proc.kill)  # no such line: readline ends
            watchdog.start()
            try:
                while not any(text in line for line in srv.lines):
                    line = srv.proc.stdout.readline()
                    assert line, f"no {text!r} in:\n" + "".join(srv.lines)
                    srv.lines.append(line)
            finally:
                watchdog.cancel()
        read_until("store push failed")
        assert git(repo, "log", "--format=%s", "main").splitlines() == [
            "update example.test. serial 2026112802"]
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
        res = nsupdate(srv.port, "update add two.example.test. 300 A 192.0.2.72")
        assert res.returncode == 0, res.stderr

        def pushed() -> bool:
            r = subprocess.run(["git", "-C", str(remote), "log", "--format=%s", "main"],
                               capture_output=True, text=True)
            return r.stdout.splitlines() == ["update example.test. serial 2026112803",
                                              "update example.test. serial 2026112802"]
        wait_for("both commits on the remote", pushed)
    finally:
        out = srv.stop()
    assert out.count("store push failed") == 1, out
