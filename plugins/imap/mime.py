"""IMAP views of one stored message: ENVELOPE, BODYSTRUCTURE, BODY[section], search helpers.

Sans-I/O: bytes in, Python values out (``str`` = an IMAP string, ``None`` = NIL, ``int``,
lists = parenthesized lists). Serializing them on the wire is the wire module's job.

Header fields, addresses, parameters for boundaries, RFC 2047 words and transfer encodings
are read with the standard library ``email`` package. The package re-creates text, so
``BODY[section]`` is never taken from it: the byte ranges of each part (header, body) are
*located* in the original bytes from the boundary parameters the package reports, and every
section is a slice of the original message, byte for byte (IMAP clients compare sizes).

The output follows RFC 3501 / RFC 9051 section 7.4.2 and, where the RFCs leave room, what
Dovecot 2.3 answers (tests/interop/test_imap_mime_dovecot.py checks it against a real one):

* type, subtype, parameter names and values, encodings are given as written (no case
  change); RFC 2231 values are not decoded, but continuations (``n*0*``, ``n*1``) are joined
  into one ``n*`` (or ``n``), after the other parameters; a text/* part without a charset
  gets ``"charset" "us-ascii"`` appended; a part without Content-Type is text/plain
  (message/rfc822 in a multipart/digest);
* a multipart without a usable boundary, or whose boundary never occurs, has one empty
  text/plain part; a missing close delimiter ends the last part at the end of the body;
  when a nested multipart's close delimiter is the last line before the next delimiter, its
  line break stays with the nested part;
* ENVELOPE header values are unfolded (a line break and the white space after it become one
  space) and left RFC 2047-encoded; group syntax gives ``(NIL NIL group NIL)`` ...
  ``(NIL NIL NIL NIL)``; an address without a domain has host ``MISSING_DOMAIN``; source
  routes are the ADL (``@a,@b``); sender and reply-to default to from;
* Content-Language is always a list; Content-MD5 is given when present.

A message of type message/rfc822 (also the whole message) has the encapsulated message's
ENVELOPE, BODYSTRUCTURE and line count, and its part numbers (RFC 3501 6.4.5).
Nothing in here raises on a malformed message: what cannot be understood is text/plain.
"""

from __future__ import annotations

import base64
import datetime as _dt
import email.errors
import email.utils
import quopri
import re
from email import policy as _policy
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser

__all__ = ["Message"]

_MAX_DEPTH = 40  # deeper nesting than this is treated as an opaque text/plain part
_BLANK = re.compile(rb"\n\r?\n")
_NEWLINE_ONLY = re.compile(rb"\r?\n")
_FOLD = re.compile(r"\r?\n[ \t]?")
_HEADER_PARSER = BytesHeaderParser(policy=_policy.compat32)
_ENVELOPE_ADDRS = ("from", "sender", "reply-to", "to", "cc", "bcc")


def _text(value) -> str:
    """A compat32 header value (str with surrogate escapes, or a Header) as plain text."""
    if not isinstance(value, str):
        value = str(value)
    try:
        return value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value


def _unfold(value) -> str:
    """Unfolded as Dovecot shows it: a line break and the white space after it become one
    space (RFC 5322 unfolding keeps the white space; Dovecot writes a tab as a space)."""
    return _FOLD.sub(_fold_space, _text(value))


def _fold_space(m: re.Match) -> str:
    return " " if len(m.group(0).strip("\r\n")) else ""


# --- parameters (kept as written: Dovecot does not decode RFC 2231 in BODYSTRUCTURE) -------
def _split_params(value: str) -> tuple[str, list[str]]:
    """Split ``type/sub; a=b; c="d;e"`` into the leading value and the raw ``name=value``
    items, honouring quoted strings and comments. Locating only: values are unquoted below."""
    items, cur, quoted, depth, i = [], [], False, 0, 0
    while i < len(value):
        c = value[i]
        if quoted:
            cur.append(c)
            if c == "\\" and i + 1 < len(value):
                cur.append(value[i + 1])
                i += 1
            elif c == '"':
                quoted = False
        elif depth:
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == '"':
            quoted = True
            cur.append(c)
        elif c == "(":
            depth = 1
        elif c == ";":
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur))
    return items[0].strip(), [p.strip() for p in items[1:] if p.strip()]


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return re.sub(r"\\(.)", r"\1", v[1:-1])
    return v


