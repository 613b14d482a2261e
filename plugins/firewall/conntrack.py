"""Connection tracking for the firewall engine: a bounded LRU table of
TCP, UDP, ICMP (query) and other-protocol flows with timeouts. Sans-I/O:
time is ``now_ns``, passed in.

A flow is known by two *tuples* ``(proto, src, sport, dst, dport)``
(addresses as packed ``bytes``): ``orig``, the first packet as the client
sent it, and ``reply``, a reply as it arrives (the inverse of ``nat``, the
first packet as it left after address translation; ``nat == orig`` when
nothing is translated). ICMP queries put their identifier in ``sport`` for a
request type (echo, timestamp, ...) and in ``dport`` for a reply type, the
other port 0, so a reply's tuple is the request's inverse; other protocols
have both ports 0.

Rules:

* A lookup finds a flow by either tuple; an expired flow is removed then
  (counted ``conntrack.expired``) and not found. :meth:`Conntrack.expire`
  removes every expired flow (call it now and then; lookups and
  :meth:`Conntrack.add` keep the table right without it).
* Every packet of a flow (:meth:`Conntrack.seen`) moves it to the
  most-recently-used end and sets its deadline from its state:

  ========================  ===============================================
  TCP, established          :data:`TCP_ESTABLISHED_TIMEOUT_NS` (2 h): a reply
                            has been seen and no FIN or RST
  TCP, any other state      :data:`TCP_TIMEOUT_NS` (2 min): before the reply,
                            after a FIN or RST
  UDP                       :data:`UDP_TIMEOUT_NS` (30 s), and
                            :data:`UDP_ASSURED_TIMEOUT_NS` (180 s) once a
                            reply has been seen
  ICMP, ICMPv6 queries      :data:`ICMP_TIMEOUT_NS` (30 s)
  any other protocol        :data:`GENERIC_TIMEOUT_NS` (600 s)
  ========================  ===============================================

  A SYN without ACK from the client on a closing TCP flow reopens it.
* At most ``max_connections`` flows: adding one to a full table evicts the
  least recently used (``conntrack.evicted``, or ``conntrack.expired`` if
  its time was up anyway).
* :meth:`Conntrack.allocate` picks the translated source port (or ICMP
  identifier) so that no two flows share a reply tuple: the client's own
  port when it is free, else the next free one from a rotating cursor in
  :data:`PORT_RANGE` (:data:`ICMP_ID_RANGE` for ICMP).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

SECOND_NS = 1_000_000_000
TCP_ESTABLISHED_TIMEOUT_NS = 2 * 3600 * SECOND_NS
TCP_TIMEOUT_NS = 120 * SECOND_NS
UDP_TIMEOUT_NS = 30 * SECOND_NS
UDP_ASSURED_TIMEOUT_NS = 180 * SECOND_NS
ICMP_TIMEOUT_NS = 30 * SECOND_NS
GENERIC_TIMEOUT_NS = 600 * SECOND_NS
DEFAULT_MAX_CONNECTIONS = 5000

PORT_RANGE = (1024, 65535)
"""Source ports masquerading picks from when the client's own is taken."""
ICMP_ID_RANGE = (0, 65535)

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10

Tuple = tuple  # (proto, src, sport, dst, dport)


def inverse(t: Tuple) -> Tuple:
    """The tuple of a packet going the other way."""
    return (t[0], t[3], t[4], t[1], t[2])


class Connection:
    """One tracked flow. ``orig_iface`` is where its original-direction
    packets arrive (the client's address), ``reply_iface`` where replies
    arrive (``"uplink"`` or another client's address); ``client`` is the
    client whose rules admitted it; ``match`` what those rules were asked
    (destination, protocol, port, ICMP type), to ask again on a rule change;
    ``cache`` is the engine's (per-direction checksum deltas)."""

    __slots__ = ("orig", "nat", "reply", "client", "orig_iface", "reply_iface", "match",
                 "deadline", "replied", "closing", "cache", "fast")

    def __init__(self, orig: Tuple, nat: Tuple, client: str, orig_iface: str,
                 reply_iface: str, match: tuple) -> None:
        self.orig = orig
        self.nat = nat
        self.reply = inverse(nat)
        self.client = client
        self.orig_iface = orig_iface
        self.reply_iface = reply_iface
        self.match = match
        self.deadline = 0
        self.replied = False
        self.closing = False
        self.cache = None
        self.fast = None  # the engine's fast path: per-direction precomputed edits

    @property
    def proto(self) -> int:
        return self.orig[0]

    @property
    def established(self) -> bool:
        """A reply has been seen (and, for TCP, no FIN or RST)."""
        return self.replied and not self.closing

    def timeout(self) -> int:
        """How long the flow lives after its last packet, in its state."""
        proto = self.orig[0]
        if proto == TCP:
            return TCP_ESTABLISHED_TIMEOUT_NS if self.replied and not self.closing \
                else TCP_TIMEOUT_NS
        if proto == UDP:
            return UDP_ASSURED_TIMEOUT_NS if self.replied else UDP_TIMEOUT_NS
        if proto in (ICMP, ICMPV6):
            return ICMP_TIMEOUT_NS
        return GENERIC_TIMEOUT_NS

    def __repr__(self) -> str:
        return (f"Connection({self.orig!r} -> {self.nat!r}, {self.orig_iface} -> "
                f"{self.reply_iface}, replied={self.replied}, closing={self.closing})")


