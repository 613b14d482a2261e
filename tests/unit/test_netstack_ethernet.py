"""Ethernet frames, VLAN tags and MAC helpers."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import ethernet as eth
from ingot.plugins.netstack.errors import ParseError

MAC_A = bytes.fromhex("525400123456")
MAC_B = bytes.fromhex("00163e0a0b0c")
macs = st.binary(min_size=6, max_size=6)


def test_parse_an_ipv4_frame():
    frame = MAC_A + MAC_B + b"\x08\x00" + b"E" + bytes(45)
    f = eth.parse(frame)
    assert (f.dst, f.src, f.ethertype, f.vlan) == (MAC_A, MAC_B, eth.ETHERTYPE_IPV4, None)
    assert bytes(f.payload) == b"E" + bytes(45)
    assert isinstance(f.payload, memoryview) and f.payload.obj is frame  # borrowed, no copy


def test_parse_a_vlan_tagged_frame():
    # 802.1Q tag: PCP 5, DEI 0, VID 100, then ARP.
    frame = MAC_A + MAC_B + bytes.fromhex("8100a064") + b"\x08\x06" + bytes(28)
    f = eth.parse(frame)
    assert f.ethertype == eth.ETHERTYPE_ARP
    assert f.vlan == eth.VlanTag(vid=100, pcp=5, dei=0, tpid=0x8100)
    assert f.vlan.tci == 0xA064
    assert len(f.payload) == 28


def test_qinq_keeps_the_inner_tag_in_the_payload():
    frame = MAC_A + MAC_B + bytes.fromhex("88a8000a") + bytes.fromhex("81000014") + b"\x08\x00"
    f = eth.parse(frame + bytes(20))
    assert f.vlan.tpid == eth.ETHERTYPE_QINQ and f.vlan.vid == 10
    assert f.ethertype == eth.ETHERTYPE_VLAN
    assert bytes(f.payload[:4]) == bytes.fromhex("00140800")


@pytest.mark.parametrize("frame", [b"", bytes(13), MAC_A + MAC_B + b"\x81\x00\x00"])
def test_short_frames_are_parse_errors(frame):
    with pytest.raises(ParseError) as err:
        eth.parse(frame)
    assert err.value.layer == "ethernet"
    assert str(err.value).startswith("ethernet: ")


def test_build_pads_to_the_minimum_frame():
    raw = eth.build(eth.BROADCAST, MAC_A, eth.ETHERTYPE_ARP, bytes(28))
    assert len(raw) == 60 and raw[:14] == eth.BROADCAST + MAC_A + b"\x08\x06"
    assert len(eth.build(MAC_B, MAC_A, 0x0800, b"x", pad=False)) == 15
    with pytest.raises(ValueError):
        eth.build(b"\x01", MAC_A, 0x0800, b"")


@settings(max_examples=150, deadline=None)
@given(macs, macs, st.integers(0x0600, 0xFFFF).filter(lambda t: t not in (0x8100, 0x88A8)),
       st.binary(max_size=100),
       st.none() | st.builds(eth.VlanTag, st.integers(0, 4095), st.integers(0, 7),
                             st.integers(0, 1), st.sampled_from([0x8100, 0x88A8])))
def test_build_parse_round_trip(dst, src, ethertype, payload, vlan):
    f = eth.parse(eth.build(dst, src, ethertype, payload, vlan=vlan, pad=False))
    assert (f.dst, f.src, f.ethertype, f.vlan, bytes(f.payload)) == \
        (dst, src, ethertype, vlan, payload)


def test_mac_helpers():
    assert eth.mac_to_str(MAC_A) == "52:54:00:12:34:56"
    assert eth.mac_from_str("52:54:00:12:34:56") == MAC_A
    assert eth.mac_from_str("52-54-00-12-34-56") == MAC_A
    for bad in ("52:54:00:12:34", "52:54:00:12:34:5g", "525400123456", "5:54:00:12:34:567"):
        with pytest.raises(ParseError):
            eth.mac_from_str(bad)
    assert eth.is_broadcast(eth.BROADCAST) and eth.is_multicast(eth.BROADCAST)
    assert eth.is_multicast(bytes.fromhex("01005e000001")) and not eth.is_unicast(eth.BROADCAST)
    assert eth.is_unicast(MAC_A) and not eth.is_multicast(MAC_A)
    assert eth.ipv4_multicast_mac(bytes([239, 129, 2, 3])) == bytes.fromhex("01005e010203")
    assert eth.ipv6_multicast_mac(bytes.fromhex("ff02" + "00" * 9 + "01ff0a0b0c")) == \
        bytes.fromhex("3333ff0a0b0c")
