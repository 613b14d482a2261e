#!/usr/bin/env python3
"""The firewall appliance's data planes, against a Linux firewall VM's kernel path.

    .venv/bin/python tests/bench/bench_firewall.py     (as root; needs iperf3, nft, ethtool)

Three network namespaces in a line, client (10.137.0.11) - fw - upstream
(10.200.0.1), joined by veth pairs; in each case iperf3 runs from the
client to the upstream for ``--seconds`` (default 5) per measurement:

a  kernel
    what a Linux sys-firewall does: the fw namespace forwards (``ip_forward``),
    an nftables ruleset accepts the client's traffic and masquerades it on the
    uplink; offloads on (the veth default). The row ``a  kernel, offloads
    off`` is the same with ``ethtool -K <veth> gro off gso off tso off`` on
    every veth.
b  ingot python
    the firewall image built with ``--filter python --uplink afpacket``: the
    fw kernel does not forward, Ingot's engine filters and NATs every packet
    (GSO super-packets once per 64 KiB, through the virtio-net header).
c  ingot nftables
    the firewall image built with ``--filter nftables``: the appliance
    compiles the Qubes rules into an nftables ruleset and the kernel forwards.

Both images read a ``file`` QubesDB written as dom0 writes it, with the
client's rules ``policy accept``. Measured in each case: TCP (Mbit/s
received), UDP with ``-b 0`` (iperf3's default datagram size; Mbit/s
received and loss) and UDP with 64-byte payloads (``-l 64 -b 0``; packets/s
received and loss). For the python backend also the firewall process's RSS
(``VmRSS``): idle when it logs ``msg=ready``, after those measurements, and
after 5000 more UDP flows from distinct source ports (5000 NAT entries, the
default table size, as its counters confirm); and its peak (``VmHWM``).

CPUs: the firewall process runs on CPU 1 (``taskset -c 1``), the iperf3
client and server on CPU 0. The kernel path of (a) and (c) has no process:
it runs in softirq context, mostly on the sender's CPU (0).

Prints a table with each case's ratio to (a) with offloads on, and the
issue's goals (python >= 40% of (a) and above qubes-mirage-firewall's 510
Mbit/s, nftables >= 90% of (a), python RSS with 5000 NAT entries under
40 MiB). Not a test: nothing is asserted; the machine is shared and noisy,
so compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ingot.testing.netns import Host, Lab, unavailable

ROOT = Path(__file__).resolve().parents[2]
CLIENT_IP, GATEWAY_IP, UPSTREAM_IP = "10.137.0.11", "10.137.0.1", "10.200.0.1"
FW_CPU, IPERF_CPU = "1", "0"
NAT_FLOWS = 5000
MIRAGE_MBITS = 510.0

# the peer: a Linux firewall VM's forwarding path, filtered and masqueraded
KERNEL_RULESET = """
table ip bench {{
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "{client}" ip saddr {client_ip} accept
    }}
    chain postrouting {{
        type nat hook postrouting priority 100;
        oifname "{uplink}" masquerade
    }}
}}
"""

# 5000 UDP flows from distinct source ports, one datagram each
FLOWS = """
import socket, sys
src, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 20000 + i))
    s.sendto(b"x", (dst, port))
    s.close()
"""

# drains what the flows send, so that the upstream answers no port-unreachable
SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    s.recv(2048)
"""
SINK_PORT = 9999


def qubesdb() -> str:
    """The file QubesDB: the firewall's addresses, one client, policy accept."""
    return json.dumps({
        "/qubes-ip": "10.200.0.2", "/qubes-gateway": UPSTREAM_IP,
        "/qubes-netmask": "255.255.255.0", "/qubes-netvm-gateway": GATEWAY_IP,
        "/qubes-netvm-primary-dns": "10.139.1.1", "/qubes-netvm-secondary-dns": "10.139.1.2",
        "/qubes-primary-dns": UPSTREAM_IP, "/qubes-secondary-dns": UPSTREAM_IP,
        "/connected-ips": CLIENT_IP,
        f"/qubes-firewall/{CLIENT_IP}": "1",
        f"/qubes-firewall/{CLIENT_IP}/policy": "accept",
    }, indent=1)


