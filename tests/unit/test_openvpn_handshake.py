"""ServerSession against a minimal Python client role built from the same modules, in memory.

No sockets: both sides exchange bytes through lists, with a fake clock. The client here is only
what the test needs (HARD_RESET_CLIENT_V2, a TLS client over memory BIOs with a client
certificate, the key-method-2 client message, PUSH_REQUEST); the real client is stock OpenVPN in
tests/interop/test_openvpn_handshake_peer.py.
"""

from __future__ import annotations

import ast
import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plugins.openvpn import handshake as H
from plugins.openvpn import wire
from plugins.openvpn.crypto import DataChannel, DataKeys
from plugins.openvpn.reliable import ReliableChannel
from plugins.openvpn.wire import ControlPacket, Opcode

S = 1_000_000_000
CLIENT_SID = bytes.fromhex("0102030405060708")
SERVER_SID = bytes.fromhex("a1b2c3d4e5f60718")
SERVER_RANDOMS = bytes(range(64))
PEER_INFO = ("IV_VER=2.6.14\nIV_PLAT=linux\nIV_PROTO=982\nIV_CIPHERS=AES-256-GCM:CHACHA20-POLY1305\n"
             "IV_MTU=1600\nIV_TCPNL=1\n")
CLIENT_OPTIONS = "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,keysize 256,key-method 2,tls-client"


# --- PKI ------------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(cn, key, issuer_key, issuer_name, *, ca=False, eku=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name or _name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert, key=None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ingot-test-ca", ca_key, ca_key, None, ca=True)
    _write(d / "ca", ca)
    for cn, eku in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        k = ec.generate_private_key(ec.SECP256R1())
        _write(d / cn, _cert(cn, k, ca_key, ca.subject, eku=eku), k)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("other-ca", other_key, other_key, None, ca=True)
    k = ec.generate_private_key(ec.SECP256R1())
    _write(d / "stranger", _cert("stranger", k, other_key, other.subject,
                                 eku=ExtendedKeyUsageOID.CLIENT_AUTH), k)
    return d


def _server_ctx(pki: Path):
    return H.server_tls_config(str(pki / "server.crt"), str(pki / "server.key"), str(pki / "ca.crt"))


def _client_ctx(pki: Path, who: str = "client") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / f"{who}.crt"), str(pki / f"{who}.key"))
    return ctx


# --- a minimal client role --------------------------------------------------------------------

