"""The main job of `python3 dev.py demo`: build the DNS appliance, run it on the example
zone (configs/dns/zones), ask it a few questions over UDP and TCP, and stop it.

    .venv/bin/python tests/demo_dns.py [--port 5300] [--keep-running]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from dnslib import QTYPE, DNSRecord

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [("example.test", "SOA"), ("www.example.test", "A"), ("example.test", "MX"),
             ("x.apps.example.test", "A"), ("nothing.example.test", "A"),
             ("host.sub.example.test", "A"), ("example.org", "A")]


def ingot(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ingot.cli", *args], cwd=ROOT, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=5300)
    ap.add_argument("--keep-running", action="store_true", help="serve until Ctrl-C")
    args = ap.parse_args()
    ingot("configure", "appliances/dns", "--target", "unix", "--zones", "direct",
          "--zones-path", "configs/dns/zones", "--port", str(args.port))
    ingot("build", "appliances/dns")
    ingot("inspect", "images/dns-unix.pyz")
    image = ROOT / "images" / "dns-unix.pyz"
    proc = subprocess.Popen([sys.executable, str(image)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                print("the DNS appliance exited early", file=sys.stderr)
                return 1
            print(line, end="")
            if "msg=listening" in line:
                break
        failures = 0
        for name, rtype in QUESTIONS:
            for tcp in (False, True):
                q = DNSRecord.question(name, rtype)
                reply = DNSRecord.parse(q.send("127.0.0.1", args.port, tcp=tcp, timeout=5))
                rcode = {0: "NOERROR", 3: "NXDOMAIN", 5: "REFUSED"}.get(reply.header.rcode,
                                                                        reply.header.rcode)
                answers = [str(rr.rdata) for rr in reply.rr] or [
                    f"(authority: {QTYPE[rr.rtype]} {rr.rdata})" for rr in reply.auth]
                print(f"{'tcp' if tcp else 'udp'} {name} {rtype}: {rcode} "
                      f"{'aa ' if reply.header.aa else ''}{'; '.join(answers)}")
                failures += reply.header.id != q.header.id
        if args.keep_running:
            print(f"serving on 127.0.0.1:{args.port}; Ctrl-C stops it")
            proc.wait()
        return 1 if failures else 0
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            print(out, end="")


if __name__ == "__main__":
    sys.exit(main())
