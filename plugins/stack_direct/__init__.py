"""The ``direct`` stack: Ingot's own ARP/IPv4/ICMP/UDP (and a DHCP client) over a ``net`` device."""