_SECTION = re.compile(r"^(.+?)\*(\d+)(\*?)$")


def _params(items: list[str]) -> list[str] | None:
    """Parameters as written, except that RFC 2231 continuations (``n*0*``, ``n*1``...) are
    joined into one ``n*`` (or ``n`` when no section is extended), after the others, the
    way Dovecot shows them. Values stay undecoded."""
    out: list[str] = []
    cont: dict[str, list[tuple[int, bool, str]]] = {}
    for p in items:
        name, eq, val = p.partition("=")
        name = name.strip()
        if not eq or not name:
            continue
        m = _SECTION.match(name)
        if m:
            cont.setdefault(m.group(1), []).append((int(m.group(2)), bool(m.group(3)),
                                                     _unquote(val)))
            continue
        out += [name, _unquote(val)]
    for name, sections in cont.items():
        sections.sort(key=lambda t: t[0])
        if any(e for _, e, _ in sections):
            # segments joined as written (Dovecot does not %-encode the plain ones either)
            out += [name + "*", "".join(v for _, _, v in sections)]
        else:
            out += [name, "".join(v for _, _, v in sections)]
    return out or None


# --- addresses ---------------------------------------------------------------------------
def _split_groups(value: str) -> list[tuple[str | None, str]]:
    """Cut an address-list into (group name or None, text) runs at top-level ``name:`` and
    ``;`` (outside quotes, comments and angle brackets). Each run's addresses are parsed by
    email.utils.getaddresses, which would otherwise flatten groups away."""
    runs: list[tuple[str | None, str]] = []
    cur: list[str] = []
    group: str | None = None
    quoted, depth, angle, i = False, 0, 0, 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\":
                cur.append(value[i:i + 2])
                i += 2
                continue
            if c == '"':
                quoted = False
        elif depth:
            if c == "\\":
                cur.append(value[i:i + 2])
                i += 2
                continue
            depth += c == "("
            depth -= c == ")"
        elif c == '"':
            quoted = True
        elif c == "(":
            depth = 1
        elif c == "<":
            angle += 1
        elif c == ">":
            angle = max(0, angle - 1)
        elif c == ":" and not angle and group is None:
            text = "".join(cur)
            # "name:" only when what precedes is a phrase (no @), i.e. not a route or address
            if "@" not in text.rsplit(",", 1)[-1]:
                head, _, name = text.rpartition(",")
                if head.strip():
                    runs.append((None, head))
                group, cur = name.strip(), []
                i += 1
                continue
        elif c == ";" and not angle and group is not None:
            runs.append((group, "".join(cur)))
            group, cur = None, []
            i += 1
            continue
        cur.append(c)
        i += 1
    if group is not None:
        runs.append((group, "".join(cur)))
    elif "".join(cur).strip():
        runs.append((None, "".join(cur)))
    return runs


_ROUTE = re.compile(r"<\s*(@[^<>:\"]*?)\s*:")
_SPACE = re.compile(r"\s+")


def _address(name: str, addr: str, adl: str | None = None) -> list:
    mailbox, at, host = addr.rpartition("@")
    if not at:  # no domain: Dovecot writes this placeholder (RFC 3501 leaves it open)
        mailbox, host = addr, "MISSING_DOMAIN"
    return [name or None, adl, mailbox or None, host]


