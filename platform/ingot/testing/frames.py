"""Hand-built Ethernet, ARP, IPv4, ICMP, UDP and TCP for device tests.

Deliberately plain (``struct`` and a word-by-word checksum) so that tests of
code that builds or completes packets have an independent oracle. Addresses
are text (``"10.200.0.1"``, ``"02:00:00:00:00:01"``) or bytes.
"""

from __future__ import annotations

import socket
import struct

BROADCAST = b"\xff" * 6
ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17


def mac(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else bytes.fromhex(text.replace(":", ""))


def ip4(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else socket.inet_aton(text)


def inet_checksum(data: bytes) -> int:
    """RFC 1071, one 16-bit word at a time."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: str | bytes, src: str | bytes, ethertype: int, payload: bytes) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", ethertype) + payload


def arp(op: int, sender_mac: str | bytes, sender_ip: str, target_mac: str | bytes,
        target_ip: str) -> bytes:
    """An ARP packet for IPv4 over Ethernet (op 1 request, 2 reply)."""
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_IPV4, 6, 4, op, mac(sender_mac),
                       ip4(sender_ip), mac(target_mac), ip4(target_ip))


def arp_request(src_mac: str | bytes, src_ip: str, target_ip: str) -> bytes:
    """A whole broadcast frame asking who has ``target_ip``."""
    return ethernet(BROADCAST, src_mac, ETH_ARP,
                    arp(1, src_mac, src_ip, bytes(6), target_ip))


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64,
         ident: int = 1, df: bool = True) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident,
                         0x4000 if df else 0, ttl, proto, 0, ip4(src), ip4(dst))
    header = header[:10] + struct.pack("!H", inet_checksum(header)) + header[12:]
    return header + payload


def icmp_echo(ident: int, seq: int, data: bytes = b"ingot", *, reply: bool = False) -> bytes:
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + data
    return body[:2] + struct.pack("!H", inet_checksum(body)) + body[4:]


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    return ip4(src) + ip4(dst) + struct.pack("!xBH", proto, length)


def udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """A UDP datagram (header + data) with its checksum, for an IPv4 payload."""
    body = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = inet_checksum(pseudo_header(src, dst, PROTO_UDP, len(body)) + body) or 0xFFFF
    return body[:6] + struct.pack("!H", c) + body[8:]


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, data: bytes = b"", *,
        ack: int = 0, flags: int = 0x18, window: int = 65535) -> bytes:
    """A TCP segment (20-byte header + data) with its checksum, for an IPv4 payload."""
    body = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0) + data
    c = inet_checksum(pseudo_header(src, dst, PROTO_TCP, len(body)) + body)
    return body[:16] + struct.pack("!H", c) + body[18:]


def l4_checksum_ok(packet: bytes) -> bool:
    """Whether the TCP/UDP/ICMP checksum of an IPv4 packet (no options needed) is right."""
    ihl = (packet[0] & 15) * 4
    proto = packet[9]
    body = packet[ihl:struct.unpack("!H", packet[2:4])[0]]
    if proto == PROTO_ICMP:
        return inet_checksum(body) == 0
    src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
    return inet_checksum(pseudo_header(src, dst, proto, len(body)) + body) == 0


def ipv4_header_ok(packet: bytes) -> bool:
    return inet_checksum(packet[:(packet[0] & 15) * 4]) == 0
