"""ARP for Ethernet and IPv4 (RFC 826): the packet, and :class:`ArpCache`.

Errors: :func:`parse` raises only :class:`~.errors.ParseError` (layer
``"arp"``); anything but hardware type 1 (Ethernet), protocol 0x0800,
lengths 6/4 and operation request/reply is refused. Addresses in
:class:`ArpPacket` are ``bytes`` (copies); trailing padding is ignored.

The cache is a state machine without I/O: every method takes the time
(``now_ns``, monotonic nanoseconds) and returns what to do as events
(frozen dataclasses), never calling out:

* :class:`SendFrame`: put this Ethernet frame on the wire (requests, replies);
* :class:`Resolved`: the address is known now; send these queued packets to it;
* :class:`Unreachable`: no answer after the retries; these packets are dropped
  (a stack may answer each with ICMP host unreachable);
* :class:`Dropped`: one packet dropped because a queue was full.

Rules, in the order :meth:`ArpCache.input` applies them:

1. Packets sent from our own MAC, or from a group MAC, are ignored (counted);
   so are, after rule 3, senders in 224.0.0.0/3 (multicast, reserved,
   broadcast), so that no packet can redirect group traffic.
2. A probe (sender IP 0.0.0.0, RFC 5227) asking for one of our addresses is
   answered, target IP 0.0.0.0, to the prober's MAC, as Linux does; nothing
   is learnt from a probe.
3. A sender claiming one of our addresses is a conflict: counted, not learnt.
4. RFC 826 merge: if the sender IP is already in the cache (or is being
   resolved), its MAC is refreshed; else it is learnt only if the packet is
   aimed at one of our addresses. Static entries are never overwritten.
5. A request for one of our addresses is answered.

Entries live ``reachable_ns`` (60 s) from their last refresh, then vanish
(the next packet resolves again). At most ``max_entries`` learnt entries are
kept; the least recently refreshed one makes room. An unresolved address
queues at most ``queue_per_ip`` packets (the oldest is dropped first), and
at most ``max_pending`` addresses are resolved at once (beyond that the
packet is dropped). A request is sent at once and repeated every
``retry_ns`` (1 s) until ``tries`` (3) were sent; one interval after the last
the address is given up. Call :meth:`ArpCache.tick` at
:meth:`ArpCache.next_deadline` (or more often).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import ethernet
from .buffers import Buffer, view
from .counters import Counters
from .errors import ParseError

OP_REQUEST = 1
OP_REPLY = 2
PACKET_LEN = 28

_PKT = struct.Struct("!HHBBH6s4s6s4s")
_LAYER = "arp"
_ZERO_IP = bytes(4)
_ZERO_MAC = bytes(6)
_SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """An Ethernet/IPv4 ARP packet: operation, sender and target hardware
    (MAC) and protocol (IPv4) addresses."""

    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes


def parse(data: Buffer) -> ArpPacket:
    """The ARP packet at the start of ``data`` (an Ethernet payload)."""
    mv = view(data)
    if len(mv) < PACKET_LEN:
        raise ParseError(_LAYER, f"{len(mv)} bytes is shorter than the 28-byte packet")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _PKT.unpack_from(mv)
    if htype != 1:
        raise ParseError(_LAYER, f"hardware type {htype} is not Ethernet (1)")
    if ptype != ethernet.ETHERTYPE_IPV4:
        raise ParseError(_LAYER, f"protocol type {ptype:#06x} is not IPv4")
    if hlen != 6 or plen != 4:
        raise ParseError(_LAYER, f"address lengths {hlen}/{plen} are not 6/4")
    if op != OP_REQUEST and op != OP_REPLY:
        raise ParseError(_LAYER, f"operation {op} is neither request (1) nor reply (2)")
    return ArpPacket(op, sha, spa, tha, tpa)


def build(pkt: ArpPacket) -> bytes:
    """The 28 bytes of ``pkt``."""
    return _PKT.pack(1, ethernet.ETHERTYPE_IPV4, 6, 4, pkt.op, pkt.sha, pkt.spa, pkt.tha, pkt.tpa)


def request_frame(mac: bytes, ip: bytes, target: bytes) -> bytes:
    """A broadcast Ethernet frame asking who has ``target``, from ``mac``/``ip``."""
    pkt = ArpPacket(OP_REQUEST, mac, ip, _ZERO_MAC, target)
    return ethernet.build(ethernet.BROADCAST, mac, ethernet.ETHERTYPE_ARP, build(pkt))


def reply_frame(mac: bytes, ip: bytes, to_mac: bytes, to_ip: bytes) -> bytes:
    """A unicast Ethernet frame telling ``to_mac``/``to_ip`` that ``ip`` is at ``mac``."""
    pkt = ArpPacket(OP_REPLY, mac, ip, to_mac, to_ip)
    return ethernet.build(to_mac, mac, ethernet.ETHERTYPE_ARP, build(pkt))


def gratuitous_frame(mac: bytes, ip: bytes) -> bytes:
    """A gratuitous ARP (an RFC 5227 announcement): a broadcast request with
    sender and target IP both ``ip``, so that neighbours update their caches."""
    return request_frame(mac, ip, ip)


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Put ``frame`` (a complete Ethernet frame) on the wire."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Resolved:
    """``ip`` is at ``mac``: send ``packets`` (queued earlier, oldest first) there."""

    ip: bytes
    mac: bytes
    packets: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Unreachable:
    """``ip`` did not answer; ``packets`` queued for it are dropped."""

    ip: bytes
    packets: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Dropped:
    """``packet`` for ``ip`` was dropped; ``reason`` says why."""

    ip: bytes
    packet: Any
    reason: str


ArpEvent = SendFrame | Resolved | Unreachable | Dropped


class _Pending:
    __slots__ = ("packets", "tries", "next_ns", "src")

    def __init__(self, src: bytes, next_ns: int) -> None:
        self.packets: list[Any] = []
        self.tries = 1
        self.next_ns = next_ns
        self.src = src


class ArpCache:
    """The neighbour table of one Ethernet interface with MAC ``mac`` and
    IPv4 ``addresses`` (4-byte ``bytes``). See the module docstring for the
    rules. Queued packets are opaque: the cache hands them back as they were
    given."""

    PREFIX = "arp."
    """The prefix of this cache's counter names."""
    QUEUE_FULL = "ARP queue full"

    def __init__(self, mac: bytes, addresses: Iterable[bytes] = (), *,
                 reachable_ns: int = 60 * _SECOND, retry_ns: int = _SECOND, tries: int = 3,
                 queue_per_ip: int = 16, max_pending: int = 256, max_entries: int = 1024,
                 counters: Counters | None = None) -> None:
        self.mac = mac
        self._addresses: list[bytes] = list(dict.fromkeys(addresses))
        self.reachable_ns = reachable_ns
        self.retry_ns = retry_ns
        self.tries = tries
        self.queue_per_ip = queue_per_ip
        self.max_pending = max_pending
        self.max_entries = max_entries
        self.counters = counters if counters is not None else Counters()
        # ip -> (mac, expires_ns); ordered by last refresh, so by expiry.
        self._entries: dict[bytes, tuple[bytes, int]] = {}
        self._static: dict[bytes, bytes] = {}
        self._pending: dict[bytes, _Pending] = {}

    # -- configuration --------------------------------------------------

    @property
    def addresses(self) -> tuple[bytes, ...]:
        """Our IPv4 addresses, the first one being the source of requests."""
        return tuple(self._addresses)

    def add_address(self, ip: bytes) -> None:
        """Answer requests for ``ip`` too."""
        if ip not in self._addresses:
            self._addresses.append(ip)

    def remove_address(self, ip: bytes) -> None:
        """Stop answering requests for ``ip``."""
        if ip in self._addresses:
            self._addresses.remove(ip)

    def add_static(self, ip: bytes, mac: bytes) -> None:
        """Pin ``ip`` to ``mac``: never expires, never overwritten by traffic."""
        self._static[ip] = mac
        self._entries.pop(ip, None)

    def remove(self, ip: bytes) -> None:
        """Forget ``ip`` (static or learnt)."""
        self._static.pop(ip, None)
        self._entries.pop(ip, None)

    def entries(self, now_ns: int) -> dict[bytes, bytes]:
        """Every address known at ``now_ns`` and its MAC (static ones included)."""
        known = {ip: mac for ip, (mac, exp) in self._entries.items() if exp > now_ns}
        known.update(self._static)
        return known

    def pending(self) -> dict[bytes, int]:
        """The addresses being resolved and how many packets wait for each."""
        return {ip: len(p.packets) for ip, p in self._pending.items()}

    # -- traffic ----------------------------------------------------------

    def lookup(self, ip: bytes, now_ns: int) -> bytes | None:
        """The MAC for ``ip``, or None when it must be resolved. Knows the
        limited broadcast 255.255.255.255 and IPv4 multicast groups; a
        subnet's broadcast address is the caller's to know."""
        if ip == b"\xff\xff\xff\xff":
            return ethernet.BROADCAST
        if ip[0] & 0xF0 == 0xE0:
            return ethernet.ipv4_multicast_mac(ip)
        return self._known(ip, now_ns)

    def _known(self, ip: bytes, now_ns: int) -> bytes | None:
        """The static or live learnt MAC of ``ip`` (an expired entry is forgotten)."""
        mac = self._static.get(ip)
        if mac is not None:
            return mac
        entry = self._entries.get(ip)
        if entry is not None:
            if entry[1] > now_ns:
                return entry[0]
            del self._entries[ip]
        return None

    def expires(self, ip: bytes) -> int | None:
        """When the learnt entry of ``ip`` expires (None: not learnt, or static)."""
        entry = self._entries.get(ip)
        return None if entry is None else entry[1]

    def resolve(self, ip: bytes, packet: Any, now_ns: int,
                src: bytes | None = None) -> list[ArpEvent]:
        """Send ``packet`` to ``ip``: at once (:class:`Resolved`) when it is
        known, else queued until it is. ``src`` is the sender address of
        the request (default: our first address)."""
        mac = self.lookup(ip, now_ns)
        if mac is not None:
            return [Resolved(ip, mac, (packet,))]
        pend = self._pending.get(ip)
        if pend is not None:
            pend.packets.append(packet)
            if len(pend.packets) > self.queue_per_ip:
                self.counters.incr(self.PREFIX + "queue_full")
                return [Dropped(ip, pend.packets.pop(0), self.QUEUE_FULL)]
            return []
        if len(self._pending) >= self.max_pending:
            self.counters.incr(self.PREFIX + "too_many_pending")
            return [Dropped(ip, packet, "too many addresses being resolved")]
        if src is None:
            src = self._addresses[0] if self._addresses else _ZERO_IP
        pend = self._pending[ip] = _Pending(src, now_ns + self.retry_ns)
        pend.packets.append(packet)
        self.counters.incr(self.PREFIX + "request_sent")
        return [SendFrame(self._request(src, ip))]

    def _request(self, src: bytes, ip: bytes) -> bytes:
        """The frame that asks for ``ip`` from ``src`` (a subclass's protocol)."""
        return request_frame(self.mac, src, ip)

    def input(self, pkt: ArpPacket, now_ns: int) -> list[ArpEvent]:
        """Take in a received ARP packet: learn, release, answer."""
        if pkt.sha == self.mac:
            self.counters.incr("arp.own_packet")
            return []
        if pkt.sha[0] & 1:
            self.counters.incr("arp.group_sender")
            return []
        ours = pkt.tpa in self._addresses
        if pkt.spa == _ZERO_IP:
            if ours and pkt.op == OP_REQUEST:
                return [SendFrame(reply_frame(self.mac, pkt.tpa, pkt.sha, _ZERO_IP))]
            return []
        if pkt.spa in self._addresses:
            self.counters.incr("arp.address_conflict")
            return []
        if pkt.spa[0] >= 0xE0:  # multicast, reserved, broadcast: never a host
            self.counters.incr("arp.group_sender")
            return []
        out: list[ArpEvent] = []
        known = pkt.spa in self._entries or pkt.spa in self._pending
        if pkt.spa not in self._static and (known or ours):
            released = self._learn(pkt.spa, pkt.sha, now_ns)
            if released is not None:
                out.append(released)
        if ours and pkt.op == OP_REQUEST:
            out.append(SendFrame(reply_frame(self.mac, pkt.tpa, pkt.sha, pkt.spa)))
        return out

    def _learn(self, ip: bytes, mac: bytes, now_ns: int) -> Resolved | None:
        self._entries.pop(ip, None)
        if len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
            self.counters.incr(self.PREFIX + "evicted")
        self._entries[ip] = (mac, now_ns + self.reachable_ns)
        pend = self._pending.pop(ip, None)
        if pend is None:
            return None
        return Resolved(ip, mac, tuple(pend.packets))

    def tick(self, now_ns: int) -> list[ArpEvent]:
        """Expire entries, repeat requests, give up on silent addresses."""
        entries = self._entries
        while entries:
            ip = next(iter(entries))
            if entries[ip][1] > now_ns:
                break
            del entries[ip]
        out: list[ArpEvent] = []
        for ip, pend in list(self._pending.items()):
            if pend.next_ns > now_ns:
                continue
            if pend.tries >= self.tries:
                del self._pending[ip]
                self.counters.incr(self.PREFIX + "unreachable")
                self.counters.incr(self.PREFIX + "unreachable_packets", len(pend.packets))
                out.append(Unreachable(ip, tuple(pend.packets)))
            else:
                pend.tries += 1
                pend.next_ns = now_ns + self.retry_ns
                self.counters.incr(self.PREFIX + "request_sent")
                out.append(SendFrame(self._request(pend.src, ip)))
        return out

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has something to do next (None: nothing waits)."""
        times = [p.next_ns for p in self._pending.values()]
        if self._entries:
            times.append(next(iter(self._entries.values()))[1])
        return min(times, default=None)

    def gratuitous(self, ip: bytes | None = None) -> bytes:
        """A gratuitous ARP frame announcing ``ip`` (default: our first address)."""
        if ip is None:
            if not self._addresses:
                raise ValueError("no address to announce")
            ip = self._addresses[0]
        return gratuitous_frame(self.mac, ip)
