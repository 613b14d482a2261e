"""Zone transfers, NOTIFY and dynamic update against the real peers, on 127.0.0.1 only:

* kdig and dig pull AXFR and IXFR from Ingot's transfer handler;
* nsupdate sends a TSIG-signed UPDATE that Ingot's update core applies;
* Ingot's secondary core pulls a zone from knotd by AXFR, then by IXFR after
  the zone changes in Knot;
* NSD, as Ingot's secondary, gets the zone by AXFR, then by IXFR after a NOTIFY.

Ingot runs here behind a minimal test-only asyncio UDP/TCP server in a thread
(the real adapter is the appliance's); the secondary core is driven by plain
blocking sockets. Every peer is started from a temporary folder and stopped by PID.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import dnslib
import pytest

from ingot.plugins.dns import server, tsig
from ingot.plugins.dns.acl import ALLOW_ALL, Peer, parse_acl
from ingot.plugins.dns.journal import soa_serial
from ingot.plugins.dns.notify import NotifySender, SendUdp, handle_notify
from ingot.plugins.dns.secondary import CloseTcp, OpenTcp, Secondary, ZoneLoaded
from ingot.plugins.dns.update import ZoneChanged, handle_update
from ingot.plugins.dns.xfr import EXT, TransferConfig, handle_xfr, take_events
from ingot.plugins.dns.zonefile import load_zone

ORIGIN = "xfr.test."
KEY = tsig.Key("upd.key", bytes(range(1, 33)))
ZONE_TEXT = """$ORIGIN xfr.test.
$TTL 300
@    IN SOA ns1 hostmaster {serial} 3600 600 86400 60
@    NS ns1
ns1  A 127.0.0.1
www  A 192.0.2.10
mail MX 10 www
txt  TXT "hello world"
{extra}
"""
BULK = "\n".join(f"h{i:04d} A 198.51.100.{i % 250 + 1}" for i in range(2000))


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed (see .ci/debian-packages.txt)"
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", port))
        return port


def run(*cmd, timeout=20) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(check, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def soa_of(port: int) -> int | None:
    query = dnslib.DNSRecord.question(ORIGIN, "SOA")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(query.pack(), ("127.0.0.1", port))
            reply = dnslib.DNSRecord.parse(s.recvfrom(65535)[0])
        except OSError:
            return None
    soas = [rr for rr in reply.rr if rr.rtype == dnslib.QTYPE.SOA]
    return soa_serial(soas[0]) if soas else None


# -- Ingot behind a test-only asyncio server --------------------------------------

class Ingot:
    """server.handle over UDP and TCP on 127.0.0.1, in a thread; persists nothing,
    records the transfer questions it saw and the zone changes, sends NOTIFYs."""

    def __init__(self, zone_text: str, **config) -> None:
        self.port = free_port()
        zone = load_zone(zone_text, ORIGIN)
        self.state = server.ServerState.create(
            [zone], handlers={4: handle_notify, 5: handle_update},
            xfr_handler=handle_xfr).with_ext(EXT, TransferConfig(**config))
        self.seen: list[tuple[str, str]] = []
        self.changes: list[ZoneChanged] = []
        ids = itertools.count(1000)
        self.notifier = NotifySender(new_id=lambda: next(ids))
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        ingot = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                ingot.udp = transport

            def datagram_received(self, data, addr):
                if data[2] & 0x80 and data[2] >> 3 & 0xF == 4:  # a NOTIFY response
                    ingot.notifier.handle_response(addr, data, time.time_ns())
                    return
                for reply in ingot.handle("udp", addr, data):
                    ingot.udp.sendto(reply, addr)

        await self.loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", self.port))
        self.tcp = await asyncio.start_server(self._tcp, "127.0.0.1", self.port)
        self.loop.create_task(self._ticker())

    async def _tcp(self, reader, writer) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                data = await reader.readexactly(size)
                for reply in self.handle("tcp", writer.get_extra_info("peername")[:2], data):
                    writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def handle(self, proto, addr, data) -> list[bytes]:
        try:
            q = dnslib.DNSRecord.parse(data).q
            self.seen.append((proto, dnslib.QTYPE.get(q.qtype)))
        except Exception:
            pass
        self.state, replies, _ = server.handle(self.state, time.time_ns(), proto, tuple(addr), data)
        self.state, events = take_events(self.state)
        # the real adapter persists each ZoneChanged here, before replying
        self.changes += [e for e in events if isinstance(e, ZoneChanged)]
        return replies

    async def _ticker(self) -> None:
        while True:
            for out in self.notifier.tick(time.time_ns()):
                if isinstance(out, SendUdp):
                    self.udp.sendto(out.wire, out.dst)
            await asyncio.sleep(0.2)

    def call(self, fn):
        """Run ``fn()`` on the server's loop and return its result."""
        done, box = threading.Event(), []

        def go():
            box.append(fn())
            done.set()
        self.loop.call_soon_threadsafe(go)
        assert done.wait(5)
        return box[0]

    def notify(self, peers) -> None:
        def go():
            zone = self.state.zone(ORIGIN)
            soa = zone.get(ORIGIN, dnslib.QTYPE.SOA).records()[0]
            for out in self.notifier.zone_changed(ORIGIN, soa, peers, time.time_ns()):
                self.udp.sendto(out.wire, out.dst)
        self.call(go)

    def close(self) -> None:
        def shutdown():
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.tcp.close()
            self.udp.close()
            self.loop.call_soon(self.loop.stop)
        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(5)


