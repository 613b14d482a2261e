"""What the read-write backends share: write operations, tree edits,
batches and watchers.

Every write is a list of operations (:class:`SetOp`, :class:`RemoveOp`,
:class:`RenameOp`); a plain ``set`` is a list of one, a batch a list of
many. A backend implements one method, ``_apply(ops, message, author)``,
which applies the whole list or nothing and returns the :class:`Change`
events; :class:`Writer` builds ``set``/``remove``/``rename``/``batch``/
``watch`` on it.

:class:`TreeEdit` is how a backend computes the result of a list of
operations over its own tree without touching storage: it copies on write
the dictionaries it changes and keeps the backend's own nodes (memory
nodes, git ``(mode, sha)`` entries, folder entries) for what it does not
touch. The rules it enforces, for every backend alike:

* ``set`` under a value raises ``DictionaryExpected`` (naming the value);
  ``set`` on a dictionary raises ``ValueExpected``;
* ``remove`` of an absent key is a no-op; ``remove("")`` empties the store;
* ``rename`` raises ``NotFound`` for an absent source, replaces the
  destination (value or dictionary), and refuses a destination inside the
  source (``InvalidKey``);
* a dictionary left empty by a removal or a rename disappears (as in git).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ingot.signatures import (
    Change,
    Closed,
    Conflict,
    DictionaryExpected,
    InvalidKey,
    NotFound,
    ValueExpected,
)

from .common import Parts, Reader, is_within, join_key, split_key

# --------------------------------------------------------------------------
# operations


@dataclass(frozen=True)
class SetOp:
    parts: Parts
    value: bytes
    expect: bytes | None = None  # if_digest: b"" = must not exist


@dataclass(frozen=True)
class RemoveOp:
    parts: Parts


@dataclass(frozen=True)
class RenameOp:
    source: Parts
    dest: Parts


Op = SetOp | RemoveOp | RenameOp


def describe(ops: list[Op]) -> str:
    """A one-line summary of ``ops`` (the default git commit message)."""
    def one(op: Op) -> str:
        if isinstance(op, SetOp):
            return f"set {join_key(op.parts)}"
        if isinstance(op, RemoveOp):
            return f"remove {join_key(op.parts) or '/'}"
        return f"rename {join_key(op.source)} to {join_key(op.dest)}"

    words = [one(op) for op in ops]
    if len(words) == 1:
        return words[0]
    more = ", ..." if len(words) > 4 else ""
    return f"{len(words)} changes: " + ", ".join(words[:4]) + more


# --------------------------------------------------------------------------
# tree edits


class TreeAdapter(Protocol):
    """How :class:`TreeEdit` sees a backend's nodes."""

    def is_dir(self, node: Any) -> bool: ...

    def children(self, node: Any) -> Mapping[str, Any]: ...

    def digest(self, node: Any) -> bytes: ...

    def value_digest(self, data: bytes) -> bytes: ...

    def same(self, a: Any, b: Any) -> bool: ...


