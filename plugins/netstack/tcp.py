"""TCP segment headers (RFC 9293) and options: parse and build. No state
machine here.

Errors: :func:`parse` and :func:`parse_options` raise only
:class:`~.errors.ParseError` (layer ``"tcp"``): shorter than 20 bytes, a
data offset below 5 words or beyond the buffer, an option whose length runs
past the header or is below 2, a bad checksum. An option of a known kind
with the wrong length is not an error: it is kept as
:class:`UnknownOption`, as every unknown kind is, so nothing is lost.
Ownership: the payload is a :class:`memoryview` slice of the parsed buffer
(see :mod:`.buffers`); options are copies.

The checksum (mandatory, over IPv4 or IPv6 pseudo-headers) is verified when
``src``/``dst`` are given. Options are a tuple of :class:`Mss`,
:class:`WindowScale`, :class:`SackPermitted`, :class:`Sack`,
:class:`Timestamps` and :class:`UnknownOption`, in wire order; End of
Option List and No-Operation are padding and not listed. :func:`build_options`
lays them out in the given order and pads with zeros to a 4-byte boundary.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .buffers import Buffer, view
from .checksum import checksum, ones_sum, pseudo
from .errors import ParseError

PROTO = 6
HEADER_LEN = 20
MAX_OPTIONS = 40

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

KIND_EOL = 0
KIND_NOP = 1
KIND_MSS = 2
KIND_WSCALE = 3
KIND_SACK_PERMITTED = 4
KIND_SACK = 5
KIND_TIMESTAMPS = 8

_HDR = struct.Struct("!HHIIHHHH")
_LAYER = "tcp"


@dataclass(frozen=True, slots=True)
class Mss:
    """Maximum segment size (kind 2)."""

    value: int


@dataclass(frozen=True, slots=True)
class WindowScale:
    """Window scale shift count (kind 3, RFC 7323)."""

    shift: int


@dataclass(frozen=True, slots=True)
class SackPermitted:
    """SACK permitted (kind 4, RFC 2018)."""


@dataclass(frozen=True, slots=True)
class Sack:
    """Selective acknowledgement blocks (kind 5): (left edge, right edge) pairs."""

    blocks: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Timestamps:
    """Timestamps (kind 8, RFC 7323): TSval and TSecr."""

    value: int
    echo: int


@dataclass(frozen=True, slots=True)
class UnknownOption:
    """Any other option, or a known kind of the wrong length: kind and data
    (without the kind and length bytes)."""

    kind: int
    data: bytes


TcpOption = Mss | WindowScale | SackPermitted | Sack | Timestamps | UnknownOption

_KNOWN_LEN = {KIND_MSS: 4, KIND_WSCALE: 3, KIND_SACK_PERMITTED: 2, KIND_TIMESTAMPS: 10}


@dataclass(frozen=True, slots=True)
class TcpSegment:
    """A parsed segment. ``flags`` holds the eight flag bits (:data:`FIN`
    ... :data:`CWR`), ``reserved`` the four bits before them;
    ``header_length`` is the data offset in bytes. ``payload`` borrows the
    parsed buffer."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    checksum: int
    urgent: int
    options: tuple[TcpOption, ...]
    payload: memoryview | bytes
    header_length: int = HEADER_LEN
    reserved: int = 0

    def has(self, flags: int) -> bool:
        """Whether every flag bit in ``flags`` is set."""
        return self.flags & flags == flags

    def option(self, kind: type) -> TcpOption | None:
        """The first option of class ``kind`` (e.g. ``Mss``), or None."""
        return next((o for o in self.options if type(o) is kind), None)


def _option(kind: int, body: memoryview) -> TcpOption:
    size = len(body) + 2
    if _KNOWN_LEN.get(kind) == size:
        if kind == KIND_MSS:
            return Mss(int.from_bytes(body, "big"))
        if kind == KIND_WSCALE:
            return WindowScale(body[0])
        if kind == KIND_TIMESTAMPS:
            return Timestamps(*struct.unpack_from("!II", body))
        return SackPermitted()
    if kind == KIND_SACK and size >= 10 and (size - 2) % 8 == 0:
        edges = struct.unpack_from(f"!{(size - 2) // 4}I", body)
        return Sack(tuple(zip(edges[0::2], edges[1::2])))
    return UnknownOption(kind, bytes(body))


