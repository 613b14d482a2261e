"""Finishing checksums and cutting GSO super-packets in software (no kernel needed).

The oracle is ingot.testing.frames' word-by-word checksum, not the
modulo-65535 one under test.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netif import offload
from ingot.plugins.netif.linux import (
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NO_OFFLOAD,
    VNET_F_NEEDS_CSUM,
    VnetHeader,
)
from ingot.testing import frames as F

SRC, DST = "10.200.1.2", "10.200.2.2"
SRC6, DST6 = socket.inet_pton(socket.AF_INET6, "fd00::1"), socket.inet_pton(socket.AF_INET6,
                                                                             "fd00::2")
FIN, SYN, PSH, ACK, CWR = 0x01, 0x02, 0x08, 0x10, 0x80


@given(st.binary(max_size=3000))
def test_checksum_agrees_with_the_word_by_word_oracle(data):
    expected = F.inet_checksum(data) or 0xFFFF
    assert offload.checksum(data) == expected
    cut = (len(data) // 2) & ~1  # every part but the last of even length
    assert offload.checksum(data[:cut], data[cut:]) == expected


def test_valid_sees_a_correct_ipv4_header():
    packet = F.ipv4(SRC, DST, F.PROTO_UDP, b"x")
    assert offload.valid(packet[:20])
    assert not offload.valid(packet[:10] + b"\0\1" + packet[12:20])


def tcp_super(payload: bytes, flags: int = PSH | ACK, seq: int = 1000) -> bytes:
    return F.ipv4(SRC, DST, F.PROTO_TCP, F.tcp(SRC, DST, 40000, 5201, seq, payload,
                                                 flags=flags), ident=77)


def partial(packet: bytes, l4: int, field: int, proto: int) -> bytes:
    """``packet`` with its L4 checksum replaced by the pseudo-header sum (as the kernel leaves it)."""
    length = len(packet) - l4
    pseudo_sum = 0xFFFF - F.inet_checksum(F.pseudo_header(SRC, DST, proto, length))
    return packet[:l4 + field] + struct.pack("!H", pseudo_sum) + packet[l4 + field + 2:]


@pytest.mark.parametrize("ethernet", [False, True])
def test_an_unfinished_checksum_is_finished(ethernet):
    done = F.ipv4(SRC, DST, F.PROTO_UDP, F.udp(SRC, DST, 5353, 53, b"question?"))
    l2 = 14 if ethernet else 0
    frame = (F.ethernet("02:00:00:00:00:02", "02:00:00:00:00:01", F.ETH_IPV4, b"")
             if ethernet else b"")
    left = frame + partial(done, 20, 6, F.PROTO_UDP)
    header = VnetHeader(flags=VNET_F_NEEDS_CSUM, csum_start=l2 + 20, csum_offset=6)
    assert offload.complete(header, left, ethernet=ethernet) == [frame + done]
    padded = left + bytes(20)  # Ethernet padding is not summed
    if ethernet:
        assert offload.complete(header, padded, ethernet=True) == [frame + done + bytes(20)]


def test_a_finished_packet_is_left_alone():
    packet = tcp_super(b"abc")
    assert offload.complete(NO_OFFLOAD, packet, ethernet=False)[0] is packet


def check_tcp_segments(segments, payload, mss, flags, seq=1000):
    assert b"".join(s[40:] for s in segments) == payload
    for i, seg in enumerate(segments):
        assert F.ipv4_header_ok(seg) and F.l4_checksum_ok(seg)
        assert len(seg) - 40 == min(mss, len(payload) - i * mss)
        assert struct.unpack("!H", seg[2:4])[0] == len(seg)
        assert struct.unpack("!H", seg[4:6])[0] == 77 + i
        assert struct.unpack("!I", seg[24:28])[0] == seq + i * mss
        last = i == len(segments) - 1
        expected = flags if last else flags & ~(FIN | PSH)
        assert seg[33] == (expected if i == 0 else expected & ~CWR)


@pytest.mark.parametrize("size,mss", [(10000, 1448), (1448 * 3, 1448), (1, 1448), (7, 2)])
def test_a_tcp_super_packet_is_cut_like_the_kernel_would(size, mss):
    payload = os.urandom(size)
    flags = PSH | ACK | FIN | CWR
    packet = partial(tcp_super(payload, flags), 20, 16, F.PROTO_TCP)
    header = VnetHeader(VNET_F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 40, mss, 20, 16)
    segments = offload.complete(header, packet, ethernet=False)
    assert len(segments) == -(-size // mss)
    check_tcp_segments(segments, payload, mss, flags)


def test_sequence_numbers_wrap():
    payload = bytes(3000)
    segs = offload.complete(VnetHeader(0, GSO_TCPV4, 40, 1000, 20, 16),
                            tcp_super(payload, seq=0xFFFFFFFF - 500), ethernet=False)
    assert [struct.unpack("!I", s[24:28])[0] for s in segs] == [0xFFFFFFFF - 500, 499, 1499]


def test_a_super_frame_behind_ethernet_and_a_vlan_tag_is_cut():
    payload = os.urandom(5000)
    packet = tcp_super(payload)
    frame = F.ethernet("02:00:00:00:00:02", "02:00:00:00:00:01", 0x8100,
                       struct.pack("!HH", 7, F.ETH_IPV4) + packet)
    segs = offload.complete(VnetHeader(1, GSO_TCPV4, 58, 1448, 38, 16), frame, ethernet=True)
    assert all(s[:18] == frame[:18] for s in segs)
    check_tcp_segments([s[18:] for s in segs], payload, 1448, PSH | ACK)


def ipv6_tcp(payload: bytes) -> bytes:
    body = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 0, 5 << 4, PSH | ACK, 65535, 0, 0) + payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), F.PROTO_TCP, 64, SRC6, DST6) + body


def ipv6_l4_ok(packet: bytes) -> bool:
    body = packet[40:]
    pseudo = SRC6 + DST6 + struct.pack("!IxxxB", len(body), packet[6])
    return F.inet_checksum(pseudo + body) == 0


def test_an_ipv6_tcp_super_packet_is_cut():
    payload = os.urandom(4000)
    segs = offload.complete(VnetHeader(1, GSO_TCPV6, 60, 1440, 40, 16), ipv6_tcp(payload),
                            ethernet=False)
    assert len(segs) == 3 and b"".join(s[60:] for s in segs) == payload
    for s in segs:
        assert struct.unpack("!H", s[4:6])[0] == len(s) - 40 and ipv6_l4_ok(s)


def test_a_udp_super_packet_becomes_datagrams():
    payload = os.urandom(3000)
    packet = F.ipv4(SRC, DST, F.PROTO_UDP, F.udp(SRC, DST, 4433, 443, payload), ident=77)
    segs = offload.complete(VnetHeader(1, GSO_UDP_L4, 28, 1200, 20, 6), packet, ethernet=False)
    assert [len(s) - 28 for s in segs] == [1200, 1200, 600]
    assert b"".join(s[28:] for s in segs) == payload
    for s in segs:
        assert F.ipv4_header_ok(s) and F.l4_checksum_ok(s)
        assert struct.unpack("!H", s[24:26])[0] == len(s) - 20


@pytest.mark.parametrize("header,packet,ethernet", [
    (VnetHeader(1, GSO_UDP, 28, 1200, 20, 6), F.ipv4(SRC, DST, 17, bytes(3000)), False),
    (VnetHeader(1, GSO_TCPV4, 40, 0, 20, 16), tcp_super(bytes(3000)), False),
    (VnetHeader(1, GSO_TCPV4, 40, 1448, 20, 16), F.ipv4(SRC, DST, 17, bytes(3000)), False),
    (VnetHeader(1, GSO_TCPV4, 40, 1448, 20, 16), tcp_super(bytes(3000))[:30], False),
    (VnetHeader(1, GSO_TCPV4, 54, 1448, 34, 16), bytes(12) + b"\x08\x06" + bytes(100), True),
    (VnetHeader(1, 0, 0, 0, 20, 16), tcp_super(b"")[:30], False),
    (VnetHeader(1, 0, 0, 0, 5000, 16), tcp_super(b"abc"), False),
])
def test_what_cannot_be_completed_raises_value_error(header, packet, ethernet):
    with pytest.raises(ValueError):
        offload.complete(header, packet, ethernet=ethernet)


@settings(max_examples=300)
@given(st.builds(VnetHeader, st.integers(0, 255), st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x44]),
                 st.integers(0, 0xFFFF), st.integers(0, 3000), st.integers(0, 200),
                 st.integers(0, 40)),
       st.binary(max_size=600), st.booleans())
def test_garbage_only_ever_raises_value_error(header, packet, ethernet):
    try:
        out = offload.complete(header, packet, ethernet=ethernet)
    except ValueError:
        return
    assert all(isinstance(p, bytes) for p in out)


def test_the_vnet_header_packs_both_sizes():
    header = VnetHeader(1, GSO_TCPV4, 54, 1448, 34, 16)
    assert VnetHeader.unpack(header.pack()) == header
    assert VnetHeader.unpack(header.pack(12)) == header and len(header.pack(12)) == 12
    assert VnetHeader.unpack(bytes(10)) is NO_OFFLOAD
    assert header.is_gso and header.needs_csum and not NO_OFFLOAD.is_gso
    assert not VnetHeader(gso_type=GSO_ECN).is_gso
    with pytest.raises(ValueError):
        VnetHeader.unpack(bytes(9))
    with pytest.raises(ValueError):
        header.pack(11)
