"""Hosts for the OpenVPN gateway tests: the Ingot server and stock OpenVPN 2.6 in namespaces.

Layout (all inside the lab's namespaces)::

    cli 10.200.7.2 --veth-- 10.200.7.1 srv [tun ovpn0 10.200.8.1/24] 10.200.9.1 --veth-- 10.200.9.2 lan

``srv`` runs the gateway image (or stock ``openvpn --server``), forwards between its tunnel and
``lan`` and masquerades out of its ``lan`` interface (nftables), so ``lan`` answers the
tunnel's clients without a route back to them: NAT. ``cli`` runs a stock ``openvpn --client``
(or the Ingot client) from ``configs/vpn/clients``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingot.testing import netns as kit
from tests.conftest import ROOT as REPO, Cli

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "vpn"
OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"
READY = "Initialization Sequence Completed"


def openvpn_binary() -> str:
    if not Path(OPENVPN).exists():
        pytest.fail("openvpn not found: install the Debian package `openvpn`")
    return OPENVPN


@dataclass
class Net:
    lab: kit.Lab
    cli: kit.Host
    srv: kit.Host
    lan: kit.Host
    srv_lan_if: str


def make_net(lab: kit.Lab) -> Net:
    cli, srv, lan = lab.host(), lab.host(), lab.host()
    cli.link(srv, "10.200.7.2/24", "10.200.7.1/24")
    srv_lan, _ = srv.link(lan, "10.200.9.1/24", "10.200.9.2/24")
    srv.tun("ovpn0")
    srv.add_address("ovpn0", "10.200.8.1/24")
    srv.sysctl("net.ipv4.ip_forward", 1)
    srv.run("nft", "-f", "-", input=(
        "table ip ingotnat {\n chain post {\n  type nat hook postrouting priority 100;\n"
        f"  oifname \"{srv_lan}\" masquerade\n }}\n}}\n"))
    return Net(lab, cli, srv, lan, srv_lan)


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    log = path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"
    raise AssertionError(f"{text!r} not seen within {timeout_s} s (exit {proc.poll()}); "
                         f"log:\n{log}")


def start_gateway(net: Net, image: Path, tmp: Path, config_dir: Path, *extra: str
                  ) -> tuple[subprocess.Popen, Path]:
    log = tmp / "gateway.log"
    proc = net.srv.popen(sys.executable, image, "--tun-ifname", "ovpn0",
                         "--config-path", config_dir, *extra,
                         stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_for(log, "msg=ready", proc, 20)
    return proc, log


def client_config(tmp: Path, name: str = "client1", *, proto: str = "udp", wrap: str = "tls-crypt",
                  cipher: str = "AES-256-GCM", extra: tuple[str, ...] = (),
                  remote: str = "10.200.7.1") -> Path:
    """A stock client config in ``tmp`` (the certificates copied beside it)."""
    for f in (CONFIGS / "clients").iterdir():
        if f.suffix in (".crt", ".key"):
            shutil.copy(f, tmp / f.name)
    lines = ["client", "dev tun", f"proto {proto}", f"remote {remote} 1194", "nobind",
             "disable-dco", "remote-cert-tls server", "ca ca.crt", f"cert {name}.crt",
             f"key {name}.key", f"data-ciphers {cipher}", "verb 4", "connect-retry 1",
             "hand-window 30", *extra]
    if proto == "udp":
        lines.append("explicit-exit-notify 1")  # tell the server at exit (cc-exit)
    if wrap == "tls-crypt":
        lines.append("tls-crypt tc.key")
    elif wrap == "tls-auth":
        lines.append("tls-auth ta.key 1")
    elif wrap == "tls-crypt-v2":
        lines.append("tls-crypt-v2 v2client.key")
    path = tmp / f"{name}-{proto}.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def server_config(tmp: Path, *, proto: str = "udp", wrap: str = "tls-crypt",
                  extra: tuple[str, ...] = ()) -> Path:
    """The example server config folder, copied, with ``proto``/``wrap`` changed."""
    folder = tmp / "server"
    shutil.copytree(CONFIGS / "server", folder)
    lines = []
    for line in (folder / "server.conf").read_text().splitlines():
        if line.startswith("proto "):
            line = f"proto {proto}"
        elif line.startswith("tls-crypt "):
            line = {"tls-crypt": line, "tls-auth": "tls-auth ta.key 0", "none": "",
                    "tls-crypt-v2": "tls-crypt-v2 v2server.key"}[wrap]
        lines.append(line)
    (folder / "server.conf").write_text("\n".join([*lines, *extra]) + "\n")
    if wrap == "tls-crypt-v2":  # a server key, and a client key wrapped by it beside the clients
        subprocess.run([openvpn_binary(), "--genkey", "tls-crypt-v2-server",
                        folder / "v2server.key"], check=True, capture_output=True, timeout=20)
        subprocess.run([openvpn_binary(), "--tls-crypt-v2", folder / "v2server.key", "--genkey",
                        "tls-crypt-v2-client", tmp / "v2client.key"], check=True,
                       capture_output=True, timeout=20)
    return folder


def start_client(net: Net, conf: Path, tmp: Path, name: str = "client",
                 host: kit.Host | None = None) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"{name}.log"
    proc = (host or net.cli).popen(openvpn_binary(), "--config", conf, "--cd", conf.parent,
                         stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, log


@pytest.fixture(scope="module")
def vpn_image(tmp_path_factory) -> Path:
    """The gateway image, built once per test module."""
    cli = Cli(tmp_path_factory.mktemp("vpn-image"))
    cli("configure", REPO / "appliances" / "vpn", "--target", "unix")
    cli("build", REPO / "appliances" / "vpn", timeout=300)
    return cli.image("vpn-unix")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)



SINK = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.200.9.2", 5001)); s.listen(1); s.settimeout(30)
c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
c.sendall(f"{n} {h.hexdigest()}".encode()); c.close()
"""

SOURCE = """
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[1]))
c = socket.create_connection(("10.200.9.2", 5001), timeout=30)
c.sendall(data); c.shutdown(socket.SHUT_WR)
print(f"{len(data)} {hashlib.sha256(data).hexdigest()}", c.recv(200).decode())
"""



def iperf_every_second(net: Net, seconds: int) -> list[tuple[float, float]]:
    """iperf3 both ways at once for ``seconds``; bits/s per one-second interval and direction."""
    server = net.lan.popen("iperf3", "-s", "-1", "-B", "10.200.9.2", stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    net.lan.wait_listening(5201)
    out = net.cli.run("iperf3", "-c", "10.200.9.2", "-t", seconds, "-i", "1", "--bidir", "-J",
                      timeout=seconds + 30).stdout
    server.wait(10)
    rates = []
    for interval in json.loads(out)["intervals"]:
        up = [s["bits_per_second"] for s in interval["streams"] if s["sender"]]
        down = [s["bits_per_second"] for s in interval["streams"] if not s["sender"]]
        rates.append((sum(up), sum(down)))
    return rates


