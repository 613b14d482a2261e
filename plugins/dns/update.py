"""Dynamic update (RFC 2136), no I/O: a message and a zone version in, a new version out.

Rules, in the order :func:`answer_update` applies them:

1. TSIG: a signed UPDATE must verify (else the TSIG error answer). The
   answer to a signed UPDATE is signed over its MAC.
2. Zone section: exactly one record, of type SOA (else FORMERR); a zone
   this server is not primary for, or another class than IN: NOTAUTH.
3. Permission: the zone's update ACL must allow the source address and the
   verified key (else REFUSED). It is checked before the prerequisites so
   that nobody without permission learns what the zone holds. With the
   default ACL (deny all) no update is accepted.
4. Prerequisites (§3.2), all five kinds: name in use (ANY/ANY, else
   NXDOMAIN), RRset exists (ANY/type, else NXRRSET), name not in use
   (NONE/ANY, else YXDOMAIN), RRset does not exist (NONE/type, else
   YXRRSET), RRset exists with exactly these records (IN/type, else
   NXRRSET). A TTL other than 0, RDATA on ANY/NONE records or another class:
   FORMERR; an owner outside the zone: NOTZONE.
5. Prescan of the update section (§3.4.1): owner outside the zone: NOTZONE;
   meta types where they do not belong, TTL/RDATA rules for ANY and NONE,
   another class: FORMERR. Nothing is applied when the prescan fails.
6. Updates (§3.4.2), in order: add (an identical record replaces the old
   one's TTL; the whole RRset takes the new TTL); an SOA is only replaced
   at the apex and by a newer serial; a CNAME is not added beside other
   data, nor other data beside a CNAME; a CNAME replaces a CNAME. Delete an
   RRset (the apex SOA and NS are kept), delete all RRsets of a name (at the
   apex the SOA and NS stay), delete one record (never the SOA, never the
   apex's last NS).
7. When anything changed, the serial moves on under the serial policy
   (unless the update itself set a newer SOA). The result holds the new
   records and the :class:`~.journal.Change`; the adapter must persist the
   new version (and journal the change) before it sends ``reply``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

from dnslib import CLASS, OPCODE, QTYPE, RCODE, RR, DNSRecord

from . import tsig
from .acl import Auth, ZoneAcls, acl_for, authenticate, sign_reply
from .journal import (Change, Journal, diff, find_soa, in_zone, next_serial, serial_gt,
                      soa_serial, with_serial)
from .xfr import EXT, WireError, add_event, config_of, parse_message, reply_to, strip_tsig
from .zone import META_TYPES, Zone, ZoneError, name_key, rdata_wire

CLASS_NONE = 254
CLASS_ANY = 255
NXDOMAIN = RCODE.NXDOMAIN


class UpdateRefused(Exception):
    """Stops an update with ``rcode`` (raised and caught inside this module)."""

    def __init__(self, rcode: int, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason


@dataclass(frozen=True)
class UpdateOutcome:
    """What an UPDATE request led to.

    ``reply`` is the answer to send (None: drop the request). ``records``
    and ``change`` are set only when the zone changed (then persist first,
    answer second); ``reason`` explains a refusal for the log.
    """

    reply: bytes | None
    rcode: int
    origin: str | None = None
    records: list[RR] | None = None
    change: Change | None = None
    reason: str = ""


def answer_update(query_wire: bytes, *, src: str, zones: Mapping[str, Sequence[RR]],
                  acl: ZoneAcls, keyring: Mapping[str, tsig.Key], now_s: int,
                  serial_policy: str = "increment",
                  check: Callable[[str, list[RR]], str | None] | None = None) -> UpdateOutcome:
    """Process one UPDATE message (see the module rules).

    ``zones`` maps the origins of the zones this server is primary for to
    their current records; ``acl`` is one ACL for all or ACLs by zone.
    ``check(origin, records)`` may veto a new version (a reason: REFUSED),
    e.g. one the zone model's rules reject.
    """
    auth = authenticate(query_wire, keyring, now_s)
    if auth.failed:
        return UpdateOutcome(auth.error_reply, auth.rcode, reason="TSIG failed")
    try:
        msg = parse_message(strip_tsig(query_wire))
    except (WireError, tsig.TsigError) as err:
        return UpdateOutcome(_short_formerr(query_wire, auth, now_s), RCODE.FORMERR,
                             reason=str(err))
    if msg.header.qr or msg.header.opcode != OPCODE.UPDATE:
        return UpdateOutcome(None, RCODE.FORMERR, reason="not an UPDATE request")
    origin = None
    try:
        if len(msg.questions) != 1 or msg.questions[0].qtype != QTYPE.SOA:
            raise UpdateRefused(RCODE.FORMERR, "the zone section must hold one SOA record")
        zone = msg.questions[0]
        origin = next((o for o in zones if name_key(o) == name_key(zone.qname)), None)
        if origin is None or zone.qclass != CLASS.IN:
            raise UpdateRefused(RCODE.NOTAUTH, f"not primary for zone {zone.qname}")
        if not acl_for(acl, origin).allows(src, auth.key_name):
            raise UpdateRefused(RCODE.REFUSED, f"update of {origin} not allowed for {src} "
                                f"(key {auth.key_name})")
        records, change = apply_update(msg, origin, zones[origin], now_s=now_s,
                                       serial_policy=serial_policy)
        veto = check(origin, records) if check is not None and change is not None else None
        if veto:
            raise UpdateRefused(RCODE.REFUSED, f"the updated zone would be invalid: {veto}")
    except UpdateRefused as err:
        return UpdateOutcome(_reply(msg, err.rcode, auth, now_s), err.rcode, origin,
                             reason=err.reason)
    return UpdateOutcome(_reply(msg, RCODE.NOERROR, auth, now_s), RCODE.NOERROR, origin,
                         records if change else None, change)


def _reply(msg: DNSRecord, rcode: int, auth: Auth, now_s: int) -> bytes:
    return sign_reply(reply_to(msg, rcode, aa=False).pack(), auth, now_s)


def _short_formerr(wire: bytes, auth: Auth, now_s: int) -> bytes | None:
    if len(wire) < 12:
        return None
    flags = (int.from_bytes(wire[2:4], "big") & 0x7800) | 0x8000 | RCODE.FORMERR
    head = wire[:2] + flags.to_bytes(2, "big") + bytes(8)
    return sign_reply(head, auth, now_s)


# -- the update itself ---------------------------------------------------------

def _empty(rr: RR) -> bool:
    return rr.rtype != QTYPE.OPT and len(rdata_wire(rr.rdata)) == 0


def _same(a: RR, b: RR) -> bool:
    """Same owner, type and RDATA (classes aside: NONE-class deletes name IN records)."""
    return (a.rtype == b.rtype and name_key(a.rname) == name_key(b.rname)
            and rdata_wire(a.rdata) == rdata_wire(b.rdata))


def check_prerequisites(prereqs: Sequence[RR], origin: str, records: Sequence[RR]) -> None:
    """RFC 2136 §3.2; raises :class:`UpdateRefused` with the RCODE of the first failure."""
    names = {name_key(rr.rname) for rr in records}
    rrsets = {(name_key(rr.rname), rr.rtype) for rr in records}
    wanted: dict[tuple, set[bytes]] = {}
    for rr in prereqs:
        name = name_key(rr.rname)
        if rr.ttl != 0:
            raise UpdateRefused(RCODE.FORMERR, f"prerequisite {rr.rname} has a TTL")
        if not in_zone(rr.rname, origin):
            raise UpdateRefused(RCODE.NOTZONE, f"prerequisite {rr.rname} is outside {origin}")
        if rr.rclass in (CLASS_ANY, CLASS_NONE):
            if not _empty(rr):
                raise UpdateRefused(RCODE.FORMERR, f"prerequisite {rr.rname} has RDATA")
            in_use = name in names if rr.rtype == QTYPE.ANY else (name, rr.rtype) in rrsets
            if rr.rclass == CLASS_ANY and not in_use:
                raise UpdateRefused(NXDOMAIN if rr.rtype == QTYPE.ANY else RCODE.NXRRSET,
                                    f"prerequisite: {rr.rname} {QTYPE.get(rr.rtype)} absent")
            if rr.rclass == CLASS_NONE and in_use:
                raise UpdateRefused(RCODE.YXDOMAIN if rr.rtype == QTYPE.ANY else RCODE.YXRRSET,
                                    f"prerequisite: {rr.rname} {QTYPE.get(rr.rtype)} present")
        elif rr.rclass == CLASS.IN:
            if rr.rtype in META_TYPES:
                raise UpdateRefused(RCODE.FORMERR, f"prerequisite {rr.rname} has a meta type")
            wanted.setdefault((name, rr.rtype), set()).add(rdata_wire(rr.rdata))
        else:
            raise UpdateRefused(RCODE.FORMERR, f"prerequisite {rr.rname} has class {rr.rclass}")
    for (name, rtype), rdatas in wanted.items():
        have = {rdata_wire(rr.rdata) for rr in records
                if rr.rtype == rtype and name_key(rr.rname) == name}
        if have != rdatas:
            raise UpdateRefused(RCODE.NXRRSET, f"prerequisite: RRset {QTYPE.get(rtype)} differs")


def prescan(updates: Sequence[RR], origin: str) -> None:
    """RFC 2136 §3.4.1.3; raises :class:`UpdateRefused`."""
    for rr in updates:
        if not in_zone(rr.rname, origin):
            raise UpdateRefused(RCODE.NOTZONE, f"update {rr.rname} is outside {origin}")
        if rr.rclass == CLASS.IN:
            if rr.rtype in META_TYPES or _empty(rr):
                raise UpdateRefused(RCODE.FORMERR, f"cannot add {QTYPE.get(rr.rtype)} "
                                    f"at {rr.rname}")
            if rr.rtype == QTYPE.SOA and not hasattr(rr.rdata, "times"):
                raise UpdateRefused(RCODE.FORMERR, "malformed SOA in update")
        elif rr.rclass == CLASS_ANY:
            if rr.ttl != 0 or not _empty(rr) or (rr.rtype in META_TYPES
                                                 and rr.rtype != QTYPE.ANY):
                raise UpdateRefused(RCODE.FORMERR, f"bad delete of {rr.rname}")
        elif rr.rclass == CLASS_NONE:
            if rr.ttl != 0 or rr.rtype in META_TYPES:
                raise UpdateRefused(RCODE.FORMERR, f"bad record delete at {rr.rname}")
        else:
            raise UpdateRefused(RCODE.FORMERR, f"update {rr.rname} has class {rr.rclass}")


def apply_update(msg: DNSRecord, origin: str, records: Sequence[RR], *, now_s: int,
                 serial_policy: str = "increment") -> tuple[list[RR], Change | None]:
    """Check and apply an UPDATE's prerequisites and updates to ``records``.

    Returns the new records and the change (None when nothing changed), or
    raises :class:`UpdateRefused`.
    """
    check_prerequisites(msg.rr, origin, records)
    prescan(msg.auth, origin)
    apex = name_key(origin)
    zone = list(records)
    old_soa = find_soa(zone)
    soa_set = False
    for rr in msg.auth:
        name = name_key(rr.rname)
        at_name = [r for r in zone if name_key(r.rname) == name]
        if rr.rclass == CLASS.IN:
            if rr.rtype == QTYPE.SOA:
                current = find_soa(zone)
                if name == apex and serial_gt(soa_serial(rr), soa_serial(current)):
                    zone = [rr if r is current else r for r in zone]
                    soa_set = True
                continue
            others = [r for r in at_name if r.rtype != rr.rtype]
            if rr.rtype == QTYPE.CNAME and others:
                continue
            if rr.rtype != QTYPE.CNAME and any(r.rtype == QTYPE.CNAME for r in at_name):
                continue
            if rr.rtype == QTYPE.CNAME:
                zone = [r for r in zone
                        if not (r.rtype == QTYPE.CNAME and name_key(r.rname) == name)]
            else:
                zone = [r for r in zone if not _same(r, rr)]
            added = RR(rr.rname, rr.rtype, CLASS.IN, rr.ttl, rr.rdata)
            zone = [RR(r.rname, r.rtype, r.rclass, rr.ttl, r.rdata)
                    if r.rtype == rr.rtype and name_key(r.rname) == name else r for r in zone]
            zone.append(added)
        elif rr.rclass == CLASS_ANY:
            if rr.rtype == QTYPE.ANY:
                keep = {QTYPE.SOA, QTYPE.NS} if name == apex else set()
                zone = [r for r in zone if name_key(r.rname) != name or r.rtype in keep]
            elif name == apex and rr.rtype in (QTYPE.SOA, QTYPE.NS):
                continue
            else:
                zone = [r for r in zone if not (name_key(r.rname) == name and r.rtype == rr.rtype)]
        else:  # CLASS_NONE: delete one record
            if rr.rtype == QTYPE.SOA:
                continue
            if rr.rtype == QTYPE.NS and name == apex:
                apex_ns = [r for r in zone if r.rtype == QTYPE.NS and name_key(r.rname) == apex]
                if len(apex_ns) == 1 and _same(apex_ns[0], rr):
                    continue
            zone = [r for r in zone if not _same(r, rr)]
    change = diff(records, zone)
    if not (change.removed or change.added or soa_set):
        return list(records), None
    if not soa_set:
        new_soa = with_serial(old_soa, next_serial(soa_serial(old_soa), serial_policy, now_s))
        zone = [new_soa if r.rtype == QTYPE.SOA else r for r in zone]
    return zone, diff(records, zone)


# -- wiring into the server core ----------------------------------------------

@dataclass(frozen=True)
class ZoneChanged:
    """An UPDATE changed ``zone`` (already in the returned state, its journal
    extended). The adapter must persist it (zone file, journal) *before* it
    sends the replies of that ``handle`` call, then notify the secondaries.

    ``journal`` is the zone's journal with this change, the one to store with
    ``records``. ``previous`` and ``previous_journal`` are what the state held
    before: when the change cannot be stored, the adapter puts them back, so
    that nothing unstored is served (or acknowledged by a later update that
    finds it already there)."""

    origin: str
    zone: Zone
    change: Change
    records: list[RR]
    journal: Journal | None = None
    previous: Zone | None = None
    previous_journal: Journal | None = None


def _zone_check(origin: str, records: list[RR]) -> str | None:
    try:
        Zone.from_records(origin, records)
    except ZoneError as err:
        return err.reason
    return None


def handle_update(state, now_ns: int, proto: str, src: tuple[str, int], data: bytes, query
                  ) -> tuple[object, list[bytes], list]:
    """``server.Handler`` for opcode UPDATE (5): install with ``state.with_handler(5, ...)``.

    On a change the new zone replaces the old one in the state, the change is
    appended to the zone's journal in ``ext[EXT]``, and a :class:`ZoneChanged`
    is left in ``ext[xfr.EVENTS]`` (see :func:`.xfr.take_events`).
    """
    config = config_of(state)
    zones = {str(z.origin): z for key, z in state.zones.items()
             if key not in config.secondary_zones}
    out = answer_update(data, src=src[0], zones={o: z.to_records() for o, z in zones.items()},
                        acl=config.update_acl, keyring=config.keyring,
                        now_s=now_ns // 1_000_000_000, serial_policy=config.serial_policy,
                        check=_zone_check)
    if out.records is not None and out.change is not None:
        zone = Zone.from_records(out.origin, out.records)
        before = config.journals.get(zone.apex)
        journal = config.journal(zone.apex)
        journal.append(out.change)
        config = replace(config, journals={**config.journals, zone.apex: journal})
        state = state.with_zone(zone).with_ext(EXT, config)
        state = add_event(state, ZoneChanged(out.origin, zone, out.change, out.records, journal,
                                             zones[out.origin], before))
    return state, ([out.reply] if out.reply else []), []
