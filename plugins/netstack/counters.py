"""Named counters for what is dropped and counted.

One :class:`Counters` can be shared by every component of a stack (the ARP
cache, the reassembler, the stack's own parse drops), so that a single
snapshot tells what happened to the traffic. Names are dotted,
``<layer>.<what>``, e.g. ``"ipv4.reasm.overlap"`` or ``"arp.queue_full"``.
"""

from __future__ import annotations

from collections.abc import Iterator


class Counters:
    """A mapping of name to count; a name never counted reads as 0.

    ``counters["ipv4.bad_checksum"] += 1`` works as with a dict;
    :meth:`incr` does the same in one call.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __getitem__(self, name: str) -> int:
        return self._counts.get(name, 0)

    def __setitem__(self, name: str, value: int) -> None:
        self._counts[name] = value

    def incr(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        self._counts[name] = self._counts.get(name, 0) + n

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._counts))

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, name: object) -> bool:
        return name in self._counts

    def snapshot(self, prefix: str = "") -> dict[str, int]:
        """A sorted copy of the counters whose names start with ``prefix``."""
        return {k: self._counts[k] for k in sorted(self._counts) if k.startswith(prefix)}

    def __repr__(self) -> str:
        return f"Counters({self.snapshot()!r})"
