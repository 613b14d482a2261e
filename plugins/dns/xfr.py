"""Zone transfers: AXFR (RFC 5936) and IXFR (RFC 1995), both directions, no I/O.

Rules of this module:

Answering (primary side, :func:`answer_transfer`):

- A transfer is refused (REFUSED) unless the zone's transfer ACL allows the
  source address and the verified TSIG key; a request whose TSIG fails gets
  the TSIG error answer; a zone we do not serve is NOTAUTH.
- AXFR is TCP only (over UDP: NOTIMP). The answer is the SOA, every other
  record, the SOA again, split into messages whose size stays under
  ``max_message`` (65535 by default, the TCP length prefix's limit); only
  the first message carries the question.
- IXFR reads the client's serial from the SOA in the authority section (no
  SOA there: FORMERR). When the client is current (or newer) the answer is
  the single current SOA. Otherwise the journal's changes since that
  serial, as RFC 1995 sequences between two copies of the current SOA; when
  the journal does not reach back (or does not reach the current serial),
  the AXFR form, still with the IXFR question. Over UDP the answer is the
  current SOA alone (the client then comes back over TCP), with TC set if
  even that does not fit the client's UDP size.
- When the request was signed, every message of the answer is signed, the
  first over the request MAC, each later one over the prior MAC with the
  timers only (RFC 8945 §5.3.1).

Reading (secondary side, :class:`TransferReader`): fed the messages of an
AXFR or IXFR answer in order, it verifies TSIG across the stream when a key
is configured, checks IDs, RCODEs and the question, and tells when the
transfer is complete; its result is a full zone (AXFR or AXFR-style IXFR),
a list of :class:`~.journal.Change` (incremental IXFR), or "current".
Anything else raises :class:`XfrError`.

:func:`parse_message` is the tolerant DNS message parser the other cores
share: unlike ``DNSRecord.parse`` it accepts empty RDATA (UPDATE's delete
records, meta queries) and raises only :class:`WireError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from dnslib import (CLASS, OPCODE, QTYPE, RCODE, RR, RD, DNSBuffer, DNSHeader, DNSQuestion,
                    DNSRecord)

from . import tsig
from .acl import Acl, Auth, ZoneAcls, acl_for, authenticate
from .journal import (Change, Journal, find_soa, in_zone, name_key, rr_wire_size, serial_cmp,
                      soa_serial)

MAX_TCP_MESSAGE = 65535
TSIG_RESERVE = 400  # room left in each signed message for its TSIG record


class WireError(ValueError):
    """Bytes that are not a DNS message; ``str(err)`` says where it broke."""


class XfrError(Exception):
    """A transfer answer that cannot be used; ``rcode`` is the peer's RCODE when it sent one."""

    def __init__(self, reason: str, rcode: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rcode = rcode


# -- wire helpers ------------------------------------------------------------

def parse_message(wire: bytes) -> DNSRecord:
    """A DNS message from ``wire``; RRs with empty RDATA are kept (``RD(b"")``)."""
    buf = DNSBuffer(wire)
    try:
        header = DNSHeader.parse(buf)
        counts = (header.q, header.a, header.auth, header.ar)
        if 12 + counts[0] * 5 + sum(counts[1:]) * 11 > len(wire):
            raise WireError("section counts exceed the message length")
        questions = [DNSQuestion.parse(buf) for _ in range(counts[0])]
        sections = [[_parse_rr(buf) for _ in range(n)] for n in counts[1:]]
    except WireError:
        raise
    except Exception as err:  # dnslib raises several kinds on bad bytes
        raise WireError(f"malformed DNS message at offset {buf.offset}: {err}") from None
    if buf.remaining():
        raise WireError(f"{buf.remaining()} trailing bytes after the DNS message")
    return DNSRecord(header, questions, sections[0], auth=sections[1], ar=sections[2])


def _parse_rr(buf: DNSBuffer) -> RR:
    start = buf.offset
    buf.decode_name()
    rtype, _rclass, _ttl, rdlength = buf.unpack("!HHIH")
    if rdlength or rtype == QTYPE.OPT:  # dnslib wants a list of options for OPT
        buf.offset = start
        return RR.parse(buf)
    buf.offset = start
    name = buf.decode_name()
    rtype, rclass, ttl, _ = buf.unpack("!HHIH")
    return RR(name, rtype, rclass, ttl, RD(b""))


def reply_to(query: DNSRecord, rcode: int = RCODE.NOERROR, *, aa: bool = True,
             question: bool = True) -> DNSRecord:
    """An empty answer to ``query``: same ID and opcode, QR set, RD copied."""
    header = DNSHeader(id=query.header.id, qr=1, opcode=query.header.opcode,
                       aa=int(aa), rd=query.header.rd, rcode=rcode)
    return DNSRecord(header, list(query.questions) if question else [])


# -- answering ---------------------------------------------------------------

@dataclass(frozen=True)
class ZoneView:
    """What a transfer answer needs of a zone: its origin, records, journal."""

    origin: str
    records: Sequence[RR]
    journal: Journal | None = None


def answer_transfer(query_wire: bytes, query: DNSRecord, *, proto: str, src: str,
                    zones: Mapping[str, ZoneView], acl: ZoneAcls,
                    keyring: Mapping[str, tsig.Key], now_s: int,
                    max_message: int = MAX_TCP_MESSAGE, udp_size: int = 512) -> list[bytes]:
    """The messages that answer an AXFR/IXFR query (see the module rules).

    ``zones`` maps origin names (any case, with or without trailing dot) to
    views; ``acl`` is one ACL for all zones or a mapping origin -> ACL;
    ``src`` is the client's address (text, no port). Returns the wire
    messages to send in order (over TCP each gets its 2-byte length from
    the adapter); an empty list means drop.
    """
    auth = authenticate(query_wire, keyring, now_s)
    if auth.failed:
        return [auth.error_reply] if auth.error_reply else []
    if len(query.questions) != 1:
        return [_finish(reply_to(query, RCODE.FORMERR, aa=False), auth, now_s)]
    q = query.questions[0]
    zone = _lookup_zone(zones, q.qname)
    if zone is None or q.qclass != CLASS.IN:
        return [_finish(reply_to(query, RCODE.NOTAUTH, aa=False), auth, now_s)]
    if not acl_for(acl, zone.origin).allows(src, auth.key_name):
        return [_finish(reply_to(query, RCODE.REFUSED, aa=False), auth, now_s)]
    soa = find_soa(zone.records)
    if q.qtype == QTYPE.AXFR:
        if proto != "tcp":
            return [_finish(reply_to(query, RCODE.NOTIMP, aa=False), auth, now_s)]
        return _stream(query, _axfr_records(zone.records, soa), auth, now_s, max_message)
    if q.qtype != QTYPE.IXFR:
        return [_finish(reply_to(query, RCODE.NOTIMP, aa=False), auth, now_s)]
    client = [rr for rr in query.auth if rr.rtype == QTYPE.SOA]
    if len(client) != 1 or not client[0].rdata or not hasattr(client[0].rdata, "times"):
        return [_finish(reply_to(query, RCODE.FORMERR, aa=False), auth, now_s)]
    client_serial = soa_serial(client[0])
    if proto != "tcp" or serial_cmp(client_serial, soa_serial(soa)) in (0, 1):
        reply = reply_to(query)
        reply.add_answer(soa)
        wire = _finish(reply, auth, now_s)
        if proto != "tcp" and len(wire) > _udp_limit(query, udp_size):
            reply = reply_to(query)
            reply.header.tc = 1
            wire = _finish(reply, auth, now_s)
        return [wire]
    changes = zone.journal.since(client_serial) if zone.journal else None
    if changes and changes[-1].to_serial == soa_serial(soa):
        return _stream(query, ixfr_records(soa, changes), auth, now_s, max_message)
    return _stream(query, _axfr_records(zone.records, soa), auth, now_s, max_message)


def ixfr_records(soa: RR, changes: Sequence[Change]) -> list[RR]:
    """The answer section of an incremental IXFR: SOA, each change's sequence, SOA."""
    out = [soa]
    for change in changes:
        out.extend(change.sequence())
    out.append(soa)
    return out


def _axfr_records(records: Sequence[RR], soa: RR) -> list[RR]:
    return [soa, *(rr for rr in records if rr.rtype != QTYPE.SOA), soa]


def _lookup_zone(zones: Mapping[str, ZoneView], qname) -> ZoneView | None:
    wanted = name_key(qname)
    for origin, view in zones.items():
        if name_key(origin) == wanted:
            return view
    return None


def _udp_limit(query: DNSRecord, default: int) -> int:
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, rr.rclass)
    return default


