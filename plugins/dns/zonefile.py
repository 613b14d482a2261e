"""RFC 1035 master files: text in, dnslib records or a checked :class:`~.zone.Zone` out.

Understood: ``$ORIGIN``, ``$TTL`` (RFC 2308), relative names, ``@``, a blank
owner meaning the previous owner, parentheses spanning lines, ``;`` comments,
quoted strings with ``\\X`` and ``\\DDD`` escapes, TTLs with units
(``1h30m``), class ``IN`` optional, TTL and class in either order, ``TYPEnnn``
and RFC 3597 ``\\# <length> <hex>`` RDATA for any type. Typed RDATA for SOA NS
A AAAA CNAME PTR DNAME MX TXT SPF SRV CAA DS CDS DNSKEY CDNSKEY TLSA SMIMEA
SSHFP SVCB HTTPS. A record without a TTL takes ``$TTL``, else the previous
record's TTL. ``$INCLUDE`` and ``$GENERATE`` are refused (the loader reads no
files).

Every error raises :class:`ZoneFileError` with the file name, the line, and a
reason; :func:`load_zone` also maps :class:`~.zone.ZoneError` (the zone rules)
to the line of the record at fault.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable

from dnslib import (AAAA, CAA, CNAME, DNAME, DNSKEY, DS, HTTPS, MX, NS, PTR, QTYPE, RD, RDMAP,
                    RR, SOA, SRV, SSHFP, TLSA, TXT, A, DNSBuffer, DNSLabel)

from .zone import META_TYPES, Zone, ZoneError

MAX_TTL = 2**31 - 1


class ZoneFileError(ValueError):
    """A zone file that cannot be loaded: ``str()`` is ``file:line: reason``."""

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


class _Bad(Exception):
    """Raised inside the parser; turned into ZoneFileError with the line."""


Token = tuple[str, bool]
"""A token's text (escapes kept) and whether any part of it was quoted."""


# -- tokens -------------------------------------------------------------------

_PLAIN = re.compile(r'[^"();\\]*\Z')


def _tokenize(text: str) -> list[tuple[int, bool, list[Token]]]:
    """Split into entries: (first line, starts with blank, tokens). Newlines
    inside parentheses or quotes do not end an entry."""
    entries: list[tuple[int, bool, list[Token]]] = []
    tokens: list[Token] = []
    depth, start, blank, open_line = 0, 0, False, 0
    for lineno, line in enumerate(text.split("\n"), 1):
        if depth == 0:
            start, blank, tokens = lineno, line[:1] in (" ", "\t"), []
        if _PLAIN.match(line):
            tokens.extend((w, False) for w in line.split())
        else:
            depth, open_line = _scan(line, lineno, tokens, depth, open_line)
        if depth == 0 and tokens:
            entries.append((start, blank, tokens))
    if depth:
        raise ZoneFileError("", open_line, "parenthesis opened here is never closed")
    return entries


def _scan(line: str, lineno: int, tokens: list[Token], depth: int,
          open_line: int) -> tuple[int, int]:
    i, n = 0, len(line)
    cur: list[str] | None = None
    quoted = False
    while i < n:
        c = line[i]
        if c in " \t\r" or c in "();":
            if cur is not None:
                tokens.append(("".join(cur), quoted))
                cur, quoted = None, False
            if c == ";":
                break
            if c == "(":
                if depth == 0:
                    open_line = lineno
                depth += 1
            elif c == ")":
                if depth == 0:
                    raise ZoneFileError("", lineno, "')' without '('")
                depth -= 1
            i += 1
            continue
        if cur is None:
            cur = []
        if c == "\\":
            cur.append(line[i:i + 2])
            i += 2
        elif c == '"':
            end = i + 1
            while end < n and line[end] != '"':
                end += 2 if line[end] == "\\" else 1
            if end >= n:
                raise ZoneFileError("", lineno, "unterminated quoted string")
            cur.append(line[i + 1:end])
            quoted = True
            i = end + 1
        else:
            cur.append(c)
            i += 1
    if cur is not None:
        tokens.append(("".join(cur), quoted))
    return depth, open_line


_ESC = re.compile(r"\\(\d{3}|.)", re.S)


def _unescape(text: str) -> bytes:
    """Token text to bytes: ``\\DDD`` is a byte, ``\\X`` is X."""
    if "\\" not in text:
        return text.encode()
    out = bytearray()
    pos = 0
    for m in _ESC.finditer(text):
        out += text[pos:m.start()].encode()
        esc = m.group(1)
        if len(esc) == 3:
            if int(esc) > 255:
                raise _Bad(f"bad escape \\{esc}")
            out.append(int(esc))
        else:
            out += esc.encode()
        pos = m.end()
    if text.endswith("\\") and (pos < len(text)):
        raise _Bad("dangling backslash")
    out += text[pos:].encode()
    return bytes(out)


