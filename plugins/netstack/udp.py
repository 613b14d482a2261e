"""UDP (RFC 768; over IPv6, RFC 8200 section 8.1): parse and build.

Errors: :func:`parse` raises only :class:`~.errors.ParseError` (layer
``"udp"``): shorter than 8 bytes, a length field below 8 or beyond the
buffer, a bad checksum, or a zero checksum over IPv6. Bytes beyond the
length field are ignored. Ownership: the payload is a :class:`memoryview`
slice of the parsed buffer (see :mod:`.buffers`).

The checksum is verified when the IP source and destination are given
(4-byte addresses: IPv4, where 0 means "no checksum"; 16-byte: IPv6, where
it is mandatory). :func:`build` always computes it, writing 0xFFFF for a
computed 0 (RFC 768).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .buffers import Buffer, view
from .checksum import checksum, ones_sum, pseudo
from .errors import ParseError

PROTO = 17
HEADER_LEN = 8

_HDR = struct.Struct("!HHHH")
_LAYER = "udp"


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A parsed datagram; ``payload`` borrows the parsed buffer."""

    src_port: int
    dst_port: int
    length: int
    checksum: int
    payload: memoryview | bytes


def parse(data: Buffer, src: bytes | None = None, dst: bytes | None = None) -> UdpDatagram:
    """The datagram in ``data`` (an IP payload); its checksum verified
    against the pseudo-header of ``src``/``dst`` when they are given."""
    mv = view(data)
    n = len(mv)
    if n < HEADER_LEN:
        raise ParseError(_LAYER, f"{n} bytes is shorter than the 8-byte header")
    sport, dport, length, cksum = _HDR.unpack_from(mv)
    if length < HEADER_LEN:
        raise ParseError(_LAYER, f"length {length} is below 8")
    if length > n:
        raise ParseError(_LAYER, f"length {length} is beyond the {n} bytes received")
    if src is not None and dst is not None:
        if cksum == 0:
            if len(src) != 4:
                raise ParseError(_LAYER, "zero checksum over IPv6")
        elif ones_sum(mv[:length], pseudo(src, dst, PROTO, length)) != 0xFFFF:
            raise ParseError(_LAYER, "bad checksum")
    return UdpDatagram(sport, dport, length, cksum, mv[HEADER_LEN:length])


def build(src_port: int, dst_port: int, payload: Buffer, src: bytes, dst: bytes) -> bytes:
    """A datagram from ``src_port`` to ``dst_port``, its checksum computed
    over the pseudo-header of the IP addresses ``src``/``dst`` (4 or 16 bytes)."""
    length = HEADER_LEN + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"datagram of {length} bytes is longer than 65535")
    initial = ones_sum(_HDR.pack(src_port, dst_port, length, 0), pseudo(src, dst, PROTO, length))
    ck = checksum(payload, initial) or 0xFFFF
    return b"".join((_HDR.pack(src_port, dst_port, length, ck), payload))
