"""Run a ``vm`` or ``qubes`` image under QEMU (``ingot run images/<name>-vm``, tests, bench).

The machine: ``qemu-system-x86_64`` with KVM when ``/dev/kvm`` works and
``--accel`` allows it, else software emulation (TCG); the image's kernel and
initramfs; the serial console on standard output (or a log file); a
virtio-rng device (Python needs entropy at once); the QEMU monitor on a
Unix socket, through which :meth:`Vm.powerdown` presses the ACPI power
button (``system_powerdown``) so that PID 1 stops the appliance cleanly.

Networking is a list of QEMU ``-netdev`` specifications, one virtio NIC
each (``eth0``, ``eth1``, ... inside): ``user,hostfwd=udp:127.0.0.1:5353-:53``
for user-mode networking with forwarded ports, ``tap,ifname=vm0,script=no,
downscript=no`` for a tap interface on the host.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import IngotError

QEMU = "qemu-system-x86_64"


class VmError(IngotError):
    """The VM could not start, or did not do what was waited for."""


def kernel_cmdline(folder: Path, net: str = "", keys: Sequence[str] = ()) -> str:
    """The image's own command line, then ``net`` (``ingot.ip=...``), then ``-- keys``."""
    base = (folder / "cmdline").read_text().strip()
    parts = [base] + ([net] if net else [])
    if keys:
        parts += ["--", *keys]
    return " ".join(parts)


class Vm:
    """One QEMU process running an image folder."""

    def __init__(self, folder: str | os.PathLike[str], *, memory: int = 256,
                 netdevs: Sequence[str] = (), net: str = "", keys: Sequence[str] = (),
                 log: str | os.PathLike[str] | None = None, accel: str = "tcg",
                 cpus: int = 1, extra: Sequence[str] = ()) -> None:
        self.folder = Path(folder)
        for name in ("vmlinuz", "initramfs", "cmdline"):
            if not (self.folder / name).is_file():
                raise VmError(f"{self.folder} is not a vm image folder (no {name})",
                              hint="build one with 'ingot configure ... --target vm' and "
                                   "'ingot build'")
        self.qemu = shutil.which(QEMU)
        if self.qemu is None:
            raise VmError(f"{QEMU} is not installed", hint="apt-get install qemu-system-x86")
        self._tmp = tempfile.mkdtemp(prefix="ingot-vm-")
        self.monitor_path = os.path.join(self._tmp, "monitor")
        self.log_path = Path(log) if log else Path(self._tmp) / "console.log"
        self.append = kernel_cmdline(self.folder, net, keys)
        self.argv = [self.qemu, "-accel", accel, "-m", str(memory), "-smp", str(cpus),
                     "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                     "-kernel", str(self.folder / "vmlinuz"),
                     "-initrd", str(self.folder / "initramfs"), "-append", self.append,
                     "-device", "virtio-rng-pci",
                     "-monitor", f"unix:{self.monitor_path},server,nowait"]
        for i, spec in enumerate(netdevs):
            self.argv += ["-netdev", f"{spec},id=n{i}",
                          "-device", f"virtio-net-pci,netdev=n{i},mac=52:54:00:12:34:{0x56 + i:02x}"]
        self.argv += list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> "Vm":
        self.started = time.monotonic()
        if str(self.log_path) == "/dev/stdout":  # the console on our own standard output
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
            return self
        out = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)
        out.close()
        return self

    def console(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Wait until the console shows ``pattern`` (a regular expression)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = rx.search(self.console())
            if found:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise VmError(f"the VM stopped (exit {self.proc.returncode}) before "
                              f"{pattern!r} appeared", hint=self.tail())
            if time.monotonic() > deadline:
                raise VmError(f"{pattern!r} did not appear on the console in {timeout:.0f} s",
                              hint=self.tail())
            time.sleep(0.1)

    def tail(self, lines: int = 15) -> str:
        return "console: " + " | ".join(self.console().strip().splitlines()[-lines:])

    def monitor(self, command: str) -> str:
        """Send one command to the QEMU monitor; returns what it answered."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            for _ in range(50):
                try:
                    sock.connect(self.monitor_path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    time.sleep(0.1)

            def until_prompt() -> bytes:
                got = b""
                try:
                    while not got.rstrip().endswith(b"(qemu)"):
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        got += chunk
                except socket.timeout:
                    pass
                return got

            until_prompt()  # the banner
            sock.sendall(command.encode() + b"\n")
            got = until_prompt()
            return got.decode("utf-8", "replace")

    def powerdown(self, timeout: float = 60.0) -> int:
        """Press the ACPI power button and wait for QEMU to exit; returns its exit code."""
        self.monitor("system_powerdown")
        return self.wait(timeout)

    def wait(self, timeout: float | None = 60.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VmError(f"the VM did not stop within {timeout or 0:.0f} s",
                          hint=self.tail()) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "Vm":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (for forwarded ports)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
            with socket.socket(socket.AF_INET, other) as b:
                try:
                    b.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise OSError("no free port on 127.0.0.1")
