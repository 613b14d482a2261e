"""Change notification over a :class:`~.store.MailStore`: who is watching which mailbox.

:class:`Notifying` wraps a store and passes every call through; after each
change (a delivery, new flags, an expunge, a copy into a mailbox, a mailbox
created, deleted or renamed) it wakes the watchers of the mailboxes that
changed. IMAP sessions watch their selected mailbox (for IDLE and the
untagged EXISTS/EXPUNGE/FETCH updates of RFC 3501 7); the SMTP side
delivers through the same object, so a delivered message wakes an IDLE at
once. Watching is in-process: another process writing the same Maildir is
not seen (the store allows one owner of its data anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from .store import INBOX


def _key(user: str, mailbox: str) -> tuple[str, str]:
    return user, INBOX if mailbox.upper() == INBOX else mailbox


class Watch:
    """Set when the watched mailbox changed; ``clear()`` before looking again."""

    def __init__(self, owner: Notifying, key: tuple[str, str]) -> None:
        self._owner = owner
        self.key = key
        self.event = asyncio.Event()

    def clear(self) -> None:
        self.event.clear()

    @property
    def changed(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()

    def close(self) -> None:
        watchers = self._owner._watchers.get(self.key)
        if watchers is not None:
            watchers.discard(self)
            if not watchers:
                del self._owner._watchers[self.key]


class Notifying:
    """A store that tells watchers about changes (see the module docstring)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._watchers: dict[tuple[str, str], set[Watch]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def lock(self, user: str, mailbox: str) -> asyncio.Lock:
        """Held around a read-modify-write of flags (STORE +FLAGS, the \\Seen of a
        FETCH, EXPUNGE), so that two sessions' changes never overwrite each other."""
        return self._locks.setdefault(_key(user, mailbox), asyncio.Lock())

    def watch(self, user: str, mailbox: str) -> Watch:
        w = Watch(self, _key(user, mailbox))
        self._watchers.setdefault(w.key, set()).add(w)
        return w

    def changed(self, user: str, mailbox: str) -> None:
        for w in self._watchers.get(_key(user, mailbox), ()):
            w.event.set()

    def _changed_below(self, user: str, name: str) -> None:
        for (u, box), watchers in list(self._watchers.items()):
            if u == user and (box == name or box.startswith(name + "/")):
                for w in watchers:
                    w.event.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def deliver(self, user: str, data: bytes, *, mailbox: str = INBOX,
                      flags: Iterable[str] = (), internal_date: int | None = None) -> int:
        uid = await self.store.deliver(user, data, mailbox=mailbox, flags=flags,
                                       internal_date=internal_date)
        self.changed(user, mailbox)
        return uid

    async def set_flags(self, user: str, mailbox: str, uid: int, flags: Iterable[str]) -> None:
        await self.store.set_flags(user, mailbox, uid, flags)
        self.changed(user, mailbox)

    async def remove(self, user: str, mailbox: str, uids: Iterable[int]) -> None:
        await self.store.remove(user, mailbox, uids)
        self.changed(user, mailbox)

    async def copy(self, user: str, src: str, uids: Iterable[int], dest: str) -> dict[int, int]:
        mapping = await self.store.copy(user, src, uids, dest)
        self.changed(user, dest)
        return mapping

    async def delete_mailbox(self, user: str, mailbox: str) -> None:
        await self.store.delete_mailbox(user, mailbox)
        self._changed_below(user, mailbox)

    async def rename_mailbox(self, user: str, old: str, new: str) -> None:
        await self.store.rename_mailbox(user, old, new)
        self._changed_below(user, old)
        self.changed(user, new)

    def close(self) -> None:
        self.store.close()
