"""Many packets per system call on a socket: ``recvmmsg(2)`` and ``sendmmsg(2)`` via ctypes.

:class:`RecvMany` receives up to ``count`` packets into one preallocated
buffer of ``count`` slots and returns them as ``bytes``; :class:`SendMany`
sends a list of packets in one call. Both are non-blocking (``MSG_DONTWAIT``)
and raise ``OSError`` as the calls do (``BlockingIOError`` when nothing
waits or nothing fits).

Measured through the afpacket device on this kind of machine
(tests/bench/bench_forward_afpacket.py, 64-byte frames over a veth):
sending through :class:`SendMany` moved about 1.35 times the frames per
second of one ``send()`` per frame (470-480k against 350k), so the afpacket
device batches its writes; receiving through :class:`RecvMany` gained
nothing over a loop of ``recv()`` (0.85-1.0 times; the per-frame Python
work of ``read()`` dominates), so the device receives with ``recv()``.
:class:`RecvMany` stays for that benchmark (``PacketNet(rx_batch=64)``).

:meth:`~ingot.plugins.netif.device.FdDevice.serve`, which hands packets over
where they lie, is another matter: through the python firewall
(tests/bench/bench_firewall.py, 64-byte UDP, the firewall process at 100%)
``recvmmsg`` into 16 slots forwarded about 1.07 times the packets per
CPU-second of one ``recv_into()`` per packet (114k against 107k; 64 slots
gained nothing more), and made no difference for TCP, so ``serve`` on an
afpacket device reads through :meth:`RecvMany.receive` (16 slots). Sending
64 per ``sendmmsg`` rather than 32 gained nothing there either.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Sequence
from typing import Any

MSG_DONTWAIT = 0x40
_SIZE_T = "Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I"

_libc: Any = None


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _calls() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        for name in ("recvmmsg", "sendmmsg"):
            fn = getattr(_libc, name)
            fn.restype = ctypes.c_int
        _libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                   ctypes.c_void_p]
        _libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    return _libc


def _raise() -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def _words(array: ctypes.Array[Any], fmt: str) -> memoryview:
    """A writable view of a ctypes array's memory as machine words of ``fmt``."""
    raw = (ctypes.c_char * ctypes.sizeof(array)).from_address(ctypes.addressof(array))
    return memoryview(raw).cast("B").cast(fmt)