class NewValue:
    """A value written by the edit (not yet stored)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Edit:
    """A dictionary the edit changed: a copy of its entries, and the base
    dictionary it was copied from (None for a new one)."""

    __slots__ = ("entries", "base")

    def __init__(self, entries: dict[str, Any], base: Any = None) -> None:
        self.entries = entries
        self.base = base


class TreeEdit:
    """Operations applied, in memory, to a backend's tree (``root`` may be
    None for an empty store). See the module docstring for the rules."""

    def __init__(self, adapter: TreeAdapter, root: Any) -> None:
        self.adapter = adapter
        self.base = root
        self.root = _Edit(dict(adapter.children(root)) if root is not None else {}, root)

    def is_dir(self, node: Any) -> bool:
        return isinstance(node, _Edit) or (
            not isinstance(node, NewValue) and self.adapter.is_dir(node))

    def _children(self, node: Any) -> Mapping[str, Any]:
        return node.entries if isinstance(node, _Edit) else self.adapter.children(node)

    def get(self, parts: Parts) -> Any:
        """The node at ``parts`` after the edits so far, or None."""
        node = self.root
        for name in parts:
            if not self.is_dir(node):
                return None
            node = self._children(node).get(name)
            if node is None:
                return None
        return node

    def value_digest(self, node: Any) -> bytes:
        if isinstance(node, NewValue):
            return self.adapter.value_digest(node.data)
        return self.adapter.digest(node)

    def _chain(self, parts: Parts) -> list[_Edit]:
        """The edited dictionaries from the root down to ``parts``, made as needed."""
        chain = [self.root]
        for i, name in enumerate(parts):
            here = chain[-1]
            child = here.entries.get(name)
            if child is None:
                child = _Edit({})
            elif not isinstance(child, _Edit):
                if not self.is_dir(child):
                    raise DictionaryExpected(join_key(parts[:i + 1]))
                child = _Edit(dict(self.adapter.children(child)), child)
            here.entries[name] = child
            chain.append(child)
        return chain

    def set(self, parts: Parts, value: bytes) -> None:
        if not parts:
            raise ValueExpected("")
        parent = self._chain(parts[:-1])[-1]
        old = parent.entries.get(parts[-1])
        if old is not None and self.is_dir(old):
            raise ValueExpected(join_key(parts))
        parent.entries[parts[-1]] = NewValue(value)

    def remove(self, parts: Parts) -> None:
        if self.get(parts) is None:
            return
        if not parts:
            self.root.entries.clear()
            return
        chain = self._chain(parts[:-1])
        del chain[-1].entries[parts[-1]]
        for i in range(len(chain) - 1, 0, -1):  # prune emptied dictionaries
            if chain[i].entries:
                break
            del chain[i - 1].entries[parts[i - 1]]

    def rename(self, source: Parts, dest: Parts) -> None:
        node = self.get(source)
        if node is None:
            raise NotFound(join_key(source))
        if source == dest:
            return
        if is_within(dest, source):
            raise InvalidKey(join_key(dest), f"is inside the source {join_key(source)!r}")
        if not dest:
            raise InvalidKey("", "the root dictionary cannot be replaced")
        self.remove(source)
        self._chain(dest[:-1])[-1].entries[dest[-1]] = node

    def apply(self, ops: list[Op]) -> None:
        """Apply ``ops`` in order, checking ``if_digest`` conditions."""
        for op in ops:
            if isinstance(op, SetOp):
                if op.expect is not None:
                    self._check_expect(op)
                self.set(op.parts, op.value)
            elif isinstance(op, RemoveOp):
                self.remove(op.parts)
            else:
                self.rename(op.source, op.dest)

    def _check_expect(self, op: SetOp) -> None:
        key = join_key(op.parts)
        node = self.get(op.parts)
        if node is not None and self.is_dir(node):
            raise ValueExpected(key)
        actual = None if node is None else self.value_digest(node)
        if actual != (op.expect or None):
            raise Conflict(key, op.expect, actual)

    # -- results ----------------------------------------------------------
    def diff(self) -> tuple[list[Parts], list[tuple[Parts, Any]]]:
        """What changed against the base tree, as ``(removed, written)``:
        ``removed`` lists base nodes (values or whole dictionaries) that go or
        are replaced by another kind; ``written`` lists the values to store,
        each a :class:`NewValue` or a base value node moved by a rename."""
        removed: list[Parts] = []
        written: list[tuple[Parts, Any]] = []
        self._walk(self.root, self.base, (), removed, written)
        return removed, written

    def _walk(self, new: Any, old: Any, parts: Parts, removed: list[Parts],
              written: list[tuple[Parts, Any]]) -> None:
        if new is old:
            return
        a = self.adapter
        if new is None:
            removed.append(parts)
            return
        if old is not None and not isinstance(new, (_Edit, NewValue)) and a.same(new, old):
            return
        old_dir = old is not None and a.is_dir(old)
        if not self.is_dir(new):
            if old_dir:
                removed.append(parts)
            written.append((parts, new))
            return
        if old is not None and not old_dir:
            removed.append(parts)
            old = None
        new_c = self._children(new)
        old_c = a.children(old) if old is not None else {}
        for name in sorted(new_c.keys() | old_c.keys()):
            self._walk(new_c.get(name), old_c.get(name), parts + (name,), removed, written)

    def changes(self, removed: list[Parts], written: list[tuple[Parts, Any]]) -> list[Change]:
        """Watcher events for a :meth:`diff`: removals first, then values set."""
        present = [join_key(p) for p, _ in written]
        gone: set[str] = set()
        for parts in removed:
            gone.update(leaves(self.adapter, lookup(self.adapter, self.base, parts), parts))
        gone.difference_update(present)
        return [Change(k, False) for k in sorted(gone)] + [Change(k, True) for k in present]

    def build(self, make_dir: Callable[[dict[str, Any], Any], Any],
              make_value: Callable[[bytes], Any]) -> Any:
        """The new root, made bottom-up from the edited dictionaries only:
        ``make_dir(entries, base)`` gets the new entries and the base
        dictionary they were copied from (None for a new one)."""
        def rec(node: Any) -> Any:
            if isinstance(node, _Edit):
                return make_dir({name: rec(c) for name, c in node.entries.items()}, node.base)
            if isinstance(node, NewValue):
                return make_value(node.data)
            return node

        return rec(self.root)


def lookup(adapter: TreeAdapter, root: Any, parts: Parts) -> Any:
    node = root
    for name in parts:
        if node is None or not adapter.is_dir(node):
            return None
        node = adapter.children(node).get(name)
    return node


def leaves(adapter: TreeAdapter, node: Any, parts: Parts) -> list[str]:
    """The keys of every value at or under ``node``."""
    if node is None:
        return []
    if not adapter.is_dir(node):
        return [join_key(parts)]
    out: list[str] = []
    for name, child in adapter.children(node).items():
        out += leaves(adapter, child, parts + (name,))
    return out


def tree_changes(adapter: TreeAdapter, old: Any, new: Any) -> list[Change]:
    """Watcher events between two versions of a backend's tree."""
    edit = TreeEdit(adapter, old)
    edit.root = new if new is not None else _Edit({})
    return edit.changes(*edit.diff())


