"""Structured log lines (logfmt) on the console.

One line per event: ``ts=2026-11-28T12:00:00.123Z level=info src=boot
msg="device connected" device=kv_ro``. Values with spaces, quotes or ``=``
are quoted. Logs go to standard output, the appliance's console (the serial
console on the ``vm`` target); the level is the ``--log-level`` key.
"""

from __future__ import annotations

import sys
import time
TYPE_CHECKING = False  # typing is not imported at start-up
if TYPE_CHECKING:
    from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _fmt(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and not any(c in text for c in ' "=\\\n\t') :
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class Sink:
    """Where log lines go, and the least severe level written."""

    def __init__(self, stream: TextIO | None = None, level: str = "info") -> None:
        self.stream = stream
        self.threshold = LEVELS[level]
        # PID 1 of a VM image sets this: lines then carry the guest's uptime
        # (CLOCK_BOOTTIME), by which boot phases are measured.
        import os
        self.uptime = os.environ.get("INGOT_LOG_UPTIME", "") not in ("", "0")

    def set_level(self, level: str) -> None:
        self.threshold = LEVELS[level]

    def write(self, line: str) -> None:
        stream = self.stream or sys.stdout
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed console must not kill the appliance


SINK = Sink()


class Logger:
    """A named source of log lines: ``log.info("listening", port=53)``."""

    __slots__ = ("src", "sink")

    def __init__(self, src: str, sink: Sink | None = None) -> None:
        self.src = src
        self.sink = sink or SINK

    def child(self, src: str) -> "Logger":
        return Logger(src, self.sink)

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS[level] < self.sink.threshold:
            return
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        parts = [f"ts={ts}", f"level={level}", f"src={_fmt(self.src)}", f"msg={_fmt(msg)}"]
        if self.sink.uptime:
            parts.insert(1, f"up={time.clock_gettime(time.CLOCK_BOOTTIME):.3f}")
        parts.extend(f"{k}={_fmt(v)}" for k, v in fields.items())
        self.sink.write(" ".join(parts))

    def debug(self, msg: str, **fields: Any) -> None:
        self.log("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log("info", msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log("warning", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, **fields)


def get(src: str) -> Logger:
    """A logger writing to the process-wide sink."""
    return Logger(src)
