"""The firewall's control plane, sans-I/O: QubesDB entries in, what the data plane needs out.

* :func:`setup_from` reads the firewall's own addresses (``/qubes-ip``,
  ``/qubes-gateway``, ``/qubes-netmask``, ``/qubes-netvm-gateway``, the
  virtual and upstream DNS addresses) into a :class:`FilterSetup`; a
  missing or malformed entry is a :class:`ConfigError` naming the path.
  IPv6, as dom0 writes it when the ``ipv6`` feature is on
  (``qubes/vm/qubesvm.py``, ``create_qdb_entries``): ``/qubes-ip6`` (the
  firewall's own address, ``fd09:24ef:4179::a89:<qid>`` by default),
  ``/qubes-gateway6`` (its upstream's address), ``/qubes-netvm-gateway6``
  (what its clients use as gateway: in Qubes the firewall's own ``ip6``
  again); all optional, and IPv6 stays off without ``/qubes-ip6`` and
  ``/qubes-netvm-gateway6``. Qubes writes no IPv6 netmask here (clients get
  a /128 and an on-link route to the gateway).
* :func:`clients_from` merges the static ``clients`` key with the
  ``/ingot/clients/<ip>`` entries (value: the interface the client is
  behind) into ``{client ip: ifname}``. On Qubes the interface of a client
  comes from the VM's own hotplug; outside Qubes (and in tests) whoever
  attaches a client writes that entry.
* :class:`Dsthosts` remembers what each ``dsthost`` name resolved to and
  when to ask again: at the answer's TTL, kept between a minimum and a
  maximum, or after ``retry`` seconds when the lookup failed (a failed name
  matches nothing until it resolves: the rule cannot allow what it cannot
  name).

Nothing here does I/O; time is nanoseconds passed in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ingot.signatures import FilterSetup

SECOND = 1_000_000_000
CLIENTS_PREFIX = "/ingot/clients/"
ERROR_PATH = "/qubes-iptables-error"
"""Where a rule set that does not parse is reported back, as the Qubes agent's old
``/qubes-iptables-error`` key: ``<client ip>: <reason>``."""


class ConfigError(ValueError):
    """The firewall's own configuration in QubesDB is missing or malformed."""


def _text(values: Mapping[str, bytes], path: str, required: bool = True) -> str:
    raw = values.get(path)
    if raw is None or not raw.strip():
        if required:
            raise ConfigError(f"QubesDB has no {path} (the firewall's own configuration)")
        return ""
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"QubesDB {path} is not ASCII text") from None


def _address(values: Mapping[str, bytes], path: str, version: int = 4,
             required: bool = True) -> str:
    text = _text(values, path, required)
    if not text:
        return ""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"QubesDB {path} = {text!r} is not an IP address") from None
    if addr.version != version:
        raise ConfigError(f"QubesDB {path} = {text!r} is not an IPv{version} address")
    return str(addr)


def _prefix(values: Mapping[str, bytes]) -> int:
    text = _text(values, "/qubes-netmask", required=False) or "255.255.255.0"
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
    except ValueError:
        raise ConfigError(f"QubesDB /qubes-netmask = {text!r} is not a netmask") from None


def setup_from(values: Mapping[str, bytes], max_connections: int = 5000,
               icmp_error_rate: int = 1000) -> FilterSetup:
    """The firewall's addresses from QubesDB ``values`` (path -> bytes)."""
    virtual = [_address(values, p, required=False)
               for p in ("/qubes-netvm-primary-dns", "/qubes-netvm-secondary-dns")]
    upstream = [_address(values, p, required=False)
                for p in ("/qubes-primary-dns", "/qubes-secondary-dns")]
    pairs = [(v, u) for v, u in zip(virtual, upstream) if v and u]
    return FilterSetup(
        uplink_ip=_address(values, "/qubes-ip"),
        uplink_gateway=_address(values, "/qubes-gateway"),
        client_gateway=_address(values, "/qubes-netvm-gateway"),
        uplink_prefix=_prefix(values),
        virtual_dns=tuple(v for v, _ in pairs),
        upstream_dns=tuple(u for _, u in pairs),
        uplink_ip6=_address(values, "/qubes-ip6", 6, required=False),
        uplink_gateway6=_address(values, "/qubes-gateway6", 6, required=False),
        client_gateway6=_address(values, "/qubes-netvm-gateway6", 6, required=False),
        max_connections=max_connections,
        icmp_error_rate=icmp_error_rate,
    )


