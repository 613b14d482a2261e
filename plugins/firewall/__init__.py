"""The firewall's protocol library and its ``packet_filter`` backends.

Files: ``rules.py`` (Qubes firewall rules from QubesDB entries, sans-I/O),
``conntrack.py`` (connection tracking and NAT table), ``engine.py`` (the
verdict and NAT engine: IP packets in, ``Forward``/``Drop`` out, sans-I/O),
``l2.py`` (Ethernet and ARP of a firewall VM, sans-I/O), ``nft.py`` (the
same rules compiled into an nftables ruleset, sans-I/O), and the adapters,
the only files with I/O: ``python_backend.py`` (Ingot's own data plane over
``net`` devices) and ``nft_backend.py`` (the kernel's, configured with
``nft -f``).

Backends of the ``packet_filter`` kind (:class:`ingot.signatures.PacketFilter`):

``python``
    the engine over the uplink ``net`` device it requires (``--uplink
    afpacket --uplink-ifname eth0``) and a packet socket per client
    interface; GSO super-packets are filtered once per 64 KiB. Keys:
    ``client-backend`` (``afpacket``, or ``memory`` segments for tests),
    ``client-vnet-hdr``, ``arp-queue``.
``nftables``
    the kernel forwards; the rules become one nftables table replaced
    atomically on every change. Keys: ``uplink-ifname``, ``table``.

The specs are written out here, not taken from the backend modules, so that
an image holds only the backend it was configured with.

In a ``vm`` or ``qubes`` image (:func:`ingot_modules_require`) the python
backend needs packet sockets (``af_packet``, built into Debian's kernel, so
no module file is carried). The nftables backend runs the ``nft`` program,
which such an image does not hold (there is no program in it but Python):
``ingot configure`` refuses it on those targets, and ``ingot build`` too for
a plan written by hand.
"""

from __future__ import annotations

import re
from typing import Any

import ingot
from ingot.keys import key
from ingot.registry import DeviceSpec

LINUX = ("unix", "vm", "qubes")
CLIENT_BACKENDS = ("afpacket", "memory")
_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,14}$")
_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,31}$")


def _queue_size(value: int) -> None:
    if not 1 <= value <= 1024:
        raise ValueError(f"must be between 1 and 1024, got {value}")


def _ifname(value: str) -> None:
    if not _IFNAME.match(value) or value in (".", ".."):
        raise ValueError(f"{value!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")


def _table(value: str) -> None:
    if not _TABLE.match(value):
        raise ValueError(f"{value!r} is not a table name (a letter, then letters, digits, "
                         "_ or -; at most 32)")


PYTHON_KEYS = (
    key("client-backend", str, "How client interfaces are opened: 'afpacket' (a packet "
        "socket on the named interface) or 'memory' (the named in-process segment, tests)",
        "afpacket", choices=CLIENT_BACKENDS),
    key("client-vnet-hdr", bool, "afpacket clients: use the virtio-net header (GSO "
        "super-packets pass the engine once per 64 KiB)", True),
    key("arp-queue", int, "Packets that wait per address while ARP resolves it", 8,
        validate=_queue_size),
)
NFT_KEYS = (
    key("uplink-ifname", str, "Interface towards upstream (client traffic leaving it is "
        "masqueraded)", "eth0", validate=_ifname),
    key("table", str, "nftables table (inet family) the firewall owns and replaces",
        "ingot-fw", validate=_table),
)

PYTHON_SPEC = DeviceSpec(
    "packet_filter", "python", "ingot.plugins.firewall.python_backend:connect",
    "Ingot's own filter and NAT engine in Python: the uplink net device and a packet "
    "socket per client interface, GSO super-packets filtered once per 64 KiB",
    targets=LINUX, keys=PYTHON_KEYS, requires=(("uplink", "net"),))
NFT_SPEC = DeviceSpec(
    "packet_filter", "nftables", "ingot.plugins.firewall.nft_backend:connect",
    "The Qubes firewall rules compiled into an nftables ruleset (nft -f); the kernel "
    "forwards, filters and NATs", targets=LINUX, keys=NFT_KEYS)


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    return [PYTHON_SPEC, NFT_SPEC]


VM_TARGETS = ("vm", "qubes")
PYTHON_MODULES = ["af_packet"]
"""Kernel modules of the python backend in a VM image (Debian builds af_packet in)."""
NFT_MODULES = ["nf_tables", "nft_ct", "nft_nat", "nft_masq", "nft_reject_inet", "nft_chain_nat"]
"""Kernel modules the nftables ruleset uses (named for a kernel that would run it)."""


def _nft_in_vm(plan: Any) -> list[str]:
    if plan.target not in VM_TARGETS:
        return []
    return [f"packet_filter device {dev.name!r}: the nftables backend runs the 'nft' program, "
            f"which a {plan.target} image does not hold (no program but Python is in it); "
            f"use --{dev.name.replace('_', '-')} python"
            for dev in plan.devices_of("packet_filter", "nftables")]


@ingot.hookimpl
def ingot_plan_validate(plan: Any) -> list[str]:
    return _nft_in_vm(plan)


@ingot.hookimpl
def ingot_image_collect(plan: Any, image: Any) -> None:
    problems = _nft_in_vm(plan)
    if problems:
        from ingot.errors import BuildError

        raise BuildError(problems[0], hint="reconfigure with --filter python and rebuild")


@ingot.hookimpl
def ingot_modules_require(plan: Any) -> list[str] | None:
    names: list[str] = []
    if plan.devices_of("packet_filter", "python"):
        names += PYTHON_MODULES
    if plan.devices_of("packet_filter", "nftables"):
        names += NFT_MODULES
    return names or None
