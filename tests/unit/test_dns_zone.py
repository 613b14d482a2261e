"""Zone files and zones: parsing, every error with its line, zone rules, lookups, round trips."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RR, DNSLabel

from ingot.plugins.dns.zone import Zone, ZoneError, name_key, rdata_wire
from ingot.plugins.dns.zonefile import ZoneFileError, load_zone, parse_name, parse_records

HEAD = """\
$ORIGIN example.com.
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 900 604800 60
  NS ns1
ns1 A 192.0.2.1
"""


def zone(extra: str = "") -> Zone:
    return load_zone(HEAD + extra, file="t.zone")


def rdata(z: Zone, name: str, rtype: str) -> list[str]:
    rrset = z.get(name, getattr(QTYPE, rtype))
    return [] if rrset is None else [rd.toZone() for rd in rrset.rdata]


def test_syntax_features():
    z = zone("""\
www 600 IN A 192.0.2.10     ; TTL then class
www IN 600 AAAA 2001:db8::10 ; class then TTL
    TXT "with space" "quote\\"d" plain \\065\\066  ; blank owner = www
mail MX 10 @
@ MX 20 mail.example.com.
multi SOA-free TXT ( "one"
   "two" )
""".replace("SOA-free ", ""))
    assert rdata(z, "www.example.com", "A") == ["192.0.2.10"]
    assert z.get("www.example.com", QTYPE.A).ttl == 600
    assert z.get("www.example.com", QTYPE.AAAA).ttl == 600
    assert z.get("www.example.com", QTYPE.TXT).rdata[0].data == [b"with space", b'quote"d',
                                                                 b"plain", b"AB"]
    assert rdata(z, "mail.example.com", "MX") == ["10 example.com."]
    assert rdata(z, "example.com", "MX") == ["20 mail.example.com."]
    assert z.get("multi.example.com", QTYPE.TXT).rdata[0].data == [b"one", b"two"]


def test_ttl_units_and_previous_ttl():
    recs = parse_records("$ORIGIN x.\na 1h30m A 192.0.2.1\nb A 192.0.2.2\n$TTL 2d\nc A 192.0.2.3\n")
    assert [rr.ttl for _, rr in recs] == [5400, 5400, 172800]


def test_origin_changes_and_relative_origin():
    recs = parse_records("$ORIGIN example.com.\n$TTL 1\n$ORIGIN sub\nwww A 192.0.2.1\n"
                         "@ A 192.0.2.2\n")
    assert [str(rr.rname) for _, rr in recs] == ["www.sub.example.com.", "sub.example.com."]


def test_at_and_relative_names_in_rdata():
    z = zone("a CNAME @\nb NS @\n_s._tcp SRV 1 2 3 @\nc PTR host\nd CNAME host.other.\n"
             "e.b A 192.0.2.9\n")
    assert rdata(z, "a.example.com", "CNAME") == ["example.com."]
    assert rdata(z, "_s._tcp.example.com", "SRV") == ["1 2 3 example.com."]
    assert rdata(z, "c.example.com", "PTR") == ["host.example.com."]
    assert rdata(z, "d.example.com", "CNAME") == ["host.other."]


def test_types():
    z = zone("""\
