"""The firewall's Ethernet layer for IPv6 (sans-I/O): neighbour discovery toward
clients (answers for the client gateway and the firewall's link-local address,
MAC learning, solicitations for a client whose MAC is unknown), toward the
uplink (the gateway resolved and refreshed, our address answered), malformed
ND dropped and counted, and the split of one VM's IPv4 and IPv6 traffic when
each address has a device of its own or both share one."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.firewall.l2 import L2, UPLINK, Deliver, Dropped, Transmit
from ingot.plugins.netstack import ethernet, ipv6, ndp
from ingot.signatures import FilterSetup
from ingot.testing.frames import inet_checksum

S = 1_000_000_000
SETUP = FilterSetup(uplink_ip="10.200.0.2", uplink_gateway="10.200.0.1",
                    client_gateway="10.137.0.1", uplink_ip6="fd00:200::2",
                    uplink_gateway6="fd00:200::1", client_gateway6="fd09:24ef:4179::a89:1")
UP_MAC = bytes.fromhex("020000000001")
GW_MAC = bytes.fromhex("020000000099")
FW_C1 = bytes.fromhex("fe0000000011")
C1_MAC = bytes.fromhex("00163e5e6c11")
C1, C1_6 = "10.137.0.11", "fd09:24ef:4179::a89:b"
ETH6 = ethernet.ETHERTYPE_IPV6


def a(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


CGW6, C1_6B, UP6, GW6 = a(SETUP.client_gateway6), a(C1_6), a("fd00:200::2"), a("fd00:200::1")


def icmp6(src: bytes, dst: bytes, kind: int, body: bytes, *, hops: int = 255,
          code: int = 0) -> bytes:
    msg = struct.pack("!BBH", kind, code, 0) + body
    ck = inet_checksum(src + dst + struct.pack("!IxxxB", len(msg), 58) + msg)
    msg = msg[:2] + struct.pack("!H", ck) + msg[4:]
    return struct.pack("!IHBB", 6 << 28, len(msg), 58, hops) + src + dst + msg


def ns(src: bytes, target: bytes, lladdr: bytes | None, **kw) -> bytes:
    opt = b"" if lladdr is None else bytes((1, 1)) + lladdr
    return icmp6(src, ndp.solicited_node(target), 135, bytes(4) + target + opt, **kw)


def na(src: bytes, dst: bytes, target: bytes, lladdr: bytes, flags: int = 0x60) -> bytes:
    return icmp6(src, dst, 136, bytes((flags, 0, 0, 0)) + target + bytes((2, 1)) + lladdr)


def udp6(src: bytes, dst: bytes, data: bytes = b"hello") -> bytes:
    return struct.pack("!IHBB", 6 << 28, 8 + len(data), 17, 64) + src + dst + \
        struct.pack("!HHHH", 1000, 2000, 8 + len(data), 0) + data


def eth(dst: bytes, src: bytes, payload: bytes, etype: int = ETH6) -> bytes:
    return dst + src + struct.pack("!H", etype) + payload


def nd_of(frame: bytes) -> ndp.NdMessage:
    parsed = ethernet.parse(frame)
    assert parsed.ethertype == ETH6
    return ndp.parse(ipv6.parse(bytes(parsed.payload)))


def make(shared: bool = False) -> L2:
    l2 = L2(SETUP, UP_MAC)
    l2.attach(C1, FW_C1)
    l2.attach(C1_6, FW_C1, iface=C1 if shared else None)
    return l2


def only(events, cls):
    return [e for e in events if isinstance(e, cls)]


def test_a_client_solicitation_for_the_gateway6_is_answered_as_a_router():
    l2 = make()
    frame = eth(b"\x33\x33\xff" + CGW6[13:],
                C1_MAC, ns(C1_6B, CGW6, C1_MAC))
    [tx] = l2.input(0, C1_6, frame)
    assert isinstance(tx, Transmit) and tx.iface == C1_6
    msg = nd_of(tx.frame)
    assert (msg.type, msg.src, msg.dst, msg.target, msg.lladdr) == (136, CGW6, C1_6B, CGW6,
                                                                     FW_C1)
    assert msg.flags == 0xE0  # router, solicited, override
    assert ethernet.parse(tx.frame).dst == C1_MAC
    assert l2.client_mac(C1_6) == C1_MAC
    assert l2.counters["l2.nd_answered"] == 1


def test_the_firewalls_link_local_address_is_answered_too_from_a_link_local_source():
    l2 = make()
    ll = ndp.link_local(FW_C1)
    client_ll = ndp.link_local(C1_MAC)
    [tx] = l2.input(0, C1_6, eth(b"\x33\x33\xff" + ll[13:], C1_MAC, ns(client_ll, ll, C1_MAC)))
    msg = nd_of(tx.frame)
    assert (msg.src, msg.dst, msg.target) == (ll, client_ll, ll)


def test_other_targets_dad_of_the_clients_own_address_and_router_solicitations_get_nothing():
    l2 = make()
    assert l2.input(0, C1_6, eth(b"\x33\x33\xff" + C1_6B[13:], C1_MAC,
                                 ns(bytes(16), C1_6B, None))) == []
    assert l2.input(0, C1_6, eth(b"\x33\x33\xff\x00\x00\x09", C1_MAC,
                                 ns(C1_6B, a("fd00:200::9"), C1_MAC))) == []
    rs = icmp6(ndp.link_local(C1_MAC), ndp.ALL_ROUTERS, 133, bytes(4))
    assert l2.input(0, C1_6, eth(b"\x33\x33\x00\x00\x00\x02", C1_MAC, rs)) == []
    c = l2.counters
    assert (c["l2.nd_own_address"], c["l2.nd_not_ours"], c["l2.nd_router_solicitation"]) == \
        (1, 1, 1)


def test_a_dad_probe_for_the_gateway6_is_defended_on_all_nodes():
    l2 = make()
    [tx] = l2.input(0, C1_6, eth(b"\x33\x33\xff" + CGW6[13:], C1_MAC, ns(bytes(16), CGW6, None)))
    assert nd_of(tx.frame).dst == ndp.ALL_NODES


def test_malformed_nd_is_dropped_and_counted():
    l2 = make()
    for bad in (ns(C1_6B, CGW6, C1_MAC, hops=64), ns(C1_6B, CGW6, C1_MAC, code=3),
                ns(C1_6B, CGW6, C1_MAC)[:-4] + b"\0\0\0\0"):  # checksum now wrong
        bad = bad[:4] + struct.pack("!H", len(bad) - 40) + bad[6:]
        [d] = l2.input(0, C1_6, eth(FW_C1, C1_MAC, bad))
        assert isinstance(d, Dropped) and "neighbour discovery" in d.reason
    assert l2.counters["l2.nd_malformed"] == 3


def test_nd_from_a_foreign_global_source_is_spoofed():
    l2 = make()
    [d] = l2.input(0, C1_6, eth(FW_C1, C1_MAC, ns(a("fd09:24ef:4179::a89:c"), CGW6, C1_MAC)))
    assert isinstance(d, Dropped) and l2.counters["l2.nd_spoofed"] == 1
    assert l2.client_mac(C1_6) is None


def test_a_packet_for_a_client_of_unknown_mac_waits_for_a_solicitation_answer():
    l2 = make()
    out = l2.output(0, C1_6, udp6(GW6, C1_6B), meta="m")
    [ask] = only(out, Transmit)
    msg = nd_of(ask.frame)
    assert (msg.type, msg.src, msg.target) == (135, CGW6, C1_6B)
    assert ask.iface == C1_6
    # the client answers (unicast to the gateway6)
    out = l2.input(1, C1_6, eth(FW_C1, C1_MAC, na(C1_6B, CGW6, C1_6B, C1_MAC)))
    [tx] = only(out, Transmit)
    assert tx.meta == "m" and ethernet.parse(tx.frame).dst == C1_MAC
    assert ethernet.parse(tx.frame).ethertype == ETH6


def test_a_silent_client_gets_three_solicitations_then_its_packets_are_dropped():
    l2 = make()
    l2.output(0, C1_6, udp6(GW6, C1_6B), meta="x")
    assert len(only(l2.tick(S), Transmit)) == 1
    assert len(only(l2.tick(2 * S), Transmit)) == 1
    assert l2.tick(3 * S) == [Dropped(C1_6, "client MAC unknown (no neighbour advertisement)",
                                      "x")]


def test_ipv6_goes_up_to_the_gateway6_resolved_by_nd_with_the_packets_queued():
    l2 = make()
    start = l2.start(0)
    msgs = [nd_of(t.frame) for t in start if ethernet.parse(t.frame).ethertype == ETH6]
    assert [(m.type, m.target) for m in msgs] == [(136, UP6), (135, GW6)]
    # before the gateway answered: queued, then released by its advertisement
    [ask] = l2.output(1, UPLINK, udp6(C1_6B, a("fd00:300::1")), meta="q")
    assert nd_of(ask.frame).type == 135 and ask.meta is None  # a solicitation, not the packet
    out = l2.input(2, UPLINK, eth(UP_MAC, GW_MAC, na(GW6, UP6, GW6, GW_MAC)))
    [tx] = only(out, Transmit)
    assert tx.meta == "q" and ethernet.parse(tx.frame).dst == GW_MAC
    # now straight away
    [tx] = l2.output(3, UPLINK, udp6(UP6, a("fd00:300::1")))
    assert ethernet.parse(tx.frame).dst == GW_MAC


def test_the_gateway6_is_refreshed_before_its_entry_runs_out_by_a_unicast_probe():
    l2 = make()
    l2.start(0)
    l2.input(0, UPLINK, eth(UP_MAC, GW_MAC, na(GW6, UP6, GW6, GW_MAC)))
    out = l2.output(56 * S, UPLINK, udp6(UP6, a("fd00:300::1")))
    assert len(out) == 2
    probe = nd_of(out[1].frame)
    assert (probe.type, probe.dst, probe.target) == (135, GW6, GW6)
    assert len(l2.output(56 * S + 1, UPLINK, udp6(UP6, a("fd00:300::1")))) == 1  # once a second
    assert l2.counters["l2.gateway6_refresh"] == 1


def test_a_solicitation_on_the_uplink_for_our_address_is_answered():
    l2 = make()
    [tx] = l2.input(0, UPLINK, eth(b"\x33\x33\xff" + UP6[13:], GW_MAC, ns(GW6, UP6, GW_MAC)))
    msg = nd_of(tx.frame)
    assert (msg.type, msg.dst, msg.target, msg.lladdr) == (136, GW6, UP6, UP_MAC)
    assert not msg.flags & ndp.FLAG_ROUTER  # upstream we are a host
    # and not for an address that is not ours; an RA changes nothing
    assert l2.input(0, UPLINK, eth(b"\x33\x33\xff\x00\x00\x07", GW_MAC,
                                   ns(GW6, a("fd00:200::7"), GW_MAC))) == []
    ra = icmp6(ndp.link_local(GW_MAC), ndp.ALL_NODES, 134, bytes(12))
    assert l2.input(0, UPLINK, eth(b"\x33\x33\x00\x00\x00\x01", GW_MAC, ra)) == []


def test_each_address_on_a_device_of_its_own_ignores_the_other_family():
    l2 = make()
    pkt = udp6(C1_6B, a("fd00:300::1"))
    assert l2.input(0, C1, eth(FW_C1, C1_MAC, pkt)) == []          # the v4 device: not its
    assert l2.counters["l2.ipv6_no_client"] == 1
    arp_req = eth(ethernet.BROADCAST, C1_MAC, bytes(28), ethernet.ETHERTYPE_ARP)
    assert l2.input(0, C1_6, arp_req) == []                          # the v6 device: not its
    assert l2.counters["l2.other_family"] == 1
    [d] = l2.input(0, C1_6, eth(FW_C1, C1_MAC, pkt))
    assert isinstance(d, Deliver) and d.ingress == C1_6


def test_one_shared_device_carries_both_families_under_their_own_names():
    l2 = make(shared=True)
    [d] = l2.input(0, C1, eth(FW_C1, C1_MAC, udp6(C1_6B, a("fd00:300::1"))))
    assert d.ingress == C1_6
    [tx] = l2.output(0, C1_6, udp6(GW6, C1_6B))
    assert tx.iface == C1                 # out of the shared device
    l2.detach(C1_6)
    assert l2.input(0, C1, eth(FW_C1, C1_MAC, udp6(C1_6B, a("fd00:300::1")))) == []


def test_without_ipv6_in_the_setup_an_ipv6_client_cannot_attach():
    l2 = L2(FilterSetup("10.200.0.2", "10.200.0.1", "10.137.0.1"), UP_MAC)
    try:
        l2.attach(C1_6, FW_C1)
    except ValueError as exc:
        assert "no IPv6" in str(exc)
    else:
        raise AssertionError("attached")
    [d] = l2.output(0, UPLINK, udp6(C1_6B, a("fd00:300::1")))
    assert isinstance(d, Dropped) and l2.counters["l2.ipv6_uplink"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=100), st.sampled_from([C1, C1_6, UPLINK]),
       st.integers(133, 137))
def test_nothing_raises_on_mangled_nd(tail, iface, kind):
    l2 = make()
    pkt = icmp6(C1_6B, CGW6, kind, tail)
    own = UP_MAC if iface == UPLINK else FW_C1
    l2.input(0, iface, eth(own, C1_MAC, pkt))
    l2.input(0, iface, eth(own, C1_MAC, pkt[:40 + len(tail) // 2]))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([ns(C1_6B, CGW6, C1_MAC), na(C1_6B, CGW6, C1_6B, C1_MAC),
                        ns(GW6, UP6, GW_MAC), na(GW6, UP6, GW6, GW_MAC),
                        udp6(C1_6B, a("fd00:300::1"))]),
       st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6),
       st.sampled_from([C1, C1_6, UPLINK]), st.booleans(), st.integers(0, 200 * S))
def test_bit_flipped_ipv6_frames_never_raise_in_input_output_or_tick(base, flips, iface,
                                                                     shared, now):
    l2 = make(shared)
    frame = bytearray(eth(UP_MAC if iface == UPLINK else FW_C1,
                          GW_MAC if iface == UPLINK else C1_MAC, base))
    for pos, value in flips:
        if pos < len(frame):
            frame[pos] = value
    for ev in l2.input(now, iface, bytes(frame)):
        assert isinstance(ev, (Deliver, Transmit, Dropped))
    for egress in (UPLINK, C1_6, C1):
        l2.output(now, egress, bytes(frame[14:]))
    l2.tick(now + 5 * S)
    assert l2.next_deadline() is None or l2.next_deadline() >= 0
