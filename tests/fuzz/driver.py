"""What every fuzz target file here shares: the command line, the plain
random-bytes driver and the hand-over to atheris.

A target file defines its targets as ``t_<name>(data: bytes)`` functions,
a ``seeds()`` corpus of valid inputs, imports the code under test inside
``atheris.instrument_imports`` when atheris is there, and ends with::

    if __name__ == "__main__":
        sys.exit(driver.main(sys.argv[1:], __doc__, TARGETS, seeds, atheris))

Command line of such a file::

    python FILE TARGET [CORPUS_DIR] -atheris_runs=100000   # libFuzzer flags
    python FILE TARGET --plain 100000 [--seed N]           # no atheris needed
    python FILE --list

``--plain`` feeds random bytes and mutated seeds, deterministically from
``--seed``. An exception in ``refused`` is the documented answer to bad
input (counted as refused); any other exception is a failure and stops the
run with the input in hex on stderr.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Target = Callable[[bytes], None]
Mutator = Callable[[random.Random, bytes], bytes]


def targets(namespace: Mapping[str, Any]) -> dict[str, Target]:
    """The ``t_<name>`` functions of a module namespace, by name (``_`` as ``-``)."""
    return {name[2:].replace("_", "-"): fn for name, fn in sorted(namespace.items())
            if name.startswith("t_") and callable(fn)}


def flip_and_splice(rnd: random.Random, data: bytes) -> bytes:
    """One to five byte changes or short random insertions, then a cut one time in five."""
    raw = bytearray(data)
    for _ in range(rnd.randrange(1, 6)):
        if raw and rnd.random() < 0.8:
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        else:
            raw[rnd.randrange(len(raw) + 1):0] = rnd.randbytes(rnd.randrange(1, 9))
    return bytes(raw[:rnd.randrange(len(raw) + 1)] if rnd.random() < 0.2 else raw)


def run_one(target: Target, data: bytes, refused: tuple[type[BaseException], ...] = ()) -> bool:
    """One input: True if taken, False if refused with one of ``refused``;
    anything else propagates."""
    try:
        target(data)
    except refused:
        return False
    return True


def plain(target: Target, corpus: Sequence[bytes], runs: int, seed: int, *,
          mutate: Mutator = flip_and_splice, random_every: int = 3,
          refused: tuple[type[BaseException], ...] = ()) -> int:
    """``runs`` inputs: every ``random_every``-th random bytes, the others a
    mutated seed. Returns how many were taken (not refused)."""
    rnd = random.Random(seed)
    taken = 0
    for i in range(runs):
        if i % random_every == 0:
            data = rnd.randbytes(rnd.randrange(0, 200))
        else:
            data = mutate(rnd, rnd.choice(corpus))
        try:
            taken += run_one(target, data, refused)
        except Exception:
            sys.stderr.write(f"input {i} ({data.hex()}) raised:\n")
            raise
    return taken


def main(argv: list[str], doc: str | None, all_targets: Mapping[str, Target],
         seeds: Callable[[], Sequence[bytes]], atheris: Any, *,
         refused: tuple[type[BaseException], ...] = (), mutate: Mutator = flip_and_splice,
         random_every: int = 3, default: str | None = None) -> int:
    """The command line of a target file (see the module docstring). With
    ``default`` the target name may be left out."""
    if argv[:1] in (["-h"], ["--help"]) or (not argv and default is None):
        print(doc)
        return 2
    if argv[:1] == ["--list"]:
        print("\n".join(all_targets))
        return 0
    if argv and argv[0] in all_targets:
        name, argv = argv[0], argv[1:]
    elif default is not None:
        name = default
    else:
        print(f"unknown target {argv[0]!r}; targets: {', '.join(all_targets)}", file=sys.stderr)
        return 2
    target = all_targets[name]
    if "--plain" in argv or atheris is None:
        runs = int(argv[argv.index("--plain") + 1]) if "--plain" in argv else 100_000
        seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
        t0 = time.monotonic()
        taken = plain(target, seeds(), runs, seed, mutate=mutate, random_every=random_every,
                      refused=refused)
        what = f" ({taken} taken, {runs - taken} refused)" if refused else ""
        print(f"plain {name}: {runs} inputs{what} in {time.monotonic() - t0:.1f} s, no failure")
        return 0
    atheris.Setup([sys.argv[0], *argv], lambda data: run_one(target, data, refused))
    sys.stdout.flush()
    atheris.Fuzz()
    return 0
