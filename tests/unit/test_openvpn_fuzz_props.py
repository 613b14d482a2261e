"""The fuzz targets' rule (tests/fuzz/fuzz_openvpn.py), for fewer inputs: every OpenVPN parser
and unwrapper, given any bytes, returns a value or raises the library's own error
(``MalformedPacket``, ``CryptoError``), nothing else; the reliable channel takes any run of
operations; ``ServerSession.receive`` never raises and counts what it drops."""

from __future__ import annotations

import datetime
import hashlib
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.openvpn import crypto as C
from plugins.openvpn import handshake as H
from plugins.openvpn import wire
from plugins.openvpn.reliable import ReliableChannel
from plugins.openvpn.wire import ControlPacket, MalformedPacket, Opcode

KEY2 = C.Key2.from_bytes(b"".join(hashlib.sha256(bytes([i])).digest() for i in range(8)))
CLIENT_SID = bytes.fromhex("0102030405060708")
SERVER_SID = bytes.fromhex("a1b2c3d4e5f60718")


def _wrapped_tls_crypt() -> bytes:
    return C.TlsCrypt(KEY2, server=False).wrap(bytes([4 << 3]) + CLIENT_SID + b"\0" + bytes(4), 1)


def _wrapped_tls_auth() -> bytes:
    return C.TlsAuth(KEY2, 1).wrap(bytes([4 << 3]) + CLIENT_SID + b"\0" + bytes(4), 1)


def _wrapped_v2() -> bytes:
    wkc = C.TlsCryptV2ServerKey(KEY2.keys[1]).wrap_client_key(KEY2, b"\0meta")
    return C.TlsCrypt(KEY2, server=False).wrap(bytes([10 << 3]) + CLIENT_SID + b"\0" + bytes(4),
                                               1) + wkc


def _data(cipher: str, auth: str = "SHA1") -> bytes:
    ch = C.DataKeys(KEY2).channel(cipher, server=False, auth=auth)
    return ch.encrypt(ch.header_v2(0, 7), b"payload", iv=None if ch.aead else bytes(16))


# Valid inputs of each kind, to mutate: random bytes seldom get past an opcode, a length or a tag.
SEEDS = [
    wire.build_control(ControlPacket(Opcode.P_CONTROL_V1, 0, CLIENT_SID, (0, 1), SERVER_SID, 2,
                                     b"\x16\x03\x01")),
    wire.build_control(ControlPacket(Opcode.P_ACK_V1, 1, CLIENT_SID, (5,), SERVER_SID)),
    wire.build_data(wire.DataPacket(Opcode.P_DATA_V2, 0, 7, b"payload")),
    wire.frame(b"\x30abc") + wire.frame(bytes(20)),
    wire.build_key_method_2(wire.KeyMethod2("V4,tls-client", bytes(32), bytes(32), bytes(48), "",
                                            "", "IV_VER=2.6\n")),
    wire.build_key_method_2(wire.KeyMethod2("V4,tls-server", bytes(32), bytes(32))),
    b"PUSH_REPLY,ping 10,ifconfig 10.8.0.2 \"a b\",push-continuation 1",
    _wrapped_tls_crypt(), _wrapped_tls_auth(), _wrapped_v2(),
    _data("AES-256-GCM"), _data("CHACHA20-POLY1305"), _data("AES-256-CBC", "SHA256"),
]


@st.composite
def mutated(draw) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[draw(st.integers(0, 4)):][:draw(st.integers(0, len(raw)))])


inputs = st.binary(max_size=200) | mutated()


def _splitter(data: bytes) -> None:
    s = wire.MessageSplitter(max_message=16)
    for i in range(0, len(data), 7):
        assert all("\0" not in m for m in s.feed(data[i:i + 7]))


def _framer(data: bytes) -> None:
    f = wire.TcpFramer(max_packet=64)
    for i in range(0, len(data), 5):
        f.feed(data[i:i + 5])


_V2 = C.TlsCryptV2ServerKey(KEY2.keys[1])
_KEYS = C.DataKeys(KEY2)

