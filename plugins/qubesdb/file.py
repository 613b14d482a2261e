"""The ``file`` backend: QubesDB entries from a TOML or JSON file (format: :mod:`.table`).

For use outside Qubes and in tests. What the device holds is the file's
table with the device's own writes on top:

* The file is read at connect (a missing or invalid file stops the boot
  with the reason). Afterwards it is checked for changes (mtime, size and
  inode) before every call and every ``poll`` seconds (0: only before
  calls). A changed file is read again; every path whose value is now
  different, added or gone fires the watchers that see it.
* A file that cannot be read or does not parse is logged once, as one line
  naming the file and the reason; the previous contents stay until the
  file is valid again.
* ``write()`` keeps the value in memory on top of the file, never in it:
  reads and watchers see it, it wins over the file's value for that path
  (a later change of the file at that path is then not seen), and it is
  gone when the device closes. Every write fires the watchers, also one
  that stores the same value again (Qubes' reload trigger is such a write).
* Baked (key ``bake``, :mod:`.bake`): inside an image the table is the
  image's own copy, read once at connect and never checked again (``path``
  only names it in logs); writes work as above.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ingot.signatures import Closed, DeviceError

from .paths import check_path, check_prefix, check_value, under
from .table import TableError, changed_paths, parse_table
from .watch import PathWatch, WatchHub


class FileQubesDB:
    """A :class:`~ingot.signatures.QubesDB` over a table file. Build it with :func:`open_file`."""

    def __init__(self, path: str, poll: float, log: Any,
                 baked: tuple[str, bytes] | None = None) -> None:
        self.path = path
        self._log = log
        self._baked = baked is not None
        if baked is not None:
            poll = 0.0
            self._seen: object = ("baked",)
            self._file = parse_table(*baked)
        else:
            self._seen, self._file = self._load()
        self._poll = poll
        self._mine: dict[str, bytes] = {}
        self._view = dict(self._file)
        self._bad: object = None  # the state of the file last logged as bad
        self._hub = WatchHub()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        if poll > 0:
            self._task = asyncio.get_running_loop().create_task(self._poller())

    # -- the QubesDB signature -------------------------------------------------
    async def read(self, path: str) -> bytes | None:
        """See :meth:`ingot.signatures.QubesDB.read`."""
        self._check()
        check_path(path)
        self.refresh()
        return self._view.get(path)

    async def multiread(self, prefix: str) -> dict[str, bytes]:
        """See :meth:`ingot.signatures.QubesDB.multiread`."""
        self._check()
        check_prefix(prefix)
        self.refresh()
        return {p: v for p, v in sorted(self._view.items()) if under(prefix, p)}

    async def list(self, prefix: str) -> list[str]:
        """See :meth:`ingot.signatures.QubesDB.list`."""
        self._check()
        check_prefix(prefix)
        self.refresh()
        return sorted(p for p in self._view if under(prefix, p))

    async def write(self, path: str, value: bytes) -> None:
        """See :meth:`ingot.signatures.QubesDB.write` and the module docstring."""
        self._check()
        check_path(path)
        data = check_value(path, value)
        self._mine[path] = data
        self._view[path] = data
        self._hub.publish(path)

    def watch(self, prefix: str) -> PathWatch:
        """See :meth:`ingot.signatures.QubesDB.watch`."""
        self._check()
        check_prefix(prefix)
        self.refresh()
        return self._hub.watch(prefix or "/")

    def close(self) -> None:
        """See :meth:`ingot.signatures.QubesDB.close`."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._hub.end(Closed("qubesdb"))

    # -- the file ----------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise Closed("qubesdb")

    def _state(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> tuple[tuple[int, int, int], dict[str, bytes]]:
        state = self._state()
        with open(self.path, "rb") as f:
            data = f.read()
        return state, parse_table(self.path, data)

    def refresh(self) -> list[str]:
        """Read the file again if it changed; the paths that changed. Never raises."""
        if self._baked:
            return []
        try:
            state: object = self._state()
        except OSError as exc:
            self._problem(("unreadable", exc.errno), exc.strerror or str(exc))
            return []
        if state == self._seen or state == self._bad:
            return []
        try:
            state, table = self._load()
        except OSError as exc:
            self._problem(state, exc.strerror or str(exc))
            return []
        except TableError as exc:
            self._problem(state, str(exc))
            return []
        self._seen, self._file, self._bad = state, table, None
        old, self._view = self._view, {**table, **self._mine}
        changed = changed_paths(old, self._view)
        self._log.info("QubesDB file reloaded", file=self.path, entries=len(table),
                       changed=len(changed))
        for path in changed:
            self._hub.publish(path)
        return changed

    def _problem(self, state: object, reason: str) -> None:
        if state == self._bad:
            return
        self._bad = state
        self._log.error("QubesDB file not reloaded; keeping its previous contents",
                        file=self.path, reason=reason)

    async def _poller(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._poll)
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - a watcher must not die silently
                self._log.error("QubesDB file check failed", file=self.path, error=repr(exc))


async def open_file(path: str, poll: float = 0.5, log: Any = None,
                    baked: tuple[str, bytes] | None = None) -> FileQubesDB:
    """Read ``path`` and watch it, or hold ``baked`` (``(name, bytes)`` of the table baked
    from ``path``); ``DeviceError`` when it cannot be read or parsed."""
    if log is None:
        from ingot.log import Logger

        log = Logger("qubesdb")
    try:
        return FileQubesDB(path, poll, log, baked)
    except OSError as exc:
        raise DeviceError(f"cannot read the QubesDB file {path}: "
                          f"{exc.strerror or exc}") from None
    except (TableError, ValueError) as exc:
        raise DeviceError(f"the QubesDB file {path} is not valid: {exc}") from None


async def connect(ctx: Any) -> FileQubesDB:
    """The factory of ``qubesdb/file`` (keys ``path``, ``poll``, ``bake``)."""
    path = str(ctx.keys["path"])
    poll = float(ctx.keys.get("poll", 0.5))
    if ctx.keys.get("bake") is True and ctx.data is not None:
        # named by .bake.baked_name (not imported: the image needs no build code)
        names = [n for n in ctx.data.paths() if n in ("table.json", "table.toml")]
        if not names:
            raise DeviceError("the image holds no baked QubesDB table; rebuild it with "
                              "--qubesdb-bake")
        db = await open_file(path, poll, ctx.log, (names[0], ctx.data.read(names[0])))
        ctx.log.info("QubesDB table from the image", file=path, entries=len(db._file))
        return db
    return await open_file(path, poll, ctx.log)
