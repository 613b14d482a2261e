"""Every mail store backend against the shared suite, plus what is particular to each.

Run as a module for the delivery benchmark (no test asserts a wall-clock time;
``BENCH_DIR`` picks the file system, default the temporary folder)::

    python -m tests.integration.test_mailstore bench
"""

from __future__ import annotations

import asyncio
import json
import mailbox
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from ingot.plugins.kv import direct, memory
from ingot.plugins.kv.git import GitStore
from ingot.plugins.mailstore.kvstore import KvMailStore
from ingot.plugins.mailstore.maildir import MaildirStore
from ingot.plugins.mailstore.store import INBOX, InvalidFlag, StoreFailure
from ingot.signatures import StoreError

from .mailstore_conformance import MSG, MailStoreConformance

GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


class OwningKvMailStore(KvMailStore):
    """A KvMailStore that also closes its kv device (the suite's reopen)."""

    def close(self) -> None:
        super().close()
        self._kv.close()


# --------------------------------------------------------------------------
# the shared suite, per backend


class TestMaildir(MailStoreConformance):
    def make_store(self, tmp_path):
        return MaildirStore(str(tmp_path / "mail"))


class TestMaildirLoopThread(MailStoreConformance):
    """The same store with its file I/O on the event loop's thread."""

    def make_store(self, tmp_path):
        return MaildirStore(str(tmp_path / "mail"), threads=False)


_MEMORY: dict[str, memory.MemoryStore] = {}


class TestKvMemory(MailStoreConformance):
    def make_store(self, tmp_path):
        # memory keeps data while the kv object lives: reopening reuses it
        kv = _MEMORY.setdefault(str(tmp_path), memory.MemoryStore())
        return KvMailStore(kv)


class TestKvDirect(MailStoreConformance):
    def make_store(self, tmp_path):
        return OwningKvMailStore(direct.DirectStore(str(tmp_path / "kv"), poll=0))


class TestKvGit(MailStoreConformance):
    def make_store(self, tmp_path):
        return OwningKvMailStore(GitStore(str(tmp_path / "mail.git"), init=True))

    def test_one_commit_per_change(self, tmp_path):
        async def body(s):
            await s.deliver("alice", MSG)
            await s.deliver("alice", MSG)
            await s.set_flags("alice", INBOX, 2, ["\\Seen"])
            await s.remove("alice", INBOX, [1])
        self.run(tmp_path, body)
        log = subprocess.run(["git", "-C", str(tmp_path / "mail.git"), "log", "--format=%s",
                              "main"], capture_output=True, text=True, check=True,
                             env=dict(os.environ, **GIT_ENV)).stdout.splitlines()
        assert log == ["expunge alice/INBOX uids 1", "flags alice/INBOX uid 2",
                       "deliver to alice/INBOX uid 2", "deliver to alice/INBOX uid 1",
                       "create alice/INBOX"]


# --------------------------------------------------------------------------
# kv specifics


class FailingMemory(memory.MemoryStore):
    """Refuses every write while ``fail`` is set."""

    fail = False

    async def _apply(self, ops, message, author):
        if self.fail:
            raise StoreError("disk on fire")
        return await super()._apply(ops, message, author)


def test_kv_failed_delivery_leaves_nothing():
    async def main():
        kv = FailingMemory()
        s = KvMailStore(kv)
        assert await s.deliver("alice", b"first") == 1
        kv.fail = True
        with pytest.raises(StoreFailure):
            await s.deliver("alice", b"lost")
        results = await asyncio.gather(*(s.deliver("alice", b"x") for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, StoreFailure) for r in results)
        kv.fail = False
        assert [m.uid for m in await s.list("alice", INBOX)] == [1]
        again = KvMailStore(kv)
        assert await again.deliver("alice", b"second") == 2
        assert await again.get("alice", INBOX, 2) == b"second"
    asyncio.run(main())


