"""SPF, DKIM, DMARC and Authentication-Results against an in-memory resolver
built on the stub resolver's own Answer/Record classes: no network.

Signatures made here are also checked by dkimpy's plain ``dkim.verify`` with
a dict for DNS (the independent peer); Authentication-Results headers are
read back with ``authres.parse``.
"""

from __future__ import annotations

import asyncio

import authres
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ingot.plugins.dns.stub import NOERROR, NXDOMAIN, Answer, Record, ResolveError, type_code
from ingot.plugins.smtp import authcheck
from ingot.plugins.smtp.authcheck import (DkimResult, DkimSignError, DmarcResult, SpfResult,
                                          authentication_results, check_dmarc, check_spf,
                                          dkim_public_txt, dkim_sign, from_domain,
                                          organizational_domain, parse_dmarc, verify_dkim)



def txt(text: str | bytes) -> tuple[bytes, ...]:
    """One TXT record, split into strings of at most 255 bytes."""
    data = text.encode() if isinstance(text, str) else text
    return tuple(data[i:i + 255] for i in range(0, len(data), 255)) or (b"",)


class FakeResolver:
    """``records``: ``(name, type) -> [value, ...]`` as stub.Record values;
    ``failing``: questions that raise ResolveError. Every answer yields to
    the loop first, so concurrent checks interleave."""

    def __init__(self, records: dict[tuple[str, str], list[object]],
                 failing: set[tuple[str, str]] = frozenset()) -> None:
        self.records = {(n.lower(), t.upper()): v for (n, t), v in records.items()}
        self.failing = failing
        self.asked: list[tuple[str, str]] = []

    async def resolve(self, name: str, rtype: int | str = "A", timeout_s: float = 5.0) -> Answer:
        await asyncio.sleep(0)
        rtype = rtype if isinstance(rtype, str) else str(rtype)
        key = (name.lower().rstrip("."), rtype.upper())
        self.asked.append(key)
        code = type_code(key[1])
        if key in self.failing:
            raise ResolveError(name, code, "every upstream timed out")
        if key in self.records:
            rrs = tuple(Record(key[0], code, 300, v) for v in self.records[key])
            return Answer(key[0], code, NOERROR, rrs, 300, canonical=key[0])
        exists = any(n == key[0] for n, _ in self.records)
        return Answer(key[0], code, NOERROR if exists else NXDOMAIN, (), 0, canonical=key[0])


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------
# SPF

SPF_ZONE: dict[tuple[str, str], list[object]] = {
    ("pass.test", "TXT"): [txt("v=spf1 ip4:192.0.2.0/24 -all"), txt("google-site-verification=x")],
    ("soft.test", "TXT"): [txt("v=spf1 ip4:192.0.2.0/24 ~all")],
    ("neutral.test", "TXT"): [txt("v=spf1 ?all")],
    ("nospf.test", "TXT"): [txt("some other record")],
    ("syntax.test", "TXT"): [txt("v=spf1 frobnicate:bar -all")],
    ("inc.test", "TXT"): [txt("v=spf1 include:_spf.provider.test -all")],
    ("_spf.provider.test", "TXT"): [txt("v=spf1 ip4:203.0.113.0/24 ip6:2001:db8:1::/48 -all")],
    ("a.test", "TXT"): [txt("v=spf1 a:host.a.test a -all")],
    ("host.a.test", "A"): ["198.51.100.7"],
    ("a.test", "A"): ["198.51.100.8"],
    ("mx.test", "TXT"): [txt("v=spf1 mx -all")],
    ("mx.test", "MX"): [(10, "mx1.mx.test"), (20, "mx2.mx.test")],
    ("mx1.mx.test", "A"): ["198.51.100.20"],
    ("mx2.mx.test", "A"): ["198.51.100.21"],
    ("mx2.mx.test", "AAAA"): ["2001:db8:2::21"],
    ("six.test", "TXT"): [txt("v=spf1 ip6:2001:db8::/32 -all")],
    ("red.test", "TXT"): [txt("v=spf1 redirect=pass.test")],
    ("exp.test", "TXT"): [txt("v=spf1 ip4:192.0.2.0/24 -all exp=why.exp.test")],
    ("why.exp.test", "TXT"): [txt("%{d} does not send from %{i}")],
    ("helo.pass.test", "TXT"): [txt("v=spf1 ip4:192.0.2.99 -all")],
    ("down.test", "A"): ["192.0.2.1"],
    ("many.test", "TXT"): [txt("v=spf1 " + " ".join(f"include:i{n}.many.test" for n in range(11))
                               + " -all")],
    **{(f"i{n}.many.test", "TXT"): [txt("v=spf1 ip4:10.0.0.1 -all")] for n in range(11)},
}
SPF_FAILING = {("down.test", "TXT")}


