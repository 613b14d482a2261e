"""The ambient devices: unix clocks and sleep, os and seeded random."""

import asyncio
import time
from types import SimpleNamespace

import pytest

from ingot.plugins.random import sources
from ingot.plugins.unix import clocks


def _ctx(**keys):
    logged = []
    log = SimpleNamespace(warning=lambda msg, **f: logged.append((msg, f)),
                          info=lambda msg, **f: None)
    return SimpleNamespace(keys=keys, log=log), logged


def test_mclock_only_grows_and_starts_near_zero():
    clock = clocks.connect_mclock(None)
    a = clock.elapsed_ns()
    b = clock.elapsed_ns()
    assert 0 <= a <= b < 10**9
    assert clock.period_ns() is None or clock.period_ns() > 0


def test_pclock_is_posix_time():
    clock = clocks.connect_pclock(None)
    s, ns = clock.now()
    assert abs(s - time.time()) < 5 and 0 <= ns < 10**9
    assert abs(clock.now_d_ps() - time.time()) < 5


def test_sleep_waits_at_least_the_asked_time_and_is_cancellable():
    sleep = clocks.connect_sleep(None)

    async def body():
        t0 = time.monotonic()
        await sleep.sleep_ns(50_000_000)
        assert time.monotonic() - t0 >= 0.045
        await sleep.sleep_ns(-5)  # returns at once
        task = asyncio.ensure_future(sleep.sleep_ns(10**12))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(body())


def test_seeded_random_is_deterministic_per_seed_and_warns():
    ctx, logged = _ctx(seed=7)
    a = sources.connect_seeded(ctx)
    b = sources.connect_seeded(_ctx(seed=7)[0])
    c = sources.connect_seeded(_ctx(seed=8)[0])
    assert a.generate(10) + a.generate(5000) == b.generate(5010)
    assert c.generate(16) != sources.SeededRandom(7).generate(16)
    assert logged and "predictable" in logged[0][0]


def test_randbelow_stays_in_range_and_covers_it():
    r = sources.SeededRandom(1)
    seen = {r.randbelow(6) for _ in range(600)}
    assert seen == set(range(6))
    with pytest.raises(ValueError):
        r.randbelow(0)


def test_os_random_sizes_and_limits():
    r = sources.connect_os(None)
    assert len(r.generate(0)) == 0 and len(r.generate(33)) == 33
    assert r.generate(16) != r.generate(16)
    with pytest.raises(ValueError, match="0 to 1048576"):
        r.generate(sources.MAX_REQUEST + 1)
    with pytest.raises(ValueError):
        r.generate(-1)
