"""Qubes firewall rules compiled into one nftables script (pure: no I/O).

:func:`compile_ruleset` turns the firewall's setup, its attached clients and
their rules into a script for ``nft -f -`` that replaces one ``inet`` table
in a single transaction (``add table``; ``delete table``; ``table {...}``:
the ``add`` makes the ``delete`` work when the table does not exist yet).
Connection tracking lives outside the table, so connections (and their NAT
bindings) survive the replacement; the named counters are carried over by
passing their current values in ``counters``.

The table, by hook:

``antispoof`` (prerouting, priority raw: before conntrack sees the packet)
    IPv6 from a client interface is dropped (``drop_ipv6``); on a client's
    interface a source other than the client's address is dropped, and so is
    the client's address arriving on any other interface (``drop_spoofed``,
    as Qubes' ``vif-route-qubes`` does in its raw table).
``prerouting`` (nat, dstnat)
    UDP/TCP port 53 from a client to virtual DNS address *i* is DNATed to
    upstream resolver *i* (``dns_redirected``).
``input`` (filter)
    a client's redirected DNS that ends on the firewall itself goes through
    that client's chain; an echo request to the client gateway is answered
    (``local_echo``); anything else from a client is refused with ICMP
    host-prohibited (``drop_to_firewall``), as Qubes' own input chain does;
    from the uplink only tracked replies pass (``drop_upstream``).
``forward`` (filter, policy drop)
    ``ct state invalid`` dropped; a client's packets jump to its own chain
    through the verdict map ``client_chains`` (by ``iifname``); from the
    uplink to a client interface only ``established,related``; the rest is
    dropped (``drop_upstream``, ``drop_unknown_if``).
``client_<a>_<b>_<c>_<d>`` (one per attached client)
    ``ct state established,related accept`` first (connections survive rule
    changes, as Linux Qubes' forward chain does), then the client's rules in
    order, then its policy. A rule's ``drop`` and the ``drop`` policy answer
    ``reject with icmp type admin-prohibited`` (``drop_rule``,
    ``drop_policy``; a client denied everything counts ``drop_no_rules``
    before its first rules, ``drop_rules_error`` when they did not parse).
    Destinations are matched on ``ct original ip daddr``: the address the
    client sent to, before the DNS redirect, so that
    ``specialtarget=dns`` (and a ``dst4`` covering 10.139.1.1) judges the
    virtual address and not the upstream one it was rewritten to.
``postrouting`` (nat, srcnat)
    whatever leaves the uplink interface with a source other than
    ``uplink_ip`` is SNATed to ``uplink_ip`` (``masqueraded``, first packet of
    each connection). Client to client traffic keeps its addresses.

Everything that reaches the script is checked first: interface names against
Linux's rules minus anything nft would read as syntax (they are quoted too),
addresses and networks re-printed by :mod:`ipaddress`, ports and ICMP types as
integers in range, the table name as an nft identifier, rule text in comments
reduced to harmless characters. A bad setup, interface or client address
raises ``ValueError``; a client whose rules cannot be compiled is denied
everything (its chain says why in a comment, :func:`rules_problem` tells the
caller).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from ingot.signatures import ClientRules, FilterRule, FilterSetup

COUNTERS: dict[str, str] = {
    "forwarded": "forwarded",
    "masqueraded": "nat.masqueraded",
    "dns_redirected": "dns.redirected",
    "local_echo": "local.echo",
    "drop_spoofed": "drop.spoofed",
    "drop_ipv6": "drop.ipv6",
    "drop_invalid": "drop.invalid",
    "drop_rule": "drop.rule",
    "drop_policy": "drop.policy",
    "drop_rules_error": "drop.rules error",
    "drop_no_rules": "drop.no rules",
    "drop_to_firewall": "drop.to firewall",
    "drop_upstream": "drop.no connection",
    "drop_unknown_if": "drop.unknown client",
}
"""The table's named counters (packets and bytes), one per reason, and the
name each has in ``stats()``: the python backend's names for the same event
(``masqueraded`` and ``dns_redirected`` count connections, not packets)."""

REJECT = "reject with icmp type admin-prohibited"
REJECT_HOST = "reject with icmp type host-prohibited"
REJECT6 = "reject with icmpv6 type admin-prohibited"
"""IPv6 has no host-prohibited: a drop and the firewall itself both answer this
(ICMPv6 type 1 code 1), as the python engine does."""
ND_IN = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }"
"""Neighbour discovery the kernel takes in from clients (no router advertisements:
Qubes configures clients statically)."""
ND_UP = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }"

_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,14}$")
_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,31}$")
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9 =.,:/_\-]")


# --------------------------------------------------------------------------
# checks


def check_ifname(name: object) -> str:
    """An interface name fit for the script: 1-15 of ``A-Z a-z 0-9 _ . -``.

    Linux allows more (anything but ``/``, ``:`` and blanks), but nothing a
    Qubes ``vifN.M`` or a veth needs; ``*`` (an nft wildcard) and quotes are
    refused.
    """
    if not isinstance(name, str) or not _IFNAME.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return name


def check_table(name: object) -> str:
    """An nft table name: a letter, then up to 31 letters, digits, ``_``, ``-``."""
    if not isinstance(name, str) or not _TABLE.match(name):
        raise ValueError(f"{name!r} is not a table name (a letter, then letters, "
                         "digits, _ or -; at most 32)")
    return name


def check_ipv4(text: object, what: str = "address") -> str:
    """One IPv4 address, re-printed by :mod:`ipaddress`."""
    try:
        return str(ipaddress.IPv4Address(text if isinstance(text, str) else str(text)))
    except (ipaddress.AddressValueError, ValueError):
        raise ValueError(f"{what} {text!r} is not an IPv4 address") from None


def check_ipv6(text: object, what: str = "address") -> str:
    """One IPv6 address, re-printed by :mod:`ipaddress` (RFC 5952)."""
    try:
        return str(ipaddress.IPv6Address(text if isinstance(text, str) else str(text)))
    except (ipaddress.AddressValueError, ValueError):
        raise ValueError(f"{what} {text!r} is not an IPv6 address") from None


def has_ipv6(setup: FilterSetup) -> bool:
    """Whether the setup turns IPv6 on (as the python engine: an uplink address
    and a client gateway)."""
    return bool(setup.uplink_ip6 and setup.client_gateway6)


def check_client(text: object, setup: FilterSetup) -> str:
    """A client address: IPv4, or IPv6 when the setup has IPv6."""
    if isinstance(text, str) and ":" in text and has_ipv6(setup):
        return check_ipv6(text, "client")
    if isinstance(text, str) and ":" in text:
        raise ValueError(f"client {text!r}: IPv6, but the setup has no IPv6 addresses "
                         "(an IPv4 address is needed)")
    return check_ipv4(text, "client")


def _ports(value: object) -> tuple[int, int]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"dstports {value!r} is not a (low, high) pair")
    low, high = value
    for port in (low, high):
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"dstports {value!r}: {port!r} is not a port number")
    if low > high:
        raise ValueError(f"dstports {low}-{high}: the range is backwards")
    return low, high


def _networks(dst: Iterable[object]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for net in dst:
        if isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            nets.append(net)
        elif isinstance(net, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            try:
                nets.append(ipaddress.ip_network(net, strict=False))
            except ValueError:
                raise ValueError(f"dst {net!r} is not a network") from None
        else:
            raise ValueError(f"dst {net!r} is not a network")
    return nets


def _comment(text: str) -> str:
    return _COMMENT_UNSAFE.sub("?", str(text))[:160]


def _number(rule: FilterRule) -> str:
    number = rule.number
    if isinstance(number, int) and not isinstance(number, bool) and 0 <= number <= 9999:
        return f"{number:04d}"
    return _comment(repr(number))[:12]


# --------------------------------------------------------------------------
# rules


def _port_match(proto: str | None, ports: tuple[int, int] | None) -> list[str]:
    span = None if ports is None else (
        str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}")
    if proto is None:
        return [] if span is None else ["meta l4proto { tcp, udp }", f"th dport {span}"]
    if span is None:
        return [f"meta l4proto {proto}"]
    return [f"{proto} dport {span}"]


def _rule_lines(rule: FilterRule, setup: FilterSetup, version: int = 4) -> list[str]:
    """The nft rule lines for one FilterRule of a client of IP ``version``
    (none when it can match nothing). For an IPv6 client ``proto=icmp`` is
    ICMPv6, a drop answers ICMPv6 admin-prohibited, and ``specialtarget=dns``
    matches nothing (there is no virtual DNS address for IPv6).

    Raises ``ValueError`` when the rule holds something that is not a rule.
    """
    if rule.action not in ("accept", "drop"):
        raise ValueError(f"action {rule.action!r} is not accept or drop")
    verdict = ('counter name "forwarded" accept' if rule.action == "accept"
               else f'counter name "drop_rule" {REJECT if version == 4 else REJECT6}')
    if rule.proto not in (None, "tcp", "udp", "icmp"):
        raise ValueError(f"proto {rule.proto!r} is not tcp, udp or icmp")
    ports = None if rule.dstports is None else _ports(rule.dstports)
    icmptype = rule.icmptype
    if icmptype is not None and (not isinstance(icmptype, int) or isinstance(icmptype, bool)
                                 or not 0 <= icmptype <= 255):
        raise ValueError(f"icmptype {icmptype!r} is not an ICMP type (0-255)")
    if icmptype is not None and rule.proto not in (None, "icmp"):
        raise ValueError(f"icmptype with proto={rule.proto}")
    if ports is not None and rule.proto == "icmp":
        raise ValueError("dstports with proto=icmp")

    matches: list[str] = []
    proto = rule.proto
    if proto == "icmp" and version == 6:
        proto = "ipv6-icmp"
    if rule.dns:
        if version == 6 or not setup.virtual_dns or rule.proto == "icmp" or \
                icmptype is not None:
            return []  # no virtual DNS address (or ICMP to port 53): matches nothing
        if ports is not None and ports != (53, 53):
            return []  # as Qubes' agent: a DNS rule with other ports emits nothing
        matches += ["ct original ip daddr @virtual_dns", *_port_match(rule.proto, (53, 53))]
    elif icmptype is not None:
        matches.append(f"{'icmp' if version == 4 else 'icmpv6'} type {icmptype}")
    else:
        matches += _port_match(proto, ports)

    if rule.dst is None:
        return [" ".join([*matches, verdict])]
    nets = _networks(rule.dst)
    mine = [n for n in nets if n.version == version]  # the other family never matches
    if not mine:
        return []  # (or an unresolved dsthost): matches nothing
    if any(n.prefixlen == 0 for n in mine):
        dst: list[str] = []
    else:
        collapsed = ipaddress.collapse_addresses(mine)  # type: ignore[type-var]
        merged = ", ".join(str(n) for n in collapsed)
        dst = [f"ct original {'ip' if version == 4 else 'ip6'} daddr {{ {merged} }}"]
    return [" ".join([*dst, *matches, verdict])]


def _client_body(rules: ClientRules | None, setup: FilterSetup, version: int = 4
                 ) -> tuple[list[str], str | None]:
    """The lines of a client's chain after the established rule, and why it is deny-all."""
    problem = rules_problem(rules, setup)
    reject = REJECT if version == 4 else REJECT6
    if rules is None:
        return ["# deny all: no rules yet", f'counter name "drop_no_rules" {reject}'], None
    if problem is not None:
        return [f"# deny all: {_comment(problem)}",
                f'counter name "drop_rules_error" {reject}'], problem
    body = []
    for rule in rules.rules:
        text = _comment(rule.text) if rule.text else ""
        body.append(f"# {_number(rule)} {text}".rstrip())
        lines = _rule_lines(rule, setup, version)
        body += lines or ["# (matches nothing)"]
    if rules.policy == "accept":
        body.append('counter name "forwarded" accept')
    else:
        body.append(f'counter name "drop_policy" {reject}')
    return body, None


