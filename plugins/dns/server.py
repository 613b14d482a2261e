"""The authoritative server core, sans I/O: ``handle(state, now_ns, proto, src, data)``.

One call takes one DNS message (for TCP: without its two-byte length prefix)
and returns ``(state, replies, notifications)``: the state to use from now
on, the reply messages to send back to ``src`` over the same transport (none,
one, or several for a zone transfer), and :class:`Outgoing` messages to send
elsewhere (NOTIFYs). Nothing here raises on what a peer sends.

Rules:

* fewer than 12 octets, or QR set: dropped (answering a response invites
  reply loops);
* a message that does not parse (counts beyond the data, bad names or
  compression, trailing octets, several or misplaced OPTs): FORMERR;
* EDNS version above 0: BADVERS (with an OPT of version 0);
* opcode QUERY: answered here (below); any other opcode goes to
  ``state.handlers[opcode]`` when present (NOTIFY = 4 and UPDATE = 5 are
  provided by the transfer and update code), else NOTIMP;
* a QUERY must hold exactly one question (else FORMERR); QTYPE AXFR/IXFR go
  to ``state.xfr_handler`` (default: REFUSED); OPT, TKEY, TSIG as QTYPE:
  FORMERR; MAILA/MAILB: NOTIMP; a class other than IN: REFUSED;
* answers follow :mod:`.query`; the reply copies ID, RD and CD, the question
  as the client wrote it (case kept), never sets RA or AD, and carries an
  OPT (payload :data:`EDNS_PAYLOAD`, DO echoed, no options) when the query
  had one. EDNS options are ignored (COOKIE included: a server without cookie
  support leaves them unanswered, RFC 7873);
* over UDP a reply fits min(client payload, :data:`EDNS_PAYLOAD`), at least
  512 (512 without EDNS). When the answer or authority section does not fit,
  the reply holds only the question (and OPT) with TC set, as Knot does;
  additional RRsets that do not fit are left out whole, without TC. Over TCP
  replies are complete;
* a QUERY with a TSIG record (RFC 8945) is verified against the keyring of
  the transfer config (``state.ext["dns.transfer"]``, see :mod:`.xfr`): an
  unknown key answers NOTAUTH with TSIG error BADKEY, a bad MAC BADSIG, a
  time out of the fudge BADTIME (as :func:`.acl.authenticate`); a verified
  one is answered as if unsigned and the reply signed with the same key. A
  signed query never uses the reply cache;
* an internal error while answering gives SERVFAIL.

Speed: a query that is plain (opcode QUERY, one question, no records but
possibly an OPT with no options other than COOKIE) is looked up by its
lowercased question and EDNS parameters in ``state.cache``, which holds
finished replies built from a lowercased question; a hit costs a header
patch. A miss builds the reply the same way and stores it, so both paths give
the same bytes. The cache belongs to one state: a state with other zones
starts empty.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import NamedTuple

from dnslib import RR, DNSBuffer, DNSLabel

from . import tsig
from .acl import authenticate, sign_reply
from .query import Answer, Section, resolve
from .zone import Key, Zone, name_key

QUERY, NOTIFY, UPDATE = 0, 4, 5
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
T_OPT, T_TKEY, T_TSIG, T_IXFR, T_AXFR, T_MAILB, T_MAILA = 41, 249, 250, 251, 252, 253, 254
CLASS_IN = 1
EDNS_PAYLOAD = 1232
"""The UDP payload size advertised, and the most a UDP reply ever takes."""
MIN_PAYLOAD = 512
CACHE_LIMIT = 100_000
"""Entries in ``state.cache`` before it is emptied and starts again."""

F_QR, F_AA, F_TC, F_RD, F_CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0010


class Outgoing(NamedTuple):
    """A message to send to someone other than the querier (e.g. a NOTIFY)."""

    proto: str
    addr: tuple[str, int]
    data: bytes


@dataclass(frozen=True, slots=True)
class Edns:
    """The OPT record of a message (RFC 6891)."""

    payload: int
    version: int
    do: bool
    ext_rcode: int
    options: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class Query:
    """What :func:`parse_query` read from a message: the header, the first
    question (``qname`` is its wire form as received, ``qkey`` the lowercased
    labels; all ``None`` when there is no question), ``question_end`` (offset
    after the first question), and the OPT if any. The full message stays
    available to handlers as the ``data`` they are given."""

    id: int
    flags: int
    opcode: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int
    qname: bytes | None
    qkey: Key | None
    qtype: int | None
    qclass: int | None
    question_end: int
    edns: Edns | None


class MessageError(ValueError):
    """The message cannot be read. ``reply`` says whether a FORMERR reply is
    due (False: drop it)."""

    def __init__(self, reason: str, reply: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


Handler = Callable[["ServerState", int, str, tuple[str, int], bytes, Query],
                   tuple["ServerState", list[bytes], list[Outgoing]]]
"""``handler(state, now_ns, proto, src, data, query) -> (state, replies,
notifications)``: the signature of :func:`handle`, plus the parsed query.
Handlers may raise: the server answers SERVFAIL then."""


def _empty() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True)
class ServerState:
    """Everything the core knows: the zones by apex key, the handlers for
    other opcodes and for zone transfers, ``ext`` (free room for the
    handlers' own state, by name), and the reply cache. Never mutated (the
    cache aside, which only memoizes); change it with the ``with_*`` methods.
    """

    zones: Mapping[Key, Zone] = field(default_factory=_empty)
    handlers: Mapping[int, Handler] = field(default_factory=_empty)
    xfr_handler: Handler | None = None
    ext: Mapping[str, object] = field(default_factory=_empty)
    cache: dict[bytes, bytes] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def create(cls, zones: Iterable[Zone] = (), *, handlers: Mapping[int, Handler] | None = None,
               xfr_handler: Handler | None = None) -> ServerState:
        """A state serving ``zones`` (a later zone with the same apex wins)."""
        return cls(zones=MappingProxyType({z.apex: z for z in zones}),
                   handlers=MappingProxyType(dict(handlers or {})), xfr_handler=xfr_handler)

    def zone(self, origin: DNSLabel | str) -> Zone | None:
        """The zone whose apex is ``origin``, if served."""
        return self.zones.get(name_key(origin))

    def with_zone(self, zone: Zone) -> ServerState:
        """This state with ``zone`` added or replacing the one at its apex."""
        return replace(self, zones=MappingProxyType({**self.zones, zone.apex: zone}), cache={})

    def without_zone(self, origin: DNSLabel | str) -> ServerState:
        """This state without the zone at ``origin`` (no error if absent)."""
        key = name_key(origin)
        zones = {k: z for k, z in self.zones.items() if k != key}
        return replace(self, zones=MappingProxyType(zones), cache={})

    def with_handler(self, opcode: int, handler: Handler | None) -> ServerState:
        """This state with ``handler`` for ``opcode`` (``None`` removes it)."""
        handlers = dict(self.handlers)
        if handler is None:
            handlers.pop(opcode, None)
        else:
            handlers[opcode] = handler
        return replace(self, handlers=MappingProxyType(handlers))

    def with_xfr_handler(self, handler: Handler | None) -> ServerState:
        """This state with ``handler`` for QTYPE AXFR and IXFR."""
        return replace(self, xfr_handler=handler)

    def with_ext(self, name: str, value: object) -> ServerState:
        """This state with ``ext[name] = value``."""
        return replace(self, ext=MappingProxyType({**self.ext, name: value}))


# -- reading a message ---------------------------------------------------------

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")


def _skip_name(data: bytes, i: int) -> int:
    """Offset after the name at ``i`` (compression pointers must point back)."""
    n, total = len(data), 0
    while True:
        if i >= n:
            raise MessageError("name runs past the end")
        length = data[i]
        if length >= 0xC0:
            if i + 1 >= n or ((length & 0x3F) << 8 | data[i + 1]) >= i:
                raise MessageError("bad compression pointer")
            return i + 2
        if length > 63:
            raise MessageError("bad label type")
        total += length + 1
        if total > 255:
            raise MessageError("name longer than 255 octets")
        i += length + 1
        if length == 0:
            return i


def parse_query(data: bytes) -> Query:
    """Read a message's header, first question and OPT, and check that the
    rest is well formed. Raises :class:`MessageError`."""
    if len(data) < 12:
        raise MessageError("shorter than a header", reply=False)
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & F_QR:
        raise MessageError("a response, not a query", reply=False)
    n = len(data)
    i = 12
    qname = qkey = qtype = qclass = None
    qend = 12
    for q in range(qd):
        start = i
        if q == 0:
            labels = []
            while True:
                if i >= n:
                    raise MessageError("question runs past the end")
                length = data[i]
                if length > 63:
                    raise MessageError("compression or bad label in the question")
                if length == 0:
                    break
                labels.append(data[i + 1:i + 1 + length].lower())
                i += length + 1
            i += 1
            if i - start > 255:
                raise MessageError("name longer than 255 octets")
            if i + 4 > n:
                raise MessageError("question runs past the end")
            qname, qkey = data[start:i], tuple(labels)
            qtype, qclass = struct.unpack_from("!HH", data, i)
            qend = i = i + 4
        else:
            i = _skip_name(data, i) + 4
            if i > n:
                raise MessageError("question runs past the end")
    edns = None
    for r in range(an + ns + ar):
        start = i
        i = _skip_name(data, i)
        if i + 10 > n:
            raise MessageError("record runs past the end")
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, i)
        i += 10
        if i + rdlen > n:
            raise MessageError("record data runs past the end")
        if rtype == T_OPT:
            if r < an + ns or edns is not None or data[start] != 0:
                raise MessageError("OPT misplaced, repeated or not at the root")
            edns = Edns(rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000), ttl >> 24,
                        _options(data[i:i + rdlen]))
        i += rdlen
    if i != n:
        raise MessageError("octets after the last record")
    return Query(qid, flags, (flags >> 11) & 0xF, qd, an, ns, ar, qname, qkey, qtype, qclass,
                 qend, edns)


def _options(rdata: bytes) -> tuple[tuple[int, bytes], ...]:
    out, i = [], 0
    while i < len(rdata):
        if i + 4 > len(rdata):
            raise MessageError("truncated EDNS option")
        code, length = struct.unpack_from("!HH", rdata, i)
        if i + 4 + length > len(rdata):
            raise MessageError("truncated EDNS option")
        out.append((code, rdata[i + 4:i + 4 + length]))
        i += 4 + length
    return tuple(out)


def _cache_key(data: bytes, tcp: bool) -> tuple[bytes, int] | None:
    """The cache key of a plain query (see the module docstring) and the
    offset after its question; ``None`` if the query is not plain."""
    n = len(data)
    if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00" or data[10] \
            or data[11] > 1:
        return None
    i = 12
    while True:
        if i >= n:
            return None
        length = data[i]
        if length == 0:
            break
        if length > 63:
            return None
        i += length + 1
    if i > 266:
        return None
    qend = i + 5
    if data[11]:
        rest = n - qend
        if rest < 11 or data[qend] or data[qend + 1:qend + 3] != b"\x00\x29" \
                or data[qend + 5] or data[qend + 6]:
            return None
        rdlen = data[qend + 9] << 8 | data[qend + 10]
        if rdlen != rest - 11:
            return None
        j = qend + 11
        while j < n:
            if j + 4 > n or data[j] or data[j + 1] != 10:
                return None
            j += 4 + (data[j + 2] << 8 | data[j + 3])
        if j != n:
            return None
        ekey = data[qend + 3:qend + 5] + (b"\x80" if data[qend + 7] & 0x80 else b"\x00")
    elif n != qend:
        return None
    else:
        ekey = b""
    key = data[12:i + 1].lower() + data[i + 1:qend] + ekey
    return (key + b"T" if tcp else key), qend


def _patch(template: bytes, data: bytes, qend: int) -> bytes:
    """A cached reply made this query's: its ID, RD and CD, its question."""
    flags = bytes((template[2] | (data[2] & 0x01), template[3] | (data[3] & 0x10)))
    return b"".join((data[:2], flags, template[4:12], data[12:qend], template[qend:]))


