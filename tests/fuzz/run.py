"""Run every netstack fuzz target for a number of inputs; exit non-zero if
any target found an exception other than ParseError.

    python tests/fuzz/run.py                  # 100,000 inputs per target
    python tests/fuzz/run.py --runs 1000000 --only ipv4,tcp
    python tests/fuzz/run.py --plain          # without atheris
    python tests/fuzz/run.py --file fuzz_firewall.py   # another target file

Each target runs in its own process, starting from the valid packets of
``fuzz_netstack.seeds()`` as corpus. Inputs that crash are kept under
``--artifacts`` (a fresh temporary folder by default) and named in the
output. With atheris missing, the plain random-bytes driver is used.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_FILE = HERE / "fuzz_netstack.py"


def _module(target_file: Path = TARGET_FILE):
    spec = importlib.util.spec_from_file_location(target_file.stem, target_file)
    mod = importlib.util.module_from_spec(spec)
    sys.argv = [str(target_file), "--plain"]  # import without instrumenting
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    ap.add_argument("--only", default="", help="comma-separated targets (default: all)")
    ap.add_argument("--plain", action="store_true", help="random-bytes driver, no atheris")
    ap.add_argument("--artifacts", type=Path, default=None, help="where crashing inputs go")
    ap.add_argument("--file", type=Path, default=TARGET_FILE,
                    help="target file (relative to tests/fuzz/ or a path); default "
                         "fuzz_netstack.py")
    args = ap.parse_args()
    target_file = args.file if args.file.is_absolute() or args.file.exists() \
        else HERE / args.file
    target_file = target_file.resolve()
    mod = _module(target_file)
    names = [n for n in mod.TARGETS if not args.only or n in args.only.split(",")]
    plain = args.plain or importlib.util.find_spec("atheris") is None
    work = Path(tempfile.mkdtemp(prefix="netstack-fuzz-"))
    artifacts = args.artifacts or work / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    failed = []
    total_runs, total_time = 0, 0.0
    print(f"{'target':14} {'inputs':>9} {'seconds':>8} {'cov':>5}  result", flush=True)
    for name in names:
        if plain:
            cmd = [sys.executable, str(target_file), name, "--plain", str(args.runs)]
        else:
            corpus = work / "corpus" / name
            corpus.mkdir(parents=True)
            for i, seed in enumerate(mod.seeds()):
                (corpus / f"seed-{i}").write_bytes(seed)
            cmd = [sys.executable, str(target_file), name, str(corpus),
                   f"-atheris_runs={args.runs}", f"-artifact_prefix={artifacts}/{name}-",
                   "-max_len=2048", "-print_final_stats=1"]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        took = time.monotonic() - t0
        out = proc.stdout + proc.stderr
        done = re.search(r"Done (\d+) in", out)
        runs = int(done.group(1)) if done else (args.runs if plain and not proc.returncode else 0)
        cov = re.findall(r"cov: (\d+)", out)
        ok = proc.returncode == 0 and (plain or done is not None)
        total_runs += runs
        total_time += took
        print(f"{name:14} {runs:>9} {took:>8.1f} {cov[-1] if cov else '-':>5}  "
              f"{'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            failed.append(name)
            tail = [line for line in out.splitlines() if "INFO: Instrumenting" not in line]
            print("\n".join(tail[-40:]), file=sys.stderr)
    print(f"{len(names)} targets, {total_runs} inputs in {total_time:.0f} s; "
          f"{'failed: ' + ', '.join(failed) if failed else 'no failure'}"
          f"{f' (artifacts in {artifacts})' if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
