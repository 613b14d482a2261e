"""The OpenVPN server's I/O: a :class:`~.server.Server` over a stack device and a tun device.

UDP: one bound socket; each datagram goes to :meth:`Server.from_client` in the stack's datagram
handler (no task per packet). TCP: one task per connection reads the 2-byte-length framing
(:class:`~.wire.TcpFramer`), each connection a client address of its own; a connection that
closes removes its peer, a peer that goes away closes its connection. The tun device is read in
one task; one timer task calls :meth:`Server.tick` at :meth:`Server.next_deadline`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ingot.signatures import Closed, ConnectionReset, DeviceError, Flow, Stack, Tun

from . import wire
from .client import Connected, Disconnected, ToServer
from .client import ToTun as ClientToTun
from .server import Gone, Server, ToClient, ToTun

__all__ = ["ServerAdapter"]

TICK_S = 0.1
_TCP_QUEUE = 512
"""Packets waiting for one TCP client's connection; more are dropped (as UDP would lose them)."""


async def _drain(flow: Flow, queue: asyncio.Queue) -> str:
    """Write what comes on ``queue`` to ``flow`` until a None or the connection's end."""
    try:
        while (data := await queue.get()) is not None:
            await flow.write(data)
        return "closed"
    except (ConnectionReset, Closed):
        return "connection reset"


class _TcpClient:
    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(_TCP_QUEUE)


class _Endpoint:
    """What both adapters hold: the devices, the transport and the clocks."""

    def __init__(self, stack: Stack, tun: Tun, *, proto: str, host: str, port: int,
                 mclock: Any, pclock: Any, log: Any) -> None:
        self.stack = stack
        self.tun = tun
        self.proto = proto
        self.host = host
        self.port = port
        self.mclock = mclock
        self.pclock = pclock
        self.log = log

    def _now(self) -> tuple[int, int]:
        return self.mclock.elapsed_ns(), self.pclock.now()[0]


class ServerAdapter(_Endpoint):
    def __init__(self, server: Server, stack: Stack, tun: Tun, **where: Any) -> None:
        super().__init__(stack, tun, **where)
        self.server = server
        self.address: tuple[str, int] | None = None
        self._udp: Any = None
        self._listener: Any = None
        self._tcp: dict[object, _TcpClient] = {}
        self._tasks: list[asyncio.Task] = []
        self._tcp_ids = 0
        self.ready = asyncio.Event()

    async def start(self) -> None:
        if self.proto == "udp":
            self._udp = await self.stack.bind_udp(self.host, self.port, self._datagram)
            self.address = self._udp.address
        else:
            self._listener = await self.stack.listen_tcp(self.host, self.port, self._flow)
            self.address = self._listener.address
        self._tasks = [asyncio.ensure_future(self._tun_loop()),
                       asyncio.ensure_future(self._timer_loop())]
        self.log.info("listening", proto=self.proto, host=self.address[0], port=self.address[1])
        self.ready.set()

    async def run(self) -> None:
        await self.start()
        try:
            await self.serve()
        finally:
            self.close()

    async def serve(self) -> None:
        """Until the tun device closes (after :meth:`start`)."""
        await asyncio.gather(*self._tasks)

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._listener is not None:
            self._listener.close()
        for c in list(self._tcp.values()):
            c.flow.close()

    # --- dispatch ---------------------------------------------------------------------------

    def _out(self, items: list) -> None:
        for item in items:
            if isinstance(item, ToClient):
                if self._udp is not None:
                    self._udp.sendto(item.data, item.addr)
                else:
                    c = self._tcp.get(item.addr)
                    if c is not None:
                        try:
                            c.queue.put_nowait(wire.frame(item.data))
                        except asyncio.QueueFull:  # in msg=counters, as drop_tcp_queue_full
                            self.server.counters["drop.tcp queue full"] += 1
            elif isinstance(item, ToTun):
                try:
                    self.tun.write(item.packet)
                except DeviceError:
                    self.server.counters["drop.tun write"] += 1
            elif isinstance(item, Gone):
                c = self._tcp.get(item.addr)
                if c is not None:
                    if c.queue.full():
                        c.flow.close()
                    else:
                        c.queue.put_nowait(None)
        for message, fields in self.server.events:
            self.log.info(message, **fields)
        self.server.events.clear()

    def _datagram(self, data: bytes, addr: Any) -> None:
        now, wall = self._now()
        self._out(self.server.from_client(addr, data, now, wall))

    async def _flow(self, flow: Flow) -> None:
        self._tcp_ids += 1
        addr = ("tcp", self._tcp_ids, str(flow.peer[0]), flow.peer[1])
        client = _TcpClient(flow)
        self._tcp[addr] = client
        writer = asyncio.ensure_future(self._tcp_writer(client))
        framer = wire.TcpFramer()
        reason = "connection closed"
        try:
            while True:
                data = await flow.read()
                if not data:
                    break
                try:
                    packets = framer.feed(data)
                except wire.MalformedPacket as e:
                    reason = f"bad framing: {e.reason}"
                    self.server.counters["drop.tcp framing"] += 1
                    break
                for packet in packets:
                    now, wall = self._now()
                    self._out(self.server.from_client(addr, packet, now, wall))
        except (ConnectionReset, Closed):
            reason = "connection reset"
        finally:
            del self._tcp[addr]
            writer.cancel()
            self._out(self.server.remove(addr, reason))

    async def _tcp_writer(self, client: _TcpClient) -> None:
        await _drain(client.flow, client.queue)
        client.flow.close()

    async def _tun_loop(self) -> None:
        while True:
            try:
                packet = await self.tun.read()
            except Closed:
                return
            self._out(self.server.from_tun(packet, self.mclock.elapsed_ns()))

    async def _timer_loop(self) -> None:
        # packets never wake this loop (that would cost a wake-up each); it looks again at
        # least every TICK_S, which is finer than any OpenVPN timer (retransmission >= 1 s)
        while True:
            deadline = self.server.next_deadline()
            now = self.mclock.elapsed_ns()
            if deadline is None or deadline > now:
                wait = TICK_S if deadline is None else min(TICK_S, (deadline - now) / 1e9)
                await asyncio.sleep(wait)
                continue
            now, wall = self._now()
            self._out(self.server.tick(now, wall))
            await asyncio.sleep(0)


