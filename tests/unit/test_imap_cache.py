"""The IMAP cache blob: ENVELOPE/BODYSTRUCTURE as served, kept in the mail store."""

from ingot.plugins.imap.selected import decode_derived, encode_derived, uid_set


def test_round_trip_keeps_every_entry_byte_for_byte():
    entries = {(1, b"E"): b'("date" "subj" NIL)', (1, b"B"): b'("text" "plain")',
               (7, b"S"): b"", (9, b"E"): b"with\nnewlines\r\n and {3}\r\nabc"}
    blob = encode_derived(42, entries)
    assert decode_derived(blob, 42) == entries


def test_another_uidvalidity_or_damage_gives_nothing():
    blob = encode_derived(42, {(1, b"E"): b"x" * 10})
    assert decode_derived(blob, 43) == {}
    assert decode_derived(blob[:-3], 42) == {}          # truncated
    assert decode_derived(b"garbage\n1 E 1\nx\n", 42) == {}
    assert decode_derived(blob.replace(b" E ", b" Q "), 42) == {}
    assert decode_derived(blob.replace(b" 10\n", b" 99\n"), 42) == {}


def test_uid_sets_for_response_codes():
    assert uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    assert uid_set([]) == ""
