"""A :class:`~.store.MailStore` over any ``kv_rw`` device (memory, direct, git).

Layout in the store::

    <user>/.user                      {"uidvalidity": <the last one handed out>}
    <user>/.subscriptions             subscribed mailbox names, one per line
    <user>/<box>/meta                 {"uidvalidity": .., "uidnext": ..}
    <user>/<box>/cache                what readers derived from the messages (IMAP)
    <user>/<box>/m/<uid // 10000>/<uid // 100>/<uid>    the message's bytes
    <user>/<box>/i/<uid // 10000>/<uid // 100>/<uid>    {"flags": [..], "date": <s>, "size": <n>}

``<box>`` is the mailbox name as one key segment: ``%`` becomes ``%25``,
``/`` ``%2F``, and a leading ``.`` ``%2E`` (so it never meets ``.user``).
A mailbox exists while its ``meta`` does; ``INBOX``'s is written the first
time the user's INBOX is used. Messages are spread over two levels of
folders of at most 100 entries (up to a million UIDs) so that no
dictionary on a delivery's path (a git tree, a host folder) grows with the
mailbox: the backends' cost of a write grows with the size of the
dictionaries it passes (``direct`` lists each of them). A delivery writes
``meta``, one body and one info.

Every change is one kv batch, hence atomic (and on the ``git`` backend one
commit, message ``deliver to alice/INBOX uid 7``, ``flags ...``,
``expunge ...``, ``copy ...``): a delivery writes the body, the info and the
raised ``uidnext`` together, so a crash leaves the whole message or
nothing, and never a UID that was handed out but is not recorded. Deliveries
that arrive while a batch is being written are grouped into the next batch
(one commit, ``deliver 5 messages``, one line each in the body): the rate
of concurrent deliveries is not bound by the cost of one batch.

UIDVALIDITY comes from ``clock()`` (POSIX seconds), raised above the user's
last one (kept in ``.user``, written in the same batch as the new
mailbox's ``meta``), so a mailbox deleted and created again always gets a
new one. Renaming moves each of the mailbox's subtrees with ``kv.rename``
(the mailbox and each child atomically, not all of them together).

The store caches each mailbox's ``meta``: one :class:`KvMailStore` owns its
part of the kv store (another writer of the same keys is not supported).
kv errors become :class:`~.store.InvalidName` (a key the device refuses, e.g.
a name too long for a host folder) or :class:`~.store.StoreFailure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ingot.signatures import Closed, DeviceError, InvalidKey, KvRW, NotFound

from .store import (
    INBOX,
    SEEN,
    InvalidName,
    MailboxExists,
    MailboxNotFound,
    MailboxStatus,
    MailStoreError,
    MessageInfo,
    MessageNotFound,
    StoreFailure,
    check_flags,
    check_mailbox,
    check_uid,
    check_user,
    is_below,
    begin_rename,
    sorted_uids,
)

BUCKET = 100
USER_META = ".user"
SUBSCRIPTIONS = ".subscriptions"


def encode_box(mailbox: str) -> str:
    enc = mailbox.replace("%", "%25").replace("/", "%2F")
    return "%2E" + enc[1:] if enc.startswith(".") else enc


def decode_box(segment: str) -> str:
    return segment.replace("%2F", "/").replace("%2E", ".").replace("%25", "%")


@dataclass
class _Meta:
    uidvalidity: int
    uidnext: int

    def encode(self) -> bytes:
        return json.dumps({"uidvalidity": self.uidvalidity, "uidnext": self.uidnext}).encode()


@dataclass
class _Delivery:
    user: str
    mailbox: str
    data: bytes
    flags: frozenset[str]
    date: int
    uid: int | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class _User:
    uidvalidity: int = 0
    loaded: bool = False


@contextlib.contextmanager
def _kv_errors(what: str, name: str = "") -> Iterator[None]:
    try:
        yield
    except MailStoreError:
        raise
    except InvalidKey as exc:
        raise InvalidName("mailbox", name or exc.key, f"the kv store refuses it: {exc.reason}") \
            from None
    except Closed:
        raise
    except DeviceError as exc:
        raise StoreFailure(f"{what}: {exc}") from None


class KvMailStore:
    """:class:`~.store.MailStore` on the ``kv_rw`` device ``kv`` (module docstring).

    ``clock()`` gives POSIX seconds (UIDVALIDITY, default internal dates).
    ``close()`` closes the store, not ``kv`` (the device's owner closes it).
    """

    def __init__(self, kv: KvRW, *, clock: Callable[[], float] = time.time) -> None:
        self._kv = kv
        self._clock = clock
        self._metas: dict[tuple[str, str], _Meta] = {}
        self._users: dict[str, _User] = {}
        self._lock = asyncio.Lock()
        self._pending: list[_Delivery] = []
        self._closed = False

    # ---------------------------------------------------------------- plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("mail store")

    @staticmethod
    def _base(user: str, mailbox: str) -> str:
        return f"{user}/{encode_box(mailbox)}"

    @staticmethod
    def _bucket(uid: int) -> str:
        return f"{uid // (BUCKET * BUCKET)}/{uid // BUCKET}/{uid}"

    def _msg_key(self, base: str, uid: int) -> str:
        return f"{base}/m/{self._bucket(uid)}"

    def _info_key(self, base: str, uid: int) -> str:
        return f"{base}/i/{self._bucket(uid)}"

    async def _user(self, user: str) -> _User:
        u = self._users.setdefault(user, _User())
        if not u.loaded:
            with _kv_errors(f"reading {user}"):
                try:
                    u.uidvalidity = int(json.loads(await self._kv.get(f"{user}/{USER_META}"))
                                        ["uidvalidity"])
                except NotFound:
                    u.uidvalidity = 0
                except (ValueError, KeyError, TypeError):
                    u.uidvalidity = 0
            u.loaded = True
        return u

    async def _read_meta(self, user: str, mailbox: str) -> _Meta | None:
        with _kv_errors(f"reading {user}/{mailbox}", mailbox):
            try:
                raw = json.loads(await self._kv.get(self._base(user, mailbox) + "/meta"))
                return _Meta(int(raw["uidvalidity"]), int(raw["uidnext"]))
            except NotFound:
                return None
            except (ValueError, KeyError, TypeError):
                raise StoreFailure(f"{user}/{mailbox}: corrupt meta") from None

    async def _meta(self, user: str, mailbox: str) -> _Meta:
        """The mailbox's meta (cached); creates INBOX's. Call with the lock held
        when the result is used to write."""
        self._check_open()
        meta = self._metas.get((user, mailbox))
        if meta is not None:
            return meta
        meta = await self._read_meta(user, mailbox)
        if meta is None:
            if mailbox != INBOX:
                raise MailboxNotFound(user, mailbox)
            meta = await self._create(user, mailbox)
        self._metas[(user, mailbox)] = meta
        return meta

    async def _create(self, user: str, mailbox: str) -> _Meta:
        u = await self._user(user)
        uidvalidity = max(int(self._clock()), u.uidvalidity + 1, 1)
        meta = _Meta(uidvalidity, 1)
        with _kv_errors(f"creating {user}/{mailbox}", mailbox):
            async with self._kv.batch(f"create {user}/{mailbox}") as b:
                await b.set(self._base(user, mailbox) + "/meta", meta.encode())
                await b.set(f"{user}/{USER_META}",
                            json.dumps({"uidvalidity": uidvalidity}).encode())
        u.uidvalidity = uidvalidity
        self._metas[(user, mailbox)] = meta
        return meta

    # ---------------------------------------------------------------- delivery

    async def deliver(self, user: str, data: bytes, *, mailbox: str = INBOX,
                      flags: Iterable[str] = (), internal_date: int | None = None) -> int:
        self._check_open()
        d = _Delivery(check_user(user), check_mailbox(mailbox), bytes(data), check_flags(flags),
                      int(self._clock()) if internal_date is None else int(internal_date))
        self._pending.append(d)
        try:
            async with self._lock:
                if not d.done:
                    await asyncio.sleep(0)  # let deliveries that are ready join this batch
                    batch, self._pending = self._pending, []
                    await self._deliver_batch(batch)
        except BaseException:
            if d in self._pending:
                self._pending.remove(d)
            if not d.done:
                raise
        if d.error is not None:
            raise d.error
        assert d.uid is not None
        return d.uid

    async def _deliver_batch(self, batch: list[_Delivery]) -> None:
        ready: list[_Delivery] = []
        nexts: dict[tuple[str, str], _Meta] = {}
        try:
            for d in batch:
                try:
                    meta = await self._meta(d.user, d.mailbox)
                except MailStoreError as exc:
                    d.error, d.done = exc, True
                    continue
                key = (d.user, d.mailbox)
                new = nexts.setdefault(key, _Meta(meta.uidvalidity, meta.uidnext))
                d.uid = new.uidnext
                new.uidnext += 1
                ready.append(d)
            if not ready:
                return
            lines = [f"deliver to {d.user}/{d.mailbox} uid {d.uid}" for d in ready]
            message = lines[0] if len(lines) == 1 else \
                f"deliver {len(lines)} messages\n\n" + "\n".join(lines) + "\n"
            with _kv_errors("delivering"):
                async with self._kv.batch(message) as b:
                    for d in ready:
                        assert d.uid is not None
                        base = self._base(d.user, d.mailbox)
                        await b.set(self._msg_key(base, d.uid), d.data)
                        await b.set(self._info_key(base, d.uid), json.dumps(
                            {"flags": sorted(d.flags), "date": d.date,
                             "size": len(d.data)}).encode())
                    for (user, mailbox), new in nexts.items():
                        await b.set(self._base(user, mailbox) + "/meta", new.encode())
            for key, new in nexts.items():
                self._metas[key] = new
            for d in ready:
                d.done = True
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else StoreFailure("delivery interrupted")
            for d in batch:
                if not d.done:
                    d.uid, d.error, d.done = None, failure, True
            raise

    # ---------------------------------------------------------------- reading

    async def _infos(self, user: str, mailbox: str) -> list[MessageInfo]:
        base = self._base(user, mailbox)
        out = []
        with _kv_errors(f"listing {user}/{mailbox}", mailbox):
            folders = [""]
            for _level in range(3):  # i/<uid // 10000>/<uid // 100>/<uid>
                deeper = []
                for folder in folders:
                    try:
                        entries = await self._kv.list(f"{base}/i{folder}")
                    except NotFound:
                        continue
                    deeper += [f"{folder}/{name}" for name, _ in
                               sorted(entries, key=lambda e: int(e[0]))]
                folders = deeper
            for path in folders:
                try:
                    raw = json.loads(await self._kv.get(f"{base}/i{path}"))
                except NotFound:
                    continue
                except ValueError:
                    raise StoreFailure(f"{base}/i{path}: corrupt") from None
                out.append(MessageInfo(int(path.rsplit("/", 1)[1]), frozenset(raw["flags"]),
                                       int(raw["date"]), int(raw["size"]), f"{base}/m{path}"))
        return out

    async def _info(self, user: str, mailbox: str, uid: int) -> dict[str, Any]:
        base = self._base(user, mailbox)
        with _kv_errors(f"reading {user}/{mailbox}", mailbox):
            try:
                return json.loads(await self._kv.get(self._info_key(base, uid)))
            except NotFound:
                raise MessageNotFound(user, mailbox, uid) from None

    async def list(self, user: str, mailbox: str) -> list[MessageInfo]:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        async with self._lock:
            await self._meta(user, mailbox)
        return await self._infos(user, mailbox)

    async def status(self, user: str, mailbox: str) -> MailboxStatus:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        async with self._lock:
            meta = await self._meta(user, mailbox)
            infos = await self._infos(user, mailbox)
        unseen = sum(1 for m in infos if SEEN not in m.flags)
        return MailboxStatus(meta.uidvalidity, meta.uidnext, len(infos), unseen)

    async def get(self, user: str, mailbox: str, uid: int) -> bytes:
        user, mailbox, uid = check_user(user), check_mailbox(mailbox), check_uid(uid)
        async with self._lock:
            await self._meta(user, mailbox)
        with _kv_errors(f"reading {user}/{mailbox}", mailbox):
            try:
                return await self._kv.get(self._msg_key(self._base(user, mailbox), uid))
            except NotFound:
                raise MessageNotFound(user, mailbox, uid) from None

    # ---------------------------------------------------------------- changing

    async def set_flags(self, user: str, mailbox: str, uid: int, flags: Iterable[str]) -> None:
        user, mailbox, uid = check_user(user), check_mailbox(mailbox), check_uid(uid)
        wanted = check_flags(flags)
        async with self._lock:
            await self._meta(user, mailbox)
            info = await self._info(user, mailbox, uid)
            if set(info["flags"]) == wanted:
                return
            info["flags"] = sorted(wanted)
            with _kv_errors(f"flagging {user}/{mailbox}", mailbox):
                async with self._kv.batch(f"flags {user}/{mailbox} uid {uid}") as b:
                    await b.set(self._info_key(self._base(user, mailbox), uid),
                                json.dumps(info).encode())

    async def remove(self, user: str, mailbox: str, uids: Iterable[int]) -> None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        wanted = sorted_uids(uids)
        async with self._lock:
            await self._meta(user, mailbox)
            base = self._base(user, mailbox)
            found = []
            with _kv_errors(f"expunging {user}/{mailbox}", mailbox):
                for uid in wanted:
                    if await self._kv.exists(self._info_key(base, uid)) is not None:
                        found.append(uid)
                if not found:
                    return
                text = ",".join(map(str, found))
                async with self._kv.batch(f"expunge {user}/{mailbox} uids {text}") as b:
                    for uid in found:
                        await b.remove(self._msg_key(base, uid))
                        await b.remove(self._info_key(base, uid))

    async def copy(self, user: str, src: str, uids: Iterable[int], dest: str) -> dict[int, int]:
        user, src, dest = check_user(user), check_mailbox(src), check_mailbox(dest)
        wanted = sorted_uids(uids)
        async with self._lock:
            await self._meta(user, src)
            meta = await self._meta(user, dest)
            sbase, dbase = self._base(user, src), self._base(user, dest)
            new = _Meta(meta.uidvalidity, meta.uidnext)
            mapping: dict[int, int] = {}
            with _kv_errors(f"copying {user}/{src}", src):
                items = []
                for uid in wanted:
                    try:
                        info = await self._kv.get(self._info_key(sbase, uid))
                        body = await self._kv.get(self._msg_key(sbase, uid))
                    except NotFound:
                        continue
                    mapping[uid] = new.uidnext
                    items.append((new.uidnext, info, body))
                    new.uidnext += 1
                if not items:
                    return {}
                text = ",".join(map(str, mapping))
                async with self._kv.batch(f"copy {user}/{src} uids {text} to {user}/{dest}") as b:
                    for uid, info, body in items:
                        await b.set(self._msg_key(dbase, uid), body)
                        await b.set(self._info_key(dbase, uid), info)
                    await b.set(dbase + "/meta", new.encode())
            self._metas[(user, dest)] = new
            return mapping

    # ---------------------------------------------------------------- mailboxes

    async def _names(self, user: str) -> list[str]:
        with _kv_errors(f"listing {user}"):
            try:
                entries = await self._kv.list(user)
            except NotFound:
                return []
            out = []
            for name, _ in entries:
                if name.startswith(".") or await self._kv.exists(f"{user}/{name}/meta") is None:
                    continue
                out.append(decode_box(name))
            return out

    async def mailboxes(self, user: str) -> list[str]:
        user = check_user(user)
        async with self._lock:
            await self._meta(user, INBOX)
            return sorted(await self._names(user))

    async def load_cache(self, user: str, mailbox: str) -> bytes | None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        with _kv_errors(f"reading {user}/{mailbox}'s cache", mailbox):
            try:
                return await self._kv.get(f"{self._base(user, mailbox)}/cache")
            except NotFound:
                return None

    async def save_cache(self, user: str, mailbox: str, data: bytes) -> None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        with _kv_errors(f"writing {user}/{mailbox}'s cache", mailbox):
            await self._kv.set(f"{self._base(user, mailbox)}/cache", bytes(data))

    async def subscriptions(self, user: str) -> list[str]:
        user = check_user(user)
        return sorted(await self._read_subscriptions(user))

    async def _read_subscriptions(self, user: str) -> set[str]:
        with _kv_errors(f"reading {user}'s subscriptions"):
            try:
                text = (await self._kv.get(f"{user}/{SUBSCRIPTIONS}")).decode("utf-8", "replace")
            except NotFound:
                return set()
        return {line for line in text.split("\n") if line}

    async def subscribe(self, user: str, mailbox: str, subscribed: bool = True) -> None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        async with self._lock:
            self._check_open()
            names = await self._read_subscriptions(user)
            if (mailbox in names) == subscribed:
                return
            names = names | {mailbox} if subscribed else names - {mailbox}
            verb = "subscribe" if subscribed else "unsubscribe"
            with _kv_errors(f"writing {user}'s subscriptions"):
                async with self._kv.batch(f"{verb} {user}/{mailbox}") as b:
                    await b.set(f"{user}/{SUBSCRIPTIONS}",
                                "".join(n + "\n" for n in sorted(names)).encode())

    async def create_mailbox(self, user: str, mailbox: str) -> None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        async with self._lock:
            if mailbox == INBOX:
                raise MailboxExists(user, mailbox)
            self._check_open()
            if (user, mailbox) in self._metas or await self._read_meta(user, mailbox):
                raise MailboxExists(user, mailbox)
            with _kv_errors(f"creating {user}/{mailbox}", mailbox):
                await self._kv.remove(self._base(user, mailbox))  # leftovers without meta
            await self._create(user, mailbox)

    async def delete_mailbox(self, user: str, mailbox: str) -> None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        if mailbox == INBOX:
            raise InvalidName("mailbox", mailbox, "INBOX cannot be deleted")
        async with self._lock:
            await self._meta(user, mailbox)
            self._metas.pop((user, mailbox), None)
            with _kv_errors(f"deleting {user}/{mailbox}", mailbox):
                async with self._kv.batch(f"delete {user}/{mailbox}") as b:
                    await b.remove(self._base(user, mailbox))

    async def rename_mailbox(self, user: str, old: str, new: str) -> None:
        names = await begin_rename(self, user, old, new)
        if names is None:
            return
        user, old, new = names
        async with self._lock:
            await self._meta(user, old)
            names = await self._names(user)
            moves = []
            for name in names:
                if is_below(name, old):
                    target = new + name[len(old):]
                    if target in names:
                        raise MailboxExists(user, target)
                    moves.append((name, target))
            for name, target in moves:
                self._metas.pop((user, name), None)
                with _kv_errors(f"renaming {user}/{name}", target):
                    await self._kv.rename(self._base(user, name), self._base(user, target))

    # ---------------------------------------------------------------- closing

    def close(self) -> None:
        self._closed = True
        self._metas.clear()
