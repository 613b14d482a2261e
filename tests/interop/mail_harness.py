"""Running the mail appliance (and the DNS appliance it asks) as real processes in tests.

``images(tmp_path_factory)`` builds both unix images once per test session.
:class:`Dns` serves the test zones: ``example.test`` (the appliance's own
domain: MX, SPF, the DKIM key of configs/mail, DMARC) and ``remote.test``
(a remote domain whose MX is 127.0.0.1, where a stock Postfix listens), and two
domains whose SPF fails from 127.0.0.1, with DMARC ``p=reject`` (``strict.test``)
and ``p=none`` (``soft.test``).
:class:`MailServer` starts the mail image with the example config, waits for
``mail ready`` and knows its ports; ``kill()`` is a SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli

CONFIG = ROOT / "configs" / "mail" / "config"
SERVICES = ("smtp", "submission", "smtps", "imap", "imaps")
DKIM_KEY = CONFIG / "dkim" / "example.test.pem"


_GIVEN: set[int] = set()


def free_port() -> int:
    """A free TCP port not handed out before in this test run (the kernel may give a
    port that was just released to the next caller)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def build_images(work: Path) -> dict[str, Path]:
    cli = Cli(work)
    cli("configure", ROOT / "appliances" / "mail", "--target", "unix")
    cli("build", ROOT / "appliances" / "mail", timeout=300)
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct")
    cli("build", ROOT / "appliances" / "dns")
    return {"mail": cli.image("mail-unix"), "dns": cli.image("dns-unix")}


def dkim_txt() -> str:
    from ingot.plugins.smtp import authcheck

    return authcheck.dkim_public_txt(DKIM_KEY.read_bytes())


def _txt(text: str) -> str:
    """A TXT RDATA of 255-byte strings."""
    return " ".join('"' + text[i:i + 255] + '"' for i in range(0, len(text), 255))


