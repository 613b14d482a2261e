"""60 s of dnsperf at full rate against the appliance image: no query lost.

The image (zones from a folder) serves the zone of tests/bench/bench_dns.py (1,000 hosts)
with its query mix; dnsperf keeps
100 queries outstanding from one socket (``-c 1 -T 1 -q 100``) for 60 s
with a mix of 60% positive answers, 20% NXDOMAIN and 20% NODATA. dnsperf
must report every query answered (``Queries lost: 0``); afterwards the
appliance still answers and SIGTERM stops it with exit status 0. With two
CPUs or more the appliance and dnsperf are pinned to different ones. The
rate dnsperf measured is printed (run with ``-s`` to see it); it is not
asserted (see tests/bench/bench_dns.py for the comparison with NSD).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


from tests.bench.bench_dns import make_queries, make_zone
from tests.conftest import ROOT, Cli
from tests.integration.test_dns_image import Server, ask


SECONDS = 60
def test_sixty_seconds_of_dnsperf_lose_no_query(cli: Cli, tmp_path: Path):
    assert shutil.which("dnsperf"), "dnsperf is not installed (see .ci/debian-packages.txt)"
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "bench.test.zone").write_text(make_zone(1000))
    (tmp_path / "queries.txt").write_text(make_queries())
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct")
    cli("build", ROOT / "appliances" / "dns")
    srv = Server(cli.image("dns-unix"), "--zones-path", str(zones), "--reload", "0")
    cpus = sorted(os.sched_getaffinity(0))
    pin: list[str] = []
    if len(cpus) >= 2:
        os.sched_setaffinity(srv.proc.pid, {cpus[1]})
        pin = ["taskset", "-c", str(cpus[0])] if shutil.which("taskset") else []
    try:
        assert ask(srv.port, "host1.bench.test", "AAAA").header.rcode == 0
        perf = subprocess.run([*pin, "dnsperf", "-s", "127.0.0.1", "-p", str(srv.port),
                               "-d", str(tmp_path / "queries.txt"), "-l", str(SECONDS),
                               "-c", "1", "-T", "1", "-q", "100"],
                              capture_output=True, text=True, timeout=SECONDS + 60)
        out = perf.stdout + perf.stderr
        assert perf.returncode == 0, out
        sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))
        completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
        lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
        qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
        codes = re.search(r"Response codes:\s+(.*)", out).group(1)
        print(f"\ndnsperf {SECONDS} s: {sent} sent, {completed} completed, {lost} lost, "
              f"{qps:.0f} qps; {codes}")
        assert lost == 0 and completed == sent and sent > 0, out
        assert "NOERROR" in codes and "NXDOMAIN" in codes and "SERVFAIL" not in codes, out
        # still answering, each kind
        assert ask(srv.port, "host7.bench.test").rr[0].rdata is not None
        assert ask(srv.port, "nothing.bench.test").header.rcode == 3
        reply = ask(srv.port, "host8.bench.test", "MX")
        assert reply.header.rcode == 0 and not reply.rr and reply.auth
    finally:
        log = srv.stop()
    assert srv.proc.returncode == 0, log[-3000:]
    assert 'msg="query handling failed"' not in log
