"""The SMTP server protocol core, sans I/O (as h11): bytes in, events out, replies as bytes out.

States (``conn.state``)::

    state       input taken                 leaves on
    ---------   -------------------------   ------------------------------------------------
    connect     nothing (call start())      start() -> greet (220 queued)
    greet       commands; EHLO/HELO first   EHLO/HELO -> ready  (greeted, no EHLO yet; also
                                            the state right after tls_started())
    ready       commands                    MAIL answered 2xx -> mail; AUTH -> sasl;
                                            STARTTLS -> tls; QUIT/421 -> closed
    mail        commands (RCPT, DATA, ...)  DATA with a recipient -> data; RSET/EHLO -> ready
    data        message content             CRLF.CRLF -> ready (after the Message answer)
    sasl        SASL response lines         last response / "*" -> ready
    tls         nothing (buffer discarded)  tls_started() -> greet
    closed      nothing                     -

While an event that needs an answer is pending (``conn.pending``: a
:class:`MailFrom`, :class:`RcptTo`, :class:`Message` or :class:`Auth`),
``next_event()`` gives :data:`PAUSED` and further input (pipelined commands,
RFC 2920) stays buffered; it is processed in order once ``answer()`` is
called, so replies leave in command order.

API::

    conn = ServerConnection(settings, implicit_tls=False, tls_info=None)
    conn.start()                    # queue the 220 greeting
    conn.receive_data(data)         # bytes from the peer; b"" = the peer closed
    ev = conn.next_event()          # an event, NEED_DATA or PAUSED
    conn.answer(reply)              # answer the pending MailFrom/RcptTo/Message/Auth
    conn.tls_started(tls_info)      # after the handshake that followed StartTls
    out = conn.data_to_send()       # queued replies (and clears them)

Loop: feed bytes, call ``next_event()`` until it gives ``NEED_DATA`` (read
more) or ``PAUSED`` (answer the pending event; stop reading from the socket
while paused so the buffer stays bounded); send ``data_to_send()``. After a
:class:`Close` event (given again on every further call) flush the output
and close the connection. After :class:`StartTls`: flush (the ``220 2.0.0``
is queued), run the TLS handshake, call ``tls_started()``; every byte
received after the STARTTLS line and before that call is discarded (no
command injection across the handshake, CVE-2011-0411).

End of input (``receive_data(b"")``) is seen once the buffered input before it
has been processed: an event still pending is answered first. Replies carry
RFC 3463 enhanced codes (ENHANCEDSTATUSCODES), except the greeting, the EHLO
and HELO replies, 334 and 354.

The core answers by itself: EHLO/HELO (extension list: SIZE, 8BITMIME,
SMTPUTF8, PIPELINING, ENHANCEDSTATUSCODES, STARTTLS when available and not
active, AUTH when allowed now), NOOP, RSET, VRFY (252), HELP, QUIT, unknown
verbs (500 5.5.1), bad sequences (503 5.5.1), syntax errors (501), unknown
parameters (555 5.5.4), limits (SIZE 552 5.3.4, recipients 452 4.5.3, line
length 500 5.5.2) and the SASL exchange for PLAIN and LOGIN. The application
decides on senders, recipients, messages and credentials.

DATA is scanned with ``bytes.find`` on whole chunks: at most one partial
line (bounded by ``max_data_line``) stays in the input buffer, and once the
message is over ``max_message_size`` (or broken: a line over
``max_data_line``, a bare CR or LF) its content is counted and dropped, so
memory stays bounded for any DATA size. The only terminator is CRLF.CRLF
(or ``.`` CRLF right after the 354); a broken message is refused at its
end (552 5.3.4, 500 5.5.2, 550 5.5.2) and gives no :class:`Message`.
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from dataclasses import dataclass, field

from .wire import CommandError, Reply, parse_command, parse_mail_args

__all__ = [
    "ServerSettings", "ServerConnection", "LocalProtocolError", "NEED_DATA", "PAUSED",
    "Hello", "MailFrom", "RcptTo", "Message", "Envelope", "StartTls", "Auth", "Reset", "Quit",
    "Close", "AUTH_LINE_MAX",
    "CONNECT", "GREET", "READY", "MAIL", "DATA", "SASL", "TLS", "CLOSED",
]

AUTH_LINE_MAX = 12288   # RFC 4954 4: AUTH command and SASL response lines

CONNECT, GREET, READY, MAIL, DATA, SASL, TLS, CLOSED = (
    "connect", "greet", "ready", "mail", "data", "sasl", "tls", "closed")


class LocalProtocolError(Exception):
    """The application used the core wrongly (answer with nothing pending, ...)."""


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")


@dataclass(frozen=True)
class ServerSettings:
    hostname: str
    max_message_size: int
    max_recipients: int = 100
    max_command_line: int = 512
    max_data_line: int = 1000
    starttls: bool = False
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    auth_requires_tls: bool = True
    require_auth: bool = False
    require_tls: bool = False
    max_errors: int = 20
    smtputf8: bool = True
    eightbitmime: bool = True
    pipelining: bool = True
    banner: str = "ESMTP"


# ---------------------------------------------------------------- events

@dataclass(frozen=True)
class Hello:
    """EHLO (``extended``) or HELO was answered by the core. Informational."""
    name: str
    extended: bool


@dataclass(frozen=True)
class MailFrom:
    """MAIL FROM passed the core's checks; needs an answer (2xx starts the transaction)."""
    sender: str
    params: dict = field(hash=False)
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False


