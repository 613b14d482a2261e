"""A DHCP client (RFC 2131, options from RFC 2132), sans-I/O.

Rules of the state machine (RFC 2131 section 4.4, figure 5):

* INIT: send DHCPDISCOVER (broadcast), go to SELECTING.
* SELECTING: the first DHCPOFFER for our ``xid`` wins; send DHCPREQUEST
  (broadcast, with the server identifier and the offered address), go to
  REQUESTING.
* REQUESTING: DHCPACK -> BOUND (emit :class:`Bound`); DHCPNAK -> INIT.
* BOUND: at T1 (default lease/2) go to RENEWING and unicast DHCPREQUEST to
  the server with ``ciaddr`` set; at T2 (default lease*7/8) go to REBINDING
  and broadcast it; an ACK in either returns to BOUND with new times; a NAK,
  or the lease running out, emits :class:`Lost` and restarts at INIT.
* Retransmission while waiting: 4 s, 8 s, 16 s, 32 s, 64 s, 64 s ... each
  with up to one second of jitter (RFC 2131 4.1); in RENEWING/REBINDING,
  half the time left to T2/expiry, at least 60 s (RFC 2131 4.4.5).

Time and entropy are inputs: ``now_ns`` (monotonic) on every call, and an
``entropy(n) -> bytes`` function for transaction ids and jitter (the
appliance passes its ``random`` device). The client never sends: it returns
:class:`Send` outputs, and the caller delivers them from UDP port 68 to port
67. Received packets are UDP payloads from port 67; anything malformed or
not for us is ignored and counted in ``counters``.

The wire format is written here rather than taken from a library: the
DHCP packages on the index are either large (scapy) or unmaintained, and
the format is a fixed 236-byte header plus type-length-value options.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

CLIENT_PORT, SERVER_PORT = 68, 67
MAGIC = b"\x63\x82\x53\x63"
BOOTREQUEST, BOOTREPLY = 1, 2
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_NAMES = {DISCOVER: "DISCOVER", OFFER: "OFFER", REQUEST: "REQUEST", DECLINE: "DECLINE",
                 ACK: "ACK", NAK: "NAK", RELEASE: "RELEASE", INFORM: "INFORM"}

OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN = 1, 3, 6, 12, 15
OPT_MTU = 26
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_MESSAGE_TYPE, OPT_SERVER_ID = 50, 51, 53, 54
OPT_PARAMETERS, OPT_MAX_SIZE, OPT_T1, OPT_T2, OPT_CLIENT_ID = 55, 57, 58, 59, 61

SECOND = 1_000_000_000
INFINITE = 0xFFFFFFFF


class DhcpError(ValueError):
    """A DHCP message could not be parsed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"dhcp: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """A parsed DHCP message (the fields a client uses, and every option raw)."""

    op: int
    xid: int
    secs: int
    flags: int
    ciaddr: str
    yiaddr: str
    siaddr: str
    chaddr: bytes
    options: dict[int, bytes]

    @property
    def type(self) -> int | None:
        raw = self.options.get(OPT_MESSAGE_TYPE)
        return raw[0] if raw and len(raw) == 1 else None

    def address_option(self, code: int) -> str | None:
        raw = self.options.get(code)
        return str(ipaddress.IPv4Address(raw[:4])) if raw and len(raw) >= 4 else None

    def addresses_option(self, code: int) -> list[str]:
        raw = self.options.get(code) or b""
        return [str(ipaddress.IPv4Address(raw[i:i + 4])) for i in range(0, len(raw) - 3, 4)]

    def seconds_option(self, code: int) -> int | None:
        raw = self.options.get(code)
        return struct.unpack("!I", raw)[0] if raw and len(raw) == 4 else None


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def parse(data: bytes) -> Message:
    """Parse a DHCP message; :class:`DhcpError` on anything malformed."""
    if len(data) < HEADER.size + 4:
        raise DhcpError(f"{len(data)} bytes is shorter than a DHCP message")
    (op, htype, hlen, _hops, xid, secs, flags, ci, yi, si, _gi, chaddr, _sname,
     _file) = HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpError(f"op {op} is neither request nor reply")
    if htype != 1 or hlen != 6:
        raise DhcpError(f"hardware type {htype}/{hlen} is not Ethernet")
    if data[HEADER.size:HEADER.size + 4] != MAGIC:
        raise DhcpError("no DHCP magic cookie")
    options: dict[int, bytes] = {}
    i = HEADER.size + 4
    while i < len(data):
        code = data[i]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data):
            raise DhcpError(f"option {code} is cut short")
        length = data[i + 1]
        value = data[i + 2:i + 2 + length]
        if len(value) != length:
            raise DhcpError(f"option {code} claims {length} bytes, {len(value)} left")
        # RFC 3396: a repeated option is concatenated
        options[code] = options.get(code, b"") + value
        i += 2 + length
    else:
        raise DhcpError("options lack the end marker")

    def ip(b: bytes) -> str:
        return str(ipaddress.IPv4Address(b))

    return Message(op, xid, secs, flags, ip(ci), ip(yi), ip(si), chaddr[:6], options)


def build(op: int, xid: int, mac: bytes, options: list[tuple[int, bytes]], *,
          ciaddr: str = "0.0.0.0", yiaddr: str = "0.0.0.0", siaddr: str = "0.0.0.0",
          secs: int = 0, broadcast: bool = False) -> bytes:
    """A DHCP message; ``options`` in order, without the end marker."""
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes")
    head = HEADER.pack(op, 1, 6, 0, xid, min(secs, 0xFFFF), 0x8000 if broadcast else 0,
                       _ip(ciaddr), _ip(yiaddr), _ip(siaddr), bytes(4), mac.ljust(16, b"\0"),
                       bytes(64), bytes(128))
    body = bytearray(MAGIC)
    for code, value in options:
        if len(value) > 255:
            raise ValueError(f"option {code} is longer than 255 bytes")
        body += bytes((code, len(value))) + value
    body.append(OPT_END)
    out = head + bytes(body)
    return out + bytes(max(0, 300 - len(out)))  # BOOTP minimum size, some servers insist


# --------------------------------------------------------------------------
# the client state machine


@dataclass(frozen=True)
class Lease:
    """What the server granted."""

    address: str
    prefix: int
    router: str | None
    dns: tuple[str, ...]
    server: str
    lease_s: int
    t1_s: int
    t2_s: int
    mtu: int | None = None
    domain: str | None = None

    @property
    def interface(self) -> str:
        return f"{self.address}/{self.prefix}"


@dataclass(frozen=True)
class Send:
    """Send ``payload`` from port 68 to ``(destination, 67)``; broadcast if 255.255.255.255."""

    payload: bytes
    destination: str


@dataclass(frozen=True)
class Bound:
    """A lease was obtained or renewed; configure the interface with it."""

    lease: Lease
    renewed: bool


@dataclass(frozen=True)
class Lost:
    """The lease is gone (NAK or expiry); stop using the address."""

    reason: str


Output = Send | Bound | Lost

INIT, SELECTING, REQUESTING, BOUND, RENEWING, REBINDING = (
    "init", "selecting", "requesting", "bound", "renewing", "rebinding")


@dataclass
class DhcpClient:
    """The client. Call :meth:`start`, then :meth:`handle` and :meth:`tick`."""

    mac: bytes
    entropy: Callable[[int], bytes]
    hostname: str | None = None
    state: str = INIT
    lease: Lease | None = None
    counters: dict[str, int] = field(default_factory=dict)
    _xid: int = 0
    _offer: Message | None = None
    _deadline: int | None = None       # next retransmission
    _attempt: int = 0
    _started: int = 0                  # when the current exchange began
    _bound_at: int = 0

    # -- inputs -----------------------------------------------------------
    def start(self, now_ns: int) -> list[Output]:
        """Begin (or begin again) in INIT: send a DISCOVER."""
        self.state = INIT
        self.lease = None
        return self._discover(now_ns)

    def next_timer(self) -> int | None:
        """When :meth:`tick` next has something to do (monotonic ns), or None."""
        times = [t for t in (self._deadline, *self._lease_times()) if t is not None]
        return min(times) if times else None

    def tick(self, now_ns: int) -> list[Output]:
        """Retransmit, renew, rebind or expire, as time says."""
        out: list[Output] = []
        if self.state in (BOUND, RENEWING, REBINDING) and self.lease is not None:
            t1, t2, end = self._lease_times()
            if end is not None and now_ns >= end:
                self._count("lease_expired")
                return [Lost("lease expired"), *self.start(now_ns)]
            if self.state == BOUND and t1 is not None and now_ns >= t1:
                self.state = RENEWING
                self._deadline = None
            if self.state == RENEWING and t2 is not None and now_ns >= t2:
                self.state = REBINDING
                self._deadline = None
            if self.state in (RENEWING, REBINDING) and (
                    self._deadline is None or now_ns >= self._deadline):
                out.append(self._renew_request(now_ns))
            return out
        if self._deadline is not None and now_ns >= self._deadline:
            self._count("retransmissions")
            if self.state == SELECTING:
                return self._discover(now_ns, again=True)
            if self.state == REQUESTING and self._offer is not None:
                if self._attempt >= 4:  # the server went quiet: start over
                    return self.start(now_ns)
                return [self._request(now_ns, again=True)]
        return out

    def handle(self, payload: bytes, now_ns: int) -> list[Output]:
        """A UDP payload that arrived from port 67."""
        try:
            msg = parse(payload)
        except DhcpError:
            self._count("malformed")
            return []
        if msg.op != BOOTREPLY or msg.xid != self._xid or msg.chaddr != self.mac:
            self._count("not_ours")
            return []
        kind = msg.type
        if self.state == SELECTING and kind == OFFER:
            if msg.address_option(OPT_SERVER_ID) is None or msg.yiaddr == "0.0.0.0":
                self._count("bad_offer")
                return []
            self._offer = msg
            self.state = REQUESTING
            self._attempt = 0
            return [self._request(now_ns)]
        if self.state in (REQUESTING, RENEWING, REBINDING) and kind == ACK:
            lease = self._lease_from(msg)
            if lease is None:
                self._count("bad_ack")
                return []
            renewed = self.state != REQUESTING
            self.lease, self.state, self._bound_at = lease, BOUND, now_ns
            self._deadline = None
            return [Bound(lease, renewed)]
        if self.state in (REQUESTING, RENEWING, REBINDING) and kind == NAK:
            self._count("naks")
            lost: list[Output] = [Lost("server refused (NAK)")] if self.lease else []
            return [*lost, *self.start(now_ns)]
        self._count("unexpected")
        return []

    # -- internals --------------------------------------------------------
    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _jitter_ns(self) -> int:
        return int.from_bytes(self.entropy(4), "big") % (2 * SECOND) - SECOND

    def _backoff(self, now_ns: int) -> None:
        base = min(4 << self._attempt, 64) * SECOND
        self._deadline = now_ns + base + self._jitter_ns()
        self._attempt += 1

    def _common(self) -> list[tuple[int, bytes]]:
        opts = [(OPT_CLIENT_ID, b"\x01" + self.mac), (OPT_MAX_SIZE, struct.pack("!H", 1500)),
                (OPT_PARAMETERS, bytes((OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_DOMAIN,
                                        OPT_MTU, OPT_LEASE_TIME, OPT_T1, OPT_T2)))]
        if self.hostname:
            opts.append((OPT_HOSTNAME, self.hostname.encode()[:63]))
        return opts

    def _secs(self, now_ns: int) -> int:
        return max(0, (now_ns - self._started) // SECOND)

    def _discover(self, now_ns: int, again: bool = False) -> list[Output]:
        if not again:
            self._xid = int.from_bytes(self.entropy(4), "big")
            self._started = now_ns
            self._attempt = 0
            self._offer = None
        self.state = SELECTING
        self._backoff(now_ns)
        payload = build(BOOTREQUEST, self._xid, self.mac,
                        [(OPT_MESSAGE_TYPE, bytes((DISCOVER,))), *self._common()],
                        secs=self._secs(now_ns))
        return [Send(payload, "255.255.255.255")]

    def _request(self, now_ns: int, again: bool = False) -> Send:
        assert self._offer is not None
        self._backoff(now_ns)
        server = self._offer.address_option(OPT_SERVER_ID) or "0.0.0.0"
        payload = build(BOOTREQUEST, self._xid, self.mac,
                        [(OPT_MESSAGE_TYPE, bytes((REQUEST,))),
                         (OPT_REQUESTED_IP, _ip(self._offer.yiaddr)),
                         (OPT_SERVER_ID, _ip(server)), *self._common()],
                        secs=self._secs(now_ns))
        return Send(payload, "255.255.255.255")

    def _renew_request(self, now_ns: int) -> Send:
        assert self.lease is not None
        if self._deadline is None:  # a new renewing/rebinding phase
            self._xid = int.from_bytes(self.entropy(4), "big")
            self._started = now_ns
        _, t2, end = self._lease_times()
        limit = t2 if self.state == RENEWING else end
        wait = max(60 * SECOND, ((limit or now_ns) - now_ns) // 2)
        self._deadline = now_ns + wait
        payload = build(BOOTREQUEST, self._xid, self.mac,
                        [(OPT_MESSAGE_TYPE, bytes((REQUEST,))), *self._common()],
                        ciaddr=self.lease.address, secs=self._secs(now_ns))
        dest = self.lease.server if self.state == RENEWING else "255.255.255.255"
        return Send(payload, dest)

    def _lease_times(self) -> tuple[int | None, int | None, int | None]:
        if self.lease is None or self.state not in (BOUND, RENEWING, REBINDING):
            return None, None, None
        if self.lease.lease_s == INFINITE:
            return None, None, None
        at = self._bound_at
        return (at + self.lease.t1_s * SECOND, at + self.lease.t2_s * SECOND,
                at + self.lease.lease_s * SECOND)

    def _lease_from(self, msg: Message) -> Lease | None:
        if msg.yiaddr == "0.0.0.0":
            return None
        lease_s = msg.seconds_option(OPT_LEASE_TIME)
        if lease_s is None:
            return None
        mask = msg.address_option(OPT_SUBNET_MASK)
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if mask else 24
        except ValueError:
            return None
        t1 = msg.seconds_option(OPT_T1) or lease_s // 2
        t2 = msg.seconds_option(OPT_T2) or lease_s * 7 // 8
        server = msg.address_option(OPT_SERVER_ID) or (
            self._offer.address_option(OPT_SERVER_ID) if self._offer else None) or msg.siaddr
        mtu_raw = msg.options.get(OPT_MTU)
        mtu = struct.unpack("!H", mtu_raw)[0] if mtu_raw and len(mtu_raw) == 2 else None
        domain_raw = msg.options.get(OPT_DOMAIN)
        routers = msg.addresses_option(OPT_ROUTER)
        return Lease(address=msg.yiaddr, prefix=prefix, router=routers[0] if routers else None,
                     dns=tuple(msg.addresses_option(OPT_DNS)), server=server, lease_s=lease_s,
                     t1_s=min(t1, lease_s), t2_s=min(max(t2, t1), lease_s), mtu=mtu,
                     domain=domain_raw.decode("ascii", "replace") if domain_raw else None)
