"""IPv6 fixed header, the extension header walk, and ICMPv6."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import icmpv6, ipv6, udp
from ingot.plugins.netstack.errors import ParseError
from tests.unit.test_netstack_checksum import slow_sum

A6 = ipv6.addr("fd00::1")
B6 = ipv6.addr("fd00::2")

# An echo request from `ping -6 fd00::2` (id 0x1234, seq 1, 8 data bytes),
# traffic class 0, flow label 0x3c2a1, hop limit 64.
PING6 = bytes.fromhex(
    "6003c2a100103a40" "fd000000000000000000000000000001" "fd000000000000000000000000000002")


def ping6() -> bytes:
    body = icmpv6.echo_request(0x1234, 1, b"abcdefgh", A6, B6)
    return PING6 + body


def test_parse_a_ping():
    raw = ping6()
    p = ipv6.parse(raw + b"pad")
    assert (p.src, p.dst, p.next_header, p.proto, p.hop_limit) == (A6, B6, 58, 58, 64)
    assert (p.traffic_class, p.flow_label, p.payload_length) == (0, 0x3C2A1, 16)
    assert p.extensions == () and p.fragment is None
    msg = icmpv6.parse(p.payload, p.src, p.dst)
    pseudo = A6 + B6 + (16).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    assert slow_sum(pseudo + bytes(p.payload)) == 0xFFFF
    assert (msg.type, msg.code, msg.is_error) == (icmpv6.ECHO_REQUEST, 0, False)
    ident, seq, data = msg.echo()
    assert (ident, seq, bytes(data)) == (0x1234, 1, b"abcdefgh")
    with pytest.raises(ParseError, match="bad checksum") as err:
        icmpv6.parse(p.payload, p.src, A6)
    assert err.value.layer == "icmpv6"


def test_icmpv6_errors():
    with pytest.raises(ParseError):
        icmpv6.parse(b"\x80\x00\x00")
    short_echo = icmpv6.parse(icmpv6.build(icmpv6.ECHO_REPLY, 0, b"\x00", A6, B6), A6, B6)
    with pytest.raises(ParseError, match="echo message"):
        short_echo.echo()
    reply = icmpv6.parse(icmpv6.echo_reply(1, 2, b"x", A6, B6), A6, B6)
    assert reply.type == icmpv6.ECHO_REPLY and reply.echo()[:2] == (1, 2)
    too_big = icmpv6.parse(icmpv6.build(icmpv6.PACKET_TOO_BIG, 0, bytes(8), A6, B6))
    assert too_big.is_error


def test_walk_the_extension_chain():
    dgram = udp.build(5000, 53, b"query", A6, B6)
    chain = (ipv6.options_header(ipv6.ROUTING, b"\x05\x02\x00\x00")  # hop-by-hop: router alert
             + bytes((ipv6.FRAGMENT, 0, 0, 0, 0, 0, 0, 0))  # routing, type 0, nothing left
             + ipv6.fragment_header(ipv6.DEST_OPTIONS, 0, True, 0xCAFE)
             + ipv6.options_header(ipv6.UDP)
             + dgram)
    p = ipv6.parse(ipv6.build(A6, B6, ipv6.HOP_BY_HOP, chain))
    assert p.proto == ipv6.UDP and p.next_header == ipv6.HOP_BY_HOP
    assert [e.type for e in p.extensions] == [0, 43, 44, 60]
    assert [len(e.data) for e in p.extensions] == [8, 8, 8, 8]
    assert p.fragment == ipv6.FragmentHeader(ipv6.DEST_OPTIONS, 0, True, 0xCAFE)
    assert udp.parse(p.payload, A6, B6).dst_port == 53


def test_a_later_fragment_ends_the_walk():
    chain = ipv6.fragment_header(ipv6.UDP, 1232, False, 7) + b"middle of a datagram"
    p = ipv6.parse(ipv6.build(A6, B6, ipv6.FRAGMENT, chain))
    assert p.proto == ipv6.UDP and p.fragment.offset == 1232 and not p.fragment.more
    assert bytes(p.payload) == b"middle of a datagram"


def test_auth_header_length_is_in_words():
    ah = bytes((ipv6.NO_NEXT_HEADER, 4)) + bytes(22)  # (4 + 2) * 4 = 24 bytes
    p = ipv6.parse(ipv6.build(A6, B6, ipv6.AUTH, ah))
    assert p.proto == ipv6.NO_NEXT_HEADER and len(p.extensions[0].data) == 24


@pytest.mark.parametrize("raw, reason", [
    (bytes(39), "shorter than the 40-byte header"),
    (b"\x40" + bytes(39), "version 4"),
    (b"\x60" + bytes(39), "payload length 0"),
    (b"\x60\x00\x00\x00\x00\x10\x11\x40" + bytes(32) + bytes(8), "beyond"),
])
def test_header_errors(raw, reason):
    with pytest.raises(ParseError, match=reason) as err:
        ipv6.parse(raw)
    assert err.value.layer == "ipv6"


def test_chain_errors():
    dest = ipv6.options_header(ipv6.DEST_OPTIONS)
    with pytest.raises(ParseError, match="more than 8"):
        ipv6.parse(ipv6.build(A6, B6, ipv6.DEST_OPTIONS, dest * 9 + b"x" * 8))
    hbh_late = ipv6.options_header(ipv6.HOP_BY_HOP) + ipv6.options_header(ipv6.UDP)
    with pytest.raises(ParseError, match="not first"):
        ipv6.parse(ipv6.build(A6, B6, ipv6.DEST_OPTIONS, hbh_late))
    with pytest.raises(ParseError, match="runs past"):
        ipv6.parse(ipv6.build(A6, B6, ipv6.ROUTING, b"\x11\x01" + bytes(10)))
    with pytest.raises(ParseError, match="runs past"):
        ipv6.parse(ipv6.build(A6, B6, ipv6.ROUTING, b"\x11\x00"))


def test_helpers():
    assert ipv6.addr_str(A6) == "fd00::1" and ipv6.is_multicast(ipv6.addr("ff02::1"))
    with pytest.raises(ParseError):
        ipv6.addr("fd00::g")
    with pytest.raises(ValueError):
        ipv6.build(A6, B6, 59, b"")
    with pytest.raises(ValueError):
        ipv6.fragment_header(17, 3, False, 0)
    for size in range(0, 20):
        assert len(ipv6.options_header(17, bytes(size))) % 8 == 0


addrs16 = st.binary(min_size=16, max_size=16)


@settings(max_examples=100, deadline=None)
@given(addrs16, addrs16, st.integers(0, 255), st.integers(0, 0xFFFFF), st.integers(0, 255),
       st.lists(st.tuples(st.sampled_from([ipv6.DEST_OPTIONS, ipv6.ROUTING]),
                          st.binary(max_size=30)), max_size=3),
       st.binary(min_size=1, max_size=100))
def test_build_parse_round_trip(src, dst, tc, flow, hops, exts, upper):
    # Lay the chain out back to front, each header naming the next.
    body, nh = upper, ipv6.TCP
    for kind, opts in reversed(exts):
        body, nh = ipv6.options_header(nh, opts) + body, kind
    p = ipv6.parse(ipv6.build(src, dst, nh, body, hop_limit=hops, traffic_class=tc,
                              flow_label=flow))
    assert (p.src, p.dst, p.traffic_class, p.flow_label, p.hop_limit, p.next_header) == \
        (src, dst, tc, flow, hops, nh)
    assert p.proto == ipv6.TCP and bytes(p.payload) == upper
    assert [e.type for e in p.extensions] == [k for k, _ in exts]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=100), addrs16, addrs16)
def test_icmpv6_round_trip(type_, code, body, src, dst):
    raw = icmpv6.build(type_, code, body, src, dst)
    pseudo = src + dst + len(raw).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    assert slow_sum(pseudo + raw) == 0xFFFF
    msg = icmpv6.parse(raw, src, dst)
    assert (msg.type, msg.code, bytes(msg.body)) == (type_, code, body)
