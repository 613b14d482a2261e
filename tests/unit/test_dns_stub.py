"""The stub resolver core with scripted upstream replies: no sockets, no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.dns import stub
from ingot.plugins.dns.stub import (NXDOMAIN, Failed, Release, Resolved, ResolveError, Resolver,
                                    Send)
from ingot.plugins.random.sources import SeededRandom

UP1 = ("127.0.0.1", 5301)
UP2 = ("::1", 5302)
SEC = 1_000_000_000
SOA = "example.com. 3600 IN SOA ns1.example.com. host.example.com. 1 3600 900 604800 60"


def resolver(upstreams=(UP1,), **kw) -> Resolver:
    return Resolver(list(upstreams), SeededRandom(7), **kw)


def reply_to(send: Send, *answers: str, rcode=0, auth=(), tc=False, qname=None, qid=None,
             qtype=None) -> bytes:
    request = dnslib.DNSRecord.parse(send.data)
    reply = request.reply()
    reply.header.rcode = rcode
    reply.header.tc = int(tc)
    reply.ar = []
    if qname is not None:
        reply.questions[0].qname = dnslib.DNSLabel(qname)
    if qtype is not None:
        reply.questions[0].qtype = qtype
    if qid is not None:
        reply.header.id = qid
    for text in answers:
        reply.add_answer(*dnslib.RR.fromZone(text))
    for text in auth:
        reply.add_auth(*dnslib.RR.fromZone(text))
    return bytes(reply.pack())


def only(events, kind):
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, events
    return found[0]


def ask(r, name="www.example.com", rtype="A", now=0):
    ticket, events = r.query(name, rtype, now)
    return ticket, only(events, Send)


def test_a_query_and_answer():
    r = resolver()
    ticket, send = ask(r)
    assert send.transport == "udp" and send.upstream == UP1 and 1024 <= send.source_port < 65536
    q = dnslib.DNSRecord.parse(send.data)
    assert str(q.q.qname) == "www.example.com." and q.q.qtype == 1 and q.header.rd
    assert q.ar[0].rtype == dnslib.QTYPE.OPT and q.ar[0].rclass == 1232
    events = r.handle(reply_to(send, "www.example.com. 300 IN A 192.0.2.1",
                               "www.example.com. 200 IN A 192.0.2.2"), UP1, SEC)
    assert only(events, Release).query_id == send.query_id
    answer = only(events, Resolved).answer
    assert only(events, Resolved).ticket == ticket
    assert answer.values == ["192.0.2.1", "192.0.2.2"]
    assert (answer.rcode, answer.ttl, answer.from_cache, answer.canonical) == \
        (0, 200, False, "www.example.com")
    assert r.next_deadline() is None


@pytest.mark.parametrize("rtype,zone,value", [
    ("MX", "example.com. 60 IN MX 10 Mail.Example.com.", (10, "mail.example.com")),
    ("TXT", 'example.com. 60 IN TXT "v=spf1" "-all"', (b"v=spf1", b"-all")),
    ("AAAA", "example.com. 60 IN AAAA 2001:db8::1", "2001:db8::1"),
    ("SRV", "example.com. 60 IN SRV 1 2 25 mx.example.com.", (1, 2, 25, "mx.example.com")),
    ("NS", "example.com. 60 IN NS ns1.example.com.", "ns1.example.com"),
])
def test_record_values(rtype, zone, value):
    r = resolver()
    _, send = ask(r, "example.com", rtype)
    answer = only(r.handle(reply_to(send, zone), UP1, 0), Resolved).answer
    assert answer.values == [value] and answer.rrs[0].type_name == rtype


def test_positive_cache_counts_down_and_expires():
    r = resolver()
    _, send = ask(r)
    r.handle(reply_to(send, "www.example.com. 100 IN A 192.0.2.1"), UP1, 0)
    ticket, events = r.query("WWW.Example.COM.", "A", 40 * SEC)
    answer = only(events, Resolved).answer
    assert answer.from_cache and answer.ttl == 60 and answer.rrs[0].ttl == 60
    assert r.stats.sent == 1 and r.stats.cache_hits == 1
    _, events = r.query("www.example.com", "A", 100 * SEC)
    only(events, Send)


def test_negative_answers_cache_by_soa_minimum():
    r = resolver()
    _, send = ask(r, "nope.example.com")
    answer = only(r.handle(reply_to(send, rcode=NXDOMAIN, auth=[SOA]), UP1, 0), Resolved).answer
    assert answer.nxdomain and answer.rrs == () and answer.ttl == 60
    _, events = r.query("nope.example.com", "A", 59 * SEC)
    assert only(events, Resolved).answer.from_cache
    _, events = r.query("nope.example.com", "A", 60 * SEC)
    only(events, Send)
    # NODATA: NOERROR and nothing of the type
    _, send = ask(r, "www.example.com", "AAAA")
    answer = only(r.handle(reply_to(send, auth=[SOA.replace("3600 IN", "30 IN")]), UP1, 0),
                  Resolved).answer
    assert answer.rcode == 0 and not answer.rrs and answer.ttl == 30
    # without SOA: answered, not cached
    _, send = ask(r, "bare.example.com")
    r.handle(reply_to(send, rcode=NXDOMAIN), UP1, 0)
    _, events = r.query("bare.example.com", "A", 0)
    only(events, Send)


def test_cache_size_limit_evicts_least_recently_used():
    r = resolver(cache_size=2)
    for name in ("a.test", "b.test", "c.test"):
        _, send = ask(r, name)
        r.handle(reply_to(send, f"{name}. 300 IN A 192.0.2.1"), UP1, 0)
    assert isinstance(r.query("c.test", "A", 0)[1][0], Resolved)
    assert isinstance(r.query("b.test", "A", 0)[1][0], Resolved)
    assert isinstance(r.query("a.test", "A", 0)[1][0], Send)


@pytest.mark.parametrize("change", ["id", "host", "port", "name", "type", "query", "stranger"])
def test_mismatched_replies_are_dropped_and_counted(change):
    r = resolver()
    ticket, send = ask(r)
    rr = "www.example.com. 300 IN A 192.0.2.1"
    data, src = reply_to(send, rr), UP1
    if change == "id":
        data = reply_to(send, rr, qid=send.query_id ^ 1)
    elif change == "host":
        src = ("127.0.0.2", UP1[1])
    elif change == "port":
        src = (UP1[0], UP1[1] + 1)
    elif change == "name":
        data = reply_to(send, "evil.example.com. 300 IN A 192.0.2.66", qname="evil.example.com")
    elif change == "type":
        data = reply_to(send, qtype=28)
    elif change == "query":
        data = send.data  # QR not set
    elif change == "stranger":
        src = ("10.0.0.1", 53)
    assert r.handle(data, src, 0) == []
    assert r.stats.mismatched == 1
    # the genuine reply still gets through
    assert only(r.handle(reply_to(send, rr), UP1, 0), Resolved).ticket == ticket


def test_question_match_ignores_case_and_ipv6_spelling():
    r = resolver([("::0001", 53)])
    _, send = ask(r)
    data = reply_to(send, "WWW.EXAMPLE.COM. 300 IN A 192.0.2.1", qname="WWW.example.COM")
    assert only(r.handle(data, ("::1", 53), 0), Resolved).answer.values == ["192.0.2.1"]


def test_truncated_reply_retries_over_tcp():
    r = resolver()
    _, send = ask(r, "big.example.com", "TXT")
    events = r.handle(reply_to(send, tc=True), UP1, 0)
    assert only(events, Release).transport == "udp"
    tcp = only(events, Send)
    assert (tcp.transport, tcp.upstream, tcp.source_port) == ("tcp", UP1, None)
    assert not dnslib.DNSRecord.parse(tcp.data).ar  # no EDNS payload over TCP
    # a UDP reply for the TCP exchange is not taken
    assert r.handle(reply_to(tcp, 'big.example.com. 60 IN TXT "x"'), UP1, 0) == []
    events = r.handle(reply_to(tcp, 'big.example.com. 60 IN TXT "' + "y" * 200 + '"'), UP1, 0,
                      transport="tcp")
    assert only(events, Resolved).answer.values == [(b"y" * 200,)]
    assert r.stats.tcp_fallbacks == 1


def test_timeout_and_servfail_move_to_the_next_upstream_then_fail():
    r = resolver([UP1, UP2], rounds=2, timeout_ns=SEC)
    ticket, send = ask(r)
    assert r.next_deadline() == SEC
    assert r.tick(SEC - 1) == []
    events = r.tick(SEC)
    second = only(events, Send)
    assert second.upstream == UP2 and only(events, Release).upstream == UP1
    events = r.handle(reply_to(second, rcode=2), UP2, SEC + 5)
    third = only(events, Send)
    assert third.upstream == UP1
    events = r.transport_error(third.query_id, UP1, SEC + 6, "refused")
    fourth = only(events, Send)
    events = r.tick(10 * SEC)
    failed = only(events, Failed)
    assert failed.ticket == ticket and isinstance(failed.error, ResolveError)
    assert "all upstreams failed" in failed.error.reason and "timed out" in failed.error.reason
    assert (failed.error.name, failed.error.rtype) == ("www.example.com", 1)
    assert r.stats.timeouts == 2 and r.stats.upstream_errors == 2 and fourth.upstream == UP2
    assert r.next_deadline() is None


def test_identical_questions_in_flight_share_one_exchange():
    r = resolver()
    t1, send = ask(r)
    t2, events = r.query("WWW.example.com.", "A", 0)
    assert events == [] and t2 != t1 and r.stats.coalesced == 1
    events = r.handle(reply_to(send, "www.example.com. 300 IN A 192.0.2.1"), UP1, 0)
    assert {e.ticket for e in events if isinstance(e, Resolved)} == {t1, t2}


def test_cancel():
    r = resolver()
    t1, send = ask(r)
    t2, _ = r.query("www.example.com", "A", 0)
    assert r.cancel(t1) == []
    assert only(r.cancel(t2), Release).query_id == send.query_id
    assert r.handle(reply_to(send, "www.example.com. 1 IN A 192.0.2.1"), UP1, 0) == []
    assert r.stats.mismatched == 1 and r.next_deadline() is None


def test_cname_chain_is_followed():
    r = resolver()
    _, send = ask(r, "chain.example.com")
    events = r.handle(reply_to(send, "chain.example.com. 300 IN CNAME alias.example.com.",
                               "alias.example.com. 100 IN CNAME www.example.com.",
                               "www.example.com. 200 IN A 192.0.2.1",
                               "other.example.com. 1 IN A 192.0.2.66"), UP1, 0)
    answer = only(events, Resolved).answer
    assert answer.values == ["192.0.2.1"] and answer.canonical == "www.example.com"
    assert [c.value for c in answer.chain] == ["alias.example.com", "www.example.com"]
    assert answer.ttl == 100
    # asking for the CNAME itself does not follow it
    _, send = ask(r, "chain.example.com", "CNAME")
    answer = only(r.handle(reply_to(send, "chain.example.com. 300 IN CNAME a.example.com."),
                           UP1, 0), Resolved).answer
    assert answer.values == ["a.example.com"]


def test_cname_loop_ends():
    r = resolver()
    _, send = ask(r, "a.example.com")
    events = r.handle(reply_to(send, "a.example.com. 300 IN CNAME b.example.com.",
                               "b.example.com. 300 IN CNAME a.example.com."), UP1, 0)
    assert only(events, Resolved).answer.rrs == ()


def test_ids_and_ports_are_random_and_from_the_device():
    r = resolver()
    sends = [ask(r, f"n{i}.test")[1] for i in range(50)]
    assert len({s.query_id for s in sends}) > 45 and len({s.source_port for s in sends}) > 45
    again = resolver()
    assert [ask(again, f"n{i}.test")[1].query_id for i in range(50)] == \
        [s.query_id for s in sends]


def test_invalid_questions_raise():
    r = resolver()
    for name, rtype in [("a..b", "A"), ("x" * 64 + ".com", "A"), ("ok.test", "NOPE")]:
        with pytest.raises(ResolveError):
            r.query(name, rtype, 0)


def test_upstream_parsing():
    assert stub.parse_upstream("192.0.2.1") == ("192.0.2.1", 53)
    assert stub.parse_upstream("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert stub.parse_upstream("::1") == ("::1", 53)
    assert stub.parse_upstream("[::1]:5353") == ("::1", 5353)
    for bad in ("example.com", "1.2.3.4:0", "[::1]x", "1.2.3.4:99999"):
        with pytest.raises(ValueError):
            stub.parse_upstream(bad)
    with pytest.raises(ValueError):
        Resolver([], SeededRandom(1))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_reply_bytes_never_raise(data):
    r = resolver()
    _, send = ask(r)
    r.handle(data, UP1, 0)
    r.handle(send.data[:2] + data, UP1, 0, transport="udp")
    assert r.stats.received == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_replies_never_raise(changes):
    r = resolver()
    _, send = ask(r, "chain.example.com", "MX")
    data = bytearray(reply_to(send, "chain.example.com. 300 IN CNAME mx.example.com.",
                              "mx.example.com. 300 IN MX 10 mail.example.com.",
                              auth=[SOA]))
    for pos, value in changes:
        data[pos % len(data)] = value
    events = r.handle(bytes(data), UP1, 0)
    for event in events:
        assert isinstance(event, (Resolved, Release, Send, Failed))


def test_no_io_clock_or_randomness_imports():
    forbidden = {"socket", "asyncio", "time", "random", "os", "select", "selectors", "secrets"}
    for node in ast.walk(ast.parse(Path(stub.__file__).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        assert not {n.split(".")[0] for n in names} & forbidden, names
