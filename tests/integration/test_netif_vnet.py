"""The virtio-net header on tun devices: TCP through a Python forwarder between two tuns.

The line client - router - server (ingot.testing.forward) routes all traffic
through tun0 and tun1 on the router; the forwarder copies packets between
them in this process while iperf3 runs a bounded TCP transfer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from ingot.plugins.netif.linux import GSO_TCPV4, VnetHeader
from ingot.plugins.netif.tun import TunTap
from ingot.signatures import DeviceError, MessageTooLong
from ingot.testing import frames as F
from ingot.testing.forward import Counters, forward, line

pytestmark = pytest.mark.netns


@pytest.fixture
def routed(netns):
    """The line, and a function opening its two tuns inside the router."""
    ln = line(netns)
    opened = []

    def open_tuns(**kwargs):
        with ln.router.entered():
            opened.extend(TunTap(name, **kwargs) for name in ("tun0", "tun1"))
        return opened

    yield ln, open_tuns
    for dev in opened:
        dev.close()


SINK = """
import socket, sys
server = socket.create_server((sys.argv[1], 5201))
conn, _ = server.accept()
total = 0
while data := conn.recv(1 << 16):
    total += len(data)
print(total)
"""

SOURCE = """
import socket, sys
conn = socket.create_connection((sys.argv[1], 5201), timeout=20)
conn.sendall(bytes(int(sys.argv[2])))
conn.close()
"""

AMOUNT = 4 << 20


def transfer(ln, a, b, *, vnet, check=None, iperf=False, pump=None):
    """TCP client -> server through the forwarder: bytes received (or iperf3's JSON), counters.

    Without ``iperf``, :data:`AMOUNT` bytes, counted by the receiving side.
    ``pump``: a coroutine to forward with instead of :func:`forward`.
    """
    if iperf:
        server = ln.server.popen("iperf3", "-s", "-1", "-B", ln.server_ip,
                                 stdout=subprocess.DEVNULL)
        client = ("iperf3", "-c", ln.server_ip, "-J", "-t", "2")
    else:
        server = ln.server.popen(sys.executable, "-c", SINK, ln.server_ip,
                                 stdout=subprocess.PIPE, text=True)
        client = (sys.executable, "-c", SOURCE, ln.server_ip, AMOUNT)
    ln.server.wait_listening(5201)
    counters = (Counters(), Counters())

    async def main():
        fwd = asyncio.ensure_future(pump if pump is not None else
                                    forward(a, b, vnet=vnet, check=check, counters=counters))
        try:
            sent = await asyncio.to_thread(ln.client.run, *client, timeout=30)
            # the client may be gone while its last bytes are still on the way
            received, _ = await asyncio.to_thread(server.communicate, timeout=20)
            return sent.stdout, received
        finally:
            fwd.cancel()
            await asyncio.gather(fwd, return_exceptions=True)

    sent, received = asyncio.run(main())
    return (json.loads(sent) if iperf else int(received)), counters


def offloads_of(host, ifname):
    out = host.run("ethtool", "-k", ifname).stdout
    return {line.split(":")[0].strip(): line.split(":")[1].split()[0]
            for line in out.splitlines()[1:] if ":" in line}


def test_gso_superpackets_pass_the_forwarder_untouched(routed):
    ln, open_tuns = routed
    for host, ifname in ((ln.client, "eth0"), (ln.router, "eth0"), (ln.router, "eth1")):
        host.run("ethtool", "-K", ifname, "tso", "on", "gso", "on")
    a, b = open_tuns(vnet=True)
    assert offloads_of(ln.router, "tun0")["tcp-segmentation-offload"] == "on"
    result, (to_server, _) = transfer(ln, a, b, vnet=True, iperf=True)
    received = result["end"]["sum_received"]["bytes"]
    assert received > 1_000_000
    assert to_server.gso > 0 and to_server.largest > 1500  # 64 KiB super-packets, one write each
    assert a.stats.malformed == b.stats.malformed == 0 and a.stats.segmented == 0


def test_plain_read_in_vnet_mode_yields_standard_packets(routed):
    ln, open_tuns = routed
    a, b = open_tuns(vnet=True)
    bad = []

    def check(packet):
        if len(packet) > 1500 or not F.ipv4_header_ok(packet) or (
                packet[9] == F.PROTO_TCP and not F.l4_checksum_ok(packet)):
            bad.append(packet[:40].hex())

    received, (to_server, _) = transfer(ln, a, b, vnet=False, check=check)
    assert received == AMOUNT
    assert not bad, bad[:3]
    assert to_server.largest <= 1500 and to_server.packets > 2800
    assert a.stats.segmented > 0  # super-packets came in and read() cut them


def test_without_the_header_the_kernel_finishes_everything(routed):
    ln, open_tuns = routed
    a, b = open_tuns()
    assert offloads_of(ln.router, "tun0")["tcp-segmentation-offload"] == "off"
    received, (to_server, _) = transfer(ln, a, b, vnet=False)
    assert received == AMOUNT
    assert to_server.largest <= 1500
    with pytest.raises(DeviceError, match="vnet-hdr"):
        a.write_vnet(VnetHeader(), b"")


def test_write_vnet_limits(routed):
    ln, open_tuns = routed
    a, _ = open_tuns(vnet=True)
    with pytest.raises(MessageTooLong):
        a.write_vnet(VnetHeader(gso_type=GSO_TCPV4, gso_size=1448), bytes(65536))
    with pytest.raises(MessageTooLong):
        a.write_vnet(VnetHeader(), bytes(1501))
    a.write_vnet(VnetHeader(gso_type=GSO_TCPV4, gso_size=1448), bytes(40))  # refused: counted
    assert a.dropped == 1
    # the same with the header packed, as serve() hands it over
    packed = VnetHeader(gso_type=GSO_TCPV4, gso_size=1448).pack()
    with pytest.raises(MessageTooLong):
        a.write_vnet(packed, bytes(65536))
    with pytest.raises(MessageTooLong):
        a.write_vnet(bytes(10), bytes(1501))
    with pytest.raises(ValueError, match="10 bytes"):
        a.write_vnet(packed + b"\0\0", bytes(40))
    a.write_vnet(memoryview(packed), bytes(40))  # refused: counted
    assert a.dropped == 2


def test_serve_forwards_superpackets_in_place(routed):
    """serve() on both tuns, each handler writing the packet out of the other with
    the header as it came (packed): every byte arrives, super-packets cross whole."""
    ln, open_tuns = routed
    for host, ifname in ((ln.client, "eth0"), (ln.router, "eth0"), (ln.router, "eth1")):
        host.run("ethtool", "-K", ifname, "tso", "on", "gso", "on")
    a, b = open_tuns(vnet=True)
    seen = {"gso": 0, "largest": 0, "kinds": set()}

    def towards(dst):
        def handler(packet, header):
            seen["kinds"].add((type(packet), type(header), len(header)))
            if header[1]:
                seen["gso"] += 1
                seen["largest"] = max(seen["largest"], len(packet))
            dst.write_vnet(header, packet)
        return handler

    async def pump():
        await asyncio.gather(a.serve(towards(b)), b.serve(towards(a)))

    received, _ = transfer(ln, a, b, vnet=True, pump=pump())
    assert received == AMOUNT
    assert seen["gso"] > 0 and seen["largest"] > 1500
    assert seen["kinds"] == {(memoryview, memoryview, 10)}
    assert a.stats.malformed == b.stats.malformed == 0 and a.dropped == b.dropped == 0
