"""``kv_ro/crunch``: a folder baked into the image at build time.

``ingot build`` adds the files of the ``source`` folder to the image (see
:mod:`ingot.plugins.kv.bake`); at connect this backend reads all of them
from :class:`~ingot.image.ImageData` into an immutable in-memory tree, so
every call afterwards is a lookup. Digests are the sha256 the image lists
for each file. ``last_modified`` is ``(0, 0)`` for every key: an image does
not depend on when it was built, so it records no times.

Outside an image (``DeviceContext.data`` is None, e.g. an appliance run from
the source tree), the ``source`` folder is read directly, with the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ingot.registry import DeviceContext
from ingot.signatures import DeviceError, StoreError

from .common import Dir, Parts, TreeReader, Value, split_key, tree_from


class CrunchStore(TreeReader):
    """:class:`~ingot.signatures.KvRO` over a tree read once at connect."""

    _what = "kv store (crunch)"

    def __init__(self, root: Dir) -> None:
        self._root = root


def _tree(items: Iterable[tuple[Parts, Value]]) -> Dir:
    try:
        return tree_from(items)
    except ValueError as exc:
        raise StoreError(f"baked data: {exc}") from None


def from_image_data(data: Any) -> CrunchStore:
    """A store holding the files of an :class:`~ingot.image.ImageData`."""
    items = []
    for path in data.paths():
        try:
            parts = split_key(path)
        except DeviceError as exc:
            raise StoreError(f"baked data: {exc}") from None
        _size, hexdigest = data.info(path)
        items.append((parts, Value(data.read(path), (0, 0), bytes.fromhex(hexdigest))))
    return CrunchStore(_tree(items))


def from_folder(folder: str) -> CrunchStore:
    """A store holding what :func:`ingot.plugins.kv.bake.walk` bakes from ``folder``."""
    from .bake import walk

    items = []
    try:
        for rel, host in walk(folder):
            with open(host, "rb") as fh:
                items.append((split_key(rel), Value(fh.read())))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{folder}: {exc}") from None
    return CrunchStore(_tree(items))


def connect(ctx: DeviceContext) -> CrunchStore:
    if ctx.data is not None:
        return from_image_data(ctx.data)
    from .bake import resolve_source

    source = ctx.keys.get("source")
    if not source:
        raise StoreError(f"no baked data and no folder to read: set {ctx.key_flag('source')}")
    folder = resolve_source(str(source))
    ctx.log.info("no image data, reading the folder directly", folder=folder)
    return from_folder(folder)
