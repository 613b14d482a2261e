"""OpenVPN 2.6 cryptography, sans-I/O: static keys, tls-auth, tls-crypt(-v2), data channel, key derivation.

Nothing here opens a socket, reads a clock or draws random bytes: the caller passes the current
time (``now``, seconds since the epoch, for the control channel's net-time field) and any random
bytes (CBC IVs). Formats were learnt from OpenVPN's crypto.c, ssl.c, ssl_pkt.c, tls_crypt.c and
doc/tls-crypt-v2.txt; this is an independent implementation over ``cryptography``.

Ownership and limits
--------------------
* Every object here is a small state machine: a wrapper owns its send packet-id counter and its
  receive replay window; ``unwrap``/``decrypt`` only commit replay state once a packet authenticated.
* Errors: ``AuthFailed(reason)`` (the peer sent something that does not authenticate or parse),
  ``Replayed(reason)`` (authentic but already seen / too old), ``PacketIdExhausted`` (this side must
  renegotiate before sending more). All three derive from ``CryptoError``. Caller misuse (wrong key
  length, unknown cipher name) raises ``ValueError``.

Key halves (a ``Key2`` holds ``keys[0]`` and ``keys[1]``, each cipher 64 B + hmac 64 B):

* tls-auth / static ``key-direction``: ``0`` sends with keys[0], receives with keys[1]; ``1`` the
  inverse; ``None`` (bidirectional) uses keys[0] both ways.
* tls-crypt (and tls-crypt-v2's Kc): the server is direction 0, the client direction 1.
* data channel: the client is direction 0, the server direction 1 (ssl.c init_key_contexts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac as _hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .wire import Opcode

__all__ = [
    "CryptoError", "AuthFailed", "Replayed", "PacketIdExhausted",
    "Key", "Key2", "parse_static_key", "format_static_key", "directional_keys",
    "Replay", "ControlReplay", "TlsAuth", "TlsCrypt",
    "TlsCryptV2ServerKey", "TlsCryptV2ClientKey", "parse_pem_key", "format_pem_key",
    "DataChannel", "DataKeys", "tls1_prf", "AEAD_CIPHERS", "CBC_CIPHERS",
    "P_CONTROL_HARD_RESET_CLIENT_V2", "P_CONTROL_HARD_RESET_SERVER_V2", "P_CONTROL_V1",
    "P_ACK_V1", "P_DATA_V1", "P_DATA_V2", "P_CONTROL_HARD_RESET_CLIENT_V3", "P_CONTROL_WKC_V1",
    "EKM_LABEL", "EKM_SIZE",
]

# Opcodes (the high 5 bits of the first byte; the low 3 bits are the key id): wire's.
P_CONTROL_V1 = int(Opcode.P_CONTROL_V1)
P_ACK_V1 = int(Opcode.P_ACK_V1)
P_DATA_V1 = int(Opcode.P_DATA_V1)
P_CONTROL_HARD_RESET_CLIENT_V2 = int(Opcode.P_CONTROL_HARD_RESET_CLIENT_V2)
P_CONTROL_HARD_RESET_SERVER_V2 = int(Opcode.P_CONTROL_HARD_RESET_SERVER_V2)
P_DATA_V2 = int(Opcode.P_DATA_V2)
P_CONTROL_HARD_RESET_CLIENT_V3 = int(Opcode.P_CONTROL_HARD_RESET_CLIENT_V3)
P_CONTROL_WKC_V1 = int(Opcode.P_CONTROL_WKC_V1)

SID_SIZE = 8
EKM_LABEL = b"EXPORTER-OpenVPN-datakeys"
EKM_SIZE = 256
PACKET_ID_MAX = 0xFFFFFFFF


class CryptoError(Exception):
    """Base of every error a peer's bytes can cause here."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class AuthFailed(CryptoError):
    """The packet is malformed or does not authenticate; drop it and count it."""


class Replayed(CryptoError):
    """The packet authenticated but its packet id was already seen or is outside the window."""


class PacketIdExhausted(CryptoError):
    """The send packet-id space is used up: renegotiate keys before sending again."""


# --------------------------------------------------------------------------- static keys

STATIC_HEAD = "-----BEGIN OpenVPN Static key V1-----"
STATIC_FOOT = "-----END OpenVPN Static key V1-----"


