"""A stock Dovecot IMAP server as a peer, in a folder of its own.

The instance writes its own configuration file under ``root`` (it never reads
or touches /etc/dovecot), listens on 127.0.0.1 only, on the test's port,
without TLS, with plaintext PLAIN/LOGIN authentication against a passwd-file
of ``{PLAIN}`` passwords. Each user's mail is a Maildir at ``root/mail/USER``;
a test may drop messages straight into :meth:`Dovecot.maildir`'s ``new/``.
It runs in the foreground (``dovecot -F``) so that it is stopped by its PID.
Running as root, Dovecot's processes access mail and the passwd-file as the unprivileged
``dovecot`` account, so ``root`` must be reachable by it (not under a 0700 folder).
Dovecot rejects nested ``{ }`` blocks written on one line: blocks here are
written one statement per line.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def available() -> str | None:
    """None when Dovecot can run here, else why not."""
    if not shutil.which("dovecot") or not Path("/usr/lib/dovecot/imap").exists():
        return "dovecot is not installed (Debian package dovecot-imapd)"
    if os.geteuid() != 0:
        return "a standalone Dovecot needs root here (its login processes change user)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dovecot:
    def __init__(self, root: Path, port: int, users: dict[str, str]) -> None:
        self.root = Path(root)
        self.port = port
        self.users = dict(users)
        self.config = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self.proc: subprocess.Popen | None = None

    # -- configuration -------------------------------------------------------------
    def _conf(self) -> str:
        r = self.root
        user, group, uid, gid = self._mail_user()
        lines = [
            "protocols = imap",
            "listen = 127.0.0.1",
            f"base_dir = {r}/run",
            f"state_dir = {r}/state",
            f"log_path = {self.log}",
            f"info_log_path = {self.log}",
            "ssl = no",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            f"mail_location = maildir:{r}/mail/%u",
            f"mail_uid = {user}",
            f"mail_gid = {group}",
            f"first_valid_uid = {uid}",
            f"first_valid_gid = {gid}",
            "mail_fsync = never",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN {r}/passwd",
            "}",
            "userdb {",
            "  driver = static",
            f"  args = uid={user} gid={group} home={r}/home/%u",
            "}",
            "service imap-login {",
            "  inet_listener imap {",
            "    address = 127.0.0.1",
            f"    port = {self.port}",
            "  }",
            "  inet_listener imaps {",
            "    port = 0",
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _mail_user() -> tuple[str, str, int, int]:
        """The account mail is accessed as: the current user, or (Dovecot's imap refuses
        uid 0 from a userdb) the unprivileged ``dovecot`` account when running as root."""
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            pw = pwd.getpwnam("dovecot")
            uid, gid = pw.pw_uid, pw.pw_gid
        return pwd.getpwuid(uid).pw_name, grp.getgrgid(gid).gr_name, uid, gid

    def _own(self, path: Path) -> None:
        _, _, uid, gid = self._mail_user()
        if os.getuid() == 0:
            os.chown(path, uid, gid)

    def maildir(self, user: str) -> Path:
        """The user's Maildir (with cur/ new/ tmp/ made, owned by the mail account)."""
        md = self.root / "mail" / user
        for p in (self.root / "mail", md, md / "cur", md / "new", md / "tmp"):
            p.mkdir(parents=True, exist_ok=True)
            self._own(p)
        return md

    def deliver(self, user: str, name: str, raw: bytes) -> Path:
        """Drop one message into the user's ``new/`` (readable by the mail account)."""
        path = self.maildir(user) / "new" / name
        path.write_bytes(raw)
        self._own(path)
        return path

    # -- life cycle -------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> "Dovecot":
        for d in ("run", "state", "home"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for u in self.users:
            self.maildir(u)
            (self.root / "home" / u).mkdir(parents=True, exist_ok=True)
            self._own(self.root / "home")
            self._own(self.root / "home" / u)
        (self.root / "passwd").write_text(
            "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()))
        self.config.write_text(self._conf())
        # TZ=UTC (Dovecot imports TZ): its SEARCH BEFORE/ON/SINCE then use UTC dates, as
        # a store that keeps internal dates as epoch seconds must
        env = dict(os.environ, TZ="UTC")
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.config)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise RuntimeError(f"dovecot exited ({self.proc.returncode}): {out}{self._tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.settimeout(2)
                    if s.recv(200).startswith(b"* OK"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not listen on {self.port}: {self._tail()}")

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> "Dovecot":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
