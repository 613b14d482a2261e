"""The authoritative answer to one question (RFC 1034 4.3.2, RFC 2181, 4592, 6604, 8482).

:func:`resolve` takes the zones a server holds, a lowercased query name (a
:data:`~.zone.Key`) and a type, and returns an :class:`Answer`: the rcode, the
AA bit, and the three sections as ``(owner, RRset)`` pairs (the owner differs
from the RRset's name only for wildcard synthesis). Packing is the server's.

Rules, in order, for each name of a CNAME chain:

* no zone holds the name: REFUSED if it is the query name, else stop (the
  chain leaves our data);
* a delegation point is met on the way down: a referral (NS of the cut in
  authority, glue in additional, AA clear unless a CNAME was already
  answered), except for a DS query at the cut itself, which the parent
  answers with AA;
* the name exists: its RRset of the type, or a CNAME to follow (at most
  :data:`MAX_CHAIN` links, loops stop), or NODATA (SOA in authority);
* it does not: the wildcard ``*.<closest encloser>`` if present (same rules,
  owner rewritten; an empty wildcard gives NODATA), else NXDOMAIN.

NODATA and NXDOMAIN carry the zone's SOA with TTL min(SOA TTL, SOA minimum);
the rcode is that of the last name of the chain (RFC 6604). ANY gets one RRset
(RFC 8482). NS, MX, SRV answers and referrals bring the A/AAAA of their
targets held in the same zone as additional data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from dnslib import DNSLabel

from .zone import (T_A, T_AAAA, T_CNAME, T_DS, T_MX, T_NS, T_SOA, T_SRV, Key, RRset, Zone,
                   is_below, key_name, name_key)

NOERROR, NXDOMAIN, REFUSED = 0, 3, 5
T_ANY = 255
MAX_CHAIN = 16

Section = list[tuple[DNSLabel, RRset]]


class Answer(NamedTuple):
    rcode: int
    aa: bool
    answer: Section
    authority: Section
    additional: Section


def zone_for(zones: Mapping[Key, Zone], key: Key) -> Zone | None:
    """The deepest zone of ``zones`` (by apex key) holding ``key``."""
    for i in range(len(key) + 1):
        zone = zones.get(key[i:])
        if zone is not None:
            return zone
    return None


def _parent_zone(zones: Mapping[Key, Zone], key: Key) -> Zone | None:
    return zone_for(zones, key[1:]) if key else None


def resolve(zones: Mapping[Key, Zone], qkey: Key, qtype: int) -> Answer:
    """The answer to ``qkey``/``qtype`` from ``zones`` (see module rules)."""
    answer: Section = []
    authority: Section = []
    additional: Section = []
    key, seen, aa, rcode = qkey, {qkey}, True, NOERROR
    zone = zone_for(zones, key)
    if zone is None:
        return Answer(REFUSED, False, answer, authority, additional)
    if qtype == T_DS and key == zone.apex:
        zone = _parent_zone(zones, key) or zone
    while True:
        found = zone.find(key)
        owner = key_name(key)
        if found.kind == "cut" and not (qtype == T_DS and found.key == key):
            ns = found.node[T_NS]
            authority.append((ns.name, ns))
            _add_targets(zone, [ns], additional)
            aa = bool(answer)
            break
        if found.kind == "nx" and found.node is None:
            rcode = NXDOMAIN
            _negative(zone, authority)
            break
        node = found.node
        if qtype == T_ANY:
            picked = _pick_any(node)
            if picked is None:
                _negative(zone, authority)
            else:
                answer.append((owner, picked))
                if picked.rtype in (T_NS, T_MX, T_SRV):
                    _add_targets(zone, [picked], additional)
            break
        rrset = node.get(qtype)
        if rrset is not None:
            answer.append((owner, rrset))
            if qtype in (T_NS, T_MX, T_SRV):
                _add_targets(zone, [rrset], additional)
            break
        cname = node.get(T_CNAME)
        if cname is None:
            _negative(zone, authority)
            break
        answer.append((owner, cname))
        key = name_key(cname.rdata[0].label)
        if key in seen or len(seen) > MAX_CHAIN:
            break
        seen.add(key)
        zone = zone_for(zones, key)
        if zone is None:
            break
    return Answer(rcode, aa, answer, authority, additional)


def _negative(zone: Zone, authority: Section) -> None:
    soa = RRset(zone.origin, T_SOA, zone.negative_ttl, (zone.soa,))
    authority.append((zone.origin, soa))


def _pick_any(node: dict[int, RRset]) -> RRset | None:
    if T_CNAME in node:
        return node[T_CNAME]
    return node[min(node)] if node else None


def _add_targets(zone: Zone, rrsets: list[RRset], additional: Section) -> None:
    """A/AAAA of the NS/MX/SRV targets that ``zone`` holds (glue included)."""
    have = {(name_key(o), r.rtype) for o, r in additional}
    for rrset in rrsets:
        for rd in rrset.rdata:
            target = rd.target if rrset.rtype == T_SRV else rd.label
            key = name_key(target)
            if not is_below(key, zone.apex):
                continue
            node = zone.node(key)
            if not node:
                continue
            for rtype in (T_A, T_AAAA):
                if rtype in node and (key, rtype) not in have:
                    have.add((key, rtype))
                    additional.append((node[rtype].name, node[rtype]))
