"""The ``file`` backend's format: a flat table of ``"path" = "value"`` strings.

TOML (``.toml``) or JSON (``.json``), chosen by the file name's suffix::

    "/qubes-ip" = "10.137.0.1"
    "/qubes-firewall/10.137.0.11/policy" = "drop"
    "/qubes-firewall/10.137.0.11/0000" = "action=accept proto=tcp dstports=443-443"

    {"/qubes-ip": "10.137.0.1", "/qubes-firewall/10.137.0.11/policy": "drop"}

Every key is a QubesDB path (:func:`.paths.check_path`), every value a
string, stored as its UTF-8 bytes (at most 3072, no NUL). A table that
breaks any rule is refused as a whole with a :class:`TableError` whose text
names the first problem (and, for a syntax error, where it is). Pure: the
caller reads the file.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

from ingot.signatures import DeviceError

from .paths import check_path, check_value

FORMATS = {".toml": "TOML", ".json": "JSON"}
"""File name suffix -> format."""


class TableError(ValueError):
    """The bytes are not a valid QubesDB table; the text says why."""


def format_of(name: str) -> str:
    """``"TOML"`` or ``"JSON"`` by the suffix of ``name``; ``ValueError`` otherwise."""
    for suffix, fmt in FORMATS.items():
        if name.lower().endswith(suffix):
            return fmt
    raise ValueError(f"{name!r} must end with .toml or .json")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise TableError(f"{k!r} appears twice")
        out[k] = v
    return out


def parse_table(name: str, data: bytes) -> dict[str, bytes]:
    """The entries in ``data``, the contents of the file called ``name``.

    Raises :class:`TableError` (or ``ValueError`` for a name with another
    suffix).
    """
    fmt = format_of(name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TableError(f"not UTF-8 (byte {exc.start})") from None
    try:
        if fmt == "TOML":
            table: Any = tomllib.loads(text)
        else:
            table = json.loads(text, object_pairs_hook=_no_duplicates)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise TableError(f"not valid {fmt}: {exc}") from None
    if not isinstance(table, dict):
        raise TableError(f"the {fmt} document is a {type(table).__name__}, not a table")
    out: dict[str, bytes] = {}
    for path, value in table.items():
        try:
            check_path(path)
        except DeviceError as exc:
            raise TableError(str(exc)) from None
        if not isinstance(value, str):
            kind = "table" if isinstance(value, dict) else type(value).__name__
            raise TableError(f"the value of {path!r} is a {kind}, not a string")
        try:
            out[path] = check_value(path, value.encode("utf-8"))
        except DeviceError as exc:
            raise TableError(str(exc)) from None
    return out


def changed_paths(old: dict[str, bytes], new: dict[str, bytes]) -> list[str]:
    """The paths added, changed or removed from ``old`` to ``new``, sorted."""
    return sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))
