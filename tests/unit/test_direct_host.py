"""The direct stack's host core, fed frames by hand (no sockets, no devices)."""

from hypothesis import given, settings, strategies as st

from ingot.plugins.netstack import arp, ethernet, icmp, ipv4, tcp, udp
from ingot.plugins.stack_direct.state import Config, Deliver, Host, Transmit

MAC = bytes.fromhex("02000000aa01")
PEER_MAC = bytes.fromhex("02000000bb02")
ME = ipv4.addr("10.137.0.2")
PEER = ipv4.addr("10.137.0.1")
FAR = ipv4.addr("10.200.0.9")


def host(open_ports=(7,), gateway="10.137.0.1"):
    h = Host(MAC, 1500, is_open=lambda p: p in open_ports)
    (grat,) = h.configure(Config.parse("10.137.0.2/24", gateway))
    assert arp.parse(ethernet.parse(grat.frame).payload).tpa == ME
    return h


def frame_ip(packet: bytes, dst_mac=MAC) -> bytes:
    return ethernet.build(dst_mac, PEER_MAC, ethernet.ETHERTYPE_IPV4, packet)


def learn_peer(h: Host, now=0):
    """The peer asks for us: we answer and learn it."""
    req = arp.request_frame(PEER_MAC, PEER, ME)
    (reply,) = h.input(req, now)
    pkt = arp.parse(ethernet.parse(reply.frame).payload)
    assert pkt.op == arp.OP_REPLY and pkt.sha == MAC and pkt.tha == PEER_MAC


def ip_of(out: Transmit) -> ipv4.IPv4Packet:
    eth = ethernet.parse(out.frame)
    assert eth.ethertype == ethernet.ETHERTYPE_IPV4
    return ipv4.parse(eth.payload)


def test_ping_gets_an_echo_reply():
    h = host()
    learn_peer(h)
    req = ipv4.build(PEER, ME, ipv4.PROTO_ICMP, icmp.echo_request(0x1234, 7, b"payload"))
    (out,) = h.input(frame_ip(req), 1)
    pkt = ip_of(out)
    assert (pkt.src, pkt.dst) == (ME, PEER)
    msg = icmp.parse(pkt.payload)
    assert (msg.type, msg.ident, msg.seq, bytes(msg.payload)) == (icmp.ECHO_REPLY, 0x1234, 7,
                                                                    b"payload")
    assert ethernet.parse(out.frame).dst == PEER_MAC


def test_udp_to_open_port_is_delivered_and_reply_waits_for_arp():
    h = host()
    dgram = udp.build(5000, 7, b"hello", PEER, ME)
    (ev,) = h.input(frame_ip(ipv4.build(PEER, ME, ipv4.PROTO_UDP, dgram)), 1)
    assert ev == Deliver(PEER, 5000, ME, 7, b"hello")
    (req,) = h.send_udp(7, PEER, 5000, b"hello", 2)  # PEER unknown yet: ARP request
    assert arp.parse(ethernet.parse(req.frame).payload).op == arp.OP_REQUEST
    reply = arp.reply_frame(PEER_MAC, PEER, MAC, ME)
    (out,) = h.input(reply, 3)  # the queued datagram leaves
    u = udp.parse(ip_of(out).payload, ME, PEER)
    assert (u.src_port, u.dst_port, bytes(u.payload)) == (7, 5000, b"hello")


def test_closed_port_gets_port_unreachable_and_tcp_gets_reset():
    h = host()
    learn_peer(h)
    dgram = udp.build(5000, 9, b"x", PEER, ME)
    (out,) = h.input(frame_ip(ipv4.build(PEER, ME, ipv4.PROTO_UDP, dgram)), 1)
    msg = icmp.parse(ip_of(out).payload)
    assert (msg.type, msg.code) == (icmp.DEST_UNREACHABLE, icmp.PORT_UNREACHABLE)
    syn = tcp.build(40000, 7, 1000, 0, tcp.SYN, 65535, src=PEER, dst=ME)
    (out,) = h.input(frame_ip(ipv4.build(PEER, ME, ipv4.PROTO_TCP, syn)), 2)
    seg = tcp.parse(ip_of(out).payload, ME, PEER)
    assert seg.flags == tcp.RST | tcp.ACK and seg.ack == 1001
    assert h.counters["tcp.refused"] == 1


def test_fragmented_datagram_is_reassembled_and_large_sends_fragment():
    h = host()
    learn_peer(h)
    payload = bytes(range(256)) * 12
    dgram = udp.build(5000, 7, payload, PEER, ME)
    first = ipv4.build(PEER, ME, ipv4.PROTO_UDP, dgram[:1480], ident=9, flags=ipv4.FLAG_MF)
    second = ipv4.build(PEER, ME, ipv4.PROTO_UDP, dgram[1480:], ident=9, frag_offset=1480)
    assert h.input(frame_ip(second), 1) == []
    (ev,) = h.input(frame_ip(first), 2)
    assert ev.payload == payload
    frames = h.send_udp(7, PEER, 5000, payload, 3)
    assert len(frames) == 3
    pkts = [ip_of(f) for f in frames]
    assert [p.frag_offset for p in pkts] == [0, 1480, 2960]
    assert all(len(f.frame) <= 1514 for f in frames)


