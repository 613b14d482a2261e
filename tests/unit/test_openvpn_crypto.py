"""Unit tests for plugins.openvpn.crypto: no sockets, no binaries; the real peer is in tests/interop."""

from __future__ import annotations

import ast
import hashlib
import hmac
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.openvpn import crypto as C

# A fixed key in `openvpn --genkey secret` format (bytes = SHA256(0) || ... || SHA256(7)).
STATIC_KEY = """\
#
# 2048 bit OpenVPN static key
#
-----BEGIN OpenVPN Static key V1-----
6e340b9cffb37a989ca544e6bb780a2c
78901d3fb33738768511a30617afa01d
4bf5122f344554c53bde2ebb8cd2b7e3
d1600ad631c385a5d7cce23c7785459a
dbc1b4c900ffe48d575b5da5c6380401
25f65db0fe3e24494b76ea986457d986
084fed08b978af4d7d196a7446a86b58
009e636b611db16211b65a9aadff29c5
e52d9c508c502347344d8c07ad91cbd6
068afc75ff6292f062a09ca381c89e71
e77b9a9ae9e30b0dbdb6f510a264ef9d
e781501d7b6b92ae89eb059c5ab743db
67586e98fad27da0b9968bc039a1ef34
c939b9b8e523a8bef89d478608c5ecf6
ca358758f6d27e6cf45272937977a748
fd88391db679ceda7dc7bf1f005ee879
-----END OpenVPN Static key V1-----
"""
RAW = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(8))
SID = bytes.fromhex("0102030405060708")
NOW = 1_700_000_000
# HARD_RESET_CLIENT_V2, key id 0 | session id | ack count 0 | message packet id 0
RESET = bytes([C.P_CONTROL_HARD_RESET_CLIENT_V2 << 3]) + SID + b"\x00" + b"\x00\x00\x00\x00"


@pytest.fixture
def key2() -> C.Key2:
    return C.parse_static_key(STATIC_KEY)


# ---------------------------------------------------------------- static keys


def test_parse_static_key(key2):
    assert key2.to_bytes() == RAW
    assert key2.keys[0].cipher == RAW[:64] and key2.keys[0].hmac == RAW[64:128]
    assert key2.keys[1].cipher == RAW[128:192] and key2.keys[1].hmac == RAW[192:]
    assert C.parse_static_key(C.format_static_key(key2)) == key2
    assert "6e34" not in repr(key2)


@pytest.mark.parametrize("bad", ["", STATIC_KEY.replace("6e34", "zz34"),
                                 STATIC_KEY.replace("fd88391db679ceda7dc7bf1f005ee879\n", ""),
                                 STATIC_KEY.replace("-----END OpenVPN Static key V1-----", "")])
def test_parse_static_key_rejects(bad):
    with pytest.raises(ValueError):
        C.parse_static_key(bad)


def test_key_directions(key2):
    k0, k1 = key2.keys
    assert C.directional_keys(key2, 0) == (k0, k1)
    assert C.directional_keys(key2, 1) == (k1, k0)
    assert C.directional_keys(key2, None) == (k0, k0)
    with pytest.raises(ValueError):
        C.directional_keys(key2, 2)


# ---------------------------------------------------------------- tls-auth


@pytest.mark.parametrize("digest", ["SHA1", "SHA256"])
def test_tls_auth_round_trip_and_layout(key2, digest):
    client, server = C.TlsAuth(key2, 1, digest), C.TlsAuth(key2, 0, digest)
    wire = client.wrap(RESET, NOW)
    n = hashlib.new(digest).digest_size
    assert wire[:9] == RESET[:9]
    assert wire[9 + n:9 + n + 8] == struct.pack("!II", 1, NOW)
    assert wire[9 + n + 8:] == RESET[9:]
    # HMAC input order is packet_id | time | opcode | session id | rest; client (dir 1) sends keys[1]
    expect = hmac.new(key2.keys[1].hmac[:n], wire[9 + n:9 + n + 8] + RESET, digest).digest()
    assert wire[9:9 + n] == expect
    assert server.unwrap(wire) == RESET
    assert client.unwrap(server.wrap(RESET, NOW)) == RESET


def test_tls_auth_tamper_replay_wrong_direction(key2):
    client, server = C.TlsAuth(key2, 1), C.TlsAuth(key2, 0)
    wire = client.wrap(RESET, NOW)
    for i in range(len(wire)):
        bad = bytearray(wire)
        bad[i] ^= 0x01
        with pytest.raises(C.AuthFailed):
            server.unwrap(bytes(bad))
    server.unwrap(wire)
    with pytest.raises(C.Replayed):
        server.unwrap(wire)
    with pytest.raises(C.AuthFailed):
        C.TlsAuth(key2, 1).unwrap(client.wrap(RESET, NOW))  # same direction both ends
    with pytest.raises(C.AuthFailed):
        server.unwrap(wire[:20])


