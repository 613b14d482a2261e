"""The direct stack's host: one Ethernet interface, one IPv4 address, sans-I/O.

Frames and time in, frames and delivered datagrams out. Rules:

* Ethernet: frames for our MAC, broadcast or multicast are taken; others
  are dropped and counted (``host.not_our_mac``). VLAN-tagged frames are
  dropped (``host.vlan``).
* ARP (through :class:`ingot.plugins.netstack.arp.ArpCache`): requests for
  our address are answered; packets to an unresolved next hop wait in the
  cache's queue and leave when the reply comes, or are dropped after three
  unanswered requests.
* IPv4: the header checksum and lengths are checked; fragments are
  reassembled (limits and overlap rules of
  :class:`~ingot.plugins.netstack.ipv4.Reassembler`). Packets for us are our
  address, 255.255.255.255 and the subnet's broadcast; while no address is
  configured, UDP to port 68 (a DHCP client) to any address is taken too.
  Nothing is forwarded: others are dropped (``host.not_our_ip``).
* ICMP: an echo request to our address is answered; other messages are
  counted. No ICMP is ever sent about an ICMP error, a broadcast or a
  fragment other than the first (RFC 1122 3.2.2).
* UDP: the checksum is checked; a datagram to an open port is delivered
  (:class:`Deliver`); to a closed port it gets ICMP port unreachable.
* TCP: not implemented; a segment gets a RST (so a client's connect fails
  at once with "connection refused"), except a RST itself.
* Sending: to the subnet (or a broadcast) directly, elsewhere through the
  gateway; without a route the datagram is dropped (``host.no_route``).
  Datagrams above the MTU are fragmented.

Every malformed input is dropped and counted in ``counters`` under its
layer's name (``ethernet.malformed``, ``ipv4.malformed``...): nothing
raises out of :meth:`Host.input`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from ingot.plugins.netstack import arp, ethernet, icmp, ipv4, tcp, udp
from ingot.plugins.netstack.counters import Counters
from ingot.plugins.netstack.errors import ParseError

ZERO = b"\0\0\0\0"
BROADCAST_IP = b"\xff\xff\xff\xff"
DHCP_CLIENT_PORT = 68


@dataclass(frozen=True, slots=True)
class Transmit:
    """Put ``frame`` on the wire."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """A UDP datagram for the socket bound to ``dst_port``."""

    src: bytes
    src_port: int
    dst: bytes
    dst_port: int
    payload: bytes


Output = Transmit | Deliver


@dataclass(frozen=True, slots=True)
class Config:
    """The interface's IPv4 configuration."""

    address: bytes
    prefix: int
    gateway: bytes | None = None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int.from_bytes(self.address, "big"), self.prefix),
                                     strict=False)

    @property
    def broadcast(self) -> bytes:
        return self.network.broadcast_address.packed

    def on_link(self, ip: bytes) -> bool:
        return ipaddress.IPv4Address(ip) in self.network

    @classmethod
    def parse(cls, cidr: str, gateway: str = "") -> "Config":
        """From ``"10.137.0.2/24"`` and an optional gateway; ``ValueError`` if bad."""
        iface = ipaddress.IPv4Interface(cidr)
        if iface.network.prefixlen == 32 or iface.ip == iface.network.network_address:
            if iface.network.prefixlen != 32:
                raise ValueError(f"{cidr} is the network address, not a host address")
        gw = ipaddress.IPv4Address(gateway).packed if gateway else None
        if gw is not None and ipaddress.IPv4Address(gw) not in iface.network:
            raise ValueError(f"gateway {gateway} is not inside {iface.network}")
        return cls(iface.ip.packed, iface.network.prefixlen, gw)


