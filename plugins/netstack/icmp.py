"""ICMP for IPv4 (RFC 792): parse, build, echo, and the error messages.

Errors: :func:`parse` raises only :class:`~.errors.ParseError` (layer
``"icmp"``): shorter than 8 bytes, or a bad checksum (the checksum covers
the whole message). Ownership: the payload is a :class:`memoryview` slice
of the parsed buffer (see :mod:`.buffers`).

The 4 bytes after type, code and checksum ("rest of header") are kept as
one 32-bit integer, :attr:`IcmpMessage.rest`; properties read them as the
echo identifier and sequence number, the next-hop MTU of "fragmentation
needed", or the pointer of "parameter problem".

Error builders quote the offending datagram's IP header and the first 8
bytes of its payload (RFC 792), or more if asked; :func:`error_allowed`
says when RFC 1122 section 3.2.2 forbids sending an error at all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from . import ipv4
from .buffers import Buffer, view
from .checksum import checksum, ones_sum
from .errors import ParseError

ECHO_REPLY = 0
DEST_UNREACHABLE = 3
SOURCE_QUENCH = 4
REDIRECT = 5
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12
TIMESTAMP = 13
TIMESTAMP_REPLY = 14

ERROR_TYPES = frozenset({DEST_UNREACHABLE, SOURCE_QUENCH, REDIRECT, TIME_EXCEEDED,
                         PARAMETER_PROBLEM})

# Destination unreachable codes.
NET_UNREACHABLE = 0
HOST_UNREACHABLE = 1
PROTOCOL_UNREACHABLE = 2
PORT_UNREACHABLE = 3
FRAGMENTATION_NEEDED = 4
SOURCE_ROUTE_FAILED = 5
NET_PROHIBITED = 9
HOST_PROHIBITED = 10
ADMIN_PROHIBITED = 13
"""Communication administratively prohibited (RFC 1812): a firewall's reject."""

# Time exceeded codes.
TTL_EXCEEDED = 0
REASSEMBLY_TIME_EXCEEDED = 1

HEADER_LEN = 8
QUOTE_EXTRA = 8
"""Payload bytes of the offending datagram quoted after its header."""

_HDR = struct.Struct("!BBHI")
_LAYER = "icmp"


@dataclass(frozen=True, slots=True)
class IcmpMessage:
    """A parsed ICMP message; ``payload`` borrows the parsed buffer."""

    type: int
    code: int
    checksum: int
    rest: int
    payload: memoryview | bytes

    @property
    def ident(self) -> int:
        """Echo identifier (the high half of ``rest``)."""
        return self.rest >> 16

    @property
    def seq(self) -> int:
        """Echo sequence number (the low half of ``rest``)."""
        return self.rest & 0xFFFF

    @property
    def mtu(self) -> int:
        """Next-hop MTU of "fragmentation needed" (RFC 1191)."""
        return self.rest & 0xFFFF

    @property
    def pointer(self) -> int:
        """The offending octet of "parameter problem"."""
        return self.rest >> 24

    @property
    def is_error(self) -> bool:
        return self.type in ERROR_TYPES


def parse(data: Buffer, *, verify_checksum: bool = True) -> IcmpMessage:
    """The ICMP message in ``data`` (an IPv4 payload)."""
    mv = view(data)
    if len(mv) < HEADER_LEN:
        raise ParseError(_LAYER, f"{len(mv)} bytes is shorter than the 8-byte header")
    if verify_checksum and ones_sum(mv) != 0xFFFF:
        raise ParseError(_LAYER, "bad checksum")
    type_, code, cksum, rest = _HDR.unpack_from(mv)
    return IcmpMessage(type_, code, cksum, rest, mv[HEADER_LEN:])


def build(type_: int, code: int, rest: int = 0, payload: Buffer = b"") -> bytes:
    """A message with its checksum computed."""
    ck = checksum(payload, ones_sum(_HDR.pack(type_, code, 0, rest)))
    return b"".join((_HDR.pack(type_, code, ck, rest), payload))


def echo_request(ident: int, seq: int, payload: Buffer = b"") -> bytes:
    return build(ECHO_REQUEST, 0, (ident << 16) | seq, payload)


def echo_reply(ident: int, seq: int, payload: Buffer = b"") -> bytes:
    return build(ECHO_REPLY, 0, (ident << 16) | seq, payload)


def reply_to(request: IcmpMessage) -> bytes:
    """The echo reply to an echo ``request``: same identifier, sequence, data."""
    return echo_reply(request.ident, request.seq, request.payload)


def quote(original: Buffer, extra: int = QUOTE_EXTRA) -> bytes:
    """The start of the offending datagram ``original`` (raw IPv4 bytes):
    its header and ``extra`` bytes beyond it."""
    mv = view(original)
    ihl = (mv[0] & 0xF) * 4 if len(mv) else 0
    return bytes(mv[:ihl + extra])


def dest_unreachable(code: int, original: Buffer, *, mtu: int = 0,
                     extra: int = QUOTE_EXTRA) -> bytes:
    """Destination unreachable about ``original``; ``mtu`` for code 4."""
    return build(DEST_UNREACHABLE, code, mtu & 0xFFFF, quote(original, extra))


def time_exceeded(code: int, original: Buffer, *, extra: int = QUOTE_EXTRA) -> bytes:
    """Time exceeded about ``original``: code 0 TTL, 1 reassembly."""
    return build(TIME_EXCEEDED, code, 0, quote(original, extra))


def parameter_problem(pointer: int, original: Buffer, *, extra: int = QUOTE_EXTRA) -> bytes:
    """Parameter problem at octet ``pointer`` of ``original``'s header."""
    return build(PARAMETER_PROBLEM, 0, (pointer & 0xFF) << 24, quote(original, extra))


def quoted_header(msg: IcmpMessage) -> ipv4.IPv4Packet:
    """The IPv4 header quoted by an error message, with the quoted bytes
    after it as payload (a slice of ``msg.payload``). Its total length is
    the original's, longer than what was quoted; its checksum is not
    checked (NATs may not fix it)."""
    mv = view(msg.payload)
    raw = bytearray(mv)
    if len(raw) >= 4:
        raw[2:4] = len(raw).to_bytes(2, "big")
    try:
        inner = ipv4.parse(raw, verify_checksum=False)
    except ParseError as err:
        raise ParseError(_LAYER, f"quoted datagram: {err.reason}") from None
    return replace(inner, payload=mv[inner.header_length:],
                   total_length=int.from_bytes(mv[2:4], "big"))


def error_allowed(original: ipv4.IPv4Packet) -> bool:
    """Whether an ICMP error may be sent about ``original`` (RFC 1122
    3.2.2): not about an ICMP error, a fragment other than the first, a
    packet to a multicast or the limited broadcast address, or from an
    address that is not one host's (0.0.0.0, multicast, broadcast). A
    subnet's broadcast address is the caller's to check."""
    if original.frag_offset:
        return False
    if ipv4.is_multicast(original.dst) or ipv4.is_limited_broadcast(original.dst):
        return False
    src = original.src
    if src == bytes(4) or ipv4.is_multicast(src) or ipv4.is_limited_broadcast(src):
        return False
    if original.proto == ipv4.PROTO_ICMP:
        payload = original.payload
        if not len(payload) or payload[0] in ERROR_TYPES:
            return False
    return True
