"""The hello appliance: ``n`` log lines carrying ``hello``, ``interval`` seconds apart."""

from __future__ import annotations

from typing import Any

from ingot.signatures import MClock, Sleep


class Hello:
    def __init__(self, mclock: MClock, sleep: Sleep, keys: Any, log: Any) -> None:
        self.mclock = mclock
        self.sleep = sleep
        self.keys = keys
        self.log = log

    async def start(self) -> None:
        start = self.mclock.elapsed_ns()
        for i in range(self.keys.n):
            if i:
                await self.sleep.sleep_ns(int(self.keys.interval * 1e9))
            self.log.info(self.keys.hello, line=i + 1,
                          at_ms=(self.mclock.elapsed_ns() - start) // 1_000_000)
