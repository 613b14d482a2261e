"""Linux interface plumbing: ioctls, constants and the virtio-net header.

Everything the tun, tap and AF_PACKET backends ask the kernel goes through
here: attaching to a tun/tap interface (``TUNSETIFF``), its offloads
(``TUNSETOFFLOAD``, ``TUNSETVNETHDRSZ``), an interface's flags, MTU and MAC
(``SIOCGIFFLAGS``/``SIOCSIFFLAGS``, ``SIOCGIFMTU``, ``SIOCGIFHWADDR``).

Interface facts are read with ioctls on a socket opened in the same network
namespace as the device, never from ``/sys/class/net``: sysfs shows the
namespace it was mounted in, which need not be the device's.

The numbers are Linux's (``<linux/if_tun.h>``, ``<linux/sockios.h>``,
``<linux/if_packet.h>``, ``<linux/virtio_net.h>``) for the usual ABI where
``struct ifreq`` is 40 bytes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import struct
from dataclasses import dataclass
from typing import ClassVar

from ingot.signatures import DeviceError

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
"""What a vnet-header device lets the kernel hand over unfinished: checksums, TCP GSO."""

# <linux/sockios.h>, <linux/if.h>
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
IFF_UP = 0x1

# <linux/if_packet.h>, <linux/if_ether.h>
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_STATISTICS = 6
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
ETH_P_ALL = 0x0003
ETH_HLEN = 14

# <linux/virtio_net.h>
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


def check_ifname(name: str) -> None:
    """A key validator: a Linux interface name (1-15 bytes, no blank, ``/`` or ``:``)."""
    if not _IFNAME.match(name) or name in (".", "..") or len(name.encode()) > 15:
        raise ValueError(f"{name!r} is not an interface name (1-15 characters, "
                         "no blanks, '/' or ':')")


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """The virtio-net header in front of each packet of a vnet-header device.

    ``flags``: :data:`VNET_F_NEEDS_CSUM` (the checksum at ``csum_start +
    csum_offset`` holds only the pseudo-header sum; the rest is to be added
    over the bytes from ``csum_start``), :data:`VNET_F_DATA_VALID` (the
    kernel checked it). ``gso_type``: :data:`GSO_NONE`, or the kind of
    super-packet (:data:`GSO_TCPV4`, :data:`GSO_TCPV6`, :data:`GSO_UDP_L4`,
    possibly with :data:`GSO_ECN`) to be cut into segments of ``gso_size``
    payload bytes; ``hdr_len`` is a hint of the header bytes. Offsets count
    from the start of the packet (the Ethernet header on ``net`` devices, the
    IP header on ``tun`` ones). Fields are in host byte order. The 12-byte
    form adds ``num_buffers`` (mergeable receive buffers), which Linux's tun
    and packet sockets ignore.
    """

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    SIZE: ClassVar[int] = 10
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("=BBHHHH")

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> VnetHeader:
        """The header from the first 10 bytes of ``data`` (``ValueError`` if shorter).

        Headers are immutable and a flow's super-packets carry the same one,
        so recent ones are kept and handed out again (:data:`_SEEN`) rather
        than built per packet.
        """
        head = bytes(data[:10])
        found = _SEEN.get(head)
        if found is not None:
            return found
        if len(head) < cls.SIZE:
            raise ValueError(f"a virtio-net header is {cls.SIZE} bytes, got {len(head)}")
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
            _SEEN[_ZERO] = NO_OFFLOAD
        found = _SEEN[head] = cls(*cls._STRUCT.unpack(head))
        return found

    def pack(self, size: int = 10) -> bytes:
        """The 10-byte form, or the 12-byte one (``num_buffers`` 0) with ``size=12``."""
        if size not in (10, 12):
            raise ValueError("a virtio-net header is 10 or 12 bytes")
        raw = self._STRUCT.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                                self.csum_start, self.csum_offset)
        return raw + b"\0\0" if size == 12 else raw

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & VNET_F_NEEDS_CSUM)

    @property
    def is_gso(self) -> bool:
        return self.gso_type & ~GSO_ECN != GSO_NONE


def raw_is_gso(raw: bytes | bytearray | memoryview) -> bool:
    """:attr:`VnetHeader.is_gso` of a packed header, without unpacking it."""
    return raw[1] & ~GSO_ECN & 0xFF != GSO_NONE


_ZERO = bytes(VnetHeader.SIZE)
NO_OFFLOAD = VnetHeader()
"""The header of a finished, standard packet (all zero)."""
_SEEN: dict[bytes, VnetHeader] = {_ZERO: NO_OFFLOAD}
"""Headers unpacked lately, by their 10 bytes (emptied when it reaches :data:`_SEEN_MAX`)."""
_SEEN_MAX = 256
ZERO_HEADER = _ZERO
""":data:`NO_OFFLOAD` packed."""


# --------------------------------------------------------------------------
# ioctls


def ifreq(name: str, data: bytes = b"") -> bytes:
    """A ``struct ifreq``: the name, then ``data`` in the 24-byte union."""
    return struct.pack("16s24s", name.encode(), data)


def _ioctl(fd: int, request: int, arg: bytes, what: str) -> bytes:
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise os_error(exc, what) from None


def os_error(exc: OSError, what: str) -> DeviceError:
    """A :class:`DeviceError` for a failed system call, with a hint where one helps."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = {
        errno.EPERM: " (this needs CAP_NET_ADMIN / CAP_NET_RAW, or the device belongs to "
                     "another user)",
        errno.EBUSY: " (another process holds this tun/tap interface)",
        errno.EINVAL: " (for a tun/tap: the interface exists with the other mode, tun vs tap)",
        errno.ENODEV: " (no such interface in this network namespace)",
        errno.ENOENT: " (is the tun module loaded?)",
    }.get(exc.errno or 0, "")
    return DeviceError(f"{what}: {reason.lower()}{hint}")