# -- the entry point -----------------------------------------------------------

def handle(state: ServerState, now_ns: int, proto: str, src: tuple[str, int],
           data: bytes) -> tuple[ServerState, list[bytes], list[Outgoing]]:
    """Answer one message (see the module rules). ``proto`` is ``"udp"`` or
    ``"tcp"``; ``src`` the (host, port) it came from; ``now_ns`` the POSIX
    time in nanoseconds (used by handlers, e.g. TSIG)."""
    if type(data) is not bytes:
        data = bytes(data)
    tcp = proto == "tcp"
    plain = _cache_key(data, tcp)
    if plain is not None:
        template = state.cache.get(plain[0])
        if template is not None:
            return state, [_patch(template, data, plain[1])], []
    try:
        query = parse_query(data)
    except MessageError as e:
        return state, ([_formerr(data)] if e.reply else []), []
    try:
        return _dispatch(state, now_ns, proto, src, data, query, plain)
    except Exception:  # a bug must not take the server down: SERVFAIL
        return state, [error_reply(query, SERVFAIL)], []


def _dispatch(state: ServerState, now_ns: int, proto: str, src: tuple[str, int], data: bytes,
              query: Query, plain: tuple[bytes, int] | None
              ) -> tuple[ServerState, list[bytes], list[Outgoing]]:
    if query.edns is not None and query.edns.version > 0:
        return state, [error_reply(query, BADVERS)], []
    if query.opcode != QUERY:
        handler = state.handlers.get(query.opcode)
        if handler is None:
            return state, [error_reply(query, NOTIMP)], []
        return handler(state, now_ns, proto, src, data, query)
    if query.qdcount != 1:
        return state, [error_reply(query, FORMERR)], []
    if query.qtype in (T_AXFR, T_IXFR):
        if state.xfr_handler is None:
            return state, [error_reply(query, REFUSED)], []
        return state.xfr_handler(state, now_ns, proto, src, data, query)
    if plain is None and query.arcount:
        try:
            signed = tsig.find_tsig(data) is not None
        except tsig.TsigError:  # a malformed TSIG record (RFC 8945 5.2: FORMERR)
            return state, [error_reply(query, FORMERR)], []
        if signed:
            return state, _signed_answer(state, now_ns, proto, data), []
    reply = _answer(state, query, proto == "tcp")
    if plain is not None:
        if len(state.cache) >= CACHE_LIMIT:
            state.cache.clear()
        state.cache[plain[0]] = reply
        return state, [_patch(reply, data, plain[1])], []
    return state, [_patch(reply, data, query.question_end)], []