caa CAA 0 issue "ca.example.net"
tlsa TLSA 3 1 1 ( 0123 4567 )
ds NS ns1
ds DS 1 8 2 ABCD
key DNSKEY 257 3 8 AwEAAag=
ssh SSHFP 1 1 0123abcd
svc HTTPS 1 . alpn=h2,h3
svc SVCB 0 www
spf SPF "v=spf1 -all"
x TYPE999 \\# 3 010203
y A \\# 4 c0000201
""")
    assert rdata(z, "caa.example.com", "CAA") == ['0 issue "ca.example.net"']
    assert rdata(z, "tlsa.example.com", "TLSA") == ["3 1 1 01234567"]
    assert rdata(z, "ds.example.com", "DS") == ["1 8 2 ABCD"]
    assert rdata(z, "key.example.com", "DNSKEY") == ["257 3 8 AwEAAag="]
    assert rdata(z, "ssh.example.com", "SSHFP") == ["1 1 0123ABCD"]
    assert rdata_wire(z.get("svc.example.com", 65).rdata[0]) == bytes.fromhex(
        "0001" "00" "0001" "0006" "0268320268" "33")
    assert rdata_wire(z.get("svc.example.com", 64).rdata[0]) == (
        b"\x00\x00\x03www\x07example\x03com\x00")
    assert rdata_wire(z.get("x.example.com", 999).rdata[0]) == b"\x01\x02\x03"
    assert rdata(z, "y.example.com", "A") == ["192.0.2.1"]


def test_names_with_escapes():
    assert parse_name("a\\.b.c.", None).label == (b"a.b", b"c")
    assert parse_name("\\065x", DNSLabel("o.")).label == (b"Ax", b"o")
    assert parse_name(".", None).label == ()


ERRORS = [
    ("www A 192.0.2.300\n", 6, "bad IPv4 address"),
    ("www AAAA 1::2::3\n", 6, "bad IPv6 address"),
    ("www 300 IN\n", 6, "record without a type"),
    ("www FOO 1\n", 6, "unknown type 'FOO'"),
    ("www CH A 192.0.2.1\n", 6, "class CH is not supported"),
    ("www MX 70000 mail\n", 6, "bad MX preference"),
    ("www A\n", 6, "A needs 1 fields"),
    ('www TXT "open\n', 6, "unterminated quoted string"),
    ("www TXT ( a\n b\n", 6, "parenthesis opened here is never closed"),
    ("www A 192.0.2.1 )\n", 6, "')' without '('"),
    ("$INCLUDE other.zone\n", 6, "$INCLUDE is not supported"),
    ("$FOO x\n", 6, "unknown directive $FOO"),
    ("$TTL x\n", 6, "bad TTL"),
    ("www 9999999999 A 192.0.2.1\n", 6, "above 2^31-1"),
    ("a..b A 192.0.2.1\n", 6, "empty label"),
    (("x" * 64) + " A 192.0.2.1\n", 6, "longer than 63"),
    ("www TYPE999 01\n", 6, "needs RFC 3597 syntax"),
    ("www TYPE999 \\# 2 01\n", 6, "\\# length 2 but 1"),
    ("www A \\# 3 010203\n", 6, "not valid A RDATA"),
    ("www DS 1 8 2 XYZ\n", 6, "bad hex"),
    ("www DNSKEY 257 3 8 !!!\n", 6, "bad base64"),
    ("www TXT " + '"' + "x" * 256 + '"\n', 6, "longer than 255"),
    ("www CAA 0 is-sue x\n", 6, "bad CAA tag"),
    ("www HTTPS 1 . port=abc\n", 6, "bad SvcParams"),
    ("www.example.org. A 192.0.2.1\n", 6, "outside the zone"),
    ("www CNAME a\nwww A 192.0.2.1\n", 7, "CNAME and other data"),
    ("www CNAME a\nwww CNAME b\n", 7, "more than one CNAME"),
    ("www SOA a b 1 2 3 4 5\n", 6, "not at the apex"),
    ("@ SOA a b 2 2 3 4 5\n", 6, "a second SOA"),
    ("www DS 1 8 2 AB\n", 6, "not a delegation point"),
    ("sub NS ns\nsub MX 1 x\n", 7, "MX at the delegation point"),
    ("sub NS ns\nx.sub TXT hi\n", 7, "below the delegation point"),
    ("www OPT \\# 0\n", 6, "not a zone data type"),
]


@pytest.mark.parametrize("extra, line, reason", ERRORS)
def test_errors_name_the_line(extra, line, reason):
    with pytest.raises(ZoneFileError) as err:
        zone(extra)
    assert err.value.line == line, str(err.value)
    assert reason in err.value.reason
    assert str(err.value).startswith(f"t.zone:{line}: ")


def test_missing_soa_ns_origin():
    with pytest.raises(ZoneFileError, match=r"^z:1: no SOA"):
        load_zone("$TTL 1\nwww.example.com. A 192.0.2.1\n", file="z")
    with pytest.raises(ZoneFileError, match=r"^z:3: no NS record at the apex"):
        load_zone("$ORIGIN example.com.\n$TTL 1\n@ SOA a b 1 2 3 4 5\n", file="z")
    with pytest.raises(ZoneFileError, match=r"^z:1: relative name 'www' before any \$ORIGIN"):
        load_zone("www 1 A 192.0.2.1\n", file="z")
    with pytest.raises(ZoneFileError, match=r"^z:2: no TTL given"):
        load_zone("$ORIGIN example.com.\n@ SOA a b 1 2 3 4 5\n", file="z")
    with pytest.raises(ZoneFileError, match=r"^z:1: record without an owner"):
        load_zone("  A 192.0.2.1\n", "example.com", file="z")


def test_ents_wildcards_cuts_and_glue():
    z = zone("a.b.c A 192.0.2.5\n*.w A 192.0.2.9\nsub NS ns.sub\nns.sub A 192.0.2.53\n"
             "sub DS 1 8 2 AB\n")
    assert z.node(name_key("b.c.example.com")) == {}
    assert z.node(name_key("c.example.com")) == {}
    assert z.node(name_key("nope.example.com")) is None
    assert z.is_cut(name_key("sub.example.com"))
    found = z.find(name_key("x.y.c.example.com"))
    assert found.kind == "nx" and found.key == name_key("c.example.com") and found.node is None
    found = z.find(name_key("q.w.example.com"))
    assert found.kind == "nx" and QTYPE.A in found.node
    found = z.find(name_key("deep.ns.sub.example.com"))
    assert found.kind == "cut" and found.key == name_key("sub.example.com")
    assert z.find(name_key("a.b.c.example.com")).kind == "exact"
    assert z.get("ns.sub.example.com", QTYPE.A) is not None  # glue is held


def test_owner_lowercased_rdata_case_kept_and_duplicates_merged():
    z = zone("WWW CNAME Target.Example.COM.\nx A 192.0.2.1\nx 60 A 192.0.2.1\nx A 192.0.2.0\n")
    assert rdata(z, "www.example.com", "CNAME") == ["Target.Example.COM."]
    x = z.get("X.example.com", QTYPE.A)
    assert [rd.toZone() for rd in x.rdata] == ["192.0.2.0", "192.0.2.1"] and x.ttl == 60


def test_round_trip_and_order():
    z = zone("b A 192.0.2.2\na A 192.0.2.1\nz.a TXT hi\nsub NS ns.sub\nns.sub A 192.0.2.53\n")
    recs = z.to_records()
    assert recs[0].rtype == QTYPE.SOA
    names = [str(name) for name, _, _, _ in z.rrsets()][1:]
    assert names == ["example.com.", "a.example.com.", "z.a.example.com.", "b.example.com.",
                     "ns1.example.com.", "sub.example.com.", "ns.sub.example.com."]
    again = Zone.from_records("example.com", list(reversed(recs)))
    assert [r.toZone() for r in again.to_records()] == [r.toZone() for r in recs]
    assert len(again) == len(z) == 8 and again.serial == 1


def test_with_changes():
    z = zone("a A 192.0.2.1\n")
    soa2 = RR.fromZone("example.com. 300 IN SOA ns1.example.com. hostmaster.example.com. "
                       "2 3600 900 604800 60")[0]
    old_soa = z.to_records()[0]
    new = z.with_changes([old_soa, *RR.fromZone("a.example.com. 1 A 192.0.2.1")],
                         [soa2, *RR.fromZone("b.example.com. 5 A 192.0.2.2")])
    assert new.serial == 2 and z.serial == 1
    assert new.get("a.example.com", 1) is None and new.get("b.example.com", 1).ttl == 5
    with pytest.raises(ZoneError):
        z.with_changes([old_soa], [])


def test_from_records_errors_give_the_index():
    recs = zone().to_records() + RR.fromZone("x.example.org. 1 A 192.0.2.1")
    with pytest.raises(ZoneError) as err:
        Zone.from_records("example.com", recs)
    assert err.value.index == len(recs) - 1
