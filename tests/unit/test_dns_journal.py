"""Zone history: serial arithmetic, differences, the bounded journal and its encoding."""

import pytest
from dnslib import QTYPE
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.dns.journal import (Change, Journal, JournalError, apply, diff, find_soa,
                                       next_serial, rr_key, serial_add, serial_cmp, serial_gt,
                                       soa_serial, with_serial)
from ingot.plugins.dns.zonefile import load_zone

ZONE = """$ORIGIN example.org.
$TTL 300
@ IN SOA ns1 hostmaster {serial} 3600 600 86400 60
@ NS ns1
ns1 A 192.0.2.1
{extra}
"""


def records(serial: int = 1, extra: str = "www A 192.0.2.10") -> list:
    """The records of a small test zone (shared by the other DNS transfer tests)."""
    return load_zone(ZONE.format(serial=serial, extra=extra), "example.org.").to_records()


def keys(rrs) -> set:
    return {(rr_key(rr), rr.ttl) for rr in rrs}


# -- serial arithmetic (RFC 1982) ---------------------------------------------

@pytest.mark.parametrize("a,b,expected", [
    (1, 2, -1), (2, 1, 1), (5, 5, 0), (0xFFFFFFFF, 0, -1), (0, 0xFFFFFFFF, 1),
    (0, 0x7FFFFFFF, -1), (0, 0x80000000, None), (0x80000000, 0, None),
    (100, 0x80000063, -1), (100, 0x80000065, 1),
])
def test_serial_comparison_follows_rfc1982(a, b, expected):
    assert serial_cmp(a, b) == expected


@given(st.integers(0, 2**32 - 1), st.integers(1, 2**31 - 1))
def test_adding_less_than_half_the_space_is_always_newer(serial, n):
    assert serial_gt(serial_add(serial, n), serial)
    assert serial_cmp(serial, serial_add(serial, n)) == -1


def test_serial_add_refuses_out_of_range_increments():
    with pytest.raises(ValueError):
        serial_add(1, 2**31)


def test_serial_policies():
    assert next_serial(7) == 8
    assert next_serial(0xFFFFFFFF) == 0
    assert next_serial(5, "unixtime", 1_700_000_000.9) == 1_700_000_000
    # a serial already ahead of the clock still moves forward
    assert next_serial(1_800_000_000, "unixtime", 1_700_000_000) == 1_800_000_001
    assert next_serial(5, "dateserial", 1_700_000_000) == 2023111400
    assert next_serial(2023111400, "dateserial", 1_700_000_000) == 2023111401
    with pytest.raises(ValueError):
        next_serial(1, "unixtime")
    with pytest.raises(ValueError):
        next_serial(1, "weekly", 0)


# -- differences ------------------------------------------------------------------

def test_diff_and_apply_between_two_versions():
    old = records(1, "www A 192.0.2.10\nmail A 192.0.2.20")
    new = records(2, "www A 192.0.2.11\nmail 600 A 192.0.2.20")
    change = diff(old, new)
    assert (change.from_serial, change.to_serial) == (1, 2)
    assert {str(rr.rdata) for rr in change.removed} == {"192.0.2.10", "192.0.2.20"}
    assert {(str(rr.rdata), rr.ttl) for rr in change.added} == {("192.0.2.11", 300),
                                                               ("192.0.2.20", 600)}
    assert keys(apply(old, change)) == keys(new)
    seq = change.sequence()
    assert seq[0].rtype == QTYPE.SOA and seq[len(change.removed) + 1].rtype == QTYPE.SOA


def test_strict_apply_refuses_a_change_for_another_version():
    old, new = records(1), records(2, "www A 192.0.2.99")
    change = diff(old, new)
    with pytest.raises(JournalError, match="serial"):
        apply(new, change)
    other = records(1, "ftp A 192.0.2.5")
    with pytest.raises(JournalError, match="does not hold"):
        apply(other, change)