def spf_check(ip: str, mail_from: str, helo: str = "client.example") -> SpfResult:
    return run(check_spf(FakeResolver(SPF_ZONE, SPF_FAILING), ip, mail_from, helo))


@pytest.mark.parametrize("ip, sender, result", [
    ("192.0.2.5", "a@pass.test", "pass"),
    ("198.51.100.1", "a@pass.test", "fail"),
    ("198.51.100.1", "a@soft.test", "softfail"),
    ("198.51.100.1", "a@neutral.test", "neutral"),
    ("198.51.100.1", "a@nospf.test", "none"),
    ("198.51.100.1", "a@nxdomain.test", "none"),
    ("192.0.2.5", "a@syntax.test", "permerror"),
    ("192.0.2.5", "a@down.test", "temperror"),
    ("203.0.113.9", "a@inc.test", "pass"),
    ("2001:db8:1::5", "a@inc.test", "pass"),
    ("192.0.2.5", "a@inc.test", "fail"),
    ("198.51.100.7", "a@a.test", "pass"),
    ("198.51.100.8", "a@a.test", "pass"),
    ("198.51.100.9", "a@a.test", "fail"),
    ("198.51.100.21", "a@mx.test", "pass"),
    ("2001:db8:2::21", "a@mx.test", "pass"),
    ("198.51.100.22", "a@mx.test", "fail"),
    ("2001:db8:ff::1", "a@six.test", "pass"),
    ("2001:db9::1", "a@six.test", "fail"),
    ("192.0.2.5", "a@red.test", "pass"),
    ("198.51.100.1", "a@red.test", "fail"),
    ("192.0.2.200", "a@many.test", "permerror"),
])
def test_spf_results(ip, sender, result):
    got = spf_check(ip, sender)
    assert got.result == result, got
    assert got.domain == sender.split("@")[1]
    assert got.identity == "mailfrom"


def test_spf_lookup_limit_is_named():
    got = spf_check("192.0.2.200", "a@many.test")
    assert "lookups" in got.explanation.lower()


def test_spf_explanation_from_exp_modifier():
    got = spf_check("198.51.100.1", "a@exp.test")
    assert (got.result, got.explanation) == ("fail", "exp.test does not send from 198.51.100.1")


def test_spf_null_sender_checks_helo():
    got = spf_check("192.0.2.99", "", helo="helo.pass.test")
    assert (got.result, got.domain, got.identity) == ("pass", "helo.pass.test", "helo")
    assert spf_check("192.0.2.5", "<>", helo="helo.pass.test").result == "fail"


def test_spf_angle_brackets_and_bad_domains():
    assert spf_check("192.0.2.5", "<a@pass.test>").result == "pass"
    assert spf_check("192.0.2.5", "a@localhost").result == "none"
    assert spf_check("192.0.2.5", "", helo="[192.0.2.5]").result == "none"
    assert spf_check("192.0.2.5", "a@bad..name").result == "none"


def test_spf_bad_client_address_does_not_raise():
    assert spf_check("not-an-ip", "a@pass.test").result == "permerror"


def test_spf_resolver_answers_from_per_check_cache():
    resolver = FakeResolver(SPF_ZONE)
    assert run(check_spf(resolver, "198.51.100.21", "a@mx.test", "h.example")).result == "pass"
    assert len(resolver.asked) == len(set(resolver.asked))  # each question asked once


