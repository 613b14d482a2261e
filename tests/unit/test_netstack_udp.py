"""UDP over IPv4 and IPv6: a DNS query checked word by word, length and
checksum rules, round trips."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import udp
from ingot.plugins.netstack.errors import ParseError
from tests.unit.test_netstack_checksum import slow_sum

A = bytes([10, 137, 0, 1])
B = bytes([10, 137, 0, 2])
A6 = bytes.fromhex("fd000000000000000000000000000001")
B6 = bytes.fromhex("fd000000000000000000000000000002")

# A DNS query for example.com A from port 51334 to 53, 10.137.0.1 -> 10.137.0.2.
QUERY = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
DNS = bytes.fromhex("c88600350025a698") + QUERY


def slow_udp_checksum_ok(src: bytes, dst: bytes, dgram: bytes) -> bool:
    """The pseudo-header laid out by hand and summed word by word."""
    if len(src) == 4:
        pseudo = src + dst + b"\x00\x11" + len(dgram).to_bytes(2, "big")
    else:
        pseudo = src + dst + len(dgram).to_bytes(4, "big") + b"\x00\x00\x00\x11"
    return slow_sum(pseudo + dgram) == 0xFFFF


def test_dns_query_vector():
    assert slow_udp_checksum_ok(A, B, DNS)
    d = udp.parse(DNS, A, B)
    assert (d.src_port, d.dst_port, d.length, d.checksum) == (51334, 53, 37, 0xA698)
    assert bytes(d.payload) == QUERY
    assert udp.build(51334, 53, QUERY, A, B) == DNS
    with pytest.raises(ParseError, match="bad checksum"):
        udp.parse(DNS, A, bytes([10, 137, 0, 3]))
    assert udp.parse(DNS).checksum == 0xA698  # no addresses: not verified


def test_zero_checksum_means_none_over_ipv4_only():
    raw = DNS[:6] + b"\x00\x00" + DNS[8:]
    assert bytes(udp.parse(raw, A, B).payload) == QUERY
    with pytest.raises(ParseError, match="zero checksum over IPv6"):
        udp.parse(raw, A6, B6)


def test_computed_zero_is_sent_as_ffff():
    # Find a payload whose checksum computes to 0: the wire then carries 0xFFFF.
    base = udp.build(1, 2, b"\x00\x00", A, B)
    fix = int.from_bytes(base[6:8], "big")
    raw = udp.build(1, 2, fix.to_bytes(2, "big"), A, B)
    assert raw[6:8] == b"\xff\xff"
    assert slow_udp_checksum_ok(A, B, raw)
    udp.parse(raw, A, B)


@pytest.mark.parametrize("raw, reason", [
    (b"\x00" * 7, "shorter than the 8-byte header"),
    (bytes.fromhex("0001000200070000"), "length 7 is below 8"),
    (bytes.fromhex("0001000200100000") + b"abc", "length 16 is beyond the 11"),
])
def test_length_errors(raw, reason):
    with pytest.raises(ParseError, match=reason) as err:
        udp.parse(raw)
    assert err.value.layer == "udp"


def test_trailing_bytes_beyond_the_length_are_ignored():
    assert bytes(udp.parse(DNS + b"padding", A, B).payload) == QUERY


def test_build_refuses_oversized():
    with pytest.raises(ValueError):
        udp.build(1, 2, bytes(65528), A, B)


ports = st.integers(0, 0xFFFF)


@settings(max_examples=150, deadline=None)
@given(ports, ports, st.binary(max_size=300),
       st.sampled_from([(A, B), (A6, B6), (B, A), (B6, A6)]))
def test_round_trip_and_checksum_by_reference(sport, dport, payload, addrs):
    src, dst = addrs
    raw = udp.build(sport, dport, payload, src, dst)
    assert slow_udp_checksum_ok(src, dst, raw)
    d = udp.parse(raw, src, dst)
    assert (d.src_port, d.dst_port, d.length, bytes(d.payload)) == \
        (sport, dport, 8 + len(payload), payload)
