"""The ``unix`` clock and sleep devices."""

from __future__ import annotations

import asyncio
import time

from ingot.registry import DeviceContext


class UnixMClock:
    """``MClock`` over ``CLOCK_MONOTONIC``, counted from the device's start."""

    def __init__(self) -> None:
        self._origin = time.monotonic_ns()

    def elapsed_ns(self) -> int:
        return time.monotonic_ns() - self._origin

    def period_ns(self) -> int | None:
        return int(time.get_clock_info("monotonic").resolution * 1e9) or None

    def close(self) -> None:
        pass


class UnixPClock:
    """``PClock`` over ``CLOCK_REALTIME``."""

    def now(self) -> tuple[int, int]:
        ns = time.time_ns()
        return ns // 1_000_000_000, ns % 1_000_000_000

    def now_d_ps(self) -> float:
        return time.time()

    def tz_offset_s(self) -> int | None:
        return -time.altzone if time.daylight and time.localtime().tm_isdst > 0 else -time.timezone

    def close(self) -> None:
        pass


class UnixSleep:
    """``Sleep`` on the running asyncio loop."""

    async def sleep_ns(self, ns: int) -> None:
        await asyncio.sleep(max(ns, 0) / 1e9)

    def close(self) -> None:
        pass


def connect_mclock(ctx: DeviceContext) -> UnixMClock:
    return UnixMClock()


def connect_pclock(ctx: DeviceContext) -> UnixPClock:
    return UnixPClock()


def connect_sleep(ctx: DeviceContext) -> UnixSleep:
    return UnixSleep()
