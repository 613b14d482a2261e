"""Pure parts of the vm target: the cpio writer, rtnetlink messages, kernel modules order."""

from __future__ import annotations

import gzip
import ipaddress
import struct
from pathlib import Path

import pytest

from ingot import cpio, netlink
from ingot.errors import BuildError
from ingot.kernel import Kernel, modules_in_order
from ingot.rootfs import Entry, tree

ROOT = [Entry("init", "file", 0o755, b"#!/usr/bin/python3 -IS\n"),
        Entry("dev/console", "chardev", 0o600, rdev=(5, 1)),
        Entry("lib64/ld.so", "symlink", 0o777, b"../usr/lib/ld.so"),
        Entry("usr/lib/x", "file", 0o644, b"x" * 5)]


def test_cpio_round_trips_and_is_deterministic():
    entries = tree({e.path: e for e in ROOT})
    assert [e.path for e in entries] == ["dev", "dev/console", "init", "lib64", "lib64/ld.so",
                                         "usr", "usr/lib", "usr/lib/x"]
    blob = cpio.initramfs(entries)
    assert blob == cpio.initramfs(entries)
    assert blob[4:8] == b"\0\0\0\0"  # gzip time 0
    assert cpio.read(blob) == entries
    raw = gzip.decompress(blob)
    assert raw.startswith(b"070701") and raw.rstrip(b"\0").endswith(b"TRAILER!!!")
    assert len(raw) % 4 == 0


def test_cpio_members_are_owned_by_root_at_time_zero():
    raw = cpio.archive([Entry("a", "file", 0o644, b"hello")])
    fields = [int(raw[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
    ino, mode, uid, gid, nlink, mtime, size = fields[:7]
    assert (ino, uid, gid, nlink, mtime, size) == (1, 0, 0, 1, 0, 5)
    assert mode == 0o100644


def test_a_file_inside_a_file_is_refused():
    with pytest.raises(ValueError, match="not a folder"):
        tree({"a": Entry("a", "file", 0o644), "a/b": Entry("a/b", "file", 0o644)})


def test_rtnetlink_messages_have_the_kernels_layout():
    msg = netlink.add_address(3, ipaddress.ip_interface("10.0.2.15/24"), seq=7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq, pid) == (len(msg), netlink.RTM_NEWADDR, 7, 0)
    assert flags & netlink.NLM_F_ACK and flags & netlink.NLM_F_CREATE
    family, prefix, _flags, _scope, index = struct.unpack_from("=BBBBI", msg, 16)
    assert (family, prefix, index) == (2, 24, 3)
    assert msg[24:32] == struct.pack("=HH", 8, netlink.IFA_LOCAL) + bytes([10, 0, 2, 15])
    six = netlink.add_address(1, ipaddress.ip_interface("fd00::15/64"), seq=1)
    assert six[16] == 10 and six[17] == 64 and six[18] == netlink.IFA_F_NODAD
    route = netlink.add_default_route(ipaddress.ip_address("10.0.2.2"), seq=2)
    assert struct.unpack_from("=BBBBBBBBI", route, 16)[4] == netlink.RT_TABLE_MAIN
    assert route.endswith(struct.pack("=HH", 8, netlink.RTA_GATEWAY) + bytes([10, 0, 2, 2]))


def test_netlink_acks_are_found_by_sequence_number():
    def ack(seq: int, err: int) -> bytes:
        return struct.pack("=IHHII", 36, netlink.NLMSG_ERROR, 0, seq, 0) + struct.pack(
            "=i", err) + b"\0" * 16
    assert netlink.parse_ack(ack(5, 0), 5) == 0
    assert netlink.parse_ack(ack(5, -17), 5) == 17
    assert netlink.parse_ack(ack(4, 0), 5) is None
    with pytest.raises(ValueError):
        netlink.parse_ack(struct.pack("=IHHII", 3, 2, 0, 5, 0), 5)


def test_kernel_modules_come_after_their_dependencies():
    k = Kernel("debian", Path("/boot/vmlinuz"), "6.1", Path("/lib/modules/6.1"),
               dep={"virtio_net": ["k/virtio_net.ko", "k/net_failover.ko", "k/failover.ko",
                                   "k/virtio.ko"],
                    "net_failover": ["k/net_failover.ko", "k/failover.ko"],
                    "failover": ["k/failover.ko"], "virtio": ["k/virtio.ko"],
                    "virtio_rng": ["k/virtio-rng.ko", "k/virtio.ko"]},
               builtin={"af_packet"})
    order = modules_in_order(k, ["virtio-net", "virtio_rng", "af_packet"])
    assert order == ["k/failover.ko", "k/net_failover.ko", "k/virtio.ko", "k/virtio_net.ko",
                     "k/virtio-rng.ko"]
    with pytest.raises(BuildError, match="no module 'nope'"):
        modules_in_order(k, ["nope"])
    assert modules_in_order(Kernel("minimal", Path("bzImage")), ["virtio_net"]) == []
