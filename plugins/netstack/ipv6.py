"""IPv6 (RFC 8200): the fixed header, and the extension header chain walked
to the upper-layer protocol.

Errors: :func:`parse` raises only :class:`~.errors.ParseError` (layer
``"ipv6"``): version not 6, a payload length beyond the buffer, an extension
header running past the payload, hop-by-hop options anywhere but first, or
a chain longer than :data:`MAX_EXTENSIONS` headers. A payload length of 0
(a jumbogram, RFC 2675) is refused too. Bytes beyond the payload length
(Ethernet padding) are ignored.

The walk goes through hop-by-hop (0), routing (43), fragment (44),
destination options (60) and authentication (51) headers and stops at the
first other next-header value: that is :attr:`IPv6Packet.proto` (6 TCP,
17 UDP, 58 ICMPv6, 59 no next header, 50 ESP...) and
:attr:`IPv6Packet.payload` starts there. It also stops after a fragment
header whose offset is not 0: what follows is the middle of a datagram,
not a header; ``proto`` is then the fragment header's next header.

Ownership: payloads and :attr:`ExtensionHeader.data` are :class:`memoryview`
slices of the parsed buffer (see :mod:`.buffers`); addresses (16-byte
``bytes``) are copies.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .buffers import Buffer, view
from .errors import ParseError

HOP_BY_HOP = 0
TCP = 6
UDP = 17
ROUTING = 43
FRAGMENT = 44
ESP = 50
AUTH = 51
ICMPV6 = 58
NO_NEXT_HEADER = 59
DEST_OPTIONS = 60

EXTENSIONS = frozenset({HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTIONS, AUTH})
MAX_EXTENSIONS = 8
"""The longest extension header chain :func:`parse` walks."""

HEADER_LEN = 40

_HDR = struct.Struct("!IHBB16s16s")
_FRAG = struct.Struct("!BBHI")
_LAYER = "ipv6"


@dataclass(frozen=True, slots=True)
class ExtensionHeader:
    """One extension header: its type (the next-header value that announced
    it), the next header it announces, and all of its bytes."""

    type: int
    next_header: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class FragmentHeader:
    """The fragment header's fields; ``offset`` in bytes."""

    next_header: int
    offset: int
    more: bool
    ident: int


@dataclass(frozen=True, slots=True)
class IPv6Packet:
    """A parsed IPv6 packet. ``next_header`` is the fixed header's,
    ``proto`` the one the chain ends in; ``payload`` is what follows the
    chain (the upper-layer header, or fragment data)."""

    src: bytes
    dst: bytes
    next_header: int
    hop_limit: int
    traffic_class: int
    flow_label: int
    payload_length: int
    proto: int
    payload: memoryview
    extensions: tuple[ExtensionHeader, ...] = ()
    fragment: FragmentHeader | None = None


def parse(data: Buffer) -> IPv6Packet:
    """The IPv6 packet in ``data``."""
    mv = view(data)
    n = len(mv)
    if n < HEADER_LEN:
        raise ParseError(_LAYER, f"{n} bytes is shorter than the 40-byte header")
    vtf, plen, nh, hops, src, dst = _HDR.unpack_from(mv)
    if vtf >> 28 != 6:
        raise ParseError(_LAYER, f"version {vtf >> 28} is not 6")
    if plen == 0:
        raise ParseError(_LAYER, "payload length 0 (jumbograms are not supported)")
    end = HEADER_LEN + plen
    if end > n:
        raise ParseError(_LAYER, f"payload length {plen} is beyond the "
                                 f"{n - HEADER_LEN} bytes received")
    exts: list[ExtensionHeader] = []
    frag: FragmentHeader | None = None
    proto = nh
    pos = HEADER_LEN
    while proto in EXTENSIONS:
        if len(exts) == MAX_EXTENSIONS:
            raise ParseError(_LAYER, f"more than {MAX_EXTENSIONS} extension headers")
        if proto == HOP_BY_HOP and exts:
            raise ParseError(_LAYER, "hop-by-hop options header not first")
        if pos + 8 > end:
            raise ParseError(_LAYER, f"extension header {proto} runs past the payload")
        following = mv[pos]
        if proto == FRAGMENT:
            size = 8
        elif proto == AUTH:
            size = (mv[pos + 1] + 2) * 4
        else:
            size = (mv[pos + 1] + 1) * 8
        if pos + size > end:
            raise ParseError(_LAYER, f"extension header {proto} runs past the payload")
        exts.append(ExtensionHeader(proto, following, mv[pos:pos + size]))
        pos += size
        if proto == FRAGMENT:
            _, _, off, ident = _FRAG.unpack_from(mv, pos - 8)
            frag = FragmentHeader(following, off & 0xFFF8, bool(off & 1), ident)
            if frag.offset:
                proto = following
                break
        proto = following
    return IPv6Packet(src, dst, nh, hops, (vtf >> 20) & 0xFF, vtf & 0xFFFFF, plen, proto,
                      mv[pos:end], tuple(exts), frag)


def build(src: bytes, dst: bytes, next_header: int, payload: Buffer, *, hop_limit: int = 64,
          traffic_class: int = 0, flow_label: int = 0) -> bytes:
    """A packet; ``payload`` holds any extension headers (see
    :func:`options_header`, :func:`fragment_header`) and the upper layer."""
    if len(src) != 16 or len(dst) != 16:
        raise ValueError("IPv6 addresses are 16 bytes")
    if not 0 < len(payload) <= 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes is not within 1..65535")
    vtf = (6 << 28) | (traffic_class << 20) | flow_label
    return b"".join((_HDR.pack(vtf, len(payload), next_header, hop_limit, src, dst), payload))


def options_header(next_header: int, options: bytes = b"") -> bytes:
    """A hop-by-hop or destination options header holding the raw TLV
    ``options``, padded with Pad1/PadN to a multiple of 8 bytes."""
    body = bytes(options)
    pad = (-(len(body) + 2)) % 8
    if pad == 1:
        body += b"\x00"
    elif pad:
        body += bytes((1, pad - 2)) + bytes(pad - 2)
    size = len(body) + 2
    if size > 2048:
        raise ValueError("options header longer than 2048 bytes")
    return bytes((next_header, size // 8 - 1)) + body


def fragment_header(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    """A fragment header; ``offset`` in bytes, a multiple of 8."""
    if offset & 7 or not 0 <= offset <= 0xFFF8:
        raise ValueError(f"fragment offset {offset} is not a multiple of 8 below 65536")
    return _FRAG.pack(next_header, 0, offset | int(more), ident)


def addr(text: str) -> bytes:
    """``"fe80::1"`` as 16 bytes; :class:`~.errors.ParseError` if it is not one."""
    try:
        return ipaddress.IPv6Address(text).packed
    except ValueError:
        raise ParseError(_LAYER, f"{text!r} is not an IPv6 address") from None


def addr_str(ip: bytes) -> str:
    """16 bytes in the RFC 5952 form (``"fe80::1"``)."""
    return str(ipaddress.IPv6Address(bytes(ip)))


def is_multicast(ip: bytes) -> bool:
    """ff00::/8."""
    return ip[0] == 0xFF
