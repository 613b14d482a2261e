"""The OpenVPN gateway appliance: server mode, or client mode when the config says `client`.

At start it reads the stock OpenVPN config (``config-file`` in the ``config`` store) and the files
it names (``ca``, ``cert``, ``key``, ``crl-verify``, ``tls-crypt``/``tls-auth``; or inline
blocks), checks it (:func:`~ingot.plugins.openvpn.serverconf.server_plan`: a directive it cannot
honour stops the boot with one line naming it), builds the TLS context (client certificates
required and verified against the CA, and the CRL when given) and serves clients
(:class:`~ingot.plugins.openvpn.server.Server` through
:class:`~ingot.plugins.openvpn.adapter.ServerAdapter`). Clients' packets leave through the
``tun`` device; the host gives that interface the server address (the first of the ``server``
subnet) and routes or NATs beyond it. Counters are logged every ``stats-interval`` seconds and
at stop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ingot.plugins.openvpn import config as ovconfig
from ingot.plugins.openvpn import crypto
from ingot.plugins.openvpn.adapter import ClientAdapter, ServerAdapter
from ingot.plugins.openvpn.client import Client, ClientSettings, client_tls_config
from ingot.plugins.openvpn.clientconf import ClientPlan, client_plan, is_client
from ingot.plugins.openvpn.server import Server, ServerSettings
from ingot.plugins.openvpn.serverconf import ServerPlan, files_needed, server_plan
from ingot.plugins.openvpn.tlsengine import TlsConfig
from ingot.signatures import DeviceError, KvRO, MClock, PClock, Random, Stack, Tun

ConfigError = ovconfig.ConfigError


def tls_config(plan: ServerPlan) -> TlsConfig:
    """The control channel's TLS server config: TLS 1.2 at least, client certificate required,
    checked against the CA (and the CRL: a revoked client is refused)."""
    try:
        return TlsConfig(server=True, cert_pem=plan.cert, key_pem=plan.key, ca_pem=plan.ca,
                         crl_pem=plan.crl or None, min_version=plan.tls_min)
    except ValueError as e:
        raise ConfigError(f"cannot load the certificates: {e}") from None


def _fields(counters) -> dict[str, int]:
    """Counter names as log field names (``drop.tun write`` -> ``drop_tun_write``)."""
    return {k.replace(" ", "_").replace(".", "_").replace("-", "_"): v
            for k, v in sorted(counters.items())}


def wrapper_factory(plan: ServerPlan):
    if plan.wrap == "tls-crypt":
        return lambda: crypto.TlsCrypt(plan.wrap_key, server=True)
    if plan.wrap == "tls-auth":
        return lambda: crypto.TlsAuth(plan.wrap_key, plan.key_direction, plan.auth)
    return None


class Vpn:
    """See the module docstring."""

    def __init__(self, stack: Stack, tun: Tun, config: KvRO, mclock: MClock, pclock: PClock,
                 random: Random, keys: Any, log: Any) -> None:
        self.stack = stack
        self.tun = tun
        self.config = config
        self.mclock = mclock
        self.pclock = pclock
        self.random = random
        self.keys = keys
        self.log = log
        self.server: Server | None = None
        self.client_adapter: ClientAdapter | None = None
        self.adapter: ServerAdapter | None = None
        self.ready = asyncio.Event()

    async def _read(self, name: str) -> str:
        try:
            return (await self.config.get(name)).decode()
        except (DeviceError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {name!r} from the config store: {e}") from None

    async def load(self) -> ServerPlan | ClientPlan:
        name = self.keys.config_file
        cfg = ovconfig.parse(await self._read(name), source=name)
        files = {}
        for f in files_needed(cfg):
            files[f] = await self._read(f)
        if is_client(cfg):
            return client_plan(cfg, files)
        return server_plan(cfg, files)

    async def start(self) -> None:
        plan = await self.load()
        if isinstance(plan, ClientPlan):
            await self._start_client(plan)
            return
        settings = ServerSettings(
            tls=tls_config(plan), network=plan.network, wrapper=wrapper_factory(plan),
            v2_key=plan.v2_key,
            pool=plan.pool, data_ciphers=plan.data_ciphers, ping_s=plan.ping_s,
            ping_restart_s=plan.ping_restart_s, push=plan.push,
            client_to_client=plan.client_to_client, max_clients=plan.max_clients,
            hand_window_s=plan.hand_window_s, tun_mtu=plan.tun_mtu, reneg_s=plan.reneg_s, auth=plan.auth,
            tran_window_s=plan.tran_window_s, tls_ekm=self.keys.tls_ekm)
        self.server = Server(settings, self.random.generate)
        self.adapter = ServerAdapter(self.server, self.stack, self.tun, proto=plan.proto,
                                     host=plan.host, port=plan.port, mclock=self.mclock,
                                     pclock=self.pclock, log=self.log)
        await self.adapter.start()
        self.log.info("ready", network=str(plan.network), server=str(settings.server_address),
                      control=plan.wrap or "none", ciphers=":".join(plan.data_ciphers),
                      tun_mtu=getattr(self.tun, "mtu", None))
        self.ready.set()
        stats = asyncio.ensure_future(self._stats())
        try:
            await self.adapter.serve()
        finally:
            stats.cancel()
            self._log_counters()
            self.adapter.close()

    async def _start_client(self, plan: ClientPlan) -> None:
        try:
            ctx = client_tls_config(plan.ca, plan.cert, plan.key, min_version=plan.tls_min)
        except ValueError as e:
            raise ConfigError(f"cannot load the certificates: {e}") from None
        if plan.wrap == "tls-crypt-v2":
            wrapper = plan.v2_key.wrapper
        elif plan.wrap == "tls-crypt":
            def wrapper():
                return crypto.TlsCrypt(plan.wrap_key, server=False)
        elif plan.wrap == "tls-auth":
            def wrapper():
                return crypto.TlsAuth(plan.wrap_key, plan.key_direction, plan.auth)
        else:
            wrapper = None
        settings = ClientSettings(ctx, wrapper=wrapper, data_ciphers=plan.data_ciphers,
                                  auth=plan.auth, proto=plan.proto, reneg_s=plan.reneg_s,
                                  reneg_bytes=plan.reneg_bytes, reneg_pkts=plan.reneg_pkts,
                                  tran_window_s=plan.tran_window_s,
                                  hand_window_s=plan.hand_window_s, server_eku=plan.server_eku,
                                  verify_server_name=plan.verify_name,
                                  tls_ekm=self.keys.tls_ekm)
        self.client_adapter = ClientAdapter(
            lambda now: Client(settings, self.random.generate, now), self.stack, self.tun,
            proto=plan.proto, host=plan.host, port=plan.port, mclock=self.mclock,
            pclock=self.pclock, log=self.log)
        self.log.info("ready", mode="client", remote=f"{plan.host}:{plan.port}",
                      proto=plan.proto, control=plan.wrap or "none",
                      ciphers=":".join(plan.data_ciphers))
        self.ready.set()
        try:
            await self.client_adapter.run()
        finally:
            client = self.client_adapter.client
            counters = {**self.client_adapter.counters, **(client.counters if client else {})}
            self.log.info("counters", connections=self.client_adapter.connections,
                          **_fields(counters))

    def _log_counters(self) -> None:
        if self.server is not None:
            self.log.info("counters", clients=len(self.server.peers),
                          **_fields(self.server.counters))

    async def _stats(self) -> None:
        interval = self.keys.stats_interval
        if not interval:
            return
        while True:
            await asyncio.sleep(interval)
            self._log_counters()
