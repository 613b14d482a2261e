"""The echo appliance on Ingot's own stack, in a network namespace, against the kernel.

Built with ``--stack direct``: the image answers the kernel's ``ping`` and a
UDP client in another namespace, over a tap device on a bridge (static
address) and over a packet socket on a veth (address from a real DHCP
server, dnsmasq). A TCP client is refused at once (RST).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.netns

DATA = ROOT / "configs" / "echo" / "data"

UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(3):
    msg = b"ping %d " % i + b"x" * int(sys.argv[2])
    s.sendto(msg, (sys.argv[1], 7))
    data, src = s.recvfrom(65535)
    assert data == msg and src == (sys.argv[1], 7), (data[:20], src)
print("udp echo ok")
"""

TCP_CLIENT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 7), timeout=5)
except ConnectionRefusedError:
    print("tcp refused")
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Build (once per net backend) the echo image on the direct stack."""
    built: dict[str, Path] = {}

    def get(net: str) -> Path:
        if net not in built:
            work = tmp_path_factory.mktemp(f"echo-direct-{net}")
            for args in (["configure", ROOT / "appliances" / "echo", "--stack", "direct",
                          "--net", net, "--kv-ro", "crunch", "--kv-ro-source", DATA],
                         ["build", ROOT / "appliances" / "echo"]):
                subprocess.run([sys.executable, "-m", "ingot.cli", *map(str, args)], cwd=work,
                               check=True, capture_output=True)
            built[net] = work / "images" / "echo-unix.pyz"
        return built[net]
    return get


def _start(host, image: Path, *args: str, ready: str = "msg=listening proto=udp"):
    proc = host.popen(sys.executable, image, "--host", "0.0.0.0", "--port", "7", *args,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if ready in line:
            return proc, lines
    proc.kill()
    raise AssertionError("echo did not come up:\n" + "".join(lines))


def _stop(proc, lines) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + out
    return "".join(lines) + out


def test_tap_static_address_answers_ping_udp_and_refuses_tcp(netns, images):
    app, client = netns(), netns()
    c_if, a_if = client.link(app, "10.137.0.1/24", None)
    app.bridge("br0", a_if)
    app.tap("tap0", "br0")
    proc, lines = _start(app, images("tap"), "--net-ifname", "tap0",
                         "--stack-ipv4", "10.137.0.2/24")
    try:
        assert client.ping("10.137.0.2", count=3)
        res = client.run(sys.executable, "-c", UDP_CLIENT, "10.137.0.2", "100", timeout=30)
        assert "udp echo ok" in res.stdout
        # a datagram above the MTU crosses fragmented both ways
        res = client.run(sys.executable, "-c", UDP_CLIENT, "10.137.0.2", "4000", timeout=30)
        assert "udp echo ok" in res.stdout
        res = client.run(sys.executable, "-c", TCP_CLIENT, "10.137.0.2", timeout=30)
        assert "tcp refused" in res.stdout
    finally:
        out = _stop(proc, lines)
    assert "no TCP echo" in out and "icmp_echo_replied=" in out


def test_afpacket_with_a_dhcp_lease_from_dnsmasq(netns, images, tmp_path):
    app, server = netns(), netns()
    s_if, a_if = server.link(app, "10.137.0.1/24", None)
    server.popen("dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--no-resolv",
                 f"--interface={s_if}", "--bind-interfaces", "--log-dhcp",
                 "--dhcp-range=10.137.0.50,10.137.0.99,255.255.255.0,1h",
                 "--dhcp-option=option:router,10.137.0.1",
                 f"--dhcp-leasefile={tmp_path / 'leases'}", f"--pid-file={tmp_path / 'pid'}",
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc, lines = _start(app, images("afpacket"), "--net-ifname", a_if,
                         "--stack-hostname", "echo-vm")
    try:
        lease = next(line for line in lines if "msg=\"dhcp lease\"" in line)
        address = re.search(r"address=(10\.137\.0\.\d+)/24", lease).group(1)
        assert 50 <= int(address.rsplit(".", 1)[1]) <= 99
        assert "router=10.137.0.1" in lease
        assert client_sees(server, address)
        leases = (tmp_path / "leases").read_text()
        assert address in leases and "echo-vm" in leases
    finally:
        _stop(proc, lines)


def client_sees(host, address: str) -> bool:
    if not host.ping(address, count=3):
        return False
    res = host.run(sys.executable, "-c", UDP_CLIENT, address, "1000", timeout=30)
    return "udp echo ok" in res.stdout