def test_kv_layout_and_grouped_deliveries():
    async def main():
        kv = memory.MemoryStore()
        s = KvMailStore(kv)
        uids = await asyncio.gather(*(s.deliver("alice", b"m%d" % i, mailbox="inbox")
                                      for i in range(20)))
        assert sorted(uids) == list(range(1, 21))
        meta = json.loads(await kv.get("alice/INBOX/meta"))
        assert meta["uidnext"] == 21
        assert await kv.get("alice/INBOX/m/0/0/7") == b"m%d" % uids.index(7)
        info = json.loads(await kv.get("alice/INBOX/i/0/0/7"))
        assert info["size"] == len(b"m%d" % uids.index(7)) and info["flags"] == []
        await s.create_mailbox("alice", "Lists/x.y")
        assert await kv.exists("alice/Lists%2Fx.y/meta") is not None
    asyncio.run(main())


# --------------------------------------------------------------------------
# Maildir specifics


def _clock(start=1_700_000_000.0):
    t = [start]

    def clock():
        t[0] += 0.001
        return t[0]
    return clock


def _random():
    n = [0]

    def rnd(k):
        n[0] += 1
        return n[0].to_bytes(k, "big")
    return rnd


def test_maildir_layout_is_real_maildir(tmp_path):
    root = tmp_path / "mail"

    async def main():
        s = MaildirStore(str(root), clock=_clock(), random=_random(), hostname="mx/1:a")
        try:
            uid = await s.deliver("alice", MSG)
            (name,) = os.listdir(root / "alice" / "new")
            # <sec>.M<usec>P<pid>Q<n>R<random>.<host, / and : escaped>,S=<size>,U=<uid>
            pattern = rf"1700000000\.M\d+P{os.getpid()}Q\d+R0{{15}}\d\.mx\\0571\\072a" \
                      rf",S={len(MSG)},U={uid}"
            assert re.fullmatch(pattern, name), name
            assert (root / "alice" / "new" / name).read_bytes() == MSG
            assert os.listdir(root / "alice" / "tmp") == []
            await s.list("alice", INBOX)  # moves it to cur/
            assert os.listdir(root / "alice" / "new") == []
            (cur,) = os.listdir(root / "alice" / "cur")
            assert cur == name + ":2,"
            await s.set_flags("alice", INBOX, uid, ["\\Seen", "\\Answered", "\\Flagged",
                                                    "\\Deleted", "\\Draft", "Work", "$Later"])
            (cur,) = os.listdir(root / "alice" / "cur")
            assert cur == name + ":2,DFRSTab"
            assert (root / "alice" / "dovecot-keywords").read_text() in (
                "0 Work\n1 $Later\n", "0 $Later\n1 Work\n")
            flagged = await s.deliver("alice", b"flagged", flags=["\\Seen"])
            assert any(n.endswith(f",U={flagged}:2,S") for n in os.listdir(root / "alice" / "cur"))
            await s.create_mailbox("alice", "Lists/ietf.org")
            folder = root / "alice" / ".Lists.ietf%2Eorg"
            assert sorted(os.listdir(folder)) == ["cur", "ingot-state", "maildirfolder", "new",
                                                  "tmp"]
            state = json.loads((root / "alice" / "ingot-state").read_text())
            assert set(state) == {"uidvalidity", "uidnext"}
            assert (await s.status("alice", INBOX)).uidvalidity == state["uidvalidity"]
        finally:
            s.close()
    asyncio.run(main())


def test_maildir_is_readable_by_python_mailbox(tmp_path):
    root = tmp_path / "mail"
    datas = [MSG, b"Subject: two\n\nbody \xff\n", bytes(range(256))]

    async def main():
        s = MaildirStore(str(root))
        try:
            for data in datas:
                await s.deliver("alice", data)
            await s.deliver("alice", b"seen", flags=["\\Seen"])
            await s.create_mailbox("alice", "Archive")
            await s.deliver("alice", b"archived", mailbox="Archive")
            return await s.list("alice", INBOX)
        finally:
            s.close()
    infos = asyncio.run(main())
    md = mailbox.Maildir(str(root / "alice"), factory=None, create=False)
    got = sorted(md.get_bytes(k) for k in md.keys())
    assert got == sorted(datas + [b"seen"])
    assert len(infos) == 4
    seen = [md.get_message(k) for k in md.keys() if md.get_bytes(k) == b"seen"]
    assert "S" in seen[0].get_flags()
    assert md.list_folders() == ["Archive"]
    archive = md.get_folder("Archive")
    assert [archive.get_bytes(k) for k in archive.keys()] == [b"archived"]


