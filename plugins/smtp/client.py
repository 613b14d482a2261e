"""An SMTP client core, sans I/O (RFC 5321, 3207, 2920, 1870, 6152, 6531, 2034).

Bytes in, replies out; commands out as bytes. No socket, clock or randomness:
the relay's async adapter owns the connection, the TLS upgrade and the
timeouts, and calls the steps below between its reads and writes.

Layers
------

:class:`ReplyParser`
    ``feed(data) -> list[ServerReply]``. Lines end in CRLF (a bare LF is
    tolerated); ``250-`` continues a reply, ``250 `` ends it. Every line of a
    reply must carry the same code. A line longer than :data:`MAX_LINE`
    octets, a line that does not start with a code ``[2-5][0-5][0-9]``
    followed by space, hyphen or end of line, and a continuation line with a
    different code raise :class:`RemoteProtocolError`. An enhanced status
    code (``x.y.z``, RFC 2034/3463) leading the text is split off into
    ``ServerReply.enhanced`` when its class agrees with the reply code.

:class:`Extensions`
    ``Extensions.parse(ehlo_reply)``: the EHLO keywords (case-insensitive),
    ``has(name)``, ``params(name)``, ``size`` (the SIZE limit, ``None`` when
    absent or 0 = no fixed limit), ``auth`` (mechanisms) and flags
    ``pipelining``, ``starttls``, ``eightbitmime``, ``smtputf8``,
    ``size_advertised``, ``enhancedstatuscodes``.

:class:`ClientConnection`
    One connection to one server. Usage by an adapter::

        conn = ClientConnection("relay.example.org")
        replies = conn.receive_data(await read())   # greeting
        if conn.host_refused is not None: ...       # 554/421 greeting: next MX
        write(conn.ehlo()); conn.receive_data(...)  # repeat until answered
        if conn.extensions is None: write(conn.helo()) ...   # EHLO got 5xx
        if conn.extensions.starttls:
            write(conn.starttls()); conn.receive_data(...)
            if conn.state is State.TLS_READY:
                ... wrap the transport in TLS ...
                conn.after_tls(); write(conn.ehlo()) ...
        write(conn.mail(sender, size=n, body8bit=False, smtputf8=False))
        write(conn.rcpt(rcpt)); write(conn.data()) ...
        write(conn.message(body)); ... ; write(conn.quit())

    Methods return the bytes to write; ``receive_data(data)`` returns the
    complete replies in the order of the commands they answer (also kept,
    paired with their verbs, in ``conn.answered``). A command may be issued
    while replies are outstanding only when the server advertised PIPELINING
    and every outstanding command is MAIL, RCPT or RSET (RFC 2920 3.1);
    otherwise, and in the wrong state, a :class:`LocalProtocolError` is
    raised. A reply nobody asked for (other than 421), or data following the
    220 to STARTTLS before the TLS handshake (RFC 3207 5, command injection),
    raises :class:`RemoteProtocolError`. A 421 at any time closes the
    connection (``state`` becomes ``CLOSED``).

    ``mail()`` adds ``SIZE=``, ``BODY=8BITMIME`` and ``SMTPUTF8`` only when the
    server advertised them; a message that needs SMTPUTF8 (flag, or a
    non-ASCII address) at a server without it raises
    :class:`LocalProtocolError` (the relay bounces with 5.6.7).
    ``message(data)`` normalises line ends to CRLF (a bare LF becomes CRLF),
    dot-stuffs (RFC 5321 4.5.2) and appends ``.CRLF``.

:class:`Transaction`
    A planner for one message over a ready connection::

        tx = Transaction(conn, sender, recipients, data, size=..., ...)
        out = tx.begin()
        while not tx.done:
            write(out)
            out = tx.receive(conn.receive_data(await read()))
        write(out)          # usually b""; the transaction is over
        result = tx.result  # DeliveryResult

    With PIPELINING, MAIL, every RCPT and DATA go in one write; otherwise one
    command per round trip. Outcomes per recipient: 2xx to RCPT and to the
    final dot = accepted; a 4xx = transient (retry later), a 5xx = permanent
    (bounce). A failed MAIL fails every recipient with its reply. When no
    RCPT is accepted, the DATA reply is not a message rejection (a 354 is
    answered with a lone dot); the transaction is then reset with RSET. A
    DATA refusal or a final 4xx/5xx fails the recipients accepted so far with
    that reply (``message_reply``). A 421, or ``connection_lost()``, leaves
    every undecided recipient transient. A message larger than the server's
    SIZE fails permanently (synthetic 552 5.3.4, RFC 1870); one needing
    SMTPUTF8 at a server without it fails permanently (synthetic 553 5.6.7,
    RFC 6531). Synthetic replies have ``local=True``.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass, field

MAX_LINE = 4096
"""Longest reply line accepted, CRLF included (RFC 5321 allows 512)."""

MAX_REPLY_LINES = 1000
"""Most lines in one multi-line reply."""


class SMTPClientError(Exception):
    """Base of this module's errors."""


