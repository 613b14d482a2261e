"""The ``os`` and ``seeded`` random devices."""

from __future__ import annotations

import hashlib
import os

from ingot.registry import DeviceContext

MAX_REQUEST = 1 << 20


def _check(n: int) -> None:
    if not 0 <= n <= MAX_REQUEST:
        raise ValueError(f"can generate 0 to {MAX_REQUEST} bytes per call, not {n}")


def _below(gen, n: int) -> int:
    if n <= 0:
        raise ValueError(f"randbelow needs a positive bound, got {n}")
    nbytes = (n.bit_length() + 7) // 8 + 1
    limit = (256 ** nbytes // n) * n  # reject above the largest multiple: no bias
    while True:
        value = int.from_bytes(gen(nbytes), "big")
        if value < limit:
            return value % n


class OsRandom:
    """Bytes from ``os.urandom`` (getrandom(2) on Linux)."""

    def generate(self, n: int) -> bytes:
        _check(n)
        return os.urandom(n)

    def randbelow(self, n: int) -> int:
        return _below(self.generate, n)

    def close(self) -> None:
        pass


class SeededRandom:
    """A deterministic stream: SHAKE-256 over (seed, counter) blocks."""

    def __init__(self, seed: int) -> None:
        self._seed = seed.to_bytes(32, "big", signed=True)
        self._counter = 0
        self._buffer = b""

    def generate(self, n: int) -> bytes:
        _check(n)
        while len(self._buffer) < n:
            block = hashlib.shake_256(self._seed + self._counter.to_bytes(8, "big")).digest(4096)
            self._counter += 1
            self._buffer += block
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def randbelow(self, n: int) -> int:
        return _below(self.generate, n)

    def close(self) -> None:
        pass


def connect_os(ctx: DeviceContext) -> OsRandom:
    return OsRandom()


def connect_seeded(ctx: DeviceContext) -> SeededRandom:
    ctx.log.warning("seeded random device: output is predictable, never use it in production",
                    seed=ctx.keys["seed"])
    return SeededRandom(ctx.keys["seed"])
