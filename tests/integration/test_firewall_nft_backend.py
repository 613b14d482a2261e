"""The ``packet_filter/nftables`` backend end to end: the kernel forwards, Qubes' rules decide.

Four namespaces: ``client1`` (10.137.0.10) and ``client2`` (10.137.0.11),
each a point-to-point link to the firewall as a Qubes vif (``vif1.0``,
``vif2.0``), the firewall ``fw`` (uplink ``eth0``, 10.200.0.2) and
``upstream`` (10.200.0.1: TCP/UDP echo servers that report who they saw, and
a DNS stub on port 53). Clients use the gateway 10.137.0.1 and the Qubes
virtual DNS 10.139.1.1, which the firewall redirects to 10.200.0.1.

The backend runs in ``fw`` as its own process (:data:`RUNNER`: it builds
:class:`NftFilter` directly and takes ``start``/``attach``/``set_rules``/...
as JSON lines on stdin), so rules change while traffic flows. Each client
(and upstream) has a probe agent (:data:`AGENT`) that reports what happened
to a connection attempt: ``ok`` with the reply, ``admin-prohibited`` (an ICMP
type 3 code 13 read from the socket's error queue, ``IP_RECVERR``), or
``timeout`` (silently dropped).
"""

from __future__ import annotations

import json
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingot.testing import netns as kit

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

C1, C2, GW, VDNS = "10.137.0.10", "10.137.0.11", "10.137.0.1", "10.139.1.1"
UP, FW_UP = "10.200.0.1", "10.200.0.2"
SETUP = {"uplink_ip": FW_UP, "uplink_gateway": UP, "client_gateway": GW,
         "uplink_prefix": 24, "virtual_dns": [VDNS], "upstream_dns": [UP]}
DENY_WAIT = 0.6
"""How long a probe waits for an answer that a silent drop never sends."""

RUNNER = r'''
import asyncio, ipaddress, json, sys
from ingot.log import Logger, Sink
from ingot.plugins.firewall.nft_backend import NftFilter
from ingot.signatures import ClientRules, FilterRule, FilterSetup

def client_rules(d):
    rules = []
    for r in d.get("rules", []):
        r = dict(r)
        if r.get("dst") is not None:
            r["dst"] = tuple(ipaddress.ip_network(x) for x in r["dst"])
        if r.get("dstports") is not None:
            r["dstports"] = tuple(r["dstports"])
        rules.append(FilterRule(**r))
    return ClientRules(d["client"], tuple(rules), d.get("policy", "drop"), d.get("error"))

dev = NftFilter(uplink_ifname=sys.argv[1], log=Logger("fw", Sink(sys.stderr, "debug")))
loop = asyncio.new_event_loop()
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd.pop("op")
    try:
        if op == "start":
            setup = dict(cmd["setup"])
            setup["virtual_dns"] = tuple(setup["virtual_dns"])
            setup["upstream_dns"] = tuple(setup["upstream_dns"])
            result = loop.run_until_complete(dev.start(FilterSetup(**setup)))
        elif op == "attach":
            result = loop.run_until_complete(dev.attach(cmd["ip"], cmd["ifname"]))
        elif op == "set_rules":
            result = dev.set_rules(client_rules(cmd))
        elif op == "detach":
            result = dev.detach(cmd["ip"])
        elif op == "stats":
            result = dev.stats()
        elif op == "close":
            result = dev.close()
        else:
            raise ValueError(op)
        reply = {"ok": True, "result": result}
    except Exception as exc:
        reply = {"ok": False, "error": str(exc), "type": type(exc).__name__}
    print(json.dumps(reply), flush=True)
    if op == "close":
        break
dev.close()
'''

