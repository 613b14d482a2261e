"""Zone history: differences between zone versions, serial arithmetic, a bounded journal.

Rules of this module:

- A zone version is a list of dnslib ``RR`` (what the zone model's
  ``to_records()`` gives) holding exactly one SOA, at the apex. Record
  identity is (owner, type, class, RDATA): owner names compare
  case-insensitively, TTLs do not take part (a TTL change is a removal
  plus an addition, as IXFR carries it).
- A :class:`Change` is one IXFR difference sequence (RFC 1995): the old SOA,
  the records removed, the new SOA, the records added. SOA records never
  appear in ``removed``/``added``; they are the change's ends.
- Serial numbers follow RFC 1982 (32-bit sequence space arithmetic):
  :func:`serial_cmp` says which of two serials is newer, or that the
  comparison is undefined (they are exactly 2**31 apart).
- A :class:`Journal` keeps a contiguous chain of changes, oldest first,
  bounded by entry count and by encoded size; the oldest go first. A change
  that does not continue the chain (its old serial is not the newest new
  serial) resets the journal to that one change. :meth:`Journal.to_bytes`
  gives a self-contained encoding for a kv_rw store and
  :meth:`Journal.from_bytes` reads it back or raises :class:`JournalError`.
- Nothing here does I/O or reads a clock: the time for a ``unixtime``
  serial bump is an argument.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from dnslib import QTYPE, RR, SOA, DNSBuffer, DNSLabel

from .zone import is_below, name_key, rdata_wire

SERIAL_BITS = 32
_MOD = 1 << SERIAL_BITS
_HALF = 1 << (SERIAL_BITS - 1)
MAGIC = b"IGJ1"


class JournalError(ValueError):
    """A zone version or stored journal that cannot be used; ``str(err)`` says why."""


# -- names and records ------------------------------------------------------

def in_zone(name: DNSLabel | str, origin: DNSLabel | str) -> bool:
    """True when ``name`` is ``origin`` or below it."""
    return is_below(name_key(name), name_key(origin))


def rr_key(rr: RR) -> tuple:
    """Record identity: (owner, type, class, RDATA wire); TTL excluded."""
    return (name_key(rr.rname), rr.rtype, rr.rclass, rdata_wire(rr.rdata))


def rr_wire_size(rr: RR) -> int:
    """Upper bound of the bytes ``rr`` takes in a message (no compression)."""
    return len(b".".join(rr.rname.label)) + 2 + 10 + len(rdata_wire(rr.rdata))


def find_soa(records: Iterable[RR]) -> RR:
    """The one SOA record of a zone version, or :class:`JournalError`."""
    soas = [rr for rr in records if rr.rtype == QTYPE.SOA]
    if len(soas) != 1:
        raise JournalError(f"a zone version needs exactly one SOA record, found {len(soas)}")
    return soas[0]


def soa_serial(soa: RR) -> int:
    return soa.rdata.times[0]


def with_serial(soa: RR, serial: int) -> RR:
    """A copy of the SOA record ``soa`` with another serial."""
    rd = soa.rdata
    times = (serial % _MOD,) + tuple(rd.times[1:])
    return RR(soa.rname, QTYPE.SOA, soa.rclass, soa.ttl, SOA(rd.mname, rd.rname, times))


# -- serial arithmetic (RFC 1982) ------------------------------------------

def serial_cmp(a: int, b: int) -> int | None:
    """-1 when ``a`` is older than ``b``, 0 when equal, 1 when newer, None when undefined."""
    a %= _MOD
    b %= _MOD
    if a == b:
        return 0
    if (a < b and b - a < _HALF) or (a > b and a - b > _HALF):
        return -1
    if (a < b and b - a > _HALF) or (a > b and a - b < _HALF):
        return 1
    return None


def serial_gt(a: int, b: int) -> bool:
    """``a`` is newer than ``b`` (False when undefined)."""
    return serial_cmp(a, b) == 1


def serial_add(serial: int, n: int) -> int:
    """RFC 1982 addition; ``n`` must lie in 0..2**31-1."""
    if not 0 <= n < _HALF:
        raise ValueError(f"serial increment {n} out of range 0..{_HALF - 1}")
    return (serial + n) % _MOD


def next_serial(old: int, policy: str = "increment", now_s: float | None = None) -> int:
    """The serial after ``old`` under ``policy``; always newer than ``old``.

    ``increment``: old + 1. ``unixtime``: the current POSIX time when it is
    newer than ``old``, else old + 1 (so two updates in one second still
    move forward). ``dateserial``: YYYYMMDDnn from ``now_s`` (UTC), or old + 1
    when that is not newer.
    """
    if policy == "increment":
        return serial_add(old, 1)
    if now_s is None:
        raise ValueError(f"serial policy {policy!r} needs now_s")
    if policy == "unixtime":
        candidate = int(now_s) % _MOD
    elif policy == "dateserial":
        days = int(now_s) // 86400
        y, m, d = _civil_from_days(days)
        candidate = (y * 10000 + m * 100 + d) * 100
    else:
        raise ValueError(f"unknown serial policy {policy!r} (increment, unixtime, dateserial)")
    return candidate if serial_gt(candidate, old) else serial_add(old, 1)


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """(year, month, day) of day ``z`` since 1970-01-01 (proleptic Gregorian)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


