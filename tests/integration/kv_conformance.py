"""The tests every kv store passes, whatever its backend.

One abstract suite, many backends (as Xandikos tests its stores): a test
class for a backend inherits :class:`KvROConformance` and defines
``make_ro(tmp_path, files)``, or inherits :class:`KvRWConformance` and
defines ``make_rw(tmp_path)`` (a writable store inherits the read-only
suite too; its content is written with a batch). Calling ``make_rw`` again
with the same ``tmp_path`` must reopen the same store; a backend that keeps
nothing by design (``memory``) overrides ``test_writes_survive_reopening``
with a test of what it does instead. Both may return the store or an awaitable of it.

Tests are plain functions running their coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ingot.signatures import (
    Change,
    Closed,
    Conflict,
    DictionaryExpected,
    InvalidKey,
    Kind,
    NotFound,
    ValueExpected,
)

V, D = Kind.VALUE, Kind.DICTIONARY

FILES: dict[str, bytes] = {
    "a": b"alpha",
    "bin": bytes(range(256)) * 16,
    "d/b": b"beta",
    "d/e/c": b"gamma",
    "d/e/empty": b"",
    "d/e/same": b"alpha",
    "\u00fcn\u00ef/c\u00f6d\u00e9": "\u00fc".encode(),
}
"""The content every read-only test starts from."""

BAD_KEYS = ["../x", "a/../b", "a//b", "/abs", "a/", "./a", "a/.", "x\0y",
            "k" * 1025, "\udcff"]
"""Keys every store refuses with InvalidKey."""


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def next_change(watcher: Any, timeout: float = 5.0) -> Any:
    """The next item of an async watcher (a kv Change, a QubesDB path), within ``timeout``."""
    return await asyncio.wait_for(watcher.__anext__(), timeout)


async def drain(watcher: Any, wait: float = 0.3) -> list[Any]:
    """Every item that arrives within ``wait`` seconds of the previous one."""
    out = []
    while True:
        try:
            out.append(await asyncio.wait_for(watcher.__anext__(), wait))
        except asyncio.TimeoutError:
            return out


class KvROConformance:
    """The read-only contract (:class:`ingot.signatures.KvRO`)."""

    def make_ro(self, tmp_path: Any, files: dict[str, bytes]) -> Any:
        raise NotImplementedError

    def ro(self, tmp_path: Any, body: Callable[[Any], Awaitable[None]],
           files: dict[str, bytes] = FILES) -> None:
        async def main() -> None:
            kv = await maybe(self.make_ro(tmp_path, files))
            try:
                await body(kv)
            finally:
                kv.close()

        asyncio.run(main())

    def test_get_every_value(self, tmp_path):
        async def body(kv):
            for key, data in FILES.items():
                assert await kv.get(key) == data, key
        self.ro(tmp_path, body)

    def test_get_absent_raises_not_found(self, tmp_path):
        async def body(kv):
            for key in ("nope", "d/nope", "d/e/c/deeper", "a/x"):
                with pytest.raises(NotFound) as info:
                    await kv.get(key)
                assert info.value.key == key
        self.ro(tmp_path, body)

    def test_get_dictionary_raises_value_expected(self, tmp_path):
        async def body(kv):
            for key in ("d", "d/e", ""):
                with pytest.raises(ValueExpected):
                    await kv.get(key)
        self.ro(tmp_path, body)

    def test_exists(self, tmp_path):
        async def body(kv):
            assert await kv.exists("a") is V
            assert await kv.exists("d/e/empty") is V
            assert await kv.exists("d") is D
            assert await kv.exists("d/e") is D
            assert await kv.exists("") is D
            for key in ("nope", "a/x", "d/nope"):
                assert await kv.exists(key) is None
        self.ro(tmp_path, body)

    def test_list_sorted_with_kinds(self, tmp_path):
        async def body(kv):
            assert await kv.list("") == [("a", V), ("bin", V), ("d", D), ("\u00fcn\u00ef", D)]
            assert await kv.list("d") == [("b", V), ("e", D)]
            assert await kv.list("d/e") == [("c", V), ("empty", V), ("same", V)]
            with pytest.raises(DictionaryExpected):
                await kv.list("a")
            with pytest.raises(NotFound):
                await kv.list("nope")
        self.ro(tmp_path, body)

    def test_size(self, tmp_path):
        async def body(kv):
            for key, data in FILES.items():
                assert await kv.size(key) == len(data)
            with pytest.raises(ValueExpected):
                await kv.size("d")
            with pytest.raises(NotFound):
                await kv.size("nope")
        self.ro(tmp_path, body)

    def test_get_partial(self, tmp_path):
        async def body(kv):
            data = FILES["bin"]
            assert await kv.get_partial("bin", 0, 10) == data[:10]
            assert await kv.get_partial("bin", 100, 50) == data[100:150]
            assert await kv.get_partial("bin", len(data) - 3, 10) == data[-3:]
            assert await kv.get_partial("bin", len(data) + 5, 10) == b""
            assert await kv.get_partial("bin", 5, 0) == b""
            assert await kv.get_partial("d/e/empty", 0, 10) == b""
            with pytest.raises(ValueExpected):
                await kv.get_partial("d", 0, 1)
            with pytest.raises(NotFound):
                await kv.get_partial("nope", 0, 1)
        self.ro(tmp_path, body)

    def test_digest(self, tmp_path):
        async def body(kv):
            digests = {key: await kv.digest(key) for key in FILES}
            assert all(isinstance(d, bytes) and len(d) >= 16 for d in digests.values())
            assert digests["a"] == digests["d/e/same"]  # same content, same digest
            assert len({digests[k] for k in FILES if k != "d/e/same"}) == len(FILES) - 1
            assert await kv.digest("a") == digests["a"]  # stable
            dicts = {await kv.digest(k) for k in ("", "d", "d/e")}
            assert len(dicts) == 3
            with pytest.raises(NotFound):
                await kv.digest("nope")
        self.ro(tmp_path, body)

    def test_last_modified(self, tmp_path):
        async def body(kv):
            for key in ("a", "d", "d/e/c", ""):
                s, ns = await kv.last_modified(key)
                assert isinstance(s, int) and isinstance(ns, int)
                assert s >= 0 and 0 <= ns < 1_000_000_000
            with pytest.raises(NotFound):
                await kv.last_modified("nope")
        self.ro(tmp_path, body)

    def test_malformed_keys_raise_invalid_key(self, tmp_path):
        async def body(kv):
            for key in BAD_KEYS:
                for call in (kv.exists(key), kv.get(key), kv.list(key), kv.size(key),
                             kv.digest(key), kv.last_modified(key),
                             kv.get_partial(key, 0, 1)):
                    with pytest.raises(InvalidKey):
                        await call
        self.ro(tmp_path, body)

    def test_longest_key_is_fine(self, tmp_path):
        async def body(kv):
            assert await kv.exists("k" * 1024) is None
        self.ro(tmp_path, body)

    def test_close_is_idempotent_and_ends_calls(self, tmp_path):
        async def body(kv):
            kv.close()
            kv.close()
            with pytest.raises(Closed):
                await kv.get("a")
        self.ro(tmp_path, body)


class KvRWConformance(KvROConformance):
    """The read-write contract (:class:`ingot.signatures.KvRW`)."""

    def make_rw(self, tmp_path: Any) -> Any:
        raise NotImplementedError

    async def make_ro(self, tmp_path: Any, files: dict[str, bytes]) -> Any:
        kv = await maybe(self.make_rw(tmp_path))
        async with kv.batch("initial content") as b:
            for key, data in files.items():
                await b.set(key, data)
        return kv

    def rw(self, tmp_path: Any, body: Callable[[Any], Awaitable[None]]) -> None:
        async def main() -> None:
            kv = await maybe(self.make_rw(tmp_path))
            try:
                await body(kv)
            finally:
                kv.close()

        asyncio.run(main())

    def filled(self, tmp_path: Any, body: Callable[[Any], Awaitable[None]]) -> None:
        self.ro(tmp_path, body)

    # -- set ---------------------------------------------------------------
    def test_new_store_is_empty(self, tmp_path):
        async def body(kv):
            assert await kv.exists("") is D
            assert await kv.list("") == []
        self.rw(tmp_path, body)

    def test_set_then_get_and_overwrite(self, tmp_path):
        async def body(kv):
            await kv.set("k", b"one")
            assert await kv.get("k") == b"one"
            await kv.set("k", b"two!")
            assert await kv.get("k") == b"two!"
            assert await kv.size("k") == 4
        self.rw(tmp_path, body)

    def test_set_makes_parent_dictionaries(self, tmp_path):
        async def body(kv):
            await kv.set("x/y/z", b"deep")
            assert await kv.exists("x") is D
            assert await kv.list("x/y") == [("z", V)]
        self.rw(tmp_path, body)

    def test_set_accepts_buffers_and_keeps_no_reference(self, tmp_path):
        async def body(kv):
            buf = bytearray(b"mutable")
            await kv.set("m", buf)
            buf[:] = b"changed"
            assert await kv.get("m") == b"mutable"
            await kv.set("v", memoryview(b"view"))
            assert await kv.get("v") == b"view"
        self.rw(tmp_path, body)

    def test_set_under_a_value_raises_dictionary_expected(self, tmp_path):
        async def body(kv):
            with pytest.raises(DictionaryExpected):
                await kv.set("a/x", b"no")
            with pytest.raises(DictionaryExpected):
                await kv.set("d/b/x/y", b"no")
            assert await kv.get("a") == b"alpha"
            assert await kv.exists("d/b/x") is None
        self.filled(tmp_path, body)

    def test_set_on_a_dictionary_raises_value_expected(self, tmp_path):
        async def body(kv):
            for key in ("d", "d/e", ""):
                with pytest.raises(ValueExpected):
                    await kv.set(key, b"no")
            assert await kv.get("d/e/c") == b"gamma"
        self.filled(tmp_path, body)

    def test_digest_follows_content(self, tmp_path):
        async def body(kv):
            before, dir_before, root_before = (await kv.digest("a"), await kv.digest("d"),
                                               await kv.digest(""))
            await kv.set("a", b"other")
            assert await kv.digest("a") != before
            assert await kv.digest("d") == dir_before
            await kv.set("d/e/c", b"changed")
            assert await kv.digest("d") != dir_before
            assert await kv.digest("") != root_before
            await kv.set("a", b"alpha")
            assert await kv.digest("a") == before
        self.filled(tmp_path, body)

    def test_last_modified_is_write_time(self, tmp_path):
        async def body(kv):
            await kv.set("t", b"now")
            s, _ns = await kv.last_modified("t")
            assert abs(s - time.time()) < 120
            assert (await kv.last_modified(""))[0] >= s - 1
        self.rw(tmp_path, body)

    # -- conditional set ---------------------------------------------------
    def test_if_digest_empty_means_absent(self, tmp_path):
        async def body(kv):
            await kv.set("new", b"1", if_digest=b"")
            assert await kv.get("new") == b"1"
            with pytest.raises(Conflict) as info:
                await kv.set("new", b"2", if_digest=b"")
            assert info.value.key == "new"
            assert info.value.actual == await kv.digest("new")
            assert await kv.get("new") == b"1"
        self.rw(tmp_path, body)

    def test_if_digest_matches_or_conflicts(self, tmp_path):
        async def body(kv):
            old = await kv.digest("a")
            await kv.set("a", b"second", if_digest=old)
            assert await kv.get("a") == b"second"
            with pytest.raises(Conflict):
                await kv.set("a", b"third", if_digest=old)  # stale
            assert await kv.get("a") == b"second"
            with pytest.raises(Conflict):
                await kv.set("absent", b"x", if_digest=old)
            assert await kv.exists("absent") is None
        self.filled(tmp_path, body)

    # -- remove and rename -------------------------------------------------
    def test_remove_value_dictionary_and_absent(self, tmp_path):
        async def body(kv):
            await kv.remove("a")
            assert await kv.exists("a") is None
            await kv.remove("d/e")
            assert await kv.exists("d/e/c") is None and await kv.exists("d/e") is None
            assert await kv.get("d/b") == b"beta"
            await kv.remove("nope")
            await kv.remove("a/b/c")
        self.filled(tmp_path, body)

    def test_a_dictionary_emptied_by_remove_disappears(self, tmp_path):
        async def body(kv):
            await kv.set("p/q/r", b"1")
            await kv.remove("p/q/r")
            assert await kv.exists("p") is None
            assert await kv.list("") == []
            assert await kv.exists("") is D
        self.rw(tmp_path, body)

    def test_remove_root_empties_the_store(self, tmp_path):
        async def body(kv):
            await kv.remove("")
            assert await kv.list("") == []
            await kv.set("again", b"1")
            assert await kv.list("") == [("again", V)]
        self.filled(tmp_path, body)

    def test_rename_value_and_dictionary(self, tmp_path):
        async def body(kv):
            await kv.rename("a", "moved/a")
            assert await kv.exists("a") is None
            assert await kv.get("moved/a") == b"alpha"
            await kv.rename("d", "dd")
            assert await kv.exists("d") is None
            assert await kv.get("dd/e/c") == b"gamma"
            assert await kv.list("dd") == [("b", V), ("e", D)]
        self.filled(tmp_path, body)

    def test_rename_replaces_destination(self, tmp_path):
        async def body(kv):
            await kv.rename("a", "d/b")
            assert await kv.get("d/b") == b"alpha"
            await kv.rename("bin", "d/e")  # a value over a dictionary
            assert await kv.exists("d/e") is V
            assert await kv.exists("d/e/c") is None
        self.filled(tmp_path, body)

    def test_rename_errors(self, tmp_path):
        async def body(kv):
            with pytest.raises(NotFound):
                await kv.rename("nope", "x")
            with pytest.raises(InvalidKey):
                await kv.rename("d", "d/e/inside")
            with pytest.raises(DictionaryExpected):
                await kv.rename("d/b", "a/x")
            assert await kv.get("d/b") == b"beta"
            await kv.rename("a", "a")
            assert await kv.get("a") == b"alpha"
        self.filled(tmp_path, body)

    def test_malformed_keys_raise_invalid_key_on_writes(self, tmp_path):
        async def body(kv):
            for key in BAD_KEYS:
                for call in (kv.set(key, b"x"), kv.remove(key), kv.rename(key, "ok"),
                             kv.rename("ok", key)):
                    with pytest.raises(InvalidKey):
                        await call
                with pytest.raises(InvalidKey):
                    kv.watch(key)
                with pytest.raises(InvalidKey):
                    async with kv.batch() as b:
                        await b.set(key, b"x")
            assert await kv.list("") == []
        self.rw(tmp_path, body)

    # -- batches -----------------------------------------------------------
    def test_batch_applies_everything(self, tmp_path):
        async def body(kv):
            async with kv.batch("several", "Tester <t@example.org>") as b:
                await b.set("x", b"1")
                await b.set("y/z", b"2")
                await b.remove("a")
                await b.remove("d/e")
            assert await kv.get("x") == b"1" and await kv.get("y/z") == b"2"
            assert await kv.exists("a") is None and await kv.exists("d/e") is None
        self.filled(tmp_path, body)

    def test_batch_reads_through_staged_writes(self, tmp_path):
        async def body(kv):
            async with kv.batch() as b:
                await b.set("a", b"staged")
                assert await b.get("a") == b"staged"
                assert await b.get("d/b") == b"beta"
                await b.remove("d")
                with pytest.raises(NotFound):
                    await b.get("d/b")
                await b.set("n/m", b"1")
                with pytest.raises(ValueExpected):
                    await b.get("n")
                assert await kv.get("a") == b"alpha"  # not applied yet
            assert await kv.get("a") == b"staged"
        self.filled(tmp_path, body)

    def batch_applies_nothing(self, tmp_path, error: type[BaseException],
                              last: Callable[[Any], Awaitable[None]]) -> None:
        """A batch whose ``last`` step raises ``error`` leaves the store as it was."""
        async def body(kv):
            before = await kv.digest("")
            with pytest.raises(error):
                async with kv.batch() as b:
                    await b.set("x", b"1")
                    await b.remove("d/b")
                    await last(b)
            assert await kv.exists("x") is None
            assert await kv.get("d/b") == b"beta"
            assert await kv.digest("") == before
        self.filled(tmp_path, body)

    def test_exception_in_batch_applies_nothing(self, tmp_path):
        async def abandon(b):
            raise RuntimeError("abandon")
        self.batch_applies_nothing(tmp_path, RuntimeError, abandon)

    def test_failing_operation_in_batch_applies_nothing(self, tmp_path):
        async def under_a_value(b):
            await b.set("a/under", b"no")  # "a" is a value: fails when applied
        self.batch_applies_nothing(tmp_path, DictionaryExpected, under_a_value)

    def test_a_batch_can_remove_then_reuse_a_name(self, tmp_path):
        async def body(kv):
            async with kv.batch() as b:
                await b.remove("a")
                await b.set("a/now/a/folder", b"1")
                await b.remove("d")
                await b.set("d", b"now a value")
            assert await kv.get("a/now/a/folder") == b"1"
            assert await kv.get("d") == b"now a value"
        self.filled(tmp_path, body)

    def test_empty_batch_is_fine(self, tmp_path):
        async def body(kv):
            async with kv.batch("nothing"):
                pass
            assert await kv.list("") == []
        self.rw(tmp_path, body)

    # -- watching ----------------------------------------------------------
    def test_watch_reports_writes_under_prefix(self, tmp_path):
        async def body(kv):
            everything = kv.watch()
            under_d = kv.watch("d")
            await kv.set("a", b"1")
            await kv.set("d/x", b"2")
            await kv.remove("d/x")
            async with kv.batch() as b:
                await b.set("d/y", b"3")
                await b.set("dz", b"4")
            assert await next_change(under_d) == Change("d/x", True)
            assert await next_change(under_d) == Change("d/x", False)
            assert await next_change(under_d) == Change("d/y", True)
            got = [await next_change(everything) for _ in range(5)]
            assert got == [Change("a", True), Change("d/x", True), Change("d/x", False),
                           Change("d/y", True), Change("dz", True)]
            assert await drain(under_d) == []
            under_d.close()
            under_d.close()
            with pytest.raises(StopAsyncIteration):
                await under_d.__anext__()
            everything.close()
        self.rw(tmp_path, body)

    def test_watch_reports_each_value_of_a_removed_dictionary(self, tmp_path):
        async def body(kv):
            w = kv.watch("d")
            await kv.remove("d/e")
            got = await drain(w)
            assert sorted(got, key=lambda c: c.key) == [
                Change("d/e/c", False), Change("d/e/empty", False), Change("d/e/same", False)]
            w.close()
        self.filled(tmp_path, body)

    def test_watcher_ends_when_its_loop_iterates_and_closes(self, tmp_path):
        async def body(kv):
            w = kv.watch("")
            seen = []

            async def consume():
                async for change in w:
                    seen.append(change)

            task = asyncio.create_task(consume())
            await kv.set("one", b"1")
            await asyncio.sleep(0.05)
            w.close()
            await asyncio.wait_for(task, 2)
            assert Change("one", True) in seen
        self.rw(tmp_path, body)

    def test_closing_the_store_ends_a_waiting_watcher(self, tmp_path):
        async def body(kv):
            w = kv.watch("")
            waiting = asyncio.ensure_future(w.__anext__())
            await asyncio.sleep(0.01)
            kv.close()
            with pytest.raises(Closed):
                await asyncio.wait_for(waiting, 2)
        self.rw(tmp_path, body)

    # -- durability and closing --------------------------------------------
    def test_writes_survive_reopening(self, tmp_path):
        async def write():
            kv = await maybe(self.make_rw(tmp_path))
            await kv.set("kept/a", b"1")
            async with kv.batch("two") as b:
                await b.set("kept/b", b"2")
                await b.set("gone", b"x")
            await kv.remove("gone")
            await kv.rename("kept/a", "kept/c")
            kv.close()

        async def read():
            kv = await maybe(self.make_rw(tmp_path))
            try:
                assert await kv.list("kept") == [("b", V), ("c", V)]
                assert await kv.get("kept/c") == b"1"
                assert await kv.exists("gone") is None
            finally:
                kv.close()

        asyncio.run(write())
        asyncio.run(read())

    def test_writes_after_close_raise_closed(self, tmp_path):
        async def body(kv):
            kv.close()
            kv.close()
            for call in (kv.set("x", b"1"), kv.remove("x"), kv.rename("x", "y")):
                with pytest.raises(Closed):
                    await call
            with pytest.raises(Closed):
                async with kv.batch() as b:
                    await b.set("x", b"1")
            with pytest.raises(Closed):
                kv.watch()
        self.rw(tmp_path, body)
