"""qubesdb-daemon's local-socket protocol, sans-I/O: bytes in, events out.

The wire format (``include/qubesdb.h`` of QubesOS/qubes-core-qubesdb) is a
stream of messages, each a fixed 72-byte header and ``data_len`` bytes of
data. The header is the C ``struct qdb_hdr`` as the compiler lays it out, in
host byte order (Qubes runs on x86-64: little-endian)::

    offset  size  field
    0       1     type      uint8, one of :class:`Msg`
    1       64    path      NUL-terminated; bytes after the NUL are not meaningful
    65      3     padding   alignment of data_len; not meaningful
    68      4     data_len  uint32, at most QDB_MAX_DATA (3072)

Rules of the conversation, as the daemon (``daemon/db-cmds.c``) plays it:

* Commands are answered in the order they were sent, so a client may send
  the next before the previous is answered; nothing in a response names
  its command except that single responses echo the command's path.
* ``READ``: ``RESP_READ`` with the value, or ``RESP_ERROR_NOENT``.
  ``WRITE`` (value as data): ``RESP_OK``. ``RM``, ``WATCH``, ``UNWATCH``:
  ``RESP_OK`` (``RM`` and ``UNWATCH`` may answer ``RESP_ERROR_NOENT``).
* ``MULTIREAD``/``LIST`` of a prefix: one ``RESP_MULTIREAD`` (path + value)
  or ``RESP_LIST`` (path only) per matching entry, ascending, then one with
  an empty path and no data as the end.
* Any command may be answered ``RESP_ERROR`` (no data, no reason given).
* ``RESP_WATCH`` (the changed path, no data) arrives at any message
  boundary, also between the parts of a ``MULTIREAD``/``LIST`` answer. A
  change fires once per registered watch that sees it (a ``WATCH`` twice
  on the same pattern is two registrations; an ``UNWATCH`` drops one).

:class:`Decoder` cuts a byte stream into :class:`Message` values and checks
each header as soon as its 72 bytes are in (a bad type, an oversized
``data_len`` or a path without NUL is a :class:`RemoteProtocolError` at
once, never a wait for data that will not come). :class:`Client` is the
client's state machine over it: request methods return the bytes to send,
:meth:`Client.next_event` returns :class:`Reply`, :class:`Refused`,
:class:`Changed` and :class:`WatchRefused` events. It registers each watch
pattern once however many watchers share it, and turns the daemon's one
event per matching registration back into one :class:`Changed` per change.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass, field

from ingot.signatures import DeviceError

from .paths import MAX_DATA, MAX_PATH, check_path, check_prefix, check_value, under, \
    valid_remote_path, watch_sees


class Msg(enum.IntEnum):
    """``enum qdb_msg``: commands (client to daemon) and responses."""

    CMD_READ = 0
    CMD_WRITE = 1
    CMD_MULTIREAD = 2
    CMD_LIST = 3
    CMD_RM = 4
    CMD_WATCH = 5
    CMD_UNWATCH = 6
    RESP_OK = 7
    RESP_ERROR_NOENT = 8
    RESP_ERROR = 9
    RESP_READ = 10
    RESP_MULTIREAD = 11
    RESP_LIST = 12
    RESP_WATCH = 13


COMMANDS = frozenset(m for m in Msg if m.name.startswith("CMD_"))
RESPONSES = frozenset(m for m in Msg if m.name.startswith("RESP_"))
_NO_DATA = frozenset({Msg.RESP_OK, Msg.RESP_ERROR_NOENT, Msg.RESP_ERROR, Msg.RESP_LIST,
                      Msg.RESP_WATCH})

PATH_FIELD = MAX_PATH + 1
"""Size of the header's path field (``QDB_MAX_PATH``, NUL included)."""

HEADER = struct.Struct("<B64s3xI")
"""``struct qdb_hdr``: type, path, 3 bytes of padding, data_len."""

HEADER_SIZE = HEADER.size
"""72 bytes."""


class ProtocolError(DeviceError):
    """The conversation with qubesdb-daemon cannot go on."""


class LocalProtocolError(ProtocolError):
    """This side asked for something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The daemon sent something the protocol does not allow; the stream is lost."""


