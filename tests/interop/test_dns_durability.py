"""Kill -9 during a stream of dynamic updates loses no acknowledged update.

The appliance image is built with its ``store`` device as a folder
(``direct``) and as a git repository (``git``). A client keeps a window of
TSIG-signed UPDATE messages (each adding one new name) in flight over UDP and
records every NOERROR answer whose TSIG verifies; the appliance answers an
update only after the store write returned, so each of those is a promise.
In the middle of the stream the process gets SIGKILL (replies already on the
wire count as acknowledged too). Restarted on the same store, it must load
the stored zone (nothing reported unusable, no leftover that blocks writes),
answer every acknowledged name, have a serial at least the initial one plus
the number of acknowledged updates, and accept further updates. Several
rounds per backend; at the end SIGTERM stops it with exit status 0, and the
store itself reads back (``git fsck`` for the repository, the zone file
through the zone-file reader).

At full speed most kills land between two store writes. To land them inside
one, a second test runs the appliance under ``strace`` with every ``fsync``
delayed (a write then takes about half a second) and kills it at random
moments. Two more pin down what those kills found: a git writer that died
holding the branch lock (or in the middle of an object) does not block
later writes, and an update that could not be stored is undone, so that
neither a query nor a retried update (a no-op on the unstored version)
reports it as done.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dnslib
import pytest

from ingot.plugins.dns import tsig
from ingot.plugins.dns.zonefile import load_zone
from tests.conftest import ROOT, Cli
from tests.integration.test_dns_image import Server, free_port

STRACE = shutil.which("strace")

SECRET = b"ingot-durability-secret-01234567"
KEY = tsig.Key("upd.key", SECRET)
TSIG = f"hmac-sha256:upd.key:{base64.b64encode(SECRET).decode()}"
ORIGIN = "example.test."
SERIAL0 = 2026112801
ZONE = f"""$ORIGIN example.test.
$TTL 300
@ IN SOA ns1 hostmaster {SERIAL0} 60 30 600 60
  IN NS ns1
