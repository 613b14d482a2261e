"""OpenVPN packet formats, sans-I/O: bytes in, dataclasses out, and back.

No socket, clock or random source here; the crypto layer (``crypto.py``) wraps
and unwraps tls-auth / tls-crypt around the plaintext forms below, and the
reliability layer (``reliable.py``) decides which packet ids and acks to send.
Every parse error raises :class:`MalformedPacket` (a ``ValueError``) with a
reason; nothing else escapes a parser, whatever the input.

First byte of every packet: ``opcode << 3 | key_id`` (opcode 5 bits, key id 3).

Control packet, plaintext form (no tls-auth / tls-crypt)::

    off  size  field
    0    1     opcode << 3 | key_id
    1    8     local session id (the sender's)
    9    1     n = ack count, 0..RELIABLE_ACK_SIZE (8)
    10   4*n   acked packet ids, big-endian u32 each
    ..   8     remote session id (the peer's), only when n > 0
    ..   4     message packet id, big-endian u32 (absent in P_ACK_V1)
    ..   rest  payload: TLS records (absent in P_ACK_V1)

tls-auth form: HMAC and replay fields sit between the session id and the ack
array (H = HMAC size: 20 for SHA1, 32 for SHA256, 64 for SHA512)::

    0    1     opcode << 3 | key_id
    1    8     local session id
    9    H     HMAC
    9+H  4     replay packet id
    13+H 4     net time (seconds)
    17+H ..    ack array, message packet id, payload as above

tls-crypt form (and tls-crypt-v2, whose P_CONTROL_HARD_RESET_CLIENT_V3 and
P_CONTROL_WKC_V1 append the wrapped client key, WKc, after the ciphertext;
its last 2 bytes give its length)::

    0    1     opcode << 3 | key_id
    1    8     local session id
    9    4     replay packet id
    13   4     net time (seconds)
    17   32    HMAC-SHA256 tag (also the AES-256-CTR IV)
    49   ..    encrypted: ack array, message packet id, payload as above

:func:`parse_control_header` gives ``(opcode, key_id, session_id, rest)``;
:func:`split_tls_auth` / :func:`split_tls_crypt` cut ``rest`` into its
fields, and after verifying / decrypting, the crypto layer hands the plaintext
body to :func:`parse_control_body`.

Data packets: P_DATA_V1 is ``byte0 + payload``; P_DATA_V2 is ``byte0 +
3-byte peer id + payload`` (peer id 0xFFFFFF: not set). Over TCP each packet is
preceded by a 2-byte big-endian length (:class:`TcpFramer`, :func:`frame`).

Inside the TLS stream: the key-method-2 messages (:class:`KeyMethod2`) and
NUL-terminated text control messages (``PUSH_REQUEST``, ``PUSH_REPLY,...``,
``AUTH_FAILED``, ...; :class:`MessageSplitter`, :func:`parse_push_reply`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "PING_MAGIC", "OCC_MAGIC", "OCC_EXIT",
    "MalformedPacket", "Opcode", "CONTROL_OPCODES", "DATA_OPCODES", "RELIABLE_ACK_SIZE",
    "CONTROL_SEND_ACK_MAX", "SESSION_ID_LEN", "ControlPacket", "parse_control", "build_control",
    "ControlHeader", "parse_control_header", "parse_control_body", "build_control_body",
    "TlsAuthFields", "split_tls_auth", "TlsCryptFields", "split_tls_crypt",
    "DataPacket", "parse_data", "build_data", "PEER_ID_UNDEF",
    "TcpFramer", "frame", "KeyMethod2", "parse_key_method_2", "build_key_method_2",
    "MessageSplitter", "build_message", "PUSH_REQUEST", "PushReply", "parse_push_reply",
    "build_push_reply", "parse_peer_info", "build_peer_info",
    "IV_PROTO_DATA_V2", "IV_PROTO_REQUEST_PUSH", "IV_PROTO_TLS_KEY_EXPORT",
    "IV_PROTO_AUTH_PENDING_KW", "IV_PROTO_NCP_P2P", "IV_PROTO_DNS_OPTION",
    "IV_PROTO_CC_EXIT_NOTIFY", "IV_PROTO_AUTH_FAIL_TEMP", "IV_PROTO_DYN_TLS_CRYPT",
    "IV_PROTO_DATA_EPOCH", "IV_PROTO_DNS_OPTION_V2",
]


PING_MAGIC = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")
"""A keepalive ping: the whole payload of a data packet (OpenVPN ping.c)."""
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")
"""Options-consistency messages in the data channel start with this (occ.h), then one opcode byte."""
OCC_EXIT = 6
"""The OCC opcode of explicit-exit-notify over UDP (the peer is going away)."""


class MalformedPacket(ValueError):
    """The peer sent bytes that do not parse; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Opcode(enum.IntEnum):
    P_CONTROL_HARD_RESET_CLIENT_V1 = 1
    P_CONTROL_HARD_RESET_SERVER_V1 = 2
    P_CONTROL_SOFT_RESET_V1 = 3
    P_CONTROL_V1 = 4
    P_ACK_V1 = 5
    P_DATA_V1 = 6
    P_CONTROL_HARD_RESET_CLIENT_V2 = 7
    P_CONTROL_HARD_RESET_SERVER_V2 = 8
    P_DATA_V2 = 9
    P_CONTROL_HARD_RESET_CLIENT_V3 = 10
    P_CONTROL_WKC_V1 = 11