class MiniClient:
    def __init__(self, ctx: ssl.SSLContext, now: int, peer_info: str = PEER_INFO):
        self.sid = CLIENT_SID
        self.server_sid: bytes | None = None
        self.chan = ReliableChannel(initial_timeout_ns=1 * S, window=H.TLS_RELIABLE_WINDOW,
                                    max_payload=1100)
        self.reset_id = self.chan.send(b"R")[0]
        self.bio_in, self.bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.bio_in, self.bio_out, server_side=False)
        self.km = wire.KeyMethod2(CLIENT_OPTIONS, bytes([1]) * 32, bytes([2]) * 32,
                                  pre_master=bytes([3]) * 48, username="", password="",
                                  peer_info=peer_info)
        self.stage = "tls"
        self.server_km: wire.KeyMethod2 | None = None
        self.push: wire.PushReply | None = None
        self.splitter = wire.MessageSplitter()
        self.tls_error: str | None = None
        self.push_requests = 0

    def _pull(self):
        data = self.bio_out.read()
        if data:
            self.chan.send(data)

    def out(self, now: int) -> list[bytes]:
        pkts = []
        for o in self.chan.packets_due(now):
            if o.packet_id == self.reset_id:
                pkts.append(wire.build_control(ControlPacket(
                    Opcode.P_CONTROL_HARD_RESET_CLIENT_V2, 0, self.sid, (), None, 0, b"")))
                continue
            assert self.server_sid is not None
            pkts.append(wire.build_control(ControlPacket(
                Opcode.P_CONTROL_V1, 0, self.sid, o.acks, self.server_sid if o.acks else None,
                o.packet_id, o.payload)))
        while acks := self.chan.standalone_ack_due(now):
            pkts.append(wire.build_control(ControlPacket(Opcode.P_ACK_V1, 0, self.sid, acks,
                                                         self.server_sid)))
        return pkts

    def receive(self, data: bytes, now: int) -> None:
        pkt = wire.parse_control(data)
        if pkt.acks:
            assert pkt.remote_session_id == self.sid
            self.chan.ack_received(pkt.acks)
        if pkt.opcode == Opcode.P_CONTROL_HARD_RESET_SERVER_V2:
            self.server_sid = pkt.session_id
            self.chan.receive(pkt.packet_id, b"", now)
            self._step()
            return
        assert pkt.session_id == self.server_sid
        if pkt.opcode == Opcode.P_CONTROL_V1:
            for payload in self.chan.receive(pkt.packet_id, pkt.payload, now):
                self.bio_in.write(payload)
            self._step()

    def _step(self) -> None:
        try:
            if self.stage == "tls":
                self.tls.do_handshake()
                self.tls.write(wire.build_key_method_2(self.km))
                self.stage = "km"
            while True:
                chunk = self.tls.read(1 << 16)
                if not chunk:
                    break
                if self.stage == "km":
                    self.server_km = wire.parse_key_method_2(chunk, from_client=False)
                    self.tls.write(wire.build_message(wire.PUSH_REQUEST))
                    self.push_requests += 1
                    self.stage = "push"
                else:
                    for text in self.splitter.feed(chunk):
                        self.push = wire.parse_push_reply(text)
                        self.stage = "done"
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            self.tls_error = str(e)
        self._pull()

    def keys(self) -> DataKeys:
        s = self.server_km
        return DataKeys.from_prf(self.km.pre_master, self.km.random1, s.random1, self.km.random2,
                                 s.random2, self.sid, self.server_sid)


# --- driver -----------------------------------------------------------------------------------

def run(server: H.ServerSession, client: MiniClient, now: int, drop_every: int = 0,
        until=None, max_rounds: int = 2000) -> tuple[list, int, int]:
    """Move packets both ways until ``until()`` or the server finishes; returns (events, now, sent)."""
    events: list = []
    counter = 0
    for _ in range(max_rounds):
        moved = False
        out: list = []
        for pkt in client.out(now):
            counter += 1
            if drop_every and counter % drop_every == 0:
                continue
            moved = True
            out += server.receive(pkt, now)
        out += server.tick(now)
        for e in out:
            if not isinstance(e, H.SendPacket):
                events.append(e)
                continue
            counter += 1
            if drop_every and counter % drop_every == 0:
                continue
            moved = True
            client.receive(e.data, now)
        done = server.failed or (until() if until else server.established and client.stage == "done")
        if done:
            return events, now, counter
        if not moved:
            deadlines = [d for d in (server.next_deadline(), client.chan.next_deadline()) if d is not None]
            if not deadlines:
                return events, now, counter
            now = max(now + 1, min(deadlines))
    raise AssertionError("handshake did not settle")


def make_server(pki: Path, now: int = 0, **kw) -> H.ServerSession:
    push = H.PushOptions(ifconfig=("10.200.8.2", "255.255.255.0"), route_gateway="10.200.8.1",
                         peer_id=3, data_ciphers=kw.pop("data_ciphers", ("AES-256-GCM", "CHACHA20-POLY1305")))
    return H.ServerSession(_server_ctx(pki), push, session_id=SERVER_SID, randoms=SERVER_RANDOMS,
                           now_ns=now, **kw)


# --- tests ------------------------------------------------------------------------------------

