"""The real peer decides: the Ingot VPN gateway in client mode against a stock OpenVPN 2.6 server.

Lab (namespaces)::

    lan2 10.200.5.2 -- 10.200.5.1 gw [Ingot client, tun ovpn1] 10.200.7.2 -- 10.200.7.1 srv
         [stock openvpn --server, tun0 10.200.8.1] 10.200.9.1 -- 10.200.9.2 lan

The gateway routes lan2's traffic into the tunnel and masquerades it to its tunnel address (the
miragevpn-router / Qubes VPN qube use case); the stock server masquerades it again to lan.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingot.testing.pytest_netns import requires_netns
from tests.interop import vpn_harness as H
from tests.interop.vpn_harness import SINK, SOURCE, iperf_every_second, stop

pytestmark = [requires_netns, pytest.mark.slow]


def _masquerade(host, oif: str) -> None:
    host.run("nft", "-f", "-", input=(
        "table ip ingotnat {\n chain post {\n  type nat hook postrouting priority 100;\n"
        f"  oifname \"{oif}\" masquerade\n }}\n}}\n"))


@pytest.fixture
def lab(netns):
    gw, srv, lan, lan2 = netns.host(), netns.host(), netns.host(), netns.host()
    gw.link(srv, "10.200.7.2/24", "10.200.7.1/24")
    srv_lan, _ = srv.link(lan, "10.200.9.1/24", "10.200.9.2/24")
    lan2.link(gw, "10.200.5.2/24", "10.200.5.1/24")
    lan2.add_route("10.200.9.0/24", via="10.200.5.1")
    srv.sysctl("net.ipv4.ip_forward", 1)
    gw.sysctl("net.ipv4.ip_forward", 1)
    _masquerade(srv, srv_lan)
    gw.tun("ovpn1")
    _masquerade(gw, "ovpn1")
    return {"gw": gw, "srv": srv, "lan": lan, "lan2": lan2}


def _stock_server(lab, tmp: Path, proto: str, wrap: str, extra=()) -> tuple[subprocess.Popen, Path]:
    folder = H.server_config(tmp, proto=proto, wrap=wrap, extra=("disable-dco", "verb 4", *extra))
    log = tmp / "stock-server.log"
    proc = lab["srv"].popen(H.openvpn_binary(), "--config", folder / "server.conf", "--cd", folder,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    H.wait_for(log, H.READY, proc, 20)
    return proc, log


def _ingot_client(lab, image: Path, tmp: Path, proto: str, wrap: str, cipher: str,
                  extra=(), args=()) -> tuple[subprocess.Popen, Path]:
    store = tmp / "client-store"
    store.mkdir()
    for f in [*(H.CONFIGS / "clients").iterdir(), tmp / "v2client.key"]:
        if f.suffix in (".crt", ".key") and f.exists():  # v2client.key: made by server_config
            shutil.copy(f, store / f.name)
    lines = ["client", "dev tun", f"proto {proto}", "remote 10.200.7.1 1194", "nobind",
             "remote-cert-tls server", "verify-x509-name server name", "ca ca.crt",
             "cert client1.crt", "key client1.key", f"data-ciphers {cipher}", *extra]
    lines += {"tls-crypt": ["tls-crypt tc.key"], "tls-auth": ["tls-auth ta.key 1"],
              "tls-crypt-v2": ["tls-crypt-v2 v2client.key"], "none": []}[wrap]
    (store / "client.conf").write_text("\n".join(lines) + "\n")
    log = tmp / "ingot-client.log"
    proc = lab["gw"].popen(sys.executable, image, "--tun-ifname", "ovpn1", "--config-path", store,
                           "--config-file", "client.conf", *args, stdout=log.open("wb"),
                           stderr=subprocess.STDOUT)
    return proc, log


def _transfer(lab, size: int = 4 << 20) -> None:
    sink = lab["lan"].popen("python3", "-c", SINK, stdout=subprocess.PIPE, text=True)
    lab["lan"].wait_listening(5001)
    out = lab["lan2"].run("python3", "-c", SOURCE, size, timeout=60).stdout.split()
    sink.wait(30)
    assert out[0] == str(size) and out[0:2] == out[2:4], out


@pytest.mark.parametrize("proto,wrap,cipher,keys", [  # keys: prf when we do not offer tls-ekm
    ("udp", "tls-crypt", "AES-256-GCM", "tls-ekm"),
    ("udp", "tls-auth", "CHACHA20-POLY1305", "prf"),
    ("udp", "none", "AES-256-GCM", "tls-ekm"),
    ("udp", "tls-crypt-v2", "CHACHA20-POLY1305", "tls-ekm"),
    ("tcp", "tls-crypt", "CHACHA20-POLY1305", "tls-ekm"),
    ("tcp", "tls-auth", "AES-256-GCM", "prf"),
])
def test_ingot_client_routes_a_lan_through_a_stock_server(lab, vpn_image, tmp_path, proto, wrap,
                                                          cipher, keys):
    server, slog = _stock_server(lab, tmp_path, proto, wrap)
    client, clog = _ingot_client(lab, vpn_image, tmp_path, proto, wrap, cipher,
                                 args=("--tls-ekm", "false") if keys == "prf" else ())
    H.wait_for(clog, "msg=connected", client, 30)
    text = clog.read_text()
    assert "address=10.200.8.2/24" in text and f"cipher={cipher}" in text, text[-2000:]
    assert f"keys={keys}" in text, text[-2000:]
    assert "routes=10.200.9.0/24" in text
    assert lab["gw"].ping("10.200.8.1", count=2)
    ok = lab["lan2"].ping("10.200.9.2", count=3)  # lan2 -> gw -> tunnel -> srv -> lan
    assert ok, (lab["gw"].ip("route"), clog.read_text()[-2000:])
    _transfer(lab)
    stop(client)
    assert client.returncode == 0, clog.read_text()[-3000:]
    stop(server)
    stock = slog.read_text()
    assert "client1" in stock and f"Outgoing Data Channel: Cipher '{cipher}' initialized" in stock, stock[-3000:]
    for bad in ("AUTH_FAILED", "TLS Error", "Authenticate/Decrypt packet error"):
        assert bad not in stock, stock[-3000:]


@pytest.mark.parametrize("side", ["server", "client"])
def test_ingot_client_renegotiates_and_reconnects(lab, vpn_image, tmp_path, side):
    server_extra = ("keepalive 1 3",) + (("reneg-sec 5",) if side == "server" else ())
    client_extra = ("reneg-sec 5",) if side == "client" else ()
    server, slog = _stock_server(lab, tmp_path, "udp", "tls-crypt", extra=server_extra)
    client, clog = _ingot_client(lab, vpn_image, tmp_path, "udp", "tls-crypt", "AES-256-GCM",
                                 extra=client_extra)
    H.wait_for(clog, "msg=connected", client, 30)

    class _Net:  # the iperf helper's view: client side and LAN side
        cli, lan = lab["lan2"], lab["lan"]

    rates = iperf_every_second(_Net, 12)
    assert len(rates) >= 11 and all(up > 0 and down > 0 for up, down in rates), rates
    # under that load a control packet may need a retransmission or two: wait for the second
    end = time.monotonic() + 30
    while clog.read_text().count('msg="key renegotiated"') < 2 and time.monotonic() < end:
        time.sleep(0.5)
    assert clog.read_text().count('msg="key renegotiated"') >= 2, clog.read_text()[-2000:]
    assert "renegotiation failed" not in clog.read_text()
    # the server goes away and comes back: the client notices (ping-restart) and connects again
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    again = tmp_path / "again"
    again.mkdir()
    server, slog = _stock_server(lab, again, "udp", "tls-crypt")
    H.wait_for(clog, "msg=disconnected", client, 150)
    end = time.monotonic() + 60
    while clog.read_text().count("msg=connected") < 2 and time.monotonic() < end:
        time.sleep(0.5)
    assert clog.read_text().count("msg=connected") == 2, clog.read_text()[-3000:]
    assert lab["lan2"].ping("10.200.9.2", count=3)
    stop(client)
    stop(server)


@pytest.fixture
def routed_lab(netns):
    """gw 10.200.4.2 -- 10.200.4.1 rtr 10.200.7.2 -- 10.200.7.1 srv 10.200.3.1 -- 10.200.3.2 far:
    the server is reached through a router, and `far` only through the tunnel."""
    gw, rtr, srv, far = netns.host(), netns.host(), netns.host(), netns.host()
    gw.link(rtr, "10.200.4.2/24", "10.200.4.1/24")
    rtr.link(srv, "10.200.7.2/24", "10.200.7.1/24")
    srv_far, _ = srv.link(far, "10.200.3.1/24", "10.200.3.2/24")
    gw.add_route("10.200.7.0/24", via="10.200.4.1")
    srv.add_route("10.200.4.0/24", via="10.200.7.2")
    rtr.sysctl("net.ipv4.ip_forward", 1)
    srv.sysctl("net.ipv4.ip_forward", 1)
    _masquerade(srv, srv_far)
    gw.tun("ovpn1")
    return {"gw": gw, "rtr": rtr, "srv": srv, "far": far}


def test_pushed_redirect_gateway_and_dns(routed_lab, vpn_image, tmp_path):
    lab = routed_lab
    server, slog = _stock_server(lab, tmp_path, "udp", "tls-crypt", extra=(
        'push "redirect-gateway def1"', 'push "dhcp-option DNS 10.200.3.2"',
        'push "dhcp-option DOMAIN vpn.example"'))
    assert not lab["gw"].ping("10.200.3.2", count=1)  # not reachable outside the tunnel
    client, clog = _ingot_client(lab, vpn_image, tmp_path, "udp", "tls-crypt", "AES-256-GCM")
    H.wait_for(clog, "msg=connected", client, 30)
    text = clog.read_text()
    assert "redirect=True" in text and "dns=10.200.3.2" in text, text[-2000:]
    assert "domain=vpn.example" in text
    assert 'msg="route to the server kept" server=10.200.7.1 via=10.200.4.1' in text, text[-2000:]
    routes = lab["gw"].ip("route")
    assert "10.200.7.1 via 10.200.4.1" in routes, routes
    assert "0.0.0.0/1 via 10.200.8.1 dev ovpn1" in routes and "128.0.0.0/1 via 10.200.8.1" in routes
    # everything else now goes through the tunnel (and the srv's NAT) ...
    assert lab["gw"].ping("10.200.3.2", count=3), (routes, clog.read_text()[-2000:])
    # ... while the tunnel's own packets still take the router: it stays up
    time.sleep(2)
    assert lab["gw"].ping("10.200.3.2", count=2)
    assert clog.read_text().count("msg=connected") == 1
    stop(client)
    stop(server)
