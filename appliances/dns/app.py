"""The DNS appliance: an authoritative server, primary or secondary.

Primary: zones are the ``<zone>.zone`` files of the ``zones`` store
(:class:`~.zones.ZoneSet`), checked every ``reload`` seconds; a broken file
keeps the zone at its last good version. What the server changes itself
(dynamic updates) goes to the ``store`` device (zone file + journal in one
batch; one git commit with the ``git`` backend) *before* the update is
answered; an update that cannot be stored is not answered and is undone
(the zone goes back to the version before it). Updates are handled one at
a time (see :class:`~ingot.plugins.dns.adapter.DnsService`), so a
SIGKILL loses at most what was not acknowledged yet. At start a stored
version with a higher serial wins over the file.
Every new version is journalled (IXFR) and NOTIFY goes to ``notify`` peers.

Secondary (``secondary-of``): the ``secondary-zones`` are pulled from the
primary by SOA refresh/retry/expire and on NOTIFY (IXFR, AXFR fallback),
kept in ``store`` and served.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from ingot.plugins.dns import acl, journal, notify, secondary, tsig, update, xfr
from ingot.plugins.dns.adapter import DnsService
from ingot.plugins.dns.server import ServerState
from ingot.plugins.dns.zone import Zone, name_key
from ingot.signatures import DeviceError, KvRO, KvRW, MClock, PClock, Random, Stack

from .zones import ZoneSet, ZoneStore

SECOND = 1_000_000_000


def _peer(text: str, keyring: dict[str, tsig.Key], key_name: str = "") -> acl.Peer:
    """``host``, ``host:port`` or ``[v6]:port`` (port 53 by default), with an optional key."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    key = keyring.get(tsig.canonical_name(key_name)) if key_name else None
    if key_name and key is None:
        raise ValueError(f"no TSIG key named {key_name!r} in --tsig-keys")
    return acl.Peer(host, int(port) if port else 53, key)


def _notify_peer(text: str, keyring: dict[str, tsig.Key]) -> acl.Peer:
    """A ``--notify`` entry: ``host[:port]``, then optionally ``key:NAME`` (space-separated,
    as in ACL rules): the ``--tsig-keys`` key that signs the NOTIFYs to that peer."""
    words = text.split()
    if not words or len(words) > 2 or (len(words) == 2 and not words[1].lower().startswith("key:")):
        raise ValueError(f"--notify entry {text!r} is not 'host[:port] [key:NAME]'")
    key_name = words[1][4:] if len(words) == 2 else ""
    if len(words) == 2 and not key_name:
        raise ValueError(f"--notify entry {text!r}: empty key name")
    return _peer(words[0], keyring, key_name)


