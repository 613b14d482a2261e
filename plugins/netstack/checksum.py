"""The Internet checksum (RFC 1071), pseudo-header sums, incremental update (RFC 1624).

Vocabulary: a *sum* is the 16-bit ones' complement sum of big-endian 16-bit
words (an odd trailing byte is padded with a zero byte), folded into
``0..0xFFFF`` and not complemented. A *checksum* is the complement of a sum:
what goes on the wire. Data whose checksum field is filled in correctly sums
to ``0xFFFF`` (:func:`verify`).

How it is fast in pure Python: ``int.from_bytes`` turns the whole buffer
into one integer ``N`` in C. Because ``2**16 % 0xFFFF == 1``, ``N % 0xFFFF``
equals the ones' complement sum of ``N``'s 16-bit words, except that a sum
of non-zero words that is a multiple of 0xFFFF is written 0xFFFF (ones'
complement "negative zero") while all-zero data sums to 0. That is two C
calls per buffer and no Python loop; on CPython 3.11 it ran at about
390 MB/s on 1500-byte packets (430 MB/s on 64 KiB) where summing an
``array('H')`` ran at about 100 MB/s.

None of these functions raises on any bytes-like input.
"""

from __future__ import annotations

import struct

from .buffers import Buffer

_PSEUDO4 = struct.Struct("!4s4sHH")
_PSEUDO6 = struct.Struct("!16s16sII")


def _fold(n: int) -> int:
    """``n`` (a non-negative integer made of added sums) as a sum in 0..0xFFFF."""
    if not n:
        return 0
    return n % 0xFFFF or 0xFFFF


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """The ones' complement sum of ``data``, added to the sum ``initial``."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return _fold(n + initial)


def checksum(data: Buffer, initial: int = 0) -> int:
    """The checksum to put on the wire for ``data`` (its checksum field zero),
    with the pseudo-header sum ``initial``."""
    return 0xFFFF ^ ones_sum(data, initial)


def verify(data: Buffer, initial: int = 0) -> bool:
    """Whether ``data``, checksum field included, checks out (with the
    pseudo-header sum ``initial``). Both ones' complement zeros (0x0000 and
    0xFFFF) are accepted in the checksum field."""
    return ones_sum(data, initial) == 0xFFFF


def add(*sums: int) -> int:
    """The ones' complement sum of several sums."""
    return _fold(sum(sums))


def pseudo_ipv4(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The sum of the IPv4 pseudo-header (RFC 768/793): addresses, zero,
    protocol, upper-layer length."""
    return ones_sum(_PSEUDO4.pack(src, dst, proto, length))


def pseudo_ipv6(src: bytes, dst: bytes, next_header: int, length: int) -> int:
    """The sum of the IPv6 pseudo-header (RFC 8200 section 8.1): addresses,
    32-bit upper-layer length, three zero bytes, next header."""
    return ones_sum(_PSEUDO6.pack(src, dst, length, next_header))


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """:func:`pseudo_ipv4` or :func:`pseudo_ipv6`, chosen by the address
    length (4 or 16 bytes)."""
    if len(src) == 4:
        return pseudo_ipv4(src, dst, proto, length)
    return pseudo_ipv6(src, dst, proto, length)


def update16(old_checksum: int, old_word: int, new_word: int) -> int:
    """The checksum after one 16-bit word changed from ``old_word`` to
    ``new_word``: RFC 1624 eqn. 3, ``HC' = ~(~HC + ~m + m')``."""
    return 0xFFFF ^ _fold((0xFFFF ^ old_checksum) + (0xFFFF ^ old_word) + new_word)


def update(old_checksum: int, old: Buffer, new: Buffer) -> int:
    """The checksum after the bytes ``old`` were replaced by ``new``
    (same even length, at an even offset: e.g. an address rewritten by NAT).
    RFC 1624 eqn. 3 over the sums of both runs."""
    return 0xFFFF ^ _fold((0xFFFF ^ old_checksum) + (0xFFFF ^ ones_sum(old)) + ones_sum(new))
