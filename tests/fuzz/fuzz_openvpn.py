"""Fuzz targets for the OpenVPN protocol library: its parsers and state machines.

Each target feeds one input to the code under test; the library's own
errors (:class:`~ingot.plugins.openvpn.wire.MalformedPacket` for bytes that
do not parse, :class:`~ingot.plugins.openvpn.crypto.CryptoError` and its
subclasses for bytes that do not authenticate or are replayed) are the
expected answer to bad input. Any other exception, or a broken invariant
(``assert``), is a bug: the fuzzer stops and saves the input. Targets:

``control``, ``data``
    :func:`parse_control` / :func:`parse_data`; what parses builds back to
    the same bytes.
``control-header``
    :func:`parse_control_header`, then its rest through the tls-auth cut
    (HMAC 20, 32, 64), the tls-crypt cut and the plaintext body parser.
``tcp-framer``
    :class:`TcpFramer` (first byte: ``max_packet``) fed the rest in chunks
    (a length byte before each); the packets out are those of the whole
    stream, and once out of sync every later feed raises.
``key-method-2``
    :func:`parse_key_method_2` as from a client and from a server (first
    byte: whether a well-formed header is put in front); what parses
    builds and re-parses to the same message.
``push-reply``
    :func:`parse_push_reply` on the input as text (first byte: whether
    ``PUSH_REPLY,`` is put in front); what parses builds and re-parses to
    the same options.
``splitter``
    :class:`MessageSplitter` (first byte: ``max_message``) fed the rest in
    chunks; messages and ``dropped`` match those of the whole stream.
``tls-crypt``, ``tls-auth``
    First byte bit 0 clear: the rest unwrapped as is. Set: a run of
    packets a peer wraps with the right key, each ``CTRL PID TIME LEN
    PLAIN`` (CTRL bit 0: one byte flipped, bit 1: cut short) to one
    receiving wrapper: a changed packet must fail authentication, an intact
    one comes back as it was unless its (packet id, time) was taken before.
    For ``tls-auth`` the first byte also picks the digest and key direction.
``data-channel``
    The same for :meth:`DataChannel.decrypt` (first byte: the cipher, AEAD
    or CBC with its HMAC), packets ``CTRL PID PEER LEN PAYLOAD`` (CTRL bit
    2: P_DATA_V2, bit 3, CBC only: the payload is raw CBC plaintext blocks
    under a right HMAC, to reach the padding and packet-id checks).
``tls-crypt-v2``
    First byte: ``split_client_packet`` or ``unwrap_client_key`` on the
    rest, or a WKc the server key wraps (client key and metadata from the
    input) on a tls-crypt packet of that client, maybe with a byte flipped:
    intact, it splits to the same key and metadata and unwraps to the same
    plaintext; changed, it fails authentication.
``reliable``
    :class:`ReliableChannel` (parameters from the first bytes) driven by a
    run of operations (send, packets due, acks, receive, standalone acks,
    time step) checked against a model of what is in flight and what was
    received; never raises.
``handshake``
    :meth:`ServerSession.receive` after a valid HARD_RESET_CLIENT_V2 with a
    run of packets (raw, built from fields, or a real TLS ClientHello) and
    ticks: it never raises; a packet that does not parse, or any packet
    after the session failed, is counted in ``dropped`` and gives no event;
    every packet it sends parses and carries our session id.

Run::

    python tests/fuzz/fuzz_openvpn.py TARGET [CORPUS_DIR] -atheris_runs=100000
    python tests/fuzz/fuzz_openvpn.py TARGET --plain 100000 [--seed N]
    python tests/fuzz/fuzz_openvpn.py --list
    python tests/fuzz/run.py --file fuzz_openvpn.py [--plain] [--only control,handshake]

With atheris installed the OpenVPN modules are instrumented and libFuzzer
drives the target; ``--plain`` feeds random bytes and mutated valid inputs
(:func:`seeds`), deterministically from ``--seed``.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import hmac
import shutil
import ssl
import struct
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

import driver

try:
    import atheris
except ImportError:  # the plain driver still works
    atheris = None

if atheris is not None and "--plain" not in sys.argv:
    with atheris.instrument_imports(include=["ingot.plugins.openvpn"]):
        from ingot.plugins.openvpn import crypto, handshake, reliable, wire
else:
    from ingot.plugins.openvpn import crypto, handshake, reliable, wire

MalformedPacket = wire.MalformedPacket
CryptoError, AuthFailed, Replayed = crypto.CryptoError, crypto.AuthFailed, crypto.Replayed
Opcode = wire.Opcode

KEY2 = crypto.Key2.from_bytes(b"".join(hashlib.sha256(bytes([i])).digest() for i in range(8)))
CLIENT_SID = bytes.fromhex("0102030405060708")
SERVER_SID = bytes.fromhex("a1b2c3d4e5f60718")
RANDOMS = bytes(range(64))
S = 1_000_000_000


class _Reader:
    """The input as a stream of fields; past its end every field reads as zeros."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    @property
    def more(self) -> bool:
        return self.pos < len(self.data)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def u16(self) -> int:
        return int.from_bytes(self.take(2).ljust(2, b"\0"), "big")


