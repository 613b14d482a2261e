"""TSIG against the real peers: Knot answers signed queries and transfers,
kdig and nsupdate sign requests that tsig.py must accept (and reject once
tampered with)."""

from __future__ import annotations

import base64
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import dnslib
import pytest

from ingot.plugins.dns import tsig
from ingot.plugins.dns.tsig import BADSIG, Key, StreamVerifier, TsigError


SECRET = bytes(range(1, 33))
KEY = Key("xfr.key", SECRET)
ZONE = "example.test"

ZONE_TEXT = """\
$ORIGIN example.test.
$TTL 300
@       IN SOA ns1 hostmaster 2024010101 3600 900 604800 60
@       IN NS  ns1
ns1     IN A   127.0.0.1
www     IN A   192.0.2.10
www     IN AAAA 2001:db8::10
@       IN MX  10 mail
mail    IN A   192.0.2.25
@       IN TXT "v=spf1 -all"
alias   IN CNAME www
chain   IN CNAME alias
big     IN TXT {big}
"""
BIG_TXT = " ".join(f'"{i:03d}-' + "x" * 90 + '"' for i in range(12))  # ~1.1 KB RRset
BULK = "".join(f"h{i:04d} IN A 198.51.100.{i % 250}\n" for i in range(1500))


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 and ::1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                if (family, kind) != (socket.AF_INET, socket.SOCK_STREAM):
                    with socket.socket(family, kind) as s:
                        s.bind((host, port))
        return port


