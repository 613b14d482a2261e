"""Just enough rtnetlink to bring interfaces up: links, addresses, routes.

PID 1 of a VM image has no ``ip`` program; it configures the interfaces
named by ``ingot.ip=`` and the default routes of ``ingot.gw=`` /
``ingot.gw6=`` on the kernel command line with these messages (the formats
are Linux's ``rtnetlink(7)``: ``nlmsghdr``, ``ifinfomsg``, ``ifaddrmsg``,
``rtmsg`` and their attributes). Building and parsing messages is pure;
:class:`Rtnl` is the thin socket adapter.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 18, 20, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_REPLACE = 1, 4, 0x200, 0x400, 0x100
NLMSG_ERROR = 2
IFF_UP = 1
IFLA_IFNAME, IFLA_MTU = 3, 4
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFA_F_NODAD = 0x02


class NetlinkError(OSError):
    """The kernel refused a request (``errno`` and the request are given)."""


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK,
                       seq, 0) + body


def link_up(index: int, seq: int, mtu: int | None = None) -> bytes:
    """RTM_NEWLINK setting IFF_UP (and the MTU) on interface ``index``."""
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
    if mtu:
        body += _attr(IFLA_MTU, struct.pack("=I", mtu))
    return _message(RTM_NEWLINK, 0, seq, body)


def add_address(index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                seq: int) -> bytes:
    """RTM_NEWADDR of ``iface`` (address/prefix) on interface ``index`` (no DAD for IPv6)."""
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    flags = IFA_F_NODAD if iface.version == 6 else 0
    body = struct.pack("=BBBBI", family, iface.network.prefixlen, flags, RT_SCOPE_UNIVERSE,
                       index)
    raw = iface.ip.packed
    body += _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
    return _message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq, body)


def add_default_route(gateway: ipaddress.IPv4Address | ipaddress.IPv6Address,
                      seq: int, index: int | None = None) -> bytes:
    """RTM_NEWROUTE of the default route via ``gateway`` (through ``index`` if given)."""
    family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
    body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                       RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body += _attr(RTA_GATEWAY, gateway.packed)
    if index is not None:
        body += _attr(RTA_OIF, struct.pack("=i", index))
    return _message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq, body)


def parse_ack(data: bytes, seq: int) -> int | None:
    """The errno of the kernel's answer to request ``seq`` (0: done), None if not in ``data``."""
    pos = 0
    while pos + 16 <= len(data):
        length, kind, _flags, got, _pid = struct.unpack_from("=IHHII", data, pos)
        if length < 16:
            raise ValueError("truncated netlink message")
        if kind == NLMSG_ERROR and got == seq and length >= 20:
            (err,) = struct.unpack_from("=i", data, pos + 16)
            return -err
        pos += (length + 3) & ~3
    return None


class Rtnl:
    """A NETLINK_ROUTE socket sending one request at a time and waiting for its ack."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def request(self, message: bytes, what: str) -> None:
        seq = struct.unpack_from("=I", message, 8)[0]
        self.sock.send(message)
        while True:
            err = parse_ack(self.sock.recv(65536), seq)
            if err is None:
                continue
            if err:
                raise NetlinkError(err, f"{what}: {os.strerror(err)}")
            return

    def up(self, name: str, mtu: int | None = None) -> int:
        index = socket.if_nametoindex(name)
        self.request(link_up(index, self.next_seq(), mtu), f"bring {name} up")
        return index

    def address(self, name: str, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
                ) -> None:
        index = socket.if_nametoindex(name)
        try:
            self.request(add_address(index, iface, self.next_seq()), f"add {iface} to {name}")
        except NetlinkError as exc:
            if exc.errno != 17:  # EEXIST: already there
                raise

    def default_route(self, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address,
                      name: str | None = None) -> None:
        index = socket.if_nametoindex(name) if name else None
        self.request(add_default_route(gateway, self.next_seq(), index),
                     f"default route via {gateway}")

    def close(self) -> None:
        self.sock.close()
