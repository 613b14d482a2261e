"""The ``tun/tun`` device: IP packets through a Linux tun interface.

The device opens ``/dev/net/tun`` and attaches to interface ``ifname``
(``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI``): a persistent interface made
beforehand (``ip tuntap add NAME mode tun``) or, when there is none, a new
one that goes away with the device. The link is brought up; addresses and
routes are the host's business.

With ``vnet-hdr`` (``IFF_VNET_HDR``, ``TUNSETVNETHDRSZ`` 10) and ``offload``
on, the device tells the kernel (``TUNSETOFFLOAD``) that it takes
unfinished checksums and TCP (and, from Linux 6.2, UDP) GSO super-packets:
the kernel then skips segmenting and checksumming, and ``read_vnet()``
gets up to 64 KiB per read. Without ``vnet-hdr`` the offloads are set to
none, so every packet read is finished by the kernel. See
:mod:`ingot.plugins.netif.device` for reading, writing and counting.

:class:`TunTap` is shared with the tap backend (:mod:`.tap`).
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

from ingot.registry import DeviceContext

from .device import QUEUE, FdDevice
from .linux import (
    IFF_NO_PI,
    IFF_TUN,
    IFF_VNET_HDR,
    OFFLOADS,
    Interface,
    add_route_v4,
    attach_tun,
    route_v4,
    set_offload,
    set_vnet_size,
)


def _read_into(fd: int, buffer: memoryview) -> int:
    return os.readv(fd, (buffer,))


class TunTap(FdDevice):
    """A tun (or, in :class:`~ingot.plugins.netif.tap.TapNet`, tap) interface."""

    def set_ipv4(self, address: str, netmask: str) -> None:
        """Give the interface an IPv4 address (see :meth:`.linux.Interface.set_ipv4`)."""
        self._iface.set_ipv4(address, netmask)

    def add_route_v4(self, network: str, prefixlen: int, gateway: str | None = None) -> None:
        """Route ``network/prefixlen`` into this interface (see
        :meth:`.linux.Interface.add_route_v4`)."""
        self._iface.add_route_v4(network, prefixlen, gateway)

    def keep_route_to(self, host: str) -> str | None:
        """Pin the current path to ``host`` (the VPN server) as a host route, so that routes
        sending everything into this interface (``redirect-gateway``) leave the tunnel's own
        packets alone. Returns the gateway used, or None when ``host`` is on-link (nothing
        to pin)."""
        gateway, oif = route_v4(host)
        if gateway is None or oif == socket.if_nametoindex(self._iface.name):
            return None
        add_route_v4(host, 32, gateway, oif, f"pin the route to {host} via {gateway}")
        return gateway

    MODE = IFF_TUN
    KIND = "tun"
    ETHERNET = False

    def __init__(self, ifname: str, *, vnet: bool = False, offload: bool = True,
                 log: Any = None, queue: int = QUEUE) -> None:
        fd, name = attach_tun(ifname, self.MODE | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0))
        iface = None
        try:
            if vnet:
                set_vnet_size(fd, name)
            self.offloads = set_offload(fd, name, OFFLOADS if vnet and offload else 0)
            iface = Interface(name)
            iface.set_up()
            super().__init__(f"{self.KIND} {name}", fd, iface=iface,
                             recv=functools.partial(os.read, fd),
                             recv_into=functools.partial(_read_into, fd),
                             send=functools.partial(os.write, fd),
                             sendv=functools.partial(os.writev, fd),
                             vnet=vnet, ethernet=self.ETHERNET,
                             closer=functools.partial(os.close, fd), log=log, queue=queue)
        except BaseException:
            if iface is not None:
                iface.close()
            os.close(fd)
            raise


def connect(ctx: DeviceContext) -> TunTap:
    """The device factory."""
    dev = TunTap(ctx.keys["ifname"], vnet=ctx.keys["vnet-hdr"], offload=ctx.keys["offload"],
                 log=ctx.log)
    ctx.log.info("tun attached", ifname=dev.ifname, mtu=dev.mtu, vnet_hdr=dev.vnet,
                 offloads=hex(dev.offloads))
    return dev
