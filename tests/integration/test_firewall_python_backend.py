"""The ``packet_filter/python`` backend end to end.

With memory devices (in this process): a client behind its own segment and a
gateway on the uplink segment, played by the test with hand-built frames.
In network namespaces (root): the backend runs inside ``fw`` between a
client namespace and an upstream one, against the kernel's own ping, TCP
and UDP, with the client's TCP offloads on, so that GSO super-packets cross
it with their virtio-net header.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest

from ingot.log import Logger, Sink
from ingot.plugins.firewall.python_backend import PythonFilter, python_spec
from ingot.plugins.netif.linux import GSO_TCPV4, VNET_F_NEEDS_CSUM, VnetHeader
from ingot.plugins.netif.memory import segment
from ingot.plugins.netstack import arp
from ingot.signatures import ClientRules, Closed, DeviceError, FilterRule, FilterSetup
from ingot.testing import frames as F

SETUP = FilterSetup(uplink_ip="10.200.0.2", uplink_gateway="10.200.0.1",
                    client_gateway="10.137.0.1", uplink_prefix=24)
CLIENT = "10.137.0.11"
RULES = ClientRules(client=CLIENT, rules=(FilterRule(action="accept", proto="icmp"),
                                          FilterRule(action="accept", proto="tcp",
                                                     dstports=(80, 80))), policy="drop")
GW_MAC = bytes.fromhex("020000aa0001")
C_MAC = bytes.fromhex("00163e5e6c00")


class Lines:
    """A log sink that keeps the lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass


def test_the_spec_requires_the_uplink_net_device():
    spec = python_spec()
    assert (spec.kind, spec.backend) == ("packet_filter", "python")
    assert spec.requires == (("uplink", "net"),)
    keys = {k.name: k for k in spec.keys}
    assert keys["client-backend"].default == "afpacket"
    assert keys["client-backend"].choices == ("afpacket", "memory")
    assert spec.factory.endswith("python_backend:connect")


# -- memory devices ------------------------------------------------------------------


async def read_until(port, pred, timeout=2.0):
    """The first frame on ``port`` for which ``pred(frame)`` holds."""
    async def loop():
        while True:
            frame = await port.read()
            if pred(frame):
                return frame
    return await asyncio.wait_for(loop(), timeout)


def is_arp(frame: bytes) -> bool:
    return frame[12:14] == b"\x08\x06"


def is_ip(frame: bytes) -> bool:
    return frame[12:14] == b"\x08\x00"


def ip_of(frame: bytes) -> bytes:
    total = struct.unpack("!H", frame[16:18])[0]
    return frame[14:14 + total]