# -- differences ------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """One difference sequence: from ``old_soa``'s version to ``new_soa``'s."""

    old_soa: RR
    new_soa: RR
    removed: tuple[RR, ...] = ()
    added: tuple[RR, ...] = ()

    @property
    def from_serial(self) -> int:
        return soa_serial(self.old_soa)

    @property
    def to_serial(self) -> int:
        return soa_serial(self.new_soa)

    def sequence(self) -> list[RR]:
        """The records in IXFR order: old SOA, removed, new SOA, added."""
        return [self.old_soa, *self.removed, self.new_soa, *self.added]

    def encoded_size(self) -> int:
        return sum(rr_wire_size(rr) for rr in self.sequence())


def diff(old: Sequence[RR], new: Sequence[RR]) -> Change:
    """The change from zone version ``old`` to ``new`` (both with their SOA)."""
    old_soa, new_soa = find_soa(old), find_soa(new)
    old_keys = {rr_key(rr): rr for rr in old if rr.rtype != QTYPE.SOA}
    new_keys = {rr_key(rr): rr for rr in new if rr.rtype != QTYPE.SOA}
    removed = tuple(rr for k, rr in old_keys.items()
                    if k not in new_keys or new_keys[k].ttl != rr.ttl)
    added = tuple(rr for k, rr in new_keys.items()
                  if k not in old_keys or old_keys[k].ttl != rr.ttl)
    return Change(old_soa, new_soa, removed, added)


def apply(records: Sequence[RR], change: Change, *, strict: bool = True) -> list[RR]:
    """The zone version after ``change`` is applied to ``records``.

    With ``strict`` (for IXFR), the version's serial must be the change's
    old serial and every removed record must be present; otherwise
    :class:`JournalError`. Adding a record that is already there replaces it.
    """
    soa = find_soa(records)
    if strict and soa_serial(soa) != change.from_serial:
        raise JournalError(f"change starts at serial {change.from_serial}, "
                           f"zone is at {soa_serial(soa)}")
    current = {rr_key(rr): rr for rr in records if rr.rtype != QTYPE.SOA}
    for rr in change.removed:
        if current.pop(rr_key(rr), None) is None and strict:
            raise JournalError(f"change removes a record the zone does not hold: {rr.toZone()}")
    for rr in change.added:
        current[rr_key(rr)] = rr
    return [change.new_soa, *current.values()]


# -- the journal ------------------------------------------------------------

