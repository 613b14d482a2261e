"""TSIG (RFC 8945): signing and verifying DNS messages with a shared secret.

Works on wire bytes only, with no I/O: the time (POSIX seconds) is always an
argument. The rules, in the order a verifier applies them (RFC 8945 §5.2):

1. The TSIG RR must be the last record of the additional section and the
   only one; otherwise the message is a FORMERR.
2. Key check: an unknown key name, or a known name with another algorithm,
   is BADKEY (rcode NOTAUTH).
3. MAC size: longer than the hash, or shorter than the larger of 10 octets
   and half the hash, is FORMERR; a truncated MAC shorter than the key's
   ``min_mac_size`` is BADTRUNC.
4. MAC check: a MAC that does not match is BADSIG.
5. Time check (after the MAC, so that a forged message cannot probe the
   clock): ``|now - time_signed| > fudge`` is BADTIME.

What a MAC covers (RFC 8945 §4.3):

* a request: the message with its original ID and without the TSIG RR
  (ARCOUNT one less), then the TSIG variables;
* a response: the request MAC (2-octet length + MAC) first;
* the later messages of a stream (AXFR/IXFR over TCP): the prior MAC
  (2-octet length + MAC), the unsigned messages since it, this message, and
  only the timers (time signed, fudge) instead of all variables.

The TSIG variables are the key name and algorithm name in canonical form
(lower case, uncompressed), class ANY, TTL 0, time signed, fudge, error,
other length and other data.

Error responses (RFC 8945 §5.3.2): a key or MAC problem (BADKEY, BADSIG) is
answered unsigned (MAC size 0); a time or truncation problem (BADTIME,
BADTRUNC) is answered signed over the request MAC, BADTIME with the server's
time in the other data; a FORMERR carries no TSIG RR.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TYPE_TSIG = 250
CLASS_ANY = 255

# RCODEs and TSIG error codes (RFC 8945 §3, RFC 6895)
NOERROR = 0
FORMERR = 1
NOTAUTH = 9
BADSIG = 16
BADKEY = 17
BADTIME = 18
BADTRUNC = 22

ERROR_NAMES = {NOERROR: "NOERROR", FORMERR: "FORMERR", NOTAUTH: "NOTAUTH", BADSIG: "BADSIG",
               BADKEY: "BADKEY", BADTIME: "BADTIME", BADTRUNC: "BADTRUNC"}

ALGORITHMS: dict[str, str] = {
    "hmac-md5.sig-alg.reg.int": "md5",
    "hmac-sha1": "sha1",
    "hmac-sha224": "sha224",
    "hmac-sha256": "sha256",
    "hmac-sha384": "sha384",
    "hmac-sha512": "sha512",
}
"""Algorithm name (canonical, without the final dot) -> hashlib name."""

_ALIASES = {"hmac-md5": "hmac-md5.sig-alg.reg.int"}

MAX_UNSIGNED = 99
"""At most this many unsigned messages may follow each other in a stream (RFC 8945 §5.3.1)."""


# --------------------------------------------------------------------------
# names


def canonical_name(name: str) -> str:
    """``name`` in lower case (ASCII only) without the final dot (``""`` for the root)."""
    return "" if name in (".", "") else name.rstrip(".").translate(_LOWER_TEXT)


_LOWER_TEXT = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def algorithm_name(name: str) -> str:
    """The canonical algorithm name for ``name`` (``hmac-md5`` -> its long form).

    Raises ``ValueError`` for an algorithm this module does not know.
    """
    alg = canonical_name(name)
    alg = _ALIASES.get(alg, alg)
    if alg not in ALGORITHMS:
        raise ValueError(f"unknown TSIG algorithm {name!r} "
                         f"(known: {', '.join(sorted(ALGORITHMS))})")
    return alg


def name_to_wire(name: str) -> bytes:
    """The uncompressed wire form of ``name`` (in canonical form: lower case)."""
    out = bytearray()
    for label in canonical_name(name).split(".") if canonical_name(name) else []:
        raw = label.encode("latin-1")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    if len(out) + 1 > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out) + b"\x00"


# --------------------------------------------------------------------------
# keys


@dataclass(frozen=True)
class Key:
    """A TSIG key: its name, algorithm and secret.

    ``min_mac_size`` is the shortest truncated MAC accepted from a peer
    (``None``: any length RFC 8945 allows). ``name`` and ``algorithm`` are
    kept canonical.
    """

    name: str
    secret: bytes = field(repr=False)
    algorithm: str = "hmac-sha256"
    min_mac_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", canonical_name(self.name))
        object.__setattr__(self, "algorithm", algorithm_name(self.algorithm))
        name_to_wire(self.name)
        if not self.name:
            raise ValueError("a TSIG key needs a name")

    @property
    def digest_size(self) -> int:
        """The length of a full MAC with this key's algorithm."""
        return hashlib.new(ALGORITHMS[self.algorithm]).digest_size

    def mac(self, data: bytes) -> bytes:
        """The full HMAC of ``data`` with this key."""
        return hmac.new(self.secret, data, ALGORITHMS[self.algorithm]).digest()

    def text(self) -> str:
        """The ``algorithm:name:base64`` form that ``nsupdate -y``/``kdig -y`` take."""
        alg = "hmac-md5" if self.algorithm.startswith("hmac-md5") else self.algorithm
        return f"{alg}:{self.name}:{base64.b64encode(self.secret).decode()}"


