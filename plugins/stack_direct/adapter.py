"""The ``stack/direct`` device: the :class:`~.state.Host` core driven by asyncio over a ``net``.

The adapter owns the loop side: one task reads frames from the ``net``
device and feeds them to the core; one timer is kept armed at the core's
(and the DHCP client's) next deadline; outputs are written to the device or
handed to the bound UDP sockets. Time comes from the ``mclock`` device,
entropy (DHCP transaction ids, jitter) from the ``random`` device.

Addressing is the ``ipv4`` key: ``dhcp`` (the default) runs the DHCP client
of :mod:`.dhcp` and waits up to ``dhcp-timeout`` seconds for a lease at
connect; ``10.137.0.2/24`` (with an optional ``gateway``) is static. On a
lease change the address follows; on a lost lease the stack has no address
until the next one.

What it does not do (yet): TCP (``listen_tcp``/``connect_tcp`` raise
``Unsupported``; a peer's SYN gets a RST), IPv6, multicast membership.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
from typing import Any

from ingot.registry import DeviceContext
from ingot.signatures import (Address, AddressInUse, Closed, DatagramHandler, DeviceError,
                              MessageTooLong, Unsupported)

from . import dhcp
from .state import Config, Deliver, Host, Transmit

QUEUE_LIMIT = 256
UDP_LIMIT = 65507


class DirectDatagrams:
    """A UDP socket of the direct stack (``Datagrams`` signature)."""

    def __init__(self, stack: "DirectStack", port: int, handler: DatagramHandler | None) -> None:
        self._stack = stack
        self._port = port
        self._handler = handler
        self._queue: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._dropped = 0
        self._closed = False

    @property
    def address(self) -> Address:
        return (self._stack.address or "0.0.0.0", self._port)

    @property
    def dropped(self) -> int:
        return self._dropped

    def _deliver(self, data: bytes, source: Address) -> None:
        if self._handler is not None:
            try:
                self._handler(data, source)
            except Exception as exc:  # noqa: BLE001 - a handler bug drops one datagram
                self._dropped += 1
                self._stack.log.warning("datagram handler failed", port=self._port,
                                        error=f"{type(exc).__name__}: {exc}")
            return
        if len(self._queue) >= QUEUE_LIMIT:
            self._dropped += 1
            return
        self._queue.append((data, source))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def recvfrom(self) -> tuple[bytes, Address]:
        while not self._queue:
            if self._closed:
                raise Closed("UDP socket")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.popleft()

    def sendto(self, data: bytes, address: Address) -> None:
        if self._closed:
            raise Closed("UDP socket")
        if len(data) > UDP_LIMIT:
            raise MessageTooLong(len(data), UDP_LIMIT)
        host, port = address
        try:
            dst = ipaddress.IPv4Address(host).packed
        except ValueError:
            raise Unsupported(f"sending to {host!r} (IPv4 literals only)", "direct") from None
        if not self._stack.send_udp(self._port, dst, port, data):
            self._dropped += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stack._unbind(self._port, self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class DirectStack:
    """Ingot's own IPv4/UDP stack over a ``net`` device (``Stack`` signature)."""

    def __init__(self, net: Any, mclock: Any, random: Any, log: Any, *, hostname: str = "") -> None:
        self.net = net
        self.mclock = mclock
        self.random = random
        self.log = log
        self.host = Host(net.mac, net.mtu, is_open=self._is_open)
        self.counters = self.host.counters
        self._ports: dict[int, DirectDatagrams] = {}
        self._dhcp: dhcp.DhcpClient | None = None
        self._hostname = hostname
        self._lease_event = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._closed = False
        self._next_port = 49152

    # -- Stack ------------------------------------------------------------
    @property
    def mtu(self) -> int:
        return self.net.mtu

    @property
    def address(self) -> str | None:
        cfg = self.host.config
        return str(ipaddress.IPv4Address(cfg.address)) if cfg else None

    async def listen_tcp(self, host: str, port: int, handler: Any, *, backlog: int = 128) -> Any:
        raise Unsupported("TCP", "direct")

    async def connect_tcp(self, host: str, port: int, *, timeout_s: float = 30.0) -> Any:
        raise Unsupported("TCP", "direct")

    async def bind_udp(self, host: str, port: int,
                       handler: DatagramHandler | None = None) -> DirectDatagrams:
        self._check_local(host)
        if port == 0:
            port = self._free_port()
        if port in self._ports or (port == dhcp.CLIENT_PORT and self._dhcp is not None):
            raise AddressInUse(f"{host}:{port}")
        sock = DirectDatagrams(self, port, handler)
        self._ports[port] = sock
        return sock

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
        if self._timer is not None:
            self._timer.cancel()
        for sock in list(self._ports.values()):
            sock.close()
        self.log.info("direct stack closed", **{k.replace(".", "_"): v
                                                for k, v in self.counters.snapshot().items()})

    # -- internals ----------------------------------------------------------
    def _check_local(self, host: str) -> None:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise Unsupported(f"binding to {host!r} (address literals only)", "direct") from None
        if ip.version != 4:
            raise Unsupported("IPv6", "direct")
        if str(ip) != "0.0.0.0" and str(ip) != self.address:
            raise DeviceError(f"{host} is not an address of this stack "
                              f"(it has {self.address or 'none yet'}); bind to 0.0.0.0")

    def _free_port(self) -> int:
        for _ in range(16384):
            port = self._next_port
            self._next_port = 49152 + (self._next_port - 49152 + 1) % 16384
            if port not in self._ports:
                return port
        raise AddressInUse("0.0.0.0:0 (no free port)")

    def _is_open(self, port: int) -> bool:
        return port in self._ports or (port == dhcp.CLIENT_PORT and self._dhcp is not None)

    def _unbind(self, port: int, sock: DirectDatagrams) -> None:
        if self._ports.get(port) is sock:
            del self._ports[port]

    def _now(self) -> int:
        return self.mclock.elapsed_ns()

    def send_udp(self, src_port: int, dst: bytes, dst_port: int, data: bytes) -> bool:
        """Send a datagram; False when it was dropped for want of a route."""
        before = self.counters["host.no_route"]
        self._emit(self.host.send_udp(src_port, dst, dst_port, data, self._now()))
        return self.counters["host.no_route"] == before

    def _emit(self, outputs: list[Any]) -> None:
        for out in outputs:
            if isinstance(out, Transmit):
                self.net.write(out.frame)
            elif isinstance(out, Deliver):
                source = (str(ipaddress.IPv4Address(out.src)), out.src_port)
                if out.dst_port == dhcp.CLIENT_PORT and self._dhcp is not None:
                    self._dhcp_outputs(self._dhcp.handle(out.payload, self._now()))
                    continue
                sock = self._ports.get(out.dst_port)
                if sock is not None:
                    sock._deliver(out.payload, source)
        self._arm()

    def _arm(self) -> None:
        times = [t for t in (self.host.next_deadline(),
                             self._dhcp.next_timer() if self._dhcp else None) if t is not None]
        at = min(times, default=None)
        if at is None or self._closed:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0, at - self._now()) / 1e9
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._now()
        outputs = self.host.tick(now)
        if self._dhcp is not None:
            self._dhcp_outputs(self._dhcp.tick(now))
        self._emit(outputs)

    def _dhcp_outputs(self, outputs: list[dhcp.Output]) -> None:
        for out in outputs:
            if isinstance(out, dhcp.Send):
                dst = ipaddress.IPv4Address(out.destination).packed
                self._emit(self.host.send_udp(dhcp.CLIENT_PORT, dst, dhcp.SERVER_PORT,
                                              out.payload, self._now()))
            elif isinstance(out, dhcp.Bound):
                lease = out.lease
                self.log.info("dhcp lease", address=lease.interface, router=lease.router,
                              dns=",".join(lease.dns), lease_s=lease.lease_s,
                              renewed=out.renewed)
                gw = ipaddress.IPv4Address(lease.router).packed if lease.router else None
                cfg = Config(ipaddress.IPv4Address(lease.address).packed, lease.prefix, gw)
                if cfg != self.host.config:
                    self._emit(self.host.configure(cfg))
                self._lease_event.set()
            elif isinstance(out, dhcp.Lost):
                self.log.warning("dhcp lease lost", reason=out.reason)
                self.host.configure(None)
                self._lease_event.clear()
        self._arm()

    async def _read_loop(self) -> None:
        net = self.net
        host = self.host
        while True:
            try:
                frame = await net.read()
            except Closed:
                return
            try:
                outputs = host.input(frame, self._now())
            except Exception as exc:  # noqa: BLE001 - the loop must survive any frame
                self.counters.incr("host.internal_error")
                self.log.error("frame handling failed", error=f"{type(exc).__name__}: {exc}")
                continue
            if outputs:
                self._emit(outputs)
            elif host.next_deadline() is not None and self._timer is None:
                self._arm()

    async def start(self, ipv4: str, gateway: str, dhcp_timeout_s: float) -> None:
        self._reader = asyncio.ensure_future(self._read_loop())
        if ipv4 != "dhcp":
            self._emit(self.host.configure(Config.parse(ipv4, gateway)))
            self.log.info("direct stack ready", address=ipv4, gateway=gateway or "none",
                          mtu=self.mtu)
            return
        self._dhcp = dhcp.DhcpClient(self.net.mac, self.random.generate,
                                     hostname=self._hostname or None)
        self._dhcp_outputs(self._dhcp.start(self._now()))
        try:
            await asyncio.wait_for(self._lease_event.wait(), dhcp_timeout_s)
        except asyncio.TimeoutError:
            raise DeviceError(f"no DHCP lease within {dhcp_timeout_s:g} s "
                              f"(state {self._dhcp.state}, counters {self._dhcp.counters})"
                              ) from None
        self.log.info("direct stack ready", address=self.address, mtu=self.mtu)


async def connect(ctx: DeviceContext) -> DirectStack:
    keys = ctx.keys
    ipv4 = keys["ipv4"]
    if ipv4 != "dhcp":
        try:
            Config.parse(ipv4, keys["gateway"])
        except ValueError as exc:
            raise DeviceError(f"{ctx.key_flag('ipv4')} {ipv4!r}: {exc}") from None
    stack = DirectStack(ctx.deps["net"], ctx.deps["mclock"], ctx.deps["random"], ctx.log,
                        hostname=keys["hostname"])
    try:
        await stack.start(ipv4, keys["gateway"], keys["dhcp-timeout"])
    except BaseException:
        stack.close()
        raise
    return stack
