"""Where the DNS appliance's zones come from and go to.

* :class:`ZoneSet` reads ``<zone>.zone`` master files from the ``zones``
  store (kv_ro): each zone keeps its last good version when a file breaks.
  A store that reads one version until told to look again (``kv_ro/git``
  reads the commit its ``ref`` named at connect) is asked to ``refresh()``
  first, so a new commit on the branch is seen at the next check.
* :class:`ZoneStore` keeps what the server itself changed (dynamic updates,
  zones pulled as a secondary) in the ``store`` device (kv_rw): the zone as
  a master file ``<zone>.zone`` and its journal ``<zone>.journal``, written
  in one batch, so with the ``git`` backend every change is one commit, and
  with ``direct`` it is atomic on disk. A change is acknowledged only after
  this write returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dnslib import RR, DNSLabel

from ingot.plugins.dns.journal import Journal, JournalError
from ingot.plugins.dns.zone import Zone, rdata_wire
from ingot.plugins.dns.zonefile import ZoneFileError, load_zone, parse_records
from ingot.signatures import DeviceError, Kind, KvRO, KvRW

SUFFIX = ".zone"
JOURNAL_SUFFIX = ".journal"


def origin_of(name: str) -> str:
    return name[: -len(SUFFIX)].rstrip(".") + "."


def master_file(origin: str, records: Sequence[RR], comment: str = "") -> str:
    """Records as an RFC 1035 master file that :func:`load_zone` reads back.

    Each record is written in its usual text form; one whose text does not
    read back to the same record is written in the RFC 3597 generic form.
    """
    lines = [f"; {comment}" if comment else "; written by the Ingot DNS appliance",
             f"$ORIGIN {DNSLabel(origin)}"]
    soa = [rr for rr in records if rr.rtype == 6]
    for rr in soa + [rr for rr in records if rr.rtype != 6]:
        text = rr.toZone()
        try:
            (_line, back), = parse_records(text, origin)
            ok = back == rr and back.ttl == rr.ttl
        except (ZoneFileError, ValueError):
            ok = False
        if not ok:
            data = rdata_wire(rr.rdata)
            text = f"{rr.rname} {rr.ttl} IN TYPE{rr.rtype} \\# {len(data)} {data.hex()}"
        lines.append(text)
    return "\n".join(lines) + "\n"


class ZoneSet:
    """The zones of a kv_ro store, each kept at its last good version."""

    def __init__(self, store: KvRO, log: Any) -> None:
        self.store = store
        self.log = log
        self.zones: dict[str, Zone] = {}
        self.digests: dict[str, bytes] = {}
        self.errors: dict[str, str] = {}
        self.store_error = ""

    async def refresh(self) -> list[Zone]:
        """Load new and changed files; returns the zones that changed.

        A file that disappears leaves its zone served at its last version.
        """
        moved = getattr(self.store, "refresh", None)
        if moved is not None:
            try:
                await moved()
            except DeviceError as exc:
                if self.store_error != str(exc):
                    self.log.error("cannot re-read the zones store; serving what was read",
                                   error=str(exc))
                self.store_error = str(exc)
            else:
                self.store_error = ""
        try:
            entries = await self.store.list("")
        except DeviceError as exc:
            self.log.error("cannot list the zones store", error=str(exc))
            return []
        changed: list[Zone] = []
        for name, kind in entries:
            if kind is not Kind.VALUE or not name.endswith(SUFFIX):
                continue
            origin = origin_of(name)
            try:
                digest = await self.store.digest(name)
                if self.digests.get(origin) == digest:
                    continue
                text = (await self.store.get(name)).decode("utf-8")
            except (DeviceError, UnicodeDecodeError) as exc:
                self._reject(origin, f"{name}: {exc}")
                continue
            self.digests[origin] = digest
            try:
                zone = load_zone(text, origin, file=name)
            except ZoneFileError as exc:
                self._reject(origin, str(exc))
                continue
            self.zones[origin] = zone
            self.errors.pop(origin, None)
            changed.append(zone)
        return changed

    def _reject(self, origin: str, reason: str) -> None:
        if self.errors.get(origin) != reason:
            self.log.error("zone rejected", zone=origin, reason=reason,
                           serving="last good version" if origin in self.zones else "nothing")
        self.errors[origin] = reason


class ZoneStore:
    """Zones and journals the server changed, kept in a kv_rw store."""

    def __init__(self, store: KvRW, log: Any) -> None:
        self.store = store
        self.log = log

    async def load(self) -> tuple[dict[str, Zone], dict[str, Journal]]:
        zones: dict[str, Zone] = {}
        journals: dict[str, Journal] = {}
        try:
            entries = await self.store.list("")
        except DeviceError as exc:
            self.log.error("cannot list the store", error=str(exc))
            return zones, journals
        for name, kind in entries:
            if kind is not Kind.VALUE:
                continue
            try:
                if name.endswith(SUFFIX):
                    origin = origin_of(name)
                    text = (await self.store.get(name)).decode("utf-8")
                    zones[origin] = load_zone(text, origin, file=f"store:{name}")
                elif name.endswith(JOURNAL_SUFFIX):
                    origin = name[: -len(JOURNAL_SUFFIX)].rstrip(".") + "."
                    journals[origin] = Journal.from_bytes(await self.store.get(name))
            except (DeviceError, UnicodeDecodeError, ZoneFileError, JournalError) as exc:
                self.log.error("stored zone data unusable; ignored", key=name, error=str(exc))
        return zones, journals

    @property
    def has_remote(self) -> bool:
        """Whether the store can push to a remote (``kv_rw/git`` with ``--store-remote``)."""
        return callable(getattr(self.store, "push", None)) and bool(
            getattr(self.store, "_remote", None))

    async def push(self) -> bool:
        """Push the store to its remote; a failure is logged as one warning (the local
        commits stay, the next push sends them too). True when it went through."""
        try:
            await self.store.push()
        except Exception as exc:  # noqa: BLE001 - a failed push never stops the server
            self.log.warning("store push failed (retried after the next change)",
                             error=str(exc))
            return False
        self.log.debug("store pushed")
        return True

    async def save(self, origin: str, records: Sequence[RR], journal: Journal | None,
                   message: str) -> None:
        """Write a zone (and its journal) in one atomic batch; raises DeviceError."""
        base = origin.rstrip(".")
        async with self.store.batch(message) as batch:
            await batch.set(base + SUFFIX, master_file(origin, records, message).encode())
            if journal is not None:
                await batch.set(base + JOURNAL_SUFFIX, journal.to_bytes())
