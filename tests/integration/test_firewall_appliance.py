"""The firewall appliance as a built image, end to end in network namespaces.

Two client VMs (``client1`` 10.137.0.11, ``client2`` 10.137.0.12), the firewall
(``fw``) and an upstream network (``upstream`` 10.200.0.1, which also runs the
DNS appliance as the upstream resolver), wired by veth pairs. The firewall
image reads its addresses, clients and rules from a ``file`` QubesDB written
exactly as dom0 writes them (Qubes' own paths and rule syntax), and runs with
either packet_filter backend. Checked against the kernels of the other
namespaces: allowed TCP/UDP/ICMP pass and are masqueraded, denied traffic gets
ICMP administratively prohibited, ``specialtarget=dns`` and ``dsthost`` work,
a spoofed source is dropped, a rule change applies within a second while an
established connection goes on, and a malformed rule set turns that client
deny-all while the other keeps working.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli
from tests.integration.probe_snippets import ERROR_QUEUE

pytestmark = pytest.mark.netns

ZONE = """$ORIGIN example.test.
$TTL 60
@ IN SOA ns hostmaster {serial} 60 30 600 60
  IN NS ns
ns IN A 10.200.0.1
web 1 IN A {web}
"""

# a TCP server on 80 and 8080 that tells the client its address; a UDP echo on 5000/5001
UPSTREAM = r"""
import socket, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, peer = s.accept()
        def serve(c=c, peer=peer):
            with c:
                c.sendall(f"{peer[0]}\n".encode())
                while True:
                    data = c.recv(4096)
                    if not data:
                        return
                    c.sendall(data)
        threading.Thread(target=serve, daemon=True).start()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(f"{peer[0]} ".encode() + data, peer)
