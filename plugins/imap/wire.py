"""IMAP wire syntax, sans-I/O: an incremental command parser and a response writer.

The parser is fed the bytes a client sends and hands back events; it never reads
a socket, a clock or a random source.  The adapter answers ``Continue`` with
``+ Ready for literal data``, ``Bad`` with ``TAG BAD text`` (``* BAD`` when the
tag is None), ``BadCharset`` with ``TAG NO [BADCHARSET (UTF-8 US-ASCII)] ...``
and ``TooBig`` with ``TAG NO [TOOBIG] ...`` (or closes, see ``TooBig.non_sync``).

Grammar: RFC 3501 / RFC 9051, with LITERAL+ / LITERAL- (RFC 7888), LIST-EXTENDED
(RFC 5258), SPECIAL-USE (RFC 6154), UIDPLUS (RFC 4315), CONDSTORE (RFC 7162),
IDLE (RFC 2177), ENABLE (RFC 5161), MOVE (RFC 6851), ESEARCH (RFC 4731),
MULTIAPPEND (RFC 3502), UTF8=ACCEPT (RFC 6855).

Limits: ``max_line`` bounds the text of one command outside its literals (all
its lines together), ``max_literal`` bounds the sum of the literals of one
command.  So the bytes the parser holds between calls stay below
``max_line + max_literal`` (plus what was fed and not asked for yet; an
over-long line being dropped keeps a 32-byte tail).  A literal
is copied once, when it is complete; discarded literals are counted, not kept.
Empty lines between commands are ignored.

Command ``args`` (``Command.name`` upper-cased; ``UID FETCH|SEARCH|STORE|COPY|
MOVE|EXPUNGE`` give the second word as name and ``uid=True``):

=============================  ==================================================
CAPABILITY NOOP LOGOUT STARTTLS ``()``
CHECK CLOSE UNSELECT IDLE
NAMESPACE EXPUNGE (not UID)
LOGIN                          ``(user: str, password: str)``
AUTHENTICATE                   ``(mechanism: str, initial_response: bytes | None)``
                               mechanism upper-cased; the base64 text as sent,
                               ``=`` gives ``b""``
ENABLE                         ``(capabilities: tuple[str, ...],)`` upper-cased
SELECT EXAMINE                 ``(mailbox: str, params: tuple[str, ...])``
                               params upper-cased atoms, e.g. ``("CONDSTORE",)``
CREATE DELETE SUBSCRIBE        ``(mailbox: str,)``
UNSUBSCRIBE
RENAME                         ``(old: str, new: str)``
LIST                           ``(ListArgs,)``
LSUB                           ``(reference: str, pattern: str)``
STATUS                         ``(mailbox: str, items: tuple[str, ...])``
APPEND                         ``(mailbox: str, messages: tuple[AppendMessage, ...])``
SEARCH                         ``(SearchArgs,)``
FETCH                          ``(SequenceSet, tuple[FetchItem, ...], changedsince)``
                               ``changedsince: int | None``; CHANGEDSINCE adds a
                               MODSEQ item when absent (RFC 7162 3.1.4.1)
STORE                          ``(SequenceSet, StoreArgs)``
COPY MOVE                      ``(SequenceSet, mailbox: str)``
EXPUNGE (UID)                  ``(SequenceSet,)``
=============================  ==================================================

Mailbox names are decoded from modified UTF-7 (RFC 3501 5.1.3); with
``CommandParser.utf8_accept`` set (after ``ENABLE UTF8=ACCEPT``) they are taken
as UTF-8 as sent.  ``INBOX`` in any case is ``"INBOX"``.  LIST/LSUB patterns are
decoded the same way but keep their case.

Search keys (:class:`SearchKey` ``op`` and ``args``): ``ALL``; ``AND`` (keys...),
``OR`` (a, b), ``NOT`` (k); ``SEQ`` / ``UID`` (SequenceSet); ``FLAG`` / ``NOFLAG``
(flag: ``\\Seen`` ... for SEEN/UNSEEN and friends, the keyword for KEYWORD /
UNKEYWORD); ``RECENT`` ``NEW`` ``OLD`` (no args); ``BEFORE`` ``ON`` ``SINCE``
``SENTBEFORE`` ``SENTON`` ``SENTSINCE`` (datetime.date); ``LARGER`` ``SMALLER``
(int); ``HEADER`` (field, value) also for FROM TO CC BCC SUBJECT (field
upper-cased then); ``BODY`` ``TEXT`` (str); ``MODSEQ`` (int; the optional entry
name and type are dropped).  A parenthesised list and several top-level keys are
``AND``; a bare sequence set is ``SEQ``.

Writer: :func:`serialize`, :func:`response`, :func:`fetch_response`,
:func:`flags_list`, :func:`format_datetime`, :func:`mailbox_value`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import re
from dataclasses import dataclass, field

__all__ = [
    "CommandParser", "NEED_DATA", "Command", "Continue", "Bad", "BadCharset", "TooBig",
    "SequenceSet", "Section", "FetchItem", "SearchKey", "SearchArgs", "StoreArgs",
    "ListArgs", "AppendMessage", "encode_mailbox", "decode_mailbox", "MailboxNameError",
    "Atom", "serialize", "response", "fetch_response", "flags_list", "format_datetime",
    "mailbox_value", "LITERAL_MINUS_MAX", "MAX_NUMBER",
]

LITERAL_MINUS_MAX = 4096         # RFC 7888 4: the largest {n+} under LITERAL-
MAX_NUMBER = 0xFFFFFFFF          # number / nz-number, RFC 3501 9
_MAX_MODSEQ = (1 << 63) - 1      # mod-sequence-value, RFC 7162 7
_MAX_DEPTH = 64                  # nesting of search keys / parentheses
_TAIL = 32                       # bytes kept of an over-long line to see a {n+} at its end


# --------------------------------------------------------------------------- events

class _NeedData:
    __slots__ = ()

    def __repr__(self):
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""Returned by :meth:`CommandParser.next_event` / :meth:`~CommandParser.next_line`
when more bytes must be fed."""


@dataclass(frozen=True, slots=True)
class Command:
    """A complete, well-formed command."""
    tag: str
    name: str
    uid: bool
    args: tuple


