"""The Internet checksum against a slow word-by-word reference, RFC vectors,
pseudo-headers, and RFC 1624 incremental update against recomputation."""

from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import checksum as ck


def slow_sum(data: bytes) -> int:
    """RFC 1071 section 4.1, as written: add 16-bit words, fold carries."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_rfc1071_example():
    # RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to dd f2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ck.ones_sum(data) == 0xDDF2
    assert ck.checksum(data) == 0x220D


def test_ipv4_header_vector():
    # The well-known example header, checksum b861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ck.checksum(header) == 0xB861
    assert ck.verify(header[:10] + b"\xb8\x61" + header[12:])
    assert not ck.verify(header[:10] + b"\xb8\x62" + header[12:])


def test_edge_cases():
    assert ck.ones_sum(b"") == 0
    assert ck.ones_sum(b"\0" * 7) == 0
    assert ck.checksum(b"") == 0xFFFF
    assert ck.ones_sum(b"\xff\xff") == 0xFFFF
    assert ck.ones_sum(b"\xff") == 0xFF00  # odd byte padded on the right
    assert ck.ones_sum(b"\x80\x00\x80\x00") == 0x0001  # end-around carry
    assert ck.ones_sum(memoryview(b"\x00\x01\xff\xfe")) == 0xFFFF
    assert ck.ones_sum(bytearray(b"\x12\x34"), 0x0001) == 0x1235
    assert ck.add(0xFFFF, 0x0001) == 0x0001
    # Both ones' complement zeros verify.
    assert ck.verify(b"\x00\x01\xff\xfe") and ck.verify(b"\x00\x00\xff\xff")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_fast_sum_equals_reference(data, initial):
    assert ck.ones_sum(data) == slow_sum(data)
    assert ck.ones_sum(data, initial) == ck.add(slow_sum(data), initial)
    assert ck.ones_sum(memoryview(data)) == slow_sum(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b + b"\0" * (len(b) % 2)))
def test_filled_in_checksum_verifies(data):
    words = data + b"\0\0"
    filled = data + ck.checksum(words).to_bytes(2, "big")
    assert ck.verify(filled)


def test_pseudo_headers_match_their_layout():
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    assert ck.pseudo_ipv4(src, dst, 17, 20) == slow_sum(src + dst + b"\x00\x11\x00\x14")
    s6, d6 = bytes(range(16)), bytes(range(16, 32))
    layout = s6 + d6 + (20).to_bytes(4, "big") + b"\0\0\0\x3a"
    assert ck.pseudo_ipv6(s6, d6, 58, 20) == slow_sum(layout)
    assert ck.pseudo(src, dst, 6, 40) == ck.pseudo_ipv4(src, dst, 6, 40)
    assert ck.pseudo(s6, d6, 6, 40) == ck.pseudo_ipv6(s6, d6, 6, 40)


def _with_checksum(words: list[int]) -> list[int]:
    """``words`` with word 0 the checksum of the rest."""
    body = array("H", words[1:])
    body.byteswap()
    raw = body.tobytes() if words[1:] else b""
    return [ck.checksum(raw)] + words[1:]


def _raw(words: list[int]) -> bytes:
    return b"".join(w.to_bytes(2, "big") for w in words)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=30), st.data())
def test_incremental_update_equals_recompute(words, data):
    words = _with_checksum([0] + words)
    i = data.draw(st.integers(1, len(words) - 1))
    new_word = data.draw(st.integers(0, 0xFFFF))
    updated = ck.update16(words[0], words[i], new_word)
    changed = words[:i] + [new_word] + words[i + 1:]
    recomputed = _with_checksum(changed)[0]
    # RFC 1624: eqn. 3 gives the recomputed value except for all-zero data
    # (which no IP header is), where it yields the other ones' complement zero.
    if any(changed[1:]):
        assert updated == recomputed
        assert ck.verify(_raw([updated] + changed[1:]))
    # The same through the byte-run form (a 4-byte address, as NAT rewrites).
    if i + 1 < len(words):
        new_pair = [new_word, data.draw(st.integers(0, 0xFFFF))]
        via_bytes = ck.update(words[0], _raw(words[i:i + 2]), _raw(new_pair))
        changed = words[:i] + new_pair + words[i + 2:]
        if any(changed[1:]):
            assert via_bytes == _with_checksum(changed)[0]