def attach_tun(ifname: str, flags: int) -> tuple[int, str]:
    """Open ``/dev/net/tun`` and attach to (or create) interface ``ifname``.

    ``flags`` holds :data:`IFF_TUN` or :data:`IFF_TAP` and options. An
    existing persistent interface is attached to; otherwise the kernel
    creates one that goes away when the fd is closed. Returns the
    non-blocking fd and the interface's actual name.
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise os_error(exc, "/dev/net/tun") from None
    try:
        res = _ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), flags),
                     f"attaching to {ifname}")
    except BaseException:
        os.close(fd)
        raise
    return fd, res[:16].rstrip(b"\0").decode()


def set_vnet_size(fd: int, ifname: str) -> None:
    """Put the 10-byte virtio-net header in front of every packet (``IFF_VNET_HDR`` fds)."""
    _ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VnetHeader.SIZE), f"{ifname}: vnet header size")


def set_offload(fd: int, ifname: str, offloads: int) -> int:
    """Let the kernel hand over ``offloads`` unfinished (0: it finishes everything).

    With any offload, UDP segmentation (``TUN_F_USO4|6``) is added where the
    kernel knows it (6.2 and later). Returns the offloads in force.
    """
    if offloads:
        with_uso = offloads | TUN_F_USO4 | TUN_F_USO6
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, with_uso)
            return with_uso
        except OSError:
            pass
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
    except OSError as exc:
        raise os_error(exc, f"{ifname}: offloads") from None
    return offloads


def random_mac() -> bytes:
    """A random unicast, locally administered MAC address."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return bytes(raw)


def parse_mac(text: str) -> bytes:
    """``"02:00:00:00:00:01"`` -> 6 bytes (``ValueError`` otherwise)."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{text!r} is not a MAC address like 02:00:00:00:00:01")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a MAC address like 02:00:00:00:00:01") from None


def check_mac(text: str) -> None:
    """A key validator: empty (choose one) or a unicast MAC address."""
    if text and parse_mac(text)[0] & 1:
        raise ValueError(f"{text} is a multicast address")


def _rta(kind: int, data: bytes) -> bytes:
    """One rtnetlink attribute, padded to 4 bytes."""
    raw = struct.pack("HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _rtnl(msg: bytes, what: str) -> bytes:
    """Send one rtnetlink request; the first reply, or a DeviceError for an NLMSG_ERROR."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.settimeout(5)
        try:
            nl.send(msg)
            reply = nl.recv(65536)
        except OSError as exc:
            raise os_error(exc, what) from None
    if len(reply) >= 20 and struct.unpack_from("H", reply, 4)[0] == 2:  # NLMSG_ERROR
        err = -struct.unpack_from("i", reply, 16)[0]
        if err:
            raise os_error(OSError(err, os.strerror(err)), what)
    return reply