DATA_OPCODES = frozenset({Opcode.P_DATA_V1, Opcode.P_DATA_V2})
CONTROL_OPCODES = frozenset(set(Opcode) - DATA_OPCODES)

RELIABLE_ACK_SIZE = 8  # most acks one ack array may hold (reliable.h); parse limit
CONTROL_SEND_ACK_MAX = 4  # most acks OpenVPN piggybacks on a non-ACK control packet
SESSION_ID_LEN = 8
PEER_ID_UNDEF = 0xFFFFFF

# IV_PROTO bits in the client's peer info (OpenVPN 2.6 ssl.h; bit 0 is unused).
IV_PROTO_DATA_V2 = 1 << 1
IV_PROTO_REQUEST_PUSH = 1 << 2
IV_PROTO_TLS_KEY_EXPORT = 1 << 3
IV_PROTO_AUTH_PENDING_KW = 1 << 4
IV_PROTO_NCP_P2P = 1 << 5
IV_PROTO_DNS_OPTION = 1 << 6
IV_PROTO_CC_EXIT_NOTIFY = 1 << 7
IV_PROTO_AUTH_FAIL_TEMP = 1 << 8
IV_PROTO_DYN_TLS_CRYPT = 1 << 9
IV_PROTO_DATA_EPOCH = 1 << 10  # 2.7
IV_PROTO_DNS_OPTION_V2 = 1 << 11  # 2.7

_U32 = struct.Struct("!I")


def _opcode(byte0: int) -> tuple[Opcode, int]:
    try:
        op = Opcode(byte0 >> 3)
    except ValueError:
        raise MalformedPacket(f"unknown opcode {byte0 >> 3}") from None
    return op, byte0 & 7


def _byte0(opcode: int, key_id: int) -> int:
    Opcode(opcode)  # ValueError when unknown
    if not 0 <= key_id <= 7:
        raise ValueError(f"key id {key_id} not in 0..7")
    return opcode << 3 | key_id


# --- control packets ------------------------------------------------------------------------

@dataclass(frozen=True)
class ControlPacket:
    """A control packet in plaintext form.

    ``remote_session_id`` is present exactly when ``acks`` is non-empty;
    ``packet_id`` is None exactly for P_ACK_V1 (whose ``payload`` is empty).
    """

    opcode: Opcode
    key_id: int
    session_id: bytes
    acks: tuple[int, ...] = ()
    remote_session_id: bytes | None = None
    packet_id: int | None = None
    payload: bytes = b""


@dataclass(frozen=True)
class ControlHeader:
    """The clear part every control packet form shares; ``rest`` is the remainder."""

    opcode: Opcode
    key_id: int
    session_id: bytes
    rest: bytes


def parse_control_header(data: bytes) -> ControlHeader:
    if len(data) < 1 + SESSION_ID_LEN:
        raise MalformedPacket(f"control packet of {len(data)} bytes, shorter than its header")
    op, key_id = _opcode(data[0])
    if op not in CONTROL_OPCODES:
        raise MalformedPacket(f"{op.name} is not a control opcode")
    return ControlHeader(op, key_id, bytes(data[1:9]), bytes(data[9:]))