def test_tls_auth_bidirectional(key2):
    a, b = C.TlsAuth(key2, None), C.TlsAuth(key2, None)
    assert b.unwrap(a.wrap(RESET, NOW)) == RESET


# ---------------------------------------------------------------- tls-crypt


def test_tls_crypt_round_trip_and_layout(key2):
    client, server = C.TlsCrypt(key2, server=False), C.TlsCrypt(key2, server=True)
    payload = RESET + b"hello tls"
    wire = client.wrap(payload, NOW)
    header = payload[:9] + struct.pack("!II", 1, NOW)
    assert wire[:17] == header
    # client sends with keys[1]: Ka = hmac[:32], Ke = cipher[:32]
    k = key2.keys[1]
    tag = hmac.new(k.hmac[:32], header + payload[9:], hashlib.sha256).digest()
    assert wire[17:49] == tag
    enc = Cipher(algorithms.AES(k.cipher[:32]), modes.CTR(tag[:16])).encryptor()
    assert wire[49:] == enc.update(payload[9:]) + enc.finalize()
    assert server.unwrap(wire) == payload
    assert client.unwrap(server.wrap(payload, NOW + 1)) == payload


def test_tls_crypt_tamper_and_replay(key2):
    client, server = C.TlsCrypt(key2, server=False), C.TlsCrypt(key2, server=True)
    wire = client.wrap(RESET, NOW)
    for i in range(len(wire)):
        bad = bytearray(wire)
        bad[i] ^= 0x80
        with pytest.raises(C.AuthFailed):
            server.unwrap(bytes(bad))
    assert server.unwrap(wire) == RESET
    with pytest.raises(C.Replayed):
        server.unwrap(wire)
    with pytest.raises(C.AuthFailed):  # the server does not accept its own direction
        C.TlsCrypt(key2, server=True).unwrap(C.TlsCrypt(key2, server=True).wrap(RESET, NOW))
    # out-of-order within the window is fine; an older net time is not
    w2, w3 = client.wrap(RESET, NOW), client.wrap(RESET, NOW)
    server.unwrap(w3)
    server.unwrap(w2)
    old = C.TlsCrypt(key2, server=False)
    old._send_id.last = 50
    with pytest.raises(C.Replayed):
        server.unwrap(old.wrap(RESET, NOW - 1))


def test_tls_crypt_v2_wkc(key2):
    server_key = C.Key(RAW[:64], RAW[64:128])
    srv = C.TlsCryptV2ServerKey(server_key)
    kc = C.Key2.from_bytes(bytes(reversed(RAW)))
    meta = bytes([C.METADATA_TYPE_USER]) + b"client-1"
    wkc = srv.wrap_client_key(kc, meta)
    assert len(wkc) == 32 + 256 + len(meta) + 2 and wkc[-2:] == struct.pack("!H", len(wkc))
    assert srv.unwrap_client_key(wkc) == (kc, meta)
    bad = bytearray(wkc)
    bad[40] ^= 1
    with pytest.raises(C.AuthFailed):
        srv.unwrap_client_key(bytes(bad))
    # a client packet: tls-crypt with Kc, WKc appended
    cli = C.TlsCryptV2ClientKey(kc, wkc)
    assert C.TlsCryptV2ClientKey.from_text(cli.to_text()) == cli
    reset3 = bytes([C.P_CONTROL_HARD_RESET_CLIENT_V3 << 3]) + RESET[1:]
    wire = C.TlsCrypt(kc, server=False).wrap(reset3, NOW) + wkc
    pkt, kc2, meta2 = srv.split_client_packet(wire)
    assert (kc2, meta2) == (kc, meta)
    assert C.TlsCrypt(kc2, server=True).unwrap(pkt) == reset3
    text = C.format_pem_key(RAW[:128], C.TLS_CRYPT_V2_SERVER_PEM)
    assert C.TlsCryptV2ServerKey.from_text(text).wrap_client_key(kc, meta) == wkc


# ---------------------------------------------------------------- replay window


def test_replay_window():
    r = C.Replay(size=64)
    with pytest.raises(C.Replayed):
        r.accept(0)
    r.accept(1)
    r.accept(3)
    r.accept(2)
    for pid in (1, 2, 3):
        with pytest.raises(C.Replayed):
            r.accept(pid)
    r.accept(100)
    with pytest.raises(C.Replayed):
        r.accept(36)  # 100 - 36 = 64: outside
    r.accept(37)  # 63 back: inside, unseen
    with pytest.raises(C.Replayed):
        r.accept(37)
    r.accept(1000)  # jump beyond the window clears it
    r.accept(999)
    r.check(998)  # check alone does not commit
    r.accept(998)