class Dns:
    """The appliance: see the module docstring."""

    def __init__(self, stack: Stack, zones: KvRO, store: KvRW, pclock: PClock, mclock: MClock,
                 random: Random, keys: Any, log: Any) -> None:
        self.stack = stack
        self.keys = keys
        self.log = log
        self.pclock = pclock
        self.mclock = mclock
        self.random = random
        self.zoneset = ZoneSet(zones, log)
        self.store = ZoneStore(store, log)
        self.service: DnsService | None = None
        self.ready = asyncio.Event()
        self.keyring = tsig.keyring([tsig.parse_key(t) for t in keys.tsig_keys])
        self.notify_peers = [_notify_peer(p, self.keyring) for p in keys.notify]
        self.notifier = notify.NotifySender(self._new_id)
        self.secondaries: dict[str, secondary.Secondary] = {}
        self._udp_clients: dict[str, Any] = {}
        self._tcp: dict[tuple[str, int], Any] = {}
        """Transfer connections by (zone, the zone's connection number): every
        zone's :class:`~.secondary.Secondary` numbers its own from 1."""
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._persist_lock = asyncio.Lock()
        self._push_lock = asyncio.Lock()

    # -- time, ids -----------------------------------------------------------
    def _now_ns(self) -> int:
        s, ns = self.pclock.now()
        return s * SECOND + ns

    def _new_id(self) -> int:
        return self.random.randbelow(65536)

    @property
    def state(self) -> ServerState:
        assert self.service is not None
        return self.service.state

    @state.setter
    def state(self, value: ServerState) -> None:
        assert self.service is not None
        self.service.state = value

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- start ---------------------------------------------------------------
    async def start(self) -> None:
        keys = self.keys
        secondary_of = keys.secondary_of
        stored, journals = await self.store.load()
        zones: dict[str, Zone] = {}
        if not secondary_of:
            await self.zoneset.refresh()
            zones.update(self.zoneset.zones)
            for origin, zone in stored.items():
                if origin not in zones or journal.serial_gt(zone.serial, zones[origin].serial):
                    self.log.info("serving the stored version (changed by updates)",
                                  zone=origin, serial=zone.serial)
                    zones[origin] = zone
        if keys.update_acl and type(self.store.store).__name__ == "MemoryStore":
            self.log.warning("updates are allowed but the store is memory: they are lost when "
                             "the process stops (configure --store direct or git)")
        config = xfr.TransferConfig(
            keyring=self.keyring,
            transfer_acl=acl.parse_acl(keys.transfer_acl),
            update_acl=acl.parse_acl(keys.update_acl),
            notify_acl=acl.parse_acl([f"{p}" for p in self._notify_sources()]),
            journals={name_key(o): j for o, j in journals.items()},
            secondary_zones=frozenset(name_key(z) for z in keys.secondary_zones),
        )
        state = ServerState.create(zones.values(), handlers={4: notify.handle_notify,
                                                             5: update.handle_update},
                                   xfr_handler=xfr.handle_xfr).with_ext(xfr.EXT, config)
        self.service = DnsService(self.stack, state, self._now_ns, self.log,
                                  tcp_idle_s=keys.tcp_idle)
        self.service.on_events = self._on_events
        self.service.on_notify_response = self._on_notify_response
        host, port = await self.service.start(keys.host, keys.port)
        if secondary_of:
            self._start_secondaries(secondary_of, stored)
        if not zones and not secondary_of:
            self.log.warning("no zone loaded: every query is REFUSED until one is")
        for origin, zone in sorted(zones.items()):
            self.log.info("zone loaded", zone=origin, serial=zone.serial)
        self.log.info("listening", host=host, port=port, zones=len(zones),
                      mode="secondary" if secondary_of else "primary")
        self.ready.set()
        try:
            await asyncio.gather(self._reload_loop(), self._timer_loop())
        finally:
            for task in list(self._tasks):
                task.cancel()
            for flow in self._tcp.values():
                flow.close()
            for sock in self._udp_clients.values():
                sock.close()
            self.service.close()
            self.log.info("stopped", **dict(self.service.stats))

    def _notify_sources(self) -> list[str]:
        primary = self.keys.secondary_of
        if not primary:
            return []
        peer = _peer(primary, self.keyring)
        rule = f"{peer.address}"
        if self.keys.secondary_key:
            rule += f" key:{self.keys.secondary_key}"
        return [rule]

    # -- primary: reload, updates, NOTIFY out -------------------------------------
    async def _reload_loop(self) -> None:
        if self.keys.secondary_of or self.keys.reload <= 0:
            await asyncio.get_running_loop().create_future()
        while True:
            await asyncio.sleep(self.keys.reload)
            for zone in await self.zoneset.refresh():
                self._file_changed(zone)

    def _file_changed(self, zone: Zone) -> None:
        origin = str(zone.origin)
        old = self.state.zone(origin)
        if old is not None and not journal.serial_gt(zone.serial, old.serial):
            self.log.warning("zone file changed without a higher serial; not loaded",
                             zone=origin, file_serial=zone.serial, serving=old.serial)
            return
        self._install(origin, zone, old.to_records() if old is not None else None)
        self.log.info("zone loaded", zone=origin, serial=zone.serial,
                      previous=old.serial if old else "none")
        self._notify(zone)

    def _install(self, origin: str, zone: Zone, old_records: list | None) -> None:
        state = self.state.with_zone(zone)
        if old_records is not None:
            config = xfr.config_of(state)
            key = name_key(origin)
            jr = config.journal(key)
            jr.append(journal.diff(old_records, zone.to_records()))
            config = dataclasses.replace(config, journals={**config.journals, key: jr})
            state = state.with_ext(xfr.EXT, config)
        self.state = state

    def _notify(self, zone: Zone) -> None:
        if not self.notify_peers:
            return
        soa = zone.get(zone.origin, 6)
        sends = self.notifier.zone_changed(str(zone.origin), soa.records(zone.origin)[0],
                                           self.notify_peers, self.mclock.elapsed_ns(),
                                           now_s=self._now_ns() // SECOND)
        self._send_udp(sends)
        self._wake.set()

    def _send_udp(self, sends: list[Any]) -> None:
        udp = self.service.udp if self.service else None
        for s in sends:
            if udp is not None:
                udp.sendto(s.wire, s.dst)

    async def _on_events(self, events: tuple[Any, ...]) -> None:
        """Persist what an UPDATE changed before it is answered; then NOTIFY."""
        for ev in events:
            if isinstance(ev, update.ZoneChanged):
                jr = ev.journal
                if jr is None:
                    jr = xfr.config_of(self.state).journals.get(name_key(ev.origin))
                try:
                    async with self._persist_lock:
                        await self.store.save(ev.origin, ev.records, jr,
                                              f"update {ev.origin} serial {ev.zone.serial}")
                except BaseException:
                    self._undo(ev)
                    raise
                self.log.info("zone updated", zone=ev.origin, serial=ev.zone.serial,
                              removed=len(ev.change.removed), added=len(ev.change.added))
                self._push_soon()
                self._notify(ev.zone)
            elif isinstance(ev, notify.RefreshNow):
                sec = self.secondaries.get(str(ev.origin).lower().rstrip(".") + ".")
                if sec is not None:
                    self._run_actions(sec, sec.notify(self._now_ns(), ev.serial))

    def _push_soon(self) -> None:
        """After a stored change: push the store to its remote (``--store-remote``) in the
        background; pushes run one at a time, a failed one is retried by the next."""
        if self.store.has_remote:
            self._spawn(self._push())

    async def _push(self) -> None:
        async with self._push_lock:
            await self.store.push()

    def _undo(self, ev: update.ZoneChanged) -> None:
        """Put back the version before an update that could not be stored (unless
        something else replaced the zone meanwhile), so nothing unstored is served."""
        if ev.previous is None or self.state.zone(ev.origin) is not ev.zone:
            return
        key = name_key(ev.origin)
        config = xfr.config_of(self.state)
        journals = {k: j for k, j in config.journals.items() if k != key}
        if ev.previous_journal is not None:
            journals[key] = ev.previous_journal
        self.state = self.state.with_zone(ev.previous).with_ext(
            xfr.EXT, dataclasses.replace(config, journals=journals))
        self.log.warning("update undone: it could not be stored", zone=ev.origin,
                         serial=ev.previous.serial)

    def _on_notify_response(self, src: tuple[str, int], data: bytes) -> None:
        for done in self.notifier.handle_response(src, data, self.mclock.elapsed_ns(),
                                                      now_s=self._now_ns() // SECOND):
            self.log.info("notify answered", zone=done.origin,
                          peer=f"{done.peer.address}:{done.peer.port}", rcode=done.rcode)

    # -- secondary -----------------------------------------------------------------
    def _start_secondaries(self, primary: str, stored: dict[str, Zone]) -> None:
        peer = _peer(primary, self.keyring, self.keys.secondary_key)
        now = self._now_ns()
        for name in self.keys.secondary_zones:
            origin = name.lower().rstrip(".") + "."
            zone = stored.get(origin)
            if zone is not None:
                self.state = self.state.with_zone(zone)
            sec = secondary.Secondary(origin, [peer], new_id=self._new_id,
                                      records=zone.to_records() if zone else None, now_ns=now)
            self.secondaries[origin] = sec
        self._wake.set()

    async def _client_udp(self, origin: str) -> Any:
        sock = self._udp_clients.get(origin)
        if sock is None:
            host = "::" if ":" in self.keys.host else "0.0.0.0"
            sec = self.secondaries[origin]
            sock = await self.stack.bind_udp(
                host, 0, lambda data, src: self._run_actions(
                    sec, sec.handle_udp(src, data, self._now_ns())))
            self._udp_clients[origin] = sock
        return sock

    def _run_actions(self, sec: secondary.Secondary, actions: list[Any]) -> None:
        for act in actions:
            if isinstance(act, notify.SendUdp):
                self._spawn(self._send_client(sec.origin, act))
            elif isinstance(act, secondary.OpenTcp):
                self._spawn(self._transfer(sec, act))
            elif isinstance(act, secondary.CloseTcp):
                flow = self._tcp.pop((sec.origin, act.conn), None)
                if flow is not None:
                    flow.close()
            elif isinstance(act, secondary.ZoneLoaded):
                self._spawn(self._zone_loaded(act))
            elif isinstance(act, secondary.ZoneExpired):
                self.state = self.state.without_zone(act.origin)
                self.log.error("zone expired: no primary reached in time", zone=act.origin)
            elif isinstance(act, secondary.TransferFailed):
                self.log.warning("refresh failed", zone=act.origin,
                                 primary=f"{act.primary.address}:{act.primary.port}",
                                 reason=act.reason)
        self._wake.set()

    async def _send_client(self, origin: str, act: Any) -> None:
        sock = await self._client_udp(origin)
        sock.sendto(act.wire, act.dst)

    async def _transfer(self, sec: secondary.Secondary, act: Any) -> None:
        flow = None
        key = (sec.origin, act.conn)
        try:
            flow = await self.stack.connect_tcp(act.dst[0], act.dst[1], timeout_s=10)
            self._tcp[key] = flow
            await flow.write(len(act.wire).to_bytes(2, "big") + act.wire)
            while key in self._tcp:
                size = int.from_bytes(await flow.readexactly(2), "big")
                data = await flow.readexactly(size)
                self._run_actions(sec, sec.handle_tcp_message(act.conn, data, self._now_ns()))
        except (DeviceError, OSError) as exc:
            self.log.debug("transfer connection ended", zone=sec.origin, error=str(exc))
        finally:
            if self._tcp.pop(key, None) is not None or flow is None:
                self._run_actions(sec, sec.tcp_closed(act.conn, self._now_ns()))
            if flow is not None:
                flow.close()

    async def _zone_loaded(self, act: Any) -> None:
        origin = act.origin
        try:
            zone = Zone.from_records(origin, act.records)
        except ValueError as exc:
            self.log.error("transferred zone rejected", zone=origin, error=str(exc))
            return
        config = xfr.config_of(self.state)
        key = name_key(origin)
        jr = config.journal(key)
        for change in act.changes:
            jr.append(change)
        self.state = self.state.with_zone(zone).with_ext(
            xfr.EXT, dataclasses.replace(config, journals={**config.journals, key: jr}))
        try:
            async with self._persist_lock:
                await self.store.save(origin, act.records, jr,
                                      f"{act.kind} {origin} serial {act.serial}")
            self._push_soon()
        except DeviceError as exc:
            self.log.error("cannot store the transferred zone", zone=origin, error=str(exc))
        self.log.info("zone transferred", zone=origin, serial=act.serial, kind=act.kind,
                      records=len(act.records))
        self._notify(zone)

    # -- timers --------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while True:
            deadlines = []
            mono = self.mclock.elapsed_ns()
            now = self._now_ns()
            nd = self.notifier.next_deadline()
            if nd is not None:
                deadlines.append(nd - mono)
            for sec in self.secondaries.values():
                sd = sec.next_deadline()
                if sd is not None:
                    deadlines.append(sd - now)
            wait = max(0, min(deadlines)) / SECOND if deadlines else None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            mono = self.mclock.elapsed_ns()
            now = self._now_ns()
            for out in self.notifier.tick(mono):
                if isinstance(out, notify.NotifyFailed):
                    self.log.warning("notify not answered", zone=out.origin,
                                     peer=f"{out.peer.address}:{out.peer.port}")
                else:
                    self._send_udp([out])
            for sec in list(self.secondaries.values()):
                sd = sec.next_deadline()
                if sd is not None and sd <= now:
                    self._run_actions(sec, sec.tick(now))