def parse_control_body(header: ControlHeader, body: bytes | None = None) -> ControlPacket:
    """Parse the ack array, packet id and payload that follow the header.

    ``header`` is a :class:`ControlHeader` (its ``rest`` is parsed unless
    ``body`` is given, e.g. the plaintext the crypto layer recovered).
    """
    if body is None:
        body = header.rest
    op = header.opcode
    if not body:
        raise MalformedPacket("control packet ends before its ack count")
    n = body[0]
    if n > RELIABLE_ACK_SIZE:
        raise MalformedPacket(f"ack count {n} over {RELIABLE_ACK_SIZE}")
    pos = 1
    need = pos + 4 * n + (SESSION_ID_LEN if n else 0)
    if len(body) < need:
        raise MalformedPacket("control packet ends inside its ack array")
    acks = tuple(_U32.unpack_from(body, pos + 4 * i)[0] for i in range(n))
    pos += 4 * n
    remote = None
    if n:
        remote = bytes(body[pos:pos + SESSION_ID_LEN])
        pos += SESSION_ID_LEN
    if op == Opcode.P_ACK_V1:
        if not n:
            raise MalformedPacket("P_ACK_V1 without acks")
        if pos != len(body):
            raise MalformedPacket(f"{len(body) - pos} bytes after the acks of P_ACK_V1")
        return ControlPacket(op, header.key_id, header.session_id, acks, remote, None, b"")
    if len(body) < pos + 4:
        raise MalformedPacket("control packet ends before its packet id")
    (packet_id,) = _U32.unpack_from(body, pos)
    return ControlPacket(op, header.key_id, header.session_id, acks, remote, packet_id,
                         bytes(body[pos + 4:]))


def parse_control(data: bytes) -> ControlPacket:
    """Parse a plaintext control packet (see the module docstring for its layout)."""
    return parse_control_body(parse_control_header(data))


def build_control_body(pkt: ControlPacket) -> bytes:
    """The ack array, packet id and payload: what tls-auth signs and tls-crypt encrypts."""
    if len(pkt.acks) > RELIABLE_ACK_SIZE:
        raise ValueError(f"{len(pkt.acks)} acks, over {RELIABLE_ACK_SIZE}")
    if bool(pkt.acks) != (pkt.remote_session_id is not None):
        raise ValueError("remote_session_id goes with a non-empty ack list, and only then")
    if pkt.remote_session_id is not None and len(pkt.remote_session_id) != SESSION_ID_LEN:
        raise ValueError("remote session id must be 8 bytes")
    is_ack = pkt.opcode == Opcode.P_ACK_V1
    if is_ack and (pkt.packet_id is not None or pkt.payload or not pkt.acks):
        raise ValueError("P_ACK_V1 carries acks only: no packet id, no payload")
    if not is_ack and pkt.packet_id is None:
        raise ValueError(f"{Opcode(pkt.opcode).name} needs a packet id")
    out = bytearray([len(pkt.acks)])
    for a in pkt.acks:
        out += _U32.pack(a)
    if pkt.remote_session_id is not None:
        out += pkt.remote_session_id
    if not is_ack:
        out += _U32.pack(pkt.packet_id)
        out += pkt.payload
    return bytes(out)


def build_control(pkt: ControlPacket) -> bytes:
    """Serialize a plaintext control packet; ``ValueError`` on an inconsistent one."""
    if pkt.opcode not in CONTROL_OPCODES:
        raise ValueError(f"{pkt.opcode} is not a control opcode")
    if len(pkt.session_id) != SESSION_ID_LEN:
        raise ValueError("session id must be 8 bytes")
    return bytes([_byte0(pkt.opcode, pkt.key_id)]) + pkt.session_id + build_control_body(pkt)


@dataclass(frozen=True)
class TlsAuthFields:
    hmac: bytes
    replay_packet_id: int
    net_time: int
    body: bytes  # ack array, message packet id, payload (plaintext)


def split_tls_auth(rest: bytes, hmac_size: int) -> TlsAuthFields:
    """Cut a tls-auth control packet's ``rest`` (after the session id) into its fields."""
    if len(rest) < hmac_size + 8:
        raise MalformedPacket("tls-auth packet shorter than its HMAC and replay fields")
    pid, t = struct.unpack_from("!II", rest, hmac_size)
    return TlsAuthFields(bytes(rest[:hmac_size]), pid, t, bytes(rest[hmac_size + 8:]))


TLS_CRYPT_TAG_LEN = 32


@dataclass(frozen=True)
class TlsCryptFields:
    replay_packet_id: int
    net_time: int
    tag: bytes
    ciphertext: bytes  # encrypted body, plus WKc for V3 / WKC_V1 (the crypto layer splits it)


