"""ARP packets and the ARP cache state machine, with explicit times."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import arp, ethernet
from ingot.plugins.netstack.arp import (ArpCache, ArpPacket, Dropped, Resolved, SendFrame,
                                        Unreachable)
from ingot.plugins.netstack.counters import Counters
from ingot.plugins.netstack.errors import ParseError

S = 1_000_000_000
OUR_MAC = bytes.fromhex("525400123456")
OUR_IP = bytes([10, 137, 0, 1])
PEER_MAC = bytes.fromhex("00163e0a0b0c")
PEER_IP = bytes([10, 137, 0, 2])
OTHER_MAC = bytes.fromhex("00163e0d0e0f")
OTHER_IP = bytes([10, 137, 0, 3])

# A broadcast "who has 10.137.0.2? tell 10.137.0.1", as a capture shows it:
# Ethernet header, 28 bytes of ARP, 18 bytes of padding to 60.
CAPTURED_REQUEST = bytes.fromhex(
    "ffffffffffff" "525400123456" "0806"
    "0001" "0800" "06" "04" "0001"
    "525400123456" "0a890001" "000000000000" "0a890002") + bytes(18)


def test_parse_a_captured_request():
    frame = ethernet.parse(CAPTURED_REQUEST)
    assert frame.ethertype == ethernet.ETHERTYPE_ARP
    pkt = arp.parse(frame.payload)
    assert pkt == ArpPacket(arp.OP_REQUEST, OUR_MAC, OUR_IP, bytes(6), PEER_IP)
    # What we build for the same question is byte for byte the capture.
    assert arp.request_frame(OUR_MAC, OUR_IP, PEER_IP) == CAPTURED_REQUEST


@pytest.mark.parametrize("patch, reason", [
    ((0, b"\x00\x06"), "hardware type 6"),
    ((2, b"\x86\xdd"), "protocol type"),
    ((4, b"\x06\x10"), "address lengths"),
    ((6, b"\x00\x03"), "operation 3"),
])
def test_refused_packets(patch, reason):
    raw = bytearray(arp.build(ArpPacket(arp.OP_REQUEST, OUR_MAC, OUR_IP, bytes(6), PEER_IP)))
    at, value = patch
    raw[at:at + len(value)] = value
    with pytest.raises(ParseError, match=reason) as err:
        arp.parse(raw)
    assert err.value.layer == "arp"
    with pytest.raises(ParseError):
        arp.parse(raw[:27])


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([1, 2]), *[st.binary(min_size=n, max_size=n) for n in (6, 4, 6, 4)])
def test_build_parse_round_trip(op, sha, spa, tha, tpa):
    pkt = ArpPacket(op, sha, spa, tha, tpa)
    assert arp.parse(arp.build(pkt) + bytes(18)) == pkt


def frame_of(event: SendFrame) -> tuple[ethernet.EthernetFrame, ArpPacket]:
    f = ethernet.parse(event.frame)
    return f, arp.parse(f.payload)


def make(**kw) -> ArpCache:
    return ArpCache(OUR_MAC, [OUR_IP], **kw)


def test_resolve_queues_requests_and_releases_on_reply():
    cache = make()
    out = cache.resolve(PEER_IP, "p1", now_ns=0)
    assert len(out) == 1 and isinstance(out[0], SendFrame)
    f, req = frame_of(out[0])
    assert f.dst == ethernet.BROADCAST and f.src == OUR_MAC
    assert req == ArpPacket(arp.OP_REQUEST, OUR_MAC, OUR_IP, bytes(6), PEER_IP)
    assert cache.resolve(PEER_IP, "p2", now_ns=10) == []  # queued, no second request
    assert cache.pending() == {PEER_IP: 2}
    assert cache.lookup(PEER_IP, 10) is None
    reply = ArpPacket(arp.OP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP)
    assert cache.input(reply, now_ns=20) == [Resolved(PEER_IP, PEER_MAC, ("p1", "p2"))]
    assert cache.lookup(PEER_IP, 30) == PEER_MAC
    assert cache.pending() == {}
    assert cache.resolve(PEER_IP, "p3", now_ns=40) == [Resolved(PEER_IP, PEER_MAC, ("p3",))]


def test_entries_expire_after_60_seconds():
    cache = make()
    cache.input(ArpPacket(arp.OP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), now_ns=5 * S)
    assert cache.lookup(PEER_IP, 64 * S) == PEER_MAC
    assert cache.next_deadline() == 65 * S
    assert cache.lookup(PEER_IP, 65 * S) is None
    cache.input(ArpPacket(arp.OP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), now_ns=70 * S)
    assert cache.tick(129 * S) == [] and cache.entries(129 * S) == {PEER_IP: PEER_MAC}
    assert cache.tick(130 * S) == [] and cache.entries(130 * S) == {}
    assert cache.next_deadline() is None


def test_retries_every_second_then_gives_up():
    counters = Counters()
    cache = make(counters=counters)
    cache.resolve(PEER_IP, "a", now_ns=0)
    assert cache.next_deadline() == 1 * S
    assert cache.tick(S - 1) == []
    retry = cache.tick(1 * S)
    assert len(retry) == 1 and frame_of(retry[0])[1].tpa == PEER_IP
    assert cache.tick(1 * S + 1) == []
    assert len(cache.tick(2 * S)) == 1  # third and last request
    cache.resolve(PEER_IP, "b", now_ns=2 * S + 5)
    assert cache.tick(3 * S) == [Unreachable(PEER_IP, ("a", "b"))]
    assert cache.pending() == {} and cache.next_deadline() is None
    assert counters["arp.request_sent"] == 3 and counters["arp.unreachable"] == 1
    # A new packet starts over.
    assert isinstance(cache.resolve(PEER_IP, "c", now_ns=4 * S)[0], SendFrame)


def test_queue_limits_drop_and_count():
    counters = Counters()
    cache = make(queue_per_ip=16, max_pending=2, counters=counters)
    for i in range(16):
        cache.resolve(PEER_IP, i, now_ns=0)
    assert cache.resolve(PEER_IP, 16, now_ns=0) == [Dropped(PEER_IP, 0, "ARP queue full")]
    assert cache.pending() == {PEER_IP: 16}
    cache.resolve(OTHER_IP, "x", now_ns=0)
    third = bytes([10, 137, 0, 9])
    assert cache.resolve(third, "y", now_ns=0) == \
        [Dropped(third, "y", "too many addresses being resolved")]
    assert counters.snapshot("arp.") == {"arp.queue_full": 1, "arp.request_sent": 2,
                                         "arp.too_many_pending": 1}
    out = cache.input(ArpPacket(arp.OP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), 1)
    assert out == [Resolved(PEER_IP, PEER_MAC, tuple(range(1, 17)))]


def test_answers_requests_for_our_address_and_learns_the_asker():
    cache = make()
    req = ArpPacket(arp.OP_REQUEST, PEER_MAC, PEER_IP, bytes(6), OUR_IP)
    out = cache.input(req, now_ns=0)
    assert len(out) == 1
    f, reply = frame_of(out[0])
    assert (f.dst, f.src) == (PEER_MAC, OUR_MAC)
    assert reply == ArpPacket(arp.OP_REPLY, OUR_MAC, OUR_IP, PEER_MAC, PEER_IP)
    assert cache.lookup(PEER_IP, 1) == PEER_MAC


def test_requests_for_others_are_neither_answered_nor_learnt():
    cache = make()
    req = ArpPacket(arp.OP_REQUEST, PEER_MAC, PEER_IP, bytes(6), OTHER_IP)
    assert cache.input(req, 0) == []
    assert cache.lookup(PEER_IP, 1) is None


def test_merge_updates_a_known_entry_from_any_packet():
    cache = make()
    cache.input(ArpPacket(arp.OP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), 0)
    # A gratuitous ARP from the peer with a new MAC, not aimed at us.
    assert cache.input(ArpPacket(arp.OP_REQUEST, OTHER_MAC, PEER_IP, bytes(6), PEER_IP), 1) == []
    assert cache.lookup(PEER_IP, 2) == OTHER_MAC


def test_static_entries_win_and_never_expire():
    cache = make()
    cache.add_static(PEER_IP, PEER_MAC)
    cache.input(ArpPacket(arp.OP_REPLY, OTHER_MAC, PEER_IP, OUR_MAC, OUR_IP), 0)
    assert cache.lookup(PEER_IP, 10**15) == PEER_MAC
    cache.remove(PEER_IP)
    assert cache.lookup(PEER_IP, 0) is None


def test_ignored_senders_are_counted():
    counters = Counters()
    cache = make(counters=counters)
    assert cache.input(ArpPacket(arp.OP_REQUEST, OUR_MAC, OUR_IP, bytes(6), OUR_IP), 0) == []
    from_group = ArpPacket(arp.OP_REPLY, ethernet.BROADCAST, PEER_IP, OUR_MAC, OUR_IP)
    assert cache.input(from_group, 0) == []
    # Someone else claims our address.
    assert cache.input(ArpPacket(arp.OP_REQUEST, PEER_MAC, OUR_IP, bytes(6), OUR_IP), 0) == []
    assert counters.snapshot() == {"arp.address_conflict": 1, "arp.group_sender": 1,
                                   "arp.own_packet": 1}
    assert cache.entries(0) == {}


def test_probe_for_our_address_is_defended():
    cache = make()
    out = cache.input(ArpPacket(arp.OP_REQUEST, PEER_MAC, bytes(4), bytes(6), OUR_IP), 0)
    f, reply = frame_of(out[0])
    assert f.dst == PEER_MAC and reply == ArpPacket(arp.OP_REPLY, OUR_MAC, OUR_IP, PEER_MAC,
                                                    bytes(4))
    assert cache.entries(0) == {}


def test_broadcast_and_multicast_need_no_resolution():
    cache = make()
    assert cache.lookup(b"\xff\xff\xff\xff", 0) == ethernet.BROADCAST
    assert cache.lookup(bytes([224, 0, 0, 251]), 0) == bytes.fromhex("01005e0000fb")


def test_full_table_evicts_the_least_recently_refreshed():
    counters = Counters()
    cache = make(max_entries=2, counters=counters)
    for n, ip in enumerate((PEER_IP, OTHER_IP)):
        cache.input(ArpPacket(arp.OP_REPLY, PEER_MAC, ip, OUR_MAC, OUR_IP), n)
    cache.input(ArpPacket(arp.OP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), 5)  # refresh
    third = bytes([10, 137, 0, 9])
    cache.input(ArpPacket(arp.OP_REPLY, PEER_MAC, third, OUR_MAC, OUR_IP), 6)
    assert set(cache.entries(7)) == {PEER_IP, third}
    assert counters["arp.evicted"] == 1


def test_gratuitous_and_addresses():
    cache = make()
    f, pkt = frame_of(SendFrame(cache.gratuitous()))
    assert f.dst == ethernet.BROADCAST
    assert pkt == ArpPacket(arp.OP_REQUEST, OUR_MAC, OUR_IP, bytes(6), OUR_IP)
    cache.add_address(OTHER_IP)
    assert cache.addresses == (OUR_IP, OTHER_IP)
    req = ArpPacket(arp.OP_REQUEST, PEER_MAC, PEER_IP, bytes(6), OTHER_IP)
    assert frame_of(cache.input(req, 0)[0])[1].spa == OTHER_IP
    cache.remove_address(OTHER_IP)
    assert cache.input(ArpPacket(arp.OP_REQUEST, PEER_MAC, PEER_IP, bytes(6), OTHER_IP), 0) == []
    with pytest.raises(ValueError):
        ArpCache(OUR_MAC).gratuitous()


def test_group_addresses_cannot_be_claimed():
    counters = Counters()
    cache = make(counters=counters)
    for ip in (bytes([224, 0, 0, 251]), b"\xff" * 4, bytes([240, 0, 0, 1])):
        assert cache.input(ArpPacket(arp.OP_REPLY, PEER_MAC, ip, OUR_MAC, OUR_IP), 0) == []
    assert cache.entries(0) == {} and counters["arp.group_sender"] == 3
    assert cache.lookup(bytes([224, 0, 0, 251]), 0) == bytes.fromhex("01005e0000fb")
