"""TCP headers: a Linux SYN, options of every kind, round trips."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import tcp
from ingot.plugins.netstack.errors import ParseError
from ingot.plugins.netstack.tcp import (Mss, Sack, SackPermitted, Timestamps, UnknownOption,
                                        WindowScale)
from tests.unit.test_netstack_checksum import slow_sum

A = bytes([10, 137, 0, 1])
B = bytes([10, 137, 0, 2])
A6 = bytes.fromhex("fd000000000000000000000000000001")
B6 = bytes.fromhex("fd000000000000000000000000000002")

# A Linux SYN to port 80: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
SYN = bytes.fromhex("b8120050c721adc100000000a002faf053320000"
                    "020405b40402080a842133610000000001030307")


def test_linux_syn():
    pseudo = A + B + b"\x00\x06" + len(SYN).to_bytes(2, "big")
    assert slow_sum(pseudo + SYN) == 0xFFFF
    s = tcp.parse(SYN, A, B)
    assert (s.src_port, s.dst_port, s.seq, s.ack) == (47122, 80, 3340873153, 0)
    assert s.flags == tcp.SYN and s.has(tcp.SYN) and not s.has(tcp.SYN | tcp.ACK)
    assert (s.window, s.checksum, s.urgent, s.header_length) == (64240, 0x5332, 0, 40)
    assert s.options == (Mss(1460), SackPermitted(), Timestamps(2216768353, 0), WindowScale(7))
    assert s.option(Mss) == Mss(1460) and s.option(Sack) is None
    assert len(s.payload) == 0
    # Rebuilt with the same option order (NOP padding aside) it checks out too.
    rebuilt = tcp.build(47122, 80, 3340873153, 0, tcp.SYN, 64240, src=A, dst=B,
                        options=s.options)
    assert tcp.parse(rebuilt, A, B).options == s.options
    with pytest.raises(ParseError, match="bad checksum"):
        tcp.parse(SYN, A, bytes([10, 137, 0, 9]))


def test_option_edge_cases():
    # EOL ends the list; NOPs are skipped; wrong-length known kinds are kept raw.
    assert tcp.parse_options(b"\x01\x01\x00\x02\x04\x05\xb4") == ()
    assert tcp.parse_options(b"\x02\x03\x05\x01") == (UnknownOption(2, b"\x05"),)
    assert tcp.parse_options(b"\x05\x0a" + bytes(8)) == (Sack(((0, 0),)),)
    assert tcp.parse_options(b"\x05\x06" + bytes(4)) == (UnknownOption(5, bytes(4)),)
    assert tcp.parse_options(b"\xfe\x04\xf9\x89") == (UnknownOption(254, b"\xf9\x89"),)
    for bad, reason in [(b"\x02", "no length byte"), (b"\x02\x01", "below 2"),
                        (b"\x02\x04\x05", "runs past")]:
        with pytest.raises(ParseError, match=reason):
            tcp.parse_options(bad)


@pytest.mark.parametrize("raw, reason", [
    (bytes(19), "shorter than the 20-byte header"),
    (bytes(12) + b"\x40\x02" + bytes(6), "data offset of 16 bytes is below 20"),
    (bytes(12) + b"\x60\x02" + bytes(6), "data offset of 24 bytes is beyond"),
])
def test_header_errors(raw, reason):
    with pytest.raises(ParseError, match=reason) as err:
        tcp.parse(raw)
    assert err.value.layer == "tcp"


def test_build_refuses_too_many_options():
    with pytest.raises(ValueError):
        tcp.build_options([UnknownOption(99, bytes(40))])
    with pytest.raises(ValueError):
        tcp.build_options(["not an option"])


u32 = st.integers(0, 2**32 - 1)
option = st.one_of(
    st.builds(Mss, st.integers(0, 0xFFFF)),
    st.builds(WindowScale, st.integers(0, 255)),
    st.just(SackPermitted()),
    st.builds(Timestamps, u32, u32),
    st.builds(Sack, st.lists(st.tuples(u32, u32), min_size=1, max_size=3).map(tuple)),
    st.builds(UnknownOption, st.integers(6, 255).filter(lambda k: k != 8),
              st.binary(max_size=6)),
)


def fits(options: list) -> bool:
    return sum(len(tcp.build_options([o])) for o in options) <= 40


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), u32, u32, st.integers(0, 255),
       st.integers(0, 0xFFFF), st.binary(max_size=200),
       st.lists(option, max_size=4).filter(fits),
       st.integers(0, 0xFFFF), st.integers(0, 15), st.sampled_from([(A, B), (A6, B6)]))
def test_build_parse_round_trip(sport, dport, seq, ack, flags, window, payload, options,
                                urgent, reserved, addrs):
    src, dst = addrs
    raw = tcp.build(sport, dport, seq, ack, flags, window, payload, src=src, dst=dst,
                    options=options, urgent=urgent, reserved=reserved)
    s = tcp.parse(raw, src, dst)
    assert (s.src_port, s.dst_port, s.seq, s.ack, s.flags, s.window, s.urgent, s.reserved,
            s.options, bytes(s.payload)) == (sport, dport, seq, ack, flags, window, urgent,
                                             reserved, tuple(options), payload)
