"""PID 1 of a ``vm`` or ``qubes`` image.

The kernel starts ``/init`` (a two-line Python script calling :func:`main`)
with the words after ``--`` on its command line as arguments: those are the
appliance's runtime keys (``-- --port 53 --log-level debug``). PID 1 then:

Only the words after ``--`` are keys: a word before it that the kernel
does not know (and would hand to PID 1 as an argument) is not.

1. mounts ``/proc``, ``/sys``, ``/dev`` (devtmpfs), ``/tmp`` and ``/run`` (tmpfs);
2. loads the kernel modules listed in ``_ingot/vm.json`` (dependencies
   first; none with a kernel that has everything built in);
3. brings ``lo`` and every network interface up and gives addresses and
   default routes from the kernel command line::

       ingot.ip=eth0:10.0.2.15/24,eth0:fd00::15/64   addresses (IPv4 and IPv6)
       ingot.gw=10.0.2.2  ingot.gw6=fd00::1           default routes
       ingot.up=all|none|eth0,eth1                    interfaces set up (default all)
       ingot.stop_timeout=10                          seconds the appliance has to stop

4. forks the appliance (the runtime, in the same interpreter: no second
   start-up) and reaps every child;
5. on SIGTERM, on SIGINT (Ctrl-Alt-Del) or when the ACPI power button is
   pressed (QEMU's ``system_powerdown``; read as KEY_POWER from
   ``/dev/input/event*``), sends the appliance SIGTERM, waits for it, then
   syncs and powers the machine off. When the appliance exits on its own,
   the machine powers off too: a VM image lives as long as its appliance.

Log lines carry ``up=`` (seconds since the kernel started), so that the
kernel's share and PID 1's share of a boot can be told apart.
"""

from __future__ import annotations

import os
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

APP = "/usr/lib/ingot"
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
RB_POWER_OFF = 0x4321FEDC
RB_DISABLE_CAD = 0
SYS_FINIT_MODULE = 313  # x86_64
EV_KEY, KEY_POWER = 1, 116
EVENT_SIZE = 24  # struct input_event on 64-bit: timeval, type, code, value


