"""What the mail benchmarks (bench_mail.py, bench_imap.py) share: running an image under
cProfile, where each profile goes, and a process's peak memory."""

from __future__ import annotations

from pathlib import Path

PROFILE = r"""
import cProfile, runpy, sys
out, image = sys.argv[1], sys.argv[2]
sys.argv = [image, *sys.argv[3:]]
prof = cProfile.Profile()
prof.enable()
try:
    runpy.run_path(image, run_name="__main__")
except (SystemExit, KeyboardInterrupt):
    pass
finally:
    prof.disable()
    prof.dump_stats(out)
"""
"""A wrapper script: ``python wrapper.py OUT.prof IMAGE.pyz ARGS...`` runs the image
profiled and writes the profile when it stops (SIGTERM ends it cleanly)."""


def profile_path(base: str, name: str) -> Path:
    """Where the profile of a row or phase goes: BASE with ``name`` before its suffix."""
    p = Path(base).resolve()
    return p.with_name(f"{p.stem}.{name}{p.suffix or '.prof'}")


def peak_rss_kib(pid: int | None) -> int | None:
    """VmHWM of a running process, in KiB (None when it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, TypeError):
        return None
    return None
