"""What every kv backend shares: key checks, the in-memory tree, and
:class:`~ingot.signatures.KvRO` over a handful of primitives.

Keys (the rule of :class:`~ingot.signatures.KvRO`): ``/``-separated
segments, none empty, none ``.`` or ``..``, no NUL, at most 1024 bytes in
UTF-8; ``""`` is the root dictionary. :func:`split_key` turns a key into its
segments or raises :class:`~ingot.signatures.InvalidKey`; every key from
outside goes through it before a backend sees it.

Digests are raw bytes: sha256 of a value's bytes (``git`` uses the object
id instead); a dictionary's digest hashes its sorted entries, each as kind,
name and the entry's digest (:func:`dict_digest`).

This module imports nothing beyond the standard library and
:mod:`ingot.signatures`; the read-only backends need nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ingot.signatures import (
    Closed,
    DeviceError,
    DictionaryExpected,
    InvalidKey,
    Kind,
    NoSpace,
    NotFound,
    StoreError,
    ValueExpected,
)

MAX_KEY_BYTES = 1024
"""The longest key, in bytes of UTF-8."""

Parts = tuple[str, ...]
"""A checked key as its segments; ``()`` is the root."""


def split_key(key: str) -> Parts:
    """The segments of ``key``, or :class:`InvalidKey` saying what is wrong."""
    if not isinstance(key, str):
        raise InvalidKey(repr(key), f"a key is a str, not {type(key).__name__}")
    if key == "":
        return ()
    if "\0" in key:
        raise InvalidKey(key, "contains NUL")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(key, "is not valid Unicode (lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(key, f"longer than {MAX_KEY_BYTES} bytes in UTF-8")
    if key.startswith("/"):
        raise InvalidKey(key, "starts with '/' (keys are relative to the store)")
    parts = tuple(key.split("/"))
    for part in parts:
        if part == "":
            raise InvalidKey(key, "has an empty segment")
        if part in (".", ".."):
            raise InvalidKey(key, f"has a {part!r} segment")
    return parts


def join_key(parts: Iterable[str]) -> str:
    """The key of ``parts`` (the inverse of :func:`split_key`)."""
    return "/".join(parts)


def is_within(parts: Parts, prefix: Parts) -> bool:
    """Whether ``parts`` is ``prefix`` or under it."""
    return parts[:len(prefix)] == prefix


_AUTHOR = re.compile(r"^[^<>\n]+ <[^<>\n]*>$")


def check_author(author: str) -> str:
    """``author`` if it reads ``Name <email>`` (a git author), else ``ValueError``."""
    if not isinstance(author, str) or not _AUTHOR.match(author):
        raise ValueError(f"author {author!r} is not 'Name <email>'")
    return author


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def dict_digest(entries: Iterable[tuple[str, Kind, bytes]]) -> bytes:
    """The digest of a dictionary from its ``(name, kind, digest)`` entries."""
    h = hashlib.sha256(b"ingot-kv-dictionary\n")
    for name, kind, digest in sorted(entries, key=lambda e: e[0]):
        h.update(b"d" if kind is Kind.DICTIONARY else b"v")
        h.update(name.encode("utf-8") + b"\0")
        h.update(len(digest).to_bytes(1, "big") + digest)
    return h.digest()


def split_ns(ns: int) -> tuple[int, int]:
    """POSIX nanoseconds as ``(s, ns)``."""
    return ns // 1_000_000_000, ns % 1_000_000_000


# --------------------------------------------------------------------------
# the in-memory tree (memory, crunch)


class Value:
    """An immutable value of the in-memory tree."""

    __slots__ = ("data", "mtime", "digest")

    def __init__(self, data: bytes, mtime: tuple[int, int] = (0, 0),
                 digest: bytes | None = None) -> None:
        self.data = data
        self.mtime = mtime
        self.digest = digest if digest is not None else sha256(data)


class Dir:
    """An immutable dictionary of the in-memory tree (entries are never changed:
    edits build new :class:`Dir` objects and share the untouched ones)."""

    __slots__ = ("entries", "_digest", "_mtime", "_total")

    def __init__(self, entries: Mapping[str, "Node"] | None = None) -> None:
        self.entries: dict[str, Node] = dict(entries or {})
        self._digest: bytes | None = None
        self._mtime: tuple[int, int] | None = None
        self._total: int | None = None

    @property
    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = dict_digest((name, kind_of(node), node.digest)
                                       for name, node in self.entries.items())
        return self._digest

    @property
    def mtime(self) -> tuple[int, int]:
        """The newest change below (``(0, 0)`` when empty)."""
        if self._mtime is None:
            self._mtime = max((n.mtime for n in self.entries.values()), default=(0, 0))
        return self._mtime

    @property
    def total(self) -> int:
        """Bytes of all values below."""
        if self._total is None:
            self._total = sum(n.total if isinstance(n, Dir) else len(n.data)
                              for n in self.entries.values())
        return self._total


Node = Value | Dir
EMPTY = Dir()


def kind_of(node: Node) -> Kind:
    return Kind.DICTIONARY if isinstance(node, Dir) else Kind.VALUE


def tree_get(root: Dir, parts: Parts) -> Node | None:
    node: Node = root
    for name in parts:
        if not isinstance(node, Dir):
            return None
        child = node.entries.get(name)
        if child is None:
            return None
        node = child
    return node


def tree_from(items: Iterable[tuple[Parts, Value]]) -> Dir:
    """A tree holding ``items``; a path that is both a value and a
    dictionary raises ``ValueError``."""
    top: dict[str, Any] = {}
    for parts, value in items:
        if not parts:
            raise ValueError("a value cannot be the root")
        here = top
        for i, name in enumerate(parts[:-1]):
            here = here.setdefault(name, {})
            if not isinstance(here, dict):
                raise ValueError(f"{join_key(parts[:i + 1])!r} is both a value and a folder")
        if parts[-1] in here:
            raise ValueError(f"{join_key(parts)!r} is given twice")
        here[parts[-1]] = value

    def freeze(entries: dict[str, Any]) -> Dir:
        return Dir({n: freeze(c) if isinstance(c, dict) else c for n, c in entries.items()})

    return freeze(top)


# --------------------------------------------------------------------------
# KvRO over primitives


class Reader:
    """:class:`~ingot.signatures.KvRO` over a few primitives of a backend.

    A backend supplies ``_snapshot()`` (one consistent version of the store,
    whatever it is), ``_lookup(snap, parts)`` (a node or None), and the
    node primitives below. Every public call takes one snapshot, so a
    single call never mixes two versions. Errors listed in
    ``_store_errors`` become :class:`StoreError`.
    """

    _what = "kv store"
    _closed = False
    _store_errors: tuple[type[BaseException], ...] = (OSError,)

    # -- primitives (a backend overrides these) ---------------------------
    def _snapshot(self) -> Any:
        return None

    def _lookup(self, snap: Any, parts: Parts) -> Any:
        raise NotImplementedError

    def _is_dir(self, node: Any) -> bool:
        raise NotImplementedError

    def _read(self, node: Any) -> bytes:
        raise NotImplementedError

    def _read_partial(self, node: Any, offset: int, length: int) -> bytes:
        return self._read(node)[offset:offset + length]

    def _size(self, node: Any) -> int:
        return len(self._read(node))

    def _entries(self, node: Any) -> list[tuple[str, Kind]]:
        raise NotImplementedError

    def _digest(self, node: Any) -> bytes:
        raise NotImplementedError

    def _mtime(self, snap: Any, node: Any, parts: Parts) -> tuple[int, int]:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self, key: object) -> Iterator[None]:
        if self._closed:
            raise Closed(self._what)
        try:
            yield
        except DeviceError:
            raise
        except self._store_errors as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(self._what) from exc
            raise StoreError(f"{self._what}: {key!r}: {exc}") from exc

    def _find(self, key: str) -> tuple[Any, Any, Parts]:
        parts = split_key(key)
        snap = self._snapshot()
        node = self._lookup(snap, parts)
        if node is None:
            raise NotFound(key)
        return snap, node, parts

    def _find_value(self, key: str) -> Any:
        node = self._find(key)[1]
        if self._is_dir(node):
            raise ValueExpected(key)
        return node

    async def exists(self, key: str) -> Kind | None:
        with self._guard(key):
            node = self._lookup(self._snapshot(), split_key(key))
            if node is None:
                return None
            return Kind.DICTIONARY if self._is_dir(node) else Kind.VALUE

    async def get(self, key: str) -> bytes:
        with self._guard(key):
            return self._read(self._find_value(key))

    async def get_partial(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must not be negative ({offset}, {length})")
        with self._guard(key):
            node = self._find_value(key)
            return self._read_partial(node, offset, length) if length else b""

    async def list(self, key: str) -> list[tuple[str, Kind]]:
        with self._guard(key):
            node = self._find(key)[1]
            if not self._is_dir(node):
                raise DictionaryExpected(key)
            return self._entries(node)

    async def size(self, key: str) -> int:
        with self._guard(key):
            return self._size(self._find_value(key))

    async def digest(self, key: str) -> bytes:
        with self._guard(key):
            return self._digest(self._find(key)[1])

    async def last_modified(self, key: str) -> tuple[int, int]:
        with self._guard(key):
            snap, node, parts = self._find(key)
            return self._mtime(snap, node, parts)

    def close(self) -> None:
        self._closed = True


class TreeReader(Reader):
    """:class:`Reader` over an in-memory tree held in ``self._root``."""

    _root: Dir = EMPTY

    def _snapshot(self) -> Dir:
        return self._root

    def _lookup(self, snap: Dir, parts: Parts) -> Node | None:
        return tree_get(snap, parts)

    def _is_dir(self, node: Node) -> bool:
        return isinstance(node, Dir)

    def _read(self, node: Value) -> bytes:
        return node.data

    def _size(self, node: Value) -> int:
        return len(node.data)

    def _entries(self, node: Dir) -> list[tuple[str, Kind]]:
        return [(name, kind_of(child)) for name, child in sorted(node.entries.items())]

    def _digest(self, node: Node) -> bytes:
        return node.digest

    def _mtime(self, snap: Dir, node: Node, parts: Parts) -> tuple[int, int]:
        return node.mtime
