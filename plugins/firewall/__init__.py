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
"""

from __future__ import annotations

import re

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
