"""What every netif device shares: a bounded receive queue and its counters.

:class:`Receiver` is the queue side of a device: packets wait in a deque of
at most ``queue`` entries for ``read()``; a read on an empty queue waits on a
future; ``close()`` wakes every waiting read, which then raises ``Closed``.

:class:`FdDevice` feeds that queue from a file descriptor (a tun/tap fd or a
packet socket) through the event loop's ``add_reader``: each readiness
callback drains up to :data:`BURST` packets with non-blocking reads, so one
loop iteration moves many packets. When the queue is full the fd is taken off
the loop until ``read()`` has emptied half of it; meanwhile the kernel's own
queue fills and the kernel drops (and counts) what does not fit, which costs
nothing here. ``write()`` never blocks: a packet the kernel does not take at
once is dropped and counted in ``dropped``.

With the virtio-net header (``vnet-hdr``) every packet read from the fd
starts with a :class:`~ingot.plugins.netif.linux.VnetHeader`.
``read_vnet()``/``write_vnet()`` pass header and packet as they are, GSO
super-packets included (a forwarder moves 64 KiB per system call that way);
plain ``read()`` finishes what the header leaves open in software
(:func:`~ingot.plugins.netif.offload.complete`) so that it always returns a
standard packet; plain ``write()`` sends a zero header (nothing to finish).

:meth:`FdDevice.serve` is the forwarder's way in: rather than a queue and
one ``await`` per packet, the device calls a handler for each packet as it
reads it, straight from the readiness callback, with views of one receive
buffer it reads into again and again (``recv_into``): no allocation and no
copy per packet, and the virtio-net header as its 10 raw bytes, unpacked
only by whoever needs its fields. The handler may edit the packet in place
and write it: ``write()``/``write_vnet()`` are done with the buffers they are
given when they return (:attr:`FdDevice.WRITE_COPIES`), so the same buffer can
be read into again right after.

Bad input never escapes: a packet that cannot be completed, or one the
kernel refuses, is dropped and counted (``malformed``, ``errors``), and each
kind of system-call error is logged once.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from collections.abc import Callable
from typing import Any, Union

from ingot.log import get as get_logger
from ingot.signatures import Closed, DeviceError, MessageTooLong

from .linux import ETH_HLEN, NO_OFFLOAD, ZERO_HEADER, Interface, VnetHeader, raw_is_gso
from .offload import complete

Buffer = Union[bytes, bytearray, memoryview]
Handler = Callable[[memoryview, "memoryview | None"], None]
"""What :meth:`FdDevice.serve` calls per packet: ``handler(packet, header)``."""

BURST = 64
"""Packets read per readiness callback at most."""

QUEUE = 1024
"""Packets waiting for ``read()`` at most (per device)."""

READ_SIZE = 65536 + 64
"""Bytes asked per read: a 64 KiB IP packet, an Ethernet + VLAN header and a vnet header."""

GSO_LIMIT = 65535
"""The largest IP packet, so the largest GSO super-packet a device takes."""

_FATAL = {errno.EBADFD, errno.EBADF, errno.ENODEV, errno.ENXIO}
"""Receive errors after which the fd is useless (its interface was deleted)."""

_FULL = {errno.EAGAIN, errno.ENOBUFS, errno.EINTR}
"""Send errors that mean "no room now": the packet is dropped, nothing is logged."""


class Stats:
    """A device's counters (packets and bytes it moved, and what it could not)."""

    __slots__ = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "dropped",
                 "rx_dropped", "errors", "malformed", "segmented")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


STATS_DOC = {
    "rx_packets": "packets (or super-packets) received from the kernel or segment",
    "rx_bytes": "their bytes",
    "tx_packets": "packets sent",
    "tx_bytes": "their bytes",
    "dropped": "packets given to write() and not sent (no room, refused)",
    "rx_dropped": "packets lost before read(): full queue (memory), kernel drops (afpacket)",
    "errors": "system-call errors other than 'no room' (logged once per kind)",
    "malformed": "received packets dropped because they could not be completed",
    "segmented": "GSO super-packets that read() cut into standard packets",
}


