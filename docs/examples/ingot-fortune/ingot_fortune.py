"""Fortunes: a device kind of its own, with one backend."""
from typing import Protocol

import ingot
from ingot.keys import key
from ingot.registry import DeviceSpec


class Fortune(Protocol):
    """Hands out sayings."""

    def next(self) -> str:
        """The next saying."""
        ...


@ingot.hookimpl
def ingot_kinds_register():
    return {"fortune": Fortune}


@ingot.hookimpl
def ingot_devices_register():
    return [DeviceSpec("fortune", "cookie", "ingot_fortune_device:connect",
                       "Sayings from a list", default_on=("unix",),
                       keys=(key("sayings", list, "Comma-separated sayings", ["fortune"]),))]


@ingot.hookimpl
def ingot_device_connected(name, spec, device):
    print(f"fortune plugin saw device {name} ({spec.kind}/{spec.backend})", flush=True)