@dataclass
class Journal:
    """A bounded, contiguous chain of changes, oldest first."""

    max_entries: int = 100
    max_bytes: int = 1 << 20
    changes: list[Change] = field(default_factory=list)

    @property
    def first_serial(self) -> int | None:
        return self.changes[0].from_serial if self.changes else None

    @property
    def last_serial(self) -> int | None:
        return self.changes[-1].to_serial if self.changes else None

    def size(self) -> int:
        return sum(c.encoded_size() for c in self.changes)

    def append(self, change: Change) -> None:
        """Add the newest change, resetting on a gap, then trim to the bounds."""
        if self.changes and change.from_serial != self.last_serial:
            self.changes.clear()
        if change.from_serial == change.to_serial:
            return
        self.changes.append(change)
        total = self.size()
        while self.changes and (len(self.changes) > self.max_entries or total > self.max_bytes):
            total -= self.changes.pop(0).encoded_size()

    def since(self, serial: int) -> list[Change] | None:
        """The changes from ``serial`` to the newest, [] when current, None when not held."""
        if not self.changes:
            return None
        if serial == self.last_serial:
            return []
        for i, change in enumerate(self.changes):
            if change.from_serial == serial:
                return self.changes[i:]
        return None

    # Encoding: MAGIC, u32 count, then per change: u32 length + body, where the
    # body is u32 removed count, u32 added count and the records of
    # Change.sequence() packed into one DNS buffer (compression inside it).
    def to_bytes(self) -> bytes:
        out = [MAGIC, struct.pack("!I", len(self.changes))]
        for change in self.changes:
            buf = DNSBuffer()
            buf.pack("!II", len(change.removed), len(change.added))
            for rr in change.sequence():
                rr.pack(buf)
            body = bytes(buf.data)
            out.append(struct.pack("!I", len(body)))
            out.append(body)
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_entries: int = 100,
                   max_bytes: int = 1 << 20) -> "Journal":
        """Read what :meth:`to_bytes` wrote; :class:`JournalError` on anything else."""
        if data[:4] != MAGIC or len(data) < 8:
            raise JournalError("not an Ingot zone journal (bad magic)")
        (count,) = struct.unpack_from("!I", data, 4)
        offset = 8
        journal = cls(max_entries=max_entries, max_bytes=max_bytes)
        for index in range(count):
            if offset + 4 > len(data):
                raise JournalError(f"journal truncated in entry {index}")
            (length,) = struct.unpack_from("!I", data, offset)
            body = data[offset + 4:offset + 4 + length]
            if len(body) != length:
                raise JournalError(f"journal truncated in entry {index}")
            offset += 4 + length
            change = _decode_change(body, index)
            if journal.changes and change.from_serial != journal.last_serial:
                raise JournalError(f"journal entry {index} does not continue the chain")
            journal.changes.append(change)
        if offset != len(data):
            raise JournalError("trailing bytes after the journal")
        return journal


def _decode_change(body: bytes, index: int) -> Change:
    buf = DNSBuffer(body)
    try:
        n_removed, n_added = buf.unpack("!II")
        if 12 * (n_removed + n_added + 2) > len(body):
            raise JournalError(f"journal entry {index}: record counts exceed its size")
        rrs = [RR.parse(buf) for _ in range(n_removed + n_added + 2)]
    except JournalError:
        raise
    except Exception as err:  # dnslib raises several kinds on bad bytes
        raise JournalError(f"journal entry {index}: {err}") from None
    if buf.remaining():
        raise JournalError(f"journal entry {index}: trailing bytes")
    old_soa, new_soa = rrs[0], rrs[n_removed + 1]
    if old_soa.rtype != QTYPE.SOA or new_soa.rtype != QTYPE.SOA:
        raise JournalError(f"journal entry {index}: SOA records missing")
    return Change(old_soa, new_soa, tuple(rrs[1:n_removed + 1]), tuple(rrs[n_removed + 2:]))
