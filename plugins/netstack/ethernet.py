"""Ethernet II frames: parse and build, one 802.1Q/802.1ad tag, MAC helpers.

A frame is destination MAC, source MAC, EtherType, payload (the FCS is not
seen: NICs and taps strip it). One VLAN tag (TPID 0x8100 or 0x88A8) right
after the source MAC is parsed into :class:`VlanTag`; a second, inner tag
(Q-in-Q) stays in the payload with :attr:`EthernetFrame.ethertype` 0x8100.
An EtherType below 0x0600 is an IEEE 802.3 length and is returned as it is.

Errors: :func:`parse` and :func:`mac_from_str` raise only
:class:`~.errors.ParseError` (layer ``"ethernet"``). Ownership: the payload
is a :class:`memoryview` slice of the parsed buffer (see :mod:`.buffers`);
MAC addresses are 6-byte ``bytes``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .buffers import Buffer, view
from .errors import ParseError

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_QINQ = 0x88A8
ETHERTYPE_IPV6 = 0x86DD

BROADCAST = b"\xff" * 6
"""ff:ff:ff:ff:ff:ff"""
HEADER_LEN = 14
MIN_FRAME = 60
"""The shortest frame on the wire without its FCS; :func:`build` pads to it."""

_HDR = struct.Struct("!6s6sH")
_TAG = struct.Struct("!HH")
_LAYER = "ethernet"


@dataclass(frozen=True, slots=True)
class VlanTag:
    """An 802.1Q tag: priority (0-7), drop eligible (0/1), VLAN id (0-4095), TPID."""

    vid: int
    pcp: int = 0
    dei: int = 0
    tpid: int = ETHERTYPE_VLAN

    @property
    def tci(self) -> int:
        """The 16-bit tag control information."""
        return (self.pcp << 13) | (self.dei << 12) | self.vid


@dataclass(frozen=True, slots=True)
class EthernetFrame:
    """A parsed frame; ``payload`` borrows the parsed buffer."""

    dst: bytes
    src: bytes
    ethertype: int
    payload: memoryview
    vlan: VlanTag | None = None


def parse(data: Buffer) -> EthernetFrame:
    """The frame in ``data`` (without FCS). Trailing padding stays in the
    payload: the layer above knows its own length."""
    mv = view(data)
    if len(mv) < HEADER_LEN:
        raise ParseError(_LAYER, f"{len(mv)} bytes is shorter than the 14-byte header")
    dst, src, ethertype = _HDR.unpack_from(mv)
    if ethertype != ETHERTYPE_VLAN and ethertype != ETHERTYPE_QINQ:
        return EthernetFrame(dst, src, ethertype, mv[HEADER_LEN:])
    if len(mv) < HEADER_LEN + 4:
        raise ParseError(_LAYER, f"{len(mv)} bytes is too short for the VLAN tag")
    tci, inner = _TAG.unpack_from(mv, HEADER_LEN)
    tag = VlanTag(tci & 0xFFF, tci >> 13, (tci >> 12) & 1, ethertype)
    return EthernetFrame(dst, src, inner, mv[HEADER_LEN + 4:], tag)


def build(dst: bytes, src: bytes, ethertype: int, payload: Buffer = b"", *,
          vlan: VlanTag | None = None, pad: bool = True) -> bytes:
    """A frame (without FCS); with ``pad``, zero-padded to :data:`MIN_FRAME` bytes."""
    if len(dst) != 6 or len(src) != 6:
        raise ValueError("MAC addresses are 6 bytes")
    head = _HDR.pack(dst, src, vlan.tpid if vlan else ethertype)
    if vlan is not None:
        head += _TAG.pack(vlan.tci, ethertype)
    frame = b"".join((head, payload))
    if pad and len(frame) < MIN_FRAME:
        frame += bytes(MIN_FRAME - len(frame))
    return frame


def mac_to_str(mac: bytes) -> str:
    """``b"\\xaa\\xbb..."`` as ``"aa:bb:cc:dd:ee:ff"``."""
    return mac.hex(":")


def mac_from_str(text: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` (or with ``-``) as 6 bytes."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ParseError(_LAYER, f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    try:
        return bytes.fromhex("".join(parts))
    except ValueError:
        raise ParseError(_LAYER, f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)") from None


def is_broadcast(mac: bytes) -> bool:
    """Whether ``mac`` is ff:ff:ff:ff:ff:ff."""
    return mac == BROADCAST


def is_multicast(mac: bytes) -> bool:
    """Whether ``mac`` is a group address (broadcast included): I/G bit set."""
    return bool(mac[0] & 1)


def is_unicast(mac: bytes) -> bool:
    """Whether ``mac`` is an individual address (neither multicast nor broadcast)."""
    return not mac[0] & 1


def ipv4_multicast_mac(ip: bytes) -> bytes:
    """The MAC of an IPv4 multicast group (RFC 1112): 01:00:5e + low 23 bits."""
    return b"\x01\x00\x5e" + bytes((ip[1] & 0x7F, ip[2], ip[3]))


def ipv6_multicast_mac(ip: bytes) -> bytes:
    """The MAC of an IPv6 multicast group (RFC 2464): 33:33 + low 32 bits."""
    return b"\x33\x33" + ip[12:16]
