"""QubesDB's rules for paths, prefixes and values, and which paths a watch sees.

Pure functions shared by both backends, so that a path the ``file`` backend
accepts is one the ``socket`` backend (and qubesdb-daemon) accepts too:

* A *path* begins with ``/``, does not end with ``/``, is at most
  :data:`MAX_PATH` (63) characters from ``[a-zA-Z0-9_.:/-]``. Anything else
  raises :class:`~ingot.signatures.InvalidKey` naming the reason.
* A *prefix* (``multiread``, ``list``, ``watch``) is ``""`` (everything) or
  follows the same rules except that it may end with ``/``. Matching is by
  string prefix, as the daemon does: ``/qubes-firewall`` also names
  ``/qubes-firewall-error``; ``/qubes-firewall/`` does not.
* A *value* is at most :data:`MAX_DATA` (3072) bytes (``NoSpace`` above) and
  holds no NUL byte (qubesdb-daemon refuses one; ``DeviceError``).
* A *watch* on a pattern ending with ``/`` sees every path that starts with
  it; on any other pattern, that exact path only (:func:`watch_sees`).

qubesdb-daemon itself also admits ``@`` in paths; the ``QubesDB`` signature
does not, so paths handed in by an appliance are refused with it, while paths
the daemon hands out are taken as they come (:func:`valid_remote_path`).
"""

from __future__ import annotations

import re

from ingot.signatures import DeviceError, InvalidKey, NoSpace

MAX_PATH = 63
"""Longest path in characters (``QDB_MAX_PATH`` is 64 with the NUL)."""

MAX_DATA = 3072
"""Largest value in bytes (``QDB_MAX_DATA``)."""

_CHARSET = re.compile(r"[a-zA-Z0-9_.:/-]*")
_REMOTE_CHARSET = re.compile(rb"/[a-zA-Z0-9_.:/@-]*")


def _check_common(path: object, what: str) -> str:
    if not isinstance(path, str):
        raise InvalidKey(repr(path), f"a {what} is a str, not {type(path).__name__}")
    if not path.startswith("/"):
        raise InvalidKey(path, f"a {what} begins with '/'")
    if len(path) > MAX_PATH:
        raise InvalidKey(path, f"longer than {MAX_PATH} characters ({len(path)})")
    if not _CHARSET.fullmatch(path):
        bad = next(c for c in path if not _CHARSET.fullmatch(c))
        raise InvalidKey(path, f"character {bad!r} is not one of a-z A-Z 0-9 _ . : / -")
    return path


def check_path(path: str) -> str:
    """``path`` if it names one entry, else ``InvalidKey`` saying why."""
    _check_common(path, "path")
    if path.endswith("/"):
        raise InvalidKey(path, "a path does not end with '/'")
    return path


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is ``""`` or a path that may end with ``/``, else ``InvalidKey``."""
    if prefix == "":
        return prefix
    return _check_common(prefix, "prefix")


def check_value(path: str, value: bytes) -> bytes:
    """``value`` as ``bytes`` if QubesDB can hold it at ``path``.

    ``NoSpace`` above :data:`MAX_DATA` bytes, ``DeviceError`` for a NUL byte,
    ``TypeError`` for something that is not bytes-like.
    """
    if isinstance(value, str) or not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"a QubesDB value is bytes, not {type(value).__name__}")
    data = bytes(value)
    if len(data) > MAX_DATA:
        raise NoSpace(f"the QubesDB value at {path!r} (at most {MAX_DATA} bytes)", len(data))
    if b"\0" in data:
        raise DeviceError(f"the value for {path!r} holds a NUL byte, which QubesDB refuses")
    return data


def under(prefix: str, path: str) -> bool:
    """Whether ``path`` is named by ``prefix`` (a plain string prefix)."""
    return path.startswith(prefix)


def watch_sees(pattern: str, path: str) -> bool:
    """Whether a watch on ``pattern`` fires for a change of ``path``.

    ``""`` and ``/`` see everything; ``/a/`` sees ``/a/b`` (and a removal of
    ``/a/`` itself); ``/a`` sees ``/a`` only.
    """
    if pattern == "" or pattern.endswith("/"):
        return path.startswith(pattern)
    return path == pattern


def valid_remote_path(raw: bytes) -> bool:
    """Whether ``raw`` is a path qubesdb-daemon could have stored (``@`` allowed)."""
    return len(raw) <= MAX_PATH and _REMOTE_CHARSET.fullmatch(raw) is not None
