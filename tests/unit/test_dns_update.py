"""Dynamic update (RFC 2136): prerequisites, updates, special cases, permissions, TSIG."""

import pytest
from dnslib import CLASS, OPCODE, QTYPE, RCODE, RD, RR, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.dns import tsig
from ingot.plugins.dns.acl import ALLOW_ALL, Acl, parse_acl
from ingot.plugins.dns.journal import apply, find_soa, rr_key, soa_serial
from ingot.plugins.dns.update import answer_update
from tests.unit.test_dns_journal import records

NOW = 1_700_000_000
ORIGIN = "example.org."
KEY = tsig.Key("upd-key", b"k" * 32)
RING = {KEY.name: KEY}
ANY, NONE = 255, 254
BASE = "www A 192.0.2.10\nwww A 192.0.2.11\nalias CNAME www\nmail MX 10 www"


def rr(text: str) -> RR:
    return RR.fromZone(text, origin=ORIGIN)[0]


def empty(name: str, rtype, rclass) -> RR:
    rtype = getattr(QTYPE, rtype) if isinstance(rtype, str) else rtype
    return RR(f"{name}.{ORIGIN}" if name != "@" else ORIGIN, rtype, rclass, 0, RD(b""))


def none_rr(text: str) -> RR:
    r = rr(text)
    return RR(r.rname, r.rtype, NONE, 0, r.rdata)


def message(prereqs=(), updates=(), zone=ORIGIN, ztype=QTYPE.SOA, msg_id=99) -> DNSRecord:
    msg = DNSRecord(DNSHeader(id=msg_id, opcode=OPCODE.UPDATE), [DNSQuestion(zone, ztype)])
    for p in prereqs:
        msg.add_answer(p)
    for u in updates:
        msg.add_auth(u)
    return msg


def run(msg, zone=None, *, acl=ALLOW_ALL, key=None, src="127.0.0.1", **kw):
    zone = records(5, BASE) if zone is None else zone
    wire = msg.pack() if isinstance(msg, DNSRecord) else msg
    mac = b""
    if key is not None:
        wire, mac = tsig.sign(wire, key, NOW)
    out = answer_update(wire, src=src, zones={ORIGIN: zone}, acl=acl, keyring=RING, now_s=NOW,
                        **kw)
    if out.reply is not None and key is None:
        reply = DNSRecord.parse(out.reply)
        assert reply.header.id == 99 and reply.header.qr and reply.header.opcode == OPCODE.UPDATE
        assert reply.header.rcode == out.rcode
    return out


def owned(out, name):
    return sorted(f"{QTYPE.get(r.rtype)} {r.rdata}" for r in out.records
                  if str(r.rname).lower() == f"{name}.{ORIGIN}")


# -- prerequisites ----------------------------------------------------------------

@pytest.mark.parametrize("prereq,rcode", [
    (empty("www", "ANY", ANY), RCODE.NOERROR),            # name is in use
    (empty("nope", "ANY", ANY), RCODE.NXDOMAIN),
    (empty("www", "A", ANY), RCODE.NOERROR),              # RRset exists (value independent)
    (empty("www", "AAAA", ANY), RCODE.NXRRSET),
    (empty("nope", "ANY", NONE), RCODE.NOERROR),          # name is not in use
    (empty("www", "ANY", NONE), RCODE.YXDOMAIN),
    (empty("www", "AAAA", NONE), RCODE.NOERROR),          # RRset does not exist
    (empty("www", "A", NONE), RCODE.YXRRSET),
])
def test_each_prerequisite_kind(prereq, rcode):
    out = run(message([prereq], [rr("new 60 A 192.0.2.50")]))
    assert out.rcode == rcode
    assert (out.records is not None) == (rcode == RCODE.NOERROR)


def test_value_dependent_prerequisite_needs_the_whole_rrset():
    both = [RR(r.rname, r.rtype, r.rclass, 0, r.rdata)
            for r in (rr("www A 192.0.2.10"), rr("www A 192.0.2.11"))]
    assert run(message(both, [rr("x 60 A 192.0.2.1")])).rcode == RCODE.NOERROR
    assert run(message(both[:1], [rr("x 60 A 192.0.2.1")])).rcode == RCODE.NXRRSET