ns1 IN A 192.0.2.1
www IN A 192.0.2.10
"""
WINDOW = 8
"""Updates in flight at once: the appliance has several to persist when killed."""
KILL_AFTER = (25, 60, 110)
"""Acknowledged updates before the kill, per round."""


class Appliance:
    """The image as a process whose output is read all the time (a stream of
    updates logs more than a pipe holds). ``slow_fsync``: under strace, every
    fsync delayed by that many microseconds."""

    def __init__(self, image: Path, *args: str, slow_fsync: int = 0) -> None:
        if slow_fsync:
            self._start_traced(image, args, slow_fsync)
        else:
            srv = Server(image, *args)
            self.port, self.proc, self.pid = srv.port, srv.proc, srv.proc.pid
            self.lines = list(srv.lines)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _start_traced(self, image: Path, args: tuple[str, ...], delay_us: int) -> None:
        self.port = free_port()
        inject = [f"-einject={call}:delay_enter={delay_us}" for call in ("fsync", "fdatasync")]
        self.proc = subprocess.Popen(
            [STRACE, "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null", "-etrace=fsync,fdatasync",
             *inject,
             sys.executable, str(image), "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if "msg=listening" in line:
                break
        else:
            raise AssertionError("dns exited:\n" + "".join(self.lines))
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        self.pid = int(children.split()[0])  # the appliance, traced by strace

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        rc = self.proc.wait(30)
        self._reader.join(10)
        return rc


def _update(qid: int, name: str, address: str) -> tuple[bytes, bytes]:
    msg = dnslib.DNSRecord(dnslib.DNSHeader(id=qid, opcode=5),
                           q=dnslib.DNSQuestion(ORIGIN, dnslib.QTYPE.SOA))
    msg.add_auth(dnslib.RR(name, dnslib.QTYPE.A, ttl=300, rdata=dnslib.A(address)))
    return tsig.sign(msg.pack(), KEY, int(time.time()))


class Updater:
    """Keeps ``window`` updates in flight; ``acked`` holds the names answered
    NOERROR with a valid TSIG."""

    def __init__(self, port: int, prefix: str, window: int = WINDOW) -> None:
        self.window = window
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.prefix = prefix
        self.pending: dict[int, tuple[str, bytes, float]] = {}
        self.acked: list[str] = []
        self.refused: list[tuple[str, int]] = []
        self.sent = 0

    def send_one(self, index: int | None = None) -> None:
        """Send the next update (or again the one numbered ``index``)."""
        i = self.sent if index is None else index
        self.sent = max(self.sent, i + 1)
        name = f"{self.prefix}-{i}.{ORIGIN}"
        qid = (i * 7919 + 1) & 0xFFFF
        while qid in self.pending:
            qid = (qid + 1) & 0xFFFF
        wire, mac = _update(qid, name, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        self.pending[qid] = (name, mac, time.monotonic())
        self.sock.send(wire)

    def receive(self, timeout: float) -> bool:
        """Take one reply (False when none came in ``timeout`` seconds)."""
        self.sock.settimeout(timeout)
        try:
            reply = self.sock.recv(65535)
        except (socket.timeout, ConnectionRefusedError):
            return False
        qid = int.from_bytes(reply[:2], "big")
        entry = self.pending.pop(qid, None)
        if entry is None:
            return True
        name, mac, _sent = entry
        rcode = reply[3] & 0xF
        if rcode == 0:
            tsig.verify(reply, KEY, int(time.time()), request_mac=mac)
            self.acked.append(name)
        else:
            self.refused.append((name, rcode))
        return True

    def run_until(self, acks: int, deadline_s: float = 120) -> None:
        """Stream updates until ``acks`` are acknowledged; the window stays full."""
        deadline = time.monotonic() + deadline_s
        while len(self.acked) < acks:
            assert time.monotonic() < deadline, "the update stream stalled"
            while len(self.pending) < self.window:
                self.send_one()
            if not self.receive(5.0):
                raise AssertionError(f"no answer to {len(self.pending)} updates in 5 s")
            assert not self.refused, f"updates refused: {self.refused[:3]}"

    def drain(self) -> None:
        """Replies already sent before the kill are acknowledgements too."""
        while self.pending and self.receive(0.2):
            pass

    def close(self) -> None:
        self.sock.close()


def _ask(port: int, name: str, rtype: str) -> dnslib.DNSRecord:
    q = dnslib.DNSRecord.question(name, rtype)
    return dnslib.DNSRecord.parse(q.send("127.0.0.1", port, timeout=5))


def _serial(port: int) -> int:
    reply = _ask(port, ORIGIN, "SOA")
    assert reply.header.rcode == 0 and reply.rr, reply
    return reply.rr[0].rdata.times[0]


def _check_answers(port: int, names: list[str]) -> None:
    missing = []
    for name in names:
        reply = _ask(port, name, "A")
        if reply.header.rcode != 0 or not reply.rr:
            missing.append(name)
    assert not missing, f"{len(missing)} of {len(names)} acknowledged updates lost: {missing[:5]}"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(params=["direct", "git"])
def image(request, cli: Cli, tmp_path: Path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "example.test.zone").write_text(ZONE)
    if request.param == "direct":
        store = tmp_path / "store"
        flags = ("--store", "direct", "--store-path", str(store))
    else:
        store = tmp_path / "store.git"
        flags = ("--store", "git", "--store-repo", str(store), "--store-init", "true")
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct", *flags)
    cli("build", ROOT / "appliances" / "dns")
    args = ("--zones-path", str(zones), "--reload", "0", "--tsig-keys", TSIG,
            "--update-acl", "key:upd.key")
    return request.param, cli.image("dns-unix"), args, store


def _check_store(backend: str, store: Path, acked: list[str]) -> None:
    """The store as the appliance left it: readable, holding every acknowledged name."""
    if backend == "git":
        _git(store, "fsck", "--strict")
        text = _git(store, "show", "main:example.test.zone")
        commits = len(_git(store, "log", "--format=%H", "main").splitlines())
        assert commits >= len(acked)
    else:
        text = (store / "example.test.zone").read_text()
        assert not [p for p in store.iterdir() if p.name.startswith(".ingot-")
                    and p.name != ".ingot-lock"]
    zone = load_zone(text, ORIGIN)
    assert zone.serial >= SERIAL0 + len(acked)
    names = {str(rr.rname).lower() for rr in zone.to_records()}
    assert not [n for n in acked if n.lower() not in names]


def _restart(path: Path, args: tuple[str, ...], acked: list[str], **kw) -> Appliance:
    """Start again on the store; every acknowledged update must be there."""
    app = Appliance(path, *args, **kw)
    restart = app.output()
    assert "unusable" not in restart and "rejected" not in restart, restart
    _check_answers(app.port, acked)
    assert _serial(app.port) >= SERIAL0 + len(acked), restart
    return app


def _one_more(app: Appliance, prefix: str) -> list[str]:
    """The store still takes writes: one more update is acknowledged and served."""
    updater = Updater(app.port, prefix, window=1)
    try:
        updater.run_until(1, deadline_s=30)
        updater.drain()
    finally:
        updater.close()
    _check_answers(app.port, updater.acked)
    return updater.acked


def test_kill_9_during_updates_loses_no_acknowledged_update(image):
    backend, path, args, store = image
    acked: list[str] = []
    app = Appliance(path, *args)
    try:
        for rnd, kill_after in enumerate(KILL_AFTER):
            updater = Updater(app.port, f"r{rnd}")
            try:
                updater.run_until(kill_after)
                updater.send_one()  # the window is full when the kill lands
                app.kill()
                updater.drain()
            finally:
                updater.close()
            acked += updater.acked
            app = _restart(path, args, acked)
            assert 'msg="serving the stored version' in app.output()
            acked += _one_more(app, f"after{rnd}")
    finally:
        rc = app.stop()
    assert rc == 0, app.output()[-3000:]
    _check_store(backend, store, acked)


def test_kill_9_inside_store_writes_loses_no_acknowledged_update(image):
    """Every fsync takes 80 ms more, so the kill lands inside a write (object,
    branch lock, journal, rename); random moments, a fixed seed per backend."""
    assert STRACE, "strace is not installed (see .ci/debian-packages.txt)"
    backend, path, args, store = image
    rnd = random.Random(f"durability-{backend}")
    acked: list[str] = []
    app = Appliance(path, *args, slow_fsync=80_000)
    try:
        for round_ in range(8):
            updater = Updater(app.port, f"s{round_}")
            try:
                updater.run_until(1, deadline_s=60)
                updater.send_one()
                time.sleep(rnd.uniform(0.0, 0.6))
                app.kill()
                updater.drain()
            finally:
                updater.close()
            acked += updater.acked
            app = _restart(path, args, acked, slow_fsync=80_000)
            acked += _one_more(app, f"after{round_}")
    finally:
        rc = app.stop()
    assert rc == 0, app.output()[-3000:]
    _check_store(backend, store, acked)


def test_an_update_that_cannot_be_stored_is_undone(cli: Cli, tmp_path: Path):
    """While another git command holds the branch the update is not stored:
    it is not answered, not served, and a retry is not acknowledged (the
    unstored version must not make it a no-op); once the branch is free the
    retry is stored and survives kill -9."""
    from ingot.plugins.kv.git import REF_LOCK_WAIT

    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "example.test.zone").write_text(ZONE)
    store = tmp_path / "store.git"
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct", "--store", "git",
        "--store-repo", str(store), "--store-init", "true")
    cli("build", ROOT / "appliances" / "dns")
    path = cli.image("dns-unix")
    args = ("--zones-path", str(zones), "--reload", "0", "--tsig-keys", TSIG,
            "--update-acl", "key:upd.key")
    app = Appliance(path, *args)
    lock = store / "refs" / "heads" / "main.lock"
    try:
        acked = _one_more(app, "before")
        lock.write_text("")  # another git command is moving the branch
        updater = Updater(app.port, "held")
        try:
            for _attempt in range(2):
                updater.send_one(index=0)
                updater.receive(REF_LOCK_WAIT + 1)
                assert not updater.acked and not updater.refused
                assert _ask(app.port, "held-0." + ORIGIN, "A").header.rcode == 3
            lock.unlink()
            updater.send_one(index=0)
            assert updater.receive(5) and updater.acked == ["held-0." + ORIGIN]
        finally:
            updater.close()
        acked += updater.acked
        app.kill()
        first = app.output()
        app = _restart(path, args, acked)
    finally:
        app.stop()
        lock.unlink(missing_ok=True)
    assert first.count('msg="update undone') == 2, first
    assert first.count('msg="change not stored; not acknowledged"') == 2, first
    _check_store("git", store, acked)


GIT_CHILD = textwrap.dedent('''
    import asyncio, os, sys
    from ingot.plugins.kv.git import GitStore

    repo, step = sys.argv[1], sys.argv[2]
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        dst = os.fsdecode(dst)
        if (step == "ref" and dst.endswith("refs/heads/main")) or (
                step == "object" and os.sep + "objects" + os.sep in dst):
            os._exit(9)  # died holding the branch lock, or halfway through an object
        return real_replace(src, dst, *a, **kw)

    async def main():
        store = GitStore(repo)
        os.replace = replace
        await store.set("a", b"2")

    asyncio.run(main())
''')


def _leftovers(repo: Path) -> list[str]:
    """Lock files (but the store's own ``ingot.lock``) and temporary objects."""
    return [p.name for p in repo.rglob("*") if p.name != "ingot.lock" and (
        p.name.endswith(".lock") or p.name.startswith("tmp_obj_"))]


@pytest.mark.parametrize("step", ["ref", "object"])
def test_git_store_writes_after_a_writer_died_mid_write(tmp_path: Path, step: str):
    """kv_rw/git: what a writer that died mid-write leaves does not block the next."""
    import asyncio

    from ingot.plugins.kv.git import GitStore

    repo = str(tmp_path / "repo.git")

    async def write(value: bytes) -> bytes:
        store = GitStore(repo, init=True)
        try:
            await store.set("a", value)
            return await store.get("a")
        finally:
            store.close()

    assert asyncio.run(write(b"1")) == b"1"
    proc = subprocess.run([sys.executable, "-c", GIT_CHILD, repo, step], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    left = _leftovers(Path(repo))
    assert len(left) == 1, left
    assert left[0] == "main.lock" if step == "ref" else left[0].startswith("tmp_obj_ingot_")

    async def after() -> tuple[bytes, bytes]:
        store = GitStore(repo)
        try:
            before = await store.get("a")
            await store.set("a", b"3")
            return before, await store.get("a")
        finally:
            store.close()

    assert asyncio.run(after()) == (b"1", b"3")
    assert not _leftovers(Path(repo))
    _git(Path(repo), "fsck", "--strict")


def test_git_store_waits_for_a_branch_lock_it_does_not_own(tmp_path: Path, monkeypatch):
    """A branch lock that no Ingot writer left belongs to another git command:
    the write fails with StoreError after a while, and the lock stays."""
    import asyncio

    from ingot.plugins.kv import git as kvgit
    from ingot.signatures import StoreError

    monkeypatch.setattr(kvgit, "REF_LOCK_WAIT", 0.2)
    repo = tmp_path / "repo.git"

    async def run() -> None:
        store = kvgit.GitStore(str(repo), init=True)
        try:
            await store.set("a", b"1")
            (repo / "refs" / "heads" / "main.lock").write_text("")
            with pytest.raises(StoreError, match="main.lock"):
                await store.set("a", b"2")
            assert await store.get("a") == b"1"
        finally:
            store.close()

    asyncio.run(run())
    assert (repo / "refs" / "heads" / "main.lock").exists()