class Host:
    """The state of one interface. See the module docstring for its rules."""

    def __init__(self, mac: bytes, mtu: int = 1500, *, counters: Counters | None = None,
                 is_open: Callable[[int], bool] = lambda port: False) -> None:
        self.mac = mac
        self.mtu = mtu
        self.counters = counters if counters is not None else Counters()
        self.is_open = is_open
        self.config: Config | None = None
        self.arp = arp.ArpCache(mac, counters=self.counters)
        self.reassembler = ipv4.Reassembler(counters=self.counters)
        self._ident = 0

    # -- configuration ----------------------------------------------------
    def configure(self, config: Config | None) -> list[Output]:
        """Take an address (None: drop it); returns a gratuitous ARP to send."""
        if self.config is not None:
            self.arp.remove_address(self.config.address)
        self.config = config
        if config is None:
            return []
        self.arp.add_address(config.address)
        return [Transmit(self.arp.gratuitous(config.address))]

    # -- time -------------------------------------------------------------
    def next_deadline(self) -> int | None:
        times = [t for t in (self.arp.next_deadline(), self.reassembler.next_deadline())
                 if t is not None]
        return min(times, default=None)

    def tick(self, now_ns: int) -> list[Output]:
        out = self._arp_events(self.arp.tick(now_ns))
        for first in self.reassembler.expire(now_ns):
            if self.config is not None and first.dst == self.config.address:
                out += self._send_ip(first.src, ipv4.PROTO_ICMP, icmp.time_exceeded(
                    icmp.REASSEMBLY_TIME_EXCEEDED, first.to_bytes()), now_ns)
        return out

    # -- input ------------------------------------------------------------
    def input(self, frame: bytes, now_ns: int) -> list[Output]:
        """One received Ethernet frame."""
        try:
            eth = ethernet.parse(frame)
        except ParseError:
            self.counters.incr("ethernet.malformed")
            return []
        if eth.dst != self.mac and not eth.dst[0] & 1:
            self.counters.incr("host.not_our_mac")
            return []
        if eth.vlan is not None:
            self.counters.incr("host.vlan")
            return []
        if eth.ethertype == ethernet.ETHERTYPE_ARP:
            try:
                pkt = arp.parse(eth.payload)
            except ParseError:
                self.counters.incr("arp.malformed")
                return []
            return self._arp_events(self.arp.input(pkt, now_ns))
        if eth.ethertype == ethernet.ETHERTYPE_IPV4:
            return self._ipv4(eth.payload, now_ns)
        self.counters.incr("host.other_ethertype")
        return []

    def _ipv4(self, data: memoryview, now_ns: int) -> list[Output]:
        try:
            pkt = ipv4.parse(data)
        except ParseError:
            self.counters.incr("ipv4.malformed")
            return []
        cfg = self.config
        to_us = cfg is not None and pkt.dst == cfg.address
        broadcast = pkt.dst == BROADCAST_IP or (cfg is not None and pkt.dst == cfg.broadcast)
        if not (to_us or broadcast or (cfg is None and pkt.proto == ipv4.PROTO_UDP)):
            self.counters.incr("host.not_our_ip")
            return []
        if pkt.is_fragment:
            whole = self.reassembler.push(pkt, now_ns)
            if whole is None:
                return []
            pkt = whole
        self.counters.incr("ipv4.received")
        if pkt.proto == ipv4.PROTO_UDP:
            return self._udp(pkt, to_us, now_ns)
        if pkt.proto == ipv4.PROTO_ICMP:
            return self._icmp(pkt, to_us, now_ns)
        if pkt.proto == ipv4.PROTO_TCP and to_us:
            return self._tcp_reset(pkt, now_ns)
        self.counters.incr("ipv4.unknown_protocol")
        if to_us and icmp.error_allowed(pkt):
            return self._send_ip(pkt.src, ipv4.PROTO_ICMP, icmp.dest_unreachable(
                icmp.PROTOCOL_UNREACHABLE, pkt.to_bytes()), now_ns)
        return []

    def _udp(self, pkt: ipv4.IPv4Packet, to_us: bool, now_ns: int) -> list[Output]:
        try:
            dgram = udp.parse(pkt.payload, pkt.src, pkt.dst)
        except ParseError:
            self.counters.incr("udp.malformed")
            return []
        if self.config is None and dgram.dst_port != DHCP_CLIENT_PORT:
            self.counters.incr("host.not_our_ip")
            return []
        if self.is_open(dgram.dst_port):
            self.counters.incr("udp.delivered")
            return [Deliver(pkt.src, dgram.src_port, pkt.dst, dgram.dst_port,
                            bytes(dgram.payload))]
        self.counters.incr("udp.closed_port")
        if to_us and icmp.error_allowed(pkt):
            return self._send_ip(pkt.src, ipv4.PROTO_ICMP, icmp.dest_unreachable(
                icmp.PORT_UNREACHABLE, pkt.to_bytes()), now_ns)
        return []

    def _icmp(self, pkt: ipv4.IPv4Packet, to_us: bool, now_ns: int) -> list[Output]:
        try:
            msg = icmp.parse(pkt.payload)
        except ParseError:
            self.counters.incr("icmp.malformed")
            return []
        if msg.type == icmp.ECHO_REQUEST and to_us:
            self.counters.incr("icmp.echo_replied")
            return self._send_ip(pkt.src, ipv4.PROTO_ICMP, icmp.reply_to(msg), now_ns)
        self.counters.incr(f"icmp.type{msg.type}")
        return []

    def _tcp_reset(self, pkt: ipv4.IPv4Packet, now_ns: int) -> list[Output]:
        try:
            seg = tcp.parse(pkt.payload, pkt.src, pkt.dst)
        except ParseError:
            self.counters.incr("tcp.malformed")
            return []
        self.counters.incr("tcp.refused")
        if seg.flags & tcp.RST:
            return []
        if seg.flags & tcp.ACK:
            reply = tcp.build(seg.dst_port, seg.src_port, seg.ack, 0, tcp.RST, 0,
                              src=pkt.dst, dst=pkt.src)
        else:
            length = len(seg.payload) + (1 if seg.flags & tcp.SYN else 0) + (
                1 if seg.flags & tcp.FIN else 0)
            reply = tcp.build(seg.dst_port, seg.src_port, 0, (seg.seq + length) & 0xFFFFFFFF,
                              tcp.RST | tcp.ACK, 0, src=pkt.dst, dst=pkt.src)
        return self._send_ip(pkt.src, ipv4.PROTO_TCP, reply, now_ns)

    # -- output -----------------------------------------------------------
    def send_udp(self, src_port: int, dst: bytes, dst_port: int, payload: bytes,
                 now_ns: int) -> list[Output]:
        """A datagram from our address (0.0.0.0 before one is configured)."""
        src = self.config.address if self.config is not None else ZERO
        segment = udp.build(src_port, dst_port, payload, src, dst)
        return self._send_ip(dst, ipv4.PROTO_UDP, segment, now_ns)

    def _send_ip(self, dst: bytes, proto: int, payload: bytes, now_ns: int) -> list[Output]:
        cfg = self.config
        src = cfg.address if cfg is not None else ZERO
        if dst == BROADCAST_IP or (cfg is not None and dst == cfg.broadcast):
            next_hop, mac = dst, ethernet.BROADCAST
        elif cfg is not None and cfg.on_link(dst):
            next_hop, mac = dst, None
        elif cfg is not None and cfg.gateway is not None:
            next_hop, mac = cfg.gateway, None
        else:
            self.counters.incr("host.no_route")
            return []
        out: list[Output] = []
        for packet in self._fragments(src, dst, proto, payload):
            if mac is not None:
                out.append(Transmit(ethernet.build(mac, self.mac, ethernet.ETHERTYPE_IPV4,
                                                   packet)))
            else:
                out += self._arp_events(self.arp.resolve(next_hop, packet, now_ns))
        self.counters.incr("ipv4.sent")
        return out

    def _fragments(self, src: bytes, dst: bytes, proto: int, payload: bytes) -> list[bytes]:
        self._ident = (self._ident + 1) & 0xFFFF
        room = self.mtu - ipv4.HEADER_LEN
        if len(payload) <= room:
            return [ipv4.build(src, dst, proto, payload, ident=self._ident, flags=ipv4.FLAG_DF
                               if proto == ipv4.PROTO_TCP else 0)]
        step = room & ~7
        out = []
        for offset in range(0, len(payload), step):
            last = offset + step >= len(payload)
            out.append(ipv4.build(src, dst, proto, payload[offset:offset + step],
                                  ident=self._ident, frag_offset=offset,
                                  flags=0 if last else ipv4.FLAG_MF))
        self.counters.incr("ipv4.fragmented")
        return out

    def _arp_events(self, events: list[arp.ArpEvent]) -> list[Output]:
        out: list[Output] = []
        for ev in events:
            if isinstance(ev, arp.SendFrame):
                out.append(Transmit(ev.frame))
            elif isinstance(ev, arp.Resolved):
                for packet in ev.packets:
                    out.append(Transmit(ethernet.build(ev.mac, self.mac,
                                                       ethernet.ETHERTYPE_IPV4, packet)))
            elif isinstance(ev, arp.Unreachable):
                self.counters.incr("host.next_hop_unreachable", len(ev.packets))
            else:
                self.counters.incr("host.arp_dropped")
        return out