@dataclass(frozen=True)
class Message:
    """One message: its type, its path (``""`` for an end marker) and its data."""

    type: Msg
    path: str
    data: bytes = b""


def encode(type: Msg, path: str, data: bytes = b"") -> bytes:
    """The bytes of one message. ``LocalProtocolError`` for a path that is
    not ASCII, holds a NUL or is longer than 63 bytes, or data above 3072 bytes."""
    try:
        raw = path.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"path {path!r} is not ASCII") from None
    if len(raw) > MAX_PATH or b"\0" in raw:
        raise LocalProtocolError(f"path {path!r} does not fit the {PATH_FIELD}-byte field")
    if len(data) > MAX_DATA:
        raise LocalProtocolError(f"{len(data)} bytes of data exceed {MAX_DATA}")
    return HEADER.pack(int(type), raw, len(data)) + bytes(data)


class Decoder:
    """Cuts a byte stream into :class:`Message` values.

    ``feed()`` takes bytes in any chunks; ``next_message()`` returns the next
    complete message or None when more bytes are needed. ``accept`` is the
    set of types this side may receive (:data:`RESPONSES` for a client).
    After a :class:`RemoteProtocolError` the decoder raises it again on
    every call: the framing is lost for good.
    """

    def __init__(self, accept: frozenset[Msg] = RESPONSES) -> None:
        self._accept = accept
        self._buf = bytearray()
        self._pos = 0
        self._offset = 0  # stream offset of self._buf[0]
        self._header: Message | None = None
        self._need = 0
        self._error: RemoteProtocolError | None = None

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def at_boundary(self) -> bool:
        """True when no part of a message is waiting for the rest."""
        return self._header is None and self._pos == len(self._buf)

    def next_message(self) -> Message | None:
        """The next message, None if incomplete, or ``RemoteProtocolError``."""
        if self._error is not None:
            raise self._error
        if self._header is None:
            if len(self._buf) - self._pos < HEADER_SIZE:
                return None
            start = self._pos
            self._pos += HEADER_SIZE
            try:
                self._header, self._need = self._parse(bytes(self._buf[start:self._pos]))
            except RemoteProtocolError as exc:
                self._error = RemoteProtocolError(
                    f"bad header at stream offset {self._offset + start}: {exc}")
                raise self._error from None
        if len(self._buf) - self._pos < self._need:
            return None
        header, data = self._header, bytes(self._buf[self._pos:self._pos + self._need])
        self._pos += self._need
        self._header = None
        if self._pos > 65536 or self._pos == len(self._buf):
            del self._buf[:self._pos]
            self._offset += self._pos
            self._pos = 0
        return Message(header.type, header.path, data)

    def _parse(self, raw: bytes) -> tuple[Message, int]:
        type_, path_field, length = HEADER.unpack(raw)
        try:
            kind = Msg(type_)
        except ValueError:
            raise RemoteProtocolError(f"unknown message type {type_}") from None
        if kind not in self._accept:
            side = "response" if self._accept == RESPONSES else "command"
            raise RemoteProtocolError(f"{kind.name} is not a {side}")
        end = path_field.find(b"\0")
        if end < 0:
            raise RemoteProtocolError(f"{kind.name}: the path is not NUL-terminated")
        path = path_field[:end]
        if path and not valid_remote_path(path):
            raise RemoteProtocolError(f"{kind.name}: {path!r} is not a QubesDB path")
        if length > MAX_DATA:
            raise RemoteProtocolError(f"{kind.name}: data_len {length} exceeds {MAX_DATA}")
        if length and kind in _NO_DATA:
            raise RemoteProtocolError(f"{kind.name} carries no data, data_len is {length}")
        return Message(kind, path.decode("ascii")), length


# --------------------------------------------------------------------------
# the client


@dataclass(frozen=True)
class Reply:
    """Request ``rid`` succeeded: ``value`` is ``bytes | None`` (read),
    ``dict[str, bytes]`` (multiread), ``list[str]`` (list), ``bool`` (rm:
    whether anything was removed) or None (write)."""

    rid: int
    value: object


@dataclass(frozen=True)
class Refused:
    """The daemon answered request ``rid`` with ``RESP_ERROR``; ``reason`` says what failed."""

    rid: int
    reason: str


