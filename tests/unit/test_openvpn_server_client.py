"""The sans-I/O Server and Client cores paired in memory, with the example PKI of configs/vpn.

No sockets, a fake clock, deterministic entropy: what the real peers check in
tests/interop/test_vpn_*.py, here with every packet in the test's hands (replay, tampering,
spoofing, key transitions).
"""

from __future__ import annotations

import ast
import hashlib
import ipaddress
import struct
from pathlib import Path

import pytest

from plugins.openvpn import client as C
from plugins.openvpn import crypto
from plugins.openvpn import handshake as H
from plugins.openvpn import wire
from plugins.openvpn import server as S

ROOT = Path(__file__).resolve().parents[2]
VPN = ROOT / "configs" / "vpn"
MS = 1_000_000
SEC = 1_000_000_000


class Entropy:
    """Deterministic bytes (a hash chain): the cores take entropy as a callable."""

    def __init__(self, seed: bytes) -> None:
        self.state = seed

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.state = hashlib.sha256(self.state).digest()
            out += self.state
        return out[:n]


def _server(**kw) -> S.Server:
    ctx = H.server_tls_config(str(VPN / "server/server.crt"), str(VPN / "server/server.key"),
                              str(VPN / "server/ca.crt"))
    key2 = crypto.parse_static_key((VPN / "server/tc.key").read_text())
    settings = S.ServerSettings(ctx, ipaddress.IPv4Network("10.200.8.0/24"),
                                wrapper=lambda: crypto.TlsCrypt(key2, server=True), **kw)
    return S.Server(settings, Entropy(b"server"))


def _client(name: str = "client1", **kw) -> C.Client:
    ctx = C.client_tls_config((VPN / "clients/ca.crt").read_text(),
                              (VPN / f"clients/{name}.crt").read_text(),
                              (VPN / f"clients/{name}.key").read_text())
    key2 = crypto.parse_static_key((VPN / "clients/tc.key").read_text())
    kw = {"server_eku": True, "verify_server_name": "server",
          "wrapper": lambda: crypto.TlsCrypt(key2, server=False), **kw}
    settings = C.ClientSettings(ctx, **kw)
    return C.Client(settings, Entropy(name.encode()), 0)


class Link:
    """Carries packets both ways, ticking both cores every 10 ms of fake time."""

    def __init__(self, server: S.Server, client: C.Client, addr=("10.200.7.2", 40000)) -> None:
        self.server, self.client, self.addr = server, client, addr
        self.now = 0
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.tun_server: list[bytes] = []
        self.tun_client: list[bytes] = []
        self.connected: C.Connected | None = None
        self.wire_to_server: list[bytes] = []  # every packet the server got, for replays
        self._take_client(client.start(0, 0))

    def _take_client(self, items) -> None:
        for item in items:
            if isinstance(item, C.ToServer):
                self.to_server.append(item.data)
            elif isinstance(item, C.ToTun):
                self.tun_client.append(item.packet)
            elif isinstance(item, C.Connected):
                self.connected = item

    def _take_server(self, items) -> None:
        for item in items:
            if isinstance(item, S.ToClient):
                self.to_client.append(item.data)
            elif isinstance(item, S.ToTun):
                self.tun_server.append(item.packet)

    def run(self, seconds: float) -> None:
        end = self.now + int(seconds * SEC)
        while self.now < end:
            while self.to_server or self.to_client:
                batch, self.to_server = self.to_server, []
                for data in batch:
                    self.wire_to_server.append(data)
                    self._take_server(self.server.from_client(self.addr, data, self.now, 0))
                batch, self.to_client = self.to_client, []
                for data in batch:
                    self._take_client(self.client.from_server(data, self.now, 0))
            self.now += 10 * MS
            self._take_server(self.server.tick(self.now, 0))
            self._take_client(self.client.tick(self.now, 0))


def _icmp(src: str, dst: str, ident: int = 1) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"ping"
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 1, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + body


@pytest.fixture
def link() -> Link:
    link = Link(_server(reneg_s=0), _client())
    link.run(0.5)
    assert link.connected is not None, link.client.counters
    return link


def test_client_connects_and_packets_cross_both_ways(link):
    c = link.connected
    assert c.address == ipaddress.IPv4Interface("10.200.8.2/24")
    assert c.gateway == ipaddress.IPv4Address("10.200.8.1") and c.cipher == "AES-256-GCM"
    up = _icmp("10.200.8.2", "10.200.9.2")
    link._take_client(link.client.from_tun(up, link.now))
    link.run(0.05)
    assert link.tun_server == [up]
    down = _icmp("10.200.9.2", "10.200.8.2")
    link._take_server(link.server.from_tun(down, link.now))
    link.run(0.05)
    assert link.tun_client == [down]