class Rig:
    """The filter on memory segments, a gateway port and a client port."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.up_seg = segment(f"fw-up-{tag}")
        self.client_seg_name = f"fw-c1-{tag}"
        self.c_seg = segment(self.client_seg_name)
        self.uplink = self.up_seg.attach(mac=bytes.fromhex("020000000002"))
        self.gw = self.up_seg.attach(mac=GW_MAC)
        self.client = self.c_seg.attach(mac=C_MAC)
        self.log = Lines()
        sink = Sink(self.log, "debug")
        self.fw = PythonFilter(self.uplink, Logger("fw", sink), client_backend="memory",
                               )

    async def start(self) -> None:
        await self.fw.start(SETUP)
        self.fw.set_rules(RULES)
        await self.fw.attach(CLIENT, self.client_seg_name)
        # the filter announced itself and asked for the gateway; answer
        req = arp.parse((await read_until(self.gw, lambda f: is_arp(f) and
                                          arp.parse(f[14:]).op == 1 and
                                          arp.parse(f[14:]).tpa == F.ip4("10.200.0.1")))[14:])
        self.gw.write(arp.reply_frame(GW_MAC, req.tpa, req.sha, req.spa))
        # the client asks for its gateway and learns the firewall's MAC
        self.client.write(F.arp_request(C_MAC, CLIENT, "10.137.0.1"))
        reply = await read_until(self.client, is_arp)
        self.fw_mac = arp.parse(reply[14:]).sha
        assert self.fw_mac == self.fw._ifaces[CLIENT].dev.mac

    def from_client(self, packet: bytes) -> None:
        self.client.write(F.ethernet(self.fw_mac, C_MAC, F.ETH_IPV4, packet))

    def from_gateway(self, packet: bytes) -> None:
        self.gw.write(F.ethernet(self.uplink.mac, GW_MAC, F.ETH_IPV4, packet))

    def close(self) -> None:
        self.fw.close()
        for port in (self.uplink, self.gw, self.client):
            port.close()


def test_memory_client_to_upstream_and_back():
    async def main():
        rig = Rig()
        await rig.start()
        try:
            # ping upstream: NATed to the uplink address, the reply comes back un-NATed
            rig.from_client(F.ipv4(CLIENT, "10.200.0.1", F.PROTO_ICMP,
                                   F.icmp_echo(77, 1, b"x" * 32)))
            out = ip_of(await read_until(rig.gw, is_ip))
            assert out[12:16] == F.ip4("10.200.0.2") and out[16:20] == F.ip4("10.200.0.1")
            assert F.ipv4_header_ok(out) and F.l4_checksum_ok(out)
            ident = struct.unpack("!H", out[24:26])[0]
            rig.from_gateway(F.ipv4("10.200.0.1", "10.200.0.2", F.PROTO_ICMP,
                                    F.icmp_echo(ident, 1, b"x" * 32, reply=True)))
            back = ip_of(await read_until(rig.client, is_ip))
            assert back[16:20] == F.ip4(CLIENT) and back[12:16] == F.ip4("10.200.0.1")
            assert back[20] == 0 and struct.unpack("!H", back[24:26])[0] == 77
            assert F.l4_checksum_ok(back)
            # TCP to port 80 passes too
            rig.from_client(F.ipv4(CLIENT, "10.200.0.1", F.PROTO_TCP,
                                   F.tcp(CLIENT, "10.200.0.1", 40000, 80, 1, flags=0x02)))
            out = ip_of(await read_until(rig.gw, is_ip))
            assert out[9] == F.PROTO_TCP and out[12:16] == F.ip4("10.200.0.2")
            assert F.l4_checksum_ok(out)
            # UDP is not allowed: the client gets ICMP administratively prohibited
            rig.from_client(F.ipv4(CLIENT, "10.200.0.1", F.PROTO_UDP,
                                   F.udp(CLIENT, "10.200.0.1", 40000, 5000, b"no")))
            err = ip_of(await read_until(rig.client, is_ip))
            assert err[9] == F.PROTO_ICMP and (err[20], err[21]) == (3, 13)
            assert err[16:20] == F.ip4(CLIENT)
            # a spoofed source goes nowhere
            rig.from_client(F.ipv4("10.137.0.99", "10.200.0.1", F.PROTO_ICMP,
                                   F.icmp_echo(5, 5)))
            with pytest.raises(asyncio.TimeoutError):
                await read_until(rig.gw, is_ip, timeout=0.2)
            # upstream traffic that belongs to no connection is dropped
            rig.from_gateway(F.ipv4("10.200.0.1", "10.200.0.2", F.PROTO_UDP,
                                    F.udp("10.200.0.1", "10.200.0.2", 53, 41000, b"?")))
            with pytest.raises(asyncio.TimeoutError):
                await read_until(rig.client, is_ip, timeout=0.2)
            # malformed frames are counted, nothing breaks
            rig.client.write(b"\x00" * 14)
            rig.gw.write(rig.uplink.mac + GW_MAC + b"\x08\x00" + b"\x45" * 30)
            await asyncio.sleep(0.05)
            stats = rig.fw.stats()
            assert stats["l2.arp_answered"] == 1
            assert stats["l2.ip_malformed"] >= 1
            assert stats[f"dev.{CLIENT}.rx_packets"] >= 5
            assert stats["dev.uplink.tx_packets"] >= 3
            assert stats.get("fw.internal_error", 0) == 0
            drops = [line for line in rig.log.lines if "msg=dropped" in line]
            assert any("level=debug" in line for line in drops)
            assert any("level=info" in line for line in drops)
        finally:
            rig.close()
        # the client interface is closed and left its segment
        assert rig.fw._ifaces == {}
    asyncio.run(main())


def test_memory_drop_lines_are_rate_limited_at_info():
    async def main():
        rig = Rig()
        await rig.start()
        try:
            for i in range(50):
                rig.from_client(F.ipv4(CLIENT, "10.200.0.1", F.PROTO_UDP,
                                       F.udp(CLIENT, "10.200.0.1", 40000 + i, 5000, b"no")))
            for _ in range(50):
                await read_until(rig.client, is_ip)
        finally:
            rig.close()
        info = [line for line in rig.log.lines if "msg=dropped" in line and "level=info" in line]
        debug = [line for line in rig.log.lines
                 if "msg=dropped" in line and "level=debug" in line]
        assert len(debug) >= 50
        assert len(info) <= 3  # one per reason per second
    asyncio.run(main())


def test_memory_detach_and_reattach_while_running():
    async def main():
        rig = Rig()
        await rig.start()
        try:
            rig.fw.detach(CLIENT)
            assert CLIENT not in rig.fw._ifaces
            rig.fw.detach(CLIENT)  # twice: never raises
            rig.from_client(F.ipv4(CLIENT, "10.200.0.1", F.PROTO_ICMP, F.icmp_echo(1, 1)))
            with pytest.raises(asyncio.TimeoutError):
                await read_until(rig.gw, is_ip, timeout=0.2)
            await rig.fw.attach(CLIENT, rig.client_seg_name)
            rig.fw.set_rules(RULES)
            rig.client.write(F.arp_request(C_MAC, CLIENT, "10.137.0.1"))
            rig.fw_mac = arp.parse((await read_until(rig.client, is_arp))[14:]).sha
            rig.from_client(F.ipv4(CLIENT, "10.200.0.1", F.PROTO_ICMP, F.icmp_echo(2, 2)))
            out = ip_of(await read_until(rig.gw, is_ip))
            assert out[12:16] == F.ip4("10.200.0.2")
            # attached again (moved to another interface): the rules stay
            await rig.fw.attach(CLIENT, rig.client_seg_name)
            rig.client.write(F.arp_request(C_MAC, CLIENT, "10.137.0.1"))
            rig.fw_mac = arp.parse((await read_until(rig.client, is_arp))[14:]).sha
            rig.from_client(F.ipv4(CLIENT, "10.200.0.1", F.PROTO_ICMP, F.icmp_echo(3, 3)))
            out = ip_of(await read_until(rig.gw, is_ip))
            assert out[12:16] == F.ip4("10.200.0.2")
        finally:
            rig.close()
    asyncio.run(main())


@pytest.mark.skipif(not hasattr(socket, "AF_PACKET") or os.geteuid() != 0,
                    reason="packet sockets need root on Linux")
def test_attach_to_a_missing_interface_is_a_device_error():
    async def main():
        rig = Rig()
        rig.fw.client_backend = "afpacket"
        await rig.fw.start(SETUP)
        try:
            with pytest.raises(DeviceError, match="nosuchif0"):
                await rig.fw.attach(CLIENT, "nosuchif0")
            assert CLIENT not in rig.fw._ifaces
        finally:
            rig.close()
    asyncio.run(main())


class VnetClient:
    """A client device with the virtio-net header: hands over one GSO super-frame."""

    vnet = True

    def __init__(self, frames) -> None:
        self.mac = bytes.fromhex("fe0000000b0b")
        self._frames = list(frames)
        self._closed = asyncio.Event()
        self.written: list[tuple[VnetHeader | None, bytes]] = []

    async def read_vnet(self):
        if self._frames:
            return self._frames.pop(0)
        await self._closed.wait()
        raise Closed("test")

    def write(self, frame):
        self.written.append((None, frame))

    def write_vnet(self, header, frame):
        self.written.append((header, frame))

    def stats_dict(self):
        return {"rx_packets": 0}

    def close(self):
        self._closed.set()


def super_frame(dst_mac: bytes, size: int) -> tuple[VnetHeader, bytes]:
    """A TCP GSO super-frame from the client as the kernel hands it over:
    the checksum field holds only the pseudo-header sum (NEEDS_CSUM)."""
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    seg = struct.pack("!HHIIBBHHH", 40001, 80, 1000, 1, 5 << 4, 0x18, 65535, 0, 0) + payload
    pseudo = F.pseudo_header(CLIENT, "10.200.0.1", F.PROTO_TCP, len(seg))
    partial = (~F.inet_checksum(pseudo)) & 0xFFFF
    seg = seg[:16] + struct.pack("!H", partial) + seg[18:]
    packet = F.ipv4(CLIENT, "10.200.0.1", F.PROTO_TCP, seg)
    header = VnetHeader(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16)
    return header, F.ethernet(dst_mac, C_MAC, F.ETH_IPV4, packet)


def test_a_gso_super_packet_crosses_once_and_is_finished_for_a_plain_uplink():
    async def main():
        rig = Rig()
        await rig.start()
        dev = VnetClient([super_frame(bytes.fromhex("fe0000000b0b"), 20000)])
        rig.fw._open = lambda ifname: dev  # a vnet client in place of a packet socket
        await rig.fw.attach("10.137.0.11", "vnet-test")
        rig.fw.set_rules(RULES)  # detaching forgot them
        try:
            frames = []
            while sum(len(ip_of(f)) - 40 for f in frames) < 20000:
                frames.append(await read_until(rig.gw, is_ip))
        finally:
            rig.close()
        packets = [ip_of(f) for f in frames]
        assert len(packets) == 14  # 20000 bytes in 1448-byte segments
        for p in packets:
            assert p[12:16] == F.ip4("10.200.0.2")
            assert F.ipv4_header_ok(p) and F.l4_checksum_ok(p)
        assert rig.fw.stats()["fw.tx_finished_in_software"] == 1
    asyncio.run(main())


SETUP6 = FilterSetup(uplink_ip="10.200.0.2", uplink_gateway="10.200.0.1",
                     client_gateway="10.137.0.1", uplink_prefix=24, uplink_ip6="fd00:200::2",
                     uplink_gateway6="fd00:200::1", client_gateway6="fd09:24ef:4179::1")
CLIENT6 = "fd09:24ef:4179::a89:b"


def test_a_dual_stack_vm_has_one_device_for_both_addresses():
    from ingot.plugins.netstack import ipv6, ndp, udp

    def is_ip6(frame):
        return frame[12:14] == b"\x86\xdd" and not ndp.is_nd(frame[14:])

    async def main():
        rig = Rig()
        await rig.fw.start(SETUP6)
        for rules in (RULES, ClientRules(client=CLIENT6, rules=(), policy="accept")):
            rig.fw.set_rules(rules)
        ns = await read_until(rig.gw, lambda f: f[12:14] == b"\x86\xdd" and ndp.is_nd(f[14:])
                              and f[14 + 40] == 135)  # the gateway is asked for
        rig.gw.write(ndp.advertisement_frame(GW_MAC, ipv6.addr("fd00:200::1"), rig.uplink.mac,
                                             ipv6.addr("fd00:200::2")))
        order = [(CLIENT, CLIENT6), (CLIENT6, CLIENT)]
        try:
            for first, second in order:
                await rig.fw.attach(first, rig.client_seg_name)
                await rig.fw.attach(second, rig.client_seg_name)
                reading = {i.name for i in rig.fw._ifaces.values() if i.task is not None}
                assert reading == {"uplink", CLIENT}, reading  # one device, the IPv4 address's
                assert rig.fw._ifaces[CLIENT6].dev is rig.fw._ifaces[CLIENT].dev
                fw_mac = rig.fw._ifaces[CLIENT].dev.mac
                for _ in range(2):
                    src, dst = ipv6.addr(CLIENT6), ipv6.addr("fd00:7::7")
                    pkt = ipv6.build(src, dst, 17, udp.build(4000, 53, b"six", src, dst))
                    rig.client.write(F.ethernet(fw_mac, C_MAC, 0x86DD, pkt))
                    out = ipv6.parse((await read_until(rig.gw, is_ip6))[14:])
                    assert out.src == ipv6.addr("fd00:200::2")  # masqueraded
                    if second == CLIENT6:
                        break
                    # the IPv4 address goes: the IPv6 one gets a device of its own, keeps working
                    rig.fw.detach(CLIENT)
                    assert CLIENT6 in rig.fw._ifaces and rig.fw._ifaces[CLIENT6].host is None
                    fw_mac = rig.fw._ifaces[CLIENT6].dev.mac
                rig.fw.detach(CLIENT)
                rig.fw.detach(CLIENT6)
                rig.fw.set_rules(RULES)
                rig.fw.set_rules(ClientRules(client=CLIENT6, rules=(), policy="accept"))
            assert rig.fw.stats().get("l2.ipv6_no_client", 0) == 0
        finally:
            rig.close()
    asyncio.run(main())


class ServedClient:
    """A client device with ``serve``: each frame is handed over as a view of one
    receive buffer, which is overwritten as soon as the handler returns (as the
    packet socket's ring is read into again)."""

    vnet = True
    WRITE_COPIES = True

    def __init__(self) -> None:
        self.mac = bytes.fromhex("fe0000000b0c")
        self.handler = None
        self.buf = bytearray(2048)
        self.written: list[bytes] = []
        self._closed = asyncio.Event()

    async def serve(self, handler):
        self.handler = handler
        await self._closed.wait()
        raise Closed("test")

    def push(self, frame: bytes) -> None:
        n = 10 + len(frame)
        self.buf[:n] = bytes(10) + frame
        view = memoryview(self.buf)
        self.handler(view[10:n], view[:10])
        self.buf[:] = b"\xaa" * len(self.buf)

    def write(self, frame):
        self.written.append(bytes(frame))

    def write_vnet(self, header, frame):
        self.written.append(bytes(frame))

    def stats_dict(self):
        return {"rx_packets": 0}

    def close(self):
        self._closed.set()


def test_frames_held_for_arp_survive_their_receive_buffer_being_reused():
    async def main():
        rig = Rig()
        await rig.fw.start(SETUP)  # the gateway's ARP is not answered yet
        dev = ServedClient()
        rig.fw._open = lambda ifname: dev
        await rig.fw.attach(CLIENT, "served")
        rig.fw.set_rules(RULES)
        for _ in range(100):
            if dev.handler is not None:
                break
            await asyncio.sleep(0.01)
        dev.push(F.arp_request(C_MAC, CLIENT, "10.137.0.1"))
        syns = []
        for port in (40001, 40002, 40003):
            seg = struct.pack("!HHIIBBHHH", port, 80, 1000, 0, 5 << 4, 0x02, 65535, 0, 0)
            pseudo = F.pseudo_header(CLIENT, "10.200.0.1", F.PROTO_TCP, len(seg))
            seg = seg[:16] + struct.pack("!H", F.inet_checksum(pseudo + seg)) + seg[18:]
            syns.append(F.ipv4(CLIENT, "10.200.0.1", F.PROTO_TCP, seg))
            dev.push(F.ethernet(dev.mac, C_MAC, F.ETH_IPV4, syns[-1]))
        try:
            req = await read_until(rig.gw, lambda f: is_arp(f) and arp.parse(f[14:]).op == 1
                                   and arp.parse(f[14:]).tpa == F.ip4("10.200.0.1"))
            req = arp.parse(req[14:])
            rig.gw.write(arp.reply_frame(GW_MAC, req.tpa, req.sha, req.spa))
            out = [ip_of(await read_until(rig.gw, is_ip)) for _ in syns]
        finally:
            rig.close()
        for sent, got in zip(syns, out):
            assert got[12:16] == F.ip4("10.200.0.2")  # masqueraded
            assert F.ipv4_header_ok(got) and F.l4_checksum_ok(got), got.hex()
            assert got[20:22] == sent[20:22] and got[40:] == sent[40:]  # the held bytes
    asyncio.run(main())


# -- network namespaces ----------------------------------------------------------------


RUNNER = r"""
import asyncio, json, signal, sys
from ingot.log import Logger, Sink
from ingot.plugins.firewall.python_backend import PythonFilter
from ingot.plugins.netif.afpacket import PacketNet
from ingot.signatures import ClientRules, FilterRule, FilterSetup

uplink_if, client_if, level = sys.argv[1], sys.argv[2], sys.argv[3]
setup = FilterSetup(uplink_ip="10.200.0.2", uplink_gateway="10.200.0.1",
                    client_gateway="10.137.0.1", uplink_prefix=24)
rules = ClientRules(client="10.137.0.11", rules=(
    FilterRule(action="accept", proto="icmp"),
    FilterRule(action="accept", proto="tcp", dstports=(80, 80))), policy="drop")

async def main():
    log = Logger("fw", Sink(sys.stderr, level))
    uplink = PacketNet(uplink_if, vnet=True, log=log)
    fw = PythonFilter(uplink, log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await fw.start(setup)
    fw.set_rules(rules)
    await fw.attach("10.137.0.11", client_if)
    print("ready", flush=True)
    await stop.wait()
    stats = fw.stats()
    fw.close()
    uplink.close()
    print(json.dumps(stats), flush=True)

asyncio.run(main())
"""

SERVER = r"""
import socket, sys, threading
srv = socket.create_server(("10.200.0.1", 80))
print("listening", flush=True)
while True:
    conn, peer = srv.accept()
    def serve(conn=conn, peer=peer):
        with conn:
            total = 0
            while True:
                data = conn.recv(1 << 16)
                if not data or data.endswith(b"END"):
                    total += len(data)
                    break
                total += len(data)
            conn.sendall(f"{peer[0]} {total}".encode())
    threading.Thread(target=serve, daemon=True).start()
"""

TCP_CLIENT = r"""
import socket, sys
conn = socket.create_connection(("10.200.0.1", 80), timeout=10)
n = int(sys.argv[1])
conn.sendall(bytes(n) + b"END")
conn.shutdown(socket.SHUT_WR)
print(conn.recv(1000).decode())
"""

UDP_CLIENT = r"""
import errno, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect(("10.200.0.1", 5000))
s.send(b"hello")
try:
    s.recv(100)
    print("answered")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""

SPOOF = r"""
import socket, struct, sys
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
src = sys.argv[1]
icmp = struct.pack("!BBHHH", 8, 0, 0, 4242, 1) + b"spoof"
icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                 socket.inet_aton(src), socket.inet_aton("10.200.0.1"))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(3):
    s.sendto(ip + icmp, ("10.200.0.1", 0))
