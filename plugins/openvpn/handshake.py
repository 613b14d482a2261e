"""The server side of one OpenVPN 2.6 control session, sans-I/O, up to established data keys.

One :class:`ServerSession` per client session id. Bytes in (control packets in plaintext form:
the caller has already unwrapped tls-crypt / tls-auth), time in (``now_ns``, monotonic), events
out: :class:`SendPacket` (a plaintext control packet for the caller to wrap and send),
:class:`Established`, :class:`Failed`. No socket, clock or random source here: the caller passes
our session id and the key-method-2 randoms. TLS itself runs in OpenSSL over memory buffers
(:mod:`.tlsengine`), so the TLS state lives in that object; OpenSSL draws its own randoms.

Steps (ssl.c, ssl_pkt.c of OpenVPN 2.6)::

    client                                   server (this)
    HARD_RESET_CLIENT_V2 (id 0)    ->
                                   <-        HARD_RESET_SERVER_V2 (id 0, acks client id 0)
    CONTROL_V1: TLS handshake      <->       CONTROL_V1: TLS handshake (client cert required)
    TLS data: key-method-2 (pre_master, randoms, options, peer info)  ->
                                   <-        TLS data: key-method-2 (randoms, options)
    TLS data: "PUSH_REQUEST\\0"     ->
                                   <-        TLS data: "PUSH_REPLY,...\\0"  => Established

Data keys: when the client's IV_PROTO has TLS_KEY_EXPORT we push ``protocol-flags ... tls-ekm``
and both ends take the 256 key bytes from the TLS exporter (RFC 5705, label
``EXPORTER-OpenVPN-datakeys``, :meth:`DataKeys.from_tls_ekm`), for this key and every
renegotiated one. Otherwise OpenVPN 2.6 derives them with its TLS 1.0 PRF over the
key-method-2 randoms and both session ids (ssl.c ``generate_key_expansion``), and so do we
(:meth:`DataKeys.from_prf`).

Reliability: every control packet but P_ACK_V1 goes through :class:`ReliableChannel` (window 6,
OpenVPN's ``TLS_RELIABLE_N_SEND_BUFFERS``); our HARD_RESET_SERVER_V2 takes packet id 0 like the
stock server's.

Renegotiation: one :class:`ServerSession` is one *key state* (ssl.c's ``key_state``): its own
key id, reliable channel (packet ids from 0) and TLS session. A renegotiation is a new
ServerSession with ``soft=True`` for the next key id and the same session ids: both sides open it
with a P_CONTROL_SOFT_RESET_V1 (packet id 0; whichever side starts, the other answers with its
own), then a new TLS handshake and key-method-2 exchange, and no push: the new data keys are
established as soon as both key-method-2 messages are through, with the cipher of the first key.
Not handled here: tls-crypt-v2, auth-user-pass, TCP framing (the caller's job).

Bad input never raises: a packet that does not parse or does not belong to this session is
dropped and counted in ``dropped`` (``last_drop`` says why). A TLS error, a rejected client
certificate, no common data cipher or the hand-window running out end the session with
:class:`Failed` (a TLS alert, if any, is still handed out first as a :class:`SendPacket`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import wire
from .crypto import DataKeys
from .reliable import ReliableChannel
from .tlsengine import TlsClosed, TlsConfig, TlsFailure, TlsVerifyFailed
from .wire import ControlPacket, MalformedPacket, Opcode

__all__ = ["TlsKeyState", "common_name", "SendPacket", "Established", "Failed", "Exited", "PushOptions", "ServerSession",
           "server_tls_config", "TLS_RELIABLE_WINDOW", "DEFAULT_HAND_WINDOW_NS"]

TLS_RELIABLE_WINDOW = 6  # OpenVPN 2.6 ssl_pkt.h TLS_RELIABLE_N_SEND_BUFFERS
DEFAULT_HAND_WINDOW_NS = 60_000_000_000
DEFAULT_MAX_PAYLOAD = 1100  # TLS bytes per control packet (stock tls-mtu 1250 less headers)
_MAX_KM2 = 1 << 16


@dataclass(frozen=True)
class SendPacket:
    """A plaintext control packet: wrap it (tls-crypt / tls-auth) and send it to the client."""

    data: bytes


@dataclass(frozen=True)
class Established:
    """The PUSH_REPLY went out: build the data channel with ``keys.channel(cipher, server=True)``."""

    keys: DataKeys
    cipher: str
    peer_id: int
    client_common_name: str
    peer_info: dict[str, str]
    ekm: bool = False
    """The keys came from the TLS exporter (tls-ekm), not the PRF."""


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Exited:
    """The client said it is going away (the ``EXIT`` control message of ``cc-exit``)."""


@dataclass(frozen=True)
class PushOptions:
    """What the PUSH_REPLY carries. ``data_ciphers`` in our order of preference; the pushed cipher
    is the first of them the client lists in IV_CIPHERS. ``extra`` options go at the end."""

    ifconfig: tuple[str, str]  # (client address, netmask) for topology subnet
    route_gateway: str | None = None
    topology: str = "subnet"
    ping: int = 10
    ping_restart: int = 60
    peer_id: int = 0
    data_ciphers: tuple[str, ...] = ("AES-256-GCM", "CHACHA20-POLY1305")
    tun_mtu: int | None = 1500
    extra: tuple[tuple[str, ...], ...] = ()


def server_tls_config(certfile: str, keyfile: str, cafile: str, crlfile: str | None = None) -> TlsConfig:
    """A TLS server config for the control channel from PEM files: our certificate, client
    certificates required and verified against the CA (and the CRL), TLS 1.2 at least.

    (This reads the named files; call it from the adapter, not per packet.)
    """
    def read(path: str | None) -> str | None:
        if path is None:
            return None
        with open(path) as f:
            return f.read()

    return TlsConfig(server=True, cert_pem=read(certfile), key_pem=read(keyfile),
                     ca_pem=read(cafile), crl_pem=read(crlfile))


class _State(enum.Enum):
    WAIT_RESET = "wait-reset"
    TLS = "tls"
    KEY_METHOD = "key-method"
    WAIT_PUSH = "wait-push-request"
    ESTABLISHED = "established"
    FAILED = "failed"


def common_name(der: bytes | None) -> str:
    """The commonName of a DER certificate's subject ("" if none); the last one if several,
    as OpenVPN takes it."""
    if not der:
        return ""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ""
    value = names[-1].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def proto_flags(peer_info: dict[str, str]) -> int:
    """The client's IV_PROTO bits (0 when absent or not a number)."""
    try:
        return int(peer_info.get("IV_PROTO", "0"))
    except ValueError:
        return 0


