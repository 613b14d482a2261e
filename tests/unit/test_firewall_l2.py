"""The firewall's Ethernet/ARP layer (sans-I/O): proxy ARP for clients, MAC
learning, the uplink gateway's resolution and queue, malformed frames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.firewall.l2 import L2, UPLINK, Deliver, Dropped, Transmit
from ingot.plugins.netstack import arp, ethernet
from ingot.signatures import FilterSetup
from ingot.testing import frames as F

S = 1_000_000_000
SETUP = FilterSetup(uplink_ip="10.200.0.2", uplink_gateway="10.200.0.1",
                    client_gateway="10.137.0.1", uplink_prefix=24)
UP_MAC = bytes.fromhex("020000000001")
GW_MAC = bytes.fromhex("020000000099")
NEIGH_MAC = bytes.fromhex("020000000077")
FW_C1 = bytes.fromhex("fe0000000011")  # the firewall's MAC on client 1's interface
C1_MAC = bytes.fromhex("00163e5e6c11")
C1 = "10.137.0.11"
C2 = "10.137.0.12"
FW_C2 = bytes.fromhex("fe0000000012")
C2_MAC = bytes.fromhex("00163e5e6c12")


def make(**kw) -> L2:
    l2 = L2(SETUP, UP_MAC, **kw)
    l2.attach(C1, FW_C1)
    return l2


def ip_packet(src: str, dst: str, data: bytes = b"hello") -> bytes:
    return F.ipv4(src, dst, F.PROTO_UDP, F.udp(src, dst, 1000, 2000, data))


def eth(dst: bytes, src: bytes, payload: bytes, etype: int = ethernet.ETHERTYPE_IPV4) -> bytes:
    return F.ethernet(dst, src, etype, payload)


def arp_frame(op: int, smac: bytes, sip: str, tmac: bytes, tip: str,
              dst: bytes = ethernet.BROADCAST) -> bytes:
    return F.ethernet(dst, smac, F.ETH_ARP, F.arp(op, smac, sip, tmac, tip))


def only(events, cls):
    return [e for e in events if isinstance(e, cls)]


def arp_of(frame: bytes) -> arp.ArpPacket:
    parsed = ethernet.parse(frame)
    assert parsed.ethertype == ethernet.ETHERTYPE_ARP
    return arp.parse(parsed.payload)


def learn_gateway(l2: L2, now: int = 0) -> None:
    reply = arp_frame(arp.OP_REPLY, GW_MAC, "10.200.0.1", UP_MAC, "10.200.0.2", dst=UP_MAC)
    l2.input(now, UPLINK, reply)


# -- client side ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["10.137.0.1", "10.137.0.12", "10.200.0.1", "8.8.8.8"])
def test_every_arp_request_from_a_client_is_answered_with_the_firewall_mac(target):
    l2 = make()
    out = l2.input(0, C1, F.arp_request(C1_MAC, C1, target))
    [tx] = only(out, Transmit)
    assert tx.iface == C1
    reply = ethernet.parse(tx.frame)
    assert reply.dst == C1_MAC and reply.src == FW_C1
    assert arp_of(tx.frame) == arp.ArpPacket(arp.OP_REPLY, FW_C1, F.ip4(target), C1_MAC,
                                             F.ip4(C1))
    assert l2.counters["l2.arp_answered"] == 1


def test_no_answer_for_the_clients_own_address_or_a_probe_for_others():
    l2 = make()
    # gratuitous ARP (sender = target = the client): nothing to answer
    assert not only(l2.input(0, C1, F.arp_request(C1_MAC, C1, C1)), Transmit)
    # duplicate address probe for its own address
    assert not only(l2.input(0, C1, F.arp_request(C1_MAC, "0.0.0.0", C1)), Transmit)
    # a probe for another address is not ours to answer ...
    assert not only(l2.input(0, C1, F.arp_request(C1_MAC, "0.0.0.0", "10.137.0.50")), Transmit)
    # ... but one for the gateway is, with target 0.0.0.0
    [tx] = only(l2.input(0, C1, F.arp_request(C1_MAC, "0.0.0.0", "10.137.0.1")), Transmit)
    assert arp_of(tx.frame).tpa == bytes(4) and arp_of(tx.frame).spa == F.ip4("10.137.0.1")


def test_arp_claiming_another_source_address_is_dropped():
    l2 = make()
    out = l2.input(0, C1, F.arp_request(C1_MAC, "10.137.0.12", "10.137.0.1"))
    assert not only(out, Transmit) and only(out, Dropped)
    assert l2.counters["l2.arp_spoofed"] == 1
    assert l2.client_mac(C1) is None  # nothing learnt from it


def test_client_mac_is_learnt_from_ip_frames_and_follows_a_change():
    l2 = make()
    assert l2.client_mac(C1) is None
    pkt = ip_packet(C1, "10.200.0.1")
    [d] = l2.input(0, C1, eth(FW_C1, C1_MAC, pkt))
    assert d == Deliver(C1, pkt, None)
    assert l2.client_mac(C1) == C1_MAC
    new_mac = bytes.fromhex("00163e5e6c99")
    l2.input(S, C1, eth(FW_C1, new_mac, pkt))
    assert l2.client_mac(C1) == new_mac
    assert l2.counters["l2.client_mac_learnt"] == 1
    assert l2.counters["l2.client_mac_changed"] == 1
    [tx] = l2.output(S, C1, ip_packet("10.200.0.1", C1))
    assert tx.frame[:12] == new_mac + FW_C1


def test_client_mac_is_learnt_from_arp():
    l2 = make()
    l2.input(0, C1, F.arp_request(C1_MAC, C1, "10.137.0.1"))
    assert l2.client_mac(C1) == C1_MAC


def test_packets_to_an_unknown_client_mac_wait_for_arp_then_go():
    l2 = make(queue_per_ip=2)
    a, b, c = (ip_packet("10.200.0.1", C1, bytes([i]) * 10) for i in range(3))
    out = l2.output(0, C1, a, meta="A")
    [req] = only(out, Transmit)
    q = arp_of(req.frame)
    assert q.op == arp.OP_REQUEST and q.spa == F.ip4("10.137.0.1") and q.tpa == F.ip4(C1)
    assert ethernet.parse(req.frame).src == FW_C1
    assert l2.output(0, C1, b, meta="B") == []
    out = l2.output(0, C1, c, meta="C")  # one too many: the oldest goes
    assert out == [Dropped(C1, "queue full while the client MAC is resolved", "A")]
    assert l2.next_deadline() == S
    reply = arp_frame(arp.OP_REPLY, C1_MAC, C1, FW_C1, "10.137.0.1", dst=FW_C1)
    out = l2.input(S // 2, C1, reply)
    sent = only(out, Transmit)
    assert [t.meta for t in sent] == ["B", "C"]
    assert [ethernet.parse(t.frame).payload.tobytes()[:len(b)] for t in sent] == [b, c]
    assert l2.next_deadline() is None


def test_a_silent_client_gets_three_requests_then_its_packets_are_dropped():
    l2 = make()
    l2.output(0, C1, ip_packet("10.200.0.1", C1), meta="x")
    assert len(only(l2.tick(S), Transmit)) == 1
    assert len(only(l2.tick(2 * S), Transmit)) == 1
    out = l2.tick(3 * S)
    assert out == [Dropped(C1, "client MAC unknown (no ARP answer)", "x")]
    assert l2.counters["l2.client_unreachable"] == 1
    assert l2.counters["l2.client_arp_request"] == 3
    assert l2.next_deadline() is None


def test_ip_frames_not_for_the_firewall_mac_are_dropped():
    l2 = make()
    pkt = ip_packet(C1, "10.200.0.1")
    assert only(l2.input(0, C1, eth(bytes.fromhex("020000000055"), C1_MAC, pkt)), Dropped)
    assert only(l2.input(0, C1, eth(ethernet.BROADCAST, C1_MAC, pkt)), Dropped)
    assert l2.counters["l2.not_for_us"] == 1 and l2.counters["l2.group_frame"] == 1


def test_clients_are_separate_and_detach_forgets():
    l2 = make()
    l2.attach(C2, FW_C2)
    l2.input(0, C2, F.arp_request(C2_MAC, C2, "10.137.0.1"))
    # a frame claiming to come from C2 on C1's interface is C1's business: learnt for C1
    [tx] = l2.output(0, C2, ip_packet(C1, C2))
    assert tx.iface == C2 and tx.frame[:12] == C2_MAC + FW_C2
    l2.output(0, C1, ip_packet(C2, C1), meta="q")
    assert l2.detach(C1) == [Dropped(C1, "client detached", "q")]
    assert l2.clients == (C2,)
    assert only(l2.input(0, C1, eth(FW_C1, C1_MAC, ip_packet(C1, C2))), Dropped)
    assert l2.counters["l2.unknown_interface"] == 1
    assert l2.output(0, C1, ip_packet(C2, C1)) == [Dropped(C1, "no such client", None)]


def test_padding_is_cut_and_meta_passes_through():
    l2 = make()
    pkt = F.ipv4(C1, "10.200.0.1", F.PROTO_ICMP, F.icmp_echo(1, 1, b""))  # 28 bytes
    frame = eth(FW_C1, C1_MAC, pkt) + bytes(60 - 14 - len(pkt))
    [d] = l2.input(0, C1, frame, meta="hdr")
    assert d.packet == pkt and d.meta == "hdr"
    [tx] = l2.output(0, C1, pkt)
    assert len(tx.frame) == 60 and tx.frame[14:14 + len(pkt)] == pkt


def test_ipv6_frames_are_delivered_as_packets():
    l2 = make()
    pkt = bytes([0x60, 0, 0, 0, 0, 4, 17, 64]) + bytes(32) + b"abcd"
    [d] = l2.input(0, C1, eth(FW_C1, C1_MAC, pkt, ethernet.ETHERTYPE_IPV6))
    assert d.packet == pkt
    [tx] = l2.output(0, C1, pkt)
    assert ethernet.parse(tx.frame).ethertype == ethernet.ETHERTYPE_IPV6
    [drop] = l2.output(0, UPLINK, pkt)
    assert isinstance(drop, Dropped) and l2.counters["l2.ipv6_uplink"] == 1


# -- uplink side -----------------------------------------------------------------


def test_start_announces_the_uplink_address_and_asks_for_the_gateway():
    l2 = make()
    garp, req = l2.start(0)
    assert arp_of(garp.frame).spa == arp_of(garp.frame).tpa == F.ip4("10.200.0.2")
    q = arp_of(req.frame)
    assert (q.op, q.sha, q.spa, q.tpa) == (arp.OP_REQUEST, UP_MAC, F.ip4("10.200.0.2"),
                                           F.ip4("10.200.0.1"))
    learn_gateway(l2)
    [tx] = l2.output(0, UPLINK, ip_packet("10.200.0.2", "10.200.5.5"))
    assert tx.frame[:12] == GW_MAC + UP_MAC


def test_the_uplink_answers_arp_for_its_address_only():
    l2 = make()
    out = l2.input(0, UPLINK, arp_frame(arp.OP_REQUEST, GW_MAC, "10.200.0.1", bytes(6),
                                        "10.200.0.2"))
    [tx] = only(out, Transmit)
    assert arp_of(tx.frame) == arp.ArpPacket(arp.OP_REPLY, UP_MAC, F.ip4("10.200.0.2"),
                                             GW_MAC, F.ip4("10.200.0.1"))
    # not for the client addresses behind the firewall
    assert not only(l2.input(0, UPLINK, arp_frame(arp.OP_REQUEST, GW_MAC, "10.200.0.1",
                                                  bytes(6), "10.137.0.11")), Transmit)


def test_upstream_packets_wait_for_the_gateway_then_go_to_its_mac():
    l2 = make(queue_per_ip=3)
    packets = [ip_packet("10.200.0.2", "10.200.9.9", bytes([i]) * 20) for i in range(5)]
    out = l2.output(0, UPLINK, packets[0], meta=0)
    [req] = only(out, Transmit)
    assert arp_of(req.frame).tpa == F.ip4("10.200.0.1")
    drops = []
    for i, p in enumerate(packets[1:], 1):
        drops += only(l2.output(0, UPLINK, p, meta=i), Dropped)
    assert [d.meta for d in drops] == [0, 1]  # beyond three queued, the oldest go
    assert l2.counters["arp.queue_full"] == 2
    learn_gateway(l2, S // 10)
    # the reply released the queue: learn_gateway's events are what input returned
    reply = arp_frame(arp.OP_REPLY, GW_MAC, "10.200.0.1", UP_MAC, "10.200.0.2", dst=UP_MAC)
    assert only(l2.input(S // 10, UPLINK, reply), Transmit) == []  # nothing left waiting


def test_released_packets_come_back_with_their_meta():
    l2 = make()
    p = ip_packet("10.200.0.2", "10.200.9.9")
    l2.output(0, UPLINK, p, meta="gso")
    reply = arp_frame(arp.OP_REPLY, GW_MAC, "10.200.0.1", UP_MAC, "10.200.0.2", dst=UP_MAC)
    [tx] = only(l2.input(1, UPLINK, reply), Transmit)
    assert tx.meta == "gso"
    assert tx.frame == F.ethernet(GW_MAC, UP_MAC, F.ETH_IPV4, p) + bytes(60 - 14 - len(p))


def test_hosts_on_the_uplink_subnet_are_reached_directly():
    l2 = make()
    learn_gateway(l2)
    out = l2.output(0, UPLINK, ip_packet("10.200.0.2", "10.200.0.7"), meta="m")
    [req] = only(out, Transmit)
    assert arp_of(req.frame).tpa == F.ip4("10.200.0.7")
    reply = arp_frame(arp.OP_REPLY, NEIGH_MAC, "10.200.0.7", UP_MAC, "10.200.0.2", dst=UP_MAC)
    [tx] = only(l2.input(1, UPLINK, reply), Transmit)
    assert tx.frame[:6] == NEIGH_MAC and tx.meta == "m"
    [tx] = l2.output(2, UPLINK, ip_packet("10.200.0.2", "10.200.0.255"))
    assert tx.frame[:6] == ethernet.BROADCAST


def test_a_packet_edited_in_place_reaches_a_host_on_the_subnet():
    """The python backend hands out views into the frame it read (writable memoryviews)."""
    l2 = make()
    learn_gateway(l2)
    frame = bytearray(14) + bytearray(ip_packet("10.200.0.2", "10.200.0.7"))
    view = memoryview(frame)[14:]
    [req] = only(l2.output(0, UPLINK, view, meta="m", frame=frame), Transmit)
    frame[14:] = bytes(len(frame) - 14)  # the buffer is reused for the next frame
    reply = arp_frame(arp.OP_REPLY, NEIGH_MAC, "10.200.0.7", UP_MAC, "10.200.0.2", dst=UP_MAC)
    [tx] = only(l2.input(1, UPLINK, reply), Transmit)
    assert bytes(tx.frame[14:34]) == ip_packet("10.200.0.2", "10.200.0.7")[:20]


def test_a_silent_gateway_drops_the_queue_after_three_requests():
    l2 = make()
    l2.output(0, UPLINK, ip_packet("10.200.0.2", "10.200.9.9"), meta="a")
    assert len(only(l2.tick(S), Transmit)) == 1
    assert len(only(l2.tick(2 * S), Transmit)) == 1
    out = l2.tick(3 * S)
    assert out == [Dropped(UPLINK, "no ARP answer from 10.200.0.1", "a")]
    assert l2.counters["l2.uplink_unreachable"] == 1


def test_the_gateway_entry_expires_and_is_refreshed_before_while_traffic_flows():
    l2 = make(reachable_ns=60 * S, refresh_ns=5 * S)
    learn_gateway(l2, 0)
    p = ip_packet("10.200.0.2", "10.200.9.9")
    assert len(l2.output(50 * S, UPLINK, p)) == 1
    out = l2.output(56 * S, UPLINK, p)  # within 5 s of expiry: a fresh request goes too
    assert len(out) == 2 and arp_of(out[1].frame).tpa == F.ip4("10.200.0.1")
    assert len(l2.output(56 * S + 1, UPLINK, p)) == 1  # at most one a second
    learn_gateway(l2, 56 * S + 2)  # answered: good for another minute
    assert len(l2.output(110 * S, UPLINK, p)) == 1
    # unanswered, it expires and the next packet resolves again
    l2.tick(200 * S)
    out = l2.output(200 * S, UPLINK, p, meta="w")
    assert [arp_of(t.frame).op for t in only(out, Transmit)] == [arp.OP_REQUEST]


def test_uplink_ip_frames_for_other_macs_are_dropped():
    l2 = make()
    pkt = ip_packet("10.200.0.1", "10.200.0.2")
    [d] = l2.input(0, UPLINK, eth(UP_MAC, GW_MAC, pkt))
    assert d == Deliver(UPLINK, pkt, None)
    assert only(l2.input(0, UPLINK, eth(NEIGH_MAC, GW_MAC, pkt)), Dropped)
    assert only(l2.input(0, UPLINK, eth(UP_MAC, UP_MAC, pkt)), Dropped)
    assert l2.counters["l2.own_frame"] == 1


# -- malformed frames ---------------------------------------------------------------


@pytest.mark.parametrize("iface", [UPLINK, C1])
@pytest.mark.parametrize("frame, counter", [
    (b"", "l2.malformed"),
    (b"\x01" * 13, "l2.malformed"),
    (FW_C1 + C1_MAC + b"\x08\x06" + b"\x00" * 10, "l2.arp_malformed"),
    (FW_C1 + C1_MAC + b"\x08\x00" + b"\x45" + b"\x00" * 10, "l2.ip_malformed"),
    (FW_C1 + C1_MAC + b"\x08\x00" + b"\x65" + b"\x00" * 30, "l2.ip_malformed"),
    # total length beyond the frame
    (FW_C1 + C1_MAC + b"\x08\x00" + b"\x45\x00\x05\xdc" + b"\x00" * 30, "l2.ip_malformed"),
    # header length 4 words
    (FW_C1 + C1_MAC + b"\x08\x00" + b"\x44\x00\x00\x14" + b"\x00" * 30, "l2.ip_malformed"),
    (FW_C1 + C1_MAC + b"\x86\xdd" + b"\x60" + b"\x00" * 20, "l2.ip_malformed"),
    (FW_C1 + C1_MAC + b"\x81\x00\x00\x05\x08\x00" + b"\x00" * 40, "l2.vlan"),
    (FW_C1 + C1_MAC + b"\x88\xcc" + b"\x00" * 40, "l2.ethertype"),
    (FW_C1 + b"\x01\x00\x5e\x00\x00\x01" + b"\x08\x00" + b"\x00" * 40, "l2.group_source"),
])
def test_malformed_frames_are_dropped_and_counted(iface, frame, counter):
    l2 = make()
    out = l2.input(0, iface, frame)
    assert len(out) == 1 and isinstance(out[0], Dropped)
    assert l2.counters[counter] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([UPLINK, C1, "10.137.0.99"]))
def test_no_frame_makes_input_raise(data, iface):
    l2 = make()
    l2.input(0, iface, data)
    l2.input(0, iface, FW_C1 + C1_MAC + b"\x08\x06" + data)
    l2.input(0, iface, UP_MAC + GW_MAC + b"\x08\x00" + data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([UPLINK, C1, "10.137.0.99"]))
def test_no_packet_makes_output_raise(data, iface):
    make().output(0, iface, data)


def test_l2_does_no_io():
    import ast
    from pathlib import Path

    import ingot.plugins.firewall.l2 as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree)
             if isinstance(node, ast.Import) for alias in node.names}
    names |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom)}
    assert not names & {"socket", "asyncio", "time", "random", "os", "select", "selectors",
                        "subprocess", "threading", "signal"}


def test_fast_input_and_output_agree_with_input_and_output():
    l2 = make()
    learn_gateway(l2)
    frame = eth(FW_C1, C1_MAC, ip_packet(C1, "8.8.8.8", b"x" * 30))
    assert l2.fast_input(C1, bytearray(frame)) is None  # the client's MAC is not learnt yet
    (ev,) = l2.input(0, C1, bytearray(frame))
    assert isinstance(ev, Deliver)
    before = l2.counters.snapshot()
    buf = bytearray(frame)
    assert bytes(l2.fast_input(C1, buf)) == bytes(ev.packet)
    assert l2.fast_input(C1, bytearray(eth(UP_MAC, C1_MAC, ip_packet(C1, "8.8.8.8")))) is None
    assert l2.fast_input(UPLINK, bytearray(eth(UP_MAC, GW_MAC, ip_packet("8.8.8.8", C1)))) \
        is not None
    assert l2.fast_output(0, UPLINK, buf)
    (tx,) = l2.output(0, UPLINK, bytes(frame[14:]), frame=bytearray(frame))
    assert bytes(buf) == bytes(tx.frame) and buf[:6] == GW_MAC
    assert not l2.fast_output(0, UPLINK, bytearray(eth(UP_MAC, C1_MAC, ip_packet(
        C1, "10.200.0.7", b"x" * 30))))  # on the subnet: ARP's business
    assert not l2.fast_output(0, C2, bytearray(frame))  # no such client
    assert l2.counters.snapshot() == before
