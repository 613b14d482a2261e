"""Network interfaces: the ``net`` and ``tun`` devices.

Backends:

``net/tap`` (:mod:`.tap`)
    Ethernet frames through a Linux tap interface (``/dev/net/tun``).
``net/afpacket`` (:mod:`.afpacket`)
    Ethernet frames on an existing interface through a packet socket (one
    end of a veth pair, a NIC).
``net/memory``, ``tun/memory`` (:mod:`.memory`)
    in-process segments: devices with the same ``segment`` key are wired
    together (and a test can attach to the same segment).
``tun/tun`` (:mod:`.tun`)
    IP packets through a Linux tun interface.

Keys (on a device named ``net``: ``--net-ifname`` ...):

``ifname``
    the interface: tap/tun attach to it (a persistent one made beforehand
    with ``ip tuntap add``, or a new one); afpacket binds to it. Defaults
    ``tap0``, ``tun0``, ``eth0``.
``vnet-hdr``
    the Linux virtio-net header on every packet: ``read_vnet()``/
    ``write_vnet()`` then move GSO super-packets (up to 64 KiB) and
    unfinished checksums untouched, while ``read()`` finishes them in
    software and still returns standard packets. Default false on tap/tun
    (the kernel finishes everything), true on afpacket (without it a packet
    socket sees the peer's unfinished super-frames as they are).
``offload``
    tap/tun with ``vnet-hdr``: let the kernel hand over unfinished packets
    (``TUNSETOFFLOAD``); default true. Off, the kernel finishes them and the
    header is all zero.
``promiscuous``
    afpacket: receive frames for every MAC address; default false.
``mac``
    tap, memory: the device's MAC address; default a random locally
    administered one (tap) or ``02:00:00:00:00:NN`` by attach order (memory).
``segment``, ``mtu``
    memory: the segment's name (default ``default``) and the MTU (1500).

With the header on, ``read()`` finishes unfinished packets in software
(:mod:`.offload`: checksums completed, TCP and UDP super-packets cut into
segments) rather than turning the offloads off, so that one device can serve
both a forwarder's fast path and plain readers. ``write()`` on a ``tun``
device raises ``MessageTooLong`` above the MTU, as on ``net`` devices above
MTU + 14.

A forwarder reads the Linux devices with ``serve(handler)`` rather than
``read_vnet()``: the device calls the handler with each packet and its raw
virtio-net header as views of its receive buffer (no copy, no object per
packet), and ``write()``/``write_vnet()`` copy what they are given before
they return, so a packet can be edited and sent where it lies (see
:meth:`~ingot.plugins.netif.device.FdDevice.serve`).

Every device counts what it moved and lost (``dropped`` and
``stats_dict()``, see :data:`ingot.plugins.netif.device.STATS_DOC`).
The Linux backends work on the ``unix``, ``vm`` and ``qubes`` targets (not in
an OCI container, which has no interfaces of its own to give), the memory
ones everywhere; none is a default.
"""

from __future__ import annotations

from typing import Any

import ingot
from ingot.keys import Key, key
from ingot.registry import DeviceSpec

LINUX = ("unix", "vm", "qubes")

_MOD = "ingot.plugins.netif"


def _ifname(value: str) -> None:
    from .linux import check_ifname

    check_ifname(value)


def _mac(value: str) -> None:
    from .linux import check_mac

    check_mac(value)


def _mtu(value: int) -> None:
    if not 68 <= value <= 65535:
        raise ValueError(f"must be between 68 and 65535, got {value}")


def _ifname_key(default: str) -> Key:
    return key("ifname", str, "Name of the network interface", default, validate=_ifname)


def _vnet_key(default: bool) -> Key:
    return key("vnet-hdr", bool, "Exchange packets with the virtio-net header (GSO "
               "super-packets, unfinished checksums)", default)


OFFLOAD = key("offload", bool, "With vnet-hdr: let the kernel hand over unfinished "
              "checksums and GSO super-packets", True)
MAC = key("mac", str, "MAC address of the device (empty: choose one)", "", validate=_mac)

TAP_KEYS = (_ifname_key("tap0"), _vnet_key(False), OFFLOAD, MAC)
TUN_KEYS = (_ifname_key("tun0"), _vnet_key(False), OFFLOAD)
AFPACKET_KEYS = (_ifname_key("eth0"), _vnet_key(True),
                 key("promiscuous", bool, "Receive frames for every MAC address", False))
MEMORY_TUN_KEYS = (key("segment", str, "Name of the in-process segment to join", "default"),
                   key("mtu", int, "MTU of the device (bytes)", 1500, validate=_mtu))
MEMORY_NET_KEYS = (*MEMORY_TUN_KEYS, MAC)


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    return [
        DeviceSpec("net", "tap", f"{_MOD}.tap:connect",
                   "Ethernet frames through a Linux tap interface", targets=LINUX,
                   keys=TAP_KEYS),
        DeviceSpec("net", "afpacket", f"{_MOD}.afpacket:connect",
                   "Ethernet frames on an existing interface through a packet socket",
                   targets=LINUX, keys=AFPACKET_KEYS),
        DeviceSpec("net", "memory", f"{_MOD}.memory:connect_net",
                   "Ethernet frames on an in-process segment (tests, appliances in one "
                   "process)", keys=MEMORY_NET_KEYS),
        DeviceSpec("tun", "tun", f"{_MOD}.tun:connect",
                   "IP packets through a Linux tun interface", targets=LINUX, keys=TUN_KEYS),
        DeviceSpec("tun", "memory", f"{_MOD}.memory:connect_tun",
                   "IP packets on an in-process segment", keys=MEMORY_TUN_KEYS),
    ]


@ingot.hookimpl
def ingot_modules_require(plan: Any) -> list[str] | None:
    """tap and tun devices need the kernel's tun driver (a module in Debian's kernel)."""
    if plan.devices_of("net", "tap") or plan.devices_of("tun", "tun"):
        return ["tun"]
    return None
