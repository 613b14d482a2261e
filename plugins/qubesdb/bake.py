"""Baking a ``qubesdb/file`` table into an image (``--qubesdb-bake``).

At configure time (:func:`problems`) a ``file`` device with ``bake`` set
must name its table with ``path`` then, and the file must parse. At build
time (:func:`collect`) its bytes become the device's image data
``table.json`` or ``table.toml`` (the suffix of ``path``, lower case, so
that the image knows the format); :func:`baked_name` is that name, which
the backend reads at boot (:mod:`.file`). A relative ``path`` is taken from
the working folder when it exists there, else from the appliance folder,
as a ``crunch`` kv_ro folder is.
"""

from __future__ import annotations

import os
from typing import Any


def baked_name(path: str) -> str:
    """The image data name of the table file ``path`` (``table.json`` / ``table.toml``)."""
    return "table" + os.path.splitext(path)[1].lower()


def resolve_path(path: str, appliance_dir: str = "") -> str:
    """Where ``path`` is on the build host (see the module docstring)."""
    full = os.path.expanduser(path)
    if os.path.isabs(full) or os.path.exists(full) or not appliance_dir:
        return os.path.abspath(full)
    return os.path.abspath(os.path.join(appliance_dir, full))


def _baked(plan: Any) -> list[Any]:
    return [dev for dev in plan.devices_of("qubesdb", "file") if dev.keys.get("bake") is True]


def _read(dev: Any, plan: Any) -> tuple[str, bytes]:
    """``(host path, bytes)`` of the table a baked device names; OSError, ValueError."""
    from .table import parse_table

    host = resolve_path(str(dev.keys["path"]), plan.source)
    with open(host, "rb") as fh:
        data = fh.read()
    parse_table(host, data)  # TableError is a ValueError
    return host, data


def problems(plan: Any) -> list[str]:
    """One line per baked ``file`` device whose table cannot be baked."""
    from ingot.registry import device_key_name

    out = []
    for dev in _baked(plan):
        flag = "--" + device_key_name(dev.name, "path")
        if not dev.keys.get("path"):
            out.append(f"qubesdb device {dev.name!r} (file, baked) needs its table at "
                       f"configure time: set {flag}")
            continue
        try:
            _read(dev, plan)
        except OSError as exc:
            out.append(f"qubesdb device {dev.name!r} (file, baked): cannot read {flag} "
                       f"{dev.keys['path']!r}: {exc.strerror or exc}")
        except ValueError as exc:
            out.append(f"qubesdb device {dev.name!r} (file, baked): {flag} "
                       f"{dev.keys['path']!r} is not valid: {exc}")
    return out


def collect(plan: Any, image: Any) -> None:
    """Add the table of every baked ``file`` device to ``image``."""
    from ingot.errors import BuildError

    for dev in _baked(plan):
        path = str(dev.keys.get("path") or "")
        try:
            if not path:
                raise ValueError("no path was given at configure time")
            _host, data = _read(dev, plan)
        except (OSError, ValueError) as exc:
            raise BuildError(f"qubesdb device {dev.name!r} (file, baked): {path!r}: "
                             f"{getattr(exc, 'strerror', None) or exc}",
                             hint="configure it with --qubesdb-path naming a .json or .toml "
                                  "table") from None
        image.add_data(dev.name, baked_name(path), data)
