"""TSIG (RFC 8945): signing, verifying, error answers and streams, checked
against a second, plain implementation written here from the RFC's layout."""

from __future__ import annotations

import ast
import base64
import hmac
from pathlib import Path

import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.dns import tsig
from ingot.plugins.dns.tsig import (BADKEY, BADSIG, BADTIME, BADTRUNC, FORMERR, NOTAUTH, Key,
                                    StreamSigner, StreamVerifier, TsigError)

SECRET = bytes(range(32))
KEY = Key("tsig-key.example.", SECRET)
NOW = 1_700_000_000
HASHES = {"hmac-md5": "md5", "hmac-sha1": "sha1", "hmac-sha224": "sha224",
          "hmac-sha256": "sha256", "hmac-sha384": "sha384", "hmac-sha512": "sha512"}
WIRE_ALG = {"hmac-md5": "hmac-md5.sig-alg.reg.int"}


# --------------------------------------------------------------------------
# the second implementation: one step per line of RFC 8945 §4.2 and §4.3


def plain_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += len(label).to_bytes(1, "big") + label.encode()
    return out + b"\x00"


def plain_mac(secret: bytes, alg: str, key_name: str, message: bytes, time_signed: int,
              fudge: int, *, error: int = 0, other: bytes = b"", prior: bytes = b"",
              timers_only: bool = False) -> bytes:
    data = b""
    if prior:
        data += len(prior).to_bytes(2, "big") + prior
    data += message
    if not timers_only:
        data += plain_name(key_name.lower())
        data += (255).to_bytes(2, "big")       # class ANY
        data += (0).to_bytes(4, "big")         # TTL
        data += plain_name(WIRE_ALG.get(alg, alg))
    data += time_signed.to_bytes(6, "big")
    data += fudge.to_bytes(2, "big")
    if not timers_only:
        data += error.to_bytes(2, "big")
        data += len(other).to_bytes(2, "big") + other
    return hmac.new(secret, data, HASHES[alg]).digest()


def plain_sign(message: bytes, secret: bytes, alg: str, key_name: str, time_signed: int,
               fudge: int = 300, *, mac_size: int | None = None, wire_key_name: str | None = None,
               **kw) -> tuple[bytes, bytes]:
    mac = plain_mac(secret, alg, key_name, message, time_signed, fudge, **kw)
    mac = mac[:mac_size] if mac_size else mac
    other = kw.get("other", b"")
    rdata = (plain_name(WIRE_ALG.get(alg, alg)) + time_signed.to_bytes(6, "big")
             + fudge.to_bytes(2, "big") + len(mac).to_bytes(2, "big") + mac
             + message[:2] + kw.get("error", 0).to_bytes(2, "big")
             + len(other).to_bytes(2, "big") + other)
    rr = (plain_name(wire_key_name or key_name) + (250).to_bytes(2, "big") + (255).to_bytes(2, "big")
          + (0).to_bytes(4, "big") + len(rdata).to_bytes(2, "big") + rdata)
    arcount = int.from_bytes(message[10:12], "big") + 1
    return message[:10] + arcount.to_bytes(2, "big") + message[12:] + rr, mac


def query(name="www.example.com", qtype="A", qid=0x1234) -> bytes:
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = qid
    return q.pack()


def answer(request: bytes, *rrs: str) -> bytes:
    reply = dnslib.DNSRecord.parse(request).reply()
    for rr in rrs:
        reply.add_answer(*dnslib.RR.fromZone(rr))
    return reply.pack()


def fails(wire, keys, now=NOW, **kw) -> TsigError:
    with pytest.raises(TsigError) as info:
        tsig.verify(wire, keys, now, **kw)
    return info.value


# --------------------------------------------------------------------------
# keys


def test_key_text_forms():
    b64 = base64.b64encode(SECRET).decode()
    k = tsig.parse_key(f"hmac-sha512:Xfr.Key.:{b64}")
    assert (k.name, k.algorithm, k.secret) == ("xfr.key", "hmac-sha512", SECRET)
    assert tsig.parse_key(f"xfr.key:{b64}").algorithm == "hmac-sha256"
    assert tsig.parse_key(f"hmac-md5:old:{b64}").algorithm == "hmac-md5.sig-alg.reg.int"
    assert tsig.parse_key(k.text()) == k
    assert tsig.parse_key(f"hmac-md5:old:{b64}").text().startswith("hmac-md5:old:")
    for bad in ("nocolon", f"hmac-sha999:k:{b64}", "k:not base64!", f"a:b:c:{b64}", f":{b64}"):
        with pytest.raises(ValueError):
            tsig.parse_key(bad)


