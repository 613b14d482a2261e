"""Fuzz targets for every netstack parser and both of its state machines.

Each target feeds one input to the code under test; a
:class:`~ingot.plugins.netstack.errors.ParseError` is the expected answer to
bad bytes, any other exception is a bug (the fuzzer stops and saves the
input). Run one target::

    python tests/fuzz/fuzz_netstack.py TARGET [CORPUS_DIR] -atheris_runs=100000
    python tests/fuzz/fuzz_netstack.py TARGET --plain 100000 [--seed N]
    python tests/fuzz/fuzz_netstack.py --list

With atheris installed the netstack modules are instrumented and libFuzzer
drives the target (flags as for libFuzzer, plus ``-atheris_runs=N``).
``--plain`` needs nothing but Python: it feeds random bytes and mutated
valid packets (see :func:`seeds`), deterministically from ``--seed``.
``run.py`` beside this file runs every target.
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
    with atheris.instrument_imports(include=["ingot.plugins.netstack"]):
        from ingot.plugins.netstack import (arp, checksum, ethernet, icmp, icmpv6, ipv4,
                                            ipv6, tcp, udp)
        from ingot.plugins.netstack.errors import ParseError
else:
    from ingot.plugins.netstack import (arp, checksum, ethernet, icmp, icmpv6, ipv4, ipv6,
                                        tcp, udp)
    from ingot.plugins.netstack.errors import ParseError

A, B = bytes([10, 137, 0, 1]), bytes([10, 137, 0, 2])
A6, B6 = bytes.fromhex("fd" + "00" * 14 + "01"), bytes.fromhex("fd" + "00" * 14 + "02")
MAC = b"\x02\x00\x00\x00\x00\x01"


def _fix(data: bytes, at: int, initial: int = 0, end: int | None = None) -> bytes:
    """``data`` with the 16-bit checksum at ``at`` made right (half the time:
    the first byte's low bit says), so that inputs reach past the check."""
    if len(data) < at + 2 or not data[0] & 1:
        return data
    raw = bytearray(data)
    raw[at:at + 2] = b"\0\0"
    raw[at:at + 2] = checksum.checksum(raw[:end], initial).to_bytes(2, "big")
    return bytes(raw)


def t_ethernet(data: bytes) -> None:
    ethernet.parse(data)


def t_arp(data: bytes) -> None:
    arp.parse(data)


def t_ipv4(data: bytes) -> None:
    ihl = (data[0] & 0xF) * 4 if data else 0
    ipv4.parse(_fix(data, 10, end=ihl))


def t_ipv4_nocheck(data: bytes) -> None:
    p = ipv4.parse(data, verify_checksum=False)
    p.to_bytes()
    buf = bytearray(data)
    ipv4.decrement_ttl(buf)


def t_icmp(data: bytes) -> None:
    msg = icmp.parse(_fix(data, 2))
    if msg.is_error:
        icmp.quoted_header(msg)


def t_udp(data: bytes) -> None:
    udp.parse(data)
    length = int.from_bytes(data[4:6], "big") if len(data) >= 6 else 0
    udp.parse(_fix(data, 6, checksum.pseudo_ipv4(A, B, udp.PROTO, length), length), A, B)
    udp.parse(_fix(data, 6, checksum.pseudo_ipv6(A6, B6, udp.PROTO, length), length), A6, B6)


def t_tcp(data: bytes) -> None:
    tcp.parse(data)
    tcp.parse(_fix(data, 16, checksum.pseudo_ipv4(A, B, tcp.PROTO, len(data))), A, B)


def t_tcp_options(data: bytes) -> None:
    opts = tcp.parse_options(data[:40])
    if len(tcp.build_options(opts)) <= 40:
        assert tcp.parse_options(tcp.build_options(opts)) == opts


def t_ipv6(data: bytes) -> None:
    ipv6.parse(data)


def t_icmpv6(data: bytes) -> None:
    msg = icmpv6.parse(_fix(data, 2, checksum.pseudo_ipv6(A6, B6, icmpv6.PROTO, len(data))),
                       A6, B6)
    if msg.type in (icmpv6.ECHO_REQUEST, icmpv6.ECHO_REPLY):
        msg.echo()


def t_text(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for parse in (ethernet.mac_from_str, ipv4.addr, ipv6.addr):
        try:
            parse(text)
        except ParseError:
            pass


def t_frame(data: bytes) -> None:
    """What a stack does with a frame: every layer down to the transport."""
    f = ethernet.parse(data)
    if f.ethertype == ethernet.ETHERTYPE_ARP:
        arp.parse(f.payload)
    elif f.ethertype == ethernet.ETHERTYPE_IPV4:
        p = ipv4.parse(f.payload, verify_checksum=False)
        upper = {1: lambda d: icmp.parse(d, verify_checksum=False), 6: tcp.parse,
                 17: udp.parse}.get(p.proto)
        if upper and not p.is_fragment:
            upper(p.payload)
    elif f.ethertype == ethernet.ETHERTYPE_IPV6:
        p6 = ipv6.parse(f.payload)
        upper = {58: icmpv6.parse, 6: tcp.parse, 17: udp.parse}.get(p6.proto)
        if upper and p6.fragment is None:
            upper(p6.payload)


def t_reassembler(data: bytes) -> None:
    """A run of fragments (ident, offset, flags, length, time step from the input)."""
    r = ipv4.Reassembler(max_bytes=20_000, max_fragments=16)
    now = 0
    pos = 0
    while pos + 6 <= len(data):
        ident, off, size, step = struct.unpack_from("!BHBH", data, pos)
        pos += 6
        now += step * 1_000_000
        more = bool(off & 0x8000)
        payload = data[pos:pos + size]
        pos += size
        raw = ipv4.build(A, B, 17, payload, ident=ident & 3, frag_offset=(off & 0x1FFF) << 3,
                         flags=ipv4.FLAG_MF if more else 0)
        whole = r.push(ipv4.parse(raw), now)
        if whole is not None:
            ipv4.parse(whole.to_bytes())
        assert r.bytes_in_flight <= 20_000
        for first in r.expire(now):
            icmp.time_exceeded(1, first.to_bytes())


def t_arp_cache(data: bytes) -> None:
    """ARP packets and resolutions from the input, time moving forward."""
    cache = arp.ArpCache(MAC, [A], queue_per_ip=3, max_pending=4, max_entries=4)
    now = 0
    pos = 0
    while pos + 30 <= len(data):
        op, step = data[pos], data[pos + 1]
        body = bytearray(data[pos + 2:pos + 30])
        pos += 30
        now += step * 100_000_000
        body[:6] = b"\x00\x01\x08\x00\x06\x04"
        body[6:8] = (1 + (op & 1)).to_bytes(2, "big")
        if op & 2:
            body[24:28] = A
        pkt = arp.parse(body)
        cache.input(pkt, now)
        if op & 4:
            cache.resolve(pkt.spa if op & 8 else pkt.tpa, pos, now)
        cache.tick(now)
        deadline = cache.next_deadline()
        assert deadline is None or deadline >= now or cache.pending()
        assert len(cache.pending()) <= 4 and all(n <= 3 for n in cache.pending().values())


TARGETS = driver.targets(globals())


def seeds() -> list[bytes]:
    """Valid inputs of every layer, a corpus to start from."""
    dgram = udp.build(40000, 53, b"\xab\xcd\x01\x00\x00\x01" + bytes(6), A, B)
    seg = tcp.build(47122, 80, 1, 0, tcp.SYN, 64240, src=A, dst=B,
                    options=[tcp.Mss(1460), tcp.SackPermitted(), tcp.Timestamps(1, 0),
                             tcp.WindowScale(7), tcp.Sack(((1, 2),))])
    ping = icmp.echo_request(1, 1, b"abcdefgh")
    pkt = ipv4.build(A, B, 17, dgram, flags=ipv4.FLAG_DF, options=b"\x94\x04\x00\x00")
    ping6 = icmpv6.echo_request(1, 2, b"x", A6, B6)
    pkt6 = ipv6.build(A6, B6, ipv6.HOP_BY_HOP, ipv6.options_header(ipv6.FRAGMENT)
                      + ipv6.fragment_header(58, 0, True, 9) + ping6)
    arp_req = arp.build(arp.ArpPacket(1, MAC, A, bytes(6), B))
    return [
        dgram, seg, seg[20:40], ping, icmp.dest_unreachable(3, pkt), pkt,
        ipv4.build(A, B, 6, seg), ipv4.build(A, B, 1, ping), ping6, pkt6, arp_req,
        ethernet.build(ethernet.BROADCAST, MAC, ethernet.ETHERTYPE_ARP, arp_req),
        ethernet.build(MAC, MAC, ethernet.ETHERTYPE_IPV4, pkt),
        ethernet.build(MAC, MAC, ethernet.ETHERTYPE_IPV6, pkt6,
                       vlan=ethernet.VlanTag(100)),
        b"52:54:00:12:34:56", b"10.137.0.1", b"fd00::1",
        bytes.fromhex("0001000010" "0000" "8000000810" "0001") + bytes(16),
    ]


if __name__ == "__main__":
    sys.exit(driver.main(sys.argv[1:], __doc__, TARGETS, seeds, atheris,
                             refused=(ParseError,)))
