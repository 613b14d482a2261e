"""The server core through handle(): answers, errors, EDNS, truncation, dispatch, fast path."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

from dnslib import EDNS0, QTYPE, RR, DNSHeader, DNSQuestion, DNSRecord, EDNSOption
from hypothesis import given, settings
from hypothesis import strategies as st

import ingot.plugins.dns.server as server_mod
from ingot.plugins.dns.server import (BADVERS, FORMERR, NOTIMP, NXDOMAIN, REFUSED, SERVFAIL,
                                      Outgoing, ServerState, error_reply, handle)
from ingot.plugins.dns.zonefile import load_zone

ZONE = """\
$ORIGIN example.com.
$TTL 300
@       SOA ns1 hostmaster 7 3600 900 604800 120
        NS  ns1
        MX  10 mail
ns1     A   192.0.2.1
mail    A   192.0.2.25
        AAAA 2001:db8::25
www     A   192.0.2.10
        AAAA 2001:db8::10
alias   CNAME www
chain   CNAME alias
ext     CNAME www.example.net.
other   CNAME host.example.org.
loop1   CNAME loop2
loop2   CNAME loop1
dangling CNAME nothere
*.wild  A   192.0.2.99
*.wc    CNAME www
x.*.ent A   192.0.2.7
a.b.c   A   192.0.2.5
sub     NS  ns.sub
sub     NS  ns.elsewhere.net.
sub     DS  1 8 2 ABCDEF
ns.sub  A   192.0.2.53
"""
ZONE += "".join(f'big TXT "record {i:03} with some padding to make it longer than needed"\n'
                for i in range(40))
ZONE2 = """\
$ORIGIN example.org.
$TTL 60
@ SOA ns1.example.com. hostmaster.example.com. 1 2 3 4 30
  NS ns1.example.com.
