"""The opt-in sandbox of the ``unix`` target: a privilege drop and a seccomp filter.

With ``--sandbox on`` (or ``kill``) and/or ``--user NAME`` the runtime, once
the appliance is *ready* (its ports are bound, see below), does in this
order: ``setgroups([])``, ``setgid``, ``setuid`` to ``--user`` (when it
runs as root), ``prctl(PR_SET_NO_NEW_PRIVS)``, then loads a seccomp filter
that lets the syscalls of :data:`BASE` and of the plugins' hook
``ingot_sandbox_syscalls`` through and answers every other one with EPERM
(``on``) or kills the process with SIGSYS (``kill``). The filter is
synchronised to every thread of the process (``SECCOMP_FILTER_FLAG_TSYNC``)
and threads started later inherit it. :data:`FORBIDDEN` syscalls (``execve``,
``ptrace``, ``mount``, module loading, ``io_uring`` ...) are never allowed,
also when a plugin asks: the boot stops with a clear error instead.

When "ready" is: an appliance that has a ``ready`` attribute with an
awaitable ``wait()`` (an :class:`asyncio.Event`: the dns, echo and firewall
appliances set it once every socket listens) is sandboxed right after it
sets it, while ``start()`` keeps running; privileged ports (<1024) bound
before that stay bound after the drop. An appliance without ``ready`` is
sandboxed after its devices connect and before ``start()`` runs, so it never
runs unsandboxed, but it cannot bind a privileged port as another user. If
``start()`` ends before it is ready, nothing is installed (it is finishing).

uvloop is not used in a sandboxed image: libuv keeps an ``io_uring`` whose
operations seccomp does not see and that keep the credentials of the user who
created it (root, before the drop), so the runtime runs on asyncio's own loop.

The bindings are :mod:`pyseccomp` (ctypes over the host's libseccomp.so.2,
API-compatible with libseccomp's own Python bindings). When they or the
library cannot be loaded, ``--sandbox on`` stops the boot (exit 2): an image
never runs without the sandbox it was asked for.

How :data:`BASE` was measured (x86_64, CPython 3.11, Debian 12): the hello,
echo and dns images ran under ``strace -f -qq -o TRACE``, with TCP and UDP
clients (``dig`` queries, an AXFR, a TSIG-signed ``nsupdate`` that writes
the dns store), then SIGTERM; the syscalls in TRACE after the last
``listen(`` (hello: after the first ``epoll_wait(``) were counted
(``grep -oE '^[0-9]+ +[a-z0-9_]+\\(' TRACE``). Measured: hello 17, echo 22
(asyncio loop; 28 on uvloop, with ``io_uring_enter``), dns 27 distinct
syscalls. :data:`BASE` is their union plus what the same code paths reach
on other inputs (threads of ``asyncio.to_thread``, ``connect`` for NOTIFY
and secondaries, store writes, late imports from the image's zip, timers).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

BASE: tuple[str, ...] = (
    # the event loop and plain I/O
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll",
    "ppoll", "select", "pselect6", "read", "readv", "pread64", "write", "writev", "pwrite64",
    "close", "dup", "dup3", "pipe2", "eventfd2", "socketpair",
    # sockets
    "socket", "bind", "listen", "connect", "accept", "accept4", "setsockopt", "getsockopt",
    "getsockname", "getpeername", "shutdown", "recvfrom", "sendto", "recvmsg", "sendmsg",
    "recvmmsg", "sendmmsg", "sendfile",
    # memory
    "mmap", "munmap", "mprotect", "mremap", "brk", "madvise",
    # threads, signals, time, identity
    "futex", "set_robust_list", "rseq", "sched_yield", "sched_getaffinity", "gettid",
    "getpid", "getppid", "getuid", "geteuid", "getgid", "getegid", "tgkill", "rt_sigaction",
    "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall", "clock_gettime",
    "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "getrandom", "uname",
    "exit", "exit_group",
    # files: late imports from the image, stores (atomic rename, fsync, locks)
    "openat", "newfstatat", "fstat", "statx", "lseek", "getdents64", "fcntl", "flock",
    "readlinkat", "faccessat", "faccessat2", "getcwd", "fsync", "fdatasync", "ftruncate",
    "renameat", "renameat2", "unlinkat", "mkdirat", "utimensat",
)
"""Syscalls every sandboxed image allows (names portable across 64-bit Linux)."""

LEGACY: tuple[str, ...] = (
    "open", "stat", "lstat", "access", "readlink", "rename", "unlink", "mkdir", "rmdir",
    "epoll_wait", "poll", "select", "pipe", "dup2", "time",
)
"""Older spellings of :data:`BASE` syscalls that glibc or CPython still use on
the architectures that have them (x86_64); skipped where they do not exist."""

FORBIDDEN: frozenset[str] = frozenset({
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount",
    "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "bpf", "perf_event_open", "setns", "unshare", "keyctl",
    "add_key", "request_key", "userfaultfd", "open_by_handle_at", "name_to_handle_at",
    "iopl", "ioperm", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "capset", "personality", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "quotactl", "acct", "syslog", "fanotify_init", "pidfd_getfd", "seccomp", "prctl",
    "lookup_dcookie", "vhangup",
})
"""Syscalls no sandboxed image allows, whatever a plugin asks."""

IOCTLS: dict[str, int] = {
    "TCGETS": 0x5401, "TIOCGPGRP": 0x540F, "TIOCGWINSZ": 0x5413, "FIONREAD": 0x541B,
    "FIONBIO": 0x5421, "FIONCLEX": 0x5450, "FIOCLEX": 0x5451,
}
"""The only ``ioctl`` requests allowed (CPython's isatty, blocking mode and
close-on-exec; terminal reads). ``TIOCSTI`` and device ioctls are refused."""

CLONE_NAMESPACES = (0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000
                    | 0x10000000 | 0x20000000 | 0x40000000)
"""``CLONE_NEW*`` flags: ``clone`` is allowed (threads) only without them.
``clone3`` passes its flags in memory seccomp cannot read, so it gets ENOSYS
and glibc falls back to ``clone``."""

MODES = ("off", "on", "kill")


class SandboxError(Exception):
    """The sandbox cannot be built or installed; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def bindings() -> Any:
    """The :mod:`pyseccomp` module over the host's libseccomp; ``SandboxError`` if absent."""
    try:
        import pyseccomp
    except ImportError as exc:
        raise SandboxError(f"the seccomp bindings are not in this image ({exc})",
                           hint="install pyseccomp where the image is built and rebuild it, "
                           "or run with --sandbox off") from None
    except (OSError, RuntimeError) as exc:  # pyseccomp loads the library at import
        raise SandboxError(f"libseccomp cannot be loaded: {exc}",
                           hint="install libseccomp2 (apt-get install libseccomp2), "
                           "or run with --sandbox off") from None
    return pyseccomp


