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

Options to iterate on one data plane: ``--cases`` picks the cases (the
ratios need ``kernel``), ``--repeat N`` runs every chosen case N times in
rounds (kernel, python, ... then again) and reports each figure's median,
``--baseline REV`` adds the python image with the net devices and the
data plane's loop (plugins/netif, python_backend.py) as at git REV, run right
after python in each round (the same engine and L2: an A/B of the device
path in one run), ``--tcp-only`` skips the UDP measurements, and
``--profile FILE`` records
the python firewall process with py-spy (if installed) during its first
TCP measurement and writes the collapsed stacks to FILE (its hottest
functions are printed).

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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def build_images(work: Path, backends: Sequence[str] = ("python", "nftables")
                 ) -> dict[str, Path]:
    """The firewall image for each of ``backends``, built in ``work``."""
    def cli(*args: object) -> None:
        proc = subprocess.run([sys.executable, "-m", "ingot.cli", *map(str, args)], cwd=work,
                              capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if k != "INGOT_DEBUG"})
        if proc.returncode != 0:
            raise RuntimeError(f"ingot {' '.join(map(str, args))} failed:\n"
                               f"{proc.stdout}{proc.stderr}")
    images = {}
    for backend in backends:
        extra = ["--uplink", "afpacket"] if backend == "python" else []
        cli("configure", ROOT / "appliances" / "firewall", "--qubesdb", "file",
            "--filter", backend, *extra)
        cli("build", ROOT / "appliances" / "firewall")
        images[backend] = work / f"firewall-{backend}.pyz"
        (work / "images" / "firewall-unix.pyz").rename(images[backend])
    return images


BASELINE_FILES = ("plugins/netif/", "plugins/firewall/python_backend.py")
"""What ``--baseline REV`` takes from REV: the net devices and the python data plane's loop."""


def baseline_image(image: Path, rev: str, out: Path) -> Path:
    """``image`` with the modules under :data:`BASELINE_FILES` as they were at git ``rev``.

    Everything else (engine, L2, the platform) stays as built, so the two
    images differ only in the device path; the replaced modules' compiled
    copies are left out (they compile at import).
    """
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--",
                             *BASELINE_FILES], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    sources = {f"ingot/{path}": subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT,
                                               capture_output=True, check=True).stdout
               for path in listed if path.endswith(".py")}
    with zipfile.ZipFile(image) as src, open(out, "wb") as fd:
        fd.write(image.read_bytes()[:src.filelist[0].header_offset] if src.filelist else b"")
        with zipfile.ZipFile(fd, "w", zipfile.ZIP_DEFLATED) as dst:  # after the shebang, if any
            for info in src.infolist():
                if info.filename in sources or info.filename[:-1] in sources:
                    continue  # replaced below (a .py) or dropped (its .pyc)
                dst.writestr(info, src.read(info.filename))
            for name, data in sources.items():
                if name in src.NameToInfo:  # what the image holds, no more
                    dst.writestr(name, data)
    return out


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
    pps_cpu: float = 0.0
    udp_size: int = 0
    notes: dict = field(default_factory=dict)


def profiler(pid: int, out: Path, seconds: float) -> subprocess.Popen[Any] | None:
    """py-spy recording ``pid`` for ``seconds`` into ``out`` (collapsed stacks), or None."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("note: no py-spy, no profile", file=sys.stderr)
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate",
                             "250", "--duration", f"{max(1, int(seconds))}", "--output",
                             str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def hottest(stacks: Path, top: int = 25) -> str:
    """The functions most often on the CPU (self) and on the stack (total) in a py-spy record."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for text in stacks.read_text().splitlines():
        frames, _, count = text.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        n = int(count)
        samples += n
        # "func (path/file.py:line)" -> "func (file.py)": by function, not line
        names = [f"{f.split(' (')[0]} ({f.rsplit('/', 1)[-1].split(' (')[-1].split(':')[0]})"
                 for f in frames.split(";")]
        own[names[-1]] = own.get(names[-1], 0) + n
        for name in set(names):
            total[name] = total.get(name, 0) + n
    out = [f"profile: {samples} samples"]
    for title, table in (("self", own), ("total", total)):
        out.append(f"  by {title}:")
        for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"    {100 * n / max(samples, 1):5.1f}%  {name}")
    return "\n".join(out)


