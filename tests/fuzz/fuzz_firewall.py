"""Fuzz targets for the firewall's rule parser and its packet engine.

Each target feeds one input to the code under test; nothing may escape:
the rule parser answers every input with a :class:`ClientRules` (deny-all
with ``error`` when it does not parse), :meth:`Engine.handle` with a
:class:`Forward` or a :class:`Drop`. Any exception, or a broken invariant
(``assert``), is a bug: the fuzzer stops and saves the input. Targets:

``rules``
    The input as QubesDB entries, one ``NAME:VALUE`` per line (first byte:
    an IPv4 or IPv6 client). Checks: an error means deny-all; a rule set
    that parses re-parses from its own texts to the same rules, resolves
    and matches.
``engine``
    A run of packets through one engine (two IPv4 clients, one IPv6, small
    conntrack table), each ``LEN(2) CTRL(1) PACKET``: CTRL picks the
    ingress, partial checksum, in-place editing, the time step and whether
    the IPv4 header and ICMP checksums are fixed up to get past them
    (bits 0-2 ingress, 3 partial, 4 in place, 5 fix up, 6-7 time step).
    Checks: a forwarded packet is no longer than the input, an IPv4 one has
    a right header checksum, the table stays within its bound, drops are
    counted, and every TCP/UDP flow masqueraded to the uplink has its reply
    translated back to exactly the client's original tuple.
``packet``
    One raw packet, from each ingress, to a fresh engine.
``l2``
    A run of Ethernet frames through the firewall's L2 (uplink, two IPv4
    clients, an IPv6 client on the device of one of them and one on a device
    of its own, an unknown interface), each ``LEN(2) CTRL(1) FRAME``: CTRL
    bits 0-2 the interface, 3 also send the frame's payload out of another
    interface with :meth:`L2.output`, 4 tick at the next deadline, 5 set the
    source MAC to the one learnt for that client, 6-7 the time step.
    Checks: only Deliver/Transmit/Dropped come out, a transmitted frame has
    an Ethernet header from one of our MACs, a delivered packet lies inside
    the frame, ``fast_input`` (when it answers) delivers exactly what
    ``input`` does, drops are counted.

Run one target::

    python tests/fuzz/fuzz_firewall.py TARGET [CORPUS_DIR] -atheris_runs=100000
    python tests/fuzz/fuzz_firewall.py TARGET --plain 100000 [--seed N]
    python tests/fuzz/fuzz_firewall.py --list
    python tests/fuzz/run.py --file fuzz_firewall.py       # all of them
"""

from __future__ import annotations

import struct
import sys

import driver

try:
    import atheris
except ImportError:  # the plain driver still works
    atheris = None

if atheris is not None and "--plain" not in sys.argv:
    with atheris.instrument_imports(include=["ingot.plugins.firewall",
                                             "ingot.plugins.netstack"]):
        from ingot.plugins.firewall.engine import UPLINK, Drop, Engine, Forward
        from ingot.plugins.firewall.l2 import L2, Deliver, Dropped, Transmit
        from ingot.plugins.firewall.rules import (Matcher, parse_client_rules, parse_rule,
                                                  resolve_dsthosts)
        from ingot.plugins.netstack import (checksum, ethernet, icmp, icmpv6, ipv4, ipv6,
                                            ndp, tcp, udp)
else:
    from ingot.plugins.firewall.engine import UPLINK, Drop, Engine, Forward
    from ingot.plugins.firewall.l2 import L2, Deliver, Dropped, Transmit
    from ingot.plugins.firewall.rules import (Matcher, parse_client_rules, parse_rule,
                                              resolve_dsthosts)
    from ingot.plugins.netstack import (checksum, ethernet, icmp, icmpv6, ipv4, ipv6, ndp,
                                        tcp, udp)

from ingot.signatures import ClientRules, FilterSetup  # noqa: E402

UP, CGW = "10.200.0.2", "10.137.0.1"
C1, C2, C6 = "10.137.0.10", "10.137.0.11", "fd09:24ef:4179::a89:a"
R, R6, UP6, CGW6 = "10.200.7.7", "fd00:7::7", "fd00:200::2", "fd09:24ef:4179::1"
SETUP = FilterSetup(uplink_ip=UP, uplink_gateway="10.200.0.1", client_gateway=CGW,
                    virtual_dns=("10.139.1.1", "10.139.1.2"),
                    upstream_dns=("10.200.0.53",), uplink_ip6=UP6,
                    uplink_gateway6="fd00:200::1", client_gateway6=CGW6, max_connections=8)