def test_key_file():
    text = f'''key "xfr-key" {{
        algorithm hmac-sha256;
        secret "{base64.b64encode(SECRET).decode()}";
    }};
    key other {{ secret "{base64.b64encode(b'x' * 20).decode()}"; algorithm hmac-sha1; }};'''
    keys = tsig.parse_key_file(text)
    assert [(k.name, k.algorithm) for k in keys] == [("xfr-key", "hmac-sha256"),
                                                      ("other", "hmac-sha1")]
    assert keys[0].secret == SECRET


# --------------------------------------------------------------------------
# known vectors


def test_pinned_vector():
    """A fixed query signed at a fixed time: the MAC both implementations give."""
    message = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    signed, mac = tsig.sign(message, KEY, NOW)
    plain_signed, plain = plain_sign(message, SECRET, "hmac-sha256", "tsig-key.example", NOW)
    assert (signed, mac) == (plain_signed, plain)
    assert mac.hex() == "b4e96721e23b68b55a79bb3f80c17f9d36712ac94700f1a3115a6dedf9fb68ba"


@pytest.mark.parametrize("alg", sorted(HASHES))
def test_each_algorithm_both_ways(alg):
    key = Key("k.example", SECRET, alg)
    message = query(qid=7)
    signed, mac = tsig.sign(message, key, NOW, fudge=60)
    assert (signed, mac) == plain_sign(message, SECRET, alg, "k.example", NOW, 60)
    v = tsig.verify(signed, [key], NOW + 60)
    assert (v.key, v.mac, v.original_id, v.fudge, v.message) == (key, mac, 7, 60, message)
    # a response, over the request MAC
    response = answer(message, "www.example.com. 60 IN A 192.0.2.1")
    rsigned, rmac = tsig.sign(response, key, NOW + 1, request_mac=mac)
    assert (rsigned, rmac) == plain_sign(response, SECRET, alg, "k.example", NOW + 1, prior=mac)
    assert tsig.verify(rsigned, key, NOW, request_mac=mac).mac == rmac


@settings(max_examples=60, deadline=None)
@given(qid=st.integers(0, 0xFFFF), time_signed=st.integers(0, 2**48 - 1),
       fudge=st.integers(0, 0xFFFF), error=st.sampled_from([0, 16, 17, 18]),
       other=st.binary(max_size=8), prior=st.binary(max_size=64), timers=st.booleans(),
       name=st.from_regex(r"[A-Za-z0-9-]{1,12}(\.[A-Za-z0-9-]{1,12}){0,3}", fullmatch=True))
def test_sign_agrees_with_the_plain_implementation(qid, time_signed, fudge, error, other, prior,
                                                    timers, name):
    key = Key(name, SECRET)
    message = query(qid=qid)
    signed, mac = tsig.sign(message, key, time_signed, fudge=fudge, error=error, other=other,
                            request_mac=prior, timers_only=timers)
    assert mac == plain_mac(SECRET, "hmac-sha256", name, message, time_signed, fudge,
                            error=error, other=other, prior=prior, timers_only=timers)
    # the verifier takes what the plain implementation signed (with the name as written)
    plain, _ = plain_sign(message, SECRET, "hmac-sha256", name.lower(), time_signed, fudge,
                          prior=prior, wire_key_name=name)
    v = tsig.verify(plain, {key.name: key}, time_signed, request_mac=prior)
    assert v.original_id == qid and v.message == message


def test_original_id_is_what_is_signed():
    """A forwarder may change the ID; the MAC covers the original one."""
    signed, _ = tsig.sign(query(qid=0xBEEF), KEY, NOW)
    moved = b"\x00\x01" + signed[2:]
    v = tsig.verify(moved, KEY, NOW)
    assert v.original_id == 0xBEEF and v.message[:2] == b"\xbe\xef"


def test_uppercase_key_name_on_the_wire():
    message = query()
    signed, _ = plain_sign(message, SECRET, "hmac-sha256", "tsig-key.example", NOW,
                           wire_key_name="TSIG-Key.EXAMPLE")
    assert tsig.verify(signed, KEY, NOW).key == KEY


# --------------------------------------------------------------------------
# failures


def test_bad_key():
    signed, _ = tsig.sign(query(), KEY, NOW)
    e = fails(signed, [Key("another", SECRET)])
    assert (e.rcode, e.tsig_error) == (NOTAUTH, BADKEY)
    e = fails(signed, [Key("tsig-key.example", SECRET, "hmac-sha1")])
    assert (e.rcode, e.tsig_error) == (NOTAUTH, BADKEY) and "hmac-sha1" in e.reason


