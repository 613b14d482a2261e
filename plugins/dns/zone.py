"""An authoritative zone: immutable, checked, and laid out for O(labels) lookups.

A :class:`Zone` is built from records (:meth:`Zone.from_records`, which the zone
file loader and the transfer code both use) and never changes; a change makes a
new zone (:meth:`Zone.with_changes`).

Names inside a zone are *keys*: tuples of lowercased labels, leftmost first
(``www.example.com.`` is ``(b"www", b"example", b"com")``). Owner names are
stored lowercased; RDATA keeps the case it was given.

The lookup structure is a dict from key to the node's RRsets (``{rtype:
RRset}``) that holds every name of the zone, including empty non-terminals
(names that exist only because a name below them does) as empty dicts, plus
the set of zone cuts (names below the apex that own NS). :meth:`Zone.find`
walks from the apex towards the query name one label at a time, so a lookup
costs one dict probe per label below the apex.

Rules checked by :meth:`Zone.from_records` (a violation raises
:class:`ZoneError` naming the offending record by index):

* every record is of class IN, owned by the apex or a name below it, and not
  of a meta type (OPT, TSIG, AXFR, ...);
* exactly one SOA, at the apex; at least one NS at the apex;
* a CNAME is alone at its name (RRSIG/NSEC aside) and single;
* DS only at a delegation point (a name below the apex that owns NS);
* at a delegation point only NS, DS, glue (A/AAAA), RRSIG and NSEC; below one
  only glue (A/AAAA).

RRsets hold their RDATA deduplicated (by wire form) in canonical order; an
RRset whose records carry different TTLs takes the smallest (RFC 2181 5.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from dnslib import CLASS, QTYPE, RD, RR, SOA, DNSBuffer, DNSLabel

Key = tuple[bytes, ...]

T_A, T_NS, T_CNAME, T_SOA, T_MX, T_AAAA, T_SRV = 1, 2, 5, 6, 15, 28, 33
T_DS, T_RRSIG, T_NSEC, T_SVCB, T_HTTPS = 43, 46, 47, 64, 65
META_TYPES = frozenset({0, 41, 128, 249, 250, 251, 252, 253, 254, 255})
"""Types that never appear as zone data (OPT, TKEY, TSIG, IXFR, AXFR, MAILB,
MAILA, ANY, and 0/128 reserved)."""
_CNAME_COMPANIONS = frozenset({T_CNAME, T_RRSIG, T_NSEC})
_AT_CUT = frozenset({T_NS, T_DS, T_A, T_AAAA, T_RRSIG, T_NSEC})
_GLUE = frozenset({T_A, T_AAAA})


class ZoneError(ValueError):
    """The records do not make a valid zone. ``index`` is the position of the
    offending record in the list given (``None`` when no single record is to
    blame, e.g. a missing SOA); ``reason`` says what is wrong."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


class RRset(NamedTuple):
    """One RRset: iterates as ``(name, rtype, ttl, rdata)``; ``rdata`` is a
    tuple of dnslib RD objects in canonical order."""

    name: DNSLabel
    rtype: int
    ttl: int
    rdata: tuple[RD, ...]

    def records(self, owner: DNSLabel | None = None) -> list[RR]:
        """The RRset as dnslib RRs, owned by ``owner`` if given (wildcard
        synthesis) or by its own name."""
        name = self.name if owner is None else owner
        return [RR(name, self.rtype, CLASS.IN, self.ttl, rd) for rd in self.rdata]


class _FlatBuffer(DNSBuffer):
    """A DNSBuffer that never compresses names: for RDATA in isolation."""

    def encode_name(self, name):  # noqa: D102 - dnslib hook
        self.encode_name_nocompress(name)


def rdata_wire(rd: RD) -> bytes:
    """The uncompressed wire form of one RDATA (what RFC 3597 ``\\#`` shows and
    what identifies a record inside its RRset)."""
    buf = _FlatBuffer()
    rd.pack(buf)
    return bytes(buf.data)


def name_key(name: DNSLabel | str) -> Key:
    """The lookup key of a name: its labels lowercased (ASCII only, as DNS
    compares names)."""
    if not isinstance(name, DNSLabel):
        name = DNSLabel(name)
    return tuple(label.lower() for label in name.label)


def key_name(key: Key) -> DNSLabel:
    """The (lowercase) name of a key."""
    return DNSLabel(key)


def is_below(key: Key, apex: Key) -> bool:
    """True if ``key`` is ``apex`` or a name below it."""
    n = len(apex)
    return len(key) >= n and (n == 0 or key[-n:] == apex)


