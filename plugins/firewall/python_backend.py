"""The ``packet_filter/python`` device: Ingot's own data plane over ``net`` devices.

The verdict and NAT engine (:mod:`.engine`, sans-I/O) sees IP packets;
:mod:`.l2` (sans-I/O) turns frames into those packets and back and answers
ARP. This module is the adapter, the only part with I/O: it owns the
interfaces, one asyncio task per interface that reads frames and dispatches
them, and the one timer ARP needs.

Interfaces:

* the uplink is the ``net`` device this backend requires (role ``uplink``),
  connected by the runtime (``--uplink afpacket --uplink-ifname eth0`` ...);
* each client is opened by :meth:`PythonFilter.attach` on the interface it
  names: with ``client-backend`` ``afpacket`` (the default) a packet socket
  on that interface (:class:`~ingot.plugins.netif.afpacket.PacketNet`, e.g.
  a Qubes ``vif`` or a veth end), with ``memory`` the in-process segment of
  that name (:mod:`ingot.plugins.netif.memory`, for tests).

Reading: from a netif device (afpacket, tap) through its ``serve()``: the
device hands each frame over as a view of its receive buffer with the raw
virtio-net header, and a frame of a tracked flow is edited where it lies and
copied once, by the egress device when written (into its ``sendmmsg`` slot):
no header object and no ``await`` per frame. Anything off that path is copied
out of the receive buffer first (L2 may keep it while ARP resolves). Other devices (memory, test doubles) are read with ``read_vnet()``
or ``read()``.

GSO and checksum offload: with the virtio-net header on (``client-vnet-hdr``,
default true, and on the uplink device when it has it), frames come with
their header: a 64 KiB TCP super-packet passes through the engine
once (with ``partial_csum`` when its header says ``NEEDS_CSUM``: the
transport checksum then holds only the pseudo-header sum, which NAT must
update as such) and leaves with the same header through ``write_vnet()``,
the kernel cutting it into segments where needed. The Ethernet header is 14
bytes on both sides, so the header's offsets stay right. An egress device
without the header gets the packet finished in software first
(:func:`~ingot.plugins.netif.offload.complete`).

Writes never block: a device drops and counts what it has no room for; a
packet an egress refuses (too long for its MTU, closed) is dropped and
counted here (``fw.tx_*``). Nothing a peer sends escapes the loop: an
exception in the packet path is counted (``fw.internal_error``) and logged
(rate-limited).

Every drop is logged at debug level with its reason; at info level one line
per reason per second at most, with the number of drops it stands for, so a
flood cannot fill the log. :meth:`PythonFilter.stats` merges the engine's
counters, the L2 counters (``l2.*``, ``arp.*``), the adapter's (``fw.*``)
and each device's (``dev.<interface>.<counter>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

from ingot.registry import DeviceContext, DeviceSpec
from ingot.signatures import Closed, DeviceError, FilterSetup, MessageTooLong

from .engine import Engine, Forward
from .l2 import UPLINK, L2, Deliver, Dropped, Transmit

LOG_INTERVAL_NS = 1_000_000_000
"""Info lines about drops: at most one per reason in this time."""
EXPIRE_INTERVAL_S = 10.0
"""How often expired connections are swept from the engine's table."""

_MOD = "ingot.plugins.firewall.python_backend"


from . import CLIENT_BACKENDS, PYTHON_SPEC  # noqa: E402


def python_spec() -> DeviceSpec:
    """The registration of this backend (the plugin registers the same object)."""
    return PYTHON_SPEC


class _Iface:
    """One interface the filter reads and writes.

    ``copies``: the device is done with a frame when ``write()`` returns
    (:attr:`~ingot.plugins.netif.device.FdDevice.WRITE_COPIES`), so a frame
    still in another device's receive buffer may be handed to it as it is.
    ``ifname``: the interface's name on the host; ``host``: for a client's
    IPv6 address that shares the device of its IPv4 address (one VM, one
    interface), that IPv4 address (no reading, no device of its own).
    """

    __slots__ = ("name", "dev", "vnet", "task", "owned", "copies", "ifname", "host")

    def __init__(self, name: str, dev: Any, owned: bool, ifname: str = "",
                 host: str | None = None) -> None:
        self.name = name
        self.dev = dev
        self.vnet = bool(getattr(dev, "vnet", False))
        self.task: asyncio.Task[None] | None = None
        self.owned = owned
        self.copies = getattr(dev, "WRITE_COPIES", False) is True
        self.ifname = ifname
        self.host = host


