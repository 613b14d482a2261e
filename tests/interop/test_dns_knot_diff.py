"""Ingot's DNS core and Knot serve the same zone file; the same queries go to both.

Knot (knotd, Debian package `knot`) is started from a temporary folder with
one UDP and one TCP worker and stopped by PID. Each query goes over UDP and
TCP, with random 0x20 case and random RD, and with no EDNS or EDNS payloads
of 512, 1232 and 4096. The replies must agree on rcode, flags, OPT presence
and payload, and each section as a set of records. For ANY (answered
minimally by Ingot, RFC 8482) Ingot's answer must be one whole RRset of
Knot's and the additional section is not compared.
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import time

import pytest
from dnslib import EDNS0, QTYPE, DNSRecord

from ingot.plugins.dns.server import ServerState
from ingot.plugins.dns.zonefile import load_zone

from .test_dns_dig import ZONE, CoreServer, free_port, need, random_case

QUERIES = [
    ("www.example.com", "A"), ("www.example.com", "AAAA"), ("example.com", "SOA"),
    ("example.com", "NS"), ("example.com", "MX"), ("ns1.example.com", "A"),
    ("alias.example.com", "A"), ("chain1.example.com", "AAAA"), ("alias.example.com", "CNAME"),
    ("ext.example.com", "A"), ("dangling.example.com", "A"), ("alias.example.com", "MX"),
    ("nope.example.com", "A"), ("deep.nope.example.com", "TXT"), ("www.example.com", "TXT"),
    ("ent.example.com", "A"), ("b.ent.example.com", "AAAA"), ("a.b.ent.example.com", "A"),
    ("x.wild.example.com", "A"), ("x.y.wild.example.com", "TXT"), ("x.wild.example.com", "MX"),
    ("wild.example.com", "A"), ("*.wild.example.com", "A"),
    ("sub.example.com", "NS"), ("host.sub.example.com", "A"), ("sub.example.com", "A"),
    ("ns.sub.example.com", "A"), ("sub.example.com", "DS"), ("host.sub.example.com", "DS"),
    ("big.example.com", "TXT"), ("mid.example.com", "TXT"),
    ("example.org", "A"), ("com", "NS"), ("_sip._tcp.example.com", "SRV"),
    ("caa.example.com", "CAA"), ("_443._tcp.www.example.com", "TLSA"),
    ("svc.example.com", "HTTPS"), ("svc.example.com", "SVCB"),
    ("www.example.com", "ANY"), ("example.com", "ANY"), ("alias.example.com", "ANY"),
    ("nope.example.com", "ANY"),
]
PAYLOADS = [None, 512, 1232, 4096]
KNOT_CONF = """\
server:
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    rundir: {work}
database:
    storage: {work}
template:
  - id: default
    storage: {work}
    zonefile-sync: -1
zone:
  - domain: example.com
    file: example.com.zone
log:
  - target: stderr
    any: info
"""
FLAGS = ("qr", "aa", "tc", "rd", "ra", "ad", "cd")


@pytest.fixture(scope="module")
def knot(tmp_path_factory):
    knotd = need("knotd")
    work = tmp_path_factory.mktemp("knot")
    (work / "example.com.zone").write_text(ZONE)
    for _attempt in range(5):
        port = free_port()
        (work / "knot.conf").write_text(KNOT_CONF.format(port=port, work=work))
        (work / "knot.log").write_text("")
        log = open(work / "knot.log", "a")
        proc = subprocess.Popen([knotd, "-c", str(work / "knot.conf")], stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while "loaded, serial" not in (work / "knot.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            break
        proc.terminate()
        proc.wait(10)
        log.close()
        if "address already in use" not in (work / "knot.log").read_text():
            pytest.fail("knotd did not load the zone:\n" + (work / "knot.log").read_text())
    else:
        pytest.fail("knotd found no free port")
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def ingot():
    with CoreServer(ServerState.create([load_zone(ZONE, file="example.com.zone")])) as server:
        yield server.port


def ask(port: int, proto: str, msg: bytes) -> bytes:
    if proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(msg, ("127.0.0.1", port))
            return s.recv(65535)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack("!H", len(msg)) + msg)
        head = _recv(s, 2)
        return _recv(s, struct.unpack("!H", head)[0])


def _recv(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def _records(rrs) -> set[tuple]:
    return {(str(rr.rname).lower(), rr.rtype, rr.ttl, rr.rdata.toZone() if hasattr(
        rr.rdata, "toZone") else repr(rr.rdata)) for rr in rrs if rr.rtype != QTYPE.OPT}


def summary(wire: bytes) -> dict:
    rec = DNSRecord.parse(wire)
    opt = [rr for rr in rec.ar if rr.rtype == QTYPE.OPT]
    return {
        "id": rec.header.id,
        "rcode": rec.header.rcode | ((opt[0].ttl >> 24) << 4 if opt else 0),
        "flags": {f for f in FLAGS if getattr(rec.header, f)},
        "question": [(str(q.qname), q.qtype) for q in rec.questions],
        "opt": (opt[0].rclass, opt[0].ttl & 0xFFFF) if opt else None,
        "answer": _records(rec.rr),
        "authority": _records(rec.auth),
        "additional": _records(rec.ar),
    }


def _query(name: str, qtype: str, payload: int | None, rd: bool) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.rd = int(rd)
    if payload is not None:
        q.add_ar(EDNS0(udp_len=payload))
    return q.pack()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_same_answers_as_knot(knot, ingot, proto):
    rnd = random.Random(1035 if proto == "udp" else 1034)
    failures = []
    for name, qtype in QUERIES:
        for payload in PAYLOADS:
            wire = _query(random_case(name, rnd), qtype, payload, rnd.random() < 0.5)
            theirs, ours = summary(ask(knot, proto, wire)), summary(ask(ingot, proto, wire))
            keys = ["id", "rcode", "flags", "question", "opt", "authority"]
            if qtype == "ANY" and theirs["answer"]:
                rrset = {(n, t) for n, t, _, _ in ours["answer"]}
                if len(rrset) != 1 or not ours["answer"] <= theirs["answer"] or \
                        len([r for r in theirs["answer"] if r[:2] in rrset]) != \
                        len(ours["answer"]):
                    failures.append((name, qtype, payload, "answer", theirs, ours))
            else:
                keys += ["answer", "additional"]
            for key in keys:
                if theirs[key] != ours[key]:
                    failures.append((name, qtype, payload, key, theirs[key], ours[key]))
    assert not failures, "\n".join(map(repr, failures))
