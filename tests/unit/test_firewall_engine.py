"""The firewall engine with packets built by netstack: verdicts, NAT (every
checksum verified after translation), conntrack timeouts and bounds, rule
changes, ICMP errors, fragments, IPv6, partial checksums. No I/O."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingot.plugins.firewall import conntrack as ct_mod
from ingot.plugins.firewall import engine as engine_mod
from ingot.plugins.firewall import rewrite as rewrite_mod
from ingot.plugins.firewall import rules as rules_mod
from ingot.plugins.firewall.conntrack import (ICMP_TIMEOUT_NS, TCP_ESTABLISHED_TIMEOUT_NS,
                                              TCP_TIMEOUT_NS, UDP_ASSURED_TIMEOUT_NS,
                                              UDP_TIMEOUT_NS, Conntrack)
from ingot.plugins.firewall.engine import UPLINK, Drop, Engine, Forward
from ingot.plugins.firewall.rules import parse_client_rules, resolve_dsthosts
from ingot.plugins.netstack import checksum, icmp, icmpv6, ipv4, ipv6, tcp, udp
from ingot.signatures import ClientRules, FilterSetup

S = 1_000_000_000
UP, GW, CGW = "10.200.0.2", "10.200.0.1", "10.137.0.1"
VDNS1, VDNS2 = "10.139.1.1", "10.139.1.2"
UPDNS1, UPDNS2 = "10.200.0.53", "10.200.0.54"
C1, C2 = "10.137.0.10", "10.137.0.11"
R, R2 = "10.200.7.7", "10.200.7.8"
UP6, CGW6 = "fd00:200::2", "fd09:24ef:4179::1"
C61, C62, R6 = "fd09:24ef:4179::a89:a", "fd09:24ef:4179::a89:b", "fd00:7::7"

SETUP = FilterSetup(uplink_ip=UP, uplink_gateway=GW, client_gateway=CGW,
                    virtual_dns=(VDNS1, VDNS2), upstream_dns=(UPDNS1, UPDNS2))
SETUP6 = FilterSetup(uplink_ip=UP, uplink_gateway=GW, client_gateway=CGW,
                     virtual_dns=(VDNS1, VDNS2), upstream_dns=(UPDNS1, UPDNS2),
                     uplink_ip6=UP6, uplink_gateway6="fd00:200::1", client_gateway6=CGW6)


def a(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def s(raw: bytes) -> str:
    return str(ipaddress.ip_address(bytes(raw)))


def rules(client: str, *lines: str, policy: str = "drop") -> ClientRules:
    entries = {f"{i:04}": line for i, line in enumerate(lines)}
    entries["policy"] = policy
    r = parse_client_rules(client, entries)
    assert r.error is None
    return r


def engine(setup: FilterSetup = SETUP, *clients: str, policy: str = "accept") -> Engine:
    e = Engine(setup)
    for c in clients or (C1,):
        e.attach(c)
        e.set_rules(rules(c, policy=policy))
    return e


# -- packet builders and checkers ---------------------------------------------------


def ip_packet(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64, **kw) -> bytes:
    if ":" in src:
        return ipv6.build(a(src), a(dst), proto, payload, hop_limit=ttl)
    return ipv4.build(a(src), a(dst), proto, payload, ttl=ttl, **kw)


def udp_pkt(src, dst, sport, dport, data=b"payload", ttl=64) -> bytes:
    return ip_packet(src, dst, 17, udp.build(sport, dport, data, a(src), a(dst)), ttl)


def tcp_pkt(src, dst, sport, dport, flags=tcp.ACK, data=b"", ttl=64) -> bytes:
    seg = tcp.build(sport, dport, 1000, 2000, flags, 65535, data, src=a(src), dst=a(dst),
                    options=[tcp.Mss(1460)] if flags & tcp.SYN else ())
    return ip_packet(src, dst, 6, seg, ttl)


def ping(src, dst, ident=0x1234, seq=1, data=b"abcdefgh", reply=False, ttl=64) -> bytes:
    if ":" in src:
        build = icmpv6.echo_reply if reply else icmpv6.echo_request
        return ip_packet(src, dst, 58, build(ident, seq, data, a(src), a(dst)), ttl)
    build = icmp.echo_reply if reply else icmp.echo_request
    return ip_packet(src, dst, 1, build(ident, seq, data), ttl)


def flow(pkt) -> tuple:
    """(proto, src, sport, dst, dport, ttl) of a packet whose checksums all
    verify (IPv4 header; TCP/UDP/ICMP over the pseudo-header)."""
    pkt = bytes(pkt)
    if pkt[0] >> 4 == 6:
        p = ipv6.parse(pkt)
        src, dst, proto, ttl, body = p.src, p.dst, p.proto, p.hop_limit, p.payload
    else:
        p = ipv4.parse(pkt)  # verifies the header checksum
        src, dst, proto, ttl, body = p.src, p.dst, p.proto, p.ttl, p.payload
    if proto == 17:
        d = udp.parse(body, src, dst)
        return (17, s(src), d.src_port, s(dst), d.dst_port, ttl)
    if proto == 6:
        t = tcp.parse(body, src, dst)
        return (6, s(src), t.src_port, s(dst), t.dst_port, ttl)
    if proto == 1:
        m = icmp.parse(body)
        return (1, s(src), m.ident, s(dst), m.type, ttl)
    if proto == 58:
        m = icmpv6.parse(body, src, dst)
        return (58, s(src), m.echo()[0] if m.type in (128, 129) else m.code, s(dst), m.type, ttl)
    return (proto, s(src), 0, s(dst), 0, ttl)


def fwd(v, egress: str) -> bytes:
    assert isinstance(v, Forward), v
    assert v.egress == egress
    return bytes(v.packet)


def dropped(v, reason: str, reply: bool | None = None) -> Drop:
    assert isinstance(v, Drop), v
    assert v.reason == reason, v
    if reply is not None:
        assert (v.reply is not None) == reply, v
    return v


def unreachable(reply: bytes, code: int, src: str, dst: str, quoted: bytes) -> None:
    p = ipv4.parse(reply)
    assert (s(p.src), s(p.dst), p.proto) == (src, dst, 1)
    m = icmp.parse(p.payload)
    assert (m.type, m.code) == (icmp.DEST_UNREACHABLE, code)
    assert bytes(m.payload) == icmp.quote(quoted)


# -- masquerade ------------------------------------------------------------------


def test_udp_masquerade_round_trip_checksums_ttl():
    e = engine()
    out = fwd(e.handle(0, C1, udp_pkt(C1, R, 40000, 9999, ttl=64)), UPLINK)
    assert flow(out) == (17, UP, 40000, R, 9999, 63)  # client port kept when free
    back = fwd(e.handle(S, UPLINK, udp_pkt(R, UP, 9999, 40000, b"answer")), C1)
    assert flow(back) == (17, R, 9999, C1, 40000, 63)
    assert udp.parse(ipv4.parse(back).payload).payload.tobytes() == b"answer"
    assert e.counters["forwarded"] == 2 and e.counters["conntrack.new"] == 1


def test_tcp_masquerade_round_trip_and_established():
    e = engine()
    syn = fwd(e.handle(0, C1, tcp_pkt(C1, R, 50000, 443, tcp.SYN)), UPLINK)
    assert flow(syn)[:5] == (6, UP, 50000, R, 443)
    [c] = e.conntrack
    assert not c.established and c.deadline == TCP_TIMEOUT_NS
    synack = fwd(e.handle(S, UPLINK, tcp_pkt(R, UP, 443, 50000, tcp.SYN | tcp.ACK)), C1)
    assert flow(synack)[:5] == (6, R, 443, C1, 50000)
    assert c.established and c.deadline == S + TCP_ESTABLISHED_TIMEOUT_NS
    data = fwd(e.handle(2 * S, C1, tcp_pkt(C1, R, 50000, 443, tcp.ACK, b"x" * 1000)), UPLINK)
    assert flow(data)[:5] == (6, UP, 50000, R, 443)
    fwd(e.handle(3 * S, C1, tcp_pkt(C1, R, 50000, 443, tcp.FIN | tcp.ACK)), UPLINK)
    assert not c.established and c.deadline == 3 * S + TCP_TIMEOUT_NS


def test_icmp_echo_masquerade_round_trip():
    e = engine()
    out = fwd(e.handle(0, C1, ping(C1, R, ident=77)), UPLINK)
    assert flow(out) == (1, UP, 77, R, 8, 63)
    back = fwd(e.handle(1, UPLINK, ping(R, UP, ident=77, reply=True)), C1)
    assert flow(back) == (1, R, 77, C1, 0, 63)
    [c] = e.conntrack
    assert c.deadline == 1 + ICMP_TIMEOUT_NS


def test_port_and_id_collisions_get_new_ones_and_replies_find_their_client():
    e = engine(SETUP, C1, C2)
    o1 = flow(fwd(e.handle(0, C1, udp_pkt(C1, R, 5000, 53)), UPLINK))
    o2 = flow(fwd(e.handle(0, C2, udp_pkt(C2, R, 5000, 53)), UPLINK))
    assert o1[2] == 5000 and o2[2] != 5000 and 1024 <= o2[2] <= 65535
    # the same client port to another remote needs no new port
    o3 = flow(fwd(e.handle(0, C2, udp_pkt(C2, R2, 5000, 53)), UPLINK))
    assert o3[2] == 5000
    assert flow(fwd(e.handle(1, UPLINK, udp_pkt(R, UP, 53, o2[2])), C2))[3:5] == (C2, 5000)
    assert flow(fwd(e.handle(1, UPLINK, udp_pkt(R, UP, 53, 5000)), C1))[3:5] == (C1, 5000)
    p1 = flow(fwd(e.handle(0, C1, ping(C1, R, ident=9)), UPLINK))
    p2 = flow(fwd(e.handle(0, C2, ping(C2, R, ident=9)), UPLINK))
    assert p1[2] == 9 and p2[2] != 9
    assert flow(fwd(e.handle(1, UPLINK, ping(R, UP, ident=p2[2], reply=True)), C2))[2] == 9


def test_ports_exhausted_for_other_protocols():
    e = engine(SETUP, C1, C2)
    gre1 = ip_packet(C1, R, 47, b"\x00\x00\x08\x00" + b"x" * 20)
    gre2 = ip_packet(C2, R, 47, b"\x00\x00\x08\x00" + b"y" * 20)
    out = fwd(e.handle(0, C1, gre1), UPLINK)
    assert flow(out) == (47, UP, 0, R, 0, 63)
    assert flow(fwd(e.handle(1, UPLINK, ip_packet(R, UP, 47, b"\0\0\x08\0reply")), C1))[3] == C1
    dropped(e.handle(0, C2, gre2), "nat exhausted")  # one GRE flow per remote


def test_gso_super_packet_one_verdict_checksum_right():
    e = engine()
    big = tcp_pkt(C1, R, 40001, 5201, tcp.ACK, bytes(range(256)) * 255)  # 65,320 bytes
    assert len(big) > 65000
    out = fwd(e.handle(0, C1, big), UPLINK)
    assert flow(out)[:5] == (6, UP, 40001, R, 5201) and len(out) == len(big)


def test_in_place_edits_the_callers_buffer():
    e = engine()
    buf = bytearray(udp_pkt(C1, R, 40000, 9) + b"\0" * 6)  # with Ethernet-style padding
    v = e.handle(0, C1, buf, in_place=True)
    assert isinstance(v.packet, memoryview) and v.packet.obj is buf
    assert flow(v.packet)[1] == UP and bytes(buf[12:16]) == a(UP)
    assert len(v.packet) == len(buf) - 6
    # default: the caller's buffer is not touched
    buf2 = bytearray(udp_pkt(C1, R, 40002, 9))
    before = bytes(buf2)
    v2 = e.handle(0, C1, buf2)
    assert bytes(buf2) == before and isinstance(v2.packet, bytearray)


# -- partial checksums (virtio-net NEEDS_CSUM) ---------------------------------------


@pytest.mark.parametrize("proto", [6, 17])
def test_partial_checksum_updated_as_a_pseudo_header_sum(proto):
    e = engine()
    payload = b"z" * 3000
    if proto == 17:
        seg = bytearray(udp.build(40000, 9, payload, a(C1), a(R)))
        at = 6
    else:
        seg = bytearray(tcp.build(40000, 9, 1, 1, tcp.ACK, 1000, payload, src=a(C1), dst=a(R)))
        at = 16
    # what a sender with checksum offload puts there: the pseudo-header sum, not complemented
    seg[at:at + 2] = checksum.pseudo(a(C1), a(R), proto, len(seg)).to_bytes(2, "big")
    out = fwd(e.handle(0, C1, ipv4.build(a(C1), a(R), proto, seg), partial_csum=True), UPLINK)
    body = bytearray(ipv4.parse(out).payload)
    field = int.from_bytes(body[at:at + 2], "big")
    assert field == checksum.pseudo(a(UP), a(R), proto, len(seg))
    # what the device then does: sum header and payload from that seed
    body[at:at + 2] = b"\0\0"
    body[at:at + 2] = checksum.checksum(body, field).to_bytes(2, "big")
    assert checksum.verify(body, checksum.pseudo(a(UP), a(R), proto, len(body)))
    # and on the way back, with the port changed too
    e2 = engine(SETUP, C1, C2)
    e2.handle(0, C1, udp_pkt(C1, R, 7000, 9))
    seg2 = bytearray(udp.build(7000, 9, payload, a(C2), a(R)))
    seg2[6:8] = checksum.pseudo(a(C2), a(R), 17, len(seg2)).to_bytes(2, "big")
    out2 = fwd(e2.handle(0, C2, ipv4.build(a(C2), a(R), 17, seg2), partial_csum=True), UPLINK)
    body2 = ipv4.parse(out2).payload
    assert int.from_bytes(body2[0:2], "big") != 7000  # port re-picked...
    assert int.from_bytes(body2[6:8], "big") == checksum.pseudo(a(UP), a(R), 17, len(seg2))


# -- anti-spoofing, unknown clients, the firewall itself --------------------------------


def test_spoofed_source_dropped_silently():
    e = engine(SETUP, C1, C2)
    dropped(e.handle(0, C1, udp_pkt(C2, R, 1, 2)), "spoofed", reply=False)
    dropped(e.handle(0, C1, udp_pkt("10.137.0.99", R, 1, 2)), "spoofed", reply=False)
    dropped(e.handle(0, "10.137.0.99", udp_pkt("10.137.0.99", R, 1, 2)), "unknown client")
    assert e.counters["drop.spoofed"] == 2


def test_uplink_with_internal_source_is_spoofed():
    e = engine()
    e.handle(0, C1, udp_pkt(C1, R, 4000, 53))
    for src in (C1, CGW, UP):
        dropped(e.handle(0, UPLINK, udp_pkt(src, UP, 53, 4000)), "spoofed", reply=False)


def test_qubes_default_dns_upstream_is_the_virtual_address_again():
    # in Qubes the firewall VM's own resolvers are 10.139.1.1/2 too (its netvm redirects them)
    e = engine(FilterSetup(uplink_ip=UP, uplink_gateway=GW, client_gateway=CGW,
                           virtual_dns=(VDNS1, VDNS2), upstream_dns=(VDNS1, VDNS2)))
    out = fwd(e.handle(0, C1, udp_pkt(C1, VDNS2, 5000, 53)), UPLINK)
    assert flow(out)[:5] == (17, UP, 5000, VDNS2, 53)
    back = fwd(e.handle(1, UPLINK, udp_pkt(VDNS2, UP, 53, 5000)), C1)
    assert flow(back)[:5] == (17, VDNS2, 53, C1, 5000)


def test_to_firewall_dropped_with_host_prohibited():
    e = engine()
    for dst in (CGW, UP, VDNS1):
        pkt = udp_pkt(C1, dst, 4000, 123)
        d = dropped(e.handle(0, C1, pkt), "to firewall", reply=True)
        unreachable(d.reply, icmp.HOST_PROHIBITED, CGW, C1, pkt)
    dropped(e.handle(0, C1, tcp_pkt(C1, VDNS1, 4000, 80, tcp.SYN)), "to firewall")
    dropped(e.handle(0, C1, ping(C1, UP)), "to firewall")
    assert len(e.conntrack) == 0


def test_echo_to_client_gateway_answered():
    e = engine()
    v = e.handle(0, C1, ping(C1, CGW, ident=5, seq=9, data=b"ping data"))
    reply = fwd(v, C1)
    p = ipv4.parse(reply)
    assert (s(p.src), s(p.dst)) == (CGW, C1)
    m = icmp.parse(p.payload)
    assert (m.type, m.ident, m.seq, bytes(m.payload)) == (0, 5, 9, b"ping data")
    assert e.counters["local.echo"] == 1 and len(e.conntrack) == 0


def test_uplink_unsolicited_dropped_silently():
    e = engine()
    for pkt in (udp_pkt(R, UP, 53, 4000), tcp_pkt(R, UP, 80, 5000, tcp.SYN), ping(R, UP),
                udp_pkt(R, C1, 1, 2), ping(R, UP, reply=True)):
        dropped(e.handle(0, UPLINK, pkt), "no connection", reply=False)
    assert e.counters["drop.no connection"] == 5


def test_multicast_broadcast_martians():
    e = engine()
    for dst in ("255.255.255.255", "224.0.0.251", "239.1.1.1"):
        dropped(e.handle(0, C1, udp_pkt(C1, dst, 5353, 5353)), "multicast", reply=False)
    for dst in ("127.0.0.1", "0.0.0.1", C1):
        dropped(e.handle(0, C1, udp_pkt(C1, dst, 1, 2)), "martian", reply=False)


# -- rules -------------------------------------------------------------------------


def test_no_rules_denied_with_admin_prohibited():
    e = Engine(SETUP)
    e.attach(C1)
    pkt = tcp_pkt(C1, R, 4000, 80, tcp.SYN)
    d = dropped(e.handle(0, C1, pkt), "no rules", reply=True)
    unreachable(d.reply, icmp.ADMIN_PROHIBITED, CGW, C1, pkt)


def test_icmp_errors_are_rate_limited_as_linux_does():
    e = Engine(FilterSetup(**{**SETUP.__dict__, "icmp_error_rate": 100}))  # burst 5
    e.attach(C1)
    e.set_rules(rules(C1, policy="drop"))
    pkt = tcp_pkt(C1, R, 4000, 80, tcp.SYN)
    got = [e.handle(0, C1, pkt).reply is not None for _ in range(8)]
    assert got == [True] * 5 + [False] * 3
    assert e.counters["icmp.rate_limited"] == 3 and e.counters["drop.policy"] == 8
    # 100 per second: one token back every 10 ms, no more than the burst after a pause
    assert dropped(e.handle(S // 100, C1, pkt), "policy", reply=True)
    assert dropped(e.handle(S // 100, C1, pkt), "policy", reply=False)
    assert [e.handle(10 * S, C1, pkt).reply is not None for _ in range(6)] == [True] * 5 + [False]
    # a limit of 0 is none
    free = Engine(FilterSetup(**{**SETUP.__dict__, "icmp_error_rate": 0}))
    free.attach(C1)
    free.set_rules(rules(C1, policy="drop"))
    assert all(free.handle(0, C1, pkt).reply is not None for _ in range(2000))


def test_rule_and_policy_drops_carry_reason_and_number():
    e = Engine(SETUP)
    e.attach(C1)
    e.set_rules(rules(C1, "action=accept proto=tcp dstports=443-443",
                      "action=drop dst4=10.200.7.0/24 proto=udp",
                      "action=accept proto=icmp icmptype=8", policy="drop"))
    fwd(e.handle(0, C1, tcp_pkt(C1, R, 4000, 443, tcp.SYN)), UPLINK)
    d = dropped(e.handle(0, C1, udp_pkt(C1, R, 4000, 443)), "rule", reply=True)
    assert d.rule == 1
    unreachable(d.reply, icmp.ADMIN_PROHIBITED, CGW, C1, udp_pkt(C1, R, 4000, 443))
    fwd(e.handle(0, C1, ping(C1, R)), UPLINK)
    d = dropped(e.handle(0, C1, tcp_pkt(C1, R, 4000, 80, tcp.SYN)), "policy", reply=True)
    assert d.rule is None
    assert e.counters["drop.rule"] == 1 and e.counters["drop.policy"] == 1


def test_malformed_rules_deny_all_others_unaffected():
    e = engine(SETUP, C1, C2)
    bad = parse_client_rules(C1, {"policy": "accept", "0000": "action=accept bogus=1"})
    assert bad.error
    e.set_rules(bad)
    dropped(e.handle(0, C1, udp_pkt(C1, R, 1, 2)), "rules error", reply=True)
    fwd(e.handle(0, C2, udp_pkt(C2, R, 1, 2)), UPLINK)


def test_dsthost_rules_match_once_resolved():
    e = Engine(SETUP)
    e.attach(C1)
    r = rules(C1, "action=accept dsthost=svc.example proto=tcp")
    e.set_rules(r)
    dropped(e.handle(0, C1, tcp_pkt(C1, R, 4000, 80, tcp.SYN)), "policy")
    e.set_rules(resolve_dsthosts(r, {"svc.example": [R, "2001:db8::7"]}))
    fwd(e.handle(0, C1, tcp_pkt(C1, R, 4000, 80, tcp.SYN)), UPLINK)
    dropped(e.handle(0, C1, tcp_pkt(C1, R2, 4000, 80, tcp.SYN)), "policy")


def test_no_ttl_answer_for_denied_packets():
    e = Engine(SETUP)
    e.attach(C1)
    e.set_rules(rules(C1, policy="drop"))
    dropped(e.handle(0, C1, udp_pkt(C1, R, 1, 2, ttl=1)), "policy")


# -- DNS ---------------------------------------------------------------------------


@pytest.mark.parametrize("vdns,updns", [(VDNS1, UPDNS1), (VDNS2, UPDNS2)])
def test_dns_redirected_to_upstream_and_back(vdns, updns):
    e = Engine(SETUP)
    e.attach(C1)
    e.set_rules(rules(C1, "action=accept specialtarget=dns", policy="drop"))
    out = fwd(e.handle(0, C1, udp_pkt(C1, vdns, 33333, 53, b"query")), UPLINK)
    assert flow(out)[:5] == (17, UP, 33333, updns, 53)
    back = fwd(e.handle(1, UPLINK, udp_pkt(updns, UP, 53, 33333, b"answer")), C1)
    assert flow(back)[:5] == (17, vdns, 53, C1, 33333)
    syn = fwd(e.handle(2, C1, tcp_pkt(C1, vdns, 33334, 53, tcp.SYN)), UPLINK)
    assert flow(syn)[:5] == (6, UP, 33334, updns, 53)
    synack = fwd(e.handle(3, UPLINK, tcp_pkt(updns, UP, 53, 33334, tcp.SYN | tcp.ACK)), C1)
    assert flow(synack)[:5] == (6, vdns, 53, C1, 33334)
    # only DNS: other traffic upstream falls to the policy
    dropped(e.handle(0, C1, udp_pkt(C1, updns, 33335, 53)), "policy")


def test_dns_denied_without_a_rule_and_needs_an_upstream():
    e = Engine(SETUP)
    e.attach(C1)
    e.set_rules(rules(C1, "action=accept proto=tcp", policy="drop"))
    dropped(e.handle(0, C1, udp_pkt(C1, VDNS1, 3000, 53)), "policy", reply=True)
    fwd(e.handle(0, C1, tcp_pkt(C1, VDNS1, 3000, 53, tcp.SYN)), UPLINK)  # any-tcp rule covers it
    e2 = engine(FilterSetup(uplink_ip=UP, uplink_gateway=GW, client_gateway=CGW,
                            virtual_dns=(VDNS1,)))
    dropped(e2.handle(0, C1, udp_pkt(C1, VDNS1, 3000, 53)), "no dns")


# -- client to client --------------------------------------------------------------


def test_client_to_client_filtered_not_nated_replies_pass():
    e = Engine(SETUP)
    for c in (C1, C2):
        e.attach(c)
    e.set_rules(rules(C1, f"action=accept dst4={C2}/32 proto=tcp dstports=22-22"))
    e.set_rules(rules(C2, policy="drop"))
    out = fwd(e.handle(0, C1, tcp_pkt(C1, C2, 4000, 22, tcp.SYN)), C2)
    assert flow(out) == (6, C1, 4000, C2, 22, 63)
    back = fwd(e.handle(1, C2, tcp_pkt(C2, C1, 22, 4000, tcp.SYN | tcp.ACK)), C1)
    assert flow(back)[:5] == (6, C2, 22, C1, 4000)  # C2's deny-all does not apply to replies
    dropped(e.handle(2, C2, tcp_pkt(C2, C1, 5000, 22, tcp.SYN)), "policy")
    dropped(e.handle(2, C1, tcp_pkt(C1, C2, 4001, 80, tcp.SYN)), "policy")


# -- ICMP errors about tracked flows --------------------------------------------------


def test_icmp_error_from_upstream_translated_back():
    e = engine()
    orig = udp_pkt(C1, R, 40000, 9999, b"data")
    e.handle(0, C1, udp_pkt(C1, R, 1, 1))  # another flow, unrelated
    sent = fwd(e.handle(0, C1, orig), UPLINK)
    for src in (R, GW):  # from the remote itself, or from a router on the way
        err = ip_packet(src, UP, 1, icmp.dest_unreachable(icmp.PORT_UNREACHABLE, sent))
        back = fwd(e.handle(1, UPLINK, err), C1)
        p = ipv4.parse(back)
        assert (s(p.src), s(p.dst)) == (src, C1)
        m = icmp.parse(p.payload)  # the ICMP checksum verifies
        assert (m.type, m.code) == (3, 3)
        inner = icmp.quoted_header(m)
        assert (s(inner.src), s(inner.dst)) == (C1, R)
        assert checksum.verify(bytes(m.payload[:inner.header_length]))  # quoted header
        # the quoted UDP header is the client's own again, checksum and all
        assert bytes(inner.payload[:8]) == orig[20:28]
    assert e.counters["forwarded.related"] == 2


def test_icmp_error_about_nated_ping_and_tcp():
    e = engine()
    e.handle(0, C2, ping(C2, R, ident=300))  # unknown client: nothing
    e.attach(C2)
    e.set_rules(rules(C2, policy="accept"))
    e.handle(0, C2, ping(C2, R, ident=300))  # takes identifier 300 first
    echo = ping(C1, R, ident=300)
    sent = fwd(e.handle(0, C1, echo), UPLINK)
    assert flow(sent)[2] != 300
    back = fwd(e.handle(1, UPLINK, ip_packet(GW, UP, 1, icmp.time_exceeded(0, sent))), C1)
    inner = icmp.quoted_header(icmp.parse(ipv4.parse(back).payload))
    assert s(inner.src) == C1
    assert bytes(inner.payload[:8]) == echo[20:28]  # identifier and its checksum restored
    syn = tcp_pkt(C1, R, 4444, 80, tcp.SYN)
    sent = fwd(e.handle(0, C1, syn), UPLINK)
    err = ip_packet(GW, UP, 1, icmp.dest_unreachable(icmp.FRAGMENTATION_NEEDED, sent, mtu=1400,
                                                     extra=40))
    back = fwd(e.handle(1, UPLINK, err), C1)
    m = icmp.parse(ipv4.parse(back).payload)
    inner = icmp.quoted_header(m)
    assert m.mtu == 1400 and bytes(inner.payload[:20]) == syn[20:40]  # checksum restored too


def test_icmp_error_from_client_about_a_reply():
    e = engine()
    e.handle(0, C1, udp_pkt(C1, R, 40000, 53))
    e.handle(0, C1, udp_pkt(C1, "10.200.7.9", 40000, 53))
    e2_reply = udp_pkt(R, UP, 53, 40000)
    got = fwd(e.handle(1, UPLINK, e2_reply), C1)
    err = ip_packet(C1, R, 1, icmp.dest_unreachable(icmp.PORT_UNREACHABLE, got))
    out = fwd(e.handle(2, C1, err), UPLINK)
    p = ipv4.parse(out)
    assert (s(p.src), s(p.dst)) == (UP, R)
    inner = icmp.quoted_header(icmp.parse(p.payload))
    assert (s(inner.src), s(inner.dst)) == (R, UP)
    assert bytes(inner.payload[:8]) == e2_reply[20:28]


def test_unrelated_icmp_errors_dropped():
    e = engine()
    stray = udp_pkt(UP, R, 1234, 80)
    dropped(e.handle(0, UPLINK, ip_packet(R, UP, 1, icmp.dest_unreachable(3, stray))),
            "no connection", reply=False)
    dropped(e.handle(0, C1, ip_packet(C1, R, 1, icmp.dest_unreachable(3, udp_pkt(R, C1, 1, 2)))),
            "invalid", reply=False)
    dropped(e.handle(0, C1, ping(C1, R, reply=True)), "invalid")
    dropped(e.handle(0, UPLINK, ip_packet(R, UP, 1, icmp.dest_unreachable(3, b"\x45" + bytes(5)))),
            "invalid")


# -- TTL -------------------------------------------------------------------------------


def test_ttl_expiry_answered_and_not_tracked():
    e = engine()
    pkt = udp_pkt(C1, R, 4000, 53, ttl=1)
    d = dropped(e.handle(0, C1, pkt), "ttl", reply=True)
    p = ipv4.parse(d.reply)
    m = icmp.parse(p.payload)
    assert (s(p.src), s(p.dst), m.type, m.code) == (CGW, C1, icmp.TIME_EXCEEDED, 0)
    assert bytes(m.payload) == icmp.quote(pkt)
    assert len(e.conntrack) == 0
    fwd(e.handle(0, C1, udp_pkt(C1, R, 4000, 53, ttl=2)), UPLINK)
    d = dropped(e.handle(1, UPLINK, udp_pkt(R, UP, 53, 4000, ttl=1)), "ttl", reply=True)
    assert s(ipv4.parse(d.reply).src) == UP


# -- conntrack: timeouts, LRU, rule changes, detach --------------------------------------


def test_udp_timeouts_plain_and_assured():
    e = engine()
    e.handle(0, C1, udp_pkt(C1, R, 4000, 53))
    dropped(e.handle(UDP_TIMEOUT_NS, UPLINK, udp_pkt(R, UP, 53, 4000)), "no connection")
    assert e.counters["conntrack.expired"] == 1
    e.handle(0, C1, udp_pkt(C1, R, 4001, 53))
    fwd(e.handle(UDP_TIMEOUT_NS - 1, UPLINK, udp_pkt(R, UP, 53, 4001)), C1)  # now assured
    t = UDP_TIMEOUT_NS - 1 + UDP_ASSURED_TIMEOUT_NS
    fwd(e.handle(t - 1, UPLINK, udp_pkt(R, UP, 53, 4001)), C1)
    dropped(e.handle(t - 1 + UDP_ASSURED_TIMEOUT_NS, UPLINK, udp_pkt(R, UP, 53, 4001)),
            "no connection")


def test_tcp_and_icmp_timeouts():
    e = engine()
    e.handle(0, C1, tcp_pkt(C1, R, 4000, 80, tcp.SYN))
    dropped(e.handle(TCP_TIMEOUT_NS, UPLINK, tcp_pkt(R, UP, 80, 4000, tcp.SYN | tcp.ACK)),
            "no connection")
    e.handle(0, C1, tcp_pkt(C1, R, 4001, 80, tcp.SYN))
    e.handle(1, UPLINK, tcp_pkt(R, UP, 80, 4001, tcp.SYN | tcp.ACK))
    fwd(e.handle(TCP_ESTABLISHED_TIMEOUT_NS, UPLINK, tcp_pkt(R, UP, 80, 4001)), C1)
    dropped(e.handle(2 * TCP_ESTABLISHED_TIMEOUT_NS + 1, UPLINK, tcp_pkt(R, UP, 80, 4001)),
            "no connection")
    e.handle(0, C1, ping(C1, R, ident=1))
    fwd(e.handle(ICMP_TIMEOUT_NS - 1, UPLINK, ping(R, UP, ident=1, reply=True)), C1)
    dropped(e.handle(2 * ICMP_TIMEOUT_NS, UPLINK, ping(R, UP, ident=1, reply=True)),
            "no connection")


def test_expire_sweeps_the_table():
    e = engine()
    for port in range(10):
        e.handle(0, C1, udp_pkt(C1, R, 2000 + port, 53))
    e.handle(0, C1, tcp_pkt(C1, R, 3000, 80, tcp.SYN))
    assert e.expire(UDP_TIMEOUT_NS) == 10 and len(e.conntrack) == 1
    assert e.conntrack.next_deadline() == TCP_TIMEOUT_NS


def test_lru_bound_evicts_least_recently_used():
    e = Engine(FilterSetup(uplink_ip=UP, uplink_gateway=GW, client_gateway=CGW,
                           max_connections=3))
    e.attach(C1)
    e.set_rules(rules(C1, policy="accept"))
    for port in (1001, 1002, 1003):
        e.handle(0, C1, udp_pkt(C1, R, port, 53))
    fwd(e.handle(1, C1, udp_pkt(C1, R, 1001, 53)), UPLINK)  # 1001 is now the most recent
    e.handle(2, C1, udp_pkt(C1, R, 1004, 53))  # evicts 1002
    assert len(e.conntrack) == 3 and e.counters["conntrack.evicted"] == 1
    dropped(e.handle(3, UPLINK, udp_pkt(R, UP, 53, 1002)), "no connection")
    for port in (1001, 1003, 1004):
        fwd(e.handle(3, UPLINK, udp_pkt(R, UP, 53, port)), C1)
    assert Engine(SETUP).conntrack.max_connections == 5000


def test_rule_change_keeps_established_connections_unless_recheck():
    e = engine()
    e.handle(0, C1, tcp_pkt(C1, R, 4000, 80, tcp.SYN))
    e.handle(1, UPLINK, tcp_pkt(R, UP, 80, 4000, tcp.SYN | tcp.ACK))
    e.handle(0, C1, udp_pkt(C1, R, 4001, 53))
    e.set_rules(rules(C1, "action=accept proto=udp", policy="drop"))
    fwd(e.handle(2, C1, tcp_pkt(C1, R, 4000, 80, tcp.ACK, b"more")), UPLINK)  # as Qubes does
    fwd(e.handle(2, UPLINK, tcp_pkt(R, UP, 80, 4000, tcp.ACK, b"reply")), C1)
    dropped(e.handle(2, C1, tcp_pkt(C1, R, 4002, 80, tcp.SYN)), "policy")  # new ones are denied
    e.set_rules(rules(C1, "action=accept proto=udp", policy="drop"), recheck=True)
    dropped(e.handle(3, UPLINK, tcp_pkt(R, UP, 80, 4000, tcp.ACK)), "no connection")
    fwd(e.handle(3, UPLINK, udp_pkt(R, UP, 53, 4001)), C1)  # still admitted: kept


def test_rule_change_of_one_client_leaves_others_alone():
    e = engine(SETUP, C1, C2)
    e.handle(0, C2, udp_pkt(C2, R, 4000, 53))
    e.set_rules(rules(C2, policy="drop"), recheck=True)
    e.set_rules(rules(C1, policy="drop"), recheck=True)
    dropped(e.handle(1, UPLINK, udp_pkt(R, UP, 53, 4000)), "no connection")
    e2 = engine(SETUP, C1, C2)
    e2.handle(0, C2, udp_pkt(C2, R, 4000, 53))
    e2.set_rules(rules(C1, policy="drop"), recheck=True)
    fwd(e2.handle(1, UPLINK, udp_pkt(R, UP, 53, 4000)), C2)


def test_detach_forgets_connections_and_rules():
    e = engine(SETUP, C1, C2)
    e.handle(0, C1, udp_pkt(C1, R, 4000, 53))
    e.handle(0, C2, udp_pkt(C2, C1, 4000, 53))
    e.handle(0, C2, udp_pkt(C2, R, 4000, 53))
    e.detach(C1)
    e.detach(C1)  # twice is fine
    dropped(e.handle(1, UPLINK, udp_pkt(R, UP, 53, 4000)), "no connection")
    assert len(e.conntrack) == 1  # C2 -> R only
    assert e.rules(C1) is None
    dropped(e.handle(1, C1, udp_pkt(C1, R, 4000, 53)), "unknown client")
    e.attach(C1)
    dropped(e.handle(1, C1, udp_pkt(C1, R, 4000, 53)), "no rules")


def test_set_rules_before_attach():
    e = Engine(SETUP)
    e.set_rules(rules(C1, policy="accept"))
    e.attach(C1)
    fwd(e.handle(0, C1, udp_pkt(C1, R, 1, 2)), UPLINK)


def test_conntrack_rejects_bad_bound():
    with pytest.raises(ValueError):
        Conntrack(0)


# -- fragments ------------------------------------------------------------------------


def fragments(src, dst, sport, dport, data: bytes, ident=42):
    dgram = udp.build(sport, dport, data, a(src), a(dst))
    first = ipv4.build(a(src), a(dst), 17, dgram[:16], ident=ident, flags=ipv4.FLAG_MF)
    rest = ipv4.build(a(src), a(dst), 17, dgram[16:], ident=ident, frag_offset=16)
    return dgram, first, rest


def test_later_fragments_follow_the_first():
    e = engine()
    dgram, first, rest = fragments(C1, R, 4000, 53, b"x" * 40)
    dropped(e.handle(0, C1, rest), "fragment", reply=False)  # before its first
    o1 = fwd(e.handle(0, C1, first), UPLINK)
    o2 = fwd(e.handle(0, C1, rest), UPLINK)
    p1, p2 = ipv4.parse(o1), ipv4.parse(o2)
    assert s(p1.src) == s(p2.src) == UP and p2.frag_offset == 16 and p2.ttl == 63
    whole = bytes(p1.payload) + bytes(p2.payload)
    assert udp.parse(whole, p1.src, p1.dst).src_port == 4000  # the checksum spans both
    # and the replies, fragmented too
    _, rfirst, rrest = fragments(R, UP, 53, 4000, b"y" * 40, ident=7)
    b1 = fwd(e.handle(1, UPLINK, rfirst), C1)
    b2 = fwd(e.handle(1, UPLINK, rrest), C1)
    q1, q2 = ipv4.parse(b1), ipv4.parse(b2)
    assert udp.parse(bytes(q1.payload) + bytes(q2.payload), q1.src, q1.dst).dst_port == 4000
    assert s(q2.dst) == C1
    # the record times out
    dropped(e.handle(engine_mod.FRAGMENT_TIMEOUT_NS + 1, UPLINK, rrest), "fragment")


def test_tiny_and_overlapping_tcp_fragments_dropped():
    e = engine()
    seg = tcp.build(4000, 80, 1, 1, tcp.SYN, 100, b"", src=a(C1), dst=a(R))
    first = ipv4.build(a(C1), a(R), 6, seg[:8], ident=1, flags=ipv4.FLAG_MF)
    dropped(e.handle(0, C1, first), "malformed")  # no room for the TCP header
    at8 = ipv4.build(a(C1), a(R), 6, seg[8:], ident=1, frag_offset=8)
    dropped(e.handle(0, C1, at8), "fragment")


# -- malformed -----------------------------------------------------------------------


def test_malformed_packets():
    e = engine()
    good = udp_pkt(C1, R, 1, 2)
    bad_ck = bytearray(good)
    bad_ck[10] ^= 0xFF
    bad_icmp = bytearray(ping(C1, R))
    bad_icmp[-1] ^= 1
    cut_udp = ipv4.build(a(C1), a(R), 17, b"\x00\x01\x00")
    for pkt in (b"", b"\x45", b"\x00" * 40, bytes(bad_ck), bytes(bad_icmp), cut_udp, good[:25],
                b"\x75" + good[1:]):
        dropped(e.handle(0, C1, pkt), "malformed", reply=False)
        dropped(e.handle(0, UPLINK, pkt), "malformed", reply=False)
    assert e.counters["drop.malformed"] == 16


# -- IPv6 ----------------------------------------------------------------------------


def test_ipv6_dropped_without_ipv6_setup():
    e = engine()
    dropped(e.handle(0, C1, udp_pkt(C61, R6, 1, 2)), "ipv6", reply=False)
    dropped(e.handle(0, UPLINK, udp_pkt(R6, UP6, 1, 2)), "ipv6", reply=False)
    assert not e.ipv6


def test_ipv6_filtered_and_masqueraded_like_ipv4():
    e = engine(SETUP6, C1, C61)
    assert e.ipv6
    out = fwd(e.handle(0, C61, udp_pkt(C61, R6, 4000, 53, ttl=5)), UPLINK)
    assert flow(out) == (17, UP6, 4000, R6, 53, 4)
    back = fwd(e.handle(1, UPLINK, udp_pkt(R6, UP6, 53, 4000)), C61)
    assert flow(back)[:5] == (17, R6, 53, C61, 4000)
    out = fwd(e.handle(0, C61, ping(C61, R6, ident=6)), UPLINK)
    assert flow(out)[:5] == (58, UP6, 6, R6, 128)
    back = fwd(e.handle(1, UPLINK, ping(R6, UP6, ident=6, reply=True)), C61)
    assert flow(back)[:5] == (58, R6, 6, C61, 129)
    reply = fwd(e.handle(0, C61, ping(C61, CGW6, ident=1)), C61)
    assert flow(reply)[:5] == (58, CGW6, 1, C61, 129)
    dropped(e.handle(0, C61, udp_pkt("fe80::1", R6, 1, 2)), "spoofed")
    dropped(e.handle(0, C61, udp_pkt(C61, "ff02::1", 1, 2)), "multicast")
    dropped(e.handle(0, C61, udp_pkt(C61, "fe80::1", 1, 2)), "martian")
    ns = ip_packet(C61, CGW6, 58, icmpv6.build(icmpv6.NEIGHBOR_SOLICITATION, 0, bytes(20),
                                               a(C61), a(CGW6)))
    dropped(e.handle(0, C61, ns), "icmp")
    dropped(e.handle(0, UPLINK, udp_pkt(R6, UP6, 9, 9)), "no connection")


def test_ipv6_rules_denials_and_ttl():
    e = Engine(SETUP6)
    e.attach(C61)
    e.set_rules(rules(C61, "action=accept dst6=fd00:7::/64 proto=tcp", policy="drop"))
    fwd(e.handle(0, C61, tcp_pkt(C61, R6, 4000, 22, tcp.SYN)), UPLINK)
    pkt = udp_pkt(C61, R6, 4000, 22)
    d = dropped(e.handle(0, C61, pkt), "policy", reply=True)
    p = ipv6.parse(d.reply)
    m = icmpv6.parse(p.payload, p.src, p.dst)
    assert (s(p.src), s(p.dst), m.type, m.code) == (CGW6, C61, 1, 1)
    assert bytes(m.body[4:]) == pkt
    d = dropped(e.handle(0, C61, tcp_pkt(C61, R6, 4001, 22, tcp.SYN, ttl=1)), "ttl", reply=True)
    assert icmpv6.parse(ipv6.parse(d.reply).payload).type == icmpv6.TIME_EXCEEDED


def test_ipv6_icmp_error_translated():
    e = engine(SETUP6, C61)
    orig = udp_pkt(C61, R6, 4000, 53)
    sent = fwd(e.handle(0, C61, orig), UPLINK)
    body = b"\0\0\0\0" + sent
    err = ip_packet(R6, UP6, 58, icmpv6.build(icmpv6.DEST_UNREACHABLE, 4, body, a(R6), a(UP6)))
    back = fwd(e.handle(1, UPLINK, err), C61)
    p = ipv6.parse(back)
    m = icmpv6.parse(p.payload, p.src, p.dst)  # checksum over the new pseudo-header
    assert s(p.dst) == C61 and m.type == 1
    assert bytes(m.body[4:]) == orig[:7] + bytes([63]) + orig[8:]  # hop limit as forwarded


# -- the whole thing never raises; NAT round trips -------------------------------------


def test_engine_modules_import_no_io():
    forbidden = {"socket", "asyncio", "time", "random", "os", "select", "selectors", "secrets"}
    for mod in (engine_mod, ct_mod, rules_mod, rewrite_mod):
        for node in ast.walk(ast.parse(Path(mod.__file__).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [n.name for n in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, (mod.__name__, name)


def _fuzz_engine() -> Engine:
    e = engine(SETUP6, C1, C2, C61)
    e.set_rules(rules(C2, "action=accept proto=udp", "action=drop proto=tcp", policy="drop"))
    return e


_SEEDS = [udp_pkt(C1, R, 1, 2), tcp_pkt(C1, R, 3, 4, tcp.SYN), ping(C1, R), ping(C1, CGW),
          udp_pkt(R, UP, 2, 1), udp_pkt(C61, R6, 5, 6), ping(C61, R6),
          ip_packet(R, UP, 1, icmp.dest_unreachable(3, udp_pkt(UP, R, 1, 2))),
          fragments(C1, R, 7, 8, b"q" * 30)[1], fragments(C1, R, 7, 8, b"q" * 30)[2]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=120),
    st.tuples(st.sampled_from(_SEEDS), st.lists(st.tuples(st.integers(0, 200),
                                                          st.integers(0, 255)), max_size=6))
    .map(lambda t: bytes(_mutate(t[0], t[1])))),
    st.sampled_from([C1, C2, C61, UPLINK, "10.137.0.99"]), st.booleans(), st.booleans())
def test_handle_never_raises(data, ingress, partial, in_place):
    e = _fuzz_engine()
    e.handle(0, C1, udp_pkt(C1, R, 1, 2))
    v = e.handle(1, ingress, bytearray(data), partial_csum=partial, in_place=in_place)
    assert isinstance(v, (Forward, Drop))
    if isinstance(v, Forward):
        assert len(v.packet) <= len(data)


def _mutate(seed: bytes, edits) -> bytearray:
    raw = bytearray(seed)
    for at, value in edits:
        if raw:
            raw[at % len(raw)] = value
    return raw


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([6, 17, 1]), st.integers(1, 65535), st.integers(1, 65535),
       st.binary(max_size=64), st.integers(0, 1), st.integers(0, 2), st.booleans(),
       st.booleans())
def test_nat_round_trip_restores_the_tuple(proto, sport, dport, data, ci, ri, busy, six):
    clients = (C61, C62) if six else (C1, C2)
    client, other = clients[ci], clients[1 - ci]
    remote = ((R6, "fd00:7::8", "fd00:8::1") if six else (R, R2, UPDNS1))[ri]
    up = UP6 if six else UP
    e = engine(SETUP6, *clients)

    def packet(src, dst, sp, dp, payload, reply=False):
        if proto == 17:
            return udp_pkt(src, dst, sp, dp, payload)
        if proto == 6:
            return tcp_pkt(src, dst, sp, dp, tcp.SYN | (tcp.ACK if reply else 0), payload)
        return ping(src, dst, ident=dp if reply else sp, data=payload, reply=reply)

    if busy:  # someone else holds the same port to the same remote
        fwd(e.handle(0, other, packet(other, remote, sport, dport, b"")), UPLINK)
    pkt = packet(client, remote, sport, dport, data)
    out = flow(fwd(e.handle(1, client, pkt), UPLINK))
    assert out[1] == up and out[3] == remote
    if busy:
        assert out[2] != sport
    back = flow(fwd(e.handle(2, UPLINK, packet(remote, up, dport, out[2], data[::-1], True)),
                    client))
    if proto == 1:
        assert back[:4] == (58 if six else 1, remote, sport, client)
    else:
        assert back[:5] == (proto, remote, dport, client, sport)
    assert back[5] == 63


def test_stats_and_counter_names():
    e = engine()
    e.handle(0, C1, udp_pkt(C1, R, 1, 2))
    e.handle(0, C1, udp_pkt(C2, R, 1, 2))
    e.handle(0, UPLINK, udp_pkt(R, UP, 9, 9))
    st_ = e.stats()
    assert st_["forwarded"] == 1 and st_["drop.spoofed"] == 1 and st_["drop.no connection"] == 1
    assert st_["conntrack.entries"] == 1 and st_["fragments.entries"] == 0
    assert all(k.startswith(("drop.", "forwarded", "conntrack.", "local.", "fragments."))
               for k in st_)


def test_fast_path_matches_the_general_path():
    """Established TCP/UDP over IPv4 take Engine._fast: same bytes, verdicts,
    counters and conntrack state as the general path, on a random mix (bad
    header checksums, TTL 1, no UDP checksum, wrong interfaces, partial
    checksums, FIN/RST/SYN, expiry)."""
    import random

    rnd = random.Random(7)
    fast, slow = engine(SETUP, C1, C2), engine(SETUP, C1, C2)
    slow._fast = lambda *a: None
    hits = 0
    orig = fast._fast

    def counted(*a):
        nonlocal hits
        r = orig(*a)
        hits += r is not None
        return r
    fast._fast = counted

    def state(e):
        return dict(e.counters), [(c.orig, c.nat, c.deadline, c.replied, c.closing)
                                  for c in e.conntrack]

    def out(v):
        return (type(v), getattr(v, "egress", None), bytes(getattr(v, "packet", b"")),
                getattr(v, "reason", None), getattr(v, "reply", None))
    now = 0
    flags = [tcp.ACK, tcp.ACK, tcp.SYN, tcp.SYN | tcp.ACK, tcp.FIN | tcp.ACK, tcp.RST]
    for _ in range(4000):
        now += rnd.choice([1, 1000, S, 1, 40 * S if rnd.random() < 0.05 else 1])
        proto, f, ttl = rnd.choice([6, 17]), rnd.choice(flags), rnd.choice([64, 64, 1])
        sp, dp = rnd.choice([40000, 1234]), rnd.choice([5201, 53])
        kind = rnd.random()
        if kind < 0.5:
            ing = rnd.choice([C1, C2])
            dst = rnd.choice([R, R2, C1 if ing == C2 else C2])
            src = ing
        else:
            ing, src, dst = UPLINK, rnd.choice([R, R2, C1]), UP
            sp, dp = dp, rnd.choice([sp, 1024])
        p = bytearray(tcp_pkt(src, dst, sp, dp, f, ttl=ttl) if proto == 6
                      else udp_pkt(src, dst, sp, dp, ttl=ttl))
        r = rnd.random()
        if r < 0.05:
            p[10] ^= 1
        elif r < 0.1 and proto == 17:
            p[26:28] = b"\0\0"
        elif r < 0.13:
            ing = rnd.choice([C1, C2])
        partial, in_place = rnd.random() < 0.2, rnd.random() < 0.5
        a = fast.handle(now, ing, bytearray(p), partial_csum=partial, in_place=in_place)
        b = slow.handle(now, ing, bytearray(p), partial_csum=partial, in_place=in_place)
        assert out(a) == out(b)
        assert state(fast) == state(slow)
    assert hits > 500