def measure(net: Net, name: str, seconds: float, fw: Firewall | None = None,
            tcp_only: bool = False, profile: Path | None = None) -> Row:
    row = Row(name)
    cpu0, t0 = (fw.cpu_s(), time.monotonic()) if fw else (0.0, 0.0)
    spy = profiler(fw.proc.pid, profile, seconds) if fw and profile else None
    row.tcp = iperf(net, seconds)["sum_received"]["bits_per_second"] / 1e6
    if fw:
        row.fw_cpu = f"{100 * (fw.cpu_s() - cpu0) / (time.monotonic() - t0):.0f}%"
    if spy is not None:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    if tcp_only:
        return row
    udp = iperf(net, seconds, "-u", "-b", "0")
    row.udp = udp["sum_received"]["bits_per_second"] / 1e6
    row.udp_loss = udp["sum_received"]["lost_percent"]
    row.udp_size = udp["blksize"]
    cpu0, t0 = (fw.cpu_s(), time.monotonic()) if fw else (0.0, 0.0)
    small = iperf(net, seconds, "-u", "-b", "0", "-l", "64")["sum_received"]
    row.pps = (small["packets"] - small["lost_packets"]) / small["seconds"]
    row.pps_loss = small["lost_percent"]
    if fw:
        row.pps_cpu = (fw.cpu_s() - cpu0) / (time.monotonic() - t0)
    return row


def kernel_case(offloads: bool, seconds: float, tcp_only: bool = False) -> Row:
    with Lab() as lab:
        net = line(lab, "kernel")
        if not offloads:
            offloads_off(net)
        return measure(net, "a  kernel" + ("" if offloads else ", offloads off"), seconds,
                       tcp_only=tcp_only)


def ingot_case(backend: str, image: Path, db: Path, seconds: float, offloads: bool = True,
               rss: bool = False, tcp_only: bool = False, profile: Path | None = None) -> Row:
    letter = "b" if backend == "python" else "c"
    name = f"{letter}  ingot {backend}" + ("" if offloads else ", offloads off")
    with Lab() as lab:
        net = line(lab, backend)
        if not offloads:
            offloads_off(net)
        fw = Firewall(net, image, backend, db)
        try:
            idle = fw.status("VmRSS")
            row = measure(net, name, seconds, fw, tcp_only, profile)
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


CASES = ("kernel", "kernel-off", "python", "nftables")


