"""A stock Postfix as a peer of the mail appliance, in a folder of its own.

The instance has its own configuration directory (``postfix -c DIR``), queue
and log file, listens on 127.0.0.1 only, on a port of the test's choosing,
and never touches /etc/postfix. It is the remote MX of the relay tests:
mail for its ``domain`` goes to one Maildir (``mail/inbox``) through
Postfix's ``virtual`` delivery agent. ``mode`` sets what its smtpd answers
every RCPT: ``accept``, ``defer`` (450, try again later) or ``reject``
(554); :meth:`Postfix.set_mode` changes it with ``postfix reload``.
As a benchmark peer (``discard=True``) it accepts mail and discards it.
"""

from __future__ import annotations

import mailbox
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

MASTERS = ("/etc/postfix/master.cf", "/usr/share/postfix/master.cf.dist")


def _master() -> Path | None:
    return next((Path(m) for m in MASTERS if Path(m).exists()), None)


def available() -> str | None:
    """None when Postfix can run here, else why not."""
    if not shutil.which("postfix") or _master() is None:
        return "postfix is not installed (Debian package postfix)"
    if os.geteuid() != 0:
        return "postfix needs root"
    return None


def _run(*args: str, log: Path | None = None) -> str:
    # Postfix writes its errors to stderr only on a terminal; they are in its log file.
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if proc.returncode:
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stdout}{proc.stderr}{tail}")
    return proc.stdout


class Postfix:
    def __init__(self, root: Path, port: int, *, domain: str = "remote.test",
                 hostname: str = "mx.remote.test", mode: str = "accept",
                 discard: bool = False) -> None:
        self.root = root
        self.port = port
        self.domain = domain
        self.hostname = hostname
        self.discard = discard
        self.etc = root / "etc"
        self.maildir = root / "mail" / "inbox"
        self.log = root / "maillog"
        self.mode = mode
        self.started = False

    def _main_cf(self) -> str:
        r = self.root
        restriction = {"accept": "permit_mynetworks, reject_unauth_destination",
                       "defer": "defer", "reject": "reject"}[self.mode]
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {r}/spool",
            f"data_directory = {r}/data",
            "mail_owner = postfix",
            f"myhostname = {self.hostname}",
            f"mydomain = {self.domain}",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            f"maillog_file = {self.log}",
            f"maillog_file_prefixes = {r}",
            "alias_maps =",
            "alias_database =",
            "smtpd_banner = $myhostname ESMTP",
            "smtputf8_enable = no",
            f"smtpd_recipient_restrictions = {restriction}",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            # answer every message at once, however many arrive
            "default_process_limit = 200",
            "smtpd_client_connection_count_limit = 0",
            "smtpd_client_connection_rate_limit = 0",
            "in_flow_delay = 0",
        ]
        if self.discard:
            lines += [f"relay_domains = {self.domain}", "relay_transport = discard:",
                      "default_transport = discard:"]
        else:
            lines += [f"virtual_mailbox_domains = {self.domain}",
                      f"virtual_mailbox_base = {r}/mail",
                      "virtual_mailbox_maps = static:inbox/",
                      "virtual_uid_maps = static:65534",
                      "virtual_gid_maps = static:65534"]
        return "\n".join(lines) + "\n"

    def _master_cf(self) -> str:
        master = _master()
        assert master is not None
        text = master.read_text()
        # smtpd on our own port; nothing chrooted (the queue is not where Debian's is)
        text = re.sub(r"^smtp\s+inet\s.*$", f"127.0.0.1:{self.port} inet n - n - - smtpd",
                      text, count=1, flags=re.M)
        text = re.sub(r"^(\S+\s+\S+\s+\S+\s+\S+\s+)y(\s)", r"\1n\2", text, flags=re.M)
        text = re.sub(r"^#(postlog\s+unix-dgram.*)$", r"\1", text, flags=re.M)
        return text

    def start(self) -> None:
        for sub in ("etc", "spool", "data", "mail/inbox"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root / "data", "postfix")
        shutil.chown(self.root / "mail", 65534, 65534)
        shutil.chown(self.root / "mail" / "inbox", 65534, 65534)
        for maps in ("/etc/postfix/dynamicmaps.cf", "/usr/share/postfix/dynamicmaps.cf"):
            if Path(maps).exists():
                shutil.copy(maps, self.etc)
                break
        (self.etc / "main.cf").write_text(self._main_cf())
        (self.etc / "master.cf").write_text(self._master_cf())
        # Postfix's own users must reach the queue: every folder above it is opened up
        for folder in [self.root, *self.root.parents]:
            if folder == Path("/"):
                break
            folder.chmod(folder.stat().st_mode | 0o755)
        _run("postfix", "-c", str(self.etc), "check", log=self.log)
        _run("postfix", "-c", str(self.etc), "start", log=self.log)
        self.started = True
        self._wait_listening()

    def _wait_listening(self) -> None:
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"postfix did not listen on port {self.port}:\n{self.log_text()}")

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        (self.etc / "main.cf").write_text(self._main_cf())
        _run("postfix", "-c", str(self.etc), "reload", log=self.log)
        time.sleep(1.0)  # the reload restarts smtpd processes
        self._wait_listening()

    def stop(self) -> None:
        if self.started:
            subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True,
                           timeout=60)
            self.started = False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def messages(self) -> list[bytes]:
        """Every message delivered to the Maildir, as the exact bytes stored."""
        if not (self.maildir / "new").exists():
            return []
        box = mailbox.Maildir(self.maildir, factory=None, create=False)
        return [box.get_bytes(k) for k in sorted(box.keys())]

    def wait_messages(self, n: int, timeout: float = 60.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= n:
                return got
            time.sleep(0.2)
        raise AssertionError(f"postfix holds {len(self.messages())} messages, expected {n}:\n"
                             + self.log_text()[-3000:])