"""


def snmp(host, proto: str, name: str) -> int:
    """A counter of ``host``'s kernel from /proc/net/snmp (``Icmp``, ``InEchos``)."""
    lines = [line.split() for line in host.run("cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith(proto + ":")]
    return int(lines[1][lines[0].index(name)])


def in_echos(host) -> int:
    """Echo requests ``host``'s kernel received."""
    return snmp(host, "Icmp", "InEchos")


def udp_in(host) -> int:
    """UDP datagrams ``host``'s kernel received, to an open port or not."""
    return snmp(host, "Udp", "InDatagrams") + snmp(host, "Udp", "NoPorts")


@pytest.fixture
def firewall(netns):
    """client1 - fw - upstream, with the backend running inside fw."""
    client1, fw, upstream = netns(), netns(), netns()
    c_if, fw_cif = client1.link(fw, "10.137.0.11/32", None)
    fw_uif, _ = fw.link(upstream, None, "10.200.0.1/24")
    client1.add_route("10.137.0.1/32", dev=c_if)
    client1.add_route("10.200.0.0/16", via="10.137.0.1", dev=c_if)
    proc = fw.popen(sys.executable, "-c", RUNNER, fw_uif, fw_cif, "info",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError("the filter did not start:\n" + line + proc.stderr.read())
    result = {}

    def stop() -> dict:
        if not result:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
            result["stats"] = json.loads(out.strip().splitlines()[-1])
            result["log"] = err
        return result

    yield client1, fw, upstream, stop
    if proc.poll() is None:
        stop()


@pytest.mark.netns
def test_netns_filtered_and_nated_through_the_python_backend(firewall):
    client1, fw, upstream, stop = firewall
    started = time.monotonic()
    assert client1.ping("10.200.0.1", count=3)

    upstream.popen(sys.executable, "-c", SERVER, stdout=subprocess.DEVNULL)
    upstream.wait_listening(80)
    res = client1.run(sys.executable, "-c", TCP_CLIENT, "1000", timeout=20)
    assert res.stdout.split() == ["10.200.0.2", "1003"]  # upstream sees the NAT address
    # a bulk transfer: the client's kernel hands over 64 KiB super-packets
    res = client1.run(sys.executable, "-c", TCP_CLIENT, str(16 << 20), timeout=30)
    assert res.stdout.split() == ["10.200.0.2", str((16 << 20) + 3)]

    before = udp_in(upstream)
    res = client1.run(sys.executable, "-c", UDP_CLIENT, timeout=10)
    # ICMP administratively prohibited (type 3 code 13) is EHOSTUNREACH to Linux
    # (port unreachable, code 3, would be ECONNREFUSED)
    assert res.stdout.strip() == "EHOSTUNREACH", res.stdout
    assert udp_in(upstream) == before  # and nothing reached upstream

    before = in_echos(upstream)
    client1.run(sys.executable, "-c", SPOOF, "10.137.0.99", timeout=10)
    time.sleep(0.3)
    assert in_echos(upstream) == before  # spoofed: dropped
    client1.run(sys.executable, "-c", SPOOF, "10.137.0.11", timeout=10)
    deadline = time.monotonic() + 2
    while in_echos(upstream) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_echos(upstream) == before + 3  # the same packets from the real source pass

    result = stop()
    stats = result["stats"]
    assert stats.get("fw.internal_error", 0) == 0, result["log"]
    gso_in = stats.get("fw.gso_in", 0)
    assert gso_in > 0, stats  # super-packets went through the engine whole
    assert stats["drop.policy"] >= 1 and stats["drop.spoofed"] >= 3, stats
    assert "msg=dropped" in result["log"] and "reason=spoofed" in result["log"]
    assert time.monotonic() - started < 60
