"""Who may transfer a zone, send it a NOTIFY, or update it: access lists as data.

Rules of this module:

- An :class:`Acl` is an ordered tuple of :class:`Rule`; the first rule that
  matches a request decides (allow or deny). When no rule matches, the
  request is denied: an empty ``Acl()`` allows nothing. That is the default
  for zone transfers and dynamic updates.
- A rule matches when the source address lies in one of its networks (no
  networks: any address) *and* the request was signed by one of its TSIG
  keys (no keys: signed or not). A request whose TSIG did not verify must
  not reach an ACL as signed: the caller passes ``key_name=None`` then.
- Key names compare as DNS names: case-insensitive, trailing dot optional.

Config form (what :func:`parse_acl` reads, e.g. from a TOML list)::

    ["127.0.0.0/8", "key:xfr-key.", "10.0.0.0/8 key:upd", "deny 10.0.0.5", "any"]

Each string is one rule: whitespace-separated networks (``ipaddress``
syntax, a bare address is a /32 or /128), ``key:NAME`` terms, an optional
leading ``deny``, or ``any`` for every address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import tsig
from .zone import name_key

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AclError(ValueError):
    """A config entry that is not an ACL rule; ``str(err)`` names the entry."""


def key_id(name: str | None) -> str | None:
    """A TSIG key name in the form rules compare (the tsig module's canonical form)."""
    return None if name is None else tsig.canonical_name(str(name).strip())


@dataclass(frozen=True)
class Rule:
    """One ACL line: networks (empty: any), key names (empty: any), allow/deny."""

    networks: tuple[Network, ...] = ()
    keys: tuple[str, ...] = ()
    deny: bool = False

    def matches(self, address: str, key_name: str | None) -> bool:
        if self.networks:
            try:
                ip = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                return False
            if not any(ip.version == net.version and ip in net for net in self.networks):
                return False
        if self.keys and key_id(key_name) not in self.keys:
            return False
        return True


@dataclass(frozen=True)
class Acl:
    """An ordered list of rules; first match decides, no match denies."""

    rules: tuple[Rule, ...] = ()

    def allows(self, address: str, key_name: str | None = None) -> bool:
        """Whether a request from ``address`` signed with ``key_name`` (None: unsigned) passes."""
        for rule in self.rules:
            if rule.matches(address, key_name):
                return not rule.deny
        return False

    @property
    def needs_key(self) -> bool:
        """True when no allowing rule lets an unsigned request through."""
        return all(rule.deny or rule.keys for rule in self.rules)


ALLOW_ALL = Acl((Rule(),))
DENY_ALL = Acl()

ZoneAcls = Acl | Mapping[str | tuple, Acl]
"""One ACL for every zone, or ACLs by zone (origin text or name key; absent: deny)."""


def acl_for(acls: ZoneAcls, origin: str | tuple) -> Acl:
    """The ACL of zone ``origin`` in ``acls``."""
    if isinstance(acls, Acl):
        return acls
    want = origin if isinstance(origin, tuple) else name_key(origin)
    for key, acl in acls.items():
        if (key if isinstance(key, tuple) else name_key(key)) == want:
            return acl
    return DENY_ALL


@dataclass(frozen=True)
class Peer:
    """A server we talk to: address, port, and the TSIG key for it (or None)."""

    address: str
    port: int = 53
    key: "tsig.Key | None" = None


def parse_rule(text: str) -> Rule:
    words = text.split()
    if not words:
        raise AclError(f"empty ACL rule {text!r}")
    deny = words[0].lower() == "deny"
    if deny:
        words = words[1:]
    networks: list[Network] = []
    keys: list[str] = []
    anywhere = False
    for word in words:
        if word.lower().startswith("key:"):
            name = word[4:]
            if not name:
                raise AclError(f"ACL rule {text!r}: empty key name")
            keys.append(key_id(name))
        elif word.lower() == "any":
            anywhere = True
        else:
            try:
                networks.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                raise AclError(f"ACL rule {text!r}: {word!r} is neither a network nor key:NAME"
                               ) from None
    if not (networks or keys or anywhere):
        raise AclError(f"ACL rule {text!r} names no network, key or 'any'")
    return Rule(tuple(networks), tuple(keys), deny)


def parse_acl(entries: Iterable[str] | str | None) -> Acl:
    """Build an :class:`Acl` from config strings (see the module docstring); None: deny all."""
    if entries is None:
        return DENY_ALL
    if isinstance(entries, str):
        entries = [entries]
    return Acl(tuple(parse_rule(entry) for entry in entries))


# -- authenticating a request ------------------------------------------------

@dataclass(frozen=True)
class Auth:
    """What TSIG says about one request.

    ``key`` is the verified key (None: unsigned), ``request_mac`` its MAC (to
    sign the answer over), ``error_reply`` the answer to send instead when
    the TSIG did not verify (None then means: drop the request).
    """

    key: tsig.Key | None = None
    request_mac: bytes = b""
    failed: bool = False
    error_reply: bytes | None = None
    rcode: int = 0

    @property
    def key_name(self) -> str | None:
        return None if self.key is None else self.key.name


def authenticate(query_wire: bytes, keyring: Mapping[str, tsig.Key], now_s: int) -> Auth:
    """Verify the TSIG of a request, if it has one (RFC 8945 §5.2)."""
    try:
        if tsig.find_tsig(query_wire) is None:
            return Auth()
        verified = tsig.verify(query_wire, keyring, int(now_s))
    except tsig.TsigError as err:
        return Auth(failed=True, error_reply=tsig.error_response(query_wire, err, int(now_s)),
                    rcode=err.rcode)
    return Auth(key=verified.key, request_mac=verified.mac)


def sign_reply(reply_wire: bytes, auth: Auth, now_s: int) -> bytes:
    """``reply_wire`` signed over the request MAC when the request was signed."""
    if auth.key is None:
        return bytes(reply_wire)
    return tsig.sign(bytes(reply_wire), auth.key, int(now_s), request_mac=auth.request_mac)[0]
