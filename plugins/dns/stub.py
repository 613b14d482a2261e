"""A forwarding stub resolver, sans I/O: questions and datagrams in, datagrams
and answers out. The adapter (``stub_adapter``) owns sockets and timers.

Rules:

* A question ``(name, type)`` is answered from the cache while its TTL lasts
  (positive answers by the smallest TTL of the records used, negative ones,
  NXDOMAIN and NODATA, by ``min(SOA TTL, SOA minimum)`` of the authority
  section, RFC 2308; without a SOA a negative answer is not cached). The
  cache holds at most ``cache_size`` questions and evicts the least
  recently used.
* Identical questions in flight share one upstream exchange (coalescing).
* Each exchange uses a fresh random 16-bit ID and a random source port,
  both drawn from the ``random`` device given to the resolver.
* A reply is taken only when it comes from the upstream the query was sent
  to, carries the ID of an exchange in flight, is a response, and repeats
  the question (name compared case-insensitively, type, class IN). Anything
  else is dropped and counted (``stats.mismatched``; ``stats.malformed`` for
  what does not parse).
* A truncated UDP reply (TC) is asked again over TCP of the same upstream.
* A timeout, SERVFAIL, REFUSED, NOTIMP, FORMERR or a TCP failure moves to the
  next upstream; after ``rounds`` passes over all upstreams the question
  fails with :class:`ResolveError`. NXDOMAIN is an answer, not an error.
* CNAME chains in the answer section are followed (at most ``MAX_CHAIN``
  links); the records of the chain's end that match the type are the answer.

Time is ``now_ns`` from a monotonic clock, passed in on every call.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, Union

import dnslib

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
MAX_CHAIN = 12
RETRY_RCODES = frozenset({FORMERR, SERVFAIL, NOTIMP, REFUSED})

Address = tuple[str, int]


class RandomSource(Protocol):
    """What the resolver needs from the ``random`` device."""

    def randbelow(self, n: int) -> int: ...


# --------------------------------------------------------------------------
# values


@dataclass(frozen=True)
class Record:
    """One resource record of an answer.

    ``value`` is decoded for the usual types: an address string (A, AAAA),
    ``(preference, exchange)`` (MX), a tuple of byte strings (TXT), a name
    (CNAME, NS, PTR), ``(priority, weight, port, target)`` (SRV),
    ``(mname, rname, serial, refresh, retry, expire, minimum)`` (SOA), and the
    raw RDATA bytes otherwise. Names are written without the final dot.
    """

    name: str
    rtype: int
    ttl: int
    value: object

    @property
    def type_name(self) -> str:
        return type_name(self.rtype)


@dataclass(frozen=True)
class Answer:
    """The answer to one question.

    ``rcode`` is NOERROR or NXDOMAIN; ``rrs`` the records of the asked type
    at the end of the CNAME chain (empty for NXDOMAIN and NODATA);
    ``canonical`` the name the chain ends at; ``ttl`` how long the answer
    stays valid (what is left of it when ``from_cache``).
    """

    name: str
    rtype: int
    rcode: int
    rrs: tuple[Record, ...]
    ttl: int
    from_cache: bool = False
    canonical: str = ""
    chain: tuple[Record, ...] = ()

    @property
    def values(self) -> list[object]:
        return [rr.value for rr in self.rrs]

    @property
    def nxdomain(self) -> bool:
        return self.rcode == NXDOMAIN


class ResolveError(Exception):
    """A question got no answer: every upstream timed out or failed, the
    name is not a valid domain name, or the caller gave up."""

    def __init__(self, name: str, rtype: int | str, reason: str) -> None:
        self.name = name
        self.rtype = rtype if isinstance(rtype, int) else type_code(rtype)
        self.reason = reason
        super().__init__(f"cannot resolve {name} {type_name(self.rtype)}: {reason}")


# events


@dataclass(frozen=True)
class Send:
    """Send ``data`` to ``upstream``: over UDP from local port ``source_port``,
    or over TCP (``transport == "tcp"``, ``source_port`` None; the adapter
    adds the 2-byte length). ``query_id`` names the exchange."""

    query_id: int
    upstream: Address
    transport: str
    data: bytes
    source_port: int | None


@dataclass(frozen=True)
class Release:
    """The exchange ``query_id`` with ``upstream`` is over: close its socket."""

    query_id: int
    upstream: Address
    transport: str


@dataclass(frozen=True)
class Resolved:
    """The question of ``ticket`` is answered."""

    ticket: int
    answer: Answer


@dataclass(frozen=True)
class Failed:
    """The question of ``ticket`` got no answer."""

    ticket: int
    error: ResolveError


Event = Union[Send, Release, Resolved, Failed]


@dataclass
class Stats:
    """Counters; what was dropped is counted, never raised."""

    sent: int = 0
    received: int = 0
    malformed: int = 0
    mismatched: int = 0
    timeouts: int = 0
    upstream_errors: int = 0
    tcp_fallbacks: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    coalesced: int = 0


# --------------------------------------------------------------------------
# names and types


def type_code(rtype: int | str) -> int:
    """``"MX"`` -> 15; integers pass through. ``ValueError`` when unknown."""
    if isinstance(rtype, int):
        if not 0 < rtype < 65536:
            raise ValueError(f"bad type {rtype}")
        return rtype
    name = rtype.upper()
    code = dnslib.QTYPE.reverse.get(name)
    if code is None and name.startswith("TYPE") and name[4:].isdigit():
        code = int(name[4:])
    if code is None:
        raise ValueError(f"unknown type {rtype!r}")
    return code


def type_name(rtype: int) -> str:
    return dnslib.QTYPE.get(rtype, f"TYPE{rtype}")


def _labels(name: str) -> tuple[bytes, ...]:
    """The lower-cased labels of a textual name (``ValueError`` when invalid)."""
    text = name.rstrip(".") if name != "." else ""
    if not text:
        return ()
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raw = text.encode("idna")
    labels = tuple(label.lower() for label in raw.split(b"."))
    if any(not 0 < len(label) < 64 for label in labels) or sum(map(len, labels)) + len(labels) > 254:
        raise ValueError(f"not a valid domain name: {name!r}")
    return labels


def _text(labels: Sequence[bytes]) -> str:
    return ".".join(label.decode("latin-1") for label in labels)


def _rname(label: dnslib.DNSLabel) -> tuple[bytes, ...]:
    return tuple(part.lower() for part in label.label)


def _value(rr: dnslib.RR) -> object:
    rd = rr.rdata
    t = rr.rtype
    if t in (1, 28):
        return str(rd)
    if t == 15:
        return (rd.preference, _text(_rname(rd.label)))
    if t == 16:
        return tuple(bytes(s) for s in rd.data)
    if t in (2, 5, 12):
        return _text(_rname(rd.label))
    if t == 33:
        return (rd.priority, rd.weight, rd.port, _text(_rname(rd.target)))
    if t == 6:
        return (_text(_rname(rd.mname)), _text(_rname(rd.rname)), *rd.times)
    buf = dnslib.DNSBuffer()
    rd.pack(buf)
    return bytes(buf.data)


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def parse_upstream(text: str, default_port: int = 53) -> Address:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"::1"``, ``"[::1]:5353"`` -> ``(host, port)``."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad upstream {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"an upstream is an IP address literal [with :port], not {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port in upstream {text!r}")
    return host, port


# --------------------------------------------------------------------------
# the resolver


@dataclass
class _Exchange:
    query_id: int
    key: tuple[tuple[bytes, ...], int]
    upstream_index: int
    transport: str
    deadline_ns: int
    source_port: int | None


@dataclass
class _Question:
    key: tuple[tuple[bytes, ...], int]
    name: str
    tickets: list[int]
    attempt: int = 0
    exchange: _Exchange | None = None
    reasons: list[str] = field(default_factory=list)


class Resolver:
    """The stub resolver's state machine.

    ``upstreams`` are ``(host, port)`` pairs or ``"host[:port]"`` strings.
    ``timeout_ns`` bounds one UDP exchange, ``tcp_timeout_ns`` one TCP one.
    """

    def __init__(self, upstreams: Sequence[Address | str], random: RandomSource, *,
                 timeout_ns: int = 1_000_000_000, tcp_timeout_ns: int = 3_000_000_000,
                 rounds: int = 2, cache_size: int = 4096, max_ttl: int = 86400,
                 max_negative_ttl: int = 3600, edns_payload: int | None = 1232,
                 recursion_desired: bool = True) -> None:
        self.upstreams = [parse_upstream(u) if isinstance(u, str) else (u[0], int(u[1]))
                          for u in upstreams]
        if not self.upstreams:
            raise ValueError("a stub resolver needs at least one upstream")
        self.random = random
        self.timeout_ns = timeout_ns
        self.tcp_timeout_ns = tcp_timeout_ns
        self.rounds = max(1, rounds)
        self.cache_size = cache_size
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self.edns_payload = edns_payload
        self.recursion_desired = recursion_desired
        self.stats = Stats()
        self._cache: OrderedDict[tuple, tuple[int, int, Answer]] = OrderedDict()
        self._questions: dict[tuple, _Question] = {}
        self._exchanges: dict[tuple[int, int], _Question] = {}  # (id, upstream index)
        self._tickets: dict[int, tuple] = {}
        self._next_ticket = 1
        self._next_upstream = 0

    # --- questions

    def query(self, name: str, rtype: int | str, now_ns: int) -> tuple[int, list[Event]]:
        """Ask ``(name, rtype)``: a ticket and what to do now.

        The events hold :class:`Resolved` at once on a cache hit, else the
        :class:`Send` of a new exchange (none when the same question is
        already in flight). Raises :class:`ResolveError` for an invalid
        name or type.
        """
        try:
            code = type_code(rtype)
            key = (_labels(name), code)
        except ValueError as exc:
            raise ResolveError(name, 0 if not isinstance(rtype, int) else rtype, str(exc)) from None
        ticket = self._next_ticket
        self._next_ticket += 1
        cached = self._lookup(key, now_ns)
        if cached is not None:
            self.stats.cache_hits += 1
            return ticket, [Resolved(ticket, cached)]
        self.stats.cache_misses += 1
        self._tickets[ticket] = key
        question = self._questions.get(key)
        if question is not None:
            self.stats.coalesced += 1
            question.tickets.append(ticket)
            return ticket, []
        question = _Question(key, _text(key[0]), [ticket])
        self._questions[key] = question
        start = self._next_upstream
        self._next_upstream = (self._next_upstream + 1) % len(self.upstreams)
        question.attempt = 0
        return ticket, self._send(question, start, "udp", now_ns)

    def cancel(self, ticket: int) -> list[Event]:
        """The caller gave up on ``ticket``; the exchange stops when no one waits."""
        key = self._tickets.pop(ticket, None)
        question = self._questions.get(key) if key is not None else None
        if question is None:
            return []
        question.tickets.remove(ticket)
        if question.tickets:
            return []
        del self._questions[key]
        return self._end_exchange(question)

    # --- input

    def handle(self, data: bytes, src: Address, now_ns: int, *,
               transport: str = "udp") -> list[Event]:
        """A datagram (or a TCP message without its length) from ``src``."""
        self.stats.received += 1
        try:
            reply = dnslib.DNSRecord.parse(data)
        except Exception:  # dnslib raises many kinds on bad input
            self.stats.malformed += 1
            return []
        question = self._match(reply, src, transport)
        if question is None:
            self.stats.mismatched += 1
            return []
        exchange = question.exchange
        assert exchange is not None
        rcode = reply.header.rcode
        if reply.header.tc and transport == "udp":
            self.stats.tcp_fallbacks += 1
            events = self._end_exchange(question)
            return events + self._send(question, exchange.upstream_index, "tcp", now_ns)
        if rcode in RETRY_RCODES or rcode not in (NOERROR, NXDOMAIN):
            self.stats.upstream_errors += 1
            return self._next(question, now_ns,
                              f"{self._show(exchange.upstream_index)} answered "
                              f"{dnslib.RCODE.get(rcode, rcode)}")
        try:
            answer = self._answer(question, reply)
        except Exception:  # records that do not decode
            self.stats.malformed += 1
            return self._next(question, now_ns,
                              f"{self._show(exchange.upstream_index)} sent an undecodable answer")
        self._store(question.key, answer, now_ns)
        return self._finish(question, answer)

    def transport_error(self, query_id: int, upstream: Address, now_ns: int,
                        reason: str) -> list[Event]:
        """The adapter could not send or receive for an exchange (TCP refused...)."""
        index = self._index(upstream)
        question = self._exchanges.get((query_id, index)) if index is not None else None
        if question is None:
            return []
        self.stats.upstream_errors += 1
        return self._next(question, now_ns, f"{self._show(index)}: {reason}")

    def active(self, query_id: int, upstream: Address) -> bool:
        """Whether the exchange ``query_id`` with ``upstream`` is in flight."""
        index = self._index(upstream)
        return index is not None and (query_id, index) in self._exchanges

    def tick(self, now_ns: int) -> list[Event]:
        """Expire exchanges whose deadline has passed."""
        events: list[Event] = []
        for question in list(self._questions.values()):
            ex = question.exchange
            if ex is not None and ex.deadline_ns <= now_ns:
                self.stats.timeouts += 1
                events += self._next(question, now_ns,
                                     f"{self._show(ex.upstream_index)} timed out ({ex.transport})")
        return events

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has work next (``now_ns`` units), or None."""
        deadlines = [q.exchange.deadline_ns for q in self._questions.values() if q.exchange]
        return min(deadlines, default=None)

    # --- cache

    def _lookup(self, key: tuple, now_ns: int) -> Answer | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        stored_ns, expires_ns, answer = entry
        if expires_ns <= now_ns:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        age = (now_ns - stored_ns) // 1_000_000_000
        return Answer(answer.name, answer.rtype, answer.rcode,
                      tuple(Record(r.name, r.rtype, max(0, r.ttl - age), r.value) for r in answer.rrs),
                      max(0, answer.ttl - age), True, answer.canonical,
                      tuple(Record(r.name, r.rtype, max(0, r.ttl - age), r.value)
                            for r in answer.chain))

    def _store(self, key: tuple, answer: Answer, now_ns: int) -> None:
        if answer.ttl <= 0 or self.cache_size <= 0:
            return
        self._cache[key] = (now_ns, now_ns + answer.ttl * 1_000_000_000, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def flush(self) -> None:
        """Forget every cached answer."""
        self._cache.clear()

    # --- exchanges

    def _send(self, question: _Question, index: int, transport: str, now_ns: int) -> list[Event]:
        while True:
            query_id = self.random.randbelow(65536)
            if (query_id, index) not in self._exchanges:
                break
        port = 1024 + self.random.randbelow(65536 - 1024) if transport == "udp" else None
        timeout = self.timeout_ns if transport == "udp" else self.tcp_timeout_ns
        question.exchange = _Exchange(query_id, question.key, index, transport,
                                      now_ns + timeout, port)
        self._exchanges[(query_id, index)] = question
        self.stats.sent += 1
        return [Send(query_id, self.upstreams[index], transport,
                     self._wire(question, query_id, transport), port)]

    def _wire(self, question: _Question, query_id: int, transport: str) -> bytes:
        labels, code = question.key
        q = dnslib.DNSRecord(dnslib.DNSHeader(id=query_id, rd=int(self.recursion_desired)),
                             q=dnslib.DNSQuestion(dnslib.DNSLabel(list(labels)), code))
        if self.edns_payload and transport == "udp":
            q.add_ar(dnslib.EDNS0(udp_len=self.edns_payload))
        return bytes(q.pack())

    def _end_exchange(self, question: _Question) -> list[Event]:
        ex = question.exchange
        if ex is None:
            return []
        question.exchange = None
        self._exchanges.pop((ex.query_id, ex.upstream_index), None)
        return [Release(ex.query_id, self.upstreams[ex.upstream_index], ex.transport)]

    def _next(self, question: _Question, now_ns: int, reason: str) -> list[Event]:
        ex = question.exchange
        assert ex is not None
        question.reasons.append(reason)
        events = self._end_exchange(question)
        question.attempt += 1
        if question.attempt >= self.rounds * len(self.upstreams):
            error_reason = "all upstreams failed: " + "; ".join(question.reasons[-4:])
            return events + self._fail(question, error_reason)
        index = (ex.upstream_index + 1) % len(self.upstreams)
        return events + self._send(question, index, "udp", now_ns)

    def _fail(self, question: _Question, reason: str) -> list[Event]:
        self._questions.pop(question.key, None)
        events: list[Event] = []
        for ticket in question.tickets:
            self._tickets.pop(ticket, None)
            events.append(Failed(ticket, ResolveError(question.name, question.key[1], reason)))
        return events

    def _finish(self, question: _Question, answer: Answer) -> list[Event]:
        events = self._end_exchange(question)
        self._questions.pop(question.key, None)
        for ticket in question.tickets:
            self._tickets.pop(ticket, None)
            events.append(Resolved(ticket, answer))
        return events

    def _index(self, src: Address) -> int | None:
        for i, (host, port) in enumerate(self.upstreams):
            if port == src[1] and _same_host(host, src[0]):
                return i
        return None

    def _show(self, index: int) -> str:
        host, port = self.upstreams[index]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _match(self, reply: dnslib.DNSRecord, src: Address, transport: str) -> _Question | None:
        if not reply.header.qr:
            return None
        index = self._index(src)
        if index is None:
            return None
        question = self._exchanges.get((reply.header.id, index))
        if question is None or question.exchange is None or question.exchange.transport != transport:
            return None
        if len(reply.questions) != 1:
            return None
        q = reply.questions[0]
        if q.qclass != 1 or q.qtype != question.key[1] or _rname(q.qname) != question.key[0]:
            return None
        return question

    # --- answers

    def _answer(self, question: _Question, reply: dnslib.DNSRecord) -> Answer:
        labels, code = question.key
        current = labels
        chain: list[Record] = []
        rrs: list[Record] = []
        seen = {current}
        for _ in range(MAX_CHAIN + 1):
            here = [rr for rr in reply.rr if _rname(rr.rname) == current and rr.rclass == 1]
            rrs = [self._record(rr) for rr in here if rr.rtype == code]
            if rrs or code == 5:
                break
            cname = next((rr for rr in here if rr.rtype == 5), None)
            if cname is None:
                break
            chain.append(self._record(cname))
            current = _rname(cname.rdata.label)
            if current in seen:
                break
            seen.add(current)
        rcode = reply.header.rcode
        if rrs:
            ttl = min(r.ttl for r in rrs + chain)
            ttl = min(ttl, self.max_ttl)
        else:
            ttl = self._negative_ttl(reply, chain)
            if rcode == NOERROR and not chain and not any(rr.rtype == 6 for rr in reply.auth):
                ttl = 0  # a NODATA without SOA says nothing about how long
        return Answer(question.name, code, rcode, tuple(rrs), ttl, False, _text(current),
                      tuple(chain))

    def _negative_ttl(self, reply: dnslib.DNSRecord, chain: list[Record]) -> int:
        soa = next((rr for rr in reply.auth if rr.rtype == 6), None)
        if soa is None:
            return 0
        ttl = min(soa.ttl, soa.rdata.times[-1], self.max_negative_ttl)
        if chain:
            ttl = min([ttl] + [r.ttl for r in chain])
        return max(0, ttl)

    def _record(self, rr: dnslib.RR) -> Record:
        return Record(_text(_rname(rr.rname)), rr.rtype, min(rr.ttl, self.max_ttl), _value(rr))