def parse_key(text: str) -> Key:
    """A key from ``[algorithm:]name:base64secret`` (algorithm default hmac-sha256).

    Raises ``ValueError`` naming what is wrong.
    """
    parts = text.strip().split(":")
    if len(parts) == 2:
        alg, (name, secret) = "hmac-sha256", parts
    elif len(parts) == 3:
        alg, name, secret = parts
    else:
        raise ValueError(f"a TSIG key is [algorithm:]name:secret, not {text!r}")
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the secret of key {name!r} is not base64") from None
    return Key(name=name, secret=raw, algorithm=alg)


_KEY_BLOCK = re.compile(
    r'key\s+"?([^"\s{]+)"?\s*\{\s*(?:algorithm\s+"?([\w.-]+)"?\s*;\s*secret\s+"([^"]+)"\s*;'
    r'|secret\s+"([^"]+)"\s*;\s*algorithm\s+"?([\w.-]+)"?\s*;)\s*\}\s*;', re.S)


def parse_key_file(text: str) -> list[Key]:
    """The keys of a BIND-style key file (``tsig-keygen``/``keymgr`` output)."""
    keys = []
    for m in _KEY_BLOCK.finditer(text):
        name, alg, secret = m.group(1), m.group(2) or m.group(5), m.group(3) or m.group(4)
        keys.append(parse_key(f"{alg}:{name}:{secret}"))
    return keys


Keyring = Mapping[str, Key]


def keyring(keys: Iterable[Key] | Mapping[str, Key] | Key) -> dict[str, Key]:
    """A name -> key mapping (canonical names) from keys or a mapping of them."""
    if isinstance(keys, Key):
        keys = [keys]
    elif isinstance(keys, Mapping):
        keys = keys.values()
    return {k.name: k for k in keys}


# --------------------------------------------------------------------------
# errors and results


class TsigError(Exception):
    """A message failed TSIG processing.

    ``rcode`` is the header RCODE to answer with (NOTAUTH or FORMERR),
    ``tsig_error`` the TSIG error field (BADSIG, BADKEY, BADTIME, BADTRUNC,
    or 0 for a FORMERR). ``record`` is the parsed TSIG RR when there was one
    (used by :func:`error_response`), ``key`` the key when it was found.
    """

    def __init__(self, rcode: int, tsig_error: int, reason: str, *,
                 record: "TsigRecord | None" = None, key: Key | None = None) -> None:
        name = ERROR_NAMES.get(tsig_error or rcode, str(tsig_error or rcode))
        super().__init__(f"TSIG {name}: {reason}")
        self.rcode = rcode
        self.tsig_error = tsig_error
        self.reason = reason
        self.record = record
        self.key = key


@dataclass(frozen=True)
class TsigRecord:
    """The fields of a TSIG RR as found in a message, and where it starts."""

    key_name: str
    algorithm: str
    time_signed: int
    fudge: int
    mac: bytes
    original_id: int
    error: int
    other: bytes
    offset: int  # where the TSIG RR starts in the message
    key_wire: bytes = b"\x00"  # the names in canonical wire form
    algorithm_wire: bytes = b"\x00"