@pytest.fixture
def ingot():
    servers = []

    def make(zone_text, **config):
        s = Ingot(zone_text, **config)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def update_zone(ingot: Ingot, text: str) -> None:
    """Change the zone through Ingot's own update handler (as nsupdate would)."""
    msg = dnslib.DNSRecord(dnslib.DNSHeader(id=1, opcode=5),
                           [dnslib.DNSQuestion(ORIGIN, dnslib.QTYPE.SOA)])
    for rr in dnslib.RR.fromZone(text, origin=ORIGIN):
        msg.add_auth(rr)
    wire, _ = tsig.sign(bytes(msg.pack()), KEY, int(time.time()))
    replies = ingot.call(lambda: ingot.handle("udp", ("127.0.0.1", 1), wire))
    assert dnslib.DNSRecord.parse(replies[0]).header.rcode == 0


# -- dig and kdig against Ingot ----------------------------------------------------

def test_kdig_and_dig_axfr_and_ixfr(ingot):
    need("kdig"), need("dig")
    srv = ingot(ZONE_TEXT.format(serial=10, extra=BULK), transfer_acl=ALLOW_ALL,
                update_acl=parse_acl(["key:upd.key"]), keyring={KEY.name: KEY})
    out = run("kdig", "-p", srv.port, "@127.0.0.1", "AXFR", ORIGIN, "+nostats")
    lines = [line for line in out.splitlines() if line and not line.startswith(";")]
    assert len(lines) == 2000 + 7 and "SOA" in lines[0] and "SOA" in lines[-1]
    out = run("dig", "-p", srv.port, "@127.0.0.1", "AXFR", ORIGIN)
    assert "XFR size: 2007 records" in out
    update_zone(srv, "new 60 A 192.0.2.77")
    update_zone(srv, "new2 60 TXT second")
    out = run("dig", "-p", srv.port, "@127.0.0.1", "IXFR=10", ORIGIN, "+onesoa")
    body = [line.split() for line in out.splitlines() if line and not line.startswith(";")]
    soas = [int(f[6]) for f in body if f[3] == "SOA"]
    assert soas == [12, 10, 11, 11, 12, 12] or soas == [12, 10, 11, 11, 12]
    assert any(f[0] == f"new.{ORIGIN}" for f in body)
    out = run("kdig", "-p", srv.port, "@127.0.0.1", "IXFR=11", ORIGIN, "+nostats")
    assert f"new2.{ORIGIN}" in out and f"new.{ORIGIN}" not in out
    out = run("kdig", "-p", srv.port, "@127.0.0.1", "IXFR=12", ORIGIN, "+nostats")
    assert [f for f in out.splitlines() if f and not f.startswith(";")][0].split()[3] == "SOA"
    assert ("tcp", "AXFR") in srv.seen and ("tcp", "IXFR") in srv.seen