def build_images(work: Path) -> dict[str, Path]:
    """The firewall image for each backend, built in ``work``."""
    def cli(*args: object) -> None:
        proc = subprocess.run([sys.executable, "-m", "ingot.cli", *map(str, args)], cwd=work,
                              capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if k != "INGOT_DEBUG"})
        if proc.returncode != 0:
            raise RuntimeError(f"ingot {' '.join(map(str, args))} failed:\n"
                               f"{proc.stdout}{proc.stderr}")
    images = {}
    for backend in ("python", "nftables"):
        extra = ["--uplink", "afpacket"] if backend == "python" else []
        cli("configure", ROOT / "appliances" / "firewall", "--qubesdb", "file",
            "--filter", backend, *extra)
        cli("build", ROOT / "appliances" / "firewall")
        images[backend] = work / f"firewall-{backend}.pyz"
        (work / "images" / "firewall-unix.pyz").rename(images[backend])
    return images


@dataclass
class Net:
    client: Host
    fw: Host
    upstream: Host
    veths: list[tuple[Host, str]]
    fw_client: str
    fw_uplink: str


def line(lab: Lab, kind: str) -> Net:
    """client - fw - upstream; the fw end towards the client addressed for the kernel only."""
    client, fw, upstream = lab.host(), lab.host(), lab.host()
    c_if, fw_c = client.link(fw, f"{CLIENT_IP}/32", None)
    # python: the fw kernel keeps 10.200.0.3 for itself, the data plane answers for .2
    fw_up, up_if = fw.link(upstream, "10.200.0.3/24" if kind == "python" else "10.200.0.2/24",
                           f"{UPSTREAM_IP}/24")
    client.add_route(f"{GATEWAY_IP}/32", dev=c_if)
    client.add_route("10.200.0.0/16", via=GATEWAY_IP, dev=c_if)
    if kind == "kernel":
        fw.add_address(fw_c, f"{GATEWAY_IP}/32")
        fw.add_route(f"{CLIENT_IP}/32", dev=fw_c)
        fw.sysctl("net.ipv4.ip_forward", 1)
        fw.run("nft", "-f", "-", input=KERNEL_RULESET.format(
            client=fw_c, client_ip=CLIENT_IP, uplink=fw_up))
    return Net(client, fw, upstream, [(client, c_if), (fw, fw_c), (fw, fw_up), (upstream, up_if)],
               fw_c, fw_up)


def offloads_off(net: Net) -> None:
    for host, ifname in net.veths:
        host.run("ethtool", "-K", ifname, "gro", "off", "gso", "off", "tso", "off")


