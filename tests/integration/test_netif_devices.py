"""The tap, afpacket and tun devices against the Linux kernel, inside network namespaces.

Frames are built by hand (ingot.testing.frames). A device either asks the
kernel something (an ARP request, an echo request) and reads its answer, or
answers the kernel's own ping (so ``ping`` succeeding proves both
directions).
"""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import subprocess

import pytest

from ingot.log import Logger, Sink
from ingot.plugins.netif import afpacket, tap, tun
from ingot.plugins.netif.linux import GSO_TCPV4
from ingot.registry import DeviceContext
from ingot.signatures import Closed, DeviceError, MessageTooLong
from ingot.testing import frames as F
from ingot.testing.devices import check_closing

pytestmark = pytest.mark.netns

ME = "10.200.3.1"
PEER = "10.200.3.2"


def context(backend: str, kind: str = "net", **keys) -> DeviceContext:
    return DeviceContext(name=kind, kind=kind, backend=backend, target="unix", keys=keys,
                         deps={}, data=None, log=Logger(kind, Sink(io.StringIO(), "debug")))


def run(coro, timeout: float = 20.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def read_until(dev, match, timeout: float = 5.0) -> bytes:
    """The first frame/packet read from ``dev`` for which ``match`` is true."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await dev.read()
            if match(frame):
                return frame


async def ask(dev, request: bytes, match, timeout: float = 5.0) -> bytes:
    """Write ``request`` every 0.2 s until a frame for which ``match`` is true comes back.

    (A bridge port starts forwarding only once the kernel has seen the tap's
    carrier, which may take up to a second after the device attaches.)
    """
    async with asyncio.timeout(timeout):
        while True:
            dev.write(request)
            try:
                return await read_until(dev, match, 0.2)
            except TimeoutError:
                pass


def is_arp_reply(frame: bytes) -> bool:
    return frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02"


def is_echo_reply(frame: bytes) -> bool:
    return frame[12:14] == b"\x08\x00" and frame[23] == F.PROTO_ICMP and frame[34] == 0


async def answer(dev, my_ip: str, *, ethernet: bool = True) -> None:
    """Answer ARP requests for ``my_ip`` and echo requests to it, until cancelled."""
    mine = F.ip4(my_ip)
    while True:
        frame = await dev.read()
        if ethernet and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x01" \
                and frame[38:42] == mine:
            asker_mac, asker_ip = frame[22:28], frame[28:32]
            dev.write(F.ethernet(asker_mac, dev.mac, F.ETH_ARP,
                                 F.arp(2, dev.mac, my_ip, asker_mac, socket.inet_ntoa(asker_ip))))
            continue
        packet = frame[14:] if ethernet else frame
        if len(packet) >= 28 and packet[9] == F.PROTO_ICMP and packet[16:20] == mine \
                and packet[20] == 8:
            ident, seq = struct.unpack("!HH", packet[24:28])
            total = struct.unpack("!H", packet[2:4])[0]
            reply = F.ipv4(my_ip, socket.inet_ntoa(packet[12:16]), F.PROTO_ICMP,
                           F.icmp_echo(ident, seq, packet[28:total], reply=True))
            dev.write(F.ethernet(frame[6:12], dev.mac, F.ETH_IPV4, reply) if ethernet else reply)


async def ping_answered(host, dev, target: str, *, ethernet: bool = True) -> bool:
    """Run ``ping target`` in ``host`` while ``dev`` answers for ``target``."""
    responder = asyncio.ensure_future(answer(dev, target, ethernet=ethernet))
    try:
        return await asyncio.to_thread(host.ping, target, 3)
    finally:
        responder.cancel()
        await asyncio.gather(responder, return_exceptions=True)


async def ask_and_ping(dev, peer_ip: str, my_ip: str) -> None:
    """ARP for ``peer_ip``, then an echo request to it; both answered by its kernel."""
    reply = await ask(dev, F.arp_request(dev.mac, my_ip, peer_ip), is_arp_reply)
    assert reply[28:32] == F.ip4(peer_ip) and reply[0:6] == dev.mac
    peer_mac = reply[22:28]
    echo = F.ipv4(my_ip, peer_ip, F.PROTO_ICMP, F.icmp_echo(0x1234, 7, b"x" * 40))
    frame = await ask(dev, F.ethernet(peer_mac, dev.mac, F.ETH_IPV4, echo), is_echo_reply)
    packet = frame[14:]
    assert packet[12:16] == F.ip4(peer_ip) and packet[24:28] == struct.pack("!HH", 0x1234, 7)
    assert F.ipv4_header_ok(packet) and F.l4_checksum_ok(packet)


# --------------------------------------------------------------------------
# tap


@pytest.fixture
def bridged_tap(netns):
    """A tap ``tap0`` on a bridge with a host at 10.200.3.2 (the switch, the host)."""
    sw, host = netns.switch(), netns()
    sw.plug(host, f"{PEER}/24")
    sw.tap("tap0")
    return sw, host


def test_tap_frames_reach_the_kernel_and_its_answers_come_back(bridged_tap):
    sw, host = bridged_tap
    with sw.entered():
        dev = tap.connect(context("tap", ifname="tap0", **{"vnet-hdr": False, "offload": True,
                                                           "mac": "02:00:00:00:03:01"}))
    try:
        assert dev.mac == bytes.fromhex("020000000301") and dev.mtu == 1500
        run(ask_and_ping(dev, PEER, ME))
        assert run(ping_answered(host, dev, ME))  # the kernel's frames reach the device
        stats = dev.stats_dict()
        assert stats["rx_packets"] >= 4 and stats["tx_packets"] >= 4 and stats["dropped"] == 0
    finally:
        dev.close()


def test_tap_limits_closing_and_errors(bridged_tap):
    sw, _ = bridged_tap
    with sw.entered():
        dev = tap.TapNet("tap0")
    try:
        with pytest.raises(MessageTooLong):
            dev.write(bytes(1515))
        dev.write(bytes(10))  # too short for Ethernet: the kernel refuses, counted
        assert dev.dropped == 1 and dev.stats.errors == 1

        run(check_closing(dev, bytes(60)))
    finally:
        dev.close()


def test_tap_makes_its_interface_when_none_exists_and_it_goes_with_it(netns):
    host = netns()
    with host.entered():
        dev = tap.TapNet("tapnew")
    assert "tapnew" in host.ip("link", "show", "up")
    dev.close()
    assert "tapnew" not in host.ip("link", "show")


def test_attaching_in_the_wrong_mode_names_the_interface(netns):
    host = netns()
    host.tun("tunx")
    with host.entered(), pytest.raises(DeviceError, match="tunx.*tun vs tap"):
        tap.TapNet("tunx")


# --------------------------------------------------------------------------
# afpacket


def test_afpacket_injects_frames_the_peer_kernel_answers(netns):
    a, b = netns(), netns()
    a.link(b, None, f"{PEER}/24")
    with a.entered():
        dev = afpacket.connect(context("afpacket", ifname="eth0", promiscuous=False,
                                       **{"vnet-hdr": True}))
    try:
        assert dev.mac == bytes.fromhex(a.ip("-br", "link", "show", "eth0").split()[2]
                                        .replace(":", ""))
        run(ask_and_ping(dev, PEER, ME))
        assert run(ping_answered(b, dev, ME))  # frames sent from b are seen
    finally:
        dev.close()


def test_afpacket_does_not_see_its_own_or_its_hosts_transmissions(netns):
    a, b = netns(), netns()
    a.link(b, f"{ME}/24", f"{PEER}/24")
    with a.entered():
        dev = afpacket.PacketNet("eth0", vnet=False)
    b_mac = bytes.fromhex(b.ip("-br", "link", "show", "eth0").split()[2].replace(":", ""))

    async def main():
        dev.write(F.arp_request(dev.mac, "10.200.3.9", "10.200.3.77"))  # nobody answers
        assert await asyncio.to_thread(a.ping, PEER, 2)
        seen = []
        try:
            async with asyncio.timeout(0.5):
                while True:
                    seen.append(await dev.read())
        except TimeoutError:
            pass
        return seen

    try:
        seen = run(main())
        assert seen and all(frame[6:12] == b_mac for frame in seen)
        assert any(is_echo_reply(frame) for frame in seen)
    finally:
        dev.close()


@pytest.mark.parametrize("tx_batch,rx_batch", [(32, 0), (0, 64)])
def test_afpacket_batches_keep_every_frame_in_order(netns, tx_batch, rx_batch):
    a, b = netns(), netns()
    a.link(b, None, None)
    with a.entered():
        sender = afpacket.PacketNet("eth0", tx_batch=tx_batch)
    with b.entered():
        # a queue of 8: reading pauses and resumes many times, the kernel holds the rest
        receiver = afpacket.PacketNet("eth0", rx_batch=rx_batch, promiscuous=True, queue=8)
    sent = [F.ethernet("02:00:00:00:00:99", sender.mac, 0x88B5, struct.pack("!I", i) + bytes(50))
            for i in range(300)]

    async def main():
        for frame in sent:  # one loop iteration: batched into sendmmsg calls
            sender.write(frame)
        got = []
        while len(got) < len(sent):
            frame = await receiver.read()
            if frame[12:14] == b"\x88\xb5":
                got.append(frame)
        return got

    try:
        assert run(main()) == sent
        assert sender.stats.tx_packets == 300 and sender.dropped == 0
        sender.write(sent[0])  # outside a loop: sent at once
        assert sender.stats.tx_packets == 301
    finally:
        sender.close()
        receiver.close()


def test_afpacket_on_a_missing_interface_says_so(netns):
    with netns().entered(), pytest.raises(DeviceError, match="nope0"):
        afpacket.PacketNet("nope0")


def test_afpacket_completes_the_peers_tcp_superframes(netns):
    """TCP from the peer arrives as 64 KiB super-frames (TSO on the veth): read() cuts them."""
    a, b = netns(), netns()
    a.link(b, f"{ME}/24", f"{PEER}/24")
    assert "tcp-segmentation-offload: on" in b.run("ethtool", "-k", "eth0").stdout
    with a.entered():
        plain = afpacket.PacketNet("eth0")             # read(): standard frames
        raw = afpacket.PacketNet("eth0", vnet=True)    # read_vnet(): as the kernel has them
    a.popen("iperf3", "-s", "-1", "-B", ME, stdout=subprocess.DEVNULL)
    a.wait_listening(5201)
    frames, supers = [], []

    async def main():
        async def collect(dev, sink, reader):
            while True:
                sink.append(await reader(dev))
        tasks = [asyncio.ensure_future(collect(plain, frames, lambda d: d.read())),
                 asyncio.ensure_future(collect(raw, supers, lambda d: d.read_vnet()))]
        try:
            await asyncio.to_thread(b.run, "iperf3", "-c", ME, "-n", "4M", timeout=20)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        run(main(), 30)
        tcp = [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == F.PROTO_TCP]
        assert tcp and max(map(len, frames)) <= 1514
        assert all(F.ipv4_header_ok(f[14:]) and F.l4_checksum_ok(f[14:]) for f in tcp)
        assert plain.stats.segmented > 0
        gso = [(h, p) for h, p in supers if h.gso_type == GSO_TCPV4]
        assert gso and max(len(p) for _, p in gso) > 1514
    finally:
        plain.close()
        raw.close()


# --------------------------------------------------------------------------
# tun


def test_tun_gets_what_the_kernel_routes_to_it_and_delivers_what_it_writes(netns):
    host = netns()
    with host.entered():
        dev = tun.connect(context("tun", "tun", ifname="tun0",
                                  **{"vnet-hdr": False, "offload": True}))
    try:
        host.add_address("tun0", "10.200.5.1/24")
        assert dev.mtu == 1500 and dev.ifname == "tun0"

        async def first_echo():
            return await read_until(dev, lambda p: p[9] == F.PROTO_ICMP and p[20] == 8)

        async def main():
            pinger = asyncio.ensure_future(asyncio.to_thread(host.ping, "10.200.5.9", 1, 1))
            request = await first_echo()
            assert request[12:16] == F.ip4("10.200.5.1") and request[16:20] == F.ip4("10.200.5.9")
            await pinger
            return await ping_answered(host, dev, "10.200.5.9", ethernet=False)

        assert run(main())
        with pytest.raises(MessageTooLong):
            dev.write(bytes(1501))
        run(check_closing(dev, F.ipv4("10.200.5.9", "10.200.5.1", F.PROTO_ICMP, b"")))
    finally:
        dev.close()
    assert "tun0" not in host.ip("link", "show")


# --------------------------------------------------------------------------
# serve(): packets handed over in place


@pytest.mark.parametrize("serve_batch", [0, 16])
def test_afpacket_serve_hands_frames_over_in_place(netns, serve_batch):
    """Every frame, in order, as a view of the receive buffer; a failing handler
    is counted; cancelling ends it and read() takes over; closing raises Closed."""
    a, b = netns(), netns()
    a.link(b, None, None)
    with a.entered():
        sender = afpacket.PacketNet("eth0")
    with b.entered():
        receiver = afpacket.PacketNet("eth0", promiscuous=True, serve_batch=serve_batch)
    sent = [F.ethernet("02:00:00:00:00:99", sender.mac, 0x88B5, struct.pack("!I", i) + bytes(50))
            for i in range(300)]
    got, heads, kinds, failed = [], [], set(), []

    def handler(frame, header):
        kinds.add((type(frame), type(header), frame.readonly))
        if frame[12:14] != b"\x88\xb5":
            return
        if len(got) == 5 and not failed:
            failed.append(bytes(frame))
            raise RuntimeError("a handler bug")
        got.append(bytes(frame))
        heads.append(bytes(header))

    async def main():
        serving = asyncio.ensure_future(receiver.serve(handler))
        await asyncio.sleep(0.1)
        for frame in sent:
            sender.write(frame)
        async with asyncio.timeout(5):
            while len(got) < len(sent) - 1:
                await asyncio.sleep(0.01)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        sender.write(sent[0])  # read() works again once serving ended
        assert await read_until(receiver, lambda f: f[12:14] == b"\x88\xb5") == sent[0]
        serving = asyncio.ensure_future(receiver.serve(handler))
        await asyncio.sleep(0.05)
        receiver.close()
        with pytest.raises(Closed):
            await serving

    try:
        run(main())
        assert got == sent[:5] + sent[6:]  # the frame the handler failed on is gone
        assert set(heads) == {bytes(10)}  # finished frames: an all-zero header
        assert kinds == {(memoryview, memoryview, False)}
        assert receiver.stats.errors == 1 and receiver.stats.rx_packets >= 300
    finally:
        sender.close()
        receiver.close()


def test_serve_edits_and_writes_back_where_the_frame_lies(netns):
    """A handler rewrites each frame in place and writes it out of another device
    (the packed header passed on): what arrives is the edited frame, and the
    receive buffer may be overwritten at once (write copies)."""
    a, b, c = netns(), netns(), netns()
    a.link(b, None, None)
    b.link(c, None, None)  # b: eth0 towards a, eth1 towards c
    with a.entered():
        sender = afpacket.PacketNet("eth0")
    with b.entered():
        middle_in = afpacket.PacketNet("eth0", promiscuous=True)
        middle_out = afpacket.PacketNet("eth1")
    with c.entered():
        sink = afpacket.PacketNet("eth0", promiscuous=True)
    sent = [F.ethernet("02:00:00:00:00:99", sender.mac, 0x88B5, struct.pack("!I", i) + bytes(50))
            for i in range(100)]

    def handler(frame, header):
        if frame[12:14] == b"\x88\xb5":
            frame[14] = 0xEE  # edited in place
            middle_out.write_vnet(header, frame)
            frame[15:20] = b"\xff" * 5  # too late to matter: write_vnet copied it

    async def main():
        serving = asyncio.ensure_future(middle_in.serve(handler))
        await asyncio.sleep(0.1)
        for frame in sent:
            sender.write(frame)
        out = []
        async with asyncio.timeout(5):
            while len(out) < len(sent):
                frame = await sink.read()
                if frame[12:14] == b"\x88\xb5":
                    out.append(frame)
        serving.cancel()
        return out

    try:
        out = run(main())
        assert out == [f[:14] + b"\xee" + f[15:] for f in sent]
    finally:
        for dev in (sender, middle_in, middle_out, sink):
            dev.close()


def test_send_many_put_copies_at_once_and_sends_in_order():
    from ingot.plugins.netif.batch import SendMany

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        many = SendMany(left.fileno(), 4, 128)
        buf = bytearray(b"one")
        assert not many.put(b"H:", buf, 3)
        buf[:] = b"xxx"  # the caller's buffer is free again once put returns
        assert not many.put(None, memoryview(b"two"), 3)
        assert not many.put(b"H:", b"three", 5)
        assert many.waiting == 3 and many.discard(1) == 3 and many.waiting == 2
        assert many.send_waiting() == 2 and many.waiting == 0
        assert [right.recv(128) for _ in range(2)] == [b"two", b"H:three"]
        for i in range(3):
            assert not many.put(None, bytes([i]), 1)
        assert many.put(None, b"\x03", 1)  # the fourth: every slot taken
        assert many.send_waiting() == 4
        assert [right.recv(128) for _ in range(4)] == [b"\x00", b"\x01", b"\x02", b"\x03"]
        assert many([b"a", b"b"]) == 2  # the one-call form still works
        assert [right.recv(128) for _ in range(2)] == [b"a", b"b"]
    finally:
        left.close()
        right.close()
