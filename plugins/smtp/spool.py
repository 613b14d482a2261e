"""The relay's durable queue: messages waiting for delivery, on a ``kv_rw`` device.

A message is acknowledged (250) only after :meth:`Spool.put` returned, and
``put`` returns only after the store made the value durable (``kv_rw``'s
promise: ``direct`` fsyncs the file and its folder, ``git`` commits). Each
queued message is ONE value, so a crash leaves it wholly queued or absent:

``queue/<id>``
    ``INGOT-SPOOL 1\\n``, one line of JSON (the :class:`Entry` without its
    message), ``\\n``, then the message bytes exactly as received (CRLF).

A retry rewrites the value with the recipients still pending and the next
attempt time (one write); a message delivered to every recipient (or
bounced) is removed. At start :meth:`Spool.load` reads every entry back, so
a message queued before a SIGKILL is delivered after the restart; a value
that does not parse is kept under ``corrupt/<id>`` and logged, never lost.

:class:`RetryPolicy` is the schedule (pure: times in, times out).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ingot.signatures import KvRW, NotFound

MAGIC = b"INGOT-SPOOL 1\n"
PREFIX = "queue"
CORRUPT = "corrupt"
_ID = re.compile(r"[0-9A-Za-z._-]{1,64}")


class SpoolError(Exception):
    """A queued value that cannot be read back (kept aside, see the module doc)."""


@dataclass
class Entry:
    """One queued message.

    ``recipients`` are those still to deliver; ``done`` and ``failed`` record
    what happened to the others (``failed``: recipient -> (status, diagnostic)),
    so that a bounce can name them. Times are POSIX seconds.
    """

    id: str
    sender: str
    recipients: list[str]
    arrival: float
    next_attempt: float
    attempts: int = 0
    smtputf8: bool = False
    body8bit: bool = False
    envid: str | None = None
    bounce: bool = False
    """True for a bounce we generated: it is never bounced in turn."""
    last_error: dict[str, str] = field(default_factory=dict)
    """recipient -> the last transient diagnostic (kept for the final bounce)."""
    data: bytes = b""

    def meta(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["data"]
        return d

    def encode(self) -> bytes:
        return MAGIC + json.dumps(self.meta(), separators=(",", ":")).encode() + b"\n" + self.data

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        if not raw.startswith(MAGIC):
            raise SpoolError("not a spool entry (bad magic)")
        end = raw.find(b"\n", len(MAGIC))
        if end < 0:
            raise SpoolError("truncated spool entry")
        try:
            meta = json.loads(raw[len(MAGIC):end])
            names = {f.name for f in dataclasses.fields(cls)} - {"data"}
            if not isinstance(meta, dict) or set(meta) - names:
                raise SpoolError("unknown fields in spool entry")
            entry = cls(**meta, data=raw[end + 1:])
        except (ValueError, TypeError) as exc:
            raise SpoolError(f"bad spool entry: {exc}") from None
        if not valid_id(entry.id):
            raise SpoolError(f"bad spool entry id {entry.id!r}")
        if not isinstance(entry.sender, str) or not isinstance(entry.recipients, list) \
                or not all(isinstance(r, str) for r in entry.recipients):
            raise SpoolError("bad spool entry sender or recipients")
        for name in ("arrival", "next_attempt"):
            value = getattr(entry, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise SpoolError(f"bad spool entry {name} {value!r}")
        if isinstance(entry.attempts, bool) or not isinstance(entry.attempts, int) \
                or entry.attempts < 0:
            raise SpoolError(f"bad spool entry attempts {entry.attempts!r}")
        if not isinstance(entry.last_error, dict):
            raise SpoolError("bad spool entry last_error")
        return entry


def valid_id(value: object) -> bool:
    """Queue ids are 1-64 letters, digits, '.', '_' and '-' (they are file names)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after a transient failure, and when to give up.

    ``schedule`` gives the delay after the 1st, 2nd, ... failed attempt (the
    last delay repeats); ``lifetime`` is how long a message may stay queued
    (Postfix's ``maximal_queue_lifetime``, 5 days by default).
    """

    schedule: Sequence[float] = (60.0, 300.0, 900.0, 1800.0, 3600.0)
    lifetime: float = 5 * 86400.0

    def __post_init__(self) -> None:
        if not self.schedule or not all(math.isfinite(s) and s > 0 for s in self.schedule):
            raise ValueError("the retry schedule needs positive delays")
        if not (math.isfinite(self.lifetime) and self.lifetime > 0):
            raise ValueError("the queue lifetime must be positive")

    def next_attempt(self, attempts: int, arrival: float, now: float) -> float | None:
        """The time of the next try after ``attempts`` failed ones; None once the
        lifetime has run out (bounce with 4.4.7)."""
        delay = self.schedule[min(attempts, len(self.schedule)) - 1] if attempts else 0.0
        when = now + delay
        if now - arrival >= self.lifetime:
            return None
        return min(when, arrival + self.lifetime)


class Spool:
    """The queue over a ``kv_rw`` device (see the module doc for the layout)."""

    def __init__(self, store: KvRW, log: Any = None) -> None:
        self.store = store
        self.log = log
        self.entries: dict[str, Entry] = {}

    async def load(self) -> list[Entry]:
        """Read every queued entry (at start). Unreadable ones are moved aside."""
        try:
            names = await self.store.list(PREFIX)
        except NotFound:
            names = []
        for name, _kind in names:
            key = f"{PREFIX}/{name}"
            try:
                entry = Entry.decode(await self.store.get(key))
                if entry.id != name:
                    raise SpoolError(f"entry id {entry.id!r} under key {name!r}")
            except SpoolError as exc:
                if self.log:
                    self.log.error("unreadable queue entry kept aside", key=key, error=str(exc),
                                   moved_to=f"{CORRUPT}/{name}")
                await self.store.rename(key, f"{CORRUPT}/{name}")
                continue
            self.entries[entry.id] = entry
        return list(self.entries.values())

    async def put(self, entry: Entry) -> None:
        """Queue (or rewrite) ``entry``; durable when this returns."""
        if not valid_id(entry.id):
            raise ValueError(f"bad queue id {entry.id!r}")
        await self.store.set(f"{PREFIX}/{entry.id}", entry.encode())
        self.entries[entry.id] = entry

    async def remove(self, entry: Entry) -> None:
        """Forget a message delivered (or bounced) to every recipient."""
        try:
            await self.store.remove(f"{PREFIX}/{entry.id}")
        except NotFound:
            pass
        self.entries.pop(entry.id, None)

    def due(self, now: float) -> list[Entry]:
        """Entries whose next attempt has come, oldest first."""
        return sorted((e for e in self.entries.values() if e.next_attempt <= now),
                      key=lambda e: (e.next_attempt, e.arrival))

    def next_due(self) -> float | None:
        return min((e.next_attempt for e in self.entries.values()), default=None)

    def __len__(self) -> int:
        return len(self.entries)

