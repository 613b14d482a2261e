"""The firewall as a ``qubes`` image: the folder Qubes takes, booted under QEMU with two
virtio NICs between a client and an upstream network, filtering and masquerading.

The lab (network namespaces): ``fwhost`` holds QEMU and its two taps, each bridged
to a veth; ``upstream`` (10.200.0.1, a TCP/UDP server that answers with the peer
address it sees) and ``client`` (10.137.0.11) are at the other ends. Inside the
VM, eth0 is the uplink and eth1 the client's interface; the python data plane
owns both (no address is set by PID 1). QubesDB is the table baked into the
image (``--qubesdb file --qubesdb-bake``): the client may ping and reach TCP 80,
nothing else.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from ingot import cpio
from ingot.qemu import Vm
from ingot.testing.pytest_netns import requires_netns
from tests.conftest import ROOT, Cli, run_image

pytestmark = pytest.mark.slow

CLIENT = "10.137.0.11"
UPSTREAM = "10.200.0.1"
FIREWALL = "10.200.0.2"
QUBESDB = {
    "/qubes-ip": FIREWALL,
    "/qubes-gateway": UPSTREAM,
    "/qubes-netmask": "255.255.255.0",
    "/qubes-netvm-gateway": "10.137.0.1",
    "/qubes-netvm-primary-dns": "10.139.1.1",
    "/qubes-netvm-secondary-dns": "10.139.1.2",
    "/qubes-primary-dns": UPSTREAM,
    "/qubes-secondary-dns": UPSTREAM,
    "/connected-ips": CLIENT,
    "/ingot/clients/" + CLIENT: "eth1",
    f"/qubes-firewall/{CLIENT}": "",
    f"/qubes-firewall/{CLIENT}/policy": "drop",
    f"/qubes-firewall/{CLIENT}/0000": "action=accept proto=icmp",
    f"/qubes-firewall/{CLIENT}/0001": "action=accept proto=tcp dstports=80-80",
}
QUBES_FILES = ["cmdline", "contents.json", "default-kernelopts-common.txt", "initramfs",
               "vmlinuz"]

# upstream: answers every TCP connection and UDP datagram with the peer it saw, and logs it
SERVER = r"""
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(8)
    while True:
        c, peer = s.accept()
        print(f"tcp {port} from {peer[0]}", flush=True)
        c.sendall(f"peer={peer[0]}\n".encode()); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], port))
    while True:
        data, peer = s.recvfrom(2048)
        print(f"udp {port} from {peer[0]}", flush=True)
        s.sendto(f"peer={peer[0]}\n".encode(), peer)
for f, p in ((tcp, 80), (tcp, 8080), (udp, 5353)):
    threading.Thread(target=f, args=(p,), daemon=True).start()
print("server ready", flush=True)
threading.Event().wait()
"""

# client: one TCP connection or UDP exchange; prints "ok <reply>" or "err <errno name>"
PROBE = r"""
import errno, socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "tcp":
        s = socket.create_connection((host, port), timeout=30)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(8)
        s.connect((host, port)); s.send(b"hello")
    s.settimeout(30 if kind == "tcp" else 8)
    print("ok", s.recv(100).decode().strip())
except socket.timeout:
    print("err timeout")
except OSError as exc:
    print("err", errno.errorcode.get(exc.errno, exc.errno))
