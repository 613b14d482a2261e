"""AXFR/IXFR: the primary's answer core paired with the secondary's stream reader, no sockets.
Also: ACLs, the shared message parser, and the rule that these cores do no I/O."""

import ast
from pathlib import Path

import pytest
from dnslib import OPCODE, QTYPE, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.dns import acl as acl_mod
from ingot.plugins.dns import tsig
from ingot.plugins.dns.acl import ALLOW_ALL, Acl, AclError, parse_acl
from ingot.plugins.dns.journal import Journal, diff, find_soa, rr_key, soa_serial
from ingot.plugins.dns.xfr import (TransferReader, WireError, XfrError, ZoneView, answer_transfer,
                                   parse_message, transfer_query)
from tests.unit.test_dns_journal import records

NOW = 1_700_000_000
KEY = tsig.Key("xfr-key", b"0123456789abcdef0123456789abcdef")
RING = {KEY.name: KEY}
ORIGIN = "example.org."


def many(n: int) -> str:
    return "\n".join(f"host{i} A 192.0.2.{i % 250 + 1}" for i in range(n))


def view(serial=3, extra="www A 192.0.2.10", journal=None) -> dict:
    return {ORIGIN: ZoneView(ORIGIN, records(serial, extra), journal)}


def ask(zones, qtype=QTYPE.AXFR, *, proto="tcp", src="127.0.0.1", acl=ALLOW_ALL, key=None,
        soa=None, msg_id=7, **kw):
    query = transfer_query(ORIGIN, msg_id, soa=soa) if qtype == QTYPE.IXFR else \
        DNSRecord.question(ORIGIN, QTYPE.get(qtype))
    query.header.id = msg_id
    wire, mac = query.pack(), b""
    if key is not None:
        wire, mac = tsig.sign(wire, key, NOW)
    return answer_transfer(wire, query, proto=proto, src=src, zones=zones, acl=acl,
                           keyring=RING, now_s=NOW, **kw), mac


def read(messages, qtype=QTYPE.AXFR, client_serial=None, keyring=None, mac=b"", msg_id=7):
    reader = TransferReader(ORIGIN, msg_id, qtype, client_serial=client_serial,
                            keyring=keyring, request_mac=mac)
    result = None
    for wire in messages:
        result = reader.feed(wire, NOW)
    return result


def keys(rrs):
    return {rr_key(rr) for rr in rrs}


# -- AXFR -----------------------------------------------------------------------

def test_axfr_starts_and_ends_with_the_soa_and_carries_every_record():
    zones = view(extra=many(20))
    messages, _ = ask(zones)
    assert len(messages) == 1
    answer = DNSRecord.parse(messages[0]).rr
    assert answer[0].rtype == QTYPE.SOA and answer[-1].rtype == QTYPE.SOA
    result = read(messages)
    assert result.kind == "axfr" and result.serial == 3
    assert keys(result.records) == keys(zones[ORIGIN].records)


def test_large_axfr_is_split_into_messages_under_the_limit():
    zones = view(extra=many(400))
    messages, _ = ask(zones, max_message=2048)
    assert len(messages) > 5 and all(len(m) <= 2048 for m in messages)
    parsed = [DNSRecord.parse(m) for m in messages]
    assert parsed[0].questions and not any(p.questions for p in parsed[1:])
    assert keys(read(messages).records) == keys(zones[ORIGIN].records)
    default, _ = ask(view(extra=many(3000)))
    assert len(default) >= 2 and all(len(m) <= 65535 for m in default)


def test_signed_axfr_signs_every_message_as_a_stream():
    zones = view(extra=many(300))
    messages, mac = ask(zones, key=KEY, max_message=2048)
    assert len(messages) > 3 and all(tsig.find_tsig(m) for m in messages)
    result = read(messages, keyring=RING, mac=mac)
    assert keys(result.records) == keys(zones[ORIGIN].records)
    # a stream that is tampered with, or read with the wrong request MAC, fails
    with pytest.raises(XfrError, match="TSIG"):
        read(messages, keyring=RING, mac=b"\0" * 32)
    with pytest.raises(XfrError, match="TSIG"):
        read([messages[0], messages[2]], keyring=RING, mac=mac)


def test_axfr_over_udp_is_not_implemented():
    (reply,), _ = ask(view(), proto="udp")
    assert DNSRecord.parse(reply).header.rcode == RCODE.NOTIMP


