"""IPv4 headers (RFC 791): parse, build, TTL decrement; addresses as text.

Errors: :func:`parse` raises only :class:`~.errors.ParseError` (layer
``"ipv4"``): version not 4, header length below 20 or beyond the buffer,
total length below the header or beyond the buffer, bad header checksum,
options that do not follow RFC 791's layout (a length byte below 2 or
running past the header).
A buffer longer than the total length (Ethernet padding) is fine: the
payload stops at the total length.

Ownership: :attr:`IPv4Packet.payload` is a :class:`memoryview` slice of the
parsed buffer (see :mod:`.buffers`); addresses (4-byte ``bytes``) and raw
options are copies. Fragment offsets are in bytes, not 8-byte units.

:class:`Reassembler` puts fragments back together (RFC 791/815), within
limits, and never raises on what it is given; its rules are in its
docstring.
"""

from __future__ import annotations

import bisect
import ipaddress
import struct
from dataclasses import dataclass

from .buffers import Buffer, view
from .checksum import checksum, ones_sum, update16
from .counters import Counters
from .errors import ParseError

PROTO_ICMP = 1
PROTO_IGMP = 2
PROTO_TCP = 6
PROTO_UDP = 17

FLAG_RESERVED = 4
FLAG_DF = 2
"""Don't fragment."""
FLAG_MF = 1
"""More fragments."""

HEADER_LEN = 20
MAX_PACKET = 65535

_HDR = struct.Struct("!BBHHHBBH4s4s")
_LAYER = "ipv4"


@dataclass(frozen=True, slots=True)
class IPv4Packet:
    """A parsed IPv4 packet. ``flags`` holds the three flag bits
    (:data:`FLAG_DF`, :data:`FLAG_MF`, :data:`FLAG_RESERVED`);
    ``frag_offset`` is in bytes; ``options`` are raw (``b""`` if none);
    ``checksum`` is the header checksum as received."""

    src: bytes
    dst: bytes
    proto: int
    payload: memoryview | bytes
    ttl: int
    tos: int
    ident: int
    flags: int
    frag_offset: int
    options: bytes
    total_length: int
    checksum: int

    @property
    def header_length(self) -> int:
        """The header length in bytes (20 + options)."""
        return HEADER_LEN + len(self.options)

    @property
    def df(self) -> bool:
        return bool(self.flags & FLAG_DF)

    @property
    def mf(self) -> bool:
        return bool(self.flags & FLAG_MF)

    @property
    def is_fragment(self) -> bool:
        """Whether this is part of a fragmented datagram (MF set or offset > 0)."""
        return bool(self.flags & FLAG_MF) or self.frag_offset > 0

    @property
    def dscp(self) -> int:
        return self.tos >> 2

    @property
    def ecn(self) -> int:
        return self.tos & 3

    def header_bytes(self) -> bytes:
        """The header as it was received (every field, the checksum as it was)."""
        return _pack(self.src, self.dst, self.proto, self.ttl, self.tos, self.ident, self.flags,
                     self.frag_offset, self.options, self.total_length, self.checksum)

    def to_bytes(self) -> bytes:
        """Header and payload as received: what an ICMP error quotes."""
        return self.header_bytes() + bytes(self.payload)


def _pack(src: bytes, dst: bytes, proto: int, ttl: int, tos: int, ident: int, flags: int,
          frag_offset: int, options: bytes, total_length: int, cksum: int) -> bytes:
    ihl = (HEADER_LEN + len(options)) >> 2
    return _HDR.pack(0x40 | ihl, tos, total_length, ident, (flags << 13) | (frag_offset >> 3),
                     ttl, proto, cksum, src, dst) + options


def parse(data: Buffer, *, verify_checksum: bool = True) -> IPv4Packet:
    """The IPv4 packet in ``data``."""
    mv = view(data)
    n = len(mv)
    if n < HEADER_LEN:
        raise ParseError(_LAYER, f"{n} bytes is shorter than the 20-byte header")
    vihl, tos, total, ident, frag, ttl, proto, cksum, src, dst = _HDR.unpack_from(mv)
    if vihl >> 4 != 4:
        raise ParseError(_LAYER, f"version {vihl >> 4} is not 4")
    ihl = (vihl & 0xF) << 2
    if ihl < HEADER_LEN:
        raise ParseError(_LAYER, f"header length {ihl} is below 20")
    if ihl > n:
        raise ParseError(_LAYER, f"header length {ihl} is beyond the {n} bytes received")
    if total < ihl:
        raise ParseError(_LAYER, f"total length {total} is shorter than the {ihl}-byte header")
    if total > n:
        raise ParseError(_LAYER, f"total length {total} is beyond the {n} bytes received")
    if verify_checksum and ones_sum(mv[:ihl]) != 0xFFFF:
        raise ParseError(_LAYER, "bad header checksum")
    if ihl > HEADER_LEN:
        _check_options(mv, ihl)
    return IPv4Packet(src, dst, proto, mv[ihl:total], ttl, tos, ident, frag >> 13,
                      (frag & 0x1FFF) << 3, bytes(mv[HEADER_LEN:ihl]), total, cksum)