class PythonFilter:
    """:class:`ingot.signatures.PacketFilter` in Python; see the module docstring.

    ``uplink`` is a ``net`` device; ``client_backend`` ``"afpacket"`` or
    ``"memory"``; ``clock`` gives monotonic nanoseconds.
    """

    def __init__(self, uplink: Any, log: Any, *, client_backend: str = "afpacket",
                 client_vnet: bool = True, arp_queue: int = 8,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        if client_backend not in CLIENT_BACKENDS:
            raise DeviceError(f"client backend {client_backend!r}: expected one of "
                              + ", ".join(CLIENT_BACKENDS))
        self.uplink = uplink
        self.log = log
        self.client_backend = client_backend
        self.client_vnet = client_vnet
        self.arp_queue = arp_queue
        self._now = clock
        self.engine: Engine | None = None
        self.l2: L2 | None = None
        self.setup: FilterSetup | None = None
        self._ifaces: dict[str, _Iface] = {}
        self._rules: dict[str, Any] = {}
        self._counters: dict[str, int] = {}
        self._closed_stats: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._last_log: dict[str, tuple[int, int]] = {}  # reason -> (logged at, drops since)
        self._closed = False

    # -- PacketFilter ------------------------------------------------------------

    async def start(self, setup: FilterSetup) -> None:
        """Bring the data plane up: the engine, L2, and reading the uplink."""
        if self.engine is not None:
            raise DeviceError("packet filter already started")
        if self._closed:
            raise DeviceError("packet filter closed")
        try:
            self.engine = Engine(setup)
            self.l2 = L2(setup, self.uplink.mac, queue_per_ip=self.arp_queue)
        except ValueError as exc:
            raise DeviceError(f"packet filter setup: {exc}") from None
        self.setup = setup
        for rules in self._rules.values():
            self.engine.set_rules(rules)
        up = self._ifaces[UPLINK] = _Iface(UPLINK, self.uplink, owned=False)
        up.task = asyncio.get_running_loop().create_task(self._read_loop(up))
        self._emit(self.l2.start(self._now()))
        self._arm()
        self._sweeper = asyncio.get_running_loop().call_later(EXPIRE_INTERVAL_S, self._sweep)
        self.log.info("packet filter started", uplink_ip=f"{setup.uplink_ip}/"
                      f"{setup.uplink_prefix}", gateway=setup.uplink_gateway,
                      client_gateway=setup.client_gateway, mac=self.uplink.mac.hex(":"),
                      vnet_hdr=up.vnet)

    async def attach(self, client_ip: str, ifname: str) -> None:
        """Open ``ifname`` for the client ``client_ip`` and start reading it.

        Attaching an attached client moves it to ``ifname``: its connections
        are forgotten, its rules kept. A VM's IPv4 and IPv6 addresses on one
        interface share one device (each frame is read once): the IPv6
        address rides on the IPv4 address's device, whichever was attached
        first.
        """
        self._attach(client_ip, ifname)

    def _attach(self, client_ip: str, ifname: str) -> None:
        if self.engine is None or self.l2 is None:
            raise DeviceError("attach before start")
        if client_ip == UPLINK:
            raise DeviceError(f"{client_ip!r} is not a client address")
        if client_ip in self._ifaces:
            self._keeping_rules(client_ip, self.detach)
        v6 = ":" in client_ip
        same = [i for i in self._ifaces.values()
                if i.ifname == ifname and i.host is None and (":" in i.name) != v6]
        if same and not v6:  # its IPv6 address came first: it moves onto this device
            self._keeping_rules(same[0].name, self.detach)
        if same and v6:
            host = same[0]
            try:
                self.engine.attach(client_ip)
                self.l2.attach(client_ip, host.dev.mac, iface=host.name)
            except Exception as exc:
                raise DeviceError(f"client {client_ip} on {ifname}: {exc}") from None
            self._ifaces[client_ip] = _Iface(client_ip, host.dev, owned=False, ifname=ifname,
                                             host=host.name)
            self.log.info("client address added to an interface", client=client_ip,
                          ifname=ifname, shares_with=host.name)
            return
        dev = self._open(ifname)
        try:
            self.engine.attach(client_ip)
            self.l2.attach(client_ip, dev.mac)
        except Exception as exc:
            dev.close()
            raise DeviceError(f"client {client_ip} on {ifname}: {exc}") from None
        iface = self._ifaces[client_ip] = _Iface(client_ip, dev, owned=True, ifname=ifname)
        iface.task = asyncio.get_running_loop().create_task(self._read_loop(iface))
        self.log.info("client interface opened", client=client_ip, ifname=ifname,
                      backend=self.client_backend, mac=dev.mac.hex(":"), vnet_hdr=iface.vnet)
        if same:
            self._keeping_rules(same[0].name, lambda ip: self._attach(ip, ifname))

    def _keeping_rules(self, client_ip: str, step: Callable[[str], None]) -> None:
        rules = self._rules.get(client_ip)
        step(client_ip)
        if rules is not None:
            self.set_rules(rules)

    def _open(self, ifname: str) -> Any:
        if self.client_backend == "memory":
            from ingot.plugins.netif.memory import segment

            return segment(ifname, "net").attach()
        from ingot.plugins.netif.afpacket import PacketNet

        return PacketNet(ifname, vnet=self.client_vnet, log=self.log)

    def detach(self, client_ip: str) -> None:
        """Forget a client, its rules, its connections and its interface. Never raises.

        An IPv6 address that shared the client's device gets one of its own."""
        try:
            iface = self._ifaces.pop(client_ip, None) if client_ip != UPLINK else None
            riders = [i for i in self._ifaces.values() if i.host == client_ip]
            self._rules.pop(client_ip, None)
            if self.engine is not None:
                with contextlib.suppress(Exception):
                    self.engine.detach(client_ip)
            if self.l2 is not None:
                for ev in self.l2.detach(client_ip):
                    if isinstance(ev, Dropped):
                        self._drop(ev.iface, ev.reason)
            if iface is not None:
                self._retire(iface)
                if iface.host is None:
                    self.log.info("client interface closed", client=client_ip)
            for rider in riders:
                self._keeping_rules(rider.name, self.detach)
                try:
                    self._keeping_rules(rider.name, lambda ip: self._attach(ip, rider.ifname))
                except DeviceError as exc:  # the interface went with the VM
                    self.log.info("client address detached with its interface",
                                  client=rider.name, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - detach never raises
            self.log.error("detach failed", client=client_ip, error=f"{type(exc).__name__}: "
                           f"{exc}")

    def _retire(self, iface: _Iface) -> None:
        if iface.task is not None:
            iface.task.cancel()
        with contextlib.suppress(Exception):
            for k, v in self._dev_stats(iface).items():
                self._closed_stats[k] = self._closed_stats.get(k, 0) + v
        if iface.owned:
            with contextlib.suppress(Exception):
                iface.dev.close()

    def set_rules(self, rules: Any) -> None:
        """Replace the rules of ``rules.client`` (attached or not yet)."""
        self._rules[rules.client] = rules
        if self.engine is not None:
            self.engine.set_rules(rules)

    def stats(self) -> dict[str, int]:
        """Engine, L2, adapter and device counters in one mapping."""
        out: dict[str, int] = {}
        if self.engine is not None:
            out.update(self.engine.stats())
        if self.l2 is not None:
            out.update(self.l2.counters.snapshot())
        out.update(self._counters)
        for k, v in self._closed_stats.items():
            out[k] = out.get(k, 0) + v
        for iface in self._ifaces.values():
            with contextlib.suppress(Exception):
                for k, v in self._dev_stats(iface).items():
                    out[k] = out.get(k, 0) + v
        return out

    @staticmethod
    def _dev_stats(iface: _Iface) -> dict[str, int]:
        if iface.host is not None:  # the device is counted under its IPv4 address
            return {}
        stats = iface.dev.stats_dict() if hasattr(iface.dev, "stats_dict") else {}
        return {f"dev.{iface.name}.{k}": v for k, v in stats.items()}

    def close(self) -> None:
        """Stop reading, close the client interfaces (not the uplink: the runtime's).

        Never raises.
        """
        if self._closed:
            return
        self._closed = True
        try:
            for handle in (self._timer, self._sweeper):
                if handle is not None:
                    handle.cancel()
            self._timer = self._sweeper = None
            for name in list(self._ifaces):
                self._retire(self._ifaces.pop(name))
            self.log.info("packet filter closed", **{k.replace(".", "_"): v for k, v in
                                                     sorted(self.stats().items()) if v})
        except Exception:  # noqa: BLE001 - close never raises
            pass

    # -- the packet path -----------------------------------------------------------

    async def _read_loop(self, iface: _Iface) -> None:
        dev = iface.dev
        name = iface.name
        handle = self._frame_in
        serve = getattr(dev, "serve", None)
        try:
            if serve is not None:  # frames handed over in place (netif's FdDevice)
                await serve(functools.partial(self._frame_in_place, name))
            elif iface.vnet:
                while True:
                    header, frame = await dev.read_vnet()
                    handle(name, frame, header)
            else:
                while True:
                    handle(name, await dev.read(), None)
        except Closed:
            if not self._closed and self._ifaces.get(name) is iface:
                self.log.warning("interface closed", iface=name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a device bug: stop this interface, say so
            self._count("fw.read_failed")
            self.log.error("interface read failed; no longer reading it", iface=name,
                           error=f"{type(exc).__name__}: {exc}")

    def _frame_in_place(self, name: str, frame: memoryview, raw: memoryview | None) -> None:
        """:meth:`_frame_in` for a frame in the device's receive buffer (``serve``).

        ``raw`` is the packed virtio-net header (or None). The common case, a
        frame of a tracked flow, is edited and sent where it lies, its header
        passed on packed; everything else works on a copy (L2 may keep a
        packet while ARP resolves, and the buffer is read into again next),
        with the header unpacked, as :meth:`_frame_in` gets them.
        """
        try:
            partial = False
            if raw is not None:
                flags = raw[0]
                gso = raw[1]
                if flags or gso:
                    partial = flags & 1 != 0  # VNET_F_NEEDS_CSUM
                    if gso:
                        self._counters["fw.gso_in"] = self._counters.get("fw.gso_in", 0) + 1
                else:
                    raw = None  # a finished frame: sent with a zero header, as NO_OFFLOAD
            now = self._now()
            l2 = self.l2
            packet = l2.fast_input(name, frame)  # type: ignore[union-attr]
            if packet is not None:
                fast = self.engine._fast(now, name, packet, partial, True)  # type: ignore
                if fast is not None:
                    egress, out = fast
                    if len(out) + 14 == len(frame):
                        if l2.fast_output(now, egress, frame):  # type: ignore[union-attr]
                            self._transmit(egress, frame, raw)
                            return
                        buf = bytearray(frame)
                        self._emit(l2.output(now, egress, memoryview(buf)[14:],  # type: ignore
                                             _unpack(raw), frame=buf))
                    else:
                        self._emit(l2.output(now, egress,  # type: ignore[union-attr]
                                             memoryview(bytearray(out)), _unpack(raw)))
                    return
                buf = bytearray(frame)
                header = _unpack(raw)
                self._events_in(now, name, buf, [Deliver(name, memoryview(buf)[
                    14:14 + len(packet)], header)], partial, header)
            else:
                buf = bytearray(frame)
                header = _unpack(raw)
                self._events_in(now, name, buf, l2.input(now, name, buf, header),  # type: ignore
                                partial, header)
        except Exception as exc:  # noqa: BLE001 - no frame may stop the loop
            self._count("fw.internal_error")
            self._ratelimited("error", "internal_error", "frame handling failed", iface=name,
                              error=f"{type(exc).__name__}: {exc}")

    def _frame_in(self, name: str, frame: bytes, header: Any) -> None:
        try:
            now = self._now()
            l2 = self.l2
            engine = self.engine
            partial = False
            if header is not None:
                partial = header.flags & 1 != 0  # VNET_F_NEEDS_CSUM
                if header.gso_type:
                    self._counters["fw.gso_in"] = self._counters.get("fw.gso_in", 0) + 1
            # one copy, into a buffer the engine edits in place and the Ethernet
            # header is then written into: no copy of the packet behind a new header
            buf = bytearray(frame)
            packet = l2.fast_input(name, buf)  # type: ignore[union-attr]
            if packet is not None:
                # the common case: a plain frame, maybe a packet of a tracked flow
                fast = engine._fast(now, name, packet, partial, True)  # type: ignore
                if fast is not None:
                    egress, out = fast
                    if len(out) + 14 == len(buf):
                        if l2.fast_output(now, egress, buf):  # type: ignore[union-attr]
                            self._transmit(egress, buf, header)
                        else:
                            self._emit(l2.output(now, egress, out, header,  # type: ignore
                                                 frame=buf))
                    else:
                        self._emit(l2.output(now, egress, out, header))  # type: ignore
                    return
                events: list[Any] = [Deliver(name, packet, header)]
            else:
                events = l2.input(now, name, buf, header)  # type: ignore[union-attr]
            self._events_in(now, name, buf, events, partial, header)
        except Exception as exc:  # noqa: BLE001 - no frame may stop the loop
            self._count("fw.internal_error")
            self._ratelimited("error", "internal_error", "frame handling failed", iface=name,
                              error=f"{type(exc).__name__}: {exc}")

    def _events_in(self, now: int, name: str, buf: bytearray, events: list[Any],
                   partial: bool, header: Any) -> None:
        """The general path: L2's events for the frame in ``buf`` through the engine."""
        l2 = self.l2
        engine = self.engine
        for ev in events:
            if type(ev) is Deliver:
                name = ev.ingress  # the device's, or the IPv6 address riding on it
                verdict = engine.handle(now, name, ev.packet, partial_csum=partial,  # type: ignore
                                        in_place=True)
                if type(verdict) is Forward:
                    out = verdict.packet
                    if type(out) is memoryview and out.obj is buf \
                            and len(out) + 14 == len(buf):
                        self._emit(l2.output(now, verdict.egress, out, header,  # type: ignore
                                             frame=buf))
                    else:
                        self._emit(l2.output(now, verdict.egress, out, header))  # type: ignore
                else:
                    self._drop(name, verdict.reason, verdict.rule)
                    if verdict.reply:
                        self._emit(l2.output(now, name, verdict.reply, None))  # type: ignore
            elif type(ev) is Transmit:
                self._send(ev)
            else:
                self._drop(ev.iface, ev.reason)
        if l2.deadline_changed:  # type: ignore[union-attr]
            self._arm()

    def _emit(self, events: list[Any]) -> None:
        if self.l2 is not None and self.l2.deadline_changed:
            self._arm()
        for ev in events:
            if type(ev) is Transmit:
                self._send(ev)
            else:
                self._drop(ev.iface, ev.reason)

    def _send(self, ev: Transmit) -> None:
        self._transmit(ev.iface, ev.frame, ev.meta)

    def _transmit(self, name: str, frame: bytes | bytearray | memoryview, header: Any) -> None:
        """Send ``frame`` out of ``name``; ``header`` a VnetHeader, a packed one
        (from :meth:`_frame_in_place`, never all zero there) or None."""
        iface = self._ifaces.get(name)
        if iface is None:
            self._count("fw.tx_no_interface")
            return
        dev = iface.dev
        try:
            if type(frame) is memoryview and not iface.copies:
                frame = bytes(frame)  # it lies in a receive buffer that is read into again
            if header is None:
                dev.write(frame)
            elif type(header) is memoryview:
                if iface.vnet:
                    dev.write_vnet(header, frame)
                else:
                    self._finish(dev, _unpack(header), bytes(frame))
            elif header.flags == 0 and header.gso_type == 0:
                dev.write(frame)
            elif iface.vnet:
                dev.write_vnet(header, frame)
            else:
                self._finish(dev, header, frame)
        except MessageTooLong:
            self._count("fw.tx_too_long")
            self._drop(name, "packet longer than the interface MTU")
        except Closed:
            self._count("fw.tx_closed")
        except (DeviceError, ValueError, OSError) as exc:
            self._count("fw.tx_failed")
            self._drop(name, f"send failed: {exc}")

    def _finish(self, dev: Any, header: Any, frame: bytes | bytearray) -> None:
        """For an egress without the virtio-net header: finish the packet in software."""
        from ingot.plugins.netif.offload import complete

        for part in complete(header, frame, ethernet=True):
            dev.write(part)
        self._count("fw.tx_finished_in_software")

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def _drop(self, iface: str, reason: str, rule: int | None = None) -> None:
        fields = {"iface": iface, "reason": reason}
        if rule is not None:
            fields["rule"] = f"{rule:04d}"
        self.log.debug("dropped", **fields)
        self._ratelimited("info", reason, "dropped", **fields)

    def _ratelimited(self, level: str, what: str, msg: str, **fields: Any) -> None:
        now = self._now()
        last = self._last_log.get(what)
        if last is not None and now - last[0] < LOG_INTERVAL_NS:
            self._last_log[what] = (last[0], last[1] + 1)
            return
        if len(self._last_log) > 4096:  # reasons carry addresses at times: bound the table
            self._last_log.clear()
        self._last_log[what] = (now, 0)
        if last is not None and last[1]:
            fields["more_since_last"] = last[1]
        self.log.log(level, msg, **fields)

    # -- the ARP timer --------------------------------------------------------------

    def _arm(self) -> None:
        if self._closed or self.l2 is None:
            return
        self.l2.deadline_changed = False
        at = self.l2.next_deadline()
        if at is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        delay = max(0, at - self._now()) / 1e9
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _sweep(self) -> None:
        """Forget expired connections now and then (lookups skip them anyway)."""
        if self._closed or self.engine is None:
            return
        try:
            self.engine.expire(self._now())
        except Exception as exc:  # noqa: BLE001 - the timer must survive
            self._count("fw.internal_error")
            self._ratelimited("error", "internal_error", "connection sweep failed",
                              error=f"{type(exc).__name__}: {exc}")
        self._sweeper = asyncio.get_running_loop().call_later(EXPIRE_INTERVAL_S, self._sweep)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed or self.l2 is None:
            return
        try:
            self._emit(self.l2.tick(self._now()))
        except Exception as exc:  # noqa: BLE001 - the timer must survive
            self._count("fw.internal_error")
            self._ratelimited("error", "internal_error", "ARP timer failed",
                              error=f"{type(exc).__name__}: {exc}")
        self._arm()


def _unpack(raw: memoryview | None) -> Any:
    """A packed virtio-net header as L2's ``meta`` (a ``VnetHeader``), None as None."""
    if raw is None:
        return None
    from ingot.plugins.netif.linux import VnetHeader

    return VnetHeader.unpack(raw)


def connect(ctx: DeviceContext) -> PythonFilter:
    """The device factory: the filter over the ``uplink`` device, not started yet."""
    keys = ctx.keys
    uplink = ctx.deps["uplink"]
    flt = PythonFilter(uplink, ctx.log, client_backend=keys["client-backend"],
                       client_vnet=keys["client-vnet-hdr"], arp_queue=keys["arp-queue"])
    ctx.log.info("packet filter ready", backend="python", client_backend=flt.client_backend,
                 uplink_mac=uplink.mac.hex(":"))
    return flt