def median_row(runs: list[Row]) -> Row:
    """One row of each figure's median over ``runs`` (notes from the first run)."""
    if len(runs) == 1:
        return runs[0]

    def med(values: list[float]) -> float:
        values = sorted(values)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    row = Row(f"{runs[0].name} (median of {len(runs)})", notes=runs[0].notes,
              udp_size=runs[0].udp_size)
    for name in ("tcp", "udp", "udp_loss", "pps", "pps_loss"):
        setattr(row, name, med([getattr(r, name) for r in runs]))
    cpus = [float(r.fw_cpu.rstrip("%")) for r in runs if r.fw_cpu]
    row.fw_cpu = f"{med(cpus):.0f}%" if cpus else ""
    row.notes["tcp_runs"] = [round(r.tcp) for r in runs]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="iperf3 -t per measurement (max 30)")
    ap.add_argument("--all", action="store_true",
                    help="also (b) and (c) with offloads off")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated cases out of {','.join(CASES)} (default all; "
                         "the ratios need kernel)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the chosen cases this many times in rounds; report medians")
    ap.add_argument("--baseline", metavar="REV", default=None,
                    help="also the python image with the net devices and the data plane's "
                         "loop (" + ", ".join(BASELINE_FILES) + ") as at git REV, run "
                         "right after python in each round (same engine, same run)")
    ap.add_argument("--tcp-only", action="store_true", help="skip the UDP measurements")
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy record of the python firewall during its first TCP run, "
                         "collapsed stacks to this file")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := [c for c in cases if c not in CASES]:
        sys.exit(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    if reason := unavailable():
        sys.exit(f"cannot run: {reason}")
    for tool in ("iperf3", "nft", "ethtool", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"cannot run: no {tool}")
    if (os.cpu_count() or 1) < 2:
        sys.exit("cannot run: needs two CPUs (the firewall on 1, iperf3 on 0)")
    seconds = min(max(args.seconds, 1.0), 30.0)
    quick = args.tcp_only
    started = time.monotonic()
    runs: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fw-") as tmp:
        work = Path(tmp)
        need = {"python", "nftables"} & set(cases)
        if args.baseline:
            need.add("python")
        images = build_images(work, sorted(need)) if need else {}
        if args.baseline:
            images["baseline"] = baseline_image(images["python"], args.baseline,
                                                work / "firewall-baseline.pyz")
        db = work / "qubesdb.json"
        db.write_text(qubesdb())
        todo = list(cases)
        if args.baseline:
            todo.insert(todo.index("python") + 1 if "python" in todo else len(todo),
                        "baseline")
        if args.all:
            todo += [c + "-off" for c in ("python", "nftables") if c in cases]
        for round_ in range(max(1, args.repeat)):
            for case in todo:
                backend = case.removesuffix("-off")
                offloads = not case.endswith("-off")
                if backend == "kernel":
                    row = kernel_case(offloads, seconds, quick)
                elif backend == "baseline":
                    row = ingot_case("python", images["baseline"], db, seconds,
                                     tcp_only=quick)
                    row.name = f"b' python @{args.baseline}"[:24]
                else:
                    first = round_ == 0 and offloads
                    row = ingot_case(backend, images[backend], db, seconds, offloads,
                                     rss=first and backend == "python" and not quick,
                                     tcp_only=quick,
                                     profile=args.profile if first and backend == "python"
                                     else None)
                runs.setdefault(case, []).append(row)
    medians = {case: median_row(rs) for case, rs in runs.items()}
    rows = list(medians.values())
    a = medians.get("kernel", Row("none"))
    python = medians.get("python")
    nft = medians.get("nftables")

    def ratio(value: float, ref: float) -> str:
        return f"{value / ref:.3f}" if ref else "-"

    print(f"client -> fw -> upstream, iperf3 -t {seconds:g} per measurement; "
          f"firewall process on CPU {FW_CPU}, iperf3 client and server on CPU {IPERF_CPU}")
    print(f"UDP: -b 0, {a.udp_size}-byte datagrams; 64B: -u -b 0 -l 64; "
          "rates and packets/s as received; ratios to row 1")
    print(f"{'case':<38} {'TCP Mbit/s':>10} {'/a':>6} {'fw CPU':>6} "
          f"{'UDP Mbit/s':>10} {'loss':>6} {'/a':>6} {'64B pkt/s':>10} {'loss':>6} {'/a':>6}")
    for r in rows:
        print(f"{r.name:<38} {r.tcp:>10.0f} {ratio(r.tcp, a.tcp):>6} {r.fw_cpu or '-':>6} "
              f"{r.udp:>10.0f} {r.udp_loss:>5.1f}% {ratio(r.udp, a.udp):>6} "
              f"{r.pps:>10.0f} {r.pps_loss:>5.1f}% {ratio(r.pps, a.pps):>6}")
    if args.repeat > 1:
        print("TCP Mbit/s per round: " + "; ".join(
            f"{case} {[round(r.tcp) for r in rs]}" for case, rs in runs.items()))
        for case in ("python", "baseline"):
            if "kernel" in runs and case in runs:
                print(f"{case}/kernel TCP per round: " + " ".join(
                    f"{p.tcp / k.tcp:.3f}" for p, k in zip(runs[case], runs["kernel"])
                    if k.tcp))
    for case in ("python", "baseline"):
        if case not in runs or not runs[case][0].fw_cpu:
            continue
        # the firewall process's cost per unit moved: steadier than the rates on a
        # shared machine, as long as the process is near 100% busy
        rs = runs[case]
        print(f"{case} firewall CPU per round: TCP " + " ".join(r.fw_cpu for r in rs)
              + " = CPU-seconds per GB " + " ".join(
                  f"{float(r.fw_cpu.rstrip('%')) / 100 / (r.tcp / 8000):.2f}"
                  for r in rs if r.tcp))
        if not quick:
            print(f"{case} firewall CPU per round: 64B " + " ".join(
                f"{100 * r.pps_cpu:.0f}%" for r in rs) + " = packets per CPU-second "
                + " ".join(f"{r.pps / r.pps_cpu:.0f}" for r in rs if r.pps_cpu))
    if args.profile is not None and python is not None and args.profile.exists():
        print(hottest(args.profile))
    if python is not None and "rss_nat" in python.notes:
        n = python.notes
        mib = 1024.0
        print(f"python firewall RSS: idle {n['rss_idle'] / mib:.1f} MiB, after the runs above "
              f"{n['rss_loaded'] / mib:.1f} MiB, with {NAT_FLOWS} more UDP flows "
              f"(conntrack.entries={n['entries']}) {n['rss_nat'] / mib:.1f} MiB; "
              f"peak (VmHWM) {n['hwm'] / mib:.1f} MiB")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"
    if a.tcp:
        print("goals:")
        if python is not None:
            print(f"  python TCP >= 40% of (a) and > {MIRAGE_MBITS:.0f} Mbit/s: "
                  f"{python.tcp / a.tcp:.1%}, {python.tcp:.0f} Mbit/s -> "
                  f"{verdict(python.tcp >= 0.4 * a.tcp and python.tcp > MIRAGE_MBITS)}")
        if nft is not None:
            print(f"  nftables TCP >= 90% of (a): {nft.tcp / a.tcp:.1%} -> "
                  f"{verdict(nft.tcp >= 0.9 * a.tcp)}")
    if python is not None and "rss_nat" in python.notes:
        rss = python.notes["rss_nat"] / 1024.0
        print(f"  python RSS with {NAT_FLOWS} NAT entries < 40 MiB: {rss:.1f} MiB -> "
              f"{verdict(rss < 40)}")
    print(f"({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