def _finish(reply: DNSRecord, auth: Auth, now_s: int) -> bytes:
    wire = bytes(reply.pack())
    if auth.key is not None:
        wire = tsig.sign(wire, auth.key, int(now_s), request_mac=auth.request_mac)[0]
    return wire


def _stream(query: DNSRecord, records: list[RR], auth: Auth, now_s: int,
            max_message: int) -> list[bytes]:
    """``records`` as answer messages of at most ``max_message`` bytes each."""
    budget = max_message - 12 - (TSIG_RESERVE if auth.key is not None else 0)
    first_budget = budget - sum(len(b".".join(q.qname.label)) + 6 for q in query.questions)
    if first_budget < 256:
        raise ValueError(f"max_message {max_message} is too small for a transfer")
    chunks: list[list[RR]] = [[]]
    used, limit = 0, first_budget
    for rr in records:
        size = rr_wire_size(rr)
        if chunks[-1] and used + size > limit:
            chunks.append([])
            used, limit = 0, budget
        chunks[-1].append(rr)
        used += size
    signer = tsig.StreamSigner(auth.key, auth.request_mac) if auth.key is not None else None
    out = []
    for index, chunk in enumerate(chunks):
        reply = reply_to(query, question=index == 0)
        for rr in chunk:
            reply.add_answer(rr)
        wire = bytes(reply.pack())
        if signer is not None:
            wire = signer.sign(wire, int(now_s), last=index == len(chunks) - 1)
        out.append(wire)
    return out