class RemoteProtocolError(SMTPClientError):
    """The server misbehaved; the connection cannot be trusted any more."""


class LocalProtocolError(SMTPClientError):
    """The caller used the connection wrongly (or asked for what the server lacks)."""


@dataclass(frozen=True)
class ServerReply:
    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None
    local: bool = False  # synthesised by this module, not sent by the server

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def diagnostic(self) -> str:
        """One line, ``"550 5.1.1 text text"``, for a DSN Diagnostic-Code."""
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        parts.extend(line for line in self.lines if line)
        return " ".join(parts)


_LINE = re.compile(rb"([2-5][0-5][0-9])([ -]|$)(.*)", re.DOTALL)
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: +|$)")


def _split_enhanced(code: int, text: str) -> tuple[str | None, str]:
    m = _ENHANCED.match(text)
    if m is None or int(m.group(1)) != code // 100:
        return None, text
    return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}", text[m.end():]


class ReplyParser:
    """Incremental reply parser: ``feed(bytes) -> list[ServerReply]``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._code: int | None = None
        self._texts: list[str] = []

    @property
    def buffered(self) -> int:
        """Octets received but not yet part of a complete reply line."""
        return len(self._buf)

    @property
    def in_reply(self) -> bool:
        """True while a multi-line reply has begun but not ended."""
        return self._code is not None

    def feed(self, data: bytes) -> list[ServerReply]:
        buf = self._buf
        start = len(buf)
        buf += data
        out: list[ServerReply] = []
        pos = 0
        search = start
        while True:
            nl = buf.find(b"\n", search)
            if nl < 0:
                break
            if nl + 1 - pos > MAX_LINE:
                raise RemoteProtocolError(f"reply line longer than {MAX_LINE} octets")
            end = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
            reply = self._line(bytes(buf[pos:end]))
            if reply is not None:
                out.append(reply)
            pos = nl + 1
            search = pos
        if pos:
            del buf[:pos]
        if len(buf) >= MAX_LINE:
            raise RemoteProtocolError(f"reply line longer than {MAX_LINE} octets")
        return out

    def _line(self, line: bytes) -> ServerReply | None:
        m = _LINE.match(line)
        if m is None:
            raise RemoteProtocolError(f"malformed reply line {line[:40]!r}")
        code = int(m.group(1))
        if self._code is not None and code != self._code:
            raise RemoteProtocolError(
                f"reply code changed within a multi-line reply ({self._code} then {code})")
        text = m.group(3).decode("utf-8", "replace")
        self._texts.append(text)
        if m.group(2) == b"-":
            if len(self._texts) >= MAX_REPLY_LINES:
                raise RemoteProtocolError(f"reply of more than {MAX_REPLY_LINES} lines")
            self._code = code
            return None
        texts, self._texts, self._code = self._texts, [], None
        enhanced, first = _split_enhanced(code, texts[0])
        if enhanced is None:
            return ServerReply(code, tuple(texts))
        lines = [first]
        for t in texts[1:]:
            e, rest = _split_enhanced(code, t)
            lines.append(rest if e == enhanced else t)
        return ServerReply(code, tuple(lines), enhanced)


@dataclass(frozen=True)
class Extensions:
    """The service extensions of an EHLO reply (keywords upper-cased)."""

    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)
    domain: str = ""

    @classmethod
    def parse(cls, reply: ServerReply) -> Extensions:
        if reply.code != 250:
            raise LocalProtocolError(f"not a positive EHLO reply: {reply.code}")
        lines = reply.lines
        first = lines[0].split() if lines else []
        keywords: dict[str, tuple[str, ...]] = {}
        for line in lines[1:]:
            words = line.split()
            if not words:
                continue
            key = words[0].upper()
            params = tuple(words[1:])
            if key.startswith("AUTH="):  # pre-RFC 2554 form "AUTH=LOGIN PLAIN"
                key, params = "AUTH", (key[5:], *params)
            if key in keywords and key == "AUTH":
                params = keywords[key] + params
            keywords[key] = params
        return cls(keywords, first[0] if first else "")

    def has(self, name: str) -> bool:
        return name.upper() in self.keywords

    def params(self, name: str) -> tuple[str, ...]:
        return self.keywords.get(name.upper(), ())

    @property
    def size(self) -> int | None:
        p = self.params("SIZE")
        if p and p[0].isdigit() and int(p[0]) > 0:
            return int(p[0])
        return None

    @property
    def auth(self) -> frozenset[str]:
        return frozenset(m.upper() for m in self.params("AUTH") if m)

    pipelining = property(lambda self: self.has("PIPELINING"))
    starttls = property(lambda self: self.has("STARTTLS"))
    eightbitmime = property(lambda self: self.has("8BITMIME"))
    smtputf8 = property(lambda self: self.has("SMTPUTF8"))
    size_advertised = property(lambda self: self.has("SIZE"))
    enhancedstatuscodes = property(lambda self: self.has("ENHANCEDSTATUSCODES"))


class State(enum.Enum):
    GREETING = "greeting"      # waiting for 220
    CONNECTED = "connected"    # greeted; EHLO/HELO not (yet) accepted
    READY = "ready"            # EHLO/HELO accepted; commands may flow
    TLS_READY = "tls-ready"    # 220 to STARTTLS: do the handshake, then after_tls()
    DATA = "data"              # 354 received: send message()
    CLOSED = "closed"          # QUIT answered, 421, or a refused greeting


_PIPELINABLE = frozenset({"MAIL", "RCPT", "RSET"})
_BAD_IN_PATH = re.compile(r"[\x00-\x20<>\x7f]")
_BAD_IN_NAME = re.compile(r"[\x00-\x20\x7f]")


def _path(address: str, what: str) -> str:
    if _BAD_IN_PATH.search(address):
        raise LocalProtocolError(f"{what} {address!r} has a space, control character or <>")
    return address


class ClientConnection:
    """One SMTP client connection; see the module docstring."""

    def __init__(self, helo_name: str) -> None:
        if not helo_name or _BAD_IN_NAME.search(helo_name):
            raise LocalProtocolError(f"bad HELO name {helo_name!r}")
        self.helo_name = helo_name
        self.state = State.GREETING
        self.extensions: Extensions | None = None
        self.greeting: ServerReply | None = None
        self.host_refused: ServerReply | None = None
        self.answered: list[tuple[str, ServerReply]] = []
        self._pending: deque[str] = deque()
        self._parser = ReplyParser()
        self._smtputf8 = False

    # -- input -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Commands sent whose replies have not arrived."""
        return len(self._pending)

    def receive_data(self, data: bytes) -> list[ServerReply]:
        if self.state is State.TLS_READY and data:
            raise RemoteProtocolError("data received after 220 to STARTTLS, before TLS")
        replies = self._parser.feed(data)
        for i, reply in enumerate(replies):
            self._reply(reply)
            if self.state is State.TLS_READY and (i + 1 < len(replies)
                                                  or self._parser.buffered):
                raise RemoteProtocolError("data received after 220 to STARTTLS, before TLS")
        return replies

    def _reply(self, reply: ServerReply) -> None:
        if self.state is State.GREETING:
            self.greeting = reply
            if reply.code == 220:
                self.state = State.CONNECTED
            elif reply.code in (554, 421):
                self.host_refused = reply
                self.state = State.CLOSED
            else:
                raise RemoteProtocolError(f"greeting is {reply.code}, not 220")
            return
        if not self._pending:
            if reply.code == 421:
                self.state = State.CLOSED
                self.answered.append(("", reply))
                return
            raise RemoteProtocolError(f"unsolicited reply {reply.code}")
        verb = self._pending.popleft()
        self.answered.append((verb, reply))
        if reply.code == 421:
            self.state = State.CLOSED
            self._pending.clear()
            return
        ok = 200 <= reply.code < 300
        if verb == "EHLO" and reply.code == 250:
            self.extensions = Extensions.parse(reply)
            self.state = State.READY
        elif verb == "HELO" and ok:
            self.extensions = Extensions()
            self.state = State.READY
        elif verb == "STARTTLS" and reply.code == 220:
            self.state = State.TLS_READY
        elif verb == "DATA" and reply.code == 354:
            self.state = State.DATA
        elif verb == "QUIT":
            self.state = State.CLOSED

    # -- output ------------------------------------------------------------

    def _send(self, verb: str, line: str, states: tuple[State, ...]) -> bytes:
        if self.state not in states:
            raise LocalProtocolError(f"cannot send {verb} in state {self.state.value}")
        if self._pending:
            pipelining = self.extensions is not None and self.extensions.pipelining
            if not pipelining or not set(self._pending) <= _PIPELINABLE:
                raise LocalProtocolError(
                    f"cannot send {verb} before the replies to {list(self._pending)}")
        self._pending.append(verb)
        return line.encode("utf-8") + b"\r\n"

    def ehlo(self) -> bytes:
        return self._send("EHLO", f"EHLO {self.helo_name}", (State.CONNECTED, State.READY))

    def helo(self) -> bytes:
        return self._send("HELO", f"HELO {self.helo_name}", (State.CONNECTED, State.READY))

    def starttls(self) -> bytes:
        if self.extensions is None or not self.extensions.starttls:
            raise LocalProtocolError("server did not advertise STARTTLS")
        return self._send("STARTTLS", "STARTTLS", (State.READY,))

    def after_tls(self) -> None:
        """The TLS handshake is done: forget everything learnt in clear; EHLO again."""
        if self.state is not State.TLS_READY:
            raise LocalProtocolError(f"after_tls in state {self.state.value}")
        self.extensions = None
        self._parser = ReplyParser()
        self.state = State.CONNECTED

    def mail(self, sender: str, *, size: int | None = None, body8bit: bool = False,
             smtputf8: bool = False) -> bytes:
        ext = self.extensions
        if ext is None:
            raise LocalProtocolError("MAIL before EHLO/HELO was accepted")
        _path(sender, "sender")
        if not sender.isascii():
            smtputf8 = True
        if smtputf8 and not ext.smtputf8:
            raise LocalProtocolError("message needs SMTPUTF8, which the server lacks")
        line = f"MAIL FROM:<{sender}>"
        if size is not None and ext.size_advertised:
            if size < 0:
                raise LocalProtocolError("negative size")
            line += f" SIZE={size}"
        if body8bit and ext.eightbitmime:
            line += " BODY=8BITMIME"
        if smtputf8:
            line += " SMTPUTF8"
        out = self._send("MAIL", line, (State.READY,))
        self._smtputf8 = smtputf8
        return out

    def rcpt(self, recipient: str) -> bytes:
        if not recipient:
            raise LocalProtocolError("empty recipient")
        _path(recipient, "recipient")
        if not recipient.isascii() and not self._smtputf8:
            raise LocalProtocolError("non-ASCII recipient without SMTPUTF8 in MAIL")
        return self._send("RCPT", f"RCPT TO:<{recipient}>", (State.READY,))

    def data(self) -> bytes:
        return self._send("DATA", "DATA", (State.READY,))

    def message(self, data: bytes) -> bytes:
        """The message, CRLF-normalised and dot-stuffed, with ``.CRLF`` appended."""
        if self.state is not State.DATA:
            raise LocalProtocolError(f"message in state {self.state.value}, not after 354")
        self.state = State.READY
        self._pending.append("MESSAGE")
        return stuff(data)

    def rset(self) -> bytes:
        self._smtputf8 = False
        return self._send("RSET", "RSET", (State.READY, State.CONNECTED))

    def quit(self) -> bytes:
        return self._send("QUIT", "QUIT", (State.CONNECTED, State.READY))