def split_tls_crypt(rest: bytes) -> TlsCryptFields:
    """Cut a tls-crypt control packet's ``rest`` (after the session id) into its fields."""
    if len(rest) < 8 + TLS_CRYPT_TAG_LEN:
        raise MalformedPacket("tls-crypt packet shorter than its replay fields and tag")
    pid, t = struct.unpack_from("!II", rest, 0)
    return TlsCryptFields(pid, t, bytes(rest[8:40]), bytes(rest[40:]))


# --- data packets ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DataPacket:
    """``peer_id`` is None for P_DATA_V1, 0..0xFFFFFF for P_DATA_V2; payload stays encrypted."""

    opcode: Opcode
    key_id: int
    peer_id: int | None
    payload: bytes


def parse_data(data: bytes) -> DataPacket:
    if not data:
        raise MalformedPacket("empty packet")
    op, key_id = _opcode(data[0])
    if op == Opcode.P_DATA_V1:
        return DataPacket(op, key_id, None, bytes(data[1:]))
    if op == Opcode.P_DATA_V2:
        if len(data) < 4:
            raise MalformedPacket("P_DATA_V2 shorter than its peer id")
        return DataPacket(op, key_id, int.from_bytes(data[1:4], "big"), bytes(data[4:]))
    raise MalformedPacket(f"{op.name} is not a data opcode")


def build_data(pkt: DataPacket) -> bytes:
    b0 = _byte0(pkt.opcode, pkt.key_id)
    if pkt.opcode == Opcode.P_DATA_V1:
        if pkt.peer_id is not None:
            raise ValueError("P_DATA_V1 has no peer id")
        return bytes([b0]) + pkt.payload
    if pkt.opcode == Opcode.P_DATA_V2:
        if pkt.peer_id is None or not 0 <= pkt.peer_id <= PEER_ID_UNDEF:
            raise ValueError("P_DATA_V2 needs a peer id in 0..0xFFFFFF")
        return bytes([b0]) + pkt.peer_id.to_bytes(3, "big") + pkt.payload
    raise ValueError(f"{pkt.opcode} is not a data opcode")


def data_header(opcode: Opcode, key_id: int, peer_id: int | None = None) -> bytes:
    """The bytes before the encrypted part (P_DATA_V2's 4 are also AEAD associated data)."""
    return build_data(DataPacket(opcode, key_id, peer_id, b""))


# --- TCP framing ----------------------------------------------------------------------------

def frame(packet: bytes) -> bytes:
    """Prefix one packet with its 2-byte big-endian length, for a TCP stream."""
    if not 0 < len(packet) <= 0xFFFF:
        raise ValueError(f"packet of {len(packet)} bytes cannot be framed")
    return len(packet).to_bytes(2, "big") + packet


class TcpFramer:
    """Incremental reader of a TCP stream of length-prefixed packets.

    ``feed(data)`` returns the packets completed by ``data``. A length of 0 or
    over ``max_packet`` raises :class:`MalformedPacket`; the stream is then out
    of sync for good and every later ``feed`` raises again (close the
    connection). Holds at most ``max_packet + 1`` bytes between calls.
    """

    def __init__(self, max_packet: int = 0xFFFF) -> None:
        if not 0 < max_packet <= 0xFFFF:
            raise ValueError("max_packet must be in 1..65535")
        self.max_packet = max_packet
        self._buf = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise MalformedPacket(self._error)
        self._buf += data
        out = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= 2:
            n = int.from_bytes(buf[pos:pos + 2], "big")
            if n == 0 or n > self.max_packet:
                self._error = f"TCP frame length {n} not in 1..{self.max_packet}"
                del self._buf[:]
                raise MalformedPacket(self._error)
            if len(buf) - pos - 2 < n:
                break
            out.append(bytes(buf[pos + 2:pos + 2 + n]))
            pos += 2 + n
        del self._buf[:pos]
        return out


# --- inside the TLS stream: key method 2 ----------------------------------------------------

KEY_METHOD_2 = 2
KEY_METHOD_MASK = 0x0F


