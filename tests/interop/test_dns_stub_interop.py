"""The stub resolver over the real socket stack, asking a real Knot on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest

from ingot.log import Logger, Sink
from ingot.plugins.dns.stub import ResolveError
from ingot.plugins.dns.stub_adapter import StubResolver
from ingot.plugins.random.sources import OsRandom
from ingot.plugins.stack_socket.stack import connect
from ingot.plugins.unix.clocks import UnixMClock
from ingot.registry import DeviceContext

from .test_dns_tsig_interop import ZONE_TEXT, Knot

HUGE_TXT = " ".join(f'"{i:03d}-' + "y" * 120 + '"' for i in range(16))  # ~2 KB > 1232


@pytest.fixture(scope="module")
def knot(tmp_path_factory):
    server = Knot(tmp_path_factory.mktemp("stub") / "knot", zone_text=ZONE_TEXT.format(big=HUGE_TXT))
    yield server
    server.stop()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(upstreams, main, **options):
    """Run ``main(resolver)`` with a StubResolver over a fresh socket stack."""
    out = io.StringIO()

    async def wrapper():
        ctx = DeviceContext(name="stack", kind="stack", backend="socket", target="unix",
                            keys={"mtu": 1500, "udp-max": 65535, "uvloop": False}, deps={},
                            data=None, log=Logger("stack", Sink(out, "debug")))
        stack = connect(ctx)
        resolver = StubResolver(stack, UnixMClock(), OsRandom(), upstreams,
                                bind_ipv4="127.0.0.1", bind_ipv6="::1", **options)
        try:
            return await asyncio.wait_for(main(resolver), 20)
        finally:
            resolver.close()
            stack.close()

    return asyncio.run(wrapper())


def test_answers_of_each_type(knot):
    async def main(r):
        a = await r.resolve("www.example.test", "A")
        aaaa = await r.resolve("www.example.test", "AAAA")
        mx = await r.resolve("example.test", "MX")
        txt = await r.resolve("example.test", "TXT")
        chain = await r.resolve("chain.example.test", "A")
        return a, aaaa, mx, txt, chain, r.stats

    a, aaaa, mx, txt, chain, stats = run([f"127.0.0.1:{knot.port}"], main)
    assert a.values == ["192.0.2.10"] and a.ttl == 300 and not a.from_cache
    assert aaaa.values == ["2001:db8::10"]
    assert mx.values == [(10, "mail.example.test")]
    assert txt.values == [(b"v=spf1 -all",)]
    assert chain.values == ["192.0.2.10"] and chain.canonical == "www.example.test"
    assert [c.value for c in chain.chain] == ["alias.example.test", "www.example.test"]
    assert stats.sent == 5 and stats.mismatched == stats.malformed == 0


def test_truncated_answer_falls_back_to_tcp(knot):
    async def main(r):
        return await r.resolve("big.example.test", "TXT"), r.stats

    answer, stats = run([("127.0.0.1", knot.port)], main)
    strings = answer.values[0]
    assert len(strings) == 16 and strings[0].startswith(b"000-y")
    assert sum(map(len, strings)) > 1232
    assert stats.tcp_fallbacks == 1 and stats.sent == 2


def test_small_payload_without_edns_also_truncates(knot):
    async def main(r):
        return await r.resolve("big.example.test", "TXT"), r.stats

    answer, stats = run([("127.0.0.1", knot.port)], main, edns_payload=None)
    assert len(answer.values[0]) == 16 and stats.tcp_fallbacks == 1


def test_ipv6_upstream(knot):
    async def main(r):
        return await r.resolve("example.test", "MX"), await r.resolve("big.example.test", "TXT")

    mx, big = run([f"[::1]:{knot.port}"], main)
    assert mx.values == [(10, "mail.example.test")] and len(big.values[0]) == 16


def test_second_query_is_served_from_cache(knot):
    async def main(r):
        first = await r.resolve("mail.example.test", "A")
        sent = r.stats.sent
        second = await r.resolve("MAIL.example.test.", "A")
        return first, second, sent, r.stats

    first, second, sent, stats = run([("127.0.0.1", knot.port)], main)
    assert not first.from_cache and second.from_cache
    assert second.values == first.values and stats.sent == sent == 1
    assert stats.cache_hits == 1


def test_negative_answers_are_cached(knot):
    async def main(r):
        nx = await r.resolve("nothing.example.test", "A")
        nodata = await r.resolve("www.example.test", "MX")
        sent = r.stats.sent
        again = await r.resolve("nothing.example.test", "A")
        return nx, nodata, again, sent, r.stats

    nx, nodata, again, sent, stats = run([("127.0.0.1", knot.port)], main)
    assert nx.nxdomain and nx.rrs == () and 0 < nx.ttl <= 60
    assert nodata.rcode == 0 and nodata.rrs == () and 0 < nodata.ttl <= 60
    assert again.from_cache and again.nxdomain and stats.sent == sent == 2


def test_dead_upstream_falls_back_to_the_live_one(knot):
    dead = closed_port()

    async def main(r):
        answer = await r.resolve("www.example.test", "A")
        return answer, r.stats

    answer, stats = run([f"127.0.0.1:{dead}", f"127.0.0.1:{knot.port}"], main,
                        timeout_ns=300_000_000)
    assert answer.values == ["192.0.2.10"]
    assert stats.sent == 2 and stats.timeouts + stats.upstream_errors == 1


def test_all_upstreams_dead_is_an_error():
    dead = closed_port()

    async def main(r):
        with pytest.raises(ResolveError) as info:
            await r.resolve("www.example.test", "A")
        return info.value, r.stats

    error, stats = run([f"127.0.0.1:{dead}"], main, timeout_ns=100_000_000, rounds=2)
    assert "all upstreams failed" in error.reason and stats.sent == 2


def test_caller_timeout_is_an_error():
    dead = closed_port()

    async def main(r):
        with pytest.raises(ResolveError) as info:
            await r.resolve("www.example.test", "A", timeout_s=0.2)
        return info.value

    assert "no answer within" in run([f"127.0.0.1:{dead}"], main).reason


def test_identical_concurrent_questions_share_one_query(knot):
    async def main(r):
        answers = await asyncio.gather(*[r.resolve("www.example.test", "AAAA") for _ in range(5)])
        return answers, r.stats

    answers, stats = run([("127.0.0.1", knot.port)], main)
    assert all(a.values == ["2001:db8::10"] for a in answers)
    assert stats.sent == 1 and stats.coalesced == 4


def test_many_different_questions_at_once(knot):
    async def main(r):
        names = [f"h{i}.example.test" for i in range(40)] + ["www.example.test"]
        return await asyncio.gather(*[r.resolve(n, "A") for n in names])

    answers = run([("127.0.0.1", knot.port)], main)
    assert sum(a.nxdomain for a in answers) == 40 and answers[-1].values == ["192.0.2.10"]