@given(st.lists(st.integers(1, 300), max_size=200))
def test_replay_window_matches_model(ids):
    r, seen, high = C.Replay(size=16), set(), 0
    for pid in ids:
        ok = pid not in seen and pid > high - 16
        try:
            r.accept(pid)
            assert ok
            seen.add(pid)
            high = max(high, pid)
        except C.Replayed:
            assert not ok


# ---------------------------------------------------------------- data channel

AEAD = ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"]


@pytest.fixture
def keys() -> C.DataKeys:
    return C.DataKeys.from_tls_ekm(RAW)


@pytest.mark.parametrize("cipher", AEAD)
def test_aead_round_trip_both_ways(keys, cipher):
    cli, srv = keys.channel(cipher, server=False), keys.channel(cipher, server=True)
    hdr = C.DataChannel.header_v2(key_id=1, peer_id=0x123456)
    for i in range(5):
        payload = bytes([i]) * (i * 100)
        assert srv.decrypt(cli.encrypt(hdr, payload)) == payload
        assert cli.decrypt(srv.encrypt(hdr, payload)) == payload
    v1 = C.DataChannel.header_v1(0)
    assert srv.decrypt(cli.encrypt(v1, b"v1")) == b"v1"


@pytest.mark.parametrize("cipher,cls,klen", [("AES-128-GCM", AESGCM, 16), ("AES-256-GCM", AESGCM, 32),
                                             ("CHACHA20-POLY1305", ChaCha20Poly1305, 32)])
def test_aead_layout_hand_computed(keys, cipher, cls, klen):
    cli = keys.channel(cipher, server=False)
    hdr = C.DataChannel.header_v2(key_id=2, peer_id=7)
    assert hdr == bytes([C.P_DATA_V2 << 3 | 2, 0, 0, 7])
    pkt = cli.encrypt(hdr, b"payload")
    k = keys.key2.keys[0]  # client sends with keys[0]
    pid = struct.pack("!I", 1)
    sealed = cls(k.cipher[:klen]).encrypt(pid + k.hmac[:8], b"payload", hdr + pid)
    assert pkt == hdr + pid + sealed[-16:] + sealed[:-16]
    # P_DATA_V1: the opcode byte is not part of the AD
    v1 = C.DataChannel.header_v1(0)
    pkt1 = cli.encrypt(v1, b"x")
    pid2 = struct.pack("!I", 2)
    sealed1 = cls(k.cipher[:klen]).encrypt(pid2 + k.hmac[:8], b"x", pid2)
    assert pkt1 == v1 + pid2 + sealed1[-16:] + sealed1[:-16]


@pytest.mark.parametrize("cipher", AEAD + ["AES-256-CBC"])
def test_data_tamper_and_replay(keys, cipher):
    cli, srv = keys.channel(cipher, server=False), keys.channel(cipher, server=True)
    hdr = C.DataChannel.header_v2(0, 0)
    pkt = cli.encrypt(hdr, b"secret data", iv=bytes(16))
    # AEAD authenticates the whole V2 header; CBC's HMAC covers IV | ciphertext only (as OpenVPN)
    for i in range(4 if cipher.endswith("CBC") else 0, len(pkt)):
        bad = bytearray(pkt)
        bad[i] ^= 0x04
        with pytest.raises((C.AuthFailed, C.Replayed)):
            srv.decrypt(bytes(bad))
    assert srv.decrypt(pkt) == b"secret data"
    with pytest.raises(C.Replayed):
        srv.decrypt(pkt)
    with pytest.raises(C.AuthFailed):  # a client cannot decrypt its own direction
        keys.channel(cipher, server=False).decrypt(cli.encrypt(hdr, b"x", iv=bytes(16)))


@pytest.mark.parametrize("auth", ["SHA1", "SHA256"])
def test_cbc_round_trip_and_layout(keys, auth):
    cli, srv = keys.channel("AES-256-CBC", server=False, auth=auth), keys.channel("AES-256-CBC", server=True, auth=auth)
    hdr, iv = C.DataChannel.header_v2(0, 0), bytes(range(16))
    pkt = cli.encrypt(hdr, b"hello", iv=iv)
    n = hashlib.new(auth).digest_size
    k = keys.key2.keys[0]
    assert pkt[4 + n:4 + n + 16] == iv
    assert pkt[4:4 + n] == hmac.new(k.hmac[:n], pkt[4 + n:], auth).digest()
    dec = Cipher(algorithms.AES(k.cipher[:32]), modes.CBC(iv)).decryptor()
    pt = dec.update(pkt[4 + n + 16:]) + dec.finalize()
    assert pt[:4] == struct.pack("!I", 1) and pt[4:9] == b"hello"
    assert srv.decrypt(pkt) == b"hello"
    with pytest.raises(ValueError):
        cli.encrypt(hdr, b"x")  # no iv