AGENT = r'''
import json, os, socket, struct, sys, time
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
held = {}

def icmp_error(sock):
    try:
        _, anc, _, _ = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except OSError:
        return None
    for level, kind, data in anc:
        if level == socket.SOL_IP and kind == IP_RECVERR and len(data) >= 8:
            _, origin, itype, code = struct.unpack_from("IBBB", data)
            if origin == 2:  # SO_EE_ORIGIN_ICMP
                return itype, code
    return None

def failed(sock, exc):
    err = icmp_error(sock)
    if err == (3, 13):
        return {"result": "admin-prohibited"}
    if err:
        return {"result": "icmp %d/%d" % err}
    if isinstance(exc, TimeoutError):
        return {"result": "timeout"}
    if isinstance(exc, ConnectionRefusedError):
        return {"result": "refused"}
    return {"result": "error %s" % exc}

def sock(kind, cmd):
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
    s.settimeout(cmd.get("timeout", 2.0))
    if cmd.get("bind"):
        s.bind((cmd["bind"], 0))
    return s

def readline(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1000)
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data.decode().strip()

def tcp(cmd):
    s = sock(socket.SOCK_STREAM, cmd)
    try:
        s.connect((cmd["host"], cmd["port"]))
        first = readline(s)
    except OSError as exc:
        out = failed(s, exc)
        s.close()
        return out
    if cmd.get("hold"):
        held[cmd["hold"]] = s
    else:
        s.close()
    return {"result": "ok", "reply": first}

def send(cmd):
    s = held[cmd["hold"]]
    try:
        s.sendall(cmd["data"].encode() + b"\n")
        return {"result": "ok", "reply": readline(s)}
    except OSError as exc:
        return failed(s, exc)

def udp(cmd):
    s = sock(socket.SOCK_DGRAM, cmd)
    try:
        s.connect((cmd["host"], cmd["port"]))
        s.send(cmd.get("data", "hello").encode())
        return {"result": "ok", "reply": s.recv(2000).decode()}
    except OSError as exc:
        return failed(s, exc)
    finally:
        s.close()

def dns(cmd):
    qid = os.getpid() & 0xFFFF
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in "example.test".split(".")) + b"\0"
    query += struct.pack("!HH", 1, 1)
    tcp_ = cmd.get("tcp", False)
    s = sock(socket.SOCK_STREAM if tcp_ else socket.SOCK_DGRAM, cmd)
    try:
        s.connect((cmd["host"], 53))
        if tcp_:
            s.sendall(struct.pack("!H", len(query)) + query)
            n = struct.unpack("!H", s.recv(2))[0]
            reply = b""
            while len(reply) < n:
                reply += s.recv(n - len(reply))
        else:
            s.send(query)
            reply = s.recv(2000)
    except OSError as exc:
        return failed(s, exc)
    finally:
        s.close()
    rid, flags, _, an = struct.unpack_from("!HHHH", reply)
    if rid != qid or not flags & 0x8000 or an < 1:
        return {"result": "bad answer"}
    return {"result": "ok", "reply": socket.inet_ntoa(reply[-4:])}

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

SEQ = [0]
def icmp(cmd):
    SEQ[0] += 1
    # a fresh ICMP id per probe: conntrack tracks echo by id, so a reused one is "established"
    host, ident = cmd["host"], (os.getpid() * 64 + SEQ[0]) & 0xFFFF
    body = struct.pack("!BBHHH", 8, 0, 0, ident, SEQ[0]) + b"ingot-probe"
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.sendto(body, (host, 0))
        deadline = time.monotonic() + cmd.get("timeout", 2.0)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"result": "timeout"}
            s.settimeout(left)
            try:
                data, addr = s.recvfrom(2000)
            except TimeoutError:
                return {"result": "timeout"}
            ihl = (data[0] & 15) * 4
            kind, code = data[ihl], data[ihl + 1]
            if kind == 0 and addr[0] == host and data[ihl + 4:ihl + 6] == body[4:6]:
                return {"result": "ok", "reply": addr[0]}
            if kind == 3:
                inner = data[ihl + 8:]
                iihl = (inner[0] & 15) * 4
                if socket.inet_ntoa(inner[16:20]) == host and inner[iihl + 4:iihl + 6] == body[4:6]:
                    return {"result": "admin-prohibited" if code == 13 else "icmp 3/%d" % code}
    finally:
        s.close()

OPS = {"tcp": tcp, "send": send, "udp": udp, "dns": dns, "icmp": icmp}
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        out = OPS[cmd["op"]](cmd)
    except Exception as exc:
        out = {"result": "agent error %r" % exc}
    print(json.dumps(out), flush=True)
'''

