"""ICMPv4: a Linux ping and its reply, error messages and their quotes."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import icmp, ipv4, udp
from ingot.plugins.netstack.errors import ParseError
from tests.unit.test_netstack_checksum import slow_sum

A = bytes([10, 137, 0, 1])
B = bytes([10, 137, 0, 2])

# `ping -c1 10.137.0.2` from Linux (iputils): IP header with DF, ICMP echo
# id 0x1c2b seq 1, 16 bytes of timeval, then the bytes 0x10..0x37.
PING = bytes.fromhex(
    "450000548a3f400040019b550a8900010a890002"
    "080086c81c2b0001" "00f153650000000040e2010000000000"
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637")


def test_parse_a_linux_ping():
    ip = ipv4.parse(PING)
    assert ip.proto == ipv4.PROTO_ICMP and ip.df and ip.ttl == 64
    msg = icmp.parse(ip.payload)
    assert (msg.type, msg.code, msg.checksum) == (icmp.ECHO_REQUEST, 0, 0x86C8)
    assert (msg.ident, msg.seq, len(msg.payload)) == (0x1C2B, 1, 56)
    assert bytes(msg.payload[16:]) == bytes(range(0x10, 0x38))
    assert not msg.is_error


def test_reply_to_the_ping():
    request = icmp.parse(ipv4.parse(PING).payload)
    reply = icmp.reply_to(request)
    assert reply[0] == icmp.ECHO_REPLY and reply[4:] == PING[24:]
    assert slow_sum(reply) == 0xFFFF  # checksum checked word by word
    # Only the type changed, from 8 to 0: the checksum moved by 0x0800.
    assert int.from_bytes(reply[2:4], "big") == 0x86C8 + 0x0800


def test_windows_ping_checksum():
    # Windows' ping data and its well-known checksum for id 1, seq 1.
    assert icmp.echo_request(1, 1, b"abcdefghijklmnopqrstuvwabcdefghi")[:8] == \
        bytes.fromhex("08004d5a00010001")


def test_bad_messages():
    with pytest.raises(ParseError, match="shorter than the 8-byte header"):
        icmp.parse(b"\x08\x00\xf7\xff")
    bad = bytearray(icmp.echo_request(1, 2, b"data"))
    bad[-1] ^= 1
    with pytest.raises(ParseError, match="bad checksum") as err:
        icmp.parse(bad)
    assert err.value.layer == "icmp"
    assert icmp.parse(bad, verify_checksum=False).seq == 2


def test_port_unreachable_quotes_header_and_8_bytes():
    dgram = udp.build(40000, 53, b"a dns query of some length", A, B)
    original = ipv4.build(A, B, ipv4.PROTO_UDP, dgram, ttl=63, ident=99,
                          options=b"\x94\x04\x00\x00")  # router alert: a 24-byte header
    raw = icmp.dest_unreachable(icmp.PORT_UNREACHABLE, original)
    assert slow_sum(raw) == 0xFFFF
    msg = icmp.parse(raw)
    assert (msg.type, msg.code, msg.rest) == (3, 3, 0) and msg.is_error
    assert bytes(msg.payload) == original[:24 + 8]
    quoted = icmp.quoted_header(msg)
    assert (quoted.src, quoted.dst, quoted.proto, quoted.ident) == (A, B, 17, 99)
    assert quoted.total_length == len(original) and quoted.options == b"\x94\x04\x00\x00"
    assert bytes(quoted.payload) == dgram[:8]
    assert udp.parse(dgram[:8] + bytes(100)).dst_port == 53


def test_other_errors():
    original = ipv4.build(A, B, 6, bytes(40))
    admin = icmp.parse(icmp.dest_unreachable(icmp.ADMIN_PROHIBITED, original))
    assert (admin.type, admin.code) == (3, 13)
    frag = icmp.parse(icmp.dest_unreachable(icmp.FRAGMENTATION_NEEDED, original, mtu=1400))
    assert frag.mtu == 1400
    ttl = icmp.parse(icmp.time_exceeded(icmp.TTL_EXCEEDED, original))
    assert (ttl.type, ttl.code, len(ttl.payload)) == (11, 0, 28)
    ttl_long = icmp.parse(icmp.time_exceeded(icmp.REASSEMBLY_TIME_EXCEEDED, original, extra=40))
    assert bytes(ttl_long.payload) == original
    pp = icmp.parse(icmp.parameter_problem(20, original))
    assert (pp.type, pp.pointer) == (12, 20)
    with pytest.raises(ParseError, match="quoted datagram"):
        icmp.quoted_header(icmp.parse(icmp.time_exceeded(0, b"\x45" + bytes(10))))


def test_when_errors_may_be_sent():
    def pkt(src=A, dst=B, proto=17, payload=bytes(8), **kw):
        return ipv4.parse(ipv4.build(src, dst, proto, payload, **kw))

    assert icmp.error_allowed(pkt())
    assert icmp.error_allowed(pkt(proto=1, payload=icmp.echo_request(1, 1)))
    assert not icmp.error_allowed(pkt(proto=1, payload=icmp.time_exceeded(0, bytes(28))))
    assert not icmp.error_allowed(pkt(proto=1, payload=b""))
    assert not icmp.error_allowed(pkt(frag_offset=8))
    assert not icmp.error_allowed(pkt(dst=bytes([224, 0, 0, 1])))
    assert not icmp.error_allowed(pkt(dst=b"\xff" * 4))
    assert not icmp.error_allowed(pkt(src=bytes(4)))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1),
       st.binary(max_size=200))
def test_build_parse_round_trip(type_, code, rest, payload):
    raw = icmp.build(type_, code, rest, payload)
    assert slow_sum(raw) == 0xFFFF
    msg = icmp.parse(raw)
    assert (msg.type, msg.code, msg.rest, bytes(msg.payload)) == (type_, code, rest, payload)
