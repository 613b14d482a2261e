"""The network namespace kit: hosts talk through veths and bridges, teardown leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ingot.testing import netns as kit

pytest_plugins = ("pytester",)
pytestmark = pytest.mark.netns


def mine() -> list[str]:
    return [n for n in kit.namespaces() if n.startswith(kit.RUN_PREFIX)]


def test_two_hosts_ping_through_a_veth(netns):
    a, b = netns(), netns()
    assert a.name.startswith(kit.RUN_PREFIX) and a.name != b.name
    ifa, ifb = a.link(b, "10.200.0.1/24", "10.200.0.2/24")
    assert (ifa, ifb) == ("eth0", "eth0")
    assert a.ping("10.200.0.2") and b.ping("10.200.0.1")
    assert "state UP" in a.ip("link", "show", "lo") or "LOOPBACK,UP" in a.ip("link", "show", "lo")
    assert a.ping("127.0.0.1")


def test_hosts_ping_through_a_switch_and_a_router(netns):
    sw = netns.switch()
    hosts = [netns() for _ in range(3)]
    for i, host in enumerate(hosts, 1):
        sw.plug(host, f"10.137.0.{i}/24")
    assert hosts[0].ping("10.137.0.2") and hosts[0].ping("10.137.0.3")
    assert hosts[2].ping("10.137.0.1")
    # a second network behind hosts[1], reached through a route
    far = netns()
    hosts[1].link(far, "10.200.9.1/24", "10.200.9.2/24")
    hosts[1].sysctl("net.ipv4.ip_forward", 1)
    hosts[0].add_route("10.200.9.0/24", via="10.137.0.2")
    far.add_route("10.137.0.0/24", via="10.200.9.1")
    assert hosts[0].ping("10.200.9.2")


def test_processes_run_inside_and_stop_at_teardown(netns):
    a = netns()
    proc = a.popen("sleep", "30")
    deadline = time.monotonic() + 5
    while proc.pid not in kit.pids_in(a.name):  # until `ip netns exec` has switched
        assert time.monotonic() < deadline
        time.sleep(0.01)
    a.stop_processes()
    assert proc.poll() is not None


def test_entered_moves_only_this_thread_and_back(netns):
    import socket
    a = netns()
    a.tap("tap7")
    before = socket.if_nameindex()
    with a.entered():
        inside = {name for _, name in socket.if_nameindex()}
    assert inside == {"lo", "tap7"}
    assert socket.if_nameindex() == before


def test_teardown_leaves_nothing_when_the_body_raises():
    names = []
    with pytest.raises(RuntimeError, match="boom"):
        with kit.Lab() as lab:
            a, b = lab.host(), lab.switch()
            b.plug(a, "10.200.1.1/24")
            a.popen("sleep", "30")
            names = [a.name, b.name]
            raise RuntimeError("boom")
    assert names and not set(names) & set(kit.namespaces())


def test_the_fixture_cleans_up_after_a_failing_test(pytester):
    before = set(mine())
    pytester.makepyfile(textwrap.dedent("""
        pytest_plugins = ("ingot.testing.pytest_netns",)

        def test_fails(netns):
            a, b = netns(), netns()
            a.link(b, "10.200.2.1/24", "10.200.2.2/24")
            a.popen("sleep", "30")
            assert False, "the body fails"
    """))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert set(mine()) == before


def test_a_terminated_run_sweeps_its_namespaces_and_a_killed_one_is_swept_later():
    script = textwrap.dedent("""
        import sys, time
        from ingot.testing.netns import Lab
        lab = Lab()
        a = lab.host(); b = lab.host()
        a.link(b, "10.200.3.1/24", "10.200.3.2/24")
        print(a.name, b.name, flush=True)
        time.sleep(30)
    """)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 text=True)
        try:
            names = child.stdout.readline().split()
            assert len(names) == 2 and set(names) <= set(kit.namespaces())
            os.kill(child.pid, sig)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        left = set(names) & set(kit.namespaces())
        if sig == signal.SIGTERM:
            assert not left
        else:
            assert left == set(names)
            assert kit.sweep_stale(min_age_s=3600) == []  # too young to be called stale
            assert sorted(kit.sweep_stale(min_age_s=0)) == sorted(names)
            assert not set(names) & set(kit.namespaces())


@pytest.mark.parametrize("address", ["192.168.1.1/24", "10.201.0.1/24", "10.200.0.1/8",
                                     "10.0.0.1/32", "fd00::1/64", "8.8.8.8/32", "junk",
                                     "fd00:200::1/48", "fd09:24ef:4179::1/47",
                                     "fd09:24ef:417a::1/64", "fd00:201::1/64",
                                     "2001:db8::1/64", "fe80::1/64", "ff02::1/128",
                                     "::1/128", "::/0"])
def test_addresses_outside_the_lab_ranges_are_refused(netns, address):
    a, b = netns(), netns()
    with pytest.raises(ValueError):
        a.link(b, address, "10.200.0.2/24")
    assert a.ip("link", "show").count("eth") == 0  # refused before anything was made
    with pytest.raises(ValueError):
        a.add_address("lo", address)


def test_routes_and_pings_outside_the_ranges_are_refused(netns):
    a = netns()
    for dest in ("0.0.0.0/0", "default", "192.168.0.0/16", "10.0.0.0/8"):
        with pytest.raises(ValueError):
            a.add_route(dest, dev="lo")
    with pytest.raises(ValueError):
        a.add_route("10.200.5.0/24", via="192.168.0.1")
    with pytest.raises(ValueError):
        a.ping("1.1.1.1")
    with pytest.raises(ValueError):
        a.sysctl("kernel.panic", 1)


def test_checks_accept_the_lab_ranges():
    assert kit.check_interface("10.137.255.254/16") == "10.137.255.254/16"
    assert kit.check_network("10.200.4.7") == "10.200.4.7/32"
    assert kit.check_address("10.200.0.9") == "10.200.0.9"
    with pytest.raises(ValueError):
        kit.check_ifname("a-name-that-is-too-long")
    with pytest.raises(ValueError):
        kit.delete_namespace("someone-elses")



def test_checks_accept_the_ipv6_lab_ranges_and_nothing_around_them():
    assert kit.check_interface("fd09:24ef:4179::a89:b/128") == "fd09:24ef:4179::a89:b/128"
    assert kit.check_interface("fd00:200::1/64") == "fd00:200::1/64"
    assert kit.check_network("fd09:24ef:4179::/48") == "fd09:24ef:4179::/48"
    assert kit.check_address("fd00:200::ffff") == "fd00:200::ffff"
    assert kit.check_address("::1", loopback=True) == "::1"
    for bad in ("fd00:200:0:1::1", "fd09:24ef:4178::1", "2606:4700::1111", "fe80::1",
                "ff02::1", "::", "::ffff:10.200.0.1"):
        with pytest.raises(ValueError):
            kit.check_address(bad)
    for bad in ("::/0", "fd00::/8", "fd00:200::/63", "fc00::/7"):
        with pytest.raises(ValueError):
            kit.check_network(bad)
    with pytest.raises(ValueError):
        kit.check_address("::1")  # loopback only when asked for


def test_ipv6_hosts_ping_at_once_and_route_inside_the_ranges():
    with kit.Lab(ipv6=True) as lab:
        a, b, far = lab.host(), lab.host(), lab.host()
        a.link(b, "fd00:200::1/64", "fd00:200::2/64")
        # no duplicate address detection: usable straight away, no "tentative" address
        assert "tentative" not in a.ip("-6", "addr", "show", "dev", "eth0")
        assert a.ping("fd00:200::2") and b.ping("fd00:200::1") and a.ping("::1")
        b.link(far, "fd09:24ef:4179::1/128", "fd09:24ef:4179::a89:b/128")
        far.add_route("fd09:24ef:4179::1/128", dev="eth0")
        far.add_route("fd00:200::/64", via="fd09:24ef:4179::1")
        b.add_route("fd09:24ef:4179::a89:b/128", dev="eth1")
        b.sysctl("net.ipv6.conf.all.forwarding", 1)
        a.add_route("fd09:24ef:4179::/48", via="fd00:200::2")
        assert a.ping("fd09:24ef:4179::a89:b")
        with pytest.raises(ValueError):
            a.add_route("2001:db8::/32", via="fd00:200::2")
        with pytest.raises(ValueError):
            a.add_route("fd09:24ef:4179::/48", via="fe80::1")
        with pytest.raises(ValueError):
            a.ping("2001:4860:4860::8888")


def test_without_ipv6_a_host_has_it_off():
    with kit.Lab() as lab:
        a = lab.host()
        assert a.run("cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6").stdout.strip() == "1"
