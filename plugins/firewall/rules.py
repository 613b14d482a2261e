"""Qubes firewall rules: parse them as dom0 writes them into QubesDB, resolve
``dsthost`` names, and match packets against them. Sans-I/O.

Where they come from: dom0 writes, per client address, ``/qubes-firewall/<ip>/policy``
(``accept`` or ``drop``) and one entry per rule, ``/qubes-firewall/<ip>/NNNN``
(four digits from ``0000``), then an empty write to ``/qubes-firewall/<ip>``
as the reload trigger. :func:`parse_client_rules` takes the entries under
``<ip>/`` keyed by their last path component.

The format (what dom0's ``Rule.rule`` writes; ``expire=``/``comment=``
never reach QubesDB): a rule is ``key=value`` fields separated by single
spaces, each key at most once:

==================  =========================================================
``action``          ``accept`` or ``drop``; required
``dst4``            an IPv4 network, ``A.B.C.D/N`` (a bare address is /32;
                    host bits are masked off)
``dst6``            an IPv6 network, ``X::/N`` (a bare address is /128)
``dsthost``         a host name, resolved elsewhere (:func:`resolve_dsthosts`)
``proto``           ``tcp``, ``udp`` or ``icmp`` (ICMPv6 for an IPv6 client)
``specialtarget``   ``dns``: the virtual DNS addresses, port 53, tcp and udp
``dstports``        ``N-M`` (or ``N``), 1 <= N <= M <= 65535; with ``proto``
                    tcp, udp or none (then it matches tcp and udp)
``icmptype``        0..255, only with ``proto=icmp``
==================  =========================================================

At most one of ``dst4``/``dst6``/``dsthost``; ``dst4`` in an IPv6 client's
rules or ``dst6`` in an IPv4 client's is an error (the family is the
client address's), as in Qubes' own agent. An entry longer than 3072 bytes,
not ASCII, an unknown or repeated key, an empty field (two spaces), a
field without ``=``, an ``=`` inside a value, an empty value, a bad
network, range, type or host name, a policy other than accept/drop, or an
entry name that is neither ``policy`` nor four digits: the whole client
becomes ``ClientRules(client, (), "drop", error="<name>: <reason>")``
(deny-all), never an exception. A missing ``policy`` is ``drop``.

Numbering: rules are read in numeric order. dom0 numbers a client's rules
with one counter and *skips* those for the other address family and expired
ones (``qubes/firewall.py``, ``Firewall.qdb_entries``), so its output has
gaps: gaps are allowed by default; ``strict_numbering=True`` makes a gap
(numbers not exactly 0000, 0001, ...) an error.

What a rule matches (the one definition every backend follows; see
:class:`Matcher`), for a packet from the client:

* ``dst``: ``None`` matches every destination; otherwise the destination
  must lie in one of the networks (a network of the other family never
  matches). A ``dsthost`` rule has ``dst=()`` until resolved: it matches
  nothing. After :func:`resolve_dsthosts` its ``dst`` holds a /32 or /128
  per address the name resolved to, of *both* families (so ``dst`` may mix
  families; the signature's "one family" holds for ``dst4``/``dst6`` only).
* ``proto``: tcp (6), udp (17), icmp (1 for IPv4, 58 for IPv6); ``None``
  any protocol.
* ``dstports``: the packet is tcp or udp (whichever ``proto`` says, either
  without it) and its destination port in the range.
* ``icmptype``: the packet is ICMP (ICMPv6) of that type.
* ``dns`` (``specialtarget=dns``): as Qubes' agent compiles it: the
  destination is one of the virtual DNS addresses, tcp or udp, port 53.
  A ``dns`` rule with ``dstports`` other than ``53-53`` or with
  ``proto=icmp`` matches nothing (the agent emits no rule for it); with a
  ``dst``, the destination must also lie in it.

First match wins; no match gives the policy. Non-first fragments carry no
ports: the engine applies the first fragment's verdict to them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from ingot.signatures import ClientRules, FilterRule

MAX_ENTRY = 3072
"""Longest QubesDB entry, in bytes."""

KEYS = ("action", "dst4", "dst6", "dsthost", "proto", "specialtarget", "dstports", "icmptype")
"""The keys a rule may hold, in dom0's order."""

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}
"""Protocol numbers for IPv4 (ICMP is 58 for an IPv6 client)."""

DNS_PORT = 53

_NUMBER = re.compile(r"[0-9]{4}")
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


