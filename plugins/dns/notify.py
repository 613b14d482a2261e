"""NOTIFY (RFC 1996), both directions, no I/O.

Rules of this module:

Out (primary side, :class:`NotifySender`):

- :meth:`NotifySender.zone_changed` starts one NOTIFY per configured
  secondary: opcode NOTIFY, AA set, the question (zone, SOA, IN) and the
  new SOA in the answer section, signed when that secondary has a key. A
  newer change to the same zone replaces the pending NOTIFYs for it.
- Each NOTIFY is sent over UDP up to ``tries`` times (5): the first at once,
  then again after ``timeout_ns``, doubling each time (1 s, 2 s, 4 s, 8 s),
  driven by :meth:`NotifySender.tick`; a NOTIFY still unanswered after the
  last wait yields :class:`NotifyFailed`.
- A response matches a pending NOTIFY by source (address, port), ID,
  opcode and question; its TSIG must verify when the NOTIFY was signed.
  A matching response with any RCODE ends that NOTIFY (:class:`NotifyDone`
  carries the RCODE). Others are ignored (counted in ``ignored``).
- Message IDs come from ``new_id`` (entropy is an input: the adapter passes
  a function over its random device, tests a counter).

In (secondary side, :func:`answer_notify`): a NOTIFY for a zone we are a
secondary of, from a source the notify ACL allows (with its TSIG verified),
is answered NOERROR and yields :class:`RefreshNow` (with the serial from the
answer section when present, as a hint only: RFC 1996 §3.11). Unknown zone:
NOTAUTH; ACL denies: REFUSED; bad TSIG: the TSIG error answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from dnslib import CLASS, OPCODE, QTYPE, RCODE, RR, DNSHeader, DNSQuestion, DNSRecord

from . import tsig
from .acl import Peer, ZoneAcls, acl_for, authenticate, sign_reply
from .journal import name_key, soa_serial
from .xfr import WireError, add_event, config_of, parse_message, reply_to, strip_tsig
from .zone import key_name

SECOND = 1_000_000_000


@dataclass(frozen=True)
class SendUdp:
    """Send ``wire`` as one UDP datagram to ``dst`` (address, port)."""

    dst: tuple[str, int]
    wire: bytes


@dataclass(frozen=True)
class NotifyDone:
    """A secondary answered the NOTIFY for ``origin`` with ``rcode``."""

    origin: str
    peer: Peer
    rcode: int


@dataclass(frozen=True)
class NotifyFailed:
    """A secondary did not answer the NOTIFY for ``origin`` after all tries."""

    origin: str
    peer: Peer


@dataclass(frozen=True)
class RefreshNow:
    """A valid NOTIFY arrived: refresh zone ``origin`` now (``serial`` is a hint)."""

    origin: str
    serial: int | None = None


@dataclass
class _Pending:
    origin: str
    peer: Peer
    msg_id: int
    wire: bytes
    mac: bytes
    tries: int
    due_ns: int
    wait_ns: int


@dataclass
class NotifySender:
    """Pending outgoing NOTIFYs and their retransmission timers."""

    new_id: Callable[[], int]
    tries: int = 5
    timeout_ns: int = SECOND
    pending: list[_Pending] = field(default_factory=list)
    ignored: int = 0

    def zone_changed(self, origin: str, soa: RR, peers: Sequence[Peer], now_ns: int, *,
                     now_s: int | None = None) -> list[SendUdp]:
        """Start NOTIFYs for a new version of ``origin``; the datagrams to send now.
        ``now_ns`` drives the timers (monotonic); ``now_s`` is the POSIX time a
        TSIG carries (default ``now_ns`` in seconds, for callers with one clock)."""
        self.pending = [p for p in self.pending if name_key(p.origin) != name_key(origin)]
        out = []
        for peer in peers:
            msg_id = self.new_id() & 0xFFFF
            wire = notify_message(origin, soa, msg_id)
            mac = b""
            if peer.key is not None:
                wire, mac = tsig.sign(wire, peer.key,
                                      now_ns // SECOND if now_s is None else now_s)
            self.pending.append(_Pending(origin, peer, msg_id, wire, mac, 1,
                                         now_ns + self.timeout_ns, self.timeout_ns))
            out.append(SendUdp((peer.address, peer.port), wire))
        return out

    def next_deadline(self) -> int | None:
        """When :meth:`tick` next has work (monotonic ns), or None."""
        return min((p.due_ns for p in self.pending), default=None)

    def tick(self, now_ns: int) -> list[SendUdp | NotifyFailed]:
        """Retransmit what is due; give up on what has had all its tries."""
        out: list[SendUdp | NotifyFailed] = []
        keep = []
        for p in self.pending:
            if p.due_ns > now_ns:
                keep.append(p)
            elif p.tries >= self.tries:
                out.append(NotifyFailed(p.origin, p.peer))
            else:
                p.tries += 1
                p.wait_ns *= 2
                p.due_ns = now_ns + p.wait_ns
                # the same bytes again: its TSIG time stays well within the fudge
                out.append(SendUdp((p.peer.address, p.peer.port), p.wire))
                keep.append(p)
        self.pending = keep
        return out

    def handle_response(self, src: tuple[str, int], wire: bytes, now_ns: int, *,
                        now_s: int | None = None) -> list[NotifyDone]:
        """Match a NOTIFY response; the NotifyDone it completes, if any (``now_s``:
        as in :meth:`zone_changed`)."""
        try:
            msg = parse_message(strip_tsig(wire))
        except (WireError, tsig.TsigError):
            self.ignored += 1
            return []
        for p in self.pending:
            if (p.msg_id != msg.header.id or (p.peer.address, p.peer.port) != tuple(src)
                    or msg.header.opcode != OPCODE.NOTIFY or not msg.header.qr):
                continue
            if not msg.questions or name_key(msg.questions[0].qname) != name_key(p.origin):
                continue
            if p.peer.key is not None:
                try:
                    tsig.verify(wire, {p.peer.key.name: p.peer.key},
                                now_ns // SECOND if now_s is None else now_s, request_mac=p.mac)
                except tsig.TsigError:
                    continue
            self.pending.remove(p)
            return [NotifyDone(p.origin, p.peer, msg.header.rcode)]
        self.ignored += 1
        return []


def notify_message(origin: str, soa: RR | None, msg_id: int) -> bytes:
    """An unsigned NOTIFY for ``origin`` (with ``soa`` in the answer section if given)."""
    header = DNSHeader(id=msg_id, qr=0, opcode=OPCODE.NOTIFY, aa=1, rd=0)
    msg = DNSRecord(header, [DNSQuestion(origin, QTYPE.SOA, CLASS.IN)])
    if soa is not None:
        msg.add_answer(soa)
    return bytes(msg.pack())




# -- NOTIFY in ----------------------------------------------------------------

def answer_notify(query_wire: bytes, query: DNSRecord, *, src: str, zones: Sequence[str],
                  acl: ZoneAcls, keyring: Mapping[str, tsig.Key], now_s: int
                  ) -> tuple[bytes | None, RefreshNow | None]:
    """The answer to an incoming NOTIFY, and the refresh it asks for (see module rules)."""
    auth = authenticate(query_wire, keyring, now_s)
    if auth.failed:
        return auth.error_reply, None
    if query.header.qr:
        return None, None
    if len(query.questions) != 1 or query.questions[0].qtype != QTYPE.SOA:
        return sign_reply(reply_to(query, RCODE.FORMERR, aa=False).pack(), auth, now_s), None
    qname = query.questions[0].qname
    origin = next((z for z in zones if name_key(z) == name_key(qname)), None)
    if origin is None:
        return sign_reply(reply_to(query, RCODE.NOTAUTH, aa=False).pack(), auth, now_s), None
    if not acl_for(acl, origin).allows(src, auth.key_name):
        return sign_reply(reply_to(query, RCODE.REFUSED, aa=False).pack(), auth, now_s), None
    serial = next((soa_serial(rr) for rr in query.rr
                   if rr.rtype == QTYPE.SOA and hasattr(rr.rdata, "times")), None)
    reply = reply_to(query)
    return sign_reply(reply.pack(), auth, now_s), RefreshNow(origin, serial)


def handle_notify(state, now_ns: int, proto: str, src: tuple[str, int], data: bytes, query
                  ) -> tuple[object, list[bytes], list]:
    """``server.Handler`` for opcode NOTIFY (4): answers, and leaves
    :class:`RefreshNow` in ``ext[xfr.EVENTS]`` for the adapter to pass to the
    zone's :class:`~.secondary.Secondary` (``notify(now_ns, serial)``)."""
    config = config_of(state)
    try:
        msg = parse_message(strip_tsig(data))
    except (WireError, tsig.TsigError):
        return state, [], []
    zones = [str(key_name(key)) for key in config.secondary_zones]
    reply, refresh = answer_notify(data, msg, src=src[0], zones=zones, acl=config.notify_acl,
                                   keyring=config.keyring, now_s=now_ns // SECOND)
    if refresh is not None:
        state = add_event(state, refresh)
    return state, ([reply] if reply else []), []