@pytest.mark.parametrize("server_ekm,client_ekm", [(True, True), (True, False), (False, True)])
def test_data_keys_by_tls_ekm_or_prf_through_renegotiation(server_ekm, client_ekm):
    link = Link(_server(reneg_s=3, tls_ekm=server_ekm), _client(reneg_s=0, tls_ekm=client_ekm))
    link.run(0.5)
    assert link.connected is not None, link.client.counters
    flags = link.connected.push.get("protocol-flags")
    ekm = server_ekm and client_ekm
    assert flags == (("cc-exit", "tls-ekm") if ekm else ("cc-exit",))
    peer = next(iter(link.server.peers.values()))
    link.run(3)  # the server renegotiates: the new key is made the same way
    assert peer.session.key_id == 1 and link.client.current.key_id == 1
    for ks in (peer.session, link.client.current):
        assert ks.ekm is ekm
    up, down = _icmp("10.200.8.2", "10.200.9.2"), _icmp("10.200.9.2", "10.200.8.2")
    link._take_client(link.client.from_tun(up, link.now))
    link._take_server(link.server.from_tun(down, link.now))
    link.run(0.05)
    assert link.tun_server == [up] and link.tun_client == [down]
    assert not link.server.counters["drop.auth"] and not link.client.counters["drop.auth"]


def test_tls_crypt_v2_client_key_wrapped_by_the_server_key():
    entropy = Entropy(b"v2 keys")
    server_key = crypto.TlsCryptV2ServerKey(crypto.Key(entropy(64), entropy(64)))
    kc = crypto.Key2.from_bytes(entropy(256))
    client_key = crypto.TlsCryptV2ClientKey(kc, server_key.wrap_client_key(kc, b"\x00user"))
    server = _server(reneg_s=0)
    server = S.Server(S.ServerSettings(server.settings.tls, server.settings.network,
                                       v2_key=server_key), Entropy(b"server"))
    link = Link(server, _client(wrapper=client_key.wrapper))
    first = link.to_server[0]
    assert first[0] >> 3 == wire.Opcode.P_CONTROL_HARD_RESET_CLIENT_V3
    assert first.endswith(client_key.wkc)
    link.run(0.5)
    assert link.connected is not None, (link.client.counters, link.server.counters)
    up = _icmp("10.200.8.2", "10.200.9.2")
    link._take_client(link.client.from_tun(up, link.now))
    link.run(0.05)
    assert link.tun_server == [up]
    # a client key wrapped by another server key gets nowhere
    other = crypto.TlsCryptV2ServerKey(crypto.Key(entropy(64), entropy(64)))
    stranger = crypto.TlsCryptV2ClientKey(kc, other.wrap_client_key(kc, b""))
    link2 = Link(server, _client(wrapper=stranger.wrapper), addr=("10.200.7.3", 40000))
    link2.run(0.5)
    assert link2.connected is None and server.counters["drop.tls-crypt-v2 client key"] >= 1


def test_replayed_tampered_and_spoofed_data_is_dropped_and_counted(link):
    up = _icmp("10.200.8.2", "10.200.9.2")
    [pkt] = link.client.from_tun(up, link.now)
    assert link.server.from_client(link.addr, pkt.data, link.now, 0) == [S.ToTun(up)]
    assert link.server.from_client(link.addr, pkt.data, link.now, 0) == []
    assert link.server.counters["drop.replay"] == 1
    [pkt] = link.client.from_tun(up, link.now)
    bad = bytearray(pkt.data)
    bad[-1] ^= 1
    assert link.server.from_client(link.addr, bytes(bad), link.now, 0) == []
    assert link.server.counters["drop.auth"] == 1
    [pkt] = link.client.from_tun(_icmp("10.200.8.77", "10.200.9.2"), link.now)
    assert link.server.from_client(link.addr, pkt.data, link.now, 0) == []
    assert link.server.counters["drop.spoofed"] == 1
    # and the genuine packet after all that still passes
    [pkt] = link.client.from_tun(up, link.now)
    assert link.server.from_client(link.addr, pkt.data, link.now, 0) == [S.ToTun(up)]


def test_control_replay_and_garbage_from_strangers(link):
    for data in link.wire_to_server[:3]:  # replayed control packets of the handshake
        link.server.from_client(link.addr, data, link.now, 0)
    assert link.server.counters["drop.control replay"] == 3
    other = ("10.200.7.9", 1)
    for data in (b"", b"\xff" * 40, bytes([7 << 3]) + b"\0" * 60, bytes([9 << 3]) + b"x" * 30):
        assert link.server.from_client(other, data, link.now, 0) == []
    assert other not in link.server.peers and len(link.server.peers) == 1