def _split_commas(text: str) -> list[str]:
    """Cut an address-list run at its top-level commas (outside quotes, comments, <>)."""
    out, cur, quoted, depth, angle, i = [], [], False, 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and (quoted or depth):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if quoted:
            quoted = c != '"'
        elif depth:
            depth += (c == "(") - (c == ")")
        elif c == '"':
            quoted = True
        elif c == "(":
            depth = 1
        elif c == "<":
            angle += 1
        elif c == ">":
            angle = max(0, angle - 1)
        elif c == "," and not angle:
            out.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _address_list(value) -> list | None:
    if value is None:
        return None
    text = _unfold(value)
    out: list = []
    if ":" not in text:  # the common case: no groups, no source routes
        for name, addr in email.utils.getaddresses([text]):
            if name or addr:
                out.append(_address(name, addr))
        return out or None
    for group, run in _split_groups(text):
        if group is not None:
            out.append([None, None, _strip_phrase(group), None])
        for chunk in _split_commas(run):
            route = _ROUTE.search(chunk)
            adl = _SPACE.sub("", route.group(1)) if route else None
            for name, addr in email.utils.getaddresses([chunk]):
                if name or addr:
                    out.append(_address(name, addr, adl))
        if group is not None:
            out.append([None, None, None, None])
    return out or None


def _strip_phrase(s: str) -> str:
    return _unquote(s.strip())


# --- parts -------------------------------------------------------------------------------
class _Part:
    """Byte ranges of one MIME entity in the original message, plus what its header says."""

    __slots__ = ("hstart", "hend", "bend", "hdr", "maintype", "subtype", "params",
                 "children", "inner", "boundary", "open_close")

    def __init__(self, hstart: int, hend: int, bend: int, hdr) -> None:
        self.hstart, self.hend, self.bend, self.hdr = hstart, hend, bend, hdr
        self.children: list[_Part] = []
        self.inner: _Part | None = None
        self.boundary: str | None = None
        self.open_close = False  # a multipart whose close delimiter has no line break


def _header_end(raw: bytes, start: int, end: int) -> int:
    """Offset just after the blank line closing the header starting at ``start``."""
    if raw.startswith(b"\r\n", start) and start + 2 <= end:
        return start + 2
    if raw.startswith(b"\n", start) and start + 1 <= end:
        return start + 1
    m = _BLANK.search(raw, start, end)
    return m.end() if m else end


class _Fields:
    """A header as the email package parsed it (compat32), with the values as written:
    ``raw_items`` keeps 8-bit bytes (surrogate-escaped) where ``get`` would wrap them."""

    __slots__ = ("msg", "_by_name")

    def __init__(self, msg) -> None:
        self.msg = msg
        by_name: dict[str, list[str]] = {}
        for name, value in msg.raw_items():
            by_name.setdefault(name.lower(), []).append(value)
        self._by_name = by_name

    def get(self, name: str, default=None):
        v = self._by_name.get(name.lower())
        return v[0] if v else default

    def get_all(self, name: str) -> list[str]:
        return self._by_name.get(name.lower(), [])

    def items(self):
        return self.msg.raw_items()


def _parse_header(raw: bytes, start: int, hend: int) -> _Fields:
    try:
        return _Fields(_HEADER_PARSER.parsebytes(raw[start:hend]))
    except Exception:  # the email package is lenient; this is only a safety net
        return _Fields(_HEADER_PARSER.parsebytes(b""))


def _typed(part: _Part, default: str) -> None:
    ct = part.hdr.get("Content-Type")
    maintype = subtype = None
    items: list[str] = []
    if ct is not None:
        lead, items = _split_params(_unfold(ct))
        t, slash, s = lead.partition("/")
        if slash and t.strip() and s.strip():
            maintype, subtype = t.strip(), s.strip()
    if maintype is None:
        if default == "message/rfc822":
            part.maintype, part.subtype, part.params = "message", "rfc822", _params(items)
        else:
            part.maintype, part.subtype = "text", "plain"
            part.params = _params(items) or ["charset", "us-ascii"]
        return
    params = _params(items)
    if maintype.lower() == "text" and not any(k.lower() == "charset" for k in (params or [])[::2]):
        params = (params or []) + ["charset", "us-ascii"]  # RFC 2045 5.2 default, shown
    part.maintype, part.subtype, part.params = maintype, subtype, params