def canonical_order(key: Key) -> Key:
    """Sort key for RFC 4034 6.1 canonical name order."""
    return key[::-1]


class Lookup(NamedTuple):
    """What :meth:`Zone.find` found for a key.

    ``kind`` is ``"exact"`` (the name exists; ``node`` its RRsets, empty for
    an empty non-terminal), ``"cut"`` (a delegation point at or above the name
    was reached first; ``key`` is the cut, ``node`` its RRsets) or ``"nx"``
    (the name does not exist; ``key`` is the closest encloser, ``node`` the
    source of synthesis' RRsets when ``*.<encloser>`` exists, else ``None``).
    """

    kind: str
    key: Key
    node: dict[int, RRset] | None


class Zone:
    """An immutable authoritative zone. Build one with :meth:`from_records`
    (or :func:`.zonefile.load_zone`)."""

    __slots__ = ("origin", "apex", "soa", "soa_ttl", "serial", "_nodes", "_cuts", "_order",
                 "_count")

    origin: DNSLabel
    """The apex name (lowercase)."""
    apex: Key
    soa: SOA
    """The SOA RDATA (dnslib ``SOA``)."""
    soa_ttl: int
    serial: int

    def __init__(self, origin: DNSLabel, nodes: dict[Key, dict[int, RRset]],
                 cuts: frozenset[Key], count: int) -> None:
        self.apex = name_key(origin)
        self.origin = key_name(self.apex)
        self._nodes = nodes
        self._cuts = cuts
        self._count = count
        self._order: list[Key] | None = None
        soa = nodes[self.apex][T_SOA]
        self.soa = soa.rdata[0]
        self.soa_ttl = soa.ttl
        self.serial = self.soa.times[0]

    # -- construction -------------------------------------------------------

    @classmethod
    def from_records(cls, origin: DNSLabel | str, records: Iterable[RR]) -> Zone:
        """A zone from dnslib RRs (any order; duplicates merged). Raises
        :class:`ZoneError` if they break a rule in the module docstring."""
        apex = name_key(origin)
        groups: dict[Key, dict[int, list]] = {}
        first: dict[tuple[Key, int], int] = {}
        for idx, rr in enumerate(records):
            if rr.rclass != CLASS.IN:
                raise ZoneError(f"class {CLASS.get(rr.rclass)} is not supported (only IN)", idx)
            if rr.rtype in META_TYPES:
                raise ZoneError(f"{QTYPE.get(rr.rtype)} is not a zone data type", idx)
            key = name_key(rr.rname)
            if not is_below(key, apex):
                raise ZoneError(f"{key_name(key)} is outside the zone {key_name(apex)}", idx)
            if rr.rtype == T_SOA and key != apex:
                raise ZoneError(f"SOA at {key_name(key)}, not at the apex {key_name(apex)}", idx)
            slot = groups.setdefault(key, {}).setdefault(rr.rtype, [rr.ttl, {}])
            slot[0] = min(slot[0], rr.ttl)
            slot[1].setdefault(rdata_wire(rr.rdata), rr.rdata)
            first.setdefault((key, rr.rtype), idx)
            if rr.rtype == T_SOA and len(slot[1]) > 1:
                raise ZoneError("a second SOA record (a zone has exactly one)", idx)
            if rr.rtype == T_CNAME and len(slot[1]) > 1:
                raise ZoneError(f"more than one CNAME at {key_name(key)}", idx)
        apex_types = groups.get(apex, {})
        if T_SOA not in apex_types:
            raise ZoneError(f"no SOA record at the apex {key_name(apex)}")
        if T_NS not in apex_types:
            raise ZoneError(f"no NS record at the apex {key_name(apex)}", first[(apex, T_SOA)])
        cuts = frozenset(k for k, types in groups.items() if T_NS in types and k != apex)
        nodes: dict[Key, dict[int, RRset]] = {}
        count = 0
        for key, types in groups.items():
            _check_node(key, types, apex, cuts, first)
            owner = key_name(key)
            node = nodes.setdefault(key, {})
            for rtype, (ttl, rdatas) in types.items():
                node[rtype] = RRset(owner, rtype, ttl,
                                    tuple(rdatas[w] for w in sorted(rdatas)))
                count += len(rdatas)
            parent = key[1:]
            while len(parent) > len(apex) and parent not in nodes:
                nodes[parent] = {}
                parent = parent[1:]
        return cls(key_name(apex), nodes, cuts, count)

    def with_changes(self, removed: Iterable[RR], added: Iterable[RR]) -> Zone:
        """A new zone: this one without the records ``removed`` (matched by
        name, type and RDATA; TTL ignored) and with ``added``. Rebuilds the
        whole zone (O(records)); raises :class:`ZoneError` as
        :meth:`from_records` does (indexes then count in the resulting
        record list)."""
        gone = {(name_key(rr.rname), rr.rtype, rdata_wire(rr.rdata)) for rr in removed}
        kept = [rr for rr in self.to_records()
                if (name_key(rr.rname), rr.rtype, rdata_wire(rr.rdata)) not in gone]
        return Zone.from_records(self.origin, kept + list(added))

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        """Number of records."""
        return self._count

    def __repr__(self) -> str:
        return f"<Zone {self.origin} serial={self.serial} records={self._count}>"

    @property
    def negative_ttl(self) -> int:
        """TTL of negative answers (RFC 2308 5): min(SOA TTL, SOA minimum)."""
        return min(self.soa_ttl, self.soa.times[4])

    def get(self, name: DNSLabel | str | Key, rtype: int) -> RRset | None:
        """The RRset of ``rtype`` owned by ``name`` exactly (no wildcard, no
        CNAME, glue included), or ``None``."""
        key = name if isinstance(name, tuple) else name_key(name)
        node = self._nodes.get(key)
        return None if node is None else node.get(rtype)

    def node(self, key: Key) -> dict[int, RRset] | None:
        """The RRsets at ``key`` (``{}`` for an empty non-terminal), or
        ``None`` if the name does not exist. Do not mutate."""
        return self._nodes.get(key)

    def is_cut(self, key: Key) -> bool:
        """True if ``key`` is a delegation point (owns NS, below the apex)."""
        return key in self._cuts

    def find(self, key: Key) -> Lookup:
        """Walk from the apex to ``key`` (which must be at or below the apex):
        see :class:`Lookup` for the outcomes."""
        nodes, cuts = self._nodes, self._cuts
        for i in range(len(key) - len(self.apex) - 1, -1, -1):
            sub = key[i:]
            node = nodes.get(sub)
            if node is None:
                encloser = key[i + 1:]
                return Lookup("nx", encloser, nodes.get((b"*",) + encloser))
            if sub in cuts:
                return Lookup("cut", sub, node)
        return Lookup("exact", key, nodes[key])

    def rrsets(self) -> Iterator[RRset]:
        """Every RRset: the apex SOA first, then canonical order (RFC 4034
        6.1 name order, then type). Each iterates as ``(name, rtype, ttl,
        rdata)``."""
        if self._order is None:
            self._order = sorted(self._nodes, key=canonical_order)
        apex_node = self._nodes[self.apex]
        yield apex_node[T_SOA]
        for key in self._order:
            node = self._nodes[key]
            for rtype in sorted(node):
                if key != self.apex or rtype != T_SOA:
                    yield node[rtype]

    def to_records(self) -> list[RR]:
        """Every record as dnslib RRs, in :meth:`rrsets` order (SOA first)."""
        out: list[RR] = []
        for rrset in self.rrsets():
            out.extend(rrset.records())
        return out

    def names(self) -> Iterator[Key]:
        """Every name's key (empty non-terminals included), unordered."""
        return iter(self._nodes)


