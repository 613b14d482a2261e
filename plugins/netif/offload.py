"""Finishing what the kernel left to the device: checksums and GSO super-packets.

With the virtio-net header on, the kernel hands a device packets it has not
finished: a TCP/UDP checksum holding only the pseudo-header sum
(``NEEDS_CSUM``), and super-packets of up to 64 KiB to be cut into
``gso_size`` segments (``gso_type``). A forwarder passes those on untouched
(``read_vnet``/``write_vnet``); :func:`complete` turns one into the standard
packets that plain ``read()`` returns, as the kernel itself would before
sending them on a wire: each segment with its own IP length, IPv4 ID and
header checksum, TCP sequence number, flags (FIN and PSH on the last
segment only, CWR on the first only) and a full checksum.

Handled: TCP over IPv4 and IPv6, UDP segmentation (``GSO_UDP_L4``), IPv4
and IPv6 without extension headers, behind an Ethernet header with at most
one 802.1Q tag or none (tun). Anything else raises ``ValueError`` and the
device drops the packet and counts it.

Checksums: the 16-bit ones' complement sum of a byte string is its value as a
big-endian integer modulo 65535 (65536 = 1 modulo 65535), which Python
computes in C; see :func:`ones_sum`.
"""

from __future__ import annotations

import struct

from .linux import (
    ETH_HLEN,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET_F_NEEDS_CSUM,
    VnetHeader,
)

_ETH_IPV4, _ETH_IPV6, _ETH_VLAN = 0x0800, 0x86DD, 0x8100
_TCP, _UDP = 6, 17
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The ones' complement sum of ``data`` as 16-bit words, as a residue modulo 65535.

    An odd length is padded with a zero byte. Sums of parts add up (modulo
    65535) as long as every part but the last has an even length.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def checksum(*parts: bytes | bytearray | memoryview) -> int:
    """The Internet checksum over ``parts`` (all of even length but the last).

    Never 0: a sum of zero is written as 0xFFFF, its equal in ones'
    complement, which UDP requires and TCP and IPv4 accept.
    """
    return 0xFFFF - sum(ones_sum(p) for p in parts) % 0xFFFF


def valid(*parts: bytes | bytearray | memoryview) -> bool:
    """Whether ``parts`` (checksum field included) sum to ones' complement zero."""
    return sum(ones_sum(p) for p in parts) % 0xFFFF == 0


def l3_offset(frame: bytes) -> int:
    """Where the IP header starts in an Ethernet frame (``ValueError`` if not IP)."""
    if len(frame) < ETH_HLEN:
        raise ValueError("frame shorter than an Ethernet header")
    ethertype = int.from_bytes(frame[12:14], "big")
    offset = ETH_HLEN
    if ethertype == _ETH_VLAN:
        ethertype = int.from_bytes(frame[16:18], "big")
        offset += 4
    if ethertype not in (_ETH_IPV4, _ETH_IPV6):
        raise ValueError(f"ethertype {ethertype:#06x} is not IP")
    return offset


def _ip(packet: bytes, l3: int) -> tuple[int, int, int, int]:
    """``(version, l4 offset, end of the IP packet, protocol)``."""
    if len(packet) < l3 + 20:
        raise ValueError("truncated IP header")
    version = packet[l3] >> 4
    if version == 4:
        ihl = (packet[l3] & 15) * 4
        total = int.from_bytes(packet[l3 + 2:l3 + 4], "big")
        proto = packet[l3 + 9]
        l4, end = l3 + ihl, l3 + total
        if ihl < 20 or total < ihl:
            raise ValueError("bad IPv4 header length")
    elif version == 6:
        if len(packet) < l3 + 40:
            raise ValueError("truncated IPv6 header")
        proto = packet[l3 + 6]
        l4, end = l3 + 40, l3 + 40 + int.from_bytes(packet[l3 + 4:l3 + 6], "big")
    else:
        raise ValueError(f"IP version {version}")
    if end > len(packet):
        raise ValueError("IP length beyond the packet")
    return version, l4, end, proto


def _pseudo(packet: bytes, l3: int, version: int, proto: int, length: int) -> bytes:
    if version == 4:
        return packet[l3 + 12:l3 + 20] + struct.pack("!xBH", proto, length)
    return packet[l3 + 8:l3 + 40] + struct.pack("!IxxxB", length, proto)


