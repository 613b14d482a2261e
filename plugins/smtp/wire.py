"""SMTP wire syntax, pure functions: replies, command lines, paths, parameters, dot-stuffing.

Nothing here does I/O or keeps state; the server core (:mod:`.server`) and the
client core both build on it.

* :class:`Reply` -- a reply (code, text lines, optional RFC 3463 enhanced code)
  and :meth:`Reply.to_bytes` for the wire form (RFC 5321 4.2, RFC 2034).
* :func:`parse_command` -- one command line to ``(VERB, argument)``.
* :func:`parse_path` -- ``<local@domain>``, ``<>``, source routes, quoted local
  parts, address literals (RFC 5321 4.1.2, 4.1.3; RFC 6531 for UTF-8).
* :func:`parse_mail_args` -- ``FROM:<path> KEY=value ...`` and ``TO:<path> ...``.
* :func:`xtext_decode` / :func:`xtext_encode` -- RFC 3461 xtext.
* :func:`stuff` -- dot-stuffing and the ``.<CRLF>`` terminator for DATA
  (RFC 5321 4.5.2); :func:`unstuff` undoes it for one complete DATA body.

Errors: every parse failure raises :class:`CommandError`, whose ``reply``
is the reply a server sends for it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "Reply", "CommandError", "parse_command", "parse_path", "parse_mail_args",
    "xtext_decode", "xtext_encode", "stuff", "unstuff",
    "MAX_LOCAL_PART", "MAX_DOMAIN", "MAX_PATH",
]

MAX_LOCAL_PART = 64    # octets, RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255       # octets, RFC 5321 4.5.3.1.2
MAX_PATH = 256         # octets with the punctuation, RFC 5321 4.5.3.1.3
_MAX_LABEL = 63

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: ``code`` (200..599, or 3xx), text ``lines`` (no CR/LF), ``enhanced``
    status code such as ``"2.1.0"`` written before the text of every line when set."""

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None

    def __post_init__(self):
        if not isinstance(self.code, int) or not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code!r}")
        if isinstance(self.lines, str):
            raise TypeError("Reply.lines is a tuple of strings")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text holds a line break")
        if self.enhanced is not None:
            if not _ENHANCED.match(self.enhanced):
                raise ValueError(f"bad enhanced status code: {self.enhanced!r}")
            if int(self.enhanced[0]) != self.code // 100:
                raise ValueError("enhanced status class differs from the reply code")

    @classmethod
    def of(cls, code: int, text: str = "", enhanced: str | None = None) -> Reply:
        """A reply from text whose ``\\n`` separate lines."""
        return cls(code, tuple(text.split("\n")), enhanced)

    @property
    def positive(self) -> bool:
        """2xx: the command was accepted."""
        return 200 <= self.code < 300

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def to_bytes(self) -> bytes:
        lines = self.lines or ("",)
        pre = f"{self.enhanced} " if self.enhanced else ""
        last = len(lines) - 1
        out = [f"{self.code}{' ' if i == last else '-'}{pre}{line}\r\n"
               for i, line in enumerate(lines)]
        return "".join(out).encode("utf-8")


class CommandError(Exception):
    """A command (or part of one) that cannot be accepted; ``reply`` says why, for the peer."""

    def __init__(self, reply: Reply):
        super().__init__(f"{reply.code} {reply.enhanced or ''} {reply.text}".replace("  ", " "))
        self.reply = reply


def _err(code: int, enhanced: str, text: str) -> CommandError:
    return CommandError(Reply.of(code, text, enhanced))


# ---------------------------------------------------------------- command lines

_VERB = re.compile(rb"[A-Za-z][A-Za-z0-9]*\Z")


def parse_command(line: bytes, *, utf8: bool = True) -> tuple[str, str]:
    """``b"MAIL FROM:<a@b>\\r\\n"`` -> ``("MAIL", "FROM:<a@b>")``.

    A trailing CRLF (or LF) is removed, the verb upper-cased; the argument is
    the text after the first space with trailing blanks removed. UTF-8 text is
    accepted when ``utf8`` (the path checks decide whether it may appear),
    else only ASCII. Raises :class:`CommandError` (500 5.5.2) on NUL, bare CR,
    bad UTF-8 or 8-bit text without ``utf8``, and (500 5.5.1) on an empty line
    or a verb that is not letters and digits.
    """
    if line.endswith(b"\n"):
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if b"\0" in line or b"\r" in line or b"\n" in line:
        raise _err(500, "5.5.2", "Syntax error: NUL or bare CR/LF in command")
    if line.isascii():
        text = line.decode("ascii")
    elif not utf8:
        raise _err(500, "5.5.2", "Syntax error: 8-bit characters in command")
    else:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _err(500, "5.5.2", "Syntax error: invalid UTF-8 in command") from None
    verb, _, arg = text.partition(" ")
    if not verb or not _VERB.match(verb.encode("utf-8")):
        raise _err(500, "5.5.1", "Syntax error: command unrecognized")
    return verb.upper(), arg.strip(" \t")


