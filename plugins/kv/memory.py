"""``kv_rw/memory``: a store in the process's memory (tests, caches).

Nothing survives the process: the durability promise of
:class:`~ingot.signatures.KvRW` does not hold here, by definition. The tree
is immutable and shared (:class:`~ingot.plugins.kv.common.Dir`); a write
builds a new root and swaps it in, so a batch is atomic and a reader never
sees half of one. ``limit`` (bytes of values, 0 = none) makes a write that
would exceed it raise ``NoSpace``.
"""

from __future__ import annotations

import time
from typing import Any

from ingot.registry import DeviceContext
from ingot.signatures import Change, NoSpace

from .common import Dir, TreeReader, Value, split_ns
from .write import Op, TreeEdit, WatchHub, Writer


class _Adapter:
    """The in-memory tree as :class:`~ingot.plugins.kv.write.TreeEdit` sees it."""

    def is_dir(self, node: Any) -> bool:
        return isinstance(node, Dir)

    def children(self, node: Dir) -> dict[str, Any]:
        return node.entries

    def digest(self, node: Value) -> bytes:
        return node.digest

    def value_digest(self, data: bytes) -> bytes:
        return Value(data).digest

    def same(self, a: Any, b: Any) -> bool:
        return a is b


ADAPTER = _Adapter()


class MemoryStore(Writer, TreeReader):
    """:class:`~ingot.signatures.KvRW` in memory."""

    _what = "kv store (memory)"

    def __init__(self, limit: int = 0) -> None:
        self._root = Dir()
        self._limit = limit
        self._hub = WatchHub(self._what)

    async def _apply(self, ops: list[Op], message: str, author: str | None) -> list[Change]:
        edit = TreeEdit(ADAPTER, self._root)
        edit.apply(ops)
        changes = edit.changes(*edit.diff())
        now = split_ns(time.time_ns())
        root = edit.build(lambda entries, _base: Dir(entries), lambda data: Value(data, now))
        if self._limit and root.total > self._limit and root.total > self._root.total:
            raise NoSpace(self._what, root.total - self._limit)
        self._root = root
        return changes


def connect(ctx: DeviceContext) -> MemoryStore:
    return MemoryStore(limit=int(ctx.keys.get("limit", 0) or 0))
