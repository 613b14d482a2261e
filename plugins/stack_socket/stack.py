"""The ``stack/socket`` device: :class:`ingot.signatures.Stack` over the host kernel.

TCP flows are asyncio streams; a write waits on the stream's drain, so a slow
peer slows the writer down (backpressure) instead of filling memory. UDP
sockets are asyncio datagram transports; ``sendto`` never waits: when the
kernel's send buffer is full the datagram is dropped and counted, as a
network would. Hosts are IPv4 or IPv6 address literals; a listener or socket
on ``"::"`` is IPv6 only (asyncio sets ``IPV6_V6ONLY``). Every ``OSError`` is
mapped to the signature's errors (:func:`error_for`).

UDP receive size
    asyncio's selector datagram transport receives with
    ``recvfrom(max_size)``, ``max_size`` being a class attribute of 256 KiB.
    Each receive allocates a buffer of that size and shrinks it; above
    glibc's mmap threshold (128 KiB) that is an mmap/munmap pair per
    datagram. Measured on CPython 3.11, 100-byte datagrams sent by another
    process over loopback, datagrams received per second: 256 KiB
    30,000-39,000; 65535 150,000-170,000; 1500 (the MTU) 160,000-173,000.
    The MTU buys nothing over 65535, and 65535 receives every UDP datagram
    whole (up to 65507 bytes over IPv4, 65527 over IPv6) where the MTU
    would silently truncate larger ones. So the receive size is the
    ``udp-max`` key, default 65535, set per transport in ``connection_made``.
    uvloop's transport receives into a buffer of its own and has no
    ``max_size`` (it received 215,000-235,000 datagrams/s in the same test).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any

from ingot.registry import DeviceContext
from ingot.signatures import (
    Address,
    AddressInUse,
    Closed,
    ConnectionRefused,
    ConnectionReset,
    DatagramHandler,
    DeviceError,
    FlowHandler,
    MessageTooLong,
    Unreachable,
)

from . import UDP_MAX
from . import loop as loops

QUEUE_LIMIT = 256
"""Datagrams waiting for ``recvfrom``; more are dropped and counted."""

UDP_LIMIT = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
"""The largest UDP payload per address family (65535 less the IP and UDP headers)."""

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
                errno.ETIMEDOUT, errno.EADDRNOTAVAIL}
_RESET = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN, errno.ENOTCONN}


def show(address: Address) -> str:
    """``"127.0.0.1:7"`` or ``"[::1]:7"``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def error_for(exc: OSError, address: Address) -> DeviceError:
    """The signature error for an ``OSError`` raised while using ``address``."""
    where = show(address)
    code = exc.errno
    reason = os.strerror(code).lower() if code else (str(exc) or type(exc).__name__)
    if code == errno.EADDRINUSE:
        return AddressInUse(where)
    if code == errno.ECONNREFUSED or isinstance(exc, ConnectionRefusedError):
        return ConnectionRefused(where)
    if code in _UNREACHABLE or isinstance(exc, TimeoutError):
        return Unreachable(where, reason)
    if code in _RESET or isinstance(exc, (ConnectionResetError, BrokenPipeError,
                                          ConnectionAbortedError)):
        return ConnectionReset(f"{where}: {reason}")
    return DeviceError(f"{where}: {reason}")


