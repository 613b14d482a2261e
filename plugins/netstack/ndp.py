"""IPv6 neighbour discovery over Ethernet (RFC 4861): Neighbor Solicitation and
Advertisement messages, and :class:`NeighborCache`, ARP's counterpart.

Messages: :func:`parse` takes a parsed IPv6 packet
(:class:`~.ipv6.IPv6Packet`) carrying ICMPv6 and returns an
:class:`NdMessage` for a solicitation (135), an advertisement (136), a router
solicitation (133), a router advertisement (134) or a redirect (137). It
applies the validity checks of RFC 4861 (sections 6.1, 7.1, 8.1) and raises
only :class:`~.errors.ParseError` (layer ``"nd"``) when one fails:

* the IPv6 hop limit is 255 (the message was not forwarded by a router);
* the ICMPv6 checksum is right and the code is 0;
* the message is long enough (8 bytes for RS, 16 for RA, 24 for NS/NA, 40
  for a redirect), is not fragmented, and every option has a length above 0
  and fits;
* the target of an NS/NA is not multicast;
* an NS from the unspecified address ``::`` (duplicate address detection)
  goes to a solicited-node multicast address and carries no source
  link-layer address option; an RS from ``::`` carries none either;
* an NA sent to a multicast address has the Solicited flag clear.

Builders (:func:`solicitation_frame`, :func:`advertisement_frame`) make whole
Ethernet frames, with the ICMPv6 checksum and hop limit 255.

The cache: :class:`NeighborCache` is :class:`~.arp.ArpCache` with solicitations
for requests (to the target's solicited-node multicast address) and
advertisements as answers; it keeps ARP's queueing, retries, expiry and
limits (see :mod:`.arp`), counted under ``nd.*``. Its own rules, in the
order :meth:`NeighborCache.input` applies them:

1. Messages from our own MAC or a group MAC are ignored (counted).
2. An NS for one of our addresses is answered with a solicited NA (Router
   flag as configured, Override set, our MAC in the target link-layer
   option) to the sender and its link-layer address (the source option, or
   the frame's source); a DAD probe (source ``::``) is answered to all-nodes
   ``ff02::1`` with Solicited clear. The sender's MAC is learnt when it gave
   its link-layer address (RFC 4861 7.2.3), not from a probe.
3. An NA (target link-layer option, else the frame's source MAC) updates an
   entry that is known or being resolved, or is learnt when it is a solicited
   answer to one of our addresses (a solicitation sent without queueing, as at
   start), and releases what waits for it; an NA for one of our addresses is a
   conflict: counted, not learnt.
4. Sources or targets that are ours in an NS are conflicts (counted, never
   learnt); router messages are the caller's to handle (ignored here).

Nothing here does I/O; time is an argument, as in :mod:`.arp`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from . import ethernet, icmpv6, ipv6
from .arp import ArpCache, ArpEvent, Resolved, SendFrame
from .checksum import ones_sum, pseudo_ipv6
from .errors import ParseError

UNSPECIFIED = bytes(16)
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")
_SOLICITED_PREFIX = bytes.fromhex("ff0200000000000000000001ff")
HOP_LIMIT = 255

OPT_SOURCE_LL = 1
OPT_TARGET_LL = 2

FLAG_ROUTER = 0x80
FLAG_SOLICITED = 0x40
FLAG_OVERRIDE = 0x20

ND_TYPES = frozenset({icmpv6.ROUTER_SOLICITATION, icmpv6.ROUTER_ADVERTISEMENT,
                      icmpv6.NEIGHBOR_SOLICITATION, icmpv6.NEIGHBOR_ADVERTISEMENT,
                      icmpv6.REDIRECT})
_MIN_LEN = {icmpv6.ROUTER_SOLICITATION: 8, icmpv6.ROUTER_ADVERTISEMENT: 16,
            icmpv6.NEIGHBOR_SOLICITATION: 24, icmpv6.NEIGHBOR_ADVERTISEMENT: 24,
            icmpv6.REDIRECT: 40}
"""The shortest valid message of each type (ICMPv6 header included), where options begin."""

_TYPE_IPV6 = struct.pack("!H", ethernet.ETHERTYPE_IPV6)
_LAYER = "nd"


@dataclass(frozen=True, slots=True)
class NdMessage:
    """A valid neighbour discovery message. ``target`` is the NS/NA target (or
    a redirect's); ``lladdr`` the link-layer address option that matters for
    the type: source (NS, RS, RA) or target (NA, redirect); ``flags`` the
    NA's R/S/O bits (0 for other types)."""

    type: int
    src: bytes
    dst: bytes
    target: bytes | None = None
    lladdr: bytes | None = None
    flags: int = 0

    @property
    def solicited(self) -> bool:
        return bool(self.flags & FLAG_SOLICITED)


def solicited_node(ip: bytes) -> bytes:
    """``ff02::1:ffXX:XXXX``, the solicited-node multicast address of ``ip``."""
    return _SOLICITED_PREFIX + bytes(ip[13:16])


def link_local(mac: bytes) -> bytes:
    """The EUI-64 link-local address of an interface with ``mac`` (RFC 4291 App. A)."""
    return b"\xfe\x80" + bytes(6) + bytes((mac[0] ^ 2,)) + mac[1:3] + b"\xff\xfe" + mac[3:6]


def is_link_local(ip: bytes) -> bool:
    """fe80::/10."""
    return ip[0] == 0xFE and ip[1] & 0xC0 == 0x80


def is_nd(packet: memoryview | bytes) -> bool:
    """Whether an IPv6 ``packet`` (at least 41 bytes) is ICMPv6 of a neighbour
    discovery type right after the fixed header (the only place an ND message
    sits in practice: cheap enough for every frame)."""
    return len(packet) > 40 and packet[6] == icmpv6.PROTO and packet[40] in ND_TYPES


def _options(body: memoryview, want: int) -> bytes | None:
    """The link-layer address of option type ``want`` in ``body`` (options only)."""
    found = None
    pos, n = 0, len(body)
    while pos < n:
        if n - pos < 2:
            raise ParseError(_LAYER, "option cut short")
        kind, size = body[pos], body[pos + 1] * 8
        if size == 0:
            raise ParseError(_LAYER, "option of length 0")
        if pos + size > n:
            raise ParseError(_LAYER, "option runs past the message")
        if kind == want and found is None:
            if size < 8:
                raise ParseError(_LAYER, "link-layer address option too short")
            found = bytes(body[pos + 2:pos + 8])
        pos += size
    return found


def parse(ip: ipv6.IPv6Packet) -> NdMessage:
    """The neighbour discovery message ``ip`` carries, checked as RFC 4861 says."""
    if ip.proto != icmpv6.PROTO:
        raise ParseError(_LAYER, f"next header {ip.proto} is not ICMPv6")
    if ip.fragment is not None:
        raise ParseError(_LAYER, "fragmented")
    if ip.hop_limit != HOP_LIMIT:
        raise ParseError(_LAYER, f"hop limit {ip.hop_limit}, not 255")
    mv = ip.payload
    n = len(mv)
    if n < 4:
        raise ParseError(_LAYER, "shorter than the ICMPv6 header")
    kind, code = mv[0], mv[1]
    least = _MIN_LEN.get(kind)
    if least is None:
        raise ParseError(_LAYER, f"ICMPv6 type {kind} is not neighbour discovery")
    if code != 0:
        raise ParseError(_LAYER, f"code {code}, not 0")
    if n < least:
        raise ParseError(_LAYER, f"{n} bytes is too short for type {kind}")
    if ones_sum(mv, pseudo_ipv6(ip.src, ip.dst, icmpv6.PROTO, n)) != 0xFFFF:
        raise ParseError(_LAYER, "bad ICMPv6 checksum")
    options = mv[least:]
    src, dst = ip.src, ip.dst
    if kind == icmpv6.ROUTER_SOLICITATION or kind == icmpv6.ROUTER_ADVERTISEMENT:
        lladdr = _options(options, OPT_SOURCE_LL)
        if kind == icmpv6.ROUTER_SOLICITATION and src == UNSPECIFIED and lladdr is not None:
            raise ParseError(_LAYER, "router solicitation from :: with a link-layer address")
        if kind == icmpv6.ROUTER_ADVERTISEMENT and not is_link_local(src):
            raise ParseError(_LAYER, "router advertisement not from a link-local address")
        return NdMessage(kind, src, dst, None, lladdr)
    target = bytes(mv[8:24])
    if kind == icmpv6.REDIRECT:
        return NdMessage(kind, src, dst, target, _options(options, OPT_TARGET_LL))
    if target[0] == 0xFF:
        raise ParseError(_LAYER, "multicast target")
    if kind == icmpv6.NEIGHBOR_SOLICITATION:
        lladdr = _options(options, OPT_SOURCE_LL)
        if src == UNSPECIFIED:
            if dst[:13] != _SOLICITED_PREFIX:
                raise ParseError(_LAYER, "solicitation from :: not to a solicited-node "
                                         "address")
            if lladdr is not None:
                raise ParseError(_LAYER, "solicitation from :: with a link-layer address")
        return NdMessage(kind, src, dst, target, lladdr)
    flags = mv[4] & (FLAG_ROUTER | FLAG_SOLICITED | FLAG_OVERRIDE)
    if dst[0] == 0xFF and flags & FLAG_SOLICITED:
        raise ParseError(_LAYER, "solicited advertisement to a multicast address")
    return NdMessage(kind, src, dst, target, _options(options, OPT_TARGET_LL), flags)


def _frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, kind: int,
           body: bytes) -> bytes:
    msg = icmpv6.build(kind, 0, body, src, dst)
    return b"".join((dst_mac, src_mac, _TYPE_IPV6,
                     ipv6.build(src, dst, icmpv6.PROTO, msg, hop_limit=HOP_LIMIT)))