def upstream_resolvers(setup: FilterSetup) -> list[str]:
    """Where the firewall's own lookups (``dsthost``) go: the upstream DNS."""
    return list(setup.upstream_dns)


def _client_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"{text!r} is not a client IP address") from None


def clients_from(entries: Mapping[str, bytes], static: Iterable[str] = ()
                 ) -> tuple[dict[str, str], list[str]]:
    """``{client ip: ifname}`` from the static ``IP=IFNAME`` list and the
    ``/ingot/clients/<ip>`` entries, and the problems found (each one line;
    a bad entry is skipped, never fatal)."""
    clients: dict[str, str] = {}
    problems: list[str] = []
    for item in static:
        ip, _, ifname = item.partition("=")
        try:
            clients[_client_ip(ip.strip())] = ifname.strip()
        except ConfigError as exc:
            problems.append(f"--clients: {exc}")
    for path, raw in sorted(entries.items()):
        if not path.startswith(CLIENTS_PREFIX):
            continue
        ip = path[len(CLIENTS_PREFIX):]
        try:
            ip = _client_ip(ip)
            ifname = raw.decode("ascii").strip()
        except (ConfigError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        if not ifname or len(ifname) > 15 or "/" in ifname or any(c.isspace() for c in ifname):
            problems.append(f"{path}: {ifname!r} is not an interface name")
            continue
        clients[ip] = ifname
    return clients, problems


def rule_target(path: str) -> str | None:
    """The client IP whose rules a watched path reloads: the empty write to
    ``/qubes-firewall/<ip>`` (writes below it are ignored until then)."""
    if path.startswith("/qubes-firewall/") and path.count("/") == 2:
        return path.split("/")[2] or None
    return None


@dataclass
class _Name:
    addresses: tuple[str, ...] = ()
    due_ns: int = 0
    failed: bool = False


@dataclass
class Dsthosts:
    """Resolved ``dsthost`` names and when each is due again."""

    min_ttl_s: float = 30.0
    max_ttl_s: float = 3600.0
    retry_s: float = 10.0
    names: dict[str, _Name] = field(default_factory=dict)

    def want(self, names: Iterable[str], now_ns: int) -> list[str]:
        """Track ``names`` (dropping the others); those to look up now."""
        wanted = {n.lower().rstrip(".") for n in names}
        for gone in set(self.names) - wanted:
            del self.names[gone]
        for name in wanted:
            self.names.setdefault(name, _Name(due_ns=now_ns))
        return self.due(now_ns)

    def due(self, now_ns: int) -> list[str]:
        return sorted(n for n, e in self.names.items() if e.due_ns <= now_ns)

    def next_due_ns(self) -> int | None:
        return min((e.due_ns for e in self.names.values()), default=None)

    def resolved(self, name: str, addresses: Iterable[str], ttl_s: float, now_ns: int) -> bool:
        """Record an answer; True when the addresses changed."""
        entry = self.names.get(name)
        if entry is None:
            return False
        new = tuple(sorted(set(addresses)))
        ttl = min(max(ttl_s, self.min_ttl_s), self.max_ttl_s)
        changed = new != entry.addresses
        entry.addresses, entry.failed = new, False
        entry.due_ns = now_ns + int(ttl * SECOND)
        return changed

    def failed(self, name: str, now_ns: int) -> None:
        """A lookup failed: keep what was known, ask again after ``retry``."""
        entry = self.names.get(name)
        if entry is not None:
            entry.failed = True
            entry.due_ns = now_ns + int(self.retry_s * SECOND)

    def lookup(self) -> dict[str, tuple[str, ...]]:
        """``{name: addresses}`` for ``rules.resolve_dsthosts``."""
        return {n: e.addresses for n, e in self.names.items()}
