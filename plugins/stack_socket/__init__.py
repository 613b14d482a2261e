"""TCP and UDP through the host kernel: the ``stack/socket`` device.

The stack is asyncio's sockets (streams for TCP, datagram transports for
UDP) over IPv4 and IPv6. It is the default stack on the ``unix`` and
``oci`` targets; on ``vm`` and ``qubes`` it uses the guest kernel's stack.

Keys (on a device named ``stack``: ``--stack-mtu`` ...):

``mtu``
    the link MTU the stack reports (``Stack.mtu``); default 1500.
``udp-max``
    the largest datagram received whole; default 65535, so that every UDP
    datagram fits (see :mod:`ingot.plugins.stack_socket.stack` for why this
    costs no more than the MTU would).
``uvloop``
    run on uvloop's event loop when it is installed; default true. The loop
    is chosen before the runtime starts it, through the ``ingot_loop_select``
    hook below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ingot
from ingot.keys import key
from ingot.registry import DeviceSpec

UDP_MAX = 65535
"""Default receive size of a UDP socket: the largest datagram IP can carry."""


def _udp_max(value: int) -> None:
    if not 576 <= value <= UDP_MAX:
        raise ValueError(f"must be between 576 and {UDP_MAX}, got {value}")


def _mtu(value: int) -> None:
    if not 576 <= value <= 65536:
        raise ValueError(f"must be between 576 and 65536, got {value}")


KEYS = (
    key("mtu", int, "Link MTU the stack assumes (bytes)", 1500, validate=_mtu),
    key("udp-max", int, "Largest UDP datagram received whole (bytes); larger ones are "
        "truncated", UDP_MAX, validate=_udp_max),
    key("uvloop", bool, "Run on uvloop's event loop when it is installed", True),
)


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    return [
        DeviceSpec("stack", "socket", "ingot.plugins.stack_socket.stack:connect",
                   "TCP/UDP over IPv4 and IPv6 through the host kernel's sockets (asyncio)",
                   keys=KEYS, default_on=("unix", "vm", "qubes", "oci")),
    ]


@ingot.hookimpl
def ingot_loop_select(plan: Any, device_keys: Mapping[str, Mapping[str, Any]]
                      ) -> Callable[[], Any] | None:
    """uvloop's loop when a socket stack of the plan wants it and the image has it."""
    stacks = [d.name for d in plan.devices if (d.kind, d.backend) == ("stack", "socket")]
    if not stacks or not all(device_keys.get(n, {}).get("uvloop", True) for n in stacks):
        return None
    from .loop import loop_factory

    return loop_factory(True)