def _signed_answer(state: ServerState, now_ns: int, proto: str, data: bytes) -> list[bytes]:
    """The reply to a QUERY carrying a TSIG (RFC 8945): verified against the
    keyring of ``state.ext[xfr.EXT]`` (failures answer NOTAUTH with the TSIG
    error: BADKEY, BADSIG, BADTIME; FORMERR unsigned), answered as unsigned,
    then signed with the same key. Never cached. Over UDP a signed reply that
    does not fit is sent as question + TC (signed)."""
    from .xfr import config_of  # xfr builds on this module's neighbours, not on it
    now_s = now_ns // 1_000_000_000
    auth = authenticate(data, config_of(state).keyring, now_s)
    if auth.failed:
        return [auth.error_reply] if auth.error_reply else []
    bare = data[:10] + (int.from_bytes(data[10:12], "big") - 1).to_bytes(2, "big") \
        + data[12:tsig.find_tsig(data).offset]
    query = parse_query(bare)
    tcp = proto == "tcp"
    reply = _answer(state, query, tcp)
    wire = sign_reply(_patch(reply, bare, query.question_end), auth, now_s)
    if not tcp and len(wire) > udp_limit(query.edns):
        head = pack_reply(query, Answer(reply[3] & 0xF, bool(reply[2] & 0x04), [], [], []))
        head = head[:2] + bytes((head[2] | F_TC >> 8,)) + head[3:]
        wire = sign_reply(_patch(head, bare, query.question_end), auth, now_s)
    return [wire]