# -- reading a transfer ------------------------------------------------------

def transfer_query(origin: str, msg_id: int, *, serial: int | None = None,
                   soa: RR | None = None) -> DNSRecord:
    """An AXFR query, or an IXFR query when ``soa`` (our current SOA) is given."""
    header = DNSHeader(id=msg_id, qr=0, opcode=OPCODE.QUERY, rd=0)
    if soa is None:
        return DNSRecord(header, [DNSQuestion(origin, QTYPE.AXFR)])
    record = DNSRecord(header, [DNSQuestion(origin, QTYPE.IXFR)])
    record.add_auth(soa)
    return record


@dataclass
class TransferResult:
    """A complete transfer: ``kind`` is ``axfr``, ``ixfr`` or ``current``."""

    kind: str
    soa: RR
    records: list[RR] | None = None
    changes: list[Change] = field(default_factory=list)

    @property
    def serial(self) -> int:
        return soa_serial(self.soa)


class TransferReader:
    """Reads the messages of one AXFR/IXFR answer, in order (see the module rules).

    ``msg_id``/``origin``/``qtype`` are the query's; ``client_serial`` is the
    serial sent in an IXFR query; ``keyring`` + ``request_mac`` enable TSIG
    checks (every answer must then be signed as RFC 8945 allows).
    """

    # parser states
    START, FIRST, AXFR, DEL, ADD, DONE = range(6)

    def __init__(self, origin: str, msg_id: int, qtype: int, *, client_serial: int | None = None,
                 keyring: Mapping[str, tsig.Key] | None = None, request_mac: bytes = b"") -> None:
        self.origin = origin
        self.msg_id = msg_id
        self.qtype = qtype
        self.client_serial = client_serial
        self.verifier = tsig.StreamVerifier(keyring, request_mac) if keyring else None
        self.state = self.START
        self.messages = 0
        self.soa: RR | None = None
        self.records: list[RR] = []
        self.changes: list[Change] = []
        self._old: RR | None = None
        self._new: RR | None = None
        self._removed: list[RR] = []
        self._added: list[RR] = []
        self.result: TransferResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def feed(self, wire: bytes, now_s: int) -> TransferResult | None:
        """Take the next message; the result once the transfer is complete."""
        if self.done:
            raise XfrError("message after the end of the transfer")
        if self.verifier is not None:
            try:
                self.verifier.feed(wire, int(now_s))
            except tsig.TsigError as err:
                raise XfrError(f"transfer from primary: {err}") from None
        try:
            msg = parse_message(strip_tsig(wire))
        except (WireError, tsig.TsigError) as err:
            raise XfrError(f"transfer message: {err}") from None
        self._check_header(msg)
        self.messages += 1
        for rr in msg.rr:
            self._record(rr)
        if self.state == self.FIRST and self.qtype == QTYPE.IXFR:
            # a lone SOA: the client is current
            client = self.client_serial
            if client is not None and serial_cmp(self.serial, client) in (0, -1):
                self.result = TransferResult("current", self.soa)
        if self.result is not None and self.verifier is not None:
            try:
                self.verifier.finish()
            except tsig.TsigError as err:
                raise XfrError(f"transfer from primary: {err}") from None
        return self.result

    @property
    def serial(self) -> int:
        return soa_serial(self.soa)

    def _check_header(self, msg: DNSRecord) -> None:
        if msg.header.id != self.msg_id or not msg.header.qr:
            raise XfrError("answer does not match the transfer query")
        if msg.header.rcode != RCODE.NOERROR:
            raise XfrError(f"primary answered {RCODE.get(msg.header.rcode)}", msg.header.rcode)
        if msg.header.tc:
            raise XfrError("truncated transfer answer")
        if self.messages == 0 and msg.questions:
            q = msg.questions[0]
            if name_key(q.qname) != name_key(self.origin) or q.qtype != self.qtype:
                raise XfrError("answer is for another question")

    def _record(self, rr: RR) -> None:
        is_soa = rr.rtype == QTYPE.SOA
        if is_soa and not hasattr(rr.rdata, "times"):
            raise XfrError(f"bad SOA record in transfer: {rr.rname}")
        if not in_zone(rr.rname, self.origin):
            raise XfrError(f"record outside the zone: {rr.rname}")
        st = self.state
        if st == self.DONE or self.result is not None:
            raise XfrError("records after the final SOA")
        if st == self.START:
            if not is_soa or name_key(rr.rname) != name_key(self.origin):
                raise XfrError("transfer does not start with the zone's SOA")
            self.soa = rr
            self.state = self.FIRST
        elif st == self.FIRST:
            if is_soa and self.qtype == QTYPE.IXFR and soa_serial(rr) != self.serial:
                self._old, self._removed = rr, []
                self.state = self.DEL
            elif is_soa:
                self._finish_axfr(rr)
            else:
                self.records.append(rr)
                self.state = self.AXFR
        elif st == self.AXFR:
            if is_soa:
                self._finish_axfr(rr)
            else:
                self.records.append(rr)
        elif st == self.DEL:
            if is_soa:
                self._new, self._added = rr, []
                self.state = self.ADD
            else:
                self._removed.append(rr)
        elif st == self.ADD:
            if not is_soa:
                self._added.append(rr)
                return
            change = Change(self._old, self._new, tuple(self._removed), tuple(self._added))
            if self.changes and self.changes[-1].to_serial != change.from_serial:
                raise XfrError("IXFR differences are not contiguous")
            self.changes.append(change)
            if soa_serial(rr) == self.serial and change.to_serial == self.serial:
                client = self.client_serial
                if client is not None and self.changes[0].from_serial != client:
                    raise XfrError("IXFR does not start at our serial")
                self.result = TransferResult("ixfr", self.soa, changes=self.changes)
                self.state = self.DONE
            else:
                self._old, self._removed = rr, []
                self.state = self.DEL

    def _finish_axfr(self, rr: RR) -> None:
        if soa_serial(rr) != self.serial:
            raise XfrError("AXFR ends with another SOA than it started with")
        self.result = TransferResult("axfr", self.soa, records=[self.soa, *self.records])
        self.state = self.DONE


