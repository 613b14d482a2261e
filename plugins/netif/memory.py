"""The ``net/memory`` and ``tun/memory`` devices: links inside one process.

A :class:`Segment` is a shared medium with a name, like a hub: what one port
writes, every other port of the segment reads, in order, at once (no task,
no copy of immutable bytes). Devices connected with the same ``segment`` key
share it, so two appliances (or an appliance and a test) in one process
talk without the kernel::

    seg = segment("lan")            # or the device's key: --net-segment lan
    a, b = seg.attach(), seg.attach()
    a.write(frame); assert await b.read() == frame

A test can attach its own port to the segment of a device under test. Each
port queues at most ``queue`` packets; a packet that finds a full queue is
lost for that port (counted in its ``rx_dropped``) and counted in the
sender's ``dropped``. ``net`` segments carry Ethernet frames (14 bytes at
least, at most ``mtu`` + 14); ``tun`` segments IP packets (at most ``mtu``).
A segment lives while a port or a reference to it does.
"""

from __future__ import annotations

import weakref

from ingot.registry import DeviceContext
from ingot.signatures import Closed, MessageTooLong

from .device import QUEUE, Receiver
from .linux import ETH_HLEN, parse_mac

_SEGMENTS: weakref.WeakValueDictionary[tuple[str, str], Segment] = weakref.WeakValueDictionary()


class Segment:
    """A named in-process medium of one kind (``"net"`` or ``"tun"``)."""

    def __init__(self, name: str, kind: str = "net") -> None:
        if kind not in ("net", "tun"):
            raise ValueError(f"a segment carries 'net' frames or 'tun' packets, not {kind!r}")
        self.name = name
        self.kind = kind
        self.ports: list[MemoryPort] = []
        self._next_mac = 1

    def __repr__(self) -> str:
        return f"<Segment {self.kind} {self.name!r} ports={len(self.ports)}>"

    def attach(self, *, mtu: int = 1500, mac: bytes | None = None,
               queue: int = QUEUE) -> MemoryPort:
        """A new port: a :class:`MemoryNet` or :class:`MemoryTun` by the segment's kind.

        A ``net`` port without ``mac`` gets ``02:00:00:00:00:NN`` numbered in
        attach order.
        """
        if self.kind == "tun":
            port: MemoryPort = MemoryTun(self, mtu, queue)
        else:
            if mac is None:
                mac = b"\x02\x00" + self._next_mac.to_bytes(4, "big")
                self._next_mac += 1
            port = MemoryNet(self, mtu, queue, mac)
        self.ports.append(port)
        return port

    def _deliver(self, sender: MemoryPort, data: bytes) -> bool:
        """Give ``data`` to every other port; False if one of them had no room."""
        delivered = True
        for port in self.ports:
            if port is not sender and not port._receive(data):
                delivered = False
        return delivered


def segment(name: str, kind: str = "net") -> Segment:
    """The segment called ``name`` of ``kind``, made on first use."""
    found = _SEGMENTS.get((kind, name))
    if found is None:
        found = Segment(name, kind)
        _SEGMENTS[(kind, name)] = found
    return found


class MemoryPort(Receiver):
    """One port of a :class:`Segment` (the part ``net`` and ``tun`` ports share)."""

    HEADER = 0
    WRITE_COPIES = True
    """``write()`` keeps a copy of what it is given, never the caller's buffer."""

    def __init__(self, seg: Segment, mtu: int, queue: int) -> None:
        super().__init__(f"memory {seg.kind} port on {seg.name!r}", queue)
        self.segment = seg
        self._mtu = mtu

    @property
    def mtu(self) -> int:
        return self._mtu

    def stats_dict(self) -> dict[str, int]:
        return self.stats.as_dict()

    def _receive(self, data: bytes) -> bool:
        if self._closed:
            return True
        if len(self._items) >= self._limit:
            self.stats.rx_dropped += 1
            return False
        self._items.append(data)
        stats = self.stats
        stats.rx_packets += 1
        stats.rx_bytes += len(data)
        if self._waiters:
            self._wake()
        return True

    async def read(self) -> bytes:
        """The next packet another port wrote. Raises ``Closed``."""
        if self._items:
            return self._items.popleft()
        return await self._next()

    def write(self, packet: bytes) -> None:
        """Give ``packet`` to every other port now (a full queue drops it there)."""
        if self._closed:
            raise Closed(self._what)
        n = len(packet)
        limit = self._mtu + self.HEADER
        if n > limit:
            raise MessageTooLong(n, limit)
        stats = self.stats
        if n < max(self.HEADER, 1):
            stats.dropped += 1
            stats.malformed += 1
            return
        if not self.segment._deliver(self, bytes(packet)):
            stats.dropped += 1
        stats.tx_packets += 1
        stats.tx_bytes += n

    def close(self) -> None:
        """Leave the segment; pending reads raise ``Closed``. Never raises."""
        if self._shut():
            try:
                self.segment.ports.remove(self)
            except ValueError:
                pass


class MemoryNet(MemoryPort):
    """:class:`ingot.signatures.Net` on a memory segment."""

    HEADER = ETH_HLEN

    def __init__(self, seg: Segment, mtu: int, queue: int, mac: bytes) -> None:
        super().__init__(seg, mtu, queue)
        self._mac = mac

    @property
    def mac(self) -> bytes:
        return self._mac


class MemoryTun(MemoryPort):
    """:class:`ingot.signatures.Tun` on a memory segment."""


def connect_net(ctx: DeviceContext) -> MemoryNet:
    """The ``net/memory`` factory."""
    mac = parse_mac(ctx.keys["mac"]) if ctx.keys["mac"] else None
    port = segment(ctx.keys["segment"], "net").attach(mtu=ctx.keys["mtu"], mac=mac)
    ctx.log.info("memory net attached", segment=ctx.keys["segment"],
                 mac=port.mac.hex(":"), mtu=port.mtu)  # type: ignore[attr-defined]
    return port  # type: ignore[return-value]


def connect_tun(ctx: DeviceContext) -> MemoryTun:
    """The ``tun/memory`` factory."""
    port = segment(ctx.keys["segment"], "tun").attach(mtu=ctx.keys["mtu"])
    ctx.log.info("memory tun attached", segment=ctx.keys["segment"], mtu=port.mtu)
    return port  # type: ignore[return-value]
