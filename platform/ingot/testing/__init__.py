"""Helpers for testing Ingot plugins and appliances against real networks.

:mod:`ingot.testing.netns`
    hosts as Linux network namespaces, veth pairs, bridges and tap devices,
    with addresses kept inside 10.137.0.0/16 and 10.200.0.0/16 and a
    teardown that leaves nothing behind.
:mod:`ingot.testing.pytest_netns`
    the pytest plugin over it: the ``netns`` fixture and the ``netns``
    marker (load it with ``pytest_plugins = ["ingot.testing.pytest_netns"]``).
:mod:`ingot.testing.forward`
    a client - router - server line of hosts whose router forwards through
    two tun devices, and the forwarding loop that serves it (tests and
    benchmarks of the tun backends).
:mod:`ingot.testing.devices`
    checks every ``net``/``tun`` device must pass (closing ends reads).
:mod:`ingot.testing.frames`
    hand-built Ethernet, ARP, IPv4, ICMP, UDP and TCP, with a plain checksum
    to test packet code against.

Nothing here is imported by an appliance, so no image holds it.
"""
