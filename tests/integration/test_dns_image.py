"""The DNS appliance as a built image: zones from a folder, reloads, bad zone files."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dnslib import QTYPE, DNSRecord

from tests.conftest import ROOT, Cli

ZONES = ROOT / "configs" / "dns" / "zones"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port: int, name: str, rtype: str = "A", tcp: bool = False) -> DNSRecord:
    q = DNSRecord.question(name, rtype)
    return DNSRecord.parse(q.send("127.0.0.1", port, tcp=tcp, timeout=5))


class Server:
    def __init__(self, image: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc = subprocess.Popen([sys.executable, str(image), "--port", str(self.port),
                                      *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("dns exited:\n" + "".join(self.lines))
            self.lines.append(line)
            if "msg=listening" in line:
                return
        raise AssertionError("dns did not start")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return "".join(self.lines) + out


@pytest.fixture
def image(cli: Cli) -> Path:
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct")
    cli("build", ROOT / "appliances" / "dns")
    return cli.image("dns-unix")


def test_serves_the_example_zone_over_udp_and_tcp(image):
    srv = Server(image, "--zones-path", str(ZONES))
    try:
        for tcp in (False, True):
            r = ask(srv.port, "www.example.test", "A", tcp)
            assert r.header.aa and r.header.rcode == 0
            assert [str(rr.rdata) for rr in r.rr] == ["example.test.", "192.0.2.10"]
            r = ask(srv.port, "NoThInG.example.test", "A", tcp)
            assert r.header.rcode == 3 and str(r.q.qname) == "NoThInG.example.test."
            assert QTYPE[r.auth[0].rtype] == "SOA" and r.auth[0].ttl == 300
        assert ask(srv.port, "example.org").header.rcode == 5  # REFUSED
    finally:
        out = srv.stop()
    assert srv.proc.returncode == 0, out


def test_bad_zone_file_keeps_the_last_good_version(image, tmp_path):
    zones = tmp_path / "zones"
    shutil.copytree(ZONES, zones)
    path = zones / "example.test.zone"
    good = path.read_text()
    srv = Server(image, "--zones-path", str(zones), "--reload", "0.2")
    try:
        path.write_text(good.replace("ftp     IN CNAME www", "ftp     IN CNAME www\nbad IN A 300.1.2.3"))
        time.sleep(1.0)
        assert srv.proc.poll() is None
        assert str(ask(srv.port, "mail.example.test").rr[0].rdata) == "192.0.2.25"
        path.write_text(good.replace("2026112801", "2026112802")
                        .replace("mail    IN A    192.0.2.25", "mail    IN A    192.0.2.26"))
        deadline = time.monotonic() + 10
        while str(ask(srv.port, "mail.example.test").rr[0].rdata) != "192.0.2.26":
            assert time.monotonic() < deadline, "the fixed zone was not loaded"
            time.sleep(0.1)
    finally:
        out = srv.stop()
    rejected = [line for line in out.splitlines() if 'msg="zone rejected"' in line]
    assert len(rejected) == 1
    assert "example.test.zone:" in rejected[0] and "serving=\"last good version\"" in rejected[0]
    assert "serial=2026112802" in out
