"""The ``net/afpacket`` device: Ethernet frames on an existing interface.

An ``AF_PACKET``/``SOCK_RAW`` socket bound to interface ``ifname`` for every
protocol (``ETH_P_ALL``) sees the frames the interface receives and sends
frames out of it, e.g. on one end of a veth pair or a physical NIC. It sets
``PACKET_IGNORE_OUTGOING``, so frames the host sends (this device's own
included) are not read back, and asks for a 4 MiB receive buffer. With
``promiscuous`` the interface also passes frames addressed to other MACs.
The link is brought up. ``mac`` is the interface's own MAC address.

The virtio-net header (``PACKET_VNET_HDR``) is on by default here, unlike on
tun/tap: a packet socket gets frames as the kernel holds them, and on a veth
whose peer offloads (TSO, checksums: Linux's default) those are 64 KiB
super-frames with unfinished checksums. With the header, ``read()`` finishes
them in software and always returns standard frames, and ``read_vnet()``/
``write_vnet()`` pass them untouched. With ``vnet-hdr`` off, ``read()`` returns
what the kernel has, unfinished or not: then turn the peer's offloads off
(``ethtool -K PEER tso off gso off tx off``).

Writes are batched: ``write()`` copies the frame into a slot of a
:class:`~.batch.SendMany` (so the caller's buffer is free again at once) and
the frames written during one event-loop iteration go out together in
``sendmmsg`` calls at the end of it (at once when 32 wait, or when no loop
runs); a frame the kernel has no room for at that point is dropped and
counted. ``read()`` uses one ``recv()`` per frame;
:meth:`~.device.FdDevice.serve` receives up to 16 frames per ``recvmmsg``
into 64 KiB slots of anonymous memory and hands each over where it lies.
:mod:`.batch` has the measurements behind these choices.

VLAN tags the interface strips on receive are not put back.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from typing import Any

from ingot.registry import DeviceContext
from ingot.signatures import DeviceError

from .batch import RecvMany, SendMany
from .device import _FULL, BURST, QUEUE, READ_SIZE, FdDevice
from .linux import (
    ETH_P_ALL,
    PACKET_ADD_MEMBERSHIP,
    PACKET_IGNORE_OUTGOING,
    PACKET_MR_PROMISC,
    PACKET_STATISTICS,
    PACKET_VNET_HDR,
    SOL_PACKET,
    Interface,
    os_error,
)

RCVBUF = 4 << 20
"""Receive buffer asked for (SO_RCVBUFFORCE, else SO_RCVBUF as far as allowed)."""

TX_BATCH = 32
"""Frames sent per ``sendmmsg`` call at most (see :mod:`.batch` for why writes batch)."""

SERVE_BATCH = 16
"""Frames per ``recvmmsg`` call at most in :meth:`~.device.FdDevice.serve` (64 KiB slots)."""

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class PacketNet(FdDevice):
    """:class:`ingot.signatures.Net` over a packet socket bound to one interface."""

    def __init__(self, ifname: str, *, promiscuous: bool = False, vnet: bool = True,
                 log: Any = None, queue: int = QUEUE, tx_batch: int = TX_BATCH,
                 rx_batch: int = 0, serve_batch: int = SERVE_BATCH) -> None:
        """``tx_batch``: frames per ``sendmmsg`` (0: one ``send`` per write);
        ``rx_batch``: frames per ``recvmmsg`` for ``read()`` (0: one ``recv``
        per frame); ``serve_batch``: the same for :meth:`serve` (0: one
        ``recv_into`` per frame).
        """
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # no frames until bound
        try:
            sock.setblocking(False)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            if vnet:
                sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((ifname, ETH_P_ALL))
            if promiscuous:
                mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC,
                                   0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            iface = Interface(ifname, sock)
            iface.set_up()
            self._mac = iface.mac()
            super().__init__(f"afpacket {ifname}", sock.fileno(), iface=iface, recv=sock.recv,
                             recv_into=sock.recv_into, send=sock.send, sendv=sock.sendmsg,
                             vnet=vnet, ethernet=True, closer=sock.close, log=log, queue=queue)
        except OSError as exc:
            sock.close()
            raise os_error(exc, f"afpacket {ifname}") from None
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.promiscuous = promiscuous
        self._send_many = SendMany(sock.fileno(), tx_batch) if tx_batch > 1 else None
        self._recv_many = RecvMany(sock.fileno(), rx_batch, READ_SIZE) if rx_batch > 1 else None
        self._serve_batch = serve_batch
        self._serve_many: RecvMany | None = None
        self._serve_heads: list[memoryview] = []
        self._flush_due = False

    # -- batched sending -----------------------------------------------------

    def _emit(self, header: Any, packet: Any, n: int) -> None:
        send_many = self._send_many
        if send_many is None:
            super()._emit(header, packet, n)
            return
        # copied into a slot now: the caller may reuse its buffer at once
        full = send_many.put(header, packet, n)
        stats = self.stats
        stats.tx_packets += 1
        stats.tx_bytes += n
        if full:
            self._flush()
        elif not self._flush_due:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
                self._flush_due = True
            except RuntimeError:  # no loop runs: send now
                self._flush()

    def _flush(self) -> None:
        """Send what waits; what the kernel has no room for is dropped and counted."""
        self._flush_due = False
        send_many = self._send_many
        while send_many is not None and send_many.waiting:
            try:
                send_many.send_waiting()
            except OSError as exc:
                lost = send_many.waiting if exc.errno in _FULL else 1
                self._unsend(send_many, lost, exc)

    def _unsend(self, send_many: SendMany, lost: int, exc: OSError) -> None:
        """Take the first ``lost`` waiting frames back from the counters as dropped."""
        stats = self.stats
        stats.tx_packets -= lost
        stats.tx_bytes -= send_many.discard(lost)
        stats.dropped += lost - 1
        self._tx_error(exc)

    # -- batched receiving (measured, not used by default) -----------------------

    def _drain(self, items: deque[bytes], todo: int) -> tuple[int, int]:
        if self._recv_many is None:
            return super()._drain(items, todo)
        n = size = 0
        try:
            while n < todo:
                got = self._recv_many(todo - n)
                items.extend(got)
                n += len(got)
                size += sum(map(len, got))
                if not got:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._rx_error(exc)
        return n, size

    # -- serving: recvmmsg into slots, packets handled where they lie ------------------

    def _serve_setup(self) -> None:
        if self._serve_batch <= 1:
            super()._serve_setup()
        elif self._serve_many is None:
            many = self._serve_many = RecvMany(self._sock.fileno(), self._serve_batch, READ_SIZE)
            view, slot = many.view, many.slot
            self._serve_heads = [view[i * slot:i * slot + 10] for i in range(many.count)]

    def _on_serve(self) -> None:
        many = self._serve_many
        if many is None:
            super()._on_serve()
            return
        handler = self._handler
        if handler is None or self._closed:
            return
        receive, count = many.receive, many.count
        view, slot, lengths, stride, at = many.view, many.slot, many.lengths, many.stride, \
            many.at
        heads = self._serve_heads if self._vnet else None
        total = size = bad = 0
        try:
            while total < BURST:
                n = receive(BURST - total)
                total += n
                for i in range(n):
                    got = lengths[i * stride + at]
                    base = i * slot
                    size += got
                    try:
                        if heads is None:
                            handler(view[base:base + got], None)
                        elif got >= 10:
                            handler(view[base + 10:base + got], heads[i])
                        else:
                            bad += 1
                    except Exception as exc:  # noqa: BLE001 - a handler bug must not stop reading
                        self._handler_error(exc)
                    if self._closed:
                        break
                if n < count or self._closed:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._rx_error(exc)
        self._received(total, size, bad)

    @property
    def mac(self) -> bytes:
        """The interface's MAC address."""
        if not self._closed:
            with contextlib.suppress(DeviceError):
                self._mac = self._iface.mac()
        return self._mac

    def stats_dict(self) -> dict[str, int]:
        """The counters, with the kernel's drops for this socket added to ``rx_dropped``."""
        if not self._closed:
            with contextlib.suppress(OSError):
                _, drops = struct.unpack(
                    "II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                self.stats.rx_dropped += drops  # the kernel resets them on each query
        return super().stats_dict()


    def close(self) -> None:
        """Send what waits, then release the socket. Never raises."""
        if not self._closed and self._send_many is not None and self._send_many.waiting:
            with contextlib.suppress(Exception):
                self._flush()
        super().close()
        self._send_many = None


def connect(ctx: DeviceContext) -> PacketNet:
    """The device factory."""
    dev = PacketNet(ctx.keys["ifname"], promiscuous=ctx.keys["promiscuous"],
                    vnet=ctx.keys["vnet-hdr"], log=ctx.log)
    ctx.log.info("packet socket bound", ifname=dev.ifname, mac=dev.mac.hex(":"), mtu=dev.mtu,
                 promiscuous=dev.promiscuous, vnet_hdr=dev.vnet)
    return dev