def strip_tsig(wire: bytes) -> bytes:
    """``wire`` without its TSIG record (ARCOUNT one less); raises ``tsig.TsigError``."""
    record = tsig.find_tsig(wire)
    if record is None:
        return wire
    ar = int.from_bytes(wire[10:12], "big")
    return wire[:10] + (ar - 1).to_bytes(2, "big") + wire[12:record.offset]


# -- wiring into the server core (server.handle's dispatch table) --------------

EXT = "dns.transfer"
"""``ServerState.ext`` key of the :class:`TransferConfig`."""
EVENTS = "dns.events"
"""``ServerState.ext`` key of the events handlers leave for the adapter (a tuple)."""


@dataclass(frozen=True)
class TransferConfig:
    """What the transfer, NOTIFY and UPDATE handlers read from ``state.ext[EXT]``.

    ACLs are per zone or for all (see :data:`.acl.ZoneAcls`; default deny).
    ``journals`` maps zone name keys to their :class:`~.journal.Journal`
    (absent: IXFR falls back to AXFR); ``secondary_zones`` are the zones
    this server pulls from a primary: NOTIFY is accepted for them, UPDATE
    is not. ``journal_entries``/``journal_bytes`` bound new journals.
    """

    keyring: Mapping[str, tsig.Key] = field(default_factory=dict)
    transfer_acl: ZoneAcls = field(default_factory=Acl)
    update_acl: ZoneAcls = field(default_factory=Acl)
    notify_acl: ZoneAcls = field(default_factory=Acl)
    journals: Mapping[tuple, Journal] = field(default_factory=dict)
    secondary_zones: frozenset = frozenset()
    serial_policy: str = "increment"
    max_message: int = MAX_TCP_MESSAGE
    journal_entries: int = 100
    journal_bytes: int = 1 << 20

    def journal(self, key: tuple) -> Journal:
        """The journal of zone ``key`` (a new empty one when there is none)."""
        found = self.journals.get(key)
        if found is None:
            return Journal(self.journal_entries, self.journal_bytes)
        return Journal(found.max_entries, found.max_bytes, list(found.changes))


