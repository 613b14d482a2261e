"""``--sandbox`` and ``--user`` on real unix images: the appliance still serves, a
forbidden syscall (``execve``) fails with EPERM or kills the process by SIGSYS,
and the process runs as ``--user`` while keeping a privileged port it bound."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import pytest

from tests.conftest import ROOT, Cli

pytest.importorskip("pyseccomp", reason="the sandbox needs pyseccomp and libseccomp2")

DATA = ROOT / "configs" / "echo" / "data"

PROBE_MANIFEST = '''\
"""A test appliance: listens on TCP, then tries to exec once it is sandboxed."""
from ingot.keys import key
from ingot.manifest import Appliance, device
from ingot.signatures import Stack

appliance = Appliance(
    name="probe", main="app:Probe", doc="listens, then tries execve", ambient=False,
    devices=[device("stack", Stack, doc="where it listens")],
    keys=[key("host", str, "address", "127.0.0.1"), key("port", int, "TCP port", 0),
          key("ready", bool, "signal readiness", True)],
)
'''

PROBE_APP = '''\
"""Listens, sets ready, waits until the runtime sandboxed it, then tries to exec."""
import asyncio
import errno
import os


def seccomp_mode() -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return line.split()[1]
    return "?"


class Probe:
    def __init__(self, stack, keys, log):
        self.stack, self.keys, self.log = stack, keys, log
        if keys.ready:
            self.ready = asyncio.Event()

    async def _serve(self, flow):
        await flow.write(b"probe\\n")

    async def start(self):
        listener = await self.stack.listen_tcp(self.keys.host, self.keys.port, self._serve)
        self.log.info("probe listening", port=listener.address[1], uid=os.getuid())
        if self.keys.ready:
            self.ready.set()
        for _ in range(500):  # the runtime installs the filter a few loop steps later
            if seccomp_mode() == "2":
                break
            await asyncio.sleep(0.01)
        self.log.info("probe sandboxed", seccomp=seccomp_mode(), uid=os.getuid())
        try:
            os.execv("/bin/true", ["true"])
        except OSError as exc:
            self.log.info("probe exec refused", errno=errno.errorcode.get(exc.errno, exc.errno))
        await asyncio.get_running_loop().create_future()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """An image started as a process; ``wait_for`` reads its log up to a line."""

    def __init__(self, image: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(image), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"exited before {text!r}:\n" + "".join(self.lines))
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in time:\n" + "".join(self.lines))

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.lines.append(out)
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("probe")
    app = base / "probe"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "manifest.py").write_text(PROBE_MANIFEST)
    (app / "app.py").write_text(PROBE_APP)
    cli = Cli(base)
    cli("configure", app, "--target", "unix")
    cli("build", app)
    return cli.image("probe-unix")


@pytest.fixture(scope="module")
def echo_image(tmp_path_factory) -> Path:
    cli = Cli(tmp_path_factory.mktemp("echo"))
    cli("configure", ROOT / "appliances" / "echo", "--target", "unix", "--kv-ro", "crunch",
        "--kv-ro-source", str(DATA))
    cli("build", ROOT / "appliances" / "echo")
    return cli.image("echo-unix")


def test_sandboxed_echo_still_serves_tcp_and_udp(echo_image):
    port = free_port()
    # kill: any syscall the allowlist lacks would end the process by SIGSYS
    with Proc(echo_image, "--port", str(port), "--sandbox", "kill") as run:
        line = run.wait_for('msg="sandbox installed"')
        assert "mode=kill" in line and "when=ready" in line and "user=(kept)" in line
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.settimeout(10)
                greeting = s.recv(4096)
                s.sendall(b"through the filter")
                s.shutdown(socket.SHUT_WR)
                echoed = b""
                while chunk := s.recv(65536):
                    echoed += chunk
            assert greeting == (DATA / "greeting.txt").read_bytes()
            assert echoed == b"through the filter"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(10)
                u.sendto(b"datagram", ("127.0.0.1", port))
                assert u.recvfrom(65535)[0] == b"datagram"
        out = run.stop()
    assert run.proc.returncode == 0, out
    assert "msg=stopped exit_code=0" in out


UPDATE_KEY = "eaHHFobUCvk4JqvxhQvneckNHwdooQ0dRXP6/jrYPC0="  # configs/dns/update.key


@pytest.mark.skipif(shutil.which("nsupdate") is None, reason="needs nsupdate (bind9-dnsutils)")
def test_sandboxed_dns_answers_updates_and_reloads(tmp_path):
    """kill mode on the dns image: queries, a signed update that writes the store, a reload."""
    from dnslib import DNSRecord

    cli = Cli(tmp_path)
    zones = tmp_path / "zones"
    shutil.copytree(ROOT / "configs" / "dns" / "zones", zones)
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct", "--store", "direct")
    cli("build", ROOT / "appliances" / "dns")
    port = free_port()

    def ask(name: str, tcp: bool = False) -> list[str]:
        reply = DNSRecord.question(name, "A").send("127.0.0.1", port, tcp=tcp, timeout=10)
        return [str(rr.rdata) for rr in DNSRecord.parse(reply).rr]

    with Proc(cli.image("dns-unix"), "--port", str(port), "--sandbox", "kill",
              "--zones-path", str(zones), "--store-path", str(tmp_path / "store"),
              "--reload", "0.2", "--tsig-keys", f"hmac-sha256:update.key:{UPDATE_KEY}",
              "--update-acl", "key:update.key", "--transfer-acl", "any") as run:
        assert "mode=kill" in run.wait_for('msg="sandbox installed"')
        assert ask("www.example.test") == ask("www.example.test", tcp=True) != []
        script = (f"server 127.0.0.1 {port}\nkey hmac-sha256:update.key {UPDATE_KEY}\n"
                  "zone example.test\nupdate add new.example.test 300 A 192.0.2.77\nsend\n")
        res = subprocess.run(["nsupdate", "-v"], input=script, capture_output=True, text=True,
                             timeout=30, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert ask("new.example.test") == ["192.0.2.77"]
        assert any((tmp_path / "store").iterdir())  # written through the filter
        shop = zones / "shop.test.zone"
        text = shop.read_text().replace("2026120101", "2026120102")  # a raised serial
        shop.write_text(text + "sandboxed 300 IN A 192.0.2.78\n")
        deadline = time.monotonic() + 20
        while ask("sandboxed.shop.test") != ["192.0.2.78"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ask("sandboxed.shop.test") == ["192.0.2.78"]
        out = run.stop()
    assert run.proc.returncode == 0, out


def test_execve_fails_with_eperm(probe_image):
    with Proc(probe_image, "--sandbox", "on") as run:
        run.wait_for('msg="sandbox installed"')
        assert "seccomp=2" in run.wait_for("probe sandboxed")
        assert "errno=EPERM" in run.wait_for("probe exec refused")
        with socket.create_connection(("127.0.0.1", _port(run)), timeout=10) as s:
            assert s.recv(100) == b"probe\n"  # still serving after the refusal
        out = run.stop()
    assert run.proc.returncode == 0, out


def test_execve_kills_by_sigsys_in_kill_mode(probe_image):
    with Proc(probe_image, "--sandbox", "kill") as run:
        assert "mode=kill" in run.wait_for('msg="sandbox installed"')
        run.wait_for("probe sandboxed")
        out, _ = run.proc.communicate(timeout=30)
    assert run.proc.returncode == -signal.SIGSYS, out
    assert "probe exec refused" not in out


def test_an_appliance_without_ready_is_sandboxed_before_start(probe_image):
    with Proc(probe_image, "--sandbox", "on", "--ready", "false") as run:
        assert "when=\"before start\"" in run.wait_for('msg="sandbox installed"')
        assert "errno=EPERM" in run.wait_for("probe exec refused")
        out = run.stop()
    assert run.proc.returncode == 0, out


def test_sandbox_off_is_the_default(probe_image):
    with Proc(probe_image) as run:
        assert "seccomp=0" in run.wait_for("probe sandboxed")
    assert not any("sandbox installed" in line for line in run.lines)


def _port(run: Proc) -> int:
    line = next(line for line in run.lines if "probe listening" in line)
    return int(line.split("port=")[1].split()[0])


def _privileged_port() -> int | None:
    for port in (853, 854, 855, 953, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="changing the user needs root")
def test_user_drop_keeps_a_privileged_port(probe_image):
    nobody = pwd.getpwnam("nobody")
    port = _privileged_port()
    if port is None:
        pytest.skip("no free port below 1024 on 127.0.0.1")
    with Proc(probe_image, "--port", str(port), "--sandbox", "on", "--user", "nobody") as run:
        assert "uid=0" in run.wait_for("probe listening")  # bound as root
        line = run.wait_for('msg="sandbox installed"')
        assert f"uid={nobody.pw_uid}" in line and "user=nobody" in line
        assert f"uid={nobody.pw_uid}" in run.wait_for("probe sandboxed")
        status = Path(f"/proc/{run.proc.pid}/status").read_text()
        uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
        gids = next(ln for ln in status.splitlines() if ln.startswith("Gid:")).split()[1:]
        groups = next(ln for ln in status.splitlines() if ln.startswith("Groups:")).split()[1:]
        assert uids == [str(nobody.pw_uid)] * 4 and gids == [str(nobody.pw_gid)] * 4
        assert groups == []
        assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(100) == b"probe\n"
        out = run.stop()
    assert run.proc.returncode == 0, out


def test_unknown_user_stops_the_boot(probe_image):
    res = subprocess.run([sys.executable, str(probe_image), "--user", "no-such-user-here"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no such user" in res.stdout + res.stderr
    assert "device connected" not in res.stdout + res.stderr  # checked before any device


def test_the_sandbox_is_documented():
    text = (ROOT / "docs" / "sandbox.md").read_text()
    for word in ("--sandbox", "--user", "strace", "EPERM", "SIGSYS", "ingot_sandbox_syscalls"):
        assert word in text, word


def test_without_the_bindings_the_boot_stops(probe_image, tmp_path):
    """An image without pyseccomp (or a host without libseccomp) never runs unsandboxed."""
    import zipfile

    stripped = tmp_path / "stripped.pyz"
    with zipfile.ZipFile(probe_image) as src, zipfile.ZipFile(stripped, "w") as dst:
        for info in src.infolist():
            if not info.filename.startswith("pyseccomp"):
                dst.writestr(info, src.read(info))
    res = subprocess.run([sys.executable, str(stripped), "--sandbox", "on"],
                         check=False, capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "seccomp bindings are not in this image" in out and "--sandbox off" in out
    assert "appliance started" not in out


# -- the allowlist (no process) ------------------------------------------------

def test_every_base_syscall_resolves_here():
    from ingot import sandbox

    numbers = sandbox.resolve(sandbox.BASE)
    assert len(numbers) == len(set(sandbox.BASE))
    full = sandbox.allowlist()
    assert set(sandbox.BASE) <= set(full)
    if os.uname().machine == "x86_64":
        assert set(sandbox.LEGACY) <= set(full)


def test_no_dangerous_syscall_is_ever_allowed():
    from ingot import sandbox

    dangerous = {"execve", "execveat", "ptrace", "mount", "kexec_load", "init_module",
                 "finit_module", "bpf", "setns", "unshare", "io_uring_setup", "io_uring_enter",
                 "setuid", "process_vm_writev", "pivot_root", "chroot"}
    assert dangerous <= sandbox.FORBIDDEN
    assert not sandbox.FORBIDDEN & set(sandbox.BASE + sandbox.LEGACY)
    assert "ioctl" not in sandbox.BASE and "clone" not in sandbox.BASE  # only with arguments
    assert 0x5412 not in sandbox.IOCTLS.values()  # TIOCSTI
    with pytest.raises(sandbox.SandboxError, match="execve"):
        sandbox.allowlist(["pread64", "execve"])
    with pytest.raises(sandbox.SandboxError, match="unknown"):
        sandbox.allowlist(["no_such_syscall"])
    assert "pwritev2" in sandbox.allowlist(["pwritev2"])


def test_missing_bindings_are_a_clear_error(monkeypatch):
    from ingot import sandbox

    monkeypatch.setitem(sys.modules, "pyseccomp", None)
    with pytest.raises(sandbox.SandboxError, match="not in this image") as info:
        sandbox.bindings()
    assert "--sandbox off" in info.value.hint


def test_guard_and_user_parsing():
    from ingot import sandbox

    assert sandbox.Guard.prepare("off", "", []) is None
    guard = sandbox.Guard.prepare("off", "65534:65533", [])
    assert guard.user == sandbox.User(65534, 65533, "65534:65533") and guard.allow == {}
    nobody = pwd.getpwnam("nobody")
    assert sandbox.parse_user("nobody") == sandbox.User(nobody.pw_uid, nobody.pw_gid, "nobody")
    with pytest.raises(sandbox.SandboxError, match="uid:gid"):
        sandbox.parse_user("1:x")
    on = sandbox.Guard.prepare("on", "", ["pwritev2"])
    assert "pwritev2" in on.allow and "openat" in on.allow
