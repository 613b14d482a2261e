"""The mail appliance's IMAP service under bad input, over raw sockets: malformed commands, too
many errors, literals over the limit (synchronizing and not), clients vanishing mid-APPEND,
random bytes on concurrent connections, an endless line, LOGIN before STARTTLS and broken SASL.

After each attack the service must still serve (the same session, or a new one), no partial
message may be in any mailbox folder (new/, cur/; tmp/ once the server stopped cleanly), the
seeded messages are all there byte for byte, and the log has no Traceback (Principle 4).
"""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.interop.mail_harness import MailServer

pytestmark = pytest.mark.slow

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORDS = {ALICE: "alice-password", BOB: "bob-password"}
PLAIN = ("--imap-plaintext", "true")


# ------------------------------------------------------------------ a raw IMAP client

class Imap:
    """A plain socket speaking IMAP line by line (nothing fixed up in what we send)."""

    def __init__(self, port: int, timeout: float = 15) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.greeting = self.line()
        assert self.greeting.startswith("* OK"), self.greeting

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def line(self, timeout: float | None = None) -> str:
        """The next line (without CRLF); "" when the server closed; socket.timeout raised."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        while b"\r\n" not in self.buf:
            try:
                if not self._fill():
                    rest, self.buf = self.buf, b""
                    return rest.decode("utf-8", "replace")
            except ConnectionResetError:
                return ""
        raw, self.buf = self.buf.split(b"\r\n", 1)
        text = raw.decode("utf-8", "replace")
        m = re.search(r"\{(\d+)\}$", text)
        if m:  # a literal in a response: keep it in the line
            n = int(m.group(1))
            while len(self.buf) < n:
                if not self._fill():
                    break
            text += self.buf[:n].decode("utf-8", "replace")
            self.buf = self.buf[n:]
            text += self.line(timeout)
        return text

    def until(self, tag: str, timeout: float | None = None) -> list[str]:
        """All lines up to (and with) the tagged reply, or up to the close."""
        lines = []
        while True:
            got = self.line(timeout)
            lines.append(got)
            if got == "" or got.startswith(tag + " "):
                return lines    # (after a * BYE the server closes: that ends it too)

    def cmd(self, tag: str, text: str | bytes) -> list[str]:
        raw = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + raw + b"\r\n")
        return self.until(tag)

    def ok(self, tag: str, text: str | bytes) -> list[str]:
        got = self.cmd(tag, text)
        assert got[-1].startswith(f"{tag} OK"), got
        return got

    def login(self, user: str = ALICE) -> None:
        self.ok("l1", f'LOGIN {user} "{PASSWORDS[user]}"')

    def quiet(self, wait: float = 0.5) -> bytes:
        """Whatever arrives within ``wait`` seconds (b"" if nothing)."""
        self.sock.settimeout(wait)
        got = self.buf
        self.buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                got += data
        except (socket.timeout, ConnectionResetError):
            pass
        return got

    def closed_by_server(self, timeout: float = 10) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def reset(self) -> None:
        """Vanish with a TCP RST (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------------ seeding and checks

def seed_message(i: int) -> bytes:
    return (f"From: Seed <seed@remote.test>\r\nTo: <{ALICE}>\r\nSubject: seed {i}\r\n"
            f"Date: Mon, 1 Jun 2026 10:00:{i:02d} +0000\r\nMessage-ID: <seed{i}@remote.test>\r\n"
            f"\r\nSeeded message {i}.\r\n").encode()


SEED = [seed_message(i) for i in range(3)]


def start(start_mail, tmp_path: Path, *args: str) -> MailServer:
    """A mail server whose alice INBOX holds the SEED messages (written before it starts)."""
    new = tmp_path / "mail" / "mailboxes" / ALICE / "new"
    if not new.exists():
        new.mkdir(parents=True)
        for sub in ("cur", "tmp"):
            (new.parent / sub).mkdir()
        for i, raw in enumerate(SEED):
            (new / f"17000000{i:02d}.seed{i}.host").write_bytes(raw)
    return start_mail(*args)


def messages(root: Path) -> Counter:
    """Every message file in any new/ or cur/ under the Maildir root, by content."""
    found: Counter = Counter()
    for sub in ("new", "cur"):
        for p in root.rglob(sub):
            if p.is_dir():
                found.update(f.read_bytes() for f in p.iterdir() if f.is_file())
    return found


def leftovers(root: Path) -> list[Path]:
    return [f for p in root.rglob("tmp") if p.is_dir() for f in p.iterdir()]


def check_store(mail: MailServer, stopped: bool = False) -> None:
    assert messages(mail.mailboxes) == Counter(SEED), "messages changed"
    if stopped:
        assert leftovers(mail.mailboxes) == [], leftovers(mail.mailboxes)


def check_serves(mail: MailServer) -> None:
    """A new session logs in, selects INBOX (the seeded messages, no more) and fetches."""
    c = Imap(mail.ports["imap"])
    try:
        c.login()
        got = c.ok("s1", "SELECT INBOX")
        assert f"* {len(SEED)} EXISTS" in got, got
        got = c.ok("s2", "FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert sum(g.startswith("* ") and " FETCH (" in g for g in got) == len(SEED), got
        c.ok("s3", "LOGOUT")
    finally:
        c.close()


def finish(mail: MailServer) -> None:
    """After an attack: still serving, nothing partial, and after a clean stop no tmp/
    leftover and no Traceback in the log."""
    check_serves(mail)
    check_store(mail)
    log = mail.stop()
    assert "Traceback" not in log, log[-4000:]
    assert mail.proc.returncode is not None
    check_store(mail, stopped=True)


def is_bad(line: str, tag: str) -> bool:
    return line.startswith(f"{tag} BAD") or line.startswith("* BAD")


# ------------------------------------------------------------------ malformed commands

UNAUTH_BAD = [
    b"",                                  # no tag, no command (may be ignored: not sent below)
    b"NOOP",                              # a tag and no command
    b" NOOP",                             # no tag
    b"* NOOP",                            # '*' is no tag
    b"+ NOOP",                            # '+' is no tag
    b"a1",                                # missing command
    b"a2 FROBNICATE",                     # unknown command
    b"a3 NOOP extra",                     # arguments where none belong
    b"a4 LOGIN",                          # missing arguments
    b"a5 LOGIN onlyone",
    b"a6 LOGIN a b c",
    b'a7 LOGIN "unterminated b',
    b"a8 LOGIN {abc}",                    # bad literal syntax
    b"a9 LOGIN {5",
    b"a10 LOGIN {-1}",
    b"a11 LOGIN { 5}",
    b"a12 UID",                           # missing UID subcommand
    b"a13 UID FROB 1",
    b"a14 NO\x00OP",                      # NUL in the command
    b"a15 CAPABILITY\x80\xff",            # 8-bit garbage
    b"a16 AUTHENTICATE",                  # missing mechanism
]

SELECTED_BAD = [
    b"b1 FETCH 0 FLAGS",                  # sequence number 0
    b"b2 FETCH 1: FLAGS",                 # open range
    b"b3 FETCH *:*x FLAGS",
    b"b4 FETCH 1,,2 FLAGS",
    b"b5 FETCH 1:2:3 FLAGS",
    b"b6 FETCH 4294967296 FLAGS",         # over 2^32-1
    b"b7 FETCH -1 FLAGS",
    b"b8 FETCH 1 (FLAGS",                 # unbalanced parentheses
    b"b9 FETCH 1 FLAGS)",
    b"b10 FETCH 1 ((FLAGS)",
    b"b11 FETCH 1 (FLAGS))",
    b"b12 SEARCH (ALL",
    b"b13 SEARCH ALL)",
    b"b14 SEARCH " + b"(" * 200 + b"ALL" + b")" * 200,   # nesting over the depth limit
    b"b15 FETCH 1 BODY[",
    b"b16 FETCH 1 BODY[HEADER.FIELDS (SUBJECT]",
    b"b17 FETCH 1 BODY[]<1.0>",
    b"b18 FETCH 1 NOSUCHITEM",
    b"b19 STORE 1 +FLAGS (\\Seen",
    b"b20 STORE 1 BADOP (\\Seen)",
    b"b21 SELECT",
    b"b22 COPY 1",
    b"b23 SEARCH SINCE 32-Foo-2026",
    b"b24 FETCH 1 BINARY[1]{3} FLAGS",
    b"b25 APPEND INBOX (\\Seen \"date\" {3}x",
    b"b26 UID FETCH 0:* FLAGS extra",
]


def test_malformed_commands_get_bad_and_the_session_goes_on(start_mail, tmp_path):
    mail = start(start_mail, tmp_path, *PLAIN)
    c = Imap(mail.ports["imap"])
    for n, raw in enumerate(UNAUTH_BAD[1:]):
        tag = raw.split(b" ", 1)[0].decode("ascii", "replace")
        c.send(raw + b"\r\n")
        got = c.line()
        assert is_bad(got, tag), (raw, got)
        # a good command in between keeps the error count low and shows the session lives
        c.ok(f"n{n}", "NOOP")
    c.login()
    c.ok("sel", "SELECT INBOX")
    for n, raw in enumerate(SELECTED_BAD):
        tag = raw.split(b" ", 1)[0].decode()
        got = c.cmd(tag, raw.split(b" ", 1)[1])
        assert is_bad(got[-1], tag), (raw, got)
        assert not any(" FETCH " in g for g in got), (raw, got)
        got = c.ok(f"m{n}", "NOOP")
    c.ok("f", "FETCH 1:* (FLAGS)")
    c.ok("o", "LOGOUT")
    c.close()
    finish(mail)


def test_twenty_bad_commands_in_a_row_end_with_bye(start_mail, tmp_path):
    mail = start(start_mail, tmp_path, *PLAIN)
    c = Imap(mail.ports["imap"])
    c.login()
    for n in range(19):
        got = c.cmd(f"x{n}", "FROBNICATE")
        assert is_bad(got[-1], f"x{n}"), got
    c.ok("alive", "NOOP")           # a good command resets the count
    lines = []
    for n in range(20):
        c.send(f"y{n} FROBNICATE\r\n".encode())
    while True:
        got = c.line()
        lines.append(got)
        if got == "" or got.startswith("* BYE"):
            break
    assert lines[-1].startswith("* BYE"), lines
    assert sum(is_bad(g, g.split(" ")[0]) for g in lines) == 20, lines
    assert c.closed_by_server(), "no close after BYE"
    c.close()
    finish(mail)


# ------------------------------------------------------------------ literals over the limit

def test_literal_over_the_limit_is_refused_before_it_is_sent(start_mail, tmp_path):
    mail = start(start_mail, tmp_path, *PLAIN, "--max-size", "100000")
    c = Imap(mail.ports["imap"])
    c.login()
    c.send(b"t1 APPEND INBOX {200000}\r\n")
    got = c.quiet(1.5)
    assert got.startswith(b"t1 NO [TOOBIG]"), got
    assert got.count(b"\r\n") == 1 and b"+" not in got.split(b"]")[0], got   # no continuation
    c.ok("t2", "NOOP")
    got = c.ok("t3", "SELECT INBOX")
    assert f"* {len(SEED)} EXISTS" in got, got

    # a message within the limit is still accepted (and removed again below)
    body = b"Subject: small\r\n\r\nsmall\r\n"
    c.send(b"t4 APPEND INBOX {%d}\r\n" % len(body))
    assert c.line().startswith("+"), "no continuation for a literal within the limit"
    c.send(body + b"\r\n")
    assert c.until("t4")[-1].startswith("t4 OK")
    c.ok("t5", "STORE 4 +FLAGS.SILENT (\\Deleted)")
    c.ok("t6", "EXPUNGE")

    # non-synchronizing: refused, its bytes skipped (and never run as commands), or BYE
    payload = (b"zz CREATE smuggled\r\n" * (200000 // 20 + 1))[:200000]
    c.send(b"t7 APPEND INBOX {200000+}\r\n" + payload + b"\r\nt8 NOOP\r\n")
    lines = []
    while True:
        got = c.line()
        lines.append(got)
        if got == "" or got.startswith("t8 ") or got.startswith("* BYE"):
            break
    assert not any(g.startswith("zz ") for g in lines), lines[:10]
    if lines[-1].startswith("t8 "):
        assert lines[-1].startswith("t8 OK"), lines
        assert any(g.startswith("t7 NO [TOOBIG]") for g in lines), lines
        got = c.ok("t9", 'LIST "" "*"')
        assert not any("smuggled" in g for g in got), got
        c.ok("t10", "LOGOUT")
    else:
        assert lines[-1].startswith("* BYE"), lines   # closing is RFC 7888-conform too
    c.close()
    assert not (mail.mailboxes / ALICE / ".smuggled").exists()
    finish(mail)


# ------------------------------------------------------------------ vanishing mid-APPEND

@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_vanishing_mid_append_leaves_nothing(start_mail, tmp_path, how):
    mail = start(start_mail, tmp_path, *PLAIN)
    for round_ in range(3):
        c = Imap(mail.ports["imap"])
        c.login()
        c.send(b"a1 APPEND INBOX {5000}\r\n")
        assert c.line().startswith("+"), "no continuation"
        c.send(b"Subject: partial\r\n\r\n" + b"x" * (2000 - 20))
        time.sleep(0.2)
        c.reset() if how == "reset" else c.close()
        time.sleep(0.3)
        check_store(mail)
    finish(mail)


# ------------------------------------------------------------------ random bytes, concurrently

def _garbage(rng: random.Random) -> bytes:
    kind = rng.random()
    n = rng.randint(1, 300)
    raw = bytes(rng.getrandbits(8) for _ in range(n)).replace(b"\r\n", b"")
    if kind < 0.3:          # a tag and random bytes
        raw = b"r%d " % rng.randint(0, 999) + raw
    elif kind < 0.5:        # a command name and random arguments
        raw = b"r%d %s " % (rng.randint(0, 999), rng.choice(
            [b"FETCH", b"SEARCH", b"STORE", b"LOGIN", b"APPEND", b"UID FETCH", b"LIST",
             b"AUTHENTICATE", b"SELECT", b"STATUS"])) + raw
    return raw + b"\r\n"


def test_random_bytes_on_five_connections(start_mail, tmp_path):
    mail = start(start_mail, tmp_path, *PLAIN)
    port = mail.ports["imap"]
    good = Imap(port)
    good.login()
    good.ok("g0", "SELECT INBOX")
    stop = threading.Event()
    served: list[int] = []
    errors: list[str] = []

    def noop_loop() -> None:
        n = 0
        try:
            while not stop.is_set():
                got = good.cmd(f"g{n + 1}", "NOOP")
                if not got[-1].startswith(f"g{n + 1} OK"):
                    errors.append(f"good connection: {got}")
                    return
                n += 1
                time.sleep(0.02)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"good connection: {exc!r}")
        finally:
            served.append(n)

    def attacker(idx: int) -> None:
        rng = random.Random(1000 + idx)
        c = None
        try:
            for _ in range(100):
                if c is None:
                    c = Imap(port)
                    if rng.random() < 0.5:
                        c.login(BOB)
                c.send(_garbage(rng))
                try:
                    got = c.line(timeout=0.3)
                except socket.timeout:
                    continue        # e.g. a literal being waited for
                if got == "" or got.startswith("* BYE"):
                    c.close()
                    c = None
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001
            errors.append(f"attacker {idx}: {exc!r}")
        finally:
            if c is not None:
                c.close()

    loop = threading.Thread(target=noop_loop)
    loop.start()
    attackers = [threading.Thread(target=attacker, args=(i,)) for i in range(5)]
    for t in attackers:
        t.start()
    for t in attackers:
        t.join(120)
    stop.set()
    loop.join(30)
    assert not errors, errors
    assert served and served[0] > 0, served
    good.ok("gz", "FETCH 1:* (FLAGS)")
    good.close()
    finish(mail)


# ------------------------------------------------------------------ an endless line

def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("logged_in", [False, True])
def test_line_without_crlf_is_bounded(start_mail, tmp_path, logged_in):
    mail = start(start_mail, tmp_path, *PLAIN)
    pid = mail.proc.pid
    c = Imap(mail.ports["imap"], timeout=60)
    if logged_in:
        c.login()
    base = _rss_kib(pid)
    peak = base
    chunk = bytes(random.Random(7).choice(b"ABCDEFGH abcdefgh()[]{}0123456789")
                  for _ in range(1 << 20))
    replies = b""
    c.sock.settimeout(60)
    c.send(b"long1 NOOP ")
    for n in range(100):                         # 100 MiB, no CRLF
        c.send(chunk)
        c.sock.setblocking(False)
        try:
            replies += c.sock.recv(65536)
        except BlockingIOError:
            pass
        c.sock.setblocking(True)
        if n % 4 == 0:
            peak = max(peak, _rss_kib(pid))
    peak = max(peak, _rss_kib(pid))
    assert peak - base < 50 * 1024, f"VmRSS grew by {(peak - base) // 1024} MiB"
    c.send(b"\r\n")
    c.buf = replies
    first = c.line(timeout=30)
    assert is_bad(first, "long1"), first
    # the session goes on, or (acceptable) it was closed and a new one goes on
    try:
        got = c.cmd("n1", "NOOP")
        assert got[-1].startswith("n1 OK") or got[-1].startswith("* BYE"), got
    except (BrokenPipeError, ConnectionResetError):
        pass
    c.close()
    finish(mail)


# ------------------------------------------------------------------ authentication

def test_login_before_starttls_is_refused(start_mail, tmp_path):
    mail = start(start_mail, tmp_path, "--imap-plaintext", "false")
    c = Imap(mail.ports["imap"])
    caps = c.ok("c1", "CAPABILITY")
    assert "LOGINDISABLED" in caps[0] and "STARTTLS" in caps[0], caps
    got = c.cmd("c2", f'LOGIN {ALICE} "alice-password"')
    assert got[-1].startswith("c2 NO"), got
    got = c.cmd("c3", "AUTHENTICATE PLAIN")
    assert got[-1].startswith("c3 NO") or got[-1].startswith("c3 BAD"), got
    # still not authenticated: no mailbox access
    got = c.cmd("c4", "SELECT INBOX")
    assert got[-1].startswith("c4 BAD") or got[-1].startswith("c4 NO"), got
    assert not any("EXISTS" in g for g in got), got
    got = c.ok("c5", "CAPABILITY")
    assert "LOGINDISABLED" in got[0], got
    c.ok("c6", "STARTTLS")                   # and the TLS path is still open
    c.close()
    log = mail.stop()
    assert "Traceback" not in log, log[-4000:]
    check_store(mail, stopped=True)


def test_authenticate_with_bad_base64_is_bad(start_mail, tmp_path):
    mail = start(start_mail, tmp_path, *PLAIN)
    c = Imap(mail.ports["imap"])
    for n, response in enumerate([b"!!!not base64!!!", b"YWxpY2U", b"\xff\xfe\x00",
                                  b"=" * 10, b"YQ==YQ==", b"AGFsaWNl"]):
        c.send(b"p%d AUTHENTICATE PLAIN\r\n" % n)
        assert c.line().startswith("+"), "no SASL continuation"
        c.send(response + b"\r\n")
        got = c.until(f"p{n}")
        # BAD for invalid base64 / a malformed PLAIN message; NO would also do for the
        # last one (valid base64 of a message without the second NUL)
        assert got[-1].startswith(f"p{n} BAD") or got[-1].startswith(f"p{n} NO"), (response, got)
    # invalid base64 specifically must be BAD (RFC 3501 6.2.2)
    c.send(b"q1 AUTHENTICATE PLAIN\r\n")
    assert c.line().startswith("+")
    c.send(b"%%%%\r\n")
    got = c.until("q1")
    assert got[-1].startswith("q1 BAD"), got
    # SASL-IR with bad base64
    got = c.cmd("q2", "AUTHENTICATE PLAIN !!!!")
    assert is_bad(got[-1], "q2"), got
    got = c.cmd("q3", "SELECT INBOX")
    assert not any("EXISTS" in g for g in got), got
    c.login()
    c.ok("q4", "SELECT INBOX")
    c.close()
    finish(mail)
