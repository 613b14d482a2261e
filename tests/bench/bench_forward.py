#!/usr/bin/env python3
"""Forwarding through Python tun devices, against the kernel's own forwarding.

    .venv/bin/python tests/bench/bench_forward.py     (as root; needs iperf3)

Three network namespaces in a line, client - router - server
(ingot.testing.forward.line); iperf3 sends TCP from client to server for
``--seconds`` (default 5) per case:

kernel
    the router forwards itself (``net.ipv4.ip_forward=1`` in its namespace).
tun
    the route to each side points into a tun device; a Python process in the
    router (``python -m ingot.testing.forward``) copies packets between the
    two tuns with ``read()``/``write()``; the kernel segments and checksums
    every packet before it reaches Python (1500-byte packets).
tun+vnet
    the same with the virtio-net header and offloads on: the kernel hands
    over 64 KiB GSO super-packets with unfinished checksums and the forwarder
    passes them on untouched (``read_vnet()``/``write_vnet()``).
tun+vnet, read()
    (with ``--all``) vnet devices read through ``read()``, so that Python cuts
    every super-packet into segments and checksums them itself.

Prints Mbit/s (iperf3's received rate) and each case's ratio to the kernel.
Not a test: nothing is asserted; the machine is shared and noisy, so compare
the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from ingot.testing.forward import TUNS, line
from ingot.testing.netns import Lab, unavailable


def iperf(ln, seconds: float) -> float:
    """Mbit/s received by the server in one bounded iperf3 run."""
    server = ln.server.popen("iperf3", "-s", "-1", "-B", ln.server_ip,
                             stdout=subprocess.DEVNULL)
    ln.server.wait_listening(5201)
    out = ln.client.run("iperf3", "-c", ln.server_ip, "-t", str(seconds), "-J",
                        timeout=seconds + 30).stdout
    server.wait(10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def case(flags: list[str] | None, seconds: float) -> tuple[float, dict]:
    """One measurement in fresh namespaces; ``flags`` None means kernel forwarding."""
    with Lab() as lab:
        ln = line(lab, tuns=flags is not None)
        if flags is None:
            return iperf(ln, seconds), {}
        fwd = ln.router.popen(sys.executable, "-m", "ingot.testing.forward", *TUNS, *flags,
                              stdout=subprocess.PIPE, text=True)
        assert fwd.stdout is not None
        if fwd.stdout.readline().strip() != "ready":
            raise RuntimeError("the forwarder did not start")
        try:
            rate = iperf(ln, seconds)
        finally:
            fwd.terminate()
            stats = json.loads(fwd.communicate(timeout=10)[0].strip().splitlines()[-1])
        return rate, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 -t per case (max 30)")
    ap.add_argument("--all", action="store_true", help="also vnet devices read through read()")
    args = ap.parse_args()
    if reason := unavailable():
        sys.exit(f"cannot run: {reason}")
    seconds = min(max(args.seconds, 1.0), 30.0)
    cases = [("kernel", None), ("tun", []), ("tun+vnet", ["--vnet"])]
    if args.all:
        cases.append(("tun+vnet, read()", ["--vnet", "--plain"]))
    results = []
    for name, flags in cases:
        rate, stats = case(flags, seconds)
        largest = stats.get("ab", {}).get("largest", "")
        results.append((name, rate, largest))
    kernel = results[0][1]
    print(f"TCP client -> router -> server, iperf3 -t {seconds:g}")
    print(f"{'case':<18} {'Mbit/s':>10} {'vs kernel':>10} {'largest packet':>15}")
    for name, rate, largest in results:
        print(f"{name:<18} {rate:>10.0f} {rate / kernel:>10.3f} {largest!s:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
