"""The DNS server core behind a tiny test-only UDP+TCP server, queried by real `dig` and `kdig`.

:class:`CoreServer` (also used by test_dns_knot_diff.py) runs
:func:`ingot.plugins.dns.server.handle` on 127.0.0.1, on a free port, in an
asyncio loop of its own thread: one datagram in, its replies out; over TCP,
length-prefixed messages in a loop until the client closes or stays idle.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from ingot.plugins.dns.server import ServerState, handle
from ingot.plugins.dns.zonefile import load_zone

ZONE = """\
$ORIGIN example.com.
$TTL 300
@       IN SOA ns1 hostmaster ( 2024010101 3600 900 604800 60 )
        IN NS  ns1
        NS     ns2.example.net.
        MX     10 mail
ns1     A      192.0.2.1
        AAAA   2001:db8::1
mail    A      192.0.2.25
www     A      192.0.2.10
        AAAA   2001:db8::10
alias   CNAME  www
chain1  CNAME  alias
ext     CNAME  www.example.net.
dangling CNAME nothere
*.wild  A      192.0.2.99
*.wild  TXT    "wild"
a.b.ent A      192.0.2.5
sub     NS     ns.sub
sub     NS     ns.elsewhere.net.
sub     DS     12345 8 2 ABCDEF0123456789
ns.sub  A      192.0.2.53
_sip._tcp SRV  10 5 5060 www
caa     CAA    0 issue "ca.example.net"
_443._tcp.www TLSA 3 1 1 0123456789ABCDEF
svc     HTTPS  1 . alpn=h2
"""
ZONE += "".join(f'big TXT "record number {i} with some padding text to make it long"\n'
                for i in range(40))
ZONE += "".join(f'mid TXT "record number {i} with some padding text to make it long"\n'
                for i in range(12))


class CoreServer:
    """Serves ``state`` on 127.0.0.1:``port`` (UDP and TCP) from a thread."""

    def __init__(self, state: ServerState, idle_timeout: float = 5.0) -> None:
        self.state = state
        self.idle_timeout = idle_timeout
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CoreServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test DNS server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _answer(self, proto: str, src: tuple, data: bytes) -> list[bytes]:
        self.state, replies, _ = handle(self.state, time.time_ns(), proto, src[:2], data)
        return replies

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                for reply in server._answer("udp", addr, data):
                    self.transport.sendto(reply, addr)

        async def tcp_client(reader, writer):
            peer = writer.get_extra_info("peername")
            try:
                while True:
                    head = await asyncio.wait_for(reader.readexactly(2), server.idle_timeout)
                    data = await asyncio.wait_for(
                        reader.readexactly(struct.unpack("!H", head)[0]), server.idle_timeout)
                    for reply in server._answer("tcp", peer, data):
                        writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError,
                    asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def start():
            for _ in range(20):
                port = free_port()
                try:
                    tcp = await asyncio.start_server(tcp_client, "127.0.0.1", port)
                    await self.loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", port))
                except OSError:
                    continue
                self.port = port
                return tcp
            raise RuntimeError("no free port")

        tcp = self.loop.run_until_complete(start())
        self._ready.set()
        self.loop.run_forever()
        tcp.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(tcp.wait_closed())
        self.loop.close()


def free_port() -> int:
    """A port of 127.0.0.1 free for both UDP and TCP right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def random_case(name: str, rnd: random.Random) -> str:
    """``name`` with each letter's case flipped at random (0x20 bits)."""
    return "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in name)


@pytest.fixture(scope="module")
def core():
    zone = load_zone(ZONE, file="example.com.zone")
    with CoreServer(ServerState.create([zone])) as server:
        yield server


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian: knot knot-dnsutils bind9-dnsutils); "
                    ".ci/debian-packages.txt should list it")
    return path


def dig(port: int, *args: str) -> str:
    return subprocess.run([need("dig"), "@127.0.0.1", "-p", str(port), "+norecurse", "+tries=1",
                           "+time=3", *args], capture_output=True, text=True, timeout=20).stdout


def kdig(port: int, *args: str) -> str:
    return subprocess.run([need("kdig"), "@127.0.0.1", "-p", str(port), "+norecurse",
                           "+retry=0", "+time=3", *args],
                          capture_output=True, text=True, timeout=20).stdout


