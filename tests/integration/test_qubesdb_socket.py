"""The ``socket`` QubesDB backend against a small daemon in the test (qubesdb_daemon.py):
the shared suite, the bytes on the wire, watch registration, interleaved events,
cancellation, a lost connection and a daemon that breaks the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import io

import pytest

from ingot.log import Logger, Sink
from ingot.plugins import qubesdb as plugin
from ingot.plugins.qubesdb.socket import DEFAULT_PATH, connect, open_socket
from ingot.registry import DeviceContext
from ingot.signatures import DeviceError

from .qubesdb_conformance import (ENTRIES, FW, FW11, QubesDBConformance, drain, expect,
                                  next_path)
from .qubesdb_daemon import OK, RESP_READ, RESP_WATCH, FakeQubesDB, header


class DaemonOutside:
    def __init__(self, daemon: FakeQubesDB) -> None:
        self.daemon = daemon

    async def set(self, path: str, value: bytes | None) -> None:
        if value is None:
            self.daemon.remove(path)
        else:
            self.daemon.set(path, value)


@contextlib.asynccontextmanager
async def daemon_and_db(tmp_path, entries=ENTRIES, **kw):
    daemon = await FakeQubesDB(str(tmp_path / "qubesdb.sock"), entries, **kw).start()
    try:
        db = await open_socket(daemon.sock_path)
        try:
            yield daemon, db
        finally:
            db.close()
    finally:
        await daemon.stop()


def run(tmp_path, body, **kw):
    async def main():
        async with daemon_and_db(tmp_path, **kw) as (daemon, db):
            await body(daemon, db)
    asyncio.run(main())


class TestSocket(QubesDBConformance):
    @contextlib.asynccontextmanager
    async def backend(self, tmp_path, entries):
        async with daemon_and_db(tmp_path, entries) as (daemon, db):
            yield db, DaemonOutside(daemon)


# --------------------------------------------------------------------------
# the bytes on the wire, by the header layout of include/qubesdb.h


def test_a_read_request_is_the_documented_72_bytes(tmp_path):
    async def body(daemon, db):
        assert await db.read("/qubes-ip") == b"10.137.0.1"
        assert daemon.received[0] == (
            b"\x00"                                   # type: QDB_CMD_READ = 0
            + b"/qubes-ip" + b"\x00" * (64 - 9)       # path[64], NUL-terminated
            + b"\x00\x00\x00"                         # padding before the uint32
            + b"\x00\x00\x00\x00")                    # data_len = 0
        assert len(daemon.received[0]) == 72
    run(tmp_path, body)


def test_a_write_request_carries_its_value_after_the_header(tmp_path):
    async def body(daemon, db):
        await db.write("/qubes-firewall-error/10.137.0.11", b"rule 0003: bad")
        raw = daemon.received[-1]
        assert raw[0] == 1                                        # QDB_CMD_WRITE
        assert raw[1:65] == b"/qubes-firewall-error/10.137.0.11".ljust(64, b"\0")
        assert raw[68:72] == (14).to_bytes(4, "little") == b"\x0e\x00\x00\x00"
        assert raw[72:] == b"rule 0003: bad" and len(raw) == 72 + 14
    run(tmp_path, body)


def test_requests_for_every_call(tmp_path):
    async def body(daemon, db):
        await db.multiread("")
        await db.list(FW)
        w = db.watch(FW11)
        await db.read("/qubes-ip")
        w.close()
        await db.read("/qubes-ip")
        kinds = [(raw[0], raw[1:65].rstrip(b"\0")) for raw in daemon.received]
        assert kinds == [(2, b"/"), (3, FW.encode()), (5, FW11.encode()), (0, b"/qubes-ip"),
                         (6, FW11.encode()), (0, b"/qubes-ip")]
    run(tmp_path, body)


def test_an_answer_with_garbage_in_padding_and_after_the_nul_is_read(tmp_path):
    async def body(daemon, db):
        daemon.gate.clear()
        pending = asyncio.ensure_future(db.read("/qubes-ip"))
        await asyncio.sleep(0.05)
        daemon.send_raw(header(RESP_READ, b"/qubes-ip", 3, pad=b"\xff\xfe\xfd", tail=b"zz")
                        + b"abc")
        assert await asyncio.wait_for(pending, 5) == b"abc"
        daemon.drop_clients()
    run(tmp_path, body)


# --------------------------------------------------------------------------
# watches


def test_each_pattern_is_registered_once(tmp_path):
    async def body(daemon, db):
        a, b = db.watch(FW), db.watch(FW)
        await db.read("/qubes-ip")  # a round trip: the daemon has seen the WATCH
        assert daemon.registrations() == [FW.encode()]
        daemon.set("/qubes-firewall/10.137.0.11", b"")
        assert await next_path(a) == await next_path(b) == "/qubes-firewall/10.137.0.11"
        a.close()
        await db.read("/qubes-ip")
        assert daemon.registrations() == [FW.encode()]
        b.close()
        await db.read("/qubes-ip")
        assert daemon.registrations() == []
    run(tmp_path, body)


def test_watch_events_in_the_middle_of_an_answer(tmp_path):
    async def body(daemon, db):
        w = db.watch(FW)
        daemon.interleave = [b"/qubes-firewall/10.137.0.11/0009", b"/qubes-firewall/x"]
        assert await db.multiread(FW11) == {p: v for p, v in ENTRIES.items()
                                            if p.startswith(FW11)}
        daemon.interleave = [b"/qubes-firewall/y"]
        assert await db.list(FW11) == sorted(p for p in ENTRIES if p.startswith(FW11))
        assert await expect(w, 3) == ["/qubes-firewall/10.137.0.11/0009",
                                      "/qubes-firewall/x", "/qubes-firewall/y"]
    run(tmp_path, body)


def test_a_removed_folder_is_one_event_for_its_prefix(tmp_path):
    async def body(daemon, db):
        w, exact = db.watch(FW), db.watch("/qubes-firewall/10.137.0.11/policy")
        await db.read("/qubes-ip")  # a round trip: the daemon has seen the WATCHes
        daemon.remove(FW11)
        assert await expect(w, 1) == [FW11]
        assert await drain(exact) == []
        assert await db.multiread(FW11) == {}
    run(tmp_path, body)


# --------------------------------------------------------------------------
# cancellation, refusals, a lost connection, a broken daemon


def test_a_cancelled_call_leaves_the_device_usable(tmp_path):
    async def body(daemon, db):
        daemon.gate.clear()
        first = asyncio.ensure_future(db.read("/qubes-ip"))
        await asyncio.sleep(0.05)
        first.cancel()
        second = asyncio.ensure_future(db.read("/qubes-gateway"))
        third = asyncio.ensure_future(db.multiread(FW11))
        daemon.gate.set()
        assert await asyncio.wait_for(second, 5) == b"10.137.0.254"
        assert len(await asyncio.wait_for(third, 5)) == 3
        assert first.cancelled()
        assert await db.read("/qubes-ip") == b"10.137.0.1"
    run(tmp_path, body)


def test_a_refused_write_names_the_path_and_the_device_goes_on(tmp_path):
    # the real daemon refuses data_len >= QDB_MAX_DATA: 3072 bytes do not go through
    async def body(daemon, db):
        await db.write("/big", b"v" * 3071)
        with pytest.raises(DeviceError, match=r"refused to write '/big' \(3072 bytes\).*3071"):
            await db.write("/big", b"v" * 3072)
        assert await db.read("/big") == b"v" * 3071
    run(tmp_path, body, max_data=3071)


def test_a_lost_connection_ends_calls_and_watchers(tmp_path):
    async def body(daemon, db):
        w = db.watch(FW)
        await db.read("/qubes-ip")
        daemon.gate.clear()
        pending = asyncio.ensure_future(db.read("/qubes-ip"))
        waiting = asyncio.ensure_future(w.__anext__())
        await asyncio.sleep(0.05)
        daemon.drop_clients()
        for fut in (pending, waiting):
            with pytest.raises(DeviceError, match="closed the connection") as info:
                await asyncio.wait_for(fut, 5)
            assert daemon.sock_path in str(info.value)
            assert type(info.value) is DeviceError
        with pytest.raises(DeviceError, match="closed the connection"):
            await db.read("/qubes-ip")
        with pytest.raises(DeviceError, match="closed the connection"):
            db.watch(FW)
        db.close()
        db.close()
    run(tmp_path, body)


def test_events_before_a_lost_connection_are_still_seen(tmp_path):
    async def body(daemon, db):
        w = db.watch(FW)
        await db.read("/qubes-ip")
        daemon.set("/qubes-firewall/a", b"")
        await asyncio.sleep(0.05)
        daemon.drop_clients()
        await asyncio.sleep(0.05)
        assert await next_path(w) == "/qubes-firewall/a"
        with pytest.raises(DeviceError):
            await next_path(w)
    run(tmp_path, body)


BROKEN = {
    "unknown type": bytes([99]) + b"/qubes-ip".ljust(64, b"\0") + bytes(7),
    "a command": header(1, b"/qubes-ip", 0),
    "data_len too big": header(RESP_READ, b"/qubes-ip", 1 << 31),
    "path without NUL": bytes([RESP_READ]) + b"/" * 64 + bytes(3) + bytes(4),
    "RESP_OK with data": header(OK, b"/qubes-ip", 4) + b"data",
    "the wrong answer": header(OK, b"/qubes-ip", 0),
    "the wrong path": header(RESP_READ, b"/qubes-gateway", 1) + b"x",
    "bad path": header(RESP_WATCH, b"/sp ace", 0),
}


@pytest.mark.parametrize("raw", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_answer_is_a_clear_error_not_a_hang(tmp_path, raw):
    async def body(daemon, db):
        w = db.watch(FW)
        await db.read("/qubes-ip")
        daemon.gate.clear()
        pending = asyncio.ensure_future(db.read("/qubes-ip"))
        await asyncio.sleep(0.05)
        daemon.send_raw(raw)
        with pytest.raises(DeviceError, match="broke the protocol") as info:
            await asyncio.wait_for(pending, 5)
        assert daemon.sock_path in str(info.value)
        with pytest.raises(DeviceError, match="broke the protocol"):
            await asyncio.wait_for(w.__anext__(), 5)
        with pytest.raises(DeviceError, match="broke the protocol"):
            await db.read("/qubes-ip")
    run(tmp_path, body)


def test_an_answer_nobody_asked_for(tmp_path):
    async def body(daemon, db):
        await db.read("/qubes-ip")
        daemon.send_raw(header(OK, b"/x", 0))
        await asyncio.sleep(0.1)
        with pytest.raises(DeviceError, match="no request waiting"):
            await db.read("/qubes-ip")
    run(tmp_path, body)


def test_eof_in_the_middle_of_a_message(tmp_path):
    async def body(daemon, db):
        daemon.gate.clear()
        pending = asyncio.ensure_future(db.read("/qubes-ip"))
        await asyncio.sleep(0.05)
        daemon.send_raw(header(RESP_READ, b"/qubes-ip", 10) + b"10.1")
        await asyncio.sleep(0.05)
        daemon.drop_clients()
        with pytest.raises(DeviceError, match="in the middle of a message"):
            await asyncio.wait_for(pending, 5)
    run(tmp_path, body)


# --------------------------------------------------------------------------
# connecting


def ctx(**keys) -> DeviceContext:
    return DeviceContext(name="qubesdb", kind="qubesdb", backend="socket", target="vm",
                         keys=keys, deps={}, data=None,
                         log=Logger("qubesdb", Sink(io.StringIO())))


def test_the_factory_connects_to_the_path_key(tmp_path):
    async def main():
        daemon = await FakeQubesDB(str(tmp_path / "q.sock"), {"/qubes-ip": b"1"}).start()
        try:
            db = await connect(ctx(path=daemon.sock_path))
            assert await db.read("/qubes-ip") == b"1"
            db.close()
        finally:
            await daemon.stop()
    asyncio.run(main())


def test_no_daemon_is_one_clear_error(tmp_path):
    where = str(tmp_path / "absent.sock")
    with pytest.raises(DeviceError, match=f"cannot connect to qubesdb-daemon at {where}: "
                                          "No such file or directory"):
        asyncio.run(connect(ctx(path=where)))


def test_the_spec():
    spec = {s.backend: s for s in plugin.ingot_devices_register()}["socket"]
    assert spec.kind == "qubesdb" and spec.targets == ("unix", "vm", "qubes")
    assert spec.factory == "ingot.plugins.qubesdb.socket:connect"
    assert [(k.name, k.default) for k in spec.keys] == [("path", DEFAULT_PATH)]
    assert DEFAULT_PATH == "/var/run/qubes/qubesdb.sock"
