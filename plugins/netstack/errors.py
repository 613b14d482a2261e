"""The one error every netstack parser raises on bad input: :class:`ParseError`.

A parser never lets another exception escape on malformed bytes (no
``IndexError``, ``struct.error``, ``UnicodeDecodeError``); the property and
fuzz tests hold every parser to that. Builders are different: a builder
given impossible values by its caller (a port above 65535, a payload that
does not fit) raises plain :class:`ValueError`, because that is a bug in the
caller, not bad input from the network.
"""

from __future__ import annotations


class ParseError(ValueError):
    """Bytes from the network that do not parse.

    ``layer`` names the protocol (``"ethernet"``, ``"arp"``, ``"ipv4"``,
    ``"icmp"``, ``"udp"``, ``"tcp"``, ``"ipv6"``, ``"icmpv6"``) and
    ``reason`` says what is wrong, so that a drop can be counted per layer
    and logged as ``str(err)``, which reads ``"<layer>: <reason>"``.
    """

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(layer, reason)
        self.layer = layer
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.layer}: {self.reason}"