# ---------------------------------------------------------------- paths

_U = "\u0080-\U0010ffff"
_ATEXT_A = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_QTEXT_A = r"\x20\x21\x23-\x5b\x5d-\x7e"


def _path_re(utf8: bool) -> re.Pattern[str]:
    u = _U if utf8 else ""
    atext = f"[{_ATEXT_A}{u}]"
    dot_string = f"{atext}+(?:\\.{atext}+)*"
    quoted = f'"(?:[{_QTEXT_A}{u}]|\\\\[\\x20-\\x7e])*"'
    letdig = f"[A-Za-z0-9{u}]"
    sub = f"{letdig}(?:[A-Za-z0-9\\-{u}]*{letdig})?"
    domain = f"{sub}(?:\\.{sub})*"
    literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"
    route = f"@{domain}(?:,@{domain})*:"
    return re.compile(
        f"<(?P<route>{route})?(?P<local>{dot_string}|{quoted})@(?P<domain>{domain}|{literal})>\\Z")


_PATH = {False: _path_re(False), True: _path_re(True)}
_POSTMASTER = re.compile(r"<postmaster>\Z", re.IGNORECASE)
_GENERAL_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")


def _check_literal(lit: str) -> bool:
    inner = lit[1:-1]
    tag, colon, rest = inner.partition(":")
    if not colon:
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            return False
        return True
    if tag.lower() == "ipv6":
        try:
            ipaddress.IPv6Address(rest)
        except ValueError:
            return False
        return True
    return bool(_GENERAL_TAG.match(tag)) and bool(rest)   # General-address-literal


def _check_domain(domain: str) -> bool:
    if domain.startswith("["):
        return _check_literal(domain)
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        return False
    return all(len(label.encode("utf-8")) <= _MAX_LABEL for label in domain.split("."))