class Conntrack:
    """The table; ``counters`` (a dict) is shared with the engine."""

    def __init__(self, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 counters: dict[str, int] | None = None) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections {max_connections} is below 1")
        self.max_connections = max_connections
        self.counters = counters if counters is not None else {}
        self._keys: dict[Tuple, Connection] = {}
        self._lru: OrderedDict[Tuple, Connection] = OrderedDict()
        self._cursor: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._lru)

    def __iter__(self) -> Iterator[Connection]:
        """Flows from least to most recently used."""
        return iter(list(self._lru.values()))

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def lookup(self, t: Tuple, now_ns: int) -> Connection | None:
        """The live flow one of whose tuples is ``t`` (moved to the
        most-recently-used end), or None."""
        c = self._keys.get(t)
        if c is None:
            return None
        if c.deadline <= now_ns:
            self.remove(c)
            self._count("conntrack.expired")
            return None
        self._lru.move_to_end(c.orig)
        return c

    def seen(self, c: Connection, is_reply: bool, tcp_flags: int, now_ns: int) -> None:
        """A packet of ``c`` passed (``tcp_flags`` 0 for other protocols)."""
        if c.orig[0] == TCP:
            if tcp_flags & (_FIN | _RST):
                c.closing = True
            elif tcp_flags & _SYN and not tcp_flags & _ACK and not is_reply:
                if c.closing:
                    c.closing = c.replied = False
            elif is_reply:
                c.replied = True
        elif is_reply:
            c.replied = True
        c.deadline = now_ns + c.timeout()
        self._lru.move_to_end(c.orig)

    def free(self, t: Tuple) -> bool:
        """Whether no flow has ``t`` as a tuple."""
        return t not in self._keys

    def allocate(self, nat: Tuple, now_ns: int) -> Tuple | None:
        """``nat`` (the translated original tuple), its source port changed
        if needed so that its reply tuple is free; None if no port is."""
        proto = nat[0]
        if self._usable(inverse(nat), now_ns):
            return nat
        if proto not in (TCP, UDP, ICMP, ICMPV6):
            return None
        lo, hi = PORT_RANGE if proto in (TCP, UDP) else ICMP_ID_RANGE
        span = hi - lo + 1
        cursor = self._cursor.get(proto, 0)
        # each taken port is one flow with the same remote end: more tries
        # than flows cannot all fail unless the range is full.
        for i in range(min(span, len(self._keys) + 1)):
            port = lo + (cursor + i) % span
            cand = (proto, nat[1], port, nat[3], nat[4])
            if self._usable(inverse(cand), now_ns):
                self._cursor[proto] = (cursor + i + 1) % span
                return cand
        return None

    def _usable(self, t: Tuple, now_ns: int) -> bool:
        c = self._keys.get(t)
        if c is None:
            return True
        if c.deadline <= now_ns:
            self.remove(c)
            self._count("conntrack.expired")
            return True
        return False

    def add(self, orig: Tuple, nat: Tuple, client: str, orig_iface: str, reply_iface: str,
            now_ns: int, tcp_flags: int = 0, match: tuple = ()) -> Connection | None:
        """Track a new flow (its first packet just passed); None if one of
        its tuples is taken by a live flow."""
        reply = inverse(nat)
        if not self._usable(orig, now_ns) or not self._usable(reply, now_ns):
            return None
        while len(self._lru) >= self.max_connections:
            _, victim = self._lru.popitem(last=False)
            self._drop_keys(victim)
            self._count("conntrack.expired" if victim.deadline <= now_ns
                        else "conntrack.evicted")
        c = Connection(orig, nat, client, orig_iface, reply_iface, match)
        self._keys[orig] = c
        self._keys[reply] = c
        self._lru[orig] = c
        self._count("conntrack.new")
        self.seen(c, False, tcp_flags, now_ns)
        return c

    def _drop_keys(self, c: Connection) -> None:
        if self._keys.get(c.orig) is c:
            del self._keys[c.orig]
        if self._keys.get(c.reply) is c:
            del self._keys[c.reply]

    def remove(self, c: Connection) -> None:
        """Forget ``c`` (nothing if it is not tracked)."""
        if self._lru.get(c.orig) is c:
            del self._lru[c.orig]
            self._drop_keys(c)

    def remove_where(self, pred: Callable[[Connection], bool]) -> int:
        """Forget every flow for which ``pred`` is true; how many."""
        victims = [c for c in self._lru.values() if pred(c)]
        for c in victims:
            self.remove(c)
        return len(victims)

    def expire(self, now_ns: int) -> int:
        """Forget every flow whose time is up; how many."""
        n = self.remove_where(lambda c: c.deadline <= now_ns)
        if n:
            self.counters["conntrack.expired"] = self.counters.get("conntrack.expired", 0) + n
        return n

    def next_deadline(self) -> int | None:
        """The earliest deadline of any flow (None: the table is empty)."""
        return min((c.deadline for c in self._lru.values()), default=None)