# --------------------------------------------------------------------------
# watchers


class KvWatcher:
    """A :class:`~ingot.signatures.Watcher`: events under one prefix, in order.

    ``close()`` ends the iteration; closing the store makes a waiting or
    later ``__anext__`` raise ``Closed``.
    """

    def __init__(self, hub: "WatchHub", prefix: str) -> None:
        self._hub = hub
        self._prefix = prefix
        self._queue: asyncio.Queue[Change | None] = asyncio.Queue()
        self._state = "open"  # "closed" by close(), "store" when the store closed

    def __aiter__(self) -> "KvWatcher":
        return self

    async def __anext__(self) -> Change:
        while True:
            if self._state == "closed":
                raise StopAsyncIteration
            if self._state == "store":
                raise Closed(self._hub.what)
            if self._queue.empty():
                self._hub.waiting()
            item = await self._queue.get()
            if item is not None and self._state == "open":
                return item

    def _deliver(self, change: Change) -> None:
        p = self._prefix
        if self._state == "open" and (
                not p or change.key == p or change.key.startswith(p + "/")):
            self._queue.put_nowait(change)

    def _end(self, state: str) -> None:
        if self._state == "open":
            self._state = state
            self._queue.put_nowait(None)

    def close(self) -> None:
        self._end("closed")
        self._hub.discard(self)