@dataclass(frozen=True, slots=True)
class Continue:
    """A synchronizing literal was accepted: send ``+ Ready for literal data``."""


@dataclass(frozen=True, slots=True)
class Bad:
    """A syntax error; the parser already skipped the rest of that command.
    ``tag`` is None when no tag could be read (answer ``* BAD``)."""
    tag: str | None
    text: str


@dataclass(frozen=True, slots=True)
class BadCharset:
    """SEARCH with a charset other than UTF-8 / US-ASCII: answer
    ``TAG NO [BADCHARSET (UTF-8 US-ASCII)] ...`` (RFC 3501 6.4.4)."""
    tag: str
    charset: str
    code: str = "BADCHARSET (UTF-8 US-ASCII)"


@dataclass(frozen=True, slots=True)
class TooBig:
    """A literal over ``max_literal`` (or a ``{n+}`` over 4096 with LITERAL-).

    ``non_sync`` False: nothing of it was read, the client waits for a ``+``
    that never comes; answer ``TAG NO [TOOBIG] ...``.  ``non_sync`` True: the
    client sends the bytes anyway; the parser discards ``size`` bytes and the
    rest of the command.  RFC 7888 4 lets the server close the connection
    instead (then with ``* BYE``)."""
    tag: str
    size: int
    non_sync: bool = False


# --------------------------------------------------------------------------- values

class _Syntax(Exception):
    """Internal: a parse error whose text becomes the BAD text."""


class _Charset(Exception):
    pass


class MailboxNameError(ValueError):
    """A mailbox name is not valid modified UTF-7."""


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence-set; ``None`` in a range stands for ``*``.  A single number
    ``n`` is ``(n, n)``, ``*`` is ``(None, None)``, ``n:*`` is ``(n, None)``."""
    ranges: tuple[tuple[int | None, int | None], ...]

    _RE = re.compile(r"(?:[1-9][0-9]{0,9}|\*)(?::(?:[1-9][0-9]{0,9}|\*))?"
                     r"(?:,(?:[1-9][0-9]{0,9}|\*)(?::(?:[1-9][0-9]{0,9}|\*))?)*\Z")

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        """Parse ``1,3:5,7:*``; raises ValueError (zero, ``$``, junk, > 2^32-1)."""
        if not cls._RE.match(text):
            raise ValueError(f"Invalid sequence set {text[:40]!r}")
        ranges = []
        for part in text.split(","):
            a, _, b = part.partition(":")
            lo = None if a == "*" else int(a)
            hi = lo if not b else (None if b == "*" else int(b))
            if (lo is not None and lo > MAX_NUMBER) or (hi is not None and hi > MAX_NUMBER):
                raise ValueError("Sequence number out of range")
            ranges.append((lo, hi))
        return cls(tuple(ranges))

    def _intervals(self, largest: int) -> list[tuple[int, int]]:
        out = []
        for a, b in self.ranges:
            a = largest if a is None else a
            b = largest if b is None else b
            if a > b:
                a, b = b, a
            a, b = max(a, 1), min(b, largest)
            if a <= b:
                out.append((a, b))
        out.sort()
        merged: list[tuple[int, int]] = []
        for a, b in out:
            if merged and a <= merged[-1][1] + 1:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        return merged

    def resolve(self, largest: int) -> list[int]:
        """Sorted unique numbers in ``1..largest``, ``*`` being ``largest``.

        ``n:m`` is the same as ``m:n`` (RFC 3501 9), so ``n:*`` with ``n >
        largest`` is ``largest:n`` and holds ``largest`` (RFC 3501 6.4.8: ``UID
        n:*`` always matches the last message).  A range with no ``*`` past
        ``largest`` is empty.  For UIDs pass the highest UID and intersect with
        the UIDs in use."""
        out: list[int] = []
        for a, b in self._intervals(largest):
            out.extend(range(a, b + 1))
        return out

    def contains(self, n: int, largest: int) -> bool:
        """Whether ``n`` is in the set, with ``*`` being ``largest``."""
        if n < 1 or n > largest:
            return False
        for a, b in self.ranges:
            a = largest if a is None else a
            b = largest if b is None else b
            if a > b:
                a, b = b, a
            if a <= n <= b:
                return True
        return False

    def __str__(self) -> str:
        parts = []
        for a, b in self.ranges:
            sa = "*" if a is None else str(a)
            parts.append(sa if a == b else f"{sa}:{'*' if b is None else b}")
        return ",".join(parts)


_SECTION_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")


@dataclass(frozen=True, slots=True)
class Section:
    """A body section: ``part`` numbers (``()`` for the message itself), ``text``
    one of None, HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME, and the
    header ``fields`` of HEADER.FIELDS[.NOT] as the client sent them.
    ``Section()`` is ``BODY[]``, the whole message."""
    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        s = ".".join(map(str, self.part))
        if self.text:
            s = f"{s}.{self.text}" if s else self.text
        if self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            s += " (" + " ".join(_astring_text(f) for f in self.fields) + ")"
        return s


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One fetch attribute.  ``name`` is FLAGS, INTERNALDATE, RFC822.SIZE,
    ENVELOPE, BODYSTRUCTURE, BODY, UID, RFC822, RFC822.HEADER, RFC822.TEXT,
    MODSEQ, BINARY or BINARY.SIZE.  ``BODY`` with ``section`` None is the
    non-extensible structure; ``BODY[...]`` / ``BODY.PEEK[...]`` have a section
    (``peek`` for .PEEK) and maybe ``partial`` ``(origin, length)``; BINARY
    items always have a section (part numbers only)."""
    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None

    def response_name(self) -> str:
        """The name the FETCH reply uses: ``BODY[1.TEXT]<0>`` for
        ``BODY.PEEK[1.TEXT]<0.100>``, ``BINARY.SIZE[2]``, ``FLAGS``."""
        if self.section is None:
            return self.name
        s = f"{self.name}[{self.section}]"
        if self.partial is not None:
            s += f"<{self.partial[0]}>"
        return s


@dataclass(frozen=True, slots=True)
class SearchKey:
    """A node of a search-key tree; see the module docstring for the ops."""
    op: str
    args: tuple = ()


