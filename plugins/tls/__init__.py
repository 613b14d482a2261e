"""TLS over any flow: the ``tls/ssl`` device.

Python's ``ssl`` module (OpenSSL) driven through ``ssl.MemoryBIO``, so TLS
runs over any :class:`ingot.signatures.Flow` (a kernel TCP connection, a flow
of Ingot's own stack, an in-memory pipe), not only over sockets. It is the
default ``tls`` backend on every target and takes no keys: certificates and
trust anchors come in the :class:`~ingot.signatures.TlsServerConfig` and
:class:`~ingot.signatures.TlsClientConfig` the appliance passes.
"""

from __future__ import annotations

import ingot
from ingot.registry import TARGETS, DeviceSpec


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    return [
        DeviceSpec("tls", "ssl", "ingot.plugins.tls.flow:connect",
                   "TLS server and client over any flow (Python ssl with MemoryBIO)",
                   default_on=TARGETS),
    ]