INGRESS = (C1, C2, C6, UPLINK, "10.137.0.99")
SECOND = 1_000_000_000


def _ip(text: str) -> bytes:
    import ipaddress
    return ipaddress.ip_address(text).packed


# -- rules -----------------------------------------------------------------------


def t_rules(data: bytes) -> None:
    client = C6 if data[:1] and data[0] & 1 else C1
    entries: dict[str, bytes] = {}
    for line in data[1:].split(b"\n"):
        name, _, value = line.partition(b":")
        entries[name.decode("latin-1")] = value
    rules = parse_client_rules(client, entries)
    assert isinstance(rules, ClientRules)
    if rules.error is not None:
        assert rules.rules == () and rules.policy == "drop"
        return
    assert rules.policy in ("accept", "drop")
    version = 6 if client == C6 else 4
    for r in rules.rules:
        assert parse_rule(f"{r.number:04}", r.text, version) == r
    done = resolve_dsthosts(rules, {h: ["192.0.2.1", "2001:db8::1"] for h in
                                    {r.dsthost for r in rules.rules if r.dsthost}})
    m = Matcher(done, (_ip("10.139.1.1"),))
    for dst, proto, port, itype in ((_ip("192.0.2.1"), 6, 443, None),
                                    (_ip("10.139.1.1"), 17, 53, None),
                                    (_ip("2001:db8::1"), 58, None, 128),
                                    (_ip("8.8.8.8"), 1, None, 8)):
        assert m.verdict(dst, proto, port, itype)[0] in ("accept", "drop")


# -- engine ----------------------------------------------------------------------


_RULES: list[ClientRules] = []


def _engine() -> Engine:
    if not _RULES:
        _RULES.extend((
            parse_client_rules(C1, {"policy": b"accept"}),
            parse_client_rules(C2, {"policy": b"drop",
                                    "0000": b"action=accept proto=udp",
                                    "0001": b"action=drop proto=tcp dstports=1-1000",
                                    "0002": b"action=accept proto=tcp",
                                    "0003": b"action=accept specialtarget=dns",
                                    "0004": b"action=accept proto=icmp icmptype=8"}),
            parse_client_rules(C6, {"policy": b"accept",
                                    "0000": b"action=drop dst6=fd00:7::/64 proto=udp"})))
    e = Engine(SETUP)
    for r in _RULES:
        e.attach(r.client)
        e.set_rules(r)
    return e