@pytest.mark.parametrize("prereq,rcode", [
    (rr("www 5 A 192.0.2.10"), RCODE.FORMERR),           # TTL not zero
    (RR("www.example.net.", QTYPE.A, ANY, 0, RD(b"")), RCODE.NOTZONE),
    (RR(f"www.{ORIGIN}", QTYPE.A, ANY, 0, RD(b"\x01\x02\x03\x04")), RCODE.FORMERR),
    (RR(f"www.{ORIGIN}", QTYPE.A, CLASS.CH, 0, RD(b"\x01\x02\x03\x04")), RCODE.FORMERR),
])
def test_malformed_prerequisites(prereq, rcode):
    if prereq.ttl == 5:
        prereq = RR(prereq.rname, prereq.rtype, ANY, 5, RD(b""))
    assert run(message([prereq], [])).rcode == rcode


# -- updates --------------------------------------------------------------------------

def test_add_records_bumps_the_serial_and_returns_the_change():
    out = run(message([], [rr("new 60 A 192.0.2.50"), rr("new 60 TXT hello")]))
    assert out.rcode == RCODE.NOERROR and out.origin == ORIGIN
    assert owned(out, "new") == ['A 192.0.2.50', 'TXT "hello"']
    assert soa_serial(find_soa(out.records)) == 6
    assert out.change.from_serial == 5 and out.change.to_serial == 6
    assert {rr_key(r) for r in apply(records(5, BASE), out.change)} == \
        {rr_key(r) for r in out.records}


def test_serial_policy_is_applied():
    out = run(message([], [rr("new 60 A 192.0.2.50")]), serial_policy="unixtime")
    assert soa_serial(find_soa(out.records)) == NOW


def test_adding_an_existing_record_changes_only_the_ttl_of_the_rrset():
    out = run(message([], [rr("www 900 A 192.0.2.10")]))
    assert {r.ttl for r in out.records if str(r.rname) == f"www.{ORIGIN}"} == {900}
    same = run(message([], [rr("www 300 A 192.0.2.10")]))
    assert same.rcode == RCODE.NOERROR and same.records is None and same.change is None


def test_delete_rrset_all_and_single_record():
    out = run(message([], [empty("www", "A", ANY)]))
    assert owned(out, "www") == []
    out = run(message([], [empty("www", "ANY", ANY)]))
    assert owned(out, "www") == []
    out = run(message([], [none_rr("www A 192.0.2.10")]))
    assert owned(out, "www") == ["A 192.0.2.11"]
    # deleting what is not there changes nothing
    out = run(message([], [none_rr("www A 192.0.2.99")]))
    assert out.rcode == RCODE.NOERROR and out.change is None


def test_apex_soa_and_ns_survive_deletes():
    base = records(5, BASE)
    for upd in ([empty("@", "ANY", ANY)], [empty("@", "NS", ANY)], [empty("@", "SOA", ANY)],
                [none_rr("@ NS ns1.example.org.")],
                [none_rr("@ SOA ns1 hostmaster 5 3600 600 86400 60")]):
        out = run(message([], upd), base)
        kept = out.records or base
        assert any(r.rtype == QTYPE.SOA for r in kept)
        assert any(r.rtype == QTYPE.NS for r in kept)
    # with two NS, one may go
    two = run(message([], [rr("@ 300 NS ns2.example.org.")])).records
    out = run(message([], [none_rr("@ NS ns1.example.org.")]), two)
    assert [str(r.rdata) for r in out.records if r.rtype == QTYPE.NS] == ["ns2.example.org."]


def test_soa_is_replaced_only_by_a_newer_serial_at_the_apex():
    newer = rr("@ 300 SOA ns1 hostmaster 50 3600 600 86400 60")
    out = run(message([], [newer]))
    assert soa_serial(find_soa(out.records)) == 50
    older = rr("@ 300 SOA ns1 hostmaster 4 3600 600 86400 60")
    assert run(message([], [older])).change is None
    elsewhere = rr("www 300 SOA ns1 hostmaster 60 3600 600 86400 60")
    assert run(message([], [elsewhere])).change is None