@dataclass(frozen=True, slots=True)
class SearchArgs:
    """SEARCH arguments.  ``charset`` as sent (upper-cased) or None;
    ``return_options`` None without RETURN, else the ESEARCH options
    (MIN MAX COUNT ALL); an empty tuple means ALL (RFC 4731 3.1)."""
    charset: str | None
    key: SearchKey
    return_options: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class StoreArgs:
    """STORE arguments: ``mode`` "" (FLAGS), "+" or "-"; ``silent`` for .SILENT."""
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None


@dataclass(frozen=True, slots=True)
class ListArgs:
    """LIST arguments (RFC 5258).  Options are upper-cased; ``status_items`` are
    the items of ``RETURN (STATUS (...))``, with "STATUS" also in
    ``return_options``."""
    reference: str
    patterns: tuple[str, ...]
    select_options: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of APPEND: flags as sent, the aware date-time or None, the data."""
    flags: tuple[str, ...]
    date: _dt.datetime | None
    data: bytes = field(repr=False)


# --------------------------------------------------------------------------- mUTF-7

_MUTF7_RUN = re.compile(r"[^\x20-\x7e]+")
_MUTF7_ENC = re.compile(r"&|[^\x20-\x7e]+")
_MUTF7_SHIFT = re.compile(r"&([^-]*)-")


def _mutf7_run(m: re.Match) -> str:
    g = m.group()
    if g == "&":
        return "&-"
    raw = g.encode("utf-16-be", "surrogatepass")
    return "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode_mailbox(name: str) -> str:
    """A mailbox name in modified UTF-7 (RFC 3501 5.1.3)."""
    return _MUTF7_ENC.sub(_mutf7_run, name)


def decode_mailbox(text: str) -> str:
    """The name a modified UTF-7 mailbox name stands for; raises
    :class:`MailboxNameError` unless ``text`` is the canonical encoding."""
    if "&" not in text:
        if _MUTF7_RUN.search(text):
            raise MailboxNameError("8-bit or control characters in mailbox name")
        return text

    def run(m: re.Match) -> str:
        b = m.group(1)
        if not b:
            return "&"
        b = b.replace(",", "/")
        try:
            raw = base64.b64decode(b + "=" * (-len(b) % 4), validate=True)
            return raw.decode("utf-16-be")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise MailboxNameError("Invalid modified UTF-7 in mailbox name") from None
    name = _MUTF7_SHIFT.sub(run, text)
    if encode_mailbox(name) != text:
        raise MailboxNameError("Mailbox name is not canonical modified UTF-7")
    return name


# --------------------------------------------------------------------------- reader

_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
_LISTMB = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')
_QUOTED = re.compile(rb'"([^"\\\r\n\x00]*(?:\\["\\][^"\\\r\n\x00]*)*)"')
_UNESCAPE = re.compile(rb'\\(["\\])')
_FLAG = re.compile(rb'\\?[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_NUMBER = re.compile(rb'[0-9]+')
_SEQSET = re.compile(rb'[0-9*:,$]+')
_FETCH_NAME = re.compile(rb'[A-Za-z0-9.]+')
_PART = re.compile(rb'[1-9][0-9]{0,9}(?:\.[1-9][0-9]{0,9})*')
_SECTION_TEXT = re.compile(rb'[A-Za-z]+(?:\.[A-Za-z]+)*')
_PARTIAL = re.compile(rb'<([0-9]{1,10})\.([0-9]{1,10})>')
_BASE64 = re.compile(rb'[A-Za-z0-9+/]*={0,2}')
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_DATETIME = re.compile(rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2})'
                       rb' ([+-])([0-9]{2})([0-9]{2})"')
_DATE = re.compile(rb'([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})|"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})"')


class _Reader:
    """A cursor over one command: its lines (literal markers cut off) and the
    literals that follow all but the last line."""
    __slots__ = ("segs", "lits", "i", "line", "pos", "depth")

    def __init__(self, segs: list[bytes], lits: list[bytes], pos: int):
        self.segs, self.lits, self.i = segs, lits, 0
        self.line, self.pos, self.depth = segs[0], pos, 0

    def at_literal(self) -> bool:
        return self.pos == len(self.line) and self.i < len(self.lits)

    def at_end(self) -> bool:
        return self.pos == len(self.line) and self.i == len(self.lits)

    def peek(self) -> bytes:
        return self.line[self.pos:self.pos + 1]

    def take(self, c: bytes) -> bool:
        if self.line.startswith(c, self.pos):
            self.pos += len(c)
            return True
        return False

    def expect(self, c: bytes, what: str) -> None:
        if not self.take(c):
            raise _Syntax(f"Expected {what}")

    def sp(self) -> None:
        if not self.take(b" "):
            raise _Syntax("Missing argument" if self.at_end() else "Expected a space")

    def match(self, rx: re.Pattern, what: str) -> re.Match:
        m = rx.match(self.line, self.pos)
        if m is None:
            raise _Syntax(f"Expected {what}")
        self.pos = m.end()
        return m

    def end(self) -> None:
        if not self.at_end():
            raise _Syntax("Unexpected extra arguments")

    def literal(self) -> bytes:
        if not self.at_literal():
            raise _Syntax("Expected a literal")
        data = self.lits[self.i]
        self.i += 1
        self.line, self.pos = self.segs[self.i], 0
        return data

    def quoted(self) -> bytes:
        m = self.match(_QUOTED, "a quoted string")
        s = m.group(1)
        return _UNESCAPE.sub(rb"\1", s) if b"\\" in s else s

    def string(self, what: str = "a string") -> bytes:
        if self.at_literal():
            return self.literal()
        if self.peek() == b'"':
            return self.quoted()
        raise _Syntax(f"Expected {what}")

    def astring(self, rx: re.Pattern = _ASTRING, what: str = "a string") -> bytes:
        if self.at_literal():
            return self.literal()
        if self.peek() == b'"':
            return self.quoted()
        return self.match(rx, what).group()

    def atom(self, what: str = "an atom") -> str:
        return self.match(_ATOM, what).group().decode("ascii")

    def number(self, what: str = "a number", limit: int = MAX_NUMBER) -> int:
        m = self.match(_NUMBER, what)
        if len(m.group()) > 20 or int(m.group()) > limit:
            raise _Syntax(f"Number out of range in {what}")
        return int(m.group())

    def nz_number(self, what: str = "a number") -> int:
        n = self.number(what)
        if n == 0:
            raise _Syntax(f"Zero is not valid as {what}")
        return n

    def seqset(self) -> SequenceSet:
        text = self.match(_SEQSET, "a sequence set").group().decode("ascii")
        if "$" in text:
            raise _Syntax("The saved search result $ is not supported")
        try:
            return SequenceSet.parse(text)
        except ValueError as e:
            raise _Syntax(str(e)) from None

    def paren_list(self, item, what: str, empty: bool = True) -> list:
        """``"(" [item *(SP item)] ")"``; ``item`` reads one element."""
        self.expect(b"(", f"'(' to open {what}")
        out = []
        if self.take(b")"):
            if not empty:
                raise _Syntax(f"Empty {what}")
            return out
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Syntax("Too deeply nested")
        while True:
            out.append(item())
            if self.take(b")"):
                break
            self.sp()
        self.depth -= 1
        return out


def _utf8(b: bytes, what: str = "string") -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise _Syntax(f"Invalid UTF-8 in {what}") from None


# --------------------------------------------------------------------------- parser

_LITERAL = re.compile(rb'(~?)\{([0-9]{1,20})(\+?)\}\Z')
_HEAD = re.compile(rb'([^\x00-\x20\x7f-\xff(){%*"\\+]+)(?:( )([A-Za-z]+)(?: ([A-Za-z]+))?)?')
_UID_SUBS = frozenset(("FETCH", "SEARCH", "STORE", "COPY", "MOVE", "EXPUNGE"))


class CommandParser:
    """Incremental IMAP command parser: :meth:`feed` bytes, then call
    :meth:`next_event` until it returns :data:`NEED_DATA`.

    ``literal_minus`` makes a ``{n+}`` over 4096 octets a :class:`TooBig`
    (RFC 7888 LITERAL-).  ``utf8_accept`` (settable at any time) takes mailbox
    names as UTF-8 instead of modified UTF-7 (RFC 6855)."""

    def __init__(self, max_literal: int = 64 * 1024 * 1024, max_line: int = 64 * 1024,
                 literal_minus: bool = False, utf8_accept: bool = False):
        self.max_literal = max_literal
        self.max_line = max_line
        self.literal_minus = literal_minus
        self.utf8_accept = utf8_accept
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0            # where the CRLF search resumes, relative to _pos
        self._discard = 0         # bytes still to drop (a refused {n+} literal)
        self._skip = False        # dropping the rest of a refused command
        self._overlong = False    # dropping an over-long line up to its CRLF
        self._reset()

    def _reset(self) -> None:
        self._segs: list[bytes] = []
        self._lits: list[bytes] = []
        self._tag: str | None = None
        self._head = 0
        self._name = ""
        self._uid = False
        self._line_bytes = 0
        self._lit_bytes = 0
        self._need: int | None = None

    # ---------------------------------------------------------------- input

    def feed(self, data: bytes) -> None:
        """Append bytes received from the client."""
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def unparsed(self) -> int:
        """Bytes fed and not consumed yet.  After STARTTLS this must be 0: bytes
        sent before the TLS handshake must not run as commands afterwards."""
        return len(self._buf) - self._pos

    def clear(self) -> None:
        """Forget all unconsumed input and any command being read."""
        self._buf = bytearray()
        self._pos = self._scan = self._discard = 0
        self._skip = self._overlong = False
        self._reset()

    @property
    def buffered(self) -> int:
        """Bytes held: unparsed input plus the parts of the command being read."""
        return (len(self._buf) - self._pos + self._line_bytes
                + sum(len(x) for x in self._lits))

    def _find_line(self, room: int):
        """The next line without CRLF, or None while it is incomplete and within
        ``room``.  An over-long line gives False while incomplete (the caller
        drops it with :meth:`_drop_overlong`) and ``(head, tail)`` when complete
        (its first 256 bytes for the tag, its last 32 for a ``{n+}``)."""
        buf, start = self._buf, self._pos
        i = buf.find(b"\r\n", start + self._scan)
        if i < 0:
            avail = len(buf) - start
            if avail > room:
                return False
            self._scan = max(avail - 1, 0)
            return None
        self._pos, self._scan = i + 2, 0
        if i - start > room:
            return bytes(buf[start:min(i, start + 256)]), bytes(buf[max(start, i - _TAIL):i])
        return bytes(buf[start:i])

    def _drop_overlong(self) -> None:
        """Drop the start of an over-long line but for a tail that may hold {n+}."""
        self._pos = max(self._pos, len(self._buf) - _TAIL)
        self._scan = max(len(self._buf) - self._pos - 1, 0)
        self._overlong = True

    def _skip_line(self, line: bytes) -> None:
        """Drop ``line`` of a refused command, and its {n+} literal if it has one."""
        m = _LITERAL.search(line)
        if m and m.group(3):
            self._discard = int(m.group(2))
            self._skip = True
        else:
            self._skip = False

    def _early_tag(self, line) -> str | None:
        """The tag of the command whose line is over-long, if it can be read."""
        if self._tag is not None:
            return self._tag
        if line is False:
            m = _HEAD.match(self._buf, self._pos, min(len(self._buf), self._pos + 256))
        else:
            m = _HEAD.match(line[0])
        return m.group(1).decode("ascii") if m and m.group(2) else None

    def next_event(self):
        """The next :class:`Command`, :class:`Continue`, :class:`Bad`,
        :class:`BadCharset`, :class:`TooBig`, or :data:`NEED_DATA`."""
        while True:
            if self._discard:
                n = min(self._discard, len(self._buf) - self._pos)
                self._pos += n
                self._discard -= n
                self._scan = 0
                if self._discard:
                    return NEED_DATA
            if self._need is not None:
                n = self._need
                if len(self._buf) - self._pos < n:
                    return NEED_DATA
                with memoryview(self._buf) as view:     # one copy of the literal
                    self._lits.append(bytes(view[self._pos:self._pos + n]))
                self._pos += n
                self._need = None
            dropping = self._overlong or self._skip
            room = self.max_line if dropping else self.max_line - self._line_bytes
            line = self._find_line(room)
            if line is None:
                return NEED_DATA
            if line is False or type(line) is tuple:
                tag = None if dropping else self._early_tag(line)
                self._reset()
                if line is False:
                    self._drop_overlong()
                else:
                    self._overlong = False
                    self._skip_line(line[1])
                if dropping:
                    if line is False:
                        return NEED_DATA
                    continue
                return Bad(tag, "Command line too long")
            if dropping:
                self._overlong = False
                self._skip_line(line)
                continue
            ev = self._on_line(line)
            if ev is not None:
                return ev

    def next_line(self):
        """Line mode, for AUTHENTICATE responses and the DONE of IDLE: the next
        raw line without CRLF, :data:`NEED_DATA`, or ``Bad(None, ...)`` for a
        line over ``max_line`` (dropped up to its CRLF)."""
        while True:
            if self._discard:
                n = min(self._discard, len(self._buf) - self._pos)
                self._pos += n
                self._discard -= n
                self._scan = 0
                if self._discard:
                    return NEED_DATA
            line = self._find_line(self.max_line)
            if line is None:
                return NEED_DATA
            if line is False:
                was = self._overlong
                self._drop_overlong()
                if was:
                    return NEED_DATA
                return Bad(None, "Line too long")
            if self._overlong:
                self._overlong = False
                continue
            if type(line) is tuple:
                return Bad(None, "Line too long")
            return line

    def _on_line(self, line: bytes):
        if not self._segs:
            if not line:
                return None
            m = _HEAD.match(line)
            if m is None or (m.end() < len(line) and not m.group(2)):
                self._skip_line(line)
                return Bad(None, "Invalid tag")
            tag = m.group(1).decode("ascii")
            if not m.group(2):
                self._skip_line(line)
                return Bad(tag, "Missing command")
            if not m.group(3):
                self._skip_line(line)
                return Bad(tag, "Invalid command name")
            name = m.group(3).decode("ascii").upper()
            uid, end = False, m.end(3)
            if name == "UID":
                sub = (m.group(4) or b"").decode("ascii").upper()
                if sub not in _UID_SUBS:
                    self._skip_line(line)
                    return Bad(tag, f"Unknown UID command {sub}" if sub else "Missing UID command")
                name, uid, end = sub, True, m.end(4)
            if line[end:end + 1] not in (b"", b" "):
                self._skip_line(line)
                return Bad(tag, "Invalid command name")
            if name not in _COMMANDS:
                self._skip_line(line)
                return Bad(tag, f"Unknown command {name[:40]}")
            self._tag, self._name, self._uid, self._head = tag, name, uid, end
        self._line_bytes += len(line)
        m = _LITERAL.search(line)
        if m is None:
            self._segs.append(line)
            ev = self._parse()
            self._reset()
            return ev
        tag = self._tag
        size, non_sync = int(m.group(2)), bool(m.group(3))
        if m.group(1):
            self._reset()
            self._skip_line(line)
            return Bad(tag, "literal8 is not supported")
        if (self._lit_bytes + size > self.max_literal
                or (non_sync and self.literal_minus and size > LITERAL_MINUS_MAX)):
            self._reset()
            if non_sync:
                self._discard, self._skip = size, True
            return TooBig(tag, size, non_sync)
        self._segs.append(line[:m.start()])
        self._lit_bytes += size
        self._need = size
        return None if non_sync else Continue()

    def _parse(self):
        tag = self._tag
        r = _Reader(self._segs, self._lits, self._head)
        try:
            args = _COMMANDS[self._name](self, r)
            r.end()
        except _Charset as e:
            return BadCharset(tag, str(e))
        except _Syntax as e:
            return Bad(tag, f"{self._name}: {e}")
        return Command(tag, self._name, self._uid, args)

    # ---------------------------------------------------------------- args

    def mailbox(self, r: _Reader) -> str:
        raw = r.astring(what="a mailbox name")
        return self._mailbox_name(raw, inbox=True)

    def _mailbox_name(self, raw: bytes, inbox: bool) -> str:
        if self.utf8_accept:
            name = _utf8(raw, "mailbox name")
        else:
            try:
                name = decode_mailbox(raw.decode("ascii"))
            except UnicodeDecodeError:
                raise _Syntax("8-bit mailbox name without UTF8=ACCEPT") from None
            except MailboxNameError as e:
                raise _Syntax(str(e)) from None
        if inbox and name.upper() == "INBOX":
            return "INBOX"
        return name

    def pattern(self, r: _Reader) -> str:
        return self._mailbox_name(r.astring(_LISTMB, "a mailbox pattern"), inbox=False)


def _no_args(p, r):
    return ()


def _a_login(p, r):
    r.sp()
    user = _utf8(r.astring(what="a user name"), "user name")
    r.sp()
    return (user, _utf8(r.astring(what="a password"), "password"))


def _a_authenticate(p, r):
    r.sp()
    mech = r.atom("a mechanism name").upper()
    ir = None
    if r.take(b" "):
        ir = r.match(_BASE64, "base64").group()
        if ir == b"=":
            ir = b""
        elif not ir:
            raise _Syntax("Expected base64 or '='")
    return (mech, ir)


def _a_enable(p, r):
    caps = []
    r.sp()
    caps.append(r.atom("a capability").upper())
    while r.take(b" "):
        caps.append(r.atom("a capability").upper())
    return (tuple(caps),)


def _a_select(p, r):
    r.sp()
    box = p.mailbox(r)
    params: tuple[str, ...] = ()
    if r.take(b" "):
        params = tuple(x.upper() for x in r.paren_list(
            lambda: r.atom("a select parameter"), "select parameters", empty=False))
    return (box, params)


def _a_mailbox(p, r):
    r.sp()
    return (p.mailbox(r),)


def _a_rename(p, r):
    r.sp()
    old = p.mailbox(r)
    r.sp()
    return (old, p.mailbox(r))


_LIST_SELECT = frozenset(("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"))
_LIST_RETURN = frozenset(("SUBSCRIBED", "CHILDREN", "STATUS", "SPECIAL-USE"))
_STATUS_ITEMS = frozenset(("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE",
                           "HIGHESTMODSEQ", "DELETED", "APPENDLIMIT"))


def _status_items(r: _Reader) -> tuple[str, ...]:
    items = tuple(x.upper() for x in r.paren_list(
        lambda: r.atom("a status item"), "status items", empty=False))
    for it in items:
        if it not in _STATUS_ITEMS:
            raise _Syntax(f"Unknown status item {it[:40]}")
    return items


def _a_list(p, r):
    r.sp()
    select: tuple[str, ...] = ()
    if r.peek() == b"(":
        select = tuple(x.upper() for x in r.paren_list(
            lambda: r.atom("a selection option"), "selection options"))
        for o in select:
            if o not in _LIST_SELECT:
                raise _Syntax(f"Unknown selection option {o[:40]}")
        if "RECURSIVEMATCH" in select and len(select) == 1:
            raise _Syntax("RECURSIVEMATCH needs another selection option")
        r.sp()
    ref = p.mailbox(r)
    r.sp()
    if r.peek() == b"(":
        patterns = tuple(r.paren_list(lambda: p.pattern(r), "patterns", empty=False))
    else:
        patterns = (p.pattern(r),)
    ret: list[str] = []
    status: tuple[str, ...] = ()
    if r.take(b" "):
        if r.atom("RETURN").upper() != "RETURN":
            raise _Syntax("Expected RETURN")
        r.sp()

        def option():
            nonlocal status
            o = r.atom("a return option").upper()
            if o not in _LIST_RETURN:
                raise _Syntax(f"Unknown return option {o[:40]}")
            if o == "STATUS":
                r.sp()
                status = _status_items(r)
            return o
        ret = r.paren_list(option, "return options")
    return (ListArgs(ref, patterns, select, tuple(ret), status),)


def _a_lsub(p, r):
    r.sp()
    ref = p.mailbox(r)
    r.sp()
    return (ref, p.pattern(r))


def _a_status(p, r):
    r.sp()
    box = p.mailbox(r)
    r.sp()
    return (box, _status_items(r))


def _flag(r: _Reader) -> str:
    return r.match(_FLAG, "a flag").group().decode("ascii")


def _datetime(r: _Reader) -> _dt.datetime:
    m = r.match(_DATETIME, "a date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = _MONTHS.get(mon.decode("ascii").upper())
    if month is None:
        raise _Syntax("Invalid month in date-time")
    off = _dt.timedelta(hours=int(zh), minutes=int(zm))
    try:
        tz = _dt.timezone(-off if sign == b"-" else off)
        return _dt.datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=tz)
    except ValueError:
        raise _Syntax("Invalid date-time") from None


def _a_append(p, r):
    r.sp()
    box = p.mailbox(r)
    msgs = []
    while True:
        r.sp()
        flags: tuple[str, ...] = ()
        date = None
        if r.peek() == b"(":
            flags = tuple(r.paren_list(lambda: _flag(r), "flag list"))
            r.sp()
        if r.peek() == b'"' and _DATETIME.match(r.line, r.pos):
            date = _datetime(r)
            r.sp()
        if not r.at_literal():
            raise _Syntax("The message must be a literal")
        msgs.append(AppendMessage(flags, date, r.literal()))
        if r.at_end():
            break
    return (box, tuple(msgs))


def _a_fetch(p, r):
    r.sp()
    seq = r.seqset()
    r.sp()
    if r.peek() == b"(":
        items = [x for group in r.paren_list(lambda: _fetch_att(r, False), "fetch items",
                                             empty=False) for x in group]
    else:
        items = list(_fetch_att(r, True))
    changed = None
    if r.take(b" "):
        def modifier():
            nonlocal changed
            name = r.atom("a fetch modifier").upper()
            if name != "CHANGEDSINCE":
                raise _Syntax(f"Unknown fetch modifier {name[:40]}")
            r.sp()
            changed = r.number("CHANGEDSINCE", _MAX_MODSEQ)
            return name
        r.paren_list(modifier, "fetch modifiers", empty=False)
        if not any(i.name == "MODSEQ" for i in items):
            items.append(FetchItem("MODSEQ"))
    return (seq, tuple(items), changed)


_FETCH_SIMPLE = frozenset(("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE",
                           "BODY", "UID", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"))
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


def _fetch_att(r: _Reader, macros: bool) -> tuple[FetchItem, ...]:
    name = r.match(_FETCH_NAME, "a fetch item").group().decode("ascii").upper()
    if r.peek() == b"[":
        if name in ("BODY", "BODY.PEEK"):
            section = _section(r)
            return (FetchItem("BODY", section, name == "BODY.PEEK", _partial(r)),)
        if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
            r.take(b"[")
            part = _part(r)
            r.expect(b"]", "']' after the binary section")
            section = Section(part)
            if name == "BINARY.SIZE":
                return (FetchItem(name, section),)
            return (FetchItem("BINARY", section, name == "BINARY.PEEK", _partial(r)),)
        raise _Syntax(f"Unexpected '[' after {name[:40]}")
    if macros and name in _MACROS:
        return tuple(FetchItem(n) for n in _MACROS[name])
    if name not in _FETCH_SIMPLE:
        raise _Syntax(f"Unknown fetch item {name[:40]}")
    return (FetchItem(name),)


def _part(r: _Reader) -> tuple[int, ...]:
    m = _PART.match(r.line, r.pos)
    if m is None:
        return ()
    r.pos = m.end()
    return tuple(int(x) for x in m.group().split(b"."))


def _section(r: _Reader) -> Section:
    r.expect(b"[", "'['")
    part = _part(r)
    text = None
    fields: tuple[str, ...] = ()
    if r.peek() != b"]":
        if part:
            r.expect(b".", "'.' after the part number")
        text = r.match(_SECTION_TEXT, "a section").group().decode("ascii").upper()
        if text not in _SECTION_TEXTS or (text == "MIME" and not part):
            raise _Syntax(f"Invalid section {text[:40]}")
        if text.startswith("HEADER.FIELDS"):
            r.sp()
            fields = tuple(_utf8(x, "header field name") for x in r.paren_list(
                lambda: r.astring(what="a header field name"), "header list", empty=False))
    r.expect(b"]", "']' to close the section")
    return Section(part, text, fields)


def _partial(r: _Reader) -> tuple[int, int] | None:
    if r.peek() != b"<":
        return None
    m = r.match(_PARTIAL, "<origin.length>")
    a, b = int(m.group(1)), int(m.group(2))
    if a > MAX_NUMBER or b > MAX_NUMBER or b == 0:
        raise _Syntax("Invalid partial range")
    return (a, b)


def _a_store(p, r):
    r.sp()
    seq = r.seqset()
    r.sp()
    unchanged = None
    if r.peek() == b"(":
        def modifier():
            nonlocal unchanged
            name = r.atom("a store modifier").upper()
            if name != "UNCHANGEDSINCE":
                raise _Syntax(f"Unknown store modifier {name[:40]}")
            r.sp()
            unchanged = r.number("UNCHANGEDSINCE", _MAX_MODSEQ)
            return name
        r.paren_list(modifier, "store modifiers", empty=False)
        r.sp()
    mode = ""
    if r.take(b"+"):
        mode = "+"
    elif r.take(b"-"):
        mode = "-"
    word = r.atom("FLAGS").upper()
    if word not in ("FLAGS", "FLAGS.SILENT"):
        raise _Syntax("Expected FLAGS, +FLAGS or -FLAGS")
    r.sp()
    if r.peek() == b"(":
        flags = tuple(r.paren_list(lambda: _flag(r), "flag list"))
    else:
        fl = [_flag(r)]
        while r.take(b" "):
            fl.append(_flag(r))
        flags = tuple(fl)
    return (seq, StoreArgs(mode, word == "FLAGS.SILENT", flags, unchanged))


def _a_copy(p, r):
    r.sp()
    seq = r.seqset()
    r.sp()
    return (seq, p.mailbox(r))


def _a_expunge(p, r):
    if not p._uid:
        return ()
    r.sp()
    return (r.seqset(),)


_SYSTEM_FLAGS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
                 "FLAGGED": "\\Flagged", "SEEN": "\\Seen"}
_DATE_KEYS = frozenset(("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"))
_STRING_KEYS = frozenset(("BODY", "TEXT"))
_HEADER_KEYS = frozenset(("FROM", "TO", "CC", "BCC", "SUBJECT"))
_RETURN_OPTS = frozenset(("MIN", "MAX", "COUNT", "ALL"))


def _a_search(p, r):
    r.sp()
    ret = None
    charset = None
    if r.line[r.pos:r.pos + 7].upper() == b"RETURN ":
        r.pos += 7
        ret = tuple(x.upper() for x in r.paren_list(lambda: r.atom("a return option"),
                                                   "return options"))
        for o in ret:
            if o not in _RETURN_OPTS:
                raise _Syntax(f"Unsupported return option {o[:40]}")
        r.sp()
    if r.line[r.pos:r.pos + 8].upper() == b"CHARSET ":
        r.pos += 8
        charset = _utf8(r.astring(what="a charset"), "charset").upper()
        if charset not in ("UTF-8", "US-ASCII"):
            raise _Charset(charset)
        r.sp()
    keys = [_search_key(r)]
    while r.take(b" "):
        keys.append(_search_key(r))
    key = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    return (SearchArgs(charset, key, ret),)


def _search_date(r: _Reader) -> _dt.date:
    m = r.match(_DATE, "a date")
    g = m.groups()
    day, mon, year = g[0:3] if g[0] is not None else g[3:6]
    month = _MONTHS.get(mon.decode("ascii").upper())
    if month is None:
        raise _Syntax("Invalid month in date")
    try:
        return _dt.date(int(year), month, int(day))
    except ValueError:
        raise _Syntax("Invalid date") from None


def _search_string(r: _Reader) -> str:
    return _utf8(r.astring(what="a search string"), "search string")


def _search_key(r: _Reader) -> SearchKey:
    c = r.peek()
    if c == b"(":
        keys = r.paren_list(lambda: _search_key(r), "search keys", empty=False)
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    if c and (c in b"0123456789*$"):
        return SearchKey("SEQ", (r.seqset(),))
    word = r.atom("a search key").upper()
    if word == "ALL" or word in ("RECENT", "NEW", "OLD"):
        return SearchKey(word)
    if word in _SYSTEM_FLAGS:
        return SearchKey("FLAG", (_SYSTEM_FLAGS[word],))
    if word.startswith("UN") and word[2:] in _SYSTEM_FLAGS:
        return SearchKey("NOFLAG", (_SYSTEM_FLAGS[word[2:]],))
    r.sp()
    if word in ("KEYWORD", "UNKEYWORD"):
        return SearchKey("FLAG" if word == "KEYWORD" else "NOFLAG", (r.atom("a keyword"),))
    if word in _DATE_KEYS:
        return SearchKey(word, (_search_date(r),))
    if word in _STRING_KEYS:
        return SearchKey(word, (_search_string(r),))
    if word in _HEADER_KEYS:
        return SearchKey("HEADER", (word, _search_string(r)))
    if word == "HEADER":
        name = _search_string(r)
        r.sp()
        return SearchKey("HEADER", (name, _search_string(r)))
    if word in ("LARGER", "SMALLER"):
        return SearchKey(word, (r.number(word),))
    if word == "UID":
        return SearchKey("UID", (r.seqset(),))
    if word == "NOT":
        r.depth += 1
        if r.depth > _MAX_DEPTH:
            raise _Syntax("Too deeply nested")
        k = _search_key(r)
        r.depth -= 1
        return SearchKey("NOT", (k,))
    if word == "OR":
        r.depth += 1
        if r.depth > _MAX_DEPTH:
            raise _Syntax("Too deeply nested")
        a = _search_key(r)
        r.sp()
        b = _search_key(r)
        r.depth -= 1
        return SearchKey("OR", (a, b))
    if word == "MODSEQ":
        if r.peek() == b'"':
            r.quoted()
            r.sp()
            kind = r.atom("an entry type").lower()
            if kind not in ("priv", "shared", "all"):
                raise _Syntax("Invalid MODSEQ entry type")
            r.sp()
        return SearchKey("MODSEQ", (r.number("MODSEQ", _MAX_MODSEQ),))
    raise _Syntax(f"Unknown search key {word[:40]}")


_COMMANDS = {
    "CAPABILITY": _no_args, "NOOP": _no_args, "LOGOUT": _no_args, "STARTTLS": _no_args,
    "CHECK": _no_args, "CLOSE": _no_args, "UNSELECT": _no_args, "IDLE": _no_args,
    "NAMESPACE": _no_args, "EXPUNGE": _a_expunge,
    "LOGIN": _a_login, "AUTHENTICATE": _a_authenticate, "ENABLE": _a_enable,
    "SELECT": _a_select, "EXAMINE": _a_select,
    "CREATE": _a_mailbox, "DELETE": _a_mailbox, "SUBSCRIBE": _a_mailbox,
    "UNSUBSCRIBE": _a_mailbox, "RENAME": _a_rename,
    "LIST": _a_list, "LSUB": _a_lsub, "STATUS": _a_status, "APPEND": _a_append,
    "SEARCH": _a_search, "FETCH": _a_fetch, "STORE": _a_store,
    "COPY": _a_copy, "MOVE": _a_copy,
}


# --------------------------------------------------------------------------- writer

class Atom(str):
    """A string written as is: flags, NIL-free keywords, response names."""
    __slots__ = ()


_QUOTABLE = re.compile(r'[\x20-\x7e]{0,999}\Z')
_QUOTABLE_UTF8 = re.compile(r'[^\x00-\x1f\x7f\ud800-\udfff]{0,999}\Z')
_ATOM_TEXT = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+\Z')
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _quote(s: str) -> bytes:
    if "\\" in s or '"' in s:
        s = s.replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + s.encode("ascii") + b'"'


def _astring_text(s: str) -> str:
    if _ATOM_TEXT.match(s):
        return s
    if _QUOTABLE.match(s):
        return _quote(s).decode("ascii")
    b = s.encode("utf-8")
    return "{%d}\r\n" % len(b) + s


def format_datetime(d: _dt.datetime) -> str:
    """``dd-Mon-yyyy hh:mm:ss +zzzz`` (naive datetimes are taken as UTC)."""
    off = d.utcoffset() or _dt.timedelta(0)
    mins = int(off.total_seconds()) // 60
    sign = "-" if mins < 0 else "+"
    mins = abs(mins)
    return (f"{d.day:02d}-{_MONTH_NAMES[d.month - 1]}-{d.year:04d} "
            f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} {sign}{mins // 60:02d}{mins % 60:02d}")


def _ser(v, out: list) -> None:
    if isinstance(v, str):
        if type(v) is Atom:
            out.append(v.encode("utf-8"))
        elif _QUOTABLE.match(v):
            out.append(_quote(v))
        else:
            b = v.encode("utf-8")
            out.append(b"{%d}\r\n" % len(b))
            out.append(b)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        if len(v):
            out.append(b"{%d}\r\n" % len(v))
            out.append(bytes(v))
        else:
            out.append(b'""')
    elif v is None:
        out.append(b"NIL")
    elif isinstance(v, bool):
        raise TypeError("booleans have no IMAP form")
    elif isinstance(v, int):
        if v < 0:
            raise ValueError("IMAP numbers are not negative")
        out.append(b"%d" % v)
    elif isinstance(v, (list, tuple)):
        out.append(b"(")
        first = True
        for x in v:
            if not first:
                out.append(b" ")
            first = False
            _ser(x, out)
        out.append(b")")
    elif isinstance(v, _dt.datetime):
        out.append(b'"' + format_datetime(v).encode("ascii") + b'"')
    else:
        raise TypeError(f"cannot serialize {type(v).__name__}")


def serialize(value) -> bytes:
    """The IMAP form of ``value``: str is a quoted string (printable ASCII
    under 1000 chars) or a literal of its UTF-8; bytes a literal (``""`` when
    empty); int a number; None NIL; list/tuple a parenthesised list; Atom as is;
    datetime a quoted date-time."""
    out: list[bytes] = []
    _ser(value, out)
    return b"".join(out)


def _check_text(s: str) -> None:
    if "\r" in s or "\n" in s or "\x00" in s:
        raise ValueError("response text holds CR, LF or NUL")


def response(tag_or_star: str, text: str, code: str | None = None) -> bytes:
    """One response line.  ``text`` starts with the status or data word; a
    ``code`` goes in brackets after that first word:
    ``response("*", "OK UIDs valid", "UIDVALIDITY 3")`` is
    ``* OK [UIDVALIDITY 3] UIDs valid\\r\\n``."""
    _check_text(text)
    if code is not None:
        _check_text(code)
        word, _, rest = text.partition(" ")
        text = f"{word} [{code}] {rest}" if rest else f"{word} [{code}]"
    return f"{tag_or_star} {text}\r\n".encode("utf-8")


def fetch_response(seq: int, items) -> bytes:
    """``* seq FETCH (NAME value ...)\\r\\n`` from ``(name, value)`` pairs; names
    are written as is, values with :func:`serialize`."""
    out = [b"* %d FETCH (" % seq]
    first = True
    for name, value in items:
        if not first:
            out.append(b" ")
        first = False
        out.append(name.encode("ascii"))
        out.append(b" ")
        _ser(value, out)
    out.append(b")\r\n")
    return b"".join(out)


def flags_list(flags) -> Atom:
    """Flags as the atom ``(\\Seen $Junk)``, for :func:`serialize` or a response text."""
    return Atom("(" + " ".join(flags) + ")")


def mailbox_value(name: str, utf8: bool = False):
    """A mailbox name ready for :func:`serialize`: modified UTF-7 unless
    ``utf8`` (UTF8=ACCEPT enabled), then a quoted string (RFC 9051 quoted
    strings may hold UTF-8) or a literal."""
    if not utf8:
        return encode_mailbox(name)
    if _QUOTABLE_UTF8.match(name):
        return Atom('"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return name.encode("utf-8")