def test_transfer_acl_zone_and_tsig_errors():
    zones = view()
    (reply,), _ = ask(zones, acl=Acl())
    assert DNSRecord.parse(reply).header.rcode == RCODE.REFUSED
    (reply,), _ = ask(zones, acl=parse_acl(["10.0.0.0/8"]))
    assert DNSRecord.parse(reply).header.rcode == RCODE.REFUSED
    keyed = parse_acl(["127.0.0.0/8 key:xfr-key"])
    (reply,), _ = ask(zones, acl=keyed)
    assert DNSRecord.parse(reply).header.rcode == RCODE.REFUSED
    messages, mac = ask(zones, acl=keyed, key=KEY)
    assert read(messages, keyring=RING, mac=mac).kind == "axfr"
    (reply,), _ = ask({}, acl=ALLOW_ALL)
    assert DNSRecord.parse(reply).header.rcode == RCODE.NOTAUTH
    stranger = tsig.Key("other", b"x" * 32)
    (reply,), _ = ask(zones, key=stranger)
    assert tsig.find_tsig(reply).error == tsig.BADKEY
    # per-zone ACLs
    (reply,), _ = ask(zones, acl={ORIGIN: Acl()})
    assert DNSRecord.parse(reply).header.rcode == RCODE.REFUSED


# -- IXFR -----------------------------------------------------------------------

def history():
    versions = [records(s, f"www A 192.0.2.{s}\nold{s} TXT v{s}") for s in (1, 2, 3)]
    journal = Journal()
    for a, b in zip(versions, versions[1:]):
        journal.append(diff(a, b))
    return versions, {ORIGIN: ZoneView(ORIGIN, versions[-1], journal)}


def test_ixfr_from_the_journal():
    versions, zones = history()
    messages, _ = ask(zones, QTYPE.IXFR, soa=find_soa(versions[0]))
    answer = DNSRecord.parse(messages[0]).rr
    assert [soa_serial(rr) for rr in answer if rr.rtype == QTYPE.SOA] == [3, 1, 2, 2, 3, 3]
    result = read(messages, QTYPE.IXFR, client_serial=1)
    assert result.kind == "ixfr" and [c.to_serial for c in result.changes] == [2, 3]


def test_ixfr_falls_back_to_axfr_when_the_journal_does_not_reach():
    versions, zones = history()
    old = records(0)
    messages, _ = ask(zones, QTYPE.IXFR, soa=find_soa(old))
    result = read(messages, QTYPE.IXFR, client_serial=0)
    assert result.kind == "axfr" and keys(result.records) == keys(versions[-1])
    no_journal = {ORIGIN: ZoneView(ORIGIN, versions[-1])}
    result = read(ask(no_journal, QTYPE.IXFR, soa=find_soa(versions[1]))[0], QTYPE.IXFR,
                  client_serial=2)
    assert result.kind == "axfr"


def test_ixfr_for_a_current_client_is_one_soa():
    versions, zones = history()
    for serial_source in (versions[2], records(9)):
        messages, _ = ask(zones, QTYPE.IXFR, soa=find_soa(serial_source))
        assert len(messages) == 1 and len(DNSRecord.parse(messages[0]).rr) == 1
        assert read(messages, QTYPE.IXFR,
                    client_serial=soa_serial(find_soa(serial_source))).kind == "current"


def test_ixfr_over_udp_answers_with_the_soa_only():
    versions, zones = history()
    (reply,), _ = ask(zones, QTYPE.IXFR, proto="udp", soa=find_soa(versions[0]))
    msg = DNSRecord.parse(reply)
    assert [rr.rtype for rr in msg.rr] == [QTYPE.SOA] and not msg.header.tc
    assert soa_serial(msg.rr[0]) == 3


def test_ixfr_without_a_client_soa_is_formerr():
    query = DNSRecord.question(ORIGIN, "IXFR")
    (reply,) = answer_transfer(query.pack(), query, proto="tcp", src="127.0.0.1",
                               zones=history()[1], acl=ALLOW_ALL, keyring={}, now_s=NOW)
    assert DNSRecord.parse(reply).header.rcode == RCODE.FORMERR


def test_signed_ixfr_verifies():
    versions, zones = history()
    messages, mac = ask(zones, QTYPE.IXFR, soa=find_soa(versions[0]), key=KEY)
    assert read(messages, QTYPE.IXFR, client_serial=1, keyring=RING, mac=mac).kind == "ixfr"