class WatchHub:
    """The watchers of one store. ``on_wait`` (optional) is called when a
    watcher starts waiting: the ``direct`` backend starts its poller there."""

    def __init__(self, what: str, on_wait: Callable[[], None] | None = None) -> None:
        self.what = what
        self.on_wait = on_wait
        self._watchers: list[KvWatcher] = []

    def watch(self, prefix: str) -> KvWatcher:
        w = KvWatcher(self, prefix)
        self._watchers.append(w)
        return w

    @property
    def active(self) -> bool:
        return bool(self._watchers)

    def waiting(self) -> None:
        if self.on_wait is not None:
            self.on_wait()

    def publish(self, changes: list[Change]) -> None:
        for w in list(self._watchers):
            for change in changes:
                w._deliver(change)

    def discard(self, w: KvWatcher) -> None:
        if w in self._watchers:
            self._watchers.remove(w)

    def close(self) -> None:
        watchers, self._watchers = self._watchers, []
        for w in watchers:
            w._end("store")


# --------------------------------------------------------------------------
# batches and the writer


class Batch:
    """A :class:`~ingot.signatures.KvBatch`: records operations; reads go
    through what it staged, then to the store."""

    def __init__(self, store: "Writer") -> None:
        self._store = store
        self.ops: list[Op] = []
        self.open = True

    def _check(self) -> None:
        if not self.open:
            raise Closed("batch")

    async def set(self, key: str, value: bytes) -> None:
        self._check()
        self.ops.append(SetOp(split_key(key), bytes(value)))

    async def remove(self, key: str) -> None:
        self._check()
        self.ops.append(RemoveOp(split_key(key)))

    async def get(self, key: str) -> bytes:
        self._check()
        parts = split_key(key)
        for op in reversed(self.ops):
            if isinstance(op, SetOp):
                if op.parts == parts:
                    return op.value
                if is_within(op.parts, parts):
                    raise ValueExpected(key)
                if is_within(parts, op.parts):
                    raise NotFound(key)
            elif isinstance(op, RemoveOp) and is_within(parts, op.parts):
                raise NotFound(key)
        return await self._store.get(key)


class BatchContext:
    """``async with store.batch(...) as b``: applies ``b``'s operations at a
    normal exit, none of them when the block raises."""

    def __init__(self, store: "Writer", message: str, author: str | None) -> None:
        self._store = store
        self._message = message
        self._author = author
        self._batch: Batch | None = None

    async def __aenter__(self) -> Batch:
        if self._batch is not None:
            raise RuntimeError("a batch context is entered once")
        self._batch = Batch(self._store)
        return self._batch

    async def __aexit__(self, et: object, ev: object, tb: object) -> bool | None:
        batch = self._batch
        assert batch is not None
        batch.open = False
        if et is None and batch.ops:
            await self._store._commit(batch.ops, self._message, self._author)
        return None


class Writer(Reader):
    """:class:`~ingot.signatures.KvRW` writes and watches over ``_apply``.

    A backend sets ``self._hub`` in its constructor and implements
    ``_apply(ops, message, author)``: apply every operation or none (raising
    the error) and return the :class:`Change` events.
    """

    _hub: WatchHub

    async def _apply(self, ops: list[Op], message: str, author: str | None) -> list[Change]:
        raise NotImplementedError

    async def _commit(self, ops: list[Op], message: str, author: str | None) -> None:
        with self._guard(describe(ops)):
            changes = await self._apply(ops, message or describe(ops), author)
        self._hub.publish(changes)

    async def set(self, key: str, value: bytes, *, if_digest: bytes | None = None) -> None:
        parts = split_key(key)
        expect = bytes(if_digest) if if_digest is not None else None
        await self._commit([SetOp(parts, bytes(value), expect)], "", None)

    async def remove(self, key: str) -> None:
        await self._commit([RemoveOp(split_key(key))], "", None)

    async def rename(self, source: str, dest: str) -> None:
        await self._commit([RenameOp(split_key(source), split_key(dest))], "", None)

    def batch(self, message: str = "", author: str | None = None) -> BatchContext:
        return BatchContext(self, message, author)

    def watch(self, prefix: str = "") -> KvWatcher:
        parts = split_key(prefix)
        if self._closed:
            raise Closed(self._what)
        return self._hub.watch(join_key(parts))

    def close(self) -> None:
        super().close()
        self._hub.close()
