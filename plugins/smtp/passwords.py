"""Stored password hashes for SMTP AUTH: argon2id (argon2-cffi) and bcrypt
(``$2b$``/``$2y$``, the ``bcrypt`` package when installed). Plaintext is never
accepted.

* :func:`check_hash` is for loading the users file: it raises a
  ``ValueError`` that names the problem (:class:`UnsupportedHash` for a scheme
  this build cannot verify, :class:`MalformedHash` for a damaged hash).
* :func:`verify_password` answers True or False and never raises for a bad
  stored value; comparisons are the libraries' own (constant time).
* :func:`verify_password_async` runs the verification (argon2 takes tens of
  milliseconds of CPU on purpose) in a worker thread so the event loop keeps
  serving; adapters use that one.
* :func:`hash_password` makes an argon2id hash for the CLI and the docs.
"""

from __future__ import annotations

import asyncio
import re

import argon2
import argon2.exceptions

try:
    import bcrypt as _bcrypt
except ImportError:  # pragma: no cover - depends on the installation
    _bcrypt = None

__all__ = ["UnsupportedHash", "MalformedHash", "check_hash", "verify_password",
           "verify_password_async", "hash_password", "scheme"]


class UnsupportedHash(ValueError):
    """The stored value is not a hash scheme this build can verify
    (plaintext, an unknown scheme, or bcrypt without the bcrypt package)."""


class MalformedHash(ValueError):
    """The stored value names a known scheme but is damaged."""


_hasher = argon2.PasswordHasher()  # RFC 9106 "low memory" defaults of argon2-cffi

_BCRYPT = re.compile(r"^\$2[by]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


def scheme(stored: str) -> str | None:
    """``"argon2id"``, ``"bcrypt"`` or None for anything else."""
    if not isinstance(stored, str):
        return None
    if stored.startswith("$argon2id$"):
        return "argon2id"
    if stored.startswith(("$2b$", "$2y$")):
        return "bcrypt"
    return None


def check_hash(stored: str) -> None:
    """Raise a ``ValueError`` naming what is wrong with ``stored``, or return."""
    kind = scheme(stored)
    if kind is None:
        head = stored[:10] if isinstance(stored, str) else type(stored).__name__
        if isinstance(stored, str) and stored.startswith("$"):
            raise UnsupportedHash(f"unsupported password hash scheme {head.split('$')[1]!r}; "
                                  "use argon2id or bcrypt ($2b$)")
        raise UnsupportedHash(f"not a password hash (plaintext is refused): starts {head!r}")
    if kind == "argon2id":
        try:
            argon2.extract_parameters(stored)
        except argon2.exceptions.InvalidHashError as exc:
            raise MalformedHash(f"malformed argon2id hash: {exc}") from None
        return
    if _bcrypt is None:
        raise UnsupportedHash("bcrypt hashes need the 'bcrypt' package, which is not installed")
    if not _BCRYPT.match(stored):
        raise MalformedHash("malformed bcrypt hash: expected $2b$NN$ and 53 characters")


def verify_password(stored: str, password: str) -> bool:
    """True when ``password`` matches ``stored``; False for a wrong password
    and for a stored value that :func:`check_hash` would refuse."""
    try:
        check_hash(stored)
    except ValueError:
        return False
    if not isinstance(password, str):
        return False
    secret = password.encode("utf-8")
    if scheme(stored) == "argon2id":
        try:
            return _hasher.verify(stored, secret)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
    try:
        return bool(_bcrypt.checkpw(secret, stored.encode("ascii")))
    except ValueError:  # e.g. a password longer than bcrypt's 72 bytes, or a NUL
        return False


async def verify_password_async(stored: str, password: str) -> bool:
    """:func:`verify_password` in a worker thread."""
    return await asyncio.to_thread(verify_password, stored, password)


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (random salt)."""
    return _hasher.hash(password)