def test_spf_rounds_are_bounded(monkeypatch):
    monkeypatch.setattr(authcheck, "MAX_ROUNDS", 2)
    assert spf_check("203.0.113.9", "a@inc.test").result == "temperror"


def test_spf_concurrent_checks_do_not_mix_caches():
    one = FakeResolver({("same.test", "TXT"): [txt("v=spf1 ip4:192.0.2.0/24 -all")]})
    two = FakeResolver({("same.test", "TXT"): [txt("v=spf1 include:other.test -all")],
                        ("other.test", "TXT"): [txt("v=spf1 ip4:198.51.100.0/24 -all")]})

    async def both():
        return await asyncio.gather(
            check_spf(one, "192.0.2.1", "a@same.test", "h"),
            check_spf(two, "192.0.2.1", "a@same.test", "h"),
            check_spf(one, "198.51.100.1", "a@same.test", "h"),
            check_spf(two, "198.51.100.1", "a@same.test", "h"))

    assert [r.result for r in run(both())] == ["pass", "fail", "fail", "pass"]


# --------------------------------------------------------------------------
# DKIM

MESSAGE = (b"From: Alice <alice@example.com>\r\n"
           b"To: Bob <bob@example.org>\r\n"
           b"Subject: greetings\r\n"
           b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
           b"Message-ID: <1@example.com>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"\r\n"
           b"Hello Bob,\r\n\r\nthis is signed.\r\n")


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ed_pem() -> bytes:
    return _pem(ed25519.Ed25519PrivateKey.generate())


def key_zone(**selectors: bytes) -> dict[tuple[str, str], list[object]]:
    return {(f"{sel}._domainkey.example.com", "TXT"): [txt(dkim_public_txt(pem))]
            for sel, pem in selectors.items()}


def plain_dnsfunc(zone):
    """DNS for dkimpy's own verifier: the peer, sharing no code with authcheck."""
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        records = zone.get((name.decode().rstrip(".").lower(), "TXT"))
        return b"".join(records[0]) if records else None
    return dnsfunc


def sign(pem: bytes, message: bytes = MESSAGE, selector: str = "sel") -> bytes:
    return dkim_sign(message, domain="example.com", selector=selector,
                     private_key_pem=pem) + message


def test_dkim_rsa_sign_then_verify(rsa_pem):
    signed = sign(rsa_pem)
    assert signed.startswith(b"DKIM-Signature: ")
    header = signed.split(b"\r\n\r\n")[0]
    assert b"a=rsa-sha256" in header and b"c=relaxed/relaxed" in header
    zone = key_zone(sel=rsa_pem)
    [result] = run(verify_dkim(FakeResolver(zone), signed))
    assert (result.result, result.domain, result.selector) == ("pass", "example.com", "sel")
    assert len(result.header_b) == 8
    # the independent peer agrees
    assert dkim.verify(signed, dnsfunc=plain_dnsfunc(zone))


def test_dkim_signed_header_list(rsa_pem):
    sig = dkim_sign(MESSAGE, domain="example.com", selector="sel", private_key_pem=rsa_pem)
    unfolded = b"".join(sig.split(b"\r\n"))
    h = next(t for t in unfolded.replace(b" ", b"").replace(b"\t", b"").split(b";")
             if t.startswith(b"h="))[2:].split(b":")
    assert h == [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
                 b"content-type", b"from"]
    assert all(len(line) <= 78 for line in sig.split(b"\r\n"))


def test_dkim_oversigned_from_rejects_added_from(rsa_pem):
    signed = sign(rsa_pem)
    forged = b"From: Mallory <m@example.com>\r\n" + signed
    zone = key_zone(sel=rsa_pem)
    assert run(verify_dkim(FakeResolver(zone), forged))[0].result == "fail"
    assert not dkim.verify(forged, dnsfunc=plain_dnsfunc(zone))


def test_dkim_ed25519_sign_then_verify(ed_pem):
    signed = sign(ed_pem, selector="ed")
    assert b"a=ed25519-sha256" in signed.split(b"\r\n\r\n")[0]
    zone = key_zone(ed=ed_pem)
    [result] = run(verify_dkim(FakeResolver(zone), signed))
    assert (result.result, result.selector) == ("pass", "ed")
    assert dkim.verify(signed, dnsfunc=plain_dnsfunc(zone))