def resolve(names: Iterable[str], seccomp: Any | None = None) -> dict[str, int]:
    """Syscall numbers of ``names`` on this architecture; unknown names raise."""
    sc = seccomp or bindings()
    out: dict[str, int] = {}
    for name in names:
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if number < 0:
            raise SandboxError(f"syscall {name!r} is unknown on this architecture",
                               hint="a plugin's ingot_sandbox_syscalls names it; fix the name")
        out[name] = number
    return out


def allowlist(extra: Iterable[str] = (), seccomp: Any | None = None) -> dict[str, int]:
    """:data:`BASE`, the :data:`LEGACY` names this architecture has, and ``extra``."""
    sc = seccomp or bindings()
    extra = list(extra)
    bad = sorted(set(extra) & FORBIDDEN)
    if bad:
        raise SandboxError("a plugin asks the sandbox to allow " + ", ".join(bad)
                           + ", which it never allows",
                           hint="run that appliance with --sandbox off")
    names = resolve(BASE, sc)
    for name in LEGACY:
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if number >= 0:
            names.setdefault(name, number)
    names.update(resolve(extra, sc))
    return names


@dataclass(frozen=True)
class User:
    """Whom to become: uid, gid and a name for the log."""

    uid: int
    gid: int
    name: str


def parse_user(text: str) -> User | None:
    """``--user``: empty (keep), ``uid:gid`` or a user name from the passwd database."""
    text = text.strip()
    if not text:
        return None
    uid_text, colon, gid_text = text.partition(":")
    if colon:
        try:
            return User(int(uid_text), int(gid_text), text)
        except ValueError:
            raise SandboxError(f"--user {text!r}: expected a user name or uid:gid") from None
    import pwd

    try:
        entry = pwd.getpwnam(text)
    except KeyError:
        raise SandboxError(f"--user {text!r}: no such user",
                           hint="give a user name of this host or uid:gid") from None
    return User(entry.pw_uid, entry.pw_gid, text)


