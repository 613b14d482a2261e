"""ParseError reads as "<layer>: <reason>"; Counters count by name."""

import pickle

import pytest

from ingot.plugins.netstack.counters import Counters
from ingot.plugins.netstack.errors import ParseError


def test_parse_error_carries_layer_and_reason():
    err = ParseError("udp", "bad checksum")
    assert (err.layer, err.reason, str(err)) == ("udp", "bad checksum", "udp: bad checksum")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.layer, copy.reason, str(copy)) == ("udp", "bad checksum", "udp: bad checksum")
    with pytest.raises(ValueError, match="^udp: bad checksum$"):
        raise err


def test_counters():
    c = Counters()
    assert c["ipv4.bad_checksum"] == 0 and "ipv4.bad_checksum" not in c and len(c) == 0
    c["ipv4.bad_checksum"] += 1
    c.incr("arp.queue_full")
    c.incr("arp.queue_full", 2)
    assert list(c) == ["arp.queue_full", "ipv4.bad_checksum"]
    assert c.snapshot() == {"arp.queue_full": 3, "ipv4.bad_checksum": 1}
    assert c.snapshot("arp.") == {"arp.queue_full": 3}
    assert repr(c) == "Counters({'arp.queue_full': 3, 'ipv4.bad_checksum': 1})"