def solicitation_frame(mac: bytes, src: bytes, target: bytes, *,
                       dst: bytes | None = None, dst_mac: bytes | None = None) -> bytes:
    """An NS from ``src`` (with our ``mac`` as source link-layer option, unless
    ``src`` is ``::``) asking for ``target``: to its solicited-node address, or
    unicast to ``dst``/``dst_mac`` (a reachability probe)."""
    if dst is None:
        dst = solicited_node(target)
        dst_mac = ethernet.ipv6_multicast_mac(dst)
    elif dst_mac is None:
        raise ValueError("a unicast solicitation needs the destination MAC")
    body = bytes(4) + bytes(target)
    if src != UNSPECIFIED:
        body += bytes((OPT_SOURCE_LL, 1)) + mac
    return _frame(dst_mac, mac, src, dst, icmpv6.NEIGHBOR_SOLICITATION, body)


def advertisement_frame(mac: bytes, target: bytes, to_mac: bytes, to_ip: bytes, *,
                        solicited: bool = True, router: bool = False,
                        override: bool = True) -> bytes:
    """An NA saying ``target`` is at ``mac``, from ``target`` to ``to_ip``
    (``ff02::1`` for a DAD probe's answer: then not solicited)."""
    if to_ip[0] == 0xFF:
        solicited = False
        to_mac = ethernet.ipv6_multicast_mac(to_ip)
    flags = ((FLAG_ROUTER if router else 0) | (FLAG_SOLICITED if solicited else 0)
             | (FLAG_OVERRIDE if override else 0))
    body = bytes((flags, 0, 0, 0)) + bytes(target) + bytes((OPT_TARGET_LL, 1)) + mac
    return _frame(to_mac, mac, target, to_ip, icmpv6.NEIGHBOR_ADVERTISEMENT, body)


