"""The real peer decides: a stock OpenVPN 2.6 client's control packets through our tls-crypt / tls-auth.

We play the server side on a plain UDP socket: receive the client's HARD_RESET_CLIENT_V2, unwrap it
with our code (server direction), answer with a HARD_RESET_SERVER_V2 wrapped by our code, and expect
the client to move on to TLS (a P_CONTROL_V1 / P_ACK_V1 for the same session, which we unwrap too).
"""

from __future__ import annotations

import datetime
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plugins.openvpn import crypto as C

pytestmark = pytest.mark.slow

OPENVPN = shutil.which("openvpn") or ("/usr/sbin/openvpn" if Path("/usr/sbin/openvpn").exists() else None)
WAIT = 20.0


def _openvpn() -> str:
    if not OPENVPN:
        pytest.fail("openvpn binary not found: install the Debian package `openvpn` (apt-get install -y openvpn)")
    return OPENVPN


def _cert(subject: str, issuer_key, issuer_name, key, ca: bool, eku=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ingot-test-ca", ca_key, None, ca_key, ca=True)
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("client", ca_key, ca.subject, cli_key, ca=False, eku=x509.ExtendedKeyUsageOID.CLIENT_AUTH)
    paths = {"ca": tmp_path / "ca.crt", "cert": tmp_path / "client.crt", "key": tmp_path / "client.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cli.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(cli_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    return paths


def _genkey(kind: str, path: Path) -> C.Key2:
    subprocess.run([_openvpn(), "--genkey", kind, str(path)], check=True, capture_output=True, timeout=20)
    return C.parse_static_key(path.read_text())


def _parse_control(plain: bytes) -> dict:
    """opcode | sid | ack count | acks | [remote sid] | [message packet id] | payload."""
    op, sid, n = plain[0] >> 3, plain[1:9], plain[9]
    pos = 10 + 4 * n
    acks = list(struct.unpack(f"!{n}I", plain[10:pos]))
    remote = None
    if n:
        remote, pos = plain[pos:pos + 8], pos + 8
    msg_id = None
    if op != C.P_ACK_V1:
        (msg_id,) = struct.unpack("!I", plain[pos:pos + 4])
        pos += 4
    return {"op": op, "sid": sid, "acks": acks, "remote": remote, "msg_id": msg_id, "payload": plain[pos:]}


def _recv(sock: socket.socket, deadline: float) -> tuple[bytes, tuple]:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        return sock.recvfrom(4096)


def _run_peer(tmp_path: Path, pki: dict, wrap_args: list[str], make_wrapper,
              first_op: int = C.P_CONTROL_HARD_RESET_CLIENT_V2):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    log = tmp_path / "openvpn.log"
    cmd = [_openvpn(), "--client", "--dev", "null", "--proto", "udp", "--remote", "127.0.0.1", str(port),
           "--nobind", "--disable-dco", "--verb", "4", "--ca", str(pki["ca"]), "--cert", str(pki["cert"]),
           "--key", str(pki["key"]), "--connect-retry-max", "1", "--hand-window", "30",
           "--data-ciphers", "AES-256-GCM", *wrap_args]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + WAIT
        try:
            wire, addr = _recv(sock, deadline)
        except TimeoutError:
            pytest.fail(f"no packet from openvpn within {WAIT}s; log:\n{log.read_text()[-3000:]}")
        server = make_wrapper()
        assert wire[0] >> 3 == first_op
        plain = server.unwrap(wire)
        first = _parse_control(plain)
        assert first["op"] == first_op and len(first["sid"]) == 8
        assert first["acks"] == [] and first["msg_id"] == 0
        # one flipped byte anywhere after the opcode must fail
        for i in (1, 9, 20, len(wire) - 1):
            bad = bytearray(wire)
            bad[i] ^= 0x10
            with pytest.raises(C.AuthFailed):
                make_wrapper().unwrap(bytes(bad))
        # a second copy of the same packet is a replay
        with pytest.raises(C.Replayed):
            server.unwrap(wire)

        our_sid = bytes.fromhex("a1b2c3d4e5f60718")
        reply = (bytes([C.P_CONTROL_HARD_RESET_SERVER_V2 << 3]) + our_sid + b"\x01" + struct.pack("!I", 0)
                 + first["sid"] + struct.pack("!I", 0))
        sock.sendto(server.wrap(reply, int(time.time())), addr)

        seen = []
        while True:
            try:
                wire, _ = _recv(sock, deadline)
            except TimeoutError:
                pytest.fail(f"openvpn did not move on after our reset (saw {seen}); log:\n{log.read_text()[-4000:]}")
            try:
                pkt = _parse_control(server.unwrap(wire))
            except C.Replayed:
                continue  # a retransmitted reset
            seen.append(pkt["op"])
            if pkt["op"] in (C.P_CONTROL_V1, C.P_ACK_V1):
                break
        assert pkt["sid"] == first["sid"]
        if pkt["op"] == C.P_CONTROL_V1:
            assert pkt["payload"][:1] == b"\x16"  # a TLS handshake record (ClientHello)
        if pkt["acks"]:
            assert pkt["acks"] == [0] and pkt["remote"] == our_sid
        return first, pkt, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        sock.close()


def _assert_accepted(log: Path) -> None:
    text = log.read_text()
    assert "TLS: Initial packet from [AF_INET]127.0.0.1" in text and "sid=a1b2c3d4 e5f60718" in text, text[-3000:]
    for bad in ("TLS Error", "packet error", "authentication failed", "may be a replay"):
        assert bad not in text, text[-3000:]


def test_tls_crypt_with_stock_client(tmp_path, pki):
    key2 = _genkey("tls-crypt", tmp_path / "tc.key")
    first, pkt, log = _run_peer(tmp_path, pki, ["--tls-crypt", str(tmp_path / "tc.key")],
                                lambda: C.TlsCrypt(key2, server=True))
    assert pkt["op"] == C.P_CONTROL_V1
    _assert_accepted(log)


@pytest.mark.parametrize("auth", [None, "SHA256"])
def test_tls_auth_with_stock_client(tmp_path, pki, auth):
    key2 = _genkey("tls-auth", tmp_path / "ta.key")
    args = ["--tls-auth", str(tmp_path / "ta.key"), "1"] + (["--auth", auth] if auth else [])
    first, pkt, log = _run_peer(tmp_path, pki, args, lambda: C.TlsAuth(key2, 0, auth or "SHA1"))
    assert pkt["op"] == C.P_CONTROL_V1
    _assert_accepted(log)


class _V2Server:
    """Server side of tls-crypt-v2: the first packet carries WKc; later ones use the unwrapped Kc."""

    def __init__(self, server_key: C.TlsCryptV2ServerKey):
        self.server_key, self.tc, self.metadata = server_key, None, None

    def unwrap(self, wire: bytes) -> bytes:
        if wire and wire[0] >> 3 in (C.P_CONTROL_HARD_RESET_CLIENT_V3, C.P_CONTROL_WKC_V1):
            wire, kc, self.metadata = self.server_key.split_client_packet(wire)
            if self.tc is None:
                self.tc = C.TlsCrypt(kc, server=True)
        if self.tc is None:
            raise C.AuthFailed("no client key yet")
        return self.tc.unwrap(wire)

    def wrap(self, plain: bytes, now: int) -> bytes:
        return self.tc.wrap(plain, now)


def test_tls_crypt_v2_with_stock_client(tmp_path, pki):
    srv_path, cli_path = tmp_path / "v2srv.key", tmp_path / "v2cli.key"
    subprocess.run([_openvpn(), "--genkey", "tls-crypt-v2-server", str(srv_path)],
                   check=True, capture_output=True, timeout=20)
    subprocess.run([_openvpn(), "--tls-crypt-v2", str(srv_path), "--genkey", "tls-crypt-v2-client", str(cli_path)],
                   check=True, capture_output=True, timeout=20)
    server_key = C.TlsCryptV2ServerKey.from_text(srv_path.read_text())
    client_key = C.TlsCryptV2ClientKey.from_text(cli_path.read_text())
    kc, metadata = server_key.unwrap_client_key(client_key.wkc)
    assert kc == client_key.kc
    assert metadata[:1] == bytes([C.METADATA_TYPE_TIMESTAMP]) and len(metadata) == 9  # openvpn's default
    holder = {}

    def make():
        holder["s"] = _V2Server(server_key)
        return holder["s"]

    first, pkt, log = _run_peer(tmp_path, pki, ["--tls-crypt-v2", str(cli_path)], make,
                                first_op=C.P_CONTROL_HARD_RESET_CLIENT_V3)
    assert pkt["op"] == C.P_CONTROL_V1
    _assert_accepted(log)
