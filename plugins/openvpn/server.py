"""An OpenVPN 2.6 server for many clients, sans-I/O: datagrams and tunnel packets in, out the same.

:class:`Server` keeps one :class:`Peer` per client transport address (a UDP source address, or a
TCP connection's id: the adapter names it). The adapter feeds it what it receives and sends what
it returns:

- :meth:`Server.from_client` (``addr``, one OpenVPN packet): returns :class:`ToClient` (one packet
  for a client) and :class:`ToTun` (one IP packet out of the tunnel interface) items;
- :meth:`Server.from_tun` (one IP packet read from the tunnel interface): a :class:`ToClient` for
  the client whose pool address it is addressed to, or nothing (counted ``no client``);
- :meth:`Server.tick` at :meth:`Server.next_deadline`: retransmissions, keepalive pings,
  ping-restart and hand-window timeouts;
- :class:`Gone` says a client's transport can be closed (a TCP connection).

Rules, in order, for a packet from a client:

1. An unknown address may only open a session: its first packet must unwrap (tls-crypt,
   tls-auth or none, :attr:`ServerSettings.wrapper`) to a HARD_RESET_CLIENT_V2 with packet id 0.
   Anything else from it is dropped (``not a session start``), so an off-path sender costs one
   unwrap. ``max_clients`` sessions at most (``full``).
2. A control packet is unwrapped with that client's wrapper (its own replay window) and passed
   to its :class:`~.handshake.ServerSession`. A new HARD_RESET_CLIENT_V2 from a known address
   with another session id is a restarted client: the old peer goes, a new one starts.
3. A data packet (P_DATA_V1/V2) before the session is established is dropped (``early data``);
   after, it is decrypted (``auth`` on a bad tag, ``replay`` on a repeated packet id). The
   keepalive ping is consumed; an OCC EXIT ends the peer; an IP packet must come from the
   client's own pool address (``spoofed``), then goes to another client if it is addressed to
   one and ``client_to_client`` is on (else ``client-to-client`` drop), else out of the tunnel.

Renegotiation: a client's P_CONTROL_SOFT_RESET_V1 for a new key id opens a new key state
(:class:`~.handshake.ServerSession` with ``soft=True``); the server opens one itself
``reneg_s`` seconds after the current key was made. Once the new key is established it is used
for sending; the old one still decrypts for ``tran_window_s`` seconds (``tran-window``), then it
is dropped. A failed renegotiation leaves the current key in use.

Every drop is counted in :attr:`Server.counters` (``drop.<reason>``), never raised. Time comes in
as ``now_ns`` (monotonic) and, for tls-crypt/tls-auth packet times, ``wall_s`` (POSIX seconds);
randomness as the ``entropy`` callable given at construction.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from . import wire
from .crypto import CryptoError, DataChannel, Replayed, TlsCrypt, TlsCryptV2ServerKey
from .handshake import Established, Exited, Failed, PushOptions, SendPacket, ServerSession
from .tlsengine import TlsConfig
from .wire import Opcode

__all__ = ["ServerSettings", "Server", "Peer", "ToClient", "ToTun", "Gone"]

SECOND = 1_000_000_000
_DATA = (Opcode.P_DATA_V1, Opcode.P_DATA_V2)
_V2 = (Opcode.P_CONTROL_HARD_RESET_CLIENT_V3, Opcode.P_CONTROL_WKC_V1)


@dataclass(frozen=True)
class ToClient:
    addr: object
    data: bytes


@dataclass(frozen=True)
class ToTun:
    packet: bytes


@dataclass(frozen=True)
class Gone:
    """The peer at ``addr`` is gone (``reason``); close its transport if it has one."""

    addr: object
    reason: str


@dataclass(frozen=True)
class ServerSettings:
    tls: TlsConfig
    """The control channel's TLS (certificate, key, CA, CRL)."""
    network: ipaddress.IPv4Network
    """The tunnel subnet (``server NET MASK``); the server is its first address."""
    wrapper: Callable[[], object] | None = None
    v2_key: TlsCryptV2ServerKey | None = None
    """tls-crypt-v2: the server key that unwraps each client's key (then ``wrapper`` is None)."""
    """A new tls-crypt / tls-auth wrapper for each client (its own packet ids and replay
    window); None: control packets travel unwrapped."""
    pool: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None
    data_ciphers: tuple[str, ...] = ("AES-256-GCM", "CHACHA20-POLY1305")
    ping_s: int = 10
    ping_restart_s: int = 120
    """Server side: a client silent this long is dropped. Pushed: ``ping`` and half of this."""
    push: tuple[tuple[str, ...], ...] = ()
    client_to_client: bool = False
    max_clients: int = 1024
    hand_window_s: int = 60
    tun_mtu: int = 1500
    auth: str = "SHA1"
    """The HMAC digest of the CBC data ciphers (``auth``)."""
    reneg_s: int = 3600
    """Seconds after which the server renegotiates a key itself (0: never)."""
    tran_window_s: int = 60
    tls_ekm: bool = True
    """Data keys from the TLS exporter for clients that offer it (tls-ekm); False: the PRF."""

    @property
    def server_address(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    def pool_range(self) -> tuple[int, int]:
        if self.pool is not None:
            return int(self.pool[0]), int(self.pool[1])
        first = int(self.network.network_address) + 2
        return first, int(self.network.broadcast_address) - 1


@dataclass
class Peer:
    addr: object
    wrapper: object | None
    session: ServerSession
    peer_id: int
    address: ipaddress.IPv4Address
    last_rx_ns: int
    last_tx_ns: int
    channel: DataChannel | None = None
    """The data channel we send with (the newest established key)."""
    header: bytes = b""
    cipher: str = ""
    keystates: dict = field(default_factory=dict)
    """key id -> ServerSession (the current one and any renegotiation in progress)."""
    channels: dict = field(default_factory=dict)
    """key id -> DataChannel we accept data with."""
    expiry: dict = field(default_factory=dict)
    """key id -> when an old key stops being accepted (monotonic ns)."""
    key_made_ns: int = 0
    renegotiations: int = 0
    common_name: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    stats: Counter = field(default_factory=Counter)


class Server:
    """See the module docstring."""

    def __init__(self, settings: ServerSettings, entropy: Callable[[int], bytes]) -> None:
        self.settings = settings
        self._entropy = entropy
        self.peers: dict[object, Peer] = {}
        self.by_address: dict[ipaddress.IPv4Address, Peer] = {}
        self.counters: Counter[str] = Counter()
        self._next_peer_id = 0
        self._last_cn_address: dict[str, ipaddress.IPv4Address] = {}
        self.events: list[tuple[str, dict]] = []
        """Log lines for the adapter: (message, fields); it empties the list."""

    # --- in ---------------------------------------------------------------------------------

    def from_client(self, addr: object, data: bytes, now_ns: int, wall_s: int) -> list:
        if not data:
            return self._drop("empty")
        try:
            opcode = Opcode(data[0] >> 3)
        except ValueError:
            return self._drop("opcode")
        peer = self.peers.get(addr)
        if opcode in _DATA:
            if peer is None:
                return self._drop("data from unknown peer")
            return self._data(peer, data, now_ns)
        if opcode in _V2:
            return self._from_v2(addr, peer, opcode, data, now_ns, wall_s)
        if peer is None or (opcode == Opcode.P_CONTROL_HARD_RESET_CLIENT_V2
                            and data[1:9] != peer.session.remote_session_id):
            return self._open(addr, opcode, data, now_ns, wall_s, restart=peer is not None)
        plain = self._unwrap(peer.wrapper, data)
        if plain is None:
            return []
        return self._control(peer, opcode, plain, now_ns, wall_s)

    def _from_v2(self, addr, peer: Peer | None, opcode: Opcode, data: bytes, now_ns: int,
                 wall_s: int) -> list:
        """tls-crypt-v2: HARD_RESET_CLIENT_V3 and CONTROL_WKC_V1 carry the client's wrapped key
        (WKc) after the tls-crypt packet; the client key it holds wraps everything else."""
        v2 = self.settings.v2_key
        if v2 is None:
            return self._drop("tls-crypt-v2 not configured")
        try:
            inner, kc, _metadata = v2.split_client_packet(data)
        except CryptoError:
            return self._drop("tls-crypt-v2 client key")
        plain_op = (Opcode.P_CONTROL_HARD_RESET_CLIENT_V2
                    if opcode == Opcode.P_CONTROL_HARD_RESET_CLIENT_V3 else Opcode.P_CONTROL_V1)
        if plain_op == Opcode.P_CONTROL_HARD_RESET_CLIENT_V2 and (
                peer is None or inner[1:9] != peer.session.remote_session_id):
            wrapper = TlsCrypt(kc, server=True)
            plain = self._unwrap(wrapper, inner)
            if plain is None:
                return []
            plain = bytes([plain_op << 3 | plain[0] & 7]) + plain[1:]
            return self._start(addr, wrapper, plain, now_ns, wall_s, restart=peer is not None)
        if peer is None:
            return self._drop("not a session start")
        plain = self._unwrap(peer.wrapper, inner)
        if plain is None:
            return []
        plain = bytes([plain_op << 3 | plain[0] & 7]) + plain[1:]
        return self._control(peer, plain_op, plain, now_ns, wall_s)

    def _control(self, peer: Peer, opcode: Opcode, plain: bytes, now_ns: int,
                 wall_s: int) -> list:
        peer.last_rx_ns = now_ns
        data = plain
        key_id = data[0] & 7
        session = peer.keystates.get(key_id)
        if session is None:
            if opcode != Opcode.P_CONTROL_SOFT_RESET_V1 or peer.channel is None:
                return self._drop("unknown key id", peer)
            session = self._renegotiate(peer, key_id, now_ns)
        return self._session_events(peer, session, session.receive(plain, now_ns), now_ns,
                                    wall_s)

    def from_tun(self, packet: bytes, now_ns: int) -> list:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return self._drop("tun not IPv4")
        peer = self.by_address.get(ipaddress.IPv4Address(packet[16:20]))
        if peer is None or peer.channel is None:
            return self._drop("no client")
        return [self._encrypt(peer, packet, now_ns)]

    def next_deadline(self) -> int | None:
        times = []
        ping = self.settings.ping_s * SECOND
        restart = self.settings.ping_restart_s * SECOND
        reneg = self.settings.reneg_s * SECOND
        for peer in self.peers.values():
            for ks in peer.keystates.values():
                t = ks.next_deadline()
                if t is not None:
                    times.append(t)
            times += peer.expiry.values()
            if peer.channel is not None:
                times += [peer.last_tx_ns + ping, peer.last_rx_ns + restart]
                if reneg and not self._pending(peer):
                    times.append(peer.key_made_ns + reneg)
        return min(times) if times else None

    def tick(self, now_ns: int, wall_s: int) -> list:
        out: list = []
        ping = self.settings.ping_s * SECOND
        restart = self.settings.ping_restart_s * SECOND
        for peer in list(self.peers.values()):
            if peer.channel is not None and now_ns >= peer.last_rx_ns + restart:
                out += self._remove(peer, f"ping-restart: nothing received for "
                                          f"{self.settings.ping_restart_s} s")
                continue
            for key_id, when in list(peer.expiry.items()):
                if now_ns >= when:
                    del peer.expiry[key_id]
                    peer.channels.pop(key_id, None)
                    peer.keystates.pop(key_id, None)
            reneg = self.settings.reneg_s * SECOND
            if reneg and peer.channel is not None and not self._pending(peer) \
                    and now_ns >= peer.key_made_ns + reneg:
                self._renegotiate(peer, self._next_key_id(peer), now_ns)
            for ks in list(peer.keystates.values()):
                out += self._session_events(peer, ks, ks.tick(now_ns), now_ns, wall_s)
                if peer.addr not in self.peers:
                    break
            if peer.channel is not None and now_ns >= peer.last_tx_ns + ping \
                    and peer.addr in self.peers:
                out.append(self._encrypt(peer, wire.PING_MAGIC, now_ns))
        return out

    def remove(self, addr: object, reason: str) -> list:
        """The transport of ``addr`` went away (a TCP connection closed)."""
        peer = self.peers.get(addr)
        return self._remove(peer, reason) if peer is not None else []

    # --- internals --------------------------------------------------------------------------

    def _drop(self, reason: str, peer: Peer | None = None) -> list:
        self.counters[f"drop.{reason}"] += 1
        if peer is not None:
            peer.stats[f"drop.{reason}"] += 1
        return []

    def _unwrap(self, wrapper: object | None, data: bytes) -> bytes | None:
        if wrapper is None:
            return data
        try:
            return wrapper.unwrap(data)
        except Replayed:
            self._drop("control replay")
        except CryptoError:
            self._drop("control auth")
        return None

    def _allocate(self, common_name: str) -> ipaddress.IPv4Address | None:
        first, last = self.settings.pool_range()
        prev = self._last_cn_address.get(common_name)
        if prev is not None and prev not in self.by_address:
            return prev
        for n in range(first, last + 1):
            a = ipaddress.IPv4Address(n)
            if a not in self.by_address and a not in self._last_cn_address.values():
                return a
        for n in range(first, last + 1):  # reuse addresses of clients that left
            a = ipaddress.IPv4Address(n)
            if a not in self.by_address:
                return a
        return None

    def _open(self, addr, opcode, data, now_ns, wall_s, restart: bool) -> list:
        if opcode != Opcode.P_CONTROL_HARD_RESET_CLIENT_V2:
            return self._drop("not a session start")
        if self.settings.v2_key is not None:
            return self._drop("tls-crypt-v2 needs HARD_RESET_CLIENT_V3")
        s = self.settings
        wrapper = s.wrapper() if s.wrapper is not None else None
        plain = self._unwrap(wrapper, data)
        if plain is None:
            return []
        return self._start(addr, wrapper, plain, now_ns, wall_s, restart)

    def _start(self, addr, wrapper, plain: bytes, now_ns: int, wall_s: int,
               restart: bool) -> list:
        out: list = []
        s = self.settings
        if not restart and len(self.peers) >= s.max_clients:
            return self._drop("full")
        try:
            pkt = wire.parse_control(plain)
        except wire.MalformedPacket:
            return self._drop("malformed reset")
        if pkt.packet_id != 0:
            return self._drop("not a session start")
        if restart:
            out += self._remove(self.peers[addr], "restarted (new session id)")
        peer_id = self._next_peer_id
        self._next_peer_id = (self._next_peer_id + 1) & 0xFFFFFF
        # the address is settled by _push_for once the TLS handshake names the client
        push = PushOptions(ifconfig=("0.0.0.0", str(s.network.netmask)),
                           route_gateway=str(s.server_address), ping=s.ping_s,
                           ping_restart=max(1, s.ping_restart_s // 2), peer_id=peer_id,
                           data_ciphers=s.data_ciphers, tun_mtu=s.tun_mtu, extra=s.push)
        peer = Peer(addr, wrapper, None, peer_id, ipaddress.IPv4Address(0), now_ns, now_ns)
        session = ServerSession(s.tls, push, session_id=self._entropy(8),
                                randoms=self._entropy(64), now_ns=now_ns,
                                hand_window_ns=s.hand_window_s * SECOND,
                                push_for=lambda cn: self._push_for(peer, cn), tls_ekm=s.tls_ekm)
        peer.session = session
        peer.keystates[0] = session
        self.peers[addr] = peer
        self.counters["sessions"] += 1
        return out + self._session_events(peer, session, session.receive(plain, now_ns), now_ns,
                                          wall_s)

    @staticmethod
    def _next_key_id(peer: Peer) -> int:
        return peer.session.key_id % 7 + 1  # 1..7, never 0 again (ssl.c)

    @staticmethod
    def _pending(peer: Peer) -> bool:
        return any(not ks.established for ks in peer.keystates.values())

    def _renegotiate(self, peer: Peer, key_id: int, now_ns: int) -> ServerSession:
        s = self.settings
        for old in [k for k in peer.keystates if peer.keystates[k] is not peer.session
                    and k not in peer.channels]:
            del peer.keystates[old]  # an unfinished renegotiation gives way to the new one
        session = ServerSession(s.tls, peer.session.push, session_id=peer.session.session_id,
                                randoms=self._entropy(64), now_ns=now_ns,
                                hand_window_ns=s.hand_window_s * SECOND, key_id=key_id,
                                soft=True, remote_session_id=peer.session.remote_session_id,
                                cipher=peer.cipher, ekm=peer.session.ekm)
        peer.keystates[key_id] = session
        peer.renegotiations += 1
        self.counters["renegotiations"] += 1
        return session

    def _session_events(self, peer: Peer, ks: ServerSession, events: list, now_ns: int,
                        wall_s: int) -> list:
        out: list = []
        for ev in events:
            if isinstance(ev, SendPacket):
                data = ev.data if peer.wrapper is None else peer.wrapper.wrap(ev.data, wall_s)
                out.append(ToClient(peer.addr, data))
            elif isinstance(ev, Established):
                channel = ev.keys.channel(ev.cipher, server=True, auth=self.settings.auth)
                old = [k for k in peer.channels if k != ks.key_id]
                for k in old:  # the previous key: accepted for a transition window
                    peer.expiry.setdefault(k, now_ns + self.settings.tran_window_s * SECOND)
                peer.channels[ks.key_id] = channel
                peer.channel = channel
                peer.session = ks
                peer.cipher = ev.cipher
                peer.key_made_ns = now_ns
                peer.header = DataChannel.header_v2(ks.key_id, peer.peer_id)
                if ks.soft:
                    self.events.append(("key renegotiated", {
                        "peer": str(peer.addr), "cn": peer.common_name, "key_id": ks.key_id}))
                    continue
                peer.last_tx_ns = now_ns
                self.counters["established"] += 1
                self.events.append(("client connected", {
                    "peer": str(peer.addr), "cn": peer.common_name, "address": str(peer.address),
                    "cipher": ev.cipher, "keys": "tls-ekm" if ev.ekm else "prf",
                    "version": ev.peer_info.get("IV_VER", "?")}))
            elif isinstance(ev, Exited):
                out += self._remove(peer, "client exited")
                break
            elif isinstance(ev, Failed):
                if ks.soft and peer.channel is not None:
                    peer.keystates.pop(ks.key_id, None)
                    self.counters["renegotiation failed"] += 1
                    self.events.append(("renegotiation failed", {
                        "peer": str(peer.addr), "cn": peer.common_name, "reason": ev.reason}))
                    continue
                out += self._remove(peer, ev.reason)
                break
        return out

    def _push_for(self, peer: Peer, common_name: str) -> PushOptions | None:
        """The push once the TLS handshake named the client: its pool address."""
        if self.peers.get(peer.addr) is not peer:
            return None
        if peer.address == ipaddress.IPv4Address(0):
            address = self._allocate(common_name)
            if address is None:
                return None
            peer.address = address
            peer.common_name = common_name
            self.by_address[address] = peer
            self._last_cn_address[common_name] = address
        s = self.settings
        return PushOptions(
            ifconfig=(str(peer.address), str(s.network.netmask)),
            route_gateway=str(s.server_address), ping=s.ping_s,
            ping_restart=max(1, s.ping_restart_s // 2), peer_id=peer.peer_id,
            data_ciphers=s.data_ciphers, tun_mtu=s.tun_mtu, extra=s.push)

    def _remove(self, peer: Peer, reason: str) -> list:
        if self.peers.get(peer.addr) is peer:
            del self.peers[peer.addr]
        if self.by_address.get(peer.address) is peer:
            del self.by_address[peer.address]
        self.counters["closed"] += 1
        self.events.append(("client gone", {"peer": str(peer.addr), "cn": peer.common_name,
                                            "reason": reason, "bytes_in": peer.bytes_in,
                                            "bytes_out": peer.bytes_out}))
        return [Gone(peer.addr, reason)]

    def _encrypt(self, peer: Peer, payload: bytes, now_ns: int) -> ToClient:
        peer.last_tx_ns = now_ns
        peer.bytes_out += len(payload)
        iv = None if peer.channel.aead else self._entropy(16)
        return ToClient(peer.addr, peer.channel.encrypt(peer.header, payload, iv))

    def _data(self, peer: Peer, data: bytes, now_ns: int) -> list:
        if peer.channel is None:
            return self._drop("early data", peer)
        channel = peer.channels.get(data[0] & 7)
        if channel is None:
            return self._drop("data key id", peer)
        try:
            payload = channel.decrypt(data)
        except Replayed:
            return self._drop("replay", peer)
        except CryptoError:
            return self._drop("auth", peer)
        peer.last_rx_ns = now_ns
        peer.bytes_in += len(payload)
        if payload == wire.PING_MAGIC:
            self.counters["ping"] += 1
            return []
        if payload[:16] == wire.OCC_MAGIC:
            if payload[16:17] == bytes([wire.OCC_EXIT]):
                return self._remove(peer, "client exited (explicit-exit-notify)")
            return self._drop("occ", peer)
        if len(payload) < 20 or payload[0] >> 4 != 4:
            return self._drop("not IPv4", peer)
        if payload[12:16] != peer.address.packed:
            return self._drop("spoofed", peer)
        dest = self.by_address.get(ipaddress.IPv4Address(payload[16:20]))
        if dest is not None:
            if not self.settings.client_to_client:
                return self._drop("client-to-client", peer)
            if dest.channel is None:
                return self._drop("no client", peer)
            return [self._encrypt(dest, payload, now_ns)]
        self.counters["to tun"] += 1
        return [ToTun(payload)]