def _check_options(mv: memoryview, ihl: int) -> None:
    """Options are End of List (0), No Operation (1), or type, length (>= 2,
    counting both bytes), value; the list ends at End of List or the header."""
    i = HEADER_LEN
    while i < ihl:
        kind = mv[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= ihl:
            raise ParseError(_LAYER, f"option {kind} at byte {i} has no length")
        length = mv[i + 1]
        if length < 2 or i + length > ihl:
            raise ParseError(_LAYER, f"option {kind} at byte {i} has a bad length {length}")
        i += length


def build(src: bytes, dst: bytes, proto: int, payload: Buffer = b"", *, ttl: int = 64,
          tos: int = 0, ident: int = 0, flags: int = 0, frag_offset: int = 0,
          options: bytes = b"") -> bytes:
    """A packet, its header checksum computed. ``options`` are zero-padded
    (End of Options List) to a multiple of 4 bytes; at most 40 bytes."""
    if len(src) != 4 or len(dst) != 4:
        raise ValueError("IPv4 addresses are 4 bytes")
    if len(options) & 3:
        options = bytes(options) + bytes(4 - (len(options) & 3))
    if len(options) > 40:
        raise ValueError(f"{len(options)} bytes of options is more than 40")
    if frag_offset & 7 or not 0 <= frag_offset <= 0xFFF8:
        raise ValueError(f"fragment offset {frag_offset} is not a multiple of 8 below 65536")
    total = HEADER_LEN + len(options) + len(payload)
    if total > MAX_PACKET:
        raise ValueError(f"packet of {total} bytes is longer than {MAX_PACKET}")
    ck = checksum(_pack(src, dst, proto, ttl, tos, ident, flags, frag_offset, options, total, 0))
    head = _pack(src, dst, proto, ttl, tos, ident, flags, frag_offset, options, total, ck)
    return b"".join((head, payload))


def decrement_ttl(buf: bytearray | memoryview, offset: int = 0) -> bool:
    """Decrement the TTL of the packet at ``offset`` in the writable ``buf``
    in place, updating the header checksum incrementally (RFC 1624). Returns
    False, changing nothing, when the TTL is 0 or 1: the packet must not be
    forwarded (send ICMP time exceeded instead)."""
    ttl = buf[offset + 8]
    if ttl <= 1:
        return False
    proto = buf[offset + 9]
    old = int.from_bytes(buf[offset + 10:offset + 12], "big")
    new = update16(old, (ttl << 8) | proto, ((ttl - 1) << 8) | proto)
    buf[offset + 8] = ttl - 1
    buf[offset + 10:offset + 12] = new.to_bytes(2, "big")
    return True


def addr(text: str) -> bytes:
    """``"10.0.0.1"`` as 4 bytes; :class:`~.errors.ParseError` if it is not one."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise ParseError(_LAYER, f"{text!r} is not an IPv4 address") from None


def addr_str(ip: bytes) -> str:
    """4 bytes as ``"10.0.0.1"``."""
    return "%d.%d.%d.%d" % tuple(ip)


def is_multicast(ip: bytes) -> bool:
    """224.0.0.0/4."""
    return ip[0] & 0xF0 == 0xE0


def is_limited_broadcast(ip: bytes) -> bool:
    """255.255.255.255."""
    return ip == b"\xff\xff\xff\xff"


_SECOND = 1_000_000_000
_FRAGMENT_OVERHEAD = 64
"""Bytes charged per stored fragment on top of its data, for the memory limit."""


class _Datagram:
    __slots__ = ("deadline", "frags", "received", "total", "first", "charged")

    def __init__(self, deadline: int) -> None:
        self.deadline = deadline
        self.frags: list[tuple[int, int, bytes]] = []  # (start, end, data), sorted
        self.received = 0
        self.total: int | None = None
        self.first: IPv4Packet | None = None
        self.charged = 0


_Key = tuple[bytes, bytes, int, int]


class Reassembler:
    """IPv4 fragment reassembly, keyed by (src, dst, proto, ident).

    Rules:

    * A datagram is given ``timeout_ns`` (30 s) from its first fragment;
      :meth:`expire` drops late ones and returns their first fragments
      (offset 0), for an ICMP time exceeded (code 1) if the caller wants.
    * An exact duplicate (same offset and length) is ignored and counted.
      Any other overlap drops the whole datagram, and fragments arriving for
      it later are dropped until its timeout (the spirit of RFC 5722).
    * A fragment that is not the last must carry a multiple of 8 bytes.
    * A datagram may not grow beyond ``max_datagram`` bytes (65535, header
      included), hold more than ``max_fragments`` (64) fragments, or
      disagree about where it ends: all drop it.
    * All datagrams in flight hold at most ``max_bytes`` (1 MiB, counting
      :data:`_FRAGMENT_OVERHEAD` per fragment); to make room, the oldest
      datagrams are evicted.

    Every drop is counted in ``counters`` under ``ipv4.reasm.*``. Stored
    fragment data are copies: the caller's buffers are not kept.
    """

    def __init__(self, *, max_bytes: int = 1 << 20, max_datagram: int = MAX_PACKET,
                 max_fragments: int = 64, timeout_ns: int = 30 * _SECOND,
                 counters: Counters | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_datagram = max_datagram
        self.max_fragments = max_fragments
        self.timeout_ns = timeout_ns
        self.counters = counters if counters is not None else Counters()
        self._flight: dict[_Key, _Datagram] = {}  # in arrival order, so by deadline
        self._dead: dict[_Key, int] = {}  # dropped datagrams -> deadline
        self._bytes = 0

    @property
    def bytes_in_flight(self) -> int:
        """What the stored fragments are charged, against ``max_bytes``."""
        return self._bytes

    def __len__(self) -> int:
        """How many datagrams are being reassembled."""
        return len(self._flight)

    def push(self, pkt: IPv4Packet, now_ns: int) -> IPv4Packet | None:
        """Take in a packet: a non-fragment is returned as it is; a fragment
        returns the whole datagram when it completes it (MF and offset
        cleared, the first fragment's header, a checksum computed anew; the
        packet owns its buffer), else None."""
        if not pkt.is_fragment:
            return pkt
        c = self.counters
        c.incr("ipv4.reasm.fragments")
        key = (pkt.src, pkt.dst, pkt.proto, pkt.ident)
        if key in self._dead:
            c.incr("ipv4.reasm.dropped_fragments")
            return None
        start = pkt.frag_offset
        size = len(pkt.payload)
        end = start + size
        last = not pkt.flags & FLAG_MF
        if not last and (size & 7 or not size):
            c.incr("ipv4.reasm.bad_length")
            return None
        d = self._flight.get(key)
        if end + pkt.header_length > self.max_datagram:
            return self._drop(key, "too_big")
        if d is None:
            d = self._flight[key] = _Datagram(now_ns + self.timeout_ns)
        if last:
            if d.total is not None and d.total != end or d.frags and d.frags[-1][1] > end:
                return self._drop(key, "inconsistent")
            d.total = end
        elif d.total is not None and end > d.total:
            return self._drop(key, "inconsistent")
        frags = d.frags
        i = bisect.bisect_left(frags, (start,))
        if i < len(frags) and frags[i][0] == start and frags[i][1] == end:
            c.incr("ipv4.reasm.duplicate")
            return None
        if i > 0 and frags[i - 1][1] > start or i < len(frags) and frags[i][0] < end:
            return self._drop(key, "overlap")
        if len(frags) >= self.max_fragments:
            return self._drop(key, "too_many_fragments")
        charge = size + _FRAGMENT_OVERHEAD
        if not self._make_room(charge, key):
            return self._drop(key, "no_memory")
        frags.insert(i, (start, end, bytes(pkt.payload)))
        d.received += size
        d.charged += charge
        self._bytes += charge
        if start == 0:
            d.first = IPv4Packet(pkt.src, pkt.dst, pkt.proto, bytes(pkt.payload), pkt.ttl,
                                 pkt.tos, pkt.ident, pkt.flags, 0, pkt.options,
                                 pkt.total_length, pkt.checksum)
        if d.total is None or d.received != d.total or d.first is None:
            return None
        f = d.first
        if f.header_length + d.total > MAX_PACKET:
            return self._drop(key, "too_big")
        self._forget(key)
        c.incr("ipv4.reasm.reassembled")
        raw = build(f.src, f.dst, f.proto, b"".join(fr[2] for fr in frags), ttl=f.ttl,
                    tos=f.tos, ident=f.ident, flags=f.flags & ~FLAG_MF, options=f.options)
        return parse(raw)

    def _forget(self, key: _Key) -> _Datagram | None:
        d = self._flight.pop(key, None)
        if d is not None:
            self._bytes -= d.charged
        return d

    def _drop(self, key: _Key, why: str) -> None:
        self.counters.incr(f"ipv4.reasm.{why}")
        d = self._forget(key)
        if d is not None:
            self._dead[key] = d.deadline
            if len(self._dead) > 1024:
                del self._dead[next(iter(self._dead))]
        return None

    def _make_room(self, charge: int, keep: _Key) -> bool:
        while self._bytes + charge > self.max_bytes:
            victim = next((k for k in self._flight if k != keep), None)
            if victim is None:
                return False
            self._forget(victim)
            self.counters.incr("ipv4.reasm.evicted")
        return True

    def expire(self, now_ns: int) -> list[IPv4Packet]:
        """Drop datagrams whose time is up; return the first fragment (offset
        0, payload as ``bytes``) of each one that had it."""
        out: list[IPv4Packet] = []
        for key, d in list(self._flight.items()):
            if d.deadline > now_ns:
                break
            self._forget(key)
            self.counters.incr("ipv4.reasm.timeout")
            if d.first is not None:
                out.append(d.first)
        for key, deadline in list(self._dead.items()):
            if deadline > now_ns:
                break
            del self._dead[key]
        return out

    def next_deadline(self) -> int | None:
        """When :meth:`expire` has something to do next (None: nothing waits)."""
        if not self._flight:
            return None
        return next(iter(self._flight.values())).deadline