def test_packet_id_exhaustion(keys):
    cli = keys.channel("AES-256-GCM", server=False)
    cli._send_id.last = C.PACKET_ID_MAX - 1
    cli.encrypt(C.DataChannel.header_v2(0, 0), b"last")
    with pytest.raises(C.PacketIdExhausted):
        cli.encrypt(C.DataChannel.header_v2(0, 0), b"one too many")


def test_unknown_cipher(keys):
    with pytest.raises(ValueError):
        keys.channel("BF-CBC", server=False)


# ---------------------------------------------------------------- key derivation


def _ref_p_hash(name, secret, seed, n):
    # straightforward RFC 2246 §5 reference: A(0) = seed, A(i) = HMAC(secret, A(i-1))
    a = [seed]
    out = b""
    while len(out) < n:
        a.append(hmac.new(secret, a[-1], name).digest())
        out += hmac.new(secret, a[-1] + seed, name).digest()
    return out[:n]


def _ref_prf(secret, label, seed, n):
    ls = len(secret)
    s1, s2 = secret[: (ls + 1) // 2], secret[ls // 2:]
    return bytes(x ^ y for x, y in zip(_ref_p_hash("md5", s1, label + seed, n),
                                       _ref_p_hash("sha1", s2, label + seed, n)))


def test_tls1_prf_known_vector():
    # IETF TLS list msg01589 ("PRF Testvector"), reproduced by many TLS libraries
    out = C.tls1_prf(b"\xab" * 48, b"PRF Testvector" + b"\xcd" * 64, 104)
    assert out.hex() == (
        "d3d4d1e349b5d515044666d51de32bab258cb521b6b053463e354832fd976754"
        "443bcf9a296519bc289abcbc1187e4ebd31e602353776c408aafb74cbc85eff6"
        "9255f9788faa184cbb957a9819d84a5d7eb006eb459d3ae8de9810454b8b2d8f"
        "1afbc655a8c9a013")


@given(st.binary(min_size=1, max_size=80), st.binary(max_size=100), st.integers(1, 300))
@settings(max_examples=50)
def test_tls1_prf_matches_reference(secret, seed, n):
    assert C.tls1_prf(secret, seed, n) == _ref_prf(secret, b"", seed, n)


def test_prf_key_method_2():
    pm, r = bytes(range(48)), [bytes([i]) * 32 for i in (1, 2, 3, 4)]
    csid, ssid = b"C" * 8, b"S" * 8
    keys = C.DataKeys.from_prf(pm, r[0], r[1], r[2], r[3], csid, ssid)
    master = _ref_prf(pm, b"OpenVPN master secret", r[0] + r[1], 48)
    expect = _ref_prf(master, b"OpenVPN key expansion", r[2] + r[3] + csid + ssid, 256)
    assert keys.key2.to_bytes() == expect
    assert C.DataKeys.from_prf(pm, r[0], r[1], r[2], r[3], csid, ssid) == keys  # deterministic
    assert C.DataKeys.from_prf(pm, r[0], r[1], r[2], r[3], ssid, csid) != keys  # sid order matters
    cli, srv = keys.channel("AES-256-GCM", server=False), keys.channel("AES-256-GCM", server=True)
    assert srv.decrypt(cli.encrypt(C.DataChannel.header_v2(0, 0), b"ok")) == b"ok"
    with pytest.raises(ValueError):
        C.DataKeys.from_prf(pm[:47], *r, csid, ssid)


def test_tls_ekm_split_and_direction():
    keys = C.DataKeys.from_tls_ekm(RAW)
    cli, srv = keys.channel("AES-256-GCM", server=False), keys.channel("AES-256-GCM", server=True)
    assert cli._enc_iv == RAW[64:72] and cli._dec_iv == RAW[192:200]
    assert srv._enc_iv == RAW[192:200] and srv._dec_iv == RAW[64:72]
    with pytest.raises(ValueError):
        C.DataKeys.from_tls_ekm(RAW[:255])


# ---------------------------------------------------------------- purity and robustness


def test_core_has_no_effect_imports():
    tree = ast.parse(Path(C.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"socket", "asyncio", "time", "random", "os", "secrets", "selectors"}


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_random_bytes_raise_only_our_errors(data):
    k2 = C.parse_static_key(STATIC_KEY)
    keys = C.DataKeys.from_tls_ekm(RAW)
    srv = C.TlsCryptV2ServerKey(k2.keys[0])
    targets = [C.TlsAuth(k2, 0).unwrap, C.TlsAuth(k2, 0, "SHA256").unwrap,
               C.TlsCrypt(k2, server=True).unwrap, srv.unwrap_client_key, srv.split_client_packet]
    targets += [keys.channel(c, server=True).decrypt for c in AEAD + ["AES-256-CBC"]]
    for fn in targets:
        try:
            fn(data)
        except C.CryptoError:
            pass