@dataclass(frozen=True)
class RcptTo:
    """RCPT TO passed the core's checks; needs an answer (2xx adds the recipient)."""
    recipient: str
    params: dict = field(hash=False)


@dataclass(frozen=True)
class Envelope:
    helo: str
    sender: str
    recipients: tuple[str, ...]
    mail_params: dict = field(hash=False)
    smtputf8: bool = False
    body: str | None = None
    tls: bool = False
    auth_user: str | None = None


@dataclass(frozen=True)
class Message:
    """A whole, un-dot-stuffed message within every limit; needs an answer."""
    envelope: Envelope
    data: bytes


@dataclass(frozen=True)
class StartTls:
    """``220 2.0.0 Ready to start TLS`` is queued: flush, handshake, call ``tls_started()``."""


@dataclass(frozen=True)
class Auth:
    """Credentials from a finished SASL exchange; needs an answer (235 2.7.0 / 535 5.7.8)."""
    mechanism: str
    authzid: str | None
    username: str
    password: str


@dataclass(frozen=True)
class Reset:
    """The mail transaction was reset (RSET, or EHLO/HELO/STARTTLS abandoning one)."""


@dataclass(frozen=True)
class Quit:
    """QUIT was answered with 221; a :class:`Close` follows."""


@dataclass(frozen=True)
class Close:
    """Flush the output, then close the connection."""
    reason: str


# ---------------------------------------------------------------- canned replies

def _r(code: int, enhanced: str | None, text: str) -> Reply:
    return Reply.of(code, text, enhanced)