def _refused(fn, *args):
    """``fn(*args)``, or None when it answers MalformedPacket."""
    try:
        return fn(*args)
    except MalformedPacket:
        return None


def _parses(data: bytes) -> bool:
    return _refused(wire.parse_control, data) is not None


# --- wire ---------------------------------------------------------------------------------

def t_control(data: bytes) -> None:
    pkt = wire.parse_control(data)
    assert len(pkt.session_id) == 8 and len(pkt.acks) <= wire.RELIABLE_ACK_SIZE
    assert (pkt.packet_id is None) == (pkt.opcode == Opcode.P_ACK_V1)
    assert wire.build_control(pkt) == data


def t_control_header(data: bytes) -> None:
    head = wire.parse_control_header(data)
    assert bytes([head.opcode << 3 | head.key_id]) + head.session_id + head.rest == data
    for size in (20, 32, 64):
        f = _refused(wire.split_tls_auth, head.rest, size)
        if f is not None:
            assert len(f.hmac) == size and len(f.body) == len(head.rest) - size - 8
    f = _refused(wire.split_tls_crypt, head.rest)
    if f is not None:
        assert len(f.tag) == 32 and len(f.ciphertext) == len(head.rest) - 40
    pkt = wire.parse_control_body(head)
    assert wire.build_control(pkt) == data


def t_data(data: bytes) -> None:
    pkt = wire.parse_data(data)
    assert pkt.peer_id is None or 0 <= pkt.peer_id <= wire.PEER_ID_UNDEF
    assert wire.build_data(pkt) == data


def _reference_frames(stream: bytes, max_packet: int) -> tuple[list[bytes], bool, int]:
    """The packets of the whole stream, whether it goes out of sync, what is left over."""
    out, pos = [], 0
    while len(stream) - pos >= 2:
        n = int.from_bytes(stream[pos:pos + 2], "big")
        if n == 0 or n > max_packet:
            return out, True, 0
        if len(stream) - pos - 2 < n:
            break
        out.append(stream[pos + 2:pos + 2 + n])
        pos += 2 + n
    return out, False, len(stream) - pos


def t_tcp_framer(data: bytes) -> None:
    r = _Reader(data)
    max_packet = r.byte() * 4 + 1
    framer = wire.TcpFramer(max_packet)
    got, stream, failed = [], b"", False
    while r.more:
        chunk = r.take(r.byte() % 64)
        stream += chunk
        if failed:
            try:
                framer.feed(chunk)
            except MalformedPacket:
                continue
            raise AssertionError("a TcpFramer out of sync took more bytes")
        try:
            got += framer.feed(chunk)
        except MalformedPacket:
            failed = True
            continue
        assert framer.buffered <= max_packet + 1
    ref, ref_failed, left = _reference_frames(stream, max_packet)
    assert failed == ref_failed, (failed, ref_failed)
    assert got == ref[:len(got)]
    if not failed:
        assert got == ref and framer.buffered == left


