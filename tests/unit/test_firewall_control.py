"""The firewall appliance's control plane without I/O: QubesDB entries to the data plane's
setup, clients, reload triggers, and the dsthost schedule."""

import pytest

from ingot.appliances.firewall.control import (SECOND, ConfigError, Dsthosts, clients_from,
                                               rule_target, setup_from)

QDB = {
    "/qubes-ip": b"10.200.0.2",
    "/qubes-gateway": b"10.200.0.1",
    "/qubes-netmask": b"255.255.255.0",
    "/qubes-netvm-gateway": b"10.137.0.1",
    "/qubes-netvm-primary-dns": b"10.139.1.1",
    "/qubes-netvm-secondary-dns": b"10.139.1.2",
    "/qubes-primary-dns": b"10.200.0.1",
    "/qubes-secondary-dns": b"10.200.0.53",
}


def test_setup_from_qubesdb():
    s = setup_from(QDB, 77)
    assert (s.uplink_ip, s.uplink_gateway, s.uplink_prefix, s.client_gateway) == (
        "10.200.0.2", "10.200.0.1", 24, "10.137.0.1")
    assert s.virtual_dns == ("10.139.1.1", "10.139.1.2")
    assert s.upstream_dns == ("10.200.0.1", "10.200.0.53")
    assert s.max_connections == 77 and s.uplink_ip6 == ""
    # Qubes gives VMs a /32 netmask; only one DNS pair
    s = setup_from({**QDB, "/qubes-netmask": b"255.255.255.255",
                    "/qubes-secondary-dns": b""})
    assert s.uplink_prefix == 32 and s.virtual_dns == ("10.139.1.1",)


@pytest.mark.parametrize("change, message", [
    ({"/qubes-ip": None}, "QubesDB has no /qubes-ip"),
    ({"/qubes-netvm-gateway": b" "}, "QubesDB has no /qubes-netvm-gateway"),
    ({"/qubes-gateway": b"10.200.0.300"}, "/qubes-gateway = '10.200.0.300' is not an IP"),
    ({"/qubes-ip": b"fd00::1"}, "is not an IPv4 address"),
    ({"/qubes-netmask": b"255.0.255.0"}, "is not a netmask"),
    ({"/qubes-ip": b"\xff"}, "is not ASCII"),
])
def test_setup_errors_name_the_path(change, message):
    values = {k: v for k, v in {**QDB, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        setup_from(values)


def test_clients_from_static_key_and_qubesdb_entries():
    clients, problems = clients_from(
        {"/ingot/clients/10.137.0.11": b"vif3.0", "/ingot/clients/10.137.0.12": b"vif4.0\n",
         "/ingot/clients/not-an-ip": b"vif5.0", "/ingot/clients/10.137.0.13": b"bad name",
         "/ingot/clients/10.137.0.14": b"x" * 16},
        ["10.137.0.10=eth1", "10.137.0.11=old", "nonsense=eth2"])
    assert clients == {"10.137.0.10": "eth1", "10.137.0.11": "vif3.0", "10.137.0.12": "vif4.0"}
    assert len(problems) == 4 and any("nonsense" in p for p in problems)


def test_only_the_empty_write_at_the_client_level_reloads():
    assert rule_target("/qubes-firewall/10.137.0.11") == "10.137.0.11"
    assert rule_target("/qubes-firewall/10.137.0.11/0000") is None
    assert rule_target("/qubes-firewall/10.137.0.11/policy") is None
    assert rule_target("/qubes-firewall/") is None
    assert rule_target("/connected-ips") is None


def test_dsthost_schedule_ttl_bounds_and_retry():
    d = Dsthosts(min_ttl_s=30, max_ttl_s=3600, retry_s=10)
    assert d.want(["Example.COM.", "b.test"], 0) == ["b.test", "example.com"]
    assert d.resolved("example.com", ["192.0.2.1", "192.0.2.1"], 5, 0)  # changed
    assert d.names["example.com"].due_ns == 30 * SECOND                  # min TTL
    assert not d.resolved("example.com", ["192.0.2.1"], 99999, 0)        # same addresses
    assert d.names["example.com"].due_ns == 3600 * SECOND                # max TTL
    d.failed("b.test", 1 * SECOND)
    assert d.names["b.test"].due_ns == 11 * SECOND
    assert d.next_due_ns() == 11 * SECOND
    assert d.due(11 * SECOND) == ["b.test"]
    assert d.lookup() == {"example.com": ("192.0.2.1",), "b.test": ()}
    assert d.want(["b.test"], 12 * SECOND) == ["b.test"] and "example.com" not in d.names


def test_ipv6_setup_from_the_keys_dom0_writes():
    # as qubes-core-admin's create_qdb_entries writes them for a firewall VM with the
    # ipv6 feature: its own address, its upstream's, and the gateway its clients use
    # (in Qubes the firewall's own address again)
    s = setup_from({**QDB, "/qubes-ip6": b"fd09:24ef:4179::a89:6",
                    "/qubes-gateway6": b"fd09:24ef:4179::a89:5",
                    "/qubes-netvm-gateway6": b"fd09:24ef:4179:0000::a89:6"})
    assert (s.uplink_ip6, s.uplink_gateway6, s.client_gateway6) == (
        "fd09:24ef:4179::a89:6", "fd09:24ef:4179::a89:5", "fd09:24ef:4179::a89:6")
    with pytest.raises(ConfigError, match="/qubes-ip6 = '10.200.0.2' is not an IPv6"):
        setup_from({**QDB, "/qubes-ip6": b"10.200.0.2"})
