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
from .server import Gone, Server, ToClient, ToTun

__all__ = ["ServerAdapter"]

TICK_S = 0.1
_TCP_QUEUE = 512
"""Packets waiting for one TCP client's connection; more are dropped (as UDP would lose them)."""


class _TcpClient:
    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(_TCP_QUEUE)
        self.dropped = 0


class ServerAdapter:
    def __init__(self, server: Server, stack: Stack, tun: Tun, *, proto: str, host: str,
                 port: int, mclock: Any, pclock: Any, log: Any) -> None:
        self.server = server
        self.stack = stack
        self.tun = tun
        self.proto = proto
        self.host = host
        self.port = port
        self.mclock = mclock
        self.pclock = pclock
        self.log = log
        self.address: tuple[str, int] | None = None
        self._udp: Any = None
        self._listener: Any = None
        self._tcp: dict[object, _TcpClient] = {}
        self._tasks: list[asyncio.Task] = []
        self._tcp_ids = 0
        self.ready = asyncio.Event()

    def _now(self) -> tuple[int, int]:
        return self.mclock.elapsed_ns(), self.pclock.now()[0]

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
            await asyncio.gather(*self._tasks)
        finally:
            self.close()

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
                        except asyncio.QueueFull:
                            c.dropped += 1
            elif isinstance(item, ToTun):
                try:
                    self.tun.write(item.packet)
                except DeviceError:
                    self.server.counters["drop.tun write"] += 1
            elif isinstance(item, Gone):
                c = self._tcp.get(item.addr)
                if c is not None:
                    c.queue.put_nowait(None) if not c.queue.full() else c.flow.close()
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
        try:
            while True:
                data = await client.queue.get()
                if data is None:
                    client.flow.close()
                    return
                await client.flow.write(data)
        except (ConnectionReset, Closed):
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