def parse_path(text: str, *, allow_empty: bool, utf8: bool,
               allow_postmaster: bool = False) -> str:
    """A reverse- or forward-path to the mailbox it names.

    ``<>`` gives ``""`` (only when ``allow_empty``: the null reverse-path);
    a source route ``<@a,@b:user@d>`` is checked and dropped (RFC 5321 4.1.2);
    a quoted local part is kept as written, quotes included; the domain may
    be an address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, or a
    general ``[tag:text]``). ``<Postmaster>`` without a domain is accepted
    when ``allow_postmaster`` (RCPT, RFC 5321 4.5.1). Limits: local part 64
    octets, domain 255, the whole path 256 (UTF-8 octets).

    Raises :class:`CommandError`: 553 5.6.7 when the path holds non-ASCII
    text and not ``utf8`` (RFC 6531 3.4), else 501 5.1.3 (the caller changes
    it to 5.1.7 for a sender).
    """
    if allow_empty and text == "<>":
        return ""
    if allow_postmaster and _POSTMASTER.match(text):
        return text[1:-1]
    if len(text.encode("utf-8")) > MAX_PATH:
        raise _err(501, "5.1.3", "Path too long")
    m = _PATH[utf8].match(text)
    if m is None:
        if not utf8 and not text.isascii() and _PATH[True].match(text):
            raise _err(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
        raise _err(501, "5.1.3", "Bad address syntax")
    local, domain, route = m.group("local"), m.group("domain"), m.group("route")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise _err(501, "5.1.3", "Local part too long")
    if not _check_domain(domain):
        raise _err(501, "5.1.3", "Bad domain")
    if route:
        for hop in route[:-1].split(","):
            if not _check_domain(hop[1:]):
                raise _err(501, "5.1.3", "Bad source route")
    return f"{local}@{domain}"


# ---------------------------------------------------------------- MAIL / RCPT arguments

_PATH_SPAN = re.compile(r'<(?:"(?:[^"\\]|\\.)*"|[^">])*>')
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE_A = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_VALUE_U = re.compile(f"[\\x21-\\x3c\\x3e-\\x7e{_U}]+\\Z")


def parse_mail_args(arg: str, keyword: str = "FROM", *,
                    utf8: bool | None = None) -> tuple[str, dict[str, str | None]]:
    """``"FROM:<a@b> SIZE=12 BODY=8BITMIME"`` -> ``("a@b", {"SIZE": "12", "BODY": "8BITMIME"})``.

    ``keyword`` is ``"FROM"`` (MAIL: the null path ``<>`` is allowed) or
    ``"TO"`` (RCPT: ``<Postmaster>`` is allowed). The keyword is matched
    without regard to case and may be followed by spaces. Parameter keywords
    are upper-cased, values kept as sent (``None`` for a bare keyword; still
    xtext-encoded where the extension says so). ``utf8``: whether the path
    may hold UTF-8; ``None`` means "when the SMTPUTF8 parameter is present".

    Raises :class:`CommandError`: 501 5.5.4 (no ``FROM:``/``TO:``, bad or
    repeated parameter), 501 5.1.7 (bad sender) / 501 5.1.3 (bad recipient),
    553 5.6.7 (non-ASCII address without UTF-8).
    """
    is_from = keyword.upper() == "FROM"
    head = keyword.upper() + ":"
    usage = f"Syntax: {'MAIL FROM' if is_from else 'RCPT TO'}:<address>"
    if arg[:len(head)].upper() != head:
        raise _err(501, "5.5.4", usage)
    rest = arg[len(head):].lstrip(" ")
    m = _PATH_SPAN.match(rest)
    if m is None:
        raise _err(501, "5.1.7" if is_from else "5.1.3",
                   f"Bad {'sender' if is_from else 'recipient'} address syntax")
    path_text, tail = m.group(0), rest[m.end():]
    if tail and tail[0] != " ":
        raise _err(501, "5.5.4", usage)
    params: dict[str, str | None] = {}
    for item in tail.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not value):
            raise _err(501, "5.5.4", f"Bad parameter syntax: {item}")
        key = key.upper()
        if key in params:
            raise _err(501, "5.5.4", f"Repeated parameter: {key}")
        if eq:
            if not (_VALUE_A if value.isascii() else _VALUE_U).match(value):
                raise _err(501, "5.5.4", f"Bad parameter value: {key}")
            params[key] = value
        else:
            params[key] = None
    if utf8 is None:
        utf8 = "SMTPUTF8" in params
    try:
        path = parse_path(path_text, allow_empty=is_from, utf8=utf8, allow_postmaster=not is_from)
    except CommandError as e:
        if is_from and e.reply.enhanced == "5.1.3":
            raise CommandError(Reply(e.reply.code, ("Bad sender address syntax",)
                                     if e.reply.text == "Bad address syntax" else e.reply.lines,
                                     "5.1.7")) from None
        raise
    return path, params


def xtext_decode(text: str) -> str:
    """RFC 3461 4: ``+XX`` (two upper-case hex digits) stands for one octet. Raises ValueError."""
    if "+" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "+":
            h = text[i + 1:i + 3]
            if len(h) != 2 or not all(ch in "0123456789ABCDEF" for ch in h):
                raise ValueError(f"bad xtext: {text!r}")
            out.append(int(h, 16))
            i += 3
        else:
            out += c.encode("utf-8")
            i += 1
    return out.decode("utf-8", "surrogateescape")


def xtext_encode(text: str) -> str:
    """RFC 3461 4: octets outside ``!``..``~``, and ``+`` and ``=``, become ``+XX``."""
    return "".join(chr(b) if 33 <= b <= 126 and b not in (43, 61) else f"+{b:02X}"
                   for b in text.encode("utf-8"))


# ---------------------------------------------------------------- dot-stuffing

def stuff(data: bytes) -> bytes:
    """A message as sent after ``354``: line ends made CRLF (a bare CR or LF becomes CRLF),
    a CRLF added at the end when missing, every line that starts with ``.`` given another
    ``.``, and the ``.<CRLF>`` terminator appended (RFC 5321 4.5.2). ``b""`` gives ``b".\\r\\n"``."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"\n" in data:
        data = data.replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if b"\n." in data:
        data = data.replace(b"\n.", b"\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"


def unstuff(data: bytes) -> bytes:
    """One complete stuffed DATA body (terminator included or not) back to the message."""
    if data.endswith(b".\r\n") and (len(data) == 3 or data.endswith(b"\r\n.\r\n")):
        data = data[:-3]
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")