class Init:
    """The state of PID 1."""

    def __init__(self, argv: list[str]) -> None:
        os.environ["INGOT_LOG_UPTIME"] = "1"
        from . import log as logmod

        logmod.SINK.uptime = True
        self.log = logmod.get("init")
        self.argv = argv
        self.libc: Any = None
        self.child = 0
        self.stopping = ""
        self.inputs: dict[str, int] = {}
        self.cmdline: dict[str, str] = {}

    # -- system calls --------------------------------------------------------
    def _libc(self) -> Any:
        if self.libc is None:
            import ctypes
            self.libc = ctypes.CDLL(None, use_errno=True)
        return self.libc

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            import ctypes
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(self, fstype: str, target: str, flags: int, data: str = "") -> None:
        os.makedirs(target, exist_ok=True)
        libc = self._libc()
        try:
            self._check(libc.mount(fstype.encode(), target.encode(), fstype.encode(), flags,
                                   data.encode() or None), f"mount {fstype} on {target}")
        except OSError as exc:
            if exc.errno != 16:  # EBUSY: already mounted
                raise

    def load_module(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc = self._libc()
            result = libc.syscall(SYS_FINIT_MODULE, fd, b"", 0)
            if result != 0:
                import ctypes
                err = ctypes.get_errno()
                if err != 17:  # EEXIST: loaded already
                    raise OSError(err, f"load {os.path.basename(path)}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def power_off(self) -> None:
        self.log.info("powering off", uptime=f"{_uptime():.3f}")
        os.sync()
        if os.getpid() == 1:
            self._libc().reboot(RB_POWER_OFF)
            time.sleep(5)  # the kernel stops us; PID 1 must never return

    # -- boot ----------------------------------------------------------------
    def read_cmdline(self) -> None:
        try:
            with open("/proc/cmdline") as fh:
                text = fh.read()
        except OSError:
            text = ""
        words = text.split()
        if "--" in words:
            # the keys are what follows "--" (quotes as the kernel reads them), not every
            # word the kernel did not know and handed to PID 1 as an argument
            import shlex

            _, _, after = f" {text} ".partition(" -- ")
            try:
                self.argv = shlex.split(after)
            except ValueError:
                pass  # unbalanced quotes: keep the kernel's own split
        for word in words:
            if word == "--":
                break
            name, eq, value = word.partition("=")
            if eq and name.startswith("ingot."):
                self.cmdline[name[len("ingot."):]] = value

    def mounts(self) -> None:
        self.mount("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        self.mount("sysfs", "/sys", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        self.mount("devtmpfs", "/dev", MS_NOSUID, "mode=0755")
        self.mount("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, "mode=1777")
        self.mount("tmpfs", "/run", MS_NOSUID | MS_NODEV, "mode=0755")

    def modules(self) -> None:
        import json

        try:
            with open(os.path.join(APP, "_ingot", "vm.json")) as fh:
                listed = json.load(fh).get("modules", [])
        except FileNotFoundError:
            listed = []
        started = time.monotonic()
        failed = 0
        for path in listed:
            try:
                self.load_module(path)
            except OSError as exc:
                failed += 1
                self.log.warning("kernel module not loaded", module=os.path.basename(path),
                                 error=exc.strerror or str(exc))
        if listed:
            self.log.info("kernel modules loaded", count=len(listed) - failed,
                          ms=int((time.monotonic() - started) * 1000))

    def network(self) -> None:
        import ipaddress

        from .netlink import NetlinkError, Rtnl

        try:
            names = sorted(os.listdir("/sys/class/net"))
        except OSError:
            names = []
        wanted = self.cmdline.get("up", "all")
        up = ({"lo"} | set(names) if wanted == "all" else
              {"lo"} if wanted == "none" else {"lo", *wanted.split(",")})
        rtnl = Rtnl()
        try:
            for name in sorted(up):
                try:
                    rtnl.up(name)
                except OSError as exc:
                    self.log.error("interface not brought up", iface=name,
                                   error=exc.strerror or str(exc),
                                   hint="present: " + ",".join(names))
            for item in filter(None, self.cmdline.get("ip", "").split(",")):
                name, _, addr = item.partition(":")
                try:
                    rtnl.address(name, ipaddress.ip_interface(addr))
                    self.log.info("address", iface=name, address=addr)
                except (OSError, ValueError) as exc:
                    self.log.error("address not set", iface=name, address=addr,
                                   error=getattr(exc, "strerror", None) or str(exc))
            for key in ("gw", "gw6"):
                if self.cmdline.get(key):
                    try:
                        rtnl.default_route(ipaddress.ip_address(self.cmdline[key]))
                        self.log.info("default route", gateway=self.cmdline[key])
                    except (NetlinkError, OSError, ValueError) as exc:
                        self.log.error("default route not set", gateway=self.cmdline[key],
                                       error=getattr(exc, "strerror", None) or str(exc))
        finally:
            rtnl.close()
        self.log.info("network up", interfaces=",".join(n for n in names if n in up))

    def watch_inputs(self) -> None:
        """Open input devices that appeared (the power button's among them)."""
        try:
            found = sorted(n for n in os.listdir("/dev/input") if n.startswith("event"))
        except OSError:
            return
        for name in found:
            if name not in self.inputs:
                try:
                    self.inputs[name] = os.open(f"/dev/input/{name}",
                                                os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:
                    continue

    def power_pressed(self, fd: int) -> bool:
        import struct

        try:
            data = os.read(fd, EVENT_SIZE * 16)
        except OSError:  # nothing to read, or the device went away
            return False
        for pos in range(0, len(data) - EVENT_SIZE + 1, EVENT_SIZE):
            kind, code, value = struct.unpack_from("=HHi", data, pos + 16)
            if kind == EV_KEY and code == KEY_POWER and value == 1:
                return True
        return False

    # -- the appliance -------------------------------------------------------
    def start_appliance(self) -> None:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the appliance
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                os.setsid()
                from .runtime import main as run
                code = run(self.argv, image=APP)
            except BaseException:  # noqa: BLE001 - the child must never return into PID 1
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.child = pid

    def stop(self, why: str) -> None:
        if self.stopping or not self.child:
            return
        self.stopping = why
        self.log.info("stopping the appliance", reason=why)
        try:
            os.kill(self.child, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.deadline = time.monotonic() + float(self.cmdline.get("stop_timeout", "10"))

    def loop(self) -> int:
        import select

        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        self.deadline = 0.0
        code = 1
        checks = 0
        while True:
            while True:  # reap every exited child (orphans too)
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid, status = 0, 0
                if pid == 0:
                    break
                if pid == self.child:
                    code = os.waitstatus_to_exitcode(status)
                    self.log.info("appliance exited", exit_code=code)
                    self.child = 0
            if not self.child:
                return code
            if self.stopping and time.monotonic() > self.deadline:
                self.log.warning("appliance did not stop in time: killing it")
                os.kill(self.child, signal.SIGKILL)
                self.deadline = time.monotonic() + 5
            if checks < 30:  # input devices appear while drivers probe
                self.watch_inputs()
                checks += 1
            fds = [rfd, *self.inputs.values()]
            ready, _, _ = select.select(fds, [], [], 1.0)
            for fd in ready:
                if fd == rfd:
                    try:
                        signums = os.read(rfd, 64)
                    except BlockingIOError:
                        signums = b""
                    for num in signums:
                        if num in (signal.SIGTERM, signal.SIGINT):
                            self.stop(signal.Signals(num).name)
                elif self.power_pressed(fd):
                    self.stop("power button")

    def run(self) -> int:
        self.log.info("pid 1 started", uptime=f"{_uptime():.3f}")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)
        if os.getpid() == 1:
            self.mounts()
            self._libc().reboot(RB_DISABLE_CAD)  # Ctrl-Alt-Del sends SIGINT
        self.read_cmdline()
        self.modules()
        self.network()
        self.watch_inputs()
        self.start_appliance()
        return self.loop()


def _uptime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def main(argv: list[str]) -> int:
    """Run PID 1 (see the module docstring); powers off and never returns as PID 1."""
    init = Init(argv)
    code = 1
    try:
        code = init.run()
    except BaseException as exc:  # noqa: BLE001 - PID 1 must power off, never panic
        init.log.error("pid 1 failed", error=f"{type(exc).__name__}: {exc}")
        import traceback
        traceback.print_exc()
    finally:
        if os.getpid() == 1:
            init.power_off()
    return code