def test_routes_through_the_gateway_and_drops_without_route():
    h = host()
    (req,) = h.send_udp(7, FAR, 53, b"q", 1)
    assert arp.parse(ethernet.parse(req.frame).payload).tpa == PEER  # the gateway
    h2 = host(gateway="")
    assert h2.send_udp(7, FAR, 53, b"q", 1) == []
    assert h2.counters["host.no_route"] == 1


def test_foreign_traffic_and_garbage_are_dropped_and_counted():
    h = host()
    other_mac = ethernet.build(bytes.fromhex("020000000009"), PEER_MAC,
                               ethernet.ETHERTYPE_IPV4, b"x" * 40)
    assert h.input(other_mac, 1) == []
    not_me = ipv4.build(PEER, FAR, ipv4.PROTO_UDP, udp.build(1, 7, b"", PEER, FAR))
    assert h.input(frame_ip(not_me), 1) == []
    bad = bytearray(ipv4.build(PEER, ME, ipv4.PROTO_UDP, udp.build(1, 7, b"abc", PEER, ME)))
    bad[10] ^= 0xFF  # header checksum
    assert h.input(frame_ip(bytes(bad)), 1) == []
    bad_udp = bytearray(ipv4.build(PEER, ME, ipv4.PROTO_UDP, udp.build(1, 7, b"abc", PEER, ME)))
    bad_udp[-1] ^= 0xFF  # breaks the UDP checksum only
    assert h.input(frame_ip(bytes(bad_udp)), 1) == []
    assert h.input(b"\x01\x02", 1) == []
    c = h.counters
    assert (c["host.not_our_mac"], c["host.not_our_ip"], c["ipv4.malformed"],
            c["udp.malformed"], c["ethernet.malformed"]) == (1, 1, 1, 1, 1)


def test_ip_options_well_formed_are_answered_broken_are_dropped_and_counted():
    h = host()
    learn_peer(h)
    ping = icmp.echo_request(1, 1, b"opt")
    record_route = bytes([7, 7, 4]) + bytes(4)  # RFC 791 record route, one empty slot
    for options in (b"\x01\x01\x01\x00", record_route):
        (out,) = h.input(frame_ip(ipv4.build(PEER, ME, ipv4.PROTO_ICMP, ping,
                                             options=options)), 1)
        assert icmp.parse(ip_of(out).payload).type == icmp.ECHO_REPLY
    broken = (bytes([7, 0, 0, 0]),        # length below 2
              bytes([7, 9, 4, 0]),        # runs past the header
              bytes([1, 1, 1, 0x44]))     # a type with no length byte
    for options in broken:
        assert h.input(frame_ip(ipv4.build(PEER, ME, ipv4.PROTO_ICMP, ping,
                                           options=options)), 1) == []
    assert h.counters["ipv4.malformed"] == len(broken)


def test_unconfigured_host_takes_dhcp_replies_only():
    h = Host(MAC, 1500, is_open=lambda p: p == 68)
    offer = udp.build(67, 68, b"offer", PEER, ipv4.addr("10.137.0.77"))
    (ev,) = h.input(frame_ip(ipv4.build(PEER, ipv4.addr("10.137.0.77"), ipv4.PROTO_UDP,
                                        offer)), 1)
    assert isinstance(ev, Deliver) and ev.dst_port == 68
    (out,) = h.send_udp(68, b"\xff\xff\xff\xff", 67, b"discover", 2)
    assert ethernet.parse(out.frame).dst == ethernet.BROADCAST
    assert ip_of(out).src == b"\0\0\0\0"


def test_unanswered_arp_gives_up_and_counts():
    h = host()
    h.send_udp(7, PEER, 5000, b"x", 0)
    t = 0
    for _ in range(5):
        t = h.next_deadline()
        h.tick(t)
    assert h.counters["host.next_hop_unreachable"] == 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([ethernet.ETHERTYPE_IPV4,
                                                 ethernet.ETHERTYPE_ARP, 0x86DD]))
def test_any_frame_is_taken_without_raising(body, ethertype):
    h = host()
    h.input(ethernet.build(MAC, PEER_MAC, ethertype, body), 1)
    h.input(ethernet.build(MAC, PEER_MAC, ethertype, ipv4.build(PEER, ME, 17, body)), 2)
    h.input(ethernet.build(MAC, PEER_MAC, ethertype, ipv4.build(PEER, ME, 1, body)), 3)
