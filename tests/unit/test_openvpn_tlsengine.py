"""The control channel's TLS engine (OpenSSL through pyOpenSSL over memory buffers), in memory.

Both ends are :class:`TlsSession` objects with the example PKI of configs/vpn; bytes cross by
hand. What stock OpenVPN makes of the exported keys is decided in tests/interop/test_vpn_*.py.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plugins.openvpn.handshake import common_name
from plugins.openvpn.tlsengine import EKM_LABEL, TlsClosed, TlsConfig, TlsFailure, TlsVerifyFailed

VPN = Path(__file__).resolve().parents[2] / "configs" / "vpn"


def _read(rel: str) -> str:
    return (VPN / rel).read_text()


def _server(crl: bool = True) -> TlsConfig:
    return TlsConfig(server=True, cert_pem=_read("server/server.crt"),
                     key_pem=_read("server/server.key"), ca_pem=_read("server/ca.crt"),
                     crl_pem=_read("server/crl.pem") if crl else None)


def _client(name: str = "client1", ca: str | None = None) -> TlsConfig:
    return TlsConfig(server=False, cert_pem=_read(f"clients/{name}.crt"),
                     key_pem=_read(f"clients/{name}.key"), ca_pem=ca or _read("clients/ca.crt"))


def _self_signed(cn: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (cert.public_bytes(pem).decode(),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def _pump(a, b, rounds: int = 10) -> tuple[bool, bool]:
    """Handshake ``a`` (the client) with ``b``; errors propagate from whichever side fails."""
    done_a = a.handshake()
    done_b = False
    for _ in range(rounds):
        b.feed(a.pending())
        done_b = b.handshake()
        a.feed(b.pending())
        done_a = a.handshake()
        if done_a and done_b and not a.pending():
            break
    return done_a, done_b


def test_handshake_both_ways_with_peer_names_and_equal_exported_keys():
    c, s = _client().session(), _server().session()
    assert _pump(c, s) == (True, True)
    assert common_name(s.peer_certificate()) == "client1"
    assert common_name(c.peer_certificate()) == "server"
    ekm = s.export_keying_material()
    assert len(ekm) == 256 and ekm == c.export_keying_material(EKM_LABEL, 256)
    assert s.export_keying_material(b"EXPORTER-other", 256) != ekm
    c2, s2 = _client().session(), _server().session()
    _pump(c2, s2)
    assert s2.export_keying_material() != ekm  # each TLS session its own keys


def test_application_data_both_ways_then_close():
    c, s = _client().session(), _server().session()
    _pump(c, s)
    assert s.read() == b""  # nothing yet is not an error
    c.write(b"hello " * 3000)  # more than one record
    s.feed(c.pending())
    assert s.read() == b"hello " * 3000
    s.write(b"back")
    c.feed(s.pending())
    assert c.read() == b"back"
    c._conn.shutdown()  # close_notify
    s.feed(c.pending())
    with pytest.raises(TlsClosed):
        s.read()


def test_no_exported_keys_before_the_handshake():
    with pytest.raises(TlsFailure):
        _server().session().export_keying_material()


@pytest.mark.parametrize("crl,ok", [(True, False), (False, True)])
def test_a_revoked_client_is_refused_only_with_the_crl(crl, ok):
    c, s = _client("revoked").session(), _server(crl=crl).session()
    if ok:
        assert _pump(c, s) == (True, True)
        return
    with pytest.raises(TlsVerifyFailed) as e:
        _pump(c, s)
    assert e.value.message == "certificate revoked"
    assert s.pending()  # the alert for the client


def test_a_self_signed_client_is_refused():
    cert, key = _self_signed("intruder")
    c = TlsConfig(server=False, cert_pem=cert, key_pem=key, ca_pem=_read("clients/ca.crt"))
    with pytest.raises(TlsVerifyFailed, match="^self-signed certificate$"):
        _pump(c.session(), _server().session())


def test_the_client_refuses_a_server_from_another_ca():
    other_ca, _ = _self_signed("some other ca")
    c = _client(ca=other_ca).session()
    # the server sends its CA along (OpenSSL chains from the trust store), which we do not trust
    with pytest.raises(TlsVerifyFailed, match="^self-signed certificate in certificate chain$"):
        _pump(c, _server().session())


def test_garbage_is_a_tls_failure_not_a_crash():
    s = _server().session()
    s.feed(b"")  # nothing, not an error
    assert s.handshake() is False and s.pending() == b""
    s.feed(b"\x16\x03\x01\x00\x05hello" + bytes(range(256)))
    with pytest.raises(TlsFailure):
        s.handshake()


@pytest.mark.parametrize("field", ["cert_pem", "key_pem", "ca_pem", "crl_pem"])
def test_bad_pem_is_a_clear_error(field):
    kw = {"cert_pem": _read("server/server.crt"), "key_pem": _read("server/server.key"),
          "ca_pem": _read("server/ca.crt"), "crl_pem": _read("server/crl.pem")}
    kw[field] = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="cannot load the"):
        TlsConfig(server=True, **kw)


def test_a_key_that_does_not_match_the_certificate_is_refused():
    with pytest.raises(ValueError, match="private key"):
        TlsConfig(server=True, cert_pem=_read("server/server.crt"),
                  key_pem=_read("clients/client1.key"), ca_pem=_read("server/ca.crt"))


def test_tls_minimum_version():
    server = TlsConfig(server=True, cert_pem=_read("server/server.crt"),
                       key_pem=_read("server/server.key"), ca_pem=_read("server/ca.crt"),
                       min_version="1.3")
    c, s = _client().session(), server.session()
    assert _pump(c, s) == (True, True)
    assert s._conn.get_protocol_version_name() == "TLSv1.3"
    with pytest.raises(ValueError, match="1.2 or 1.3"):
        TlsConfig(server=True, cert_pem=_read("server/server.crt"),
                  key_pem=_read("server/server.key"), ca_pem=_read("server/ca.crt"),
                  min_version="1.1")