def t_key_method_2(data: bytes) -> None:
    if data and data[0] & 1:
        data = b"\0\0\0\0\x02" + data[1:]
    for from_client in (True, False):
        km = _refused(lambda d: wire.parse_key_method_2(d, from_client=from_client), data)
        if km is None:
            continue
        assert km.is_client == from_client
        again = wire.parse_key_method_2(wire.build_key_method_2(km), from_client=from_client)
        assert again == km, (again, km)
        wire.parse_peer_info(km.peer_info or "")


def t_push_reply(data: bytes) -> None:
    text = data[1:].decode("utf-8", "replace")
    if data and data[0] & 1:
        text = "PUSH_REPLY," + text
    reply = wire.parse_push_reply(text)
    assert all(opt and opt[0] != "push-continuation" for opt in reply.options)
    if not any("\0" in w or "\n" in w for opt in reply.options for w in opt):
        again = wire.parse_push_reply(wire.build_push_reply(reply.options, reply.continuation))
        assert again == reply, (again, reply)


def t_splitter(data: bytes) -> None:
    r = _Reader(data)
    max_message = r.byte() + 1
    split = wire.MessageSplitter(max_message)
    got, stream = [], b""
    while r.more:
        chunk = r.take(r.byte() % 64)
        stream += chunk
        got += split.feed(chunk)
        assert len(split._buf) <= max_message
    *whole, tail = stream.split(b"\0")
    ref, bad = [], 0
    for seg in whole:
        try:
            text = seg.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if len(seg) > max_message or text is None:
            bad += 1
        else:
            ref.append(text)
    bad += len(tail) > max_message
    assert got == ref, (got, ref)
    assert split.dropped == bad, (split.dropped, bad)


# --- crypto -------------------------------------------------------------------------------

def _flip(r: _Reader, raw: bytes, start: int = 0) -> bytes:
    """``raw`` with one byte at or after ``start`` changed."""
    buf = bytearray(raw)
    buf[start + r.u16() % (len(buf) - start)] ^= r.byte() | 1
    return bytes(buf)


def _control_run(r: _Reader, sender, receiver) -> None:
    """Packets ``sender`` wraps (packet id and time from the input) into ``receiver``."""
    taken: set[tuple[int, int]] = set()
    while r.more:
        ctrl, pid, t = r.byte(), r.byte(), r.byte()
        plain = r.take(9 + r.byte() % 80).ljust(9, b"\0")
        sender._send_id.last = pid - 1  # the next wrap uses this packet id
        wired = sender.wrap(plain, t)
        changed = False
        if ctrl & 1:
            wired, changed = _flip(r, wired), True
        if ctrl & 2:
            wired, changed = wired[:r.u16() % len(wired)], True
        try:
            out = receiver.unwrap(wired)
        except AuthFailed:
            assert changed, f"intact packet (id {pid}, time {t}) failed authentication"
            continue
        except Replayed:
            assert not changed, "a changed packet authenticated"
            latest = max((tt for _, tt in taken), default=-1)
            highest = max((p for p, tt in taken if tt == latest), default=0)
            assert pid == 0 or (pid, t) in taken or t < latest or \
                (t == latest and highest - pid >= receiver.replay.size), (pid, t)
            continue
        assert not changed, "a changed packet authenticated"
        assert out == plain and pid != 0 and (pid, t) not in taken, (pid, t)
        taken.add((pid, t))


def t_tls_crypt(data: bytes) -> None:
    r = _Reader(data)
    first = r.byte()
    receiver = crypto.TlsCrypt(KEY2, server=True, replay_window=first % 70 + 1)
    if not first & 1:
        receiver.unwrap(data[1:])
        return
    _control_run(r, crypto.TlsCrypt(KEY2, server=False), receiver)


_DIGESTS = ("SHA1", "SHA256", "SHA384", "SHA512")


def t_tls_auth(data: bytes) -> None:
    r = _Reader(data)
    first = r.byte()
    digest = _DIGESTS[first >> 1 & 3]
    directions = ((0, 1), (1, 0), (None, None))[(first >> 3) % 3]
    receiver = crypto.TlsAuth(KEY2, directions[0], digest, replay_window=(first >> 5) * 9 + 1)
    if not first & 1:
        receiver.unwrap(data[1:])
        return
    _control_run(r, crypto.TlsAuth(KEY2, directions[1], digest), receiver)


