"""Qubes firewall rules as dom0 writes them into QubesDB: every form parses,
every malformed entry turns the client deny-all with the reason, and the
matcher follows Qubes' agent."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.firewall.rules import (Matcher, hostnames, parse_client_rules,
                                          resolve_dsthosts)
from ingot.signatures import ClientRules, FilterRule

C4 = "10.137.0.10"
C6 = "fd09:24ef:4179::a89:a"
VDNS = (ipaddress.ip_address("10.139.1.1").packed, ipaddress.ip_address("10.139.1.2").packed)


def net(text: str):
    return ipaddress.ip_network(text)


def one(rule: str, client: str = C4) -> FilterRule:
    rules = parse_client_rules(client, {"policy": b"drop", "0000": rule.encode()})
    assert rules.error is None, rules.error
    [r] = rules.rules
    return r


def error(entries: dict, client: str = C4) -> str:
    rules = parse_client_rules(client, entries)
    assert rules == ClientRules(client, (), "drop", rules.error)
    assert rules.error is not None
    return rules.error


# -- every form ------------------------------------------------------------------


def test_dom0_example_in_field_order():
    entries = {
        "policy": b"drop",
        "0000": b"action=accept dst4=192.168.1.0/24 proto=tcp dstports=443-443",
        "0001": b"action=accept specialtarget=dns",
        "0002": b"action=accept proto=icmp icmptype=8",
        "0003": b"action=drop dsthost=Example.COM.",
        "0004": b"action=accept",
    }
    rules = parse_client_rules(C4, entries)
    assert rules.error is None and rules.policy == "drop" and rules.client == C4
    r0, r1, r2, r3, r4 = rules.rules
    assert r0 == FilterRule("accept", 0, (net("192.168.1.0/24"),), None, "tcp", (443, 443),
                            None, False, entries["0000"].decode())
    assert r1.dns and r1.dst is None and r1.proto is None and r1.number == 1
    assert (r2.proto, r2.icmptype) == ("icmp", 8)
    assert r3.action == "drop" and r3.dsthost == "example.com" and r3.dst == ()
    assert r4 == FilterRule("accept", 4, text="action=accept")


@pytest.mark.parametrize("rule,field,value", [
    ("action=accept", "dst", None),
    ("action=drop", "action", "drop"),
    ("action=accept dst4=10.0.0.0/8", "dst", (net("10.0.0.0/8"),)),
    ("action=accept dst4=10.1.2.3", "dst", (net("10.1.2.3/32"),)),
    ("action=accept dst4=10.1.2.3/8", "dst", (net("10.0.0.0/8"),)),  # host bits masked
    ("action=accept dst4=0.0.0.0/0", "dst", (net("0.0.0.0/0"),)),
    ("action=accept proto=tcp", "proto", "tcp"),
    ("action=accept proto=udp", "proto", "udp"),
    ("action=accept proto=icmp", "proto", "icmp"),
    ("action=accept dstports=80-80", "dstports", (80, 80)),
    ("action=accept dstports=22", "dstports", (22, 22)),
    ("action=accept proto=udp dstports=1-65535", "dstports", (1, 65535)),
    ("action=accept proto=tcp dstports=1024-2048", "dstports", (1024, 2048)),
    ("action=accept proto=icmp icmptype=0", "icmptype", 0),
    ("action=accept proto=icmp icmptype=255", "icmptype", 255),
    ("action=accept specialtarget=dns", "dns", True),
    ("action=accept proto=udp specialtarget=dns", "proto", "udp"),
    ("action=accept dsthost=qubes-os.org", "dsthost", "qubes-os.org"),
    ("action=accept dsthost=_srv.Example.org", "dsthost", "_srv.example.org"),
    ("proto=tcp dstports=80-80 action=drop", "action", "drop"),  # any order
])
def test_rule_forms(rule, field, value):
    assert getattr(one(rule), field) == value


def test_ipv6_client_forms():
    r = one("action=accept dst6=2001:db8::/32 proto=icmp icmptype=128", C6)
    assert r.dst == (net("2001:db8::/32"),) and r.icmptype == 128
    assert one("action=accept dst6=2001:db8::1", C6).dst == (net("2001:db8::1/128"),)


def test_str_values_and_bytes_values_alike():
    a = parse_client_rules(C4, {"policy": "accept", "0000": "action=drop proto=udp"})
    b = parse_client_rules(C4, {"policy": b"accept", "0000": b"action=drop proto=udp"})
    assert a == b and a.policy == "accept"


def test_numeric_order_whatever_the_mapping_order():
    entries = {"0002": b"action=drop", "policy": b"accept", "0000": b"action=accept proto=tcp",
               "0001": b"action=accept proto=udp"}
    assert [r.number for r in parse_client_rules(C4, entries).rules] == [0, 1, 2]


def test_missing_policy_is_drop_and_no_entries_is_deny_all():
    assert parse_client_rules(C4, {"0000": b"action=accept proto=tcp"}).policy == "drop"
    assert parse_client_rules(C4, {}) == ClientRules(C4, (), "drop", None)


def test_gaps_allowed_as_dom0_writes_them_strict_rejects():
    # dom0 numbers rules with one counter and skips other-family and expired ones
    entries = {"policy": b"drop", "0000": b"action=accept proto=tcp", "0002": b"action=accept"}
    rules = parse_client_rules(C4, entries)
    assert rules.error is None and [r.number for r in rules.rules] == [0, 2]
    strict = parse_client_rules(C4, entries, strict_numbering=True)
    assert strict.rules == () and strict.error == "0002: gap: rule 0001 is missing"
    assert parse_client_rules(C4, {"0001": b"action=accept"},
                              strict_numbering=True).error == "0001: gap: rule 0000 is missing"


# -- every error: deny-all with "<NNNN>: <reason>" -------------------------------


@pytest.mark.parametrize("rule,reason", [
    ("action=accept comment=hi", "unknown key 'comment'"),
    ("action=accept expire=123", "unknown key 'expire'"),
    ("action=accept proto=tcp proto=udp", "repeated key 'proto'"),
    ("action=accept action=accept", "repeated key 'action'"),
    ("action=accept dsthost=a=b", "'=' inside the value of 'dsthost'"),
    ("action=accept proto=", "empty value for 'proto'"),
    ("action=accept proto", "field 'proto' has no '='"),
    ("action=accept  proto=tcp", "empty field (leading, trailing or double space)"),
    ("action=accept ", "empty field (leading, trailing or double space)"),
    (" action=accept", "empty field (leading, trailing or double space)"),
    ("", "empty field (leading, trailing or double space)"),
    ("proto=tcp", "no action"),
    ("action=reject", "action=reject: not accept or drop"),
    ("action=ACCEPT", "action=ACCEPT: not accept or drop"),
    ("action=accept dst4=2001:db8::/32", "dst4=2001:db8::/32: not an IPv4 network"),
    ("action=accept dst4=10.0.0.0/33", "dst4=10.0.0.0/33: not an IPv4 network"),
    ("action=accept dst4=10.0.0.0/", "dst4=10.0.0.0/: bad prefix length"),
    ("action=accept dst4=10.0.0.0/255.0.0.0", "dst4=10.0.0.0/255.0.0.0: bad prefix length"),
    ("action=accept dst4=10.0.0.256/32", "dst4=10.0.0.256/32: not an IPv4 network"),
    ("action=accept dst4=example.com", "dst4=example.com: not an IPv4 network"),
    ("action=accept dst6=2001:db8::/32", "dst6 in the rules of an IPv4 client (wrong family)"),
    ("action=accept dst4=10.0.0.0/8 dsthost=a.b", "more than one destination (dst4, dsthost)"),
    ("action=accept dsthost=-bad.example", "dsthost=-bad.example: not a host name"),
    ("action=accept dsthost=a..b", "dsthost=a..b: not a host name"),
    ("action=accept dsthost=10.0.0.1",
     "dsthost=10.0.0.1: an address, not a host name (use dst4/dst6)"),
    ("action=accept dsthost=" + "a" * 64 + ".org", "dsthost=" + "a" * 64 + ".org: not a host name"),
    ("action=accept proto=sctp", "proto=sctp: not tcp, udp or icmp"),
    ("action=accept proto=TCP", "proto=TCP: not tcp, udp or icmp"),
    ("action=accept specialtarget=ntp", "specialtarget=ntp: not dns"),
    ("action=accept proto=tcp dstports=0-80", "dstports=0-80: not 1 <= N <= M <= 65535"),
    ("action=accept proto=tcp dstports=80-65536", "dstports=80-65536: not 1 <= N <= M <= 65535"),
    ("action=accept proto=tcp dstports=90-80", "dstports=90-80: not 1 <= N <= M <= 65535"),
    ("action=accept proto=tcp dstports=http", "dstports=http: not N-M"),
    ("action=accept proto=tcp dstports=+80", "dstports=+80: not N-M"),
    ("action=accept proto=tcp dstports=80-", "dstports=80-: not N-M"),
    ("action=accept proto=tcp dstports=1-2-3", "dstports=1-2-3: not N-M"),
    ("action=accept proto=icmp dstports=1-2", "dstports with proto=icmp"),
    ("action=accept icmptype=8", "icmptype without proto=icmp"),
    ("action=accept proto=tcp icmptype=8", "icmptype without proto=icmp"),
    ("action=accept proto=icmp icmptype=256", "icmptype=256: not 0..255"),
    ("action=accept proto=icmp icmptype=-1", "icmptype=-1: not 0..255"),
    ("action=accept proto=icmp icmptype=echo", "icmptype=echo: not 0..255"),
])
def test_rule_errors(rule, reason):
    entries = {"policy": b"accept", "0000": b"action=accept", "0001": rule.encode()}
    assert error(entries) == f"0001: {reason}"


def test_wrong_family_for_ipv6_client():
    assert error({"0000": b"action=accept dst4=10.0.0.0/8"}, C6) == \
        "0000: dst4 in the rules of an IPv6 client (wrong family)"
    assert error({"0000": b"action=accept dst6=10.0.0.0/8"}, C6) == \
        "0000: dst6=10.0.0.0/8: not an IPv6 network"


@pytest.mark.parametrize("policy", [b"reject", b"", b"accept ", b"ACCEPT"])
def test_bad_policy(policy):
    assert error({"policy": policy}).startswith("policy: ")


@pytest.mark.parametrize("name", ["01", "00000", "abcd", "rule", "000a", "-001", "０００１"])
def test_bad_entry_names(name):
    assert error({"policy": b"accept", name: b"action=accept"}) == \
        f"{name}: not a rule number (four digits) nor 'policy'"


def test_entry_limits_and_encoding():
    long = b"action=accept dsthost=" + b"a." * 1600 + b"org"
    assert error({"0000": long}) == f"0000: entry of {len(long)} bytes is longer than 3072"
    assert error({"0000": "action=accept dsthost=ex\u00e4mple.org"}) == "0000: entry is not ASCII"
    assert error({"0000": b"action=accept dsthost=ex\xe4mple.org"}) == "0000: entry is not ASCII"
    assert error({"policy": b"\xff"}) == "policy: entry is not ASCII"
    assert error({"0000": None}) == "0000: entry is a NoneType, not bytes or text"
    assert error({b"0000": b"action=accept"}) == \
        "b'0000': not a rule number (four digits) nor 'policy'"


def test_first_error_reported_in_numeric_order():
    entries = {"0001": b"action=bad", "0000": b"action=worse"}
    assert error(entries) == "0000: action=worse: not accept or drop"


# -- dsthost ---------------------------------------------------------------------


def test_hostnames_and_resolution_both_families():
    rules = parse_client_rules(C4, {
        "0000": b"action=accept dsthost=a.example proto=tcp dstports=443-443",
        "0001": b"action=drop dsthost=B.example",
        "0002": b"action=accept dst4=10.0.0.0/8",
        "0003": b"action=accept dsthost=missing.example",
    })
    assert hostnames(rules) == {"a.example", "b.example", "missing.example"}
    done = resolve_dsthosts(rules, {
        "a.example": ["192.0.2.1", "2001:db8::1", "192.0.2.1", "not an address", "fe80::1%eth0"],
        "b.example": ["198.51.100.7"],
    })
    r0, r1, r2, r3 = done.rules
    assert r0.dst == (net("192.0.2.1/32"), net("2001:db8::1/128"))
    assert (r0.proto, r0.dstports, r0.dsthost) == ("tcp", (443, 443), "a.example")
    assert r1.dst == (net("198.51.100.7/32"),)
    assert r2 is rules.rules[2]
    assert r3.dst == ()
    assert rules.rules[0].dst == ()  # the original is unchanged
    # re-resolving replaces the addresses
    again = resolve_dsthosts(done, {"a.example": ["192.0.2.9"]})
    assert again.rules[0].dst == (net("192.0.2.9/32"),) and again.rules[1].dst == ()


# -- matching --------------------------------------------------------------------


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def matcher(*rules: str, policy: str = "drop", client: str = C4) -> Matcher:
    entries = {f"{i:04}": r.encode() for i, r in enumerate(rules)}
    entries["policy"] = policy.encode()
    parsed = parse_client_rules(client, entries)
    assert parsed.error is None
    return Matcher(parsed, VDNS)


def test_first_match_wins_then_policy():
    m = matcher("action=drop proto=tcp dstports=80-80", "action=accept proto=tcp", policy="drop")
    assert m.verdict(ip("1.2.3.4"), 6, 80, None)[0] == "drop"
    assert m.verdict(ip("1.2.3.4"), 6, 81, None) == ("accept", m.rules.rules[1])
    assert m.verdict(ip("1.2.3.4"), 17, 80, None) == ("drop", None)


def test_dstports_without_proto_matches_tcp_and_udp_only():
    m = matcher("action=accept dstports=53-53")
    assert m.verdict(ip("1.2.3.4"), 6, 53, None)[0] == "accept"
    assert m.verdict(ip("1.2.3.4"), 17, 53, None)[0] == "accept"
    assert m.verdict(ip("1.2.3.4"), 1, None, 8)[0] == "drop"
    assert m.verdict(ip("1.2.3.4"), 47, None, None)[0] == "drop"


def test_icmptype_and_icmp_of_each_family():
    m = matcher("action=accept proto=icmp icmptype=8")
    assert m.verdict(ip("1.2.3.4"), 1, None, 8)[0] == "accept"
    assert m.verdict(ip("1.2.3.4"), 1, None, 0)[0] == "drop"
    m6 = matcher("action=accept proto=icmp", client=C6)
    assert m6.verdict(ip("2001:db8::1"), 58, None, 128)[0] == "accept"
    assert m6.verdict(ip("2001:db8::1"), 1, None, 8)[0] == "drop"


def test_networks_and_families():
    m = matcher("action=accept dst4=192.168.0.0/16")
    assert m.verdict(ip("192.168.200.1"), 17, 9, None)[0] == "accept"
    assert m.verdict(ip("192.169.0.1"), 17, 9, None)[0] == "drop"
    rules = resolve_dsthosts(parse_client_rules(C4, {"0000": b"action=accept dsthost=h.example"}),
                             {"h.example": ["192.0.2.1", "2001:db8::1"]})
    m = Matcher(rules)
    assert m.verdict(ip("192.0.2.1"), 6, 1, None)[0] == "accept"
    assert m.verdict(ip("2001:db8::1"), 6, 1, None)[0] == "accept"
    assert m.verdict(ip("192.0.2.2"), 6, 1, None)[0] == "drop"
    unresolved = Matcher(parse_client_rules(C4, {"0000": b"action=accept dsthost=h.example"}))
    assert unresolved.verdict(ip("192.0.2.1"), 6, 1, None)[0] == "drop"


def test_specialtarget_dns_as_qubes_compiles_it():
    m = matcher("action=accept specialtarget=dns")
    for proto in (6, 17):
        assert m.verdict(VDNS[0], proto, 53, None)[0] == "accept"
        assert m.verdict(VDNS[1], proto, 53, None)[0] == "accept"
    assert m.verdict(VDNS[0], 17, 54, None)[0] == "drop"
    assert m.verdict(ip("8.8.8.8"), 17, 53, None)[0] == "drop"
    assert m.verdict(VDNS[0], 1, None, 8)[0] == "drop"
    assert matcher("action=accept proto=udp specialtarget=dns").verdict(VDNS[0], 6, 53, None)[0] \
        == "drop"
    assert matcher("action=accept specialtarget=dns dstports=53-53").verdict(
        VDNS[0], 17, 53, None)[0] == "accept"
    # Qubes' agent emits nothing for these: they match nothing
    assert matcher("action=accept specialtarget=dns dstports=1-1024").verdict(
        VDNS[0], 17, 53, None)[0] == "drop"
    assert matcher("action=accept specialtarget=dns proto=icmp").verdict(
        VDNS[0], 1, None, 8)[0] == "drop"
    # with a dst, both must hold
    assert matcher("action=accept specialtarget=dns dst4=10.139.1.1/32").verdict(
        VDNS[1], 17, 53, None)[0] == "drop"
    # and an ordinary rule covers the DNS addresses too
    assert matcher("action=accept dst4=10.139.0.0/16").verdict(VDNS[0], 17, 53, None)[0] \
        == "accept"


def test_error_rules_match_nothing():
    bad = parse_client_rules(C4, {"policy": b"accept", "0000": b"action=maybe"})
    assert Matcher(bad).verdict(ip("1.2.3.4"), 6, 80, None) == ("drop", None)


# -- never raises ----------------------------------------------------------------

_TOKENS = st.sampled_from(["action=accept", "action=drop", "dst4=10.0.0.0/8", "dst6=::/0",
                           "dsthost=a.b", "proto=tcp", "proto=udp", "proto=icmp",
                           "specialtarget=dns", "dstports=1-2", "dstports=80", "icmptype=3",
                           "=", "x=y", "", "dstports=9-1", "proto=icmp icmptype=300"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(["policy", "0000", "0001", "0002", "12"]),
                                 st.text(max_size=5)),
                       st.one_of(st.lists(_TOKENS, max_size=6).map(" ".join),
                                 st.binary(max_size=40), st.text(max_size=40)),
                       max_size=5),
       st.sampled_from([C4, C6, "garbage"]))
def test_parse_never_raises(entries, client):
    rules = parse_client_rules(client, entries)
    assert isinstance(rules, ClientRules)
    if rules.error is not None:
        assert rules.rules == () and rules.policy == "drop"
    else:
        Matcher(rules, VDNS).verdict(ip("10.0.0.1"), 6, 80, None)