def test_dkim_public_txt(rsa_pem, ed_pem):
    assert dkim_public_txt(rsa_pem).startswith("v=DKIM1; k=rsa; p=MIIB")
    assert dkim_public_txt(ed_pem).startswith("v=DKIM1; k=ed25519; p=")


def test_dkim_body_tampered_fails(rsa_pem):
    signed = sign(rsa_pem).replace(b"this is signed", b"this is forged")
    [result] = run(verify_dkim(FakeResolver(key_zone(sel=rsa_pem)), signed))
    assert result.result == "fail" and "body hash" in result.reason


def test_dkim_header_tampered_fails(rsa_pem):
    signed = sign(rsa_pem).replace(b"Subject: greetings", b"Subject: send money")
    [result] = run(verify_dkim(FakeResolver(key_zone(sel=rsa_pem)), signed))
    assert result.result == "fail"


def test_dkim_relaxed_survives_whitespace_changes(rsa_pem):
    signed = sign(rsa_pem).replace(b"Subject: greetings", b"subject:   greetings  ")
    [result] = run(verify_dkim(FakeResolver(key_zone(sel=rsa_pem)), signed))
    assert result.result == "pass"


def test_dkim_missing_key_is_permerror(rsa_pem):
    [result] = run(verify_dkim(FakeResolver({}), sign(rsa_pem)))
    assert (result.result, result.domain, result.selector) == ("permerror", "example.com", "sel")


def test_dkim_revoked_key_is_permerror(rsa_pem):
    zone = {("sel._domainkey.example.com", "TXT"): [txt("v=DKIM1; k=rsa; p=")]}
    [result] = run(verify_dkim(FakeResolver(zone), sign(rsa_pem)))
    assert result.result == "permerror"


def test_dkim_key_lookup_failure_is_temperror(rsa_pem):
    resolver = FakeResolver({}, failing={("sel._domainkey.example.com", "TXT")})
    [result] = run(verify_dkim(resolver, sign(rsa_pem)))
    assert result.result == "temperror"


def test_dkim_two_signatures(rsa_pem, ed_pem):
    other = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    signed = sign(rsa_pem, sign(other, selector="second"))
    results = run(verify_dkim(FakeResolver(key_zone(sel=rsa_pem, second=other)), signed))
    assert [(r.result, r.selector) for r in results] == [("pass", "sel"), ("pass", "second")]
    results = run(verify_dkim(FakeResolver(key_zone(sel=rsa_pem)), signed))
    assert [(r.result, r.selector) for r in results] == [("pass", "sel"),
                                                         ("permerror", "second")]


def test_dkim_unsigned_message_gives_no_results():
    assert run(verify_dkim(FakeResolver({}), MESSAGE)) == []


@pytest.mark.parametrize("message", [
    b"DKIM-Signature: garbage\r\n" + MESSAGE,
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=!!; b=??\r\n" + MESSAGE,
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AA==; b=AA==;"
    b" c=weird/thing\r\n" + MESSAGE,
    b"DKIM-Signature: v=2; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AA==; b=AA==\r\n"
    + MESSAGE,
])
def test_dkim_malformed_signature_is_an_error_result(message):
    results = run(verify_dkim(FakeResolver({}), message))
    assert len(results) == 1 and results[0].result in ("permerror", "neutral")


@pytest.mark.parametrize("garbage", [b"", b"\x00\xff\xfe", b"no headers at all",
                                     b"DKIM-Signature\r\n\r\n", b"\r\n\r\n\r\n",
                                     b"DKIM-Signature: v=1;\r\n bad\x00\r\n\r\nx"])
def test_dkim_garbage_never_raises(garbage):
    results = run(verify_dkim(FakeResolver({}), garbage))
    assert all(r.result in ("permerror", "neutral", "fail") for r in results)


def test_dkim_sign_refuses_bad_input(rsa_pem):
    with pytest.raises(DkimSignError):
        dkim_sign(b"To: x@example.org\r\n\r\nbody\r\n", domain="example.com", selector="s",
                  private_key_pem=rsa_pem)
    with pytest.raises(DkimSignError):
        dkim_sign(MESSAGE, domain="example.com", selector="s", private_key_pem=b"not a key")