_DATA_CIPHERS = (("AES-128-GCM", "SHA1"), ("AES-256-GCM", "SHA1"), ("CHACHA20-POLY1305", "SHA1"),
                 ("AES-128-CBC", "SHA1"), ("AES-192-CBC", "SHA256"), ("AES-256-CBC", "SHA512"))


def _forged_cbc(r: _Reader, cipher: str, auth: str, header: bytes) -> tuple[bytes, bytes]:
    """A CBC packet with any plaintext blocks (no padding rules) under a right HMAC, as the
    client's key (the server receives with keys[0]) makes it; and that plaintext."""
    key = KEY2.keys[0]
    klen = crypto.CBC_CIPHERS[cipher]
    iv = r.take(16).ljust(16, b"\0")
    pt = r.take(16 * (1 + r.byte() % 4))
    pt = pt.ljust(-(-len(pt) // 16) * 16 or 16, b"\x10")
    enc = Cipher(algorithms.AES(key.cipher[:klen]), modes.CBC(iv)).encryptor()
    body = iv + enc.update(pt) + enc.finalize()
    mac = hmac.new(key.hmac[:hashlib.new(auth).digest_size], body, auth).digest()
    return header + mac + body, pt


def t_data_channel(data: bytes) -> None:
    r = _Reader(data)
    first = r.byte()
    cipher, auth = _DATA_CIPHERS[first % len(_DATA_CIPHERS)]
    keys = crypto.DataKeys(KEY2)
    receiver = keys.channel(cipher, server=True, auth=auth, replay_window=(first >> 3) * 2 + 1)
    if first & 0x80:
        receiver.decrypt(data[1:])
        return
    sender = keys.channel(cipher, server=False, auth=auth)
    accepted: set[int] = set()
    while r.more:
        ctrl, pid, peer = r.byte(), r.byte(), r.byte()
        payload = r.take(r.byte() % 100)
        header = (crypto.DataChannel.header_v2(ctrl >> 5, peer) if ctrl & 4
                  else crypto.DataChannel.header_v1(ctrl >> 5))
        expect: bytes | None = payload
        if ctrl & 8 and not receiver.aead:
            wired, pt = _forged_cbc(r, cipher, auth, header)
            n = pt[-1]
            expect = pt[:-n][4:] if 1 <= n <= 16 and pt[-n:] == bytes([n]) * n \
                and len(pt) - n >= 4 else None
            pid = int.from_bytes(pt[:4], "big")
        else:
            sender._send_id.last = pid - 1
            wired = sender.encrypt(header, payload, iv=bytes(16) if not sender.aead else None)
        changed = False
        if ctrl & 1:  # not in the header's unauthenticated part: all of it for CBC (OpenVPN's
            # HMAC covers IV and ciphertext only), P_DATA_V1's byte for AEAD (not in the AD)
            start = len(header) if not receiver.aead or len(header) == 1 else 0
            wired, changed = _flip(r, wired, start), True
        if ctrl & 2:
            wired, changed = wired[:r.u16() % len(wired)], True
        try:
            out = receiver.decrypt(wired)
        except AuthFailed:
            assert changed or expect is None, f"intact packet {pid} failed authentication"
            continue
        except Replayed:
            assert receiver.aead or not changed, "a changed packet authenticated"
            assert changed or pid == 0 or pid in accepted or \
                max(accepted, default=0) - pid >= receiver.replay.size, pid
            continue
        assert not changed, "a changed packet authenticated"
        assert out == expect and pid != 0 and pid not in accepted, pid
        accepted.add(pid)


def t_tls_crypt_v2(data: bytes) -> None:
    r = _Reader(data)
    first = r.byte()
    server_key = crypto.TlsCryptV2ServerKey(KEY2.keys[1])
    if first & 3 == 0:
        server_key.split_client_packet(data[1:])
        return
    if first & 3 == 1:
        server_key.unwrap_client_key(data[1:])
        return
    kc = crypto.Key2.from_bytes(r.take(256).ljust(256, b"\x5a"))
    meta = r.take(r.u16() % (crypto.TLS_CRYPT_V2_MAX_WKC - 290 + 1))
    wkc = server_key.wrap_client_key(kc, meta)
    assert server_key.unwrap_client_key(wkc) == (kc, meta)
    op = (Opcode.P_CONTROL_HARD_RESET_CLIENT_V3, Opcode.P_CONTROL_WKC_V1)[first >> 2 & 1]
    plain = bytes([op << 3]) + CLIENT_SID + r.take(r.byte())
    wired = crypto.TlsCrypt(kc, server=False).wrap(plain, 1) + wkc
    changed = bool(first & 8)
    if changed:
        wired = _flip(r, wired)
    try:
        packet, kc2, meta2 = server_key.split_client_packet(wired)
        assert changed or (kc2, meta2) == (kc, meta)
        out = crypto.TlsCrypt(kc2, server=True).unwrap(packet)
    except AuthFailed:
        assert changed, "an intact tls-crypt-v2 packet failed authentication"
        return
    assert not changed, "a changed tls-crypt-v2 packet authenticated"
    assert out == plain


# --- reliable -----------------------------------------------------------------------------

def _payload(pid: int) -> bytes:
    return pid.to_bytes(4, "big")


def t_reliable(data: bytes) -> None:
    """Operations, each a byte (low 3 bits: which) and its arguments."""
    r = _Reader(data)
    p = r.byte()
    window, piggyback = p % 8 + 1, (p >> 3) % 9
    max_payload = r.byte() % 9 or None
    ack_delay = (r.byte() % 4) * S // 2
    chan = reliable.ReliableChannel(initial_timeout_ns=S, max_timeout_ns=8 * S, window=window,
                                    max_payload=max_payload, ack_delay_ns=ack_delay,
                                    piggyback_acks=piggyback)
    now = 0
    queued: dict[int, bytes] = {}     # sent with send(), not acked: id -> payload
    on_wire: set[int] = set()         # of those, handed out by packets_due at least once
    next_id = 0
    received: set[int] = set()        # every id given to receive()
    delivered: list[bytes] = []
    while r.more:
        op = r.byte()
        kind = op & 7
        if kind == 0:
            payload = r.take(1 + (op >> 3)).ljust(1, b"x")
            ids = chan.send(payload)
            step = max_payload or len(payload)
            assert ids == list(range(next_id, next_id + len(ids)))
            for i, pid in enumerate(ids):
                queued[pid] = payload[i * step:(i + 1) * step]
            next_id += len(ids)
        elif kind in (1, 2):
            deadline = chan.next_deadline()
            outs = chan.packets_due(now)
            acks = chan.standalone_ack_due(now)
            assert len(acks) <= wire.RELIABLE_ACK_SIZE and set(acks) <= received
            base = min(queued, default=next_id)
            for o in outs:
                assert o.packet_id in queued and o.payload == queued[o.packet_id]
                assert o.packet_id < base + window, (o.packet_id, base, window)
                assert o.retransmission == (o.packet_id in on_wire)
                assert len(o.acks) <= piggyback and set(o.acks) <= received
                on_wire.add(o.packet_id)
            if deadline is not None and deadline <= now:
                assert outs or acks, (deadline, now)
        elif kind == 3:
            ids = [next_id - 1 - (r.byte() % 10) for _ in range(op >> 5)]
            ids += [r.byte() % 20 for _ in range(op >> 3 & 3)]
            want = 0
            for pid in ids:
                if pid in queued and pid in on_wire:
                    del queued[pid]
                    on_wire.discard(pid)
                    want += 1
            assert chan.ack_received(ids) == want
        elif kind in (4, 5):
            pid = len(delivered) + (op >> 3) - 8
            if pid < 0:
                pid = op >> 3
            received.add(pid)
            out = chan.receive(pid, _payload(pid), now)
            for payload in out:
                assert payload == _payload(len(delivered)), (payload, len(delivered))
                delivered.append(payload)
            assert len(chan.acks_pending()) <= wire.RELIABLE_ACK_SIZE
        elif kind == 6:
            acks = chan.standalone_ack_due(now)
            assert len(acks) <= wire.RELIABLE_ACK_SIZE and set(acks) <= received
        else:
            now += (op >> 3) * S // 4
        assert chan.unacked == len(queued)
        deadline = chan.next_deadline()
        assert deadline is None or deadline >= 0


# --- handshake ----------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pki() -> Path:
    """A CA and a server certificate in a temporary folder (removed at exit)."""
    d = Path(tempfile.mkdtemp(prefix="openvpn-fuzz-pki-"))
    atexit.register(shutil.rmtree, d, True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(cn, key, issuer_key, issuer, ca):
        return (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(issuer_key, hashes.SHA256()))

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("fuzz-ca", ca_key, ca_key, _name("fuzz-ca"), True)
    pem = serialization.Encoding.PEM
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "server.crt").write_bytes(cert("server", key, ca_key, ca.subject, False).public_bytes(pem))
    (d / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return d


_PKI = _pki()
SERVER_CTX = handshake.server_tls_config(str(_PKI / "server.crt"), str(_PKI / "server.key"),
                                         str(_PKI / "ca.crt"))
PUSH = handshake.PushOptions(ifconfig=("10.8.0.2", "255.255.255.0"))


def _client_hello() -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(bio_in, bio_out, server_side=False)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return bio_out.read()


CLIENT_HELLO = _client_hello()
_CONTROL_OPS = sorted(wire.CONTROL_OPCODES)
_EVENTS = (handshake.SendPacket, handshake.Established, handshake.Failed, handshake.Exited)


def _hs_packet(r: _Reader, ctrl: int) -> bytes:
    """One packet for the server: raw bytes, one built from fields, or the ClientHello."""
    kind = ctrl & 3
    if kind == 0:
        return r.take(r.u16() % 1500)
    if kind == 3:
        pid = r.byte() & 7 if ctrl & 8 else 1
        return bytes([Opcode.P_CONTROL_V1 << 3]) + CLIENT_SID + b"\0" + struct.pack("!I", pid) \
            + CLIENT_HELLO
    b, f = r.byte(), r.byte()
    opnum = int(_CONTROL_OPS[b % len(_CONTROL_OPS)]) if kind == 1 else b & 0x1F
    key_id = b >> 5 if ctrl & 8 else 0
    n = f >> 2 & 7 if not f & 0x20 else 9
    out = bytes([opnum << 3 | key_id]) + (r.take(8).ljust(8, b"\0") if f & 1 else CLIENT_SID)
    out += bytes([n]) + b"".join(struct.pack("!I", r.byte() & 15) for _ in range(n))
    if n:
        out += r.take(8).ljust(8, b"\0") if f & 2 else SERVER_SID
    if opnum != Opcode.P_ACK_V1 or f & 0x40:
        out += struct.pack("!I", r.byte() & 15)
    return out + r.take(r.u16() % 1200)


def _hs_call(what, *args) -> list:
    try:
        events = what(*args)
    except (MalformedPacket, CryptoError) as e:
        raise AssertionError(f"ServerSession raised {e!r}") from e
    for e in events:
        assert isinstance(e, _EVENTS), e
        if isinstance(e, handshake.SendPacket):
            pkt = wire.parse_control(e.data)
            assert pkt.session_id == SERVER_SID and pkt.key_id == 0
            assert pkt.remote_session_id in (None, CLIENT_SID)
    return events


def t_handshake(data: bytes) -> None:
    """A session after a valid HARD_RESET_CLIENT_V2; then ``CTRL PACKET`` items: CTRL bits 0-1
    the packet's kind (raw, fields, any opcode, ClientHello), 2 tick first, 3 key id / packet id
    from the input, 5-7 the time step (0.3 s each)."""
    r = _Reader(data)
    s = handshake.ServerSession(SERVER_CTX, PUSH, session_id=SERVER_SID, randoms=RANDOMS,
                                now_ns=0)
    reset = bytes([Opcode.P_CONTROL_HARD_RESET_CLIENT_V2 << 3]) + CLIENT_SID + b"\0" + bytes(4)
    events = _hs_call(s.receive, reset, 0)
    assert s.dropped == 0 and events and isinstance(events[0], handshake.SendPacket)
    assert wire.parse_control(events[0].data).opcode == Opcode.P_CONTROL_HARD_RESET_SERVER_V2
    now, failures = 0, 0
    while r.more:
        ctrl = r.byte()
        now += (ctrl >> 5) * 300_000_000
        if ctrl & 4:
            failures += sum(isinstance(e, handshake.Failed) for e in _hs_call(s.tick, now))
        pkt = _hs_packet(r, ctrl)
        before, was_failed = s.dropped, s.failed
        events = _hs_call(s.receive, pkt, now)
        assert s.dropped >= before
        if was_failed or not _parses(pkt):
            assert s.dropped == before + 1 and not events, (s.dropped, before, events)
        failures += sum(isinstance(e, handshake.Failed) for e in events)
        assert failures <= 1 and failures == s.failed
        assert not s.established  # no client certificate, no key method 2: never gets there


TARGETS = driver.targets(globals())


def seeds() -> list[bytes]:
    """Valid inputs of every target, a corpus to start from."""
    ctl = wire.build_control(wire.ControlPacket(Opcode.P_CONTROL_V1, 0, CLIENT_SID, (0, 1),
                                                SERVER_SID, 2, b"\x16\x03\x01tls"))
    reset = wire.build_control(wire.ControlPacket(Opcode.P_CONTROL_HARD_RESET_CLIENT_V2, 0,
                                                  CLIENT_SID, (), None, 0, b""))
    ack = wire.build_control(wire.ControlPacket(Opcode.P_ACK_V1, 1, CLIENT_SID, (5,), SERVER_SID))
    km = wire.build_key_method_2(wire.KeyMethod2(
        "V4,dev-type tun,tls-client", bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 48, "",
        "", "IV_VER=2.6.14\nIV_PROTO=990\nIV_CIPHERS=AES-256-GCM\n"))
    km_server = wire.build_key_method_2(wire.KeyMethod2("V4,tls-server", bytes(32), bytes(32)))
    push = wire.build_push_reply([("route-gateway", "10.8.0.1"), ("ifconfig", "10.8.0.2", "x y"),
                                  ("dhcp-option", 'a"b')], 1).encode()
    stream = b"\x05" + wire.frame(ctl) + b"\x07" + wire.frame(b"\x30abc") + b"\x03\x00\x00"
    texts = b"\x20\x0aPUSH_REQUE\x10ST\0PUSH_REPLY,ping 10\0\x02\xff\0"
    run = bytes([1, 0, 3, 9]) + reset[:9] + bytes([1, 1, 4, 9]) + ctl[:9] + bytes([0, 1, 3, 9])
    data_run = bytes([2, 4, 1, 7, 5]) + b"hello" + bytes([8, 2, 0, 0]) + bytes(16) + b"\x04\x04"
    v2 = bytes([2]) + bytes(256) + b"\x00\x10" + b"metadata" * 2 + b"\x20" + bytes(32)
    rel = bytes([0x3b, 4, 1, 0x10, 1, 4, 0x1c, 3 | 0x20, 7 | 0x40, 1, 6, 0x45, 2])
    ack_op = _CONTROL_OPS.index(Opcode.P_ACK_V1)
    ctl_op = _CONTROL_OPS.index(Opcode.P_CONTROL_V1)
    hs = bytes([3, 0x21, ack_op, 1 << 2, 0, 0, 0, 0x41, ctl_op, 1 << 2, 1, 2, 0, 4]) + b"tls!"
    hs_short = bytes([0x03, 0xe4, 0, 0])
    return [ctl, reset, ack, reset[:9] + b"\x09" + bytes(30),
            wire.build_data(wire.DataPacket(Opcode.P_DATA_V2, 0, 7, b"payload")),
            wire.build_data(wire.DataPacket(Opcode.P_DATA_V1, 3, None, bytes(40))),
            stream, b"\x00" + km, b"\x01" + km[5:], km_server, b"\x00" + push, b"\x01ping 5",
            texts, run, data_run, v2, b"\x01" + bytes(300), rel, hs, hs_short, b"\x03", bytes(1)]


if __name__ == "__main__":
    sys.exit(driver.main(sys.argv[1:], __doc__, TARGETS, seeds, atheris,
                         refused=(MalformedPacket, CryptoError)))