def add_route_v4(network: str, prefixlen: int, gateway: str | None, oif: int, what: str) -> None:
    """Add (or replace) an IPv4 route in the main table, out of interface index ``oif``."""
    attrs = _rta(1, socket.inet_aton(network)) + _rta(4, struct.pack("I", oif))  # DST, OIF
    scope = 253  # RT_SCOPE_LINK
    if gateway is not None:
        attrs += _rta(5, socket.inet_aton(gateway))  # RTA_GATEWAY
        scope = 0  # RT_SCOPE_UNIVERSE
    # rtmsg: family, dst_len, src_len, tos, table main, protocol static, scope, unicast
    body = struct.pack("BBBBBBBBI", socket.AF_INET, prefixlen, 0, 0, 254, 4, scope, 1, 0) + attrs
    flags = 0x1 | 0x4 | 0x400 | 0x100  # REQUEST, ACK, CREATE, REPLACE
    _rtnl(struct.pack("IHHII", 16 + len(body), 24, flags, 1, 0) + body, what)  # RTM_NEWROUTE


def route_v4(destination: str) -> tuple[str | None, int]:
    """How the kernel reaches ``destination`` now: (gateway or None when on-link, interface
    index), by ``RTM_GETROUTE`` (what ``ip route get`` asks)."""
    body = struct.pack("BBBBBBBBI", socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0)
    body += _rta(1, socket.inet_aton(destination))
    reply = _rtnl(struct.pack("IHHII", 16 + len(body), 26, 0x1, 1, 0) + body,  # RTM_GETROUTE
                  f"route to {destination}")
    length, kind = struct.unpack_from("IH", reply, 0)
    if kind != 24 or length > len(reply):
        raise DeviceError(f"route to {destination}: unexpected rtnetlink reply {kind}")
    gateway, oif, pos = None, 0, 16 + 12  # nlmsghdr, rtmsg
    while pos + 4 <= length:
        alen, atype = struct.unpack_from("HH", reply, pos)
        if alen < 4:
            break
        data = reply[pos + 4:pos + alen]
        if atype == 5 and len(data) == 4:
            gateway = socket.inet_ntoa(data)
        elif atype == 4 and len(data) == 4:
            oif = struct.unpack("I", data)[0]
        pos += (alen + 3) & ~3
    return gateway, oif


class Interface:
    """Facts about one interface, read through a socket in its namespace."""

    def __init__(self, ifname: str, sock: socket.socket | None = None) -> None:
        self.name = ifname
        self._own = sock is None
        # An AF_UNIX socket suffices: interface ioctls fall through to the
        # socket's network namespace whatever its family, with no privilege.
        self.sock = sock if sock is not None else socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def flags(self) -> int:
        res = _ioctl(self.sock.fileno(), SIOCGIFFLAGS, ifreq(self.name), self.name)
        return struct.unpack_from("H", res, 16)[0]

    def set_up(self) -> None:
        """Bring the link up (administratively) unless it is."""
        flags = self.flags()
        if not flags & IFF_UP:
            _ioctl(self.sock.fileno(), SIOCSIFFLAGS,
                   ifreq(self.name, struct.pack("H", flags | IFF_UP)), f"{self.name}: link up")

    def mtu(self) -> int:
        res = _ioctl(self.sock.fileno(), SIOCGIFMTU, ifreq(self.name), self.name)
        return struct.unpack_from("i", res, 16)[0]

    def mac(self) -> bytes:
        res = _ioctl(self.sock.fileno(), SIOCGIFHWADDR, ifreq(self.name), self.name)
        return bytes(res[18:24])

    def set_ipv4(self, address: str, netmask: str) -> None:
        """Give the interface an IPv4 address and netmask (replacing its IPv4 address; the
        kernel adds the connected route). Needs CAP_NET_ADMIN."""
        addr = struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(address))
        mask = struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(netmask))
        # address ioctls belong to the inet layer: an AF_INET socket is needed here
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _ioctl(s.fileno(), SIOCSIFADDR, ifreq(self.name, addr), f"{self.name}: set address")
            _ioctl(s.fileno(), SIOCSIFNETMASK, ifreq(self.name, mask),
                   f"{self.name}: set netmask")

    def add_route_v4(self, network: str, prefixlen: int, gateway: str | None = None) -> None:
        """Add (or replace) an IPv4 route to ``network/prefixlen`` out of this interface, via
        ``gateway`` when given, in the main table (``RTM_NEWROUTE`` over rtnetlink)."""
        add_route_v4(network, prefixlen, gateway, socket.if_nametoindex(self.name),
                     f"{self.name}: add route {network}/{prefixlen}")

    def close(self) -> None:
        if self._own:
            self.sock.close()