def _fixup(pkt: bytearray) -> None:
    """Make the IPv4 header checksum and an ICMP checksum right."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return
    ihl = (pkt[0] & 0xF) * 4
    if ihl < 20 or ihl > len(pkt):
        return
    pkt[10:12] = b"\0\0"
    pkt[10:12] = checksum.checksum(pkt[:ihl]).to_bytes(2, "big")
    total = int.from_bytes(pkt[2:4], "big")
    if pkt[9] == 1 and ihl + 8 <= total <= len(pkt):
        pkt[ihl + 2:ihl + 4] = b"\0\0"
        pkt[ihl + 2:ihl + 4] = checksum.checksum(pkt[ihl:total]).to_bytes(2, "big")


def _tuple(pkt) -> tuple | None:
    """(proto, src, sport, dst, dport) of an unfragmented TCP/UDP packet."""
    try:
        if pkt[0] >> 4 == 4:
            p = ipv4.parse(pkt)
            if p.is_fragment:
                return None
            src, dst, proto, body = p.src, p.dst, p.proto, p.payload
        else:
            p6 = ipv6.parse(pkt)
            if p6.fragment is not None:
                return None
            src, dst, proto, body = p6.src, p6.dst, p6.proto, p6.payload
    except Exception:  # only ParseError is possible; the caller checks none escapes
        return None
    if proto not in (6, 17) or len(body) < (20 if proto == 6 else 8):
        return None
    sport, dport = struct.unpack_from("!HH", body)
    return (proto, bytes(src), sport, bytes(dst), dport)


def _reply(t: tuple) -> bytes:
    proto, src, sport, dst, dport = t  # the packet as it left: reply swaps it
    if proto == 17:
        l4 = udp.build(dport, sport, b"r", dst, src)
    else:
        l4 = tcp.build(dport, sport, 1, 1, tcp.ACK, 100, b"r", src=dst, dst=src)
    if len(src) == 4:
        return ipv4.build(dst, src, proto, l4)
    return ipv6.build(dst, src, proto, l4)


def _check(e: Engine, now: int, ingress: str, raw: bytes, v) -> None:
    assert isinstance(v, (Forward, Drop))
    if isinstance(v, Drop):
        assert e.counters.get("drop." + v.reason, 0) > 0
        if v.reply is not None:
            (ipv4.parse if v.reply[0] >> 4 == 4 else ipv6.parse)(v.reply)
        return
    out = bytes(v.packet)
    if v.egress != ingress or ingress == UPLINK:  # not a local echo reply
        assert len(out) <= len(raw)
    if out[0] >> 4 == 4:
        ipv4.parse(out)  # the header checksum is right
    if ingress in (C1, C2, C6) and v.egress == UPLINK:
        sent, orig = _tuple(out), _tuple(raw)
        if sent is None or orig is None:
            return
        back = e.handle(now, UPLINK, _reply(sent))
        assert isinstance(back, Forward) and back.egress == ingress, (back, sent)
        got = _tuple(back.packet)
        assert got == (orig[0], orig[3], orig[4], orig[1], orig[2]), (got, orig)


def t_engine(data: bytes) -> None:
    e = _engine()
    now = 0
    pos = 0
    while pos + 3 <= len(data):
        size, ctrl = struct.unpack_from("!HB", data, pos)
        pos += 3
        raw = bytearray(data[pos:pos + size])
        pos += size
        ingress = INGRESS[(ctrl & 7) % 5]
        now += (ctrl >> 6) * 20 * SECOND
        if ctrl & 0x20:
            _fixup(raw)
        raw = bytes(raw)
        buf = bytearray(raw)
        v = e.handle(now, ingress, buf, partial_csum=bool(ctrl & 8), in_place=bool(ctrl & 16))
        _check(e, now, ingress, raw, v)
        assert len(e.conntrack) <= SETUP.max_connections
    e.expire(now + 3 * 3600 * SECOND)
    assert len(e.conntrack) == 0


def t_packet(data: bytes) -> None:
    for ingress in INGRESS:
        e = _engine()
        v = e.handle(0, ingress, data)
        _check(e, 0, ingress, data, v)


# -- l2 --------------------------------------------------------------------------

UPMAC, FWMAC1, FWMAC2, FWMAC6 = (bytes([2, 0, 0, 0, 0, i]) for i in (1, 2, 3, 4))
C7 = "fd09:24ef:4179::a89:b"
L2_IFACES = (UPLINK, C1, C2, C7, "10.137.0.99")
OURS = {UPMAC, FWMAC1, FWMAC2, FWMAC6}


def _l2() -> L2:
    l2 = L2(SETUP, UPMAC, queue_per_ip=2)
    l2.attach(C1, FWMAC1)
    l2.attach(C2, FWMAC2)
    l2.attach(C6, FWMAC1, iface=C1)
    l2.attach(C7, FWMAC6)
    return l2


def _counted(l2: L2) -> int:
    return sum(l2.counters.snapshot().values())


def _l2_check(l2: L2, frame: bytes, events: list, before: int) -> None:
    if any(isinstance(ev, Dropped) for ev in events):
        assert _counted(l2) > before, events
    for ev in events:
        assert isinstance(ev, (Deliver, Transmit, Dropped)), ev
        if isinstance(ev, Transmit):
            out = bytes(ev.frame)
            assert len(out) >= ethernet.HEADER_LEN and out[6:12] in OURS, out[:14].hex()
        elif isinstance(ev, Deliver):
            assert bytes(ev.packet) in frame


def t_l2(data: bytes) -> None:
    l2 = _l2()
    now = 0
    _l2_check(l2, b"", l2.start(now), 0)
    pos = 0
    while pos + 3 <= len(data):
        size, ctrl = struct.unpack_from("!HB", data, pos)
        pos += 3
        frame = bytearray(data[pos:pos + size])
        pos += size
        iface = L2_IFACES[(ctrl & 7) % len(L2_IFACES)]
        now += (ctrl >> 6) * 7 * SECOND
        if ctrl & 0x20 and len(frame) >= 12 and iface != UPLINK:
            learnt = l2.client_mac(iface)
            if learnt is not None:
                frame[6:12] = learnt
        frame = bytes(frame)
        fast = l2.fast_input(iface, frame)
        fast = None if fast is None else bytes(fast)
        before = _counted(l2)
        events = l2.input(now, iface, frame)
        _l2_check(l2, frame, events, before)
        if fast is not None:
            assert [type(e) for e in events] == [Deliver] and bytes(events[0].packet) == fast
        if ctrl & 8 and len(frame) > ethernet.HEADER_LEN:
            egress = L2_IFACES[(ctrl + 1) % 4]
            before = _counted(l2)
            _l2_check(l2, b"", l2.output(now, egress, frame[ethernet.HEADER_LEN:]), before)
        if ctrl & 0x10:
            at = l2.next_deadline()
            if at is not None:
                now = max(now, at)
                before = _counted(l2)
                _l2_check(l2, b"", l2.tick(now), before)


TARGETS = driver.targets(globals())


def _packets() -> list[bytes]:
    a = _ip
    c1, c2, c6, r, r6, up = a(C1), a(C2), a(C6), a(R), a(R6), a(UP)
    out = udp.build(40000, 53, b"query", c1, r)
    dgram = udp.build(40001, 9, b"x" * 40, c1, r)
    return [
        ipv4.build(c1, r, 17, out),
        ipv4.build(c1, r, 6, tcp.build(40000, 443, 1, 0, tcp.SYN, 65535, src=c1, dst=r,
                                       options=[tcp.Mss(1460)])),
        ipv4.build(c1, r, 1, icmp.echo_request(7, 1, b"ping")),
        ipv4.build(c1, a(CGW), 1, icmp.echo_request(7, 1, b"ping")),
        ipv4.build(c2, a("10.139.1.1"), 17, udp.build(5353, 53, b"q", c2, a("10.139.1.1"))),
        ipv4.build(c2, c1, 6, tcp.build(1, 22, 1, 0, tcp.SYN, 100, src=c2, dst=c1)),
        ipv4.build(r, up, 17, udp.build(53, 40000, b"answer", r, up)),
        ipv4.build(r, up, 1, icmp.dest_unreachable(3, ipv4.build(up, r, 17, out))),
        ipv4.build(c1, r, 17, dgram[:16], ident=5, flags=ipv4.FLAG_MF),
        ipv4.build(c1, r, 17, dgram[16:], ident=5, frag_offset=16),
        ipv6.build(c6, r6, 17, udp.build(1, 2, b"six", c6, r6)),
        ipv6.build(c6, r6, 58, icmpv6.echo_request(1, 1, b"six", c6, r6)),
        ipv6.build(r6, a(UP6), 17, udp.build(2, 1, b"back", r6, a(UP6))),
    ]


def seeds() -> list[bytes]:
    """Valid inputs for every target, a corpus to start from."""
    pkts = _packets()
    ctrl = [0, 0, 0, 0, 1, 1, 3, 3, 0, 0, 2, 2, 3]
    run = b"".join(struct.pack("!HB", len(p), c | 0x20) + p for p, c in zip(pkts, ctrl))
    rules = (b"\x00policy:drop\n0000:action=accept dst4=10.0.0.0/8 proto=tcp dstports=1-1024\n"
             b"0001:action=accept specialtarget=dns\n0002:action=drop dsthost=a.example\n"
             b"0003:action=accept proto=icmp icmptype=8")
    rules6 = b"\x01policy:accept\n0000:action=drop dst6=2001:db8::/32 proto=udp"
    eth = ethernet.build
    cmac = bytes([2, 0, 0, 0, 0, 0x10])
    frames = [
        (eth(FWMAC1, cmac, ethernet.ETHERTYPE_IPV4, pkts[0]), 1),
        (eth(UPMAC, bytes([2, 0, 0, 0, 0, 0x20]), ethernet.ETHERTYPE_IPV4, pkts[6]), 0x18),
        (eth(FWMAC1, cmac, ethernet.ETHERTYPE_IPV6, pkts[10]), 0x29),
        (eth(ethernet.BROADCAST, cmac, ethernet.ETHERTYPE_ARP,
             b"\x00\x01\x08\x00\x06\x04\x00\x01" + cmac + _ip(C1) + bytes(6) + _ip(CGW)), 1),
        (ndp.solicitation_frame(cmac, _ip(C7), _ip(CGW6)), 0x13),
        (eth(UPMAC, cmac, ethernet.ETHERTYPE_IPV6, pkts[12]), 0x40),
    ]
    l2run = b"".join(struct.pack("!HB", len(f), c) + f for f, c in frames)
    return [run, rules, rules6, l2run, *pkts]


if __name__ == "__main__":
    sys.exit(driver.main(sys.argv[1:], __doc__, TARGETS, seeds, atheris))
