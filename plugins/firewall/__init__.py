"""The firewall's protocol library and ``packet_filter`` backends (being written)."""
