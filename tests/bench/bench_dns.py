#!/usr/bin/env python3
"""Authoritative DNS queries per second: Ingot's core vs dnslib's DNSServer vs NSD, with dnsperf.

    .venv/bin/python tests/bench/bench_dns.py [--seconds 10] [--only ingot,nsd]

One zone (1,000 hosts) and one query file (60% positive, 20% NXDOMAIN, 20%
NODATA) for every server. Each server runs pinned to CPU 1 (``taskset -c
1``), dnsperf to CPU 0, all on 127.0.0.1. Servers:

* ``ingot``: :func:`ingot.plugins.dns.server.handle` behind a blocking UDP
  socket loop (recvfrom, handle, sendto) - the least an adapter can cost;
* ``ingot-asyncio``: the same behind an asyncio datagram protocol (uvloop
  when importable), as an appliance adapter would run it;
* ``ingot-image``: the DNS appliance itself, built as a unix image
  (``ingot configure appliances/dns --zones direct``, ``ingot build``) and
  run with the zone's folder: its adapter, the socket stack, its logging;
* ``dnslib``: dnslib's DNSServer with its ZoneResolver on the same zone;
* ``nsd``: NSD with rate limiting off, one server process.

Then the load time and resident memory of a generated 100,000-record zone.
Prints qps per server and the ratios ingot/dnslib and ingot/nsd. Needs
dnsperf and nsd. Not a test.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOSTS = 1000

INGOT_LOOP = r"""
import socket, sys, time
from ingot.plugins.dns.server import ServerState, handle
from ingot.plugins.dns.zonefile import load_zone
state = ServerState.create([load_zone(open(sys.argv[1]).read())])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
s.bind(("127.0.0.1", int(sys.argv[2])))
print("ready", flush=True)
recvfrom, sendto, now = s.recvfrom, s.sendto, time.time_ns
while True:
    data, addr = recvfrom(4096)
    state, replies, _ = handle(state, now(), "udp", addr, data)
    for reply in replies:
        sendto(reply, addr)
"""

INGOT_ASYNCIO = r"""
import asyncio, sys, time
try:
    import uvloop
except ImportError:
    uvloop = None
from ingot.plugins.dns.server import ServerState, handle
from ingot.plugins.dns.zonefile import load_zone
state = ServerState.create([load_zone(open(sys.argv[1]).read())])

class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
        if hasattr(transport, "max_size"):
            transport.max_size = 4096
    def datagram_received(self, data, addr):
        global state
        state, replies, _ = handle(state, time.time_ns(), "udp", addr, data)
        for reply in replies:
            self.transport.sendto(reply, addr)

async def main():
    await asyncio.get_running_loop().create_datagram_endpoint(
        Udp, local_addr=("127.0.0.1", int(sys.argv[2])))
    print("ready", "uvloop" if uvloop else "asyncio", flush=True)
    await asyncio.Event().wait()