"""


def build(cli: Cli, target: str) -> Path:
    (cli.cwd / "qubesdb.json").write_text(json.dumps(QUBESDB, indent=1))
    cli("configure", ROOT / "appliances" / "firewall", "--target", target,
        "--qubesdb", "file", "--qubesdb-path", "qubesdb.json", "--qubesdb-bake",
        "--filter", "python", "--uplink", "afpacket")
    cli("build", ROOT / "appliances" / "firewall", "--kernel", "debian", timeout=600)
    return cli.cwd / "images" / f"firewall-{target}"


@pytest.fixture(scope="module")
def fw_qubes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(Cli(tmp_path_factory.mktemp("fwq")), "qubes")


def test_the_qubes_folder_is_a_vm_kernel_folder_holding_python_and_the_firewall_only(fw_qubes):
    assert sorted(p.name for p in fw_qubes.iterdir()) == QUBES_FILES
    opts = (fw_qubes / "default-kernelopts-common.txt").read_text()
    assert "console=hvc0" in opts and "random.trust_cpu=on" in opts
    entries = {e.path: e for e in cpio.read((fw_qubes / "initramfs").read_bytes())}
    assert entries["init"].data.startswith(b"#!/usr/bin/python3 -IS\n")
    programs = [p for p, e in entries.items() if e.kind == "file" and e.data[:4] == b"\x7fELF"
                and not (p.endswith((".so", ".ko")) or ".so." in p)]
    assert programs == ["usr/bin/python3"]
    for forbidden in ("bin/sh", "usr/bin/sh", "bin/busybox", "usr/sbin/nft", "usr/bin/nft",
                      "sbin/ip", "usr/sbin/ip"):
        assert forbidden not in entries, forbidden
    # the QubesDB table is baked in, as it was given
    table = entries["usr/lib/ingot/_ingot/data/qubesdb/table.json"].data
    assert json.loads(table) == QUBESDB
    code = {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in entries
            if p.startswith("usr/lib/ingot/ingot/plugins/") and p.endswith(".pyc")}
    assert {"firewall/python_backend.pyc", "firewall/engine.pyc", "qubesdb/file.pyc",
            "qubesdb/table.pyc", "netif/afpacket.pyc",
            "dns/stub.pyc"} <= code
    # no nftables code, no DNS server, no QubesDB socket client, no git
    for absent in ("firewall/nft.pyc", "firewall/nft_backend.pyc", "dns/server.pyc",
                   "qubesdb/socket.pyc", "qubesdb/protocol.pyc", "kv/git.pyc"):
        assert absent not in code, absent
    assert not any("dulwich" in p for p in entries)
    contents = json.loads((fw_qubes / "contents.json").read_text())
    assert contents["target"] == "qubes" and contents["kernel"] == "debian"
    assert {"virtio_net.ko", "xen-netfront.ko"} <= set(contents["kernel_modules"])


def test_the_vm_target_gives_the_same_image_without_the_qubes_file(tmp_path):
    folder = build(Cli(tmp_path), "vm")
    assert sorted(p.name for p in folder.iterdir()) == [
        n for n in QUBES_FILES if n != "default-kernelopts-common.txt"]


@pytest.mark.parametrize("target", ["vm", "qubes"])
def test_the_nftables_data_plane_is_refused_for_vm_images(cli: Cli, target):
    res = cli("configure", ROOT / "appliances" / "firewall", "--target", target,
              "--qubesdb", "file", "--qubesdb-path", "/etc/q.json", "--filter", "nftables",
              check=False)
    assert res.rc != 0
    assert "the nftables backend runs the 'nft' program" in res.out + res.err
    assert "--filter python" in res.out + res.err


def test_a_baked_table_is_read_from_the_image_not_the_host(cli: Cli):
    (cli.cwd / "qubesdb.json").write_text(json.dumps(QUBESDB))
    cli("configure", ROOT / "appliances" / "firewall", "--target", "unix", "--qubesdb", "file",
        "--qubesdb-path", "qubesdb.json", "--qubesdb-bake", "--filter", "python",
        "--uplink", "afpacket")
    cli("build", ROOT / "appliances" / "firewall")
    (cli.cwd / "qubesdb.json").unlink()  # the image must not need it
    res = run_image(cli.image("firewall-unix"), "--uplink-ifname", "nosuchif0")
    out = res.out + res.err
    assert 'msg="QubesDB table from the image" file=qubesdb.json entries=14' in out, out
    assert "device 'uplink'" in out and "Traceback" not in out and res.rc != 0


def test_baking_needs_a_table_that_parses_at_configure_time(cli: Cli):
    (cli.cwd / "bad.json").write_text("{ not json")
    for path, error in (("missing.json", "cannot read --qubesdb-path 'missing.json'"),
                        ("bad.json", "--qubesdb-path 'bad.json' is not valid")):
        res = cli("configure", ROOT / "appliances" / "firewall", "--target", "qubes",
                  "--qubesdb", "file", "--qubesdb-path", path, "--qubesdb-bake",
                  "--filter", "python", "--uplink", "afpacket", check=False)
        assert res.rc != 0 and error in res.out + res.err, res.out + res.err


def _lab(netns):
    """(fwhost, upstream, client): QEMU's taps in fwhost, bridged to the other two."""
    fwhost, upstream, client = netns(), netns(), netns()
    up_here, _ = fwhost.link(upstream, None, f"{UPSTREAM}/24")
    cl_here, cl_there = fwhost.link(client, None, f"{CLIENT}/24")
    fwhost.bridge("br-up", up_here)
    fwhost.bridge("br-cl", cl_here)
    fwhost.tap("tap-up", "br-up")
    fwhost.tap("tap-cl", "br-cl")
    client.add_route("10.200.0.0/24", via="10.137.0.1", dev=cl_there)
    return fwhost, upstream, client


