"""The ``stack/direct`` device: Ingot's own network stack over a ``net`` device.

ARP, IPv4 (with fragment reassembly), ICMP echo, UDP and a DHCP client,
written in Python over the packet library :mod:`ingot.plugins.netstack`:
``state.py`` is the host (sans-I/O), ``dhcp.py`` the DHCP client (sans-I/O),
``adapter.py`` the only file with I/O (asyncio, the ``net`` device). TCP is
not implemented yet: ``listen_tcp``/``connect_tcp`` raise ``Unsupported``.

It needs a ``net`` device (``--net tap|afpacket|memory`` at configure), the
monotonic clock and the random device (both ambient).

Keys (on a device named ``stack``: ``--stack-ipv4`` ...):

``ipv4``
    ``dhcp`` (default) or a static ``address/prefix`` such as ``10.137.0.2/24``.
``gateway``
    the default gateway with a static address (default: none, on-link only).
``dhcp-timeout``
    seconds to wait for a lease at start before giving up (default 30).
``hostname``
    the host name sent to the DHCP server (default: none).
"""

from __future__ import annotations

import ipaddress

import ingot
from ingot.keys import key, positive
from ingot.registry import DeviceSpec


def _ipv4(value: str) -> None:
    if value != "dhcp":
        ipaddress.IPv4Interface(value)  # ValueError says what is wrong


def _gateway(value: str) -> None:
    if value:
        ipaddress.IPv4Address(value)


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    return [
        DeviceSpec(
            "stack", "direct", "ingot.plugins.stack_direct.adapter:connect",
            "Ingot's own ARP/IPv4/ICMP/UDP stack (DHCP or static) over a net device; no TCP yet",
            targets=("unix", "vm", "qubes"),
            keys=(key("ipv4", str, "'dhcp' or a static address/prefix (10.137.0.2/24)", "dhcp",
                      validate=_ipv4),
                  key("gateway", str, "Default gateway with a static address", "",
                      validate=_gateway),
                  key("dhcp-timeout", float, "Seconds to wait for a DHCP lease at start", 30.0,
                      validate=positive),
                  key("hostname", str, "Host name sent to the DHCP server", "")),
            requires=(("net", "net"), ("mclock", "mclock"), ("random", "random")),
        ),
    ]
