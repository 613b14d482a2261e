#!/usr/bin/env python3
"""UDP echo packets per second: the echo appliance on the ``direct`` stack vs the ``socket`` stack.

    .venv/bin/python tests/bench/bench_udp_echo.py [--seconds 5] [--size 64]

Both images run in a network namespace of their own, reached over a veth
from a client namespace; the ``socket`` image uses the kernel's stack on an
addressed veth, the ``direct`` image Ingot's stack through a packet socket
(``afpacket``) on an unaddressed one. One client process keeps a window of
datagrams in flight for a fixed time and counts the echoes. Reported: echoes
per second for each, and direct/socket as a ratio. Needs root. Not a test.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))  # ingot.testing, when run from a checkout

from ingot.testing.netns import Lab  # noqa: E402

CLIENT = r"""
import socket, sys, time, json
addr = (sys.argv[1], 7); seconds = float(sys.argv[2]); size = int(sys.argv[3]); window = 32
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.settimeout(0.2)
payload = b"x" * size
for _ in range(window):
    s.sendto(payload, addr)
got = lost = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        s.recv(65535)
        got += 1
    except socket.timeout:
        lost += window            # the window drained: refill it
        for _ in range(window):
            s.sendto(payload, addr)
        continue
    s.sendto(payload, addr)
print(json.dumps({"echoes": got, "pps": got / seconds, "refills": lost // window}))
"""


def build(work: Path, *options: str) -> Path:
    for args in (["configure", str(ROOT / "appliances" / "echo"), *options, "--kv-ro",
                  "crunch", "--kv-ro-source", str(ROOT / "configs" / "echo" / "data")],
                 ["build", str(ROOT / "appliances" / "echo")]):
        subprocess.run([sys.executable, "-m", "ingot.cli", *args], cwd=work, check=True,
                       capture_output=True)
    return work / "images" / "echo-unix.pyz"


def measure(lab: Lab, image: Path, runtime: list[str], addressed: bool, seconds: float,
            size: int) -> dict:
    app, client = lab.host(), lab.host()
    _c_if, a_if = client.link(app, "10.137.0.1/24", "10.137.0.2/24" if addressed else None)
    args = [a.replace("IFNAME", a_if) for a in runtime]
    proc = app.popen("taskset", "-c", "1", sys.executable, image, "--host", "0.0.0.0",
                     "--port", "7", "--log-level", "warning", *args,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not client.ping("10.137.0.2", count=1, timeout_s=0.5):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the echo image did not come up")
        time.sleep(0.5)
        res = client.run("taskset", "-c", "0", sys.executable, "-c", CLIENT, "10.137.0.2",
                         str(seconds), str(size), timeout=seconds + 30)
        return json.loads(res.stdout)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "s").mkdir()
        (Path(tmp) / "d").mkdir()
        socket_img = build(Path(tmp) / "s")
        direct_img = build(Path(tmp) / "d",
                           "--stack", "direct", "--net", "afpacket")
        with Lab() as lab:
            sock = measure(lab, socket_img, [], True, args.seconds, args.size)
            direct = measure(lab, direct_img, ["--net-ifname", "IFNAME", "--stack-ipv4",
                                               "10.137.0.2/24"], False, args.seconds, args.size)
    print(f"UDP echo, {args.size}-byte datagrams, window 32, {args.seconds:g} s each:")
    print(f"  socket stack (kernel)   {sock['pps']:10.0f} echoes/s")
    print(f"  direct stack (Ingot)    {direct['pps']:10.0f} echoes/s")
    print(f"  ratio direct/socket     {direct['pps'] / sock['pps']:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
