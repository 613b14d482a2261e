"""Hosts as Linux network namespaces, for tests that need a real network.

A :class:`Lab` makes hosts; each :class:`Host` is one network namespace
named ``ingt-<pid>-<n>`` (``<pid>`` being the process that made it) with
``lo`` up. Hosts are joined by veth pairs created straight into both
namespaces (:meth:`Host.link`), by a bridge in a namespace of its own
(:class:`Switch`), and carry persistent tap/tun devices (:meth:`Host.tap`,
:meth:`Host.tun`) for the devices under test to attach to::

    with Lab() as lab:
        a, b = lab.host(), lab.host()
        a.link(b, "10.200.0.1/24", "10.200.0.2/24")
        assert a.ping("10.200.0.2")

Safety rules the kit enforces:

* Addresses, routes and ping targets must lie inside 10.137.0.0/16,
  10.200.0.0/16 or Qubes' virtual DNS range 10.139.1.0/24 (which a firewall
  redirects; nothing outside the lab's namespaces is ever routed there), or,
  for IPv6, inside two unique local ranges (RFC 4193, never routed on the
  Internet): Qubes' own client prefix fd09:24ef:4179::/48 and the test
  range fd00:200::/64 (:data:`ALLOWED_NETWORKS`, :func:`check_interface`,
  :func:`check_network`); anything else (a global address, a link-local or
  multicast one, ``::/0``) raises ``ValueError`` before a command runs.
* The kit never changes the namespace it runs in: every device is created
  inside a namespace of the lab (``ip link add ... netns A ... peer ...
  netns B``), and :meth:`Host.entered` moves only the calling thread, and
  back.
* Teardown always runs: :meth:`Lab.close` (the fixture's finalizer) stops
  the processes a host started, by PID, then deletes its namespace; an
  ``atexit`` hook and a SIGTERM/SIGHUP handler delete whatever namespaces
  with this process's prefix are left (Ctrl-C raises KeyboardInterrupt,
  which runs both). A run killed outright leaves namespaces whose PID is
  dead; :func:`sweep_stale` deletes those once they are old enough.

Devices under test usually live in the test process: open them inside
``with host.entered():`` (a tun/tap fd or a packet socket stays in the
namespace it was opened in), then use them from anywhere in the process.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

ALLOWED_NETWORKS = (ipaddress.IPv4Network("10.137.0.0/16"),
                    ipaddress.IPv4Network("10.200.0.0/16"),
                    ipaddress.IPv4Network("10.139.1.0/24"),
                    ipaddress.IPv6Network("fd09:24ef:4179::/48"),
                    ipaddress.IPv6Network("fd00:200::/64"))
"""The only networks a lab may address (Qubes' client range, a test range, and Qubes'
virtual DNS addresses, which a firewall under test redirects; for IPv6 Qubes' client
prefix and one test /64, both unique local addresses)."""

ROOT_PREFIX = "ingt-"
RUN_PREFIX = f"{ROOT_PREFIX}{os.getpid()}-"
"""Namespaces made by this process are named ``RUN_PREFIX + n``."""

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_STALE_NAME = re.compile(rf"^{re.escape(ROOT_PREFIX)}(\d+)-\d+$")
_counter = itertools.count(1)
_lock = threading.Lock()
_installed = False


class NetnsError(RuntimeError):
    """A command of the kit failed; the message holds the command and its output."""


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can.

    Only two reasons count: not running as root, and no ``ip`` command.
    """
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's 'ip' command"
    return None


# --------------------------------------------------------------------------
# address checks


def _allowed(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(net.version == a.version and net.subnet_of(a)  # type: ignore[arg-type]
               for a in ALLOWED_NETWORKS)


def _allowed_text() -> str:
    return " or ".join(map(str, ALLOWED_NETWORKS))


def check_interface(text: str) -> str:
    """An interface address ``"10.200.0.1/24"`` (or ``"fd00:200::1/64"``); its whole
    network must be allowed."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an interface address: {exc}") from None
    if not _allowed(iface.network):
        raise ValueError(f"{text}: a lab only uses addresses inside {_allowed_text()}")
    return str(iface)


def check_network(text: str) -> str:
    """A route destination ``"10.200.1.0/24"`` (or one address) inside the allowed ranges."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network: {exc}") from None
    if not _allowed(net):
        raise ValueError(f"{text}: a lab only routes inside {_allowed_text()}")
    return str(net)


