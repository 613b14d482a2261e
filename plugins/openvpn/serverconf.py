"""A stock OpenVPN 2.6 server config turned into what :class:`~.server.Server` needs (sans-I/O).

:func:`files_needed` names the files a config refers to (``ca ca.crt``; inline blocks need
none); the caller reads them from its store and passes their text to :func:`server_plan`, which
checks every directive the server mode acts on and returns a :class:`ServerPlan`. Anything this
server cannot do as written (``dev tap``, ``topology net30``, ``proto`` other than udp/tcp, a
cipher it lacks) is a :class:`~.config.ConfigError` naming the line, never a silent change.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import crypto
from .config import Config, ConfigError, Directive, split_push
from .crypto import AEAD_CIPHERS, CBC_CIPHERS

__all__ = ["ServerPlan", "files_needed", "server_plan", "control_wrap", "data_ciphers",
           "tunnel_checks", "auth_digest", "tls_min_version", "FILE_DIRECTIVES"]

AUTH_DIGESTS = ("SHA1", "SHA256", "SHA384", "SHA512")
"""``auth`` digests we have (tls-auth HMAC and the CBC ciphers' HMAC)."""

FILE_DIRECTIVES = ("ca", "cert", "key", "crl-verify", "tls-crypt", "tls-auth", "tls-crypt-v2",
                   "dh")


@dataclass(frozen=True)
class ServerPlan:
    proto: str  # "udp" or "tcp"
    host: str
    port: int
    network: ipaddress.IPv4Network
    pool: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None
    ca: str
    cert: str
    key: str
    crl: str | None
    wrap: str | None  # "tls-crypt", "tls-auth" or None
    wrap_key: crypto.Key2 | None
    key_direction: int | None
    auth: str
    data_ciphers: tuple[str, ...]
    ping_s: int
    ping_restart_s: int
    push: tuple[tuple[str, ...], ...]
    client_to_client: bool
    max_clients: int
    hand_window_s: int
    tun_mtu: int
    reneg_s: int = 3600
    tran_window_s: int = 60
    v2_key: crypto.TlsCryptV2ServerKey | None = None
    tls_min: str = "1.2"
    """The lowest TLS version accepted: "1.2" or "1.3" (``tls-version-min``)."""


def _where(cfg: Config, d: Directive) -> str:
    return f"{cfg.source}:{d.line}"


def files_needed(cfg: Config) -> list[str]:
    """The store keys of the files the config names (not inline), in order."""
    names = []
    for name in FILE_DIRECTIVES:
        d = cfg.last(name)
        if d is not None and d.inline is None and d.args and d.args[0] != "none":
            names.append(d.args[0])
    return names


def _int(cfg: Config, d: Directive, text: str, what: str, least: int = 0,
         most: int = 1 << 31) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{_where(cfg, d)}: {what} must be a number, got {text!r}") from None
    if not least <= value <= most:
        raise ConfigError(f"{_where(cfg, d)}: {what} must be {least} to {most}, got {value}")
    return value


def _addr(cfg: Config, d: Directive, text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(f"{_where(cfg, d)}: {text!r} is not an IPv4 address") from None


def control_wrap(cfg: Config, text) -> tuple[str | None, crypto.Key2 | None, int | None]:
    """The control channel's wrapping: (``tls-crypt``/``tls-auth``/None, its key, the
    tls-auth key direction); ``text(name)`` reads a directive's file. ``tls-crypt-v2`` gives
    ``("tls-crypt-v2", None, None)``: its key (a server's or a client's) is the caller's."""
    present = [cfg.last(n) for n in ("tls-crypt-v2", "tls-crypt", "tls-auth") if cfg.has(n)]
    if len(present) > 1:
        later = max(present, key=lambda d: d.line)
        names = " and ".join(d.name for d in sorted(present, key=lambda d: d.line))
        raise ConfigError(f"{_where(cfg, later)}: {names} cannot both be used (one wrapping)")
    if cfg.has("tls-crypt-v2"):
        return "tls-crypt-v2", None, None
    for name in ("tls-crypt", "tls-auth"):
        if cfg.has(name):
            d = cfg.last(name)
            try:
                key = crypto.parse_static_key(text(name))
            except ValueError as e:
                raise ConfigError(f"{_where(cfg, d)}: {name} key: {e}") from None
            direction = None
            if name == "tls-auth":
                arg = d.args[1] if len(d.args) > 1 else cfg.value("key-direction")
                direction = None if arg is None else _int(cfg, d, arg, "key direction", 0, 1)
            return name, key, direction
    return None, None, None


def data_ciphers(cfg: Config) -> tuple[str, ...]:
    """``data-ciphers`` (OpenVPN 2.6's default list when absent), each one we have."""
    text = cfg.value("data-ciphers", "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305")
    ciphers = tuple(c.upper() for c in text.split(":") if c)
    if not ciphers:
        raise ConfigError(f"{_where(cfg, cfg.last('data-ciphers'))}: data-ciphers names no cipher")
    for c in ciphers:
        if c not in AEAD_CIPHERS and c not in CBC_CIPHERS:
            raise ConfigError(f"{_where(cfg, cfg.last('data-ciphers'))}: data cipher {c!r} is "
                              f"not supported ({', '.join([*AEAD_CIPHERS, *CBC_CIPHERS])})")
    return ciphers


def tunnel_checks(cfg: Config) -> None:
    """What either mode needs of the tunnel: ``dev tun``, ``dev-type tun``, ``topology subnet``."""
    dev = cfg.last("dev")
    if dev is not None and not dev.args[0].startswith("tun"):
        raise ConfigError(f"{_where(cfg, dev)}: only `dev tun` is supported (IP packets), "
                          f"not {dev.args[0]!r}")
    dt = cfg.last("dev-type")
    if dt is not None and dt.args[0] != "tun":
        raise ConfigError(f"{_where(cfg, dt)}: only dev-type tun is supported")
    topo = cfg.last("topology")
    if topo is not None and topo.args[0] != "subnet":
        raise ConfigError(f"{_where(cfg, topo)}: only `topology subnet` is supported, "
                          f"not {topo.args[0]!r}")


def auth_digest(cfg: Config) -> str:
    """``auth`` (default SHA1), one we have."""
    d = cfg.last("auth")
    name = (d.args[0] if d is not None else "SHA1").upper()
    if name not in AUTH_DIGESTS:
        raise ConfigError(f"{_where(cfg, d)}: auth {d.args[0]!r} is not supported "
                          f"({', '.join(AUTH_DIGESTS)})")
    return name


def tls_min_version(cfg: Config) -> str:
    """``tls-version-min 1.3`` raises our minimum; 1.0-1.2 leave it at 1.2 (never lower)."""
    d = cfg.last("tls-version-min")
    if d is None:
        return "1.2"
    if len(d.args) > 1 and d.args[1] != "or-highest":
        raise ConfigError(f"{_where(cfg, d)}: tls-version-min VERSION [or-highest], "
                          f"not {d.args[1]!r}")
    if d.args[0] not in ("1.0", "1.1", "1.2", "1.3"):
        raise ConfigError(f"{_where(cfg, d)}: tls-version-min {d.args[0]!r} (1.2 or 1.3)")
    return "1.3" if d.args[0] == "1.3" else "1.2"


def server_plan(cfg: Config, files: dict[str, str]) -> ServerPlan:
    """Check the config for server mode; ``files`` maps the names :func:`files_needed` gave to
    their text."""

    def text(name: str, required: bool = True) -> str | None:
        d = cfg.last(name)
        if d is None:
            if required:
                raise ConfigError(f"{cfg.source}: `{name}` is required in server mode")
            return None
        if d.inline is not None:
            return d.inline
        try:
            return files[d.args[0]]
        except KeyError:
            raise ConfigError(f"{_where(cfg, d)}: {name} file {d.args[0]!r} not found in the "
                              "config store") from None

    if cfg.has("client") or cfg.has("tls-client"):
        d = cfg.last("client") or cfg.last("tls-client")
        raise ConfigError(f"{_where(cfg, d)}: this is a client config; the gateway's server "
                          "mode needs `server NET MASK`")
    tunnel_checks(cfg)
    if (d := cfg.last("mode")) is not None and d.args[0] != "server":
        raise ConfigError(f"{_where(cfg, d)}: only `mode server` is supported, not {d.args[0]!r}")
    srv = cfg.last("server")
    if srv is None:
        raise ConfigError(f"{cfg.source}: `server NET MASK` is required (the tunnel subnet)")
    try:
        network = ipaddress.IPv4Network(f"{srv.args[0]}/{srv.args[1]}")
    except ValueError as e:
        raise ConfigError(f"{_where(cfg, srv)}: bad server subnet: {e}") from None
    if network.num_addresses < 4:
        raise ConfigError(f"{_where(cfg, srv)}: the server subnet is too small")
    if len(srv.args) > 2:
        raise ConfigError(f"{_where(cfg, srv)}: `server ... {srv.args[2]}` is not supported "
                          "(the gateway hands out the subnet's addresses itself)")
    pool = None
    if (d := cfg.last("ifconfig-pool")) is not None:
        lo, hi = _addr(cfg, d, d.args[0]), _addr(cfg, d, d.args[1])
        if lo not in network or hi not in network or lo > hi:
            raise ConfigError(f"{_where(cfg, d)}: ifconfig-pool must lie inside {network}")
        pool = (lo, hi)

    proto = (cfg.value("proto", "udp") or "udp").lower()
    pd = cfg.last("proto")
    base = {"udp": "udp", "udp4": "udp", "tcp": "tcp", "tcp-server": "tcp", "tcp4": "tcp",
            "tcp4-server": "tcp"}.get(proto)
    if base is None:
        raise ConfigError(f"{_where(cfg, pd)}: proto {proto!r} is not supported "
                          "(udp, udp4, tcp, tcp-server)")
    port_d = cfg.last("lport") or cfg.last("port")
    port = _int(cfg, port_d, port_d.args[0], "port", 1, 65535) if port_d else 1194
    host = "0.0.0.0"
    if (d := cfg.last("local")) is not None:
        host = str(_addr(cfg, d, d.args[0]))  # an address literal: the gateway resolves nothing

    wrap, wrap_key, direction = control_wrap(cfg, text)
    v2_key = None
    if wrap == "tls-crypt-v2":
        d = cfg.last("tls-crypt-v2")
        try:
            v2_key = crypto.TlsCryptV2ServerKey.from_text(text("tls-crypt-v2"))
        except ValueError as e:
            raise ConfigError(f"{_where(cfg, d)}: tls-crypt-v2 server key: {e}") from None
    auth = auth_digest(cfg)

    ciphers = data_ciphers(cfg)

    ping_s, restart_s = 10, 120
    if (d := cfg.last("keepalive")) is not None:
        ping_s = _int(cfg, d, d.args[0], "keepalive interval", 1)
        restart_s = 2 * _int(cfg, d, d.args[1], "keepalive timeout", 1)
    if (d := cfg.last("ping")) is not None:
        ping_s = _int(cfg, d, d.args[0], "ping", 1)
    if (d := cfg.last("ping-restart")) is not None:
        restart_s = _int(cfg, d, d.args[0], "ping-restart", 1)

    push = []
    for d in cfg.all("push"):
        words = tuple(split_push(d.args[0]))
        if not words:
            raise ConfigError(f"{_where(cfg, d)}: empty push")
        push.append(words)
    reneg_s, tran_s = 3600, 60
    if (d := cfg.last("reneg-sec")) is not None:
        reneg_s = _int(cfg, d, d.args[0], "reneg-sec", 0)
    if (d := cfg.last("tran-window")) is not None:
        tran_s = _int(cfg, d, d.args[0], "tran-window", 1)
    for name in ("reneg-bytes", "reneg-pkts"):
        if (d := cfg.last(name)) is not None and _int(cfg, d, d.args[0], name, 0):
            raise ConfigError(f"{_where(cfg, d)}: {name} is not supported by the server (the "
                              "client's own setting still renegotiates; use reneg-sec here)")
    mc = cfg.last("max-clients")
    hw = cfg.last("hand-window")
    mtu = cfg.last("tun-mtu")
    if (d := cfg.last("crl-verify")) is not None and len(d.args) > 1:
        raise ConfigError(f"{_where(cfg, d)}: `crl-verify FILE {d.args[1]}` is not supported "
                          "(one PEM file of CRLs)")
    crl = text("crl-verify", required=False)
    return ServerPlan(
        proto=base, host=host, port=port, network=network, pool=pool,
        ca=text("ca"), cert=text("cert"), key=text("key"), crl=crl,
        wrap=wrap, wrap_key=wrap_key, key_direction=direction, auth=auth,
        data_ciphers=ciphers, ping_s=ping_s, ping_restart_s=restart_s, push=tuple(push),
        client_to_client=cfg.has("client-to-client"),
        max_clients=_int(cfg, mc, mc.args[0], "max-clients", 1) if mc else 1024,
        hand_window_s=_int(cfg, hw, hw.args[0], "hand-window", 1) if hw else 60,
        tun_mtu=_int(cfg, mtu, mtu.args[0], "tun-mtu", 576, 65535) if mtu else 1500,
        reneg_s=reneg_s, tran_window_s=tran_s, v2_key=v2_key, tls_min=tls_min_version(cfg))