@requires_netns
def test_the_qubes_image_boots_with_two_nics_and_filters_between_them(fw_qubes, netns,
                                                                      tmp_path):
    fwhost, upstream, client = _lab(netns)
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "probe.py").write_text(PROBE)
    served = tmp_path / "served.log"
    with open(served, "w") as log:
        upstream.popen(sys.executable, "-u", tmp_path / "server.py", UPSTREAM,
                       stdout=log, stderr=log)
    upstream.wait_listening(8080, timeout_s=20)

    def probe(kind: str, port: int) -> str:
        return client.run(sys.executable, tmp_path / "probe.py", kind, UPSTREAM, port,
                          timeout=60).stdout.strip()

    started = time.monotonic()
    vm = Vm(fw_qubes, memory=256,
            netdevs=["tap,ifname=tap-up,script=no,downscript=no",
                     "tap,ifname=tap-cl,script=no,downscript=no"],
            keys=["--stats-interval", "0"])
    vm.argv = fwhost.cmd(*vm.argv)  # QEMU inside fwhost, where its taps are
    try:
        vm.start()
        ready = vm.wait_for(r"up=([0-9.]+) level=info src=firewall msg=ready", timeout=300)
        console = vm.console()
        assert 'msg="QubesDB table from the image"' in console
        assert re.search(rf"msg=\"client attached\" client={CLIENT} ifname=eth1", console)
        print(f"\nfirewall VM ready at up={ready.group(1)} s "
              f"({time.monotonic() - started:.1f} s wall)")

        # allowed: ping, and TCP 80 masqueraded to the firewall's upstream address
        assert client.ping(UPSTREAM, count=5, timeout_s=10)
        assert probe("tcp", 80) == f"ok peer={FIREWALL}"
        # denied: TCP 8080 answered "administratively prohibited", UDP dropped
        assert probe("tcp", 8080) == "err EHOSTUNREACH"
        assert probe("udp", 5353) in ("err EHOSTUNREACH", "err timeout")
        assert probe("tcp", 80) == f"ok peer={FIREWALL}"  # still passing after the drops
        lines = served.read_text().splitlines()
        assert f"tcp 80 from {FIREWALL}" in lines
        assert not any(line.startswith(("tcp 8080", "udp 5353")) for line in lines), lines
        assert not any(CLIENT in line for line in lines), lines

        assert vm.powerdown(timeout=120) == 0
        console = vm.console()
    finally:
        vm.close()
    assert 'msg="stopping the appliance" reason="power button"' in console
    assert "src=boot msg=stopped exit_code=0" in console
    stopped = re.search(r"src=firewall msg=stopped .*", console)
    assert stopped, console[-3000:]
    dropped = re.search(r"\bdrop[._]policy=([0-9]+)", stopped.group(0))
    assert dropped and int(dropped.group(1)) >= 2, stopped.group(0)  # tcp 8080, udp 5353
    assert 'src=init msg="appliance exited" exit_code=0' in console
    assert "reboot: Power down" in console
    assert "Traceback" not in console and "Kernel panic" not in console
    print(f"test body {time.monotonic() - started:.1f} s")