def stuff(data: bytes) -> bytes:
    """CRLF-normalise, dot-stuff and terminate a message for DATA."""
    body = data.replace(b"\r\n", b"\n")
    if body and not body.endswith(b"\n"):
        body += b"\n"
    body = (b"\n" + body).replace(b"\n.", b"\n..")[1:]
    return body.replace(b"\n", b"\r\n") + b".\r\n"


@dataclass
class DeliveryResult:
    accepted: list[str] = field(default_factory=list)
    failed: dict[str, ServerReply] = field(default_factory=dict)
    message_reply: ServerReply | None = None
    transient: bool = False  # some recipient failed transiently: retry those

    @property
    def permanent_failures(self) -> dict[str, ServerReply]:
        return {r: rep for r, rep in self.failed.items() if not rep.is_transient}

    @property
    def transient_failures(self) -> dict[str, ServerReply]:
        return {r: rep for r, rep in self.failed.items() if rep.is_transient}


_SIZE_EXCEEDED = ServerReply(552, ("message size exceeds the server's fixed maximum",),
                             "5.3.4", local=True)
_NO_SMTPUTF8 = ServerReply(553, ("message needs SMTPUTF8, which the server lacks",),
                           "5.6.7", local=True)


def _lost(reason: str) -> ServerReply:
    return ServerReply(421, (reason,), "4.4.2", local=True)