PARSERS = {
    "control": wire.parse_control,
    "control-header": wire.parse_control_header,
    "tls-auth-fields": lambda d: wire.split_tls_auth(wire.parse_control_header(d).rest, 20),
    "tls-crypt-fields": lambda d: wire.split_tls_crypt(wire.parse_control_header(d).rest),
    "data": wire.parse_data,
    "tcp-framer": _framer,
    "key-method-2-client": lambda d: wire.parse_key_method_2(d, from_client=True),
    "key-method-2-server": lambda d: wire.parse_key_method_2(d, from_client=False),
    "push-reply": lambda d: wire.parse_push_reply(d.decode("utf-8", "replace")),
    "push-reply-prefixed": lambda d: wire.parse_push_reply(
        "PUSH_REPLY," + d.decode("utf-8", "replace")),
    "splitter": _splitter,
    "tls-crypt": lambda d: C.TlsCrypt(KEY2, server=True).unwrap(d),
    "tls-auth": lambda d: C.TlsAuth(KEY2, 0).unwrap(d),
    "tls-auth-sha512": lambda d: C.TlsAuth(KEY2, None, "SHA512").unwrap(d),
    "tls-crypt-v2-split": _V2.split_client_packet,
    "tls-crypt-v2-wkc": _V2.unwrap_client_key,
    "data-aes-gcm": lambda d: _KEYS.channel("AES-256-GCM", server=True).decrypt(d),
    "data-chacha": lambda d: _KEYS.channel("CHACHA20-POLY1305", server=True).decrypt(d),
    "data-cbc": lambda d: _KEYS.channel("AES-256-CBC", server=True, auth="SHA256").decrypt(d),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_any_bytes_give_a_value_or_the_librarys_error(name):
    parser = PARSERS[name]

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(inputs)
    def check(data):
        try:
            parser(data)
        except (MalformedPacket, C.CryptoError) as err:
            assert err.reason

    check()


@settings(max_examples=300, deadline=None)
@given(inputs)
def test_what_parses_builds_back(data):
    for parse, build in ((wire.parse_control, wire.build_control),
                         (wire.parse_data, wire.build_data)):
        try:
            pkt = parse(data)
        except MalformedPacket:
            continue
        assert build(pkt) == data
    for from_client in (True, False):
        try:
            km = wire.parse_key_method_2(data, from_client=from_client)
        except MalformedPacket:
            continue
        assert wire.parse_key_method_2(wire.build_key_method_2(km), from_client=from_client) == km


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 20), st.binary(min_size=1, max_size=9)),
                max_size=40),
       st.integers(1, 8), st.sampled_from([None, 1, 3]))
def test_reliable_channel_takes_any_run_of_operations(ops, window, max_payload):
    chan = ReliableChannel(initial_timeout_ns=10, max_timeout_ns=80, window=window,
                           max_payload=max_payload, ack_delay_ns=5)
    now, delivered, received = 0, [], set()
    for kind, n, payload in ops:
        if kind == 0:
            chan.send(payload)
        elif kind == 1:
            for out in chan.packets_due(now):
                assert set(out.acks) <= received and len(out.acks) <= wire.CONTROL_SEND_ACK_MAX
        elif kind == 2:
            chan.ack_received(range(n))
        elif kind in (3, 4):
            pid = max(0, len(delivered) + n - 10)
            received.add(pid)
            for got in chan.receive(pid, pid.to_bytes(4, "big"), now):
                assert got == len(delivered).to_bytes(4, "big")
                delivered.append(got)
        elif kind == 5:
            assert set(chan.standalone_ack_due(now)) <= received
        else:
            now += n * 3
        deadline = chan.next_deadline()
        assert deadline is None or deadline >= 0


# --- handshake ----------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def server_ctx(tmp_path_factory):
    d: Path = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(cn, key, issuer_key, issuer, ca):
        return (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(issuer_key, hashes.SHA256()))

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("ca", ca_key, ca_key, _name("ca"), True)
    pem = serialization.Encoding.PEM
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "server.crt").write_bytes(cert("server", key, ca_key, ca.subject, False).public_bytes(pem))
    (d / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return H.server_tls_config(str(d / "server.crt"), str(d / "server.key"), str(d / "ca.crt"))


@st.composite
def client_packets(draw) -> bytes:
    """Raw bytes, or a control packet built from drawn fields (mostly of this session)."""
    if draw(st.booleans()):
        return draw(inputs)
    op = draw(st.sampled_from(sorted(wire.CONTROL_OPCODES)) | st.integers(0, 31))
    key_id = draw(st.sampled_from([0, 0, 0, 1, 7]))
    sid = draw(st.sampled_from([CLIENT_SID, CLIENT_SID, SERVER_SID]))
    acks = draw(st.lists(st.integers(0, 8), max_size=9))
    out = bytes([op << 3 | key_id]) + sid + bytes([len(acks)])
    out += b"".join(struct.pack("!I", a) for a in acks)
    if acks:
        out += draw(st.sampled_from([SERVER_SID, SERVER_SID, CLIENT_SID]))
    if op != Opcode.P_ACK_V1 or draw(st.booleans()):
        out += struct.pack("!I", draw(st.integers(0, 8)))
    return out + draw(st.binary(max_size=60) | st.sampled_from([b"\x16\x03\x01\x00\x05hello"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(client_packets(), st.integers(0, 3 * 10**9), st.booleans()),
                max_size=12))
def test_server_session_never_raises_and_counts_drops(server_ctx, items):
    s = H.ServerSession(server_ctx, H.PushOptions(ifconfig=("10.8.0.2", "255.255.255.0")),
                        session_id=SERVER_SID, randoms=bytes(64), now_ns=0)
    reset = bytes([Opcode.P_CONTROL_HARD_RESET_CLIENT_V2 << 3]) + CLIENT_SID + b"\0" + bytes(4)
    assert s.receive(reset, 0) and s.dropped == 0
    now = 0
    for data, step, tick in items:
        now += step
        if tick:
            s.tick(now)
        before, was_failed = s.dropped, s.failed
        try:
            wire.parse_control(data)
            parses = True
        except MalformedPacket:
            parses = False
        events = s.receive(data, now)
        assert s.dropped >= before
        if was_failed or not parses:
            assert s.dropped == before + 1 and events == []
        for e in events:
            assert isinstance(e, (H.SendPacket, H.Established, H.Failed, H.Exited))
            if isinstance(e, H.SendPacket):
                assert wire.parse_control(e.data).session_id == SERVER_SID
