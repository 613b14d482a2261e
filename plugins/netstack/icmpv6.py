"""ICMPv6 (RFC 4443) at the type/code level: parse, build, echo.

Errors: :func:`parse` raises only :class:`~.errors.ParseError` (layer
``"icmpv6"``): shorter than 4 bytes, or a bad checksum when the IPv6
source and destination are given (the checksum covers the IPv6
pseudo-header and is mandatory). Ownership: ``body`` (everything after
type, code and checksum) is a :class:`memoryview` slice of the parsed
buffer (see :mod:`.buffers`). Neighbour discovery messages are recognised
here by type only; :mod:`.ndp` parses and checks them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .buffers import Buffer, view
from .checksum import checksum, ones_sum, pseudo_ipv6
from .errors import ParseError

PROTO = 58

DEST_UNREACHABLE = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAMETER_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136
REDIRECT = 137

HEADER_LEN = 4

_HDR = struct.Struct("!BBH")
_ECHO = struct.Struct("!HH")
_LAYER = "icmpv6"


@dataclass(frozen=True, slots=True)
class Icmpv6Message:
    """A parsed ICMPv6 message; ``body`` borrows the parsed buffer."""

    type: int
    code: int
    checksum: int
    body: memoryview | bytes

    @property
    def is_error(self) -> bool:
        """Error messages are types 0-127 (RFC 4443 section 2.1)."""
        return self.type < 128

    def echo(self) -> tuple[int, int, memoryview]:
        """Identifier, sequence number and data of an echo request or reply."""
        body = view(self.body)
        if len(body) < 4:
            raise ParseError(_LAYER, "echo message shorter than 8 bytes")
        ident, seq = _ECHO.unpack_from(body)
        return ident, seq, body[4:]


def parse(data: Buffer, src: bytes | None = None, dst: bytes | None = None) -> Icmpv6Message:
    """The message in ``data`` (the IPv6 upper-layer payload); its checksum
    verified when ``src``/``dst`` are given."""
    mv = view(data)
    if len(mv) < HEADER_LEN:
        raise ParseError(_LAYER, f"{len(mv)} bytes is shorter than the 4-byte header")
    if src is not None and dst is not None and \
            ones_sum(mv, pseudo_ipv6(src, dst, PROTO, len(mv))) != 0xFFFF:
        raise ParseError(_LAYER, "bad checksum")
    type_, code, cksum = _HDR.unpack_from(mv)
    return Icmpv6Message(type_, code, cksum, mv[HEADER_LEN:])


def build(type_: int, code: int, body: Buffer, src: bytes, dst: bytes) -> bytes:
    """A message with its checksum computed over the IPv6 pseudo-header."""
    pseudo = pseudo_ipv6(src, dst, PROTO, HEADER_LEN + len(body))
    ck = checksum(body, ones_sum(_HDR.pack(type_, code, 0), pseudo))
    return b"".join((_HDR.pack(type_, code, ck), body))


def echo_request(ident: int, seq: int, payload: Buffer, src: bytes, dst: bytes) -> bytes:
    return build(ECHO_REQUEST, 0, b"".join((_ECHO.pack(ident, seq), payload)), src, dst)


def echo_reply(ident: int, seq: int, payload: Buffer, src: bytes, dst: bytes) -> bytes:
    return build(ECHO_REPLY, 0, b"".join((_ECHO.pack(ident, seq), payload)), src, dst)
