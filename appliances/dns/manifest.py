"""Manifest of the DNS appliance: an authoritative server, primary (zones from a store,
dynamic updates) or secondary (zones pulled from a primary).

The guide, docs/appliances/dns.md, documents every key below; list keys take
comma-separated values (``--notify 192.0.2.2:53,192.0.2.3``).
"""

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
               doc="one RFC 1035 master file per zone, named <zone>.zone, at the top "
                   "of the store (read again every --reload seconds)"),
        device("store", KvRW, default="memory",
               doc="zones changed by dynamic updates or pulled as a secondary, and their "
                   "journals (IXFR), as <zone>.zone and <zone>.journal; git: one commit "
                   "per change"),
    ],
    keys=[
        key("host", str, "Address to listen on (IPv4 or IPv6 literal)", "127.0.0.1"),
        key("port", int, "UDP and TCP port", 53, validate=port),
        key("tcp-idle", float, "Seconds a TCP connection may stay idle", 10.0,
            validate=positive),
        key("reload", float,
            "Seconds between checks of the zones store for changed files (0: never)", 5.0,
            validate=non_negative),
        key("tsig-keys", list,
            "TSIG keys as [alg:]name:base64secret (alg: hmac-sha256 (default), "
            "hmac-sha1/224/384/512, hmac-md5)", [], secret=True),
        key("transfer-acl", list,
            "Who may AXFR/IXFR: rules of networks (10.0.0.0/8) and key:NAME, 'deny ...', "
            "'any'; the first match decides; empty: nobody", []),
        key("update-acl", list,
            "Who may send dynamic updates: rules of key:NAME and networks, as "
            "--transfer-acl; empty: nobody", []),
        key("notify", list,
            "Secondaries to NOTIFY after a change, as host[:port] ([v6]:port; port 53 when "
            "left out), optionally followed by a space and key:NAME (a --tsig-keys name) to "
            "sign the NOTIFYs to that peer ('127.0.0.1:5301 key:xfr.key'); unsigned otherwise",
            []),
        key("secondary-of", str,
            "Be a secondary of this primary (host[:port]); empty: be a primary", ""),
        key("secondary-zones", list,
            "Zones to pull from the primary in secondary mode (kept in the store)", []),
        key("secondary-key", str,
            "Name of the --tsig-keys key that signs the SOA queries and transfers to the "
            "primary (and that its NOTIFYs must carry); empty: unsigned", ""),
    ],
)
