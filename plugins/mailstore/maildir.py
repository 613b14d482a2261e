"""A :class:`~.store.MailStore` as real Maildir++ on the host file system.

Layout (readable by Dovecot, mutt, Python's :mod:`mailbox`)::

    root/.ingot-lock                  flock held while a store is open
    root/<user>/                      the user's INBOX maildir
    root/<user>/{tmp,new,cur}/
    root/<user>/.<mailbox>/           every other mailbox (Maildir++), with
    root/<user>/.<mailbox>/maildirfolder  its marker file
    <maildir>/ingot-state             {"uidvalidity": .., "uidnext": ..}
    <maildir>/dovecot-keywords        keyword index, Dovecot's format
    root/<user>/ingot-uidvalidity     the last UIDVALIDITY handed out
    root/<user>/ingot-subscriptions   subscribed mailbox names, one per line
    <mailbox folder>/ingot-cache      what readers derived from the messages (IMAP)

Mailbox names map to Maildir++ folder names segment by segment: in each
``/``-separated segment ``%`` becomes ``%25`` and ``.`` becomes ``%2E``; the
segments are joined with ``.`` and prefixed with ``.`` (``Lists/ietf.org``
is ``.Lists.ietf%2Eorg``). ``INBOX`` is the user folder itself. A folder
name must fit in 255 bytes, else :class:`~.store.InvalidName`.

Messages. A delivery writes ``tmp/<unique>`` (the Maildir spec's
``<sec>.M<usec>P<pid>Q<n>R<random>.<host>``, time and randomness from the
constructor's ``clock`` and ``random``), sets its mtime to the internal
date, fsyncs it, renames it to ``new/<unique>,S=<size>,U=<uid>`` (or, when
flags are given, straight to ``cur/<unique>,S=<size>,U=<uid>:2,<letters>``)
and fsyncs that folder: the rename is the commit, so a crash leaves the
whole message or nothing in ``new/``/``cur/`` (at most a leftover in
``tmp/``). Listing moves messages from ``new/`` to ``cur/`` (adding
``:2,``) and gives every message without ``U=`` (delivered by another
agent) the next UID, by mtime; such renames are fsynced before the list is
returned. A message's UID lives in its file name; ``S=`` is its exact size,
its mtime its internal date.

UIDs. ``ingot-state`` is rewritten (temporary file in ``tmp/``, fsync,
rename, fsync) when a mailbox is created and before messages are removed,
so it always covers every UID that ever left the store. When a mailbox is
first opened, ``uidnext`` is ``max(state, highest U= + 1)``; a delivery is
O(1): the UID comes from that counter and is kept only in the new file's
name. A duplicated ``U=`` (a file copied by hand) gets a new UID. A missing
state file gives the mailbox a new UIDVALIDITY (the UIDs in the names stay).
UIDVALIDITY is the clock's seconds, raised above the last one the user's
mailboxes had (``ingot-uidvalidity``), so a mailbox deleted and created
again (even in the same second, even after a restart) gets a new one.

Flags are Maildir info letters: ``D`` \\Draft, ``F`` \\Flagged, ``R``
\\Answered, ``S`` \\Seen, ``T`` \\Deleted; other capital letters (``P``
passed) are kept as they are but not reported. Keywords are the letters
``a``..``z``, indexed by the per-mailbox ``dovecot-keywords`` file (lines
``<index> <keyword>``, as Dovecot does): at most 26 keywords per mailbox.

Copies are hard links into the destination (same bytes and mtime; copied
through ``tmp/`` when the file system refuses links). Deleting a mailbox
renames its folder into the INBOX's ``tmp/`` (``ingot-trash-*``) and then
removes it. Leftover files in ``tmp/`` are removed when the mailbox is
first opened if they are older than 36 hours (the Maildir spec's rule:
another delivery agent may be writing them); the store's own leftovers
(``ingot-*``) are removed at every open.

One store per root at a time: the constructor takes an exclusive ``flock``
on ``root/.ingot-lock`` and raises :class:`~.store.StoreFailure` if another
store (in any process) holds it. Other Maildir readers may read meanwhile;
other agents may deliver into ``new/`` (they get UIDs at the next list).
Dovecot keeps its own UIDs (``dovecot-uidlist``), which differ from ours.

File I/O runs in worker threads by default (``threads=True``): measured
with 10 concurrent deliveries, overlapping fsyncs (the file system commits
them together) beat running them one after another on the event loop's
thread; sequential deliveries are somewhat faster with ``threads=False``
(``python -m tests.integration.test_mailstore bench``).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ingot.signatures import Closed

from .store import (
    INBOX,
    SEEN,
    InvalidFlag,
    InvalidName,
    MailboxExists,
    MailboxNotFound,
    MailboxStatus,
    MessageInfo,
    MessageNotFound,
    StoreFailure,
    check_flags,
    check_mailbox,
    check_uid,
    check_user,
    is_below,
    begin_rename,
    sorted_uids,
)

LOCK = ".ingot-lock"
STATE = "ingot-state"
UIDVALIDITY = "ingot-uidvalidity"
SUBSCRIPTIONS = "ingot-subscriptions"
CACHE = "ingot-cache"
SCAN_SETTLE_NS = 50_000_000
"""A scan is reused only if it started this long after new/ and cur/ last changed."""
KEYWORDS = "dovecot-keywords"
FOLDER_MARK = "maildirfolder"
TMP_MAX_AGE = 36 * 3600
NAME_MAX = 255

FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S",
                "\\Deleted": "T"}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def encode_folder(mailbox: str) -> str:
    """The Maildir++ folder name of a mailbox other than INBOX (``.a.b``)."""
    segs = [s.replace("%", "%25").replace(".", "%2E") for s in mailbox.split("/")]
    return "." + ".".join(segs)


def decode_folder(folder: str) -> str:
    segs = folder[1:].split(".")
    return "/".join(s.replace("%2E", ".").replace("%2e", ".").replace("%25", "%") for s in segs)


def parse_name(name: str) -> tuple[str, dict[str, str], str | None]:
    """``unique,K=V,..:2,info`` -> (unique, fields, info letters or None)."""
    base, sep, info = name.partition(":")
    letters = info[2:] if sep and info.startswith("2,") else None
    unique, *rest = base.split(",")
    fields = {}
    for item in rest:
        k, eq, v = item.partition("=")
        if eq:
            fields[k] = v
    return unique, fields, letters


def build_name(unique: str, fields: dict[str, str], letters: str | None) -> str:
    base = unique + "".join(f",{k}={v}" for k, v in fields.items())
    return base if letters is None else f"{base}:2,{letters}"


class _Box:
    """One open mailbox: its folder, counters and what is known of its files."""

    def __init__(self, user: str, name: str, path: str) -> None:
        self.user = user
        self.name = name
        self.path = path
        self.uidvalidity = 0
        self.uidnext = 1
        self.saved_uidnext = 0  # what ingot-state says
        self.files: dict[int, str] = {}  # uid -> "cur/<name>" or "new/<name>"
        self.stats: dict[str, tuple[int, int]] = {}  # file name -> (size, mtime)
        self.inflight: set[int] = set()
        self.keywords: dict[int, str] = {}
        self.lock = asyncio.Lock()
        self.uid_lock = threading.Lock()  # scans may assign UIDs in a worker thread
        self.fds: dict[str, int] = {}
        self.scan_cache: tuple | None = None  # (folder mtimes, scan start, infos, files)
        self.synced = threading.Condition()
        self.syncs: dict[str, list[int]] = {}  # sub -> [fsyncs started, last one done, running]

    def alloc(self, n: int, inflight: bool) -> int:
        """Reserve ``n`` UIDs; the first one."""
        with self.uid_lock:
            first = self.uidnext
            self.uidnext += n
            if inflight:
                self.inflight.update(range(first, first + n))
            return first

    def fsync_dir(self, sub: str) -> None:
        """Make the renames into ``sub`` done so far durable.

        Group commit: a rename is durable once an fsync of its folder that
        *started after it* has finished, so deliveries that arrive while an
        fsync runs wait for it and share the next one (one fsync for all of
        them) instead of each running its own.
        """
        with self.synced:
            state = self.syncs.setdefault(sub, [0, 0, 0])
            need = state[0] + 1  # the first fsync to start from now on
            while True:
                if state[1] >= need:
                    return
                if not state[2]:
                    state[0] += 1
                    state[2] = 1
                    mine = state[0]
                    break
                self.synced.wait()
        done = False
        try:
            fd = self.fds.get(sub)
            if fd is None:
                fd = self.fds[sub] = os.open(os.path.join(self.path, sub),
                                             os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.fsync(fd)
            done = True
        finally:
            with self.synced:
                state[2] = 0
                if done:
                    state[1] = mine
                self.synced.notify_all()

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class MaildirStore:
    """:class:`~.store.MailStore` over Maildir++ folders under ``root`` (module docstring).

    ``clock()`` gives POSIX seconds (float), ``random(n)`` n random bytes,
    ``hostname`` the host part of unique names: injected so that tests are
    deterministic. ``threads=False`` runs file I/O on the event loop's thread.
    """

    def __init__(self, root: str, *, clock: Callable[[], float] = time.time,
                 random: Callable[[int], bytes] = os.urandom, hostname: str | None = None,
                 threads: bool = True) -> None:
        self._root = os.path.abspath(root)
        self._clock = clock
        self._random = random
        host = hostname if hostname is not None else socket.gethostname()
        self._host = host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")
        self._pid = os.getpid()
        self._count = 0
        self._threads = threads
        self._boxes: dict[tuple[str, str], _Box] = {}
        self._open_lock = asyncio.Lock()
        self._subscriptions_lock = asyncio.Lock()
        self._last_uidvalidity: dict[str, int] = {}
        self._closed = False
        try:
            os.makedirs(self._root, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self._root, LOCK),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreFailure(f"{root!r}: cannot open the store: {exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise StoreFailure(f"{root!r} is in use by another mail store") from None

    # ---------------------------------------------------------------- plumbing

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            if self._threads:
                return await asyncio.to_thread(fn, *args)
            return fn(*args)
        except OSError as exc:
            raise StoreFailure(f"mail store I/O failed: {exc}") from None

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("mail store")

    def _unique(self) -> str:
        now = self._clock()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        self._count += 1
        rnd = self._random(8).hex()
        return f"{sec}.M{usec}P{self._pid}Q{self._count}R{rnd}.{self._host}"

    def _new_uidvalidity(self, user: str) -> int:
        """A UIDVALIDITY above every one the user's mailboxes ever had (kept in
        ``root/<user>/ingot-uidvalidity``, written before it is used)."""
        udir = self._user_dir(user)
        path = os.path.join(udir, UIDVALIDITY)
        last = self._last_uidvalidity.get(user)
        if last is None:
            try:
                with open(path, "rb") as f:
                    last = int(f.read().strip() or 0)
            except (OSError, ValueError):
                last = 0
        value = max(int(self._clock()), last + 1, 1)
        os.makedirs(os.path.join(udir, "tmp"), mode=0o700, exist_ok=True)
        tmp = os.path.join(udir, "tmp", f"ingot-uidvalidity.{self._unique()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, b"%d\n" % value)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _fsync_path(udir)
        self._last_uidvalidity[user] = value
        return value

    async def load_cache(self, user: str, mailbox: str) -> bytes | None:
        box = await self._box(check_user(user), check_mailbox(mailbox))

        def read() -> bytes | None:
            try:
                with open(os.path.join(box.path, CACHE), "rb") as f:
                    return f.read()
            except OSError:
                return None

        return await self._io(read)

    async def save_cache(self, user: str, mailbox: str, data: bytes) -> None:
        box = await self._box(check_user(user), check_mailbox(mailbox))
        await self._io(self._atomic_write, box, CACHE, bytes(data))

    async def subscriptions(self, user: str) -> list[str]:
        user = check_user(user)
        return sorted(await self._io(self._read_subscriptions, user))

    async def subscribe(self, user: str, mailbox: str, subscribed: bool = True) -> None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        async with self._subscriptions_lock:
            await self._io(self._write_subscription, user, mailbox, subscribed)

    def _read_subscriptions(self, user: str) -> set[str]:
        try:
            with open(os.path.join(self._user_dir(user), SUBSCRIPTIONS), "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return set()
        return {line for line in text.split("\n") if line}

    def _write_subscription(self, user: str, mailbox: str, subscribed: bool) -> None:
        names = self._read_subscriptions(user)
        if (mailbox in names) == subscribed:
            return
        names = names | {mailbox} if subscribed else names - {mailbox}
        udir = self._user_dir(user)
        os.makedirs(os.path.join(udir, "tmp"), mode=0o700, exist_ok=True)
        tmp = os.path.join(udir, "tmp", f"{SUBSCRIPTIONS}.{self._unique()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, "".join(n + "\n" for n in sorted(names)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(udir, SUBSCRIPTIONS))
        _fsync_path(udir)

    def _user_dir(self, user: str) -> str:
        return os.path.join(self._root, user)

    def _box_path(self, user: str, mailbox: str) -> str:
        if mailbox == INBOX:
            return self._user_dir(user)
        folder = encode_folder(mailbox)
        if len(folder.encode("utf-8")) > NAME_MAX:
            raise InvalidName("mailbox", mailbox, "too long for a Maildir++ folder name")
        return os.path.join(self._user_dir(user), folder)

    # ---------------------------------------------------------------- opening

    async def _box(self, user: str, mailbox: str) -> _Box:
        self._check_open()
        box = self._boxes.get((user, mailbox))
        if box is not None:
            return box
        async with self._open_lock:
            box = self._boxes.get((user, mailbox))
            if box is None:
                path = self._box_path(user, mailbox)
                if mailbox == INBOX:
                    await self._io(self._make_inbox, user)
                elif not os.path.isdir(os.path.join(path, "cur")):
                    raise MailboxNotFound(user, mailbox)
                box = _Box(user, mailbox, path)
                await self._io(self._load, box)
                self._boxes[(user, mailbox)] = box
            return box

    def _make_inbox(self, user: str) -> None:
        udir = self._user_dir(user)
        if os.path.isdir(os.path.join(udir, "cur")) and os.path.isdir(os.path.join(udir, "tmp")):
            return
        made = not os.path.isdir(udir)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(udir, sub), mode=0o700, exist_ok=True)
        _fsync_path(udir)
        if made:
            _fsync_path(self._root)

    def _load(self, box: _Box) -> None:
        """Read state and keywords, find the highest UID, clean tmp/."""
        state: dict[str, Any] = {}
        try:
            with open(os.path.join(box.path, STATE), "rb") as f:
                state = json.loads(f.read())
        except FileNotFoundError:
            pass
        except (ValueError, OSError):
            state = {}
        highest = 0
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(box.path, sub)):
                uid = parse_name(name)[1].get("U", "")
                if uid.isdigit():
                    highest = max(highest, int(uid))
        uidvalidity = state.get("uidvalidity")
        if isinstance(uidvalidity, int) and uidvalidity > 0:
            box.uidvalidity = uidvalidity
            saved = state.get("uidnext")
            box.saved_uidnext = saved if isinstance(saved, int) and saved > 0 else 1
        else:
            box.uidvalidity = self._new_uidvalidity(box.user)
            box.saved_uidnext = 0
        box.uidnext = max(box.saved_uidnext, highest + 1, 1)
        if box.saved_uidnext != box.uidnext or not state:
            self._save_state(box)
        box.keywords = self._read_keywords(box)
        self._clean_tmp(box)

    def _clean_tmp(self, box: _Box) -> None:
        tmp = os.path.join(box.path, "tmp")
        limit = self._clock() - TMP_MAX_AGE
        for entry in os.scandir(tmp):
            try:
                if entry.name.startswith("ingot-"):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
                elif entry.is_file(follow_symlinks=False) and \
                        entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.path)
            except OSError:
                pass

    def _atomic_write(self, box: _Box, name: str, data: bytes) -> None:
        tmp = os.path.join(box.path, "tmp", f"ingot-{name}.{self._unique()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, os.path.join(box.path, name))
        except OSError:
            os.unlink(tmp)
            raise
        box.fsync_dir(".")

    def _save_state(self, box: _Box) -> None:
        uidnext = box.uidnext
        data = json.dumps({"uidvalidity": box.uidvalidity, "uidnext": uidnext}).encode()
        self._atomic_write(box, STATE, data + b"\n")
        box.saved_uidnext = uidnext

    def _read_keywords(self, box: _Box) -> dict[int, str]:
        out: dict[int, str] = {}
        try:
            with open(os.path.join(box.path, KEYWORDS), encoding="utf-8") as f:
                for line in f:
                    idx, _, word = line.rstrip("\n").partition(" ")
                    if idx.isdigit() and int(idx) < 26 and word:
                        out[int(idx)] = word
        except (OSError, UnicodeDecodeError):
            pass
        return out

    # ---------------------------------------------------------------- flags

    def _letters_for(self, box: _Box, flags: frozenset[str], keep: str = "") -> tuple[str, bool]:
        """Info letters for ``flags`` (plus unknown capitals of ``keep``); True if the
        keyword file must be written first."""
        letters = set(c for c in keep if c.isupper() and c not in LETTER_FLAGS)
        index = {w: i for i, w in box.keywords.items()}
        dirty = False
        for flag in flags:
            if flag in FLAG_LETTERS:
                letters.add(FLAG_LETTERS[flag])
                continue
            i = index.get(flag)
            if i is None:
                free = [n for n in range(26) if n not in box.keywords]
                if not free:
                    raise InvalidFlag(flag, "a Maildir mailbox holds at most 26 keywords")
                i = free[0]
                box.keywords[i] = flag
                index[flag] = i
                dirty = True
            letters.add(KEYWORD_LETTERS[i])
        return "".join(sorted(letters)), dirty

    def _flags_of(self, box: _Box, letters: str | None) -> frozenset[str]:
        out = set()
        for c in letters or "":
            if c in LETTER_FLAGS:
                out.add(LETTER_FLAGS[c])
            elif "a" <= c <= "z":
                word = box.keywords.get(ord(c) - 97)
                if word:
                    out.add(word)
        return frozenset(out)

    async def _letters(self, box: _Box, flags: frozenset[str], keep: str = "") -> str:
        letters, dirty = self._letters_for(box, flags, keep)
        if dirty:
            data = "".join(f"{i} {w}\n" for i, w in sorted(box.keywords.items())).encode()
            await self._io(self._atomic_write, box, KEYWORDS, data)
        return letters

    # ---------------------------------------------------------------- delivery

    async def deliver(self, user: str, data: bytes, *, mailbox: str = INBOX,
                      flags: Iterable[str] = (), internal_date: int | None = None) -> int:
        user = check_user(user)
        mailbox = check_mailbox(mailbox)
        wanted = check_flags(flags)
        data = bytes(data)
        box = await self._box(user, mailbox)
        letters = await self._letters(box, wanted) if wanted else None
        date = int(self._clock()) if internal_date is None else int(internal_date)
        uid = box.alloc(1, True)
        try:
            rel = await self._io(self._write_message, box, self._unique(), uid, data, letters,
                                 date)
            box.files[uid] = rel
        finally:
            box.inflight.discard(uid)
        return uid

    def _write_message(self, box: _Box, unique: str, uid: int, data: bytes,
                       letters: str | None, date: int) -> str:
        tmp = os.path.join(box.path, "tmp", unique)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                _write_all(fd, data)
                os.utime(fd, (date, date))
                os.fsync(fd)
            finally:
                os.close(fd)
            sub = "new" if letters is None else "cur"
            name = build_name(unique, {"S": str(len(data)), "U": str(uid)}, letters)
            os.rename(tmp, os.path.join(box.path, sub, name))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        box.fsync_dir(sub)
        return f"{sub}/{name}"

    # ---------------------------------------------------------------- scanning

    async def _scan(self, box: _Box) -> list[MessageInfo]:
        """Bring ``box.files`` up to date (assigning UIDs); the visible messages."""
        # Show only UIDs below every delivery unfinished when the scan starts
        # (their files are all in place), plus the UIDs this scan gave to
        # foreign messages as far as they follow on without a gap: a list
        # never shows a UID lower than one shown before.
        with box.uid_lock:
            horizon = min(box.inflight, default=box.uidnext)
            horizon = min(horizon, box.uidnext)
        infos, files, foreign = await self._io(self._scan_io, box)
        box.files = files
        shown = [m for m in infos if m.uid < horizon]
        later = {m.uid: m for m in infos if m.uid >= horizon}
        while horizon in foreign and horizon in later:
            shown.append(later[horizon])
            horizon += 1
        return shown

    def _scan_io(self, box: _Box) -> tuple[list[MessageInfo], dict[int, str], set[int]]:
        # A folder's mtime changes with every file created, renamed or removed in it, so
        # an unchanged new/ and cur/ mean an unchanged mailbox: the last scan is reused.
        # The mtime comes from a coarse clock (a few ms): the scan is trusted only when it
        # started well after the folders last changed.
        started = time.time_ns()
        try:
            marks = (os.stat(os.path.join(box.path, "new")).st_mtime_ns,
                     os.stat(os.path.join(box.path, "cur")).st_mtime_ns)
        except OSError:
            marks = None
        cached = box.scan_cache
        if marks is not None and cached is not None and cached[0] == marks \
                and cached[1] - max(marks) > SCAN_SETTLE_NS:
            return cached[2], cached[3], set()
        infos, files, foreign = self._scan_folders(box)
        box.scan_cache = (marks, started, infos, files) if marks is not None else None
        return infos, files, foreign

    def _scan_folders(self, box: _Box) -> tuple[list[MessageInfo], dict[int, str], set[int]]:
        found: list[tuple[str, str]] = []
        for sub in ("cur", "new"):
            for name in os.listdir(os.path.join(box.path, sub)):
                if not name.startswith("."):
                    found.append((sub, name))
        files: dict[int, str] = {}
        todo: list[tuple[str, str, str, dict[str, str], str | None]] = []
        for sub, name in found:
            unique, fields, letters = parse_name(name)
            uid = fields.get("U", "")
            if uid.isdigit() and int(uid) > 0 and int(uid) not in files and sub == "cur" \
                    and int(uid) not in box.inflight:
                files[int(uid)] = f"cur/{name}"
            elif uid.isdigit() and int(uid) in box.inflight:
                continue  # being delivered right now: leave it where it is
            else:
                todo.append((sub, name, unique, fields, letters))
        moved = False
        foreign: set[int] = set()
        # messages in new/ that already have their UID move as they are
        rest = []
        for sub, name, unique, fields, letters in todo:
            uid = fields.get("U", "")
            if sub == "new" and uid.isdigit() and int(uid) > 0 and int(uid) not in files:
                new = build_name(unique, fields, letters or "")
                os.rename(os.path.join(box.path, "new", name), os.path.join(box.path, "cur", new))
                files[int(uid)] = f"cur/{new}"
                moved = True
            else:
                rest.append((sub, name, unique, fields, letters))
        # the others (no U=, or a duplicate one) get new UIDs, oldest first
        def mtime(item: tuple[str, str, Any, Any, Any]) -> tuple[float, str]:
            try:
                return os.stat(os.path.join(box.path, item[0], item[1])).st_mtime, item[1]
            except OSError:
                return 0.0, item[1]
        for sub, name, unique, fields, letters in sorted(rest, key=mtime):
            src = os.path.join(box.path, sub, name)
            fields = dict(fields)
            if "S" not in fields or not fields["S"].isdigit():
                try:
                    fields["S"] = str(os.stat(src).st_size)
                except OSError:
                    continue
            uid = box.alloc(1, False)
            fields["U"] = str(uid)
            new = build_name(unique, fields, letters or "")
            try:
                os.rename(src, os.path.join(box.path, "cur", new))
            except FileNotFoundError:
                continue
            files[uid] = f"cur/{new}"
            foreign.add(uid)
            moved = True
        if moved:
            box.fsync_dir("cur")
            box.fsync_dir("new")
        infos = []
        stats = {}
        for uid in sorted(files):
            name = files[uid][4:]
            st = box.stats.get(name)
            if st is None:
                try:
                    s = os.stat(os.path.join(box.path, files[uid]))
                except FileNotFoundError:
                    continue
                size = parse_name(name)[1].get("S", "")
                st = (int(size) if size.isdigit() else s.st_size, int(s.st_mtime))
            stats[name] = st
            infos.append(MessageInfo(uid, self._flags_of(box, parse_name(name)[2]), st[1],
                                     st[0], name))
        box.stats = stats
        return infos, files, foreign

    async def _path_of(self, box: _Box, uid: int, rescan: bool = True) -> str | None:
        rel = box.files.get(uid)
        if rel is not None and os.path.exists(os.path.join(box.path, rel)):
            return rel
        if not rescan:
            return None
        await self._scan(box)
        return box.files.get(uid)

    # ---------------------------------------------------------------- reading

    async def list(self, user: str, mailbox: str) -> list[MessageInfo]:
        box = await self._box(check_user(user), check_mailbox(mailbox))
        async with box.lock:
            return await self._scan(box)

    async def status(self, user: str, mailbox: str) -> MailboxStatus:
        box = await self._box(check_user(user), check_mailbox(mailbox))
        async with box.lock:
            infos = await self._scan(box)
        unseen = sum(1 for m in infos if SEEN not in m.flags)
        return MailboxStatus(box.uidvalidity, box.uidnext, len(infos), unseen)

    async def get_many(self, user: str, mailbox: str, uids: Iterable[int]) -> dict[int, bytes]:
        """Several messages read in one go (missing ones left out): one trip to the
        worker thread instead of one per message."""
        user, mailbox = check_user(user), check_mailbox(mailbox)
        wanted = [check_uid(u) for u in uids]
        box = await self._box(user, mailbox)
        got: dict[int, bytes] = {}
        for attempt in range(2):
            async with box.lock:
                if attempt:
                    await self._scan(box)  # files renamed meanwhile (new flags)
                paths = {u: os.path.join(box.path, box.files[u]) for u in wanted
                         if u not in got and u in box.files and u not in box.inflight}

            def read_all(paths: dict[int, str] = paths) -> dict[int, bytes]:
                out = {}
                for uid, path in paths.items():
                    try:
                        with open(path, "rb") as f:
                            out[uid] = f.read()
                    except OSError:
                        pass
                return out

            got.update(await self._io(read_all))
            if all(u in got for u in wanted if u not in box.inflight):
                break
        return got

    async def get(self, user: str, mailbox: str, uid: int) -> bytes:
        user, mailbox, uid = check_user(user), check_mailbox(mailbox), check_uid(uid)
        box = await self._box(user, mailbox)
        for attempt in range(3):
            if uid in box.inflight:
                break
            async with box.lock:
                rel = await self._path_of(box, uid)
            if rel is None:
                break
            try:
                return await self._io(self._read, os.path.join(box.path, rel))
            except StoreFailure:
                if os.path.exists(os.path.join(box.path, rel)):
                    raise
        raise MessageNotFound(user, mailbox, uid)

    @staticmethod
    def _read(path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as exc:
            raise OSError(errno.ENOENT, str(exc)) from None

    # ---------------------------------------------------------------- changing

    async def set_flags(self, user: str, mailbox: str, uid: int, flags: Iterable[str]) -> None:
        user, mailbox, uid = check_user(user), check_mailbox(mailbox), check_uid(uid)
        wanted = check_flags(flags)
        box = await self._box(user, mailbox)
        async with box.lock:
            rel = await self._path_of(box, uid)
            if rel is None or uid in box.inflight:
                raise MessageNotFound(user, mailbox, uid)
            unique, fields, old = parse_name(rel[4:])
            letters = await self._letters(box, wanted, old or "")
            new = build_name(unique, fields, letters)
            if f"cur/{new}" == rel:
                return
            await self._io(self._rename_in, box, rel, f"cur/{new}")
            box.files[uid] = f"cur/{new}"

    def _rename_in(self, box: _Box, old: str, new: str) -> None:
        os.rename(os.path.join(box.path, old), os.path.join(box.path, new))
        box.fsync_dir("cur")

    async def remove(self, user: str, mailbox: str, uids: Iterable[int]) -> None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        wanted = sorted_uids(uids)
        box = await self._box(user, mailbox)
        async with box.lock:
            await self._scan(box)  # one fresh view: a rescan would move files under us
            paths = []
            for uid in wanted:
                rel = box.files.get(uid)
                if rel is not None and uid not in box.inflight:
                    paths.append((uid, rel))
            if not paths:
                return
            await self._io(self._remove_io, box, [rel for _, rel in paths])
            for uid, _ in paths:
                box.files.pop(uid, None)

    def _remove_io(self, box: _Box, rels: list[str]) -> None:
        if box.saved_uidnext < box.uidnext:
            self._save_state(box)  # the removed UIDs stay used after a restart
        subs = set()
        for rel in rels:
            try:
                os.unlink(os.path.join(box.path, rel))
                subs.add(rel[:3])
            except FileNotFoundError:
                pass
        for sub in subs:
            box.fsync_dir(sub)

    async def copy(self, user: str, src: str, uids: Iterable[int], dest: str) -> dict[int, int]:
        user, src, dest = check_user(user), check_mailbox(src), check_mailbox(dest)
        wanted = sorted_uids(uids)
        sbox = await self._box(user, src)
        dbox = await self._box(user, dest)
        items = []
        async with sbox.lock:
            await self._scan(sbox)
            for uid in wanted:
                rel = sbox.files.get(uid)
                if rel is not None and uid not in sbox.inflight:
                    items.append((uid, rel, self._flags_of(sbox, parse_name(rel[4:])[2])))
        if not items:
            return {}
        plan = []
        for uid, rel, flags in items:
            letters = await self._letters(dbox, flags)
            plan.append((uid, rel, letters))
        result: dict[int, int] = {}
        first = dbox.alloc(len(plan), True)
        new_uids = list(range(first, first + len(plan)))
        try:
            done = await self._io(self._copy_io, sbox, dbox, plan, new_uids)
            for (old, _, _), new, rel in zip(plan, new_uids, done):
                if rel is not None:
                    dbox.files[new] = rel
                    result[old] = new
        finally:
            dbox.inflight.difference_update(new_uids)
        return result

    def _copy_io(self, sbox: _Box, dbox: _Box, plan: list[tuple[int, str, str]],
                 new_uids: list[int]) -> list[str | None]:
        done: list[str | None] = []
        for (old, rel, letters), uid in zip(plan, new_uids):
            src = os.path.join(sbox.path, rel)
            unique = self._unique()
            try:
                size = os.stat(src).st_size
            except FileNotFoundError:
                done.append(None)
                continue
            name = build_name(unique, {"S": str(size), "U": str(uid)}, letters)
            target = os.path.join(dbox.path, "cur", name)
            try:
                os.link(src, target)
            except FileNotFoundError:
                done.append(None)
                continue
            except OSError:
                with open(src, "rb") as f:
                    data = f.read()
                date = int(os.stat(src).st_mtime)
                tmp = os.path.join(dbox.path, "tmp", unique)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    _write_all(fd, data)
                    os.utime(fd, (date, date))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, target)
            done.append(f"cur/{name}")
        dbox.fsync_dir("cur")
        return done

    # ---------------------------------------------------------------- mailboxes

    async def mailboxes(self, user: str) -> list[str]:
        user = check_user(user)
        await self._box(user, INBOX)
        return sorted([INBOX] + await self._io(self._folders, user))

    def _folders(self, user: str) -> list[str]:
        out = []
        udir = self._user_dir(user)
        for entry in os.scandir(udir):
            if entry.name.startswith(".") and entry.name not in (".", "..") and \
                    os.path.isdir(os.path.join(entry.path, "cur")):
                out.append(decode_folder(entry.name))
        return out

    async def create_mailbox(self, user: str, mailbox: str) -> None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        if mailbox == INBOX:
            raise MailboxExists(user, mailbox)
        path = self._box_path(user, mailbox)
        inbox = await self._box(user, INBOX)
        async with self._open_lock:
            if os.path.isdir(os.path.join(path, "cur")):
                raise MailboxExists(user, mailbox)
            uidvalidity = await self._io(self._new_uidvalidity, user)
            await self._io(self._create_io, inbox, path, uidvalidity)

    def _create_io(self, inbox: _Box, path: str, uidvalidity: int) -> None:
        build = os.path.join(inbox.path, "tmp", "ingot-new-" + self._unique())
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(build, sub), mode=0o700)
        with open(os.path.join(build, FOLDER_MARK), "wb"):
            pass
        state = json.dumps({"uidvalidity": uidvalidity, "uidnext": 1}).encode() + b"\n"
        fd = os.open(os.path.join(build, STATE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, state)
            os.fsync(fd)
        finally:
            os.close(fd)
        for sub in ("tmp", "new", "cur", "."):
            _fsync_path(os.path.join(build, sub))
        if os.path.lexists(path):
            shutil.rmtree(path)  # a leftover without cur/: not a mailbox
        os.rename(build, path)
        _fsync_path(inbox.path)

    def _forget(self, user: str, mailbox: str) -> None:
        for key in [k for k in self._boxes if k[0] == user and is_below(k[1], mailbox)]:
            self._boxes.pop(key).close()

    async def delete_mailbox(self, user: str, mailbox: str) -> None:
        user, mailbox = check_user(user), check_mailbox(mailbox)
        if mailbox == INBOX:
            raise InvalidName("mailbox", mailbox, "INBOX cannot be deleted")
        path = self._box_path(user, mailbox)
        inbox = await self._box(user, INBOX)
        async with self._open_lock:
            if not os.path.isdir(os.path.join(path, "cur")):
                raise MailboxNotFound(user, mailbox)
            box = self._boxes.pop((user, mailbox), None)
            if box is not None:
                box.close()
            await self._io(self._delete_io, inbox, path)

    def _delete_io(self, inbox: _Box, path: str) -> None:
        trash = os.path.join(inbox.path, "tmp", "ingot-trash-" + self._unique())
        os.rename(path, trash)
        _fsync_path(inbox.path)
        shutil.rmtree(trash, ignore_errors=True)

    async def rename_mailbox(self, user: str, old: str, new: str) -> None:
        names = await begin_rename(self, user, old, new)
        if names is None:
            return
        user, old, new = names
        inbox = await self._box(user, INBOX)
        async with self._open_lock:
            names = await self._io(self._folders, user)
            if old not in names:
                raise MailboxNotFound(user, old)
            if new in names:
                raise MailboxExists(user, new)
            moves = []
            for name in names:
                if is_below(name, old):
                    target = new + name[len(old):]
                    if target in names:
                        raise MailboxExists(user, target)
                    moves.append((self._box_path(user, name), self._box_path(user, target)))
            self._forget(user, old)
            await self._io(self._rename_io, inbox, moves)

    def _rename_io(self, inbox: _Box, moves: list[tuple[str, str]]) -> None:
        for src, dst in moves:
            if os.path.lexists(dst):
                shutil.rmtree(dst)
            os.rename(src, dst)
        _fsync_path(inbox.path)

    # ---------------------------------------------------------------- closing

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for box in self._boxes.values():
            box.close()
        self._boxes.clear()
        try:
            os.close(self._lock_fd)  # releases the flock
        except OSError:
            pass