def family_of(host: str) -> socket.AddressFamily:
    """``AF_INET`` or ``AF_INET6`` for an address literal (``ValueError`` for a name)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.partition("%")[0])  # fe80::1%eth0 has a scope
            return family
        except OSError:
            pass
    raise ValueError(f"{host!r} is not an IP address literal (a stack does not resolve names)")


def _address(sockaddr: Any) -> Address:
    return (sockaddr[0], sockaddr[1])


# --------------------------------------------------------------------------
# TCP


class SocketFlow:
    """A TCP connection (:class:`ingot.signatures.Flow`) over asyncio streams."""

    __slots__ = ("_reader", "_writer", "_stack", "_peer", "_local", "_closed", "_shut")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 stack: SocketStack) -> None:
        self._reader = reader
        self._writer = writer
        self._stack = stack
        self._peer = _address(writer.get_extra_info("peername"))
        self._local = _address(writer.get_extra_info("sockname"))
        self._closed = False
        self._shut = False
        stack._flows.add(self)

    @property
    def peer(self) -> Address:
        return self._peer

    @property
    def local(self) -> Address:
        return self._local

    def __repr__(self) -> str:
        return f"<SocketFlow {show(self._local)} -> {show(self._peer)}>"

    def _check(self) -> None:
        if self._closed:
            raise Closed("flow")

    async def read(self, max_bytes: int = 65536) -> bytes:
        self._check()
        try:
            data = await self._reader.read(max_bytes)
        except OSError as exc:
            raise error_for(exc, self._peer) from None
        self._check()
        return data

    async def readexactly(self, n: int) -> bytes:
        self._check()
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            self._check()
            raise ConnectionReset(f"{show(self._peer)}: stream ended after "
                                  f"{len(exc.partial)} of {n} bytes") from None
        except OSError as exc:
            raise error_for(exc, self._peer) from None

    async def write(self, data: bytes) -> None:
        self._check()
        if self._shut:
            raise Closed("flow's sending side (shut down)")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise error_for(exc, self._peer) from None
        self._check()

    async def shutdown(self) -> None:
        self._check()
        if self._shut:
            return
        self._shut = True
        try:
            self._writer.write_eof()
            await self._writer.drain()
        except OSError as exc:
            raise error_for(exc, self._peer) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stack._flows.discard(self)
        try:
            self._reader.feed_eof()  # wakes a pending read, which then raises Closed
            self._writer.close()     # what is queued is still sent, then FIN
        except Exception:  # noqa: BLE001 - close never raises
            pass


class SocketListener:
    """A listening TCP socket (:class:`ingot.signatures.Listener`)."""

    def __init__(self, server: asyncio.AbstractServer, stack: SocketStack) -> None:
        self._server = server
        self._stack = stack
        self._address = _address(server.sockets[0].getsockname())
        stack._listeners.add(self)

    @property
    def address(self) -> Address:
        return self._address

    def __repr__(self) -> str:
        return f"<SocketListener {show(self._address)}>"

    def close(self) -> None:
        self._stack._listeners.discard(self)
        try:
            self._server.close()
        except Exception:  # noqa: BLE001 - close never raises
            pass


# --------------------------------------------------------------------------
# UDP


class SocketDatagrams(asyncio.DatagramProtocol):
    """A bound UDP socket (:class:`ingot.signatures.Datagrams`).

    It is its own asyncio protocol. With a handler, ``datagram_received``
    calls it directly (no queue, no task); without one, datagrams wait in a
    queue of :data:`QUEUE_LIMIT` for :meth:`recvfrom`.
    """

    def __init__(self, stack: SocketStack, family: socket.AddressFamily,
                 handler: DatagramHandler | None, recv_size: int) -> None:
        self._stack = stack
        self._limit = UDP_LIMIT[family]
        self._recv_size = recv_size
        self._transport: asyncio.DatagramTransport | None = None
        self._address: Address = ("", 0)
        self._closed = False
        self._dropped = 0
        self.handler_errors = 0
        self._queue: asyncio.Queue[tuple[bytes, Address] | None] | None = None
        if handler is None:
            self._queue = asyncio.Queue(QUEUE_LIMIT)
        else:
            self.datagram_received = self._deliver_to(handler)  # type: ignore[method-assign]

    # asyncio protocol side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if hasattr(transport, "max_size"):  # asyncio's selector transport; not uvloop's
            transport.max_size = self._recv_size  # type: ignore[attr-defined]
        self._address = _address(transport.get_extra_info("sockname"))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self._queue.put_nowait((data, addr[:2]))  # type: ignore[union-attr]
        except asyncio.QueueFull:
            self._dropped += 1

    def _deliver_to(self, handler: DatagramHandler) -> Any:
        def received(data: bytes, addr: Any) -> None:
            try:
                handler(data, addr[:2])
            except Exception as exc:  # noqa: BLE001 - bad input must not kill the socket
                self.handler_errors += 1
                self._stack._log.error("datagram handler failed", local=show(self._address),
                                       peer=show(addr), error=f"{type(exc).__name__}: {exc}")
        return received

    def error_received(self, exc: Exception) -> None:
        # A send the kernel refused (no route, wrong family, too big for the path).
        self._dropped += 1
        self._stack._log.debug("datagram error", local=show(self._address), error=str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    # Datagrams side

    @property
    def address(self) -> Address:
        return self._address

    @property
    def dropped(self) -> int:
        return self._dropped

    def __repr__(self) -> str:
        return f"<SocketDatagrams {show(self._address)}>"

    async def recvfrom(self) -> tuple[bytes, Address]:
        if self._queue is None:
            raise RuntimeError("this socket was bound with a handler; it gets the datagrams")
        if self._closed:
            raise Closed("datagram socket")
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # wake the next waiter too
            raise Closed("datagram socket")
        return item

    def sendto(self, data: bytes, address: Address) -> None:
        transport = self._transport
        if self._closed or transport is None:
            raise Closed("datagram socket")
        if len(data) > self._limit:
            raise MessageTooLong(len(data), self._limit)
        if transport.get_write_buffer_size():
            self._dropped += 1  # the kernel's buffer was full: do not queue behind it
            return
        transport.sendto(data, address)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stack._datagrams.discard(self)
        try:
            if self._transport is not None:
                self._transport.close()
            if self._queue is not None:
                while self._queue.full():
                    self._queue.get_nowait()
                self._queue.put_nowait(None)
        except Exception:  # noqa: BLE001 - close never raises
            pass


# --------------------------------------------------------------------------
# the stack


class SocketStack:
    """:class:`ingot.signatures.Stack` through the host kernel's sockets."""

    def __init__(self, *, mtu: int = 1500, udp_max: int = UDP_MAX, log: Any = None) -> None:
        if log is None:
            from ingot.log import get
            log = get("stack")
        self._mtu = mtu
        self._udp_max = udp_max
        self._log = log
        self._closed = False
        self._listeners: set[SocketListener] = set()
        self._flows: set[SocketFlow] = set()
        self._datagrams: set[SocketDatagrams] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def mtu(self) -> int:
        return self._mtu

    def _check(self) -> None:
        if self._closed:
            raise Closed("stack")

    async def listen_tcp(self, host: str, port: int, handler: FlowHandler,
                         *, backlog: int = 128) -> SocketListener:
        self._check()
        family = family_of(host)

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(SocketFlow(reader, writer, self), handler)

        try:
            server = await asyncio.start_server(accepted, host, port, family=family,
                                                backlog=backlog)
        except OSError as exc:
            raise error_for(exc, (host, port)) from None
        return SocketListener(server, self)

    async def _serve(self, flow: SocketFlow, handler: FlowHandler) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await handler(flow)
        except asyncio.CancelledError:
            pass  # the stack is closing (or the loop stopping): end quietly
        except Exception as exc:  # noqa: BLE001 - one bad connection must not kill the listener
            self._log.error("connection handler failed", peer=show(flow.peer),
                            local=show(flow.local), error=f"{type(exc).__name__}: {exc}")
        finally:
            flow.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def connect_tcp(self, host: str, port: int, *, timeout_s: float = 30.0) -> SocketFlow:
        self._check()
        family = family_of(host)
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(host, port, family=family)
        except TimeoutError:
            raise Unreachable(show((host, port)), f"no answer within {timeout_s:g} s") from None
        except OSError as exc:
            raise error_for(exc, (host, port)) from None
        return SocketFlow(reader, writer, self)

    async def bind_udp(self, host: str, port: int,
                       handler: DatagramHandler | None = None) -> SocketDatagrams:
        self._check()
        family = family_of(host)
        # Bound here, not by the loop: uvloop's errors on bind carry no errno.
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise error_for(exc, (host, port)) from None
        datagrams = SocketDatagrams(self, family, handler, self._udp_max)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: datagrams, sock=sock)
        self._datagrams.add(datagrams)
        return datagrams

    def close(self) -> None:
        self._closed = True
        for item in [*self._listeners, *self._flows, *self._datagrams]:
            item.close()
        for task in list(self._tasks):
            task.cancel()


def connect(ctx: DeviceContext) -> SocketStack:
    """The device factory (runs inside the running loop)."""
    stack = SocketStack(mtu=ctx.keys["mtu"], udp_max=ctx.keys["udp-max"], log=ctx.log)
    try:
        running = loops.name(asyncio.get_running_loop())
    except RuntimeError:
        running = "not started"
    ctx.log.info("socket stack ready", loop=running, mtu=stack.mtu, udp_max=ctx.keys["udp-max"])
    if ctx.keys["uvloop"] and running != "uvloop" and loops.loop_factory() is not None:
        ctx.log.info("uvloop is installed but not running: the runtime did not select it",
                     hint="see ingot.plugins.stack_socket.loop")
    return stack
