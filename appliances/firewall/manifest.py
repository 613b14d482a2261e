"""Manifest of the firewall appliance: a QubesOS firewall VM (sys-firewall), rules from
QubesDB, client traffic filtered and masqueraded by a packet_filter device."""

from ingot.keys import key, non_negative, positive
from ingot.manifest import Appliance, device
from ingot.signatures import PacketFilter, QubesDB, Stack


def _client(value: list[str]) -> None:
    for item in value:
        ip, sep, ifname = item.partition("=")
        if not sep or not ip or not ifname:
            raise ValueError(f"{item!r} is not IP=IFNAME")


appliance = Appliance(
    name="firewall",
    main="app:Firewall",
    doc="QubesOS firewall: Qubes rules from QubesDB, NAT, anti-spoofing, DNS redirect",
    plugins=["qubesdb", "firewall", "dns"],
    devices=[
        device("qubesdb", QubesDB, default={"unix": "file", "oci": "file", "vm": "socket",
                                            "qubes": "socket"},
               doc="the firewall's own addresses, its clients and their rules"),
        device("filter", PacketFilter, default="python",
               doc="the data plane: Ingot's own loop over net devices, or nftables"),
        device("stack", Stack, doc="the firewall's own traffic: resolving dsthost rules"),
    ],
    keys=[
        key("clients", list, "Static clients as IP=IFNAME (more come from QubesDB "
            "/ingot/clients/IP = IFNAME)", [], validate=_client),
        key("max-connections", int, "Connection-tracking (NAT) table size; the least "
            "recently used entry goes when it is full", 5000, validate=positive),
        key("icmp-error-rate", int, "ICMP errors (prohibited, time exceeded) the python data "
            "plane sends per second at most, in bursts of a twentieth (0: no limit)", 1000,
            validate=non_negative),
        key("dsthost-min-ttl", float, "Seconds a dsthost answer is kept at least before it "
            "is resolved again", 30.0, validate=positive),
        key("dsthost-max-ttl", float, "Seconds a dsthost answer is kept at most", 3600.0,
            validate=positive),
        key("dsthost-retry", float, "Seconds before a failed dsthost lookup is retried",
            10.0, validate=positive),
        key("stats-interval", float, "Seconds between counter log lines (0: only at stop)",
            60.0),
    ],
)