# -- the reader refuses broken streams -------------------------------------------

def test_reader_refuses_error_answers_and_wrong_ids():
    (refused,), _ = ask(view(), acl=Acl())
    with pytest.raises(XfrError) as err:
        read([refused])
    assert err.value.rcode == RCODE.REFUSED
    messages, _ = ask(view())
    with pytest.raises(XfrError, match="does not match"):
        read(messages, msg_id=8)
    with pytest.raises(XfrError, match="another question"):
        read(messages, QTYPE.IXFR)
    reader = TransferReader(ORIGIN, 7, QTYPE.AXFR)
    reader.feed(messages[0], NOW)
    with pytest.raises(XfrError, match="after the end"):
        reader.feed(messages[0], NOW)


def test_reader_needs_the_final_soa():
    messages, _ = ask(view(extra=many(50)), max_message=1024)
    reader = TransferReader(ORIGIN, 7, QTYPE.AXFR)
    assert all(reader.feed(m, NOW) is None for m in messages[:-1])
    assert not reader.done


STREAM = ask(view(extra=many(30)), max_message=700)[0]


@st.composite
def mutated_stream(draw):
    messages = list(STREAM)
    index = draw(st.integers(0, len(messages) - 1))
    raw = bytearray(messages[index])
    for _ in range(draw(st.integers(1, 4))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    messages[index] = bytes(raw[:draw(st.integers(0, len(raw)))])
    return messages


@settings(max_examples=200, deadline=None)
@given(mutated_stream())
def test_any_mutated_stream_reads_or_raises_xfr_error(messages):
    try:
        read(messages)
    except XfrError:
        pass


# -- the shared parser ---------------------------------------------------------------

def test_parse_message_keeps_empty_rdata_records():
    wire = bytes.fromhex("1234 2800 0001 0000 0001 0000") + \
        b"\x07example\x03org\x00\x00\x06\x00\x01" + \
        b"\x03www\x07example\x03org\x00\x00\x01\x00\xff\x00\x00\x00\x00\x00\x00"
    msg = parse_message(wire)
    assert msg.header.opcode == OPCODE.UPDATE and msg.auth[0].rclass == 255
    with pytest.raises(WireError):
        parse_message(wire + b"\0")


seeds = [ask(view())[0][0], DNSRecord.question("example.org.", "SOA").pack()]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | st.sampled_from(seeds).flatmap(
    lambda s: st.lists(st.tuples(st.integers(0, len(s) - 1), st.integers(0, 255)), max_size=4)
    .map(lambda edits: bytes(_edit(s, edits)))))
def test_parse_message_raises_only_wire_error(data):
    try:
        parse_message(data)
    except WireError:
        pass


def _edit(seed, edits):
    raw = bytearray(seed)
    for pos, val in edits:
        raw[pos] = val
    return raw


# -- ACLs -------------------------------------------------------------------------------

def test_acl_rules_first_match_decides_and_default_denies():
    acl = parse_acl(["deny 10.0.0.5", "10.0.0.0/8", "key:Upd.Key.", "2001:db8::/32 key:k6"])
    assert not acl.allows("10.0.0.5") and acl.allows("10.0.0.6")
    assert acl.allows("192.0.2.1", "upd.key") and not acl.allows("192.0.2.1")
    assert acl.allows("2001:db8::1", "k6.") and not acl.allows("2001:db8::1", "other")
    assert not acl.allows("not an address")
    assert not Acl().allows("127.0.0.1") and parse_acl(None) == Acl()
    assert parse_acl("any").allows("203.0.113.9")
    assert parse_acl(["key:a"]).needs_key and not parse_acl(["any"]).needs_key
    for bad in ["", "deny", "300.1.1.1", "key:"]:
        with pytest.raises(AclError):
            parse_acl([bad])


# -- purity -----------------------------------------------------------------------------

FORBIDDEN = {"socket", "asyncio", "time", "random", "os", "select", "selectors", "subprocess",
             "threading", "signal", "secrets"}
CORES = ["journal", "xfr", "notify", "secondary", "update", "acl"]


@pytest.mark.parametrize("name", CORES)
def test_transfer_cores_import_no_io_clock_or_entropy(name):
    path = Path(acl_mod.__file__).with_name(f"{name}.py")
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
