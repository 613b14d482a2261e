"""The selected mailbox: sequence numbers, flags, and the message commands over it.

A :class:`View` is one session's picture of its selected mailbox: the UIDs
in sequence order, each message's flags, which messages are \\Recent for
this session. It changes only when the session looks (RFC 3501 7: a
client learns of changes through untagged EXISTS, EXPUNGE and FETCH
responses, and sequence numbers never shift under it during a command):
:meth:`View.refresh` lists the store again and returns the responses that
bring the client up to date, in an order that keeps the numbering right
(EXPUNGEs from the highest sequence number down, then EXISTS, then FLAGS
updates). Expunges are held back while a FETCH, STORE or SEARCH runs
(RFC 3501 7.4.1); the UID forms may receive them.

FETCH, SEARCH, STORE, COPY, MOVE, EXPUNGE work on this view. Message
contents come from the store once and are kept in a shared
:class:`MessageCache` (parsed :class:`~.mime.Message` objects by
mailbox, UIDVALIDITY and UID: a message's bytes never change under a UID).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import mime, search, wire

SEEN = "\\Seen"
DELETED = "\\Deleted"
RECENT = "\\Recent"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


PREFETCH = 256
"""Messages read from the store per trip (FETCH and SEARCH of contents)."""
READERS = 4
"""Store reads in flight at once while prefetching."""
CACHE_MAGIC = b"INGOT-IMAP-CACHE 1 "
SAVE_AFTER = 64
"""New derived values that make a FETCH write the mailbox's cache blob again."""
_DERIVED = {"ENVELOPE": b"E", "BODYSTRUCTURE": b"B", "BODY": b"S"}


def encode_derived(uidvalidity: int, entries: dict[tuple[int, bytes], bytes]) -> bytes:
    out = [CACHE_MAGIC + b"%d\n" % uidvalidity]
    for (uid, kind), data in entries.items():
        out.append(b"%d %s %d\n" % (uid, kind, len(data)))
        out.append(data)
        out.append(b"\n")
    return b"".join(out)


def decode_derived(blob: bytes, uidvalidity: int) -> dict[tuple[int, bytes], bytes]:
    """The entries of a cache blob; {} when it is of another UIDVALIDITY or damaged."""
    end = blob.find(b"\n")
    if not blob.startswith(CACHE_MAGIC) or end < 0 \
            or blob[len(CACHE_MAGIC):end] != b"%d" % uidvalidity:
        return {}
    entries: dict[tuple[int, bytes], bytes] = {}
    pos = end + 1
    try:
        while pos < len(blob):
            eol = blob.index(b"\n", pos)
            uid, kind, size = blob[pos:eol].split(b" ")
            start = eol + 1
            n = int(size)
            if blob[start + n:start + n + 1] != b"\n" or kind not in (b"E", b"B", b"S"):
                return {}
            entries[(int(uid), kind)] = blob[start:start + n]
            pos = start + n + 1
    except ValueError:
        return {}
    return entries


def internal_date(epoch: int) -> str:
    t = time.gmtime(epoch)
    return f"{t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year:04d} " \
           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def uid_set(uids: Iterable[int]) -> str:
    """``1:3,7,9:10`` for a response code (COPYUID, APPENDUID)."""
    out: list[str] = []
    run: list[int] = []
    for uid in uids:
        if run and uid == run[-1] + 1:
            run.append(uid)
            continue
        if run:
            out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [uid]
    if run:
        out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def flag_list(flags: Iterable[str]) -> wire.Atom:
    return wire.Atom("(" + " ".join(sorted(flags)) + ")")


class MessageCache:
    """Parsed messages by (user, mailbox, uidvalidity, uid), least recently used out
    once their bytes pass ``limit``."""

    def __init__(self, limit: int = 64 * 1024 * 1024) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[tuple, mime.Message] = OrderedDict()
        self.hits = 0
        self.misses = 0
        # ENVELOPE / BODYSTRUCTURE / BODY as serialized, by (user, mailbox, uidvalidity),
        # then (uid, kind): kept in the store's cache blob across restarts
        self.derived: dict[tuple, dict[tuple[int, bytes], bytes]] = {}
        self.dirty: dict[tuple, int] = {}

    def get(self, key: tuple) -> mime.Message | None:
        msg = self._items.get(key)
        if msg is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return msg

    def __contains__(self, key: tuple) -> bool:
        return key in self._items

    def put(self, key: tuple, msg: mime.Message) -> None:
        if key in self._items:
            return
        self._items[key] = msg
        self.size += msg.size
        self.misses += 1
        while self.size > self.limit and len(self._items) > 1:
            _k, old = self._items.popitem(last=False)
            self.size -= old.size