class Knot:
    """A knotd on 127.0.0.1 and ::1 serving one zone, with a TSIG key for
    transfers and updates."""

    def __init__(self, folder: Path, *, zone_text: str, key: Key | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.key = key
        storage = folder / "zones"
        storage.mkdir(parents=True)
        (folder / "db").mkdir()
        (storage / f"{ZONE}.zone").write_text(zone_text)
        key_part = acl = ""
        if key is not None:
            alg = "hmac-md5" if key.algorithm.startswith("hmac-md5") else key.algorithm
            key_part = (f"key:\n  - id: {key.name}\n    algorithm: {alg}\n"
                        f"    secret: {base64.b64encode(key.secret).decode()}\n")
            acl = ("acl:\n  - id: keyed\n    address: 127.0.0.0/8\n"
                   f"    key: {key.name}\n    action: [transfer, update]\n")
        conf = (f"server:\n  rundir: {folder}\n  listen: [127.0.0.1@{self.port}, ::1@{self.port}]\n"
                "  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n"
                f"database:\n  storage: {folder / 'db'}\n"
                f"log:\n  - target: stderr\n    any: info\n"
                f"{key_part}{acl}"
                f"template:\n  - id: default\n    storage: {storage}\n    zonefile-sync: -1\n"
                f"zone:\n  - domain: {ZONE}\n    file: {ZONE}.zone\n"
                + ("    acl: keyed\n" if key is not None else ""))
        (folder / "knot.conf").write_text(conf)
        self.log = open(folder / "knotd.log", "wb")
        self.proc = subprocess.Popen(["knotd", "-c", str(folder / "knot.conf")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        probe = dnslib.DNSRecord.question(ZONE, "SOA").pack()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                reply = udp_exchange(probe, self.port, timeout=0.2)
                if dnslib.DNSRecord.parse(reply).header.rcode == 0:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("knotd did not start:\n" + (self.folder / "knotd.log").read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def udp_exchange(data: bytes, port: int, timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        return s.recvfrom(65535)[0]


def tcp_messages(data: bytes, port: int, until_soa_twice: bool = True) -> list[bytes]:
    """Send one message over TCP, read answers until the closing SOA of a transfer."""
    messages = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack("!H", len(data)) + data)
        f = s.makefile("rb")
        soas = 0
        while True:
            head = f.read(2)
            if len(head) < 2:
                break
            msg = f.read(struct.unpack("!H", head)[0])
            messages.append(msg)
            parsed = dnslib.DNSRecord.parse(msg)
            soas += sum(rr.rtype == dnslib.QTYPE.SOA for rr in parsed.rr)
            if parsed.header.rcode or not until_soa_twice or soas >= 2:
                break
    return messages


@pytest.fixture
def knot(tmp_path):
    server = Knot(tmp_path / "knot", zone_text=ZONE_TEXT.format(big=BIG_TXT) + BULK, key=KEY)
    yield server
    server.stop()


def now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------
# tsig.py signs, Knot answers, tsig.py verifies


def test_signed_soa_query_over_udp(knot):
    request, mac = tsig.sign(dnslib.DNSRecord.question(ZONE, "SOA").pack(), KEY, now())
    reply = udp_exchange(request, knot.port)
    v = tsig.verify(reply, KEY, now(), request_mac=mac)
    parsed = dnslib.DNSRecord.parse(v.message)
    assert parsed.header.rcode == 0 and parsed.rr[0].rtype == dnslib.QTYPE.SOA
    # the same reply checked against the wrong request MAC fails
    with pytest.raises(TsigError) as info:
        tsig.verify(reply, KEY, now(), request_mac=bytes(32))
    assert info.value.tsig_error == BADSIG


def test_signed_axfr_stream(knot):
    """A multi-message AXFR: the first over the request MAC, the rest over prior MACs."""
    request, mac = tsig.sign(dnslib.DNSRecord.question(ZONE, "AXFR").pack(), KEY, now())
    messages = tcp_messages(request, knot.port)
    assert len(messages) > 1
    verifier = StreamVerifier(KEY, mac)
    names = set()
    for msg in messages:
        v = verifier.feed(msg, now())
        body = v.message if v else msg
        names.update(str(rr.rname) for rr in dnslib.DNSRecord.parse(body).rr)
    verifier.finish()
    assert "h1499.example.test." in names and "big.example.test." in names
    # one flipped byte in the middle of the stream is caught
    tampered = list(messages)
    middle = bytearray(tampered[1])
    middle[40] ^= 1
    tampered[1] = bytes(middle)
    verifier = StreamVerifier(KEY, mac)
    with pytest.raises(TsigError):
        for msg in tampered:
            verifier.feed(msg, now())


@pytest.mark.parametrize("alg", ["hmac-sha1", "hmac-sha512", "hmac-md5"])
def test_other_algorithms(tmp_path, alg):
    key = Key("alg.key", SECRET, alg)
    server = Knot(tmp_path / alg, zone_text=ZONE_TEXT.format(big='"x"'), key=key)
    try:
        request, mac = tsig.sign(dnslib.DNSRecord.question(ZONE, "AXFR").pack(), key, now())
        messages = tcp_messages(request, server.port)
        verifier = StreamVerifier(key, mac)
        for msg in messages:
            verifier.feed(msg, now())
        verifier.finish()
    finally:
        server.stop()


def test_knot_rejects_what_tsig_py_signs_wrongly(knot):
    """Knot answers a bad key with an unsigned NOTAUTH/BADSIG, which verify reports."""
    bad = Key(KEY.name, b"not the secret")
    request, mac = tsig.sign(dnslib.DNSRecord.question(ZONE, "AXFR").pack(), bad, now())
    reply = tcp_messages(request, knot.port)[0]
    assert dnslib.DNSRecord.parse(reply).header.rcode == tsig.NOTAUTH
    with pytest.raises(TsigError) as info:
        tsig.verify(reply, bad, now(), request_mac=mac)
    assert info.value.tsig_error == BADSIG
    # and a request signed an hour ago gets BADTIME, signed, with Knot's clock
    old, mac = tsig.sign(dnslib.DNSRecord.question(ZONE, "SOA").pack(), KEY, now() - 3600)
    reply = udp_exchange(old, knot.port)
    with pytest.raises(TsigError) as info:
        tsig.verify(reply, KEY, now() - 3600, request_mac=mac)
    assert info.value.tsig_error == tsig.BADTIME
    assert abs(int.from_bytes(info.value.record.other, "big") - now()) < 5


def test_dynamic_update_signed_by_tsig_py(knot):
    update = dnslib.DNSRecord(dnslib.DNSHeader(opcode=5), q=dnslib.DNSQuestion(ZONE, 6))
    update.add_auth(*dnslib.RR.fromZone("new.example.test. 60 IN A 192.0.2.99"))
    request, mac = tsig.sign(update.pack(), KEY, now())
    reply = udp_exchange(request, knot.port)
    v = tsig.verify(reply, KEY, now(), request_mac=mac)
    assert dnslib.DNSRecord.parse(v.message).header.rcode == 0
    answer = dnslib.DNSRecord.parse(udp_exchange(
        dnslib.DNSRecord.question("new.example.test", "A").pack(), knot.port))
    assert [str(rr.rdata) for rr in answer.rr] == ["192.0.2.99"]


# --------------------------------------------------------------------------
# kdig and nsupdate sign, tsig.py verifies


class Catcher:
    """A UDP server on 127.0.0.1 that keeps the requests it gets and answers
    each with a signed (or error) reply built by tsig.py."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.requests.append(data)
            try:
                v = tsig.verify(data, self.key, now())
            except TsigError as e:
                reply = tsig.error_response(data, e, now())
                if reply:
                    self.sock.sendto(reply, addr)
                continue
            reply = dnslib.DNSRecord.parse(v.message).reply()
            signed, _ = tsig.sign(reply.pack(), self.key, now(), request_mac=v.mac)
            self.sock.sendto(signed, addr)

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def catcher():
    c = Catcher(KEY)
    yield c
    c.close()


def tampered(wire: bytes) -> bytes:
    data = bytearray(wire)
    data[14] ^= 0x01  # a byte of the first name
    return bytes(data)


def test_kdig_request_verifies(catcher):
    out = subprocess.run(["kdig", "@127.0.0.1", "-p", str(catcher.port), "-y", KEY.text(),
                          "+notcp", "+retry=0", "+time=2", "www.example.test", "A"],
                         capture_output=True, text=True, timeout=20)
    assert catcher.requests, out.stdout + out.stderr
    request = catcher.requests[0]
    v = tsig.verify(request, KEY, now())
    assert v.key == KEY
    assert "NOERROR" in out.stdout and "TSIG" in out.stdout, out.stdout  # kdig accepted our answer
    with pytest.raises(TsigError) as info:
        tsig.verify(tampered(request), KEY, now())
    assert info.value.tsig_error == BADSIG


@pytest.mark.parametrize("alg", ["hmac-sha256", "hmac-sha512", "hmac-md5"])
def test_nsupdate_request_verifies(catcher, alg):
    key = Key(KEY.name, SECRET, alg)
    catcher.key = key
    script = (f"server 127.0.0.1 {catcher.port}\nzone {ZONE}\n"
              "update add x.example.test. 60 A 192.0.2.7\nsend\n")
    out = subprocess.run(["nsupdate", "-y", key.text(), "-t", "3"], input=script,
                         capture_output=True, text=True, timeout=30)
    assert catcher.requests, out.stderr
    request = catcher.requests[0]
    v = tsig.verify(request, key, now())
    assert dnslib.DNSRecord.parse(v.message).header.opcode == 5
    assert out.returncode == 0, out.stderr  # nsupdate accepted the signed answer
    with pytest.raises(TsigError) as info:
        tsig.verify(tampered(request), key, now())
    assert info.value.tsig_error == BADSIG


def test_kdig_sees_our_badsig_answer(catcher):
    catcher.key = Key(KEY.name, b"some other secret")
    out = subprocess.run(["kdig", "@127.0.0.1", "-p", str(catcher.port), "-y", KEY.text(),
                          "+notcp", "+retry=0", "+time=2", "www.example.test", "A"],
                         capture_output=True, text=True, timeout=20)
    assert "status: BADSIG" in out.stdout, out.stdout + out.stderr
    assert "TSIG\thmac-sha256. " in out.stdout and " BADSIG 0" in out.stdout, out.stdout