class RuleError(ValueError):
    """One entry does not parse: ``name`` (``"0003"``, ``"policy"``) and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def _text(name: str, value: bytes | str) -> str:
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        raise RuleError(name, f"entry is a {type(value).__name__}, not bytes or text")
    if len(raw) > MAX_ENTRY:
        raise RuleError(name, f"entry of {len(raw)} bytes is longer than {MAX_ENTRY}")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise RuleError(name, "entry is not ASCII") from None


def _network(name: str, key: str, value: str, version: int):
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    if "%" in value:
        raise RuleError(name, f"{key}={value}: a scoped address")
    if "/" in value:
        addr, _, prefix = value.partition("/")
        if not prefix.isascii() or not prefix.isdigit() or len(prefix) > 3:
            raise RuleError(name, f"{key}={value}: bad prefix length")
    try:
        return cls(value, strict=False)
    except ValueError:
        raise RuleError(name, f"{key}={value}: not an IPv{version} network") from None


def _hostname(name: str, value: str) -> str:
    host = value[:-1] if value.endswith(".") else value
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(x) for x in host.split(".")):
        raise RuleError(name, f"dsthost={value}: not a host name")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    raise RuleError(name, f"dsthost={value}: an address, not a host name (use dst4/dst6)")


def _ports(name: str, value: str) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if not sep:
        high = low
    if not _PORT.fullmatch(low) or not _PORT.fullmatch(high):
        raise RuleError(name, f"dstports={value}: not N-M")
    lo, hi = int(low), int(high)
    if not 1 <= lo <= hi <= 65535:
        raise RuleError(name, f"dstports={value}: not 1 <= N <= M <= 65535")
    return lo, hi


def parse_rule(name: str, text: str, version: int = 4) -> FilterRule:
    """One rule entry (``name`` is its NNNN) for a client of IP ``version``;
    :class:`RuleError` if it does not parse."""
    fields: dict[str, str] = {}
    for field in text.split(" "):
        if not field:
            raise RuleError(name, "empty field (leading, trailing or double space)")
        key, sep, value = field.partition("=")
        if not sep:
            raise RuleError(name, f"field {field!r} has no '='")
        if key not in KEYS:
            raise RuleError(name, f"unknown key {key!r}")
        if key in fields:
            raise RuleError(name, f"repeated key {key!r}")
        if not value:
            raise RuleError(name, f"empty value for {key!r}")
        if "=" in value:
            raise RuleError(name, f"'=' inside the value of {key!r}")
        fields[key] = value
    action = fields.get("action")
    if action is None:
        raise RuleError(name, "no action")
    if action not in ("accept", "drop"):
        raise RuleError(name, f"action={action}: not accept or drop")
    dests = [k for k in ("dst4", "dst6", "dsthost") if k in fields]
    if len(dests) > 1:
        raise RuleError(name, f"more than one destination ({', '.join(dests)})")
    dst = None
    dsthost = None
    if "dst4" in fields:
        if version != 4:
            raise RuleError(name, "dst4 in the rules of an IPv6 client (wrong family)")
        dst = (_network(name, "dst4", fields["dst4"], 4),)
    elif "dst6" in fields:
        if version != 6:
            raise RuleError(name, "dst6 in the rules of an IPv4 client (wrong family)")
        dst = (_network(name, "dst6", fields["dst6"], 6),)
    elif "dsthost" in fields:
        dsthost = _hostname(name, fields["dsthost"])
        dst = ()
    proto = fields.get("proto")
    if proto is not None and proto not in PROTO_NUMBERS:
        raise RuleError(name, f"proto={proto}: not tcp, udp or icmp")
    special = fields.get("specialtarget")
    if special is not None and special != "dns":
        raise RuleError(name, f"specialtarget={special}: not dns")
    dstports = None
    if "dstports" in fields:
        if proto == "icmp":
            raise RuleError(name, "dstports with proto=icmp")
        dstports = _ports(name, fields["dstports"])
    icmptype = None
    if "icmptype" in fields:
        if proto != "icmp":
            raise RuleError(name, "icmptype without proto=icmp")
        value = fields["icmptype"]
        if not _PORT.fullmatch(value) or int(value) > 255:
            raise RuleError(name, f"icmptype={value}: not 0..255")
        icmptype = int(value)
    return FilterRule(action=action, number=int(name) if name.isdigit() else 0, dst=dst,
                      dsthost=dsthost, proto=proto, dstports=dstports, icmptype=icmptype,
                      dns=special == "dns", text=text)


def _client_version(client_ip: str) -> int:
    try:
        return ipaddress.ip_address(client_ip).version
    except ValueError:
        return 6 if ":" in client_ip else 4


def parse_client_rules(client_ip: str, entries: Mapping[str, bytes | str], *,
                       strict_numbering: bool = False) -> ClientRules:
    """The rules of the client ``client_ip`` from its QubesDB entries
    (``{"policy": b"drop", "0000": b"action=accept ...", ...}``). Never
    raises: a rule set that does not parse is deny-all with ``error`` set."""
    try:
        version = _client_version(client_ip)
        policy = "drop"
        numbered: list[tuple[int, str, bytes | str]] = []
        for name, value in entries.items():
            if name == "policy":
                policy = _text(name, value)
                if policy not in ("accept", "drop"):
                    raise RuleError("policy", f"{policy!r}: not accept or drop")
            elif isinstance(name, str) and _NUMBER.fullmatch(name):
                numbered.append((int(name), name, value))
            else:
                raise RuleError(str(name), "not a rule number (four digits) nor 'policy'")
        numbered.sort()
        if strict_numbering:
            for expected, (number, name, _) in enumerate(numbered):
                if number != expected:
                    raise RuleError(name, f"gap: rule {expected:04} is missing")
        rules = tuple(parse_rule(name, _text(name, value), version)
                      for _, name, value in numbered)
    except RuleError as err:
        return ClientRules(client_ip, (), "drop", str(err))
    return ClientRules(client_ip, rules, policy)


def hostnames(rules: ClientRules) -> set[str]:
    """The ``dsthost`` names in ``rules`` (lower case, no trailing dot)."""
    return {r.dsthost for r in rules.rules if r.dsthost is not None}


def resolve_dsthosts(rules: ClientRules, lookup: Mapping[str, Sequence[str]]) -> ClientRules:
    """A copy of ``rules`` whose ``dsthost`` rules have ``dst`` set to a /32
    or /128 network per address in ``lookup[name]`` (text addresses of either
    family; one that does not parse is skipped). A name missing from
    ``lookup`` gives ``dst=()``: the rule matches nothing until it resolves."""
    out = []
    for rule in rules.rules:
        if rule.dsthost is None:
            out.append(rule)
            continue
        nets = []
        for text in lookup.get(rule.dsthost, ()):
            if not isinstance(text, str) or "%" in text:
                continue
            try:
                net = ipaddress.ip_network(text)
            except ValueError:
                continue
            if net.num_addresses == 1 and net not in nets:
                nets.append(net)
        out.append(replace(rule, dst=tuple(nets)))
    return replace(rules, rules=tuple(out))


# --------------------------------------------------------------------------
# matching


class Matcher:
    """A client's rules compiled for matching packets quickly.

    ``virtual_dns`` are the addresses ``specialtarget=dns`` means (4- or
    16-byte ``bytes``). :meth:`verdict` takes the packet's destination
    (packed bytes), IP protocol number, destination port (tcp/udp, else
    None) and ICMP type (ICMP/ICMPv6, else None) and returns
    ``(action, rule)``: the first matching rule's action and the rule, or
    ``(policy, None)``.
    """

    __slots__ = ("rules", "_compiled")

    def __init__(self, rules: ClientRules, virtual_dns: Iterable[bytes] = ()) -> None:
        self.rules = rules
        dns = tuple(virtual_dns)
        compiled = []
        for r in rules.rules:
            proto = PROTO_NUMBERS.get(r.proto) if r.proto else None
            if r.dns and (r.proto == "icmp" or r.dstports not in (None, (DNS_PORT, DNS_PORT))):
                continue  # Qubes' agent emits nothing for these
            nets = None
            if r.dst is not None:
                nets = tuple((n.version, int(n.network_address), int(n.netmask)) for n in r.dst)
            ports = r.dstports
            if r.dns:
                ports = (DNS_PORT, DNS_PORT)
            compiled.append((r.action == "accept", r, nets, proto, ports, r.icmptype,
                             dns if r.dns else None))
        self._compiled = tuple(compiled)

    def verdict(self, dst: bytes, proto: int, dport: int | None,
                icmp_type: int | None) -> tuple[str, FilterRule | None]:
        version = 4 if len(dst) == 4 else 6
        addr = int.from_bytes(dst, "big")
        for accept, rule, nets, rproto, ports, itype, dns in self._compiled:
            if rproto is not None:
                if rproto == 1:
                    if proto != (1 if version == 4 else 58):
                        continue
                elif proto != rproto:
                    continue
            if ports is not None:
                if dport is None or proto not in (6, 17) or not ports[0] <= dport <= ports[1]:
                    continue
            if itype is not None and icmp_type != itype:
                continue
            if dns is not None and (dst not in dns or proto not in (6, 17)):
                continue
            if nets is not None:
                for v, net, mask in nets:
                    if v == version and addr & mask == net:
                        break
                else:
                    continue
            return ("accept" if accept else "drop"), rule
        return self.rules.policy, None
