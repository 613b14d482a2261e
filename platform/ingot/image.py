"""The inside of an image, as the runtime and device backends see it.

An image holds modules and *data*: files that plugins added at build time
(``ingot_image_collect``), e.g. the folder a ``crunch`` kv_ro device bakes.
Data lives under ``_ingot/data/<device>/<path>`` and a device reads its own
through :class:`ImageData` (``DeviceContext.data``). The plan is
``_ingot/plan.json``, the contents listing ``_ingot/contents.json``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

PLAN_PATH = "_ingot/plan.json"
CONTENTS_PATH = "_ingot/contents.json"
DATA_PREFIX = "_ingot/data/"
NATIVE_PREFIX = "_ingot/native/"


class ImageData:
    """Read-only access to one device's baked data files.

    ``paths()`` lists ``/``-separated relative paths, sorted; ``read(path)``
    returns a file's bytes (``KeyError`` when absent); ``info(path)`` gives
    ``(size, sha256 hex)``.
    """

    def paths(self) -> list[str]:
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        raise NotImplementedError

    def info(self, path: str) -> tuple[int, str]:
        data = self.read(path)
        return len(data), hashlib.sha256(data).hexdigest()


class ZipData(ImageData):
    """Data stored in a zip image (the ``unix`` target)."""

    def __init__(self, archive: str, device: str, digests: dict[str, str] | None = None) -> None:
        import zipfile

        self._zip = zipfile.ZipFile(archive)
        self._prefix = f"{DATA_PREFIX}{device}/"
        self._digests = digests or {}
        self._infos = {i.filename[len(self._prefix):]: i for i in self._zip.infolist()
                       if i.filename.startswith(self._prefix) and not i.is_dir()}

    def paths(self) -> list[str]:
        return sorted(self._infos)

    def read(self, path: str) -> bytes:
        return self._zip.read(self._infos[path])

    def info(self, path: str) -> tuple[int, str]:
        zi = self._infos[path]
        digest = self._digests.get(zi.filename)
        if digest is None:
            return super().info(path)
        return zi.file_size, digest


class DirData(ImageData):
    """Data stored as plain files (an unpacked image, or a test's folder)."""

    def __init__(self, root: str) -> None:
        self._root = root

    def _walk(self) -> Iterator[str]:
        for base, dirs, files in os.walk(self._root):
            dirs.sort()
            for name in files:
                full = os.path.join(base, name)
                yield os.path.relpath(full, self._root).replace(os.sep, "/")

    def paths(self) -> list[str]:
        return sorted(self._walk()) if os.path.isdir(self._root) else []

    def read(self, path: str) -> bytes:
        if path.startswith("/") or ".." in path.split("/"):
            raise KeyError(path)
        try:
            with open(os.path.join(self._root, path), "rb") as fh:
                return fh.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(path) from None


class ImageWriter:
    """What ``ingot_image_collect`` receives: add data files to the image."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def add_data(self, device: str, path: str, data: bytes) -> None:
        """Add ``data`` as ``path`` (relative, ``/``-separated) for ``device``."""
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad data path {path!r} for device {device!r}")
        self.data[f"{DATA_PREFIX}{device}/{path}"] = bytes(data)
