#!/usr/bin/env python3
"""Benchmarks of the platform, each reported against a baseline measured in the same run.

    python3 dev.py bench            (or: .venv/bin/python tests/bench/run.py)

1. Start-up: a unix image (hello) from exec to its first log line, against
   ``python3 -c pass`` (exec to exit) on the same interpreter. Goal: under 2x.
2. Image size of hello and echo in KiB (the echo image with a crunched and a
   git kv_ro, to show what the choice costs).

Numbers are medians over repeated runs; the machine is shared and noisy, so
read the ratios, not the absolute times. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ingot(cwd: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "ingot.cli", *args], cwd=cwd, check=True,
                   capture_output=True)


def first_line_ms(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()
    t1 = time.perf_counter()
    proc.kill()
    proc.wait()
    return (t1 - t0) * 1000


def line_ms(cmd: list[str], marker: str) -> float:
    """Exec to the first output line that contains ``marker``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            break
    t1 = time.perf_counter()
    proc.kill()
    proc.wait()
    return (t1 - t0) * 1000


def exit_ms(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter that runs the image and the baseline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _ingot(work, "configure", str(ROOT / "appliances" / "hello"), "--n", "1")
        _ingot(work, "build", str(ROOT / "appliances" / "hello"))
        hello = work / "images" / "hello-unix.pyz"
        sizes = {"hello": hello.stat().st_size}
        echo_dir = ROOT / "appliances" / "echo"
        if (echo_dir / "manifest.py").exists():
            for backend, extra in (("crunch", ["--kv-ro-source", str(ROOT / "configs/echo/data")]),
                                   ("git", ["--kv-ro-repo", str(ROOT)])):
                _ingot(work, "configure", str(echo_dir), "--kv-ro", backend, *extra)
                _ingot(work, "build", str(echo_dir))
                sizes[f"echo ({backend} kv_ro)"] = (work / "images" / "echo-unix.pyz").stat().st_size
        # warm the page cache and the native-code cache first
        for _ in range(3):
            first_line_ms([args.python, str(hello)])
            exit_ms([args.python, "-c", "pass"])
        image_t, base_t, base_s_t, image_s_t, ready_t = [], [], [], [], []
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            image_t.append(first_line_ms([args.python, str(hello)]))
            base_t.append(exit_ms([args.python, "-c", "pass"]))
            image_s_t.append(first_line_ms([args.python, "-S", str(hello)]))
            base_s_t.append(exit_ms([args.python, "-S", "-c", "pass"]))
            # the first log line ("booting") is written before the boot
            # sequence is imported; this is the time to a running appliance
            ready_t.append(line_ms([args.python, str(hello)], "appliance started"))
    img, base = statistics.median(image_t), statistics.median(base_t)
    img_s, base_s = statistics.median(image_s_t), statistics.median(base_s_t)
    print(f"start-up, median of {args.runs} runs ({args.python}):")
    print(f"  hello image to first log line   {img:8.1f} ms")
    print(f"  python3 -c pass                 {base:8.1f} ms")
    print(f"  ratio                           {img / base:8.2f} x   (goal < 2x)")
    ready = statistics.median(ready_t)
    print(f"  hello image to 'appliance started' {ready:5.1f} ms: {ready / base:.2f} x")
    print(f"  same with -S (no site imports)  {img_s:8.1f} ms vs {base_s:.1f} ms: "
          f"{img_s / base_s:.2f} x")
    print("image sizes:")
    for name, size in sizes.items():
        print(f"  {name:<24} {size / 1024:8.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
