"""The echo appliance as a built image: real TCP and UDP clients on loopback,
each kv_ro backend, and proof that an image holds only the chosen backends."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli

DATA = ROOT / "configs" / "echo" / "data"
GREETING = (DATA / "greeting.txt").read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, image: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(image), "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("echo exited early:\n" + "".join(self.lines))
            self.lines.append(line)
            if "msg=listening proto=udp" in line:
                break

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.lines.append(out)
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def tcp_exchange(port: int, payload: bytes, greeting: bytes = GREETING) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        got = b""
        while len(got) < len(greeting):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        echoed = b""
        while chunk := s.recv(65536):
            echoed += chunk
    return got, echoed


def udp_exchange(port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(payload, ("127.0.0.1", port))
        data, _ = s.recvfrom(65535)
        return data


def build(cli: Cli, *options: str) -> dict:
    cli("configure", ROOT / "appliances" / "echo", "--target", "unix", *options)
    cli("build", ROOT / "appliances" / "echo")
    return json.loads((cli.cwd / "images" / "echo-unix.contents.json").read_text())


def paths(contents: dict) -> set[str]:
    return {f["path"] for f in contents["files"]}


def test_crunch_image_serves_tcp_and_udp(cli):
    contents = build(cli, "--kv-ro", "crunch", "--kv-ro-source", str(DATA))
    assert "_ingot/data/kv_ro/greeting.txt" in paths(contents)
    run = Running(cli.image("echo-unix"))
    try:
        payload = bytes(range(256)) * 40
        greeting, echoed = tcp_exchange(run.port, payload)
        assert greeting == GREETING
        assert echoed == payload
        assert udp_exchange(run.port, b"ping over udp") == b"ping over udp"
        big = b"x" * 60000
        assert udp_exchange(run.port, big) == big
        out = run.stop()
    finally:
        run.kill()
    assert run.proc.returncode == 0, out
    assert "msg=stopping signal=SIGTERM" in out


def test_crunch_image_holds_no_git_code_and_git_image_does(cli, tmp_path):
    crunch = paths(build(cli, "--kv-ro", "crunch", "--kv-ro-source", str(DATA)))
    assert "ingot/plugins/kv/crunch.py" in crunch
    assert not any(p.startswith(("dulwich/", "_ingot/native/dulwich/")) for p in crunch)
    assert "ingot/plugins/kv/git.py" not in crunch
    assert "ingot/plugins/kv/direct.py" not in crunch

    repo = tmp_path / "greetings"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.test"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "greeting.txt").write_bytes(b"hello from git\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "greeting"], check=True)
    gitimg = paths(build(cli, "--kv-ro", "git", "--kv-ro-repo", str(repo)))
    assert "ingot/plugins/kv/git.py" in gitimg
    assert any(p.startswith(("dulwich/", "_ingot/native/dulwich/")) for p in gitimg)
    assert "ingot/plugins/kv/crunch.py" not in gitimg

    run = Running(cli.image("echo-unix"))
    try:
        greeting, echoed = tcp_exchange(run.port, b"abc", greeting=b"hello from git\n")
        assert greeting == b"hello from git\n" and echoed == b"abc"
        run.stop()
    finally:
        run.kill()
    assert run.proc.returncode == 0


def test_direct_image_reads_a_host_folder_given_at_run_time(cli, tmp_path):
    build(cli, "--kv-ro", "direct")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "greeting.txt").write_bytes(b"from a host folder\n")
    run = Running(cli.image("echo-unix"), "--kv-ro-path", str(folder))
    try:
        greeting, _ = tcp_exchange(run.port, b"", greeting=b"from a host folder\n")
        assert greeting == b"from a host folder\n"
        run.stop()
    finally:
        run.kill()


def test_missing_folder_stops_boot_naming_the_device_and_key(cli, tmp_path):
    build(cli, "--kv-ro", "direct")
    proc = subprocess.run([sys.executable, str(cli.image("echo-unix")), "--kv-ro-path",
                           str(tmp_path / "nowhere"), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    errors = [line for line in proc.stdout.splitlines() if "level=error" in line]
    assert len(errors) == 1, proc.stdout
    assert "device 'kv_ro' (kv_ro/direct) failed to connect" in errors[0]
    assert "--kv-ro-path" in errors[0]


def test_port_in_use_is_one_clear_error(cli):
    build(cli, "--kv-ro", "crunch", "--kv-ro-source", str(DATA))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run([sys.executable, str(cli.image("echo-unix")), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "address in use" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_uvloop_is_shipped_and_used_unless_switched_off(cli):
    pytest.importorskip("uvloop")
    contents = build(cli, "--kv-ro", "crunch", "--kv-ro-source", str(DATA))
    assert "uvloop" in contents["native_packages"]
    run = Running(cli.image("echo-unix"))
    try:
        assert tcp_exchange(run.port, b"u")[1] == b"u"
        out = run.stop()
    finally:
        run.kill()
    assert "loop=uvloop" in out
    run = Running(cli.image("echo-unix"), "--stack-uvloop", "false")
    try:
        assert udp_exchange(run.port, b"plain") == b"plain"
        out = run.stop()
    finally:
        run.kill()
    assert "loop=asyncio" in out