class Receiver:
    """The receive queue of a device and the reads waiting on it."""

    def __init__(self, what: str, queue: int = QUEUE) -> None:
        self._what = what
        self._items: deque[bytes] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._limit = queue
        self._closed = False
        self.stats = Stats()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._what}{' closed' if self._closed else ''}>"

    @property
    def dropped(self) -> int:
        """Packets given to ``write()`` that were not sent."""
        return self.stats.dropped

    def _listen(self) -> None:
        """Make sure packets keep arriving while a read waits (fd devices)."""

    async def _next(self) -> bytes:
        items = self._items
        while not items:
            if self._closed:
                raise Closed(self._what)
            self._listen()
            await self._woken(asyncio.get_running_loop())
        return items.popleft()

    async def _woken(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until :meth:`_wake` (or close) resolves a waiter."""
        fut = loop.create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _shut(self) -> bool:
        """Mark closed, drop what waits and wake the readers; False if already closed."""
        if self._closed:
            return False
        self._closed = True
        self._items.clear()
        self._wake()
        return True


class FdDevice(Receiver):
    """A device over one non-blocking fd; see the module docstring.

    ``recv(size)`` reads one packet, ``recv_into(buffer)`` reads one into
    ``buffer`` and returns its size, ``send(data)`` writes one,
    ``sendv(parts)`` writes one from parts (header and packet); each raises
    ``OSError`` as the system calls do. ``ethernet``: frames with a 14-byte
    header (``net``) rather than IP packets (``tun``).
    """

    WRITE_COPIES = True
    """``write()``/``write_vnet()`` are done with their buffers when they return."""

    def __init__(self, what: str, fd: int, *, iface: Interface, recv: Callable[[int], bytes],
                 send: Callable[[bytes], Any], sendv: Callable[[Any], Any], vnet: bool,
                 ethernet: bool, closer: Callable[[], None], log: Any = None,
                 queue: int = QUEUE, recv_into: Callable[[Any], int] | None = None) -> None:
        super().__init__(what, queue)
        self._log = log if log is not None else get_logger("netif")
        self._fd = fd
        self._iface = iface
        self._recv = recv
        self._recv_into = recv_into
        self._handler: Handler | None = None
        self._send = send
        self._sendv = sendv
        self._vnet = vnet
        self._ethernet = ethernet
        self._l2 = ETH_HLEN if ethernet else 0
        self._closer = closer
        self._ready: deque[bytes] = deque()
        self._low = queue // 2
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._paused = False
        self._logged: set[tuple[str, int]] = set()
        self._mtu = iface.mtu()
        self._tx_limit = self._mtu + self._l2

    # -- facts ---------------------------------------------------------------

    @property
    def ifname(self) -> str:
        """The kernel interface this device is attached to."""
        return self._iface.name

    @property
    def vnet(self) -> bool:
        """Whether packets carry the virtio-net header (``read_vnet``/``write_vnet``)."""
        return self._vnet

    @property
    def mtu(self) -> int:
        """The interface's MTU, as the kernel has it now."""
        if not self._closed:
            try:
                self._mtu = self._iface.mtu()
            except DeviceError:
                pass
            self._tx_limit = self._mtu + self._l2
        return self._mtu

    def stats_dict(self) -> dict[str, int]:
        """The counters now (see :data:`STATS_DOC`)."""
        return self.stats.as_dict()

    # -- receiving -------------------------------------------------------------

    def _listen(self) -> None:
        # Called when the queue is empty: reading must go on (also after a
        # pause, or on the loop of a later asyncio.run()).
        loop = asyncio.get_running_loop()
        if loop is self._loop and self._reading:
            return
        self._read_with(loop, self._on_readable)

    def _read_with(self, loop: asyncio.AbstractEventLoop, callback: Any) -> None:
        """Watch the fd on ``loop`` with ``callback`` (instead of any earlier watch)."""
        old = self._loop
        if old is not None and self._reading and not old.is_closed():
            old.remove_reader(self._fd)
        self._loop = loop
        self._paused = False
        loop.add_reader(self._fd, callback)
        self._reading = True

    def _pause(self) -> None:
        if self._reading and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._reading = False
        self._paused = True

    def _resume(self) -> None:
        self._paused = False
        loop = self._loop
        if not self._closed and loop is not None and not loop.is_closed():
            loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        items = self._items
        n, size = self._drain(items, min(BURST, self._limit - len(items)))
        if n:
            stats = self.stats
            stats.rx_packets += n
            stats.rx_bytes += size
            if self._waiters:
                self._wake()
        if len(items) >= self._limit and not self._closed:
            self._pause()

    def _drain(self, items: deque[bytes], todo: int) -> tuple[int, int]:
        """Read up to ``todo`` packets into ``items``: how many, and their bytes."""
        recv = self._recv
        n = size = 0
        try:
            while n < todo:
                data = recv(READ_SIZE)
                if not data:
                    break
                items.append(data)
                n += 1
                size += len(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._rx_error(exc)
        return n, size

    def _rx_error(self, exc: OSError) -> None:
        if exc.errno in _FATAL:
            self._log.warning("interface gone, closing the device", device=self._what,
                              error=f"{exc.strerror or exc}")
            self.close()
            return
        self.stats.errors += 1
        self._once("receive failed", exc)

    def _once(self, msg: str, exc: OSError) -> None:
        key = (msg, exc.errno or 0)
        if key not in self._logged:
            self._logged.add(key)
            self._log.warning(msg, device=self._what, error=f"{exc.strerror or exc}",
                              note="logged once; counted in errors")

    def _take(self) -> bytes | None:
        """The next raw item if one waits (and the fd back on the loop when due)."""
        items = self._items
        if not items:
            return None
        raw = items.popleft()
        if self._paused and len(items) <= self._low:
            self._resume()
        return raw

    async def read(self) -> bytes:
        """The next frame/packet, complete and standard. Raises ``Closed``."""
        while True:
            if self._ready:
                return self._ready.popleft()
            raw = self._take()
            if raw is None:
                raw = await self._next()
            if not self._vnet:
                return raw
            packet = self._standard(raw)
            if packet is not None:
                return packet

    def _standard(self, raw: bytes) -> bytes | None:
        if len(raw) < VnetHeader.SIZE:
            self.stats.malformed += 1
            return None
        if not raw[0] & 1 and not raw[1]:  # nothing to finish: no NEEDS_CSUM, no GSO
            return raw[VnetHeader.SIZE:]
        try:
            packets = complete(VnetHeader.unpack(raw), raw[VnetHeader.SIZE:],
                               ethernet=self._ethernet)
        except ValueError as exc:
            self.stats.malformed += 1
            key = ("malformed", 0)
            if key not in self._logged:
                self._logged.add(key)
                self._log.warning("packet dropped", device=self._what, error=str(exc),
                                  note="logged once; counted in malformed")
            return None
        if len(packets) > 1:
            self.stats.segmented += 1
            self._ready.extend(packets[1:])
        return packets[0]

    async def read_vnet(self) -> tuple[VnetHeader, bytes]:
        """The next packet as the kernel gave it, with its virtio-net header.

        GSO super-packets (up to 64 KiB) and unfinished checksums come as
        they are. Only with ``vnet-hdr`` on; use either this or ``read()``
        on one device, not both. Raises ``Closed``.
        """
        self._need_vnet()
        while True:
            raw = self._take()
            if raw is None:
                raw = await self._next()
            if len(raw) >= VnetHeader.SIZE:
                return VnetHeader.unpack(raw), raw[VnetHeader.SIZE:]
            self.stats.malformed += 1

    async def serve(self, handler: Handler) -> None:
        """Call ``handler(packet, header)`` for every packet as it is read, until
        the device closes (then ``Closed`` is raised) or the call is cancelled.

        ``packet``: a writable memoryview of the packet as the kernel gave it
        (as ``read_vnet()`` returns it with ``vnet-hdr`` on, as ``read()``
        without); ``header``: its 10-byte virtio-net header as a memoryview
        with ``vnet-hdr`` on (flags at ``header[0]``, the GSO type at
        ``header[1]``; :meth:`VnetHeader.unpack` for the rest), else None.
        Both are views of the device's one receive buffer: valid during the
        call only, overwritten by the next packet. The handler may edit the
        packet in place and ``write()``/``write_vnet()`` it (to any
        :class:`FdDevice`, see :attr:`WRITE_COPIES`); whatever it keeps it
        must copy. An exception from the handler is counted in ``errors``
        and logged once; the next packet is handed over all the same.

        Up to :data:`BURST` packets per readiness callback; no receive queue
        (what the handler does not keep up with, the kernel drops and
        counts). Use either this or ``read()``/``read_vnet()`` on one device,
        not both at once; packets a read left queued are handed over first.
        """
        if self._closed:
            raise Closed(self._what)
        if self._handler is not None:
            raise DeviceError(f"{self._what}: already served")
        loop = asyncio.get_running_loop()
        self._serve_setup()
        self._handler = handler
        try:
            while self._items:  # left over from read(): as they were read
                raw = bytearray(self._items.popleft())
                if not self._vnet:
                    self._call(memoryview(raw), None)
                elif len(raw) >= VnetHeader.SIZE:
                    view = memoryview(raw)
                    self._call(view[VnetHeader.SIZE:], view[:VnetHeader.SIZE])
                else:
                    self.stats.malformed += 1
                if self._closed:
                    raise Closed(self._what)
            self._ready.clear()
            self._read_with(loop, self._on_serve)
            while not self._closed:
                await self._woken(loop)
            raise Closed(self._what)
        finally:
            self._handler = None
            if self._reading and self._loop is loop and not loop.is_closed() \
                    and not self._closed:
                loop.remove_reader(self._fd)
            self._reading = False

    def _serve_setup(self) -> None:
        """Make the receive buffer :meth:`_on_serve` reads into (once)."""
        if getattr(self, "_rx", None) is None:
            self._rx = memoryview(bytearray(READ_SIZE))
            self._rx_head = self._rx[:VnetHeader.SIZE]

    def _call(self, packet: memoryview, header: memoryview | None) -> None:
        try:
            self._handler(packet, header)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - a handler bug must not stop reading
            self._handler_error(exc)

    def _on_serve(self) -> None:
        handler = self._handler
        if handler is None or self._closed:
            return
        rx = self._rx
        recv_into = self._recv_into
        if recv_into is None:  # a backend without it: one copy per packet
            def recv_into(buf: memoryview, recv: Callable[[int], bytes] = self._recv) -> int:
                data = recv(READ_SIZE)
                buf[:len(data)] = data
                return len(data)
        head = self._rx_head if self._vnet else None
        n = size = bad = 0
        try:
            while n < BURST:
                got = recv_into(rx)
                if not got:
                    break
                n += 1
                size += got
                try:
                    if head is None:
                        handler(rx[:got], None)
                    elif got >= 10:
                        handler(rx[10:got], head)
                    else:
                        bad += 1
                except Exception as exc:  # noqa: BLE001 - a handler bug must not stop reading
                    self._handler_error(exc)
                if self._closed:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._rx_error(exc)
        self._received(n, size, bad)

    def _received(self, packets: int, size: int, bad: int) -> None:
        """Count one batch that :meth:`serve` handed over."""
        stats = self.stats
        stats.rx_packets += packets
        stats.rx_bytes += size
        if bad:
            stats.malformed += bad

    def _handler_error(self, exc: Exception) -> None:
        self.stats.errors += 1
        key = ("handler failed", 0)
        if key not in self._logged:
            self._logged.add(key)
            self._log.warning("packet handler failed", device=self._what,
                              error=f"{type(exc).__name__}: {exc}",
                              note="logged once; counted in errors")

    # -- sending ---------------------------------------------------------------

    def write(self, packet: bytes) -> None:
        """Send one frame/packet now; never blocks (no room: dropped and counted).

        Raises ``MessageTooLong`` above the MTU (plus the Ethernet header on
        ``net`` devices) and ``Closed`` after ``close()``.
        """
        self._emit(ZERO_HEADER if self._vnet else None, packet, self._admit(packet, False))

    def write_vnet(self, header: VnetHeader | Buffer, packet: Buffer) -> None:
        """Send one packet with its virtio-net header, e.g. a GSO super-packet.

        ``header``: a :class:`VnetHeader`, or one packed (its 10 bytes, as
        :meth:`serve` hands it over). The kernel finishes what the header
        leaves open (segments, checksums) where needed. Only with
        ``vnet-hdr`` on. Raises ``MessageTooLong`` above 65535 bytes of IP
        (GSO) or the MTU (otherwise).
        """
        if not self._vnet:
            self._need_vnet()
        if isinstance(header, VnetHeader):
            n = self._admit(packet, header.is_gso)
            self._emit(ZERO_HEADER if header is NO_OFFLOAD else header.pack(), packet, n)
            return
        if len(header) != 10:  # type: ignore[arg-type]
            raise ValueError(f"a packed virtio-net header is {VnetHeader.SIZE} bytes, "
                             f"got {len(header)}")  # type: ignore[arg-type]
        n = len(packet)
        if self._closed or n > self._tx_limit:  # else fine, GSO or not
            n = self._admit(packet, raw_is_gso(header))
        self._emit(header, packet, n)

    def _admit(self, packet: bytes, gso: bool) -> int:
        """The size of ``packet``, once it may be sent (else ``Closed``, ``MessageTooLong``)."""
        if self._closed:
            raise Closed(self._what)
        n = len(packet)
        limit = GSO_LIMIT + self._l2 if gso else self._tx_limit
        if n > limit and (gso or n > self.mtu + self._l2):  # the MTU may have grown
            raise MessageTooLong(n, limit if gso else self._tx_limit)
        return n

    def _emit(self, header: Buffer | None, packet: Buffer, n: int) -> None:
        """Hand one packet (after ``header`` when given) to the kernel now."""
        try:
            if header is None:
                self._send(packet)
            else:
                self._sendv((header, packet))
        except OSError as exc:
            self._tx_error(exc)
            return
        stats = self.stats
        stats.tx_packets += 1
        stats.tx_bytes += n

    def _tx_error(self, exc: OSError) -> None:
        self.stats.dropped += 1
        if exc.errno not in _FULL:
            self.stats.errors += 1
            self._once("send failed", exc)

    def _need_vnet(self) -> None:
        if not self._vnet:
            raise DeviceError(f"{self._what}: the virtio-net header is off (key vnet-hdr)")

    # -- closing ---------------------------------------------------------------

    def close(self) -> None:
        """Release the fd; pending and later reads raise ``Closed``. Never raises."""
        if not self._shut():
            return
        self._ready.clear()
        try:
            if self._reading and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
        except Exception:  # noqa: BLE001 - close never raises
            pass
        self._reading = False
        for release in (self._closer, self._iface.close):
            try:
                release()
            except Exception:  # noqa: BLE001 - close never raises
                pass
