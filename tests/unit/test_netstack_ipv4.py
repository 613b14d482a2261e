"""IPv4 headers, TTL decrement, and fragment reassembly with explicit times."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import checksum, ipv4
from ingot.plugins.netstack.errors import ParseError

S = 1_000_000_000
A = bytes([10, 137, 0, 1])
B = bytes([10, 137, 0, 2])

# The well-known example header (UDP, 192.168.0.1 -> 192.168.0.199), checksum b861.
KNOWN = bytes.fromhex("4500007300004000401" "1b861c0a80001c0a800c7")


def test_parse_known_header():
    p = ipv4.parse(KNOWN + bytes(0x73 - 20) + b"pad")
    assert (p.src, p.dst) == (bytes([192, 168, 0, 1]), bytes([192, 168, 0, 199]))
    assert (p.proto, p.ttl, p.total_length, p.checksum) == (ipv4.PROTO_UDP, 64, 0x73, 0xB861)
    assert p.df and not p.mf and not p.is_fragment and p.flags == ipv4.FLAG_DF
    assert len(p.payload) == 0x73 - 20  # Ethernet padding cut off
    assert p.header_bytes() == KNOWN
    assert ipv4.build(p.src, p.dst, p.proto, p.payload, ttl=64, flags=ipv4.FLAG_DF)[:20] == KNOWN


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:19], "shorter than the 20-byte header"),
    (lambda b: b"\x65" + b[1:], "version 6"),
    (lambda b: b"\x44" + b[1:], "header length 16"),
    (lambda b: b"\x4f" + b[1:40], "header length 60 is beyond"),
    (lambda b: b[:2] + b"\x00\x10" + b[4:], "total length 16 is shorter"),
    (lambda b: b[:2] + b"\x00\x80" + b[4:], "total length 128 is beyond"),
    (lambda b: b[:10] + b"\xb8\x62" + b[12:], "bad header checksum"),
])
def test_refused_headers(mutate, reason):
    raw = KNOWN + bytes(0x73 - 20)
    with pytest.raises(ParseError, match=reason) as err:
        ipv4.parse(mutate(raw))
    assert err.value.layer == "ipv4"


def test_checksum_check_can_be_skipped():
    raw = KNOWN[:10] + b"\x00\x00" + KNOWN[12:] + bytes(0x73 - 20)
    assert ipv4.parse(raw, verify_checksum=False).checksum == 0


addrs = st.binary(min_size=4, max_size=4)
_option = st.one_of(st.just(b"\x01"), st.tuples(st.integers(2, 255), st.binary(max_size=8)).map(
    lambda t: bytes([t[0], len(t[1]) + 2]) + t[1]))
options_st = st.lists(_option, max_size=8).map(b"".join).filter(lambda o: len(o) <= 40)
"""Well-formed RFC 791 option lists (NOP, or type-length-value), up to 40 bytes."""


@settings(max_examples=150, deadline=None)
@given(addrs, addrs, st.integers(0, 255), st.binary(max_size=200), st.integers(0, 255),
       st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 7),
       st.integers(0, 0x1FFF).map(lambda n: n * 8), options_st)
def test_build_parse_round_trip(src, dst, proto, payload, ttl, tos, ident, flags, frag, options):
    raw = ipv4.build(src, dst, proto, payload, ttl=ttl, tos=tos, ident=ident, flags=flags,
                     frag_offset=frag, options=options)
    p = ipv4.parse(raw)
    padded = options + bytes(-len(options) % 4)
    assert (p.src, p.dst, p.proto, bytes(p.payload), p.ttl, p.tos, p.ident, p.flags,
            p.frag_offset, p.options) == (src, dst, proto, payload, ttl, tos, ident, flags,
                                          frag, padded)
    assert p.to_bytes() == raw


def test_build_refuses_impossible_packets():
    with pytest.raises(ValueError):
        ipv4.build(A, B, 17, bytes(65516))
    with pytest.raises(ValueError):
        ipv4.build(A, B, 17, b"", options=bytes(41))
    with pytest.raises(ValueError):
        ipv4.build(A, B, 17, b"", frag_offset=3)
    with pytest.raises(ValueError):
        ipv4.build(A[:3], B, 17, b"")


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 255), options_st, st.binary(max_size=20))
def test_ttl_decrement_updates_checksum_incrementally(ttl, options, payload):
    raw = ipv4.build(A, B, 6, payload, ttl=ttl, options=options)
    buf = bytearray(b"xx" + raw)
    done = ipv4.decrement_ttl(buf, offset=2)
    assert done == (ttl > 1)
    p = ipv4.parse(buf[2:])  # checksum verified
    assert p.ttl == (ttl - 1 if ttl > 1 else ttl)
    assert bytes(buf[2:]) == (ipv4.build(A, B, 6, payload, ttl=ttl - 1, options=options)
                              if done else raw)


def test_address_text():
    assert ipv4.addr("10.137.0.1") == A and ipv4.addr_str(A) == "10.137.0.1"
    with pytest.raises(ParseError):
        ipv4.addr("10.137.0.256")
    assert ipv4.is_multicast(bytes([239, 1, 1, 1])) and not ipv4.is_multicast(A)
    assert ipv4.is_limited_broadcast(b"\xff" * 4)


# -- reassembly ----------------------------------------------------------------


def fragments(payload: bytes, size: int, ident: int = 7, proto: int = 17,
              options: bytes = b"") -> list[ipv4.IPv4Packet]:
    """``payload`` cut into fragments of ``size`` bytes (a multiple of 8)."""
    out = []
    for off in range(0, len(payload), size):
        more = off + size < len(payload)
        raw = ipv4.build(A, B, proto, payload[off:off + size], ident=ident, options=options,
                         flags=ipv4.FLAG_MF if more else 0, frag_offset=off)
        out.append(ipv4.parse(raw))
    return out


DATA = bytes(range(256)) * 12  # 3072 bytes


def test_in_order():
    r = ipv4.Reassembler()
    frags = fragments(DATA, 1480, options=b"\x01\x01\x01\x00")
    assert [r.push(f, 0) for f in frags[:-1]] == [None, None]
    whole = r.push(frags[-1], 1)
    assert bytes(whole.payload) == DATA and not whole.is_fragment
    assert whole.options == b"\x01\x01\x01\x00" and whole.ident == 7
    assert whole.total_length == 24 + len(DATA)
    assert len(r) == 0 and r.bytes_in_flight == 0
    assert r.counters["ipv4.reasm.reassembled"] == 1


def test_out_of_order_and_duplicates():
    r = ipv4.Reassembler()
    frags = fragments(DATA, 512)
    order = [5, 2, 0, 2, 4, 1, 5]
    assert [r.push(frags[i], i) for i in order] == [None] * len(order)
    assert r.counters["ipv4.reasm.duplicate"] == 2
    whole = r.push(frags[3], 10)
    assert bytes(whole.payload) == DATA


def test_non_fragments_pass_through():
    r = ipv4.Reassembler()
    p = ipv4.parse(ipv4.build(A, B, 17, b"x"))
    assert r.push(p, 0) is p


def test_overlap_drops_the_whole_datagram_and_its_later_fragments():
    r = ipv4.Reassembler()
    frags = fragments(DATA, 512)
    r.push(frags[0], 0)
    r.push(frags[1], 0)
    overlapping = ipv4.parse(ipv4.build(A, B, 17, bytes(512), ident=7, flags=ipv4.FLAG_MF,
                                        frag_offset=256))
    assert r.push(overlapping, 0) is None
    assert len(r) == 0 and r.bytes_in_flight == 0
    assert r.counters["ipv4.reasm.overlap"] == 1
    assert [r.push(f, 1) for f in frags] == [None] * len(frags)
    assert r.counters["ipv4.reasm.dropped_fragments"] == len(frags)
    r.expire(30 * S)  # the tombstone goes with the timeout
    assert [r.push(f, 31 * S) for f in frags][-1] is not None


def test_inconsistent_ends_are_dropped():
    r = ipv4.Reassembler()
    frags = fragments(DATA, 1024)
    r.push(frags[2], 0)
    short_last = ipv4.parse(ipv4.build(A, B, 17, bytes(8), ident=7, frag_offset=1024))
    assert r.push(short_last, 0) is None
    assert r.counters["ipv4.reasm.inconsistent"] == 1
    r2 = ipv4.Reassembler()
    r2.push(frags[-1], 0)  # ends at 3072
    beyond = ipv4.parse(ipv4.build(A, B, 17, bytes(8), ident=7, flags=ipv4.FLAG_MF,
                                   frag_offset=4096))
    assert r2.push(beyond, 0) is None and r2.counters["ipv4.reasm.inconsistent"] == 1


def test_odd_middle_fragment_is_refused():
    r = ipv4.Reassembler()
    odd = ipv4.parse(ipv4.build(A, B, 17, bytes(13), ident=1, flags=ipv4.FLAG_MF))
    assert r.push(odd, 0) is None and len(r) == 0
    assert r.counters["ipv4.reasm.bad_length"] == 1


def test_timeout_returns_first_fragments():
    r = ipv4.Reassembler(timeout_ns=30 * S)
    a = fragments(DATA, 1024, ident=1)
    b = fragments(DATA, 1024, ident=2)
    r.push(a[0], 0)
    r.push(b[1], 5 * S)  # no first fragment: nothing to quote
    assert r.next_deadline() == 30 * S
    assert r.expire(30 * S - 1) == []
    first = r.expire(30 * S)
    assert len(first) == 1 and first[0].ident == 1 and first[0].frag_offset == 0
    assert bytes(first[0].payload) == DATA[:1024]
    assert first[0].to_bytes()[:20] == a[0].header_bytes()  # what ICMP quotes
    assert len(r) == 1 and r.expire(35 * S) == [] and len(r) == 0
    assert r.counters["ipv4.reasm.timeout"] == 2
    assert r.next_deadline() is None


def test_memory_limit_evicts_the_oldest():
    r = ipv4.Reassembler(max_bytes=4000)
    r.push(fragments(DATA, 1024, ident=1)[0], 0)
    r.push(fragments(DATA, 1024, ident=2)[0], 1)
    r.push(fragments(DATA, 1024, ident=3)[0], 2)
    assert len(r) == 3 and r.bytes_in_flight == 3 * (1024 + 64)
    r.push(fragments(DATA, 1024, ident=4)[0], 3)
    assert len(r) == 3 and r.counters["ipv4.reasm.evicted"] == 1
    assert r.bytes_in_flight <= 4000
    # A single fragment larger than the whole budget is refused.
    tiny = ipv4.Reassembler(max_bytes=100)
    assert tiny.push(fragments(DATA, 1024)[0], 0) is None
    assert tiny.counters["ipv4.reasm.no_memory"] == 1 and len(tiny) == 0


def test_size_and_count_limits():
    r = ipv4.Reassembler()
    huge = ipv4.parse(ipv4.build(A, B, 17, bytes(16), ident=9, frag_offset=65520))
    assert r.push(huge, 0) is None and r.counters["ipv4.reasm.too_big"] == 1
    r = ipv4.Reassembler(max_fragments=4)
    frags = fragments(DATA, 8 * 48)  # 8 fragments
    assert [r.push(f, 0) for f in frags[:5]] == [None] * 5
    assert r.counters["ipv4.reasm.too_many_fragments"] == 1 and len(r) == 0


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.integers(1, 40).map(lambda n: n * 8),
       st.randoms(use_true_random=False))
def test_any_order_reassembles(payload, size, rnd):
    frags = fragments(payload, size)
    if len(frags) == 1:
        return
    rnd.shuffle(frags)
    r = ipv4.Reassembler()
    results = [r.push(f, 0) for f in frags]
    assert results[:-1] == [None] * (len(frags) - 1)
    assert bytes(results[-1].payload) == payload
    assert r.bytes_in_flight == 0