# -- names, numbers -----------------------------------------------------------

def parse_name(text: str, origin: DNSLabel | None) -> DNSLabel:
    """A domain name in zone file syntax (``@``, relative to ``origin``,
    absolute with a trailing dot, escapes); raises :class:`ValueError`."""
    try:
        return _name(text, origin)
    except _Bad as e:
        raise ValueError(str(e)) from None


def _name(text: str, origin: DNSLabel | None) -> DNSLabel:
    if text == "@":
        if origin is None:
            raise _Bad("'@' used before any $ORIGIN")
        return origin
    if text == ".":
        return DNSLabel(())
    if "\\" not in text:
        absolute = text.endswith(".")
        parts = text[:-1].split(".") if absolute else text.split(".")
        labels = [p.encode() for p in parts]
    else:
        labels, cur, i, absolute = [], [], 0, False
        while i < len(text):
            if text[i] == "\\":
                m = _ESC.match(text, i)
                if m is None:
                    raise _Bad(f"bad escape in name {text!r}")
                cur.append(m.group(0))
                i = m.end()
            elif text[i] == ".":
                labels.append(_unescape("".join(cur)))
                cur = []
                i += 1
                if i == len(text):
                    absolute = True
            else:
                cur.append(text[i])
                i += 1
        if not absolute:
            labels.append(_unescape("".join(cur)))
    for label in labels:
        if not label:
            raise _Bad(f"empty label in name {text!r}")
        if len(label) > 63:
            raise _Bad(f"label longer than 63 octets in name {text!r}")
    if not absolute:
        if origin is None:
            raise _Bad(f"relative name {text!r} before any $ORIGIN")
        labels += origin.label
    if sum(len(lab) + 1 for lab in labels) + 1 > 255:
        raise _Bad(f"name longer than 255 octets: {text!r}")
    return DNSLabel(tuple(labels))


