"""The tests every QubesDB backend passes (the contract of ingot.signatures.QubesDB).

One abstract suite, several backends (as Xandikos tests its stores): a test
class inherits :class:`QubesDBConformance` and defines ``backend(tmp_path,
entries)``, an async context manager yielding ``(db, outside)``: the device
holding ``entries``, and an object whose ``async set(path, value)``
changes the database the way someone else would (dom0 through the daemon,
an editor through the file; ``value`` None removes the path).

Tests are plain functions running their coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ingot.signatures import Closed, DeviceError, InvalidKey, NoSpace

from .kv_conformance import drain, next_change as next_path  # noqa: F401 (re-exported)

ENTRIES: dict[str, bytes] = {
    "/qubes-ip": b"10.137.0.1",
    "/qubes-gateway": b"10.137.0.254",
    "/qubes-primary-dns": b"10.139.1.1",
    "/qubes-firewall/10.137.0.11": b"",
    "/qubes-firewall/10.137.0.11/policy": b"drop",
    "/qubes-firewall/10.137.0.11/0000": b"action=accept proto=tcp dstports=443-443",
    "/qubes-firewall/10.137.0.11/0001": b"action=accept specialtarget=dns",
    "/qubes-firewall/10.137.0.12/policy": b"accept",
    "/qubes-firewall-error": b"none",
    "/mapped-ip/10.137.0.11/visible-ip": b"10.137.0.11",
    "/a.b:c_d-e/F9": "caf\u00e9".encode(),
    "/" + "x" * 62: b"longest path",
}
"""What every test starts from (text values, so that a file can hold them)."""

BAD_PATHS = ["", "qubes-ip", "/qubes-ip/", "/", "/" + "x" * 63, "/sp ace", "/\u00fcml",
             "/x\0y", "/a@b", "/a*", "/new\nline", b"/bytes"]
"""Paths read and write refuse with InvalidKey."""

BAD_PREFIXES = ["qubes", "/" + "x" * 63, "/sp ace", "/x\0y", "/a@"]
"""Prefixes multiread, list and watch refuse with InvalidKey."""

FW = "/qubes-firewall/"
FW11 = "/qubes-firewall/10.137.0.11/"


async def expect(watcher: Any, n: int) -> list[str]:
    """``n`` paths (waiting for each), then any more that come within 0.2 s."""
    return [await next_path(watcher) for _ in range(n)] + await drain(watcher, 0.2)


class QubesDBConformance:
    """The QubesDB contract; see the module docstring."""

    def backend(self, tmp_path: Any, entries: dict[str, bytes]) -> Any:
        raise NotImplementedError

    def run(self, tmp_path: Any, body: Callable[[Any, Any], Awaitable[None]],
            entries: dict[str, bytes] = ENTRIES) -> None:
        async def main() -> None:
            async with self.backend(tmp_path, entries) as (db, outside):
                try:
                    await body(db, outside)
                finally:
                    db.close()

        asyncio.run(main())

    # -- read ----------------------------------------------------------------
    def test_read_every_entry(self, tmp_path):
        async def body(db, _):
            for path, value in ENTRIES.items():
                assert await db.read(path) == value, path
        self.run(tmp_path, body)

    def test_read_absent_is_none(self, tmp_path):
        async def body(db, _):
            for path in ("/nope", "/qubes-firewall", "/qubes-ip-x", "/qubes-firewall/10.137.0.1"):
                assert await db.read(path) is None, path
        self.run(tmp_path, body)

    def test_bad_paths_are_refused(self, tmp_path):
        async def body(db, _):
            for path in BAD_PATHS:
                with pytest.raises(InvalidKey) as info:
                    await db.read(path)
                assert info.value.reason, path
                with pytest.raises(InvalidKey):
                    await db.write(path, b"x")
            assert await db.read("/qubes-ip") == b"10.137.0.1"  # still usable
        self.run(tmp_path, body)

    def test_bad_prefixes_are_refused(self, tmp_path):
        async def body(db, _):
            for prefix in BAD_PREFIXES:
                with pytest.raises(InvalidKey):
                    await db.multiread(prefix)
                with pytest.raises(InvalidKey):
                    await db.list(prefix)
                with pytest.raises(InvalidKey):
                    db.watch(prefix)
        self.run(tmp_path, body)

    # -- multiread and list ----------------------------------------------------
    def test_multiread_a_prefix(self, tmp_path):
        async def body(db, _):
            got = await db.multiread(FW11)
            assert got == {p: v for p, v in ENTRIES.items() if p.startswith(FW11)}
            assert list(got) == sorted(got)
            assert len(got) == 3
        self.run(tmp_path, body)

    def test_multiread_matches_by_string_prefix(self, tmp_path):
        async def body(db, _):
            assert set(await db.multiread("/qubes-firewall")) == {
                p for p in ENTRIES if p.startswith("/qubes-firewall")}
            assert "/qubes-firewall-error" not in await db.multiread(FW)
            assert await db.multiread("/qubes-firewall/10.137.0.11") == {
                p: v for p, v in ENTRIES.items() if p.startswith("/qubes-firewall/10.137.0.11")}
            assert await db.multiread("/nothing/") == {}
            assert await db.multiread("/qubes-ip") == {"/qubes-ip": b"10.137.0.1"}
        self.run(tmp_path, body)

    def test_multiread_everything(self, tmp_path):
        async def body(db, _):
            assert await db.multiread("") == dict(sorted(ENTRIES.items()))
            assert await db.multiread("/") == dict(sorted(ENTRIES.items()))
        self.run(tmp_path, body)

    def test_list_is_sorted_paths(self, tmp_path):
        async def body(db, _):
            assert await db.list("") == sorted(ENTRIES)
            assert await db.list(FW) == sorted(p for p in ENTRIES if p.startswith(FW))
            assert await db.list("/none") == []
        self.run(tmp_path, body)

    # -- write -------------------------------------------------------------------
    def test_write_then_read_list_multiread(self, tmp_path):
        async def body(db, _):
            await db.write("/qubes-firewall-error/10.137.0.11", b"bad rule 0003")
            await db.write("/qubes-ip", b"10.137.0.2")
            await db.write("/bin", bytes(range(1, 256)))
            assert await db.read("/qubes-firewall-error/10.137.0.11") == b"bad rule 0003"
            assert await db.read("/qubes-ip") == b"10.137.0.2"
            assert await db.read("/bin") == bytes(range(1, 256))
            assert "/qubes-firewall-error/10.137.0.11" in await db.list("/qubes-firewall-")
            assert (await db.multiread("/qubes-ip"))["/qubes-ip"] == b"10.137.0.2"
        self.run(tmp_path, body)

    def test_write_empty_and_longest_path(self, tmp_path):
        async def body(db, _):
            await db.write("/qubes-firewall/10.137.0.12", b"")
            assert await db.read("/qubes-firewall/10.137.0.12") == b""
            longest = "/" + "y" * 62
            await db.write(longest, b"v")
            assert await db.read(longest) == b"v"
        self.run(tmp_path, body)

    def test_value_limit(self, tmp_path):
        async def body(db, _):
            await db.write("/big", b"v" * 3072)
            assert await db.read("/big") == b"v" * 3072
            with pytest.raises(NoSpace) as info:
                await db.write("/big", b"w" * 3073)
            assert info.value.need == 3073
            assert await db.read("/big") == b"v" * 3072
            with pytest.raises(NoSpace):
                await db.write("/other", b"w" * 3073)
            assert await db.read("/other") is None
        self.run(tmp_path, body)

    def test_nul_in_a_value_is_refused(self, tmp_path):
        async def body(db, _):
            with pytest.raises(DeviceError, match="NUL"):
                await db.write("/nul", b"a\0b")
            assert await db.read("/nul") is None
            assert await db.read("/qubes-ip") == b"10.137.0.1"
        self.run(tmp_path, body)

    # -- watch -------------------------------------------------------------------
    def test_watch_an_exact_path(self, tmp_path):
        async def body(db, _):
            w = db.watch("/qubes-firewall/10.137.0.11")
            await db.write("/qubes-firewall/10.137.0.11/0002", b"action=drop")
            await db.write("/qubes-firewall/10.137.0.110", b"")
            await db.write("/qubes-firewall/10.137.0.11", b"")
            assert await next_path(w) == "/qubes-firewall/10.137.0.11"
            assert await drain(w) == []
            w.close()
        self.run(tmp_path, body)

    def test_watch_a_prefix(self, tmp_path):
        async def body(db, _):
            w = db.watch(FW)
            await db.write("/qubes-firewall-error/x", b"e")
            await db.write("/qubes-firewall", b"not under it")
            await db.write("/qubes-firewall/10.137.0.13/policy", b"drop")
            await db.write("/qubes-firewall/10.137.0.13", b"")
            assert [await next_path(w), await next_path(w)] == [
                "/qubes-firewall/10.137.0.13/policy", "/qubes-firewall/10.137.0.13"]
            assert await drain(w) == []
            w.close()
        self.run(tmp_path, body)

    def test_watch_everything(self, tmp_path):
        async def body(db, _):
            w = db.watch("")
            await db.write("/a", b"1")
            await db.write("/b/c", b"2")
            assert [await next_path(w), await next_path(w)] == ["/a", "/b/c"]
            w.close()
        self.run(tmp_path, body)

    def test_watch_sees_changes_from_now_on_and_every_write(self, tmp_path):
        async def body(db, _):
            await db.write("/qubes-firewall/10.137.0.11", b"")
            w = db.watch("/qubes-firewall/10.137.0.11")
            for _ in range(3):  # the reload trigger writes the same empty value each time
                await db.write("/qubes-firewall/10.137.0.11", b"")
            assert [await next_path(w) for _ in range(3)] == ["/qubes-firewall/10.137.0.11"] * 3
            assert await drain(w) == []
            w.close()
        self.run(tmp_path, body)

    def test_watch_sees_outside_changes(self, tmp_path):
        async def body(db, outside):
            w = db.watch(FW11)
            # a call after watch() answers after the watch is in place (on the socket,
            # the daemon takes WATCH before that call): what it misses, the watch sees
            assert "/qubes-firewall/10.137.0.11/0002" not in await db.list(FW11)
            await outside.set("/qubes-firewall/10.137.0.11/0002", b"action=drop")
            assert await next_path(w) == "/qubes-firewall/10.137.0.11/0002"
            assert await db.read("/qubes-firewall/10.137.0.11/0002") == b"action=drop"
            await outside.set("/qubes-firewall/10.137.0.11/policy", b"accept")
            assert await next_path(w) == "/qubes-firewall/10.137.0.11/policy"
            assert await db.read("/qubes-firewall/10.137.0.11/policy") == b"accept"
            await outside.set("/qubes-firewall/10.137.0.11/0000", None)
            assert await next_path(w) == "/qubes-firewall/10.137.0.11/0000"
            assert await db.read("/qubes-firewall/10.137.0.11/0000") is None
            await outside.set("/qubes-ip", b"10.137.0.9")  # not under the prefix
            assert await drain(w) == []
            assert await db.read("/qubes-ip") == b"10.137.0.9"
            w.close()
        self.run(tmp_path, body)

    def test_each_watcher_sees_each_change_once(self, tmp_path):
        async def body(db, _):
            a, b = db.watch(FW), db.watch(FW)
            c, d = db.watch(FW11), db.watch("/qubes-firewall/10.137.0.11/0000")
            await db.write("/qubes-firewall/10.137.0.11/0000", b"action=drop")
            await db.write("/qubes-firewall/10.137.0.12/0000", b"action=drop")
            assert await expect(a, 2) == ["/qubes-firewall/10.137.0.11/0000",
                                      "/qubes-firewall/10.137.0.12/0000"]
            assert await expect(b, 2) == ["/qubes-firewall/10.137.0.11/0000",
                                      "/qubes-firewall/10.137.0.12/0000"]
            assert await expect(c, 1) == ["/qubes-firewall/10.137.0.11/0000"]
            assert await expect(d, 1) == ["/qubes-firewall/10.137.0.11/0000"]
            for w in (a, b, c, d):
                w.close()
        self.run(tmp_path, body)

    def test_closing_one_watcher_leaves_the_others(self, tmp_path):
        async def body(db, _):
            a, b = db.watch(FW), db.watch(FW)
            a.close()
            a.close()
            with pytest.raises(StopAsyncIteration):
                await a.__anext__()
            await db.write("/qubes-firewall/10.137.0.14", b"")
            assert await next_path(b) == "/qubes-firewall/10.137.0.14"
            c = db.watch(FW)  # watching again after a close
            b.close()
            await db.write("/qubes-firewall/10.137.0.15", b"")
            assert await next_path(c) == "/qubes-firewall/10.137.0.15"
            c.close()
        self.run(tmp_path, body)

    def test_watcher_close_ends_a_waiting_iteration(self, tmp_path):
        async def body(db, _):
            w = db.watch(FW)
            seen = []

            async def loop():
                async for path in w:
                    seen.append(path)

            task = asyncio.ensure_future(loop())
            await db.write("/qubes-firewall/1", b"")
            await asyncio.sleep(0.1)
            w.close()
            await asyncio.wait_for(task, 5)
            assert seen == ["/qubes-firewall/1"]
        self.run(tmp_path, body)

    # -- close -------------------------------------------------------------------
    def test_close_ends_watchers_and_calls(self, tmp_path):
        async def body(db, _):
            w = db.watch(FW)
            waiting = asyncio.ensure_future(w.__anext__())
            await asyncio.sleep(0.05)
            db.close()
            db.close()
            with pytest.raises(Closed):
                await asyncio.wait_for(waiting, 5)
            with pytest.raises(Closed):
                await w.__anext__()
            w.close()
            with pytest.raises(Closed):
                await db.read("/qubes-ip")
            with pytest.raises(Closed):
                await db.write("/qubes-ip", b"x")
            with pytest.raises(Closed):
                await db.multiread("")
            with pytest.raises(Closed):
                await db.list("")
            with pytest.raises(Closed):
                db.watch(FW)
        self.run(tmp_path, body)

    def test_concurrent_calls(self, tmp_path):
        async def body(db, _):
            paths = sorted(ENTRIES) * 5
            got = await asyncio.gather(*(db.read(p) for p in paths),
                                       db.multiread(FW11), db.list(""))
            assert got[:len(paths)] == [ENTRIES[p] for p in paths]
            assert len(got[-2]) == 3 and got[-1] == sorted(ENTRIES)
        self.run(tmp_path, body)
