"""Manifest of the echo appliance."""

from ingot.keys import key, port, positive
from ingot.manifest import Appliance, device
from ingot.signatures import KvRO, Stack

appliance = Appliance(
    name="echo",
    main="app:Echo",
    doc="TCP and UDP echo on one port; a TCP client is greeted first",
    devices=[
        device("stack", Stack, doc="where the echo listens"),
        device("kv_ro", KvRO, default={"unix": "direct", "vm": "crunch", "qubes": "crunch",
                                       "oci": "crunch"},
               doc="holds the greeting"),
    ],
    keys=[
        key("host", str, "Address to listen on (an IPv4 or IPv6 literal)", "127.0.0.1"),
        key("port", int, "TCP and UDP port to listen on", 7007, validate=port),
        key("greeting", str, "Store key of the greeting sent to each TCP client",
            "greeting.txt"),
        key("max-connections", int, "TCP connections served at once; more are closed",
            1024, validate=positive),
    ],
)