def config_of(state) -> TransferConfig:
    return state.ext.get(EXT) or TransferConfig()


def add_event(state, event):
    """``state`` with ``event`` appended to ``ext[EVENTS]``."""
    return state.with_ext(EVENTS, (*state.ext.get(EVENTS, ()), event))


def take_events(state):
    """``(state without events, events)``: the adapter calls this after each ``handle``."""
    events = tuple(state.ext.get(EVENTS, ()))
    return (state.with_ext(EVENTS, ()) if events else state), events


def handle_xfr(state, now_ns: int, proto: str, src: tuple[str, int], data: bytes, query
               ) -> tuple[object, list[bytes], list]:
    """``server.Handler`` for QTYPE AXFR/IXFR: install with ``state.with_xfr_handler``."""
    config = config_of(state)
    try:
        msg = parse_message(strip_tsig(data))
    except (WireError, tsig.TsigError):
        return state, [], []
    zones = {str(z.origin): ZoneView(str(z.origin), z.to_records(), config.journals.get(key))
             for key, z in state.zones.items()}
    replies = answer_transfer(data, msg, proto=proto, src=src[0], zones=zones,
                              acl=config.transfer_acl, keyring=config.keyring,
                              now_s=now_ns // 1_000_000_000, max_message=config.max_message,
                              udp_size=512)
    return state, replies, []