class _Slots:
    """``count`` messages, each of one iovec pointing at its own ``slot`` bytes of a buffer.

    The buffer is anonymous memory (``mmap``): its pages cost nothing until a
    packet is written there, so the slots deep in a batch that traffic
    rarely fills do not weigh on the process's memory.
    """

    def __init__(self, fd: int, count: int, slot: int) -> None:
        self._fd = fd
        self._count = count
        self._slot = slot
        self._map = mmap.mmap(-1, count * slot)
        self._buf = memoryview(self._map)
        self._cbuf = (ctypes.c_char * len(self._buf)).from_buffer(self._map)
        base = ctypes.addressof(self._cbuf)
        self._iovs = (_Iovec * count)()
        self._msgs = (_Mmsghdr * count)()
        for i in range(count):
            self._iovs[i].iov_base = base + i * slot
            self._iovs[i].iov_len = slot
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iovs[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1
        self._msgs_ptr = ctypes.addressof(self._msgs)


class RecvMany(_Slots):
    """``recvmmsg`` on ``fd`` into ``count`` slots of ``slot`` bytes each.

    Calling it returns copies (``bytes``); :meth:`receive` leaves the packets
    in the slots, for a reader that handles each in place before the next
    call: packet ``i`` of the last call starts at ``view[i * slot]`` and is
    ``lengths[i * stride + at]`` bytes long.
    """

    def __init__(self, fd: int, count: int = 64, slot: int = 65600) -> None:
        super().__init__(fd, count, slot)
        self._view = self.view = self._buf
        self._lens = self.lengths = _words(self._msgs, "I")
        self._stride = self.stride = ctypes.sizeof(_Mmsghdr) // 4
        self._len_at = self.at = _Mmsghdr.msg_len.offset // 4
        self.count = count
        self.slot = slot
        self._call = _calls().recvmmsg

    def receive(self, limit: int) -> int:
        """Receive up to ``min(limit, count)`` packets into the slots: how many
        (``BlockingIOError`` when none waits)."""
        n = self._call(self._fd, self._msgs_ptr, min(limit, self._count), MSG_DONTWAIT, None)
        if n < 0:
            _raise()
        return n

    def __call__(self, limit: int) -> list[bytes]:
        """Up to ``min(limit, count)`` packets (``BlockingIOError`` when none waits)."""
        n = self._call(self._fd, self._msgs_ptr, min(limit, self._count), MSG_DONTWAIT, None)
        if n < 0:
            _raise()
        view, lens, slot, stride, at = self._view, self._lens, self._slot, self._stride, \
            self._len_at
        return [view[i * slot:i * slot + lens[i * stride + at]].tobytes() for i in range(n)]


class SendMany(_Slots):
    """``sendmmsg`` on ``fd``: up to ``count`` packets of at most ``slot`` bytes
    (header included) per call.

    Packets (each after its header, when headers are given) are copied into
    preallocated slots: one copy and no ctypes object per packet, so the
    per-packet cost stays a slice assignment. Two ways to use it: call it
    with a list of packets (copied and sent at once), or :meth:`put` packets
    one by one (copied at once: the caller's buffer is free again when
    ``put`` returns) and send what waits with :meth:`send_waiting`.
    """

    def __init__(self, fd: int, count: int = 32, slot: int = 65600) -> None:
        super().__init__(fd, count, slot)
        self._iov_lens = _words(self._iovs, _SIZE_T)  # iov_base, iov_len: every other word
        self._call = _calls().sendmmsg
        self._msg_size = ctypes.sizeof(_Mmsghdr)
        self._first = 0  # the first slot that waits
        self._next = 0  # the first free slot
        self.sizes: list[int] = []
        """What each waiting packet counts for (``put``'s ``size``), in order."""

    def __call__(self, packets: Sequence[bytes], headers: Sequence[bytes] | None = None) -> int:
        """Send up to ``count`` of ``packets``; how many went.

        Raises ``OSError`` when the first one could not go (``BlockingIOError``:
        no room); a later refusal just ends the batch early. Not while
        packets :meth:`put` wait.
        """
        n = min(len(packets), self._count)
        buf, lens, slot = self._buf, self._iov_lens, self._slot
        for i in range(n):
            at = i * slot
            if headers is not None:
                head = headers[i]
                buf[at:at + len(head)] = head
                at += len(head)
            packet = packets[i]
            buf[at:at + len(packet)] = packet
            lens[2 * i + 1] = at + len(packet) - i * slot
        sent = self._call(self._fd, self._msgs_ptr, n, MSG_DONTWAIT)
        if sent < 0:
            _raise()
        return sent

    @property
    def waiting(self) -> int:
        """Packets put and not sent yet."""
        return self._next - self._first

    def put(self, header: Any, packet: Any, size: int) -> bool:
        """Copy ``header`` (or nothing, when None) and ``packet`` into the next
        slot; ``size`` is what it counts for. True when every slot is taken
        (send before the next ``put``)."""
        i = self._next
        at = i * self._slot
        buf = self._buf
        if header is None:
            end = at + len(packet)
            buf[at:end] = packet
        else:
            mid = at + len(header)
            end = mid + len(packet)
            buf[at:mid] = header
            buf[mid:end] = packet
        self._iov_lens[2 * i + 1] = end - at
        self.sizes.append(size)
        self._next = i = i + 1
        return i >= self._count

    def send_waiting(self) -> int:
        """Send what waits, in one call; how many went (the rest still waits).

        Raises ``OSError`` when the first could not go (it still waits).
        """
        first = self._first
        n = self._next - first
        if n <= 0:
            return 0
        sent = self._call(self._fd, self._msgs_ptr + first * self._msg_size, n, MSG_DONTWAIT)
        if sent < 0:
            _raise()
        self._skip(sent)
        return sent

    def discard(self, n: int) -> int:
        """Forget the first ``n`` waiting packets unsent; what they counted for."""
        n = min(n, self.waiting)
        lost = sum(self.sizes[:n])
        self._skip(n)
        return lost

    def _skip(self, n: int) -> None:
        del self.sizes[:n]
        self._first += n
        if self._first >= self._next:
            self._first = self._next = 0