def test_bad_signature_anywhere():
    signed, _ = tsig.sign(query(), KEY, NOW)
    tsig_at = len(query())
    for i in list(range(2, tsig_at)) + [len(signed) - 9]:  # header, question, original ID
        if i in (10, 11):  # ARCOUNT: then the TSIG is not where the count says
            continue
        tampered = bytearray(signed)
        tampered[i] ^= 0x20 if i >= 12 else 0x01
        try:
            tsig.verify(bytes(tampered), KEY, NOW)
        except TsigError as e:
            assert e.tsig_error in (BADSIG, 0), i
        else:
            raise AssertionError(f"byte {i} changed and still verified")
    e = fails(signed, Key("tsig-key.example", b"another secret"))
    assert (e.rcode, e.tsig_error) == (NOTAUTH, BADSIG)


def test_case_change_in_question_is_bad_signature():
    """The message is MACed as sent: 0x20 case changes are not canonicalised."""
    signed, _ = tsig.sign(query("www.example.com"), KEY, NOW)
    tampered = signed.replace(b"www", b"WWW")
    assert fails(tampered, KEY).tsig_error == BADSIG


def test_time_is_checked_after_the_signature():
    signed, _ = tsig.sign(query(), KEY, NOW, fudge=10)
    assert tsig.verify(signed, KEY, NOW - 10).time_signed == NOW
    e = fails(signed, KEY, NOW + 11)
    assert (e.rcode, e.tsig_error) == (NOTAUTH, BADTIME)
    wrong, _ = tsig.sign(query(), Key(KEY.name, b"nope"), NOW, fudge=10)
    assert fails(wrong, KEY, NOW + 1000).tsig_error == BADSIG


def test_mac_truncation_rules():
    message = query()
    short, _ = plain_sign(message, SECRET, "hmac-sha256", KEY.name, NOW, mac_size=16)
    v = tsig.verify(short, KEY, NOW)
    assert v.truncated and len(v.mac) == 16
    strict = Key(KEY.name, SECRET, min_mac_size=32)
    e = fails(short, strict)
    assert (e.rcode, e.tsig_error) == (NOTAUTH, BADTRUNC)
    for size in (15, 9):  # under half of SHA-256, under 10 octets
        too_short, _ = plain_sign(message, SECRET, "hmac-sha256", KEY.name, NOW, mac_size=size)
        e = fails(too_short, KEY)
        assert (e.rcode, e.tsig_error) == (FORMERR, 0)
    md5 = Key("m", SECRET, "hmac-md5")
    ten, _ = plain_sign(message, SECRET, "hmac-md5", "m", NOW, mac_size=10)
    assert tsig.verify(ten, md5, NOW).truncated
    # longer than the hash
    long_mac, _ = plain_sign(message, SECRET, "hmac-sha512", KEY.name, NOW)
    e = fails(long_mac.replace(b"hmac-sha512", b"hmac-sha256"), KEY)
    assert e.rcode == FORMERR


def test_tsig_must_be_last_and_alone():
    signed, _ = tsig.sign(query(), KEY, NOW)
    twice, _ = tsig.sign(signed, KEY, NOW)
    assert fails(twice, KEY).rcode == FORMERR
    record = signed[len(query()):]
    # a TSIG in the answer section
    msg = bytearray(query())
    msg[7] = 1
    assert fails(bytes(msg) + record, KEY).rcode == FORMERR
    assert fails(query(), KEY).tsig_error == BADSIG  # unsigned
    assert fails(signed[:-1], KEY).rcode == FORMERR  # cut short
    assert fails(b"\x00" * 5, KEY).rcode == FORMERR


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_tsig_error(data):
    with pytest.raises(TsigError):
        tsig.verify(data, KEY, NOW)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_mutated_signed_messages_only_raise_tsig_error(pos, value):
    signed, _ = tsig.sign(query(), KEY, NOW)
    data = bytearray(signed)
    data[pos % len(data)] = value
    try:
        tsig.verify(bytes(data), KEY, NOW)
    except TsigError as e:
        if e.record is not None:
            tsig.error_response(bytes(data), e, NOW)


# --------------------------------------------------------------------------
# error answers (RFC 8945 §5.3.2)


def test_badkey_answer_is_unsigned():
    request, mac = tsig.sign(query(), Key("unknown", SECRET), NOW)
    err = fails(request, KEY)
    reply = tsig.error_response(request, err, NOW)
    parsed = dnslib.DNSRecord.parse(reply)
    assert parsed.header.qr and parsed.header.rcode == NOTAUTH and parsed.header.id == 0x1234
    assert str(parsed.q.qname) == "www.example.com."
    record = tsig.find_tsig(reply)
    assert (record.key_name, record.mac, record.error) == ("unknown", b"", BADKEY)
    # the client sees the error the server reported
    e = fails(reply, Key("unknown", SECRET), request_mac=mac)
    assert e.tsig_error == BADKEY