def test_cname_conflicts_are_ignored():
    assert run(message([], [rr("alias 60 A 192.0.2.1")])).change is None
    assert run(message([], [rr("www 60 CNAME mail")])).change is None
    out = run(message([], [rr("alias 60 CNAME mail")]))
    assert owned(out, "alias") == ["CNAME mail.example.org."]


@pytest.mark.parametrize("update,rcode", [
    (RR("x.example.net.", QTYPE.A, CLASS.IN, 60, RD(b"\x01\x02\x03\x04")), RCODE.NOTZONE),
    (RR(f"x.{ORIGIN}", QTYPE.ANY, CLASS.IN, 60, RD(b"\x01")), RCODE.FORMERR),
    (RR(f"x.{ORIGIN}", QTYPE.A, ANY, 60, RD(b"")), RCODE.FORMERR),
    (RR(f"x.{ORIGIN}", QTYPE.AXFR, ANY, 0, RD(b"")), RCODE.FORMERR),
    (RR(f"x.{ORIGIN}", QTYPE.ANY, NONE, 0, RD(b"")), RCODE.FORMERR),
    (RR(f"x.{ORIGIN}", QTYPE.A, CLASS.CH, 60, RD(b"\x01\x02\x03\x04")), RCODE.FORMERR),
])
def test_prescan_refuses_bad_updates_and_applies_nothing(update, rcode):
    out = run(message([], [rr("ok 60 A 192.0.2.1"), update]))
    assert out.rcode == rcode and out.records is None


def test_zone_section_rules():
    assert run(message([], [], zone="example.net.")).rcode == RCODE.NOTAUTH
    assert run(message([], [], ztype=QTYPE.A)).rcode == RCODE.FORMERR
    msg = message([], [])
    msg.questions.append(DNSQuestion(ORIGIN, QTYPE.SOA))
    assert run(msg).rcode == RCODE.FORMERR


# -- permission and TSIG -----------------------------------------------------------

def test_updates_are_refused_by_default_and_need_the_acls_key():
    upd = message([], [rr("new 60 A 192.0.2.50")])
    assert run(upd, acl=Acl()).rcode == RCODE.REFUSED
    keyed = parse_acl(["key:upd-key"])
    assert run(upd, acl=keyed).rcode == RCODE.REFUSED
    # prerequisites are not evaluated for a refused request
    assert run(message([empty("nope", "ANY", ANY)], []), acl=keyed).rcode == RCODE.REFUSED
    out = run(upd, acl=keyed, key=KEY)
    assert out.rcode == RCODE.NOERROR and out.records is not None
    verified = tsig.verify(out.reply, RING, NOW, request_mac=tsig.sign(
        upd.pack(), KEY, NOW)[1])
    assert DNSRecord.parse(verified.message).header.rcode == RCODE.NOERROR


def test_bad_tsig_gets_the_tsig_error_and_changes_nothing():
    wrong = tsig.Key("upd-key", b"w" * 32)
    out = run(message([], [rr("new 60 A 192.0.2.50")]), acl=parse_acl(["key:upd-key"]), key=wrong)
    assert out.records is None and tsig.find_tsig(out.reply).error == tsig.BADSIG


def test_responses_to_non_updates_and_garbage():
    query = DNSRecord.question(ORIGIN, "SOA")
    query.header.id = 99
    assert run(query).reply is None
    out = run(b"\x00\x63\x28\x00\x00\x01")
    assert out.rcode == RCODE.FORMERR
    assert run(b"\x00").reply is None


SEED = message([empty("www", "A", ANY)], [rr("new 60 A 192.0.2.50"), none_rr("www A 192.0.2.10"),
                                          empty("mail", "ANY", ANY)]).pack()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60) | st.lists(st.tuples(st.integers(0, len(SEED) - 1),
                                                   st.integers(0, 255)), min_size=1, max_size=4)
       .map(lambda edits: bytes(_edit(SEED, edits))))
def test_any_bytes_give_an_outcome(data):
    out = answer_update(data, src="127.0.0.1", zones={ORIGIN: records(5, BASE)}, acl=ALLOW_ALL,
                        keyring=RING, now_s=NOW)
    assert out.reply is None or isinstance(out.reply, bytes)


def _edit(seed, edits):
    raw = bytearray(seed)
    for pos, val in edits:
        raw[pos] = val
    return raw
