"""The ``socket`` backend: one connection to qubesdb-daemon's Unix socket.

The protocol lives in :mod:`.protocol`; this adapter owns the socket and
the one task that reads it. Requests are pipelined (each call sends its
command at once and waits for its own answer; the daemon answers in order),
so concurrent calls do not wait for each other. A call cancelled while it
waits leaves the device usable: its answer is read and dropped.

Watch events are read by the same task and handed to the
:class:`~.watch.PathWatch` iterators that see them. ``watch()`` sends the
daemon's ``WATCH`` at once (once per pattern however many watchers share
it); the daemon takes it before any call made after ``watch()``, so every
write of this device after ``watch()``, and every change by anyone else
that such a later call does not already see, is reported.

The daemon (qubes-core-qubesdb up to 4.3 at least) refuses a value of
``data_len >= QDB_MAX_DATA``, i.e. exactly 3072 bytes, although its header
and the signature allow 3072; such a write raises ``DeviceError`` saying so.

There is no reconnection: when the daemon closes the connection, the
socket fails, or the daemon breaks the protocol, every waiting and later
call raises :class:`~ingot.signatures.DeviceError` saying so (naming the
socket), and every watcher ends with that error.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ingot.signatures import Closed, DeviceError

from .protocol import Changed, Client, ProtocolError, Refused, Reply, WatchRefused
from .watch import PathWatch, WatchHub

DEFAULT_PATH = "/var/run/qubes/qubesdb.sock"
"""``QDB_DAEMON_LOCAL_PATH``: the daemon's socket inside a Qubes VM."""


class SocketQubesDB:
    """A :class:`~ingot.signatures.QubesDB` over a connected stream to the daemon.

    Build it with :func:`open_socket`.
    """

    def __init__(self, where: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.where = where
        self._reader = reader
        self._writer = writer
        self._core = Client()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._hub = WatchHub(on_close=self._unwatch)
        self._error: DeviceError | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    # -- the QubesDB signature -------------------------------------------------
    async def read(self, path: str) -> bytes | None:
        """See :meth:`ingot.signatures.QubesDB.read`."""
        self._check()
        return await self._call(*self._core.read(path))

    async def multiread(self, prefix: str) -> dict[str, bytes]:
        """See :meth:`ingot.signatures.QubesDB.multiread`."""
        self._check()
        return await self._call(*self._core.multiread(prefix))

    async def list(self, prefix: str) -> list[str]:
        """See :meth:`ingot.signatures.QubesDB.list`."""
        self._check()
        return await self._call(*self._core.list(prefix))

    async def write(self, path: str, value: bytes) -> None:
        """See :meth:`ingot.signatures.QubesDB.write`."""
        self._check()
        await self._call(*self._core.write(path, value))

    def watch(self, prefix: str) -> PathWatch:
        """See :meth:`ingot.signatures.QubesDB.watch`."""
        self._check()
        self._send(self._core.watch(prefix))
        return self._hub.watch(prefix or "/")

    def close(self) -> None:
        """See :meth:`ingot.signatures.QubesDB.close`."""
        if self._error is None:
            self._fail(Closed("qubesdb"))

    # -- plumbing --------------------------------------------------------------
    def _check(self) -> None:
        if self._error is not None:
            raise self._error.with_traceback(None)

    def _send(self, data: bytes) -> None:
        if data:
            self._writer.write(data)

    async def _call(self, rid: int, data: bytes) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        self._send(data)
        try:
            return await fut
        finally:
            self._calls.pop(rid, None)

    def _unwatch(self, pattern: str) -> None:
        if self._error is None:
            self._send(self._core.unwatch(pattern))

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    cut = "" if self._core.at_boundary else " in the middle of a message"
                    self._fail(DeviceError(
                        f"qubesdb-daemon at {self.where} closed the connection{cut}"))
                    return
                self._core.receive_data(data)
                while (event := self._core.next_event()) is not None:
                    self._dispatch(event)
        except ProtocolError as exc:
            self._fail(DeviceError(f"qubesdb-daemon at {self.where} broke the protocol: {exc}"))
        except OSError as exc:
            self._fail(DeviceError(f"connection to qubesdb-daemon at {self.where} lost: "
                                   f"{exc.strerror or exc}"))

    def _dispatch(self, event: object) -> None:
        if isinstance(event, Changed):
            self._hub.publish(event.path)
        elif isinstance(event, WatchRefused):
            self._hub.end(DeviceError(event.reason), event.pattern)
        elif isinstance(event, (Reply, Refused)):
            fut = self._calls.pop(event.rid, None)
            if fut is None or fut.done():
                return  # the caller was cancelled
            if isinstance(event, Reply):
                fut.set_result(event.value)
            else:
                fut.set_exception(DeviceError(event.reason))

    def _fail(self, error: DeviceError) -> None:
        if self._error is not None:
            return
        self._error = error
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(error)
        self._hub.end(error)
        if self._task is not asyncio.current_task():
            self._task.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()


async def open_socket(where: str = DEFAULT_PATH) -> SocketQubesDB:
    """Connect to the daemon listening at ``where``; ``DeviceError`` when nobody is."""
    try:
        reader, writer = await asyncio.open_unix_connection(where)
    except OSError as exc:
        raise DeviceError(f"cannot connect to qubesdb-daemon at {where}: "
                          f"{exc.strerror or exc}") from None
    return SocketQubesDB(where, reader, writer)


async def connect(ctx: Any) -> SocketQubesDB:
    """The factory of ``qubesdb/socket`` (key ``path``)."""
    return await open_socket(str(ctx.keys.get("path") or DEFAULT_PATH))
