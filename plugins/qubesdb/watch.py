"""Watchers of a QubesDB device, shared by both backends.

A :class:`PathWatch` is the :class:`~ingot.signatures.PathWatcher` that
``watch(pattern)`` returns: an async iterator of the changed paths that
the pattern sees (:func:`.paths.watch_sees`), in the order the backend
published them, from its creation on. A :class:`WatchHub` holds a device's
watchers and hands each published path to those that see it.

Ending: ``PathWatch.close()`` ends the iteration at once
(``StopAsyncIteration``). When the device ends it (closed: ``Closed``;
connection lost: ``DeviceError``), the paths already queued are still
yielded, then every ``__anext__`` raises that error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ingot.signatures import DeviceError

from .paths import watch_sees


class PathWatch:
    """See the module docstring. Events wait in an unbounded queue."""

    def __init__(self, hub: "WatchHub", pattern: str) -> None:
        self.pattern = pattern
        self._hub = hub
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._closed = False
        self._error: DeviceError | None = None

    def __aiter__(self) -> "PathWatch":
        return self

    async def __anext__(self) -> str:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None and self._queue.empty():
                raise self._error.with_traceback(None)
            item = await self._queue.get()
            if item is not None and not self._closed:
                return item

    @property
    def open(self) -> bool:
        """Neither closed nor ended by the device."""
        return not self._closed and self._error is None

    def _deliver(self, path: str) -> None:
        if self.open and watch_sees(self.pattern, path):
            self._queue.put_nowait(path)

    def _end(self, error: DeviceError) -> None:
        if self.open:
            self._error = error
            self._queue.put_nowait(None)

    def close(self) -> None:
        """Stop watching. Never raises."""
        if self._closed:
            return
        was_open = self.open
        self._closed = True
        self._queue.put_nowait(None)
        self._hub._discard(self, was_open)


class WatchHub:
    """The watchers of one device.

    ``on_close(pattern)`` (optional) is called when an open watcher is
    closed by its user: the ``socket`` backend unregisters the pattern there.
    """

    def __init__(self, on_close: Callable[[str], None] | None = None) -> None:
        self._on_close = on_close
        self._watchers: list[PathWatch] = []

    def watch(self, pattern: str) -> PathWatch:
        """A new watcher of ``pattern``."""
        w = PathWatch(self, pattern)
        self._watchers.append(w)
        return w

    def publish(self, path: str) -> None:
        """``path`` changed: tell every watcher that sees it."""
        for w in list(self._watchers):
            w._deliver(path)

    def end(self, error: DeviceError, pattern: str | None = None) -> None:
        """End the watchers of ``pattern`` (None: all) with ``error``."""
        keep = []
        for w in self._watchers:
            if pattern is None or w.pattern == pattern:
                w._end(error)
            else:
                keep.append(w)
        self._watchers = keep

    def _discard(self, w: PathWatch, was_open: bool) -> None:
        if w in self._watchers:
            self._watchers.remove(w)
            if was_open and self._on_close is not None:
                try:
                    self._on_close(w.pattern)
                except Exception:  # noqa: BLE001 - close() never raises
                    pass
