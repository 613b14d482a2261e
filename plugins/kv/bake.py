"""Reading the folder a ``crunch`` kv_ro bakes into an image.

:func:`walk` lists what is baked: regular files under the folder, sorted,
as ``/``-separated relative paths. Names starting with ``.`` (``.git``,
``.DS_Store``) are skipped at every level, and so are special files
(sockets, FIFOs, devices). A symbolic link is followed when it stays inside
the folder and refused (``ValueError``) when it points outside or loops.
A name that is not valid UTF-8 is refused too: it could not be a key.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any


def resolve_source(source: str, appliance_dir: str = "") -> str:
    """Where ``source`` is: absolute as given; a relative path is taken from
    the working folder when it exists there, else from the appliance folder."""
    path = os.path.expanduser(source)
    if os.path.isabs(path) or os.path.exists(path) or not appliance_dir:
        return os.path.abspath(path)
    return os.path.abspath(os.path.join(appliance_dir, path))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk(folder: str) -> Iterator[tuple[str, str]]:
    """``(relative path, host path)`` of every file to bake, sorted by path."""
    root = os.path.realpath(folder)
    yield from _walk(root, root, "", {root})


def _walk(root: str, here: str, rel: str, seen: set[str]) -> Iterator[tuple[str, str]]:
    for name in sorted(os.listdir(here)):
        if name.startswith("."):
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{os.path.join(here, name)!r}: the name is not UTF-8") from None
        full = os.path.join(here, name)
        relpath = f"{rel}/{name}" if rel else name
        real = os.path.realpath(full)
        if not _inside(real, root):
            raise ValueError(f"{full}: a link pointing outside {root} ({real})")
        st = os.stat(real)
        if stat.S_ISDIR(st.st_mode):
            if real in seen:
                raise ValueError(f"{full}: a link back into a folder above it")
            yield from _walk(root, real, relpath, seen | {real})
        elif stat.S_ISREG(st.st_mode):
            yield relpath, real


def problems(plan: Any) -> list[str]:
    """One line per ``crunch`` device of ``plan`` whose folder is not usable."""
    from ingot.registry import device_key_name

    out = []
    for dev in plan.devices_of("kv_ro", "crunch"):
        flag = "--" + device_key_name(dev.name, "source")
        source = dev.keys.get("source")
        if not source:
            out.append(f"kv_ro device {dev.name!r} (crunch) needs a folder to bake: set {flag}")
            continue
        path = resolve_source(str(source), plan.source)
        if not os.path.isdir(path):
            out.append(f"kv_ro device {dev.name!r} (crunch): {flag} {source!r} is not a folder "
                       f"({path})")
    return out


def collect(plan: Any, image: Any) -> None:
    """Add the files of every ``crunch`` device's folder to ``image``."""
    from ingot.errors import BuildError

    for dev in plan.devices_of("kv_ro", "crunch"):
        folder = resolve_source(str(dev.keys.get("source") or ""), plan.source)
        try:
            for rel, host in walk(folder):
                with open(host, "rb") as fh:
                    image.add_data(dev.name, rel, fh.read())
        except (OSError, ValueError) as exc:
            raise BuildError(f"kv_ro device {dev.name!r} (crunch): {exc}",
                             hint="bake a folder of plain files") from None