class ClientAdapter(_Endpoint):
    """A :class:`~.client.Client` over a stack device and a tun device, reconnecting.

    Each attempt is a new Client (new session id) over a new UDP socket (any local port, as
    ``nobind``) or a new TCP connection. On :class:`~.client.Connected` the tun interface gets the
    pushed address (when the tun device can set one); a :class:`~.client.Disconnected`, a
    closed connection or a hand-window timeout starts the next attempt after ``retry_s``
    (doubling up to ``retry_max_s``). Tunnel packets read while no session is up are dropped and
    counted.
    """

    def __init__(self, make_client, stack: Stack, tun: Tun, *, retry_s: float = 1.0,
                 retry_max_s: float = 30.0, **where: Any) -> None:
        super().__init__(stack, tun, **where)
        self.make_client = make_client
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.client: Any = None
        self.connected = asyncio.Event()
        self.connections = 0
        self.counters: dict[str, int] = {}
        self._send: Any = None
        self._done: asyncio.Future | None = None
        self._stopping = False

    async def run(self) -> None:
        tun_task = asyncio.ensure_future(self._tun_loop())
        delay = self.retry_s
        try:
            while True:
                reason = await self._attempt()
                self.connected.clear()
                self.log.warning("disconnected", reason=reason, retry_s=delay)
                await asyncio.sleep(delay)
                delay = self.retry_s if self.client is not None and \
                    self.client.connected is not None else min(delay * 2, self.retry_max_s)
        finally:
            tun_task.cancel()
            self.close()

    def close(self) -> None:
        client, send = self.client, self._send
        if client is not None and send is not None and not self._stopping:
            self._stopping = True
            for item in client.exit(self.mclock.elapsed_ns()):
                if isinstance(item, ToServer):
                    send(item.data)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    async def _attempt(self) -> str:
        now, wall = self._now()
        client = self.make_client(now)
        self.client = client
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        self._done = done
        udp = flow = None

        def out(items: list) -> None:
            for item in items:
                if isinstance(item, ToServer):
                    self._send(item.data)
                elif isinstance(item, ClientToTun):
                    try:
                        self.tun.write(item.packet)
                    except DeviceError:
                        self._count("drop.tun write")
                elif isinstance(item, Connected):
                    self._on_connected(item)
                elif isinstance(item, Disconnected) and not done.done():
                    done.set_result(item.reason)
            for message, fields in client.events:
                self.log.info(message, **fields)
            client.events.clear()

        try:
            if self.proto == "udp":
                def datagram(data: bytes, addr: Any) -> None:
                    if addr[0] == self.host and addr[1] == self.port:
                        n, w = self._now()
                        out(client.from_server(data, n, w))
                    else:
                        self._count("drop.not from the server")

                udp = await self.stack.bind_udp("0.0.0.0", 0, datagram)
                self._send = lambda data: udp.sendto(data, (self.host, self.port))
                reader = None
            else:
                try:
                    flow = await self.stack.connect_tcp(self.host, self.port, timeout_s=10)
                except DeviceError as e:
                    return f"cannot connect: {e}"
                queue: asyncio.Queue = asyncio.Queue(_TCP_QUEUE)

                def send_tcp(data: bytes) -> None:
                    try:
                        queue.put_nowait(wire.frame(data))
                    except asyncio.QueueFull:
                        self._count("drop.tcp queue full")

                self._send = send_tcp
                reader = asyncio.ensure_future(self._tcp_reader(flow, client, out, done))
                writer = asyncio.ensure_future(self._tcp_writer(flow, queue, done))
            out(client.start(now, wall))
            timer = asyncio.ensure_future(self._timer(client, out, done))
            try:
                return await done
            finally:
                timer.cancel()
                if reader is not None:
                    reader.cancel()
                    writer.cancel()
        finally:
            self._send = None
            if udp is not None:
                udp.close()
            if flow is not None:
                flow.close()

    def _on_connected(self, item: Any) -> None:
        self.connections += 1
        setter = getattr(self.tun, "set_ipv4", None)
        if setter is not None:
            try:
                setter(str(item.address.ip), str(item.address.netmask))
            except DeviceError as e:
                self.log.warning("cannot set the tun address", error=str(e))
        router = getattr(self.tun, "add_route_v4", None)
        keeper = getattr(self.tun, "keep_route_to", None)
        if item.redirect and not item.redirect_local and keeper is not None:
            try:  # before the /1 routes, while the path to the server is still the old one
                via = keeper(self.host)
                self.log.info("route to the server kept", server=self.host, via=via or "on-link")
            except DeviceError as e:
                self.log.warning("cannot keep the route to the server", error=str(e))
        for net in item.routes if router is not None else ():
            try:
                router(str(net.network_address), net.prefixlen,
                       str(item.gateway) if item.gateway else None)
            except DeviceError as e:
                self.log.warning("cannot add a pushed route", route=str(net), error=str(e))
        ekm = "tls-ekm" in (item.push.get("protocol-flags") or ())
        self.log.info("connected", address=str(item.address), gateway=str(item.gateway),
                      cipher=item.cipher, keys="tls-ekm" if ekm else "prf",
                      routes=",".join(str(r) for r in item.routes) or "none",
                      redirect=item.redirect, dns=",".join(item.dns) or "none",
                      **({"domain": item.domain} if item.domain else {}))
        self.connected.set()

    async def _tcp_reader(self, flow: Flow, client: Any, out, done: asyncio.Future) -> None:
        framer = wire.TcpFramer()
        try:
            while True:
                data = await flow.read()
                if not data:
                    break
                for packet in framer.feed(data):
                    n, w = self._now()
                    out(client.from_server(packet, n, w))
        except wire.MalformedPacket as e:
            if not done.done():
                done.set_result(f"bad framing from the server: {e.reason}")
        except (ConnectionReset, Closed):
            pass
        if not done.done():
            done.set_result("the server closed the connection")

    async def _tcp_writer(self, flow: Flow, queue: asyncio.Queue, done: asyncio.Future) -> None:
        reason = await _drain(flow, queue)
        if not done.done():
            done.set_result(reason)

    async def _timer(self, client: Any, out, done: asyncio.Future) -> None:
        while not done.done():
            deadline = client.next_deadline()
            now = self.mclock.elapsed_ns()
            if deadline is None or deadline > now:
                await asyncio.sleep(TICK_S if deadline is None
                                    else min(TICK_S, (deadline - now) / 1e9))
                continue
            n, w = self._now()
            out(client.tick(n, w))
            if client.gone and not done.done():
                done.set_result("session ended")
            await asyncio.sleep(0)

    async def _tun_loop(self) -> None:
        while True:
            try:
                packet = await self.tun.read()
            except Closed:
                return
            client, send = self.client, self._send
            if client is None or send is None or client.channel is None:
                self._count("drop.tun while disconnected")
                continue
            for item in client.from_tun(packet, self.mclock.elapsed_ns()):
                send(item.data)