def test_a_zone_version_needs_one_soa():
    with pytest.raises(JournalError, match="exactly one SOA"):
        diff(records()[1:], records())


names = st.sampled_from(["a", "b", "c.d", "www"])
addrs = st.integers(1, 6).map(lambda n: f"192.0.2.{n}")
ttls = st.sampled_from([60, 300])
version = st.lists(st.tuples(names, ttls, addrs), max_size=8)


def _zone(serial, entries):
    seen, lines = set(), []
    for name, ttl, addr in entries:
        if (name, addr) not in seen:
            seen.add((name, addr))
            lines.append(f"{name} {ttl} A {addr}")
    rrs = records(serial, "\n".join(lines))
    return rrs


@settings(max_examples=60, deadline=None)
@given(version, version)
def test_apply_of_diff_gives_the_new_version(a, b):
    old, new = _zone(1, a), _zone(2, b)
    assert keys(apply(old, diff(old, new))) == keys(new)


# -- the journal ----------------------------------------------------------------

def chain(n: int, start: int = 1) -> list[Change]:
    versions = [records(s, f"www A 192.0.2.{s % 250 + 1}") for s in range(start, start + n + 1)]
    return [diff(a, b) for a, b in zip(versions, versions[1:])]


def test_journal_answers_from_any_serial_it_holds():
    journal = Journal()
    for change in chain(4):
        journal.append(change)
    assert (journal.first_serial, journal.last_serial) == (1, 5)
    assert [c.from_serial for c in journal.since(2)] == [2, 3, 4]
    assert journal.since(5) == []
    assert journal.since(0) is None
    assert Journal().since(1) is None


def test_journal_is_bounded_by_entries_and_bytes():
    journal = Journal(max_entries=3)
    for change in chain(6):
        journal.append(change)
    assert [c.from_serial for c in journal.changes] == [4, 5, 6]
    small = Journal(max_bytes=chain(1)[0].encoded_size() * 2)
    for change in chain(6):
        small.append(change)
    assert len(small.changes) == 2 and small.last_serial == 7


def test_a_gap_resets_the_journal():
    journal = Journal()
    for change in chain(2):
        journal.append(change)
    journal.append(chain(1, start=10)[0])
    assert [c.from_serial for c in journal.changes] == [10]


def test_journal_round_trips_through_bytes():
    journal = Journal()
    for change in chain(3):
        journal.append(change)
    loaded = Journal.from_bytes(journal.to_bytes())
    assert len(loaded.changes) == 3
    for a, b in zip(journal.changes, loaded.changes):
        assert keys(a.sequence()) == keys(b.sequence())
        assert (a.from_serial, a.to_serial) == (b.from_serial, b.to_serial)
    assert Journal.from_bytes(Journal().to_bytes()).changes == []


def test_damaged_journals_are_refused():
    data = Journal(changes=chain(2)).to_bytes()
    with pytest.raises(JournalError, match="magic"):
        Journal.from_bytes(b"XXXX" + data[4:])
    with pytest.raises(JournalError, match="truncated"):
        Journal.from_bytes(data[:-3])
    with pytest.raises(JournalError, match="trailing"):
        Journal.from_bytes(data + b"\0")


@st.composite
def mutated_journal(draw) -> bytes:
    raw = bytearray(Journal(changes=chain(2)).to_bytes())
    for _ in range(draw(st.integers(1, 6))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[:draw(st.integers(0, len(raw)))])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200).map(lambda b: b"IGJ1" + b) | mutated_journal())
def test_any_bytes_load_or_raise_journal_error(data):
    try:
        Journal.from_bytes(data)
    except JournalError:
        pass


def test_with_serial_keeps_the_other_fields():
    soa = find_soa(records(1))
    bumped = with_serial(soa, 42)
    assert soa_serial(bumped) == 42 and bumped.rdata.times[1:] == soa.rdata.times[1:]
    assert bumped.rdata.mname == soa.rdata.mname and bumped.ttl == soa.ttl