host A 198.51.100.1
"""
STATE = ServerState.create([load_zone(ZONE), load_zone(ZONE2)])


def ask(name: str, qtype: str = "A", *, proto: str = "udp", payload: int | None = None,
        rd: bool = False, state: ServerState = STATE, edns: EDNS0 | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    q.header.rd = int(rd)
    if payload is not None:
        q.add_ar(EDNS0(udp_len=payload))
    if edns is not None:
        q.add_ar(edns)
    _, replies, notes = handle(state, 0, proto, ("192.0.2.200", 5353), q.pack())
    assert len(replies) == 1 and notes == []
    reply = DNSRecord.parse(replies[0])
    assert reply.header.id == q.header.id and reply.header.qr
    assert not reply.header.ra and not reply.header.ad
    return reply


def rrs(section) -> list[str]:
    return [f"{rr.rname} {QTYPE[rr.rtype]} {rr.rdata.toZone()}" for rr in section
            if rr.rtype != QTYPE.OPT]


def test_positive_answer():
    r = ask("www.example.com", rd=True)
    assert r.header.aa and r.header.rd and r.header.rcode == 0
    assert rrs(r.rr) == ["www.example.com. A 192.0.2.10"] and not r.auth


def test_nxdomain_and_nodata_carry_soa_with_negative_ttl():
    for name, qtype, rcode in [("nope.example.com", "A", NXDOMAIN),
                               ("www.example.com", "TXT", 0), ("c.example.com", "A", 0),
                               ("b.c.example.com", "MX", 0)]:
        r = ask(name, qtype)
        assert r.header.rcode == rcode and r.header.aa and not r.rr
        assert [(rr.rtype, rr.ttl) for rr in r.auth] == [(QTYPE.SOA, 120)]


def test_cname_chains():
    r = ask("chain.example.com", "AAAA")
    assert rrs(r.rr) == ["chain.example.com. CNAME alias.example.com.",
                         "alias.example.com. CNAME www.example.com.",
                         "www.example.com. AAAA 2001:db8::10"]
    assert rrs(ask("ext.example.com").rr) == ["ext.example.com. CNAME www.example.net."]
    r = ask("other.example.com")  # into another zone served here
    assert rrs(r.rr) == ["other.example.com. CNAME host.example.org.",
                         "host.example.org. A 198.51.100.1"]
    r = ask("dangling.example.com")
    assert r.header.rcode == NXDOMAIN and len(r.rr) == 1 and r.auth[0].rtype == QTYPE.SOA
    assert len(ask("loop1.example.com").rr) == 2
    assert rrs(ask("alias.example.com", "CNAME").rr) == [
        "alias.example.com. CNAME www.example.com."]


def test_wildcards():
    assert rrs(ask("q.wild.example.com").rr) == ["q.wild.example.com. A 192.0.2.99"]
    assert rrs(ask("a.b.wild.example.com").rr) == ["a.b.wild.example.com. A 192.0.2.99"]
    r = ask("q.wild.example.com", "MX")
    assert r.header.rcode == 0 and not r.rr and r.auth[0].rtype == QTYPE.SOA
    assert ask("wild.example.com").header.rcode == 0  # an empty non-terminal
    r = ask("z.wc.example.com")
    assert rrs(r.rr) == ["z.wc.example.com. CNAME www.example.com.",
                         "www.example.com. A 192.0.2.10"]
    r = ask("q.ent.example.com")  # wildcard that is itself an empty non-terminal
    assert r.header.rcode == 0 and not r.rr


def test_referral_and_ds_at_the_cut():
    r = ask("host.sub.example.com")
    assert not r.header.aa and r.header.rcode == 0 and not r.rr
    assert sorted(rrs(r.auth)) == ["sub.example.com. NS ns.elsewhere.net.",
                                   "sub.example.com. NS ns.sub.example.com."]
    assert rrs(r.ar) == ["ns.sub.example.com. A 192.0.2.53"]
    assert not ask("sub.example.com", "NS").header.aa
    r = ask("sub.example.com", "DS")
    assert r.header.aa and rrs(r.rr) == ["sub.example.com. DS 1 8 2 ABCDEF"]


def test_additional_for_mx():
    r = ask("example.com", "MX")
    assert sorted(rrs(r.ar)) == ["mail.example.com. A 192.0.2.25",
                                 "mail.example.com. AAAA 2001:db8::25"]


def test_refused_outside_zones_and_other_classes():
    assert ask("example.net").header.rcode == REFUSED
    q = DNSRecord.question("www.example.com", "A", "CH")
    _, [reply], _ = handle(STATE, 0, "udp", ("::1", 1), q.pack())
    assert DNSRecord.parse(reply).header.rcode == REFUSED


def test_any_is_one_rrset():
    r = ask("www.example.com", "ANY")
    assert len({rr.rtype for rr in r.rr}) == 1
    assert rrs(ask("alias.example.com", "ANY").rr) == ["alias.example.com. CNAME www.example.com."]


def test_case_kept_in_question():
    r = ask("WwW.ExAmple.COM")
    assert str(r.q.qname) == "WwW.ExAmple.COM."
    assert r.rr[0].rdata.toZone() == "192.0.2.10"


def test_edns():
    r = ask("www.example.com", payload=4096)
    opt = [rr for rr in r.ar if rr.rtype == QTYPE.OPT]
    assert len(opt) == 1 and opt[0].rclass == 1232 and opt[0].ttl == 0 and not opt[0].rdata
    r = ask("www.example.com", edns=EDNS0(udp_len=1232, flags="do"))
    assert r.ar[-1].ttl & 0x8000
    r = ask("www.example.com", edns=EDNS0(udp_len=1232, version=1))
    assert r.ar[-1].ttl >> 24 == BADVERS >> 4 and r.header.rcode == 0 and not r.rr
    r = ask("www.example.com", edns=EDNS0(udp_len=1232, opts=[EDNSOption(10, b"12345678")]))
    assert rrs(r.rr) == ["www.example.com. A 192.0.2.10"] and not r.ar[-1].rdata
    assert ask("www.example.com").ar == []


def test_truncation():
    r = ask("big.example.com", "TXT")
    assert r.header.tc and not r.rr and not r.auth and r.q.qname == "big.example.com"
    r = ask("big.example.com", "TXT", payload=100)  # floor of 512
    assert r.header.tc and len(handle(STATE, 0, "udp", ("::1", 1), DNSRecord.question(
        "big.example.com", "TXT").pack())[1][0]) <= 512
    r = ask("big.example.com", "TXT", payload=65000)
    assert r.header.tc  # never above 1232 over UDP
    r = ask("big.example.com", "TXT", proto="tcp")
    assert not r.header.tc and len(r.rr) == 40


def raw(data: bytes, state: ServerState = STATE) -> list[bytes]:
    _, replies, _ = handle(state, 0, "udp", ("::1", 1), data)
    return replies


def rcode(reply: bytes) -> int:
    return reply[3] & 0xF


HDR = struct.Struct("!HHHHHH")
QWWW = b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"


def test_malformed():
    assert raw(b"") == [] and raw(b"\x12\x34\x01") == []
    assert raw(HDR.pack(1, 0x8000, 1, 0, 0, 0) + QWWW) == []  # a response: dropped
    for bad in [HDR.pack(1, 0, 0, 0, 0, 0), HDR.pack(1, 0, 2, 0, 0, 0) + QWWW * 2,
                HDR.pack(1, 0, 1, 0, 0, 0) + QWWW[:-2], HDR.pack(1, 0, 1, 0, 0, 0) + QWWW + b"x",
                HDR.pack(1, 0, 1, 0, 0, 1) + QWWW, HDR.pack(1, 0, 1, 0, 0, 0) + b"\xc0\x0c" +
                QWWW[-4:],
                HDR.pack(1, 0, 1, 0, 0, 0) + QWWW.replace(b"\x00\x00\x01", b"\x00\x00\x29")]:
        [reply] = raw(bad)
        assert reply[:2] == b"\x00\x01" and reply[2] & 0x80 and rcode(reply) == FORMERR, bad


def test_opcodes_and_handlers():
    status = HDR.pack(9, 2 << 11, 1, 0, 0, 0) + QWWW
    [reply] = raw(status)
    assert rcode(reply) == NOTIMP and (reply[2] >> 3) & 0xF == 2
    notify = HDR.pack(9, 4 << 11, 1, 0, 0, 0) + QWWW
    assert rcode(raw(notify)[0]) == NOTIMP
    seen = []

    def on_notify(state, now, proto, src, data, query):
        seen.append((now, proto, src, query.opcode, query.qkey))
        return state.with_ext("notified", True), [error_reply(query, 0)], [
            Outgoing("udp", ("192.0.2.9", 53), b"x")]
    state = STATE.with_handler(4, on_notify)
    new, replies, notes = handle(state, 42, "udp", ("::1", 1), notify)
    assert seen == [(42, "udp", ("::1", 1), 4, (b"www", b"example", b"com"))]
    assert new.ext["notified"] and notes == [Outgoing("udp", ("192.0.2.9", 53), b"x")]
    assert rcode(replies[0]) == 0 and replies[0][:2] == b"\x00\x09"

    def broken(*args):
        raise RuntimeError("bug")
    assert rcode(raw(notify, STATE.with_handler(4, broken))[0]) == SERVFAIL


def test_xfr_dispatch():
    axfr = DNSRecord.question("example.com", "AXFR").pack()
    assert rcode(raw(axfr)[0]) == REFUSED
    got = []
    state = STATE.with_xfr_handler(lambda s, n, p, a, d, q: (got.append(q.qtype), (s, [b"a", b"b"],
                                                                                 []))[1])
    assert raw(axfr, state) == [b"a", b"b"] and got == [252]


def test_state_changes_replace_and_drop_cache():
    handle(STATE, 0, "udp", ("::1", 1), DNSRecord.question("www.example.com").pack())
    assert STATE.cache
    zone = load_zone(ZONE.replace("192.0.2.10", "192.0.2.11"))
    new = STATE.with_zone(zone)
    assert new.cache == {} and STATE.zone("example.com") is not zone
    assert rrs(ask("www.example.com", state=new).rr) == ["www.example.com. A 192.0.2.11"]
    assert ask("host.example.org", state=new.without_zone("example.org")).header.rcode == REFUSED


NAMES = ["www", "alias", "chain", "nope", "q.wild", "b.c", "c", "host.sub", "sub", "big", "x.ent",
         "example.net.", "mail", "loop1", "other"]


@st.composite
def queries(draw):
    base = draw(st.sampled_from(NAMES))
    name = base if base.endswith(".") else base + ".example.com."
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    qtype = draw(st.sampled_from(["A", "AAAA", "MX", "TXT", "NS", "DS", "CNAME", "ANY", "SOA"]))
    q = DNSRecord(DNSHeader(id=draw(st.integers(0, 65535))),
                  q=DNSQuestion(name, getattr(QTYPE, qtype)))
    q.header.rd = int(draw(st.booleans()))
    q.header.cd = int(draw(st.booleans()))
    payload = draw(st.sampled_from([None, 512, 1232, 4096]))
    if payload is not None:
        q.add_ar(EDNS0(udp_len=payload, flags="do" if draw(st.booleans()) else "",
                       opts=[EDNSOption(10, b"abcdefgh")] if draw(st.booleans()) else []))
    return q.pack(), draw(st.sampled_from(["udp", "tcp"]))


@settings(max_examples=300, deadline=None)
@given(queries(), st.booleans())
def test_fast_path_gives_the_same_bytes(query, prime_other_case):
    data, proto = query
    fresh = ServerState.create(STATE.zones.values())
    _, [slow], _ = handle(fresh, 0, proto, ("::1", 1), data)  # miss: built and stored
    assert fresh.cache
    warm = ServerState.create(STATE.zones.values())
    if prime_other_case:  # prime with the same question in lower case and another ID
        other = bytearray(data)
        other[0:2] = b"\xff\xfe"
        end = 12 + other[12:].index(0)
        other[12:end] = bytes(other[12:end]).lower()
        handle(warm, 0, proto, ("::1", 1), bytes(other))
    else:
        handle(warm, 0, proto, ("::1", 1), data)
    _, [fast], _ = handle(warm, 0, proto, ("::1", 1), data)
    assert fast == slow
    # and the same as a path that never caches (an extra option keeps it off the fast path)
    rec = DNSRecord.parse(data)
    if rec.ar:
        rec.ar[0].rdata.append(EDNSOption(3, b""))
        _, [uncached], _ = handle(ServerState.create(STATE.zones.values()), 0, proto, ("::1", 1),
                                  rec.pack())
        assert uncached == slow


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data):
    for reply in raw(data):
        assert reply[2] & 0x80 and rcode(reply) != SERVFAIL
        assert reply[:2] == data[:2]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_queries_never_raise(d):
    data, proto = d.draw(queries())
    raw_ = bytearray(data)
    for _ in range(d.draw(st.integers(1, 4))):
        raw_[d.draw(st.integers(0, len(raw_) - 1))] = d.draw(st.integers(0, 255))
    cut = d.draw(st.integers(0, len(raw_)))
    for blob in (bytes(raw_), bytes(raw_[:cut])):
        _, replies, _ = handle(STATE, 0, proto, ("::1", 1), blob)
        for reply in replies:
            assert reply[2] & 0x80 and rcode(reply) != SERVFAIL


def test_core_modules_do_no_io():
    for mod in ("zone", "zonefile", "server", "query"):
        tree = ast.parse((Path(server_mod.__file__).parent / f"{mod}.py").read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"socket", "asyncio", "time", "random", "os", "selectors"}, mod


def test_records_round_trip_through_a_reply():
    r = ask("example.com", "SOA")
    assert isinstance(r.rr[0], RR) and r.rr[0].rdata.times[0] == 7


# -- TSIG-signed queries (RFC 8945) ----------------------------------------------

def _signed_state():
    from ingot.plugins.dns import tsig, xfr
    key = tsig.parse_key("sig-key:" + "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
    return key, STATE.with_ext(xfr.EXT, xfr.TransferConfig(keyring=tsig.keyring([key])))


def test_signed_query_gets_a_signed_answer_and_skips_the_cache():
    from ingot.plugins.dns import tsig
    key, state = _signed_state()
    now = 1_700_000_000
    for _ in range(2):  # the second time a cached unsigned reply would be at hand
        q = DNSRecord.question("www.example.com", "A")
        handle(state, now * 10**9, "udp", ("192.0.2.200", 5353), q.pack())  # fill the cache
        wire, mac = tsig.sign(q.pack(), key, now)
        _, replies, _ = handle(state, now * 10**9, "udp", ("192.0.2.200", 5353), wire)
        assert len(replies) == 1
        verified = tsig.verify(replies[0], key, now, request_mac=mac)
        r = DNSRecord.parse(verified.message)
        assert r.header.aa and r.header.rcode == 0 and rrs(r.rr) == ["www.example.com. A 192.0.2.10"]


def test_signed_query_failures_answer_notauth_with_the_tsig_error():
    from ingot.plugins.dns import tsig
    key, state = _signed_state()
    now = 1_700_000_000
    q = DNSRecord.question("www.example.com", "SOA").pack()
    other = tsig.parse_key("other-key:" + "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
    wrong = tsig.parse_key("sig-key:" + "b3RoZXJvdGhlcm90aGVyb3RoZXJvdGhlcg==")
    cases = [(tsig.sign(q, other, now)[0], tsig.BADKEY), (tsig.sign(q, wrong, now)[0], tsig.BADSIG),
             (tsig.sign(q, key, now - 1000)[0], tsig.BADTIME)]
    for wire, error in cases:
        _, replies, _ = handle(state, now * 10**9, "udp", ("192.0.2.200", 5353), wire)
        assert len(replies) == 1
        r = DNSRecord.parse(replies[0])
        assert r.header.rcode == 9 and not r.rr  # NOTAUTH
        assert tsig.find_tsig(replies[0]).error == error


def test_a_malformed_tsig_record_is_formerr_not_servfail():
    # the OPT record's type turned into TSIG (250), its class is then not ANY
    raw = (b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03www\x07example\x03com\x00"
           b"\x00\x01\x00\x01\x00\x00\xfa\x02\x00\x00\x00\x00\x00\x00\x00")
    _, replies, _ = handle(STATE, 0, "udp", ("::1", 1), raw)
    assert [rcode(r) for r in replies] == [FORMERR]
