"""A secondary's zone state machine (RFC 1034 §4.3.5, RFC 1995, RFC 1996, RFC 5936).

One :class:`Secondary` per zone. Time is an input (``now_ns``: POSIX time in
nanoseconds, from the pclock device: it drives the timers and TSIG), message
IDs come from ``new_id``; outputs are actions for an adapter.

States and rules:

- ``idle``: nothing in flight. When ``refresh_at`` passes (at once for a zone
  we do not hold yet), or a NOTIFY arrives, go to ``soa``.
- ``soa``: a UDP SOA query to one primary is in flight (signed when that
  primary has a key; the answer's TSIG must then verify). A newer serial
  (RFC 1982), or no zone held yet, starts a transfer; the same serial sets
  the timers (refresh from now, expire from now) and goes back to ``idle``.
  No answer within ``query_timeout_ns``, or an error answer: the next
  primary; after the last one, ``retry`` from the SOA (``initial_retry_ns``
  while no zone is held) and ``idle``.
- ``xfr``: a TCP transfer is in flight (:class:`OpenTcp`; the adapter
  frames each message with its 2-byte length and calls
  :meth:`Secondary.handle_tcp_message` per message, and
  :meth:`Secondary.tcp_closed` when the peer closes). IXFR when a zone is
  held, else AXFR. An IXFR that fails (error RCODE, a malformed or
  inapplicable answer) is tried again once as AXFR. A complete transfer
  yields :class:`ZoneLoaded` (the full new records, serial, and the changes
  for an IXFR, so that the journal can be extended) and ``idle`` with fresh
  timers. No progress within ``transfer_timeout_ns``: :class:`CloseTcp` and
  the failure path of ``soa``.
- ``expire``: when ``expire_at`` (set on every successful contact) passes,
  :class:`ZoneExpired` once; the zone is not served until a later contact
  succeeds (which yields :class:`ZoneLoaded` again).
- A NOTIFY during ``soa``/``xfr`` is remembered and starts another refresh
  once the current one ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from dnslib import CLASS, OPCODE, QTYPE, RCODE, RR, DNSHeader, DNSQuestion, DNSRecord

from . import tsig
from .acl import Peer
from .journal import Change, JournalError, apply, find_soa, name_key, serial_gt, soa_serial
from .notify import SendUdp
from .xfr import TransferReader, WireError, XfrError, parse_message, strip_tsig, transfer_query

SECOND = 1_000_000_000


@dataclass(frozen=True)
class OpenTcp:
    """Open TCP connection ``conn`` to ``dst`` and send ``wire`` (length-prefixed) on it."""

    conn: int
    dst: tuple[str, int]
    wire: bytes


@dataclass(frozen=True)
class CloseTcp:
    """Close TCP connection ``conn`` (if still open)."""

    conn: int


@dataclass(frozen=True)
class ZoneLoaded:
    """Serve ``records`` (serial ``serial``) for ``origin`` from now on.

    ``changes`` are the IXFR differences that led there (empty after an
    AXFR or a re-validated expired zone): journal them to serve IXFR on.
    """

    origin: str
    records: list[RR]
    serial: int
    changes: list[Change] = field(default_factory=list)
    kind: str = "axfr"


@dataclass(frozen=True)
class ZoneExpired:
    """Stop serving ``origin``: no primary was reached within the SOA expire time."""

    origin: str


@dataclass(frozen=True)
class TransferFailed:
    """A refresh step failed (for the log); the machine goes on by itself."""

    origin: str
    primary: Peer
    reason: str


Action = SendUdp | OpenTcp | CloseTcp | ZoneLoaded | ZoneExpired | TransferFailed


class Secondary:
    """The refresh/transfer machine of one zone (see the module rules)."""

    def __init__(self, origin: str, primaries: Sequence[Peer], *, new_id: Callable[[], int],
                 records: Sequence[RR] | None = None, now_ns: int = 0,
                 query_timeout_ns: int = 2 * SECOND, transfer_timeout_ns: int = 30 * SECOND,
                 initial_retry_ns: int = 10 * SECOND) -> None:
        if not primaries:
            raise ValueError(f"secondary zone {origin} needs at least one primary")
        self.origin = origin
        self.primaries = list(primaries)
        self.new_id = new_id
        self.query_timeout_ns = query_timeout_ns
        self.transfer_timeout_ns = transfer_timeout_ns
        self.initial_retry_ns = initial_retry_ns
        self.records: list[RR] | None = list(records) if records is not None else None
        self.serving = self.records is not None
        self.state = "idle"
        self.refresh_at: int = now_ns
        self.expire_at: int | None = (now_ns + self._timer(3) if self.records is not None
                                      else None)
        self.deadline: int | None = None
        self._primary = 0
        self._msg_id = 0
        self._mac = b""
        self._conn = 0
        self._reader: TransferReader | None = None
        self._axfr_fallback = False
        self._notified = False

    # -- inputs -------------------------------------------------------------

    @property
    def serial(self) -> int | None:
        return None if self.records is None else soa_serial(find_soa(self.records))

    def next_deadline(self) -> int | None:
        """When :meth:`tick` next has work (POSIX ns)."""
        times = [t for t in (self.deadline, self.expire_at if self.serving else None) if t]
        if self.state == "idle":
            times.append(self.refresh_at)
        return min(times) if times else None

    def tick(self, now_ns: int) -> list[Action]:
        out: list[Action] = []
        if self.serving and self.expire_at is not None and now_ns >= self.expire_at:
            self.serving = False
            out.append(ZoneExpired(self.origin))
        if self.state == "idle" and now_ns >= self.refresh_at:
            self._primary = 0
            out += self._query_soa(now_ns)
        elif self.state != "idle" and self.deadline is not None and now_ns >= self.deadline:
            out += self._fail(now_ns, "timed out")
        return out

    def notify(self, now_ns: int, serial: int | None = None) -> list[Action]:
        """A NOTIFY for this zone was accepted: refresh now (or after the current one)."""
        if self.state != "idle":
            self._notified = True
            return []
        self.refresh_at = now_ns
        return self.tick(now_ns)

    def handle_udp(self, src: tuple[str, int], wire: bytes, now_ns: int) -> list[Action]:
        """An answer to our SOA query (anything else is ignored)."""
        primary = self.primaries[self._primary]
        if self.state != "soa" or tuple(src) != (primary.address, primary.port):
            return []
        try:
            if primary.key is not None:
                tsig.verify(wire, {primary.key.name: primary.key}, now_ns // SECOND,
                            request_mac=self._mac)
            msg = parse_message(strip_tsig(wire))
        except (WireError, tsig.TsigError) as err:
            if len(wire) >= 2 and int.from_bytes(wire[:2], "big") == self._msg_id:
                return self._fail(now_ns, f"SOA answer: {err}")
            return []
        if msg.header.id != self._msg_id or not msg.header.qr:
            return []
        if msg.header.rcode != RCODE.NOERROR:
            return self._fail(now_ns, f"SOA query answered {RCODE.get(msg.header.rcode)}")
        soas = [rr for rr in msg.rr if rr.rtype == QTYPE.SOA and hasattr(rr.rdata, "times")
                and name_key(rr.rname) == name_key(self.origin)]
        if not soas:
            return self._fail(now_ns, "SOA answer holds no SOA")
        theirs = soa_serial(soas[0])
        if self.records is not None and not serial_gt(theirs, self.serial):
            return self._succeeded(now_ns, [])
        return self._open_transfer(now_ns, axfr=self.records is None)

    def handle_tcp_message(self, conn: int, wire: bytes, now_ns: int) -> list[Action]:
        """One message (without its length prefix) of the transfer on ``conn``."""
        if self.state != "xfr" or conn != self._conn or self._reader is None:
            return []
        self.deadline = now_ns + self.transfer_timeout_ns
        try:
            result = self._reader.feed(wire, now_ns // SECOND)
        except XfrError as err:
            return [CloseTcp(conn), *self._transfer_failed(now_ns, str(err))]
        if result is None:
            return []
        out: list[Action] = [CloseTcp(conn)]
        if result.kind == "current":
            return out + self._succeeded(now_ns, [])
        if result.kind == "axfr":
            self.records = result.records
            return out + self._succeeded(now_ns, [ZoneLoaded(
                self.origin, list(self.records), result.serial, [], "axfr")])
        records = list(self.records or [])
        try:
            for change in result.changes:
                records = apply(records, change)
        except JournalError as err:
            return out + self._transfer_failed(now_ns, f"IXFR does not apply: {err}")
        self.records = records
        return out + self._succeeded(now_ns, [ZoneLoaded(
            self.origin, list(records), result.serial, list(result.changes), "ixfr")])

    def tcp_closed(self, conn: int, now_ns: int) -> list[Action]:
        """The transfer connection ``conn`` closed (or could not be opened)."""
        if self.state != "xfr" or conn != self._conn:
            return []
        return self._transfer_failed(now_ns, "connection closed before the transfer ended")

    # -- steps ----------------------------------------------------------------

    def _timer(self, index: int) -> int:
        """Refresh (1), retry (2) or expire (3) of the held SOA, in ns."""
        if self.records is None:
            return self.initial_retry_ns
        return find_soa(self.records).rdata.times[index] * SECOND

    def _sign(self, wire: bytes, primary: Peer, now_ns: int) -> bytes:
        if primary.key is None:
            self._mac = b""
            return wire
        wire, self._mac = tsig.sign(wire, primary.key, now_ns // SECOND)
        return wire

    def _query_soa(self, now_ns: int) -> list[Action]:
        primary = self.primaries[self._primary]
        self._msg_id = self.new_id() & 0xFFFF
        query = DNSRecord(DNSHeader(id=self._msg_id, qr=0, opcode=OPCODE.QUERY, rd=0),
                          [DNSQuestion(self.origin, QTYPE.SOA, CLASS.IN)])
        self.state = "soa"
        self.deadline = now_ns + self.query_timeout_ns
        self._axfr_fallback = False
        wire = self._sign(bytes(query.pack()), primary, now_ns)
        return [SendUdp((primary.address, primary.port), wire)]

    def _open_transfer(self, now_ns: int, *, axfr: bool) -> list[Action]:
        primary = self.primaries[self._primary]
        self._msg_id = self.new_id() & 0xFFFF
        soa = None if axfr else find_soa(self.records)
        query = transfer_query(self.origin, self._msg_id, soa=soa)
        wire = self._sign(bytes(query.pack()), primary, now_ns)
        keyring = {primary.key.name: primary.key} if primary.key is not None else None
        self._reader = TransferReader(
            self.origin, self._msg_id, QTYPE.AXFR if axfr else QTYPE.IXFR,
            client_serial=None if axfr else self.serial, keyring=keyring, request_mac=self._mac)
        self._conn += 1
        self.state = "xfr"
        self.deadline = now_ns + self.transfer_timeout_ns
        self._axfr_fallback = axfr
        return [OpenTcp(self._conn, (primary.address, primary.port), wire)]

    def _transfer_failed(self, now_ns: int, reason: str) -> list[Action]:
        primary = self.primaries[self._primary]
        if not self._axfr_fallback:
            return [TransferFailed(self.origin, primary, f"IXFR: {reason}; trying AXFR"),
                    *self._open_transfer(now_ns, axfr=True)]
        return self._fail(now_ns, reason)

    def _fail(self, now_ns: int, reason: str) -> list[Action]:
        out: list[Action] = []
        if self.state == "xfr":
            out.append(CloseTcp(self._conn))
        out.append(TransferFailed(self.origin, self.primaries[self._primary], reason))
        self._reader = None
        if self._primary + 1 < len(self.primaries):
            self._primary += 1
            return out + self._query_soa(now_ns)
        self.state = "idle"
        self.deadline = None
        self.refresh_at = now_ns + self._timer(2)
        if self._notified:
            self._notified = False
        return out

    def _succeeded(self, now_ns: int, events: list[Action]) -> list[Action]:
        self._reader = None
        self.state = "idle"
        self.deadline = None
        self.refresh_at = now_ns + self._timer(1)
        self.expire_at = now_ns + self._timer(3)
        out = list(events)
        if not self.serving:
            self.serving = True
            if not out:
                out.append(ZoneLoaded(self.origin, list(self.records), self.serial, [], "axfr"))
        if self._notified:
            self._notified = False
            self.refresh_at = now_ns
            out += self.tick(now_ns)
        return out
