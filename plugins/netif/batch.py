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
"""

from __future__ import annotations

import ctypes
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
    """``count`` messages, each of one iovec pointing at its own ``slot`` bytes of a buffer."""

    def __init__(self, fd: int, count: int, slot: int) -> None:
        self._fd = fd
        self._count = count
        self._slot = slot
        self._buf = bytearray(count * slot)
        self._cbuf = (ctypes.c_char * len(self._buf)).from_buffer(self._buf)
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
    """``recvmmsg`` on ``fd`` into ``count`` slots of ``slot`` bytes each."""

    def __init__(self, fd: int, count: int = 64, slot: int = 65600) -> None:
        super().__init__(fd, count, slot)
        self._view = memoryview(self._buf)
        self._lens = _words(self._msgs, "I")
        self._stride = ctypes.sizeof(_Mmsghdr) // 4
        self._len_at = _Mmsghdr.msg_len.offset // 4
        self._call = _calls().recvmmsg

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
    per-packet cost stays a slice assignment.
    """

    def __init__(self, fd: int, count: int = 32, slot: int = 65600) -> None:
        super().__init__(fd, count, slot)
        self._iov_lens = _words(self._iovs, _SIZE_T)  # iov_base, iov_len: every other word
        self._call = _calls().sendmmsg

    def __call__(self, packets: Sequence[bytes], headers: Sequence[bytes] | None = None) -> int:
        """Send up to ``count`` of ``packets``; how many went.

        Raises ``OSError`` when the first one could not go (``BlockingIOError``:
        no room); a later refusal just ends the batch early.
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