class TlsKeyState:
    """What a key state of either side shares: drop counting, the TLS pump over memory BIOs
    and failing. A subclass sets ``PEER`` (who is at the other end, for messages), ``state``
    (its own enum with ``TLS`` and ``FAILED`` members), ``_tls`` (a :class:`TlsSession`), ``_chan``,
    and implements ``_handshake_done(events) -> bool`` (False: it failed) and
    ``_plaintext(chunk, events, now_ns)``."""

    PEER = "peer"

    def _note_drop(self, why: str) -> None:
        self.dropped += 1
        self.last_drop = why

    def _drop(self, why: str) -> list:
        self._note_drop(why)
        return []

    def _fail(self, events: list, reason: str) -> None:
        self._pull_tls_output()  # a TLS alert, if OpenSSL wrote one
        self.state = type(self.state).FAILED
        events.append(Failed(reason))

    def _tls_records(self, pkt: ControlPacket, events: list, now_ns: int) -> None:
        """A P_CONTROL_V1's TLS bytes, delivered in order, into the TLS session."""
        for payload in self._chan.receive(pkt.packet_id, pkt.payload, now_ns):
            self._tls_in(payload, events, now_ns)
            if self.state is type(self.state).FAILED:
                break

    def _deadline(self, *extra: int | None) -> int | None:
        """The next retransmission, ``extra`` timer or (until established) the hand-window."""
        states = type(self.state)
        if self.state is states.FAILED:
            return None
        times = [t for t in (self._chan.next_deadline(), *extra) if t is not None]
        if self.state is not states.ESTABLISHED:
            times.append(self.deadline_ns)
        return min(times) if times else None

    def _pull_tls_output(self) -> None:
        data = self._tls.pending()
        if data:
            self._chan.send(data)

    RESET_OP: Opcode
    """Our first key state's reset opcode (a renegotiation's is SOFT_RESET_V1)."""
    ACK_OWN_RESET: bool

    def _flush(self, now_ns: int, events: list) -> list:
        """Hand out what the reliable channel has due, ahead of any Failed / Established:
        our reset (payload-less, with its own opcode), TLS records, standalone acks."""
        packets = []
        reset_op = Opcode.P_CONTROL_SOFT_RESET_V1 if self.soft else self.RESET_OP
        remote = self.remote_session_id
        for out in self._chan.packets_due(now_ns):
            reset = out.packet_id == self._reset_id
            acks = out.acks if remote is not None else ()
            if not acks and reset and self.ACK_OWN_RESET and self._peer_reset_seen:
                acks = (0,)
            packets.append(SendPacket(wire.build_control(ControlPacket(
                reset_op if reset else Opcode.P_CONTROL_V1, self.key_id, self.session_id, acks,
                remote if acks else None, out.packet_id, b"" if reset else out.payload))))
        if remote is not None:
            while acks := self._chan.standalone_ack_due(now_ns):
                packets.append(SendPacket(wire.build_control(ControlPacket(
                    Opcode.P_ACK_V1, self.key_id, self.session_id, acks, remote))))
        return packets + events

    def _tls_in(self, payload: bytes, events: list, now_ns: int) -> None:
        states = type(self.state)
        self._tls.feed(payload)
        try:
            if self.state is states.TLS:
                if not self._tls.handshake():
                    self._pull_tls_output()
                    return
                if not self._handshake_done(events):
                    return
            while chunk := self._tls.read():
                self._plaintext(chunk, events, now_ns)
                if self.state is states.FAILED:
                    return
        except TlsClosed:
            self._fail(events, f"{self.PEER} closed the TLS session")
            return
        except TlsVerifyFailed as e:
            self._fail(events, f"{self.PEER} certificate rejected: {e.message}")
            return
        except TlsFailure as e:
            self._fail(events, f"TLS error: {e}")
            return
        self._pull_tls_output()

    def _data_keys(self, make_prf) -> DataKeys:
        """This key state's data keys: from the TLS exporter with tls-ekm, else ``make_prf()``."""
        if self.ekm:
            return DataKeys.from_tls_ekm(self._tls.export_keying_material())
        return make_prf()