def _parse(raw: bytes, start: int, end: int, default: str, depth: int, hdr=None) -> _Part:
    hend = _header_end(raw, start, end)
    part = _Part(start, hend, end, hdr if hdr is not None else _parse_header(raw, start, hend))
    _typed(part, default)
    mt = part.maintype.lower()
    if depth >= _MAX_DEPTH:
        part.maintype, part.subtype, part.params = "text", "plain", ["charset", "us-ascii"]
        return part
    if mt == "multipart":
        boundary = _boundary(part.hdr)
        if boundary:
            part.boundary = boundary
            child_default = ("message/rfc822" if part.subtype.lower() == "digest"
                             else "text/plain")
            ranges, part.open_close = _split_multipart(raw, hend, end, boundary)
            for s, e in ranges:
                child = _parse(raw, s, e, child_default, depth + 1)
                _take_close_line_end(raw, child)
                part.children.append(child)
        if not part.children:
            # no boundary, or it never occurs: one empty text/plain part, as Dovecot shows
            empty = _Part(end, end, end, _parse_header(raw, 0, 0))
            empty.maintype, empty.subtype, empty.params = "text", "plain", ["charset", "us-ascii"]
            part.children.append(empty)
    elif mt == "message" and part.subtype.lower() == "rfc822":
        part.inner = _parse(raw, hend, end, "text/plain", depth + 1)
        part.open_close = part.inner.open_close
    return part


def _boundary(hdr: _Fields) -> str | None:
    """The boundary parameter, as the email package reads it: compat32's quick parameter
    split, or (when the header has comments or quoting it leaves in) the full RFC 5322
    parser of email.policy.default."""
    try:
        boundary = hdr.msg.get_param("boundary")
        if isinstance(boundary, tuple):  # RFC 2231 form
            boundary = email.utils.collapse_rfc2231_value(boundary)
        ct = _unfold(hdr.get("Content-Type", ""))
        if boundary is None or '"' in boundary or "(" in ct:
            boundary = _policy.default.header_factory("content-type", ct).params.get("boundary")
    except Exception:  # the email package is lenient; this is only a safety net
        return None
    return str(boundary) if boundary else None


def _take_close_line_end(raw: bytes, child: _Part) -> None:
    """A part that is (or encapsulates) a multipart whose close delimiter is the last line
    before the next delimiter keeps that line's line break: the delimiter then has none
    before it (Dovecot counts it so; RFC 2046 gives a line break to both)."""
    inner = child.inner if child.inner is not None else child
    if not getattr(inner, "open_close", False) or inner.bend != child.bend:
        return
    e = child.bend
    n = 2 if raw.startswith(b"\r\n", e) else 1 if raw.startswith(b"\n", e) else 0
    if n:
        child.bend = inner.bend = e + n
        inner.open_close = False