@dataclass(frozen=True)
class Verified:
    """A message whose TSIG checked out.

    ``mac`` is its MAC (the request MAC of the answer, or the prior MAC of
    the next message in a stream); ``message`` is the message without the
    TSIG RR, with its original ID and ARCOUNT restored.
    """

    key: Key
    mac: bytes
    original_id: int
    time_signed: int
    fudge: int
    error: int
    other: bytes
    message: bytes
    truncated: bool = False


# --------------------------------------------------------------------------
# wire helpers


class _Short(Exception):
    pass


def _skip_name(wire: bytes, pos: int) -> int:
    """The offset after the (possibly compressed) name at ``pos``."""
    while True:
        if pos >= len(wire):
            raise _Short
        length = wire[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 2 > len(wire):
                raise _Short
            return pos + 2
        if length & 0xC0:
            raise _Short
        pos += 1 + length


def _read_name(wire: bytes, pos: int) -> tuple[str, bytes, int]:
    """The name at ``pos`` (pointers followed): its text, its canonical
    uncompressed wire form (ASCII lower-cased), and the offset after it."""
    labels: list[bytes] = []
    end = None
    hops = 0
    while True:
        if pos >= len(wire):
            raise _Short
        length = wire[pos]
        if length & 0xC0 == 0xC0:
            if pos + 2 > len(wire) or hops > 64:
                raise _Short
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | wire[pos + 1]
            hops += 1
            continue
        if length & 0xC0:
            raise _Short
        if length == 0:
            canon = [label.translate(_LOWER) for label in labels]
            text = ".".join(label.decode("latin-1") for label in canon)
            out = b"".join(bytes([len(label)]) + label for label in canon) + b"\x00"
            if len(out) > 255:
                raise _Short
            return text, out, (end if end is not None else pos + 1)
        if pos + 1 + length > len(wire):
            raise _Short
        labels.append(wire[pos + 1:pos + 1 + length])
        pos += 1 + length


_LOWER = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))


def find_tsig(wire: bytes) -> TsigRecord | None:
    """The TSIG RR of ``wire``, or None when it has none.

    Raises :class:`TsigError` (FORMERR) when the message is malformed, or has
    a TSIG RR that is not the last record or not the only one.
    """
    try:
        if len(wire) < 12:
            raise _Short
        qd, an, ns, ar = struct.unpack_from("!4H", wire, 4)
        pos = 12
        for _ in range(qd):
            pos = _skip_name(wire, pos) + 4
        found: TsigRecord | None = None
        total = an + ns + ar
        for index in range(total):
            start = pos
            pos = _skip_name(wire, pos)
            if pos + 10 > len(wire):
                raise _Short
            rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", wire, pos)
            pos += 10
            if pos + rdlen > len(wire):
                raise _Short
            if rtype == TYPE_TSIG:
                if index != total - 1 or index < an + ns:
                    raise TsigError(FORMERR, 0, "TSIG is not the last record of the message")
                if rclass != CLASS_ANY:
                    raise TsigError(FORMERR, 0, "TSIG record is not of class ANY")
                found = _parse_rdata(wire, start, pos, rdlen)
            pos += rdlen
    except _Short:
        raise TsigError(FORMERR, 0, "malformed message") from None
    return found


def _parse_rdata(wire: bytes, start: int, pos: int, rdlen: int) -> TsigRecord:
    key_name, key_wire, _ = _read_name(wire, start)
    end = pos + rdlen
    alg, alg_wire, p = _read_name(wire, pos)
    if p + 10 > end:
        raise _Short
    hi, lo, fudge, mac_size = struct.unpack_from("!HIHH", wire, p)
    p += 10
    mac = wire[p:p + mac_size]
    p += mac_size
    if p + 6 > end:
        raise _Short
    original_id, error, other_len = struct.unpack_from("!HHH", wire, p)
    p += 6
    other = wire[p:p + other_len]
    if p + other_len != end:
        raise _Short
    return TsigRecord(key_name, alg, (hi << 32) | lo, fudge, mac, original_id, error, other,
                      start, key_wire, alg_wire)


