"""``kv_rw/direct`` after a crash: every batch is there wholly or not at all.

A child process writes and dies at a chosen step (``os._exit`` in place of
the step), or is killed with SIGKILL at a random moment while it writes;
the test then reopens the folder and checks what it finds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest

from ingot.plugins.kv.direct import DirectStore

CHILD = textwrap.dedent('''
    import asyncio, os, sys
    from ingot.plugins.kv import direct

    root, step = sys.argv[1], sys.argv[2]
    real_replace = os.replace
    renames = []

    def die(*args, **kwargs):
        os._exit(9)

    def replace_then_die(src, dst):
        real_replace(src, dst)
        renames.append(dst)
        if step == "mid-apply" and len(renames) == 2:  # journal in place + one value
            os._exit(9)

    async def main():
        kv = direct.DirectStore(root)
        if step == "before-journal":
            direct.DirectStore._write_journal = die
        elif step == "after-journal":
            direct.DirectStore._roll_forward = die
        elif step == "mid-apply":
            direct.os.replace = replace_then_die
        elif step == "single-set":
            direct.os.replace = die
            await kv.set("a", b"never")
        async with kv.batch() as b:
            await b.set("a", b"new a")
            await b.set("b", b"new b")
            await b.set("c/new", b"new c")
            await b.remove("d")
        os._exit(0)

    asyncio.run(main())
''')

LOOP = textwrap.dedent('''
    import asyncio, sys
    from ingot.plugins.kv import direct

    async def main():
        kv = direct.DirectStore(sys.argv[1])
        n = 0
        while True:
            n += 1
            async with kv.batch() as b:
                await b.set("x", b"%d" % n)
                await b.set("deep/y", b"%d" % n)
                await b.remove("log")
                await b.set("log/%d" % n, b"entry")
            await kv.set("single", b"%d" % n * 1000)

    asyncio.run(main())
''')


def _prepare(root) -> None:
    async def main():
        kv = DirectStore(str(root))
        async with kv.batch() as b:
            await b.set("a", b"old a")
            await b.set("b", b"old b")
            await b.set("d/x", b"1")
            await b.set("d/y/z", b"2")
        kv.close()
    asyncio.run(main())


def _state(root) -> dict[str, bytes]:
    async def main():
        kv = DirectStore(str(root))
        out = {}
        try:
            for key in ("a", "b", "c/new", "d/x", "d/y/z"):
                if await kv.exists(key):
                    out[key] = await kv.get(key)
        finally:
            kv.close()
        return out
    return asyncio.run(main())


OLD = {"a": b"old a", "b": b"old b", "d/x": b"1", "d/y/z": b"2"}
NEW = {"a": b"new a", "b": b"new b", "c/new": b"new c"}


def _leftovers(root) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith(".ingot-") and n != ".ingot-lock")


@pytest.mark.parametrize("step, expected", [
    ("before-journal", OLD),
    ("after-journal", NEW),
    ("mid-apply", NEW),
    ("single-set", OLD),
])
def test_crash_at_each_step_leaves_all_or_nothing(tmp_path, step, expected):
    root = tmp_path / "store"
    _prepare(root)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), step], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    if step in ("after-journal", "mid-apply"):
        assert (root / ".ingot-journal").exists()
    else:
        assert any(n.startswith(".ingot-tmp-") for n in os.listdir(root))
    assert _state(root) == expected
    assert _leftovers(root) == []
    assert _state(root) == expected  # and recovery is stable


def test_a_finished_batch_needs_no_recovery(tmp_path):
    root = tmp_path / "store"
    _prepare(root)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), "none"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert _leftovers(root) == []
    assert _state(root) == NEW


def test_another_store_rolls_a_dead_writers_journal_forward_before_writing(tmp_path):
    root = tmp_path / "store"
    _prepare(root)

    async def main():
        kv = DirectStore(str(root))
        proc = subprocess.run([sys.executable, "-c", CHILD, str(root), "after-journal"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 9
        await kv.set("other", b"1")  # finishes the dead writer's batch first
        assert await kv.get("c/new") == b"new c"
        assert await kv.exists("d") is None
        kv.close()
    asyncio.run(main())


def test_an_unreadable_journal_stops_the_store(tmp_path):
    root = tmp_path / "store"
    _prepare(root)
    (root / ".ingot-journal").write_text('{"format": 1, "remove": ["../../etc"], "put": []}')
    from ingot.signatures import StoreError
    with pytest.raises(StoreError, match="journal"):
        DirectStore(str(root))
    assert (tmp_path / "store" / "a").read_bytes() == b"old a"


@pytest.mark.parametrize("delay", [0.15, 0.3, 0.45])
def test_killed_at_a_random_moment_the_batches_stay_whole(tmp_path, delay):
    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", LOOP, str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (root / "x").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, f"the writer exited with {proc.returncode}"
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        proc.kill()
        proc.wait()

    async def check():
        kv = DirectStore(str(root))
        try:
            x = await kv.get("x")
            assert await kv.get("deep/y") == x
            assert await kv.list("log") == [(x.decode(), await kv.exists("log/" + x.decode()))]
            single = await kv.get("single")
            assert single == single[:len(single) // 1000] * 1000  # never a torn value
        finally:
            kv.close()

    asyncio.run(check())
    assert _leftovers(root) == []