def test_handshake_reaches_same_data_keys(pki):
    server, client = make_server(pki), MiniClient(_client_ctx(pki), 0)
    events, _, _ = run(server, client, 0)
    [est] = [e for e in events if isinstance(e, H.Established)]
    assert not [e for e in events if isinstance(e, H.Failed)]
    assert est.cipher == "AES-256-GCM" and est.peer_id == 3
    assert est.client_common_name == "client"
    assert est.peer_info["IV_VER"] == "2.6.14" and est.peer_info["IV_PROTO"] == "982"
    assert est.keys.key2 == client.keys().key2
    # client encrypts, server decrypts, and back
    c = client.keys().channel(est.cipher, server=False)
    s = est.keys.channel(est.cipher, server=True)
    hdr = DataChannel.header_v2(0, est.peer_id)
    assert s.decrypt(c.encrypt(hdr, b"hello from client")) == b"hello from client"
    assert c.decrypt(s.encrypt(hdr, b"hello from server")) == b"hello from server"
    # the server's key-method-2 mirrors the client's options as the server side
    assert client.server_km.options == CLIENT_OPTIONS.replace("tls-client", "tls-server")
    assert client.server_km.pre_master is None
    assert client.server_km.random1 == SERVER_RANDOMS[:32]


def test_push_reply_content(pki):
    server, client = make_server(pki), MiniClient(_client_ctx(pki), 0)
    run(server, client, 0)
    p = client.push
    assert p.get("ifconfig") == ("10.200.8.2", "255.255.255.0")
    assert p.get("route-gateway") == ("10.200.8.1",)
    assert p.get("topology") == ("subnet",)
    assert p.get("ping") == ("10",) and p.get("ping-restart") == ("60",)
    assert p.get("peer-id") == ("3",)
    assert p.get("cipher") == ("AES-256-GCM",)
    # IV_PROTO 982 (a stock 2.6 client's 990 less TLS_KEY_EXPORT) has CC_EXIT_NOTIFY
    assert p.get("protocol-flags") == ("cc-exit",)
    assert p.get("tun-mtu") == ("1500",)


def test_tls_ekm_when_the_client_offers_it(pki):
    # this test client runs CPython's ssl, which cannot export keys: the Ingot client pairs
    # with the server on exported keys in test_openvpn_server_client.py, stock OpenVPN in interop
    client = MiniClient(_client_ctx(pki), 0, PEER_INFO.replace("IV_PROTO=982", "IV_PROTO=990"))
    events, _, _ = run(make_server(pki), client, 0)
    [est] = [e for e in events if isinstance(e, H.Established)]
    assert est.ekm and est.keys.key2 != client.keys().key2
    assert client.push.get("protocol-flags") == ("cc-exit", "tls-ekm")
    events, _, _ = run(make_server(pki, tls_ekm=False), MiniClient(
        _client_ctx(pki), 0, PEER_INFO.replace("IV_PROTO=982", "IV_PROTO=990")), 0)
    [est] = [e for e in events if isinstance(e, H.Established)]
    assert not est.ekm


def test_cipher_follows_server_preference_within_client_offer(pki):
    server = make_server(pki, data_ciphers=("CHACHA20-POLY1305", "AES-256-GCM"))
    client = MiniClient(_client_ctx(pki), 0, PEER_INFO.replace("IV_PROTO=982", "IV_PROTO=6"))
    events, _, _ = run(server, client, 0)
    [est] = [e for e in events if isinstance(e, H.Established)]
    assert est.cipher == "CHACHA20-POLY1305"
    assert client.push.get("protocol-flags") is None  # no cc-exit bit in IV_PROTO 6
    c = client.keys().channel(est.cipher, server=False)
    assert est.keys.channel(est.cipher, server=True).decrypt(
        c.encrypt(DataChannel.header_v2(0, 3), b"x")) == b"x"


def test_no_common_cipher_fails(pki):
    server = make_server(pki, data_ciphers=("AES-128-GCM",))
    client = MiniClient(_client_ctx(pki), 0)
    events, _, _ = run(server, client, 0)
    [f] = [e for e in events if isinstance(e, H.Failed)]
    assert "no common data cipher" in f.reason
    assert not server.established