def test_server_renegotiates_and_old_key_expires_after_transition_window():
    link = Link(_server(reneg_s=5, tran_window_s=3), _client(reneg_s=0, tran_window_s=3))
    link.run(0.5)
    [old] = link.client.from_tun(_icmp("10.200.8.2", "10.200.9.2"), link.now)
    link.run(5.5)
    peer = next(iter(link.server.peers.values()))
    assert peer.session.key_id == 1 and link.client.current.key_id == 1
    assert link.server.counters["renegotiations"] == 1
    up = _icmp("10.200.8.2", "10.200.9.2", ident=2)
    [new] = link.client.from_tun(up, link.now)
    assert new.data[0] & 7 == 1
    assert link.server.from_client(link.addr, new.data, link.now, 0) == [S.ToTun(up)]
    assert link.server.from_client(link.addr, old.data, link.now, 0) != []  # old key, in window
    [older] = link.client.from_tun(up, link.now)  # sent with key 1; make one with key 0:
    older = C.ToServer(link.client.channels[0].encrypt(crypto.DataChannel.header_v2(0, 0), up))
    link.run(4)  # past the transition window: key 0 is gone on both sides
    assert 0 not in link.client.channels
    assert link.server.from_client(link.addr, older.data, link.now, 0) == []
    assert link.server.counters["drop.data key id"] == 1


def test_client_renegotiates_itself():
    link = Link(_server(reneg_s=0), _client(reneg_s=4))
    link.run(9)
    assert link.client.current.key_id == 2, link.client.counters
    assert link.client.counters["renegotiations"] == 2
    assert not link.client.gone and link.server.peers


@pytest.mark.parametrize("limit", [{"reneg_bytes": 50_000}, {"reneg_pkts": 200}])
def test_client_renegotiates_after_bytes_or_packets(limit):
    link = Link(_server(reneg_s=0), _client(reneg_s=0, **limit))
    link.run(0.5)
    assert link.client.current.key_id == 0
    up = _icmp("10.200.8.2", "10.200.9.2") + bytes(300)
    for _ in range(100):  # 100 packets, 33 kB: under both limits
        link._take_client(link.client.from_tun(up, link.now))
    link.run(0.5)
    assert link.client.current.key_id == 0 and link.client.counters["renegotiations"] == 0
    for _ in range(100):
        link._take_client(link.client.from_tun(up, link.now))
    link.run(1)
    assert link.client.current.key_id == 1, link.client.counters
    assert link.client.key_bytes < 50_000 and len(link.tun_server) == 200


def test_pushed_redirect_gateway_and_dhcp_options():
    push = (("route", "10.200.9.0", "255.255.255.0"), ("redirect-gateway", "def1", "local"),
            ("dhcp-option", "DNS", "10.200.9.53"), ("dhcp-option", "DNS", "not-an-address"),
            ("dhcp-option", "DOMAIN", "vpn.example"))
    link = Link(_server(reneg_s=0, push=push), _client())
    link.run(0.5)
    c = link.connected
    assert c.redirect and c.redirect_local
    assert [str(r) for r in c.routes] == ["10.200.9.0/24", "0.0.0.0/1", "128.0.0.0/1"]
    assert c.dns == ("10.200.9.53",) and c.domain == "vpn.example"
    assert link.client.counters["drop.push dhcp-option"] == 1
    plain = Link(_server(reneg_s=0), _client())
    plain.run(0.5)
    assert not plain.connected.redirect and plain.connected.dns == ()


def test_silent_client_is_dropped_after_ping_restart(link):
    link.client.gone = True  # the client stops answering
    link.run(121)
    assert not link.server.peers
    assert link.server.counters["closed"] == 1


def test_client_disconnects_when_the_server_is_silent(link):
    link.server.peers.clear()  # the server forgets the client: nothing comes back
    link.run(61)
    assert link.client.gone


def test_wrong_server_name_is_refused():
    link = Link(_server(), _client(verify_server_name="someone-else"))
    link.run(0.5)
    assert link.connected is None and link.client.gone


def test_cores_have_no_io_imports():
    for mod in ("server", "client", "serverconf", "clientconf"):
        src = (ROOT / "plugins" / "openvpn" / f"{mod}.py").read_text()
        names = set()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        assert not names & {"socket", "asyncio", "time", "random", "os", "secrets"}, mod