def drop_privileges(user: User) -> None:
    """Become ``user`` for good: supplementary groups, gid, then uid (every thread)."""
    if os.geteuid() != 0:
        if (os.getuid(), os.getgid()) == (user.uid, user.gid):
            return
        raise SandboxError(f"--user {user.name}: changing the user needs root",
                           hint="start the image as root, or leave --user empty")
    os.setgroups([])
    os.setgid(user.gid)
    os.setuid(user.uid)
    if os.getuid() != user.uid or os.geteuid() != user.uid:  # pragma: no cover - defensive
        raise SandboxError(f"--user {user.name}: the process is still uid {os.geteuid()}")


def _no_new_privs() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs = 38
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise SandboxError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(code)}")


def install(allow: set[str] | dict[str, int], default_action: str = "errno",
            log: Any = None) -> int:
    """Load a seccomp filter allowing ``allow`` (names) plus :data:`BASE`.

    ``default_action`` is ``errno`` (other syscalls fail with EPERM) or
    ``kill`` (SECCOMP_RET_KILL_PROCESS: the process dies by SIGSYS). Sets
    PR_SET_NO_NEW_PRIVS first. Returns the number of allowed syscalls.
    """
    sc = bindings()
    numbers = allow if isinstance(allow, dict) else allowlist(allow, sc)
    if default_action == "errno":
        action = sc.ERRNO(errno.EPERM)
    elif default_action == "kill":
        action = sc.KILL_PROCESS
    else:
        raise ValueError(f"default_action must be 'errno' or 'kill', not {default_action!r}")
    try:
        flt = sc.SyscallFilter(action)
        flt.set_attr(sc.Attr.CTL_TSYNC, 1)
        for name, number in sorted(numbers.items()):
            if name not in ("clone", "clone3"):
                flt.add_rule(sc.ALLOW, number)
        if "ioctl" not in numbers:  # a plugin may ask for every ioctl; else these only
            for request in IOCTLS.values():
                flt.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
        flt.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NAMESPACES, 0))
        flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        _no_new_privs()
        flt.load()
    except OSError as exc:
        raise SandboxError(f"the seccomp filter cannot be loaded: {exc}",
                           hint="the kernel needs CONFIG_SECCOMP_FILTER; or run with "
                           "--sandbox off") from None
    count = len(numbers.keys() - {"clone", "clone3", "ioctl"}) + 2  # + ioctl and clone
    if log is not None:
        log.debug("seccomp filter loaded", allowed=count, default=default_action)
    return count


class Guard:
    """What the runtime installs once the appliance is ready (see the module docstring)."""

    def __init__(self, mode: str, user: User | None, allow: dict[str, int]) -> None:
        self.mode = mode
        self.user = user
        self.allow = allow

    @classmethod
    def prepare(cls, mode: str, user_text: str, extra: Iterable[str]) -> Guard | None:
        """Check everything that can fail before any device connects; None when off."""
        user = parse_user(user_text)
        if mode == "off":
            return cls(mode, user, {}) if user else None
        if mode not in MODES:
            raise SandboxError(f"--sandbox {mode!r} is not one of " + ", ".join(MODES))
        return cls(mode, user, allowlist(extra))

    def install(self, log: Any, when: str) -> None:
        """Drop privileges, then load the filter; logs ``sandbox installed``."""
        if self.user is not None:
            drop_privileges(self.user)
        count = 0
        if self.mode != "off":
            count = install(self.allow, "kill" if self.mode == "kill" else "errno", log=log)
        log.info("sandbox installed", mode=self.mode, syscalls=count,
                 user=self.user.name if self.user else "(kept)", uid=os.getuid(),
                 gid=os.getgid(), when=when)


def has_ready(app: Any) -> bool:
    """Whether the appliance signals readiness (a ``ready`` attribute with ``wait()``)."""
    return callable(getattr(getattr(app, "ready", None), "wait", None))


async def when_ready(app: Any, task: Any) -> bool:
    """Wait until ``app.ready`` is set (True) or ``task`` (its ``start()``) ends (False)."""
    import asyncio

    waiter = asyncio.ensure_future(app.ready.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not waiter.done():
            waiter.cancel()
    return waiter.done() and not waiter.cancelled() and not task.done()