def test_badsig_answer_is_unsigned():
    request, mac = tsig.sign(query(), Key(KEY.name, b"wrong"), NOW)
    reply = tsig.error_response(request, fails(request, KEY), NOW)
    assert tsig.find_tsig(reply).mac == b"" and tsig.find_tsig(reply).error == BADSIG


def test_badtime_answer_is_signed_with_server_time():
    request, mac = tsig.sign(query(), KEY, NOW)
    err = fails(request, KEY, NOW + 1000)
    reply = tsig.error_response(request, err, NOW + 1000)
    record = tsig.find_tsig(reply)
    assert record.error == BADTIME and record.time_signed == NOW
    assert int.from_bytes(record.other, "big") == NOW + 1000
    assert record.mac == plain_mac(SECRET, "hmac-sha256", KEY.name, reply[:record.offset][:10]
                                   + b"\x00\x00" + reply[12:record.offset], NOW, 300,
                                   error=BADTIME, other=record.other, prior=mac)
    e = fails(reply, KEY, NOW, request_mac=mac)  # signed correctly, carrying BADTIME
    assert e.tsig_error == BADTIME and e.key == KEY


def test_formerr_answer_has_no_tsig():
    signed, _ = tsig.sign(query(), KEY, NOW)
    twice, _ = tsig.sign(signed, KEY, NOW)
    reply = tsig.error_response(twice, fails(twice, KEY), NOW)
    parsed = dnslib.DNSRecord.parse(reply)
    assert parsed.header.rcode == FORMERR and not parsed.ar
    assert tsig.error_response(b"\x01", TsigError(FORMERR, 0, "short"), NOW) is None


# --------------------------------------------------------------------------
# streams


def stream_messages(n):
    request = query("example.com", "AXFR")
    return request, [answer(request, f"r{i}.example.com. 60 IN A 192.0.2.{i}") for i in range(n)]


@pytest.mark.parametrize("every", [1, 3])
def test_stream_round_trip(every):
    request, parts = stream_messages(7)
    signed_request, request_mac = tsig.sign(request, KEY, NOW)
    signer = StreamSigner(KEY, request_mac, every=every)
    sent = [signer.sign(m, NOW + i, last=i == len(parts) - 1) for i, m in enumerate(parts)]
    verifier = StreamVerifier([KEY], request_mac)
    results = [verifier.feed(m, NOW) for m in sent]
    verifier.finish()
    assert results[0] is not None and results[-1] is not None
    assert sum(r is not None for r in results) == (7 if every == 1 else 3)  # 0, 3, 6 of 0..6


def test_stream_matches_plain_implementation():
    request, parts = stream_messages(3)
    _, request_mac = tsig.sign(request, KEY, NOW)
    signer = StreamSigner(KEY, request_mac)
    first, second = signer.sign(parts[0], NOW), signer.sign(parts[1], NOW + 1)
    mac1 = plain_mac(SECRET, "hmac-sha256", KEY.name, parts[0], NOW, 300, prior=request_mac)
    mac2 = plain_mac(SECRET, "hmac-sha256", KEY.name, parts[1], NOW + 1, 300, prior=mac1,
                     timers_only=True)
    assert tsig.find_tsig(first).mac == mac1 and tsig.find_tsig(second).mac == mac2
    v = tsig.verify(second, KEY, NOW, previous_mac=mac1, timers_only=True)
    assert v.mac == mac2


def test_stream_tampering_and_truncation_are_caught():
    request, parts = stream_messages(4)
    _, request_mac = tsig.sign(request, KEY, NOW)
    signer = StreamSigner(KEY, request_mac, every=2)
    sent = [signer.sign(m, NOW, last=i == 3) for i, m in enumerate(parts)]
    assert tsig.find_tsig(sent[1]) is None
    verifier = StreamVerifier(KEY, request_mac)
    verifier.feed(sent[0], NOW)
    tampered = bytearray(sent[1])
    tampered[-1] ^= 1
    verifier.feed(bytes(tampered), NOW)
    with pytest.raises(TsigError) as info:
        verifier.feed(sent[2], NOW)
    assert info.value.tsig_error == BADSIG
    # a stream cut after an unsigned message
    verifier = StreamVerifier(KEY, request_mac)
    for m in sent[:2]:
        verifier.feed(m, NOW)
    with pytest.raises(TsigError):
        verifier.finish()
    # the first message must be signed
    with pytest.raises(TsigError):
        StreamVerifier(KEY, request_mac).feed(parts[0], NOW)


# --------------------------------------------------------------------------
# the pure-core rule


def test_no_io_clock_or_randomness_imports():
    path = Path(tsig.__file__)
    forbidden = {"socket", "asyncio", "time", "random", "os", "select", "selectors", "secrets"}
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in forbidden, name