def _answer(state: ServerState, query: Query, tcp: bool) -> bytes:
    """The reply to a one-question QUERY, with a lowercased question, ID 0,
    and RD/CD clear (the caller patches them in)."""
    qtype = query.qtype
    if qtype in (T_OPT, T_TKEY, T_TSIG):
        rcode = FORMERR
    elif qtype in (T_MAILA, T_MAILB):
        rcode = NOTIMP
    elif query.qclass != CLASS_IN:
        rcode = REFUSED
    else:
        found = resolve(state.zones, query.qkey, qtype)
        return pack_reply(query, found, tcp=tcp)
    return pack_reply(query, Answer(rcode, False, [], [], []), tcp=tcp)


# -- building replies ----------------------------------------------------------

def udp_limit(edns: Edns | None) -> int:
    """The largest UDP reply for a query with this OPT (or none)."""
    if edns is None:
        return MIN_PAYLOAD
    return max(MIN_PAYLOAD, min(edns.payload, EDNS_PAYLOAD))


def _opt(edns: Edns, rcode: int) -> bytes:
    ttl = (rcode >> 4) << 24 | (0x8000 if edns.do else 0)
    return b"\x00" + struct.pack("!HHIH", T_OPT, EDNS_PAYLOAD, ttl, 0)


def pack_reply(query: Query, answer: Answer, *, tcp: bool = False) -> bytes:
    """Reply bytes for ``query`` holding ``answer``: ID 0, RD/CD clear, the
    question lowercased (see :func:`handle` for the patch), sections cut to
    fit as the module rules say."""
    buf = DNSBuffer()
    buf.append(bytes(12))
    if query.qkey is not None:
        buf.encode_name(DNSLabel(query.qkey))
        buf.pack("!HH", query.qtype, query.qclass)
    opt = b"" if query.edns is None else _opt(query.edns, answer.rcode)
    limit = (65535 if tcp else udp_limit(query.edns)) - len(opt)
    counts = [0, 0, 0]
    tc = False
    question_end, question_names = len(buf.data), dict(buf.names)
    sections: tuple[Section, ...] = (answer.answer, answer.authority, answer.additional)
    for s, section in enumerate(sections):
        for owner, rrset in section:
            mark, names = len(buf.data), dict(buf.names)
            for rd in rrset.rdata:
                RR(owner, rrset.rtype, CLASS_IN, rrset.ttl, rd).pack(buf)
            if len(buf.data) > limit:
                if s < 2:  # the answer is incomplete: TC and nothing but the question
                    mark, names, counts, tc = question_end, question_names, [0, 0, 0], True
                del buf.data[mark:]
                buf.offset, buf.names = mark, names
                break
            counts[s] += len(rrset.rdata)
        if tc:
            break
    flags = F_QR | (query.opcode << 11) | (answer.rcode & 0xF)
    if answer.aa:
        flags |= F_AA
    if tc:
        flags |= F_TC
    header = _HEADER.pack(0, flags, 1 if query.qkey is not None else 0, counts[0], counts[1],
                          counts[2] + (1 if opt else 0))
    return header + bytes(buf.data[12:]) + opt


def error_reply(query: Query, rcode: int) -> bytes:
    """A complete reply to ``query`` with ``rcode`` and no records (the
    question echoed when there was exactly one, OPT when the query had one;
    ID, RD and CD copied)."""
    q = query if query.qdcount == 1 else replace(query, qkey=None)
    out = bytearray(pack_reply(q, Answer(rcode, False, [], [], [])))
    out[0:2] = query.id.to_bytes(2, "big")
    out[2] |= (query.flags >> 8) & 0x01
    out[3] |= query.flags & 0x10
    if q.qkey is not None:
        out[12:12 + len(query.qname)] = query.qname
    return bytes(out)


def _formerr(data: bytes) -> bytes:
    """FORMERR for a message too broken to read past its header: ID, opcode
    and RD copied, no sections."""
    flags = F_QR | (data[2] & 0x79) << 8 | FORMERR
    return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)
