"""The DNS server's I/O: UDP and TCP over a ``stack`` device, around :func:`.server.handle`.

The only module of the DNS library with I/O. UDP: each datagram is handed to
the core in the stack's datagram handler (no task, no queue) and the replies
go back to the sender. TCP (RFC 7766): a connection carries any number of
messages, each with a two-byte length prefix; they are answered in order,
replies (several for a zone transfer) written with their prefixes; a
connection idle for ``tcp_idle_s`` seconds, or holding a message longer than
announced, is closed. At most ``max_tcp`` connections are served at once.

The core's state lives in :attr:`DnsService.state`; whoever changes zones
(reload, update, transfer) sets it, and the next message sees it. Outgoing
messages the core asks for (NOTIFY) are sent from the UDP socket.

Messages other than queries (UPDATE, NOTIFY) are handled one at a time, in
the order they came, each with its ``on_events`` (the store write of an
UPDATE) finished before the next is handed to the core: a change that could
not be stored is undone (by ``on_events``) before another builds on it.
Queries never wait for that. At most ``max_waiting`` such UDP messages wait
their turn; more are dropped (and counted: ``stats["dropped"]``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ingot.signatures import Address, ConnectionReset, Datagrams, DeviceError, Flow, Stack

from .server import NOTIFY as NOTIFY_OPCODE
from .server import QUERY as QUERY_OPCODE
from .server import Outgoing, ServerState, handle
from .xfr import take_events

Observer = Callable[[list[Outgoing]], None]


class DnsService:
    """Serve a :class:`ServerState` on ``(host, port)`` over UDP and TCP."""

    def __init__(self, stack: Stack, state: ServerState, now_ns: Callable[[], int], log: Any, *,
                 tcp_idle_s: float = 10.0, max_tcp: int = 256, max_waiting: int = 1024) -> None:
        self.stack = stack
        self.state = state
        self.now_ns = now_ns
        self.log = log
        self.tcp_idle_s = tcp_idle_s
        self.max_tcp = max_tcp
        self.max_waiting = max_waiting
        self.on_outgoing: Observer | None = None
        self.on_events: Callable[[tuple[Any, ...]], Awaitable[None]] | None = None
        """Awaited with the events a message left in the state (see ``xfr.take_events``)
        before its replies are sent: an UPDATE is on disk before it is acknowledged."""
        self.on_notify_response: Callable[[Address, bytes], None] | None = None
        """Gets NOTIFY responses (which the core, answering only queries, drops)."""
        self.udp: Datagrams | None = None
        self._listener: Any = None
        self._tcp_active = 0
        self._pending: set[asyncio.Task[None]] = set()
        self._changes = asyncio.Lock()
        self.stats = {"udp": 0, "tcp": 0, "tcp_connections": 0, "tcp_refused": 0,
                      "tcp_timeouts": 0, "errors": 0, "dropped": 0}

    async def start(self, host: str, port: int) -> Address:
        """Bind UDP and listen on TCP; the address actually bound (port 0 = any)."""
        self._listener = await self.stack.listen_tcp(host, port, self._serve_tcp)
        bound = self._listener.address
        try:
            self.udp = await self.stack.bind_udp(host, bound[1], self._on_datagram)
        except BaseException:
            self._listener.close()
            raise
        return bound

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self.udp is not None:
            self.udp.close()

    def _answer(self, proto: str, src: Address, data: bytes
                ) -> tuple[list[bytes], tuple[Any, ...]]:
        try:
            state, replies, outgoing = handle(self.state, self.now_ns(), proto, src, data)
            state, events = take_events(state)
            self.state = state
        except Exception as exc:  # noqa: BLE001 - the core promises not to raise; be sure
            self.stats["errors"] += 1
            self.log.error("query handling failed", error=f"{type(exc).__name__}: {exc}")
            return [], ()
        if outgoing:
            self.send(outgoing)
        return replies, events

    async def _after(self, events: tuple[Any, ...]) -> bool:
        """Run ``on_events``; False (and nothing is answered) when it failed."""
        if not events or self.on_events is None:
            return True
        try:
            await self.on_events(events)
        except Exception as exc:  # noqa: BLE001 - e.g. the store is full: do not acknowledge
            self.stats["errors"] += 1
            self.log.error("change not stored; not acknowledged",
                           error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def send(self, outgoing: list[Outgoing]) -> None:
        """Send messages the core (or a handler) produced, from the UDP socket."""
        if self.on_outgoing is not None:
            self.on_outgoing(outgoing)
            return
        for out in outgoing:
            if self.udp is not None:
                self.udp.sendto(out.data, out.addr)

    def _on_datagram(self, data: bytes, src: Address) -> None:
        self.stats["udp"] += 1
        if (len(data) >= 4 and data[2] & 0x80 and (data[2] >> 3) & 0xF == NOTIFY_OPCODE
                and self.on_notify_response is not None):
            self.on_notify_response(src, data)
            return
        if len(data) >= 4 and (data[2] >> 3) & 0xF != QUERY_OPCODE:
            if len(self._pending) >= self.max_waiting:
                self.stats["dropped"] += 1
                return
            task = asyncio.ensure_future(self._change_udp(src, data))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        replies, _events = self._answer("udp", src, data)
        self._send(replies, src)

    def _send(self, replies: list[bytes], src: Address) -> None:
        udp = self.udp
        for reply in replies:
            if udp is not None:
                udp.sendto(reply, src)

    async def _change(self, proto: str, src: Address, data: bytes) -> list[bytes]:
        """A message that may change the state: alone, its events handled."""
        async with self._changes:
            replies, events = self._answer(proto, src, data)
            if not await self._after(events):
                return []
            return replies

    async def _change_udp(self, src: Address, data: bytes) -> None:
        self._send(await self._change("udp", src, data), src)

    async def _serve_tcp(self, flow: Flow) -> None:
        if self._tcp_active >= self.max_tcp:
            self.stats["tcp_refused"] += 1
            return
        self._tcp_active += 1
        self.stats["tcp_connections"] += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(flow.readexactly(2), self.tcp_idle_s)
                    size = int.from_bytes(head, "big")
                    data = await asyncio.wait_for(flow.readexactly(size), self.tcp_idle_s)
                except asyncio.TimeoutError:
                    self.stats["tcp_timeouts"] += 1
                    return
                except (ConnectionReset, DeviceError):
                    return
                self.stats["tcp"] += 1
                if len(data) >= 4 and (data[2] >> 3) & 0xF != QUERY_OPCODE:
                    replies = await self._change("tcp", flow.peer, data)
                else:
                    replies, events = self._answer("tcp", flow.peer, data)
                    if not await self._after(events):
                        replies = []
                if replies:
                    await flow.write(b"".join(len(r).to_bytes(2, "big") + r for r in replies))
        finally:
            self._tcp_active -= 1
