"""The client side of OpenVPN 2.6, sans-I/O: one key state (:class:`ClientSession`) and the whole
client (:class:`Client`: wrapping, key states, data channel, keepalive).

Steps of the first key state (ssl.c, as the stock client does them)::

    HARD_RESET_CLIENT_V2 (id 0)   ->
                                  <-   HARD_RESET_SERVER_V2 (id 0, acks ours)
    TLS handshake (we are the TLS client, with our certificate)
    key-method-2 (pre_master, random1, random2, options, peer info)  ->
                                  <-   key-method-2 (random1, random2, options)
    "PUSH_REQUEST"                ->
                                  <-   "PUSH_REPLY,..." (maybe in parts: push-continuation)
    => Established: cipher and peer-id from the push; data keys from the TLS exporter when the
       push says ``protocol-flags ... tls-ekm`` (we claim IV_PROTO_TLS_KEY_EXPORT), else by
       the TLS PRF. Renegotiated keys follow the first key's way.

A renegotiation (either side starts it) is a :class:`ClientSession` with ``soft=True``: both send
P_CONTROL_SOFT_RESET_V1, then TLS and key-method-2 again, no push. The :class:`Client` answers a
server's soft reset, starts its own after ``reneg_s``, sends with the newest key and accepts the
old one for ``tran_window_s``.

Bad input is dropped and counted (``Client.counters``), never raised. Events out of
:class:`Client`: :class:`ToServer`, :class:`ToTun`, :class:`Connected` (the push, once),
:class:`Disconnected` (reconnect: the adapter makes a new Client).
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from . import wire
from .crypto import CryptoError, DataChannel, DataKeys, Replayed
from .handshake import (DEFAULT_HAND_WINDOW_NS, DEFAULT_MAX_PAYLOAD, TLS_RELIABLE_WINDOW, Failed,
                        SendPacket, TlsKeyState, common_name)
from .reliable import ReliableChannel
from .tlsengine import TlsConfig
from .wire import MalformedPacket, Opcode

__all__ = ["ClientSession", "ClientEstablished", "Client", "ClientSettings", "ToServer", "ToTun",
           "Connected", "Disconnected", "client_tls_config", "PEER_INFO_PROTO"]

SECOND = 1_000_000_000
PEER_INFO_PROTO = wire.IV_PROTO_DATA_V2 | wire.IV_PROTO_CC_EXIT_NOTIFY | wire.IV_PROTO_TLS_KEY_EXPORT
"""What we claim in IV_PROTO: DATA_V2, cc-exit and tls-ekm; no dyn-tls-crypt."""
_MAX_PUSH_PARTS = 64


def client_tls_config(ca: str, cert: str, key: str, min_version: str = "1.2") -> TlsConfig:
    """The control channel's TLS client config: our certificate and key, the server's
    certificate checked against ``ca`` (PEM text). ``verify-x509-name`` and ``remote-cert-tls``
    are checked by the client on the peer certificate, not as a host name."""
    return TlsConfig(server=False, cert_pem=cert, key_pem=key, ca_pem=ca, min_version=min_version)


@dataclass(frozen=True)
class ClientEstablished:
    keys: DataKeys
    push: wire.PushReply | None
    """The merged PUSH_REPLY (None for a renegotiated key)."""
    server_common_name: str


class _State(enum.Enum):
    WAIT_RESET = "wait-reset"
    TLS = "tls"
    KEY_METHOD = "key-method"
    WAIT_PUSH = "wait-push-reply"
    ESTABLISHED = "established"
    FAILED = "failed"


def _has_server_auth(der: bytes | None) -> bool:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        eku = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.SERVER_AUTH in eku


class ClientSession(TlsKeyState):
    """One key state of the client. ``randoms``: 112 random bytes (pre_master 48, random1 32,
    random2 32)."""

    PEER = "server"
    RESET_OP = Opcode.P_CONTROL_HARD_RESET_CLIENT_V2
    ACK_OWN_RESET = False  # ours goes first: there is no reset of theirs to ack yet

    def __init__(self, tls: TlsConfig, *, session_id: bytes, randoms: bytes,
                 now_ns: int, options: str, peer_info: str, key_id: int = 0, soft: bool = False,
                 remote_session_id: bytes | None = None,
                 hand_window_ns: int = DEFAULT_HAND_WINDOW_NS,
                 push_retry_ns: int = SECOND, initial_timeout_ns: int = SECOND,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, server_eku: bool = False,
                 ekm: bool = False) -> None:
        if len(session_id) != wire.SESSION_ID_LEN or len(randoms) != 112:
            raise ValueError("session_id is 8 bytes, randoms 112")
        if soft and (remote_session_id is None or not 1 <= key_id <= 7):
            raise ValueError("a soft reset needs key id 1-7 and the remote session id")
        self.session_id = bytes(session_id)
        self.key_id = key_id
        self.soft = soft
        self.remote_session_id = remote_session_id
        self.state = _State.TLS if soft else _State.WAIT_RESET
        self.deadline_ns = now_ns + hand_window_ns
        self.dropped = 0
        self.last_drop: str | None = None
        self.server_common_name = ""
        self._server_eku = server_eku
        self._pre_master, self._r1, self._r2 = randoms[:48], randoms[48:80], randoms[80:]
        self._options = options
        self._peer_info = peer_info
        self._chan = ReliableChannel(initial_timeout_ns=initial_timeout_ns,
                                     window=TLS_RELIABLE_WINDOW, max_payload=max_payload)
        self._tls = tls.session()
        self.ekm = ekm
        """Data keys from the TLS exporter: given for a renegotiation, taken from the push's
        ``protocol-flags`` for the first key."""
        self._plain = bytearray()
        self._messages = wire.MessageSplitter()
        self._server_km: wire.KeyMethod2 | None = None
        self._push_parts: list[tuple[str, ...]] = []
        self._push_retry_ns = push_retry_ns
        self._push_next_ns: int | None = None
        self._peer_reset_seen = False
        self._reset_id = self._chan.send(b"R")[0]
        if soft:
            self._start_tls()

    @property
    def established(self) -> bool:
        return self.state is _State.ESTABLISHED

    @property
    def failed(self) -> bool:
        return self.state is _State.FAILED

    def start(self, now_ns: int) -> list:
        """The first packets (our reset; a soft one also the ClientHello)."""
        return self._flush(now_ns, [])

    def receive(self, data: bytes, now_ns: int) -> list:
        if self.state is _State.FAILED:
            return self._drop("session failed")
        try:
            pkt = wire.parse_control(data)
        except MalformedPacket as e:
            return self._drop(e.reason)
        if pkt.key_id != self.key_id:
            return self._drop(f"key id {pkt.key_id} is not this key state's")
        if self.remote_session_id is None:
            if pkt.opcode != Opcode.P_CONTROL_HARD_RESET_SERVER_V2 or pkt.packet_id != 0:
                return self._drop(f"{pkt.opcode.name} before HARD_RESET_SERVER_V2")
            self.remote_session_id = pkt.session_id
        elif pkt.session_id != self.remote_session_id:
            return self._drop("packet from another session id")
        events: list = []
        if pkt.acks:
            if pkt.remote_session_id != self.session_id:
                return self._drop("acks for another session id")
            self._chan.ack_received(pkt.acks)
        reset_op = Opcode.P_CONTROL_SOFT_RESET_V1 if self.soft else \
            Opcode.P_CONTROL_HARD_RESET_SERVER_V2
        if pkt.opcode == reset_op and pkt.packet_id == 0:
            self._chan.receive(0, b"", now_ns)
            if not self._peer_reset_seen:
                self._peer_reset_seen = True
                if not self.soft:
                    self.state = _State.TLS
                    self._start_tls()
        elif pkt.opcode == Opcode.P_CONTROL_V1 and self._peer_reset_seen:
            self._tls_records(pkt, events, now_ns)
        elif pkt.opcode != Opcode.P_ACK_V1:
            self._note_drop(f"{pkt.opcode.name} not expected")
        return self._flush(now_ns, events)

    def next_deadline(self) -> int | None:
        return self._deadline(self._push_next_ns)

    def tick(self, now_ns: int) -> list:
        if self.state is _State.FAILED:
            return []
        if self.state is not _State.ESTABLISHED and now_ns >= self.deadline_ns:
            self.state = _State.FAILED
            return [Failed(f"handshake not complete within the hand-window (in "
                           f"{self.state.value})")]
        if self._push_next_ns is not None and now_ns >= self._push_next_ns:
            self._send_push_request(now_ns)
        return self._flush(now_ns, [])

    # --- internals --------------------------------------------------------------------------


    def _start_tls(self) -> None:
        self._tls.handshake()  # only the ClientHello: nothing from the server yet
        self._pull_tls_output()

    def _handshake_done(self, events: list) -> bool:
        der = self._tls.peer_certificate()
        self.server_common_name = common_name(der)
        if self._server_eku and not _has_server_auth(der):
            self._fail(events, "server certificate lacks extendedKeyUsage serverAuth "
                               "(remote-cert-tls server)")
            return False
        self._tls.write(wire.build_key_method_2(wire.KeyMethod2(
            self._options, self._r1, self._r2, pre_master=self._pre_master,
            peer_info=self._peer_info)))
        self.state = _State.KEY_METHOD
        return True

    def _send_push_request(self, now_ns: int) -> None:
        self._tls.write(wire.build_message(wire.PUSH_REQUEST))
        self._pull_tls_output()
        self._push_next_ns = now_ns + self._push_retry_ns

    def _plaintext(self, chunk: bytes, events: list, now_ns: int) -> None:
        if self.state is _State.KEY_METHOD:
            self._plain += chunk
            try:
                km = wire.parse_key_method_2(bytes(self._plain), from_client=False)
            except MalformedPacket as e:
                if len(self._plain) > 1 << 16:
                    self._fail(events, f"bad key-method-2 message: {e.reason}")
                return
            self._plain.clear()
            self._server_km = km
            if self.soft:
                self._establish(events, None)
            else:
                self.state = _State.WAIT_PUSH
                self._send_push_request(now_ns)
            return
        for text in self._messages.feed(chunk):
            self._message(text, events)
            if self.state is _State.FAILED:
                return

    def _message(self, text: str, events: list) -> None:
        if text.startswith("AUTH_FAILED"):
            self._fail(events, f"server said {text[:200]!r}")
            return
        if text.startswith("RESTART"):
            self._fail(events, f"server asked for a restart ({text[:200]!r})")
            return
        if not text.startswith("PUSH_REPLY") or self.state is not _State.WAIT_PUSH:
            self._note_drop(f"control message {text[:40]!r} ignored")
            return
        try:
            reply = wire.parse_push_reply(text)
        except MalformedPacket as e:
            self._fail(events, f"bad PUSH_REPLY: {e.reason}")
            return
        self._push_parts += reply.options
        if reply.continuation == 2 and len(self._push_parts) < 4096:
            return  # more parts follow
        self._establish(events, wire.PushReply(tuple(self._push_parts), None))

    def _establish(self, events: list, push: wire.PushReply | None) -> None:
        km = self._server_km
        if push is not None:
            self.ekm = "tls-ekm" in (push.get("protocol-flags") or ())
        keys = self._data_keys(lambda: DataKeys.from_prf(
            self._pre_master, self._r1, km.random1, self._r2, km.random2,
            self.session_id, self.remote_session_id))
        self.state = _State.ESTABLISHED
        self._push_next_ns = None
        events.append(ClientEstablished(keys, push, self.server_common_name))


# --------------------------------------------------------------------------- the whole client

@dataclass(frozen=True)
class ToServer:
    data: bytes


@dataclass(frozen=True)
class ToTun:
    packet: bytes


@dataclass(frozen=True)
class Connected:
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None
    routes: tuple[ipaddress.IPv4Network, ...]
    cipher: str
    push: wire.PushReply
    redirect: bool = False
    """``redirect-gateway`` was pushed: everything goes into the tunnel (``routes`` then hold
    0.0.0.0/1 and 128.0.0.0/1, as ``def1`` does), except the path to the server itself."""
    redirect_local: bool = False
    """``redirect-gateway local``: the server is on-link, no host route to keep."""
    dns: tuple[str, ...] = ()
    """``dhcp-option DNS`` addresses, in push order (reported; a router's DNS is the host's)."""
    domain: str | None = None


@dataclass(frozen=True)
class Disconnected:
    reason: str


@dataclass(frozen=True)
class ClientSettings:
    tls: TlsConfig
    wrapper: Callable[[], object] | None = None
    data_ciphers: tuple[str, ...] = ("AES-256-GCM", "CHACHA20-POLY1305")
    auth: str = "SHA1"
    proto: str = "udp"
    reneg_s: int = 3600
    reneg_bytes: int = 0
    """Renegotiate once a key has carried this many data bytes, in and out (0: never)."""
    reneg_pkts: int = 0
    """Renegotiate once a key has carried this many data packets, in and out (0: never)."""
    tran_window_s: int = 60
    hand_window_s: int = 60
    server_eku: bool = False
    """Require extendedKeyUsage serverAuth on the server certificate (``remote-cert-tls server``)."""
    verify_server_name: str | None = None
    """The server certificate's common name must be this (``verify-x509-name NAME name``)."""
    version: str = "2.6.14"
    tls_ekm: bool = True
    """Offer tls-ekm (IV_PROTO_TLS_KEY_EXPORT); False: the server derives keys by the PRF."""


