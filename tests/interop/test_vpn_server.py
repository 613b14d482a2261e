"""The real peer decides: stock OpenVPN 2.6 clients against the Ingot VPN gateway (server mode).

Each test builds the lab of :mod:`tests.interop.vpn_harness` (client, gateway, a LAN host behind
the gateway's NAT) and runs a stock ``openvpn`` client (``disable-dco``) against the gateway image
built from appliances/vpn with the example config of configs/vpn/server.
"""

from __future__ import annotations

import datetime
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ingot.testing.pytest_netns import requires_netns
from tests.interop import vpn_harness as H
from tests.interop.vpn_harness import SINK, SOURCE, iperf_every_second, stop

pytestmark = [requires_netns, pytest.mark.slow]

@pytest.fixture
def net(netns) -> H.Net:
    return H.make_net(netns)


def _transfer(net: H.Net, size: int = 4 << 20) -> None:
    sink = net.lan.popen("python3", "-c", SINK, stdout=subprocess.PIPE, text=True)
    net.lan.wait_listening(5001)
    out = net.cli.run("python3", "-c", SOURCE, size, timeout=60).stdout.split()
    sink.wait(30)
    assert out[0] == str(size) and out[0:2] == out[2:4], out


VARIANTS = [  # data keys: a stock 2.6 client offers tls-ekm; --tls-ekm false makes us use the PRF
    ("udp", "tls-crypt", "AES-256-GCM", "tls-ekm"),
    ("udp", "tls-auth", "CHACHA20-POLY1305", "tls-ekm"),
    ("udp", "none", "AES-256-GCM", "prf"),
    ("udp", "tls-crypt-v2", "AES-256-GCM", "tls-ekm"),
    ("tcp", "tls-crypt", "CHACHA20-POLY1305", "prf"),
    ("tcp", "tls-auth", "AES-256-GCM", "tls-ekm"),
]


@pytest.mark.parametrize("proto,wrap,cipher,keys", VARIANTS)
def test_stock_client_connects_and_routes(net, vpn_image, tmp_path, proto, wrap, cipher, keys):
    gw, glog = H.start_gateway(net, vpn_image, tmp_path,
                               H.server_config(tmp_path, proto=proto, wrap=wrap),
                               *(("--tls-ekm", "false") if keys == "prf" else ()))
    client, clog = H.start_client(net, H.client_config(tmp_path, proto=proto, wrap=wrap,
                                                       cipher=cipher), tmp_path)
    H.wait_for(clog, H.READY, client)
    text = clog.read_text()
    assert f"cipher '{cipher}'" in text and "ifconfig 10.200.8.2 255.255.255.0" in text
    assert net.cli.ping("10.200.8.1", count=3)  # the gateway's side of the tunnel
    assert net.cli.ping("10.200.9.2", count=3)  # a host behind the gateway, by NAT
    _transfer(net)
    stop(client)
    H.wait_for(glog, "msg=\"client gone\"", gw, 15)
    stop(gw)
    log = glog.read_text()
    assert gw.returncode == 0, log[-3000:]
    assert f"cipher={cipher}" in log and "cn=client1" in log and f"keys={keys}" in log


@pytest.mark.parametrize("c2c", [False, True])
def test_two_clients_get_their_own_addresses(net, vpn_image, tmp_path, c2c):
    extra = ("client-to-client",) if c2c else ()
    gw, glog = H.start_gateway(net, vpn_image, tmp_path, H.server_config(tmp_path, extra=extra))
    cli2 = net.lab.host()
    cli2.link(net.srv, "10.200.6.2/24", "10.200.6.1/24")
    c1, log1 = H.start_client(net, H.client_config(tmp_path, "client1"), tmp_path, "c1")
    H.wait_for(log1, H.READY, c1)
    c2, log2 = H.start_client(net, H.client_config(tmp_path, "client2", remote="10.200.6.1"),
                              tmp_path, "c2", host=cli2)
    H.wait_for(log2, H.READY, c2)
    assert "ifconfig 10.200.8.2 255.255.255.0" in log1.read_text()
    assert "ifconfig 10.200.8.3 255.255.255.0" in log2.read_text()
    assert net.cli.ping("10.200.9.2", count=2) and cli2.ping("10.200.9.2", count=2)
    assert net.cli.ping("10.200.8.3", count=2, timeout_s=1) is c2c
    for p in (c1, c2):
        stop(p)
    stop(gw)
    log = glog.read_text()
    assert log.count('msg="client connected"') == 2, log[-3000:]
    counters = [line for line in log.splitlines() if "msg=counters" in line][-1]
    assert ("drop_client_to_client=" in counters) is not c2c, counters


