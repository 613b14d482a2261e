"""The firewall's data plane as a pure function of packets and time: the
verdict, NAT and connection-tracking engine of a Qubes firewall VM. Sans-I/O.

:meth:`Engine.handle` takes one IP packet, the interface it arrived on
(``"uplink"``, or the address of the client whose interface it is) and the
time, and returns :class:`Forward` (send ``packet`` out of ``egress``) or
:class:`Drop` (with a ``reason``, counted as ``drop.<reason>``, and maybe a
``reply`` to send back out of the ingress interface). The backend (Ingot's
loop over ``net`` devices, :mod:`.l2` for Ethernet and ARP) owns the
interfaces; nothing here does I/O or reads a clock.

What happens to a packet, in order:

From a client (``ingress`` is its address):

1. Not attached: ``unknown client``. Source address not the client's:
   ``spoofed`` (silent). A client with addresses of both families is
   attached once per address; ``ingress`` is the one of the packet's family.
2. A packet of a tracked flow passes as such, whatever the rules say now
   (Qubes' ``ct state established,related accept`` comes first); so does an
   ICMP error about a tracked flow (translated, see below). An ICMP error
   about nothing tracked, or an ICMP echo reply nobody asked for: ``invalid``.
3. Destination multicast or broadcast: ``multicast``; 0.0.0.0/8, 127/8,
   ::1, ::, fe80::/10, or the client's own address: ``martian`` (both
   silent).
4. TCP or UDP to a virtual DNS address, port 53: the client's rules decide
   (``specialtarget=dns`` rules match it); accepted, it is sent to the
   upstream resolver of the same rank (DNAT) from ``uplink_ip`` (SNAT);
   replies come back from the virtual address. No upstream: ``no dns``.
5. Anything else to one of the firewall's own addresses (client gateway,
   uplink address, virtual DNS, their IPv6 ones): ``to firewall``, answered
   with ICMP host-prohibited as Qubes' input chain does -- except an ICMP
   echo request to the client gateway, which is answered with an echo reply
   (a :class:`Forward` back to the client, counted ``local.echo``), as Qubes
   accepts ICMP to the firewall.
6. To another attached client: the client's rules, no NAT.
7. To anything else: the client's rules, then masquerade to ``uplink_ip``
   (source port or ICMP identifier re-picked only on a collision).

   The rules: first match, else the policy (:class:`~.rules.Matcher`). A
   drop answers ICMP administratively prohibited (code 13; ICMPv6 type 1
   code 1) from the client gateway address, as Qubes' ``reject`` does, and
   is counted ``rule`` (a drop rule matched, its NNNN in
   :attr:`Drop.rule`), ``policy``, ``rules error`` (the rules did not
   parse) or ``no rules`` (never set). ICMP errors the engine makes (this
   one, host prohibited, time exceeded) share a token bucket of
   ``setup.icmp_error_rate`` per second (bursts of a twentieth, as Linux's
   ``icmp_msgs_per_sec``/``icmp_msgs_burst``); past it the drop is silent
   (``icmp.rate_limited``).
8. Accepted with TTL (hop limit) <= 1: ``ttl``, answered with ICMP time
   exceeded; nothing is tracked. Otherwise the flow is tracked
   (:mod:`.conntrack`) and the packet forwarded, TTL decremented.

From the uplink:

9. Source address of a client or of the firewall (uplink address, client
   gateway): ``spoofed``. (The virtual DNS addresses may come from upstream:
   in Qubes the firewall's own resolvers are the same virtual addresses,
   redirected again by the next VM, so ``upstream_dns == virtual_dns``.)
10. A reply of a tracked flow (to ``uplink_ip``) is un-NATed to its client;
    an ICMP error quoting a packet of a tracked flow has its outer
    destination and its quoted packet translated back (addresses, ports,
    the quoted header checksum, the quoted UDP/TCP checksum when quoted, the
    ICMP checksum). Anything else: ``no connection``, silent.

Other protocols than TCP, UDP and ICMP are masqueraded by address only (one
flow per client and remote; their own checksums, if any cover the
pseudo-header as DCCP's and UDP-Lite's do, are not updated).

Both sides: bytes that do not parse (IPv4 header checksum, lengths,
truncated TCP/UDP/ICMP headers, a bad ICMP checksum): ``malformed``.
Unsupported ICMP types (router, neighbour discovery...): ``icmp``. TCP and
UDP checksums are not verified (a 64 KiB super-packet would cost more than
its forwarding) and are updated incrementally (RFC 1624), so a bad one
stays bad for the end host to see.

Fragments: the first fragment is handled as above; later fragments of the
same datagram (same source, destination, protocol, identification) follow
its verdict and address translation for :data:`FRAGMENT_TIMEOUT_NS`
(at most :data:`MAX_FRAGMENT_FLOWS` datagrams). A later fragment that comes
before its first, a first fragment too short for its TCP/UDP header, and a
TCP fragment at offset 8 (RFC 1858): ``fragment``, silent.

IPv6: without ``uplink_ip6`` and ``client_gateway6`` in the setup every IPv6
packet is ``ipv6`` (silent). With them IPv6 is handled exactly as IPv4
(clients attached by their IPv6 address, masquerade to ``uplink_ip6``,
ICMPv6 for ICMP); there is no virtual DNS for IPv6. Neighbour discovery is
the Ethernet layer's business: here it is ``icmp``.

Rule changes (:meth:`Engine.set_rules`) apply to the next packet. Tracked
flows survive them, as with Qubes' nftables ruleset
(``ct state established,related accept`` before the per-client chain);
``set_rules(rules, recheck=True)`` instead forgets the client's flows that
the new rules would not admit. :meth:`Engine.detach` forgets the client,
its rules and every flow from or to it.

``partial_csum=True``: the packet came with a virtio-net header asking for
checksum offload (``VIRTIO_NET_HDR_F_NEEDS_CSUM``): its TCP/UDP checksum
field holds the *uncomplemented* ones' complement sum of the pseudo-header
(whatever length the sender put in it), and the device will later fold the
transport header and payload into it. NAT then adds the address change to
that field as a sum (``P' = P + ~old + new``, RFC 1624 arithmetic, without
the final complement), and leaves port changes alone: the device sums the
ports as they are when it completes the checksum. The header's
``csum_start``/``csum_offset`` stay valid (no header changes length). For
ICMP the flag is ignored.

Buffers: the verdict reads the packet in place; a forwarded packet is
copied once into a ``bytearray`` (only up to its IP total length) and its
headers edited there. With ``in_place=True`` and a writable buffer
(``bytearray`` or writable ``memoryview``) nothing is copied: the headers are
edited in the caller's buffer and :attr:`Forward.packet` is a view of it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass

from ingot.plugins.netstack import icmp, icmpv6, ipv4, ipv6
from ingot.plugins.netstack.buffers import view
from ingot.plugins.netstack.checksum import checksum, ones_sum, pseudo
from ingot.plugins.netstack.errors import ParseError
from ingot.signatures import ClientRules, FilterSetup

from .conntrack import (SECOND_NS, TCP_ESTABLISHED_TIMEOUT_NS, UDP_ASSURED_TIMEOUT_NS,
                        UDP_TIMEOUT_NS, Connection, Conntrack, inverse)
from .rewrite import REPLY as _REPLY
from .rewrite import REQUEST as _REQUEST
from .rewrite import delta as _delta
from .rewrite import deltas as _deltas
from .rewrite import finish as _finish
from .rewrite import martian as _martian
from .rewrite import multicast as _multicast
from .rewrite import rewrite as _rewrite
from .rewrite import rewrite_quoted as _rewrite_quoted
from .rules import Matcher

UPLINK = "uplink"
"""The ``ingress``/``egress`` name of the upstream interface."""

FRAGMENT_TIMEOUT_NS = 30 * SECOND_NS
MAX_FRAGMENT_FLOWS = 1024
REPLY_TTL = 64
MAX_ICMPV6_ERROR = 1280
"""An ICMPv6 error fits the IPv6 minimum MTU (RFC 4443 section 2.4)."""

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58

# ICMP query types: where the identifier goes in a flow's tuple.
_ICMP_REQUEST = frozenset({8, 13, 15, 17})
_ICMP_REPLY = frozenset({0, 14, 16, 18})
_ICMP_ERROR = frozenset({3, 4, 5, 11, 12})
_ICMP6_REQUEST = frozenset({128})
_ICMP6_REPLY = frozenset({129})

_NOFRAG, _FIRST, _LATER = 0, 1, 2

_PORTS = struct.Struct("!HH")
_HDR4 = struct.Struct("!BBHHHBBH4s4s")
_H = struct.Struct("!H")
# the fast path's view of an IPv4 header without options and the ports after it:
# version/IHL, total length, flags/fragment offset, TTL, protocol, header checksum,
# source, destination, source port, destination port
_FAST4 = struct.Struct("!BxHxxHBBH4s4sHH")
_pack_H_into = _H.pack_into
_TCP_EST_NS = TCP_ESTABLISHED_TIMEOUT_NS
_UDP_NS, _UDP_ASSURED_NS = UDP_TIMEOUT_NS, UDP_ASSURED_TIMEOUT_NS


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``packet`` (bytes-like: a ``bytearray``, or a view of the
    caller's buffer with ``in_place``) out of ``egress`` (``"uplink"`` or a
    client address)."""

    egress: str
    packet: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Drop:
    """The packet was dropped for ``reason`` (counted ``drop.<reason>``);
    ``reply``, if not None, is an IP packet to send back out of the ingress
    interface (ICMP unreachable or time exceeded). ``rule`` is the NNNN of
    the drop rule that matched, if one did."""

    reason: str
    reply: bytes | None = None
    rule: int | None = None


