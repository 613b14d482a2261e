"""What the mail appliance reads from its ``config`` store, checked before it serves.

``users`` (the ``users-file`` key)
    one user per line: the address (``alice@example.test``, its domain one of
    ``--domains``) and its password hash (argon2id or bcrypt), separated by
    blanks; ``#`` starts a comment. A bad line stops the start with
    ``users:LINE: reason``; no user is half-loaded.
``dkim/<domain>.pem``
    the PEM private key (RSA or Ed25519) that signs mail submitted from
    ``<domain>``, with the ``dkim-selector`` key's selector.
``tls/cert.pem``, ``tls/key.pem``
    the certificate chain and key of STARTTLS and port 465. Without them no
    TLS is offered and therefore no AUTH (submission refuses to run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingot.plugins.smtp import passwords
from ingot.signatures import DeviceError, KvRO, NotFound, TlsServerConfig


class ConfigError(Exception):
    """The config store holds something that cannot be used (the start stops)."""


@dataclass
class User:
    address: str
    hash: str


@dataclass
class Settings:
    users: dict[str, User] = field(default_factory=dict)
    dkim_keys: dict[str, bytes] = field(default_factory=dict)
    tls: TlsServerConfig | None = None


def normalise(address: str) -> str:
    """Addresses are compared with the domain in lower case; local parts as given
    except that a plain ASCII local part is compared in lower case too."""
    local, _, domain = address.rpartition("@")
    if local.isascii():
        local = local.lower()
    return f"{local}@{domain.lower().rstrip('.')}"


def parse_users(text: str, domains: set[str], name: str = "users") -> dict[str, User]:
    users: dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()  # no '#' in argon2 or bcrypt hashes
        if not line:
            continue
        words = line.split()
        if len(words) != 2:
            raise ConfigError(f"{name}:{number}: expected 'address hash', got {len(words)} words")
        address, hashed = words
        if address.count("@") != 1 or address.startswith("@") or address.endswith("@"):
            raise ConfigError(f"{name}:{number}: {address!r} is not an address")
        address = normalise(address)
        domain = address.rpartition("@")[2]
        if domain not in domains:
            raise ConfigError(f"{name}:{number}: domain {domain!r} is not one of --domains "
                              f"({', '.join(sorted(domains)) or 'none set'})")
        try:
            passwords.check_hash(hashed)
        except ValueError as exc:
            raise ConfigError(f"{name}:{number}: {exc}") from None
        if address in users:
            raise ConfigError(f"{name}:{number}: {address} is listed twice")
        users[address] = User(address, hashed)
    return users


async def _optional(store: KvRO, key: str) -> bytes | None:
    try:
        return await store.get(key)
    except NotFound:
        return None


async def load(store: KvRO, keys: Any) -> Settings:
    domains = {d.lower().rstrip(".") for d in keys.domains}
    if not domains:
        raise ConfigError("no local domains (set --domains example.org,...)")
    settings = Settings()
    try:
        raw = await store.get(keys.users_file)
    except NotFound:
        raise ConfigError(f"no users file {keys.users_file!r} in the config store") from None
    except DeviceError as exc:
        raise ConfigError(f"users file {keys.users_file!r}: {exc}") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{keys.users_file}: not UTF-8") from None
    settings.users = parse_users(text, domains, keys.users_file)
    try:
        names = await store.list("dkim")
    except NotFound:
        names = []
    for name, _kind in names:
        if not name.endswith(".pem"):
            continue
        domain = name[:-4].lower()
        pem = await store.get(f"dkim/{name}")
        try:
            from ingot.plugins.smtp import authcheck

            authcheck.dkim_public_txt(pem)
        except Exception as exc:  # noqa: BLE001 - any key problem is a config error
            raise ConfigError(f"dkim/{name}: not a usable private key ({exc})") from None
        settings.dkim_keys[domain] = pem
    cert = await _optional(store, "tls/cert.pem")
    key_pem = await _optional(store, "tls/key.pem")
    if (cert is None) != (key_pem is None):
        raise ConfigError("tls/cert.pem and tls/key.pem go together: one is missing")
    if cert is not None and key_pem is not None:
        settings.tls = TlsServerConfig(certificate_chain=cert, private_key=key_pem)
    return settings
