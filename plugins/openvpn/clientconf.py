"""A stock OpenVPN 2.6 client config turned into a :class:`ClientPlan` (sans-I/O).

Reads ``client`` (or ``tls-client`` + ``pull``), ``remote HOST [PORT [PROTO]]`` (the first one;
HOST must be an address literal: the appliance does not resolve names), ``proto``, ``port``,
``ca``/``cert``/``key``, ``tls-crypt``, ``tls-crypt-v2`` (a client key) or ``tls-auth FILE 1``, ``auth``, ``data-ciphers``,
``remote-cert-tls server``, ``verify-x509-name NAME name``, ``reneg-sec``, ``reneg-bytes``,
``reneg-pkts``, ``tran-window``, ``hand-window``, ``tls-version-min``, ``dev tun``. What it cannot honour is a :class:`~.config.ConfigError` naming
the line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import crypto
from .config import Config, ConfigError
from .serverconf import (_int, _where, auth_digest, control_wrap, data_ciphers, tls_min_version,
                         tunnel_checks)

__all__ = ["ClientPlan", "client_plan", "is_client"]


@dataclass(frozen=True)
class ClientPlan:
    proto: str
    host: str
    port: int
    ca: str
    cert: str
    key: str
    wrap: str | None
    wrap_key: crypto.Key2 | None
    key_direction: int | None
    auth: str
    data_ciphers: tuple[str, ...]
    server_eku: bool
    verify_name: str | None
    reneg_s: int
    tran_window_s: int
    hand_window_s: int
    v2_key: crypto.TlsCryptV2ClientKey | None = None
    """tls-crypt-v2: our client key (Kc and the server-wrapped WKc)."""
    reneg_bytes: int = 0
    reneg_pkts: int = 0
    tls_min: str = "1.2"


def is_client(cfg: Config) -> bool:
    return cfg.has("client") or cfg.has("tls-client")


def client_plan(cfg: Config, files: dict[str, str]) -> ClientPlan:
    def text(name: str) -> str:
        d = cfg.last(name)
        if d is None:
            raise ConfigError(f"{cfg.source}: `{name}` is required in client mode")
        if d.inline is not None:
            return d.inline
        try:
            return files[d.args[0]]
        except KeyError:
            raise ConfigError(f"{_where(cfg, d)}: {name} file {d.args[0]!r} not found in the "
                              "config store") from None

    tunnel_checks(cfg)
    for name in ("server", "mode", "tls-server", "client-to-client", "ifconfig-pool"):
        if (d := cfg.last(name)) is not None:
            raise ConfigError(f"{_where(cfg, d)}: `{name}` is a server directive; this config "
                              "says `client`")
    remote = cfg.all("remote")
    if not remote:
        raise ConfigError(f"{cfg.source}: `remote HOST [PORT]` is required in client mode")
    r = remote[0]
    try:
        host = str(ipaddress.IPv4Address(r.args[0]))
    except ValueError:
        raise ConfigError(f"{_where(cfg, r)}: remote {r.args[0]!r} must be an IPv4 address "
                          "(the gateway does not resolve names)") from None
    port_d = cfg.last("rport") or cfg.last("port")
    port = 1194
    if port_d is not None:
        port = _int(cfg, port_d, port_d.args[0], "port", 1, 65535)
    if len(r.args) > 1:
        port = _int(cfg, r, r.args[1], "remote port", 1, 65535)
    proto_d = r if len(r.args) > 2 else cfg.last("proto")
    proto = (r.args[2] if len(r.args) > 2 else cfg.value("proto", "udp")).lower()
    base = {"udp": "udp", "udp4": "udp", "tcp": "tcp", "tcp-client": "tcp", "tcp4": "tcp",
            "tcp4-client": "tcp"}.get(proto)
    if base is None:
        raise ConfigError(f"{_where(cfg, proto_d or r)}: proto {proto!r} is not "
                          "supported (udp, tcp-client)")
    wrap, wrap_key, direction = control_wrap(cfg, text)
    v2_key = None
    if wrap == "tls-crypt-v2":
        try:
            v2_key = crypto.TlsCryptV2ClientKey.from_text(text("tls-crypt-v2"))
        except ValueError as e:
            raise ConfigError(f"{_where(cfg, cfg.last('tls-crypt-v2'))}: tls-crypt-v2 client "
                              f"key: {e}") from None
    ciphers = data_ciphers(cfg)
    rct = cfg.last("remote-cert-tls")
    if rct is not None and rct.args[0] != "server":
        raise ConfigError(f"{_where(cfg, rct)}: a client checks `remote-cert-tls server`")
    verify_name = None
    if (d := cfg.last("verify-x509-name")) is not None:
        kind = d.args[1] if len(d.args) > 1 else "subject"
        if kind != "name":
            raise ConfigError(f"{_where(cfg, d)}: only `verify-x509-name NAME name` (the common "
                              "name) is supported")
        verify_name = d.args[0]
    reneg_s = 3600
    if (d := cfg.last("reneg-sec")) is not None:
        reneg_s = _int(cfg, d, d.args[0], "reneg-sec", 0)
    limits = {}
    for name in ("reneg-bytes", "reneg-pkts"):
        d = cfg.last(name)
        limits[name] = _int(cfg, d, d.args[0], name, 0) if d is not None else 0
    tran = cfg.last("tran-window")
    hw = cfg.last("hand-window")
    return ClientPlan(
        proto=base, host=host, port=port, ca=text("ca"), cert=text("cert"), key=text("key"),
        wrap=wrap, wrap_key=wrap_key, key_direction=direction,
        auth=auth_digest(cfg), data_ciphers=ciphers,
        server_eku=rct is not None, verify_name=verify_name, reneg_s=reneg_s,
        tran_window_s=_int(cfg, tran, tran.args[0], "tran-window", 1) if tran else 60,
        hand_window_s=_int(cfg, hw, hw.args[0], "hand-window", 1) if hw else 60, v2_key=v2_key,
        reneg_bytes=limits["reneg-bytes"], reneg_pkts=limits["reneg-pkts"],
        tls_min=tls_min_version(cfg))