def test_dkim_concurrent_verifications_do_not_mix_caches(rsa_pem):
    other = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    signed = sign(rsa_pem)
    right, wrong = FakeResolver(key_zone(sel=rsa_pem)), FakeResolver(key_zone(sel=other))

    async def both():
        return await asyncio.gather(verify_dkim(right, signed), verify_dkim(wrong, signed),
                                    verify_dkim(right, signed))

    assert [r[0].result for r in run(both())] == ["pass", "fail", "pass"]


# --------------------------------------------------------------------------
# DMARC

DMARC_ZONE = {
    ("_dmarc.example.com", "TXT"): [
        txt("v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com")],
    ("_dmarc.strict.test", "TXT"): [txt("v=DMARC1; p=quarantine; adkim=s; aspf=s")],
    ("_dmarc.bad.test", "TXT"): [txt("v=DMARC1; p=bogus")],
    ("_dmarc.norua.test", "TXT"): [txt("v=DMARC1; sp=reject")],
    ("_dmarc.rua.test", "TXT"): [txt("v=DMARC1; rua=mailto:x@rua.test")],
    ("_dmarc.notfirst.test", "TXT"): [txt("p=reject; v=DMARC1")],
    ("_dmarc.two.test", "TXT"): [txt("v=DMARC1; p=reject"), txt("v=DMARC1; p=none")],
    ("_dmarc.pct.test", "TXT"): [txt("v=DMARC1; p=reject; pct=20; future=tag")],
    ("_dmarc.other.test", "TXT"): [txt("not dmarc"), txt("v=DMARC1; p=none")],
}
NO_SPF = SpfResult("fail", "elsewhere.test")


def dmarc(domain, spf=NO_SPF, dkim_results=(), **kw) -> DmarcResult:
    resolver = FakeResolver(DMARC_ZONE, failing={("_dmarc.down.test", "TXT")})
    return run(check_dmarc(resolver, domain, spf, list(dkim_results), **kw))


def test_dmarc_pass_via_spf_alignment():
    got = dmarc("example.com", SpfResult("pass", "bounces.example.com"))
    assert (got.result, got.policy, got.disposition) == ("pass", "reject", "none")


def test_dmarc_pass_via_dkim_alignment():
    got = dmarc("example.com", NO_SPF, [DkimResult("fail", "example.com", "a"),
                                        DkimResult("pass", "mail.example.com", "b")])
    assert got.result == "pass"


def test_dmarc_fail_with_reject():
    got = dmarc("example.com", SpfResult("pass", "elsewhere.test"),
                [DkimResult("pass", "elsewhere.test", "s"), DkimResult("fail", "example.com", "s")])
    assert (got.result, got.policy, got.disposition, got.domain) == (
        "fail", "reject", "reject", "example.com")


def test_dmarc_strict_alignment():
    assert dmarc("strict.test", SpfResult("pass", "strict.test")).result == "pass"
    assert dmarc("strict.test", SpfResult("pass", "mail.strict.test")).result == "fail"
    assert dmarc("strict.test", NO_SPF, [DkimResult("pass", "a.strict.test", "s")]).result == "fail"
    # relaxed (the default) accepts the subdomain
    assert dmarc("example.com", NO_SPF, [DkimResult("pass", "a.example.com", "s")]).result == "pass"


def test_dmarc_org_domain_fallback_uses_sp():
    got = dmarc("news.example.com")
    assert (got.result, got.policy, got.disposition, got.domain) == (
        "fail", "quarantine", "quarantine", "news.example.com")
    assert dmarc("news.example.com", SpfResult("pass", "example.com")).result == "pass"


def test_dmarc_no_record_is_none():
    assert dmarc("nodmarc.test") == DmarcResult("none", None, "nodmarc.test", "none")
    assert dmarc("notfirst.test").result == "none"
    assert dmarc("two.test").result == "none"
    assert dmarc("other.test").policy == "none"