def finish_checksum(packet: bytes, start: int, offset: int, end: int | None = None) -> bytes:
    """``packet`` with the partial checksum at ``start + offset`` completed.

    The field holds the pseudo-header sum; the checksum covers it and the
    bytes from ``start`` to ``end`` (the end of the packet by default).
    """
    end = len(packet) if end is None else end
    pos = start + offset
    if start < 0 or pos + 2 > end or end > len(packet):
        raise ValueError("checksum offsets beyond the packet")
    out = bytearray(packet)
    struct.pack_into("!H", out, pos, checksum(memoryview(out)[start:end]))
    return bytes(out)


def complete(header: VnetHeader, packet: bytes, *, ethernet: bool) -> list[bytes]:
    """The standard packets that ``packet`` with ``header`` stands for.

    ``ethernet``: the packet is an Ethernet frame (tap, AF_PACKET), not a
    bare IP packet (tun). Raises ``ValueError`` for what cannot be done.
    """
    gso = header.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if not header.flags & VNET_F_NEEDS_CSUM:
            return [packet]
        try:
            end: int | None = _ip(packet, l3_offset(packet) if ethernet else 0)[2]
        except ValueError:
            end = None  # not IP as far as we know: the checksum runs to the end
        return [finish_checksum(packet, header.csum_start, header.csum_offset, end)]
    if header.gso_size <= 0:
        raise ValueError("GSO packet with a segment size of 0")
    l3 = l3_offset(packet) if ethernet else 0
    version, l4, end, proto = _ip(packet, l3)
    if gso in (GSO_TCPV4, GSO_TCPV6) and proto == _TCP:
        if len(packet) < l4 + 20:
            raise ValueError("truncated TCP header")
        hlen = l4 + (packet[l4 + 12] >> 4) * 4
        if hlen < l4 + 20 or hlen > end:
            raise ValueError("bad TCP header length")
    elif gso == GSO_UDP_L4 and proto == _UDP:
        hlen = l4 + 8
        if hlen > end:
            raise ValueError("truncated UDP header")
    else:
        raise ValueError(f"cannot segment GSO type {header.gso_type:#x} with IP protocol "
                         f"{proto}")
    return _segments(packet, l3, l4, hlen, end, version, proto, header.gso_size)


def _segments(packet: bytes, l3: int, l4: int, hlen: int, end: int, version: int,
              proto: int, size: int) -> list[bytes]:
    head = bytearray(packet[:hlen])
    payload = memoryview(packet)[hlen:end]
    tcp = proto == _TCP
    if tcp:
        seq = int.from_bytes(head[l4 + 4:l4 + 8], "big")
        flags = head[l4 + 13]
    ident = int.from_bytes(head[l3 + 4:l3 + 6], "big") if version == 4 else 0
    out = []
    total = len(payload)
    for i, off in enumerate(range(0, total, size)):
        chunk = payload[off:off + size]
        last = off + size >= total
        l4_len = hlen - l4 + len(chunk)
        h = bytearray(head)
        if version == 4:
            struct.pack_into("!HH", h, l3 + 2, hlen - l3 + len(chunk), (ident + i) & 0xFFFF)
            h[l3 + 10:l3 + 12] = b"\0\0"
            struct.pack_into("!H", h, l3 + 10, checksum(h[l3:l4]))
        else:
            struct.pack_into("!H", h, l3 + 4, l4_len)
        if tcp:
            struct.pack_into("!I", h, l4 + 4, (seq + off) & 0xFFFFFFFF)
            f = flags if last else flags & ~(_TCP_FIN | _TCP_PSH)
            h[l4 + 13] = f if i == 0 else f & ~_TCP_CWR
            csum_at = l4 + 16
        else:
            struct.pack_into("!H", h, l4 + 4, l4_len)
            csum_at = l4 + 6
        h[csum_at:csum_at + 2] = b"\0\0"
        pseudo = _pseudo(packet, l3, version, proto, l4_len)
        struct.pack_into("!H", h, csum_at, checksum(pseudo, h[l4:], chunk))
        h += chunk
        out.append(bytes(h))
    return out