@dataclass(frozen=True)
class Changed:
    """``path`` was written or removed (once per change, however many watches see it)."""

    path: str


@dataclass(frozen=True)
class WatchRefused:
    """The daemon refused to watch ``pattern``; its watchers are over."""

    pattern: str
    reason: str


Event = Reply | Refused | Changed | WatchRefused


@dataclass
class _Pending:
    kind: Msg
    path: str
    rid: int  # 0: the client's own (WATCH/UNWATCH)
    size: int = 0
    entries: dict[str, bytes] = field(default_factory=dict)


_EXPECT = {
    Msg.CMD_READ: (Msg.RESP_READ, Msg.RESP_ERROR_NOENT),
    Msg.CMD_WRITE: (Msg.RESP_OK,),
    Msg.CMD_RM: (Msg.RESP_OK, Msg.RESP_ERROR_NOENT),
    Msg.CMD_WATCH: (Msg.RESP_OK,),
    Msg.CMD_UNWATCH: (Msg.RESP_OK, Msg.RESP_ERROR_NOENT),
    Msg.CMD_MULTIREAD: (Msg.RESP_MULTIREAD,),
    Msg.CMD_LIST: (Msg.RESP_LIST,),
}


class Client:
    """The client side of one connection to qubesdb-daemon.

    Every request method validates its arguments (``InvalidKey``,
    ``NoSpace``, ``DeviceError`` as :mod:`.paths` says), records the request
    and returns ``(rid, bytes)``: send the bytes, in the order they were
    returned, then wait for the :class:`Reply` or :class:`Refused` with that
    ``rid``. ``""`` as a prefix is sent as ``/`` (every path begins with it).

    :meth:`watch`/:meth:`unwatch` count watchers per pattern and return the
    bytes of a ``WATCH`` for the first and an ``UNWATCH`` after the last
    (``b""`` otherwise); their answers produce no event unless the daemon
    refuses (:class:`WatchRefused`).
    """

    def __init__(self) -> None:
        self._decoder = Decoder(RESPONSES)
        self._pending: deque[_Pending] = deque()
        self._next_rid = 1
        self._refs: dict[str, int] = {}
        self._registered: set[str] = set()  # watches the daemon has confirmed
        self._skip: dict[str, int] = {}     # duplicate events still to come, by path

    # -- requests ------------------------------------------------------------
    def read(self, path: str) -> tuple[int, bytes]:
        """Ask for the value at ``path``."""
        return self._request(Msg.CMD_READ, check_path(path))

    def write(self, path: str, value: bytes) -> tuple[int, bytes]:
        """Store ``value`` at ``path``."""
        check_path(path)
        return self._request(Msg.CMD_WRITE, path, check_value(path, value))

    def multiread(self, prefix: str) -> tuple[int, bytes]:
        """Ask for every entry under ``prefix``."""
        return self._request(Msg.CMD_MULTIREAD, check_prefix(prefix) or "/")

    def list(self, prefix: str) -> tuple[int, bytes]:
        """Ask for every path under ``prefix``."""
        return self._request(Msg.CMD_LIST, check_prefix(prefix) or "/")

    def rm(self, path: str) -> tuple[int, bytes]:
        """Remove ``path``, or everything under it when it ends with ``/``."""
        return self._request(Msg.CMD_RM, check_prefix(path) or "/")

    def watch(self, pattern: str) -> bytes:
        """One more watcher of ``pattern`` (see :func:`.paths.watch_sees`)."""
        wire = check_prefix(pattern) or "/"
        self._refs[wire] = self._refs.get(wire, 0) + 1
        if self._refs[wire] > 1:
            return b""
        return self._request(Msg.CMD_WATCH, wire, own=True)[1]

    def unwatch(self, pattern: str) -> bytes:
        """One watcher of ``pattern`` fewer."""
        wire = pattern or "/"
        refs = self._refs.get(wire, 0)
        if refs > 1:
            self._refs[wire] = refs - 1
            return b""
        if refs == 0:
            return b""
        del self._refs[wire]
        return self._request(Msg.CMD_UNWATCH, wire, own=True)[1]

    @property
    def waiting(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    @property
    def at_boundary(self) -> bool:
        """True when no received message is cut in the middle."""
        return self._decoder.at_boundary

    def _request(self, kind: Msg, path: str, data: bytes = b"", *,
                 own: bool = False) -> tuple[int, bytes]:
        wire = encode(kind, path, data)
        rid = 0
        if not own:
            rid, self._next_rid = self._next_rid, self._next_rid + 1
        self._pending.append(_Pending(kind, path, rid, len(data)))
        return rid, wire

    # -- responses -----------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Bytes received from the daemon, in any chunks."""
        self._decoder.feed(data)

    def next_event(self) -> Event | None:
        """The next event, None when more bytes are needed, or
        ``RemoteProtocolError`` when the daemon broke the protocol."""
        while True:
            msg = self._decoder.next_message()
            if msg is None:
                return None
            if msg.type is Msg.RESP_WATCH:
                event = self._fired(msg.path)
            elif not self._pending:
                raise RemoteProtocolError(f"{msg.type.name} arrived with no request waiting")
            else:
                event = self._answer(self._pending[0], msg)
            if event is not None:
                return event

    def _fired(self, path: str) -> Changed | None:
        if not path:
            raise RemoteProtocolError("RESP_WATCH with an empty path")
        left = self._skip.get(path, 0)
        if left:
            if left == 1:
                del self._skip[path]
            else:
                self._skip[path] = left - 1
            return None
        n = sum(1 for p in self._registered if watch_sees(p, path))
        if n > 1:
            self._skip[path] = n - 1
        return Changed(path)

    def _answer(self, head: _Pending, msg: Message) -> Event | None:
        if msg.type is Msg.RESP_ERROR:
            self._pending.popleft()
            return self._refused(head)
        if msg.type not in _EXPECT[head.kind]:
            want = " or ".join(t.name for t in _EXPECT[head.kind])
            raise RemoteProtocolError(
                f"{msg.type.name} answered the {head.kind.name} of {head.path!r}; "
                f"expected {want}")
        if head.kind in (Msg.CMD_MULTIREAD, Msg.CMD_LIST):
            if msg.path:
                if not under(head.path, msg.path):
                    raise RemoteProtocolError(
                        f"{msg.type.name} entry {msg.path!r} is not under {head.path!r}")
                head.entries[msg.path] = msg.data
                return None
            if msg.data:
                raise RemoteProtocolError(f"the end of a {head.kind.name} answer carries data")
            self._pending.popleft()
            if head.kind is Msg.CMD_LIST:
                return Reply(head.rid, sorted(head.entries))
            return Reply(head.rid, dict(sorted(head.entries.items())))
        if msg.path != head.path:
            raise RemoteProtocolError(
                f"{msg.type.name} for {msg.path!r} answered the {head.kind.name} of "
                f"{head.path!r}")
        self._pending.popleft()
        if head.kind is Msg.CMD_WATCH:
            self._registered.add(head.path)
            return None
        if head.kind is Msg.CMD_UNWATCH:
            self._registered.discard(head.path)
            return None
        if head.kind is Msg.CMD_READ:
            return Reply(head.rid, msg.data if msg.type is Msg.RESP_READ else None)
        if head.kind is Msg.CMD_RM:
            return Reply(head.rid, msg.type is Msg.RESP_OK)
        return Reply(head.rid, None)

    def _refused(self, head: _Pending) -> Event | None:
        if head.kind is Msg.CMD_WATCH:
            self._refs.pop(head.path, None)
            return WatchRefused(head.path, f"qubesdb-daemon refused to watch {head.path!r}")
        if head.kind is Msg.CMD_UNWATCH:
            self._registered.discard(head.path)
            return None
        verb = {Msg.CMD_READ: "to read", Msg.CMD_WRITE: "to write",
                Msg.CMD_MULTIREAD: "to multiread", Msg.CMD_LIST: "to list",
                Msg.CMD_RM: "to remove"}[head.kind]
        reason = f"qubesdb-daemon refused {verb} {head.path!r}"
        if head.kind is Msg.CMD_WRITE:
            reason += f" ({head.size} bytes)"
            if head.size == MAX_DATA:
                reason += (f"; qubesdb-daemon refuses data_len >= QDB_MAX_DATA, so it "
                           f"takes at most {MAX_DATA - 1} bytes")
        return Refused(head.rid, reason)
