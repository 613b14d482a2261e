"""The firewall appliance: the control plane of a QubesOS firewall VM.

At start it reads its own addresses from QubesDB (:func:`.control.setup_from`)
and starts the ``filter`` device (the data plane) with them. Then, as the
Qubes firewall agent does, it loads the rules of every client under
``/qubes-firewall/`` and watches QubesDB: the empty write to
``/qubes-firewall/<ip>`` reloads that client's rules (dom0 writes the
rules first, then that trigger); ``/ingot/clients/<ip>`` entries (and the
``clients`` key) attach clients to interfaces; a removed entry detaches. A
client with an IPv6 address too (``/qubes-firewall/<ipv6>/`` rules, as dom0
writes them per address family) is attached once per address, both entries
naming the same interface. IPv6 is on when QubesDB has ``/qubes-ip6`` and
``/qubes-netvm-gateway6`` (see :func:`.control.setup_from`).
A rule set that does not parse denies that client everything, is logged
as one line with the reason and written to ``/qubes-iptables-error``; the
others keep working. ``dsthost`` names are resolved through the upstream
DNS (the stub resolver of the DNS plugin over the ``stack`` device) and
resolved again when their TTL runs out; a change of address replaces the
client's rules. SIGTERM stops everything and undoes the data plane's setup.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ingot.plugins.firewall import rules as rulesmod
from ingot.signatures import (ClientRules, DeviceError, MClock, PacketFilter, QubesDB, Random,
                              Stack)

from .control import (CLIENTS_PREFIX, ERROR_PATH, SECOND, ConfigError, Dsthosts, clients_from,
                      rule_target, setup_from, upstream_resolvers)

WATCHED = ("/qubes-firewall/", CLIENTS_PREFIX, "/connected-ips")


class Firewall:
    """See the module docstring."""

    def __init__(self, qubesdb: QubesDB, filter: PacketFilter, stack: Stack, mclock: MClock,
                 random: Random, keys: Any, log: Any) -> None:
        self.qdb = qubesdb
        self.filter = filter
        self.stack = stack
        self.mclock = mclock
        self.random = random
        self.keys = keys
        self.log = log
        self.dsthosts = Dsthosts(keys.dsthost_min_ttl, keys.dsthost_max_ttl, keys.dsthost_retry)
        self.parsed: dict[str, ClientRules] = {}
        self.clients: dict[str, str] = {}
        self.resolver: Any = None
        self.setup: Any = None
        self.ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._changes: asyncio.Queue[str] = asyncio.Queue()

    # -- start ---------------------------------------------------------------
    async def start(self) -> None:
        values = await self.qdb.multiread("/qubes-")  # one round trip for every address
        try:
            self.setup = setup_from(values, self.keys.max_connections,
                                    self.keys.icmp_error_rate)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; nothing to filter for") from None
        watchers = [self.qdb.watch(prefix) for prefix in WATCHED]
        tasks = [asyncio.ensure_future(self._pump(w)) for w in watchers]
        try:
            await self.filter.start(self.setup)
            self.log.info("data plane started", uplink_ip=self.setup.uplink_ip,
                          gateway=self.setup.uplink_gateway,
                          client_gateway=self.setup.client_gateway,
                          dns=",".join(f"{v}->{u}" for v, u in zip(self.setup.virtual_dns,
                                                                    self.setup.upstream_dns)),
                          **self._ipv6_fields())
            await self._sync_clients()
            for ip in await self._targets():
                await self._load_rules(ip)
            self.log.info("ready", clients=len(self.clients), rule_sets=len(self.parsed))
            self.ready.set()
            await asyncio.gather(self._watch_loop(), self._dsthost_loop(), self._stats_loop(),
                                 *tasks)
        finally:
            for w in watchers:
                w.close()
            for t in tasks:
                t.cancel()
            if self.resolver is not None:
                self.resolver.close()
            self.log.info("stopped", **{k.replace(".", "_"): v
                                        for k, v in sorted(self._stats().items())})

    async def _pump(self, watcher: Any) -> None:
        async for path in watcher:
            self._changes.put_nowait(path)

    async def _targets(self) -> list[str]:
        paths = await self.qdb.list("/qubes-firewall/")
        return sorted({p.split("/")[2] for p in paths if p.count("/") >= 2 and p.split("/")[2]})

    # -- QubesDB changes -------------------------------------------------------
    async def _watch_loop(self) -> None:
        while True:
            path = await self._changes.get()
            target = rule_target(path)
            if target is not None:
                await self._load_rules(target)
            elif path.startswith(CLIENTS_PREFIX):
                await self._sync_clients()
            elif path in ("/connected-ips", "/connected-ips6"):
                connected = (await self.qdb.read(path) or b"").decode(
                    "ascii", "replace").split()
                self.log.info("connected clients", **{path[len("/connected-"):]:
                                                      ",".join(connected) or "none"})

    def _ipv6_fields(self) -> dict[str, str]:
        """The IPv6 addresses for the start line (``ipv6=off`` without them)."""
        s = self.setup
        if not (s.uplink_ip6 and s.client_gateway6):
            return {"ipv6": "off"}
        return {"uplink_ip6": s.uplink_ip6, "gateway6": s.uplink_gateway6 or "none",
                "client_gateway6": s.client_gateway6}

    async def _sync_clients(self) -> None:
        entries = await self.qdb.multiread(CLIENTS_PREFIX)
        wanted, problems = clients_from(entries, self.keys.clients)
        for problem in problems:
            self.log.warning("client entry ignored", reason=problem)
        for ip in [ip for ip in self.clients if self.clients[ip] != wanted.get(ip)]:
            self.filter.detach(ip)
            self.log.info("client detached", client=ip, ifname=self.clients.pop(ip))
        for ip, ifname in sorted(wanted.items()):
            if ip in self.clients:
                continue
            try:
                await self.filter.attach(ip, ifname)
            except DeviceError as exc:
                self.log.error("client not attached", client=ip, ifname=ifname, error=str(exc))
                continue
            self.clients[ip] = ifname
            self.log.info("client attached", client=ip, ifname=ifname)
            if ip in self.parsed:
                self._apply(ip)

    async def _load_rules(self, ip: str) -> None:
        prefix = f"/qubes-firewall/{ip}/"
        entries = {path[len(prefix):]: value
                   for path, value in (await self.qdb.multiread(prefix)).items()}
        parsed = rulesmod.parse_client_rules(ip, entries)
        if not entries:
            self.parsed.pop(ip, None)
            self.filter.set_rules(parsed)
            self.log.info("rules removed; client denied everything", client=ip)
            return
        self.parsed[ip] = parsed
        if parsed.error:
            self.log.error("rules rejected; client denied everything", client=ip,
                           reason=parsed.error)
            try:
                await self.qdb.write(ERROR_PATH, f"{ip}: {parsed.error}".encode()[:3071])
            except DeviceError as exc:
                self.log.warning("cannot report the error to QubesDB", error=str(exc))
        now = self.mclock.elapsed_ns()
        due = self.dsthosts.want(self._all_hostnames(), now)
        if due:
            await self._resolve(due)
        self._apply(ip)
        self.log.info("rules loaded", client=ip, rules=len(parsed.rules), policy=parsed.policy,
                      **({"dsthosts": ",".join(sorted(rulesmod.hostnames(parsed)))}
                         if rulesmod.hostnames(parsed) else {}))
        self._wake.set()

    def _all_hostnames(self) -> set[str]:
        names: set[str] = set()
        for parsed in self.parsed.values():
            names |= rulesmod.hostnames(parsed)
        return names

    def _apply(self, ip: str) -> None:
        parsed = self.parsed.get(ip)
        if parsed is None:
            return
        if rulesmod.hostnames(parsed):
            parsed = rulesmod.resolve_dsthosts(parsed, self.dsthosts.lookup())
        self.filter.set_rules(parsed)

    # -- dsthost -----------------------------------------------------------------
    def _resolver(self) -> Any:
        if self.resolver is None:
            from ingot.plugins.dns.stub_adapter import StubResolver

            upstreams = upstream_resolvers(self.setup)
            if not upstreams:
                return None
            self.resolver = StubResolver(self.stack, self.mclock, self.random, upstreams,
                                         log=self.log)
        return self.resolver

    async def _resolve(self, names: list[str]) -> set[str]:
        """Look ``names`` up (A and AAAA); the names whose addresses changed."""
        resolver = self._resolver()
        changed: set[str] = set()
        for name in names:
            now = self.mclock.elapsed_ns()
            if resolver is None:
                self.dsthosts.failed(name, now)
                self.log.warning("dsthost not resolved", name=name,
                                 reason="QubesDB names no upstream DNS")
                continue
            addresses: list[str] = []
            ttls: list[int] = []
            try:
                for rtype in ("A", "AAAA"):
                    answer = await resolver.resolve(name, rtype)
                    addresses += [str(v) for v in answer.values]
                    ttls.append(answer.ttl)
            except Exception as exc:  # noqa: BLE001 - ResolveError, or a device error
                self.dsthosts.failed(name, now)
                self.log.warning("dsthost not resolved", name=name, error=str(exc))
                continue
            if self.dsthosts.resolved(name, addresses, min(ttls) if ttls else 0, now):
                changed.add(name)
                self.log.info("dsthost resolved", name=name,
                              addresses=",".join(sorted(set(addresses))) or "none")
        return changed

    async def _dsthost_loop(self) -> None:
        while True:
            due_ns = self.dsthosts.next_due_ns()
            wait = None if due_ns is None else max(0, due_ns - self.mclock.elapsed_ns()) / SECOND
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
                continue
            except asyncio.TimeoutError:
                pass
            changed = await self._resolve(self.dsthosts.due(self.mclock.elapsed_ns()))
            for ip, parsed in self.parsed.items():
                if rulesmod.hostnames(parsed) & changed:
                    self._apply(ip)

    # -- counters ----------------------------------------------------------------
    def _stats(self) -> dict[str, int]:
        try:
            return dict(self.filter.stats())
        except Exception:  # noqa: BLE001 - counters must not stop the appliance
            return {}

    async def _stats_loop(self) -> None:
        interval = self.keys.stats_interval
        if interval <= 0:
            await asyncio.get_running_loop().create_future()
        while True:
            await asyncio.sleep(interval)
            self.log.info("counters", **{k.replace(".", "_"): v
                                         for k, v in sorted(self._stats().items())})