class Client:
    """One connection to a server. See the module docstring."""

    def __init__(self, settings: ClientSettings, entropy: Callable[[int], bytes],
                 now_ns: int) -> None:
        self.settings = settings
        self._entropy = entropy
        self.wrapper = settings.wrapper() if settings.wrapper is not None else None
        self.counters: Counter[str] = Counter()
        self.session_id = entropy(8)
        self.keystates: dict[int, ClientSession] = {}
        self.channels: dict[int, DataChannel] = {}
        self.expiry: dict[int, int] = {}
        self.channel: DataChannel | None = None
        self.current: ClientSession = self._session(0, False, None, now_ns)
        self.keystates[0] = self.current
        self.header = b""
        self.cipher = ""
        self.peer_id = 0
        self.ping_s = 10
        self.ping_restart_s = 60
        self.last_rx_ns = now_ns
        self.last_tx_ns = now_ns
        self.key_made_ns = now_ns
        self.key_bytes = 0
        self.key_packets = 0
        self.connected: Connected | None = None
        self.gone = False
        self.events: list[tuple[str, dict]] = []

    def _options(self) -> str:
        proto = "TCPv4_CLIENT" if self.settings.proto == "tcp" else "UDPv4"
        return f"V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto {proto},keysize 256," \
               "key-method 2,tls-client"

    def _peer_info(self) -> str:
        return wire.build_peer_info({
            "IV_VER": self.settings.version, "IV_PLAT": "linux", "IV_PROTO": str(self._proto()),
            "IV_CIPHERS": ":".join(self.settings.data_ciphers), "IV_MTU": "1600",
            "IV_TCPNL": "1", "IV_GUI_VER": "ingot-vpn"})

    def _proto(self) -> int:
        if self.settings.tls_ekm:
            return PEER_INFO_PROTO
        return PEER_INFO_PROTO & ~wire.IV_PROTO_TLS_KEY_EXPORT

    def _session(self, key_id: int, soft: bool, remote: bytes | None, now_ns: int) -> ClientSession:
        return ClientSession(self.settings.tls, session_id=self.session_id,
                             randoms=self._entropy(112), now_ns=now_ns, options=self._options(),
                             peer_info=self._peer_info(), key_id=key_id, soft=soft,
                             remote_session_id=remote,
                             hand_window_ns=self.settings.hand_window_s * SECOND,
                             server_eku=self.settings.server_eku,
                             ekm=soft and self.current.ekm)

    # --- in ---------------------------------------------------------------------------------

    def start(self, now_ns: int, wall_s: int) -> list:
        return self._events(self.current, self.current.start(now_ns), now_ns, wall_s)

    def from_server(self, data: bytes, now_ns: int, wall_s: int) -> list:
        if self.gone or not data:
            return []
        try:
            opcode = Opcode(data[0] >> 3)
        except ValueError:
            return self._drop("opcode")
        key_id = data[0] & 7
        if opcode in (Opcode.P_DATA_V1, Opcode.P_DATA_V2):
            return self._data(key_id, data, now_ns)
        if self.wrapper is not None:
            try:
                data = self.wrapper.unwrap(data)
            except Replayed:
                return self._drop("control replay")
            except CryptoError:
                return self._drop("control auth")
        self.last_rx_ns = now_ns
        ks = self.keystates.get(key_id)
        if ks is None:
            if opcode != Opcode.P_CONTROL_SOFT_RESET_V1 or self.channel is None:
                return self._drop("unknown key id")
            ks = self._renegotiate(key_id, now_ns)
            out = self._events(ks, ks.start(now_ns), now_ns, wall_s)
            return out + self._events(ks, ks.receive(data, now_ns), now_ns, wall_s)
        return self._events(ks, ks.receive(data, now_ns), now_ns, wall_s)

    def from_tun(self, packet: bytes, now_ns: int) -> list:
        if self.channel is None or self.gone:
            return self._drop("not connected")
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return self._drop("tun not IPv4")
        return [self._encrypt(packet, now_ns)]

    def exit(self, now_ns: int) -> list:
        """Tell the server we go (OCC EXIT in the data channel, as explicit-exit-notify)."""
        if self.channel is None or self.gone:
            return []
        self.gone = True
        pkt = self._encrypt(wire.OCC_MAGIC + bytes([wire.OCC_EXIT]), now_ns)
        return [pkt, pkt]

    def next_deadline(self) -> int | None:
        if self.gone:
            return None
        times = [t for ks in self.keystates.values() if (t := ks.next_deadline()) is not None]
        times += self.expiry.values()
        if self.channel is not None:
            times += [self.last_tx_ns + self.ping_s * SECOND,
                      self.last_rx_ns + self.ping_restart_s * SECOND]
            if self.settings.reneg_s and not self._pending():
                times.append(self.key_made_ns + self.settings.reneg_s * SECOND)
        return min(times) if times else None

    def tick(self, now_ns: int, wall_s: int) -> list:
        if self.gone:
            return []
        if self.channel is not None and now_ns >= self.last_rx_ns + self.ping_restart_s * SECOND:
            return self._disconnect(f"ping-restart: nothing received for {self.ping_restart_s} s")
        out: list = []
        for key_id, when in list(self.expiry.items()):
            if now_ns >= when:
                del self.expiry[key_id]
                self.channels.pop(key_id, None)
                self.keystates.pop(key_id, None)
        if self.channel is not None and not self._pending() and self._key_used_up(now_ns):
            ks = self._renegotiate(self.current.key_id % 7 + 1, now_ns)
            out += self._events(ks, ks.start(now_ns), now_ns, wall_s)
        for ks in list(self.keystates.values()):
            out += self._events(ks, ks.tick(now_ns), now_ns, wall_s)
            if self.gone:
                return out
        if self.channel is not None and now_ns >= self.last_tx_ns + self.ping_s * SECOND:
            out.append(self._encrypt(wire.PING_MAGIC, now_ns))
        return out

    # --- internals --------------------------------------------------------------------------

    def _drop(self, reason: str) -> list:
        self.counters[f"drop.{reason}"] += 1
        return []

    def _pending(self) -> bool:
        return any(not ks.established for ks in self.keystates.values())

    def _key_used_up(self, now_ns: int) -> bool:
        s = self.settings
        return bool((s.reneg_s and now_ns >= self.key_made_ns + s.reneg_s * SECOND)
                    or (s.reneg_bytes and self.key_bytes >= s.reneg_bytes)
                    or (s.reneg_pkts and self.key_packets >= s.reneg_pkts))

    def _renegotiate(self, key_id: int, now_ns: int) -> ClientSession:
        for old in [k for k, ks in self.keystates.items() if not ks.established]:
            del self.keystates[old]
        ks = self._session(key_id, True, self.current.remote_session_id, now_ns)
        self.keystates[key_id] = ks
        self.counters["renegotiations"] += 1
        return ks

    def _disconnect(self, reason: str) -> list:
        self.gone = True
        return [Disconnected(reason)]

    def _encrypt(self, payload: bytes, now_ns: int) -> ToServer:
        self.last_tx_ns = now_ns
        self.key_bytes += len(payload)
        self.key_packets += 1
        iv = None if self.channel.aead else self._entropy(16)
        return ToServer(self.channel.encrypt(self.header, payload, iv))

    def _data(self, key_id: int, data: bytes, now_ns: int) -> list:
        channel = self.channels.get(key_id)
        if channel is None:
            return self._drop("data key id")
        try:
            payload = channel.decrypt(data)
        except Replayed:
            return self._drop("replay")
        except CryptoError:
            return self._drop("auth")
        self.last_rx_ns = now_ns
        self.key_bytes += len(payload)
        self.key_packets += 1
        if payload == wire.PING_MAGIC:
            self.counters["ping"] += 1
            return []
        if payload[:16] == wire.OCC_MAGIC:
            if payload[16:17] == bytes([wire.OCC_EXIT]):
                return self._disconnect("server exited")
            return self._drop("occ")
        if len(payload) < 20 or payload[0] >> 4 != 4:
            return self._drop("not IPv4")
        return [ToTun(payload)]

    def _events(self, ks: ClientSession, events: list, now_ns: int, wall_s: int) -> list:
        out: list = []
        for ev in events:
            if isinstance(ev, SendPacket):
                data = ev.data if self.wrapper is None else self.wrapper.wrap(ev.data, wall_s)
                out.append(ToServer(data))
            elif isinstance(ev, ClientEstablished):
                want = self.settings.verify_server_name
                if want is not None and ev.server_common_name != want:
                    return out + self._disconnect(
                        f"server certificate names {ev.server_common_name!r}, not {want!r}")
                if ev.push is not None:
                    try:
                        connected = self._apply_push(ev.push)
                    except ValueError as e:
                        return out + self._disconnect(f"unusable PUSH_REPLY: {e}")
                for k in [k for k in self.channels if k != ks.key_id]:
                    self.expiry.setdefault(k, now_ns + self.settings.tran_window_s * SECOND)
                channel = ev.keys.channel(self.cipher, server=False, auth=self.settings.auth)
                self.channels[ks.key_id] = channel
                self.channel = channel
                self.current = ks
                self.key_made_ns = now_ns
                self.key_bytes = self.key_packets = 0
                self.header = DataChannel.header_v2(ks.key_id, self.peer_id)
                if ev.push is not None:
                    self.connected = connected
                    self.last_tx_ns = now_ns
                    out.append(connected)
                else:
                    self.events.append(("key renegotiated", {"key_id": ks.key_id}))
            elif isinstance(ev, Failed):
                if ks.soft and self.channel is not None:
                    self.keystates.pop(ks.key_id, None)
                    self.counters["renegotiation failed"] += 1
                    self.events.append(("renegotiation failed", {"reason": ev.reason}))
                    continue
                return out + self._disconnect(ev.reason)
        return out

    def _apply_push(self, push: wire.PushReply) -> Connected:
        topo = push.get("topology")
        if topo is not None and topo[:1] != ("subnet",):
            raise ValueError(f"topology {' '.join(topo)} (only subnet is supported)")
        ifc = push.get("ifconfig")
        if ifc is None or len(ifc) != 2:
            raise ValueError("no ifconfig ADDRESS NETMASK")
        address = ipaddress.IPv4Interface(f"{ifc[0]}/{ifc[1]}")
        cipher = push.get("cipher")
        self.cipher = (cipher[0] if cipher else self.settings.data_ciphers[0]).upper()
        if self.cipher not in [c.upper() for c in self.settings.data_ciphers]:
            raise ValueError(f"pushed cipher {self.cipher} is not in our data-ciphers")
        pid = push.get("peer-id")
        self.peer_id = int(pid[0]) if pid else 0
        if (p := push.get("ping")) is not None:
            self.ping_s = max(1, int(p[0]))
        if (p := push.get("ping-restart")) is not None:
            self.ping_restart_s = max(1, int(p[0]))
        gw = push.get("route-gateway")
        gateway = ipaddress.IPv4Address(gw[0]) if gw else None
        routes = []
        for r in push.all("route"):
            mask = r[1] if len(r) > 1 else "255.255.255.255"
            routes.append(ipaddress.IPv4Network(f"{r[0]}/{mask}", strict=False))
        redirect = push.get("redirect-gateway")
        if redirect is not None:  # def1 or not: two /1 routes override the default the same way
            routes += [ipaddress.IPv4Network("0.0.0.0/1"), ipaddress.IPv4Network("128.0.0.0/1")]
        dns, domain = [], None
        for opt in push.all("dhcp-option"):
            if len(opt) >= 2 and opt[0].upper() == "DNS":
                try:
                    dns.append(str(ipaddress.ip_address(opt[1])))
                except ValueError:
                    self.counters["drop.push dhcp-option"] += 1
            elif len(opt) >= 2 and opt[0].upper() == "DOMAIN":
                domain = opt[1]
        return Connected(address, gateway, tuple(routes), self.cipher, push,
                         redirect=redirect is not None,
                         redirect_local="local" in (redirect or ()), dns=tuple(dns),
                         domain=domain)

