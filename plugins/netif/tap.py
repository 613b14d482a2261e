"""The ``net/tap`` device: Ethernet frames through a Linux tap interface.

Like the tun backend (:mod:`.tun`, same keys and the same virtio-net header
handling) with ``IFF_TAP``: whole Ethernet frames in and out. The kernel's
side of the tap keeps its own MAC address; the device's ``mac`` is another
one (the ``mac`` key, or a random locally administered address), because
frames to the tap's own MAC stay in the host (a bridge delivers them
locally) and would never reach the device.
"""

from __future__ import annotations

from typing import Any

from ingot.registry import DeviceContext

from .linux import IFF_TAP, parse_mac, random_mac
from .tun import TunTap


class TapNet(TunTap):
    """:class:`ingot.signatures.Net` over a tap interface."""

    MODE = IFF_TAP
    KIND = "tap"
    ETHERNET = True

    def __init__(self, ifname: str, *, mac: bytes | None = None, **kwargs: Any) -> None:
        super().__init__(ifname, **kwargs)
        self._mac = mac or random_mac()

    @property
    def mac(self) -> bytes:
        """The device's MAC (not the kernel side's, see the module docstring)."""
        return self._mac


def connect(ctx: DeviceContext) -> TapNet:
    """The device factory."""
    mac = parse_mac(ctx.keys["mac"]) if ctx.keys["mac"] else None
    dev = TapNet(ctx.keys["ifname"], mac=mac, vnet=ctx.keys["vnet-hdr"],
                 offload=ctx.keys["offload"], log=ctx.log)
    ctx.log.info("tap attached", ifname=dev.ifname, mac=dev.mac.hex(":"), mtu=dev.mtu,
                 vnet_hdr=dev.vnet, offloads=hex(dev.offloads))
    return dev
