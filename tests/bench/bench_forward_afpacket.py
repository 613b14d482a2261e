#!/usr/bin/env python3
"""The afpacket device: batched against one-by-one system calls, and as an L2 wire.

    .venv/bin/python tests/bench/bench_forward_afpacket.py    (as root; needs iperf3)

receive
    another namespace sends 64-byte frames over a veth as fast as it can
    (``sendmmsg`` in a loop); the device reads them through ``read()`` with
    one ``recv()`` per frame, then with ``recvmmsg`` (64 per call).
    Reported: frames read per second and per CPU-second of this process.
send
    the device writes 64-byte frames in a loop, with one ``send()`` per
    frame, then batched into ``sendmmsg`` calls (32 per call); counted where
    they arrive, on the peer interface.
wire
    TCP (iperf3) between two hosts on one subnet through a middle namespace
    that joins them: the kernel's bridge, then two afpacket devices copying
    frames both ways in Python with ``read()``/``write()`` (peers' offloads
    off, so frames are standard), then with ``read_vnet()``/``write_vnet()``
    (offloads on, 64 KiB super-frames passed untouched).

Each case runs ``--seconds`` (default 3). Not a test: nothing is asserted;
compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from ingot.plugins.netif.afpacket import PacketNet
from ingot.testing.forward import forward
from ingot.testing.netns import Host, Lab, unavailable

BLAST = """
import sys, time, socket
from ingot.plugins.netif.batch import SendMany
frame = bytes.fromhex("020000000099020000000098") + b"\\x88\\xb5" + bytes(50)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
sock.bind(("eth0", 0))
many = SendMany(sock.fileno(), 64, 128)
frames = [frame] * 64
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        many(frames)
    except BlockingIOError:
        pass
"""


def rx_packets(host: Host, ifname: str) -> int:
    info = json.loads(host.ip("-s", "-j", "link", "show", ifname))
    return int(info[0]["stats64"]["rx"]["packets"])


def receive(seconds: float, rx_batch: int) -> tuple[float, float]:
    with Lab() as lab:
        a, b = lab.host(), lab.host()
        a.link(b, None, None)
        with a.entered():
            dev = PacketNet("eth0", vnet=False, rx_batch=rx_batch)
        blaster = b.popen(sys.executable, "-c", BLAST, str(seconds + 1.0))
        time.sleep(0.5)

        async def count() -> int:
            n = 0

            async def reader() -> None:
                nonlocal n
                while True:
                    await dev.read()
                    n += 1
            task = asyncio.ensure_future(reader())
            await asyncio.sleep(seconds)
            task.cancel()
            return n

        cpu = time.process_time()
        n = asyncio.run(count())
        cpu = time.process_time() - cpu
        dev.close()
        blaster.wait(seconds + 10)
        return n / seconds, n / cpu


def send(seconds: float, tx_batch: int) -> tuple[float, float]:
    frame = bytes.fromhex("020000000099020000000098") + b"\x88\xb5" + bytes(50)
    with Lab() as lab:
        a, b = lab.host(), lab.host()
        a.link(b, None, None)
        with a.entered():
            dev = PacketNet("eth0", vnet=False, tx_batch=tx_batch)
        before = rx_packets(b, "eth0")

        async def blast() -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for _ in range(256):
                    dev.write(frame)
                await asyncio.sleep(0)

        cpu = time.process_time()
        asyncio.run(blast())
        cpu = time.process_time() - cpu
        dev.close()
        arrived = rx_packets(b, "eth0") - before
        return arrived / seconds, arrived / cpu


def wire(seconds: float, mode: str) -> float:
    """Mbit/s of TCP through the middle: 'bridge', 'afpacket' or 'afpacket+vnet'."""
    with Lab() as lab:
        client, mid, server = lab.host(), lab.host(), lab.host()
        client.link(mid, "10.200.7.1/24", None)
        mid.link(server, None, "10.200.7.2/24")
        offload = "on" if mode != "afpacket" else "off"
        for host in (client, server):
            host.run("ethtool", "-K", "eth0", "tso", offload, "gso", offload, "tx", offload)
        devices = []
        if mode == "bridge":
            mid.bridge("br0", "eth0", "eth1")
        else:
            with mid.entered():
                devices = [PacketNet(name, promiscuous=True, vnet=mode.endswith("vnet"))
                           for name in ("eth0", "eth1")]
        server.popen("iperf3", "-s", "-1", "-B", "10.200.7.2", stdout=subprocess.DEVNULL)
        server.wait_listening(5201)

        async def run() -> str:
            fwd = None
            if devices:
                fwd = asyncio.ensure_future(forward(*devices, vnet=mode.endswith("vnet")))
            try:
                proc = await asyncio.to_thread(client.run, "iperf3", "-c", "10.200.7.2", "-t",
                                               str(seconds), "-J", timeout=seconds + 30)
                return proc.stdout
            finally:
                if fwd is not None:
                    fwd.cancel()
                    await asyncio.gather(fwd, return_exceptions=True)

        try:
            out = asyncio.run(run())
        finally:
            for dev in devices:
                dev.close()
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per case (max 30)")
    args = ap.parse_args()
    if reason := unavailable():
        sys.exit(f"cannot run: {reason}")
    seconds = min(max(args.seconds, 1.0), 30.0)
    print(f"afpacket device, 64-byte frames, {seconds:g} s per case")
    print(f"{'case':<34} {'frames/s':>10} {'frames/CPU-s':>13}")
    for label, fn, arg in (("receive, recv() per frame", receive, 0),
                           ("receive, recvmmsg x64", receive, 64),
                           ("send, send() per frame", send, 0),
                           ("send, sendmmsg x32", send, 32)):
        rate, per_cpu = fn(seconds, arg)
        print(f"{label:<34} {rate:>10,.0f} {per_cpu:>13,.0f}")
    print(f"\nTCP through a middle namespace, iperf3 -t {seconds:g}")
    rates = {mode: wire(seconds, mode) for mode in ("bridge", "afpacket", "afpacket+vnet")}
    for mode, rate in rates.items():
        print(f"{mode:<34} {rate:>10.0f} Mbit/s {rate / rates['bridge']:>6.3f} x bridge")
    return 0


if __name__ == "__main__":
    sys.exit(main())
