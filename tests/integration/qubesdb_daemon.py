"""A small qubesdb-daemon for tests, serving the local-socket protocol on a Unix socket.

It follows include/qubesdb.h and daemon/db-cmds.c of QubesOS/qubes-core-qubesdb
and is written by hand, without ingot.plugins.qubesdb.protocol: it reads and
builds headers from the documented layout (type at byte 0, a 64-byte
NUL-terminated path at 1, 3 bytes of padding, a little-endian uint32
data_len at 68: 72 bytes), so that a wrong encoding in the client cannot
pass against it by symmetry.

What it does as the real daemon does: answers in order; echoes the
command's header (path and padding bytes) in single answers; answers
MULTIREAD/LIST with one message per matching entry and an empty-path end
marker (MULTIREAD of "" in reverse order); fires one RESP_WATCH per
matching registration after a write's or removal's RESP_OK; UNWATCH drops
one registration of that path; a bad header gets RESP_ERROR; a write
with a NUL in the value gets RESP_ERROR. Watch events carry garbage in
their padding and after the path's NUL, as an uninitialised C struct may.

For tests: ``received`` holds every raw message; ``set``/``remove`` change
entries as dom0 would (firing watches); ``gate`` holds answers back while
cleared; ``interleave`` lists paths whose watch events are sent in the
middle of the next MULTIREAD/LIST answer; ``send_raw`` writes bytes to
every client; ``drop_clients`` closes every connection; ``max_data``
(3072) is the largest value accepted; the real daemon refuses
``data_len >= 3072``, i.e. set it to 3071 to play that daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

(READ, WRITE, MULTIREAD, LIST, RM, WATCH, UNWATCH,
 OK, NOENT, ERROR, RESP_READ, RESP_MULTIREAD, RESP_LIST, RESP_WATCH) = range(14)

HDR = 72
GARBAGE = b"\xa5\xa5\xa5"
_PATH = re.compile(rb"[a-zA-Z0-9_.:/@-]*")


def header(type_: int, path: bytes, data_len: int, pad: bytes = GARBAGE,
           tail: bytes = b"") -> bytes:
    """A header as the C struct lays it out; ``tail``: bytes after the path's NUL."""
    field = (path + b"\0" + tail)[:64].ljust(64, b"\0")
    return bytes([type_]) + field + pad + data_len.to_bytes(4, "little")


def parse_header(raw: bytes) -> tuple[int, bytes, int]:
    """(type, path up to the NUL, data_len) of a 72-byte header."""
    return raw[0], raw[1:65].split(b"\0", 1)[0], int.from_bytes(raw[68:72], "little")


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class FakeQubesDB:
    """See the module docstring."""

    def __init__(self, sock_path: str, entries: dict[str, bytes] | None = None,
                 max_data: int = 3072) -> None:
        self.sock_path = sock_path
        self.entries: dict[bytes, bytes] = {k.encode(): v for k, v in (entries or {}).items()}
        self.max_data = max_data
        self.received: list[bytes] = []
        self.watches: list[tuple[_Conn, bytes]] = []
        self.clients: list[_Conn] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.interleave: list[bytes] = []
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> "FakeQubesDB":
        self._server = await asyncio.start_unix_server(self._serve, self.sock_path)
        return self

    async def stop(self) -> None:
        self.gate.set()
        await asyncio.sleep(0.01)  # connections not yet accepted or served get served
        if self._server is not None:
            self._server.close()
        self.drop_clients()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    # -- what dom0 (or another client) would do ---------------------------------
    def set(self, path: str, value: bytes) -> None:
        self.entries[path.encode()] = value
        self._fire(path.encode())

    def remove(self, path: str) -> None:
        if self._remove(path.encode()):
            self._fire(path.encode())

    def _remove(self, raw: bytes) -> bool:
        if raw.endswith(b"/"):
            gone = [k for k in self.entries if k.startswith(raw)]
        else:
            gone = [raw] if raw in self.entries else []
        for k in gone:
            del self.entries[k]
        return bool(gone)

    def send_raw(self, data: bytes) -> None:
        for c in self.clients:
            c.send(data)

    def drop_clients(self) -> None:
        for c in self.clients:
            c.writer.close()
        self.clients.clear()
        self.watches.clear()

    def registrations(self) -> list[bytes]:
        return [p for _, p in self.watches]

    # -- serving -------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Conn(writer)
        self.clients.append(conn)
        try:
            while True:
                raw = await reader.readexactly(HDR)
                type_, path, n = parse_header(raw)
                data = await reader.readexactly(n)
                self.received.append(raw + data)
                await self.gate.wait()
                if not self._handle(conn, raw, type_, path, data):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            self.watches = [(c, p) for c, p in self.watches if c is not conn]
            if conn in self.clients:
                self.clients.remove(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, conn: _Conn, raw: bytes, type_: int, data: bytes = b"") -> None:
        """The command's own header with a new type and data_len, as the daemon sends it."""
        conn.send(bytes([type_]) + raw[1:68] + len(data).to_bytes(4, "little") + data)

    def _entry(self, conn: _Conn, raw: bytes, type_: int, path: bytes, data: bytes) -> None:
        conn.send(bytes([type_]) + path.ljust(64, b"\0") + raw[65:68]
                  + len(data).to_bytes(4, "little") + data)

    def _handle(self, conn: _Conn, raw: bytes, type_: int, path: bytes, data: bytes) -> bool:
        if (type_ > UNWATCH or len(path) >= 64 or not _PATH.fullmatch(path)
                or len(data) >= self.max_data + 1 or len(raw[1:65].split(b"\0", 1)) < 2):
            self._answer(conn, raw, ERROR)
            return True
        if type_ == READ:
            if path in self.entries:
                self._answer(conn, raw, RESP_READ, self.entries[path])
            else:
                self._answer(conn, raw, NOENT)
        elif type_ == WRITE:
            if b"\0" in data:
                self._answer(conn, raw, ERROR)
                return True
            if not path.startswith(b"/") or path.endswith(b"/"):
                self._answer(conn, raw, ERROR)
                return False  # the real daemon drops the client here
            self.entries[path] = data
            self._answer(conn, raw, OK)
            self._fire(path)
        elif type_ in (MULTIREAD, LIST):
            keys = sorted(k for k in self.entries if k.startswith(path))
            if not path:
                keys.reverse()
            resp = RESP_MULTIREAD if type_ == MULTIREAD else RESP_LIST
            for i, k in enumerate(keys):
                self._entry(conn, raw, resp, k, self.entries[k] if resp == RESP_MULTIREAD
                            else b"")
                if i == 0:
                    for p in self.interleave:
                        self._fire(p)
                    self.interleave = []
            self._entry(conn, raw, resp, b"", b"")
        elif type_ == RM:
            removed = self._remove(path)
            self._answer(conn, raw, OK if removed else NOENT)
            if removed:
                self._fire(path)
        elif type_ == WATCH:
            self.watches.append((conn, path))
            self._answer(conn, raw, OK)
        elif type_ == UNWATCH:
            mine = [i for i, (c, p) in enumerate(self.watches) if c is conn and p == path]
            if mine:  # one registration only, as qubesdb_remove_watch does
                del self.watches[mine[0]]
            self._answer(conn, raw, OK if mine else NOENT)
        return True

    def _fire(self, path: bytes) -> None:
        for conn, pattern in list(self.watches):
            if pattern.endswith(b"/") and path.startswith(pattern) or path == pattern:
                conn.send(header(RESP_WATCH, path, 0, tail=b"\x7fjunk"))