R_OK = _r(250, "2.0.0", "OK")
R_RESET = _r(250, "2.0.0", "Reset OK")
R_BYE = _r(221, "2.0.0", "Bye")
R_DATA = _r(354, None, "End data with <CR><LF>.<CR><LF>")
R_TLS_GO = _r(220, "2.0.0", "Ready to start TLS")
R_VRFY = _r(252, "2.5.2", "Cannot VRFY user, but will accept message")
R_HELP = _r(214, "2.0.0", "See RFC 5321")
R_UNKNOWN = _r(500, "5.5.1", "Command unrecognized")
R_NOT_IMPL = _r(502, "5.5.1", "Command not implemented")
R_TOO_LONG = _r(500, "5.5.2", "Line too long")
R_BARE_CMD = _r(500, "5.5.2", "Bare CR or LF in command line")
R_BARE_DATA = _r(550, "5.5.2", "Message contains bare LF/CR")
R_TOO_BIG = _r(552, "5.3.4", "Message size exceeds fixed maximum message size")
R_TOO_MANY = _r(452, "4.5.3", "Too many recipients")
R_HELO_FIRST = _r(503, "5.5.1", "Send HELO/EHLO first")
R_NESTED = _r(503, "5.5.1", "Nested MAIL command")
R_NEED_MAIL = _r(503, "5.5.1", "Need MAIL command")
R_NEED_RCPT = _r(503, "5.5.1", "Need RCPT command")
R_NO_VALID = _r(554, "5.5.1", "No valid recipients")
R_NEED_TLS = _r(530, "5.7.0", "Must issue a STARTTLS command first")
R_NEED_AUTH = _r(530, "5.7.0", "Authentication required")
R_ENCRYPT = _r(538, "5.7.11", "Encryption required for requested authentication mechanism")
R_AUTH_AGAIN = _r(503, "5.5.1", "Already authenticated")
R_AUTH_IN_MAIL = _r(503, "5.5.1", "AUTH not allowed during a mail transaction")
R_AUTH_MECH = _r(504, "5.5.4", "Unrecognized authentication type")
R_AUTH_CANCEL = _r(501, "5.7.0", "Authentication cancelled")
R_AUTH_B64 = _r(501, "5.5.2", "Cannot decode response")
R_TLS_ACTIVE = _r(503, "5.5.1", "TLS already active")
R_TLS_NONE = _r(502, "5.5.1", "STARTTLS not available")
R_NO_ARGS = _r(501, "5.5.4", "Syntax error: no arguments allowed")
R_UTF8 = _r(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
R_TOO_MANY_ERRORS = _r(421, "4.7.0", "Too many errors, closing connection")
R_334_EMPTY = Reply(334, ("",))
R_334_USER = Reply(334, ("VXNlcm5hbWU6",))
R_334_PASS = Reply(334, ("UGFzc3dvcmQ6",))

_NO_EVENT = ()


class _Txn:
    __slots__ = ("sender", "params", "size", "body", "smtputf8", "recipients", "tried")

    def __init__(self, ev: MailFrom):
        self.sender = ev.sender
        self.params = ev.params
        self.size = ev.size
        self.body = ev.body
        self.smtputf8 = ev.smtputf8
        self.recipients: list[str] = []
        self.tried = 0


class ServerConnection:
    """One SMTP server connection. See the module docstring for the API and the state table."""

    def __init__(self, settings: ServerSettings, *, implicit_tls: bool = False, tls_info=None):
        self.settings = settings
        self.state = CONNECT
        self.helo: str | None = None
        self.extended = False
        self.auth_user: str | None = None
        self.tls_info = tls_info
        self._tls = implicit_tls
        self._implicit_tls = implicit_tls
        self._in = bytearray()
        self._out: list[bytes] = []
        self._events: deque = deque()
        self._pending = None
        self._txn: _Txn | None = None
        self._eof = False
        self._close: Close | None = None
        self._errors = 0
        self._discard_line = False
        self._sasl: list = []          # [mechanism, step, username, authzid]
        # DATA scanning state
        self._parts: list[bytes] = []
        self._size = 0
        self._crlf_before = True
        self._midline = False
        self._too_big = False
        self._too_long = False
        self._bare = False

    # ------------------------------------------------------------ public

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def closed(self) -> bool:
        return self._close is not None

    @property
    def pending(self):
        """The event waiting for ``answer()``, or None."""
        return self._pending

    @property
    def buffered_size(self) -> int:
        """Bytes held: unprocessed input plus the message collected so far."""
        return len(self._in) + sum(map(len, self._parts))

    def start(self) -> None:
        if self.state != CONNECT:
            raise LocalProtocolError("start() called twice")
        self.state = GREET
        self._send(Reply.of(220, f"{self.settings.hostname} {self.settings.banner}".rstrip()))

    def implicit_tls(self, tls_info=None) -> None:
        """Mark the connection as TLS from the start (port 465): STARTTLS is not offered."""
        if self.state not in (CONNECT, GREET) or self.helo is not None:
            raise LocalProtocolError("implicit_tls() after the dialogue began")
        self._tls = self._implicit_tls = True
        self.tls_info = tls_info

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() after end of input")
            return
        if self._close is not None:
            return
        if data:
            self._in += data
        else:
            self._eof = True

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self):
        while True:
            if self._events:
                return self._events.popleft()
            if self._close is not None:
                return self._close
            if self._pending is not None:
                return PAUSED
            state = self.state
            if state == CONNECT:
                raise LocalProtocolError("call start() first")
            if state == TLS:
                if self._eof:
                    self._closing("peer closed")
                    continue
                return PAUSED
            if state == DATA:
                if not self._scan_data():
                    if self._eof:
                        self._parts.clear()
                        self._closing("peer closed during DATA")
                        continue
                    return NEED_DATA
                continue
            line = self._next_line()
            if line is None:
                if self._eof:
                    self._closing("peer closed")
                    continue
                return NEED_DATA
            if line is _NO_EVENT:
                continue
            if state == SASL:
                self._sasl_step(line)
            else:
                self._command(line)

    def answer(self, reply: Reply) -> None:
        ev = self._pending
        if ev is None:
            raise LocalProtocolError("nothing to answer")
        if not isinstance(reply, Reply):
            raise LocalProtocolError("answer() takes a Reply")
        if 300 <= reply.code < 400:
            raise LocalProtocolError("a 3xx reply cannot answer this event")
        self._pending = None
        ok = reply.positive
        if isinstance(ev, MailFrom):
            if ok:
                self._txn = _Txn(ev)
                self.state = MAIL
        elif isinstance(ev, RcptTo):
            txn = self._txn
            txn.tried += 1
            if ok:
                txn.recipients.append(ev.recipient)
        elif isinstance(ev, Message):
            self._txn = None
            self.state = READY
        elif isinstance(ev, Auth):
            if ok:
                self.auth_user = ev.username
        self._send(reply)
        if reply.code == 421:
            self._closing("421 from the application")

    def tls_started(self, tls_info=None) -> None:
        if self.state != TLS:
            raise LocalProtocolError("tls_started() without a StartTls event")
        self._in.clear()          # no plaintext command survives the handshake
        self._discard_line = False
        self._tls = True
        self.tls_info = tls_info
        self.state = GREET
        self.helo = None
        self.extended = False
        self.auth_user = None
        self._txn = None

    # ------------------------------------------------------------ internals

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _closing(self, reason: str) -> None:
        self.state = CLOSED
        self._close = Close(reason)
        self._in.clear()
        self._parts.clear()

    def _error(self, reply: Reply) -> None:
        self._send(reply)
        self._errors += 1
        if self._errors >= self.settings.max_errors:
            self._send(R_TOO_MANY_ERRORS)
            self._closing("too many errors")

    def _next_line(self):
        """A complete command line (CRLF included), ``_NO_EVENT`` when a bad line was
        answered or discarded, or None when more input is needed."""
        buf = self._in
        nl = buf.find(b"\n")
        if self._discard_line:
            if nl < 0:
                buf.clear()
                return None
            del buf[:nl + 1]
            self._discard_line = False
            return _NO_EVENT
        limit = self.settings.max_command_line
        if nl < 0:
            if len(buf) >= limit and len(buf) >= self._line_limit(buf):
                buf.clear()
                self._discard_line = True
                self._error(R_TOO_LONG)
                return _NO_EVENT
            return None
        line = bytes(buf[:nl + 1])
        del buf[:nl + 1]
        if nl + 1 > limit and nl + 1 > self._line_limit(line):
            self._error(R_TOO_LONG)
            return _NO_EVENT
        if nl == 0 or line[nl - 1] != 13 or b"\r" in line[:-2]:
            self._error(R_BARE_CMD)
            return _NO_EVENT
        return line

    def _line_limit(self, head) -> int:
        if self.state == SASL or head[:5].upper() == b"AUTH ":
            return max(AUTH_LINE_MAX, self.settings.max_command_line)
        return self.settings.max_command_line

    def _emit(self, ev, needs_answer: bool = False) -> None:
        self._events.append(ev)
        if needs_answer:
            self._pending = ev

    def _reset_txn(self) -> None:
        if self._txn is not None:
            self._txn = None
            self._emit(Reset())
        if self.state == MAIL:
            self.state = READY

    # ------------------------------------------------------------ commands

    def _command(self, line: bytes) -> None:
        try:
            verb, arg = parse_command(line)
        except CommandError as e:
            self._error(e.reply)
            return
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._error(R_UNKNOWN)
            return
        try:
            handler(self, arg)
        except CommandError as e:
            self._error(e.reply)

    def _cmd_ehlo(self, arg: str, extended: bool = True) -> None:
        name = arg.split(" ", 1)[0] if arg else ""
        if not name:
            raise CommandError(_r(501, "5.5.4", f"Syntax: {'EHLO' if extended else 'HELO'} hostname"))
        self._reset_txn()
        self.helo = name
        self.extended = extended
        self.state = READY
        s = self.settings
        if extended:
            lines = [s.hostname, f"SIZE {s.max_message_size}"]
            if s.eightbitmime:
                lines.append("8BITMIME")
            if s.smtputf8:
                lines.append("SMTPUTF8")
            if s.pipelining:
                lines.append("PIPELINING")
            lines.append("ENHANCEDSTATUSCODES")
            if s.starttls and not self._tls:
                lines.append("STARTTLS")
            if self._auth_allowed():
                lines.append("AUTH " + " ".join(s.auth_mechanisms))
            self._send(Reply(250, tuple(lines)))
        else:
            self._send(Reply(250, (s.hostname,)))
        self._emit(Hello(name, extended))

    def _cmd_helo(self, arg: str) -> None:
        self._cmd_ehlo(arg, extended=False)

    def _auth_allowed(self) -> bool:
        s = self.settings
        return (bool(s.auth_mechanisms) and self.auth_user is None
                and (self._tls or not s.auth_requires_tls))

    def _cmd_mail(self, arg: str) -> None:
        s = self.settings
        if self.helo is None:
            raise CommandError(R_HELO_FIRST)
        if self._txn is not None:
            raise CommandError(R_NESTED)
        if s.require_tls and not self._tls:
            raise CommandError(R_NEED_TLS)
        if s.require_auth and self.auth_user is None:
            raise CommandError(R_NEED_AUTH)
        sender, params = parse_mail_args(arg, "FROM", utf8=None)
        size = body = None
        smtputf8 = False
        for key, value in params.items():
            if not self.extended:
                raise CommandError(_r(555, "5.5.4", f"Unsupported parameter: {key}"))
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    raise CommandError(_r(501, "5.5.4", "Bad SIZE value"))
                size = int(value)
            elif key == "BODY":
                body = (value or "").upper()
                if body not in ("7BIT", "8BITMIME"):
                    raise CommandError(_r(501, "5.5.4", "BODY must be 7BIT or 8BITMIME"))
                if body == "8BITMIME" and not s.eightbitmime:
                    raise CommandError(_r(555, "5.5.4", "Unsupported parameter: BODY=8BITMIME"))
            elif key == "SMTPUTF8" and s.smtputf8:
                if value is not None:
                    raise CommandError(_r(501, "5.5.4", "SMTPUTF8 takes no value"))
                smtputf8 = True
            elif key == "AUTH" and s.auth_mechanisms:
                pass            # RFC 4954 5: accepted, the identity is not trusted
            else:
                raise CommandError(_r(555, "5.5.4", f"Unsupported parameter: {key}"))
        if not smtputf8 and not sender.isascii():
            raise CommandError(R_UTF8)
        if size is not None and size > s.max_message_size:
            raise CommandError(R_TOO_BIG)
        self._emit(MailFrom(sender, params, size, body, smtputf8), needs_answer=True)

    def _cmd_rcpt(self, arg: str) -> None:
        txn = self._txn
        if txn is None:
            raise CommandError(R_NEED_MAIL if self.helo is not None else R_HELO_FIRST)
        if len(txn.recipients) >= self.settings.max_recipients:
            raise CommandError(R_TOO_MANY)
        recipient, params = parse_mail_args(arg, "TO", utf8=txn.smtputf8)
        for key in params:
            raise CommandError(_r(555, "5.5.4", f"Unsupported parameter: {key}"))
        self._emit(RcptTo(recipient, params), needs_answer=True)

    def _cmd_data(self, arg: str) -> None:
        txn = self._txn
        if txn is None:
            raise CommandError(R_NEED_MAIL if self.helo is not None else R_HELO_FIRST)
        if not txn.recipients:
            raise CommandError(R_NO_VALID if txn.tried else R_NEED_RCPT)
        if arg:
            raise CommandError(R_NO_ARGS)
        self._send(R_DATA)
        self.state = DATA
        self._parts = []
        self._size = 0
        self._crlf_before = True
        self._midline = self._too_big = self._too_long = self._bare = False

    def _cmd_bdat(self, arg: str) -> None:
        raise CommandError(R_UNKNOWN)        # CHUNKING is not advertised

    def _cmd_rset(self, arg: str) -> None:
        if arg:
            raise CommandError(R_NO_ARGS)
        self._txn = None
        if self.state == MAIL:
            self.state = READY
        self._send(R_RESET)
        self._emit(Reset())

    def _cmd_noop(self, arg: str) -> None:
        self._send(R_OK)

    def _cmd_vrfy(self, arg: str) -> None:
        if not arg:
            raise CommandError(_r(501, "5.5.4", "Syntax: VRFY address"))
        self._send(R_VRFY)

    def _cmd_expn(self, arg: str) -> None:
        self._send(R_NOT_IMPL)

    def _cmd_help(self, arg: str) -> None:
        self._send(R_HELP)

    def _cmd_quit(self, arg: str) -> None:
        self._send(R_BYE)
        self._emit(Quit())
        self._closing("quit")

    def _cmd_starttls(self, arg: str) -> None:
        if self._tls:
            raise CommandError(R_TLS_ACTIVE)
        if not self.settings.starttls:
            raise CommandError(R_TLS_NONE)
        if arg:
            raise CommandError(R_NO_ARGS)
        if self.helo is None:
            raise CommandError(R_HELO_FIRST)
        self._reset_txn()
        self._send(R_TLS_GO)
        self.state = TLS
        self._emit(StartTls())

    # ------------------------------------------------------------ AUTH (RFC 4954)

    def _cmd_auth(self, arg: str) -> None:
        s = self.settings
        if self.helo is None:
            raise CommandError(R_HELO_FIRST)
        if self.auth_user is not None:
            raise CommandError(R_AUTH_AGAIN)
        if self._txn is not None:
            raise CommandError(R_AUTH_IN_MAIL)
        if not s.auth_mechanisms:
            raise CommandError(R_NOT_IMPL)
        if s.auth_requires_tls and not self._tls:
            raise CommandError(R_ENCRYPT)
        parts = arg.split()
        if not parts or len(parts) > 2:
            raise CommandError(_r(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
        mech = parts[0].upper()
        if mech not in s.auth_mechanisms or mech not in ("PLAIN", "LOGIN"):
            raise CommandError(R_AUTH_MECH)
        initial = parts[1] if len(parts) == 2 else None
        self._sasl = [mech, 0, None]
        if initial is None:
            self.state = SASL
            self._send(R_334_EMPTY if mech == "PLAIN" else R_334_USER)
            return
        self._sasl_response(b"" if initial == "=" else initial.encode("ascii", "replace"))

    def _sasl_step(self, line: bytes) -> None:
        resp = line[:-2].strip(b" ")
        if resp == b"*":
            self.state = READY
            self._error(R_AUTH_CANCEL)
            return
        self._sasl_response(resp)

    def _sasl_response(self, resp: bytes) -> None:
        self.state = READY
        try:
            raw = base64.b64decode(resp, validate=True)
            text = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            self._error(R_AUTH_B64)
            return
        mech, step, user = self._sasl
        if mech == "PLAIN":
            fields = text.split("\0")
            if len(fields) != 3 or not fields[1]:
                self._error(_r(501, "5.5.2", "Malformed PLAIN response"))
                return
            self._emit(Auth("PLAIN", fields[0] or None, fields[1], fields[2]), needs_answer=True)
        elif step == 0:
            if not text:
                self._error(_r(501, "5.5.2", "Empty username"))
                return
            self._sasl = [mech, 1, text]
            self.state = SASL
            self._send(R_334_PASS)
        else:
            self._emit(Auth("LOGIN", None, user, text), needs_answer=True)

    # ------------------------------------------------------------ DATA

    def _scan_data(self) -> bool:
        """Take what can be taken of the message from the input; True when something
        happened (progress, or the end of the message), False when more input is needed."""
        buf = self._in
        limit = self.settings.max_data_line
        progressed = False
        if self._midline:                       # the rest of an over-long line: count, drop
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > 1:
                    self._size += len(buf) - 1
                    del buf[:-1]                # keep a CR that may end the line
                return False
            self._crlf_before = nl > 0 and buf[nl - 1] == 13
            self._size += nl + 1
            del buf[:nl + 1]
            self._midline = False
            progressed = True
        end = buf.rfind(b"\n")
        if end >= 0:
            if self._crlf_before and buf.startswith(b".\r\n"):
                del buf[:3]
                self._end_data()
                return True
            idx = buf.find(b"\r\n.\r\n", 0, end + 1)
            if idx >= 0:
                seg = bytes(buf[:idx + 2])
                del buf[:idx + 5]
                self._take(seg)
                self._end_data()
                return True
            seg = bytes(buf[:end + 1])
            del buf[:end + 1]
            self._take(seg)
            self._crlf_before = seg.endswith(b"\r\n")
            progressed = True
        if len(buf) >= limit:                   # a partial line already too long
            self._too_long = True
            self._midline = True
            self._parts.clear()
            self._size += len(buf) - 1
            del buf[:-1]
            progressed = True
        return progressed

    def _take(self, seg: bytes) -> None:
        """Complete lines of message content (starting at a line start)."""
        if self._too_big or self._too_long or self._bare:
            self._size += len(seg)
            if self._size > self.settings.max_message_size:
                self._too_big = True
            return
        crlf = seg.count(b"\r\n")
        if crlf != seg.count(b"\n") or crlf != seg.count(b"\r"):
            self._bare = True
        elif len(seg) > self.settings.max_data_line and \
                max(map(len, seg.split(b"\n"))) + 1 > self.settings.max_data_line:
            self._too_long = True
        if seg[:1] == b".":
            seg = seg[1:]
        if b"\r\n." in seg:
            seg = seg.replace(b"\r\n.", b"\r\n")
        self._size += len(seg)
        if self._size > self.settings.max_message_size:
            self._too_big = True
        if self._too_big or self._too_long or self._bare:
            self._parts.clear()
        else:
            self._parts.append(seg)

    def _end_data(self) -> None:
        parts, self._parts = self._parts, []
        txn = self._txn
        if self._too_big or self._too_long or self._bare:
            self._txn = None
            self.state = READY
            self._send(R_TOO_BIG if self._too_big else R_TOO_LONG if self._too_long
                       else R_BARE_DATA)
            return
        env = Envelope(self.helo or "", txn.sender, tuple(txn.recipients), txn.params,
                       txn.smtputf8, txn.body, self._tls, self.auth_user)
        self.state = READY      # the transaction ends with the Message answer
        self._emit(Message(env, b"".join(parts)), needs_answer=True)


_HANDLERS = {
    "EHLO": ServerConnection._cmd_ehlo,
    "HELO": ServerConnection._cmd_helo,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "BDAT": ServerConnection._cmd_bdat,
    "RSET": ServerConnection._cmd_rset,
    "NOOP": ServerConnection._cmd_noop,
    "VRFY": ServerConnection._cmd_vrfy,
    "EXPN": ServerConnection._cmd_expn,
    "HELP": ServerConnection._cmd_help,
    "QUIT": ServerConnection._cmd_quit,
    "STARTTLS": ServerConnection._cmd_starttls,
    "AUTH": ServerConnection._cmd_auth,
}
