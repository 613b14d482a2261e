"""The tests every mail store passes, whatever its backend.

One abstract suite, many backends (as Xandikos tests its stores): a test
class for a backend inherits :class:`MailStoreConformance` and defines
``make_store(tmp_path)``. Calling it again with the same ``tmp_path`` (after
the previous store was closed) must reopen the same data: that is how
restarts are tested. It may return the store or an awaitable of it.

Tests are plain functions running their coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ingot.plugins.mailstore.store import (
    INBOX,
    InvalidFlag,
    InvalidName,
    MailboxExists,
    MailboxNotFound,
    MailboxStatus,
    MessageInfo,
    MessageNotFound,
)
from ingot.signatures import Closed

MSG = b"From: a@example.org\r\nTo: alice@example.org\r\nSubject: hi\r\n\r\nHello\r\n"

BINARY = [
    b"",
    bytes(range(256)) * 64,
    b"Subject: \xe4\xf6\xfc 8-bit\r\n\r\nLatin-1 \xff\xfe and NUL \x00 and lone CR \r here",
    "Subject: Gr\u00fc\u00dfe\r\n\r\n\u65e5\u672c\u8a9e UTF-8\n".encode(),
    b"no trailing newline",
    b"\n\nFrom the start\nFrom line\n>From quoted\n.\n..\r\n.\r\n",
]
"""Messages that must come back byte for byte."""

BAD_USERS = ["", "a/b", "..", "a..b", ".hidden", "x\0y", "tab\there", "nl\n", "del\x7f",
             "u" * 201, "\udcff"]
BAD_MAILBOXES = ["", "/abs", "a/", "a//b", "../x", "a/../b", "a/./b", ".", "x\0y", "c\x01",
                 "nl\nx", "\x85next", "m" * 201, "\udcff"]


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class MailStoreConformance:
    """The :class:`ingot.plugins.mailstore.store.MailStore` contract."""

    def make_store(self, tmp_path: Any) -> Any:
        raise NotImplementedError

    def run(self, tmp_path: Any, body: Callable[..., Awaitable[None]]) -> None:
        """Run ``body(store)``; a body with two parameters gets ``reopen`` too:
        ``store = await reopen(store)`` closes the store and opens the data again."""

        async def main() -> None:
            store = await maybe(self.make_store(tmp_path))

            async def reopen(old: Any) -> Any:
                nonlocal store
                old.close()
                store = await maybe(self.make_store(tmp_path))
                return store

            try:
                if len(inspect.signature(body).parameters) == 2:
                    await body(store, reopen)
                else:
                    await body(store)
            finally:
                store.close()

        asyncio.run(main())

    # ------------------------------------------------------------ delivery

    def test_deliver_and_get(self, tmp_path):
        async def body(s):
            uids = [await s.deliver("alice", MSG + bytes([i])) for i in range(3)]
            assert uids == [1, 2, 3]
            for i, uid in enumerate(uids):
                assert await s.get("alice", INBOX, uid) == MSG + bytes([i])
            infos = await s.list("alice", INBOX)
            assert [m.uid for m in infos] == uids
            assert all(isinstance(m, MessageInfo) for m in infos)
            assert all(m.size == len(MSG) + 1 and m.flags == frozenset() for m in infos)
            assert all(isinstance(m.key, str) and m.key for m in infos)
        self.run(tmp_path, body)

    def test_uids_strictly_increase_across_lists(self, tmp_path):
        async def body(s):
            seen = 0
            for round_ in range(4):
                for _ in range(3):
                    uid = await s.deliver("alice", MSG)
                    assert uid > seen
                    seen = uid
                uids = [m.uid for m in await s.list("alice", INBOX)]
                assert uids == sorted(set(uids)) and uids[-1] == seen
        self.run(tmp_path, body)

    def test_internal_date(self, tmp_path):
        async def body(s):
            uid = await s.deliver("alice", MSG, internal_date=1_000_000_000)
            now = await s.deliver("alice", MSG)
            infos = {m.uid: m for m in await s.list("alice", INBOX)}
            assert infos[uid].internal_date == 1_000_000_000
            assert infos[now].internal_date > 1_600_000_000
        self.run(tmp_path, body)

    def test_inbox_is_case_insensitive_and_implicit(self, tmp_path):
        async def body(s):
            assert await s.list("nobody", INBOX) == []
            uid = await s.deliver("alice", MSG, mailbox="inbox")
            assert await s.get("alice", "InBoX", uid) == MSG
            assert await s.mailboxes("alice") == [INBOX]
            st = await s.status("carol", "INBOX")
            assert (st.messages, st.unseen, st.uidnext) == (0, 0, 1)
        self.run(tmp_path, body)

    def test_users_are_separate(self, tmp_path):
        async def body(s):
            a = await s.deliver("alice", b"for alice")
            b = await s.deliver("bob", b"for bob")
            assert a == b == 1
            assert await s.get("alice", INBOX, 1) == b"for alice"
            assert await s.get("bob", INBOX, 1) == b"for bob"
            await s.create_mailbox("alice", "Private")
            assert await s.mailboxes("bob") == [INBOX]
        self.run(tmp_path, body)

    def test_binary_and_8bit_preserved(self, tmp_path):
        async def body(s):
            uids = [await s.deliver("alice", data) for data in BINARY]
            for uid, data in zip(uids, BINARY):
                assert await s.get("alice", INBOX, uid) == data
            sizes = {m.uid: m.size for m in await s.list("alice", INBOX)}
            assert [sizes[u] for u in uids] == [len(d) for d in BINARY]
        self.run(tmp_path, body)

    def test_large_message(self, tmp_path):
        big = bytes(range(251)) * (10 * 1024 * 1024 // 251 + 1)
        big = big[:10 * 1024 * 1024]

        async def body(s):
            uid = await s.deliver("alice", big)
            assert await s.get("alice", INBOX, uid) == big
            (info,) = await s.list("alice", INBOX)
            assert info.size == len(big)
        self.run(tmp_path, body)

    def test_concurrent_deliveries(self, tmp_path):
        async def body(s):
            datas = [MSG + b"%d" % i for i in range(50)]
            uids = await asyncio.gather(*(s.deliver("alice", d) for d in datas))
            assert len(set(uids)) == 50
            for uid, data in zip(uids, datas):
                assert await s.get("alice", INBOX, uid) == data
            listed = [m.uid for m in await s.list("alice", INBOX)]
            assert listed == sorted(uids)
            assert await s.deliver("alice", MSG) > max(uids)
        self.run(tmp_path, body)

    def test_concurrent_deliveries_and_lists(self, tmp_path):
        async def body(s):
            shown: list[list[int]] = []

            async def lister():
                for _ in range(10):
                    shown.append([m.uid for m in await s.list("alice", INBOX)])
                    await asyncio.sleep(0)

            results = await asyncio.gather(lister(), *(s.deliver("alice", MSG) for _ in range(30)))
            uids = results[1:]
            assert len(set(uids)) == 30
            prev: list[int] = []
            for snap in shown:  # a list never shows a UID below one already shown
                assert snap[:len(prev)] == prev
                prev = snap
        self.run(tmp_path, body)

    def test_deliver_to_other_mailbox(self, tmp_path):
        async def body(s):
            with pytest.raises(MailboxNotFound):
                await s.deliver("alice", MSG, mailbox="Junk")
            await s.create_mailbox("alice", "Junk")
            assert await s.deliver("alice", MSG, mailbox="Junk") == 1
            assert await s.deliver("alice", MSG) == 1
            assert [m.uid for m in await s.list("alice", "Junk")] == [1]
        self.run(tmp_path, body)

    # ------------------------------------------------------------ flags

    def test_flags_at_delivery_and_set(self, tmp_path):
        async def body(s):
            uid = await s.deliver("alice", MSG, flags=["\\seen", "$Forwarded"])
            (m,) = await s.list("alice", INBOX)
            assert m.flags == {"\\Seen", "$Forwarded"}
            every = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "Work", "$Junk"}
            await s.set_flags("alice", INBOX, uid, every)
            (m,) = await s.list("alice", INBOX)
            assert m.flags == every
            await s.set_flags("alice", INBOX, uid, ["\\DELETED"])
            (m,) = await s.list("alice", INBOX)
            assert m.flags == {"\\Deleted"}
            await s.set_flags("alice", INBOX, uid, [])
            (m,) = await s.list("alice", INBOX)
            assert m.flags == frozenset()
            assert await s.get("alice", INBOX, uid) == MSG
        self.run(tmp_path, body)

    def test_set_flags_errors(self, tmp_path):
        async def body(s):
            uid = await s.deliver("alice", MSG)
            with pytest.raises(MessageNotFound):
                await s.set_flags("alice", INBOX, uid + 1, ["\\Seen"])
            for bad in ("\\Recent", "\\Bogus", "a b", "", "x(y", "quo\"te", "\u00e9"):
                with pytest.raises(InvalidFlag):
                    await s.set_flags("alice", INBOX, uid, [bad])
                with pytest.raises(InvalidName):  # InvalidFlag is one
                    await s.deliver("alice", MSG, flags=[bad])
            assert [m.uid for m in await s.list("alice", INBOX)] == [uid]
        self.run(tmp_path, body)

    # ------------------------------------------------------------ remove, copy

    def test_remove(self, tmp_path):
        async def body(s):
            uids = [await s.deliver("alice", b"m%d" % i) for i in range(5)]
            await s.remove("alice", INBOX, [uids[1], uids[3], 999])
            assert [m.uid for m in await s.list("alice", INBOX)] == [uids[0], uids[2], uids[4]]
            with pytest.raises(MessageNotFound):
                await s.get("alice", INBOX, uids[1])
            await s.remove("alice", INBOX, [])
            await s.remove("alice", INBOX, [uids[4]])
            assert await s.deliver("alice", MSG) == uids[4] + 1
        self.run(tmp_path, body)

    def test_uid_not_reused_after_removing_highest_and_restart(self, tmp_path):
        async def body(s, reopen):
            uids = [await s.deliver("alice", MSG) for _ in range(3)]
            before = await s.status("alice", INBOX)
            await s.remove("alice", INBOX, [uids[-1]])
            s = await reopen(s)
            st = await s.status("alice", INBOX)
            assert st.uidvalidity == before.uidvalidity and st.uidnext == uids[-1] + 1
            assert await s.deliver("alice", MSG) == uids[-1] + 1
            await s.remove("alice", INBOX, [m.uid for m in await s.list("alice", INBOX)])
            s = await reopen(s)
            assert await s.deliver("alice", MSG) == uids[-1] + 2
        self.run(tmp_path, body)

    def test_copy(self, tmp_path):
        async def body(s):
            a = await s.deliver("alice", b"one", flags=["\\Seen", "Work"],
                                internal_date=1_500_000_000)
            b = await s.deliver("alice", bytes(range(256)))
            await s.create_mailbox("alice", "Archive")
            await s.deliver("alice", b"already there", mailbox="Archive")
            mapping = await s.copy("alice", INBOX, [b, a, 4242], "Archive")
            assert mapping == {a: 2, b: 3}
            infos = {m.uid: m for m in await s.list("alice", "Archive")}
            assert await s.get("alice", "Archive", 2) == b"one"
            assert await s.get("alice", "Archive", 3) == bytes(range(256))
            assert infos[2].flags == {"\\Seen", "Work"}
            assert infos[2].internal_date == 1_500_000_000
            assert infos[3].flags == frozenset()
            # the source is untouched; the copies are independent
            assert [m.uid for m in await s.list("alice", INBOX)] == [a, b]
            await s.set_flags("alice", "Archive", 2, ["\\Deleted"])
            src = {m.uid: m for m in await s.list("alice", INBOX)}
            assert src[a].flags == {"\\Seen", "Work"}
            await s.remove("alice", INBOX, [a])
            assert await s.get("alice", "Archive", 2) == b"one"
            # into the same mailbox, and nothing to copy
            assert await s.copy("alice", INBOX, [b], INBOX) == {b: b + 1}
            assert await s.copy("alice", INBOX, [777], "Archive") == {}
            with pytest.raises(MailboxNotFound):
                await s.copy("alice", INBOX, [b], "Nope")
            with pytest.raises(MailboxNotFound):
                await s.copy("alice", "Nope", [b], INBOX)
        self.run(tmp_path, body)

    # ------------------------------------------------------------ mailboxes

    def test_mailbox_crud(self, tmp_path):
        async def body(s):
            assert await s.mailboxes("alice") == [INBOX]
            names = ["Archive", "Lists/ietf.org", "Lists", "Entw\u00fcrfe", "a.b/c%d", ".dot",
                     "Sent Items"]
            for name in names:
                await s.create_mailbox("alice", name)
            assert await s.mailboxes("alice") == sorted([INBOX, *names])
            for name in names:
                assert await s.list("alice", name) == []
                uid = await s.deliver("alice", name.encode(), mailbox=name)
                assert await s.get("alice", name, uid) == name.encode()
            with pytest.raises(MailboxExists):
                await s.create_mailbox("alice", "Archive")
            with pytest.raises(MailboxExists):
                await s.create_mailbox("alice", "inbox")
            await s.delete_mailbox("alice", "Lists")
            assert "Lists" not in await s.mailboxes("alice")
            assert "Lists/ietf.org" in await s.mailboxes("alice")  # children stay
            with pytest.raises(MailboxNotFound):
                await s.delete_mailbox("alice", "Lists")
            with pytest.raises(InvalidName):
                await s.delete_mailbox("alice", "INBOX")
            for call in (s.list("alice", "Lists"), s.status("alice", "Lists"),
                         s.get("alice", "Lists", 1), s.set_flags("alice", "Lists", 1, []),
                         s.remove("alice", "Lists", [1]), s.deliver("alice", MSG, mailbox="Lists")):
                with pytest.raises(MailboxNotFound):
                    await call
        self.run(tmp_path, body)

    def test_recreated_mailbox_has_new_uidvalidity(self, tmp_path):
        async def body(s, reopen):
            await s.create_mailbox("alice", "Box")
            await s.deliver("alice", MSG, mailbox="Box")
            first = await s.status("alice", "Box")
            await s.delete_mailbox("alice", "Box")
            await s.create_mailbox("alice", "Box")
            second = await s.status("alice", "Box")
            assert second.uidvalidity != first.uidvalidity
            assert (second.messages, second.uidnext) == (0, 1)
            s = await reopen(s)
            await s.delete_mailbox("alice", "Box")
            await s.create_mailbox("alice", "Box")
            third = await s.status("alice", "Box")
            assert third.uidvalidity not in (first.uidvalidity, second.uidvalidity)
        self.run(tmp_path, body)

    def test_rename(self, tmp_path):
        async def body(s):
            await s.create_mailbox("alice", "Work")
            await s.create_mailbox("alice", "Work/2024")
            await s.create_mailbox("alice", "Workshop")
            uid = await s.deliver("alice", b"work", mailbox="Work", flags=["\\Flagged"])
            await s.deliver("alice", b"2024", mailbox="Work/2024")
            before = await s.status("alice", "Work")
            await s.rename_mailbox("alice", "Work", "Job")
            assert await s.mailboxes("alice") == sorted([INBOX, "Job", "Job/2024", "Workshop"])
            after = await s.status("alice", "Job")
            assert (after.uidvalidity, after.uidnext) == (before.uidvalidity, before.uidnext)
            assert await s.get("alice", "Job", uid) == b"work"
            (m,) = await s.list("alice", "Job")
            assert m.flags == {"\\Flagged"}
            assert await s.get("alice", "Job/2024", 1) == b"2024"
            with pytest.raises(MailboxNotFound):
                await s.list("alice", "Work")
            with pytest.raises(MailboxNotFound):
                await s.rename_mailbox("alice", "Work", "X")
            with pytest.raises(MailboxExists):
                await s.rename_mailbox("alice", "Job", "Workshop")
            with pytest.raises(MailboxExists):
                await s.rename_mailbox("alice", "Job", "INBOX")
            with pytest.raises(InvalidName):
                await s.rename_mailbox("alice", "Job", "Job/sub")
            await s.create_mailbox("alice", "Work")  # the old name is free, with a new UIDVALIDITY
            assert (await s.status("alice", "Work")).uidvalidity != before.uidvalidity
        self.run(tmp_path, body)

    def test_rename_inbox_moves_its_messages(self, tmp_path):
        async def body(s):
            await s.deliver("alice", b"one", flags=["\\Seen"])
            await s.deliver("alice", b"two")
            await s.rename_mailbox("alice", "INBOX", "Old")
            assert await s.list("alice", INBOX) == []
            infos = await s.list("alice", "Old")
            assert [await s.get("alice", "Old", m.uid) for m in infos] == [b"one", b"two"]
            assert infos[0].flags == {"\\Seen"}
            assert await s.deliver("alice", MSG) == 3  # INBOX's UIDs go on
        self.run(tmp_path, body)

    def test_status_counts(self, tmp_path):
        async def body(s):
            st = await s.status("alice", INBOX)
            assert isinstance(st, MailboxStatus) and st.uidvalidity > 0
            assert (st.messages, st.unseen, st.uidnext) == (0, 0, 1)
            a = await s.deliver("alice", MSG)
            await s.deliver("alice", MSG, flags=["\\Seen"])
            await s.deliver("alice", MSG)
            st2 = await s.status("alice", INBOX)
            assert (st2.messages, st2.unseen, st2.uidnext) == (3, 2, 4)
            assert st2.uidvalidity == st.uidvalidity
            await s.set_flags("alice", INBOX, a, ["\\Seen"])
            await s.remove("alice", INBOX, [3])
            st3 = await s.status("alice", INBOX)
            assert (st3.messages, st3.unseen, st3.uidnext) == (2, 0, 4)
        self.run(tmp_path, body)

    # ------------------------------------------------------------ names

    def test_bad_names(self, tmp_path):
        async def body(s):
            for user in BAD_USERS:
                for call in (s.deliver(user, MSG), s.mailboxes(user), s.list(user, INBOX),
                             s.status(user, INBOX), s.create_mailbox(user, "X"),
                             s.get(user, INBOX, 1)):
                    with pytest.raises(InvalidName) as info:
                        await call
                    assert info.value.what == "user"
            for box in BAD_MAILBOXES:
                for call in (s.deliver("alice", MSG, mailbox=box), s.create_mailbox("alice", box),
                             s.list("alice", box), s.status("alice", box),
                             s.delete_mailbox("alice", box), s.get("alice", box, 1),
                             s.set_flags("alice", box, 1, []), s.remove("alice", box, [1]),
                             s.copy("alice", INBOX, [1], box), s.rename_mailbox("alice", box, "Y"),
                             s.rename_mailbox("alice", "INBOX", box)):
                    with pytest.raises(InvalidName) as info:
                        await call
                    assert info.value.what == "mailbox"
            assert await s.mailboxes("alice") == [INBOX]
        self.run(tmp_path, body)

    def test_longest_names_are_fine(self, tmp_path):
        async def body(s):
            user = "u" * 200
            box = "m" * 100
            await s.create_mailbox(user, box)
            assert await s.deliver(user, MSG, mailbox=box) == 1
            assert await s.mailboxes(user) == sorted([INBOX, box])
        self.run(tmp_path, body)

    # ------------------------------------------------------------ restarts

    def test_restart_keeps_everything(self, tmp_path):
        async def body(s, reopen):
            await s.create_mailbox("alice", "Archive")
            uids = [await s.deliver("alice", data, internal_date=1_400_000_000 + i)
                    for i, data in enumerate(BINARY)]
            await s.set_flags("alice", INBOX, uids[1], ["\\Answered", "Later"])
            await s.deliver("alice", b"archived", mailbox="Archive")
            before = await s.list("alice", INBOX)
            st = await s.status("alice", INBOX)
            st_archive = await s.status("alice", "Archive")
            s = await reopen(s)
            after = await s.list("alice", INBOX)
            assert [(m.uid, m.flags, m.internal_date, m.size) for m in after] == \
                [(m.uid, m.flags, m.internal_date, m.size) for m in before]
            assert await s.status("alice", INBOX) == st
            assert await s.status("alice", "Archive") == st_archive
            for uid, data in zip(uids, BINARY):
                assert await s.get("alice", INBOX, uid) == data
            assert await s.mailboxes("alice") == ["Archive", INBOX]
            assert await s.deliver("alice", MSG) == uids[-1] + 1
        self.run(tmp_path, body)

    def test_inbox_uidvalidity_stable_across_restart(self, tmp_path):
        async def body(s, reopen):
            first = await s.status("alice", INBOX)
            s = await reopen(s)
            assert await s.status("alice", INBOX) == first
        self.run(tmp_path, body)

    # ------------------------------------------------------------ closing

    def test_close(self, tmp_path):
        async def body(s):
            await s.deliver("alice", MSG)
            s.close()
            s.close()
            with pytest.raises(Closed):
                await s.deliver("alice", MSG)
            with pytest.raises(Closed):
                await s.list("alice", INBOX)
        self.run(tmp_path, body)


    # ------------------------------------------------------------ subscriptions

    def test_subscriptions_persist(self, tmp_path):
        async def body(s, reopen):
            assert await s.subscriptions("alice") == []
            await s.create_mailbox("alice", "Lists/ingot")
            await s.subscribe("alice", "Lists/ingot")
            await s.subscribe("alice", INBOX)
            await s.subscribe("alice", INBOX)  # twice: still once
            await s.subscribe("alice", "Gone")  # a name without a mailbox may be subscribed
            assert await s.subscriptions("alice") == ["Gone", INBOX, "Lists/ingot"]
            await s.subscribe("alice", "Gone", False)
            await s.subscribe("alice", "Never", False)
            s = await reopen(s)
            assert await s.subscriptions("alice") == [INBOX, "Lists/ingot"]
            assert await s.subscriptions("bob") == []
            with pytest.raises(InvalidName):
                await s.subscribe("alice", "../x")
        self.run(tmp_path, body)
