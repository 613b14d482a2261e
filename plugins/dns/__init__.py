"""DNS for Ingot: zone files, an authoritative server core, transfers, TSIG, dynamic
updates, a secondary, and a stub resolver.

Files: ``zonefile.py`` (RFC 1035 master files), ``zone.py`` (the zone model),
``query.py`` and ``server.py`` (answering, sans-I/O), ``tsig.py`` (RFC 8945),
``journal.py`` (zone history, IXFR), ``xfr.py`` (AXFR/IXFR out), ``notify.py``
(RFC 1996), ``secondary.py`` (pulling zones), ``update.py`` (RFC 2136),
``acl.py``, ``stub.py`` (the resolver core), and the only files with I/O:
``adapter.py`` (the server over a stack) and ``stub_adapter.py`` (the
resolver over a stack). As a plugin it adds the ``resolver`` device kind
with its ``stub`` backend (``device.py``).
"""

from __future__ import annotations

import ingot
from ingot.keys import key
from ingot.registry import DeviceSpec


@ingot.hookimpl
def ingot_kinds_register() -> dict[str, type]:
    from .device import Resolver

    return {"resolver": Resolver}


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    return [DeviceSpec(
        "resolver", "stub", "ingot.plugins.dns.device:connect",
        "Stub resolver: forwards to upstream servers (UDP, TCP on truncation), caches by TTL",
        keys=(key("upstreams", list, "Upstream recursive servers as host[:port], in order"),),
        requires=(("stack", "stack"), ("mclock", "mclock"), ("random", "random")),
        default_on=("unix", "vm", "qubes", "oci"))]
