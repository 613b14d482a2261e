"""Manifest of the DNS appliance: an authoritative server, primary (zones from a store,
dynamic updates) or secondary (zones pulled from a primary)."""

from ingot.keys import key, port, positive, non_negative
from ingot.manifest import Appliance, device
from ingot.signatures import KvRO, KvRW, Stack

appliance = Appliance(
    name="dns",
    main="app:Dns",
    doc="Authoritative DNS server: zones from a store, transfers, NOTIFY, TSIG, dynamic updates",
    plugins=["dns"],
    devices=[
        device("stack", Stack, doc="where the server listens"),
        device("zones", KvRO, default={"unix": "direct", "vm": "crunch", "qubes": "crunch",
                                       "oci": "crunch"},
               doc="one master file per zone, named <zone>.zone"),
        device("store", KvRW, default="memory",
               doc="zones changed by dynamic updates or transfers, and their journal"),
    ],
    keys=[
        key("host", str, "Address to listen on (IPv4 or IPv6 literal)", "127.0.0.1"),
        key("port", int, "UDP and TCP port", 53, validate=port),
        key("tcp-idle", float, "Seconds a TCP connection may stay idle", 10.0,
            validate=positive),
        key("reload", float, "Seconds between checks of the zones store for changes (0: never)",
            5.0, validate=non_negative),
        key("tsig-keys", list, "TSIG keys as alg:name:base64secret (hmac-sha256 at least)", [],
            secret=True),
        key("transfer-acl", list, "Who may AXFR/IXFR: networks (10.0.0.0/8) and key:NAME", []),
        key("update-acl", list, "Who may send dynamic updates: key:NAME and networks", []),
        key("notify", list, "Secondaries to NOTIFY after a change, as host:port", []),
        key("secondary-of", str, "Be a secondary of this primary (host:port); empty: primary", ""),
        key("secondary-zones", list, "Zones to pull from the primary in secondary mode", []),
        key("secondary-key", str, "Name of the TSIG key for transfers from the primary", ""),
    ],
)
