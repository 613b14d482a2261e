"""Manifest of the OpenVPN gateway appliance (server mode): stock OpenVPN 2.6 clients connect over
UDP or TCP; their packets leave through a tun interface, where the host routes (and NATs) them.

The guide, docs/appliances/vpn.md, documents the config store and every directive read.
"""

from ingot.keys import key, non_negative
from ingot.manifest import Appliance, device
from ingot.signatures import KvRO, Stack, Tun

appliance = Appliance(
    name="vpn",
    main="app:Vpn",
    doc="OpenVPN gateway: a server stock OpenVPN 2.6 clients connect to (tls-crypt, tls-auth, "
        "tls-crypt-v2, tls-ekm, AES-GCM, ChaCha20-Poly1305, UDP and TCP; also a client), routing their traffic through a tun interface",
    plugins=["openvpn", "netif"],
    # loaded by native code (cryptography's bindings), invisible to the closure
    modules=["_cffi_backend"],
    devices=[
        device("stack", Stack, doc="where the OpenVPN server listens (UDP or TCP)"),
        device("tun", Tun, default={"unix": "tun", "vm": "tun", "qubes": "tun", "oci": "tun"},
               doc="the tunnel interface: clients' packets in and out"),
        device("config", KvRO, default={"unix": "direct", "vm": "crunch", "qubes": "crunch",
                                        "oci": "crunch"},
               doc="server.conf (a stock OpenVPN config) and the files it names"),
    ],
    keys=[
        key("config-file", str, "Store key of the OpenVPN server config", "server.conf"),
        key("stats-interval", float, "Seconds between counter log lines (0: only at stop)",
            60.0, validate=non_negative),
        key("tls-ekm", bool, "Data keys from the TLS exporter (tls-ekm) with peers that offer it; "
            "false: always the older TLS PRF", True),
    ],
)
