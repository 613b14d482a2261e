"""The DNS appliance: an authoritative server (primary or secondary) with zones from a store."""
