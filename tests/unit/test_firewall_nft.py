"""The nftables compiler of the firewall: Qubes rules in, one ``nft -f`` script out.

The text is checked line by line for representative rules; hostile values
(interface names, addresses, rule fields, rule text) either raise or end as
a deny-all client, never as nft syntax. Where ``nft`` is installed (CI: the
nftables Debian package) and namespaces work, the scripts are also given to
the kernel inside a throwaway namespace: ``nft -c`` accepts them, a real
load replaces the table, and counters carry over.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.firewall import nft
from ingot.plugins.firewall.nft import compile_ruleset, rules_problem
from ingot.plugins.firewall.nft_backend import nft_spec
from ingot.signatures import ClientRules, FilterRule, FilterSetup

SETUP = FilterSetup(uplink_ip="10.200.0.2", uplink_gateway="10.200.0.1",
                    client_gateway="10.137.0.1", virtual_dns=("10.139.1.1", "10.139.1.2"),
                    upstream_dns=("10.200.0.1", "10.200.0.3"))
C1, C2 = "10.137.0.10", "10.137.0.11"
CLIENTS = {C1: "vif3.0", C2: "vif4.0"}


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def chain(script: str, name: str) -> list[str]:
    """The rule lines of one chain (comments and the hook line left out)."""
    match = re.search(rf"^  chain {re.escape(name)} \{{\n(.*?)^  \}}", script, re.S | re.M)
    assert match, f"no chain {name} in\n{script}"
    return [ln.strip() for ln in match.group(1).splitlines()
            if ln.strip() and not ln.strip().startswith(("#", "type "))]


def client_lines(rules: ClientRules, setup: FilterSetup = SETUP) -> list[str]:
    script = compile_ruleset(setup, {C1: "vif3.0"}, {C1: rules})
    lines = chain(script, "client_10_137_0_10")
    assert lines[0] == 'ct state established,related counter name "forwarded" accept'
    return lines[1:]


ACCEPT = 'counter name "forwarded" accept'
REJECT = 'counter name "drop_rule" reject with icmp type admin-prohibited'
POLICY = 'counter name "drop_policy" reject with icmp type admin-prohibited'
RULES_ERROR = 'counter name "drop_rules_error" reject with icmp type admin-prohibited'
NO_RULES = 'counter name "drop_no_rules" reject with icmp type admin-prohibited'


# --------------------------------------------------------------------------
# the rules, one by one


def test_each_rule_form_maps_to_its_nft_match():
    rules = ClientRules(C1, rules=(
        FilterRule("accept", 0, dst=(net("10.200.0.0/24"), net("10.200.7.1/32")),
                   proto="tcp", dstports=(443, 443)),
        FilterRule("accept", 1, proto="udp", dstports=(5000, 5010)),
        FilterRule("accept", 2, proto="icmp", icmptype=8),
        FilterRule("accept", 3, proto="icmp"),
        FilterRule("accept", 4, dstports=(8000, 8080)),
        FilterRule("accept", 5, dns=True),
        FilterRule("accept", 6, dns=True, proto="tcp"),
        FilterRule("drop", 7, dst=(net("10.200.9.0/24"),)),
        FilterRule("accept", 8, proto="tcp"),
    ), policy="drop")
    assert client_lines(rules) == [
        f"ct original ip daddr {{ 10.200.0.0/24, 10.200.7.1/32 }} tcp dport 443 {ACCEPT}",
        f"udp dport 5000-5010 {ACCEPT}",
        f"icmp type 8 {ACCEPT}",
        f"meta l4proto icmp {ACCEPT}",
        f"meta l4proto {{ tcp, udp }} th dport 8000-8080 {ACCEPT}",
        f"ct original ip daddr @virtual_dns meta l4proto {{ tcp, udp }} th dport 53 {ACCEPT}",
        f"ct original ip daddr @virtual_dns tcp dport 53 {ACCEPT}",
        f"ct original ip daddr {{ 10.200.9.0/24 }} {REJECT}",
        f"meta l4proto tcp {ACCEPT}",
        POLICY,
    ]


def test_policy_accept_and_any_destination():
    rules = ClientRules(C1, rules=(FilterRule("drop", 0, proto="udp", dstports=(53, 53)),
                                   FilterRule("accept", 1, dst=(net("0.0.0.0/0"),))),
                        policy="accept")
    assert client_lines(rules) == [f"udp dport 53 {REJECT}", ACCEPT, ACCEPT]


def test_networks_are_collapsed_and_ipv6_ones_kept_apart():
    rules = ClientRules(C1, rules=(
        FilterRule("accept", 0, dst=(net("10.200.0.0/24"), net("10.200.0.128/25"),
                                     net("10.200.1.0/24"))),
        FilterRule("accept", 1, dst=(net("fd00::/8"),), proto="tcp"),
    ))
    # in an IPv4 client's chain a network of the other family matches nothing
    assert client_lines(rules) == [f"ct original ip daddr {{ 10.200.0.0/23 }} {ACCEPT}",
                                   POLICY]


def test_rules_that_can_match_nothing_are_left_out():
    no_dns = FilterSetup(uplink_ip="10.200.0.2", uplink_gateway="10.200.0.1",
                         client_gateway="10.137.0.1")
    rules = ClientRules(C1, rules=(
        FilterRule("accept", 0, dst=(), dsthost="unresolved.example"),  # dsthost not resolved
        FilterRule("accept", 1, dns=True, dstports=(80, 90)),          # 53 not in the range
        FilterRule("accept", 1, dns=True, dstports=(50, 60)),          # not 53-53: as Qubes
    ))
    assert client_lines(rules) == [POLICY]
    assert client_lines(ClientRules(C1, rules=(FilterRule("accept", 0, dns=True),)),
                        no_dns) == [POLICY]
    script = compile_ruleset(SETUP, {C1: "vif3.0"}, {C1: rules})
    assert "# 0000\n    # (matches nothing)" in script


def test_error_or_missing_rules_deny_everything():
    bad = ClientRules(C1, rules=(), policy="drop", error="0001: unknown key 'foo'")
    assert client_lines(bad) == [RULES_ERROR]
    script = compile_ruleset(SETUP, {C1: "vif3.0", C2: "vif4.0"}, {C1: bad})
    assert chain(script, "client_10_137_0_11")[1:] == [NO_RULES]  # no rules at all
    assert "# deny all: rules did not parse: 0001: unknown key ?foo?" in script


def test_rule_text_becomes_a_harmless_comment():
    rule = FilterRule("accept", 3, proto="tcp", text='action=accept proto=tcp"\n}\nflush ruleset')
    script = compile_ruleset(SETUP, {C1: "vif3.0"}, {C1: ClientRules(C1, rules=(rule,))})
    assert "    # 0003 action=accept proto=tcp????flush ruleset\n" in script
    assert "\nflush ruleset" not in script


# --------------------------------------------------------------------------
# the table around the client chains


def test_the_table_is_replaced_atomically_with_the_hooks_it_needs():
    script = compile_ruleset(SETUP, CLIENTS, {}, table="fw-test", uplink_ifname="eth9")
    assert script.splitlines()[1:4] == ["add table inet fw-test", "delete table inet fw-test",
                                        "table inet fw-test {"]
    assert script.rstrip().endswith("}")
    assert ('map client_chains { type ifname : verdict; elements = { "vif3.0" : jump '
            'client_10_137_0_10, "vif4.0" : jump client_10_137_0_11 }; }') in script
    assert 'set client_ifs { type ifname; elements = { "vif3.0", "vif4.0" }; }' in script
    assert "set virtual_dns { type ipv4_addr; elements = { 10.139.1.1, 10.139.1.2 }; }" in script
    assert chain(script, "antispoof") == [
        'iifname @client_ifs meta nfproto ipv6 counter name "drop_ipv6" drop',
        'iifname "vif3.0" ip saddr != 10.137.0.10 counter name "drop_spoofed" drop',
        'iifname != "vif3.0" ip saddr 10.137.0.10 counter name "drop_spoofed" drop',
        'iifname "vif4.0" ip saddr != 10.137.0.11 counter name "drop_spoofed" drop',
        'iifname != "vif4.0" ip saddr 10.137.0.11 counter name "drop_spoofed" drop',
    ]
    assert "type filter hook prerouting priority raw; policy accept;" in script
    assert chain(script, "prerouting") == [
        f"iifname @client_ifs ip daddr 10.139.1.{i} meta l4proto {{ tcp, udp }} th dport 53 "
        f'counter name "dns_redirected" dnat ip to 10.200.0.{u}' for i, u in ((1, 1), (2, 3))]
    assert chain(script, "input") == [
        "iifname @client_ifs ct status dnat ct original ip daddr @virtual_dns "
        "iifname vmap @client_chains",
        'iifname @client_ifs ip daddr 10.137.0.1 icmp type echo-request '
        'counter name "local_echo" accept',
        'iifname @client_ifs counter name "drop_to_firewall" '
        'reject with icmp type host-prohibited',
        'iifname "eth9" ct state established,related accept',
        'iifname "eth9" counter name "drop_upstream" drop',
    ]
    assert "type filter hook forward priority filter; policy drop;" in script
    assert chain(script, "forward") == [
        'ct state invalid counter name "drop_invalid" drop',
        "iifname @client_ifs ct status dnat ct original ip daddr @virtual_dns "
        "iifname vmap @client_chains",
        'iifname @client_ifs ct original ip daddr @virtual_dns counter name '
        '"drop_to_firewall" reject with icmp type host-prohibited',
        "iifname vmap @client_chains",
        'iifname "eth9" oifname @client_ifs ct state established,related '
        'counter name "forwarded" accept',
        'iifname "eth9" counter name "drop_upstream" drop',
        'counter name "drop_unknown_if" drop',
    ]
    assert chain(script, "postrouting") == [
        'oifname "eth9" ip saddr != 10.200.0.2 counter name "masqueraded" snat ip to 10.200.0.2']


def test_no_clients_and_a_single_upstream_resolver():
    setup = FilterSetup(uplink_ip="10.200.0.2", uplink_gateway="10.200.0.1",
                        client_gateway="10.137.0.1", virtual_dns=("10.139.1.1", "10.139.1.2"),
                        upstream_dns=("10.200.0.1",))
    script = compile_ruleset(setup, {}, {C1: ClientRules(C1)})
    assert "map client_chains { type ifname : verdict; }" in script
    assert "set client_ifs { type ifname; }" in script
    assert "client_10_137_0_10" not in script  # rules of a client not attached: ignored
    assert chain(script, "antispoof") == [
        'iifname @client_ifs meta nfproto ipv6 counter name "drop_ipv6" drop']
    assert [ln.rsplit(" ", 1)[1] for ln in chain(script, "prerouting")] == ["10.200.0.1"] * 2


def test_counters_are_declared_with_their_carried_values():
    script = compile_ruleset(SETUP, {}, {}, counters={"drop_rule": (7, 420)})
    assert "  counter drop_rule { packets 7 bytes 420 }" in script
    assert "  counter forwarded { packets 0 bytes 0 }" in script
    assert {m for m in re.findall(r"^  counter (\w+) ", script, re.M)} == set(nft.COUNTERS)
    used = set(re.findall(r'counter name "(\w+)"', script))
    assert used <= set(nft.COUNTERS)


# --------------------------------------------------------------------------
# hostile input


HOSTILE_IFNAMES = ['vif1" accept; flush ruleset; "', "vif*", "a b", "vif1\n}", "", "x" * 16,
                   "vif1;", "vif{1}", "..", 'v"', "vif1/0", "vif1:0", None, 7]


@pytest.mark.parametrize("ifname", HOSTILE_IFNAMES)
def test_hostile_interface_names_are_refused(ifname):
    with pytest.raises(ValueError, match="interface name"):
        compile_ruleset(SETUP, {C1: ifname}, {})
    with pytest.raises(ValueError, match="interface name"):
        compile_ruleset(SETUP, {}, {}, uplink_ifname=ifname)


@pytest.mark.parametrize("address", ["10.137.0.10 }", "10.137.0.10; flush ruleset",
                                     "010.137.0.10", "fd00::1", "10.137.0.0/24", "", "any"])
def test_hostile_addresses_are_refused(address):
    with pytest.raises(ValueError, match="IPv4 address"):
        compile_ruleset(SETUP, {address: "vif3.0"}, {})
    for field in ("uplink_ip", "virtual_dns", "upstream_dns"):
        value = (address,) if field != "uplink_ip" else address
        setup = FilterSetup(**{**SETUP.__dict__, field: value})
        with pytest.raises(ValueError, match="IPv4 address"):
            compile_ruleset(setup, {}, {})


@pytest.mark.parametrize("table", ["ingot fw", "x; flush ruleset", "1fw", "", "f" * 33, 'a"'])
def test_hostile_table_names_are_refused(table):
    with pytest.raises(ValueError, match="table name"):
        compile_ruleset(SETUP, {}, {}, table=table)


def test_two_clients_on_one_interface_or_on_the_uplink_are_refused():
    with pytest.raises(ValueError, match="share interface vif3.0"):
        compile_ruleset(SETUP, {C1: "vif3.0", C2: "vif3.0"}, {})
    with pytest.raises(ValueError, match="uplink"):
        compile_ruleset(SETUP, {C1: "eth0"}, {})


HOSTILE_RULES = [
    FilterRule("accept; flush ruleset", 0),
    FilterRule("accept", 0, proto="tcp; flush ruleset"),
    FilterRule("accept", 0, proto="tcp", dstports=("80", "80")),
    FilterRule("accept", 0, proto="tcp", dstports=(80, 70000)),
    FilterRule("accept", 0, proto="tcp", dstports=(90, 80)),
    FilterRule("accept", 0, proto="tcp", dstports=(True, 80)),
    FilterRule("accept", 0, proto="icmp", icmptype=300),
    FilterRule("accept", 0, proto="icmp", icmptype="8 accept"),
    FilterRule("accept", 0, proto="tcp", icmptype=8),
    FilterRule("accept", 0, proto="icmp", dstports=(1, 2)),
    FilterRule("accept", 0, dst=("10.200.0.0/24 } accept",)),
    FilterRule("accept", 0, dst=(object(),)),
]


@pytest.mark.parametrize("rule", HOSTILE_RULES, ids=lambda r: repr(r)[:60])
def test_a_rule_that_is_no_rule_makes_the_client_deny_all(rule):
    rules = ClientRules(C1, rules=(FilterRule("accept", 0), rule), policy="accept")
    assert rules_problem(rules, SETUP)
    script = compile_ruleset(SETUP, CLIENTS, {C1: rules, C2: ClientRules(C2, policy="accept")})
    assert chain(script, "client_10_137_0_10")[1:] == [RULES_ERROR]
    assert chain(script, "client_10_137_0_11")[1:] == [ACCEPT]  # the other client unharmed
    assert not re.search(r"^[^#]*(flush ruleset|70000|300|\} accept)", script, re.M)


def test_a_bad_policy_makes_the_client_deny_all():
    rules = ClientRules(C1, rules=(), policy="accept; flush ruleset")
    assert client_lines(rules) == [RULES_ERROR]


SAFE_LINE = re.compile(r'^[A-Za-z0-9 _.,:/@{}()=!;\-"*#?]*$')


@settings(max_examples=300, deadline=None)
@given(ifname=st.text(max_size=20), text=st.text(max_size=80),
       ports=st.tuples(st.integers(-5, 70000), st.integers(-5, 70000)),
       icmptype=st.one_of(st.none(), st.integers(-3, 300)))
def test_whatever_comes_in_the_script_stays_well_formed(ifname, text, ports, icmptype):
    rules = ClientRules(C1, rules=(
        FilterRule("accept", 1, proto="tcp", dstports=ports, text=text),
        FilterRule("drop", 2, proto="icmp", icmptype=icmptype, text=text),
    ))
    try:
        script = compile_ruleset(SETUP, {C1: ifname}, {C1: rules})
    except ValueError:
        return
    assert ifname.isascii() and len(ifname) <= 15
    for line in script.splitlines():
        assert SAFE_LINE.match(line), line
    # balanced braces: nothing opened or closed a block it should not have
    assert script.count("{") == script.count("}")
    assert sum(1 for ln in script.splitlines() if ln.startswith("table ")) == 1


def test_the_compiler_is_pure():
    tree = ast.parse(Path(nft.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"os", "socket", "subprocess", "asyncio", "time", "random", "shutil"}


# --------------------------------------------------------------------------
# the device spec


def test_nft_spec_names_the_backend_and_its_keys():
    spec = nft_spec()
    assert (spec.kind, spec.backend) == ("packet_filter", "nftables")
    assert spec.factory == "ingot.plugins.firewall.nft_backend:connect"
    assert spec.targets == ("unix", "vm", "qubes") and spec.default_on == ()
    keys = {k.name: k for k in spec.keys}
    assert {n: k.default for n, k in keys.items()} == {"uplink-ifname": "eth0",
                                                       "table": "ingot-fw"}
    assert keys["uplink-ifname"].parse("vif2.0") == "vif2.0"
    for name, bad in (("uplink-ifname", 'eth0"; flush ruleset'), ("table", "a b")):
        with pytest.raises(Exception, match="name"):
            keys[name].parse(bad)


# --------------------------------------------------------------------------
# the kernel's own judgement (a throwaway namespace)


def _nft_missing() -> str | None:
    return None if shutil.which("nft") else "nft is not installed (Debian package nftables)"


@pytest.mark.netns
def test_the_kernel_accepts_the_scripts_and_replaces_the_table(netns):
    if _nft_missing():
        pytest.skip(_nft_missing())
    host = netns()
    rules = {
        C1: ClientRules(C1, rules=(
            FilterRule("accept", 0, dst=(net("10.200.0.0/24"), net("10.200.9.9/32")),
                       proto="tcp", dstports=(80, 443)),
            FilterRule("accept", 1, dns=True),
            FilterRule("accept", 2, proto="icmp", icmptype=8),
            FilterRule("drop", 3, dstports=(1, 1024)),
            FilterRule("accept", 4, dst=(net("fd00::/8"),)),
            FilterRule("accept", 5, dst=()),
        ), policy="accept"),
        C2: ClientRules(C2, error="bad"),
    }
    script = compile_ruleset(SETUP, CLIENTS, rules, uplink_ifname="eth0")
    check = host.run("nft", "-c", "-f", "-", input=script, check=False)
    assert check.returncode == 0, check.stderr
    # a real load, twice (the second replaces the first), then with carried counters
    for _ in range(2):
        host.run("nft", "-f", "-", input=script)
    host.run("nft", "-f", "-", input=compile_ruleset(
        SETUP, {C1: "vif3.0"}, rules, uplink_ifname="eth0",
        counters={"drop_spoofed": (3, 180)}))
    listing = json.loads(host.run("nft", "-j", "list", "table", "inet", "ingot-fw").stdout)
    counters = {o["counter"]["name"]: o["counter"]["packets"] for o in listing["nftables"]
                if "counter" in o}
    assert counters["drop_spoofed"] == 3 and set(counters) == set(nft.COUNTERS)
    chains = {o["chain"]["name"] for o in listing["nftables"] if "chain" in o}
    assert "client_10_137_0_11" not in chains and "client_10_137_0_10" in chains
    host.run("nft", "-f", "-", input=nft.delete_script())
    host.run("nft", "-f", "-", input=nft.delete_script())  # absent: still fine
    assert "ingot-fw" not in host.run("nft", "list", "tables").stdout


# --------------------------------------------------------------------------
# IPv6

SETUP6 = FilterSetup(**{**SETUP.__dict__, "uplink_ip6": "fd00:200::2",
                        "uplink_gateway6": "fd00:200::1",
                        "client_gateway6": "fd09:24ef:4179::a89:1"})
C1_6 = "fd09:24ef:4179::a89:a"
CHAIN6 = "client_fd09_24ef_4179_0000_0000_0000_0a89_000a"
REJECT6 = "reject with icmpv6 type admin-prohibited"


def test_an_ipv6_client_gets_a_chain_of_its_own_on_the_same_interface():
    rules = ClientRules(C1_6, rules=(
        FilterRule("drop", 0, dst=(net("fd00:300::/64"),), proto="tcp", dstports=(22, 22)),
        FilterRule("accept", 1, proto="icmp", icmptype=128),
        FilterRule("accept", 2, dns=True),                        # no virtual DNS for IPv6
        FilterRule("accept", 3, dst=(net("10.200.0.0/24"), net("::/0")), proto="udp"),
    ), policy="drop")
    script = compile_ruleset(SETUP6, {C1: "vif3.0", C1_6: "vif3.0"}, {C1_6: rules})
    assert chain(script, CHAIN6) == [
        'ct state established,related counter name "forwarded" accept',
        f'ct original ip6 daddr {{ fd00:300::/64 }} tcp dport 22 counter name "drop_rule" '
        f"{REJECT6}",
        f"icmpv6 type 128 {ACCEPT}",
        f"meta l4proto udp {ACCEPT}",
        f'counter name "drop_policy" {REJECT6}',
    ]
    assert 'map client_chains { type ifname : verdict; elements = { "vif3.0" : jump ' \
        'client_10_137_0_10 }; }' in script
    assert f'map client_chains6 {{ type ifname : verdict; elements = {{ "vif3.0" : jump ' \
        f'{CHAIN6} }}; }}' in script
    forward = chain(script, "forward")
    assert "meta nfproto ipv4 iifname vmap @client_chains" in forward
    assert "meta nfproto ipv6 iifname vmap @client_chains6" in forward
    # anti-spoofing lets neighbour discovery from link-local and :: through
    assert (f'iifname "vif3.0" ip6 saddr != {C1_6} ip6 saddr != fe80::/10 ip6 saddr != :: '
            'counter name "drop_spoofed" drop') in chain(script, "antispoof")
    assert ('oifname "eth0" ip6 saddr != fd00:200::2 ip6 saddr != fe80::/10 counter name '
            '"masqueraded" snat ip6 to fd00:200::2') in chain(script, "postrouting")
    inp = chain(script, "input")
    nd = inp.index("iifname @client_ifs6 " + nft.ND_IN + " accept")
    assert nd < inp.index(f'iifname @client_ifs meta nfproto ipv6 counter name '
                          f'"drop_to_firewall" {REJECT6}')
    assert 'iifname "eth0" ' + nft.ND_UP + " accept" in inp


def test_ipv6_clients_need_ipv6_in_the_setup_and_one_per_interface():
    with pytest.raises(ValueError, match="setup has no IPv6"):
        compile_ruleset(SETUP, {C1_6: "vif3.0"}, {})
    with pytest.raises(ValueError, match="share interface vif3.0"):
        compile_ruleset(SETUP6, {C1_6: "vif3.0", "fd09:24ef:4179::a89:b": "vif3.0"}, {})
    with pytest.raises(ValueError, match="IPv6 address"):
        compile_ruleset(SETUP6, {"fd09::1 }": "vif3.0"}, {})
    with pytest.raises(ValueError, match="IPv6 address"):
        compile_ruleset(FilterSetup(**{**SETUP6.__dict__, "uplink_ip6": "fd00::1; x"}), {}, {})
    # without an IPv6 client, IPv6 on a client interface is dropped
    script = compile_ruleset(SETUP6, {C1: "vif3.0"}, {})
    assert ('iifname @client_ifs iifname != @client_ifs6 meta nfproto ipv6 counter name '
            '"drop_ipv6" drop') in chain(script, "antispoof")