def _strip(wire: bytes, record: TsigRecord) -> bytes:
    """The message before its TSIG RR, with the original ID and ARCOUNT - 1."""
    arcount = struct.unpack_from("!H", wire, 10)[0]
    return (struct.pack("!H", record.original_id) + wire[2:10] + struct.pack("!H", arcount - 1)
            + wire[12:record.offset])


def _time48(t: int) -> bytes:
    return struct.pack("!HI", (t >> 32) & 0xFFFF, t & 0xFFFFFFFF)


def _variables(key: Key, time_signed: int, fudge: int, error: int, other: bytes,
               timers_only: bool) -> bytes:
    timers = _time48(time_signed) + struct.pack("!H", fudge)
    if timers_only:
        return timers
    return (name_to_wire(key.name) + struct.pack("!HI", CLASS_ANY, 0) + name_to_wire(key.algorithm)
            + timers + struct.pack("!HH", error, len(other)) + other)


def _prefix(mac: bytes | None) -> bytes:
    return b"" if not mac else struct.pack("!H", len(mac)) + mac


def _tsig_rr(key: Key, time_signed: int, fudge: int, mac: bytes, original_id: int, error: int,
             other: bytes) -> bytes:
    rdata = (name_to_wire(key.algorithm) + _time48(time_signed)
             + struct.pack("!HH", fudge, len(mac)) + mac
             + struct.pack("!HHH", original_id, error, len(other)) + other)
    return name_to_wire(key.name) + struct.pack("!HHIH", TYPE_TSIG, CLASS_ANY, 0, len(rdata)) + rdata


def _append(message_wire: bytes, rr: bytes) -> bytes:
    if len(message_wire) < 12:
        raise ValueError("a DNS message is at least 12 bytes long")
    arcount = struct.unpack_from("!H", message_wire, 10)[0]
    if arcount == 0xFFFF:
        raise ValueError("the additional section is full")
    return message_wire[:10] + struct.pack("!H", arcount + 1) + message_wire[12:] + rr


# --------------------------------------------------------------------------
# signing


def sign(message_wire: bytes, key: Key, now_s: int, *, request_mac: bytes = b"",
         fudge: int = 300, error: int = 0, other: bytes = b"",
         timers_only: bool = False) -> tuple[bytes, bytes]:
    """Sign ``message_wire`` (which has no TSIG RR yet): ``(signed_wire, mac)``.

    For a response pass the request's MAC as ``request_mac``; for a later
    message of a stream pass the prior MAC there and ``timers_only=True``
    (and prepend any unsigned messages since the prior MAC yourself, see
    :class:`StreamSigner`). The message ID becomes the TSIG original ID.
    """
    if len(message_wire) < 12:
        raise ValueError("a DNS message is at least 12 bytes long")
    if not 0 <= now_s < 1 << 48 or not 0 <= fudge < 1 << 16:
        raise ValueError("time signed or fudge out of range")
    return _sign_with_prefix(_prefix(request_mac), message_wire, key, now_s, fudge, timers_only,
                             error, other)


def _sign_with_prefix(prefix: bytes, message_wire: bytes, key: Key, now_s: int, fudge: int,
                      timers_only: bool, error: int = 0, other: bytes = b"") -> tuple[bytes, bytes]:
    mac = key.mac(prefix + message_wire + _variables(key, now_s, fudge, error, other, timers_only))
    original_id = struct.unpack_from("!H", message_wire)[0]
    return _append(message_wire, _tsig_rr(key, now_s, fudge, mac, original_id, error, other)), mac


# --------------------------------------------------------------------------
# verifying


def _lookup(keys: Keyring | Iterable[Key] | Key, record: TsigRecord) -> Key:
    ring = keys if isinstance(keys, Mapping) else keyring(keys)
    key = ring.get(record.key_name) or ring.get(canonical_name(record.key_name))
    if key is None:
        raise TsigError(NOTAUTH, BADKEY, f"unknown key {record.key_name!r}", record=record)
    try:
        alg = algorithm_name(record.algorithm)
    except ValueError:
        alg = None
    if alg != key.algorithm:
        raise TsigError(NOTAUTH, BADKEY, f"key {key.name!r} is {key.algorithm}, "
                        f"not {record.algorithm}", record=record)
    return key


