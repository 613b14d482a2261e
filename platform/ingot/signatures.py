"""Device signatures: the contracts appliances are written against.

A signature is a :class:`typing.Protocol`. Its docstrings are the contract:
what each method does, who owns a buffer, size limits, how a blocking call is
stopped and which error is raised when. Backends (in plugins) implement them;
appliances receive devices by signature and never name a backend.

Common rules for every signature:

* ``close()`` never raises, may be called more than once, and ends every
  pending call on the device (those raise :class:`Closed`).
* A blocking call (``async``) is stopped by cancelling the task that awaits
  it; the device stays usable afterwards unless the docstring says otherwise.
* Bytes passed in are not kept by the device unless stated; bytes returned
  belong to the caller.
* Errors are the small classes below. They carry what went wrong and read
  well as text. Anything else escaping a device is a bug in that backend.

The kind names (``"kv_ro"``, ``"stack"`` ...) are what plans, manifests and
registry entries use; :data:`KINDS` maps them to the protocol classes.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

# --------------------------------------------------------------------------
# errors


class DeviceError(Exception):
    """Base class of every error a device raises."""


class Closed(DeviceError):
    """The device (or flow) was closed while or before the call ran."""

    def __init__(self, what: str = "device") -> None:
        super().__init__(f"{what} is closed")
        self.what = what


class Unsupported(DeviceError):
    """The backend does not implement this operation (e.g. TCP on a stack without it)."""

    def __init__(self, what: str, backend: str) -> None:
        super().__init__(f"{what} is not supported by the {backend} backend")
        self.what = what
        self.backend = backend


class InvalidKey(DeviceError):
    """A store key is malformed (empty segment, ``..``, NUL, too long)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class NotFound(DeviceError):
    """Nothing is stored under ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"not found: {key!r}")
        self.key = key


class ValueExpected(DeviceError):
    """``key`` names a dictionary where a value was needed."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key!r} is a dictionary, a value was expected")
        self.key = key


class DictionaryExpected(DeviceError):
    """``key`` names a value where a dictionary was needed."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key!r} is a value, a dictionary was expected")
        self.key = key


class NoSpace(DeviceError):
    """The store (or a buffer) is full; ``need`` bytes did not fit."""

    def __init__(self, what: str, need: int | None = None) -> None:
        extra = f" ({need} bytes needed)" if need is not None else ""
        super().__init__(f"no space left in {what}{extra}")
        self.what = what
        self.need = need


class Conflict(DeviceError):
    """A conditional write lost: the stored digest was not the expected one."""

    def __init__(self, key: str, expected: bytes | None, actual: bytes | None) -> None:
        exp = expected.hex() if expected else "absent"
        act = actual.hex() if actual else "absent"
        super().__init__(f"conflict on {key!r}: expected {exp}, found {act}")
        self.key = key
        self.expected = expected
        self.actual = actual


class StoreError(DeviceError):
    """The storage below the device failed (I/O error, corrupt repository)."""


class RemoteError(DeviceError):
    """A remote (git push/pull, peer) refused or could not be reached."""


class AddressInUse(DeviceError):
    """A listen/bind address is already taken."""

    def __init__(self, address: str) -> None:
        super().__init__(f"address in use: {address}")
        self.address = address


class ConnectionRefused(DeviceError):
    """The remote end refused a connection."""

    def __init__(self, address: str) -> None:
        super().__init__(f"connection refused: {address}")
        self.address = address


class Unreachable(DeviceError):
    """No route to the destination, or the connection attempt timed out."""

    def __init__(self, address: str, reason: str = "unreachable") -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address


class ConnectionReset(DeviceError):
    """The peer reset the connection."""


class MessageTooLong(DeviceError):
    """A datagram or frame is larger than the device can carry."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes exceed the limit of {limit}")
        self.size = size
        self.limit = limit


