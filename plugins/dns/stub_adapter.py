"""The stub resolver over a :class:`~ingot.signatures.Stack`: sockets and timers
for :class:`~ingot.plugins.dns.stub.Resolver`.

Each UDP exchange gets its own socket, bound to the random source port the
core chose (the kernel's choice when that port is taken); a TCP exchange is
one connection carrying one length-prefixed query and its answer. Timers are
one ``call_later`` at the core's next deadline.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Any

from ingot.signatures import AddressInUse, DeviceError, MClock, Random, Stack

from .stub import (Address, Answer, Event, Failed, Release, Resolved, Resolver, ResolveError,
                   Send, Stats)


class StubResolver:
    """``await resolve(name, rtype)`` over ``upstreams`` (``"host[:port]"`` or pairs).

    ``bind_ipv4``/``bind_ipv6`` are the local addresses of the query sockets.
    Other keyword arguments go to :class:`~ingot.plugins.dns.stub.Resolver`.
    """

    def __init__(self, stack: Stack, mclock: MClock, random: Random,
                 upstreams: Sequence[Address | str], *, bind_ipv4: str = "0.0.0.0",
                 bind_ipv6: str = "::", log: Any = None, **options: Any) -> None:
        self.stack = stack
        self.mclock = mclock
        self.core = Resolver(upstreams, random, **options)
        self.bind_ipv4 = bind_ipv4
        self.bind_ipv6 = bind_ipv6
        self.log = log
        self._waiters: dict[int, asyncio.Future[Answer]] = {}
        self._sockets: dict[tuple[int, Address], Any] = {}
        self._tasks: dict[tuple[int, Address, str], asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def stats(self) -> Stats:
        return self.core.stats

    async def resolve(self, name: str, rtype: int | str = "A", timeout_s: float = 5.0) -> Answer:
        """The answer to ``(name, rtype)``; NXDOMAIN is an answer.

        Raises :class:`ResolveError` when every upstream failed or timed out,
        when ``timeout_s`` passes first, or for an invalid name or type.
        """
        if self._closed:
            raise ResolveError(name, rtype if isinstance(rtype, int) else 0, "resolver is closed")
        ticket, events = self.core.query(name, rtype, self.mclock.elapsed_ns())
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = future
        self._apply(events)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            raise ResolveError(name, rtype if isinstance(rtype, int) else 0,
                               f"no answer within {timeout_s:g} s") from None
        finally:
            if self._waiters.pop(ticket, None) is not None and not future.done():
                self._apply(self.core.cancel(ticket))

    def close(self) -> None:
        """Stop every exchange and fail what waits. Never raises."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(ResolveError("?", 0, "resolver is closed"))
        self._waiters.clear()

    # --- events

    def _now(self) -> int:
        return self.mclock.elapsed_ns()

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Send):
                key = (event.query_id, event.upstream, event.transport)
                runner = self._send_udp if event.transport == "udp" else self._exchange_tcp
                task = asyncio.ensure_future(runner(event))
                self._tasks[key] = task
                task.add_done_callback(lambda t, key=key: self._task_done(key, t))
            elif isinstance(event, Release):
                sock = self._sockets.pop((event.query_id, event.upstream), None)
                if sock is not None:
                    sock.close()
                if event.transport == "tcp":
                    task = self._tasks.pop((event.query_id, event.upstream, "tcp"), None)
                    if task is not None and task is not asyncio.current_task():
                        task.cancel()
            elif isinstance(event, Resolved):
                self._settle(event.ticket, answer=event.answer)
            elif isinstance(event, Failed):
                self._settle(event.ticket, error=event.error)
        self._arm()

    def _settle(self, ticket: int, answer: Answer | None = None,
                error: ResolveError | None = None) -> None:
        future = self._waiters.get(ticket)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(answer)  # type: ignore[arg-type]

    def _task_done(self, key: tuple, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and task.exception() is not None and self.log is not None:
            self.log.error("stub resolver exchange failed", error=repr(task.exception()))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline()
        if deadline is None or self._closed:
            return
        delay = max(0.0, (deadline - self._now()) / 1e9)
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._apply(self.core.tick(self._now()))

    # --- transports

    async def _send_udp(self, send: Send) -> None:
        host = self.bind_ipv6 if ":" in send.upstream[0] else self.bind_ipv4

        def received(data: bytes, src: Address) -> None:
            self._apply(self.core.handle(data, src, self._now()))

        try:
            try:
                sock = await self.stack.bind_udp(host, send.source_port or 0, received)
            except AddressInUse:
                sock = await self.stack.bind_udp(host, 0, received)
            if not self.core.active(send.query_id, send.upstream):
                sock.close()  # released while binding
                return
            self._sockets[(send.query_id, send.upstream)] = sock
            sock.sendto(send.data, send.upstream)
        except DeviceError as exc:
            self._apply(self.core.transport_error(send.query_id, send.upstream, self._now(),
                                                  f"udp: {exc}"))

    async def _exchange_tcp(self, send: Send) -> None:
        host, port = send.upstream
        timeout_s = self.core.tcp_timeout_ns / 1e9
        try:
            flow = await self.stack.connect_tcp(host, port, timeout_s=timeout_s)
        except DeviceError as exc:
            self._apply(self.core.transport_error(send.query_id, send.upstream, self._now(),
                                                  f"tcp connect: {exc}"))
            return
        try:
            await flow.write(struct.pack("!H", len(send.data)) + send.data)
            while self.core.active(send.query_id, send.upstream):
                size = struct.unpack("!H", await flow.readexactly(2))[0]
                data = await flow.readexactly(size)
                self._apply(self.core.handle(data, flow.peer, self._now(), transport="tcp"))
        except DeviceError as exc:
            self._apply(self.core.transport_error(send.query_id, send.upstream, self._now(),
                                                  f"tcp: {exc}"))
        finally:
            flow.close()