class NeighborCache(ArpCache):
    """The IPv6 neighbour table of one Ethernet interface with ``mac`` and
    ``addresses`` (16-byte ``bytes``; the first is the source of
    solicitations). ``router``: our advertisements set the Router flag. See
    the module docstring; queueing, retries and expiry are
    :class:`~.arp.ArpCache`'s."""

    PREFIX = "nd."
    QUEUE_FULL = "neighbour discovery queue full"

    def __init__(self, mac: bytes, addresses: Iterable[bytes] = (), *, router: bool = False,
                 **kwargs: object) -> None:
        super().__init__(mac, addresses, **kwargs)  # type: ignore[arg-type]
        self.router = router

    def _request(self, src: bytes, ip: bytes) -> bytes:
        return solicitation_frame(self.mac, src, ip)

    def lookup(self, ip: bytes, now_ns: int) -> bytes | None:
        """The MAC for ``ip`` (IPv6 multicast maps to ``33:33:...``), or None."""
        if ip[0] == 0xFF:
            return ethernet.ipv6_multicast_mac(ip)
        return self._known(ip, now_ns)

    def input(self, msg: NdMessage, src_mac: bytes, now_ns: int  # type: ignore[override]
              ) -> list[ArpEvent]:
        """Take in a valid NS or NA that came from ``src_mac``: learn, release, answer."""
        counters = self.counters
        if src_mac == self.mac:
            counters.incr("nd.own_packet")
            return []
        if src_mac[0] & 1:
            counters.incr("nd.group_sender")
            return []
        ours = msg.target in self._addresses
        out: list[ArpEvent] = []
        if msg.type == icmpv6.NEIGHBOR_SOLICITATION:
            if msg.src in self._addresses:
                counters.incr("nd.address_conflict")
                return []
            if not ours:
                counters.incr("nd.not_ours")
                return []
            lladdr = msg.lladdr
            if msg.src == UNSPECIFIED:
                counters.incr("nd.dad_answered")
                return [SendFrame(advertisement_frame(self.mac, msg.target, src_mac, ALL_NODES,
                                                      router=self.router))]
            if lladdr is not None and not lladdr[0] & 1 and msg.src not in self._static:
                released = self._learn(msg.src, lladdr, now_ns)
                if released is not None:
                    out.append(released)
            counters.incr("nd.answered")
            out.append(SendFrame(advertisement_frame(self.mac, msg.target, lladdr or src_mac,
                                                     msg.src, router=self.router)))
            return out
        if msg.type != icmpv6.NEIGHBOR_ADVERTISEMENT or msg.target is None:
            return []
        if ours:
            counters.incr("nd.address_conflict")
            return []
        mac = msg.lladdr or src_mac
        if mac[0] & 1:
            counters.incr("nd.group_sender")
            return []
        target = msg.target
        asked = target in self._entries or target in self._pending or (
            msg.solicited and msg.dst in self._addresses)  # an answer to a probe of ours
        if target in self._static or not asked:
            counters.incr("nd.unsolicited")
            return []
        released = self._learn(target, mac, now_ns)
        return [released] if isinstance(released, Resolved) else []
