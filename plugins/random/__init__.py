"""Entropy devices: ``random/os`` (the kernel's CSPRNG, default) and
``random/seeded`` (deterministic from the ``seed`` key; for tests only)."""

from __future__ import annotations

import ingot
from ingot.keys import key
from ingot.registry import TARGETS, DeviceSpec


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    mod = "ingot.plugins.random.sources"
    return [
        DeviceSpec("random", "os", f"{mod}:connect_os",
                   "Kernel CSPRNG (getrandom/urandom)", default_on=TARGETS),
        DeviceSpec("random", "seeded", f"{mod}:connect_seeded",
                   "Deterministic generator (SHAKE-256 of the seed); predictable, tests only",
                   keys=(key("seed", int, "Seed of the deterministic generator", 0),)),
    ]