def rules_problem(rules: ClientRules | None, setup: FilterSetup) -> str | None:
    """Why this client is denied everything (``None``: its rules compile).

    ``None`` rules (none set yet) are not a problem, just deny-all.
    """
    if rules is None:
        return None
    if rules.error:
        return f"rules did not parse: {rules.error}"
    if rules.policy not in ("accept", "drop"):
        return f"policy {rules.policy!r} is not accept or drop"
    version = 6 if ":" in str(rules.client) else 4
    for rule in rules.rules:
        try:
            _rule_lines(rule, setup, version)
        except (ValueError, TypeError) as exc:
            return f"rule {_number(rule)}: {exc}"
    return None


def chain_name(client_ip: str) -> str:
    """The chain of one client: ``client_10_137_0_10``, or for an IPv6 address
    its eight groups in full, ``client_fd09_24ef_4179_0000_0000_0000_0a89_000b``."""
    if ":" in client_ip:
        return "client_" + ipaddress.IPv6Address(check_ipv6(client_ip, "client")
                                                 ).exploded.replace(":", "_")
    return "client_" + check_ipv4(client_ip, "client").replace(".", "_")


# --------------------------------------------------------------------------
# the script


def _elements(items: Iterable[str]) -> str:
    items = list(items)
    return f"; elements = {{ {', '.join(items)} }}" if items else ""