def test_client_certificate_from_another_ca_fails(pki):
    server, client = make_server(pki), MiniClient(_client_ctx(pki, "stranger"), 0)
    events, _, _ = run(server, client, 0)
    [f] = [e for e in events if isinstance(e, H.Failed)]
    assert "certificate" in f.reason
    assert not [e for e in events if isinstance(e, H.Established)]
    assert server.next_deadline() is None and server.tick(10**12) == []


def test_packet_loss_completes_by_retransmission(pki):
    server, client = make_server(pki), MiniClient(_client_ctx(pki), 0)
    events, now, _ = run(server, client, 0, drop_every=3)
    [est] = [e for e in events if isinstance(e, H.Established)]
    assert est.keys.key2 == client.keys().key2
    assert now > 0  # the fake clock had to move for retransmissions
    assert server._chan.stats.retransmitted > 0 or client.chan.stats.retransmitted > 0


def test_repeated_push_request_gets_same_reply_and_one_established(pki):
    server, client = make_server(pki), MiniClient(_client_ctx(pki), 0)
    events, now, _ = run(server, client, 0)
    first = client.push
    client.push = None
    client.tls.write(wire.build_message(wire.PUSH_REQUEST))
    client._pull()
    more, _, _ = run(server, client, now, until=lambda: client.push is not None)
    assert client.push == first
    assert not [e for e in more if isinstance(e, (H.Established, H.Failed))]


def test_hand_window_timeout(pki):
    server = make_server(pki, now=5 * S, hand_window_ns=60 * S)
    assert server.next_deadline() == 65 * S
    assert server.tick(64 * S) == []
    [f] = server.tick(65 * S)
    assert isinstance(f, H.Failed) and "hand-window" in f.reason


def test_silent_client_after_reset_times_out_with_retransmissions(pki):
    server = make_server(pki)
    client = MiniClient(_client_ctx(pki), 0)
    [reset] = client.out(0)
    out = server.receive(reset, 0)
    assert [wire.parse_control(e.data).opcode for e in out] == [Opcode.P_CONTROL_HARD_RESET_SERVER_V2]
    sent, now = 1, 0
    while not server.failed:
        now = server.next_deadline()
        for e in server.tick(now):
            if isinstance(e, H.SendPacket):
                pkt = wire.parse_control(e.data)
                assert pkt.opcode == Opcode.P_CONTROL_HARD_RESET_SERVER_V2 and pkt.acks == (0,)
                sent += 1
    assert sent > 2 and now == 60 * S


def test_bad_input_is_dropped_not_raised(pki):
    server = make_server(pki)
    for junk in (b"", b"\x00", b"\xff" * 40, bytes([Opcode.P_CONTROL_V1 << 3]) + CLIENT_SID + b"\x00"):
        assert server.receive(junk, 0) == []
    # a CONTROL_V1 before any reset
    pkt = wire.build_control(ControlPacket(Opcode.P_CONTROL_V1, 0, CLIENT_SID, (), None, 1, b"x"))
    assert server.receive(pkt, 0) == []
    assert server.dropped == 5 and not server.failed
    client = MiniClient(_client_ctx(pki), 0)
    server.receive(client.out(0)[0], 0)
    # garbage TLS records end the session with Failed, no exception
    bad = wire.build_control(ControlPacket(Opcode.P_CONTROL_V1, 0, CLIENT_SID, (), None, 1,
                                           b"\x16\x03\x01\x00\x05hello"))
    events = server.receive(bad, 0)
    assert any(isinstance(e, H.Failed) for e in events)


def test_core_has_no_io_imports():
    src = Path(H.__file__).read_text()
    names = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    assert not names & {"socket", "asyncio", "time", "random", "os", "secrets"}