@dataclass
class _Ctx:
    """What search.matches sees of one message."""

    seq: int
    uid: int
    largest_seq: int
    largest_uid: int
    flags: frozenset[str]
    recent: bool
    internal_date: int
    size: int
    modseq: int
    loader: Any

    def message(self) -> mime.Message:
        return self.loader()


class View:
    """One session's selected mailbox (see the module docstring)."""

    def __init__(self, store: Any, cache: MessageCache, user: str, mailbox: str,
                 readonly: bool, recent_hub: dict[tuple[str, str], int]) -> None:
        self.store = store
        self.cache = cache
        self.user = user
        self.mailbox = mailbox
        self.readonly = readonly
        self.recent_hub = recent_hub
        self.uidvalidity = 0
        self.uidnext = 0
        self.uids: list[int] = []
        self.infos: dict[int, Any] = {}
        self.recent: set[int] = set()
        self.watch = store.watch(user, mailbox) if hasattr(store, "watch") else None

    # ---------------------------------------------------------------- open / refresh

    async def open(self) -> list[bytes]:
        status = await self.store.status(self.user, self.mailbox)
        if self.watch is not None:
            self.watch.clear()
        infos = await self.store.list(self.user, self.mailbox)
        self.uidvalidity = status.uidvalidity
        self.uidnext = max(status.uidnext, (infos[-1].uid + 1) if infos else 1)
        self.uids = [m.uid for m in infos]
        self.infos = {m.uid: m for m in infos}
        self._claim_recent(self.uids)
        await self._load_derived()
        out = [b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
               b"* OK [PERMANENTFLAGS (" + (b"" if self.readonly else
                                            b"\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*")
               + b")] Flags permitted\r\n",
               b"* %d EXISTS\r\n" % len(self.uids),
               b"* %d RECENT\r\n" % len(self.recent)]
        first_unseen = next((i + 1 for i, uid in enumerate(self.uids)
                             if SEEN not in self.infos[uid].flags), None)
        if first_unseen is not None:
            out.append(b"* OK [UNSEEN %d] First unseen\r\n" % first_unseen)
        out.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % self.uidvalidity)
        out.append(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % self.uidnext)
        return out

    def _claim_recent(self, uids: Iterable[int]) -> None:
        """\\Recent: a message is recent in the first session to see it (kept in memory)."""
        key = (self.user, self.mailbox)
        seen_up_to = self.recent_hub.get(key, 0)
        new = [u for u in uids if u > seen_up_to]
        if new and not self.readonly:
            self.recent.update(new)
            self.recent_hub[key] = max(new)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    async def refresh(self, expunges: bool, *, force: bool = False) -> list[bytes]:
        """Untagged responses for what changed since the client last heard."""
        if not force and (self.watch is None or not self.watch.changed):
            return []
        infos = await self.store.list(self.user, self.mailbox)
        now = {m.uid: m for m in infos}
        gone = [u for u in self.uids if u not in now]
        if gone and not expunges:
            return self._flag_updates(now, [])  # the expunges wait; the watch stays set
        if self.watch is not None:
            self.watch.clear()
        out: list[bytes] = []
        if gone:
            gone_set = set(gone)
            for seq in range(len(self.uids), 0, -1):
                if self.uids[seq - 1] in gone_set:
                    out.append(b"* %d EXPUNGE\r\n" % seq)
            self.uids = [u for u in self.uids if u not in gone_set]
            for u in gone:
                self.infos.pop(u, None)
                self.recent.discard(u)
        out += self._flag_updates(now, out)
        known = set(self.uids)
        added = [m.uid for m in infos if m.uid not in known and m.uid > (self.uids[-1]
                                                                        if self.uids else 0)]
        if added:
            self.uids.extend(added)
            for u in added:
                self.infos[u] = now[u]
            self._claim_recent(added)
            self.uidnext = max(self.uidnext, added[-1] + 1)
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
        return out

    def _flag_updates(self, now: dict[int, Any], _done: list[bytes]) -> list[bytes]:
        out = []
        for seq, uid in enumerate(self.uids, 1):
            new = now.get(uid)
            if new is not None and new.flags != self.infos[uid].flags:
                self.infos[uid] = new
                out.append(b"* %d FETCH (FLAGS %s UID %d)\r\n"
                           % (seq, wire.serialize(flag_list(self.flags_of(uid))), uid))
        return out

    # ---------------------------------------------------------------- helpers

    def lock(self) -> Any:
        """The mailbox's read-modify-write lock (a no-op without a notifying store)."""
        lock = getattr(self.store, "lock", None)
        return lock(self.user, self.mailbox) if lock is not None else _NoLock()

    async def current(self) -> dict[int, Any]:
        """The flags as stored now (other sessions may have changed them since the client
        last heard): what +FLAGS, -FLAGS, \\Seen and EXPUNGE must start from."""
        return {m.uid: m for m in await self.store.list(self.user, self.mailbox)}

    def flags_of(self, uid: int) -> frozenset[str]:
        flags = self.infos[uid].flags
        return flags | {RECENT} if uid in self.recent else flags

    def select(self, seqset: Any, uid: bool) -> list[tuple[int, int]]:
        """(seq, uid) pairs that a sequence set names, in order."""
        if not self.uids:
            return []
        if uid:
            largest = self.uids[-1]
            return [(i + 1, u) for i, u in enumerate(self.uids) if seqset.contains(u, largest)]
        largest = len(self.uids)
        return [(s, self.uids[s - 1]) for s in range(1, largest + 1)
                if seqset.contains(s, largest)]

    @property
    def _box_key(self) -> tuple:
        return (self.user, self.mailbox, self.uidvalidity)

    async def _load_derived(self) -> None:
        key = self._box_key
        if key in self.cache.derived:
            return
        load = getattr(self.store, "load_cache", None)
        blob = await load(self.user, self.mailbox) if load is not None else None
        self.cache.derived[key] = decode_derived(blob, self.uidvalidity) if blob else {}

    async def _save_derived(self) -> None:
        key = self._box_key
        if self.cache.dirty.get(key, 0) < SAVE_AFTER:
            return
        save = getattr(self.store, "save_cache", None)
        if save is None:
            return
        self.cache.dirty[key] = 0
        live = set(self.uids)
        entries = {k: v for k, v in self.cache.derived.get(key, {}).items() if k[0] in live}
        self.cache.derived[key] = entries
        await save(self.user, self.mailbox, encode_derived(self.uidvalidity, entries))

    def _derived(self, uid: int, kind: bytes, make: Any) -> bytes:
        entries = self.cache.derived.setdefault(self._box_key, {})
        data = entries.get((uid, kind))
        if data is None:
            data = entries[(uid, kind)] = wire.serialize(make())
            self.cache.dirty[self._box_key] = self.cache.dirty.get(self._box_key, 0) + 1
        return data

    async def prefetch(self, uids: list[int]) -> None:
        """Read the messages not in the cache yet, many per trip to the store."""
        get_many = getattr(self.store, "get_many", None)
        if get_many is None:
            return
        base = (self.user, self.mailbox, self.uidvalidity)
        missing = [u for u in uids if base + (u,) not in self.cache]
        # a few reads at once: a disk (virtual ones most) answers them faster together
        chunk = max(1, -(-len(missing) // READERS))
        results = await asyncio.gather(*(get_many(self.user, self.mailbox, missing[i:i + chunk])
                                         for i in range(0, len(missing), chunk)))
        for got in results:
            for uid, raw in got.items():
                self.cache.put(base + (uid,), mime.Message(raw))

    async def message(self, uid: int) -> mime.Message:
        key = (self.user, self.mailbox, self.uidvalidity, uid)
        msg = self.cache.get(key)
        if msg is None:
            msg = mime.Message(await self.store.get(self.user, self.mailbox, uid))
            self.cache.put(key, msg)
        return msg

    # ---------------------------------------------------------------- FETCH

    async def fetch(self, seqset: Any, items: tuple, uid: bool) -> list[bytes]:
        sets_seen = not self.readonly and any(
            i.name in ("RFC822", "RFC822.TEXT") or (i.name == "BODY" and i.section is not None
                                                   and not i.peek) for i in items)
        if not sets_seen:
            return await self._fetch(seqset, items, uid, None)
        async with self.lock():  # \Seen is added to the flags as stored now
            return await self._fetch(seqset, items, uid, await self.current())

    async def _fetch(self, seqset: Any, items: tuple, uid: bool,
                     now: dict[int, Any] | None) -> list[bytes]:
        names = {i.name for i in items}
        raw = any(i.name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT")
                  or (i.name == "BODY" and i.section is not None) for i in items)
        kinds = [_DERIVED[i.name] for i in items
                 if i.name in _DERIVED and (i.name != "BODY" or i.section is None)]
        derived = self.cache.derived.setdefault(self._box_key, {})
        out: list[bytes] = []
        chosen = self.select(seqset, uid)
        for first in range(0, len(chosen), PREFETCH):
            batch = chosen[first:first + PREFETCH]
            need = [u for _s, u in batch
                    if raw or any((u, k) not in derived for k in kinds)]
            if need:
                await self.prefetch(need)
            out += await self._fetch_some(batch, items, names, set(need), uid, now)
        await self._save_derived()
        return out

    async def _fetch_some(self, chosen: list[tuple[int, int]], items: tuple, names: set[str],
                          content: set[int], uid: bool, now: dict[int, Any] | None) -> list[bytes]:
        out: list[bytes] = []
        for seq, u in chosen:
            info = self.infos[u]
            msg = await self.message(u) if u in content else None
            parts: list[bytes] = []
            set_seen = False
            if uid and "UID" not in names:
                parts.append(b"UID %d" % u)
            for item in items:
                name = item.name
                if name == "UID":
                    parts.append(b"UID %d" % u)
                elif name == "FLAGS":
                    continue  # after the data items, with \\Seen set by them
                elif name == "INTERNALDATE":
                    parts.append(b'INTERNALDATE "%s"' % internal_date(info.internal_date).encode())
                elif name == "RFC822.SIZE":
                    parts.append(b"RFC822.SIZE %d" % info.size)
                elif name == "ENVELOPE":
                    parts.append(b"ENVELOPE " + self._derived(u, b"E", lambda: msg.envelope()))
                elif name == "BODYSTRUCTURE":
                    parts.append(b"BODYSTRUCTURE " + self._derived(
                        u, b"B", lambda: msg.bodystructure(True)))
                elif name == "BODY" and item.section is None:
                    parts.append(b"BODY " + self._derived(u, b"S",
                                                          lambda: msg.bodystructure(False)))
                elif name in ("BODY", "BINARY"):
                    data = msg.section(item.section)
                    if item.partial is not None:
                        start, count = item.partial
                        data = data[start:start + count]
                    parts.append(item.response_name().encode() + b" " + wire.serialize(data))
                    set_seen = set_seen or not item.peek
                elif name == "RFC822":
                    parts.append(b"RFC822 " + wire.serialize(msg.raw))
                    set_seen = True
                elif name == "RFC822.HEADER":
                    parts.append(b"RFC822.HEADER " + wire.serialize(msg.section(
                        wire.Section((), "HEADER", ()))))
                elif name == "RFC822.TEXT":
                    parts.append(b"RFC822.TEXT " + wire.serialize(msg.section(
                        wire.Section((), "TEXT", ()))))
                    set_seen = True
                elif name == "MODSEQ":
                    parts.append(b"MODSEQ (1)")
            seen_now = False
            stored = now.get(u) if (set_seen and now is not None) else None
            if stored is not None and SEEN not in info.flags:
                if SEEN not in stored.flags:
                    await self.store.set_flags(self.user, self.mailbox, u, stored.flags | {SEEN})
                self.infos[u] = info = _with_flags(info, stored.flags | {SEEN})
                seen_now = True
            if "FLAGS" in names or seen_now:
                parts.append(b"FLAGS " + wire.serialize(flag_list(self.flags_of(u))))
            out.append(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
        return out

    # ---------------------------------------------------------------- SEARCH

    async def search(self, key: Any, uid: bool) -> list[int]:
        largest_seq = len(self.uids)
        largest_uid = self.uids[-1] if self.uids else 0
        found: list[int] = []
        for seq, u in enumerate(self.uids, 1):
            info = self.infos[u]

            def loader(u: int = u) -> mime.Message:
                raise _NeedMessage(u)

            ctx = _Ctx(seq, u, largest_seq, largest_uid, self.flags_of(u), u in self.recent,
                       info.internal_date, info.size, 1, loader)
            try:
                hit = search.matches(key, ctx)
            except _NeedMessage:
                if (self.user, self.mailbox, self.uidvalidity, u) not in self.cache:
                    await self.prefetch(self.uids[seq - 1:seq - 1 + PREFETCH])
                msg = await self.message(u)
                ctx.loader = lambda msg=msg: msg
                hit = search.matches(key, ctx)
            if hit:
                found.append(u if uid else seq)
        return found

    # ---------------------------------------------------------------- STORE

    async def store_flags(self, seqset: Any, args: Any, uid: bool) -> list[bytes]:
        out: list[bytes] = []
        given = frozenset(f for f in args.flags if f.lower() != RECENT.lower())
        lowered = {g.lower() for g in given}
        async with self.lock():
            now = await self.current()
            for seq, u in self.select(seqset, uid):
                info = self.infos[u]
                stored = now.get(u)
                if stored is None:
                    continue  # expunged by another session: the client hears of it later
                if args.mode == "+":
                    new = stored.flags | given
                elif args.mode == "-":
                    new = frozenset(f for f in stored.flags if f.lower() not in lowered)
                else:
                    new = given
                if new != stored.flags:
                    await self.store.set_flags(self.user, self.mailbox, u, new)
                self.infos[u] = _with_flags(info, await self._stored_flags(u, new))
                out += self._store_reply(seq, u, uid, args.silent)
        return out

    def _store_reply(self, seq: int, u: int, uid: bool, silent: bool) -> list[bytes]:
        if silent:
            return []
        extra = b" UID %d" % u if uid else b""
        return [b"* %d FETCH (FLAGS %s%s)\r\n"
                % (seq, wire.serialize(flag_list(self.flags_of(u))), extra)]

    async def _stored_flags(self, uid: int, wanted: frozenset[str]) -> frozenset[str]:
        # the store spells system flags canonically: use its spelling
        canon = {"\\answered": "\\Answered", "\\flagged": "\\Flagged", "\\deleted": "\\Deleted",
                 "\\seen": "\\Seen", "\\draft": "\\Draft"}
        return frozenset(canon.get(f.lower(), f) for f in wanted)

    # ---------------------------------------------------------------- COPY / MOVE / EXPUNGE

    async def copy(self, seqset: Any, dest: str, uid: bool) -> tuple[str | None, list[int]]:
        chosen = [u for _s, u in self.select(seqset, uid)]
        if not chosen:
            return None, []
        mapping = await self.store.copy(self.user, self.mailbox, chosen, dest)
        status = await self.store.status(self.user, dest)
        src = sorted(mapping)
        code = f"COPYUID {status.uidvalidity} {uid_set(src)} {uid_set(mapping[s] for s in src)}"
        return code, chosen

    async def expunge(self, uids: Iterable[int] | None = None) -> list[bytes]:
        """Remove the \\Deleted messages (only those in ``uids`` when given)."""
        wanted = set(uids) if uids is not None else None
        async with self.lock():
            now = await self.current()
            doomed = [u for u in self.uids if u in now and DELETED in now[u].flags
                      and (wanted is None or u in wanted)]
            return await self.remove(doomed)

    async def remove(self, doomed: list[int]) -> list[bytes]:
        if not doomed:
            return []
        await self.store.remove(self.user, self.mailbox, doomed)
        gone = set(doomed)
        out = [b"* %d EXPUNGE\r\n" % seq for seq in range(len(self.uids), 0, -1)
               if self.uids[seq - 1] in gone]
        self.uids = [u for u in self.uids if u not in gone]
        for u in doomed:
            self.infos.pop(u, None)
            self.recent.discard(u)
        return out


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class _NeedMessage(Exception):
    def __init__(self, uid: int) -> None:
        self.uid = uid


def _with_flags(info: Any, flags: frozenset[str]) -> Any:
    return dataclasses.replace(info, flags=frozenset(flags))

