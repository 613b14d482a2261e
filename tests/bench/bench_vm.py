#!/usr/bin/env python3
"""VM images per appliance and kernel: size, the least memory that boots, boot time.

    .venv/bin/python tests/bench/bench_vm.py [--kernel debian|minimal|both]
        [--repeat N] [--skip-memory] [--json out.json]

For the DNS appliance, built with ``ingot configure --target vm`` and
``ingot build [--kernel K]`` in a temporary folder, and booted under QEMU
(software emulation, one CPU, like the integration tests):

1. size: ``vmlinuz`` + ``initramfs`` (gzip) against the goal of 10 MiB
   (stretch 6 MiB), and the unpacked root;
2. the least memory: boots with 32, 40, 48, ... MiB, ascending, until one
   boots and answers a DNS query from the host (goal 64 MiB, stretch 48);
3. boot time, at ``--memory`` (256 MiB): from the console's ``up=`` (the
   guest's seconds since the kernel started):

   * kernel-to-PID-1: ``up`` of ``pid 1 started``. It includes the
     interpreter's own start-up: PID 1 is Python and logs only once it runs;
   * PID-1-to-ready: ``up(listening) - up(pid 1 started)``: mounts, kernel
     modules, network, then the appliance's start;
   * the host's wall time from starting QEMU to the first DNS answer
     (queries are sent every 0.2 s from the start);

4. the baseline, measured inside the same emulated machine (same kernel,
   same memory): the appliance's ``unix`` image (``dns-unix.pyz``) started
   by a bench-only PID 1 from a second cpio archive appended to the image's
   initramfs (the kernel unpacks concatenated archives), booted with
   ``rdinit=/bench/init`` (an initramfs
   runs ``rdinit``, not ``init``). That PID 1 does the same mounts, modules and
   network as the image's own, then runs ``/usr/bin/python3
   /bench/dns-unix.pyz`` twice and prints the time from ``fork`` to its
   ``msg=listening`` line: cold (first) and warm (second run). Goal:
   PID-1-to-ready within 1.5x the warm unix start-to-ready.

Not a test: nothing is asserted. Numbers from one run each unless
``--repeat`` (then medians); the machine is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
MEMORIES = (32, 40, 48, 56, 64, 80, 96, 128, 192, 256)
NET = "ingot.ip=eth0:10.0.2.15/24 ingot.gw=10.0.2.2"
KEYS = ["--host", "0.0.0.0", "--port", "53"]
QUERY_NAME = "www.example.test"
# modules the unix image needs that a vm root (no zip file in it) may lack:
# zipimport decodes member names that are not flagged UTF-8 with cp437
UNIX_NEEDS = ("encodings/cp437",)
UP = re.compile(r"\bup=([0-9.]+)\b")

# PID 1 of the baseline VM: the same preparation as ingot.init, then the
# unix image, twice, timed from fork to its "listening" line.
BENCH_INIT = r'''#!/usr/bin/python3 -IS
import os, signal, sys, time
sys.path.insert(0, "/usr/lib/ingot")
from ingot.init import Init, _uptime

ARGV = ["/usr/bin/python3", "/bench/dns-unix.pyz", "--host", "0.0.0.0", "--port", "53",
        "--stack-uvloop", "false"]
ENV = {"PATH": "/usr/bin", "INGOT_CACHE": "/tmp/ingot-cache"}


def out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_once(label):
    r, w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.execve(ARGV[0], ARGV, ENV)
        finally:
            os._exit(127)
    os.close(w)
    ready = None
    last = ""
    with os.fdopen(r, "rb", buffering=0) as fh:
        buf = b""
        while ready is None:
            chunk = fh.read(4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                last = line.decode("utf-8", "replace")
                if b"msg=listening" in line:
                    ready = time.monotonic()
                    break
                if b"level=error" in line or b"Traceback" in line or b"Error" in line:
                    out("bench unix-output " + last)
        if ready is None:
            out(f"bench unix-start-to-ready run={label} failed last={last!r}")
        else:
            out(f"bench unix-start-to-ready run={label} ms={(ready - started) * 1000:.1f}")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)


def main():
    init = Init([])
    out(f"bench pid1 up={_uptime():.3f}")
    try:
        if os.getpid() == 1:
            init.mounts()
        init.read_cmdline()
        init.modules()
        init.network()
        out(f"bench prepared up={_uptime():.3f}")
        run_once("cold")
        run_once("warm")
        out("bench done")
    except BaseException as exc:
        out(f"bench failed {type(exc).__name__}: {exc}")
    finally:
        init.power_off()


main()
'''


def ingot(cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingot.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def build_vm(work: Path, kernel: str) -> tuple[Path | None, str]:
    """The ``dns-vm`` folder built with ``kernel``, or None and why not."""
    work.mkdir(parents=True, exist_ok=True)
    dns = str(ROOT / "appliances" / "dns")
    proc = ingot(work, "configure", dns, "--target", "vm",
                 "--zones-source", str(ROOT / "configs" / "dns" / "zones"))
    if proc.returncode == 0:
        proc = ingot(work, "build", dns, "--kernel", kernel, timeout=3600)
    if proc.returncode != 0:
        lines = (proc.stderr + proc.stdout).strip().splitlines()
        return None, " | ".join(lines[-3:]) or f"exit {proc.returncode}"
    return work / "images" / "dns-vm", ""


def build_unix(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    dns = str(ROOT / "appliances" / "dns")
    for args in (("configure", dns, "--target", "unix", "--zones", "crunch",
                  "--zones-source", str(ROOT / "configs" / "dns" / "zones")),
                 ("build", dns)):
        proc = ingot(work, *args)
        if proc.returncode != 0:
            raise SystemExit(f"ingot {args[0]} (unix) failed:\n{proc.stdout}{proc.stderr}")
    return work / "images" / "dns-unix.pyz"


def query(port: int, deadline: float, alive) -> float | None:
    """Send A queries every 0.2 s until a NOERROR answer; the monotonic time it came."""
    from dnslib import QTYPE, RCODE, DNSRecord

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        while time.monotonic() < deadline and alive():
            q = DNSRecord.question(QUERY_NAME, "A")
            try:
                sock.sendto(q.pack(), ("127.0.0.1", port))
                while True:
                    data = sock.recv(4096)
                    got = time.monotonic()
                    try:
                        r = DNSRecord.parse(data)
                    except Exception:  # noqa: BLE001 - not an answer to read
                        continue
                    if r.header.id == q.header.id:
                        if r.header.rcode == RCODE.NOERROR and any(
                                a.rtype == QTYPE.A for a in r.rr):
                            return got
                        break
            except (socket.timeout, ConnectionRefusedError):
                continue
            except OSError:
                time.sleep(0.2)
    return None


def up_of(console: str, marker: str) -> float | None:
    for line in console.splitlines():
        if marker in line:
            m = UP.search(line)
            if m:
                return float(m.group(1))
    return None


def boot(folder: Path, memory: int, timeout: float, accel: str) -> dict:
    """Boot the image once and query it; the timings, or ``ok: False``."""
    from ingot.qemu import Vm, free_port

    port = free_port()
    vm = Vm(folder, memory=memory, netdevs=[f"user,hostfwd=udp:127.0.0.1:{port}-:53"],
            net=NET, keys=KEYS, accel=accel)
    try:
        vm.start()
        answered = query(port, vm.started + timeout,
                         lambda: vm.proc is not None and vm.proc.poll() is None)
        console = vm.console()
        if answered is not None and "msg=listening" not in console:
            time.sleep(1)  # the console may lag the answer by a little
            console = vm.console()
    finally:
        vm.close()
    pid1 = up_of(console, 'msg="pid 1 started"')
    ready = up_of(console, "msg=listening")
    result = {"memory_mib": memory, "ok": answered is not None,
              "wall_to_answer_s": None if answered is None else answered - vm.started,
              "kernel_to_pid1_s": pid1, "up_listening_s": ready,
              "pid1_to_ready_s": None if pid1 is None or ready is None else ready - pid1}
    if answered is None:
        result["why"] = why_not(console, vm)
    return result


def why_not(console: str, vm) -> str:
    """A short reason a boot gave no answer: the kernel's or Python's last words, if any."""
    code = vm.proc.returncode if vm.proc is not None else None
    how = (f"QEMU exited ({code}) after {time.monotonic() - vm.started:.0f} s"
           if code is not None and code >= 0 else "no answer within the timeout")
    plain = re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)", "\n", console)
    lines = [ln.strip() for ln in plain.splitlines() if ln.strip()]
    said = [ln for ln in lines if re.search(
        r"panic|Initramfs unpacking failed|Out of memory|oom|MemoryError|Killed|"
        r"level=error|Error:", ln, re.I)]
    if said:
        return f"{how}: " + " | ".join(ln[:140] for ln in said[:3])
    if not any(UP.search(ln) for ln in lines):
        return f"{how}, no kernel or PID 1 message (the cmdline has 'quiet')"
    return f"{how}: " + " | ".join(ln[:140] for ln in lines[-2:])


def min_memory(folder: Path, timeout: float, budget: float, accel: str) -> dict:
    """The first memory of MEMORIES (ascending) at which the image boots and answers."""
    t0 = time.monotonic()
    tried = []
    for mem in MEMORIES:
        if time.monotonic() - t0 > budget:
            return {"min_memory_mib": None, "tried": tried, "note": "time budget spent"}
        r = boot(folder, mem, timeout, accel)
        tried.append({k: r[k] for k in ("memory_mib", "ok")} | (
            {"why": r["why"]} if not r["ok"] else {}))
        print(f"    {mem:4d} MiB: {'answers' if r['ok'] else 'no answer: ' + r.get('why', '')}",
              flush=True)
        if r["ok"]:
            return {"min_memory_mib": mem, "tried": tried}
    return {"min_memory_mib": None, "tried": tried}


def bench_folder(folder: Path, unix_pyz: Path, dest: Path) -> Path:
    """A copy of the image with a second cpio (bench/init, bench/dns-unix.pyz) appended."""
    from ingot import cpio
    from ingot.rootfs import Entry

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "vmlinuz", dest / "vmlinuz")
    present = {e.path for e in cpio.read((folder / "initramfs").read_bytes())}
    entries = [
        Entry("bench", "dir", 0o755),
        Entry("bench/dns-unix.pyz", "file", 0o644, unix_pyz.read_bytes()),
        Entry("bench/init", "file", 0o755, BENCH_INIT.encode()),
    ]
    added = []
    for module in UNIX_NEEDS:
        path = f"usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}/{module}.pyc"
        if path not in present:
            entries.append(Entry(path, "file", 0o644, _pyc(module)))
            added.append(module.replace("/", "."))
    extra = cpio.initramfs(entries)
    (dest / "initramfs").write_bytes((folder / "initramfs").read_bytes() + extra)
    base = (folder / "cmdline").read_text().strip()
    (dest / "cmdline").write_text(f"{base} rdinit=/bench/init\n")
    return dest, added


def _pyc(module: str) -> bytes:
    """Bytecode of a standard-library module of this interpreter (sourceless, unchecked)."""
    import importlib.util
    import marshal
    import sysconfig

    src = Path(sysconfig.get_paths()["stdlib"]) / f"{module}.py"
    code = compile(src.read_bytes(), f"{module}.py", "exec", dont_inherit=True)
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)


def unix_in_vm(folder: Path, memory: int, timeout: float, accel: str) -> dict:
    from ingot.qemu import Vm, VmError

    with Vm(folder, memory=memory, netdevs=["user"], net=NET, accel=accel) as vm:
        try:
            vm.wait_for(r"bench (done|failed)", timeout=timeout)
        except VmError:
            pass
        console = vm.console()
    runs = {m.group(1): float(m.group(2)) / 1000 for m in re.finditer(
        r"bench unix-start-to-ready run=(\w+) ms=([0-9.]+)", console)}
    out: dict = {"unix_cold_s": runs.get("cold"), "unix_warm_s": runs.get("warm")}
    if not runs:
        tail = [ln for ln in console.strip().splitlines() if ln.strip()][-4:]
        out["why"] = " | ".join(t.strip()[:200] for t in tail)
    problems = re.findall(r"bench (?:unix-output|failed) (.*)", console)
    if problems:
        out["problems"] = problems[:5]
    return out


def med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_kernel(kernel: str, work: Path, unix_pyz: Path, args: argparse.Namespace) -> dict:
    row: dict = {"appliance": "dns", "target": "vm", "kernel": kernel}
    print(f"[{kernel}] building the vm image", flush=True)
    folder, why = build_vm(work / kernel, kernel)
    if folder is None:
        row["available"] = False
        row["why"] = why
        print(f"[{kernel}] not available: {why}", flush=True)
        return row
    row["available"] = True
    contents = json.loads((folder / "contents.json").read_text())
    row["vmlinuz_bytes"] = contents["vmlinuz_size"]
    row["initramfs_bytes"] = contents["initramfs_size"]
    row["unpacked_bytes"] = contents["unpacked_size"]
    row["total_mib"] = (row["vmlinuz_bytes"] + row["initramfs_bytes"]) / MiB
    if not args.skip_memory:
        print(f"[{kernel}] least memory (timeout {args.boot_timeout:.0f} s per boot)", flush=True)
        row |= min_memory(folder, args.boot_timeout, args.memory_budget, args.accel)
    print(f"[{kernel}] boot time at {args.memory} MiB, {args.repeat} run(s)", flush=True)
    boots = [boot(folder, args.memory, args.boot_timeout, args.accel)
             for _ in range(args.repeat)]
    row["boots"] = boots
    for key in ("kernel_to_pid1_s", "pid1_to_ready_s", "up_listening_s", "wall_to_answer_s"):
        row[key] = med([b[key] for b in boots if b["ok"]])
    if not any(b["ok"] for b in boots):
        row["boot_why"] = boots[-1].get("why")
    print(f"[{kernel}] unix image inside the same VM, {args.repeat} run(s)", flush=True)
    bfolder, added = bench_folder(folder, unix_pyz, work / f"{kernel}-bench")
    if added:
        row["added_to_bench_root"] = added
        print(f"[{kernel}] the vm root lacks {', '.join(added)} (the unix image's zip needs "
              "it): added to the bench archive", flush=True)
    unix = [unix_in_vm(bfolder, args.memory, args.boot_timeout, args.accel)
            for _ in range(args.repeat)]
    row["unix_runs"] = unix
    row["unix_cold_s"] = med([u["unix_cold_s"] for u in unix])
    row["unix_warm_s"] = med([u["unix_warm_s"] for u in unix])
    for u in unix:
        for key in ("why", "problems"):
            if key in u:
                row.setdefault("unix_notes", []).append(u[key])
    if row["pid1_to_ready_s"] and row["unix_warm_s"]:
        row["ratio"] = row["pid1_to_ready_s"] / row["unix_warm_s"]
    return row


def fmt(value, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def report(rows: list[dict], args: argparse.Namespace) -> None:
    print()
    for row in rows:
        print(f"{row['appliance']} / {row['target']} / kernel {row['kernel']}"
              f"  (QEMU {args.accel}, 1 CPU, boot times at {args.memory} MiB, "
              f"{args.repeat} run(s){', medians' if args.repeat > 1 else ''})")
        if not row["available"]:
            print(f"  not available: {row['why']}")
            continue
        total = row["total_mib"]
        verdict = ("meets stretch" if total < 6 else "meets goal" if total < 10 else "misses goal")
        lines = [
            ("vmlinuz", f"{row['vmlinuz_bytes'] / MiB:.2f} MiB ({row['vmlinuz_bytes']} B)"),
            ("initramfs (gzip)", f"{row['initramfs_bytes'] / MiB:.2f} MiB "
                                 f"({row['initramfs_bytes']} B)"),
            ("kernel + initramfs", f"{total:.2f} MiB   goal < 10, stretch < 6: {verdict}"),
            ("unpacked root", f"{row['unpacked_bytes'] / MiB:.2f} MiB"),
        ]
        if "min_memory_mib" in row:
            mm = row["min_memory_mib"]
            v = ("n/a" if mm is None else "meets stretch" if mm <= 48 else
                 "meets goal" if mm <= 64 else "misses goal")
            lines.append(("least memory", f"{fmt(mm, 'd', ' MiB')}   goal 64, stretch 48: {v}"
                          + (f" ({row['note']})" if row.get("note") else "")))
        lines += [
            ("kernel to PID 1", fmt(row["kernel_to_pid1_s"], ".3f", " s")
             + "   (includes the interpreter's start-up)"),
            ("PID 1 to ready", fmt(row["pid1_to_ready_s"], ".3f", " s")),
            ("guest up= at listening", fmt(row["up_listening_s"], ".3f", " s")),
            ("host: QEMU start to answer", fmt(row["wall_to_answer_s"], ".3f", " s")),
            ("unix image in this VM", f"cold {fmt(row['unix_cold_s'], '.3f', ' s')}, "
                                      f"warm {fmt(row['unix_warm_s'], '.3f', ' s')}"
                                      "   (fork to listening)"),
        ]
        ratio = row.get("ratio")
        lines.append(("PID 1 to ready / unix warm", fmt(ratio, ".2f", " x") + "   goal <= 1.5x: "
                      + ("n/a" if ratio is None else "meets" if ratio <= 1.5 else "misses")))
        for name, value in lines:
            print(f"  {name:<28} {value}")
        if row.get("boot_why"):
            print(f"  boot failed: {row['boot_why']}")
        if row.get("added_to_bench_root"):
            print(f"  missing from the vm root, added for the unix run: "
                  f"{', '.join(row['added_to_bench_root'])}")
        for note in row.get("unix_notes", []):
            print(f"  unix-in-vm note: {note}")
        print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="debian", choices=("debian", "minimal", "both"))
    ap.add_argument("--appliance", default="dns", choices=("dns",),
                    help="only dns for now")
    ap.add_argument("--skip-memory", action="store_true", help="do not search the least memory")
    ap.add_argument("--repeat", type=int, default=1, help="boots per measurement (medians)")
    ap.add_argument("--memory", type=int, default=256, help="MiB for the boot-time runs")
    ap.add_argument("--boot-timeout", type=float, default=150.0,
                    help="seconds one boot has to answer")
    ap.add_argument("--memory-budget", type=float, default=480.0,
                    help="seconds the least-memory search may take per kernel")
    ap.add_argument("--accel", default="tcg", help="QEMU accelerator (tcg: emulation)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if shutil.which("qemu-system-x86_64") is None:
        print("qemu-system-x86_64 is not installed", file=sys.stderr)
        return 1
    kernels = ("debian", "minimal") if args.kernel == "both" else (args.kernel,)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ingot-bench-vm-") as tmp:
        work = Path(tmp)
        unix_pyz = build_unix(work / "unix")
        rows = [run_kernel(k, work, unix_pyz, args) for k in kernels]
    report(rows, args)
    print(f"bench took {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