(uvloop.run if uvloop else asyncio.run)(main())
"""

DNSLIB = r"""
import sys, time
from dnslib.server import DNSServer, DNSLogger
from dnslib.zoneresolver import ZoneResolver
resolver = ZoneResolver(open(sys.argv[1]).read(), glob=False)
server = DNSServer(resolver, port=int(sys.argv[2]), address="127.0.0.1",
                   logger=DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data"))
server.start_thread()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""

LOAD = r"""
import resource, sys, time
from ingot.plugins.dns.zonefile import load_zone
text = open(sys.argv[1]).read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
zone = load_zone(text)
took = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(zone), took, before, after)
"""


def make_zone(hosts: int) -> str:
    lines = ["$ORIGIN bench.test.", "$TTL 300",
             "@ SOA ns1 hostmaster 1 3600 900 604800 60", "  NS ns1", "  NS ns2",
             "ns1 A 192.0.2.1", "ns2 A 192.0.2.2", "@ MX 10 mail", "mail A 192.0.2.25"]
    for i in range(hosts):
        lines.append(f"host{i} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        if i % 2:
            lines.append(f"host{i} AAAA 2001:db8::{i >> 16:x}:{i & 0xFFFF:x}")
    return "\n".join(lines) + "\n"


def make_queries(n: int = 20000) -> str:
    rnd = random.Random(1)
    out = []
    for _ in range(n):
        roll, i = rnd.random(), rnd.randrange(HOSTS)
        if roll < 0.6:
            out.append(f"host{i}.bench.test {rnd.choice(['A', 'AAAA'])}")
        elif roll < 0.8:
            out.append(f"nx{rnd.randrange(2000)}.bench.test A")
        else:
            out.append(f"host{i}.bench.test MX")
    return "\n".join(out) + "\n"


def free_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_image(work: Path) -> Path:
    """The DNS appliance as a unix image, built in ``work``."""
    root = Path(__file__).resolve().parents[2]
    for step in (["configure", str(root / "appliances" / "dns"), "--zones", "direct"],
                 ["build", str(root / "appliances" / "dns")]):
        subprocess.run([sys.executable, "-m", "ingot.cli", *step], cwd=work, check=True,
                       capture_output=True, timeout=300)
    return work / "images" / "dns-unix.pyz"


def start(cmd: list[str], ready: str | None, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if ready:
        lines = []
        while not lines or ready not in lines[-1]:
            line = proc.stdout.readline()
            if not line:
                proc.kill()
                raise RuntimeError(f"{cmd[0]} did not start: {''.join(lines)}")
            lines.append(line)
    else:
        time.sleep(1.5)
    subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=3",
                    "host1.bench.test"], capture_output=True, timeout=30)
    return proc


def dnsperf(port: int, queries: Path, seconds: int) -> float:
    out = subprocess.run(["taskset", "-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                          "-d", str(queries), "-l", str(seconds), "-c", "1", "-T", "1",
                          "-q", "100"], capture_output=True, text=True).stdout
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError("dnsperf printed no rate:\n" + out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    print(f"    (dnsperf: {lost.group(0) if lost else '?'})", flush=True)
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--only", default="ingot,ingot-asyncio,ingot-image,dnslib,nsd")
    args = ap.parse_args()
    for tool in ("dnsperf", "nsd", "taskset", "dig"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (Debian: dnsperf nsd util-linux bind9-dnsutils)")
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    zone = work / "bench.test.zone"
    zone.write_text(make_zone(HOSTS))
    queries = work / "queries.txt"
    queries.write_text(make_queries())
    py = sys.executable
    results: dict[str, float] = {}
    for name in args.only.split(","):
        port = free_port()
        if name == "ingot":
            proc = start([py, "-c", INGOT_LOOP, str(zone), str(port)], "ready", port)
        elif name == "ingot-asyncio":
            proc = start([py, "-c", INGOT_ASYNCIO, str(zone), str(port)], "ready", port)
        elif name == "ingot-image":
            image = build_image(work)
            proc = start([py, str(image), "--port", str(port), "--zones-path", str(zone.parent),
                          "--reload", "0"], "msg=listening", port)
        elif name == "dnslib":
            proc = start([py, "-c", DNSLIB, str(zone), str(port)], "ready", port)
        elif name == "nsd":
            conf = work / "nsd.conf"
            conf.write_text(f"""server:
    ip-address: 127.0.0.1@{port}
    server-count: 1
    username: ""
    database: ""
    zonelistfile: "{work}/zone.list"
    xfrdfile: "{work}/xfrd.state"
    pidfile: "{work}/nsd.pid"
    rrl-ratelimit: 0
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: bench.test
    zonefile: "{zone}"
""")
            proc = start(["nsd", "-d", "-c", str(conf)], None, port)
        else:
            print(f"unknown server {name}")
            return 2
        try:
            print(f"{name}: {args.seconds} s of dnsperf ...", flush=True)
            results[name] = dnsperf(port, queries, args.seconds)
            print(f"{name:14} {results[name]:10.0f} qps", flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    for ours in ("ingot", "ingot-asyncio", "ingot-image"):
        for peer in ("dnslib", "nsd"):
            if ours in results and peer in results:
                print(f"{ours}/{peer}: {results[ours] / results[peer]:.2f}")
    big = work / "big.zone"
    big.write_text(make_zone(66_667))  # 66,667 A + 33,333 AAAA + 7 = 100,007 records
    out = subprocess.run([py, "-c", LOAD, str(big)], capture_output=True, text=True,
                         check=True).stdout.split()
    records, took, before, after = int(out[0]), float(out[1]), int(out[2]), int(out[3])
    print(f"100k zone: {records} records loaded in {took:.2f} s, max RSS {after / 1024:.0f} MiB "
          f"({(after - before) / 1024:.0f} MiB for the zone)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
