"""The direct stack as a device, over an in-process segment, with a test peer on the wire.

Two direct stacks on one segment talk UDP to each other; a hand-driven peer
port checks ARP, ping and malformed frames; the echo appliance runs on it.
"""

import asyncio
from types import SimpleNamespace

import pytest

from ingot.plugins.netif.memory import segment
from ingot.plugins.netstack import arp, ethernet, icmp, ipv4, udp
from ingot.plugins.random.sources import SeededRandom
from ingot.plugins.stack_direct import adapter
from ingot.plugins.unix.clocks import UnixMClock
from ingot.signatures import DeviceError, Unsupported

PEER_MAC = bytes.fromhex("02000000ffee")


class Log:
    def __init__(self):
        self.lines = []

    def _log(self, level, msg, **fields):
        self.lines.append((level, msg, fields))

    def info(self, msg, **f):
        self._log("info", msg, **f)

    def warning(self, msg, **f):
        self._log("warning", msg, **f)

    def error(self, msg, **f):
        self._log("error", msg, **f)

    def debug(self, msg, **f):
        self._log("debug", msg, **f)

    def child(self, _name):
        return self


def ctx(net, ipv4_cfg, seed=1, **keys):
    values = {"ipv4": ipv4_cfg, "gateway": "", "dhcp-timeout": 2.0, "hostname": ""}
    values.update(keys)
    return SimpleNamespace(name="stack", keys=values, log=Log(),
                           deps={"net": net, "mclock": UnixMClock(),
                                 "random": SeededRandom(seed)},
                           key_flag=lambda short: f"--stack-{short}")


async def _read(port, timeout=2.0):
    return await asyncio.wait_for(port.read(), timeout)


def test_two_direct_stacks_exchange_udp(request):
    async def body():
        seg = segment(f"udp-{request.node.name}")
        a = await adapter.connect(ctx(seg.attach(), "10.137.0.2/24"))
        b = await adapter.connect(ctx(seg.attach(), "10.137.0.3/24"))
        got = asyncio.get_running_loop().create_future()
        server = await b.bind_udp("0.0.0.0", 7, lambda d, src: server.sendto(d[::-1], src))
        client = await a.bind_udp("10.137.0.2", 0)
        client.sendto(b"hello direct", ("10.137.0.3", 7))
        data, src = await asyncio.wait_for(client.recvfrom(), 2)
        assert data == b"tcerid olleh" and src == ("10.137.0.3", 7)
        big = bytes(range(256)) * 20  # 5120 bytes: fragmented and reassembled
        client.sendto(big, ("10.137.0.3", 7))
        data, _ = await asyncio.wait_for(client.recvfrom(), 2)
        assert data == big[::-1]
        assert a.counters["ipv4.fragmented"] >= 1
        del got
        for s in (a, b):
            s.close()
    asyncio.run(body())


def test_peer_on_the_wire_gets_arp_ping_and_port_unreachable(request):
    async def body():
        seg = segment(f"peer-{request.node.name}")
        peer = seg.attach(mac=PEER_MAC)
        stack = await adapter.connect(ctx(seg.attach(), "10.137.0.2/24"))
        me, them = ipv4.addr("10.137.0.2"), ipv4.addr("10.137.0.1")
        grat = arp.parse(ethernet.parse(await _read(peer)).payload)  # gratuitous ARP
        assert grat.spa == me
        peer.write(arp.request_frame(PEER_MAC, them, me))
        reply = arp.parse(ethernet.parse(await _read(peer)).payload)
        assert reply.op == arp.OP_REPLY and reply.spa == me
        ping = ipv4.build(them, me, ipv4.PROTO_ICMP, icmp.echo_request(1, 2, b"abc"))
        peer.write(ethernet.build(stack.net.mac, PEER_MAC, ethernet.ETHERTYPE_IPV4, ping))
        pong = icmp.parse(ipv4.parse(ethernet.parse(await _read(peer)).payload).payload)
        assert pong.type == icmp.ECHO_REPLY and bytes(pong.payload) == b"abc"
        closed = ipv4.build(them, me, ipv4.PROTO_UDP, udp.build(9, 9999, b"x", them, me))
        peer.write(ethernet.build(stack.net.mac, PEER_MAC, ethernet.ETHERTYPE_IPV4, closed))
        err = icmp.parse(ipv4.parse(ethernet.parse(await _read(peer)).payload).payload)
        assert (err.type, err.code) == (icmp.DEST_UNREACHABLE, icmp.PORT_UNREACHABLE)
        # garbage of every kind: dropped and counted, the stack goes on
        for junk in (stack.net.mac + PEER_MAC + b"\x81\x00\x00", ethernet.build(stack.net.mac, PEER_MAC, 0x0800, b"\x45" * 30),
                     ethernet.build(stack.net.mac, PEER_MAC, 0x0806, b"\x00\x01")):
            peer.write(junk)
        peer.write(ethernet.build(stack.net.mac, PEER_MAC, ethernet.ETHERTYPE_IPV4, ping))
        assert icmp.parse(ipv4.parse(ethernet.parse(await _read(peer)).payload).payload).type \
            == icmp.ECHO_REPLY
        c = stack.counters
        assert c["ethernet.malformed"] + c["ipv4.malformed"] + c["arp.malformed"] == 3
        stack.close()
    asyncio.run(body())


def test_tcp_is_unsupported_and_bad_binds_are_refused(request):
    async def body():
        seg = segment(f"tcp-{request.node.name}")
        stack = await adapter.connect(ctx(seg.attach(), "10.137.0.2/24"))
        with pytest.raises(Unsupported, match="TCP is not supported by the direct backend"):
            await stack.listen_tcp("0.0.0.0", 7, None)
        with pytest.raises(Unsupported, match="IPv6"):
            await stack.bind_udp("::", 7)
        with pytest.raises(DeviceError, match="not an address of this stack"):
            await stack.bind_udp("127.0.0.1", 7)
        await stack.bind_udp("0.0.0.0", 7)
        with pytest.raises(DeviceError, match="address in use"):
            await stack.bind_udp("0.0.0.0", 7)
        stack.close()
    asyncio.run(body())


def test_dhcp_without_a_server_fails_with_a_clear_error(request):
    async def body():
        seg = segment(f"dhcp-{request.node.name}")
        with pytest.raises(DeviceError, match="no DHCP lease within 0.3 s"):
            await adapter.connect(ctx(seg.attach(), "dhcp", **{"dhcp-timeout": 0.3}))
    asyncio.run(body())


def test_bad_static_address_is_a_clear_error(request):
    async def body():
        seg = segment(f"bad-{request.node.name}")
        with pytest.raises(DeviceError, match="--stack-gateway|--stack-ipv4"):
            await adapter.connect(ctx(seg.attach(), "10.137.0.2/24", gateway="10.200.0.1"))
    asyncio.run(body())