@dataclass(frozen=True)
class Key:
    """One direction's key material: ``cipher`` (64 B) and ``hmac`` (64 B); users take prefixes."""

    cipher: bytes
    hmac: bytes

    def __post_init__(self) -> None:
        if len(self.cipher) != 64 or len(self.hmac) != 64:
            raise ValueError("Key needs 64-byte cipher and hmac parts")

    def __repr__(self) -> str:  # never print key bytes
        return "Key(<redacted>)"


@dataclass(frozen=True)
class Key2:
    """OpenVPN's ``struct key2``: two ``Key``s, 256 bytes in total."""

    keys: tuple[Key, Key]

    @classmethod
    def from_bytes(cls, data: bytes) -> Key2:
        if len(data) != 256:
            raise ValueError(f"key2 needs 256 bytes, got {len(data)}")
        return cls((Key(data[0:64], data[64:128]), Key(data[128:192], data[192:256])))

    def to_bytes(self) -> bytes:
        return b"".join(k.cipher + k.hmac for k in self.keys)

    def __repr__(self) -> str:
        return "Key2(<redacted>)"


def parse_static_key(text: str) -> Key2:
    """Parse an ``OpenVPN Static key V1`` file (``openvpn --genkey secret|tls-auth|tls-crypt``).

    Lines outside the BEGIN/END markers (OpenVPN writes a ``#`` comment header) are ignored.
    Raises ``ValueError`` on a malformed file.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    try:
        start = lines.index(STATIC_HEAD)
        end = lines.index(STATIC_FOOT, start)
    except ValueError:
        raise ValueError("not an OpenVPN Static key V1 file (markers missing)") from None
    hexdigits = "".join(ln for ln in lines[start + 1:end] if ln and not ln.startswith("#"))
    try:
        data = bytes.fromhex(hexdigits)
    except ValueError:
        raise ValueError("static key: invalid hex") from None
    if len(data) != 256:
        raise ValueError(f"static key: need 256 bytes, got {len(data)}")
    return Key2.from_bytes(data)


def format_static_key(key2: Key2) -> str:
    """The inverse of ``parse_static_key``: 16 lines of 32 hex digits between the markers."""
    hx = key2.to_bytes().hex()
    body = "\n".join(hx[i:i + 32] for i in range(0, len(hx), 32))
    return f"#\n# 2048 bit OpenVPN static key\n#\n{STATIC_HEAD}\n{body}\n{STATIC_FOOT}\n"


def directional_keys(key2: Key2, direction: int | None) -> tuple[Key, Key]:
    """(send key, receive key) for key direction ``0``, ``1`` or ``None`` (bidirectional)."""
    if direction is None:
        return key2.keys[0], key2.keys[0]
    if direction == 0:
        return key2.keys[0], key2.keys[1]
    if direction == 1:
        return key2.keys[1], key2.keys[0]
    raise ValueError(f"key direction must be 0, 1 or None, not {direction!r}")


def _pem_lines(text: str, name: str) -> bytes:
    head, foot = f"-----BEGIN {name}-----", f"-----END {name}-----"
    lines = [ln.strip() for ln in text.splitlines()]
    try:
        start = lines.index(head)
        end = lines.index(foot, start)
    except ValueError:
        raise ValueError(f"no {name!r} PEM block") from None
    try:
        return base64.b64decode("".join(lines[start + 1:end]), validate=True)
    except ValueError:
        raise ValueError(f"{name}: invalid base64") from None


def parse_pem_key(text: str, name: str) -> bytes:
    """Decode a PEM-style key block (e.g. ``OpenVPN tls-crypt-v2 server key``)."""
    return _pem_lines(text, name)


def format_pem_key(data: bytes, name: str) -> str:
    b64 = base64.b64encode(data).decode()
    body = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {name}-----\n{body}\n-----END {name}-----\n"


# --------------------------------------------------------------------------- replay windows


class Replay:
    """Sliding-bitmap replay window over 32-bit packet ids (OpenVPN's ``replay-window`` idea).

    ``check(pid)`` raises ``Replayed`` for a duplicate, id 0 or an id older than ``size`` behind the
    highest seen; ``commit(pid)`` records it. ``accept`` does both. Ids may arrive out of order.
    """

    def __init__(self, size: int = 64):
        if size < 1:
            raise ValueError("replay window size must be >= 1")
        self.size = size
        self.highest = 0
        self._bits = 0  # bit i set <=> (highest - i) was seen

    def check(self, pid: int) -> None:
        if pid == 0:
            raise Replayed("packet id 0 is never sent")
        if pid > self.highest:
            return
        back = self.highest - pid
        if back >= self.size:
            raise Replayed(f"packet id {pid} is older than the window ({self.highest}-{self.size})")
        if self._bits >> back & 1:
            raise Replayed(f"packet id {pid} already seen")

    def commit(self, pid: int) -> None:
        mask = (1 << self.size) - 1
        if pid > self.highest:
            shift = pid - self.highest
            self._bits = ((self._bits << shift) | 1) & mask if shift < self.size else 1
            self.highest = pid
        else:
            self._bits |= 1 << (self.highest - pid)

    def accept(self, pid: int) -> None:
        self.check(pid)
        self.commit(pid)


class ControlReplay:
    """Replay protection for the control channel's long-form packet id (id, net time).

    A newer time starts a fresh window (the peer restarted its counter); an older time is rejected.
    """

    def __init__(self, size: int = 64):
        self.size = size
        self.time: int | None = None
        self.window = Replay(size)

    def check(self, pid: int, net_time: int) -> None:
        if self.time is None or net_time > self.time:
            if pid == 0:
                raise Replayed("packet id 0 is never sent")
            return
        if net_time < self.time:
            raise Replayed(f"packet time {net_time} is older than {self.time}")
        self.window.check(pid)

    def commit(self, pid: int, net_time: int) -> None:
        if self.time is None or net_time > self.time:
            self.time = net_time
            self.window = Replay(self.size)
        self.window.commit(pid)


class _SendId:
    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        if self.last >= PACKET_ID_MAX:
            raise PacketIdExhausted("packet id space exhausted; renegotiate")
        self.last += 1
        return self.last


# --------------------------------------------------------------------------- control channel

_DIGESTS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA384": hashlib.sha384,
            "SHA512": hashlib.sha512}
_CTRL_HDR = 1 + SID_SIZE  # opcode byte + session id


def _digest(name: str):
    try:
        return _DIGESTS[name.upper()]
    except KeyError:
        raise ValueError(f"unsupported digest {name!r}") from None


class TlsAuth:
    """``--tls-auth`` wrapping of control packets.

    ``plain`` everywhere is the unwrapped packet ``opcode | session_id(8) | rest``. On the wire:
    ``opcode | session_id | HMAC | packet_id(4) | net_time(4) | rest``, the HMAC (``digest``, key =
    the hmac half truncated to the digest size) covering ``packet_id | net_time | opcode |
    session_id | rest``.
    """

    def __init__(self, key2: Key2, direction: int | None, digest: str = "SHA1", replay_window: int = 64):
        send, recv = directional_keys(key2, direction)
        self._hash = _digest(digest)
        self.mac_len = self._hash().digest_size
        self._send_key = send.hmac[: self.mac_len]
        self._recv_key = recv.hmac[: self.mac_len]
        self._send_id = _SendId()
        self.replay = ControlReplay(replay_window)

    def _mac(self, key: bytes, data: bytes) -> bytes:
        return _hmac.new(key, data, self._hash).digest()

    def wrap(self, plain: bytes, now: int) -> bytes:
        if len(plain) < _CTRL_HDR:
            raise ValueError("control packet shorter than opcode + session id")
        pid_time = struct.pack("!II", self._send_id.next(), now & 0xFFFFFFFF)
        mac = self._mac(self._send_key, pid_time + plain)
        return plain[:_CTRL_HDR] + mac + pid_time + plain[_CTRL_HDR:]

    def unwrap(self, wire: bytes) -> bytes:
        n = self.mac_len
        if len(wire) < _CTRL_HDR + n + 8:
            raise AuthFailed("tls-auth: packet too short")
        head, mac = wire[:_CTRL_HDR], wire[_CTRL_HDR:_CTRL_HDR + n]
        pid_time, rest = wire[_CTRL_HDR + n:_CTRL_HDR + n + 8], wire[_CTRL_HDR + n + 8:]
        if not _hmac.compare_digest(mac, self._mac(self._recv_key, pid_time + head + rest)):
            raise AuthFailed("tls-auth: HMAC mismatch")
        pid, t = struct.unpack("!II", pid_time)
        self.replay.check(pid, t)
        self.replay.commit(pid, t)
        return head + rest


def _aes256_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    c = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return c.update(data) + c.finalize()


class TlsCrypt:
    """``--tls-crypt`` wrapping (also the per-client Kc of tls-crypt-v2).

    Wire: ``opcode | session_id | packet_id(4) | net_time(4) | tag(32) | AES-256-CTR(Ke, tag[:16],
    rest)`` with ``tag = HMAC-SHA256(Ka, header || rest)`` over the plaintext. Ke = cipher[:32],
    Ka = hmac[:32] of the direction's key; the server sends with keys[0], the client with keys[1].
    """

    TAG = 32

    def __init__(self, key2: Key2, server: bool, replay_window: int = 64):
        send, recv = directional_keys(key2, 0 if server else 1)
        self._send = (send.cipher[:32], send.hmac[:32])
        self._recv = (recv.cipher[:32], recv.hmac[:32])
        self._send_id = _SendId()
        self.replay = ControlReplay(replay_window)

    def wrap(self, plain: bytes, now: int) -> bytes:
        if len(plain) < _CTRL_HDR:
            raise ValueError("control packet shorter than opcode + session id")
        ke, ka = self._send
        header = plain[:_CTRL_HDR] + struct.pack("!II", self._send_id.next(), now & 0xFFFFFFFF)
        rest = plain[_CTRL_HDR:]
        tag = _hmac.new(ka, header + rest, hashlib.sha256).digest()
        return header + tag + _aes256_ctr(ke, tag[:16], rest)

    def unwrap(self, wire: bytes) -> bytes:
        hl = _CTRL_HDR + 8
        if len(wire) < hl + self.TAG:
            raise AuthFailed("tls-crypt: packet too short")
        ke, ka = self._recv
        header, tag, ct = wire[:hl], wire[hl:hl + self.TAG], wire[hl + self.TAG:]
        rest = _aes256_ctr(ke, tag[:16], ct)
        if not _hmac.compare_digest(tag, _hmac.new(ka, header + rest, hashlib.sha256).digest()):
            raise AuthFailed("tls-crypt: tag mismatch")
        pid, t = struct.unpack("!II", header[_CTRL_HDR:hl])
        self.replay.check(pid, t)
        self.replay.commit(pid, t)
        return header[:_CTRL_HDR] + rest


# --------------------------------------------------------------------------- tls-crypt-v2 keys

TLS_CRYPT_V2_SERVER_PEM = "OpenVPN tls-crypt-v2 server key"
TLS_CRYPT_V2_CLIENT_PEM = "OpenVPN tls-crypt-v2 client key"
TLS_CRYPT_V2_MAX_WKC = 1024
METADATA_TYPE_USER = 0x00
METADATA_TYPE_TIMESTAMP = 0x01


class TlsCryptV2ServerKey:
    """The server key (one ``Key``) that wraps client keys: WKc = T || AES-256-CTR(Ke, T[:16],
    Kc || metadata) || len, with T = HMAC-SHA256(Ka, len || Kc || metadata) and len (16 bit) the
    length of the whole WKc. Ke = cipher[:32], Ka = hmac[:32]."""

    def __init__(self, key: Key):
        self._ke, self._ka = key.cipher[:32], key.hmac[:32]

    @classmethod
    def from_text(cls, text: str) -> TlsCryptV2ServerKey:
        data = parse_pem_key(text, TLS_CRYPT_V2_SERVER_PEM)
        if len(data) != 128:
            raise ValueError(f"tls-crypt-v2 server key: need 128 bytes, got {len(data)}")
        return cls(Key(data[:64], data[64:]))

    def wrap_client_key(self, kc: Key2, metadata: bytes) -> bytes:
        total = 32 + 256 + len(metadata) + 2
        if total > TLS_CRYPT_V2_MAX_WKC:
            raise ValueError("tls-crypt-v2 metadata too long")
        net_len = struct.pack("!H", total)
        body = kc.to_bytes() + metadata
        tag = _hmac.new(self._ka, net_len + body, hashlib.sha256).digest()
        return tag + _aes256_ctr(self._ke, tag[:16], body) + net_len

    def unwrap_client_key(self, wkc: bytes) -> tuple[Key2, bytes]:
        """(Kc, metadata) from a WKc; ``AuthFailed`` if it does not authenticate."""
        if len(wkc) < 32 + 256 + 2 or len(wkc) > TLS_CRYPT_V2_MAX_WKC:
            raise AuthFailed("tls-crypt-v2: WKc length out of range")
        (net_len,) = struct.unpack("!H", wkc[-2:])
        if net_len != len(wkc):
            raise AuthFailed("tls-crypt-v2: WKc length field mismatch")
        tag, body = wkc[:32], _aes256_ctr(self._ke, wkc[:16], wkc[32:-2])
        if not _hmac.compare_digest(tag, _hmac.new(self._ka, wkc[-2:] + body, hashlib.sha256).digest()):
            raise AuthFailed("tls-crypt-v2: WKc tag mismatch")
        return Key2.from_bytes(body[:256]), body[256:]

    def split_client_packet(self, wire: bytes) -> tuple[bytes, Key2, bytes]:
        """Split a HARD_RESET_CLIENT_V3 / CONTROL_WKC_V1 into (tls-crypt packet, Kc, metadata)."""
        if len(wire) < 2:
            raise AuthFailed("tls-crypt-v2: packet too short")
        (n,) = struct.unpack("!H", wire[-2:])
        if n > len(wire) - _CTRL_HDR:
            raise AuthFailed("tls-crypt-v2: WKc longer than packet")
        kc, meta = self.unwrap_client_key(wire[-n:])
        return wire[:-n], kc, meta


@dataclass(frozen=True)
class TlsCryptV2ClientKey:
    """A client's ``Kc || WKc`` file; ``TlsCrypt(kc, server=False)`` wraps, then append ``wkc``."""

    kc: Key2
    wkc: bytes

    @classmethod
    def from_text(cls, text: str) -> TlsCryptV2ClientKey:
        data = parse_pem_key(text, TLS_CRYPT_V2_CLIENT_PEM)
        if len(data) < 256 + 32 + 256 + 2:
            raise ValueError("tls-crypt-v2 client key too short")
        return cls(Key2.from_bytes(data[:256]), data[256:])

    def to_text(self) -> str:
        return format_pem_key(self.kc.to_bytes() + self.wkc, TLS_CRYPT_V2_CLIENT_PEM)

    def wrapper(self) -> TlsCryptV2Client:
        return TlsCryptV2Client(self)


class TlsCryptV2Client(TlsCrypt):
    """A tls-crypt-v2 client's wrapping: tls-crypt with Kc, and the session's reset goes out as
    P_CONTROL_HARD_RESET_CLIENT_V3 with the WKc after it, so the server can unwrap Kc.

    We do not announce early negotiation (the reset's tls-crypt packet id is an ordinary one,
    not ``EARLY_NEG_START``), so the server keeps state from the reset on and never asks for
    the WKc again in a P_CONTROL_WKC_V1."""

    _V2 = 7 << 3  # P_CONTROL_HARD_RESET_CLIENT_V2
    _V3 = 10 << 3  # P_CONTROL_HARD_RESET_CLIENT_V3

    def __init__(self, key: TlsCryptV2ClientKey, replay_window: int = 64):
        super().__init__(key.kc, server=False, replay_window=replay_window)
        self._wkc = key.wkc

    def wrap(self, plain: bytes, now: int) -> bytes:
        if plain[:1] and plain[0] & 0xF8 == self._V2:
            return super().wrap(bytes([self._V3 | plain[0] & 7]) + plain[1:], now) + self._wkc
        return super().wrap(plain, now)


# --------------------------------------------------------------------------- data channel

AEAD_CIPHERS = {"AES-128-GCM": (AESGCM, 16), "AES-256-GCM": (AESGCM, 32),
                "CHACHA20-POLY1305": (ChaCha20Poly1305, 32)}
CBC_CIPHERS = {"AES-128-CBC": 16, "AES-192-CBC": 24, "AES-256-CBC": 32}
_C_HASHES = {"SHA1": hashes.SHA1, "SHA256": hashes.SHA256, "SHA384": hashes.SHA384,
             "SHA512": hashes.SHA512}


def _header_len(packet: bytes) -> int:
    if not packet:
        raise AuthFailed("data: empty packet")
    op = packet[0] >> 3
    if op == P_DATA_V2:
        return 4
    if op == P_DATA_V1:
        return 1
    raise AuthFailed(f"data: opcode {op} is not P_DATA_V1/V2")


class DataChannel:
    """One key state's data-channel cipher (TLS mode, short 4-byte packet ids).

    AEAD (AES-128/256-GCM, CHACHA20-POLY1305): ``header | packet_id(4) | tag(16) | ciphertext``,
    nonce ``packet_id || implicit IV`` (implicit IV = the hmac half's first 8 bytes), AD = the
    P_DATA_V2 4-byte opcode/peer-id plus packet id, or for P_DATA_V1 the packet id alone.

    CBC (``auth`` digest): ``header | HMAC(IV | ct) | IV | AES-CBC(packet_id | payload)`` (PKCS#7);
    the caller passes the random IV to ``encrypt``.
    """

    def __init__(self, cipher: str, send: Key, recv: Key, auth: str = "SHA1", replay_window: int = 64):
        self.cipher = cipher.upper()
        self._send_id = _SendId()
        self.replay = Replay(replay_window)
        if self.cipher in AEAD_CIPHERS:
            cls, klen = AEAD_CIPHERS[self.cipher]
            self.aead = True
            self._enc, self._dec = cls(send.cipher[:klen]), cls(recv.cipher[:klen])
            self._enc_iv, self._dec_iv = send.hmac[:8], recv.hmac[:8]
        elif self.cipher in CBC_CIPHERS:
            klen = CBC_CIPHERS[self.cipher]
            self.aead = False
            try:
                self._hash = _C_HASHES[auth.upper()]
            except KeyError:
                raise ValueError(f"unsupported auth {auth!r}") from None
            n = self._hash.digest_size
            self.mac_len = n
            self._enc_key, self._dec_key = send.cipher[:klen], recv.cipher[:klen]
            self._enc_mac, self._dec_mac = send.hmac[:n], recv.hmac[:n]
        else:
            raise ValueError(f"unsupported data cipher {cipher!r}")

    @staticmethod
    def header_v2(key_id: int, peer_id: int) -> bytes:
        return struct.pack("!I", (P_DATA_V2 << 3 | key_id & 7) << 24 | peer_id & 0xFFFFFF)

    @staticmethod
    def header_v1(key_id: int) -> bytes:
        return bytes([P_DATA_V1 << 3 | key_id & 7])

    def encrypt(self, header: bytes, payload: bytes, iv: bytes | None = None) -> bytes:
        """A full packet ``header | ...``; ``header`` from ``header_v1``/``header_v2``."""
        if len(header) not in (1, 4):
            raise ValueError("data header must be 1 (P_DATA_V1) or 4 (P_DATA_V2) bytes")
        pid = struct.pack("!I", self._send_id.next())
        if self.aead:
            ad = (header if len(header) == 4 else b"") + pid
            sealed = self._enc.encrypt(pid + self._enc_iv, payload, ad)
            return header + pid + sealed[-16:] + sealed[:-16]
        if iv is None or len(iv) != 16:
            raise ValueError("CBC needs a 16-byte random iv from the caller")
        pad = padding.PKCS7(128).padder()
        pt = pad.update(pid + payload) + pad.finalize()
        enc = Cipher(algorithms.AES(self._enc_key), modes.CBC(iv)).encryptor()
        body = iv + enc.update(pt) + enc.finalize()
        h = c_hmac.HMAC(self._enc_mac, self._hash())
        h.update(body)
        return header + h.finalize() + body

    def decrypt(self, packet: bytes) -> bytes:
        """The payload of a P_DATA_V1/V2 packet; ``AuthFailed`` or ``Replayed`` on bad input."""
        hl = _header_len(packet)
        header, rest = packet[:hl], packet[hl:]
        if self.aead:
            if len(rest) < 4 + 16:
                raise AuthFailed("data: packet too short")
            pid_b, tag, ct = rest[:4], rest[4:20], rest[20:]
            (pid,) = struct.unpack("!I", pid_b)
            self.replay.check(pid)
            ad = (header if hl == 4 else b"") + pid_b
            try:
                payload = self._dec.decrypt(pid_b + self._dec_iv, ct + tag, ad)
            except InvalidTag:
                raise AuthFailed("data: AEAD tag mismatch") from None
            self.replay.commit(pid)
            return payload
        n = self.mac_len
        if len(rest) < n + 32 or (len(rest) - n) % 16:
            raise AuthFailed("data: bad CBC packet length")
        mac, body = rest[:n], rest[n:]
        h = c_hmac.HMAC(self._dec_mac, self._hash())
        h.update(body)
        if not _hmac.compare_digest(mac, h.finalize()):
            raise AuthFailed("data: HMAC mismatch")
        dec = Cipher(algorithms.AES(self._dec_key), modes.CBC(body[:16])).decryptor()
        pt = dec.update(body[16:]) + dec.finalize()
        unpad = padding.PKCS7(128).unpadder()
        try:
            pt = unpad.update(pt) + unpad.finalize()
        except ValueError:
            raise AuthFailed("data: bad CBC padding") from None
        if len(pt) < 4:
            raise AuthFailed("data: no packet id")
        (pid,) = struct.unpack("!I", pt[:4])
        self.replay.accept(pid)
        return pt[4:]


# --------------------------------------------------------------------------- key derivation


def _p_hash(hash_name: str, secret: bytes, seed: bytes, length: int) -> bytes:
    out, a = b"", seed
    while len(out) < length:
        a = _hmac.new(secret, a, hash_name).digest()
        out += _hmac.new(secret, a + seed, hash_name).digest()
    return out[:length]


def tls1_prf(secret: bytes, label_and_seed: bytes, length: int) -> bytes:
    """The TLS 1.0/1.1 PRF (RFC 2246 §5): P_MD5(S1, seed) xor P_SHA1(S2, seed), S1/S2 the halves."""
    half = (len(secret) + 1) // 2
    md5 = _p_hash("md5", secret[:half], label_and_seed, length)
    sha = _p_hash("sha1", secret[len(secret) - half:], label_and_seed, length)
    return bytes(x ^ y for x, y in zip(md5, sha))


@dataclass(frozen=True)
class DataKeys:
    """Data-channel key material (a ``Key2``) for one key state; ``channel`` builds the cipher."""

    key2: Key2

    @classmethod
    def from_tls_ekm(cls, exported: bytes) -> DataKeys:
        """From the 256 bytes the TLS library exports with label ``EXPORTER-OpenVPN-datakeys``
        (no context)."""
        if len(exported) != EKM_SIZE:
            raise ValueError(f"tls-ekm needs {EKM_SIZE} bytes, got {len(exported)}")
        return cls(Key2.from_bytes(exported))

    @classmethod
    def from_prf(cls, pre_master: bytes, client_random1: bytes, server_random1: bytes,
                 client_random2: bytes, server_random2: bytes,
                 client_sid: bytes, server_sid: bytes) -> DataKeys:
        """Key-method 2 without tls-ekm: master = PRF(pre_master, "OpenVPN master secret",
        c_random1 || s_random1)[:48]; key2 = PRF(master, "OpenVPN key expansion", c_random2 ||
        s_random2 || client session id || server session id)[:256]."""
        if len(pre_master) != 48 or any(len(r) != 32 for r in (client_random1, server_random1,
                                                                client_random2, server_random2)):
            raise ValueError("pre_master must be 48 bytes and randoms 32 bytes")
        if len(client_sid) != SID_SIZE or len(server_sid) != SID_SIZE:
            raise ValueError("session ids must be 8 bytes")
        master = tls1_prf(pre_master, b"OpenVPN master secret" + client_random1 + server_random1, 48)
        material = tls1_prf(master, b"OpenVPN key expansion" + client_random2 + server_random2
                            + client_sid + server_sid, 256)
        return cls(Key2.from_bytes(material))

    def channel(self, cipher: str, server: bool, auth: str = "SHA1", replay_window: int = 64) -> DataChannel:
        """The client sends with keys[0] and receives with keys[1]; the server the inverse."""
        send, recv = directional_keys(self.key2, 1 if server else 0)
        return DataChannel(cipher, send, recv, auth=auth, replay_window=replay_window)

    def __repr__(self) -> str:
        return "DataKeys(<redacted>)"