def _split_multipart(raw: bytes, start: int, end: int, boundary: str):
    """(start, end) byte ranges of the body parts between the delimiter lines of ``boundary``
    within raw[start:end] (RFC 2046 5.1.1: the line break before a delimiter belongs to it),
    and whether the close delimiter ends the range without a line break of its own."""
    try:
        b = boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        b = boundary.encode("utf-8", "replace")
    pat = re.compile(rb"--" + re.escape(b) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    ranges: list[tuple[int, int]] = []
    cur = None
    pos = start
    while pos < end:
        m = pat.search(raw, pos, end)
        if m is None:
            break
        ls = m.start()
        if ls != start and raw[ls - 1:ls] != b"\n":  # not at the start of a line
            pos = ls + 1
            continue
        if cur is not None:
            ce = ls
            if ce - 2 >= cur and raw[ce - 2:ce] == b"\r\n":
                ce -= 2
            elif ce - 1 >= cur and raw[ce - 1:ce] == b"\n":
                ce -= 1
            ranges.append((cur, ce))
        if m.group(1):  # close delimiter: the rest is epilogue
            return ranges, m.end() == end and raw[end - 1:end] != b"\n"
        cur = pos = m.end()
    if cur is not None:
        ranges.append((cur, end))  # no close delimiter: the last part runs to the end
    return ranges, False


class Message:
    """One message as stored (``raw`` bytes, CRLF or bare LF). Parsed lazily, once."""

    def __init__(self, raw: bytes) -> None:
        self.raw = bytes(raw)
        self._hdr = None
        self._root: _Part | None = None
        self._env = None
        self._bs: dict[bool, list] = {}
        self._decoded = None

    @property
    def size(self) -> int:
        return len(self.raw)

    # --- headers ---------------------------------------------------------------------------
    def _header(self):
        if self._root is not None:
            return self._root.hdr
        if self._hdr is None:
            self._hdr = _parse_header(self.raw, 0, _header_end(self.raw, 0, len(self.raw)))
        return self._hdr

    def _tree(self) -> _Part:
        if self._root is None:
            try:
                self._root = _parse(self.raw, 0, len(self.raw), "text/plain", 0, self._hdr)
            except Exception:  # RecursionError included: never seen with _MAX_DEPTH
                hend = _header_end(self.raw, 0, len(self.raw))
                root = _Part(0, hend, len(self.raw), _parse_header(self.raw, 0, hend))
                root.maintype, root.subtype, root.params = "text", "plain", ["charset", "us-ascii"]
                self._root = root
        return self._root

    def envelope(self) -> list:
        if self._env is None:
            self._env = _envelope(self._header())
        return self._env

    def bodystructure(self, extended: bool = True) -> list:
        if extended not in self._bs:
            self._bs[extended] = _structure(self.raw, self._tree(), extended)
        return self._bs[extended]

    # --- sections ----------------------------------------------------------------------------
    def section(self, section=None, *, peek_ok: bool = True) -> bytes:
        """BODY[section] as bytes of the original message; b"" for a part that does not exist.

        ``section`` is None (the whole message) or has ``part`` (tuple of ints), ``text``
        (None, HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME) and ``fields``.
        HEADER.FIELDS gives the matching fields (continuation lines included) in their
        order, then a blank line; HEADER.FIELDS.NOT the others and the header's own blank
        line. ``peek_ok`` is accepted for symmetry with BODY.PEEK: setting \\Seen for a
        non-peek fetch is the caller's business, the bytes are the same."""
        if section is None:
            return self.raw
        part = tuple(getattr(section, "part", ()) or ())
        text = getattr(section, "text", None)
        text = text.upper() if text else None
        fields = tuple(f.decode("ascii", "replace") if isinstance(f, bytes) else str(f)
                       for f in (getattr(section, "fields", ()) or ()))
        node = _resolve(self._tree(), part)
        if node is None:
            return b""
        raw = self.raw
        if text is None:
            if not part:
                return raw
            return raw[node.hend:node.bend]
        if text == "MIME":
            if not part:
                return b""
            return raw[node.hstart:node.hend]
        msg = node if not part else node.inner
        if msg is None:
            return b""
        if text == "HEADER":
            return raw[msg.hstart:msg.hend]
        if text == "TEXT":
            return raw[msg.hend:msg.bend]
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            want = {f.lower() for f in fields}
            keep = text == "HEADER.FIELDS"
            out = [line for name, line in _header_lines(raw, msg.hstart, msg.hend)
                   if (name in want) == keep]
            if keep:  # HEADER.FIELDS: always closed by a blank line
                return b"".join(out) + b"\r\n"
            # HEADER.FIELDS.NOT: the header's own blank line, if it has one (as Dovecot)
            m = _NEWLINE_ONLY.match(raw, _blank_at(raw, msg.hstart, msg.hend), msg.hend)
            return b"".join(out) + (m.group(0) if m else b"")
        return b""

    # --- search helpers ------------------------------------------------------------------------
    def header_values(self, name: str) -> list[str]:
        """All values of header ``name``, unfolded, RFC 2047 words decoded."""
        out = []
        for v in self._header().get_all(name):
            out.append(_decode_words(_unfold(v)))
        return out

    def sent_date(self) -> _dt.date | None:
        """The date of the Date header (in the header's own zone), or None."""
        v = self._header().get("Date")
        if v is None:
            return None
        try:
            return email.utils.parsedate_to_datetime(_unfold(v).strip()).date()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None

    def _decoded_texts(self) -> tuple[str, str]:
        if self._decoded is None:
            self._decoded = _decode_all(self.raw, self._tree())
        return self._decoded

    def body_contains(self, s: str) -> bool:
        return s.casefold() in self._decoded_texts()[1]

    def header_contains(self, s: str) -> bool:
        return s.casefold() in self._decoded_texts()[0]

    def text_contains(self, s: str) -> bool:
        return self.header_contains(s) or self.body_contains(s)


def _resolve(root: _Part, path: tuple[int, ...]) -> _Part | None:
    """The part a section number names (RFC 3501 6.4.5), as Dovecot resolves it: the parts
    of a multipart are numbered from 1; a message/rfc822 part's numbers are those of the
    message inside; and a part that is neither may be called its own part 1, once (so the
    body of a single-part message is part 1, and BODY[1.1] of it does not exist). A whole
    message of type message/rfc822 is part 1 itself; 1.1 is then the body inside."""
    node, stayed = root, False
    for k, i in enumerate(path):
        if k == 0 and not node.children:  # a single-part message (message/rfc822 too)
            if i != 1:
                return None
            stayed = True
            continue
        if node.children:
            if not 1 <= i <= len(node.children):
                return None
            node, stayed = node.children[i - 1], False
        elif node.inner is not None:
            inner = node.inner
            if inner.children:
                if not 1 <= i <= len(inner.children):
                    return None
                node, stayed = inner.children[i - 1], False
            elif i == 1:
                node, stayed = inner, True
            else:
                return None
        elif i == 1 and not stayed:
            stayed = True
        else:
            return None
    return node


def _blank_at(raw: bytes, start: int, hend: int) -> int:
    """Where the blank line closing the header raw[start:hend] starts (hend if none)."""
    if raw.startswith(b"\r\n", start) or raw.startswith(b"\n", start):
        return start
    if hend >= start + 3 and raw[hend - 2:hend] == b"\r\n" and raw[hend - 3:hend - 2] == b"\n":
        return hend - 2
    if hend >= start + 2 and raw[hend - 2:hend] == b"\n\n":
        return hend - 1
    return hend


def _header_lines(raw: bytes, start: int, end: int):
    """(lower-case field name, the field's bytes with continuation lines) in order."""
    lines = raw[start:end].splitlines(keepends=True)
    cur_name, cur = None, []
    for line in lines:
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and cur:
            cur.append(line)
            continue
        if cur:
            yield cur_name, b"".join(cur)
        name = line.split(b":", 1)[0].strip().lower() if b":" in line else b""
        cur_name, cur = name.decode("ascii", "replace"), [line]
    if cur:
        yield cur_name, b"".join(cur)


def _nstr(value) -> str | None:
    return None if value is None else _unfold(value)


def _envelope(hdr) -> list:
    date = _nstr(hdr.get("Date"))
    subject = _nstr(hdr.get("Subject"))
    addrs = {h: _address_list(hdr.get(h)) for h in _ENVELOPE_ADDRS}
    if addrs["sender"] is None:
        addrs["sender"] = addrs["from"]
    if addrs["reply-to"] is None:
        addrs["reply-to"] = addrs["from"]
    return [date, subject, addrs["from"], addrs["sender"], addrs["reply-to"], addrs["to"],
            addrs["cc"], addrs["bcc"], _nstr(hdr.get("In-Reply-To")),
            _nstr(hdr.get("Message-ID"))]


def _disposition(hdr) -> list | None:
    v = hdr.get("Content-Disposition")
    if v is None:
        return None
    lead, items = _split_params(_unfold(v))
    if not lead:
        return None
    return [lead, _params(items)]


def _language(hdr):
    v = hdr.get("Content-Language")
    if v is None:
        return None
    langs = [x.strip() for x in re.sub(r"\([^)]*\)", "", _unfold(v)).split(",") if x.strip()]
    return langs or None


def _structure(raw: bytes, part: _Part, ext: bool) -> list:
    hdr = part.hdr
    if part.children:
        out: list = [_structure(raw, c, ext) for c in part.children]
        out.append(part.subtype)
        if ext:
            out += [part.params, _disposition(hdr), _language(hdr),
                    _nstr(hdr.get("Content-Location"))]
        return out
    body = raw[part.hend:part.bend]
    cte = hdr.get("Content-Transfer-Encoding")
    enc = _unfold(cte).strip() if cte is not None else "7bit"
    out = [part.maintype, part.subtype, part.params, _nstr(hdr.get("Content-ID")),
           _nstr(hdr.get("Content-Description")), enc or "7bit", len(body)]
    if part.inner is not None:
        out += [_envelope(part.inner.hdr), _structure(raw, part.inner, ext), body.count(b"\n")]
    elif part.maintype.lower() == "text":
        out.append(body.count(b"\n"))
    if ext:
        out += [_nstr(hdr.get("Content-MD5")), _disposition(hdr), _language(hdr),
                _nstr(hdr.get("Content-Location"))]
    return out


# --- decoding for SEARCH -------------------------------------------------------------------
def _decode_words(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (email.errors.MessageError, LookupError, ValueError, TypeError, AssertionError):
        return value  # a broken encoded-word (say, a bad charset name) is searched as written


def _decode_body(raw: bytes, part: _Part) -> str:
    body = raw[part.hend:part.bend]
    cte = (_unfold(part.hdr.get("Content-Transfer-Encoding", "")) or "").strip().lower()
    try:
        if cte == "base64":
            body = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body) + b"==", validate=False)
        elif cte == "quoted-printable":
            body = quopri.decodestring(body)
    except Exception:
        pass
    charset = None
    if part.params:
        for k, v in zip(part.params[::2], part.params[1::2]):
            if k.lower() == "charset":
                charset = v
    cs = (charset or "utf-8").strip().lower()
    if cs in ("us-ascii", "ascii", "unknown-8bit", "x-unknown"):
        cs = "utf-8"  # ASCII is a subset; undeclared 8-bit text is most often UTF-8
    try:
        return body.decode(cs)
    except (LookupError, ValueError, TypeError):  # unknown, unusable (b"\0") or bad charset
        pass
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return body.decode(cs, "replace")
    except (LookupError, ValueError, TypeError):
        return body.decode("utf-8", "replace")


def _decode_all(raw: bytes, root: _Part) -> tuple[str, str]:
    """(decoded header text, decoded body text), case-folded, for substring search."""
    heads: list[str] = []
    bodies: list[str] = []

    def walk(p: _Part, is_message: bool) -> None:
        if is_message:
            into = heads if p is root else bodies  # an attached message's header is body text
            for name, value in p.hdr.items():
                into.append(f"{name}: {_decode_words(_unfold(value))}")
        if p.children:
            for c in p.children:
                walk(c, False)
        elif p.inner is not None:
            walk(p.inner, True)
        elif p.maintype.lower() == "text":
            bodies.append(_decode_body(raw, p))

    walk(root, True)
    return "\n".join(heads).casefold(), "\n".join(bodies).casefold()