_TTL = re.compile(r"(?:\d+[smhdwSMHDW]?)+\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _is_ttl(text: str) -> bool:
    return bool(_TTL.match(text))


def _ttl(text: str) -> int:
    if not _TTL.match(text):
        raise _Bad(f"bad TTL {text!r}")
    if text.isdigit():
        value = int(text)
    else:
        value = sum(int(n) * _UNITS[u.lower() or "s"]
                    for n, u in re.findall(r"(\d+)([smhdwSMHDW]?)", text))
    if value > MAX_TTL:
        raise _Bad(f"TTL {text} above 2^31-1")
    return value


def _int(text: str, bits: int, what: str) -> int:
    if not text.isdigit() or int(text) >= 1 << bits:
        raise _Bad(f"bad {what} {text!r} (an integer below {1 << bits})")
    return int(text)


def _rtype(text: str) -> int | None:
    up = text.upper()
    if up in QTYPE.reverse:
        return QTYPE.reverse[up]
    if up.startswith("TYPE") and up[4:].isdigit() and int(up[4:]) < 65536:
        return int(up[4:])
    return None


# -- RDATA --------------------------------------------------------------------

Args = list[Token]


def _need(args: Args, n: int, rtype: str, at_least: bool = False) -> list[str]:
    if len(args) < n or (not at_least and len(args) != n):
        raise _Bad(f"{rtype} needs {'at least ' if at_least else ''}{n} fields, "
                   f"got {len(args)}")
    return [t for t, _ in args]


def _hex(texts: list[str], what: str) -> bytes:
    try:
        return bytes.fromhex("".join(texts))
    except ValueError:
        raise _Bad(f"bad hex in {what}") from None


def _rd_a(args: Args, origin: DNSLabel | None) -> RD:
    (text,) = _need(args, 1, "A")
    try:
        return A(str(ipaddress.IPv4Address(text)))
    except ValueError:
        raise _Bad(f"bad IPv4 address {text!r}") from None


def _rd_aaaa(args: Args, origin: DNSLabel | None) -> RD:
    (text,) = _need(args, 1, "AAAA")
    try:
        return AAAA(tuple(ipaddress.IPv6Address(text).packed))
    except ValueError:
        raise _Bad(f"bad IPv6 address {text!r}") from None


def _rd_one_name(cls: type) -> Callable[[Args, DNSLabel | None], RD]:
    def parse(args: Args, origin: DNSLabel | None) -> RD:
        (text,) = _need(args, 1, cls.__name__)
        return cls(_name(text, origin))
    return parse


def _rd_mx(args: Args, origin: DNSLabel | None) -> RD:
    pref, host = _need(args, 2, "MX")
    return MX(_name(host, origin), _int(pref, 16, "MX preference"))


def _rd_soa(args: Args, origin: DNSLabel | None) -> RD:
    f = _need(args, 7, "SOA")
    serial = _int(f[2], 32, "SOA serial")
    return SOA(_name(f[0], origin), _name(f[1], origin), [serial] + [_ttl(t) for t in f[3:]])


def _rd_txt(args: Args, origin: DNSLabel | None) -> RD:
    if not args:
        raise _Bad("TXT needs at least one string")
    strings = [_unescape(t) for t, _ in args]
    for s in strings:
        if len(s) > 255:
            raise _Bad("TXT string longer than 255 octets")
    return TXT(strings)


def _rd_srv(args: Args, origin: DNSLabel | None) -> RD:
    f = _need(args, 4, "SRV")
    return SRV(_int(f[0], 16, "SRV priority"), _int(f[1], 16, "SRV weight"),
               _int(f[2], 16, "SRV port"), _name(f[3], origin))


def _rd_caa(args: Args, origin: DNSLabel | None) -> RD:
    flags, tag, _ = _need(args, 3, "CAA")
    if not tag.isalnum() or not tag.isascii():
        raise _Bad(f"bad CAA tag {tag!r}")
    try:
        value = _unescape(args[2][0]).decode()
    except UnicodeDecodeError:
        raise _Bad("CAA value is not UTF-8") from None
    return CAA(_int(flags, 8, "CAA flags"), tag, value)


def _rd_ints_hex(cls: type, fields: list[tuple[int, str]]) -> Callable[[Args, DNSLabel | None],
                                                                        RD]:
    """RDATA of integer fields (bits, name) then hex split over any tokens."""
    def parse(args: Args, origin: DNSLabel | None) -> RD:
        f = _need(args, len(fields) + 1, cls.__name__, at_least=True)
        ints = [_int(text, bits, what) for text, (bits, what) in zip(f, fields)]
        return cls(*ints, _hex(f[len(fields):], f"{cls.__name__} data"))
    return parse


_rd_ds = _rd_ints_hex(DS, [(16, "key tag"), (8, "algorithm"), (8, "digest type")])
_rd_tlsa = _rd_ints_hex(TLSA, [(8, "usage"), (8, "selector"), (8, "matching type")])
_rd_sshfp = _rd_ints_hex(SSHFP, [(8, "algorithm"), (8, "fingerprint type")])


def _rd_dnskey(args: Args, origin: DNSLabel | None) -> RD:
    f = _need(args, 4, "DNSKEY", at_least=True)
    try:
        key = base64.b64decode("".join(f[3:]), validate=True)
    except (binascii.Error, ValueError):
        raise _Bad("bad base64 in DNSKEY key") from None
    return DNSKEY(_int(f[0], 16, "DNSKEY flags"), _int(f[1], 8, "protocol"),
                  _int(f[2], 8, "algorithm"), key)


def _rd_svcb(args: Args, origin: DNSLabel | None) -> RD:
    f = _need(args, 2, "SVCB/HTTPS", at_least=True)
    _int(f[0], 16, "SvcPriority")
    target = _name(f[1], origin)
    try:
        rd = HTTPS.fromZone([f[0], str(target) if target.label else "."] + f[2:])
        buf = DNSBuffer()
        rd.pack(buf)
    except Exception as e:  # dnslib raises many kinds on bad SvcParams
        raise _Bad(f"bad SvcParams: {e}") from None
    return RD(bytes(buf.data))


_RDATA: dict[int, Callable[[Args, DNSLabel | None], RD]] = {
    1: _rd_a, 2: _rd_one_name(NS), 5: _rd_one_name(CNAME), 6: _rd_soa,
    12: _rd_one_name(PTR), 15: _rd_mx, 16: _rd_txt, 28: _rd_aaaa, 33: _rd_srv,
    39: _rd_one_name(DNAME), 43: _rd_ds, 44: _rd_sshfp, 48: _rd_dnskey, 52: _rd_tlsa,
    53: _rd_tlsa, 59: _rd_ds, 60: _rd_dnskey, 64: _rd_svcb, 65: _rd_svcb, 99: _rd_txt,
    257: _rd_caa,
}
"""Typed RDATA parsers by type code (SMIMEA=53 shares TLSA's syntax, CDS and
CDNSKEY those of DS and DNSKEY, SPF that of TXT)."""


def _rd_generic(rtype: int, args: Args) -> RD:
    """RFC 3597: ``\\# <length> <hex>...``; decoded into dnslib's class for
    the type when it has one."""
    f = [t for t, _ in args]
    if len(f) < 2 or not f[1].isdigit():
        raise _Bad("\\# needs a length and hex data")
    data = _hex(f[2:], "\\# data")
    if len(data) != int(f[1]):
        raise _Bad(f"\\# length {f[1]} but {len(data)} octets of data")
    cls = RDMAP.get(QTYPE.get(rtype)) if rtype in QTYPE.forward else None
    if cls is None or rtype in (64, 65):
        return RD(data)
    try:
        buf = DNSBuffer(data)
        rd = cls.parse(buf, len(data))
    except Exception:  # dnslib raises several kinds on bad RDATA
        raise _Bad(f"\\# data is not valid {QTYPE.get(rtype)} RDATA") from None
    if buf.offset != len(data):
        raise _Bad(f"\\# data is not valid {QTYPE.get(rtype)} RDATA")
    return rd


# -- records ------------------------------------------------------------------

def parse_records(text: str, origin: DNSLabel | str | None = None, *, file: str = "<zone>",
                  default_ttl: int | None = None) -> list[tuple[int, RR]]:
    """Every record of a master file as ``(line, dnslib RR)``, in file order.
    ``origin`` is the initial ``$ORIGIN`` (if any). Raises
    :class:`ZoneFileError`; checks only syntax, not the zone rules."""
    cur_origin = None if origin is None else DNSLabel(origin)
    ttl_default, last_ttl = default_ttl, None
    owner: DNSLabel | None = None
    out: list[tuple[int, RR]] = []
    try:
        entries = _tokenize(text)
    except ZoneFileError as e:
        raise ZoneFileError(file, e.line, e.reason) from None
    for lineno, blank, tokens in entries:
        try:
            first = tokens[0][0]
            if not blank and first.startswith("$") and not tokens[0][1]:
                directive = first.upper()
                if directive == "$ORIGIN":
                    if len(tokens) != 2:
                        raise _Bad("$ORIGIN needs one name")
                    cur_origin = _name(tokens[1][0], cur_origin)
                elif directive == "$TTL":
                    if len(tokens) != 2:
                        raise _Bad("$TTL needs one value")
                    ttl_default = _ttl(tokens[1][0])
                elif directive in ("$INCLUDE", "$GENERATE"):
                    raise _Bad(f"{directive} is not supported")
                else:
                    raise _Bad(f"unknown directive {first}")
                continue
            rest = tokens
            if not blank:
                owner = _name(first, cur_origin)
                rest = tokens[1:]
            elif owner is None:
                raise _Bad("record without an owner (no previous owner to repeat)")
            ttl, seen_class = None, False
            while rest:
                word = rest[0][0]
                if ttl is None and _is_ttl(word):
                    ttl = _ttl(word)
                elif not seen_class and word.upper() in ("IN", "CLASS1"):
                    seen_class = True
                elif not seen_class and (word.upper() in ("CH", "CS", "HS", "NONE", "ANY")
                                         or word.upper().startswith("CLASS")):
                    raise _Bad(f"class {word} is not supported (only IN)")
                else:
                    break
                rest = rest[1:]
            if not rest:
                raise _Bad("record without a type")
            rtype = _rtype(rest[0][0])
            if rtype is None:
                raise _Bad(f"unknown type {rest[0][0]!r}")
            if rtype in META_TYPES:
                raise _Bad(f"{rest[0][0]} is not a zone data type")
            if ttl is None:
                ttl = ttl_default if ttl_default is not None else last_ttl
                if ttl is None:
                    raise _Bad("no TTL given and no $TTL before")
            last_ttl = ttl
            args = rest[1:]
            if args and args[0] == ("\\#", False):
                rd = _rd_generic(rtype, args)
            elif rtype in _RDATA:
                rd = _RDATA[rtype](args, cur_origin)
            else:
                raise _Bad(f"type {rest[0][0]} needs RFC 3597 syntax (\\# length hex)")
            out.append((lineno, RR(owner, rtype, 1, ttl, rd)))
        except _Bad as e:
            raise ZoneFileError(file, lineno, str(e)) from None
    return out


def load_zone(text: str, origin: DNSLabel | str | None = None, *,
              file: str = "<zone>", default_ttl: int | None = None) -> Zone:
    """A checked :class:`~.zone.Zone` from master file text. The zone's apex
    is ``origin`` if given, else the owner of the first SOA. Raises
    :class:`ZoneFileError` for syntax errors and broken zone rules alike."""
    parsed = parse_records(text, origin, file=file, default_ttl=default_ttl)
    apex = DNSLabel(origin) if origin is not None else None
    if apex is None:
        soa = next((rr for _, rr in parsed if rr.rtype == 6), None)
        if soa is None:
            raise ZoneFileError(file, 1, "no SOA record (and no origin given)")
        apex = soa.rname
    try:
        return Zone.from_records(apex, [rr for _, rr in parsed])
    except ZoneError as e:
        line = parsed[e.index][0] if e.index is not None else 1
        raise ZoneFileError(file, line, e.reason) from None
