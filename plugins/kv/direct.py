"""``kv_ro/direct`` and ``kv_rw/direct``: a folder of the host.

A key is a path under the folder: values are regular files, dictionaries
are folders. Nothing outside the folder is reachable: keys are checked
(no ``..``, no absolute paths), and a symbolic link inside the folder is
followed only when its target stays inside the folder (otherwise it is as
if absent). Special files (FIFOs, sockets, devices) and names that are not
UTF-8 are invisible. Names starting with ``.ingot-`` at the top of the
folder belong to the store (lock, journal, temporary files): they are
never listed, and keys starting with them raise ``InvalidKey``.

Digests are sha256 of the file (remembered while the file's inode, size
and times stay the same); ``last_modified`` is the file's mtime, and for a
dictionary the newest mtime below it (its own included).

Writes (``kv_rw``), one writer at a time (an ``flock`` on ``.ingot-lock``,
also across processes):

1. every new value goes to a temporary file ``.ingot-tmp-<random>`` at the
   top of the folder, which is fsynced;
2. a single new value with nothing removed is renamed over its key and the
   folders are fsynced: that rename is the commit;
3. anything else (a batch, a removal, a rename: a rename copies the values
   through temporary files and removes the source) first writes a journal,
   ``.ingot-journal``, listing the keys to remove and the temporary files to
   rename into place; the journal is fsynced and renamed into place (that
   rename is the commit), then applied, the folders fsynced, and the journal
   deleted.

At connect, and before every write, a leftover journal is rolled forward
(its steps are idempotent: if any of its temporary files is already gone,
the removals are known to be done), and at connect leftover temporary files
are deleted. A crash at any point therefore leaves every batch applied
wholly or not at all. Other processes reading the folder may see a batch
half-applied for the moment it takes to apply it.

Watching: writes of this store are reported at once; changes made by
others (another process, an editor) are found by polling while at least
one watcher waits: every ``poll`` seconds (0.5 by default, 0 = never) the
store compares mtime, size and inode of every file with the previous scan.

All file I/O runs on the event loop's thread: local file calls are short,
but an fsync can hold the loop for some milliseconds per write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from typing import Any

from ingot.registry import DeviceContext
from ingot.signatures import Change, InvalidKey, Kind, StoreError

from .common import Parts, Reader, dict_digest, join_key, sha256, split_key, split_ns
from .write import NewValue, Op, RenameOp, TreeEdit, WatchHub, Writer

RESERVED = ".ingot-"
LOCK = ".ingot-lock"
JOURNAL = ".ingot-journal"
JOURNAL_NEW = ".ingot-journal.new"
TMP = ".ingot-tmp-"
NAME_MAX = 255
_TMP_NAME = re.compile(r"^\.ingot-tmp-[0-9a-f]{16}$")


class _Node:
    """A file or folder under the root (``path`` is its real path)."""

    __slots__ = ("path", "is_dir", "st")

    def __init__(self, path: str, is_dir: bool, st: os.stat_result) -> None:
        self.path = path
        self.is_dir = is_dir
        self.st = st


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _utf8(name: str) -> bool:
    """Whether a file name (decoded with surrogate escapes) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: str, data: bytes, flags: int) -> None:
    """Write ``data`` to a new file at ``path`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectReader(Reader):
    """:class:`~ingot.signatures.KvRO` over a host folder."""

    _what = "kv store (direct)"

    def __init__(self, root: str) -> None:
        self._real = os.path.realpath(root)
        if not os.path.isdir(self._real):
            raise StoreError(f"{root} is not a folder")
        self._digests: dict[tuple[Any, ...], bytes] = {}

    # -- paths -------------------------------------------------------------
    def _check(self, parts: Parts) -> None:
        if parts and parts[0].startswith(RESERVED):
            raise InvalidKey(join_key(parts), f"names starting with {RESERVED!r} are reserved")

    def _path(self, parts: Parts) -> str:
        return os.path.join(self._real, *parts)

    def _node_at(self, path: str) -> _Node | None:
        real = os.path.realpath(path)
        if not _inside(real, self._real):
            return None
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # cannot be there
                return None
            raise
        if stat.S_ISDIR(st.st_mode):
            return _Node(real, True, st)
        if stat.S_ISREG(st.st_mode):
            return _Node(real, False, st)
        return None

    def _children(self, node: _Node) -> dict[str, _Node]:
        top = node.path == self._real
        out: dict[str, _Node] = {}
        with os.scandir(node.path) as it:
            for entry in it:
                name = entry.name
                if top and name.startswith(RESERVED):
                    continue
                if not _utf8(name):
                    continue
                child = self._node_at(os.path.join(node.path, name))
                if child is not None:
                    out[name] = child
        return out

    # -- Reader primitives -------------------------------------------------
    def _lookup(self, snap: Any, parts: Parts) -> _Node | None:
        self._check(parts)
        return self._node_at(self._path(parts))

    def _is_dir(self, node: _Node) -> bool:
        return node.is_dir

    def _read(self, node: _Node) -> bytes:
        with open(node.path, "rb") as fh:
            return fh.read()

    def _read_partial(self, node: _Node, offset: int, length: int) -> bytes:
        with open(node.path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def _size(self, node: _Node) -> int:
        return node.st.st_size

    def _entries(self, node: _Node) -> list[tuple[str, Kind]]:
        return [(name, Kind.DICTIONARY if c.is_dir else Kind.VALUE)
                for name, c in sorted(self._children(node).items())]

    def _digest(self, node: _Node) -> bytes:
        if node.is_dir:
            return dict_digest((name, Kind.DICTIONARY if c.is_dir else Kind.VALUE,
                                self._digest(c)) for name, c in self._children(node).items())
        st = node.st
        memo = (node.path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        digest = self._digests.get(memo)
        if digest is None:
            digest = sha256(self._read(node))
            if len(self._digests) > 4096:
                self._digests.clear()
            self._digests[memo] = digest
        return digest

    def _mtime(self, snap: Any, node: _Node, parts: Parts) -> tuple[int, int]:
        return split_ns(self._mtime_ns(node))

    def _mtime_ns(self, node: _Node) -> int:
        if not node.is_dir:
            return node.st.st_mtime_ns
        return max([node.st.st_mtime_ns] + [self._mtime_ns(c)
                                            for c in self._children(node).values()])


class _Adapter:
    """The folder as :class:`~ingot.plugins.kv.write.TreeEdit` sees it (one
    per write: folder listings are remembered for the write's duration)."""

    def __init__(self, store: DirectReader) -> None:
        self._store = store
        self._listed: dict[str, dict[str, _Node]] = {}

    def is_dir(self, node: _Node) -> bool:
        return node.is_dir

    def children(self, node: _Node) -> dict[str, _Node]:
        got = self._listed.get(node.path)
        if got is None:
            got = self._listed[node.path] = self._store._children(node)
        return got

    def digest(self, node: _Node) -> bytes:
        return self._store._digest(node)

    def value_digest(self, data: bytes) -> bytes:
        return sha256(data)

    def same(self, a: _Node, b: _Node) -> bool:
        return a.path == b.path and a.is_dir == b.is_dir


class DirectStore(Writer, DirectReader):
    """:class:`~ingot.signatures.KvRW` over a host folder (see the module docstring)."""

    def __init__(self, root: str, poll: float = 0.5) -> None:
        if not os.path.isdir(root):
            os.makedirs(root)
            _fsync_dir(os.path.dirname(os.path.abspath(root)) or ".")
        DirectReader.__init__(self, root)
        self._poll = poll
        self._poll_task: asyncio.Task[None] | None = None
        self._seen: dict[str, tuple[int, ...]] | None = None
        self._hub = WatchHub(self._what, on_wait=self._start_poller)
        self._lock_fd = os.open(os.path.join(self._real, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with self._locked():
                self._recover()
                for name in os.listdir(self._real):
                    if _TMP_NAME.match(name) or name == JOURNAL_NEW:
                        os.unlink(os.path.join(self._real, name))
        except BaseException:
            os.close(self._lock_fd)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- writing -------------------------------------------------------------
    async def _apply(self, ops: list[Op], message: str, author: str | None) -> list[Change]:
        for op in ops:
            for parts in (op.source, op.dest) if isinstance(op, RenameOp) else (op.parts,):
                self._check(parts)
                for name in parts:
                    if len(name.encode("utf-8")) > NAME_MAX:
                        raise InvalidKey(join_key(parts), f"a segment is longer than "
                                         f"{NAME_MAX} bytes, the file system's limit")
        with self._locked():
            self._recover()
            root = self._node_at(self._real)
            if root is None:
                raise StoreError(f"{self._real} is gone")
            edit = TreeEdit(_Adapter(self), root)
            edit.apply(ops)
            removed, written = edit.diff()
            changes = edit.changes(removed, written)
            for parts, _leaf in written:
                self._contained(self._path(parts))
            if removed or written:
                self._write([join_key(p) for p in removed], written)
        self._note(changes)
        return changes

    def _write(self, removed: list[str], written: list[tuple[Parts, Any]]) -> None:
        puts: list[tuple[str, str]] = []
        try:
            for parts, leaf in written:
                data = leaf.data if isinstance(leaf, NewValue) else self._read(leaf)
                puts.append((join_key(parts), self._temp(data)))
            journal = bool(removed) or len(puts) != 1
            if journal:
                self._write_journal(removed, puts)
        except BaseException:
            for _key, tmp in puts:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._real, tmp))
            raise
        self._roll_forward(removed, puts)
        if journal:
            os.unlink(os.path.join(self._real, JOURNAL))
            _fsync_dir(self._real)

    def _temp(self, data: bytes) -> str:
        name = TMP + secrets.token_hex(8)
        _write_synced(os.path.join(self._real, name), data, os.O_EXCL)
        return name

    def _write_journal(self, removed: list[str], puts: list[tuple[str, str]]) -> None:
        doc = json.dumps({"format": 1, "remove": removed, "put": puts}).encode()
        new = os.path.join(self._real, JOURNAL_NEW)
        _write_synced(new, doc, os.O_TRUNC)
        os.replace(new, os.path.join(self._real, JOURNAL))
        _fsync_dir(self._real)

    def _roll_forward(self, removed: list[str], puts: list[tuple[str, str]]) -> None:
        dirs: set[str] = set()
        started = any(not os.path.lexists(os.path.join(self._real, tmp)) for _k, tmp in puts)
        if not started:
            for key in removed:
                path = self._path(split_key(key))
                self._contained(path)
                if os.path.islink(path) or os.path.isfile(path):
                    os.unlink(path)
                elif os.path.isdir(path):
                    shutil.rmtree(path)
                dirs.add(os.path.dirname(path))
        for key, tmp in puts:
            src = os.path.join(self._real, tmp)
            dst = self._path(split_key(key))
            if os.path.lexists(src):
                self._contained(dst)
                self._makedirs(os.path.dirname(dst), dirs)
                self._contained(dst)
                os.replace(src, dst)
            dirs.add(os.path.dirname(dst))
        for d in sorted(dirs, reverse=True):
            if os.path.isdir(d):
                _fsync_dir(d)

    def _contained(self, path: str) -> None:
        """Refuse a path whose folder leads out of the store through a link."""
        if not _inside(os.path.realpath(os.path.dirname(path)), self._real):
            raise StoreError(f"{os.path.relpath(path, self._real)!r} leads out of "
                             f"{self._real} through a link")

    def _makedirs(self, path: str, dirs: set[str]) -> None:
        missing = []
        while not os.path.isdir(path) and _inside(path, self._real) and path != self._real:
            missing.append(path)
            path = os.path.dirname(path)
        for d in reversed(missing):
            os.mkdir(d)
            dirs.add(os.path.dirname(d))

    def _recover(self) -> None:
        path = os.path.join(self._real, JOURNAL)
        if not os.path.exists(path):
            return
        try:
            with open(path, "rb") as fh:
                doc = json.loads(fh.read())
            removed = [str(k) for k in doc["remove"]]
            puts = [(str(k), str(t)) for k, t in doc["put"]]
            for key in removed + [k for k, _t in puts]:
                self._check(split_key(key))
            if not all(_TMP_NAME.match(t) for _k, t in puts):
                raise ValueError("a temporary file name is malformed")
        except (ValueError, KeyError, TypeError, InvalidKey) as exc:
            raise StoreError(f"{path}: unreadable journal ({exc}); the folder needs a look "
                             "by hand") from None
        self._roll_forward(removed, puts)
        os.unlink(path)
        _fsync_dir(self._real)

    # -- watching ------------------------------------------------------------
    def watch(self, prefix: str = "") -> Any:
        watcher = super().watch(prefix)
        if self._poll > 0 and self._seen is None:
            self._seen = self._scan()
        self._start_poller()
        return watcher

    def _start_poller(self) -> None:
        if self._poll <= 0 or self._closed:
            return
        if self._poll_task is not None and not self._poll_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._seen is None:
            self._seen = self._scan()
        self._poll_task = loop.create_task(self._poller())

    async def _poller(self) -> None:
        while self._hub.active and not self._closed:
            await asyncio.sleep(self._poll)
            try:
                now = self._scan()
            except OSError:
                continue
            old, self._seen = self._seen or {}, now
            gone = sorted(k for k in old if k not in now)
            new = sorted(k for k, v in now.items() if old.get(k) != v)
            changes = [Change(k, False) for k in gone] + [Change(k, True) for k in new]
            if changes:
                self._hub.publish(changes)
        self._seen = None

    def _scan(self) -> dict[str, tuple[int, ...]]:
        """mtime, size and inode of every file, by key."""
        seen: dict[str, tuple[int, ...]] = {}
        for base, dirs, files in os.walk(self._real):
            rel = os.path.relpath(base, self._real)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            dirs[:] = [d for d in dirs if _utf8(d) and not (not prefix and d.startswith(RESERVED))]
            if not prefix:
                files = [f for f in files if not f.startswith(RESERVED)]
            for name in files:
                full = os.path.join(base, name)
                if not _utf8(name) or (os.path.islink(full) and not _inside(
                        os.path.realpath(full), self._real)):
                    continue
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    seen[prefix + name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return seen

    def _note(self, changes: list[Change]) -> None:
        """Record this store's own writes in the poll scan (reported already)."""
        if self._seen is None:
            return
        for change in changes:
            self._seen.pop(change.key, None)
            if change.present:
                with contextlib.suppress(OSError):
                    st = os.stat(self._path(split_key(change.key)))
                    self._seen[change.key] = (st.st_mtime_ns, st.st_size, st.st_ino)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


def connect_ro(ctx: DeviceContext) -> DirectReader:
    path = str(ctx.keys["path"])
    if not os.path.isdir(path):
        raise StoreError(f"{path!r} is not a folder (set {ctx.key_flag('path')})")
    return DirectReader(path)


def connect_rw(ctx: DeviceContext) -> DirectStore:
    path = str(ctx.keys["path"])
    try:
        return DirectStore(path, poll=float(ctx.keys.get("poll", 0.5)))
    except OSError as exc:
        raise StoreError(f"{path!r}: {exc} (set {ctx.key_flag('path')})") from None