for p in (80, 8080):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
for p in (5000, 5001):
    threading.Thread(target=udp, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# one probe per line on stdin; answers one line each: ok <what> / the errno name
CLIENT = r"""
import errno, socket, struct, sys
def err(exc):
    return errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else "timeout"
def tcp(host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=2) as c:
            return "ok " + c.recv(100).decode().strip()
    except OSError as exc:
        return err(exc)
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    try:
        s.connect((host, int(port))); s.send(b"x")
        return "ok " + s.recv(100).decode().split()[0]
    except OSError as exc:
        return err(exc)
def dns(server, name):
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    try:
        s.connect((server, 53)); s.send(q)
        r = s.recv(512)
        return "ok " + socket.inet_ntoa(r[-4:]) if r[:2] == b"\x12\x34" else "bad"
    except OSError as exc:
        return err(exc)
held = {}
def hold(host, port):
    c = socket.create_connection((host, int(port)), timeout=2)
    c.recv(100)
    held[(host, port)] = c
    return "ok held"
def echo(host, port):
    c = held[(host, port)]
    c.settimeout(2)
    try:
        c.sendall(b"again"); return "ok " + c.recv(100).decode()
    except OSError as exc:
        return err(exc)
for line in sys.stdin:
    what, *args = line.split()
    print(globals()[what](*args), flush=True)
"""


@dataclass
class Lab:
    backend: str
    probes: list
    db: Path
    client1: object
    upstream: object
    stop: object
    zones: Path
    clients: dict


class Probe:
    """A long-lived client process inside a namespace, driven line by line."""

    def __init__(self, host) -> None:
        self.proc = host.popen(sys.executable, "-u", "-c", CLIENT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def __call__(self, *words: object) -> str:
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def qubesdb(rules1: dict[str, str], rules2: dict[str, str], generation: int,
            clients: dict[str, str] | None = None) -> str:
    """The file QubesDB: the firewall's addresses, two clients, their rules, and the
    clients attached through ``/ingot/clients/<ip>``."""
    entries = {
        "/qubes-ip": "10.200.0.2", "/qubes-gateway": "10.200.0.1",
        "/qubes-netmask": "255.255.255.0", "/qubes-netvm-gateway": "10.137.0.1",
        "/qubes-netvm-primary-dns": "10.139.1.1", "/qubes-netvm-secondary-dns": "10.139.1.2",
        "/qubes-primary-dns": "10.200.0.1", "/qubes-secondary-dns": "10.200.0.1",
        "/connected-ips": "10.137.0.11 10.137.0.12",
    }
    for ip, ifname in (clients or {}).items():
        entries[f"/ingot/clients/{ip}"] = ifname
    for ip, rules in (("10.137.0.11", rules1), ("10.137.0.12", rules2)):
        # the reload trigger: dom0's empty write; a file QubesDB sees a changed value
        entries[f"/qubes-firewall/{ip}"] = str(generation)
        for k, v in rules.items():
            entries[f"/qubes-firewall/{ip}/{k}"] = v
    return json.dumps(entries, indent=1)


RULES1 = {"policy": "drop",
          "0000": "action=accept proto=icmp",
          "0001": "action=accept proto=tcp dstports=80-80",
          "0002": "action=accept specialtarget=dns",
          "0003": "action=accept dsthost=web.example.test proto=tcp dstports=8080-8080",
          "0004": "action=accept dst4=10.200.0.1/32 proto=udp dstports=5000-5000"}
RULES2 = {"policy": "accept",
          "0000": "action=drop proto=tcp dstports=80-80"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    work = tmp_path_factory.mktemp("fw-images")
    cli = Cli(work)
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct")
    cli("build", ROOT / "appliances" / "dns")
    built = {"dns": cli.image("dns-unix")}
    for backend in ("python", "nftables"):
        extra = ["--uplink", "afpacket"] if backend == "python" else []
        cli("configure", ROOT / "appliances" / "firewall", "--qubesdb", "file",
            "--filter", backend, *extra)
        cli("build", ROOT / "appliances" / "firewall")
        built[backend] = work / "images" / f"firewall-{backend}.pyz"
        cli.image("firewall-unix").rename(built[backend])
    return built


def _wait_line(proc, text: str, lines: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return
    proc.kill()
    raise AssertionError(f"no {text!r}:\n" + "".join(lines))


def _stopper(proc, lines: list[str], probes: list) -> object:
    """``stop()``: end the probes, SIGTERM the firewall; its whole output (exit status 0)."""
    def stop() -> str:
        for p in probes:
            p.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, "".join(lines) + out
        return "".join(lines) + out
    return stop


@pytest.fixture(params=["python", "nftables"])
def lab(request, netns, images, tmp_path):
    backend = request.param
    client1, client2, fw, upstream = netns(), netns(), netns(), netns()
    c1_if, fw_c1 = client1.link(fw, "10.137.0.11/32", None)
    c2_if, fw_c2 = client2.link(fw, "10.137.0.12/32", None)
    # the kernel of fw keeps its own address on the uplink for the firewall's own
    # traffic (dsthost lookups); the python data plane answers for 10.200.0.2
    fw_up, up_if = fw.link(upstream, "10.200.0.3/24" if backend == "python" else "10.200.0.2/24",
                           "10.200.0.1/24")
    upstream.add_address(up_if, "10.200.0.5/24")  # where web.example.test moves later
    # the kernel rate-limits the ICMP errors it sends (nft's reject too: about six in a
    # burst per destination); the probes below ask faster than any real client would
    fw.sysctl("net.ipv4.icmp_ratelimit", 0)
    for host, dev in ((client1, c1_if), (client2, c2_if)):
        host.add_route("10.137.0.1/32", dev=dev)
        host.add_route("10.200.0.0/16", via="10.137.0.1", dev=dev)
        host.add_route("10.139.1.0/24", via="10.137.0.1", dev=dev)  # Qubes' virtual DNS
        host.add_route("10.137.0.0/16", via="10.137.0.1", dev=dev)  # the other clients
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "example.test.zone").write_text(ZONE.format(serial=1, web="10.200.0.1"))
    dns = upstream.popen(sys.executable, images["dns"], "--host", "10.200.0.1", "--port", "53",
                         "--zones-path", zones, "--reload", "0.3", stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    _wait_line(dns, "msg=listening", [])
    server = upstream.popen(sys.executable, "-c", UPSTREAM, stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    db = tmp_path / "qubesdb.json"
    clients = {"10.137.0.12": fw_c2}  # client2 through QubesDB, client1 by the key
    db.write_text(qubesdb(RULES1, RULES2, 1, clients))
    args = [sys.executable, images[backend], "--qubesdb-path", db, "--qubesdb-poll", "0.1",
            "--clients", f"10.137.0.11={fw_c1}", "--dsthost-min-ttl", "1"]
    args += (["--uplink-ifname", fw_up] if backend == "python"
             else ["--filter-uplink-ifname", fw_up])
    proc = fw.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    _wait_line(proc, "msg=ready", lines)
    probes = [Probe(client1), Probe(client2)]
    stop = _stopper(proc, lines, probes)
    yield Lab(backend, probes, db, client1, upstream, stop, zones, clients)
    if proc.poll() is None:
        proc.kill()
    for p in probes:
        if p.proc.poll() is None:
            p.proc.kill()
    for p in (dns, server):
        p.kill()
        p.wait(10)


def _until(probe, expected: str, timeout: float = 1.0) -> float:
    """Seconds until ``probe()`` answers ``expected`` (fails after ``timeout``)."""
    start = time.monotonic()
    seen = []
    while (got := probe()) != expected:
        seen.append((round(time.monotonic() - start, 2), got))
        assert time.monotonic() - start < timeout, f"not {expected!r} in time: {seen}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_rules_from_qubesdb_are_enforced_end_to_end(lab):
    backend, (c1, c2), db, client1, upstream, stop = (lab.backend, lab.probes, lab.db,
                                                       lab.client1, lab.upstream, lab.stop)
    assert client1.ping("10.200.0.1", count=2)                 # icmp accepted
    assert c1("tcp", "10.200.0.1", 80) == "ok 10.200.0.2"       # tcp 80, masqueraded
    assert c1("tcp", "10.200.0.1", 22) == "EHOSTUNREACH"         # policy drop: admin-prohibited
    assert c1("udp", "10.200.0.1", 5000) == "ok 10.200.0.2"     # dst4 + udp port
    assert c1("udp", "10.200.0.1", 5001) == "EHOSTUNREACH"
    assert c1("dns", "10.139.1.1", "web.example.test") == "ok 10.200.0.1"  # specialtarget=dns
    assert c1("tcp", "10.200.0.1", 8080) == "ok 10.200.0.2"     # dsthost resolved
    # client2: accept by policy, but not tcp 80; its DNS too (policy accept)
    assert c2("tcp", "10.200.0.1", 80) == "EHOSTUNREACH"
    assert c2("tcp", "10.200.0.1", 8080) == "ok 10.200.0.2"
    assert c2("dns", "10.139.1.2", "web.example.test") == "ok 10.200.0.1"
    # client1 to client2 follows client1's rules (tcp 80 only), no NAT
    assert c1("tcp", "10.137.0.12", 8080) == "EHOSTUNREACH"
    out = stop()
    assert "level=error" not in out, out


def test_spoofed_source_is_dropped(lab):
    backend, (c1, c2), db, client1, upstream, stop = (lab.backend, lab.probes, lab.db,
                                                       lab.client1, lab.upstream, lab.stop)
    spoof = ("import socket, struct\n"
             "icmp = struct.pack('!BBHHH', 8, 0, 0, 99, 1)\n"
             "s = sum(struct.unpack('!4H', icmp)); s = (s & 0xFFFF) + (s >> 16)\n"
             "icmp = icmp[:2] + struct.pack('!H', ~s & 0xFFFF) + icmp[4:]\n"
             "ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 28, 1, 0, 64, 1, 0,\n"
             "    socket.inet_aton('10.137.0.12'), socket.inet_aton('10.200.0.1'))\n"
             "r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
             "for _ in range(5): r.sendto(ip + icmp, ('10.200.0.1', 0))\n")

    def echos() -> int:
        lines = [line.split() for line in upstream.run("cat", "/proc/net/snmp").stdout
                 .splitlines() if line.startswith("Icmp:")]
        return int(lines[1][lines[0].index("InEchos")])
    before = echos()
    client1.run(sys.executable, "-c", spoof, timeout=10)
    time.sleep(0.5)
    assert echos() == before
    out = stop()
    assert "spoofed" in out or backend == "nftables", out


def test_rule_change_applies_within_a_second_and_keeps_connections(lab):
    backend, (c1, c2), db, client1, upstream, stop = (lab.backend, lab.probes, lab.db,
                                                       lab.client1, lab.upstream, lab.stop)
    assert c1("hold", "10.200.0.1", 80) == "ok held"
    assert c1("udp", "10.200.0.1", 5001) == "EHOSTUNREACH"
    # dom0 rewrites client1's rules: tcp 80 no longer, udp 5001 allowed
    rules = {"policy": "drop", "0000": "action=accept proto=udp dstports=5000-5001"}
    db.write_text(qubesdb(rules, RULES2, 2, lab.clients))
    _until(lambda: c1("udp", "10.200.0.1", 5001), "ok 10.200.0.2", timeout=1.5)
    assert c1("tcp", "10.200.0.1", 80) == "EHOSTUNREACH"       # new connections follow
    assert c1("echo", "10.200.0.1", 80) == "ok again"           # the established one goes on
    # a rule set that does not parse: client1 denied everything, client2 unaffected
    broken = {"policy": "accept", "0000": "action=accept proto=tcp dstports=80-70"}
    db.write_text(qubesdb(broken, RULES2, 3, lab.clients))
    _until(lambda: c1("udp", "10.200.0.1", 5001), "EHOSTUNREACH", timeout=1.5)
    assert c1("tcp", "10.200.0.1", 8080) == "EHOSTUNREACH"
    assert c2("tcp", "10.200.0.1", 8080) == "ok 10.200.0.2"
    out = stop()
    assert 'msg="rules rejected; client denied everything" client=10.137.0.11' in out, out


def test_clients_attach_and_detach_while_traffic_flows(lab):
    c1, c2 = lab.probes
    assert c1("hold", "10.200.0.1", 80) == "ok held"
    assert c2("tcp", "10.200.0.1", 8080) == "ok 10.200.0.2"
    # dom0 disconnects client2: its entry goes; client1's connection is not disturbed
    lab.db.write_text(qubesdb(RULES1, RULES2, 1, {}))
    _until(lambda: "ok" if c2("tcp", "10.200.0.1", 8080).startswith("ok") else "cut off",
           "cut off", timeout=3)
    assert c1("echo", "10.200.0.1", 80) == "ok again"
    # and connects it again, behind the same interface
    lab.db.write_text(qubesdb(RULES1, RULES2, 1, lab.clients))
    _until(lambda: c2("tcp", "10.200.0.1", 8080), "ok 10.200.0.2", timeout=3)
    assert c1("echo", "10.200.0.1", 80) == "ok again"
    out = lab.stop()
    assert 'src=firewall msg="client detached" client=10.137.0.12' in out
    assert out.count('src=firewall msg="client attached" client=10.137.0.12') == 2


def test_dsthost_is_resolved_again_when_its_ttl_runs_out(lab):
    c1, _ = lab.probes
    assert c1("tcp", "10.200.0.1", 8080) == "ok 10.200.0.2"
    assert c1("tcp", "10.200.0.5", 8080) == "EHOSTUNREACH"
    # web.example.test moves (TTL 1 s); the rule follows it
    (lab.zones / "example.test.zone").write_text(ZONE.format(serial=2, web="10.200.0.5"))
    _until(lambda: c1("tcp", "10.200.0.5", 8080), "ok 10.200.0.2", timeout=6)
    assert c1("tcp", "10.200.0.1", 8080) == "EHOSTUNREACH"
    out = lab.stop()
    assert 'msg="dsthost resolved" name=web.example.test addresses=10.200.0.5' in out, out


# --------------------------------------------------------------------------
# IPv6 end to end: one client VM with a static IPv6 address (as Qubes' setup-ip gives
# it from /qubes-ip6 and /qubes-gateway6: a /128 and an on-link route to the gateway),
# the firewall with /qubes-ip6, /qubes-gateway6 and /qubes-netvm-gateway6, and an
# upstream on fd00:200::/64. Neighbour discovery on both sides is the firewall's
# (python backend) or the kernel's (nftables backend).

C6, C6_OTHER, GW6 = "fd09:24ef:4179::a89:b", "fd09:24ef:4179::a89:c", "fd09:24ef:4179::a89:1"
FW6, UP6, UP6_B = "fd00:200::2", "fd00:200::1", "fd00:200::5"

RULES6 = {"policy": "drop",
          "0000": f"action=drop dst6={UP6_B}/128",
          "0001": "action=accept proto=icmp",
          "0002": "action=accept proto=tcp dstports=80-80",
          "0003": "action=accept proto=tcp dstports=5201-5201",
          "0004": f"action=accept dst6={UP6}/128 proto=udp dstports=5000-5000"}

# TCP 80 and UDP 5000 on every address, answering with the source seen; a sniffer
# logging the source of each ICMPv6 echo request
UPSTREAM6 = r"""
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def tcp():
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", 80)); s.listen(16)
    while True:
        c, peer = s.accept()
        with c:
            c.sendall(f"{peer[0]}\n".encode())
def udp(addr):  # one socket per address: a reply leaves from the address asked
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind((addr, 5000))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(peer[0].encode(), peer)
def sniff():
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    while True:
        data, peer = s.recvfrom(4096)
        if data[:1] == b"\x80":
            log.write(peer[0] + "\n")
for fn, args in [(tcp, ()), (sniff, ())] + [(udp, (a,)) for a in sys.argv[2:]]:
    threading.Thread(target=fn, args=args, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# probes over IPv6, one per line: ok <source the far end saw> / errno name [icmp6 T/C]
CLIENT6 = ERROR_QUEUE + r"""
import errno, socket, struct, sys
def failed(s, exc):
    name = errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else "timeout"
    return name + icmp_error(s)
def tcp(host, port):
    s = socket.socket(socket.AF_INET6); s.settimeout(2)
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    try:
        s.connect((host, int(port)))
        return "ok " + s.recv(100).decode().strip()
    except OSError as exc:
        return failed(s, exc)
    finally:
        s.close()
def udp(host, port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    try:
        s.connect((host, int(port))); s.send(b"x")
        return "ok " + s.recv(100).decode()
    except OSError as exc:
        return failed(s, exc)
    finally:
        s.close()
for line in sys.stdin:
    what, *args = line.split()
    print(globals()[what](*args), flush=True)
"""

# a frame sent straight onto the client's link: an echo request from a source that is
# not the client's (argv: interface, the firewall's MAC there, source, destination)
SPOOF6 = r"""
import socket, struct, sys
ifname, mac, src, dst = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), \
    socket.inet_pton(socket.AF_INET6, sys.argv[3]), socket.inet_pton(socket.AF_INET6, sys.argv[4])
body = struct.pack("!BBHHH", 128, 0, 0, 77, 1) + b"spoofed!"
pseudo = src + dst + struct.pack("!IxxxB", len(body), 58)
data = pseudo + body
total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
while total >> 16:
    total = (total & 0xFFFF) + (total >> 16)
body = body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]
ip = struct.pack("!IHBB", 6 << 28, len(body), 58, 64) + src + dst + body
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
own = s.getsockname()[4]
for _ in range(5):
    s.send(mac + own + b"\x86\xdd" + ip)
"""


def qubesdb6(c1_if: str) -> str:
    """The file QubesDB with IPv6 as dom0 writes it (qubes/vm/qubesvm.py,
    create_qdb_entries; the rules per address family, qubes/vm/mix/net.py)."""
    entries = json.loads(qubesdb({"policy": "drop"}, {"policy": "drop"}, 1, {}))
    entries.update({"/qubes-ip6": FW6, "/qubes-gateway6": UP6, "/qubes-netvm-gateway6": GW6,
                    "/connected-ips6": C6, f"/ingot/clients/{C6}": c1_if,
                    f"/qubes-firewall/{C6}": "1"})
    for k, v in RULES6.items():
        entries[f"/qubes-firewall/{C6}/{k}"] = v
    return json.dumps(entries, indent=1)


@dataclass
class Lab6:
    backend: str
    probe: Probe
    client: object
    fw: object
    fw_c1: str
    upstream: object
    sniffed: Path
    stop: object


@pytest.fixture(params=["python", "nftables"])
def lab6(request, images, tmp_path):
    from ingot.testing import netns as kit

    backend = request.param
    procs = []
    with kit.Lab(ipv6=True) as lab:
        client, fw, upstream = lab.host(), lab.host(), lab.host()
        if backend == "python":  # the data plane answers neighbour discovery, not fw's kernel
            for conf in ("all", "default"):
                fw.sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", 1)
        c_if, fw_c1 = client.link(fw, "10.137.0.11/32", None)
        client.add_address(c_if, f"{C6}/128")
        fw_up, up_if = fw.link(upstream, "10.200.0.3/24" if backend == "python"
                               else "10.200.0.2/24", "10.200.0.1/24")
        upstream.add_address(up_if, f"{UP6}/64")
        upstream.add_address(up_if, f"{UP6_B}/64")
        if backend == "nftables":  # the VM's own uplink address, as Qubes' setup-ip sets it
            fw.add_address(fw_up, f"{FW6}/64")
            fw.sysctl("net.ipv6.icmp.ratelimit", 0)
        fw.sysctl("net.ipv4.icmp_ratelimit", 0)
        # the client as Qubes' setup-ip configures it: a /128, the gateway on-link
        client.add_route("10.137.0.1/32", dev=c_if)
        client.add_route("10.200.0.0/16", via="10.137.0.1", dev=c_if)
        client.add_route(f"{GW6}/128", dev=c_if)
        client.add_route("fd00:200::/64", via=GW6, dev=c_if)
        sniffed = tmp_path / "sniffed6.log"
        server = upstream.popen(sys.executable, "-c", UPSTREAM6, sniffed, UP6, UP6_B,
                                stdout=subprocess.PIPE, text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready"
        db = tmp_path / "qubesdb.json"
        db.write_text(qubesdb6(fw_c1))
        args = [sys.executable, images[backend], "--qubesdb-path", db, "--qubesdb-poll", "0.1",
                "--clients", f"10.137.0.11={fw_c1}"]
        args += (["--uplink-ifname", fw_up] if backend == "python"
                 else ["--filter-uplink-ifname", fw_up])
        proc = fw.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        lines: list[str] = []
        _wait_line(proc, "msg=ready", lines)
        probe = Probe.__new__(Probe)
        probe.proc = client.popen(sys.executable, "-u", "-c", CLIENT6, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        yield Lab6(backend, probe, client, fw, fw_c1, upstream, sniffed,
                   _stopper(proc, lines, [probe]))
        for p in (*procs, probe.proc):
            if p.poll() is None:
                p.kill()
                p.wait(10)


def _echo_sources(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_ipv6_is_filtered_and_masqueraded_end_to_end(lab6):
    probe, client = lab6.probe, lab6.client
    # the attach of the IPv6 address may come a moment after "ready" (a QubesDB entry)
    _until(lambda: probe("tcp", UP6, 80), f"ok {FW6}", timeout=5)  # TCP, masqueraded
    assert probe("udp", UP6, 5000) == f"ok {FW6}"                    # dst6 + udp port
    assert client.ping(UP6, count=2)                                 # ICMPv6 accepted
    assert _echo_sources(lab6.sniffed) and set(_echo_sources(lab6.sniffed)) == {FW6}
    # drops answer ICMPv6 administratively prohibited (type 1 code 1), as Qubes' reject
    assert probe("udp", UP6, 5001) == "EACCES icmp6 1/1"             # the policy
    assert probe("udp", UP6_B, 5000) == "EACCES icmp6 1/1"           # the dst6 drop rule
    assert probe("tcp", UP6_B, 80) == "EACCES icmp6 1/1"
    assert probe("tcp", UP6, 22) == "EACCES icmp6 1/1"
    assert not client.ping(UP6_B, timeout_s=1)
    assert client.ping(GW6)                                          # the gateway answers
    if shutil.which("iperf3"):
        server = lab6.upstream.popen("iperf3", "-s", "-1", "-B", UP6, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)
        run = client.run("iperf3", "-6", "-c", UP6, "-t", "1", "-J", timeout=30, check=False)
        server.wait(10)
        assert run.returncode == 0, run.stdout[-2000:]
        received = json.loads(run.stdout)["end"]["sum_received"]["bytes"]
        assert received > 1_000_000
    out = lab6.stop()
    assert "level=error" not in out, out
    if lab6.backend == "python":
        assert "uplink_ip6=fd00:200::2" in out and f"client={C6}" in out, out


def test_a_spoofed_ipv6_source_is_dropped(lab6):
    probe, client = lab6.probe, lab6.client
    _until(lambda: probe("tcp", UP6, 80), f"ok {FW6}", timeout=5)

    def echos() -> int:
        for line in lab6.upstream.run("cat", "/proc/net/snmp6").stdout.splitlines():
            if line.startswith("Icmp6InEchos "):
                return int(line.split()[1])
        raise AssertionError("no Icmp6InEchos")
    fw_mac = json.loads(lab6.fw.ip("-j", "link", "show", lab6.fw_c1))[0]["address"]
    c_if = json.loads(client.ip("-j", "link", "show", "eth0"))[0]["ifname"]
    before = echos()
    for src in (C6_OTHER, "fd00:200::9"):  # another client's address, an upstream one
        client.run(sys.executable, "-c", SPOOF6, c_if, fw_mac, src, UP6, timeout=10)
    time.sleep(0.5)
    assert echos() == before
    assert client.ping(UP6)  # the client's own address still goes through
    assert echos() > before
    out = lab6.stop()
    assert "spoofed" in out or lab6.backend == "nftables", out