class TlsError(DeviceError):
    """The TLS handshake or record layer failed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"TLS: {reason}")
        self.reason = reason


# --------------------------------------------------------------------------
# time and entropy


class MClock(Protocol):
    """A monotonic clock.

    ``elapsed_ns()`` only grows; it says nothing about the wall time and is
    the time every protocol core is fed with (timers, timeouts, expiry).
    """

    def elapsed_ns(self) -> int:
        """Nanoseconds since an arbitrary fixed point (the device's start)."""
        ...

    def period_ns(self) -> int | None:
        """The clock's resolution in nanoseconds, or None when unknown."""
        ...


class PClock(Protocol):
    """A POSIX (wall) clock: may jump, never use it to measure intervals."""

    def now(self) -> tuple[int, int]:
        """``(seconds, nanoseconds)`` since 1970-01-01T00:00:00Z, UTC."""
        ...

    def now_d_ps(self) -> float:
        """Seconds since the epoch as a float (for logs and headers)."""
        ...

    def tz_offset_s(self) -> int | None:
        """The local offset from UTC in seconds, or None when unknown."""
        ...


class Sleep(Protocol):
    """Waiting for time to pass."""

    async def sleep_ns(self, ns: int) -> None:
        """Return after at least ``ns`` nanoseconds.

        Negative or zero returns at the next scheduling point. Stopped by
        cancelling the awaiting task (raises ``CancelledError``).
        """
        ...


class Random(Protocol):
    """A source of entropy.

    ``os`` backs it with the kernel's CSPRNG; ``seeded`` is deterministic
    (tests only: its output is predictable by design).
    """

    def generate(self, n: int) -> bytes:
        """``n`` random bytes (``n`` >= 0; at most 1 MiB per call, else ValueError)."""
        ...

    def randbelow(self, n: int) -> int:
        """A uniform integer in ``[0, n)``; ``n`` must be positive."""
        ...


# --------------------------------------------------------------------------
# key-value stores


class Kind(enum.Enum):
    """What a store key names."""

    VALUE = "value"
    DICTIONARY = "dictionary"


@dataclass(frozen=True)
class Change:
    """One change seen by a watcher: ``key`` was set (``present``) or removed."""

    key: str
    present: bool


class KvRO(Protocol):
    """A read-only key-value store (the MirageOS ``Mirage_kv.RO``).

    Keys are ``/``-separated paths of non-empty segments without ``.``/``..``
    or NUL, at most 1024 bytes in UTF-8 (``InvalidKey`` otherwise). ``""``
    names the root dictionary. A value's bytes belong to the caller. Reads
    see one consistent version of the store; where the store changes
    underneath (a ``git`` backend following a branch), a single call never
    mixes two versions.
    """

    async def exists(self, key: str) -> Kind | None:
        """What ``key`` names, or None when nothing is stored there."""
        ...

    async def get(self, key: str) -> bytes:
        """The value under ``key``.

        Raises ``NotFound`` or ``ValueExpected`` (when it is a dictionary).
        """
        ...

    async def get_partial(self, key: str, offset: int, length: int) -> bytes:
        """At most ``length`` bytes of the value from ``offset`` (short at the end).

        A negative ``offset`` or ``length`` raises ``ValueError``.
        """
        ...

    async def list(self, key: str) -> list[tuple[str, Kind]]:
        """The entries of dictionary ``key`` as ``(name, kind)``, sorted by name.

        Raises ``NotFound`` or ``DictionaryExpected``.
        """
        ...

    async def size(self, key: str) -> int:
        """The length in bytes of the value under ``key`` (``NotFound``, ``ValueExpected``)."""
        ...

    async def digest(self, key: str) -> bytes:
        """A digest of what ``key`` names that changes whenever it changes.

        For a value, the backend's content hash (sha256, or git's object id
        for ``git``); for a dictionary, a hash over its entries. Usable as an
        ETag. Raises ``NotFound``.
        """
        ...

    async def last_modified(self, key: str) -> tuple[int, int]:
        """POSIX time ``(s, ns)`` of the last change of ``key`` (``NotFound``)."""
        ...

    def close(self) -> None:
        """Release the store. Never raises."""
        ...


class KvBatch(Protocol):
    """The writes of one atomic batch (see :meth:`KvRW.batch`)."""

    async def set(self, key: str, value: bytes) -> None:
        """Stage ``value`` under ``key`` (creating parent dictionaries)."""
        ...

    async def remove(self, key: str) -> None:
        """Stage the removal of ``key`` and everything under it (absent: no-op)."""
        ...

    async def get(self, key: str) -> bytes:
        """Read through the batch: staged writes first, then the store."""
        ...


class KvRW(KvRO, Protocol):
    """A read-write key-value store: :class:`KvRO` plus writes and watches.

    Every completed write is durable: once ``set``/``remove``/a batch returns,
    the change survives a crash of the process or the machine (the ``memory``
    backend excepted, by definition). A write that fails leaves the previous
    value in place. ``set`` on a key whose parent is a value raises
    ``DictionaryExpected`` naming that value; setting a key that is a
    dictionary raises ``ValueExpected``. Dictionaries exist only while they
    hold something: a removal or rename that empties one removes it too.
    """

    async def set(self, key: str, value: bytes, *, if_digest: bytes | None = None) -> None:
        """Store ``value`` under ``key`` atomically.

        With ``if_digest``, only if the current digest is that (use ``b""``
        for "must not exist"); otherwise ``Conflict``. ``NoSpace`` when full.
        """
        ...

    async def remove(self, key: str) -> None:
        """Remove ``key`` (a value or a whole dictionary). Absent: no-op.

        ``remove("")`` empties the store.
        """
        ...

    async def rename(self, source: str, dest: str) -> None:
        """Move ``source`` to ``dest`` atomically (``NotFound``), replacing ``dest``."""
        ...

    def batch(self, message: str = "", author: str | None = None) -> "KvBatchContext":
        """An atomic group of writes: ``async with kv.batch("msg") as b: ...``.

        Either every staged change is applied when the block ends, or (on an
        exception in the block, or a failure while applying) none is. On the
        ``git`` backend a batch is one commit with ``message`` and ``author``
        (``"Name <email>"``); other backends ignore both.
        """
        ...

    def watch(self, prefix: str = "") -> "Watcher":
        """Changes to keys under ``prefix`` from now on, as :class:`Change` events.

        Events from writes in this process arrive in order; changes made
        outside (another process, a ``git`` pull) arrive once noticed.
        ``Watcher.close()`` ends the iteration; closing the store makes a
        watcher waiting for the next event raise ``Closed``.
        """
        ...


class KvBatchContext(Protocol):
    """Returned by :meth:`KvRW.batch`; an async context manager giving a :class:`KvBatch`."""

    async def __aenter__(self) -> KvBatch: ...

    async def __aexit__(self, et: object, ev: object, tb: object) -> bool | None: ...


class Watcher(Protocol):
    """An async iterator of :class:`Change`; ``close()`` ends the iteration."""

    def __aiter__(self) -> AsyncIterator[Change]: ...

    async def __anext__(self) -> Change: ...

    def close(self) -> None:
        """Stop watching. Never raises."""
        ...


class KvRemote(Protocol):
    """A store that can exchange its history with a remote (the ``git`` kv_rw).

    Not every kv_rw backend is one; an appliance that needs it asks for the
    ``git`` backend explicitly in its manifest.
    """

    async def pull(self) -> bool:
        """Fetch and merge (fast-forward) the remote branch; True if anything changed.

        A diverged history raises ``Conflict``; an unreachable or refusing
        remote raises ``RemoteError``. Watchers see the changed keys.
        """
        ...

    async def push(self) -> None:
        """Send local commits to the remote branch (``RemoteError`` if refused)."""
        ...


# --------------------------------------------------------------------------
# network


Address = tuple[str, int]
"""``(host, port)``: an IPv4 or IPv6 address literal and a port."""


class Flow(Protocol):
    """A reliable, ordered byte stream (a TCP connection, or TLS over one)."""

    @property
    def peer(self) -> Address:
        """The remote address."""
        ...

    @property
    def local(self) -> Address:
        """The local address."""
        ...

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at end of stream.

        Raises ``ConnectionReset`` or ``Closed``. Stopped by cancellation.
        """
        ...

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or ``ConnectionReset`` if the stream ends first."""
        ...

    async def write(self, data: bytes) -> None:
        """Queue ``data`` and wait until the send buffer has room again.

        Raises ``ConnectionReset`` or ``Closed``. ``data`` is not kept.
        """
        ...

    async def shutdown(self) -> None:
        """Half-close: no more writes; reads go on until the peer closes."""
        ...

    def close(self) -> None:
        """Close both directions now. Never raises."""
        ...


FlowHandler = Callable[[Flow], Awaitable[None]]
"""Runs once per accepted connection; the flow is closed when it returns."""

DatagramHandler = Callable[[bytes, Address], None]
"""Called synchronously for each datagram received (fast path, no task)."""


class Listener(Protocol):
    """A listening TCP socket (from :meth:`Stack.listen_tcp`)."""

    @property
    def address(self) -> Address:
        """Where it listens (the actual port when 0 was asked for)."""
        ...

    def close(self) -> None:
        """Stop accepting; flows already accepted go on. Never raises."""
        ...


class Datagrams(Protocol):
    """A bound UDP socket (from :meth:`Stack.bind_udp`)."""

    @property
    def address(self) -> Address:
        """The bound address (the actual port when 0 was asked for)."""
        ...

    async def recvfrom(self) -> tuple[bytes, Address]:
        """The next datagram and its source (only without a handler).

        At most 256 datagrams wait; more are dropped and counted in
        ``dropped``. Raises ``Closed``.
        """
        ...

    def sendto(self, data: bytes, address: Address) -> None:
        """Send one datagram now; never blocks.

        Raises ``MessageTooLong`` above the stack's limit (65507 bytes for
        IPv4). When the send buffer is full the datagram is dropped and
        counted in ``dropped``, as a network would.
        """
        ...

    @property
    def dropped(self) -> int:
        """Datagrams dropped so far (queue full, send buffer full)."""
        ...

    def close(self) -> None:
        """Unbind. Never raises."""
        ...


class Stack(Protocol):
    """TCP and UDP over IPv4 and IPv6.

    Hosts are address literals (``"127.0.0.1"``, ``"::1"``, ``"0.0.0.0"``,
    ``"::"``); a stack does not resolve names. Port 0 asks for any free port.
    """

    @property
    def mtu(self) -> int:
        """The link MTU the stack assumes (sizes its datagram buffers)."""
        ...

    async def listen_tcp(self, host: str, port: int, handler: FlowHandler,
                         *, backlog: int = 128) -> Listener:
        """Accept connections on ``(host, port)``, running ``handler`` for each.

        Each handler runs in its own task; an exception in it is logged and
        closes only that flow. Raises ``AddressInUse``, or ``Unsupported``
        on a stack without TCP.
        """
        ...

    async def connect_tcp(self, host: str, port: int, *, timeout_s: float = 30.0) -> Flow:
        """Open a connection. Raises ``ConnectionRefused`` or ``Unreachable``."""
        ...

    async def bind_udp(self, host: str, port: int,
                       handler: DatagramHandler | None = None) -> Datagrams:
        """Bind a UDP socket. With ``handler``, each datagram is passed to it
        as it arrives and ``recvfrom`` is not used. Raises ``AddressInUse``.
        """
        ...

    def close(self) -> None:
        """Close every listener, flow and socket of this stack. Never raises."""
        ...


class Net(Protocol):
    """An Ethernet interface: whole frames in and out (tap, AF_PACKET, memory)."""

    @property
    def mac(self) -> bytes:
        """The interface's 6-byte MAC address."""
        ...

    @property
    def mtu(self) -> int:
        """The largest payload of a frame (without the 14-byte Ethernet header)."""
        ...

    async def read(self) -> bytes:
        """The next frame (Ethernet header included). Raises ``Closed``."""
        ...

    def write(self, frame: bytes) -> None:
        """Send one frame; never blocks (a full queue drops and counts it).

        Raises ``MessageTooLong`` above ``mtu`` + 14 bytes (with no GSO).
        """
        ...

    def close(self) -> None:
        """Release the interface. Never raises."""
        ...


class Tun(Protocol):
    """A layer-3 interface: IPv4/IPv6 packets in and out (Linux tun, memory)."""

    @property
    def mtu(self) -> int:
        """The largest packet the interface carries."""
        ...

    async def read(self) -> bytes:
        """The next IP packet. Raises ``Closed``."""
        ...

    def write(self, packet: bytes) -> None:
        """Send one packet; never blocks (a full queue drops and counts it).

        Raises ``MessageTooLong`` above ``mtu``.
        """
        ...

    def close(self) -> None:
        """Release the interface. Never raises."""
        ...


# --------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TlsServerConfig:
    """What a TLS server needs: a PEM certificate chain and its PEM key.

    ``alpn`` lists the offered protocols in preference order.
    """

    certificate_chain: bytes
    private_key: bytes
    alpn: Sequence[str] = ()
    minimum_version: str = "TLSv1.2"


@dataclass(frozen=True)
class TlsClientConfig:
    """What a TLS client needs: trust anchors (PEM, None = system) and a name."""

    server_name: str | None = None
    ca_certificates: bytes | None = None
    verify: bool = True
    alpn: Sequence[str] = ()


class Tls(Protocol):
    """TLS over any :class:`Flow`; the result is again a :class:`Flow`."""

    async def server(self, flow: Flow, config: TlsServerConfig) -> Flow:
        """Run the server handshake on ``flow``. Raises ``TlsError``."""
        ...

    async def client(self, flow: Flow, config: TlsClientConfig) -> Flow:
        """Run the client handshake on ``flow``. Raises ``TlsError``."""
        ...



# --------------------------------------------------------------------------
# QubesDB


class QubesDB(Protocol):
    """Qubes' per-VM configuration database: ``(path, value)`` pairs.

    Paths begin with ``/``, never end with ``/``, are at most 63 characters
    from ``[a-zA-Z0-9_.:/-]`` (qubesdb-daemon also stores ``@``: such paths
    come back from ``multiread``/``list`` but cannot be asked for). A value
    is at most 3072 bytes; qubesdb-daemon itself refuses a value of exactly
    3072 bytes or one holding a NUL byte, so writers keep to 3071 bytes of
    text. A *prefix* (``/qubes-firewall/``) names every path that starts
    with it, as a plain string prefix. Values are bytes as stored; callers
    decode them. ``close()`` makes pending calls and waiting watchers raise
    ``Closed``.
    """

    async def read(self, path: str) -> bytes | None:
        """The value at ``path``, or None when there is none. Raises
        ``InvalidKey`` for a malformed path, ``DeviceError`` when the
        database cannot be reached."""
        ...

    async def multiread(self, prefix: str) -> dict[str, bytes]:
        """Every ``path: value`` under ``prefix`` (``""``: everything)."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """The paths under ``prefix``, sorted."""
        ...

    async def write(self, path: str, value: bytes) -> None:
        """Store ``value`` at ``path`` (used to report errors back, e.g.
        ``/qubes-firewall-error/<ip>``). Raises ``InvalidKey``, ``NoSpace``
        for a value above 3072 bytes."""
        ...

    def watch(self, prefix: str) -> "PathWatcher":
        """Watch ``prefix``: the returned iterator yields each path written
        or removed under it, from now on (a path given without a trailing
        ``/`` watches that path only)."""
        ...

    def close(self) -> None:
        """Release the connection; ends every watcher. Never raises."""
        ...


class PathWatcher(Protocol):
    """An async iterator of changed paths; ``close()`` ends the iteration."""

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def __anext__(self) -> str: ...

    def close(self) -> None:
        """Stop watching. Never raises."""
        ...


# --------------------------------------------------------------------------
# packet filter (the firewall's data plane)


@dataclass(frozen=True)
class FilterRule:
    """One Qubes firewall rule, as parsed from ``/qubes-firewall/<ip>/NNNN``.

    ``dst`` holds networks (``ipaddress.ip_network`` objects): the
    ``dst4=``/``dst6=`` network, or the addresses ``dsthost`` resolved to,
    of both families (empty until resolved: such a rule then matches
    nothing). ``None``
    ``dst`` matches every destination. ``proto`` is ``"tcp"``, ``"udp"``,
    ``"icmp"`` or None (any); ``dstports`` an inclusive ``(low, high)``
    range (tcp/udp; without ``proto`` it matches both); ``icmptype`` the
    ICMP type (icmp only); ``dns`` is ``specialtarget=dns`` (the
    destination is one of the virtual DNS addresses, port 53, tcp or udp).
    ``number`` is the rule's NNNN; ``text`` its source line for logs.
    """

    action: str  # "accept" | "drop"
    number: int = 0
    dst: tuple | None = None  # tuple of ipaddress networks; None: any destination
    dsthost: str | None = None
    proto: str | None = None
    dstports: tuple[int, int] | None = None
    icmptype: int | None = None
    dns: bool = False
    text: str = ""


@dataclass(frozen=True)
class ClientRules:
    """Every rule of one client, first match wins; ``policy`` when none matches.

    ``error`` set means the rule set did not parse: the client is denied
    everything (``rules`` is then empty and ``policy`` ``"drop"``).
    """

    client: str
    rules: tuple[FilterRule, ...] = ()
    policy: str = "drop"
    error: str | None = None


@dataclass(frozen=True)
class FilterSetup:
    """The firewall's own addresses, from QubesDB (or keys outside Qubes).

    ``uplink_ip``/``uplink_gateway``/``uplink_prefix``: the firewall's address
    on the upstream network (``/qubes-ip``, ``/qubes-gateway``,
    ``/qubes-netmask``); client traffic leaving is masqueraded to
    ``uplink_ip``. ``client_gateway``: the firewall's address as clients see
    it (``/qubes-netvm-gateway``). ``virtual_dns``: the DNS addresses
    clients use (``/qubes-netvm-primary-dns``, ``-secondary-dns``, e.g.
    10.139.1.1 and 10.139.1.2), redirected to ``upstream_dns``
    (``/qubes-primary-dns``, ``/qubes-secondary-dns``) in the same order.
    ``*6`` fields: the same for IPv6 (empty: IPv6 is dropped).
    ``max_connections``: the connection-tracking table's size.
    ``icmp_error_rate``: ICMP errors the firewall itself sends (prohibited,
    time exceeded) per second at most, in bursts of a twentieth of that, as
    Linux's ``icmp_msgs_per_sec``/``icmp_msgs_burst`` (1000, 50); 0: no limit.
    """

    uplink_ip: str
    uplink_gateway: str
    client_gateway: str
    uplink_prefix: int = 24
    virtual_dns: tuple[str, ...] = ()
    upstream_dns: tuple[str, ...] = ()
    uplink_ip6: str = ""
    uplink_gateway6: str = ""
    client_gateway6: str = ""
    max_connections: int = 5000
    icmp_error_rate: int = 1000


class PacketFilter(Protocol):
    """Moves client traffic between client interfaces and the uplink,
    filtered by each client's rules and masqueraded, as a Qubes firewall VM.

    The appliance is the control plane: it calls :meth:`start` once, then
    :meth:`attach`/:meth:`detach` as clients come and go and
    :meth:`set_rules` whenever a client's rules change (or its ``dsthost``
    names resolve anew). The backend is the data plane (Ingot's own loop
    over ``net`` devices, or the kernel with an nftables ruleset): a rule
    change applies atomically to the next packet and leaves other clients'
    connections alone. A client without rules is denied everything.

    Rules for traffic a client sends: to upstream, filtered then
    masqueraded; to the firewall itself, dropped (but DNS to a virtual
    DNS address is redirected to the upstream resolver, subject to the
    client's rules via ``specialtarget=dns``); to another client, filtered,
    no NAT; from a source address that is not the client's, dropped
    (anti-spoofing). From upstream: only replies to tracked connections
    pass (and are un-NATed); the rest is dropped. A drop answers like Qubes
    (ICMP administratively prohibited) where the rule dropped a client's
    packet, and counts a reason.
    """

    async def start(self, setup: FilterSetup) -> None:
        """Bring the data plane up. Raises ``DeviceError`` (one line) when an
        interface or the kernel refuses."""
        ...

    async def attach(self, client_ip: str, ifname: str) -> None:
        """A client with address ``client_ip`` is behind interface
        ``ifname``; until :meth:`set_rules` it is denied everything.
        Raises ``DeviceError`` when the interface cannot be used."""
        ...

    def detach(self, client_ip: str) -> None:
        """Forget a client and its connections. Never raises."""
        ...

    def set_rules(self, rules: ClientRules) -> None:
        """Replace the rules of ``rules.client`` (attached or not yet)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters: packets forwarded, dropped by reason, NAT entries..."""
        ...

    def close(self) -> None:
        """Stop moving packets and undo what :meth:`start` set up. Never raises."""
        ...


# --------------------------------------------------------------------------
# kinds

Device = Union[MClock, PClock, Sleep, Random, KvRO, KvRW, Stack, Net, Tun, Tls, QubesDB,
               PacketFilter]

KINDS: dict[str, type] = {
    "mclock": MClock,
    "pclock": PClock,
    "sleep": Sleep,
    "random": Random,
    "kv_ro": KvRO,
    "kv_rw": KvRW,
    "stack": Stack,
    "net": Net,
    "tun": Tun,
    "tls": Tls,
    "qubesdb": QubesDB,
    "packet_filter": PacketFilter,
}
"""Kind name -> signature. Plugins may add kinds with ``ingot_kinds_register``."""

AMBIENT: tuple[str, ...] = ("mclock", "pclock", "sleep", "random")
"""Kinds every appliance gets unless its manifest says ``ambient=False``."""


def kind_of(signature: type) -> str:
    """The kind name of a signature class (``KvRO`` -> ``"kv_ro"``)."""
    for name, cls in KINDS.items():
        if cls is signature:
            return name
    raise KeyError(f"{signature!r} is not a registered device signature")