@dataclass(frozen=True)
class KeyMethod2:
    """A key-method-2 message, the first thing each side writes into the TLS stream.

    Client to server: ``pre_master`` (48 bytes) is set; server to client it is
    None. ``random1``/``random2`` are 32 bytes each (unused for keys with
    tls-ekm, still sent). ``username``/``password``/``peer_info`` are None when
    the message ends before them (a server's usually does after the options).

    Layout: u32 0, u8 key method (low 4 bits 2), [pre_master 48], random1 32,
    random2 32, then strings, each a u16 length counting a trailing NUL, the
    bytes and the NUL (an empty string is length 0): options, username,
    password, peer info.
    """

    options: str
    random1: bytes
    random2: bytes
    pre_master: bytes | None = None
    username: str | None = None
    password: str | None = None
    peer_info: str | None = None
    key_method_flags: int = KEY_METHOD_2

    @property
    def is_client(self) -> bool:
        return self.pre_master is not None


def _write_str(s: str) -> bytes:
    if not s:
        return b"\x00\x00"
    b = s.encode("utf-8") + b"\x00"
    if len(b) > 0xFFFF:
        raise ValueError("string over 65534 bytes")
    return len(b).to_bytes(2, "big") + b


def _read_str(data: bytes, pos: int, what: str) -> tuple[str, int]:
    if len(data) < pos + 2:
        raise MalformedPacket(f"key method 2 message ends before the {what} length")
    n = int.from_bytes(data[pos:pos + 2], "big")
    pos += 2
    if len(data) < pos + n:
        raise MalformedPacket(f"key method 2 {what} runs past the message")
    raw = data[pos:pos + n]
    if n and raw[-1] != 0:
        raise MalformedPacket(f"key method 2 {what} not NUL-terminated")
    try:
        text = bytes(raw[:-1]).decode("utf-8") if n else ""
    except UnicodeDecodeError:
        raise MalformedPacket(f"key method 2 {what} is not UTF-8") from None
    if "\x00" in text:
        raise MalformedPacket(f"key method 2 {what} holds a NUL")
    return text, pos + n


def build_key_method_2(msg: KeyMethod2) -> bytes:
    if len(msg.random1) != 32 or len(msg.random2) != 32:
        raise ValueError("random1 and random2 are 32 bytes each")
    out = bytearray(4)
    out.append(msg.key_method_flags)
    if msg.pre_master is not None:
        if len(msg.pre_master) != 48:
            raise ValueError("pre_master is 48 bytes")
        out += msg.pre_master
    out += msg.random1 + msg.random2
    out += _write_str(msg.options)
    trailing = [msg.username, msg.password, msg.peer_info]
    while trailing and trailing[-1] is None:
        trailing.pop()
    for s in trailing:
        out += _write_str(s or "")
    return bytes(out)


def parse_key_method_2(data: bytes, *, from_client: bool) -> KeyMethod2:
    """Parse the peer's key-method-2 message (``from_client``: it has a pre_master)."""
    if len(data) < 5:
        raise MalformedPacket("key method 2 message shorter than its header")
    if data[:4] != b"\x00\x00\x00\x00":
        raise MalformedPacket("key method 2 message does not start with 4 zero bytes")
    flags = data[4]
    if flags & KEY_METHOD_MASK != KEY_METHOD_2:
        raise MalformedPacket(f"key method {flags & KEY_METHOD_MASK}, not 2")
    pos = 5
    pre_master = None
    if from_client:
        if len(data) < pos + 48:
            raise MalformedPacket("key method 2 message ends inside pre_master")
        pre_master = bytes(data[pos:pos + 48])
        pos += 48
    if len(data) < pos + 64:
        raise MalformedPacket("key method 2 message ends inside its randoms")
    r1, r2 = bytes(data[pos:pos + 32]), bytes(data[pos + 32:pos + 64])
    pos += 64
    options, pos = _read_str(data, pos, "options")
    rest: list[str | None] = [None, None, None]
    for i, what in enumerate(("username", "password", "peer info")):
        if pos == len(data):
            break
        rest[i], pos = _read_str(data, pos, what)
    if pos != len(data):
        raise MalformedPacket(f"{len(data) - pos} bytes after the key method 2 message")
    return KeyMethod2(options, r1, r2, pre_master, rest[0], rest[1], rest[2], flags)


def parse_peer_info(text: str) -> dict[str, str]:
    """``IV_VER=2.6.14\\nIV_PROTO=990\\n...`` to a dict; lines without ``=`` are skipped."""
    out = {}
    for line in text.split("\n"):
        key, eq, value = line.partition("=")
        if eq and key:
            out[key] = value
    return out


def build_peer_info(info: dict[str, str]) -> str:
    for k, v in info.items():
        if not k or "=" in k or "\n" in k + v:
            raise ValueError(f"bad peer info entry {k!r}")
    return "".join(f"{k}={v}\n" for k, v in info.items())