def write_zones(folder: Path, *, extra_example: str = "", extra_remote: str = "",
                extra_zones: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    soa = "@ 300 IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ 300 IN NS ns1\nns1 300 IN A 127.0.0.1\n"
    (folder / "example.test.zone").write_text(
        "$ORIGIN example.test.\n$TTL 300\n" + soa
        + "@ IN MX 10 mail\nmail IN A 127.0.0.1\n"
        + '@ IN TXT "v=spf1 ip4:127.0.0.1 -all"\n'
        + f"ingot._domainkey IN TXT {_txt(dkim_txt())}\n"
        + '_dmarc IN TXT "v=DMARC1; p=reject; adkim=r; aspf=r"\n' + extra_example)
    (folder / "remote.test.zone").write_text(
        "$ORIGIN remote.test.\n$TTL 300\n" + soa
        + "@ IN MX 10 mx\nmx IN A 127.0.0.1\n" + extra_remote)
    for name, text in (extra_zones or {}).items():
        (folder / f"{name}.zone").write_text(f"$ORIGIN {name}.\n$TTL 300\n" + soa + text)
    return folder


class Process:
    """A started image whose output is read until a line matches ``ready``."""

    def __init__(self, argv: list[str], ready: str, what: str, timeout: float = 60) -> None:
        self.what = what
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"{what} exited:\n" + "".join(self.lines))
            self.lines.append(line)
            if ready in line:
                # from now on a thread keeps reading, so the pipe never fills up
                self.reader = threading.Thread(target=self._read, daemon=True)
                self.reader.start()
                return
        self.proc.kill()
        raise AssertionError(f"{what} did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_line(self, pattern: str, timeout: float = 30) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if rx.search(line):
                    return line
            seen = max(0, len(self.lines) - 1)
            time.sleep(0.05)
        raise AssertionError(f"{self.what}: no line matching {pattern!r}:\n"
                             + "".join(self.lines[-30:]))

    def _end(self) -> str:
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "reader", None):
            self.reader.join(timeout=10)
        return "".join(self.lines)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._end()

    def kill(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self._end()


class Dns(Process):
    def __init__(self, image: Path, zones: Path) -> None:
        self.port = free_port()
        super().__init__([sys.executable, str(image), "--port", str(self.port), "--zones-path",
                          str(zones)], "msg=listening", "dns")


class MailServer(Process):
    """The mail image on free ports, with the example config and folders under ``root``."""

    def __init__(self, image: Path, root: Path, dns_port: int, *args: str,
                 ports: dict[str, int] | None = None, config: Path = CONFIG,
                 stores: tuple[str, ...] | None = None) -> None:
        """``stores`` replaces the default ``--queue-path``/``--mailboxes-path`` arguments."""
        self.root = root
        self.ports = ports or {s: free_port() for s in SERVICES}
        self.queue = root / "queue"
        self.mailboxes = root / "mailboxes"
        if stores is None:
            stores = ("--queue-path", str(self.queue), "--mailboxes-path", str(self.mailboxes))
        argv = [sys.executable, str(image), "--config-path", str(config), *stores,
                "--resolver-upstreams", f"127.0.0.1:{dns_port}", "--domains", "example.test",
                "--hostname", "mail.example.test",
                "--smtp-port", str(self.ports["smtp"]),
                "--submission-port", str(self.ports["submission"]),
                "--smtps-port", str(self.ports["smtps"]),
                "--imap-port", str(self.ports["imap"]),
                "--imaps-port", str(self.ports["imaps"]), *args]
        super().__init__(argv, "mail ready", "mail")

    def mailbox(self, user: str) -> list[bytes]:
        """The messages in a user's INBOX (new/ and cur/), oldest first, exact bytes."""
        box = self.mailboxes / user
        files = [p for sub in ("new", "cur") if (box / sub).is_dir()
                 for p in (box / sub).iterdir()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.stat().st_mtime_ns)]

    def wait_mailbox(self, user: str, n: int, timeout: float = 60) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.mailbox(user)
            if len(got) >= n:
                return got
            time.sleep(0.1)
        raise AssertionError(f"{user} has {len(self.mailbox(user))} messages, expected {n}")

    def queued(self) -> list[str]:
        q = self.queue / "queue"
        return sorted(os.listdir(q)) if q.is_dir() else []

    def log_lines(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [line for line in list(self.lines) if rx.search(line)]


def swaks(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swaks", "--timeout", "30", *args], capture_output=True,
                          text=True, timeout=timeout)


def replies(out: str) -> list[str]:
    """The server's reply lines in a swaks transcript ('<-  250 ...', '<~  ...', '<** ...')."""
    return [m.group(1) for m in re.finditer(r"^<(?:-|~|\*\*|~\*) +(.*)$", out, re.M)]


def dig_txt(dns_port: int, name: str) -> bytes | None:
    """A TXT lookup straight at the DNS appliance (for dkimpy's dnsfunc)."""
    from dnslib import QTYPE, DNSRecord

    q = DNSRecord.question(name.rstrip("."), "TXT")
    r = DNSRecord.parse(q.send("127.0.0.1", dns_port, timeout=5))
    for rr in r.rr:
        if rr.rtype == QTYPE.TXT:
            return b"".join(bytes(s) for s in rr.rdata.data)
    return None


STRICT_ZONES = {
    "strict.test": '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
    "soft.test": '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n_dmarc IN TXT "v=DMARC1; p=none"\n',
}


# Fixtures (this module is a pytest plugin of tests/conftest.py)

@pytest.fixture(scope="session")
def mail_images(tmp_path_factory) -> dict[str, Path]:
    return build_images(tmp_path_factory.mktemp("mail-images"))


@pytest.fixture
def mail_dns(mail_images, tmp_path):
    server = Dns(mail_images["dns"], write_zones(tmp_path / "zones", extra_zones=STRICT_ZONES))
    yield server
    server.stop()


@pytest.fixture
def start_mail(mail_images, mail_dns, tmp_path):
    """``start_mail(*args, **kw)`` starts a :class:`MailServer`; all are stopped at the end."""
    started: list[MailServer] = []

    def start(*args: str, image: Path | None = None, **kw) -> MailServer:
        server = MailServer(image or mail_images["mail"], tmp_path / "mail", mail_dns.port,
                            *args, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