def answers(out: str) -> list[str]:
    return sorted(" ".join(line.split()[3:]) for line in out.splitlines()
                  if line and not line.startswith(";") and len(line.split()) > 4)


def test_dig_positive_answer(core):
    out = dig(core.port, "www.example.com", "A")
    assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
    assert answers(out) == ["A 192.0.2.10"]
    assert "udp: 1232" in out


def test_dig_short_and_tcp(core):
    for extra in ((), ("+tcp",)):
        out = dig(core.port, "+short", *extra, "alias.example.com", "AAAA")
        assert out.split() == ["www.example.com.", "2001:db8::10"]


def test_dig_nxdomain_with_soa(core):
    out = dig(core.port, "nope.example.com", "A")
    assert "status: NXDOMAIN" in out
    assert "AUTHORITY: 1" in out and "SOA" in out


def test_dig_referral(core):
    out = dig(core.port, "host.sub.example.com", "A")
    flags = out.split("flags:")[1].split(";")[0]
    assert "status: NOERROR" in out and " aa" not in flags
    assert "ns.sub.example.com." in out and "192.0.2.53" in out


def test_dig_0x20_case_kept(core):
    out = dig(core.port, "WwW.ExAmPlE.cOm", "A")
    assert ";WwW.ExAmPlE.cOm." in out


def test_dig_truncation_then_tcp(core):
    out = dig(core.port, "+ignore", "+bufsize=1232", "big.example.com", "TXT")
    assert " tc" in out.split("flags:")[1].split(";")[0]
    out = dig(core.port, "big.example.com", "TXT")  # dig retries over TCP by itself
    assert len(answers(out)) == 40


def test_dig_bufsize_512_and_noedns(core):
    out = dig(core.port, "+ignore", "+noedns", "mid.example.com", "TXT")
    assert " tc" in out.split("flags:")[1].split(";")[0]
    out = dig(core.port, "+ignore", "+bufsize=4096", "mid.example.com", "TXT")
    assert len(answers(out)) == 12


def test_dig_refused_outside_zones(core):
    assert "status: REFUSED" in dig(core.port, "example.org", "A")


def test_dig_rd_copied_ra_never(core):
    out = subprocess.run([need("dig"), "@127.0.0.1", "-p", str(core.port), "+recurse",
                          "www.example.com"], capture_output=True, text=True, timeout=20).stdout
    flags = out.split("flags:")[1].split(";")[0].split()
    assert "rd" in flags and "ra" not in flags and "ad" not in flags


def test_kdig_udp_tcp_and_case(core):
    rnd = random.Random(7)
    for proto in ((), ("+tcp",)):
        name = random_case("www.example.com", rnd)
        out = kdig(core.port, *proto, name, "AAAA")
        assert "NOERROR" in out and "2001:db8::10" in out  # kdig lowercases names itself


def test_kdig_wildcard_and_nodata(core):
    out = kdig(core.port, "x.wild.example.com", "A")
    assert "192.0.2.99" in out
    out = kdig(core.port, "x.wild.example.com", "MX")
    assert "NOERROR" in out and "SOA" in out


def test_kdig_types(core):
    assert "ca.example.net" in kdig(core.port, "caa.example.com", "CAA")
    assert "0123456789" in kdig(core.port, "_443._tcp.www.example.com", "TLSA").replace(
        " ", "").upper()
    assert "alpn=h2" in kdig(core.port, "svc.example.com", "HTTPS")
    assert "5060" in kdig(core.port, "_sip._tcp.example.com", "SRV")


def test_kdig_badvers(core):
    out = kdig(core.port, "+edns=1", "www.example.com", "A")
    assert "BADVERS" in out


def test_kdig_tcp_pipelined(core):
    """Several queries on one TCP connection."""
    with socket.create_connection(("127.0.0.1", core.port), timeout=5) as s:
        for qid in range(3):
            msg = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + b"\x03www\x07example\x03com\x00" \
                + struct.pack("!HH", 1, 1)
            s.sendall(struct.pack("!H", len(msg)) + msg)
        for qid in range(3):
            n = struct.unpack("!H", _recv(s, 2))[0]
            reply = _recv(s, n)
            assert reply[:2] == struct.pack("!H", qid)


def _recv(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk
        data += chunk
    return data
