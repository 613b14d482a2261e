"""A reproducible initramfs: the ``newc`` cpio format, gzip-compressed.

Linux unpacks an initramfs written in the SVR4 "new ASCII" cpio format
(magic ``070701``; see the kernel's Documentation/driver-api/early-userspace/
buffer-format.rst). Every member here gets owner 0:0, time 0 and an inode
number from its position, so the archive depends only on the root's
entries; gzip gets a fixed time (0), no file name and a fixed level. The
kernel needs ``CONFIG_RD_GZIP``; under QEMU's software emulation gzip
decompresses much faster than xz.
"""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable

from .rootfs import Entry

MAGIC = b"070701"
TRAILER = "TRAILER!!!"

_TYPE = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
         "chardev": stat.S_IFCHR}


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _member(out: io.BytesIO, ino: int, name: str, mode: int, data: bytes,
            nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
    raw = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
    header = MAGIC + b"".join(b"%08X" % f for f in fields)
    out.write(header + raw + _pad(len(header) + len(raw)))
    out.write(data + _pad(len(data)))


def archive(entries: Iterable[Entry]) -> bytes:
    """The uncompressed cpio archive of ``entries`` (in the order given)."""
    out = io.BytesIO()
    for ino, e in enumerate(entries, start=1):
        kind = _TYPE.get(e.kind)
        if kind is None:
            raise ValueError(f"{e.path}: cannot archive a {e.kind!r}")
        data = e.data if e.kind in ("file", "symlink") else b""
        _member(out, ino, e.path, kind | (e.mode & 0o7777), data,
                nlink=2 if e.kind == "dir" else 1, rdev=e.rdev)
    _member(out, 0, TRAILER, 0, b"")
    return out.getvalue()


def initramfs(entries: Iterable[Entry], level: int = 9) -> bytes:
    """``archive(entries)`` compressed with gzip (time 0, no name)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=level,
                       mtime=0) as gz:
        gz.write(archive(entries))
    return buf.getvalue()


def read(blob: bytes) -> list[Entry]:
    """The entries of a (gzip-compressed or plain) newc archive; for checks and inspect."""
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    out: list[Entry] = []
    pos = 0
    kinds = {v: k for k, v in _TYPE.items()}
    while True:
        if blob[pos:pos + 6] != MAGIC:
            raise ValueError(f"not a newc cpio member at offset {pos}")
        f = [int(blob[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        start = pos + 110
        name = blob[start:start + namesize - 1].decode()
        pos = start + namesize
        pos += (4 - pos % 4) % 4
        data = blob[pos:pos + size]
        pos += size
        pos += (4 - pos % 4) % 4
        if name == TRAILER:
            return out
        kind = kinds.get(stat.S_IFMT(mode), "other")
        out.append(Entry(name, kind, mode & 0o7777, data if kind in ("file", "symlink") else b"",
                         (f[9], f[10])))
