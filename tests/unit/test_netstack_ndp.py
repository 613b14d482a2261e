"""IPv6 neighbour discovery (RFC 4861): message validity checks, builders, and
the neighbour cache. Messages are made by hand here (struct and the test kit's
checksum), not by the module under test."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import ethernet, icmpv6, ipv6, ndp
from ingot.plugins.netstack.arp import Resolved, SendFrame, Unreachable
from ingot.plugins.netstack.errors import ParseError
from ingot.testing.frames import inet_checksum

S = 1_000_000_000
MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000099")
ME = ipaddress.IPv6Address("fd00:200::2").packed
PEER = ipaddress.IPv6Address("fd00:200::1").packed


def a(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def icmp6(src: bytes, dst: bytes, kind: int, body: bytes, *, code: int = 0, hops: int = 255,
          bad_sum: bool = False) -> bytes:
    """An IPv6 packet holding one ICMPv6 message, checksum computed here."""
    msg = struct.pack("!BBH", kind, code, 0) + body
    pseudo = src + dst + struct.pack("!IxxxB", len(msg), 58)
    ck = inet_checksum(pseudo + msg) ^ (1 if bad_sum else 0)
    msg = msg[:2] + struct.pack("!H", ck) + msg[4:]
    return struct.pack("!IHBB", 6 << 28, len(msg), 58, hops) + src + dst + msg


def ns(src: bytes, target: bytes, *, dst: bytes | None = None, lladdr: bytes | None = MAC,
       **kw) -> bytes:
    opt = b"" if lladdr is None else bytes((1, 1)) + lladdr
    dst = dst if dst is not None else a("ff02::1:ff00:0")[:13] + target[13:]
    return icmp6(src, dst, 135, bytes(4) + target + opt, **kw)


def na(src: bytes, dst: bytes, target: bytes, flags: int = 0x60, lladdr: bytes | None = PEER_MAC,
       **kw) -> bytes:
    opt = b"" if lladdr is None else bytes((2, 1)) + lladdr
    return icmp6(src, dst, 136, bytes((flags, 0, 0, 0)) + target + opt, **kw)


def parse(packet: bytes) -> ndp.NdMessage:
    return ndp.parse(ipv6.parse(packet))


def test_a_solicitation_parses_with_its_source_link_layer_address():
    msg = parse(ns(PEER, ME, lladdr=PEER_MAC))
    assert (msg.type, msg.src, msg.target, msg.lladdr) == (135, PEER, ME, PEER_MAC)
    assert msg.dst == a("ff02::1:ff00:2")


def test_an_advertisement_parses_with_its_flags():
    msg = parse(na(PEER, ME, PEER, flags=0xE0))
    assert (msg.type, msg.target, msg.lladdr, msg.flags) == (136, PEER, PEER_MAC, 0xE0)
    assert msg.solicited


@pytest.mark.parametrize("packet, why", [
    (ns(PEER, ME, hops=64), "hop limit"),                       # forwarded by a router
    (ns(PEER, ME, bad_sum=True), "checksum"),
    (ns(PEER, ME, code=1), "code"),
    (icmp6(PEER, ME, 135, bytes(4) + ME[:8]), "too short"),       # 12 bytes of the 20
    (ns(PEER, a("ff02::1")), "multicast target"),
    (ns(bytes(16), ME), "link-layer"),                            # a DAD probe with SLLA
    (ns(bytes(16), ME, dst=ME, lladdr=None), "solicited-node"),   # DAD probe, unicast
    (na(PEER, a("ff02::1"), PEER, flags=0x60), "solicited advertisement"),
    (icmp6(PEER, ME, 135, bytes(4) + ME + bytes((1, 0)) + bytes(6)), "length 0"),
    (icmp6(PEER, ME, 135, bytes(4) + ME + bytes((1, 2)) + bytes(6)), "runs past"),
    (icmp6(PEER, a("ff02::2"), 134, bytes(12)), "link-local"),    # an RA from a global
    (icmp6(PEER, ME, 128, bytes(4)), "not neighbour discovery"),
])
def test_rfc_4861_validity_checks_refuse(packet, why):
    with pytest.raises(ParseError, match=why):
        parse(packet)


def test_a_router_solicitation_is_a_message_too():
    msg = parse(icmp6(a("fe80::1"), ndp.ALL_ROUTERS, 133, bytes(4) + bytes((1, 1)) + MAC))
    assert (msg.type, msg.lladdr) == (133, MAC)


def test_is_nd_looks_only_at_the_fixed_header_and_type():
    assert ndp.is_nd(ns(PEER, ME))
    assert not ndp.is_nd(icmp6(PEER, ME, 128, bytes(4)))
    assert not ndp.is_nd(bytes(40))


def test_built_frames_are_what_the_parser_and_rfc_expect():
    frame = ndp.solicitation_frame(MAC, ME, PEER)
    eth = ethernet.parse(frame)
    assert eth.dst == bytes.fromhex("3333ff000001") and eth.src == MAC
    msg = parse(bytes(eth.payload))
    assert (msg.src, msg.dst, msg.target, msg.lladdr) == (ME, a("ff02::1:ff00:1"), PEER, MAC)
    frame = ndp.advertisement_frame(MAC, ME, PEER_MAC, PEER, router=True)
    eth = ethernet.parse(frame)
    msg = parse(bytes(eth.payload))
    assert eth.dst == PEER_MAC and msg.flags == 0xE0 and msg.lladdr == MAC and msg.target == ME
    # to all-nodes (a DAD answer): never solicited
    eth = ethernet.parse(ndp.advertisement_frame(MAC, ME, PEER_MAC, ndp.ALL_NODES))
    assert eth.dst == bytes.fromhex("333300000001") and not parse(bytes(eth.payload)).solicited


def test_link_local_is_eui_64():
    assert ndp.link_local(bytes.fromhex("00163e5e6c11")) == a("fe80::216:3eff:fe5e:6c11")
    assert ndp.is_link_local(a("fe80::1")) and not ndp.is_link_local(a("fd00::1"))


def cache(**kw) -> ndp.NeighborCache:
    return ndp.NeighborCache(MAC, [ME], **kw)


def sent(events) -> list[ndp.NdMessage]:
    return [parse(bytes(ethernet.parse(e.frame).payload)) for e in events
            if isinstance(e, SendFrame)]


def test_resolve_solicits_queues_and_releases_on_the_advertisement():
    c = cache()
    out = c.resolve(PEER, "p1", 0)
    [req] = sent(out)
    assert (req.type, req.src, req.target) == (135, ME, PEER)
    assert c.resolve(PEER, "p2", 1) == []
    [rel] = c.input(parse(na(PEER, ME, PEER)), PEER_MAC, 2)
    assert rel == Resolved(PEER, PEER_MAC, ("p1", "p2"))
    assert c.lookup(PEER, 3) == PEER_MAC
    assert c.counters["nd.request_sent"] == 1


def test_an_unanswered_address_is_given_up_after_three_solicitations():
    c = cache()
    c.resolve(PEER, "p", 0)
    assert len(sent(c.tick(S))) == 1 and len(sent(c.tick(2 * S))) == 1
    assert c.tick(3 * S) == [Unreachable(PEER, ("p",))]


def test_entries_expire():
    c = cache(reachable_ns=10 * S)
    c.resolve(PEER, "p", 0)
    c.input(parse(na(PEER, ME, PEER)), PEER_MAC, 0)
    assert c.expires(PEER) == 10 * S
    assert c.lookup(PEER, 9 * S) == PEER_MAC
    assert c.lookup(PEER, 10 * S) is None


def test_a_solicitation_for_our_address_is_answered_and_its_sender_learnt():
    c = cache(router=False)
    out = c.input(parse(ns(PEER, ME, lladdr=PEER_MAC)), PEER_MAC, 0)
    [answer] = sent(out)
    assert (answer.type, answer.src, answer.dst, answer.target) == (136, ME, PEER, ME)
    assert answer.flags == 0x60 and answer.lladdr == MAC   # solicited, override, no router
    assert c.lookup(PEER, 1) == PEER_MAC


def test_a_dad_probe_for_our_address_is_defended_on_all_nodes():
    c = cache()
    [answer] = sent(c.input(parse(ns(bytes(16), ME, lladdr=None)), PEER_MAC, 0))
    assert answer.dst == ndp.ALL_NODES and not answer.solicited
    assert c.lookup(PEER, 1) is None


def test_unsolicited_and_conflicting_messages_teach_nothing():
    c = cache()
    assert c.input(parse(na(PEER, ndp.ALL_NODES, PEER, flags=0x20)), PEER_MAC, 0) == []
    assert c.lookup(PEER, 1) is None and c.counters["nd.unsolicited"] == 1
    assert c.input(parse(na(PEER, ndp.ALL_NODES, ME, flags=0x20)), PEER_MAC, 0) == []
    assert c.counters["nd.address_conflict"] == 1
    assert c.input(parse(ns(PEER, a("fd00:200::77"))), PEER_MAC, 0) == []  # not ours
    assert c.input(parse(ns(PEER, ME)), MAC, 0) == []                      # our own MAC
    # a solicited answer to one of our addresses is learnt without a pending entry
    assert c.input(parse(na(PEER, ME, PEER)), PEER_MAC, 0) == []
    assert c.lookup(PEER, 1) == PEER_MAC


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.integers(0, 255))
def test_parse_raises_only_parse_error(body, kind):
    packet = icmp6(PEER, ME, kind if kind in ndp.ND_TYPES else 135, body)
    try:
        parse(packet)
    except ParseError:
        pass


def test_icmpv6_constants_are_the_rfc_types():
    assert (icmpv6.NEIGHBOR_SOLICITATION, icmpv6.NEIGHBOR_ADVERTISEMENT) == (135, 136)
