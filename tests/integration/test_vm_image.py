"""The DNS appliance's ``vm`` image: built reproducibly, booted under QEMU (software
emulation), answering ``dig`` from the host, stopped by the ACPI power button."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ingot import cpio
from ingot.qemu import Vm, free_port
from tests.conftest import ROOT, Cli

ZONES = ROOT / "configs" / "dns" / "zones"

pytestmark = pytest.mark.slow


def build_vm(cli: Cli, target: str = "vm") -> Path:
    cli("configure", ROOT / "appliances" / "dns", "--target", target,
        "--zones-source", ZONES)
    cli("build", ROOT / "appliances" / "dns", timeout=600)
    return cli.cwd / "images" / f"dns-{target}"


@pytest.fixture(scope="module")
def dns_vm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("vm")
    return build_vm(Cli(work))


def dig(port: int, *args: str) -> str:
    tool = shutil.which("dig")
    assert tool, "dig is not installed (Debian bind9-dnsutils; .ci installs it)"
    proc = subprocess.run([tool, "@127.0.0.1", "-p", str(port), "+time=10", "+tries=3",
                           *args], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_vm_folder_holds_a_kernel_an_initramfs_and_no_program_but_python(dns_vm):
    names = sorted(p.name for p in dns_vm.iterdir())
    assert names == ["cmdline", "contents.json", "initramfs", "vmlinuz"]
    entries = {e.path: e for e in cpio.read((dns_vm / "initramfs").read_bytes())}
    assert entries["init"].data.startswith(b"#!/usr/bin/python3 -IS\n")
    assert entries["dev/console"].kind == "chardev" and entries["dev/console"].rdev == (5, 1)
    elves = sorted(p for p, e in entries.items()
                   if e.kind == "file" and e.data[:4] == b"\x7fELF")
    programs = [p for p in elves if not (p.endswith(".so") or ".so." in p or p.endswith(".ko"))]
    assert programs == ["usr/bin/python3"]
    for forbidden in ("bin/sh", "usr/bin/sh", "bin/busybox", "usr/bin/apt", "usr/bin/dpkg"):
        assert forbidden not in entries
    # what the closure left out of the standard library, and the appliance is there
    assert not any(p.startswith(("usr/lib/python3.11/tkinter", "usr/lib/python3.11/unittest",
                                 "usr/lib/python3.11/pydoc")) for p in entries)
    assert "usr/lib/ingot/ingot/plugins/dns/server.pyc" in entries
    assert not any("/imap" in p or "/firewall/" in p for p in entries)
    contents = json.loads((dns_vm / "contents.json").read_text())
    listed = {f["path"] for f in contents["files"]}
    assert listed == {p for p, e in entries.items() if e.kind == "file"} - {
        "usr/lib/ingot/_ingot/contents.json"}
    assert "virtio_net.ko" in contents["kernel_modules"]
    assert contents["kernel"] == "debian"


def test_two_builds_give_byte_identical_vm_images(dns_vm, tmp_path):
    again = build_vm(Cli(tmp_path))
    for name in ("vmlinuz", "initramfs", "cmdline", "contents.json"):
        assert (again / name).read_bytes() == (dns_vm / name).read_bytes(), name


def test_the_vm_boots_under_qemu_answers_dig_and_powers_off_on_the_power_button(dns_vm):
    port = free_port()
    fwd = f"user,hostfwd=udp:127.0.0.1:{port}-:53,hostfwd=tcp:127.0.0.1:{port}-:53"
    with Vm(dns_vm, netdevs=[fwd], net="ingot.ip=eth0:10.0.2.15/24 ingot.gw=10.0.2.2",
            keys=["--host", "0.0.0.0", "--port", "53"]) as vm:
        vm.wait_for(r"msg=listening host=0\.0\.0\.0 port=53 zones=2", timeout=240)
        out = dig(port, "www.example.test", "A")
        assert "status: NOERROR" in out and "192.0.2.10" in out and " aa" in out
        out = dig(port, "+tcp", "shop.test", "SOA")
        assert "status: NOERROR" in out and "SOA" in out
        assert "status: REFUSED" in dig(port, "example.com", "A")
        console = vm.console()
        assert "src=init msg=\"pid 1 started\"" in console
        assert "msg=\"kernel modules loaded\"" in console
        assert vm.powerdown(timeout=120) == 0
        console = vm.console()
    assert 'msg="stopping the appliance" reason="power button"' in console
    assert "src=boot msg=stopped exit_code=0" in console
    assert 'src=init msg="appliance exited" exit_code=0' in console
    assert "reboot: Power down" in console
    assert "Kernel panic" not in console and "Traceback" not in console


def test_a_bad_runtime_key_on_the_kernel_command_line_is_one_error_line_then_power_off(dns_vm):
    with Vm(dns_vm, keys=["--port", "99999"]) as vm:
        vm.wait_for(r"reboot: Power down", timeout=240)
        assert vm.wait(60) == 0
        console = vm.console()
    assert "--port" in console and "level=error" in console
    assert 'src=init msg="appliance exited" exit_code=2' in console
    assert "Kernel panic" not in console


def test_the_root_alone_runs_the_appliance_no_host_file_needed(dns_vm, tmp_path):
    root = tmp_path / "root"
    for e in cpio.read((dns_vm / "initramfs").read_bytes()):
        target = root / e.path
        if e.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        elif e.kind == "file":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(e.data)
            target.chmod(e.mode)
    port = free_port()
    assert os.geteuid() == 0, "chroot needs root (CI runs as root)"
    proc = subprocess.Popen([shutil.which("chroot") or "/usr/sbin/chroot", str(root), "/usr/bin/python3", "-IS",
                             "/usr/lib/ingot/__main__.py", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/nonexistent"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "msg=listening" in line or "level=error" in line:
                break
        assert "msg=listening" in lines[-1], "".join(lines)
        out = dig(port, "www.example.test", "A")
        assert "192.0.2.10" in out and "status: NOERROR" in out
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, rest


def test_the_hello_and_echo_appliances_boot_as_vm_images_too(tmp_path):
    cli = Cli(tmp_path)
    cli("configure", ROOT / "appliances" / "hello", "--target", "vm")
    cli("build", ROOT / "appliances" / "hello", timeout=600)
    with Vm(cli.cwd / "images" / "hello-vm", memory=128,
            keys=["--hello", "from-a-vm", "--n", "2", "--interval", "0"]) as vm:
        vm.wait_for(r"reboot: Power down", timeout=240)
        console = vm.console()
    assert console.count('msg=from-a-vm') == 2
    assert 'src=init msg="appliance exited" exit_code=0' in console

    cli("configure", ROOT / "appliances" / "echo", "--target", "vm",
        "--kv-ro-source", ROOT / "configs" / "echo" / "data")
    cli("build", ROOT / "appliances" / "echo", timeout=600)
    port = free_port(socket.SOCK_STREAM)
    with Vm(cli.cwd / "images" / "echo-vm", memory=128,
            netdevs=[f"user,hostfwd=tcp:127.0.0.1:{port}-:7"],
            net="ingot.ip=eth0:10.0.2.15/24", keys=["--host", "0.0.0.0", "--port", "7"]) as vm:
        vm.wait_for(r"src=echo msg=listening", timeout=240)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.settimeout(30)
            greeting = conn.recv(4096)
            conn.sendall(b"ping from the host\n")
            echoed = b""
            while not echoed.endswith(b"\n"):
                echoed += conn.recv(4096)
        assert greeting and echoed == b"ping from the host\n"
        assert vm.powerdown(timeout=120) == 0


@pytest.mark.kernel_minimal
@pytest.mark.timeout(2400)  # builds the minimal kernel unless it is cached
def test_with_the_minimal_kernel_the_dns_vm_is_under_10_mib_and_answers_in_64_mib(tmp_path):
    cli = Cli(tmp_path)
    cli("configure", ROOT / "appliances" / "dns", "--target", "vm", "--zones-source", ZONES)
    cli("build", ROOT / "appliances" / "dns", "--kernel", "minimal", timeout=2400)
    folder = cli.cwd / "images" / "dns-vm"
    contents = json.loads((folder / "contents.json").read_text())
    assert contents["kernel"] == "minimal" and contents["kernel_modules"] == []
    size = (folder / "vmlinuz").stat().st_size + (folder / "initramfs").stat().st_size
    assert size < 10 * 2**20, size
    port = free_port()
    with Vm(folder, memory=64, netdevs=[f"user,hostfwd=udp:127.0.0.1:{port}-:53"],
            net="ingot.ip=eth0:10.0.2.15/24 ingot.gw=10.0.2.2",
            keys=["--host", "0.0.0.0", "--port", "53"]) as vm:
        vm.wait_for(r"msg=listening host=0\.0\.0\.0 port=53", timeout=240)
        out = dig(port, "www.example.test", "A")
        assert "status: NOERROR" in out and "192.0.2.10" in out
        assert vm.powerdown(timeout=120) == 0
        console = vm.console()
    assert 'reason="power button"' in console and "exit_code=0" in console
