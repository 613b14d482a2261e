"""A client - router - server line whose router forwards through two tun devices.

:func:`line` builds three hosts: ``client`` (10.200.1.2) and ``server``
(10.200.2.2) on either side of ``router``, which has IPv4 forwarding on. As
built with ``tuns=True`` the router does not forward between its veths
directly: the route to the server points into tun ``tun0`` and the route to
the client into ``tun1``; whatever a program writes into ``tun1`` is routed
on to the server (policy rule: arrived on ``tun1`` -> table 100) and what it
writes into ``tun0`` to the client (``tun0`` -> table 101). So a program
that copies packets ``tun0`` -> ``tun1`` and ``tun1`` -> ``tun0``
(:func:`forward`) carries all client-server traffic; with ``tuns=False`` the
kernel forwards it itself, the baseline to compare with.

``python -m ingot.testing.forward tun0 tun1 [--vnet] [--plain]`` runs the
forwarding loop in the current network namespace (start it with ``ip netns
exec ROUTER``) until SIGTERM or SIGINT, then prints its counters as one JSON
line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ingot.signatures import Closed

from .netns import Host, Lab

CLIENT_IP = "10.200.1.2"
SERVER_IP = "10.200.2.2"
TUNS = ("tun0", "tun1")


@dataclass
class Line:
    client: Host
    router: Host
    server: Host
    client_ip: str = CLIENT_IP
    server_ip: str = SERVER_IP


def line(lab: Lab, *, tuns: bool = True) -> Line:
    """Three hosts in a line (see the module docstring)."""
    client, router, server = lab.host(), lab.host(), lab.host()
    client.link(router, f"{CLIENT_IP}/24", "10.200.1.1/24")  # client eth0 - router eth0
    router.link(server, "10.200.2.1/24", f"{SERVER_IP}/24")  # router eth1 - server eth0
    client.add_route("10.200.2.0/24", via="10.200.1.1")
    server.add_route("10.200.1.0/24", via="10.200.2.1")
    router.sysctl("net.ipv4.ip_forward", 1)
    for conf in ("all", "default", "eth0", "eth1"):
        router.sysctl(f"net.ipv4.conf.{conf}.rp_filter", 0)
    if tuns:
        to_server, to_client = TUNS
        router.tun(to_server)
        router.tun(to_client)
        router.add_route(f"{SERVER_IP}/32", dev=to_server)
        router.add_route(f"{CLIENT_IP}/32", dev=to_client)
        router.add_route("10.200.2.0/24", dev="eth1", table=100)
        router.add_route("10.200.1.0/24", dev="eth0", table=101)
        router.add_rule(iif=to_client, table=100, priority=100)
        router.add_rule(iif=to_server, table=101, priority=101)
        for tun in TUNS:
            router.sysctl(f"net.ipv4.conf.{tun}.rp_filter", 0)
    return Line(client, router, server)


@dataclass
class Counters:
    """What one direction of :func:`forward` moved."""

    packets: int = 0
    bytes: int = 0
    largest: int = 0
    gso: int = 0


async def _pump(src: Any, dst: Any, vnet: bool, counters: Counters,
                check: Callable[[bytes], None] | None) -> None:
    packets = size = largest = gso = 0
    try:
        if vnet:
            while True:
                header, packet = await src.read_vnet()
                dst.write_vnet(header, packet)
                packets += 1
                size += len(packet)
                if header.gso_type:
                    gso += 1
                    if len(packet) > largest:
                        largest = len(packet)
        else:
            while True:
                packet = await src.read()
                if check is not None:
                    check(packet)
                dst.write(packet)
                packets += 1
                size += len(packet)
                if len(packet) > largest:
                    largest = len(packet)
    except Closed:
        pass
    finally:
        counters.packets, counters.bytes, counters.gso = packets, size, gso
        counters.largest = max(counters.largest, largest)


async def forward(a: Any, b: Any, *, vnet: bool = False,
                  check: Callable[[bytes], None] | None = None,
                  counters: tuple[Counters, Counters] | None = None
                  ) -> tuple[Counters, Counters]:
    """Copy packets ``a`` -> ``b`` and ``b`` -> ``a`` until cancelled or a device closes.

    With ``vnet``, through ``read_vnet``/``write_vnet`` (super-packets
    untouched), else through ``read``/``write``, calling ``check(packet)``
    on each. The counters of both directions are returned, and filled in
    ``counters`` when given (also when the forwarding is cancelled).
    """
    ab, ba = counters or (Counters(), Counters())
    tasks = [asyncio.ensure_future(_pump(a, b, vnet, ab, check)),
             asyncio.ensure_future(_pump(b, a, vnet, ba, check))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ab, ba


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingot.testing.forward",
                                     description="Forward packets between two tun devices.")
    parser.add_argument("tun_a")
    parser.add_argument("tun_b")
    parser.add_argument("--vnet", action="store_true", help="open with the virtio-net header")
    parser.add_argument("--plain", action="store_true",
                        help="with --vnet: still use read()/write() (finished packets)")
    args = parser.parse_args(argv)
    from ingot.plugins.netif.tun import TunTap

    devices = [TunTap(name, vnet=args.vnet) for name in (args.tun_a, args.tun_b)]
    counters = (Counters(), Counters())

    async def run() -> None:
        task = asyncio.ensure_future(forward(*devices, vnet=args.vnet and not args.plain,
                                             counters=counters))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        print("ready", flush=True)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(run())
    finally:
        stats = [d.stats_dict() for d in devices]
        for dev in devices:
            dev.close()
    print(json.dumps({"ab": asdict(counters[0]), "ba": asdict(counters[1]), "devices": stats}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