def compile_ruleset(setup: FilterSetup, clients: Mapping[str, str],
                    rules: Mapping[str, ClientRules], table: str = "ingot-fw", *,
                    uplink_ifname: str = "eth0",
                    counters: Mapping[str, tuple[int, int]] | None = None) -> str:
    """One ``nft -f`` script that atomically replaces ``inet table``.

    ``clients`` maps each attached client's address to its interface (an
    interface serves at most one IPv4 and, when the setup has IPv6, one IPv6
    address: the two of one VM); ``rules`` holds rules by client address
    (those of clients not attached are ignored; an attached client without
    rules is denied everything). ``uplink_ifname`` is the interface towards
    upstream. ``counters`` gives the named counters' starting ``(packets,
    bytes)`` (carried over from the table being replaced). Raises
    ``ValueError`` on a bad setup, interface name, client address or table
    name.
    """
    table = check_table(table)
    uplink = check_ifname(uplink_ifname)
    uplink_ip = check_ipv4(setup.uplink_ip, "uplink_ip")
    gateway = check_ipv4(setup.client_gateway, "client_gateway") if setup.client_gateway else ""
    vdns = [check_ipv4(a, "virtual_dns") for a in setup.virtual_dns]
    updns = [check_ipv4(a, "upstream_dns") for a in setup.upstream_dns]
    v6 = has_ipv6(setup)
    uplink_ip6 = check_ipv6(setup.uplink_ip6, "uplink_ip6") if v6 else ""
    gateway6 = check_ipv6(setup.client_gateway6, "client_gateway6") if v6 else ""
    if len(set(vdns)) != len(vdns):
        raise ValueError(f"virtual_dns {setup.virtual_dns!r} lists an address twice")
    attached: list[tuple[str, str, int]] = []
    seen_if: dict[tuple[str, int], str] = {}
    checked = [(check_client(ip, setup), ifname) for ip, ifname in clients.items()]
    for ip, ifname in sorted(checked, key=lambda kv: (":" in kv[0],
                                                      ipaddress.ip_address(kv[0]))):
        version = 6 if ":" in ip else 4
        ifname = check_ifname(ifname)
        if ifname == uplink:
            raise ValueError(f"client {ip}: {ifname} is the uplink interface")
        if (ifname, version) in seen_if:
            raise ValueError(f"clients {seen_if[ifname, version]} and {ip} share interface "
                             f"{ifname}")
        seen_if[ifname, version] = ip
        attached.append((ip, ifname, version))
    counters = counters or {}

    def counter(name: str) -> str:
        packets, nbytes = counters.get(name, (0, 0))
        return f"  counter {name} {{ packets {int(packets)} bytes {int(nbytes)} }}"

    def chains(version: int) -> str:
        return _elements(f'"{i}" : jump {chain_name(ip)}' for ip, i, v in attached
                         if v == version)

    out = [f"# ingot packet_filter/nftables: {len(attached)} client(s), uplink {uplink}",
           f"add table inet {table}",
           f"delete table inet {table}",
           f"table inet {table} {{"]
    out += [counter(name) for name in COUNTERS]
    ifs = sorted({f'"{ifname}"' for _, ifname, _ in attached})
    ifs6 = [f'"{ifname}"' for _, ifname, v in attached if v == 6]
    out.append(f"  set client_ifs {{ type ifname{_elements(ifs)}; }}")
    if v6:
        out.append(f"  set client_ifs6 {{ type ifname{_elements(ifs6)}; }}")
    out.append(f"  set virtual_dns {{ type ipv4_addr{_elements(vdns)}; }}")
    out.append(f"  map client_chains {{ type ifname : verdict{chains(4)}; }}")
    if v6:
        out.append(f"  map client_chains6 {{ type ifname : verdict{chains(6)}; }}")
    # one VM's two addresses share its interface: each family goes to its own chain
    by_family = (("meta nfproto ipv4 iifname vmap @client_chains",
                  "meta nfproto ipv6 iifname vmap @client_chains6") if v6
                 else ("iifname vmap @client_chains",))

    out += ["  chain antispoof {",
            "    type filter hook prerouting priority raw; policy accept;"]
    if v6:  # IPv6 on an interface without an IPv6 client is dropped
        out.append("    iifname @client_ifs iifname != @client_ifs6 meta nfproto ipv6 "
                   'counter name "drop_ipv6" drop')
    else:
        out.append('    iifname @client_ifs meta nfproto ipv6 counter name "drop_ipv6" drop')
    for ip, ifname, version in attached:
        if version == 4:
            out.append(f'    iifname "{ifname}" ip saddr != {ip} counter name "drop_spoofed" '
                       "drop")
            out.append(f'    iifname != "{ifname}" ip saddr {ip} counter name "drop_spoofed" '
                       "drop")
        else:  # neighbour discovery comes from link-local addresses and :: too
            out.append(f'    iifname "{ifname}" ip6 saddr != {ip} ip6 saddr != fe80::/10 '
                       'ip6 saddr != :: counter name "drop_spoofed" drop')
            out.append(f'    iifname != "{ifname}" ip6 saddr {ip} counter name "drop_spoofed" '
                       "drop")
    out.append("  }")

    out += ["  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;"]
    if updns:
        for i, vaddr in enumerate(vdns):
            target = updns[min(i, len(updns) - 1)]
            out.append(f"    iifname @client_ifs ip daddr {vaddr} meta l4proto {{ tcp, udp }} "
                       f'th dport 53 counter name "dns_redirected" dnat ip to {target}')
    out.append("  }")

    out += ["  chain input {",
            "    type filter hook input priority filter; policy accept;",
            "    iifname @client_ifs ct status dnat ct original ip daddr @virtual_dns "
            "iifname vmap @client_chains",
            *([f"    iifname @client_ifs ip daddr {gateway} icmp type echo-request "
               'counter name "local_echo" accept'] if gateway else []),
            *([f"    iifname @client_ifs6 {ND_IN} accept",
               f"    iifname @client_ifs6 ip6 daddr {gateway6} icmpv6 type echo-request "
               'counter name "local_echo" accept',
               f'    iifname @client_ifs meta nfproto ipv6 counter name "drop_to_firewall" '
               f"{REJECT6}"] if v6 else []),
            f'    iifname @client_ifs counter name "drop_to_firewall" {REJECT_HOST}',
            f'    iifname "{uplink}" ct state established,related accept',
            *([f'    iifname "{uplink}" {ND_UP} accept'] if v6 else []),
            f'    iifname "{uplink}" counter name "drop_upstream" drop',
            "  }"]

    out += ["  chain forward {",
            "    type filter hook forward priority filter; policy drop;",
            '    ct state invalid counter name "drop_invalid" drop',
            # the virtual DNS addresses are the firewall's: DNS to them (redirected in
            # prerouting) is judged by the client's rules, anything else is refused
            *(["    iifname @client_ifs ct status dnat ct original ip daddr @virtual_dns "
                "iifname vmap @client_chains",
                "    iifname @client_ifs ct original ip daddr @virtual_dns "
                f'counter name "drop_to_firewall" {REJECT_HOST}'] if vdns else []),
            *(f"    {line}" for line in by_family),
            f'    iifname "{uplink}" oifname @client_ifs ct state established,related '
            'counter name "forwarded" accept',
            f'    iifname "{uplink}" counter name "drop_upstream" drop',
            '    counter name "drop_unknown_if" drop',
            "  }"]

    out += ["  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f'    oifname "{uplink}" ip saddr != {uplink_ip} counter name "masqueraded" '
            f"snat ip to {uplink_ip}",
            *([f'    oifname "{uplink}" ip6 saddr != {uplink_ip6} ip6 saddr != fe80::/10 '
               f'counter name "masqueraded" snat ip6 to {uplink_ip6}'] if v6 else []),
            "  }"]

    for ip, ifname, version in attached:
        body, _ = _client_body(rules.get(ip), setup, version)
        out.append(f"  chain {chain_name(ip)} {{")
        out.append(f"    # client {ip} on {ifname}")
        out.append('    ct state established,related counter name "forwarded" accept')
        out += [f"    {line}" for line in body]
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def delete_script(table: str = "ingot-fw") -> str:
    """A script that removes the table (and does not fail when it is absent)."""
    table = check_table(table)
    return f"add table inet {table}\ndelete table inet {table}\n"