class Firewall:
    """The appliance in the fw namespace, on CPU 1; its log read by a thread."""

    def __init__(self, net: Net, image: Path, backend: str, db: Path) -> None:
        args = [sys.executable, image, "--qubesdb-path", db, "--qubesdb-poll", "0.5",
                "--stats-interval", "0.5", "--clients", f"{CLIENT_IP}={net.fw_client}"]
        args += (["--uplink-ifname", net.fw_uplink] if backend == "python"
                 else ["--filter-uplink-ifname", net.fw_uplink])
        self.proc = net.fw.popen("taskset", "-c", FW_CPU, *args, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(60) or self.proc.poll() is not None:
            self.proc.kill()
            raise RuntimeError(f"the {backend} firewall did not start:\n" + "".join(self.lines))
        # ip netns exec and taskset exec the command: the PID is the firewall's
        cmdline = Path(f"/proc/{self.proc.pid}/cmdline").read_bytes()
        if str(image).encode() not in cmdline:
            raise RuntimeError(f"PID {self.proc.pid} is not the firewall: {cmdline!r}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.lines.append(text)
            if "msg=ready" in text:
                self._ready.set()

    def status(self, field_name: str) -> int:
        """A ``/proc/<pid>/status`` field in KiB."""
        for text in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if text.startswith(field_name + ":"):
                return int(text.split()[1])
        raise KeyError(field_name)

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def counter(self, name: str) -> int | None:
        """The value of ``name`` in the latest ``msg=counters`` log line."""
        for text in reversed(self.lines):
            if "msg=counters" in text:
                for word in text.split():
                    if word.startswith(name + "="):
                        return int(word.split("=", 1)[1])
                return None
        return None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9


def iperf(net: Net, seconds: float, *extra: str) -> dict:
    """The ``end`` summary of one bounded iperf3 run, client -> upstream, both on CPU 0."""
    server = net.upstream.popen("taskset", "-c", IPERF_CPU, "iperf3", "-s", "-1", "-B",
                                UPSTREAM_IP, stdout=subprocess.DEVNULL)
    net.upstream.wait_listening(5201)
    out = net.client.run("taskset", "-c", IPERF_CPU, "iperf3", "-c", UPSTREAM_IP,
                         "-t", f"{seconds:g}", "-J", *extra, timeout=seconds + 30).stdout
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
    report = json.loads(out)
    if "error" in report:
        raise RuntimeError(f"iperf3 {' '.join(extra)}: {report['error']}")
    report["end"]["blksize"] = report["start"]["test_start"]["blksize"]
    return report["end"]


@dataclass
class Row:
    name: str
    tcp: float = 0.0
    udp: float = 0.0
    udp_loss: float = 0.0
    pps: float = 0.0
    pps_loss: float = 0.0
    fw_cpu: str = ""
    udp_size: int = 0
    notes: dict = field(default_factory=dict)


def measure(net: Net, name: str, seconds: float, fw: Firewall | None = None) -> Row:
    row = Row(name)
    cpu0, t0 = (fw.cpu_s(), time.monotonic()) if fw else (0.0, 0.0)
    row.tcp = iperf(net, seconds)["sum_received"]["bits_per_second"] / 1e6
    if fw:
        row.fw_cpu = f"{100 * (fw.cpu_s() - cpu0) / (time.monotonic() - t0):.0f}%"
    udp = iperf(net, seconds, "-u", "-b", "0")
    row.udp = udp["sum_received"]["bits_per_second"] / 1e6
    row.udp_loss = udp["sum_received"]["lost_percent"]
    row.udp_size = udp["blksize"]
    small = iperf(net, seconds, "-u", "-b", "0", "-l", "64")["sum_received"]
    row.pps = (small["packets"] - small["lost_packets"]) / small["seconds"]
    row.pps_loss = small["lost_percent"]
    return row


def kernel_case(offloads: bool, seconds: float) -> Row:
    with Lab() as lab:
        net = line(lab, "kernel")
        if not offloads:
            offloads_off(net)
        return measure(net, "a  kernel" + ("" if offloads else ", offloads off"), seconds)


def ingot_case(backend: str, image: Path, db: Path, seconds: float, offloads: bool = True,
               rss: bool = False) -> Row:
    letter = "b" if backend == "python" else "c"
    name = f"{letter}  ingot {backend}" + ("" if offloads else ", offloads off")
    with Lab() as lab:
        net = line(lab, backend)
        if not offloads:
            offloads_off(net)
        fw = Firewall(net, image, backend, db)
        try:
            idle = fw.status("VmRSS")
            row = measure(net, name, seconds, fw)
            if rss:
                row.notes["rss_idle"] = idle
                row.notes["rss_loaded"] = fw.status("VmRSS")
                sink = net.upstream.popen(sys.executable, "-c", SINK, UPSTREAM_IP,
                                          str(SINK_PORT), stdout=subprocess.PIPE, text=True)
                assert sink.stdout is not None
                if sink.stdout.readline().strip() != "ready":
                    raise RuntimeError("the UDP sink did not start")
                net.client.run(sys.executable, "-c", FLOWS, CLIENT_IP, UPSTREAM_IP,
                               str(SINK_PORT), str(NAT_FLOWS), timeout=60)
                time.sleep(1.2)  # two counter lines
                row.notes["entries"] = fw.counter("conntrack_entries")
                row.notes["rss_nat"] = fw.status("VmRSS")
                row.notes["hwm"] = fw.status("VmHWM")
        finally:
            rc = fw.stop()
        if rc != 0:
            print(f"note: the {backend} firewall exited with {rc}:\n"
                  + "".join(fw.lines[-5:]), file=sys.stderr)
        return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="iperf3 -t per measurement (max 30)")
    ap.add_argument("--all", action="store_true",
                    help="also (b) and (c) with offloads off")
    args = ap.parse_args()
    if reason := unavailable():
        sys.exit(f"cannot run: {reason}")
    for tool in ("iperf3", "nft", "ethtool", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"cannot run: no {tool}")
    if (os.cpu_count() or 1) < 2:
        sys.exit("cannot run: needs two CPUs (the firewall on 1, iperf3 on 0)")
    seconds = min(max(args.seconds, 1.0), 30.0)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fw-") as tmp:
        work = Path(tmp)
        images = build_images(work)
        db = work / "qubesdb.json"
        db.write_text(qubesdb())
        rows = [kernel_case(True, seconds), kernel_case(False, seconds)]
        python = ingot_case("python", images["python"], db, seconds, rss=True)
        rows.append(python)
        rows.append(ingot_case("nftables", images["nftables"], db, seconds))
        if args.all:
            rows.append(ingot_case("python", images["python"], db, seconds, offloads=False))
            rows.append(ingot_case("nftables", images["nftables"], db, seconds,
                                   offloads=False))
    a = rows[0]
    nft = next(r for r in rows if r.name == "c  ingot nftables")

    def ratio(value: float, ref: float) -> str:
        return f"{value / ref:.3f}" if ref else "-"

    print(f"client -> fw -> upstream, iperf3 -t {seconds:g} per measurement; "
          f"firewall process on CPU {FW_CPU}, iperf3 client and server on CPU {IPERF_CPU}")
    print(f"UDP: -b 0, {a.udp_size}-byte datagrams; 64B: -u -b 0 -l 64; "
          "rates and packets/s as received; ratios to row 1")
    print(f"{'case':<30} {'TCP Mbit/s':>10} {'/a':>6} {'fw CPU':>6} "
          f"{'UDP Mbit/s':>10} {'loss':>6} {'/a':>6} {'64B pkt/s':>10} {'loss':>6} {'/a':>6}")
    for r in rows:
        print(f"{r.name:<30} {r.tcp:>10.0f} {ratio(r.tcp, a.tcp):>6} {r.fw_cpu or '-':>6} "
              f"{r.udp:>10.0f} {r.udp_loss:>5.1f}% {ratio(r.udp, a.udp):>6} "
              f"{r.pps:>10.0f} {r.pps_loss:>5.1f}% {ratio(r.pps, a.pps):>6}")
    n = python.notes
    mib = 1024.0
    print(f"python firewall RSS: idle {n['rss_idle'] / mib:.1f} MiB, after the runs above "
          f"{n['rss_loaded'] / mib:.1f} MiB, with {NAT_FLOWS} more UDP flows "
          f"(conntrack.entries={n['entries']}) {n['rss_nat'] / mib:.1f} MiB; "
          f"peak (VmHWM) {n['hwm'] / mib:.1f} MiB")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"
    print("goals:")
    print(f"  python TCP >= 40% of (a) and > {MIRAGE_MBITS:.0f} Mbit/s: "
          f"{python.tcp / a.tcp:.1%}, {python.tcp:.0f} Mbit/s -> "
          f"{verdict(python.tcp >= 0.4 * a.tcp and python.tcp > MIRAGE_MBITS)}")
    print(f"  nftables TCP >= 90% of (a): {nft.tcp / a.tcp:.1%} -> "
          f"{verdict(nft.tcp >= 0.9 * a.tcp)}")
    print(f"  python RSS with {NAT_FLOWS} NAT entries < 40 MiB: {n['rss_nat'] / mib:.1f} MiB -> "
          f"{verdict(n['rss_nat'] < 40 * mib)}")
    print(f"({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