def test_nsupdate_with_tsig(ingot):
    nsupdate = need("nsupdate")
    srv = ingot(ZONE_TEXT.format(serial=1, extra=""), update_acl=parse_acl(["key:upd.key"]),
                keyring={KEY.name: KEY})
    secret = base64.b64encode(KEY.secret).decode()
    script = (f"server 127.0.0.1 {srv.port}\nzone {ORIGIN}\n"
              f"prereq nxdomain added.{ORIGIN}\n"
              f"update add added.{ORIGIN} 120 A 192.0.2.55\n"
              f"update delete www.{ORIGIN} A\nsend\n")
    proc = subprocess.run([nsupdate, "-y", f"hmac-sha256:upd.key:{secret}"], input=script,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    zone = srv.state.zone(ORIGIN)
    assert zone.serial == 2 and zone.get(f"added.{ORIGIN}", 1) is not None
    assert zone.get(f"www.{ORIGIN}", 1) is None
    assert [c.change.to_serial for c in srv.changes] == [2]
    # unsigned, and with a wrong key: refused, nothing changes
    proc = subprocess.run([nsupdate], input=script, capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0 and "REFUSED" in proc.stdout + proc.stderr
    bad = base64.b64encode(b"x" * 32).decode()
    proc = subprocess.run([nsupdate, "-y", f"hmac-sha256:upd.key:{bad}"], input=script,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0
    assert srv.state.zone(ORIGIN).serial == 2


# -- Ingot's secondary core pulling from knotd --------------------------------------

class Knot:
    def __init__(self, folder: Path, zone_text: str) -> None:
        need("knotd")
        self.folder, self.port = folder, free_port()
        (folder / "zones").mkdir()
        (folder / "db").mkdir()
        (folder / "zones" / "xfr.test.zone").write_text(zone_text)
        self.conf = folder / "knot.conf"
        self.conf.write_text(
            f"server:\n  rundir: {folder}\n  listen: 127.0.0.1@{self.port}\n"
            "  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n"
            f"database:\n  storage: {folder / 'db'}\n"
            "log:\n  - target: stderr\n    any: info\n"
            "acl:\n  - id: xfr\n    address: 127.0.0.0/8\n    action: transfer\n"
            f"template:\n  - id: default\n    storage: {folder / 'zones'}\n"
            "    zonefile-sync: -1\n"
            f"zone:\n  - domain: {ORIGIN}\n    file: xfr.test.zone\n    acl: xfr\n")
        self.log = open(folder / "knotd.log", "wb")
        self.proc = subprocess.Popen(["knotd", "-c", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: soa_of(self.port) is not None or self.proc.poll() is not None,
                 "knotd to start")
        assert self.proc.poll() is None, (folder / "knotd.log").read_text()

    def knotc(self, *args) -> str:
        return run("knotc", "-c", self.conf, *args)

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


def drive(sec: Secondary, actions) -> list:
    """Carry out a secondary's actions with blocking sockets until it is idle."""
    seen, queue, conns = [], list(actions), {}
    while queue:
        action = queue.pop(0)
        seen.append(action)
        if isinstance(action, SendUdp):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.sendto(action.wire, action.dst)
                data, addr = s.recvfrom(65535)
            queue += sec.handle_udp(addr, data, time.time_ns())
        elif isinstance(action, OpenTcp):
            s = socket.create_connection(action.dst, timeout=10)
            conns[action.conn] = s
            s.sendall(struct.pack("!H", len(action.wire)) + action.wire)
            f = s.makefile("rb")
            while action.conn in conns:
                head = f.read(2)
                if len(head) < 2:
                    queue += sec.tcp_closed(action.conn, time.time_ns())
                    break
                msg = f.read(struct.unpack("!H", head)[0])
                out = sec.handle_tcp_message(action.conn, msg, time.time_ns())
                for a in out:
                    if isinstance(a, CloseTcp) and a.conn in conns:
                        conns.pop(a.conn).close()
                queue += out
        elif isinstance(action, CloseTcp) and action.conn in conns:
            conns.pop(action.conn).close()
    return seen


def test_secondary_core_pulls_from_knot_by_axfr_then_ixfr(tmp_path):
    need("knotc")
    knot = Knot(tmp_path, ZONE_TEXT.format(serial=100, extra=BULK))
    try:
        ids = itertools.count(1)
        sec = Secondary(ORIGIN, [Peer("127.0.0.1", knot.port)], new_id=lambda: next(ids),
                        now_ns=time.time_ns())
        loaded = [a for a in drive(sec, sec.tick(time.time_ns())) if isinstance(a, ZoneLoaded)]
        assert [(z.kind, z.serial) for z in loaded] == [("axfr", 100)]
        assert len(loaded[0].records) == 2000 + 6
        load_zone(ZONE_TEXT.format(serial=100, extra=BULK), ORIGIN)  # same content as ours
        knot.knotc("zone-begin", ORIGIN)
        knot.knotc("zone-set", ORIGIN, f"added.{ORIGIN}", "300", "A", "192.0.2.200")
        knot.knotc("zone-unset", ORIGIN, f"h0001.{ORIGIN}", "A")
        knot.knotc("zone-commit", ORIGIN)
        wait_for(lambda: soa_of(knot.port) == 101, "knot's new serial")
        loaded = [a for a in drive(sec, sec.notify(time.time_ns()))
                  if isinstance(a, ZoneLoaded)]
        assert [(z.kind, z.serial) for z in loaded] == [("ixfr", 101)]
        names = {str(rr.rname) for rr in loaded[0].records}
        assert f"added.{ORIGIN}" in names and f"h0001.{ORIGIN}" not in names
        assert len(loaded[0].records) == 2000 + 6
        assert not drive(sec, sec.notify(time.time_ns()))[1:]  # current: one SOA query only
    finally:
        knot.stop()


# -- NSD as a secondary of Ingot ---------------------------------------------------------

def test_nsd_pulls_from_ingot_and_follows_a_notify(tmp_path, ingot):
    need("nsd")
    srv = ingot(ZONE_TEXT.format(serial=5, extra=BULK), transfer_acl=ALLOW_ALL,
                update_acl=parse_acl(["key:upd.key"]), keyring={KEY.name: KEY})
    port = free_port()
    conf = tmp_path / "nsd.conf"
    conf.write_text(
        f"server:\n  ip-address: 127.0.0.1@{port}\n  server-count: 1\n  username: \"\"\n"
        f"  database: \"\"\n  zonesdir: \"{tmp_path}\"\n  pidfile: \"{tmp_path}/nsd.pid\"\n"
        f"  xfrdfile: \"{tmp_path}/xfrd.state\"\n  zonelistfile: \"{tmp_path}/zone.list\"\n"
        f"  xfrdir: \"{tmp_path}\"\n  logfile: \"{tmp_path}/nsd.log\"\n  verbosity: 2\n"
        "  rrl-ratelimit: 0\n"
        f"remote-control:\n  control-enable: no\n"
        f"zone:\n  name: {ORIGIN}\n  zonefile: \"{tmp_path}/xfr.test.zone\"\n"
        f"  request-xfr: 127.0.0.1@{srv.port} NOKEY\n  allow-notify: 127.0.0.1 NOKEY\n")
    proc = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: soa_of(port) == 5, "NSD to load the zone by AXFR", 30)
        first = [q for q in srv.seen if q[1] in ("AXFR", "IXFR")]
        assert ("tcp", "AXFR") in first
        update_zone(srv, "fresh 60 A 192.0.2.123")
        srv.seen.clear()
        srv.notify([Peer("127.0.0.1", port)])
        wait_for(lambda: soa_of(port) == 6, "NSD to follow the NOTIFY", 30)
        assert ("tcp", "IXFR") in srv.seen, srv.seen
        query = dnslib.DNSRecord.question(f"fresh.{ORIGIN}", "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(query.pack(), ("127.0.0.1", port))
            reply = dnslib.DNSRecord.parse(s.recvfrom(65535)[0])
        assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.123"]
        wait_for(lambda: not srv.notifier.pending, "NSD to answer the NOTIFY")
    finally:
        stop(proc)
