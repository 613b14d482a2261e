"""``kv_rw/git`` push and pull against real remotes: a bare repository by path
and ``file://``, and the same served by ``git daemon`` on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time

import pytest

from ingot.plugins.kv.git import GitStore
from ingot.signatures import Change, Conflict, Kind, RemoteError

GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "Cli", "GIT_AUTHOR_EMAIL": "cli@example.org",
           "GIT_COMMITTER_NAME": "Cli", "GIT_COMMITTER_EMAIL": "cli@example.org",
           "GIT_TERMINAL_PROMPT": "0"}


def git(*args, cwd=None) -> str:
    return subprocess.run(["git", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                          text=True, env=dict(os.environ, **GIT_ENV), timeout=60).stdout


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def next_change(watcher, timeout=5.0) -> Change:
    return await asyncio.wait_for(watcher.__anext__(), timeout)


@pytest.fixture
def served(tmp_path):
    """A folder of bare repositories and the git:// URL that serves it."""
    base = tmp_path / "served"
    base.mkdir()
    git("init", "-q", "--bare", "-b", "main", base / "remote.git")
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--export-all", "--enable=receive-pack", "--reuseaddr",
         "--informative-errors", f"--base-path={base}", "--listen=127.0.0.1",
         f"--port={port}", str(base)],
        env=dict(os.environ, **GIT_ENV), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, "git daemon exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield base, f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def bare(tmp_path):
    path = tmp_path / "bare.git"
    git("init", "-q", "--bare", "-b", "main", path)
    return path


def _exchange(tmp_path, remote: str, remote_git_dir) -> None:
    async def main():
        a = GitStore(str(tmp_path / "a.git"), init=True, remote=remote)
        b = GitStore(str(tmp_path / "b.git"), init=True, remote=remote)
        assert await b.pull() is False  # nothing there yet
        await a.set("contacts/alice.vcf", b"BEGIN:VCARD")
        async with a.batch("two at once", "Bob <bob@example.org>") as batch:
            await batch.set("contacts/bob.vcf", b"BEGIN:VCARD bob")
            await batch.set("calendar/x.ics", b"BEGIN:VCALENDAR")
        await a.push()
        await a.push()  # nothing new: fine
        watcher = b.watch("contacts")
        assert await b.pull() is True
        assert await b.get("contacts/bob.vcf") == b"BEGIN:VCARD bob"
        assert await b.list("") == [("calendar", Kind.DICTIONARY),
                                    ("contacts", Kind.DICTIONARY)]
        got = {await next_change(watcher), await next_change(watcher)}
        assert got == {Change("contacts/alice.vcf", True), Change("contacts/bob.vcf", True)}
        assert await b.pull() is False
        # and back: b writes, pushes, a pulls
        await b.remove("calendar")
        await b.push()
        assert await a.pull() is True
        assert await a.exists("calendar") is None
        a.close()
        b.close()

    asyncio.run(main())
    log = git("--git-dir", remote_git_dir, "log", "--format=%an|%s", "main").splitlines()
    assert log == ["Ingot|remove calendar", "Bob|two at once", "Ingot|set contacts/alice.vcf"]


def test_exchange_through_a_path(tmp_path, bare):
    _exchange(tmp_path, str(bare), bare)


def test_exchange_through_a_file_url(tmp_path, bare):
    _exchange(tmp_path, f"file://{bare}", bare)


def test_exchange_through_git_daemon(tmp_path, served):
    base, url = served
    _exchange(tmp_path, f"{url}/remote.git", base / "remote.git")


def test_a_commit_made_with_git_in_a_clone_is_pulled_and_watched(tmp_path, served):
    base, url = served
    remote = f"{url}/remote.git"
    work = tmp_path / "work"

    async def main():
        kv = GitStore(str(tmp_path / "kv.git"), init=True, remote=remote)
        await kv.set("notes/first", b"1")
        await kv.push()
        git("clone", "-q", remote, work)
        (work / "notes" / "second").write_text("written by hand")
        (work / "notes" / "first").write_text("changed by hand")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "by hand", cwd=work)
        git("push", "-q", "origin", "main", cwd=work)
        watcher = kv.watch("notes")
        assert await kv.pull() is True
        got = {await next_change(watcher), await next_change(watcher)}
        assert got == {Change("notes/first", True), Change("notes/second", True)}
        assert await kv.get("notes/second") == b"written by hand"
        head = git("rev-parse", "HEAD", cwd=work).strip()
        assert git("--git-dir", tmp_path / "kv.git", "rev-parse", "main").strip() == head
        kv.close()

    asyncio.run(main())


def test_diverged_histories_conflict_and_refuse_to_push(tmp_path, served):
    base, url = served
    remote = f"{url}/remote.git"

    async def main():
        a = GitStore(str(tmp_path / "a.git"), init=True, remote=remote)
        b = GitStore(str(tmp_path / "b.git"), init=True, remote=remote)
        await a.set("k", b"base")
        await a.push()
        assert await b.pull() is True
        await a.set("k", b"from a")
        await a.push()
        await b.set("k", b"from b")
        b_head = await b.digest("")
        with pytest.raises(Conflict):
            await b.pull()
        with pytest.raises(RemoteError, match="pull first"):
            await b.push()
        assert await b.get("k") == b"from b"
        assert await b.digest("") == b_head
        # a is ahead of nothing: pulling what it pushed changes nothing
        assert await a.pull() is False
        await a.set("k", b"a again")
        assert await a.pull() is False  # ahead of the remote
        a.close()
        b.close()

    asyncio.run(main())
    assert git("--git-dir", base / "remote.git", "show", "main:k") == "from a"


def test_unreachable_remotes_raise_remote_error(tmp_path, served):
    base, url = served
    closed = f"git://127.0.0.1:{free_port()}/remote.git"

    async def main():
        for remote in (closed, f"{url}/missing.git", f"file://{tmp_path}/nowhere.git",
                       str(tmp_path / "nowhere.git")):
            kv = GitStore(str(tmp_path / "s.git"), init=True, remote=remote)
            await kv.set("k", b"1")
            with pytest.raises(RemoteError):
                await kv.pull()
            with pytest.raises(RemoteError):
                await kv.push()
            assert await kv.get("k") == b"1"
            kv.close()

    asyncio.run(main())