SERVE = r'''
import socket, socketserver, struct, sys, threading
bind, logpath, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
log_lock = threading.Lock()
def log(text):
    with log_lock, open(logpath, "a") as f:
        f.write(text + "\n")

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        peer = self.client_address[0]
        log("tcp %d %s" % (self.server.server_address[1], peer))
        self.wfile.write(peer.encode() + b"\n")
        for line in self.rfile:
            self.wfile.write(line)

def dns_answer(query):
    qid, = struct.unpack_from("!H", query)
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12:end + 5]
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("10.200.0.53")
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer

class DnsTcp(socketserver.StreamRequestHandler):
    def handle(self):
        log("dns tcp %s" % self.client_address[0])
        n, = struct.unpack("!H", self.rfile.read(2))
        reply = dns_answer(self.rfile.read(n))
        self.wfile.write(struct.pack("!H", len(reply)) + reply)

def udp_loop(port, dns):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind, port))
    ready.append(port)
    while True:
        data, peer = s.recvfrom(2000)
        if dns:
            log("dns udp %s" % peer[0])
            s.sendto(dns_answer(data), peer)
        else:
            log("udp %d %s %s" % (port, peer[0], data.decode(errors="replace")))
            s.sendto(("%s %s" % (peer[0], data.decode(errors="replace"))).encode(), peer)

socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
ready, threads = [], []
for spec in specs:
    kind, _, port = spec.partition(":")
    if kind == "tcp":
        server = socketserver.ThreadingTCPServer((bind, int(port)), Echo)
        threads.append(threading.Thread(target=server.serve_forever, daemon=True))
    elif kind == "udp":
        threads.append(threading.Thread(target=udp_loop, args=(int(port), False), daemon=True))
    elif kind == "dns":
        server = socketserver.ThreadingTCPServer((bind, 53), DnsTcp)
        threads.append(threading.Thread(target=server.serve_forever, daemon=True))
        threads.append(threading.Thread(target=udp_loop, args=(53, True), daemon=True))
for t in threads:
    t.start()
import time
while len(ready) < sum(1 for s in specs if s.startswith(("udp", "dns"))):
    time.sleep(0.01)
print("ready", flush=True)
threading.Event().wait()
'''


# --------------------------------------------------------------------------
# plumbing


class LineProc:
    """A process in a namespace that answers one JSON line per JSON line."""

    def __init__(self, host: kit.Host, argv: list[str], stderr: Path) -> None:
        self.err_path = stderr
        self._err = open(stderr, "w")
        self.proc = host.popen(*argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=self._err, text=True, bufsize=1)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def readline(self, timeout: float = 15.0) -> str:
        if not self._sel.select(timeout):
            raise AssertionError(f"no answer after {timeout} s; stderr: {self.stderr()}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the process ended; stderr: {self.stderr()}")
        return line

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.readline())

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text()[-3000:]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        self._err.close()


class Firewall(LineProc):
    def do(self, op: str, **kw) -> object:
        reply = self.ask(op=op, **kw)
        assert reply["ok"], f"{op}: {reply}; stderr: {self.stderr()}"
        return reply["result"]

    def rules(self, client: str, *rules: dict, policy: str = "drop",
              error: str | None = None) -> None:
        self.do("set_rules", client=client, rules=list(rules), policy=policy, error=error)

    def stats(self) -> dict:
        return self.do("stats")


class Agent(LineProc):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        assert json.loads(self.readline())["ready"]

    def __call__(self, op: str, **kw) -> dict:
        return self.ask(op=op, **kw)

    def result(self, op: str, **kw) -> str:
        return self(op, **kw)["result"]


def rule(action: str, number: int, **kw) -> dict:
    return {"action": action, "number": number, **kw}


C1_RULES = (
    rule("accept", 0, dst=[f"{UP}/32"], proto="tcp", dstports=[8080, 8080]),
    rule("accept", 1, dst=["10.200.0.0/24"], proto="udp", dstports=[9000, 9000]),
    rule("accept", 2, proto="icmp", icmptype=8),
    rule("accept", 3, dns=True),
    rule("accept", 4, dst=[f"{C2}/32"], proto="tcp", dstports=[7000, 7000]),
    rule("drop", 5, proto="tcp", dstports=[8081, 8081]),
)
C2_RULES = (rule("accept", 0, proto="tcp"), rule("accept", 1, proto="icmp"))