def _check(record: TsigRecord, key: Key, prefix: bytes, message: bytes, now_s: int,
           timers_only: bool, wire: bytes) -> Verified:
    full = key.digest_size
    size = len(record.mac)
    if size > full or size < max(10, (full + 1) // 2):
        raise TsigError(FORMERR, 0, f"MAC size {size} is outside {max(10, (full + 1) // 2)}"
                        f"..{full} for {key.algorithm}", record=record, key=key)
    expected = key.mac(prefix + message + _variables(key, record.time_signed, record.fudge,
                                                     record.error, record.other, timers_only))
    if not hmac.compare_digest(expected[:size], record.mac):
        raise TsigError(NOTAUTH, BADSIG, f"MAC does not match (key {key.name!r})",
                        record=record, key=key)
    if size < full and key.min_mac_size is not None and size < key.min_mac_size:
        raise TsigError(NOTAUTH, BADTRUNC, f"MAC truncated to {size} bytes, "
                        f"{key.min_mac_size} required", record=record, key=key)
    if abs(now_s - record.time_signed) > record.fudge:
        raise TsigError(NOTAUTH, BADTIME, f"signed at {record.time_signed}, now {now_s}, "
                        f"fudge {record.fudge}", record=record, key=key)
    return Verified(key=key, mac=record.mac, original_id=record.original_id,
                    time_signed=record.time_signed, fudge=record.fudge, error=record.error,
                    other=record.other, message=_strip(wire, record), truncated=size < full)


def verify(wire: bytes, keyring: Keyring | Iterable[Key] | Key, now_s: int, *,
           request_mac: bytes = b"", previous_mac: bytes | None = None,
           timers_only: bool = False, unsigned: bytes = b"") -> Verified:
    """Check the TSIG of ``wire`` against the keys of ``keyring``.

    A server verifies a request with the defaults. A client verifies a
    response with ``request_mac`` (the MAC of its request), and the later
    messages of a stream with ``previous_mac`` (the MAC of the last signed
    one), ``timers_only=True`` and ``unsigned`` (the unsigned messages
    between them, concatenated). Raises :class:`TsigError`; a message without
    TSIG raises it too (BADSIG... no: FORMERR with tsig_error 0 is for
    malformed ones, a missing TSIG is NOTAUTH/BADSIG as nothing was signed).
    A response whose TSIG carries an error (an unsigned BADKEY/BADSIG answer
    of a peer) raises that error.
    """
    wire = bytes(wire)
    record = find_tsig(wire)
    if record is None:
        raise TsigError(NOTAUTH, BADSIG, "the message is not signed")
    key = _lookup(keyring, record)
    if record.error and not record.mac:
        raise TsigError(NOTAUTH, record.error,
                        f"the peer answered {ERROR_NAMES.get(record.error, record.error)}",
                        record=record, key=key)
    prefix = _prefix(previous_mac if previous_mac is not None else request_mac) + unsigned
    verified = _check(record, key, prefix, _strip(wire, record), now_s, timers_only, wire)
    if record.error:
        raise TsigError(NOTAUTH, record.error,
                        f"the peer answered {ERROR_NAMES.get(record.error, record.error)}",
                        record=record, key=key)
    return verified


# --------------------------------------------------------------------------
# streams (AXFR/IXFR over TCP)


class StreamSigner:
    """Signs the messages of one multi-message answer.

    The first message is signed over the request MAC and all variables, each
    later one over the prior MAC, the unsigned messages since, and the
    timers. With ``every`` > 1 only the first message and then every
    ``every``-th one is signed, and the last (pass ``last=True``); RFC 8945 allows at most 99 unsigned messages in a row.
    """

    def __init__(self, key: Key, request_mac: bytes, *, fudge: int = 300, every: int = 1) -> None:
        if not 1 <= every <= MAX_UNSIGNED + 1:
            raise ValueError(f"every must be 1..{MAX_UNSIGNED + 1}")
        self.key = key
        self.fudge = fudge
        self.every = every
        self._prior = request_mac
        self._first = True
        self._pending = b""
        self._count = 0

    def sign(self, message_wire: bytes, now_s: int, *, last: bool = False) -> bytes:
        """The message to send: signed, or as it is when it is skipped."""
        if not (self._first or last or self._count + 1 >= self.every):
            self._count += 1
            self._pending += message_wire
            return message_wire
        signed, mac = _sign_with_prefix(_prefix(self._prior) + self._pending, message_wire,
                                        self.key, now_s, self.fudge, not self._first)
        self._prior, self._first, self._pending, self._count = mac, False, b"", 0
        return signed


class StreamVerifier:
    """Verifies the messages of one multi-message answer, in order.

    :meth:`feed` returns :class:`Verified` for a signed message and None for
    an unsigned one (held until the next signed message covers it). Call
    :meth:`finish` after the last message: it raises unless that was signed.
    """

    def __init__(self, keyring: Keyring | Iterable[Key] | Key, request_mac: bytes) -> None:
        self.keyring = keyring
        self._prior = request_mac
        self._first = True
        self._pending: list[bytes] = []

    def feed(self, wire: bytes, now_s: int) -> Verified | None:
        if find_tsig(wire) is None:
            if self._first:
                raise TsigError(NOTAUTH, BADSIG, "the first message of the stream is unsigned")
            if len(self._pending) >= MAX_UNSIGNED:
                raise TsigError(NOTAUTH, BADSIG, f"more than {MAX_UNSIGNED} unsigned messages")
            self._pending.append(wire)
            return None
        verified = verify(wire, self.keyring, now_s, previous_mac=self._prior,
                          timers_only=not self._first, unsigned=b"".join(self._pending))
        self._prior, self._first, self._pending = verified.mac, False, []
        return verified

    def finish(self) -> None:
        if self._pending or self._first:
            raise TsigError(NOTAUTH, BADSIG, "the stream did not end with a signed message")


# --------------------------------------------------------------------------
# error responses


def _question_end(wire: bytes) -> int:
    qd = struct.unpack_from("!H", wire, 4)[0]
    pos = 12
    for _ in range(qd):
        pos = _skip_name(wire, pos) + 4
    if pos > len(wire):
        raise _Short
    return pos


def error_response(request_wire: bytes, error: TsigError, now_s: int) -> bytes | None:
    """The answer to a request that failed :func:`verify` (RFC 8945 §5.3.2).

    The header of the request with QR set and the error's RCODE, its
    question, and: no TSIG for a FORMERR; an unsigned TSIG (MAC size 0) for
    BADKEY and BADSIG; a TSIG signed over the request MAC for BADTIME (with
    ``now_s`` as 48-bit other data) and BADTRUNC. None when the request is
    too broken to answer (drop it).
    """
    try:
        if len(request_wire) < 12:
            return None
        qd = struct.unpack_from("!H", request_wire, 4)[0]
        end = _question_end(request_wire)
    except (_Short, struct.error):
        qd, end = 0, 12
    flags = struct.unpack_from("!H", request_wire, 2)[0]
    flags = (flags | 0x8000) & ~0x060F & ~0x0020  # QR; no AA, TC, AD, RCODE
    flags |= error.rcode & 0x0F
    head = request_wire[:2] + struct.pack("!HHHHH", flags, qd, 0, 0, 0)
    message = head + request_wire[12:end]
    record = error.record
    if error.tsig_error == 0 or record is None:
        return message
    key = error.key
    if error.tsig_error in (BADTIME, BADTRUNC) and key is not None:
        other = _time48(now_s) if error.tsig_error == BADTIME else b""
        signed, _ = _sign_with_prefix(_prefix(record.mac), message, key, record.time_signed,
                                      record.fudge, False, error.tsig_error, other)
        return signed
    # unsigned: the key may be unknown, so write the fields the request had
    rdata = (record.algorithm_wire + _time48(record.time_signed)
             + struct.pack("!HHHHH", record.fudge, 0, record.original_id, error.tsig_error, 0))
    rr = (record.key_wire + struct.pack("!HHIH", TYPE_TSIG, CLASS_ANY, 0, len(rdata))
          + rdata)
    return _append(message, rr)