def check_address(text: str, *, loopback: bool = False) -> str:
    """One address (a gateway, a ping target) inside the allowed ranges.

    With ``loopback``, 127.0.0.0/8 is allowed too (a host's own ``lo``).
    """
    try:
        addr = ipaddress.ip_address(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP address: {exc}") from None
    if loopback and addr.is_loopback:
        return str(addr)
    if not _allowed(ipaddress.ip_network(addr)):
        raise ValueError(f"{text}: a lab only talks to addresses inside {_allowed_text()}")
    return str(addr)


_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def check_ifname(name: str) -> str:
    """An interface name: 1-15 letters, digits, ``_ . -``."""
    if not _IFNAME.match(name):
        raise ValueError(f"{name!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return name


# --------------------------------------------------------------------------
# commands and namespaces


def _run(argv: list[str], *, check: bool = True, timeout: float = 10.0,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=input)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"{' '.join(argv)}: no end after {timeout:g} s") from exc
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def namespaces() -> list[str]:
    """Names of every named network namespace on the machine."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _new_namespace() -> str:
    for _ in range(1000):
        name = f"{RUN_PREFIX}{next(_counter)}"
        proc = _run(["ip", "netns", "add", name], check=False)
        if proc.returncode == 0:
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
            return name
        if "exists" not in proc.stderr:
            raise NetnsError(f"ip netns add {name} failed: {proc.stderr.strip()}")
    raise NetnsError("no free namespace name")


def pids_in(name: str) -> list[int]:
    """PIDs of the processes inside namespace ``name`` (this process left out)."""
    proc = _run(["ip", "netns", "pids", name], check=False)
    return [int(w) for w in proc.stdout.split() if w.isdigit() and int(w) != os.getpid()]


def delete_namespace(name: str) -> None:
    """Stop the processes left inside ``name`` (by PID) and delete it.

    Only for namespaces this kit made (the name starts with ``ingt-``).
    """
    if not name.startswith(ROOT_PREFIX):
        raise ValueError(f"{name!r} was not made by this kit")
    for pid in pids_in(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _run(["ip", "netns", "delete", name], check=False)
    if os.path.exists(os.path.join(NETNS_DIR, name)):
        raise NetnsError(f"namespace {name} is still there after 'ip netns delete'")


def sweep(prefix: str = RUN_PREFIX) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (this run's, by default)."""
    if not prefix.startswith(ROOT_PREFIX):
        raise ValueError(f"{prefix!r} is not a prefix of this kit")
    gone = []
    for name in namespaces():
        if name.startswith(prefix):
            with contextlib.suppress(NetnsError):
                delete_namespace(name)
                gone.append(name)
    return gone


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(min_age_s: float = 600.0) -> list[str]:
    """Delete namespaces of this kit whose creating process is gone.

    A namespace counts as stale when the PID in its name is not running and
    it is at least ``min_age_s`` old (so that a run in another PID
    namespace, where that PID means something else, is left alone while it
    can still be running).
    """
    gone = []
    now = time.time()
    for name in namespaces():
        match = _STALE_NAME.match(name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            age = now - os.stat(os.path.join(NETNS_DIR, name)).st_mtime
        except FileNotFoundError:
            continue
        if age >= min_age_s:
            with contextlib.suppress(NetnsError):
                delete_namespace(name)
                gone.append(name)
    return gone


def _on_signal(signum: int, frame: Any) -> None:
    sweep()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_exit_sweep() -> None:
    """Sweep this run's namespaces at exit and on SIGTERM/SIGHUP (once per process).

    A signal handler is only installed where none was (the default action),
    and only from the main thread.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    atexit.register(sweep)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


# --------------------------------------------------------------------------
# entering a namespace (this thread only)

_libc: Any = None


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the calling thread inside network namespace ``name``, then back.

    Sockets and tun/tap devices opened inside stay in that namespace after
    the block; other threads never move. Note that ``/sys/class/net`` still
    shows the mount's view (the original namespace): read interface facts
    with ioctls on a socket opened inside instead.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


# --------------------------------------------------------------------------
# hosts


class Host:
    """One network namespace, with helpers that only act inside it.

    IPv6 is off in a host unless its lab says otherwise: IPv6's own chatter
    (router solicitations, MLD reports) would otherwise reach every device
    under test. With it on, duplicate address detection is off
    (``accept_dad=0`` for every interface made afterwards, and addresses are
    added ``nodad``), so an address is usable at once rather than after a
    second or two.
    """

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self._procs: list[subprocess.Popen[Any]] = []
        self._ifcounters: dict[str, Iterator[int]] = {}
        for conf in ("all", "default"):
            if lab.ipv6:
                self.sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", 0)
                self.sysctl(f"net.ipv6.conf.{conf}.accept_dad", 0)
            else:
                self.sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", 1)

    def __repr__(self) -> str:
        return f"<Host {self.name}>"

    # commands

    def cmd(self, *argv: object) -> list[str]:
        """``argv`` as a command line that runs inside this host."""
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def run(self, *argv: object, check: bool = True, timeout: float = 10.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host and wait for it (text output captured).

        ``check`` raises :class:`NetnsError` on a non-zero exit status; a
        command still running after ``timeout`` seconds is killed.
        """
        return _run(self.cmd(*argv), check=check, timeout=timeout, input=input)

    def popen(self, *argv: object, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside this host; it is stopped (by PID) at teardown."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.cmd(*argv), **kwargs)
        self._procs.append(proc)
        return proc

    def ip(self, *args: object, check: bool = True) -> str:
        """``ip -n <host> args...``; its standard output."""
        return _run(["ip", "-n", self.name, *map(str, args)], check=check).stdout

    def entered(self) -> contextlib.AbstractContextManager[None]:
        """The calling thread inside this host for a ``with`` block (see :func:`entered`)."""
        return entered(self.name)

    def stop_processes(self, grace_s: float = 2.0) -> None:
        """Stop what :meth:`popen` started: SIGTERM, then SIGKILL after ``grace_s``."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace_s)
        self._procs.clear()

    # interfaces

    def ifname(self, stem: str = "eth") -> str:
        """A fresh interface name in this host: ``eth0``, ``eth1``, ..."""
        counter = self._ifcounters.setdefault(stem, itertools.count())
        return check_ifname(f"{stem}{next(counter)}")

    def up(self, ifname: str) -> None:
        self.ip("link", "set", check_ifname(ifname), "up")

    def add_address(self, ifname: str, address: str) -> None:
        """Give ``ifname`` an address like ``"10.200.0.1/24"`` (an IPv6 one without
        duplicate address detection)."""
        addr = check_interface(address)
        extra = ["nodad"] if ":" in addr else []
        self.ip("addr", "add", addr, "dev", check_ifname(ifname), *extra)

    def link(self, other: Host, addr_self: str | None = "10.200.0.1/24",
             addr_other: str | None = "10.200.0.2/24", *, mtu: int | None = None
             ) -> tuple[str, str]:
        """A veth pair from this host to ``other``, both ends up and addressed.

        The pair is created inside both namespaces at once. ``None`` leaves
        an end without an address. Returns ``(name here, name there)``.
        """
        if addr_self is not None:
            check_interface(addr_self)
        if addr_other is not None:
            check_interface(addr_other)
        mine, theirs = self.ifname(), other.ifname()
        extra = ["mtu", str(mtu)] if mtu else []
        _run(["ip", "link", "add", mine, "netns", self.name, *extra, "type", "veth",
              "peer", "name", theirs, "netns", other.name, *extra])
        for host, ifname, addr in ((self, mine, addr_self), (other, theirs, addr_other)):
            if addr is not None:
                host.add_address(ifname, addr)
            host.up(ifname)
        return mine, theirs

    def bridge(self, name: str = "br0", *ports: str) -> str:
        """A bridge in this host (up, STP off) with ``ports`` attached."""
        self.ip("link", "add", check_ifname(name), "type", "bridge", "stp_state", "0")
        self.up(name)
        for port in ports:
            self.attach(port, name)
        return name

    def attach(self, ifname: str, bridge: str) -> None:
        """Put ``ifname`` on ``bridge`` and bring it up."""
        self.ip("link", "set", check_ifname(ifname), "master", check_ifname(bridge))
        self.up(ifname)

    def tap(self, name: str, bridge: str | None = None) -> str:
        """A persistent tap device in this host, up, on ``bridge`` if given.

        A device under test attaches to it by name (``TUNSETIFF``).
        """
        self.ip("tuntap", "add", "name", check_ifname(name), "mode", "tap")
        if bridge is not None:
            self.attach(name, bridge)
        else:
            self.up(name)
        return name

    def tun(self, name: str) -> str:
        """A persistent tun device in this host, up (routes may point at it)."""
        self.ip("tuntap", "add", "name", check_ifname(name), "mode", "tun")
        self.up(name)
        return name

    # routing

    def add_route(self, dest: str, *, via: str | None = None, dev: str | None = None,
                  table: int | None = None) -> None:
        """A route to ``dest`` (inside the allowed ranges) via a gateway and/or device."""
        args = ["route", "add", check_network(dest)]
        if ":" in dest:
            args.insert(0, "-6")
        if via is not None:
            args += ["via", check_address(via)]
        if dev is not None:
            args += ["dev", check_ifname(dev)]
        if via is None and dev is None:
            raise ValueError("a route needs via= or dev=")
        if table is not None:
            args += ["table", str(int(table))]
        self.ip(*args)

    def add_rule(self, *, table: int, iif: str | None = None, priority: int | None = None
                 ) -> None:
        """A policy routing rule: look up ``table`` (for packets arriving on ``iif``)."""
        args = ["rule", "add"]
        if iif is not None:
            args += ["iif", check_ifname(iif)]
        if priority is not None:
            args += ["priority", str(int(priority))]
        self.ip(*args, "table", str(int(table)))

    def sysctl(self, name: str, value: object) -> None:
        """Set a ``net.*`` sysctl inside this host only.

        Written through ``/proc/sys`` from this thread while it is inside the
        namespace: the kernel resolves ``/proc/sys/net`` by the writer's
        namespace.
        """
        if not re.match(r"^net\.[A-Za-z0-9_.\-]+$", name) or ".." in name:
            raise ValueError(f"{name!r}: only net.* settings are per namespace")
        path = "/proc/sys/" + name.replace(".", "/")
        with self.entered(), open(path, "w") as f:
            f.write(str(value))

    def wait_listening(self, port: int, timeout_s: float = 5.0) -> None:
        """Wait until a TCP socket listens on ``port`` inside this host."""
        deadline = time.monotonic() + timeout_s
        while not self.run("ss", "-Hltn", f"sport = :{int(port)}").stdout.strip():
            if time.monotonic() > deadline:
                raise NetnsError(f"{self.name}: nothing listens on TCP port {port} "
                                 f"after {timeout_s:g} s")
            time.sleep(0.02)

    def ping(self, address: str, count: int = 1, timeout_s: float = 2.0) -> bool:
        """True when ``address`` (in the lab ranges, or loopback) answers one of ``count`` pings."""
        proc = self.run("ping", "-n", "-q", "-c", str(count), "-i", "0.2",
                        "-W", f"{timeout_s:g}", check_address(address, loopback=True), check=False,
                        timeout=timeout_s * count + 5)
        return proc.returncode == 0


class Switch(Host):
    """A host that only holds a bridge, ``br0``: plug hosts (and taps) into it."""

    BRIDGE = "br0"

    def __init__(self, lab: Lab, name: str) -> None:
        super().__init__(lab, name)
        self.bridge(self.BRIDGE)

    def plug(self, host: Host, address: str | None = None, *, mtu: int | None = None) -> str:
        """A veth from ``host`` to the bridge; returns the interface name in ``host``."""
        theirs, mine = host.link(self, address, None, mtu=mtu)
        self.attach(mine, self.BRIDGE)
        return theirs

    def tap(self, name: str, bridge: str | None = BRIDGE) -> str:
        """A persistent tap on the bridge (see :meth:`Host.tap`)."""
        return super().tap(name, bridge)


class Lab:
    """The hosts of one test; :meth:`close` (or the ``with`` block's end) removes them all.

    ``ipv6``: IPv6 on in the hosts (link-local addresses, plus those a test
    gives inside the allowed IPv6 ranges).
    """

    def __init__(self, *, ipv6: bool = False) -> None:
        reason = unavailable()
        if reason is not None:
            raise NetnsError(reason)
        install_exit_sweep()
        self.ipv6 = ipv6
        self.hosts: list[Host] = []

    def __call__(self) -> Host:
        return self.host()

    def host(self) -> Host:
        """A new host: a namespace with ``lo`` up and nothing else."""
        return self._add(Host)

    def switch(self) -> Switch:
        """A new :class:`Switch`."""
        return self._add(Switch)  # type: ignore[return-value]

    def _add(self, cls: type[Host]) -> Host:
        name = _new_namespace()
        try:
            host = cls(self, name)
        except BaseException:
            delete_namespace(name)
            raise
        self.hosts.append(host)
        return host

    def close(self) -> None:
        """Stop every host's processes and delete every namespace (also after errors)."""
        failed = []
        hosts, self.hosts = self.hosts, []
        for host in hosts:
            try:
                host.stop_processes()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                failed.append(f"{host.name}: {exc}")
        for host in reversed(hosts):
            try:
                delete_namespace(host.name)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                failed.append(f"{host.name}: {exc}")
        if failed:
            raise NetnsError("teardown failed: " + "; ".join(failed))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
