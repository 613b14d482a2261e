"""The Ethernet, ARP and IPv6 neighbour discovery side of a Qubes firewall VM, sans-I/O.

The engine (:mod:`.engine`) sees IP packets and interface names: ``"uplink"``
or a client's IP address. This module turns the frames the interfaces carry
into those packets and back; it owns every MAC address and every ARP
exchange. Nothing here does I/O: time is an argument (``now_ns``), and each
call returns events for the adapter to carry out (dataclasses, to be treated as
immutable; not frozen because a frozen dataclass costs four times as much
to make, and one or two are made per packet):

* :class:`Deliver`: an IP packet (Ethernet header and padding removed) that
  arrived on interface ``ingress``, for the engine;
* :class:`Transmit`: put ``frame`` on interface ``iface``;
* :class:`Dropped`: a frame or packet was dropped (already counted) for
  ``reason``, e.g. to log it.

Each event carries ``meta``, an opaque value the caller attached to a packet
(the adapter's virtio-net header of a GSO super-packet): a packet handed to
:meth:`L2.output` comes back in its :class:`Transmit` with the same ``meta``,
also after waiting for ARP, so a super-packet leaves with its header. The
Ethernet header is 14 bytes on both sides (VLAN-tagged frames are dropped),
so offsets in such a header stay valid between a frame in and a frame out.

Client side (each client is behind its own interface, a point-to-point /32
link, as Qubes' ``vif-route-qubes`` sets it up):

1. Every ARP request from the client is answered with the firewall's MAC on
   that interface, whatever address it asks for (the client gateway, another
   client, anything), except the client's own address (a gratuitous ARP or a
   duplicate-address probe: no answer) -- proxy ARP, as Linux does for
   Qubes and qubes-mirage-firewall does. A probe (sender 0.0.0.0) is
   answered only for the client gateway. A request whose sender address is
   not the client's is dropped (``l2.arp_spoofed``).
2. The client's MAC is learnt from the source of every valid frame it sends
   (ARP or IP); a change is followed (``l2.client_mac_changed``). Packets to
   a client whose MAC is not known yet wait (at most ``queue_per_ip``) while
   ARP requests from the client gateway address ask for it (``tries`` of
   them, ``retry_ns`` apart); then they are dropped (``l2.client_unreachable``).
3. IP frames must be addressed to the firewall's MAC on that interface;
   others (another unicast MAC: ``l2.not_for_us``, a group MAC:
   ``l2.group_frame``) are dropped: a firewall forwards no broadcast.

Uplink side (the firewall is ``uplink_ip`` with the uplink device's MAC):

4. ARP goes through :class:`~ingot.plugins.netstack.arp.ArpCache`: requests
   for ``uplink_ip`` are answered; replies are learnt, with expiry. At start
   (:meth:`L2.start`) a gratuitous ARP announces ``uplink_ip`` and a request
   asks for the gateway. A few seconds before the gateway's entry expires,
   traffic to it sends a fresh request (at most one a second), so a busy
   uplink does not stall on re-resolution.
5. Every packet to upstream goes to the gateway's MAC, or straight to the
   destination when it lies on the uplink subnet (``uplink_prefix``).
   Packets wait in the cache while an address is resolved (at most
   ``queue_per_ip`` per address; beyond that the oldest is dropped and
   counted: ``arp.queue_full``); after three unanswered requests they are
   dropped (``l2.uplink_unreachable``).
6. IP frames must be addressed to the uplink MAC, as on the client side.

IPv6 (on when the setup has ``uplink_ip6`` and ``client_gateway6``, as in the
engine; without them IPv6 frames go to the engine, which drops them, and an
IPv6 packet to upstream is ``l2.ipv6_uplink``). Neighbour discovery (RFC
4861, :mod:`~ingot.plugins.netstack.ndp`) takes the place of ARP; ND
messages (ICMPv6 133-137 right after the fixed header) never reach the
engine, and one that fails RFC 4861's validity checks (hop limit 255,
checksum, code 0, lengths, options) is dropped and counted
(``l2.nd_malformed``):

7. A client's IPv6 address is a client of its own (:meth:`L2.attach` with an
   IPv6 address): by default behind a device of its own, named by that
   address, which then ignores IPv4 and ARP (``l2.other_family``) while the
   IPv4 address's device ignores IPv6 (``l2.ipv6_no_client``); or, with
   ``iface=``, sharing the IPv4 address's device, IPv6 frames on it being
   this client's. Its MAC is learnt as for IPv4, from IPv6 frames; unknown,
   packets wait while solicitations from ``client_gateway6`` ask for it.
8. Solicitations from the client (from its address, a link-local one, or
   ``::`` for duplicate address detection; another source is
   ``l2.nd_spoofed``) for ``client_gateway6`` or the firewall's EUI-64
   link-local address on that interface are answered (Router, Solicited,
   Override flags; a DAD probe of ours is answered to all-nodes); for
   anything else, the client's own address included, nothing is said. A
   router solicitation is counted and left unanswered (Qubes configures
   clients statically: no router advertisements); an RA or redirect from a
   client is dropped.
9. Upstream, every IPv6 packet goes to ``uplink_gateway6``'s MAC (Qubes gives
   the firewall a /128 and the gateway as an on-link route), resolved by
   :class:`~ingot.plugins.netstack.ndp.NeighborCache` with the same queue,
   retries and expiry as ARP (counters ``nd.*``) and refreshed by a unicast
   solicitation a few seconds before its entry runs out. Solicitations for
   ``uplink_ip6`` (or the uplink's link-local address) are answered; at
   start an unsolicited advertisement announces ``uplink_ip6`` and a
   solicitation asks for the gateway. Router advertisements change nothing.

Both sides: a frame that does not parse (``l2.malformed``, ``l2.arp_malformed``),
an IP packet whose version or lengths are wrong (``l2.ip_malformed``), a
VLAN tag (``l2.vlan``), another EtherType (``l2.ethertype``) or a frame
sent from the interface's own MAC (``l2.own_frame``) is dropped and
counted; nothing raises on bad input. IP packets are cut at their total
length (Ethernet padding removed). Counters are shared with the caller
(:class:`~ingot.plugins.netstack.counters.Counters`, names ``l2.*`` and
the caches' ``arp.*`` and ``nd.*``).

Call :meth:`L2.tick` at :meth:`L2.next_deadline` (ARP and ND retries and expiry);
:attr:`L2.deadline_changed` tells when to look at the deadline again.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from ingot.plugins.netstack import arp, ethernet, icmpv6, ndp
from ingot.plugins.netstack import ipv4 as ipv4_mod
from ingot.plugins.netstack import ipv6 as ipv6_mod
from ingot.plugins.netstack.arp import ArpCache
from ingot.plugins.netstack.ndp import NeighborCache
from ingot.plugins.netstack.counters import Counters
from ingot.plugins.netstack.errors import ParseError
from ingot.signatures import FilterSetup

UPLINK = "uplink"
"""The name of the upstream interface (the engine's name for it too)."""

_SECOND = 1_000_000_000
_ETH_IPV4 = ethernet.ETHERTYPE_IPV4
_ETH_IPV6 = ethernet.ETHERTYPE_IPV6
_ETH_ARP = ethernet.ETHERTYPE_ARP
_ETH_VLAN = ethernet.ETHERTYPE_VLAN
_ETH_QINQ = ethernet.ETHERTYPE_QINQ
_TYPE_IPV4 = struct.pack("!H", _ETH_IPV4)
_TYPE_IPV6 = struct.pack("!H", _ETH_IPV6)
_ZERO_IP = bytes(4)
_ZERO_MAC = bytes(6)
_HLEN = ethernet.HEADER_LEN
_MIN_PAYLOAD = ethernet.MIN_FRAME - _HLEN


@dataclass(slots=True)
class Deliver:
    """An IP packet that arrived on ``ingress`` (``"uplink"`` or a client IP)."""

    ingress: str
    packet: memoryview  # a view of the frame, cut at the IP total length
    meta: Any = None


@dataclass(slots=True)
class Transmit:
    """Put ``frame`` (a whole Ethernet frame) on interface ``iface``."""

    iface: str
    frame: bytes | bytearray
    meta: Any = None


@dataclass(slots=True)
class Dropped:
    """Something from or for ``iface`` was dropped (and counted) for ``reason``."""

    iface: str
    reason: str
    meta: Any = None


Event = Deliver | Transmit | Dropped


def _frame(dst: bytes, src: bytes, etype: bytes, packet: bytes) -> bytes:
    """An Ethernet frame, padded to the 60-byte minimum when short."""
    if len(packet) < _MIN_PAYLOAD:
        return b"".join((dst, src, etype, packet, bytes(_MIN_PAYLOAD - len(packet))))
    return b"".join((dst, src, etype, packet))


class _Client:
    __slots__ = ("name", "ip", "mac", "peer", "header4", "header6", "queue", "tries",
                 "next_ns", "iface", "v6", "ll")

    def __init__(self, name: str, ip: bytes, mac: bytes, iface: str | None = None) -> None:
        self.name = name                 # the engine's name: the client's address
        self.iface = iface or name       # the interface its frames come and go on
        self.ip = ip
        self.v6 = len(ip) == 16
        self.mac = mac                   # the firewall's MAC on this interface
        self.ll = ndp.link_local(mac)    # the firewall's link-local address there
        self.peer: bytes | None = None   # the client's MAC, once learnt
        self.header4 = b""
        self.header6 = b""
        self.queue: list[tuple[bytes, Any]] = []
        self.tries = 0
        self.next_ns: int | None = None

    def learn(self, mac: bytes) -> None:
        self.peer = mac
        self.header4 = mac + self.mac + _TYPE_IPV4
        self.header6 = mac + self.mac + _TYPE_IPV6


class L2:
    """The Ethernet/ARP layer of the firewall; see the module docstring.

    ``uplink_mac`` is the uplink interface's MAC. Clients are added with
    :meth:`attach` (with the firewall's MAC on the client's interface).
    """

    def __init__(self, setup: FilterSetup, uplink_mac: bytes, *,
                 queue_per_ip: int = 8, retry_ns: int = _SECOND, tries: int = 3,
                 reachable_ns: int = 60 * _SECOND, refresh_ns: int = 5 * _SECOND,
                 counters: Counters | None = None) -> None:
        self.counters = counters if counters is not None else Counters()
        self.uplink_mac = uplink_mac
        self.uplink_ip = ipv4_mod.addr(setup.uplink_ip)
        self.gateway = ipv4_mod.addr(setup.uplink_gateway)
        self.client_gateway = ipv4_mod.addr(setup.client_gateway)
        net = ipaddress.IPv4Network(f"{setup.uplink_ip}/{setup.uplink_prefix}", strict=False)
        self._net = int(net.network_address)
        self._mask = int(net.netmask)
        self._subnet_broadcast = net.broadcast_address.packed if net.prefixlen < 31 else None
        self.queue_per_ip = queue_per_ip
        self.retry_ns = retry_ns
        self.tries = tries
        self.reachable_ns = reachable_ns
        self.refresh_ns = refresh_ns
        self.cache = ArpCache(uplink_mac, [self.uplink_ip], reachable_ns=reachable_ns,
                              retry_ns=retry_ns, tries=tries, queue_per_ip=queue_per_ip,
                              counters=self.counters)
        self._clients: dict[str, _Client] = {}
        # IPv6: on with an uplink address and a client gateway, as in the engine
        self.ipv6 = bool(setup.uplink_ip6 and setup.client_gateway6)
        self.uplink_ip6 = ipv6_mod.addr(setup.uplink_ip6) if self.ipv6 else b""
        self.client_gateway6 = ipv6_mod.addr(setup.client_gateway6) if self.ipv6 else b""
        self.gateway6 = (ipv6_mod.addr(setup.uplink_gateway6)
                         if self.ipv6 and setup.uplink_gateway6 else None)
        self.cache6 = NeighborCache(uplink_mac, [self.uplink_ip6, ndp.link_local(uplink_mac)],
                                    reachable_ns=reachable_ns, retry_ns=retry_ns, tries=tries,
                                    queue_per_ip=queue_per_ip, counters=self.counters)
        self._clients6: dict[str, _Client] = {}   # by the client's IPv6 address
        self._by_iface6: dict[str, _Client] = {}  # by the interface its frames come on
        self._gw6_probe_ns = 0
        # the gateway's MAC and when it was last confirmed by ARP (fast path)
        self._gw_mac: bytes | None = None
        self._gw_header4 = b""
        self._gw_seen = 0
        self._gw_probe_ns = 0
        self.deadline_changed = False
        """Set when :meth:`next_deadline` may have moved earlier; the caller clears it."""

    # -- clients ---------------------------------------------------------------

    def attach(self, client_ip: str, mac: bytes, *, iface: str | None = None) -> None:
        """Client ``client_ip`` is behind an interface where the firewall has ``mac``.

        Re-attaching replaces the client (its learnt MAC and queue are forgotten).
        An IPv6 address (the setup must have IPv6, else ``ValueError``) is a
        client of its own for the engine; ``iface`` names the interface its
        frames come in on and go out of (:class:`Transmit`, ``input``): by
        default ``client_ip`` itself (a device of its own, which then ignores
        IPv4 and ARP), or the IPv4 address of the same VM when both share one
        device (IPv6 frames on it are then this client's).
        """
        if ":" not in client_ip:
            self._clients[client_ip] = _Client(client_ip, ipv4_mod.addr(client_ip), mac)
            return
        if not self.ipv6:
            raise ValueError(f"IPv6 client {client_ip}: the setup has no IPv6 addresses")
        self.detach(client_ip)
        client = _Client(client_ip, ipv6_mod.addr(client_ip), mac, iface)
        self._clients6[client_ip] = client
        self._by_iface6[client.iface] = client

    def detach(self, client_ip: str) -> list[Event]:
        """Forget a client; packets waiting for its MAC are dropped."""
        client = self._clients.pop(client_ip, None)
        if client is None:
            client = self._clients6.pop(client_ip, None)
            if client is not None and self._by_iface6.get(client.iface) is client:
                del self._by_iface6[client.iface]
        if client is None or not client.queue:
            return []
        self.counters.incr("l2.client_detached_queued", len(client.queue))
        return [Dropped(client_ip, "client detached", meta) for _, meta in client.queue]

    def client_mac(self, client_ip: str) -> bytes | None:
        """The MAC learnt for a client (None: not yet, or no such client)."""
        client = self._clients.get(client_ip) or self._clients6.get(client_ip)
        return client.peer if client is not None else None

    @property
    def clients(self) -> tuple[str, ...]:
        return (*self._clients, *self._clients6)

    # -- start, timers -----------------------------------------------------------

    def start(self, now_ns: int) -> list[Event]:
        """Announce ``uplink_ip`` (and ``uplink_ip6``) and ask for the gateway(s)."""
        self._gw_probe_ns = now_ns + self.retry_ns
        self.counters.incr("arp.request_sent")
        self.deadline_changed = True
        out = [Transmit(UPLINK, self.cache.gratuitous(self.uplink_ip)),
               Transmit(UPLINK, arp.request_frame(self.uplink_mac, self.uplink_ip,
                                                  self.gateway))]
        if self.ipv6:
            out.append(Transmit(UPLINK, ndp.advertisement_frame(
                self.uplink_mac, self.uplink_ip6, b"", ndp.ALL_NODES)))
            if self.gateway6 is not None:
                self._gw6_probe_ns = now_ns + self.retry_ns
                self.counters.incr("nd.request_sent")
                out.append(Transmit(UPLINK, ndp.solicitation_frame(
                    self.uplink_mac, self.uplink_ip6, self.gateway6)))
        return out

    def _all_clients(self):
        yield from self._clients.values()
        yield from self._clients6.values()

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has work next (None: nothing waits)."""
        at = self.cache.next_deadline()
        at6 = self.cache6.next_deadline()
        if at6 is not None and (at is None or at6 < at):
            at = at6
        for client in self._all_clients():
            if client.next_ns is not None and (at is None or client.next_ns < at):
                at = client.next_ns
        return at

    def tick(self, now_ns: int) -> list[Event]:
        """ARP retries and expiry, on both sides."""
        out = self._arp_events(self.cache.tick(now_ns))
        out += self._arp_events(self.cache6.tick(now_ns), _TYPE_IPV6)
        if self._gw_mac is not None and self.cache.lookup(self.gateway, now_ns) is None:
            self._gw_mac = None
        counters = self.counters
        for client in self._all_clients():
            if client.next_ns is None or client.next_ns > now_ns:
                continue
            if client.tries >= self.tries:
                counters.incr("l2.client_unreachable", len(client.queue))
                reason = ("client MAC unknown (no neighbour advertisement)" if client.v6
                          else "client MAC unknown (no ARP answer)")
                out.extend(Dropped(client.name, reason, meta) for _, meta in client.queue)
                client.queue = []
                client.tries = 0
                client.next_ns = None
            else:
                client.tries += 1
                client.next_ns = now_ns + self.retry_ns
                out.append(self._ask(client))
        return out

    def _ask(self, client: _Client) -> Transmit:
        """An ARP request (a neighbour solicitation) for the client's MAC."""
        if client.v6:
            self.counters.incr("l2.client_nd_request")
            return Transmit(client.iface, ndp.solicitation_frame(
                client.mac, self.client_gateway6, client.ip))
        self.counters.incr("l2.client_arp_request")
        return Transmit(client.iface, arp.request_frame(client.mac, self.client_gateway,
                                                        client.ip))

    # -- frames in ------------------------------------------------------------

    def input(self, now_ns: int, iface: str, frame: bytes, meta: Any = None) -> list[Event]:
        """A frame that arrived on ``iface``: what to do with it."""
        counters = self.counters
        if len(frame) < _HLEN:
            counters.incr("l2.malformed")
            return [Dropped(iface, "malformed Ethernet frame", meta)]
        client6 = None
        if iface == UPLINK:
            own = self.uplink_mac
            client = None
        else:
            client = self._clients.get(iface)
            if self._by_iface6:
                client6 = self._by_iface6.get(iface)
            if client is None and client6 is None:
                counters.incr("l2.unknown_interface")
                return [Dropped(iface, "frame from an interface without client", meta)]
            own = client.mac if client is not None else client6.mac  # type: ignore[union-attr]
        # the header as ethernet.parse reads it, without the cost of its dataclass on
        # the path every packet takes
        etype = (frame[12] << 8) | frame[13]
        if etype == _ETH_VLAN or etype == _ETH_QINQ:
            counters.incr("l2.vlan")
            return [Dropped(iface, "VLAN-tagged frame", meta)]
        src = frame[6:12]
        if src == own:
            counters.incr("l2.own_frame")
            return [Dropped(iface, "frame sent from our own MAC", meta)]
        if src[0] & 1:
            counters.incr("l2.group_source")
            return [Dropped(iface, "frame from a group MAC", meta)]
        if etype == _ETH_IPV4 or etype == _ETH_IPV6:
            if iface != UPLINK:
                if etype == _ETH_IPV6 and self.ipv6:
                    if client6 is None:  # IPv6 is on, but not for this interface's client
                        counters.incr("l2.ipv6_no_client")
                        return []
                    client = client6
                elif client is None:  # IPv4 on the device of a client's IPv6 address
                    counters.incr("l2.other_family")
                    return []
            packet = self._ip_payload(frame, etype)
            if packet is None:
                counters.incr("l2.ip_malformed")
                return [Dropped(iface, "malformed IP header", meta)]
            if etype == _ETH_IPV6 and self.ipv6 and ndp.is_nd(packet):
                return self._nd_input(now_ns, iface, client, frame, packet, meta)
            out = self._learn(client, src) if client is not None and client.peer != src else None
            dst = frame[:6]
            if dst != own:
                if dst[0] & 1:
                    counters.incr("l2.group_frame")
                    drop = Dropped(iface, "broadcast or multicast IP frame", meta)
                else:
                    counters.incr("l2.not_for_us")
                    drop = Dropped(iface, "IP frame for another MAC", meta)
                return [*out, drop] if out else [drop]
            name = client.name if client is not None else UPLINK
            if out:
                out.append(Deliver(name, packet, meta))
                return out
            return [Deliver(name, packet, meta)]
        if etype == _ETH_ARP:
            if client is None and iface != UPLINK:
                counters.incr("l2.other_family")
                return []
            try:
                pkt = arp.parse(ethernet.parse(frame).payload)
            except ParseError:
                counters.incr("l2.arp_malformed")
                return [Dropped(iface, "malformed ARP packet", meta)]
            self.deadline_changed = True
            if client is None:
                return self._uplink_arp(pkt, now_ns)
            return self._client_arp(client, pkt, src)
        counters.incr("l2.ethertype")
        return [Dropped(iface, f"EtherType {etype:#06x}", meta)]

    def fast_input(self, iface: str, frame: bytes | bytearray) -> memoryview | None:
        """The common case of :meth:`input` without its events: an IPv4 frame
        from a known MAC (the client's learnt one), for our MAC, whose lengths
        are right. Its packet (as :class:`Deliver` would carry it), or None:
        then :meth:`input` decides (nothing was counted or learnt here)."""
        n = len(frame) - _HLEN
        if n < 20 or frame[12] != 8 or frame[13] != 0:
            return None
        vi = frame[14]
        if vi >> 4 != 4:
            return None
        if iface == UPLINK:
            own = self.uplink_mac
            src = frame[6:12]
            if src == own or src[0] & 1:
                return None
        else:
            client = self._clients.get(iface)
            if client is None or client.peer is None or frame[6:12] != client.peer:
                return None
            own = client.mac
        if frame[:6] != own:
            return None
        ihl = (vi & 15) * 4
        total = (frame[16] << 8) | frame[17]
        if ihl < 20 or total < ihl or total > n:
            return None
        if total == n:
            return memoryview(frame)[_HLEN:]
        return memoryview(frame)[_HLEN:_HLEN + total]

    def fast_output(self, now_ns: int, egress: str, frame: bytearray) -> bool:
        """The common case of :meth:`output` with ``frame``, without its
        events: an IPv4 packet of at least the minimum payload that fills
        ``frame`` from byte 14, to the gateway while its MAC is fresh (and no
        refresh is due) or to a client whose MAC is known. Writes the Ethernet
        header into ``frame`` and returns True (send ``frame``); False: call
        :meth:`output` (nothing was done)."""
        if len(frame) - _HLEN < _MIN_PAYLOAD or frame[_HLEN] >> 4 != 4:
            return False
        if egress == UPLINK:
            gw_mac = self._gw_mac
            if gw_mac is None:
                return False
            dst = frame[30:34]
            if int.from_bytes(dst, "big") & self._mask == self._net and dst != self.gateway:
                return False
            age = now_ns - self._gw_seen
            if age >= self.reachable_ns or (age > self.reachable_ns - self.refresh_ns
                                            and now_ns >= self._gw_probe_ns):
                return False
            frame[:_HLEN] = self._gw_header4
            return True
        client = self._clients.get(egress)
        if client is None or client.peer is None:
            return False
        frame[:_HLEN] = client.header4
        return True

    @staticmethod
    def _ip_payload(frame: bytes, etype: int) -> memoryview | None:
        """The IP packet after the Ethernet header (a view of ``frame``), cut at its
        length; None if it is wrong.

        Only what framing needs is checked here (version, header and total
        lengths); the engine parses the rest.
        """
        n = len(frame) - _HLEN
        if etype == _ETH_IPV4:
            if n < ipv4_mod.HEADER_LEN or frame[14] >> 4 != 4:
                return None
            ihl = (frame[14] & 15) * 4
            total = (frame[16] << 8) | frame[17]
            if ihl < ipv4_mod.HEADER_LEN or total < ihl or total > n:
                return None
        else:
            if n < 40 or frame[14] >> 4 != 6:
                return None
            total = 40 + ((frame[18] << 8) | frame[19])
            if total > n:
                return None
        if total == n:  # no padding: a view, the engine copies what it forwards
            return memoryview(frame)[_HLEN:]
        return memoryview(frame)[_HLEN:_HLEN + total]

    def _learn(self, client: _Client, mac: bytes) -> list[Event]:
        if client.peer is None:
            self.counters.incr("l2.client_mac_learnt")
        else:
            self.counters.incr("l2.client_mac_changed")
        client.learn(mac)
        out: list[Event] = []
        if client.queue:
            for packet, meta in client.queue:
                out.append(Transmit(client.iface, self._client_frame(client, packet), meta))
            client.queue = []
        client.tries = 0
        client.next_ns = None
        return out

    def _client_arp(self, client: _Client, pkt: arp.ArpPacket, src: bytes) -> list[Event]:
        counters = self.counters
        name = client.name
        if pkt.spa != client.ip and pkt.spa != _ZERO_IP:
            counters.incr("l2.arp_spoofed")
            return [Dropped(name, "ARP from an address that is not the client's")]
        out = self._learn(client, src) if client.peer != src else []
        if pkt.op != arp.OP_REQUEST:
            counters.incr("l2.arp_reply_in")
            return out
        if pkt.tpa == client.ip:
            counters.incr("l2.arp_own_address")  # gratuitous or probe: not ours to answer
            return out
        if pkt.spa == _ZERO_IP and pkt.tpa != self.client_gateway:
            counters.incr("l2.arp_probe_ignored")
            return out
        if pkt.tpa[0] >= 0xE0 or pkt.tpa == _ZERO_IP:
            counters.incr("l2.arp_bad_target")
            return out
        counters.incr("l2.arp_answered")
        out.append(Transmit(name, arp.reply_frame(client.mac, pkt.tpa, pkt.sha, pkt.spa)))
        return out

    def _uplink_arp(self, pkt: arp.ArpPacket, now_ns: int) -> list[Event]:
        out = self._arp_events(self.cache.input(pkt, now_ns))
        if pkt.spa == self.gateway:
            mac = self.cache.lookup(self.gateway, now_ns)
            if mac is not None and mac == pkt.sha:
                self._gw_seen = now_ns
                if mac != self._gw_mac:
                    self._gw_mac = mac
                    self._gw_header4 = mac + self.uplink_mac + _TYPE_IPV4
        return out

    def _arp_events(self, events: list[Any], etype: bytes = _TYPE_IPV4) -> list[Event]:
        """The uplink cache's (ARP or neighbour discovery) events as L2's."""
        self.deadline_changed = True
        out: list[Event] = []
        for ev in events:
            if isinstance(ev, arp.SendFrame):
                out.append(Transmit(UPLINK, ev.frame))
            elif isinstance(ev, arp.Resolved):
                for packet, meta in ev.packets:
                    out.append(Transmit(UPLINK, _frame(ev.mac, self.uplink_mac, etype,
                                                       packet), meta))
            elif isinstance(ev, arp.Unreachable):
                self.counters.incr("l2.uplink_unreachable", len(ev.packets))
                what = "ARP" if etype == _TYPE_IPV4 else "neighbour advertisement"
                reason = f"no {what} answer from {ipaddress.ip_address(ev.ip)}"
                out.extend(Dropped(UPLINK, reason, meta) for _, meta in ev.packets)
            elif isinstance(ev, arp.Dropped):
                out.append(Dropped(UPLINK, ev.reason, ev.packet[1]))
        return out

    # -- neighbour discovery ---------------------------------------------------------

    def _nd_input(self, now_ns: int, iface: str, client: _Client | None, frame: bytes,
                  packet: memoryview, meta: Any) -> list[Event]:
        """A neighbour discovery message (ICMPv6 133-137) in ``frame``."""
        counters = self.counters
        name = client.name if client is not None else UPLINK
        try:
            msg = ndp.parse(ipv6_mod.parse(packet))
        except ParseError:
            counters.incr("l2.nd_malformed")
            return [Dropped(name, "malformed neighbour discovery message", meta)]
        own = client.mac if client is not None else self.uplink_mac
        dst_mac = frame[:6]
        if dst_mac != own and not (dst_mac[0] == 0x33 and dst_mac[1] == 0x33):
            counters.incr("l2.not_for_us")
            return [Dropped(name, "neighbour discovery for another MAC", meta)]
        src_mac = bytes(frame[6:12])
        self.deadline_changed = True
        if client is None:
            if msg.type == icmpv6.NEIGHBOR_SOLICITATION or \
                    msg.type == icmpv6.NEIGHBOR_ADVERTISEMENT:
                return self._arp_events(self.cache6.input(msg, src_mac, now_ns), _TYPE_IPV6)
            counters.incr("l2.nd_router_message")  # static addresses: RAs change nothing
            return []
        if msg.src != client.ip and msg.src != ndp.UNSPECIFIED and \
                not ndp.is_link_local(msg.src):
            counters.incr("l2.nd_spoofed")
            return [Dropped(name, "neighbour discovery from an address that is not the "
                                  "client's", meta)]
        out = self._learn(client, src_mac) if client.peer != src_mac else []
        if msg.type == icmpv6.NEIGHBOR_SOLICITATION:
            target = msg.target
            if target == self.client_gateway6 or target == client.ll:
                counters.incr("l2.nd_answered")
                to = msg.src if msg.src != ndp.UNSPECIFIED else ndp.ALL_NODES
                out.append(Transmit(client.iface, ndp.advertisement_frame(
                    client.mac, target, msg.lladdr or src_mac, to, router=True)))
            elif target == client.ip:
                counters.incr("l2.nd_own_address")  # duplicate address detection: not ours
            else:
                counters.incr("l2.nd_not_ours")
        elif msg.type == icmpv6.NEIGHBOR_ADVERTISEMENT:
            counters.incr("l2.nd_advert_in")
        elif msg.type == icmpv6.ROUTER_SOLICITATION:
            counters.incr("l2.nd_router_solicitation")  # Qubes configures clients statically
        else:
            counters.incr("l2.nd_router_message")
            out.append(Dropped(name, "router advertisement or redirect from a client", meta))
        return out

    def _output6(self, now_ns: int, packet: bytes | bytearray | memoryview, meta: Any,
                 frame: bytearray | None) -> list[Event]:
        """An IPv6 packet to upstream: to the gateway's MAC, resolved by solicitations."""
        counters = self.counters
        if not self.ipv6 or len(packet) < 40:
            counters.incr("l2.ipv6_uplink" if not self.ipv6 else "l2.bad_output")
            return [Dropped(UPLINK, "no IPv6 on the uplink" if not self.ipv6
                            else "not an IP packet", meta)]
        gw = self.gateway6
        if gw is None:
            counters.incr("l2.no_gateway6")
            return [Dropped(UPLINK, "no IPv6 gateway (/qubes-gateway6)", meta)]
        cache = self.cache6
        mac = cache.lookup(gw, now_ns)
        if mac is None:
            # queued while the gateway is resolved: a copy, the frame's buffer may be reused
            return self._arp_events(cache.resolve(gw, (bytes(packet), meta), now_ns,
                                                  self.uplink_ip6), _TYPE_IPV6)
        if frame is not None and len(packet) >= _MIN_PAYLOAD:
            frame[:_HLEN] = mac + self.uplink_mac + _TYPE_IPV6
            out: list[Event] = [Transmit(UPLINK, frame, meta)]
        else:
            out = [Transmit(UPLINK, _frame(mac, self.uplink_mac, _TYPE_IPV6, packet), meta)]
        expires = cache.expires(gw)
        if expires is not None and expires - now_ns < self.refresh_ns and \
                now_ns >= self._gw6_probe_ns:
            # a unicast probe before the entry runs out, as for the IPv4 gateway
            self._gw6_probe_ns = now_ns + self.retry_ns
            counters.incr("nd.request_sent")
            counters.incr("l2.gateway6_refresh")
            out.append(Transmit(UPLINK, ndp.solicitation_frame(
                self.uplink_mac, self.uplink_ip6, gw, dst=gw, dst_mac=mac)))
        return out

    # -- packets out --------------------------------------------------------------

    def output(self, now_ns: int, egress: str, packet: bytes | bytearray | memoryview,
               meta: Any = None, *, frame: bytearray | None = None) -> list[Event]:
        """Send the IP packet ``packet`` out of ``egress`` (``"uplink"`` or a client IP).

        ``frame``: a writable buffer that holds ``packet`` from byte 14 to its
        end (the frame it arrived in, edited in place by the engine); the
        Ethernet header is then written into it rather than the packet copied
        behind a new one, and the :class:`Transmit` carries ``frame`` itself.
        """
        if not packet:
            self.counters.incr("l2.empty_packet")
            return [Dropped(egress, "empty packet", meta)]
        version = packet[0] >> 4
        if egress == UPLINK:
            if version == 6:
                return self._output6(now_ns, packet, meta, frame)
            if version != 4 or len(packet) < ipv4_mod.HEADER_LEN:
                self.counters.incr("l2.bad_output")
                return [Dropped(UPLINK, "not an IP packet", meta)]
            dst = bytes(packet[16:20])  # packet may be a view into the frame: keys must hash
            dst_int = int.from_bytes(dst, "big")
            if dst_int & self._mask == self._net and dst != self.gateway:
                if dst == self.uplink_ip:
                    self.counters.incr("l2.to_self")
                    return [Dropped(UPLINK, "packet to our own uplink address", meta)]
                if dst == self._subnet_broadcast:
                    return [Transmit(UPLINK, _frame(ethernet.BROADCAST, self.uplink_mac,
                                                    _TYPE_IPV4, packet), meta)]
                # queued while ARP resolves: a copy, the frame's buffer may be reused
                return self._arp_events(self.cache.resolve(dst, (bytes(packet), meta), now_ns))
            # the gateway: the fast path while its entry is fresh
            gw_mac = self._gw_mac
            if gw_mac is not None:
                age = now_ns - self._gw_seen
                if age < self.reachable_ns:
                    if frame is not None and len(packet) >= _MIN_PAYLOAD:
                        frame[:_HLEN] = self._gw_header4
                    elif len(packet) >= _MIN_PAYLOAD:
                        frame = self._gw_header4 + packet  # type: ignore[assignment]
                    else:
                        frame = _frame(gw_mac, self.uplink_mac, _TYPE_IPV4,  # type: ignore
                                       packet)
                    if age > self.reachable_ns - self.refresh_ns and now_ns >= self._gw_probe_ns:
                        self._gw_probe_ns = now_ns + self.retry_ns
                        self.counters.incr("arp.request_sent")
                        self.counters.incr("l2.gateway_refresh")
                        return [Transmit(UPLINK, frame, meta),
                                Transmit(UPLINK, arp.request_frame(
                                    self.uplink_mac, self.uplink_ip, self.gateway))]
                    return [Transmit(UPLINK, frame, meta)]
                self._gw_mac = None
            return self._arp_events(self.cache.resolve(self.gateway, (packet, meta), now_ns))
        client = self._clients.get(egress) or self._clients6.get(egress)
        if client is None:
            self.counters.incr("l2.unknown_egress")
            return [Dropped(egress, "no such client", meta)]
        if version != 4 and version != 6:
            self.counters.incr("l2.bad_output")
            return [Dropped(egress, "not an IP packet", meta)]
        if client.peer is not None:
            if frame is not None and len(packet) >= _MIN_PAYLOAD:
                frame[:_HLEN] = client.header4 if version == 4 else client.header6
                return [Transmit(client.iface, frame, meta)]
            return [Transmit(client.iface, self._client_frame(client, packet), meta)]
        client.queue.append((packet, meta))
        self.deadline_changed = True
        out: list[Event] = []
        if len(client.queue) > self.queue_per_ip:
            _, old = client.queue.pop(0)
            self.counters.incr("l2.client_queue_full")
            out.append(Dropped(egress, "queue full while the client MAC is resolved", old))
        if client.next_ns is None:
            client.tries = 1
            client.next_ns = now_ns + self.retry_ns
            out.append(self._ask(client))
        return out

    @staticmethod
    def _client_frame(client: _Client, packet: bytes | bytearray | memoryview) -> bytes:
        header = client.header4 if packet[0] >> 4 == 4 else client.header6
        if len(packet) < _MIN_PAYLOAD:
            return header + packet + bytes(_MIN_PAYLOAD - len(packet))
        return header + packet