def parse_options(data: Buffer) -> tuple[TcpOption, ...]:
    """The options area of a TCP header (what lies between the fixed 20
    bytes and the data offset)."""
    mv = view(data)
    n = len(mv)
    out: list[TcpOption] = []
    i = 0
    while i < n:
        kind = mv[i]
        if kind == KIND_EOL:
            break
        if kind == KIND_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError(_LAYER, f"option {kind} has no length byte")
        size = mv[i + 1]
        if size < 2:
            raise ParseError(_LAYER, f"option {kind} has length {size}, below 2")
        if i + size > n:
            raise ParseError(_LAYER, f"option {kind} of {size} bytes runs past the header")
        out.append(_option(kind, mv[i + 2:i + size]))
        i += size
    return tuple(out)


def _encode(opt: TcpOption) -> bytes:
    if isinstance(opt, Mss):
        return struct.pack("!BBH", KIND_MSS, 4, opt.value)
    if isinstance(opt, WindowScale):
        return bytes((KIND_WSCALE, 3, opt.shift))
    if isinstance(opt, SackPermitted):
        return bytes((KIND_SACK_PERMITTED, 2))
    if isinstance(opt, Timestamps):
        return struct.pack("!BBII", KIND_TIMESTAMPS, 10, opt.value, opt.echo)
    if isinstance(opt, Sack):
        edges = [e for block in opt.blocks for e in block]
        return struct.pack(f"!BB{len(edges)}I", KIND_SACK, 2 + 4 * len(edges), *edges)
    if isinstance(opt, UnknownOption):
        if len(opt.data) > 253:
            raise ValueError(f"option {opt.kind} data of {len(opt.data)} bytes is too long")
        return bytes((opt.kind, 2 + len(opt.data))) + opt.data
    raise ValueError(f"{opt!r} is not a TCP option")


def build_options(options: tuple[TcpOption, ...] | list[TcpOption]) -> bytes:
    """``options`` laid out in order, zero-padded to a multiple of 4 bytes
    (at most 40)."""
    raw = b"".join(map(_encode, options))
    if len(raw) & 3:
        raw += bytes(4 - (len(raw) & 3))
    if len(raw) > MAX_OPTIONS:
        raise ValueError(f"{len(raw)} bytes of options is more than 40")
    return raw


def parse(data: Buffer, src: bytes | None = None, dst: bytes | None = None) -> TcpSegment:
    """The segment in ``data`` (an IP payload, all of it); its checksum
    verified against the pseudo-header of ``src``/``dst`` when given."""
    mv = view(data)
    n = len(mv)
    if n < HEADER_LEN:
        raise ParseError(_LAYER, f"{n} bytes is shorter than the 20-byte header")
    sport, dport, seq, ack, off_flags, window, cksum, urgent = _HDR.unpack_from(mv)
    hlen = (off_flags >> 12) * 4
    if hlen < HEADER_LEN:
        raise ParseError(_LAYER, f"data offset of {hlen} bytes is below 20")
    if hlen > n:
        raise ParseError(_LAYER, f"data offset of {hlen} bytes is beyond the {n} bytes received")
    if src is not None and dst is not None and ones_sum(mv, pseudo(src, dst, PROTO, n)) != 0xFFFF:
        raise ParseError(_LAYER, "bad checksum")
    options = parse_options(mv[HEADER_LEN:hlen]) if hlen > HEADER_LEN else ()
    return TcpSegment(sport, dport, seq, ack, off_flags & 0xFF, window, cksum, urgent,
                      options, mv[hlen:], hlen, (off_flags >> 8) & 0xF)


def build(src_port: int, dst_port: int, seq: int, ack: int, flags: int, window: int,
          payload: Buffer = b"", *, src: bytes, dst: bytes,
          options: tuple[TcpOption, ...] | list[TcpOption] = (), urgent: int = 0,
          reserved: int = 0) -> bytes:
    """A segment, its checksum computed over the pseudo-header of the IP
    addresses ``src``/``dst`` (4 or 16 bytes)."""
    opts = build_options(options)
    hlen = HEADER_LEN + len(opts)
    off_flags = (hlen << 10) | (reserved << 8) | flags
    head = _HDR.pack(src_port, dst_port, seq, ack, off_flags, window, 0, urgent)
    ck = checksum(payload, ones_sum(head + opts, pseudo(src, dst, PROTO, hlen + len(payload))))
    return b"".join((_HDR.pack(src_port, dst_port, seq, ack, off_flags, window, ck, urgent),
                     opts, payload))