def test_dmarc_errors():
    assert dmarc("bad.test").result == "permerror"
    assert dmarc("norua.test").result == "permerror"
    assert dmarc("rua.test").policy == "none"  # RFC 7489 6.6.3 step 6
    assert dmarc("down.test").result == "temperror"
    assert dmarc(None).result == "permerror"


def test_dmarc_pct_sampling():
    assert dmarc("pct.test", roll=5).disposition == "reject"
    assert dmarc("pct.test", roll=50).disposition == "quarantine"


def test_parse_dmarc_defaults():
    record = parse_dmarc("v=DMARC1;p=none;adkim=x;pct=abc")
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct) == (
        "none", None, "r", "r", 100)
    with pytest.raises(ValueError):
        parse_dmarc("v=DMARC1; p")


def test_organizational_domain():
    assert organizational_domain("a.b.Example.COM.") == "example.com"
    assert organizational_domain("example.com") == "example.com"


@pytest.mark.parametrize("message, domain", [
    (MESSAGE, "example.com"),
    (b"From: x@Sub.Example.org\r\n\r\n", "sub.example.org"),
    (b"From: a@x.test, b@y.test\r\n\r\n", None),
    (b"From: a@x.test\r\nFrom: b@y.test\r\n\r\n", None),
    (b"To: a@x.test\r\n\r\n", None),
    (b"From: undisclosed\r\n\r\n", None),
    (b"\xff\xfe\x00", None),
])
def test_from_domain(message, domain):
    assert from_domain(message) == domain


# --------------------------------------------------------------------------
# Authentication-Results


def test_authentication_results_parse_back():
    spf = SpfResult("pass", "example.com")
    dkim_results = [DkimResult("pass", "example.com", "sel", header_b="abcdEFGH"),
                    DkimResult("fail", "other.test", "s2", 'body hash "mismatch"', "12345678")]
    dm = DmarcResult("pass", "reject", "example.com", "none")
    value = authentication_results("mx.ingot.test", spf, dkim_results, dm, helo="client.test",
                                   mail_from="bounce@example.com", from_domain="example.com")
    header = "Authentication-Results: " + value
    assert all(len(line) <= 78 for line in header.split("\r\n"))
    parsed = authres.parse(header)
    assert parsed.authserv_id == "mx.ingot.test"
    got = [(r.method, r.result, {f"{p.type}.{p.name}": p.value for p in r.properties})
           for r in parsed.results]
    assert got == [
        ("spf", "pass", {"smtp.mailfrom": "bounce@example.com"}),
        ("dkim", "pass", {"header.d": "example.com", "header.s": "sel", "header.b": "abcdEFGH"}),
        ("dkim", "fail", {"header.d": "other.test", "header.s": "s2", "header.b": "12345678"}),
        ("dmarc", "pass", {"header.from": "example.com"}),
    ]
    assert parsed.results[2].reason == "body hash 'mismatch'"


def test_authentication_results_null_sender_and_none():
    value = authentication_results("mx.test", SpfResult("none", "h.test", identity="helo"), [],
                                   DmarcResult("none", None, "x.test"), helo="h.test",
                                   mail_from="", from_domain="x.test")
    parsed = authres.parse("Authentication-Results: " + value)
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "none"), ("dkim", "none"), ("dmarc", "none")]
    assert parsed.results[0].properties[0].name == "helo"


def test_authentication_results_hostile_values_stay_one_header():
    value = authentication_results(
        "mx.test", SpfResult("fail", "x.test"),
        [DkimResult("permerror", "", "", "bad\r\nInjected: yes " + "x" * 2000)], None,
        helo="h", mail_from='"odd; local\r\npart"@x.test', from_domain=None)
    assert "\r\nInjected" not in value
    for line in value.split("\r\n"):
        assert len(line) < 998
        assert line == value.split("\r\n")[0] or line.startswith("\t")
    authres.parse("Authentication-Results: " + value)


def test_authcheck_imports_no_sockets():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(authcheck))
    names = {a.name.split(".")[0] for node in ast.walk(tree)
             if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
    modules = {node.module.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module}
    assert not ({"socket", "time", "random"} & (names | modules))