class Transaction:
    """Delivers one message over a READY connection; see the module docstring."""

    def __init__(self, conn: ClientConnection, sender: str, recipients: list[str], data: bytes,
                 *, size: int | None = None, body8bit: bool = False,
                 smtputf8: bool = False) -> None:
        if not recipients:
            raise LocalProtocolError("no recipients")
        self.conn = conn
        self.sender = sender
        self.recipients = list(recipients)
        self.data = data
        self.size = len(data) if size is None else size
        self.body8bit = body8bit
        self.smtputf8 = smtputf8
        self.result = DeliveryResult()
        self.done = False
        self._expect: deque[tuple[str, str | None]] = deque()  # (verb, recipient)
        self._rcpt_accepted: list[str] = []
        self._mail_ok: bool | None = None
        self._next_rcpt = 0
        self._empty_dot = False

    # -- outcomes ----------------------------------------------------------

    def _fail(self, rcpts: list[str], reply: ServerReply) -> None:
        for r in rcpts:
            if r not in self.result.failed and r not in self.result.accepted:
                self.result.failed[r] = reply

    def _finish(self) -> None:
        self.done = True
        self.result.transient = any(not rep.is_permanent for rep in self.result.failed.values())

    def _undecided(self) -> list[str]:
        return [r for r in self.recipients
                if r not in self.result.failed and r not in self.result.accepted]

    # -- driving -----------------------------------------------------------

    def begin(self) -> bytes:
        conn, ext = self.conn, self.conn.extensions
        if conn.state is not State.READY or ext is None or conn.pending:
            raise LocalProtocolError("transaction needs a connection in READY state")
        if ext.size is not None and self.size > ext.size:
            self._fail(self.recipients, _SIZE_EXCEEDED)
            self._finish()
            return b""
        utf8 = (self.smtputf8 or not self.sender.isascii()
                or not all(r.isascii() for r in self.recipients))
        if utf8 and not ext.smtputf8:
            self._fail(self.recipients, _NO_SMTPUTF8)
            self._finish()
            return b""
        out = conn.mail(self.sender, size=self.size, body8bit=self.body8bit, smtputf8=utf8)
        self._expect.append(("MAIL", None))
        if not ext.pipelining:
            return out
        parts = [out]
        for r in self.recipients:
            parts.append(conn.rcpt(r))
            self._expect.append(("RCPT", r))
        self._next_rcpt = len(self.recipients)
        parts.append(conn.data())
        self._expect.append(("DATA", None))
        return b"".join(parts)

    def connection_lost(self, reason: str = "connection lost") -> None:
        """The connection broke (or timed out): undecided recipients are transient."""
        if not self.done:
            self._fail(self._undecided(), _lost(reason))
            self._finish()

    def receive(self, replies: list[ServerReply]) -> bytes:
        """Consume replies (from ``conn.receive_data``); return the bytes to write next."""
        out: list[bytes] = []
        for reply in replies:
            if self.done:
                raise LocalProtocolError("reply fed to a finished transaction")
            if not self._expect:
                raise LocalProtocolError("reply fed while nothing is outstanding")
            verb, rcpt = self._expect.popleft()
            if reply.code == 421:
                if verb == "MESSAGE":
                    self.result.message_reply = reply
                self._fail(self._undecided(), reply)
                self._finish()
                return b""
            step = getattr(self, "_on_" + verb.lower())(reply, rcpt)
            if step:
                out.append(step)
        return b"".join(out)

    def _on_mail(self, reply: ServerReply, _: str | None) -> bytes:
        self._mail_ok = 200 <= reply.code < 300
        if not self._mail_ok:
            self._fail(self.recipients, reply)
            if not self._expect:  # not pipelined: nothing more is coming
                self._finish()
            return b""
        if self.conn.extensions is not None and not self.conn.extensions.pipelining:
            return self._send_next_rcpt()
        return b""

    def _send_next_rcpt(self) -> bytes:
        r = self.recipients[self._next_rcpt]
        self._next_rcpt += 1
        self._expect.append(("RCPT", r))
        return self.conn.rcpt(r)

    def _on_rcpt(self, reply: ServerReply, rcpt: str | None) -> bytes:
        assert rcpt is not None
        if self._mail_ok:
            if 200 <= reply.code < 300:
                self._rcpt_accepted.append(rcpt)
            else:
                self._fail([rcpt], reply)
        if self._expect:  # pipelined: more replies are coming
            return b""
        if self._next_rcpt < len(self.recipients):
            return self._send_next_rcpt()
        if not self._rcpt_accepted:
            return self._reset()
        self._expect.append(("DATA", None))
        return self.conn.data()

    def _on_data(self, reply: ServerReply, _: str | None) -> bytes:
        if reply.code == 354:
            if not self._rcpt_accepted:
                # A server that takes DATA with no recipient: end it empty.
                self._empty_dot = True
                self._expect.append(("MESSAGE", None))
                return self.conn.message(b"")
            self._expect.append(("MESSAGE", None))
            return self.conn.message(self.data)
        if not self._mail_ok:
            self._finish()
            return b""
        if self._rcpt_accepted:
            self.result.message_reply = reply
            self._fail(self._rcpt_accepted, reply)
        return self._reset()

    def _on_message(self, reply: ServerReply, _: str | None) -> bytes:
        if self._empty_dot:
            return self._reset()
        self.result.message_reply = reply
        if 200 <= reply.code < 300:
            self.result.accepted.extend(self._rcpt_accepted)
        else:
            self._fail(self._rcpt_accepted, reply)
        self._finish()
        return b""

    def _reset(self) -> bytes:
        self._expect.append(("RSET", None))
        return self.conn.rset()

    def _on_rset(self, reply: ServerReply, _: str | None) -> bytes:
        self._finish()
        return b""
