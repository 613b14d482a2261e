"""Fuzz target for the DNS server core's query path: ``handle()`` on any bytes.

No exception may leave :func:`ingot.plugins.dns.server.handle`; a reply, when
there is one, is a response (QR set) with the query's ID and never SERVFAIL
(SERVFAIL would mean the core hit a bug and caught it). The state serves a
small zone with every kind of answer (CNAME chains, wildcards, empty
non-terminals, a delegation, a large RRset). Run::

    python tests/fuzz/fuzz_dns.py [CORPUS_DIR] -atheris_runs=100000   # libFuzzer flags
    python tests/fuzz/fuzz_dns.py --plain 100000 [--seed N]

With atheris installed the DNS modules are instrumented and libFuzzer drives
the target; ``--plain`` feeds random bytes and mutated valid queries
(:func:`seeds`, with DNS-aware changes) deterministically from ``--seed``.
The first argument may name the target (``query``, the only one), as
``run.py --file fuzz_dns.py`` passes it. At the end the replies are counted
by RCODE (and the inputs that got none), on stderr.
"""

from __future__ import annotations

import atexit
import random
import struct
import sys
from collections import Counter

import driver

try:
    import atheris
except ImportError:  # the plain driver still works
    atheris = None

if atheris is not None and "--plain" not in sys.argv:
    with atheris.instrument_imports(include=["ingot.plugins.dns"]):
        from ingot.plugins.dns.server import SERVFAIL, ServerState, handle
        from ingot.plugins.dns.zonefile import load_zone
else:
    from ingot.plugins.dns.server import SERVFAIL, ServerState, handle
    from ingot.plugins.dns.zonefile import load_zone

ZONE = """\
$ORIGIN example.com.
$TTL 300
@ SOA ns1 hostmaster 1 3600 900 604800 60
  NS ns1
  MX 10 mail
ns1 A 192.0.2.1
mail A 192.0.2.25
www A 192.0.2.10
www AAAA 2001:db8::10
alias CNAME www
loop CNAME loop
*.wild A 192.0.2.99
a.b.ent TXT "x"
sub NS ns.sub
sub DS 1 8 2 AB
ns.sub A 192.0.2.53
""" + "".join(f'big TXT "{i:03} padding padding padding padding padding"\n' for i in range(40))

STATE = ServerState.create([load_zone(ZONE)])
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
COUNTS: Counter[str] = Counter()
"""Replies by RCODE (``BADVERS`` for an extended one), ``none`` for no reply."""


def _rcode(reply: bytes) -> str:
    """The RCODE's name; the server puts its OPT (11 octets) last, which holds
    the upper bits of an extended RCODE (BADVERS = 16)."""
    rcode = reply[3] & 0xF
    if len(reply) >= 23 and reply[10:12] != b"\0\0" and reply[-11:-8] == b"\x00\x00\x29":
        rcode |= reply[-6] << 4
    if rcode == 16:
        return "BADVERS"
    return RCODES[rcode] if rcode < len(RCODES) else str(rcode)


def _check(data: bytes, proto: str) -> bool:
    global STATE
    STATE, replies, _ = handle(STATE, 0, proto, ("192.0.2.1", 5353), data)
    for reply in replies:
        assert len(reply) >= 12 and reply[2] & 0x80, reply
        assert reply[:2] == data[:2]
        assert reply[3] & 0xF != SERVFAIL, (data.hex(), reply.hex())
        COUNTS[_rcode(reply)] += 1
    if not replies:
        COUNTS["none"] += 1
    return bool(replies)


def report() -> None:
    total = sum(COUNTS.values())
    if total:
        parts = ", ".join(f"{k} {v}" for k, v in COUNTS.most_common())
        sys.stderr.write(f"replies ({total} handle calls): {parts}\n")


def t_query(data: bytes) -> None:
    """The input over UDP, then over TCP (the first byte picks the order)."""
    first, second = ("udp", "tcp") if not data or data[0] & 1 else ("tcp", "udp")
    _check(data, first)
    _check(data, second)


def _q(name: bytes, qtype: int, flags: int = 0x0100, opt: bytes = b"") -> bytes:
    labels = b"".join(bytes([len(p)]) + p for p in name.split(b".") if p) + b"\0"
    return struct.pack("!HHHHHH", 0x1234, flags, 1, 0, 0, 1 if opt else 0) + labels + \
        struct.pack("!HH", qtype, 1) + opt


TARGETS = {"query": t_query}


def seeds() -> list[bytes]:
    opt = b"\0\0\x29\x04\xd0\0\0\x80\0\0\x00"
    cookie = b"\0\0\x29\x04\xd0\0\0\0\0\0\x0c\0\x0a\0\x08abcdefgh"
    return [_q(b"www.example.com", 1), _q(b"WwW.example.com", 28, opt=opt),
            _q(b"alias.example.com", 1, opt=cookie), _q(b"x.wild.example.com", 15),
            _q(b"nope.example.com", 1), _q(b"b.ent.example.com", 16), _q(b"x.sub.example.com", 1),
            _q(b"sub.example.com", 43), _q(b"big.example.com", 16, opt=opt),
            _q(b"example.com", 255), _q(b"example.com", 252), _q(b"example.org", 1),
            _q(b"www.example.com", 1, flags=0x2000), _q(b"loop.example.com", 1)]


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    """One DNS-aware change: a header count, the flags, a label length, the
    QTYPE, the OPT, a cut, or random bytes spliced in."""
    raw = bytearray(data)
    kind = rnd.randrange(7)
    if kind == 0:      # a section count
        at = rnd.choice((4, 6, 8, 10))
        raw[at:at + 2] = rnd.randrange(5).to_bytes(2, "big")
    elif kind == 1:    # the flags word (opcode, QR, TC, Z, rcode)
        raw[2:4] = rnd.randrange(65536).to_bytes(2, "big")
    elif kind == 2 and len(raw) > 12:   # a label length or a compression pointer
        raw[12 + rnd.randrange(len(raw) - 12)] = rnd.choice((0, 1, 63, 64, 0xC0, 0xFF))
    elif kind == 3:    # the QTYPE (found after the first zero byte of the name)
        end = raw.find(0, 12)
        if 0 < end < len(raw) - 2:
            raw[end + 1:end + 3] = rnd.choice((1, 6, 41, 250, 251, 252, 255, 65535)).to_bytes(
                2, "big")
    elif kind == 4 and len(raw) >= 12:    # an OPT (version, payload, options) appended
        raw[11] = raw[11] + 1 if raw[11] < 255 else 0
        raw += b"\0\0\x29" + rnd.randbytes(6) + rnd.choice((b"\0\0", b"\0\x04\0\x0a\0\0"))
    elif kind == 5:    # cut anywhere
        del raw[rnd.randrange(len(raw) + 1):]
    else:              # random bytes somewhere
        at = rnd.randrange(len(raw) + 1)
        raw[at:at] = rnd.randbytes(rnd.randrange(1, 9))
    return bytes(raw)


def _mutated(rnd: random.Random, data: bytes) -> bytes:
    """A seed with one to three DNS-aware changes."""
    for _ in range(rnd.randrange(1, 4)):
        data = _mutate(rnd, data)
    return data


if __name__ == "__main__":
    atexit.register(report)
    sys.exit(driver.main(sys.argv[1:], __doc__, TARGETS, seeds, atheris, mutate=_mutated,
                         random_every=4, default="query"))
