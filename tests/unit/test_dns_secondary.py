"""The secondary's state machine paired with the primary's transfer core, and NOTIFY both
ways; then the handlers wired into the server core. No sockets: time is a number."""

import itertools

import pytest
from dnslib import OPCODE, QTYPE, RCODE, RR, DNSHeader, DNSQuestion, DNSRecord

from ingot.plugins.dns import server, tsig
from ingot.plugins.dns.acl import ALLOW_ALL, Acl, Peer, parse_acl
from ingot.plugins.dns.journal import Journal, diff, find_soa, rr_key, soa_serial
from ingot.plugins.dns.notify import (NotifyDone, NotifyFailed, NotifySender, RefreshNow, SendUdp,
                                      answer_notify, handle_notify, notify_message)
from ingot.plugins.dns.secondary import (CloseTcp, OpenTcp, Secondary, TransferFailed,
                                         ZoneExpired, ZoneLoaded)
from ingot.plugins.dns.update import ZoneChanged, handle_update
from ingot.plugins.dns.xfr import (EXT, TransferConfig, ZoneView, answer_transfer, handle_xfr,
                                   parse_message, reply_to, take_events)
from ingot.plugins.dns.zone import Zone, name_key
from tests.unit.test_dns_journal import records

S = 1_000_000_000
T0 = 1_700_000_000 * S
ORIGIN = "example.org."
PRIMARY = Peer("192.0.2.53", 53)
KEY = tsig.Key("xfr", b"s" * 32)