def _untrusted_client(tmp: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(key, hashes.SHA256()))
    (tmp / "intruder.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "intruder.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@pytest.mark.parametrize("who,why", [("revoked", "certificate revoked"),
                                     ("intruder", "client certificate rejected: self-signed certificate")])
def test_bad_client_certificate_is_refused(net, vpn_image, tmp_path, who, why):
    gw, glog = H.start_gateway(net, vpn_image, tmp_path, H.server_config(tmp_path))
    conf = H.client_config(tmp_path, who)
    if who == "intruder":
        _untrusted_client(tmp_path)
    client, clog = H.start_client(net, conf, tmp_path)
    H.wait_for(glog, why, gw, 30)
    time.sleep(1)
    assert H.READY not in clog.read_text()
    # the gateway still serves a good client afterwards
    good, goodlog = H.start_client(net, H.client_config(tmp_path, "client1"), tmp_path, "good")
    H.wait_for(goodlog, H.READY, good)
    assert net.cli.ping("10.200.8.1", count=2)
    stop(client)
    stop(good)
    stop(gw)
    connected = [line for line in glog.read_text().splitlines() if "client connected" in line]
    assert len(connected) == 1 and "cn=client1" in connected[0], connected


def test_restarted_client_reconnects_and_dead_client_times_out(net, vpn_image, tmp_path):
    gw, glog = H.start_gateway(net, vpn_image, tmp_path,
                               H.server_config(tmp_path, extra=("keepalive 1 3",)))
    conf = H.client_config(tmp_path)
    client, clog = H.start_client(net, conf, tmp_path, "first")
    H.wait_for(clog, H.READY, client)
    client.kill()  # no exit notification
    client.wait(10)
    again, againlog = H.start_client(net, conf, tmp_path, "second")
    H.wait_for(againlog, H.READY, again)
    assert net.cli.ping("10.200.9.2", count=2)
    again.kill()
    again.wait(10)
    # keepalive 1 3: the server gives up on a silent client after 6 s
    H.wait_for(glog, "reason=\"ping-restart: nothing received for 6 s\"", gw, 20)
    stop(gw)
    log = glog.read_text()
    assert log.count('msg="client connected"') == 2, log[-3000:]


def test_garbage_is_dropped_and_counted(net, vpn_image, tmp_path):
    gw, glog = H.start_gateway(net, vpn_image, tmp_path, H.server_config(tmp_path))
    junk = ("import os, socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(300):\n"
            "    s.sendto(bytes([(i % 12) << 3]) + os.urandom(i % 200), ('10.200.7.1', 1194))\n")
    net.cli.run("python3", "-c", junk)
    client, clog = H.start_client(net, H.client_config(tmp_path), tmp_path)
    H.wait_for(clog, H.READY, client)
    assert net.cli.ping("10.200.8.1", count=2)
    stop(client)
    stop(gw)
    log = glog.read_text()
    assert gw.returncode == 0
    counters = [line for line in log.splitlines() if 'msg=counters' in line][-1]
    assert "drop_" in counters, counters


@pytest.mark.parametrize("side", ["client", "server"])
def test_renegotiation_keeps_a_transfer_running_both_ways(net, vpn_image, tmp_path, side):
    server_extra = ("reneg-sec 6",) if side == "server" else ()
    client_extra = ("reneg-sec 6",) if side == "client" else ()
    gw, glog = H.start_gateway(net, vpn_image, tmp_path,
                               H.server_config(tmp_path, extra=server_extra))
    client, clog = H.start_client(net, H.client_config(tmp_path, extra=client_extra), tmp_path)
    H.wait_for(clog, H.READY, client)
    rates = iperf_every_second(net, 16)
    assert len(rates) >= 15 and all(up > 0 and down > 0 for up, down in rates), rates
    assert net.cli.ping("10.200.9.2", count=2)
    end = time.monotonic() + 30  # a control packet lost under load waits for retransmission
    while glog.read_text().count('msg="key renegotiated"') < 2 and time.monotonic() < end:
        time.sleep(0.5)
    stop(client)
    stop(gw)
    log = glog.read_text()
    assert log.count('msg="key renegotiated"') >= 2, log[-3000:]
    assert "renegotiation failed" not in log and log.count('msg="client connected"') == 1