def test_maildir_foreign_deliveries_get_uids(tmp_path):
    root = tmp_path / "mail"

    async def main():
        s = MaildirStore(str(root))
        try:
            first = await s.deliver("alice", b"ours")
            # another agent (procmail, mutt) drops messages in new/ and cur/
            (root / "alice" / "new" / "1.foreign.host").write_bytes(b"foreign new")
            (root / "alice" / "cur" / "2.foreign.host:2,S").write_bytes(b"foreign cur")
            os.utime(root / "alice" / "cur" / "2.foreign.host:2,S", (1_000, 1_000))
            infos = await s.list("alice", INBOX)
            assert [m.uid for m in infos] == [first, first + 1, first + 2]
            by_uid = {m.uid: m for m in infos}
            assert await s.get("alice", INBOX, first + 1) == b"foreign cur"  # older first
            assert by_uid[first + 1].flags == {"\\Seen"}
            assert by_uid[first + 1].internal_date == 1_000
            assert await s.get("alice", INBOX, first + 2) == b"foreign new"
            assert by_uid[first + 2].size == len(b"foreign new")
            # a hand-made copy of a file (same U=) gets a UID of its own
            (cur,) = [n for n in os.listdir(root / "alice" / "cur") if n.startswith("2.")]
            data = (root / "alice" / "cur" / cur).read_bytes()
            (root / "alice" / "cur" / ("copy-" + cur)).write_bytes(data)
            infos = await s.list("alice", INBOX)
            assert [m.uid for m in infos] == [first, first + 1, first + 2, first + 3]
        finally:
            s.close()
        s = MaildirStore(str(root))
        try:
            assert len(await s.list("alice", INBOX)) == 4
            assert await s.deliver("alice", b"next") == first + 4
        finally:
            s.close()
    asyncio.run(main())


def test_maildir_one_store_per_root(tmp_path):
    s = MaildirStore(str(tmp_path / "mail"))
    try:
        with pytest.raises(StoreFailure):
            MaildirStore(str(tmp_path / "mail"))
    finally:
        s.close()
    MaildirStore(str(tmp_path / "mail")).close()


def test_maildir_at_most_26_keywords(tmp_path):
    async def main():
        s = MaildirStore(str(tmp_path / "mail"))
        try:
            uid = await s.deliver("alice", MSG)
            await s.set_flags("alice", INBOX, uid, [f"k{i}" for i in range(26)])
            with pytest.raises(InvalidFlag):
                await s.set_flags("alice", INBOX, uid, ["k26"])
            (m,) = await s.list("alice", INBOX)
            assert len(m.flags) == 26
        finally:
            s.close()
    asyncio.run(main())


def test_maildir_tmp_cleanup(tmp_path):
    root = tmp_path / "mail"
    now = time.time()
    s = MaildirStore(str(root))
    asyncio.run(s.deliver("alice", MSG))
    s.close()
    tmp = root / "alice" / "tmp"
    (tmp / "old").write_bytes(b"half")
    os.utime(tmp / "old", (now - 37 * 3600, now - 37 * 3600))
    (tmp / "recent").write_bytes(b"someone writing")
    (tmp / "ingot-trash-x").mkdir()
    s = MaildirStore(str(root))
    try:
        assert len(asyncio.run(s.list("alice", INBOX))) == 1
    finally:
        s.close()
    assert sorted(os.listdir(tmp)) == ["recent"]


CHILD = r"""
import asyncio, sys
from ingot.plugins.mailstore.maildir import MaildirStore

def body(i):
    head = b"Subject: %d\r\n\r\n" % i
    return head + bytes([i % 251]) * (20000 + 997 * (i % 50))

async def main():
    s = MaildirStore(sys.argv[1])
    i = 0
    while True:
        uid = await s.deliver("alice", body(i))
        sys.stdout.write(f"{i} {uid}\n")
        sys.stdout.flush()
        i += 1

asyncio.run(main())
"""