class FakePrimary:
    """Answers the secondary's actions with the real transfer core."""

    def __init__(self, serial=1, key=None):
        self.key = key
        self.versions = [records(serial)]
        self.journal = Journal()
        self.down = False
        self.ixfr_refused = False
        self.seen = []

    def change(self, extra):
        new = records(soa_serial(find_soa(self.versions[-1])) + 1, extra)
        self.journal.append(diff(self.versions[-1], new))
        self.versions.append(new)

    def run(self, sec, actions, now):
        """Play actions until the machine waits; returns every action seen."""
        seen, queue = [], list(actions)
        while queue:
            action = queue.pop(0)
            seen.append(action)
            if self.down:
                continue
            if isinstance(action, SendUdp):
                query = parse_message(action.wire[:len(action.wire)] if self.key is None
                                      else _strip(action.wire))
                reply = reply_to(query)
                reply.add_answer(find_soa(self.versions[-1]))
                wire = bytes(reply.pack())
                if self.key is not None:
                    mac = tsig.verify(action.wire, {KEY.name: KEY}, now // S).mac
                    wire = tsig.sign(wire, KEY, now // S, request_mac=mac)[0]
                queue += sec.handle_udp(action.dst, wire, now)
            elif isinstance(action, OpenTcp):
                query = parse_message(_strip(action.wire))
                self.seen.append(query.questions[0].qtype)
                view = ZoneView(ORIGIN, self.versions[-1], self.journal)
                acl = ALLOW_ALL
                if self.ixfr_refused and query.questions[0].qtype == QTYPE.IXFR:
                    acl = Acl()
                for wire in answer_transfer(action.wire, query, proto="tcp", src="192.0.2.2",
                                            zones={ORIGIN: view}, acl=acl,
                                            keyring={KEY.name: KEY}, now_s=now // S,
                                            max_message=1024):
                    queue += sec.handle_tcp_message(action.conn, wire, now)
        return seen


def _strip(wire):
    from ingot.plugins.dns.xfr import strip_tsig
    return strip_tsig(wire)


def machine(key=None, **kw):
    ids = itertools.count(100)
    return Secondary(ORIGIN, [Peer(PRIMARY.address, PRIMARY.port, key)],
                     new_id=lambda: next(ids), now_ns=T0, **kw)


def loaded(actions):
    return [a for a in actions if isinstance(a, ZoneLoaded)]


def test_first_refresh_pulls_the_zone_by_axfr_then_ixfr_after_a_change():
    primary, sec = FakePrimary(), machine()
    seen = primary.run(sec, sec.tick(T0), T0)
    (first,) = loaded(seen)
    assert first.kind == "axfr" and first.serial == 1 and primary.seen == [QTYPE.AXFR]
    assert any(isinstance(a, CloseTcp) for a in seen)
    assert sec.next_deadline() == T0 + 3600 * S  # refresh from the SOA
    primary.change("www A 192.0.2.99")
    primary.change("www A 192.0.2.98\nftp A 192.0.2.7")
    assert primary.run(sec, sec.tick(T0 + 100 * S), T0 + 100 * S) == []  # not yet due
    now = T0 + 3600 * S
    (second,) = loaded(primary.run(sec, sec.tick(now), now))
    assert second.kind == "ixfr" and second.serial == 3 and len(second.changes) == 2
    assert {rr_key(r) for r in second.records} == {rr_key(r) for r in primary.versions[-1]}
    assert primary.seen == [QTYPE.AXFR, QTYPE.IXFR]


def test_same_serial_only_rearms_the_timers():
    primary, sec = FakePrimary(), machine()
    primary.run(sec, sec.tick(T0), T0)
    now = T0 + 3600 * S
    seen = primary.run(sec, sec.tick(now), now)
    assert [type(a) for a in seen] == [SendUdp] and sec.state == "idle"
    assert sec.refresh_at == now + 3600 * S and sec.expire_at == now + 86400 * S


def test_signed_transfers_verify():
    primary, sec = FakePrimary(key=KEY), machine(key=KEY)
    (first,) = loaded(primary.run(sec, sec.tick(T0), T0))
    assert first.serial == 1


def test_ixfr_refused_falls_back_to_axfr():
    primary, sec = FakePrimary(), machine()
    primary.run(sec, sec.tick(T0), T0)
    primary.change("www A 192.0.2.99")
    primary.ixfr_refused = True
    now = T0 + 3600 * S
    seen = primary.run(sec, sec.tick(now), now)
    assert any(isinstance(a, TransferFailed) and "trying AXFR" in a.reason for a in seen)
    (done,) = loaded(seen)
    assert done.kind == "axfr" and done.serial == 2


def test_unreachable_primary_retries_and_the_zone_expires():
    primary, sec = FakePrimary(), machine()
    primary.run(sec, sec.tick(T0), T0)
    primary.down = True
    now = T0 + 3600 * S
    primary.run(sec, sec.tick(now), now)
    assert sec.state == "soa"
    now += 2 * S
    seen = sec.tick(now)
    assert isinstance(seen[0], TransferFailed) and sec.refresh_at == now + 600 * S
    expired = []
    while now < T0 + 90000 * S:
        now = sec.next_deadline()
        expired += [a for a in sec.tick(now) if isinstance(a, ZoneExpired)]
    assert expired == [ZoneExpired(ORIGIN)] and not sec.serving
    primary.down = False
    back = []
    while not back:
        now = sec.next_deadline()
        back = loaded(primary.run(sec, sec.tick(now), now))
    assert back[0].serial == 1 and sec.serving


def test_notify_refreshes_early_and_is_remembered_while_busy():
    primary, sec = FakePrimary(), machine()
    primary.run(sec, sec.tick(T0), T0)
    primary.change("www A 192.0.2.99")
    now = T0 + 10 * S
    (done,) = loaded(primary.run(sec, sec.notify(now, 2), now))
    assert done.serial == 2
    # a NOTIFY during a refresh starts another one after it
    primary.change("www A 192.0.2.98")
    first = sec.notify(now + S)
    assert sec.notify(now + S) == []
    primary.change("www A 192.0.2.97")
    assert loaded(primary.run(sec, first, now + S))[-1].serial == 4


def test_transfer_timeout_and_closed_connection():
    primary, sec = FakePrimary(), machine()
    (query,) = sec.tick(T0)
    reply = reply_to(parse_message(query.wire))
    reply.add_answer(find_soa(primary.versions[0]))
    (open_tcp,) = sec.handle_udp(query.dst, bytes(reply.pack()), T0)
    assert isinstance(open_tcp, OpenTcp)
    failed = sec.tcp_closed(open_tcp.conn, T0 + S)
    assert any(isinstance(a, TransferFailed) for a in failed) and sec.state == "idle"
    assert sec.refresh_at == T0 + S + 10 * S  # no zone yet: initial retry
    # stray answers are ignored
    assert sec.handle_udp(("198.51.100.1", 53), b"junk", T0) == []
    assert sec.handle_tcp_message(99, b"junk", T0) == []


def test_garbage_from_the_primary_never_raises():
    sec = machine()
    (query,) = sec.tick(T0)
    for junk in (b"", b"\x00" * 5, query.wire[:2] + b"\x80" + bytes(20), query.wire):
        sec.handle_udp(query.dst, junk, T0)
    assert sec.state in ("soa", "idle")


# -- NOTIFY out -----------------------------------------------------------------------

def test_notify_sender_retries_with_backoff_and_gives_up_after_five_tries():
    ids = itertools.count(1)
    sender = NotifySender(new_id=lambda: next(ids))
    soa = find_soa(records(7))
    peers = [Peer("192.0.2.1", 53), Peer("192.0.2.2", 5300)]
    sent = sender.zone_changed(ORIGIN, soa, peers, 0)
    assert [s.dst for s in sent] == [("192.0.2.1", 53), ("192.0.2.2", 5300)]
    msg = parse_message(sent[0].wire)
    assert msg.header.opcode == OPCODE.NOTIFY and msg.header.aa
    assert soa_serial(msg.rr[0]) == 7
    # the second peer answers
    answer = reply_to(parse_message(sent[1].wire))
    assert sender.handle_response(("192.0.2.2", 5300), bytes(answer.pack()), 0) == \
        [NotifyDone(ORIGIN, peers[1], 0)]
    assert sender.handle_response(("192.0.2.2", 5300), bytes(answer.pack()), 0) == []
    times = []
    while sender.next_deadline() is not None:
        now = sender.next_deadline()
        out = sender.tick(now)
        times.append((now // S, [type(o).__name__ for o in out]))
    assert times == [(1, ["SendUdp"]), (3, ["SendUdp"]), (7, ["SendUdp"]), (15, ["SendUdp"]),
                     (31, ["NotifyFailed"])]


def test_signed_notify_and_its_answer():
    sender = NotifySender(new_id=lambda: 5)
    peer = Peer("192.0.2.1", 53, KEY)
    (sent,) = sender.zone_changed(ORIGIN, find_soa(records(7)), [peer], T0)
    reply, refresh = answer_notify(sent.wire, parse_message(_strip(sent.wire)),
                                   src="192.0.2.9", zones=[ORIGIN],
                                   acl=parse_acl(["key:xfr"]), keyring={KEY.name: KEY},
                                   now_s=T0 // S)
    assert refresh == RefreshNow(ORIGIN, 7)
    assert sender.handle_response(("192.0.2.1", 53), reply, T0) == [NotifyDone(ORIGIN, peer, 0)]


# -- NOTIFY in ---------------------------------------------------------------------------

@pytest.mark.parametrize("zones,acl,rcode,refresh", [
    ([ORIGIN], ALLOW_ALL, RCODE.NOERROR, True),
    ([ORIGIN], Acl(), RCODE.REFUSED, False),
    (["example.net."], ALLOW_ALL, RCODE.NOTAUTH, False),
])
def test_answer_notify(zones, acl, rcode, refresh):
    wire = notify_message(ORIGIN, None, 9)
    reply, event = answer_notify(wire, parse_message(wire), src="127.0.0.1", zones=zones,
                                 acl=acl, keyring={}, now_s=0)
    msg = DNSRecord.parse(reply)
    assert msg.header.rcode == rcode and msg.header.opcode == OPCODE.NOTIFY and msg.header.qr
    assert (event == RefreshNow(ORIGIN, None)) == refresh


# -- the handlers inside the server core -----------------------------------------------

def serving(**config):
    zone = Zone.from_records(ORIGIN, records(1))
    return server.ServerState.create([zone], handlers={4: handle_notify, 5: handle_update},
                                     xfr_handler=handle_xfr).with_ext(
        EXT, TransferConfig(**config))


def test_server_dispatches_axfr_update_and_notify():
    state = serving(transfer_acl=ALLOW_ALL, update_acl=parse_acl(["127.0.0.0/8"]))
    axfr = DNSRecord.question(ORIGIN, "AXFR").pack()
    state, replies, _ = server.handle(state, T0, "tcp", ("127.0.0.1", 4000), axfr)
    assert len(DNSRecord.parse(replies[0]).rr) == len(records(1)) + 1
    upd = DNSRecord(DNSHeader(id=3, opcode=OPCODE.UPDATE), [DNSQuestion(ORIGIN, QTYPE.SOA)])
    upd.add_auth(*RR.fromZone(f"new.{ORIGIN} 60 A 192.0.2.77"))
    state, replies, _ = server.handle(state, T0, "udp", ("127.0.0.1", 4000), upd.pack())
    assert DNSRecord.parse(replies[0]).header.rcode == RCODE.NOERROR
    state, events = take_events(state)
    (changed,) = events
    assert isinstance(changed, ZoneChanged) and changed.zone.serial == 2
    assert state.zone(ORIGIN).serial == 2 and take_events(state)[1] == ()
    assert state.ext[EXT].journals[name_key(ORIGIN)].last_serial == 2
    # the journal now serves IXFR from serial 1
    ixfr = DNSRecord(DNSHeader(id=4), [DNSQuestion(ORIGIN, QTYPE.IXFR)])
    ixfr.add_auth(find_soa(records(1)))
    state, replies, _ = server.handle(state, T0, "tcp", ("127.0.0.1", 4000), ixfr.pack())
    serials = [soa_serial(r) for r in DNSRecord.parse(replies[0]).rr if r.rtype == QTYPE.SOA]
    assert serials == [2, 1, 2, 2]
    # the update ACL is checked against the source
    state, replies, _ = server.handle(state, T0, "udp", ("10.0.0.1", 4000), upd.pack())
    assert DNSRecord.parse(replies[0]).header.rcode == RCODE.REFUSED


def test_server_notify_for_a_secondary_zone_leaves_a_refresh_event():
    state = serving(notify_acl=ALLOW_ALL, secondary_zones=frozenset({name_key(ORIGIN)}))
    wire = notify_message(ORIGIN, find_soa(records(4)), 77)
    state, replies, _ = server.handle(state, T0, "udp", ("127.0.0.1", 53), wire)
    assert DNSRecord.parse(replies[0]).header.rcode == RCODE.NOERROR
    assert take_events(state)[1] == (RefreshNow(ORIGIN, 4),)
    # no UPDATE for a zone this server pulls
    upd = DNSRecord(DNSHeader(id=3, opcode=OPCODE.UPDATE), [DNSQuestion(ORIGIN, QTYPE.SOA)])
    state, replies, _ = server.handle(state, T0, "udp", ("127.0.0.1", 53), upd.pack())
    assert DNSRecord.parse(replies[0]).header.rcode == RCODE.NOTAUTH


def test_an_update_that_breaks_the_zone_rules_is_refused():
    state = serving(update_acl=ALLOW_ALL)
    upd = DNSRecord(DNSHeader(id=3, opcode=OPCODE.UPDATE), [DNSQuestion(ORIGIN, QTYPE.SOA)])
    upd.add_auth(*RR.fromZone(f"{ORIGIN} 60 CNAME elsewhere.net."))
    state, replies, _ = server.handle(state, T0, "udp", ("127.0.0.1", 53), upd.pack())
    assert DNSRecord.parse(replies[0]).header.rcode == RCODE.NOERROR  # CNAME beside data: ignored
    upd = DNSRecord(DNSHeader(id=3, opcode=OPCODE.UPDATE), [DNSQuestion(ORIGIN, QTYPE.SOA)])
    upd.add_auth(*RR.fromZone(f"sub.{ORIGIN} 60 DS 1 8 2 "
                                                   + "ab" * 32))
    state, replies, _ = server.handle(state, T0, "udp", ("127.0.0.1", 53), upd.pack())
    assert DNSRecord.parse(replies[0]).header.rcode == RCODE.REFUSED
    assert take_events(state)[1] == ()


def test_notify_with_an_empty_opt_record_is_answered():
    """Knot sends its NOTIFY with an OPT record that has no options (RDLENGTH 0)."""
    state = serving(notify_acl=ALLOW_ALL, secondary_zones=frozenset({name_key(ORIGIN)}))
    wire = notify_message(ORIGIN, find_soa(records(4)), 78)
    wire = wire[:10] + b"\x00\x01" + wire[12:] + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    for proto in ("udp", "tcp"):
        state, replies, _ = server.handle(state, T0, proto, ("127.0.0.1", 53), wire)
        reply = DNSRecord.parse(replies[0])
        assert (reply.header.id, reply.header.rcode) == (78, RCODE.NOERROR)
        assert take_events(state)[1] == (RefreshNow(ORIGIN, 4),)
        state = take_events(state)[0]
    assert parse_message(wire).ar[0].rtype == QTYPE.OPT