class ServerSession(TlsKeyState):
    """One client's control session, from its HARD_RESET_CLIENT_V2 to established data keys.

    ``session_id``: our 8 random bytes; ``randoms``: 64 random bytes (our key-method-2 random1 and
    random2). ``options_string``: the key-method-2 options we send (None: the client's own with
    ``tls-client`` turned into ``tls-server``; stock OpenVPN only warns on a difference).
    """

    PEER = "client"
    RESET_OP = Opcode.P_CONTROL_HARD_RESET_SERVER_V2
    ACK_OWN_RESET = True  # every copy of our reset acks theirs, once we have it

    def __init__(self, tls: TlsConfig, push: PushOptions, *, session_id: bytes,
                 randoms: bytes, now_ns: int, hand_window_ns: int = DEFAULT_HAND_WINDOW_NS,
                 options_string: str | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 initial_timeout_ns: int = 1_000_000_000, key_id: int = 0, soft: bool = False,
                 remote_session_id: bytes | None = None, cipher: str | None = None,
                 push_for=None, tls_ekm: bool = True, ekm: bool = False) -> None:
        if len(session_id) != wire.SESSION_ID_LEN:
            raise ValueError("session_id must be 8 bytes")
        if len(randoms) != 64:
            raise ValueError("randoms must be 64 bytes")
        if not push.data_ciphers:
            raise ValueError("push.data_ciphers is empty")
        if soft and (remote_session_id is None or cipher is None or not 1 <= key_id <= 7):
            raise ValueError("a soft reset needs key id 1-7, the remote session id and the cipher")
        self.session_id = bytes(session_id)
        self.key_id = key_id
        self.soft = soft
        self.remote_session_id: bytes | None = remote_session_id
        self.push = push
        self._push_for = push_for
        """``push_for(common_name) -> PushOptions | None``: the push for the client the TLS
        handshake named (its pool address), asked once when the reply is built; None fails
        the session (no address left)."""
        self.options_string = options_string
        self.deadline_ns = now_ns + hand_window_ns
        self.state = _State.WAIT_RESET
        self.dropped = 0
        self.last_drop: str | None = None
        self.client_key_method: wire.KeyMethod2 | None = None
        self.peer_info: dict[str, str] = {}
        self.cipher: str | None = cipher
        self.common_name = ""
        self._randoms = bytes(randoms)
        self._chan = ReliableChannel(initial_timeout_ns=initial_timeout_ns,
                                     window=TLS_RELIABLE_WINDOW, max_payload=max_payload)
        self._reset_id: int | None = None
        self._tls = tls.session()
        self._tls_ekm = tls_ekm
        self.ekm = ekm
        """Data keys from the TLS exporter: chosen on the first key state (the client offers
        TLS_KEY_EXPORT and ``tls_ekm`` allows it), handed on to renegotiated ones."""
        self._plain = bytearray()
        self._messages = wire.MessageSplitter()
        self._push_reply: bytes | None = None
        self._keys: DataKeys | None = None
        self._peer_reset_seen = not soft
        if soft:  # our SOFT_RESET_V1 goes out first (an answer if theirs came already)
            self._reset_id = self._chan.send(b"R")[0]
            self.state = _State.TLS

    # --- public -----------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self.state is _State.ESTABLISHED

    @property
    def failed(self) -> bool:
        return self.state is _State.FAILED

    def receive(self, data: bytes, now_ns: int) -> list:
        """One plaintext control packet from the client; returns events."""
        if self.state is _State.FAILED:
            return self._drop("session failed")
        try:
            pkt = wire.parse_control(data)
        except MalformedPacket as e:
            return self._drop(e.reason)
        if pkt.key_id != self.key_id:
            return self._drop(f"key id {pkt.key_id} is not this key state's ({self.key_id})")
        events: list = []
        if self.remote_session_id is None:
            if pkt.opcode != Opcode.P_CONTROL_HARD_RESET_CLIENT_V2 or pkt.packet_id != 0:
                return self._drop(f"{pkt.opcode.name} before HARD_RESET_CLIENT_V2")
            self.remote_session_id = pkt.session_id
            self._chan.receive(0, b"", now_ns)
            self._reset_id = self._chan.send(b"R")[0]  # sent as an empty HARD_RESET_SERVER_V2
            self.state = _State.TLS
            return self._flush(now_ns, events)
        if pkt.session_id != self.remote_session_id:
            return self._drop("packet from another session id")
        if pkt.acks:
            if pkt.remote_session_id != self.session_id:
                return self._drop("acks for another session id")
            self._chan.ack_received(pkt.acks)
        if pkt.opcode == Opcode.P_CONTROL_HARD_RESET_CLIENT_V2 and not self.soft:
            if pkt.packet_id != 0:  # a reset is always message 0; never let it take another id
                self._note_drop("HARD_RESET_CLIENT_V2 with a packet id other than 0")
            else:
                self._chan.receive(0, b"", now_ns)  # a retransmission: ack it again
        elif pkt.opcode == Opcode.P_CONTROL_SOFT_RESET_V1 and self.soft and pkt.packet_id == 0:
            self._peer_reset_seen = True
            self._chan.receive(0, b"", now_ns)  # in order before their TLS, acked; no payload
        elif pkt.opcode == Opcode.P_CONTROL_V1 and self._peer_reset_seen:
            self._tls_records(pkt, events, now_ns)
        elif pkt.opcode != Opcode.P_ACK_V1:
            self._note_drop(f"{pkt.opcode.name} not expected")
        return self._flush(now_ns, events)

    def next_deadline(self) -> int | None:
        """When to call :meth:`tick` next (monotonic ns), or None."""
        return self._deadline()

    def tick(self, now_ns: int) -> list:
        """Retransmissions and acks due, and the hand-window timeout."""
        if self.state is _State.FAILED:
            return []
        if self.state is not _State.ESTABLISHED and now_ns >= self.deadline_ns:
            self.state = _State.FAILED
            return [Failed(f"handshake not complete within the hand-window (in {self._stage})")]
        return self._flush(now_ns, [])

    # --- internals --------------------------------------------------------------------------

    @property
    def _stage(self) -> str:
        return self.state.value


    def _handshake_done(self, events: list) -> bool:
        self.common_name = common_name(self._tls.peer_certificate())
        self.state = _State.KEY_METHOD
        return True

    def _write(self, data: bytes) -> None:
        self._tls.write(data)
        self._pull_tls_output()

    def _plaintext(self, chunk: bytes, events: list, now_ns: int) -> None:
        if self.state is _State.KEY_METHOD:
            self._plain += chunk
            try:
                km = wire.parse_key_method_2(bytes(self._plain), from_client=True)
            except MalformedPacket as e:
                if len(self._plain) > _MAX_KM2:
                    self._fail(events, f"bad key-method-2 message: {e.reason}")
                return  # the rest may come in a later record
            self._plain.clear()
            self._key_method(km, events)
            return
        for text in self._messages.feed(chunk):
            self._message(text, events)
            if self.state is _State.FAILED:
                return

    def _key_method(self, km: wire.KeyMethod2, events: list) -> None:
        self.client_key_method = km
        self.peer_info = wire.parse_peer_info(km.peer_info or "")
        if self.soft:
            options = self.options_string or km.options.replace("tls-client", "tls-server")
            self._write(wire.build_key_method_2(wire.KeyMethod2(
                options, self._randoms[:32], self._randoms[32:])))
            self._establish(events)
            return
        offered = [c.upper() for c in self.peer_info.get("IV_CIPHERS", "").split(":") if c]
        ours = [c.upper() for c in self.push.data_ciphers]
        common = [c for c in ours if c in offered]
        if not common:
            self._fail(events, f"no common data cipher: client offers {offered or 'none'}, "
                               f"we have {ours}")
            return
        self.cipher = common[0]
        options = self.options_string
        if options is None:
            options = km.options.replace("tls-client", "tls-server")
        self._write(wire.build_key_method_2(wire.KeyMethod2(
            options, self._randoms[:32], self._randoms[32:])))
        self.ekm = self._tls_ekm and bool(proto_flags(self.peer_info) & wire.IV_PROTO_TLS_KEY_EXPORT)
        self.state = _State.WAIT_PUSH
        if proto_flags(self.peer_info) & wire.IV_PROTO_REQUEST_PUSH:
            self._message(wire.PUSH_REQUEST, events)  # 2.6 clients take the push unasked

    def _push_options(self) -> list[tuple[str, ...]]:
        p = self.push
        opts: list[tuple[str, ...]] = []
        if p.route_gateway:
            opts.append(("route-gateway", p.route_gateway))
        opts += [("topology", p.topology), ("ping", str(p.ping)),
                 ("ping-restart", str(p.ping_restart)), ("ifconfig", *p.ifconfig),
                 ("peer-id", str(p.peer_id)), ("cipher", self.cipher)]
        flags = ("cc-exit",) if proto_flags(self.peer_info) & wire.IV_PROTO_CC_EXIT_NOTIFY else ()
        if self.ekm:
            flags += ("tls-ekm",)
        if flags:
            opts.append(("protocol-flags", *flags))
        if p.tun_mtu is not None:
            opts.append(("tun-mtu", str(p.tun_mtu)))
        opts += list(p.extra)
        return opts

    def _message(self, text: str, events: list) -> None:
        if text == "EXIT" and self.state is _State.ESTABLISHED:
            events.append(Exited())
            return
        if text != wire.PUSH_REQUEST:
            self._note_drop(f"control message {text[:40]!r} ignored")
            return
        if self._push_reply is None and self._push_for is not None:
            push = self._push_for(self.common_name)
            if push is None:
                self._fail(events, "address pool exhausted")
                return
            self.push = push
        if self._push_reply is None:
            self._push_reply = wire.build_message(wire.build_push_reply(self._push_options()))
        self._write(self._push_reply)  # a repeated PUSH_REQUEST gets the same reply
        if self.state is _State.WAIT_PUSH:
            self._establish(events)

    def _establish(self, events: list) -> None:
        km = self.client_key_method
        self._keys = self._data_keys(lambda: DataKeys.from_prf(
            km.pre_master, km.random1, self._randoms[:32], km.random2, self._randoms[32:],
            self.remote_session_id, self.session_id))
        self.state = _State.ESTABLISHED
        events.append(Established(self._keys, self.cipher, self.push.peer_id,
                                  self.common_name, dict(self.peer_info), self.ekm))