# --- inside the TLS stream: text control messages -------------------------------------------

PUSH_REQUEST = "PUSH_REQUEST"


def build_message(text: str) -> bytes:
    """A text control message (``PUSH_REQUEST`` ...) as written into the TLS stream."""
    if "\x00" in text:
        raise ValueError("control message holds a NUL")
    return text.encode("utf-8") + b"\x00"


class MessageSplitter:
    """Splits the TLS stream after key method 2 into NUL-terminated text messages.

    ``feed(data)`` returns the completed messages. A message over
    ``max_message`` bytes or not UTF-8 is dropped and counted in ``dropped``
    (``last_error`` says why); an over-long one is skipped up to its NUL. Holds
    at most ``max_message`` bytes between calls.
    """

    def __init__(self, max_message: int = 1 << 16) -> None:
        self.max_message = max_message
        self.dropped = 0
        self.last_error: str | None = None
        self._buf = bytearray()
        self._skipping = False

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self.last_error = why

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        out: list[str] = []
        while (i := self._buf.find(0)) >= 0:
            raw = bytes(self._buf[:i])
            del self._buf[:i + 1]
            if self._skipping:
                self._skipping = False
            elif len(raw) > self.max_message:
                self._drop(f"control message over {self.max_message} bytes")
            else:
                try:
                    out.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    self._drop("control message is not UTF-8")
        if len(self._buf) > self.max_message:
            del self._buf[:]
            if not self._skipping:
                self._drop(f"control message over {self.max_message} bytes")
            self._skipping = True
        return out


@dataclass(frozen=True)
class PushReply:
    """A parsed ``PUSH_REPLY``: options as argument tuples, e.g. ``("ifconfig", "10.8.0.2",
    "255.255.255.0")``. ``continuation`` is the ``push-continuation`` value (2: more parts
    follow, 1: last part), None without one; that option is not in ``options``."""

    options: tuple[tuple[str, ...], ...]
    continuation: int | None = None

    def get(self, name: str) -> tuple[str, ...] | None:
        """The arguments of the last option called ``name`` (pushes may repeat it)."""
        found = None
        for opt in self.options:
            if opt[0] == name:
                found = opt[1:]
        return found

    def all(self, name: str) -> list[tuple[str, ...]]:
        return [opt[1:] for opt in self.options if opt[0] == name]


def _split_args(option: str) -> tuple[str, ...]:
    """Whitespace-separated words; double quotes group, backslash escapes inside them."""
    words: list[str] = []
    cur: list[str] = []
    in_word = quoted = False
    i = 0
    while i < len(option):
        c = option[i]
        if quoted:
            if c == "\\" and i + 1 < len(option):
                i += 1
                cur.append(option[i])
            elif c == '"':
                quoted = False
            else:
                cur.append(c)
        elif c == '"':
            quoted = in_word = True
        elif c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(c)
            in_word = True
        i += 1
    if quoted:
        raise MalformedPacket(f"unterminated quote in pushed option {option!r}")
    if in_word:
        words.append("".join(cur))
    return tuple(words)


def parse_push_reply(text: str) -> PushReply:
    """Parse ``PUSH_REPLY,opt args,opt args,...`` (empty options are skipped)."""
    head, _, body = text.partition(",")
    if head != "PUSH_REPLY":
        raise MalformedPacket("not a PUSH_REPLY")
    options = []
    continuation = None
    for part in body.split(","):
        words = _split_args(part)
        if not words:
            continue
        if words[0] == "push-continuation":
            if len(words) != 2 or words[1] not in ("1", "2"):
                raise MalformedPacket(f"bad push-continuation {part!r}")
            continuation = int(words[1])
            continue
        options.append(words)
    return PushReply(tuple(options), continuation)


def _quote(word: str) -> str:
    if word and not any(c.isspace() or c in '"\\' for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_push_reply(options, continuation: int | None = None) -> str:
    """The text of a ``PUSH_REPLY`` (send it with :func:`build_message`)."""
    parts = ["PUSH_REPLY"]
    for opt in options:
        if not opt or any("," in w or "\x00" in w or "\n" in w for w in opt):
            raise ValueError(f"option {opt!r} cannot be pushed")
        parts.append(" ".join(_quote(w) for w in opt))
    if continuation is not None:
        parts.append(f"push-continuation {continuation}")
    return ",".join(parts)