def _child_body(i: int) -> bytes:
    head = b"Subject: %d\r\n\r\n" % i
    return head + bytes([i % 251]) * (20000 + 997 * (i % 50))


@pytest.mark.parametrize("after", [5, 40, 120])
def test_maildir_kill_9_durability(tmp_path, after):
    root = tmp_path / "mail"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    printed = []
    try:
        assert proc.stdout is not None
        while len(printed) < after:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no output")
            i, uid = map(int, line.split())
            printed.append((i, uid))
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
        printed += [tuple(map(int, ln.split())) for ln in rest.splitlines() if ln.strip()]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # no partial file in new/ or cur/: every file there is a whole message
    for sub in ("new", "cur"):
        for name in os.listdir(root / "alice" / sub):
            data = (root / "alice" / sub / name).read_bytes()
            i = int(data.split(b"\r\n", 1)[0].split()[1])
            assert data == _child_body(i), name

    async def check():
        s = MaildirStore(str(root))
        try:
            listed = {m.uid for m in await s.list("alice", INBOX)}
            for i, uid in printed:
                assert uid in listed
                assert await s.get("alice", INBOX, uid) == _child_body(i)
            assert await s.deliver("alice", b"after") > max(uid for _, uid in printed)
        finally:
            s.close()
    asyncio.run(check())


# --------------------------------------------------------------------------
# benchmark (not a test): python -m tests.integration.test_mailstore bench


async def _bench_one(make, n: int, concurrency: int) -> float:
    store = make()
    try:
        await store.deliver("warm", MSG)
        data = MSG * 40  # ~2.6 KB
        start = time.perf_counter()
        if concurrency == 1:
            for _ in range(n):
                await store.deliver("alice", data)
        else:
            async def worker(k: int) -> None:
                for _ in range(n // concurrency):
                    await store.deliver("alice", data)
            await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
        assert len(await store.list("alice", INBOX)) == n
        return n / elapsed
    finally:
        store.close()


def _raw_rate(folder: str, n: int) -> float:
    """The peer: a bare durable Maildir delivery loop (write, fsync, rename, fsync dir)."""
    os.makedirs(os.path.join(folder, "tmp"))
    os.makedirs(os.path.join(folder, "new"))
    dfd = os.open(os.path.join(folder, "new"), os.O_RDONLY)
    data = MSG * 40
    start = time.perf_counter()
    for i in range(n):
        path = os.path.join(folder, "tmp", str(i))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(path, os.path.join(folder, "new", str(i)))
        os.fsync(dfd)
    os.close(dfd)
    return n / (time.perf_counter() - start)


def bench(n: int = 2000) -> None:
    import tempfile
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        raw = _raw_rate(d, n)
    print(f"{'raw fsync loop (peer)':24} concurrency  1: {raw:8.0f} deliveries/s")
    backends = {
        "maildir (loop thread)": lambda d: MaildirStore(os.path.join(d, "m"), threads=False),
        "maildir (threads)": lambda d: MaildirStore(os.path.join(d, "m")),
        "kv direct": lambda d: OwningKvMailStore(direct.DirectStore(os.path.join(d, "kv"),
                                                                    poll=0)),
        "kv git": lambda d: OwningKvMailStore(GitStore(os.path.join(d, "g.git"), init=True)),
        "kv memory": lambda d: KvMailStore(memory.MemoryStore()),
    }
    for name, make in backends.items():
        for conc in (1, 10):
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
                count = n if "git" not in name else n // 4
                rate = asyncio.run(_bench_one(lambda: make(d), count, conc))
            print(f"{name:24} concurrency {conc:2}: {rate:8.0f} deliveries/s"
                  f"  ({rate / raw:.2f} x raw)")


if __name__ == "__main__" and sys.argv[1:] == ["bench"]:
    bench()