class World:
    def __init__(self, lab: kit.Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.c1, self.c2, self.fw, self.up = (lab.host() for _ in range(4))
        self._veth(self.c1, "eth0", self.fw, "vif1.0")
        self._veth(self.c2, "eth0", self.fw, "vif2.0")
        self._veth(self.fw, "eth0", self.up, "eth0")
        for host, ip in ((self.c1, C1), (self.c2, C2)):
            host.add_address("eth0", f"{ip}/32")  # a Qubes client: /32 and a gateway route
            host.add_route(f"{GW}/32", dev="eth0")
            host.add_route("10.137.0.0/16", via=GW)
            host.add_route("10.200.0.0/16", via=GW)
            host.ip("route", "add", "10.139.1.0/24", "via", GW)  # the virtual DNS range
        self.fw.add_address("eth0", f"{FW_UP}/24")
        self.up.add_address("eth0", f"{UP}/24")
        self.up.add_route("10.137.0.0/16", via=FW_UP)  # so that only the firewall says no
        for name in ("serve", "agent", "runner"):
            (tmp / f"{name}.py").write_text({"serve": SERVE, "agent": AGENT,
                                             "runner": RUNNER}[name])
        self.up_log = tmp / "upstream.log"
        self._serve(self.up, UP, self.up_log, "tcp:8080", "tcp:8081", "udp:9000",
                    "udp:9001", "dns")
        self._serve(self.c1, C1, tmp / "c1.log", "tcp:7000")
        self._serve(self.c2, C2, tmp / "c2.log", "tcp:7000")
        self.a1, self.a2, self.aup = (
            Agent(h, [sys.executable, str(tmp / "agent.py")], tmp / f"agent-{n}.err")
            for h, n in ((self.c1, "c1"), (self.c2, "c2"), (self.up, "up")))
        self.fwp = Firewall(self.fw, [sys.executable, str(tmp / "runner.py"), "eth0"],
                            tmp / "runner.err")
        self.fwp.do("start", setup=SETUP)
        self.fwp.do("attach", ip=C1, ifname="vif1.0")
        self.fwp.do("attach", ip=C2, ifname="vif2.0")

    @staticmethod
    def _veth(a: kit.Host, a_if: str, b: kit.Host, b_if: str) -> None:
        subprocess.run(["ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer",
                        "name", b_if, "netns", b.name], check=True, capture_output=True)
        a.up(a_if)
        b.up(b_if)

    def _serve(self, host: kit.Host, bind: str, log: Path, *specs: str) -> None:
        proc = host.popen(sys.executable, str(self.tmp / "serve.py"), bind, str(log), *specs,
                          stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"

    def baseline(self) -> None:
        self.fwp.rules(C1, *C1_RULES)
        self.fwp.rules(C2, *C2_RULES)

    def upstream_saw(self) -> list[str]:
        return self.up_log.read_text().splitlines() if self.up_log.exists() else []

    def close(self) -> None:
        if self.fwp.proc.poll() is None:
            try:
                self.fwp.ask(op="close")
            except (AssertionError, OSError, ValueError):
                pass
        for p in (self.fwp, self.a1, self.a2, self.aup):
            p.close()


def _unavailable() -> str | None:
    return kit.unavailable() or (None if shutil.which("nft") else
                                 "nft is not installed (Debian package nftables)")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    lab = kit.Lab()
    try:
        w = World(lab, tmp_path_factory.mktemp("fw-nft"))
        try:
            yield w
        finally:
            w.close()
    finally:
        lab.close()


def delta(before: dict, after: dict, name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


# --------------------------------------------------------------------------
# the tests (in this order: the last one detaches and closes)


def test_allowed_traffic_passes_masqueraded_and_denied_traffic_is_refused(world):
    world.baseline()
    before = world.fwp.stats()
    a1, a2 = world.a1, world.a2
    assert a1("tcp", host=UP, port=8080) == {"result": "ok", "reply": FW_UP}  # NATed
    assert a1("udp", host=UP, port=9000, data="u1") == {"result": "ok", "reply": f"{FW_UP} u1"}
    assert a1("icmp", host=UP) == {"result": "ok", "reply": UP}
    assert a1.result("tcp", host=UP, port=8081) == "admin-prohibited"   # rule 0005: drop
    assert a1.result("udp", host=UP, port=9001) == "admin-prohibited"   # policy drop
    assert a2("tcp", host=UP, port=8081) == {"result": "ok", "reply": FW_UP}
    assert a2.result("icmp", host=UP) == "ok"
    assert a2.result("udp", host=UP, port=9000) == "admin-prohibited"
    saw = world.upstream_saw()
    assert "tcp 8080 10.200.0.2" in saw and f"udp 9000 {FW_UP} u1" in saw
    assert not [line for line in saw if "10.137." in line]  # no client address upstream
    after = world.fwp.stats()
    assert delta(before, after, "drop.rule") >= 1 and delta(before, after, "drop.policy") >= 2
    assert delta(before, after, "nat.masqueraded") >= 4 and after["conntrack.entries"] >= 1
    assert after["clients"] == 2


def test_dns_to_the_virtual_address_is_redirected_as_specialtarget_dns_allows(world):
    world.baseline()
    before = world.fwp.stats()
    assert world.a1("dns", host=VDNS) == {"result": "ok", "reply": "10.200.0.53"}
    assert world.a1("dns", host=VDNS, tcp=True) == {"result": "ok", "reply": "10.200.0.53"}
    assert {"dns udp 10.200.0.2", "dns tcp 10.200.0.2"} <= set(world.upstream_saw())
    # client2: the upstream resolver's own address allowed, but not specialtarget=dns:
    # rules judge the address the client used (10.139.1.1), not the redirected one
    world.fwp.rules(C2, rule("accept", 0, dst=[f"{UP}/32"]))
    assert world.a2.result("dns", host=VDNS) == "admin-prohibited"
    assert world.a2.result("udp", host=UP, port=9000) == "ok"
    world.fwp.rules(C2, rule("accept", 0, dns=True))
    assert world.a2("dns", host=VDNS) == {"result": "ok", "reply": "10.200.0.53"}
    assert world.a2.result("udp", host=UP, port=9000) == "admin-prohibited"
    assert delta(before, world.fwp.stats(), "dns.redirected") >= 4


def test_a_spoofed_source_is_dropped(world):
    world.fwp.rules(C1, policy="accept")  # everything allowed: only the spoofing can stop it
    before = world.fwp.stats()
    for n, fake in enumerate(("10.137.0.99", C2)):
        world.c1.add_address("eth0", f"{fake}/32")
        try:
            assert world.a1.result("udp", host=UP, port=9000, bind=fake, data=f"spoof-{n}",
                                   timeout=DENY_WAIT) == "timeout"
        finally:
            world.c1.ip("addr", "del", f"{fake}/32", "dev", "eth0")
    assert world.a1("udp", host=UP, port=9000, data="genuine")["reply"] == f"{FW_UP} genuine"
    assert not [line for line in world.upstream_saw() if "spoof-" in line]
    # a client's address arriving from upstream (Qubes' "downstream" set)
    world.up.add_address("eth0", f"{C1}/32")
    try:
        assert world.aup.result("tcp", host=C2, port=7000, bind=C1,
                                timeout=DENY_WAIT) == "timeout"
    finally:
        world.up.ip("addr", "del", f"{C1}/32", "dev", "eth0")
    assert delta(before, world.fwp.stats(), "drop.spoofed") >= 3


def test_a_rule_change_applies_at_once_and_established_connections_survive(world):
    world.baseline()
    a1, a2 = world.a1, world.a2
    assert a1("tcp", host=UP, port=8080, hold="kept")["reply"] == FW_UP
    assert a2("tcp", host=UP, port=8080, hold="other")["reply"] == FW_UP
    assert a1("send", hold="kept", data="one") == {"result": "ok", "reply": "one"}
    t0 = time.monotonic()
    world.fwp.rules(C1, rule("drop", 0, dst=[f"{UP}/32"], proto="tcp", dstports=[8080, 8080]),
                    *C1_RULES[1:])
    refused = a1.result("tcp", host=UP, port=8080)  # the first new connection after it
    elapsed = time.monotonic() - t0
    assert refused == "admin-prohibited" and elapsed < 1.0, (refused, elapsed)
    assert a1("send", hold="kept", data="two") == {"result": "ok", "reply": "two"}
    assert a2("send", hold="other", data="three") == {"result": "ok", "reply": "three"}
    assert a1.result("udp", host=UP, port=9000) == "ok"  # the other rules still hold
    world.baseline()
    assert a1.result("tcp", host=UP, port=8080) == "ok"


def test_a_client_whose_rules_did_not_parse_is_denied_everything_the_other_keeps_working(
        world):
    world.baseline()
    before = world.fwp.stats()
    world.fwp.rules(C2, error="0001: unknown key 'frobnicate'")
    for op, kw in (("tcp", {"port": 8080}), ("udp", {"port": 9000}), ("icmp", {})):
        assert world.a2.result(op, host=UP, **kw) == "admin-prohibited", op
    assert world.a2.result("dns", host=VDNS) == "admin-prohibited"
    assert world.a1.result("tcp", host=UP, port=8080) == "ok"
    assert world.a1.result("dns", host=VDNS) == "ok"
    assert delta(before, world.fwp.stats(), "drop.rules error") >= 4


def test_client_to_client_follows_the_senders_rules_without_nat(world):
    world.baseline()
    world.fwp.rules(C2, error="deny-all client2")  # its replies still pass: established
    assert world.a1("tcp", host=C2, port=7000) == {"result": "ok", "reply": C1}  # no NAT
    assert world.a1.result("tcp", host=C2, port=7001) == "admin-prohibited"
    assert world.a2.result("tcp", host=C1, port=7000) == "admin-prohibited"
    world.fwp.rules(C2, *C2_RULES)
    assert world.a2("tcp", host=C1, port=7000) == {"result": "ok", "reply": C2}
    world.fwp.rules(C1, *C1_RULES[:4])  # without rule 0004: client2 no longer allowed
    assert world.a1.result("tcp", host=C2, port=7000) == "admin-prohibited"


def test_the_firewall_itself_and_upstream_initiated_traffic_are_refused(world):
    world.fwp.rules(C1, policy="accept")  # a client's rules do not open the firewall itself
    before = world.fwp.stats()
    for host in (GW, FW_UP):  # as Qubes' input chain: host-prohibited
        assert world.a1.result("tcp", host=host, port=22) == "icmp 3/10"
    assert world.a1.result("udp", host=GW, port=9000) == "icmp 3/10"
    assert world.a1("icmp", host=GW) == {"result": "ok", "reply": GW}  # the gateway answers ping
    assert world.aup.result("tcp", host=C1, port=7000, timeout=DENY_WAIT) == "timeout"
    assert world.a1.result("tcp", host=UP, port=8080) == "ok"
    after = world.fwp.stats()
    assert delta(before, after, "drop.to firewall") >= 3 and delta(before, after, "local.echo") >= 1
    assert delta(before, after, "drop.no connection") >= 1


def test_detach_removes_the_client_and_close_undoes_everything(world):
    world.baseline()
    assert world.a2.result("tcp", host=UP, port=8080) == "ok"
    world.fwp.do("detach", ip=C2)
    assert world.fw.ip("route", "show", f"{C2}/32") == ""
    assert GW not in world.fw.ip("addr", "show", "dev", "vif2.0")
    table = world.fw.run("nft", "list", "table", "inet", "ingot-fw").stdout
    assert "client_10_137_0_11" not in table and '"vif2.0"' not in table
    assert world.a2.result("tcp", host=UP, port=8080, timeout=DENY_WAIT) == "timeout"
    assert world.a1.result("tcp", host=UP, port=8080) == "ok"
    stats = world.fwp.stats()
    assert stats["clients"] == 1 and stats["forwarded"] > 0 and stats["drop.unknown client"] >= 1
    world.fwp.do("close")
    assert "ingot-fw" not in world.fw.run("nft", "list", "tables").stdout
    assert world.fw.ip("route", "show", f"{C1}/32") == ""
    assert world.fw.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    assert world.a1.result("tcp", host=UP, port=8080, timeout=DENY_WAIT) == "timeout"


def test_start_reports_a_refusal_in_one_line(netns, tmp_path):
    if _unavailable():
        pytest.skip(_unavailable())
    host = netns()
    host.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    fake = tmp_path / "nft"
    fake.write_text("#!/bin/sh\ncat >/dev/null\necho '/dev/stdin:9:5-20: Error: Could not "
                    "process rule: No such file or directory' >&2\necho '    chain x' >&2\n"
                    "echo '    ^^^^^^^' >&2\nexit 1\n")
    fake.chmod(0o755)
    script = f"""
import asyncio
from ingot.plugins.firewall.nft_backend import NftFilter
from ingot.signatures import DeviceError, FilterSetup
setup = FilterSetup(uplink_ip="{FW_UP}", uplink_gateway="{UP}", client_gateway="{GW}")
for kw in ({{"nft": "{fake}"}}, {{"uplink_ifname": "nosuch0"}}):
    dev = NftFilter(**kw)
    try:
        asyncio.run(dev.start(setup))
    except DeviceError as exc:
        print(str(exc))
    dev.close()
print(open("/proc/sys/net/ipv4/ip_forward").read().strip())
"""
    out = host.run(sys.executable, "-c", script).stdout.splitlines()
    assert out == [
        "nft refused the ruleset of table inet ingot-fw: /dev/stdin:9:5-20: Error: Could not "
        "process rule: No such file or directory",
        "packet_filter/nftables: uplink interface 'nosuch0' does not exist (set it with "
        "--packet-filter-uplink-ifname)",
        "0",  # forwarding put back after the refusal
    ]


IPV6_STEPS = r'''
import asyncio, json, subprocess, sys
from ingot.plugins.firewall.nft_backend import NftFilter
from ingot.signatures import ClientRules, FilterSetup, Unsupported

def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout

def read(path):
    with open(path) as f:
        return f.read().strip()

async def main():
    out = {}
    plain = NftFilter(uplink_ifname="eth1", table="v4only")
    await plain.start(FilterSetup("10.200.0.2", "10.200.0.1", "10.137.0.1"))
    try:
        await plain.attach("fd09:24ef:4179::a89:b", "eth0")
    except Unsupported as exc:
        out["refused"] = str(exc)
    plain.close()
    setup = FilterSetup("10.200.0.2", "10.200.0.1", "10.137.0.1", uplink_ip6="fd00:200::2",
                        uplink_gateway6="fd00:200::1", client_gateway6="fd09:24ef:4179::a89:1")
    dev = NftFilter(uplink_ifname="eth1")
    await dev.start(setup)
    out["forwarding6"] = read("/proc/sys/net/ipv6/conf/all/forwarding")
    await dev.attach("10.137.0.11", "eth0")
    await dev.attach("fd09:24ef:4179::a89:b", "eth0")  # the same VM, the same interface
    dev.set_rules(ClientRules("fd09:24ef:4179::a89:b", policy="accept"))
    out["addr"] = sh("ip", "-6", "addr", "show", "dev", "eth0")
    out["route"] = sh("ip", "-6", "route", "show", "dev", "eth0")
    out["table"] = sh("nft", "list", "table", "inet", "ingot-fw")
    try:
        await dev.attach("fd09:24ef:4179::a89:c", "eth0")
    except Exception as exc:
        out["second"] = str(exc)
    dev.detach("fd09:24ef:4179::a89:b")
    out["route_after"] = sh("ip", "-6", "route", "show", "dev", "eth0")
    out["addr_after"] = sh("ip", "-6", "addr", "show", "dev", "eth0")
    dev.close()
    out["forwarding6_after"] = read("/proc/sys/net/ipv6/conf/all/forwarding")
    print(json.dumps(out))

asyncio.run(main())
'''


def test_ipv6_clients_share_their_vms_interface_and_are_undone(tmp_path):
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    with kit.Lab(ipv6=True) as lab:
        fw, client, up = lab.host(), lab.host(), lab.host()
        fw.link(client, None, None)
        fw.link(up, None, None)
        fw.sysctl("net.ipv6.conf.all.forwarding", 0)
        run = fw.run(sys.executable, "-c", IPV6_STEPS, timeout=60)
        out = json.loads(run.stdout.strip().splitlines()[-1])  # after the log lines
    assert "the setup has no IPv6 addresses" in out["refused"]
    assert out["forwarding6"] == "1" and out["forwarding6_after"] == "0"
    assert "inet6 fd09:24ef:4179::a89:1/128" in out["addr"] and "tentative" not in out["addr"]
    assert "fd09:24ef:4179::a89:b" in out["route"]
    assert "chain client_fd09_24ef_4179_0000_0000_0000_0a89_000b" in out["table"]
    assert "already serves client fd09:24ef:4179::a89:b" in out["second"]
    assert "fd09:24ef:4179::a89:b" not in out["route_after"]
    assert "fd09:24ef:4179::a89:1" not in out["addr_after"]
