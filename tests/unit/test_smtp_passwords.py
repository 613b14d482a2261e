"""Stored password hashes: argon2id and bcrypt round trips, refusals."""

from __future__ import annotations

import asyncio

import pytest

from ingot.plugins.smtp import passwords
from ingot.plugins.smtp.passwords import (MalformedHash, UnsupportedHash, check_hash,
                                          hash_password, verify_password, verify_password_async)



@pytest.fixture(scope="module")
def argon() -> str:
    return hash_password("correct horse ✓")


def test_argon2id_round_trip(argon):
    assert argon.startswith("$argon2id$")
    check_hash(argon)
    assert verify_password(argon, "correct horse ✓")
    assert not verify_password(argon, "correct horse")
    assert not verify_password(argon, "")
    assert hash_password("correct horse ✓") != argon  # fresh salt


def test_verify_async_runs_off_the_loop(argon):
    async def main():
        return await asyncio.gather(verify_password_async(argon, "correct horse ✓"),
                                    verify_password_async(argon, "wrong"))

    assert asyncio.run(main()) == [True, False]


@pytest.mark.parametrize("prefix", [b"$2b$", b"$2y$"])
def test_bcrypt_round_trip(prefix):
    import bcrypt
    stored = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    stored = prefix.decode() + stored[4:]
    check_hash(stored)
    assert verify_password(stored, "s3cret")
    assert not verify_password(stored, "s3cret!")
    assert not verify_password(stored, "x" * 100)  # beyond bcrypt's 72 bytes: no crash


@pytest.mark.parametrize("stored", ["hunter2", "", "plain$text", "{PLAIN}hunter2",
                                    "$1$abc$def", "$6$salt$hash",
                                    "$argon2i$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"])
def test_plaintext_and_unknown_schemes_refused(stored):
    with pytest.raises(UnsupportedHash):
        check_hash(stored)
    assert not verify_password(stored, stored)


@pytest.mark.parametrize("stored", [
    "$argon2id$",
    "$argon2id$v=19$m=65536,t=3,p=4$onlysalt",
    "$argon2id$v=19$m=xx,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
])
def test_malformed_argon2_hash(stored):
    with pytest.raises(MalformedHash, match="argon2id"):
        check_hash(stored)
    assert not verify_password(stored, "x")


@pytest.mark.parametrize("stored", ["$2b$", "$2b$04$short", "$2b$99$" + "a" * 53,
                                    "$2b$04$" + "!" * 53])
def test_malformed_bcrypt_hash(stored):
    with pytest.raises(MalformedHash, match="bcrypt"):
        check_hash(stored)
    assert not verify_password(stored, "x")


def test_errors_are_value_errors():
    assert issubclass(UnsupportedHash, ValueError) and issubclass(MalformedHash, ValueError)


def test_non_string_inputs_are_refused(argon):
    assert not verify_password(None, "x")  # type: ignore[arg-type]
    assert not verify_password(argon, None)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedHash):
        check_hash(b"$argon2id$")  # type: ignore[arg-type]


def test_scheme():
    assert passwords.scheme("$argon2id$v=19$...") == "argon2id"
    assert passwords.scheme("$2y$10$...") == "bcrypt"
    assert passwords.scheme("secret") is None
