"""Clocks and sleep for hosts with a POSIX kernel (every target runs Linux).

Backends: ``mclock/unix`` (``time.monotonic_ns``), ``pclock/unix``
(``time.time_ns``), ``sleep/unix`` (asyncio's timer). They are the defaults
on every target.
"""

from __future__ import annotations

import ingot
from ingot.registry import TARGETS, DeviceSpec


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    mod = "ingot.plugins.unix.clocks"
    return [
        DeviceSpec("mclock", "unix", f"{mod}:connect_mclock",
                   "Monotonic clock from the kernel (CLOCK_MONOTONIC)", default_on=TARGETS),
        DeviceSpec("pclock", "unix", f"{mod}:connect_pclock",
                   "Wall clock from the kernel (CLOCK_REALTIME)", default_on=TARGETS),
        DeviceSpec("sleep", "unix", f"{mod}:connect_sleep",
                   "Sleeping on the event loop's timers", default_on=TARGETS),
    ]
