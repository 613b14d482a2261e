"""In-place header edits for the firewall engine's NAT: addresses, ports,
ICMP identifiers, TTL, and every checksum they touch (RFC 1624 incremental
updates, with the per-flow deltas computed once). Sans-I/O; nothing here
looks at more than the headers, so a 64 KiB packet costs what a small one
does.

Flow tuples are ``(proto, src, sport, dst, dport)`` (see :mod:`.conntrack`);
an ICMP query keeps its identifier in ``sport`` (request) or ``dport``
(reply).
"""

from __future__ import annotations

import struct

from ingot.plugins.netstack.checksum import ones_sum, update

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
REQUEST, REPLY = 1, 2
"""ICMP query kinds: where the identifier sits in a flow tuple."""

_PORTS = struct.Struct("!HH")
_H = struct.Struct("!H")


def multicast(a: bytes) -> bool:
    """A group address: 224/4, 240/4 and 255.255.255.255; ff00::/8."""
    if len(a) == 4:
        return a[0] >= 224  # multicast, class E, limited broadcast
    return a[0] == 0xFF


def martian(a: bytes) -> bool:
    """No destination to forward to: 0/8, 127/8; ::, ::1, fe80::/10."""
    if len(a) == 4:
        return a[0] in (0, 127)
    return a == bytes(16) or a == bytes(15) + b"\x01" or a[0] == 0xFE and a[1] & 0xC0 == 0x80


def fold(n: int) -> int:
    """A sum of ones' complement sums folded into 0..0xFFFF (0 only for 0)."""
    if not n:
        return 0
    return n % 0xFFFF or 0xFFFF


def delta(old: bytes, new: bytes) -> int:
    """What replacing the words ``old`` by ``new`` adds to a ones' complement
    sum (RFC 1624: ``~m + m'``), folded."""
    return fold((0xFFFF ^ ones_sum(old)) + ones_sum(new))


def deltas(proto: int, query: int, v6: bool, old: tuple, new: tuple) -> tuple[int, int]:
    """For a packet translated from tuple ``old`` to ``new``: the change to
    its transport checksum's sum (addresses in the pseudo-header, ports or
    ICMP identifier), and the change of the addresses alone (for a partial
    checksum). Constant for a flow and direction: cached on the connection."""
    a_old = old[1] + old[3]
    a_new = new[1] + new[3]
    if proto == TCP or proto == UDP:
        return (delta(a_old + _PORTS.pack(old[2], old[4]), a_new + _PORTS.pack(new[2], new[4])),
                delta(a_old, a_new))
    if query:
        slot = 2 if query == REQUEST else 4
        i_old, i_new = _H.pack(old[slot]), _H.pack(new[slot])
        if v6:
            return delta(a_old + i_old, a_new + i_new), 0
        return delta(i_old, i_new), 0
    return 0, 0


def finish(buf, v6: bool, ihl: int, src: bytes, dst: bytes) -> None:
    """Write the IP addresses, decrement the TTL (hop limit) and, for IPv4,
    compute the header checksum anew (it was verified on the way in)."""
    if v6:
        buf[7] -= 1
        buf[8:24] = src
        buf[24:40] = dst
        return
    buf[8] -= 1
    buf[12:16] = src
    buf[16:20] = dst
    buf[10:12] = b"\0\0"
    buf[10:12] = _H.pack(0xFFFF ^ ones_sum(buf[:ihl]))


def rewrite(buf, v6: bool, l4: int, proto: int, query: int, new: tuple,
            deltas: tuple[int, int], partial: bool) -> None:
    """Translate the transport header at ``l4`` to the tuple ``new``: ports
    or ICMP identifier (``query``: :data:`REQUEST`, :data:`REPLY` or 0), and
    the checksum by ``deltas`` (see :func:`deltas`); ``partial``: the
    TCP/UDP checksum field is a pseudo-header sum (see the engine's
    docstring). The IP header is :func:`finish`'s."""
    if proto == TCP or proto == UDP:
        ck_at = l4 + (16 if proto == TCP else 6)
        ck = _H.unpack_from(buf, ck_at)[0]
        buf[l4:l4 + 4] = _PORTS.pack(new[2], new[4])
        if partial:
            # the field is an uncomplemented pseudo-header sum; the device
            # sums the ports itself later
            ck = fold(ck + deltas[1])
        elif proto == UDP and ck == 0 and not v6:
            return  # no checksum
        else:
            ck = 0xFFFF ^ fold((0xFFFF ^ ck) + deltas[0])
            if proto == UDP and ck == 0:
                ck = 0xFFFF
        buf[ck_at:ck_at + 2] = _H.pack(ck)
    elif query:
        # the identifier is the flow's sport (request) or dport (reply)
        ck = _H.unpack_from(buf, l4 + 2)[0]
        buf[l4 + 4:l4 + 6] = _H.pack(new[2 if query == REQUEST else 4])
        buf[l4 + 2:l4 + 4] = _H.pack(0xFFFF ^ fold((0xFFFF ^ ck) + deltas[0]))


def rewrite_quoted(buf, q: int, v6: bool, qhl: int, proto: int, query: int,
                    old: tuple, new: tuple, end: int) -> None:
    """Translate the packet an ICMP error quotes (at ``q``, possibly cut
    short): addresses, ports or identifier, its header checksum, and its
    TCP/UDP/ICMP checksum when that was quoted. The outer ICMP checksum is
    the caller's to recompute."""
    ql4 = q + qhl
    addr_old = old[1] + old[3]
    addr_new = new[1] + new[3]
    if proto == TCP or proto == UDP:
        ck_at = ql4 + (16 if proto == TCP else 6)
        ports_old = _PORTS.pack(old[2], old[4])
        ports_new = _PORTS.pack(new[2], new[4])
        buf[ql4:ql4 + 4] = ports_new
        if ck_at + 2 <= end:
            ck = _H.unpack_from(buf, ck_at)[0]
            if not (proto == UDP and ck == 0 and not v6):
                ck = update(ck, addr_old + ports_old, addr_new + ports_new)
                if proto == UDP and ck == 0:
                    ck = 0xFFFF
                buf[ck_at:ck_at + 2] = _H.pack(ck)
    elif query:
        slot = 2 if query == REQUEST else 4
        id_old, id_new = old[slot], new[slot]
        ck_at = ql4 + 2
        ck = _H.unpack_from(buf, ck_at)[0]
        ck = update(ck, _H.pack(id_old), _H.pack(id_new))
        if v6:
            ck = update(ck, addr_old, addr_new)
        buf[ck_at:ck_at + 2] = _H.pack(ck)
        buf[ql4 + 4:ql4 + 6] = _H.pack(id_new)
    if v6:
        buf[q + 8:q + 24] = new[1]
        buf[q + 24:q + 40] = new[3]
    else:
        buf[q + 12:q + 16] = new[1]
        buf[q + 16:q + 20] = new[3]
        ck = _H.unpack_from(buf, q + 10)[0]
        buf[q + 10:q + 12] = _H.pack(update(ck, addr_old, addr_new))