def _check_node(key: Key, types: dict[int, list], apex: Key, cuts: frozenset[Key],
                first: dict[tuple[Key, int], int]) -> None:
    name = key_name(key)

    def fail(reason: str, rtypes: Iterable[int]) -> None:
        raise ZoneError(reason, max(first[(key, t)] for t in rtypes))

    if T_CNAME in types:
        others = [t for t in types if t not in _CNAME_COMPANIONS]
        if others:
            fail(f"CNAME and other data at {name} ({QTYPE.get(others[0])})",
                 [T_CNAME, others[0]])
    if T_DS in types and key not in cuts:
        fail(f"DS at {name}, which is not a delegation point", [T_DS])
    if key in cuts:
        bad = [t for t in types if t not in _AT_CUT]
        if bad:
            fail(f"{QTYPE.get(bad[0])} at the delegation point {name} "
                 "(only NS, DS and glue belong there)", [bad[0]])
    parent = key[1:]
    while len(parent) > len(apex):
        if parent in cuts:
            bad = [t for t in types if t not in _GLUE]
            if bad:
                fail(f"{QTYPE.get(bad[0])} at {name}, below the delegation point "
                     f"{key_name(parent)} (only glue A/AAAA belongs there)", [bad[0]])
            break
        parent = parent[1:]