Verdict = Forward | Drop


class _Packet:
    """What the engine needs of one packet; offsets into the buffer."""

    __slots__ = ("v6", "src", "dst", "proto", "l4", "end", "frag", "ident", "ttl", "key",
                 "flags", "itype", "icode", "ip4", "frag_offset", "query")

    def __init__(self) -> None:
        self.key = None
        self.query = 0  # _REQUEST, _REPLY: an ICMP query; 0: not one
        self.flags = 0
        self.itype = None
        self.icode = 0
        self.ip4 = None
        self.frag_offset = 0


def _packed(text: str, what: str) -> bytes:
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IP address") from None


def _canonical(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


class Engine:
    """The verdict, NAT and conntrack engine for one firewall (see the module
    docstring for what it does with each packet)."""

    def __init__(self, setup: FilterSetup) -> None:
        self.setup = setup
        self.counters: dict[str, int] = {}
        self.conntrack = Conntrack(setup.max_connections, self.counters)
        self._uplink4 = _packed(setup.uplink_ip, "uplink_ip")
        self._cgw4 = _packed(setup.client_gateway, "client_gateway")
        self._vdns = tuple(_packed(a, "virtual_dns address") for a in setup.virtual_dns)
        self._updns = tuple(_packed(a, "upstream_dns address") for a in setup.upstream_dns)
        self._v6 = bool(setup.uplink_ip6 and setup.client_gateway6)
        self._uplink6 = _packed(setup.uplink_ip6, "uplink_ip6") if self._v6 else b""
        self._cgw6 = _packed(setup.client_gateway6, "client_gateway6") if self._v6 else b""
        mine = {self._uplink4, self._cgw4}
        if self._v6:
            mine |= {self._uplink6, self._cgw6}
        self._mine = frozenset(mine)             # no packet from upstream has these sources
        self._own = frozenset(mine | set(self._vdns))  # clients reach none of these
        self._clients: dict[str, bytes] = {}       # ingress name -> packed address
        self._by_addr: dict[bytes, str] = {}       # packed address -> ingress name
        self._rules: dict[str, ClientRules] = {}   # canonical address -> rules
        self._matchers: dict[str, Matcher] = {}
        self._frags: OrderedDict[tuple, tuple] = OrderedDict()
        # ICMP errors we send: a token bucket (rate per second, burst a twentieth)
        self._now = 0
        self._err_rate = max(0, setup.icmp_error_rate)
        self._err_burst = max(1, self._err_rate // 20)
        self._err_tokens = float(self._err_burst)
        self._err_at = 0

    # -- control plane -------------------------------------------------------

    @property
    def ipv6(self) -> bool:
        """Whether IPv6 is handled (else dropped)."""
        return self._v6

    def attach(self, client_ip: str) -> None:
        """A client with address ``client_ip`` is behind its own interface,
        named by that address in :meth:`handle`. Until :meth:`set_rules` it is
        denied everything. ``ValueError`` if it is not an address."""
        addr = _packed(client_ip, "client address")
        old = self._by_addr.get(addr)
        if old is not None and old != client_ip:
            self.detach(old)
        self._clients[client_ip] = addr
        self._by_addr[addr] = client_ip

    def detach(self, client_ip: str) -> None:
        """Forget the client, its rules and every flow from or to it. Never raises."""
        addr = self._clients.pop(client_ip, None)
        if addr is not None and self._by_addr.get(addr) == client_ip:
            del self._by_addr[addr]
        key = _canonical(client_ip)
        self._rules.pop(key, None)
        self._matchers.pop(key, None)
        self.conntrack.remove_where(
            lambda c: c.orig_iface == client_ip or c.reply_iface == client_ip)
        for k in [k for k, v in self._frags.items() if client_ip in (v[1], v[2])]:
            del self._frags[k]

    def set_rules(self, rules: ClientRules, *, recheck: bool = False) -> None:
        """Replace the rules of ``rules.client`` (attached or not yet). Its
        tracked flows live on, unless ``recheck``: then those the new rules
        would not admit are forgotten."""
        key = _canonical(rules.client)
        m = Matcher(rules, self._vdns)
        self._rules[key] = rules
        self._matchers[key] = m
        if recheck:
            def denied(c: Connection) -> bool:
                return _canonical(c.client) == key and bool(c.match) and \
                    m.verdict(*c.match)[0] != "accept"
            self.conntrack.remove_where(denied)

    def rules(self, client_ip: str) -> ClientRules | None:
        """The rules set for ``client_ip``, if any."""
        return self._rules.get(_canonical(client_ip))

    def expire(self, now_ns: int) -> int:
        """Forget expired flows and fragment records; how many flows."""
        for k in [k for k, v in self._frags.items() if v[0] <= now_ns]:
            del self._frags[k]
        return self.conntrack.expire(now_ns)

    def stats(self) -> dict[str, int]:
        """The counters, plus ``conntrack.entries`` and ``fragments.entries``."""
        out = dict(sorted(self.counters.items()))
        out["conntrack.entries"] = len(self.conntrack)
        out["fragments.entries"] = len(self._frags)
        return out

    # -- data plane ----------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _drop(self, reason: str, reply: bytes | None = None, rule: int | None = None) -> Drop:
        self._count("drop." + reason)
        return Drop(reason, reply, rule)

    def handle(self, now_ns: int, ingress: str, packet: bytes | bytearray | memoryview, *,
               partial_csum: bool = False, in_place: bool = False) -> Verdict:
        """The verdict on one IP ``packet`` that arrived on ``ingress``
        (``"uplink"`` or a client address) at ``now_ns``. Never raises on
        any bytes."""
        try:
            mv = view(packet)
        except (TypeError, ValueError):
            return self._drop("malformed")
        fast = self._fast(now_ns, ingress, mv, partial_csum, in_place)
        if fast is not None:
            return Forward(fast[0], fast[1])
        self._now = now_ns
        try:
            if not len(mv):
                raise ParseError("ip", "empty packet")
            version = mv[0] >> 4
            if version == 4:
                p = self._parse4(mv)
            elif version == 6:
                if not self._v6:
                    return self._drop("ipv6")
                p = self._parse6(mv)
            else:
                raise ParseError("ip", f"version {version}")
            if ingress == UPLINK:
                return self._from_uplink(now_ns, mv, p, partial_csum, in_place)
            return self._from_client(now_ns, ingress, mv, p, partial_csum, in_place)
        except ParseError:
            return self._drop("malformed")

    # -- the fast path ---------------------------------------------------------

    def _fast(self, now: int, ingress: str, mv: memoryview, partial: bool,
              in_place: bool) -> tuple[str, bytearray | memoryview] | None:
        """A TCP or UDP packet over IPv4 without options, not a fragment, TTL
        above 1, of a tracked live flow in the direction it belongs to: the
        same edits and bookkeeping as the general path, with the per-flow
        work done once. ``(egress, packet)``; None for anything else (then the
        general path decides, from the start)."""
        if len(mv) < 40 or mv[0] != 0x45:
            return None
        _, total, frag, ttl, proto, hck, src, dst, sport, dport = _FAST4.unpack_from(mv)
        if frag & 0x3FFF or ttl <= 1 or total > len(mv) or total < 28:
            return None
        if proto == TCP:
            if total < 40:
                return None
        elif proto != UDP:
            return None
        if ingress == UPLINK:
            if src in self._by_addr or src in self._mine:
                return None
        elif self._clients.get(ingress) != src:
            return None
        ct = self.conntrack
        key = (proto, src, sport, dst, dport)
        c = ct._keys.get(key)
        if c is None or c.deadline <= now:
            return None
        if key == c.orig and ingress == c.orig_iface:
            is_reply = False
        elif key == c.reply and ingress == c.reply_iface:
            is_reply = True
        else:
            return None
        # the header checksum (the general path drops a bad one as malformed)
        if int.from_bytes(mv[:20], "big") % 0xFFFF:
            return None
        fast = c.fast
        if fast is None:
            fast = c.fast = [None, None]
        f = fast[is_reply]
        if f is None:
            new = inverse(c.orig) if is_reply else c.nat
            d_full, d_addr = _deltas(proto, 0, False, key, new)
            f = fast[is_reply] = (
                c.orig_iface if is_reply else c.reply_iface,
                None if key == new else _PORTS.pack(new[2], new[4]),
                new[1] + new[3], d_full, d_addr,
                # the IPv4 header's sum changes by the addresses and the TTL word's -0x100
                _delta(src + dst, new[1] + new[3]) + 0xFEFF)
        egress, ports, addrs, d_full, d_addr, ip_k = f
        # conntrack: Conntrack.seen, inline
        if proto == TCP:
            flags = mv[33]
            if flags & 0x05:  # FIN, RST
                c.closing = True
            elif flags & 0x02 and not flags & 0x10 and not is_reply:  # SYN without ACK
                if c.closing:
                    c.closing = c.replied = False
            elif is_reply:
                c.replied = True
            c.deadline = now + (_TCP_EST_NS if c.replied and not c.closing
                                else c.timeout())
        else:  # UDP
            if is_reply:
                c.replied = True
            c.deadline = now + (_UDP_ASSURED_NS if c.replied else _UDP_NS)
        ct._lru.move_to_end(c.orig)
        buf = mv[:total] if in_place and not mv.readonly else bytearray(mv[:total])
        if ports is not None:
            ck_at = 36 if proto == TCP else 26
            ck = (buf[ck_at] << 8) | buf[ck_at + 1]
            buf[20:24] = ports
            if partial:
                n = ck + d_addr
                _pack_H_into(buf, ck_at, (n % 0xFFFF or 0xFFFF) if n else 0)
            elif proto == UDP and ck == 0:
                pass  # no checksum
            else:
                n = (0xFFFF ^ ck) + d_full
                ck = 0xFFFF ^ ((n % 0xFFFF or 0xFFFF) if n else 0)
                _pack_H_into(buf, ck_at, 0xFFFF if ck == 0 and proto == UDP else ck)
        buf[8] = ttl - 1
        buf[12:20] = addrs
        n = (0xFFFF ^ hck) + ip_k
        _pack_H_into(buf, 10, 0xFFFF ^ (n % 0xFFFF or 0xFFFF))
        counters = self.counters
        counters["forwarded"] = counters.get("forwarded", 0) + 1
        return egress, buf

    # -- parsing -------------------------------------------------------------

    def _parse4(self, mv: memoryview) -> _Packet:
        p = _Packet()
        p.v6 = False
        if len(mv) >= 20 and mv[0] == 0x45:  # the common case, without options
            _, _, total, ident, frag, ttl, proto, _, src, dst = _HDR4.unpack_from(mv)
            if not 20 <= total <= len(mv):
                ipv4.parse(mv)  # raises the right ParseError
            if ones_sum(mv[:20]) != 0xFFFF:
                raise ParseError("ipv4", "bad header checksum")
            p.src, p.dst, p.proto, p.ttl, p.l4, p.end = src, dst, proto, ttl, 20, total
            p.ident = ident
            p.frag_offset = off = (frag & 0x1FFF) << 3
            p.frag = _LATER if off else (_FIRST if frag & 0x2000 else _NOFRAG)
        else:
            ip = p.ip4 = ipv4.parse(mv)
            p.src, p.dst, p.proto, p.ttl = ip.src, ip.dst, ip.proto, ip.ttl
            p.l4 = ip.header_length
            p.end = ip.total_length
            p.ident = ip.ident
            p.frag_offset = ip.frag_offset
            p.frag = _LATER if ip.frag_offset else (_FIRST if ip.mf else _NOFRAG)
        if p.frag != _LATER:
            self._parse_l4(mv, p)
        return p

    def _parse6(self, mv: memoryview) -> _Packet:
        ip = ipv6.parse(mv)
        p = _Packet()
        p.v6 = True
        p.src, p.dst, p.proto, p.ttl = ip.src, ip.dst, ip.proto, ip.hop_limit
        p.end = ipv6.HEADER_LEN + ip.payload_length
        p.l4 = p.end - len(ip.payload)
        f = ip.fragment
        if f is None:
            p.frag, p.ident = _NOFRAG, 0
        else:
            p.ident = f.ident
            p.frag_offset = f.offset
            p.frag = _LATER if f.offset else (_FIRST if f.more else _NOFRAG)
        if p.frag != _LATER:
            self._parse_l4(mv, p)
        return p

    def _parse_l4(self, mv: memoryview, p: _Packet) -> None:
        """Ports, flags, ICMP type and the flow tuple; ParseError if the
        transport header is cut short."""
        l4, end, proto = p.l4, p.end, p.proto
        size = end - l4
        if proto == TCP or proto == UDP:
            if size < (20 if proto == TCP else 8):
                raise ParseError("tcp" if proto == TCP else "udp", "header cut short")
            sport, dport = _PORTS.unpack_from(mv, l4)
            if proto == TCP:
                p.flags = mv[l4 + 13]
            p.key = (proto, p.src, sport, p.dst, dport)
        elif proto == (ICMPV6 if p.v6 else ICMP):
            if size < 8:
                raise ParseError("icmp", "header cut short")
            if p.frag == _NOFRAG:
                body = mv[l4:end]
                init = pseudo(p.src, p.dst, ICMPV6, size) if p.v6 else 0
                if ones_sum(body, init) != 0xFFFF:
                    raise ParseError("icmp", "bad checksum")
            t = p.itype = mv[l4]
            p.icode = mv[l4 + 1]
            ident = _H.unpack_from(mv, l4 + 4)[0]
            if t in (_ICMP6_REQUEST if p.v6 else _ICMP_REQUEST):
                p.query = _REQUEST
                p.key = (proto, p.src, ident, p.dst, 0)
            elif t in (_ICMP6_REPLY if p.v6 else _ICMP_REPLY):
                p.query = _REPLY
                p.key = (proto, p.src, 0, p.dst, ident)
        else:
            p.key = (proto, p.src, 0, p.dst, 0)

    def _is_error(self, p: _Packet) -> bool:
        if p.itype is None:
            return False
        return p.itype < 128 if p.v6 else p.itype in _ICMP_ERROR

    # -- client side ---------------------------------------------------------

    def _from_client(self, now: int, ingress: str, mv: memoryview, p: _Packet,
                     partial: bool, in_place: bool) -> Verdict:
        addr = self._clients.get(ingress)
        if addr is None:
            return self._drop("unknown client")
        if p.src != addr:
            return self._drop("spoofed")
        if p.frag == _LATER:
            return self._later_fragment(now, ingress, mv, p, in_place)
        if self._is_error(p):
            if p.frag != _NOFRAG:
                return self._drop("fragment")
            return self._related(now, ingress, mv, p, in_place)
        key = p.key
        if key is None:
            return self._drop("icmp")
        c = self.conntrack.lookup(key, now)
        if c is not None:
            v = self._tracked(now, ingress, mv, p, c, partial, in_place)
            if v is not None:
                return v
        dst = p.dst
        if _multicast(dst):
            return self._drop("multicast")
        if _martian(dst) or dst == p.src:
            return self._drop("martian")
        proto = p.proto
        dport = key[4] if proto in (TCP, UDP) else None
        is_dns = dst in self._vdns and dport == 53
        if not is_dns and dst in self._own:
            if p.itype == (icmpv6.ECHO_REQUEST if p.v6 else icmp.ECHO_REQUEST) and \
                    p.frag == _NOFRAG and dst == (self._cgw6 if p.v6 else self._cgw4):
                return self._echo_reply(ingress, mv, p)
            return self._drop("to firewall", self._unreachable(mv, p, host=True))
        if p.query == _REPLY:
            return self._drop("invalid")  # an ICMP reply nobody asked for
        matcher = self._matchers.get(_canonical(ingress))
        if matcher is None:
            return self._drop("no rules", self._unreachable(mv, p))
        itype = p.itype
        action, rule = matcher.verdict(dst, proto, dport, itype)
        if action != "accept":
            if rule is not None:
                reason = "rule"
            elif matcher.rules.error:
                reason = "rules error"
            else:
                reason = "policy"
            return self._drop(reason, self._unreachable(mv, p),
                              rule.number if rule is not None else None)
        if p.ttl <= 1:
            return self._drop("ttl", self._time_exceeded(mv, p, ingress))
        other = self._by_addr.get(dst)
        if other is not None:
            nat = key
            egress = other
        else:
            src = self._uplink6 if p.v6 else self._uplink4
            ndst = dst
            if is_dns:
                if not self._updns:
                    return self._drop("no dns")
                ndst = self._updns[min(self._vdns.index(dst), len(self._updns) - 1)]
            nat = self.conntrack.allocate((proto, src, key[2], ndst, key[4]), now)
            if nat is None:
                return self._drop("nat exhausted")
            egress = UPLINK
        c = self.conntrack.add(key, nat, ingress, ingress, egress, now, p.flags,
                               (dst, proto, dport, itype))
        if c is None:
            return self._drop("conflict")
        return self._emit(now, ingress, egress, mv, p, key, nat, partial, in_place)

    def _tracked(self, now: int, ingress: str, mv: memoryview, p: _Packet, c: Connection,
                 partial: bool, in_place: bool) -> Verdict | None:
        key = p.key
        if key == c.orig and ingress == c.orig_iface:
            new, egress, is_reply = c.nat, c.reply_iface, False
        elif key == c.reply and ingress == c.reply_iface:
            new, egress, is_reply = inverse(c.orig), c.orig_iface, True
        else:
            return None
        if p.ttl <= 1:
            return self._drop("ttl", self._time_exceeded(mv, p, ingress))
        self.conntrack.seen(c, is_reply, p.flags, now)
        cache = c.cache
        if cache is None:
            cache = c.cache = [None, None]
        deltas = cache[is_reply]
        if deltas is None and key != new:
            deltas = cache[is_reply] = _deltas(p.proto, p.query, p.v6, key, new)
        return self._emit(now, ingress, egress, mv, p, key, new, partial, in_place, deltas)

    # -- uplink side ---------------------------------------------------------

    def _from_uplink(self, now: int, mv: memoryview, p: _Packet, partial: bool,
                     in_place: bool) -> Verdict:
        if p.src in self._by_addr or p.src in self._mine:
            return self._drop("spoofed")
        if p.frag == _LATER:
            return self._later_fragment(now, UPLINK, mv, p, in_place)
        if self._is_error(p):
            if p.frag != _NOFRAG:
                return self._drop("fragment")
            return self._related(now, UPLINK, mv, p, in_place)
        if p.key is not None:
            c = self.conntrack.lookup(p.key, now)
            if c is not None:
                v = self._tracked(now, UPLINK, mv, p, c, partial, in_place)
                if v is not None:
                    return v
        return self._drop("no connection")

    # -- rewriting -----------------------------------------------------------

    def _buffer(self, mv: memoryview, end: int, in_place: bool):
        if in_place and not mv.readonly:
            return mv[:end]
        return bytearray(mv[:end])

    def _emit(self, now: int, ingress: str, egress: str, mv: memoryview, p: _Packet,
              old: tuple, new: tuple, partial: bool, in_place: bool,
              deltas: tuple[int, int] | None = None) -> Forward:
        buf = self._buffer(mv, p.end, in_place)
        if old != new:
            if deltas is None:
                deltas = _deltas(p.proto, p.query, p.v6, old, new)
            _rewrite(buf, p.v6, p.l4, p.proto, p.query, new, deltas, partial)
        _finish(buf, p.v6, p.l4, new[1], new[3])
        if p.frag == _FIRST:
            self._remember_fragment(now, ingress, egress, p, new)
        self._count("forwarded")
        return Forward(egress, buf)

    def _remember_fragment(self, now: int, ingress: str, egress: str, p: _Packet,
                           new: tuple) -> None:
        k = (ingress, p.src, p.dst, p.proto, p.ident)
        self._frags.pop(k, None)
        while len(self._frags) >= MAX_FRAGMENT_FLOWS:
            self._frags.popitem(last=False)
        self._frags[k] = (now + FRAGMENT_TIMEOUT_NS, ingress, egress, new[1], new[3])

    def _later_fragment(self, now: int, ingress: str, mv: memoryview, p: _Packet,
                        in_place: bool) -> Verdict:
        if p.proto == TCP and p.frag_offset == 8:
            return self._drop("fragment")  # RFC 1858: would overwrite the TCP flags
        rec = self._frags.get((ingress, p.src, p.dst, p.proto, p.ident))
        if rec is None or rec[0] <= now:
            return self._drop("fragment")
        _, _, egress, nsrc, ndst = rec
        if egress != UPLINK and egress not in self._clients:
            return self._drop("fragment")
        if p.ttl <= 1:
            return self._drop("ttl")  # no ICMP error about a later fragment
        buf = self._buffer(mv, p.end, in_place)
        _finish(buf, p.v6, p.l4, nsrc, ndst)
        self._count("forwarded")
        return Forward(egress, buf)

    # -- ICMP errors about tracked flows ------------------------------------

    def _related(self, now: int, ingress: str, mv: memoryview, p: _Packet,
                 in_place: bool) -> Verdict:
        q = p.l4 + 8  # the quoted packet
        end = p.end
        qv6 = p.v6
        if qv6:
            if end - q < 40 + 8 or mv[q] >> 4 != 6:
                return self._drop("invalid")
            qhl = 40
            qproto = mv[q + 6]
            qsrc, qdst = bytes(mv[q + 8:q + 24]), bytes(mv[q + 24:q + 40])
        else:
            if end - q < 20 or mv[q] >> 4 != 4:
                return self._drop("invalid")
            qhl = (mv[q] & 0xF) * 4
            if qhl < 20 or end - q < qhl + 8:
                return self._drop("invalid")
            if int.from_bytes(mv[q + 6:q + 8], "big") & 0x1FFF:
                return self._drop("invalid")  # a later fragment: no ports
            qproto = mv[q + 9]
            qsrc, qdst = bytes(mv[q + 12:q + 16]), bytes(mv[q + 16:q + 20])
        ql4 = q + qhl
        qquery = 0
        if qproto in (TCP, UDP):
            sport, dport = _PORTS.unpack_from(mv, ql4)
            qkey = (qproto, qsrc, sport, qdst, dport)
        elif qproto == (ICMPV6 if qv6 else ICMP):
            qtype = mv[ql4]
            ident = _H.unpack_from(mv, ql4 + 4)[0]
            if qtype in (_ICMP6_REQUEST if qv6 else _ICMP_REQUEST):
                qquery = _REQUEST
                qkey = (qproto, qsrc, ident, qdst, 0)
            elif qtype in (_ICMP6_REPLY if qv6 else _ICMP_REPLY):
                qquery = _REPLY
                qkey = (qproto, qsrc, 0, qdst, ident)
            else:
                return self._drop("invalid")
        else:
            qkey = (qproto, qsrc, 0, qdst, 0)
        look = inverse(qkey)
        c = self.conntrack.lookup(look, now)
        if c is None:
            return self._drop("no connection" if ingress == UPLINK else "invalid")
        if look == c.reply and ingress == c.reply_iface:
            # an error about an original-direction packet, coming back
            inner_new = c.orig
            out_src = c.orig[3] if p.src == c.nat[3] else p.src
            out_dst = c.orig[1]
            egress = c.orig_iface
        elif look == c.orig and ingress == c.orig_iface:
            # the client's error about a reply it got
            inner_new = inverse(c.nat)
            out_src = c.nat[1]
            out_dst = c.nat[3] if p.dst == c.orig[3] else p.dst
            egress = c.reply_iface
        else:
            return self._drop("no connection" if ingress == UPLINK else "invalid")
        if p.ttl <= 1:
            return self._drop("ttl")  # no ICMP error about an ICMP error
        buf = self._buffer(mv, end, in_place)
        if qkey != inner_new:
            _rewrite_quoted(buf, q, qv6, qhl, qproto, qquery, qkey, inner_new, end)
        l4 = p.l4
        buf[l4 + 2:l4 + 4] = b"\0\0"
        init = pseudo(out_src, out_dst, ICMPV6, end - l4) if p.v6 else 0
        buf[l4 + 2:l4 + 4] = _H.pack(checksum(buf[l4:end], init))
        _finish(buf, p.v6, l4, out_src, out_dst)
        self._count("forwarded")
        self._count("forwarded.related")
        return Forward(egress, buf)

    # -- answers -------------------------------------------------------------

    def _echo_reply(self, ingress: str, mv: memoryview, p: _Packet) -> Verdict:
        body = mv[p.l4 + 4:p.end]  # identifier, sequence, data
        self._count("local.echo")
        if p.v6:
            msg = icmpv6.build(icmpv6.ECHO_REPLY, 0, body, p.dst, p.src)
            return Forward(ingress, ipv6.build(p.dst, p.src, ICMPV6, msg, hop_limit=REPLY_TTL))
        msg = icmp.build(icmp.ECHO_REPLY, 0, _H.unpack_from(body, 0)[0] << 16
                         | _H.unpack_from(body, 2)[0], body[4:])
        return Forward(ingress, ipv4.build(p.dst, p.src, ICMP, msg, ttl=REPLY_TTL))

    def _error_allowed(self, mv: memoryview, p: _Packet) -> bool:
        if p.v6:
            if p.frag == _LATER or ipv6.is_multicast(p.dst) or ipv6.is_multicast(p.src):
                return False
            if p.src == bytes(16):
                return False
            if p.itype is not None and p.itype < 128:
                return False
        else:
            if p.ip4 is None:
                p.ip4 = ipv4.parse(mv)
            if not icmp.error_allowed(p.ip4):
                return False
        return self._error_token()

    def _error_token(self) -> bool:
        """Take a token for one ICMP error (False: over the rate, counted)."""
        if not self._err_rate:
            return True
        now = self._now
        tokens = self._err_tokens + (now - self._err_at) * self._err_rate / 1e9
        self._err_at = now
        if tokens > self._err_burst:
            tokens = self._err_burst
        if tokens < 1.0:
            self._err_tokens = tokens
            self._count("icmp.rate_limited")
            return False
        self._err_tokens = tokens - 1.0
        return True

    def _from_addr(self, p: _Packet, ingress: str) -> bytes:
        if ingress == UPLINK:
            return self._uplink6 if p.v6 else self._uplink4
        return self._cgw6 if p.v6 else self._cgw4

    def _unreachable(self, mv: memoryview, p: _Packet, host: bool = False) -> bytes | None:
        """ICMP administratively prohibited (host prohibited with ``host``)
        from the client gateway to the sender of ``p``."""
        if not self._error_allowed(mv, p):
            return None
        if p.v6:
            return self._icmp6_error(mv, p, self._cgw6, icmpv6.DEST_UNREACHABLE, 1)
        code = icmp.HOST_PROHIBITED if host else icmp.ADMIN_PROHIBITED
        return ipv4.build(self._cgw4, p.src, ICMP, icmp.dest_unreachable(code, mv[:p.end]),
                          ttl=REPLY_TTL)

    def _time_exceeded(self, mv: memoryview, p: _Packet, ingress: str) -> bytes | None:
        if not self._error_allowed(mv, p):
            return None
        src = self._from_addr(p, ingress)
        if p.v6:
            return self._icmp6_error(mv, p, src, icmpv6.TIME_EXCEEDED, 0)
        return ipv4.build(src, p.src, ICMP, icmp.time_exceeded(icmp.TTL_EXCEEDED, mv[:p.end]),
                          ttl=REPLY_TTL)

    def _icmp6_error(self, mv: memoryview, p: _Packet, src: bytes, type_: int,
                     code: int) -> bytes:
        room = MAX_ICMPV6_ERROR - ipv6.HEADER_LEN - 8
        body = b"\0\0\0\0" + bytes(mv[:min(p.end, room)])
        msg = icmpv6.build(type_, code, body, src, p.src)
        return ipv6.build(src, p.src, ICMPV6, msg, hop_limit=REPLY_TTL)
