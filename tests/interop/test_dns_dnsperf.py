"""60 s of dnsperf at full rate against the appliance image: no query lost.

The image (zones from a folder) serves a zone of 1,000 hosts; dnsperf keeps
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
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli
from tests.integration.test_dns_image import Server, ask

pytestmark = pytest.mark.skipif(shutil.which("dnsperf") is None,
                                reason="dnsperf is not installed")

SECONDS = 60
HOSTS = 1000


def zone_text() -> str:
    lines = ["$ORIGIN perf.test.", "$TTL 300", "@ SOA ns1 hostmaster 1 3600 900 604800 60",
             "  NS ns1", "ns1 A 192.0.2.1", "@ MX 10 mail", "mail A 192.0.2.25"]
    for i in range(HOSTS):
        lines.append(f"host{i} A 10.0.{i >> 8}.{i & 255}")
        if i % 2:
            lines.append(f"host{i} AAAA 2001:db8::{i:x}")
    return "\n".join(lines) + "\n"


def queries(n: int = 20_000) -> str:
    rnd = random.Random(4)
    out = []
    for _ in range(n):
        roll, i = rnd.random(), rnd.randrange(HOSTS)
        if roll < 0.6:
            out.append(f"host{i | 1}.perf.test AAAA" if roll < 0.2 else f"host{i}.perf.test A")
        elif roll < 0.8:
            out.append(f"nx{rnd.randrange(5000)}.perf.test A")
        else:
            out.append(f"host{i}.perf.test MX")
    return "\n".join(out) + "\n"


def test_sixty_seconds_of_dnsperf_lose_no_query(cli: Cli, tmp_path: Path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "perf.test.zone").write_text(zone_text())
    (tmp_path / "queries.txt").write_text(queries())
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct")
    cli("build", ROOT / "appliances" / "dns")
    srv = Server(cli.image("dns-unix"), "--zones-path", str(zones), "--reload", "0")
    cpus = sorted(os.sched_getaffinity(0))
    pin: list[str] = []
    if len(cpus) >= 2:
        os.sched_setaffinity(srv.proc.pid, {cpus[1]})
        pin = ["taskset", "-c", str(cpus[0])] if shutil.which("taskset") else []
    try:
        assert ask(srv.port, "host1.perf.test", "AAAA").header.rcode == 0
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
        assert ask(srv.port, "host7.perf.test").rr[0].rdata is not None
        assert ask(srv.port, "nothing.perf.test").header.rcode == 3
        reply = ask(srv.port, "host8.perf.test", "MX")
        assert reply.header.rcode == 0 and not reply.rr and reply.auth
    finally:
        log = srv.stop()
    assert srv.proc.returncode == 0, log[-3000:]
    assert 'msg="query handling failed"' not in log
