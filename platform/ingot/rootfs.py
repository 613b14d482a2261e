"""The minimal root file system of a ``vm``, ``qubes`` or ``oci`` image.

A root is a sorted list of :class:`Entry` values; the cpio writer (``vm``,
``qubes``) and the OCI layer writer (``oci``) turn the same list into
their archives, with fixed owners (0:0) and times (0), so that the same
inputs give byte-identical images.

Layout::

    /init                          PID 1 on a VM (ingot.init), a Python script
    /usr/bin/python3               the interpreter (stripped)
    /usr/lib/..., /lib64/...       the shared libraries it and the extension modules load
    /usr/lib/python3.11/           standard-library modules of the closure (bytecode)
    /usr/lib/ingot/                the appliance image: modules, _ingot/plan.json, _ingot/data/
    /usr/lib/ingot/__main__.py     runs the appliance without PID 1 duties (the OCI entry point)
    /lib/modules/<release>/        kernel modules the appliance needs (VM targets)
    /dev/console, /dev/null, ...   device nodes needed before devtmpfs is mounted
"""

from __future__ import annotations

from dataclasses import dataclass

APP_DIR = "usr/lib/ingot"
"""Where the appliance image lives inside the root (no leading slash)."""


@dataclass(frozen=True)
class Entry:
    """One member of a root file system.

    ``path`` is relative, ``/``-separated, without a leading slash
    (``usr/bin/python3``). ``kind`` is ``file``, ``dir``, ``symlink`` or
    ``chardev``. ``mode`` holds the permission bits only (``0o755``).
    ``data`` is a file's bytes or a symlink's target (UTF-8); ``rdev`` is
    ``(major, minor)`` of a character device.
    """

    path: str
    kind: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def tree(entries: dict[str, Entry]) -> list[Entry]:
    """``entries`` with every parent folder added, sorted by path (parents first)."""
    out = dict(entries)
    for path in list(entries):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in out:
                out[parent] = Entry(parent, "dir", 0o755)
            elif out[parent].kind != "dir":
                raise ValueError(f"{parent} is a {out[parent].kind}, not a folder, "
                                 f"but {path} is inside it")
    return [out[p] for p in sorted(out)]
