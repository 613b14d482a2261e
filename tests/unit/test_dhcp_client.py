"""The DHCP client core against a small server written in the test (no sockets)."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from ingot.plugins.stack_direct import dhcp
from ingot.plugins.stack_direct.dhcp import (ACK, BOUND, DISCOVER, NAK, OFFER, REQUEST,
                                            Bound, DhcpClient, DhcpError, Lost, Send)

MAC = bytes.fromhex("02aabbccddee")
S = dhcp.SECOND


def counter_entropy():
    state = {"n": 0}

    def entropy(n):
        state["n"] += 1
        return (state["n"] * 0x01020304).to_bytes(8, "big")[-n:]
    return entropy


def reply(request: bytes, kind: int, yiaddr="10.137.0.50", lease=3600, **extra) -> bytes:
    msg = dhcp.parse(request)
    opts = [(dhcp.OPT_MESSAGE_TYPE, bytes((kind,))),
            (dhcp.OPT_SERVER_ID, ipaddress.IPv4Address("10.137.0.1").packed),
            (dhcp.OPT_LEASE_TIME, struct.pack("!I", lease)),
            (dhcp.OPT_SUBNET_MASK, ipaddress.IPv4Address("255.255.255.0").packed),
            (dhcp.OPT_ROUTER, ipaddress.IPv4Address("10.137.0.1").packed),
            (dhcp.OPT_DNS, ipaddress.IPv4Address("10.137.0.1").packed
             + ipaddress.IPv4Address("10.137.0.2").packed)]
    opts += list(extra.items()) if extra else []
    return dhcp.build(dhcp.BOOTREPLY, msg.xid, msg.chaddr, opts,
                      yiaddr=yiaddr if kind != NAK else "0.0.0.0")


def test_discover_offer_request_ack():
    c = DhcpClient(MAC, counter_entropy(), hostname="echo")
    (send,) = c.start(0)
    assert isinstance(send, Send) and send.destination == "255.255.255.255"
    msg = dhcp.parse(send.payload)
    assert msg.type == DISCOVER and msg.chaddr == MAC
    assert msg.options[dhcp.OPT_HOSTNAME] == b"echo"
    (req,) = c.handle(reply(send.payload, OFFER), 1 * S)
    rmsg = dhcp.parse(req.payload)
    assert rmsg.type == REQUEST and rmsg.xid == msg.xid
    assert rmsg.address_option(dhcp.OPT_REQUESTED_IP) == "10.137.0.50"
    assert rmsg.address_option(dhcp.OPT_SERVER_ID) == "10.137.0.1"
    (bound,) = c.handle(reply(req.payload, ACK), 2 * S)
    assert isinstance(bound, Bound) and not bound.renewed
    lease = bound.lease
    assert lease.interface == "10.137.0.50/24" and lease.router == "10.137.0.1"
    assert lease.dns == ("10.137.0.1", "10.137.0.2")
    assert (lease.lease_s, lease.t1_s, lease.t2_s) == (3600, 1800, 3150)
    assert c.state == BOUND


def _bound(now=0):
    c = DhcpClient(MAC, counter_entropy())
    (d,) = c.start(now)
    (r,) = c.handle(reply(d.payload, OFFER), now)
    c.handle(reply(r.payload, ACK), now)
    return c


def test_retransmits_with_backoff_then_renews_rebinds_and_expires():
    c = DhcpClient(MAC, counter_entropy())
    (first,) = c.start(0)
    t = c.next_timer()
    assert 3 * S <= t <= 5 * S
    (again,) = c.tick(t)
    assert dhcp.parse(again.payload).xid == dhcp.parse(first.payload).xid
    assert 7 * S <= c.next_timer() - t <= 9 * S
    c = _bound()
    assert c.next_timer() == 1800 * S  # T1
    (renew,) = c.tick(1800 * S)
    assert c.state == "renewing" and renew.destination == "10.137.0.1"
    assert dhcp.parse(renew.payload).ciaddr == "10.137.0.50"
    (rebind,) = c.tick(3150 * S)
    assert c.state == "rebinding" and rebind.destination == "255.255.255.255"
    out = c.tick(3600 * S)
    assert isinstance(out[0], Lost) and out[0].reason == "lease expired"
    assert c.state == "selecting" and isinstance(out[1], Send)


def test_renewal_ack_extends_the_lease():
    c = _bound()
    (renew,) = c.tick(1800 * S)
    (bound,) = c.handle(reply(renew.payload, ACK, lease=7200), 1801 * S)
    assert bound.renewed and bound.lease.lease_s == 7200 and c.state == BOUND
    assert c.next_timer() == 1801 * S + 3600 * S


def test_nak_restarts_and_reports_a_lost_lease():
    c = _bound()
    (renew,) = c.tick(1800 * S)
    out = c.handle(reply(renew.payload, NAK), 1801 * S)
    assert isinstance(out[0], Lost) and c.state == "selecting"


def test_foreign_and_malformed_replies_are_counted_not_raised():
    c = DhcpClient(MAC, counter_entropy())
    (d,) = c.start(0)
    other = bytearray(reply(d.payload, OFFER))
    other[4:8] = b"\xff\xff\xff\xff"  # another xid
    assert c.handle(bytes(other), 1) == []
    assert c.handle(b"\x02" * 10, 1) == []
    assert c.counters == {"not_ours": 1, "malformed": 1}
    assert c.state == "selecting"


def test_parse_errors_are_dhcp_errors():
    good = dhcp.build(dhcp.BOOTREQUEST, 1, MAC, [(dhcp.OPT_MESSAGE_TYPE, b"\x01")])
    with pytest.raises(DhcpError, match="end marker"):
        dhcp.parse(good[:236 + 4 + 3])  # the type option, then nothing
    bad = bytearray(good)
    bad[236:240] = b"xxxx"
    with pytest.raises(DhcpError, match="magic"):
        dhcp.parse(bytes(bad))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_parse_takes_any_bytes(data):
    try:
        dhcp.parse(data)
    except DhcpError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_client_never_raises_on_any_reply(data):
    c = DhcpClient(MAC, counter_entropy())
    (d,) = c.start(0)
    head = bytearray(reply(d.payload, OFFER))
    c.handle(data, 1)
    c.handle(bytes(head[:240]) + data, 2)
