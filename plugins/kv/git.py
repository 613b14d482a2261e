"""``kv_ro/git`` and ``kv_rw/git``: stores in a git repository, through dulwich.

This is the only module of the plugin that imports dulwich: an image whose
stores are ``crunch``, ``direct`` or ``memory`` holds no git code.

The store is a tree of a commit: values are blobs, dictionaries are trees.
Submodule entries and names that are not UTF-8 are invisible; a write keeps
them in every folder it rewrites (they go only with a folder that is
removed, or emptied of everything the store shows). Digests
are git object ids (20 raw bytes; a dictionary's is its tree id).
``last_modified`` of a key is the commit time of the oldest commit, going
back along first parents from the store's commit, in which the key already
had its present content (at most 1000 commits back, else the time of the
1000th); the root changes with every commit.

``kv_ro/git`` reads the commit that ``ref`` (a branch, tag, commit id or
``HEAD``) names when it connects, optionally only the folder ``subdir``
of it, and keeps reading that commit: ``await store.refresh()`` re-reads
the ref (True when it moved).

``kv_rw/git`` follows the branch ``branch`` of a bare or non-bare repository
(``init``: create a bare one when ``repo`` does not exist). It writes
objects and moves the branch; it never touches a working tree or index (in
a non-bare repository with that branch checked out, the working tree falls
behind; use a bare one). Each ``set``/``remove``/``rename`` is one commit
with a generated message (``"set a/b"``); each batch is exactly one commit
with the batch's message and author (``"Name <email>"``; the ``author``
key by default, which is also always the committer). Commit times are the
wall clock at write time, in UTC. The branch moves by compare-and-swap; when
another writer moved it in between, the write is redone on the new commit
(and an ``if_digest`` condition checked again). Changes that others commit
to the branch are noticed at the next call and reported to watchers.

``pull()`` fetches ``branch`` from ``remote`` and fast-forwards to it
(a diverged history raises ``Conflict``; an unreachable or refusing remote
raises ``RemoteError``); ``push()`` sends the branch (``RemoteError`` when
refused, e.g. not a fast-forward: pull first). Remotes are what dulwich
reaches: plain paths, ``file://``, ``git://``, ``ssh://``, ``http(s)://``.

Threads: local reads and commits run inline on the event loop (a few small
object files and one ref file, fsynced); pull and push run in a worker
thread (``asyncio.to_thread``) with their own repository handle.

Crashes (``kill -9``, power loss) leave no lock behind that stops later
writes. Writers of ``kv_rw/git`` take an ``flock`` on ``ingot.lock`` in the
git folder for each write (also across processes). A loose object is
written to ``objects/xx/tmp_obj_ingot_<random>``, fsynced and renamed to its
name (as git itself does; no ``.lock`` file), so a half-written object is
only a temporary file, deleted at the next connect. The branch moves under
git's ``refs/heads/<branch>.lock``; while it is held, ``ingot.lock`` names
it, so a lock left by a writer that died is known as such and removed
before the next write. A branch lock that ``ingot.lock`` does not name
belongs to another git command: the write waits for it up to
:data:`REF_LOCK_WAIT` seconds, then raises ``StoreError`` naming the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dulwich import errors as git_errors
from dulwich.client import get_transport_and_path
from dulwich.file import FileLocked
from dulwich.objects import Blob, Commit, Tree
from dulwich.objectspec import parse_commit
from dulwich.refs import check_ref_format
from dulwich.repo import Repo

from ingot.registry import DeviceContext
from ingot.signatures import Change, Closed, Conflict, DeviceError, Kind, RemoteError, StoreError

from .common import Parts, Reader, check_author, join_key, split_key
from .write import Op, TreeEdit, WatchHub, Writer, tree_changes

DIR_MODE = stat.S_IFDIR
FILE_MODE = stat.S_IFREG | 0o644
GITLINK_MODE = 0o160000
EMPTY_TREE = Tree().id
HISTORY_LIMIT = 1000
DEFAULT_AUTHOR = "Ingot <ingot@localhost>"
WRITE_LOCK = "ingot.lock"
TMP_OBJECT = "tmp_obj_ingot_"
REF_LOCK_WAIT = 2.0
"""Seconds a write waits for a branch lock held by another git command."""

GitNode = tuple[int, bytes]
"""A tree entry: ``(mode, hex object id)``."""


@dataclass(frozen=True)
class _Snap:
    """One version of the store: a commit (None on an unborn branch) and its tree."""

    commit: bytes | None
    root: GitNode


class _Adapter:
    """A repository's trees as :class:`~ingot.plugins.kv.write.TreeEdit` sees them."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._trees: dict[bytes, tuple[dict[str, GitNode], list[tuple[bytes, int, bytes]]]] = {}

    def is_dir(self, node: GitNode) -> bool:
        return stat.S_ISDIR(node[0])

    def children(self, node: GitNode) -> dict[str, GitNode]:
        return self._read_tree(node[1])[0]

    def hidden(self, node: GitNode) -> list[tuple[bytes, int, bytes]]:
        """The entries of a tree the store does not show (submodules, names
        that are not UTF-8), as ``(name, mode, sha)``."""
        return self._read_tree(node[1])[1]

    def _read_tree(self, sha: bytes) -> tuple[dict[str, GitNode], list[tuple[bytes, int, bytes]]]:
        if sha == EMPTY_TREE:
            return {}, []
        got = self._trees.get(sha)
        if got is None:
            tree = self.repo.object_store[sha]
            if not isinstance(tree, Tree):
                raise StoreError(f"object {sha.decode()} is not a tree")
            shown: dict[str, GitNode] = {}
            hidden = []
            for entry in tree.items():
                try:
                    name = entry.path.decode("utf-8")
                except UnicodeDecodeError:
                    name = None
                if name is None or entry.mode == GITLINK_MODE:
                    hidden.append((entry.path, entry.mode, entry.sha))
                else:
                    shown[name] = (entry.mode, entry.sha)
            if len(self._trees) > 1024:
                self._trees.clear()
            got = self._trees[sha] = (shown, hidden)
        return got

    def digest(self, node: GitNode) -> bytes:
        return bytes.fromhex(node[1].decode())

    def value_digest(self, data: bytes) -> bytes:
        return bytes.fromhex(Blob.from_string(data).id.decode())

    def same(self, a: GitNode, b: GitNode) -> bool:
        return a == b

    def lookup(self, root: GitNode, parts: Parts) -> GitNode | None:
        node: GitNode | None = root
        for name in parts:
            if node is None or not self.is_dir(node):
                return None
            node = self.children(node).get(name)
        return node


def _open(path: str) -> Repo:
    try:
        return Repo(path)
    except (git_errors.NotGitRepository, OSError) as exc:
        raise StoreError(f"{path!r} is not a git repository ({exc})") from None


class GitReader(Reader):
    """:class:`~ingot.signatures.KvRO` over one commit of a repository."""

    _what = "kv store (git)"
    _store_errors = (OSError, KeyError, git_errors.ObjectFormatException,
                     git_errors.ChecksumMismatch, git_errors.FileFormatException)

    def __init__(self, path: str, ref: str = "HEAD", subdir: str = "") -> None:
        self._path = path
        self._repo = _open(path)
        self._git = _Adapter(self._repo)
        self._times: dict[tuple[bytes, Parts], tuple[int, int]] = {}
        self._ref = ref
        try:
            self._subdir = split_key(subdir)
        except DeviceError as exc:
            raise StoreError(f"subdir: {exc}") from None
        self._snap = self._read_ref()

    def _read_ref(self) -> _Snap:
        try:
            commit = parse_commit(self._repo, self._ref.encode())
        except (KeyError, ValueError, git_errors.NotCommitError) as exc:
            raise StoreError(f"{self._path}: {self._ref!r} names no commit ({exc})") from None
        root = self._git.lookup((DIR_MODE, commit.tree), self._subdir)
        if root is None or not self._git.is_dir(root):
            raise StoreError(f"{self._path}: no folder {join_key(self._subdir)!r} "
                             f"in {self._ref!r}")
        return _Snap(commit.id, root)

    async def refresh(self) -> bool:
        """Read ``ref`` again; True when it names another commit now."""
        with self._guard(self._ref):
            snap = self._read_ref()
            moved = snap.commit != self._snap.commit
            self._snap = snap
            return moved

    # -- Reader primitives -------------------------------------------------
    def _snapshot(self) -> _Snap:
        return self._snap

    def _lookup(self, snap: _Snap, parts: Parts) -> GitNode | None:
        return self._git.lookup(snap.root, parts)

    def _is_dir(self, node: GitNode) -> bool:
        return self._git.is_dir(node)

    def _read(self, node: GitNode) -> bytes:
        return self._repo.object_store.get_raw(node[1])[1]

    def _entries(self, node: GitNode) -> list[tuple[str, Kind]]:
        return [(name, Kind.DICTIONARY if self._git.is_dir(c) else Kind.VALUE)
                for name, c in sorted(self._git.children(node).items())]

    def _digest(self, node: GitNode) -> bytes:
        return self._git.digest(node)

    def _mtime(self, snap: _Snap, node: GitNode, parts: Parts) -> tuple[int, int]:
        if snap.commit is None:
            return (0, 0)
        memo = (snap.commit, parts)
        got = self._times.get(memo)
        if got is not None:
            return got
        store = self._repo.object_store
        commit = store[snap.commit]
        full = self._subdir + parts
        for _ in range(HISTORY_LIMIT):
            if not commit.parents:
                break
            try:
                parent = store[commit.parents[0]]
            except KeyError:  # a shallow history ends here
                break
            if self._git.lookup((DIR_MODE, parent.tree), full) != node:
                break
            commit = parent
        got = (commit.commit_time, 0)
        if len(self._times) > 4096:
            self._times.clear()
        self._times[memo] = got
        return got

    def close(self) -> None:
        if not self._closed:
            super().close()
            try:
                self._repo.close()
            except Exception:  # noqa: BLE001 - close never raises
                pass


class GitStore(Writer, GitReader):
    """:class:`~ingot.signatures.KvRW` and :class:`~ingot.signatures.KvRemote`
    on a branch of a repository (see the module docstring)."""

    def __init__(self, path: str, branch: str = "main", remote: str | None = None,
                 author: str = DEFAULT_AUTHOR, init: bool = False) -> None:
        ref = b"refs/heads/" + branch.encode()
        if not branch or not check_ref_format(ref):
            raise StoreError(f"{branch!r} is not a valid branch name")
        self._author = check_author(author)
        if init and not os.path.exists(os.path.join(path, "HEAD")) and not os.path.exists(
                os.path.join(path, ".git")):
            if os.path.isdir(path) and os.listdir(path):
                raise StoreError(f"{path!r} is neither a git repository nor empty")
            os.makedirs(path, exist_ok=True)
            Repo.init_bare(path, default_branch=branch.encode()).close()
        self._path = path
        self._repo = _open(path)
        self._repo.object_store.fsync_object_files = True
        self._git = _Adapter(self._repo)
        self._times = {}
        self._subdir = ()
        self._ref = ref.decode()
        self._remote = remote or None
        self._hub = WatchHub(self._what)
        common = self._repo.commondir()
        self._ref_lock = os.path.join(common, *self._ref.split("/")) + ".lock"
        try:
            self._lock_fd = os.open(os.path.join(common, WRITE_LOCK), os.O_RDWR | os.O_CREAT,
                                    0o644)
        except OSError as exc:
            self._repo.close()
            raise StoreError(f"{path!r}: cannot open its write lock: {exc}") from None
        try:
            with self._locked():
                self._remove_temporaries()
            self._snap = self._snap_of(self._head())
        except BaseException:
            os.close(self._lock_fd)
            self._repo.close()
            raise

    def _head(self) -> bytes | None:
        try:
            return self._repo.refs[self._ref.encode()]
        except KeyError:
            return None

    def _snap_of(self, commit: bytes | None) -> _Snap:
        if commit is None:
            return _Snap(None, (DIR_MODE, EMPTY_TREE))
        obj = self._repo.object_store[commit]
        if not isinstance(obj, Commit):
            raise StoreError(f"{self._ref} points at {commit.decode()}, not a commit")
        return _Snap(commit, (DIR_MODE, obj.tree))

    def _snapshot(self) -> _Snap:
        """The branch as it is now; a move by someone else is reported to watchers."""
        head = self._head()
        if head != self._snap.commit:
            old, self._snap = self._snap, self._snap_of(head)
            if self._hub.active:
                self._hub.publish(tree_changes(self._git, old.root, self._snap.root))
        return self._snap

    async def refresh(self) -> bool:
        with self._guard(self._ref):
            before = self._snap.commit
            return self._snapshot().commit != before

    def close(self) -> None:
        if not self._closed:
            super().close()
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)

    def batch(self, message: str = "", author: str | None = None) -> Any:
        if author is not None:
            check_author(author)
        return super().batch(message, author)

    # -- crash safety ------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's write lock; a branch lock that a dead writer left is removed."""
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            left = os.pread(self._lock_fd, 4096, 0).decode("utf-8", "replace").strip()
            if left:
                if left == self._ref_lock:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._ref_lock)
                self._mark(False)
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _mark(self, moving: bool) -> None:
        """Say in ``ingot.lock`` that this writer holds the branch lock (or no longer)."""
        os.ftruncate(self._lock_fd, 0)
        if moving:
            os.pwrite(self._lock_fd, self._ref_lock.encode() + b"\n", 0)

    def _remove_temporaries(self) -> None:
        """Delete the half-written objects of writers that died (under the write lock)."""
        objects = self._repo.object_store.path
        with contextlib.suppress(FileNotFoundError), os.scandir(objects) as folders:
            for folder in folders:
                if len(folder.name) != 2 or not folder.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(folder.path) as files:
                    for entry in files:
                        if entry.name.startswith(TMP_OBJECT):
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(entry.path)

    def _add_objects(self, objects: list[Any]) -> None:
        """Write loose objects: a fsynced temporary file each, renamed to its name."""
        root = self._repo.object_store.path
        for obj in objects:
            sha = obj.id.decode("ascii")
            folder = os.path.join(root, sha[:2])
            final = os.path.join(folder, sha[2:])
            try:
                os.utime(final)  # there already: fresh, so that no prune takes it meanwhile
                continue
            except FileNotFoundError:
                pass
            except PermissionError:  # another user's object in a shared repository
                continue
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, TMP_OBJECT + secrets.token_hex(8))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                view = memoryview(obj.as_legacy_object())
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)

    # -- writing -------------------------------------------------------------
    async def _apply(self, ops: list[Op], message: str, author: str | None) -> list[Change]:
        with self._locked():
            for _ in range(8):
                snap = self._snapshot()
                edit = TreeEdit(self._git, snap.root)
                edit.apply(ops)
                changes = edit.changes(*edit.diff())
                objects: list[Any] = []
                root = edit.build(lambda entries, base: self._tree(entries, base, objects),
                                  lambda data: self._blob(data, objects))
                if root == snap.root:
                    return changes
                commit = self._make_commit(snap, root[1], message, author or self._author)
                self._add_objects(objects + [commit])
                if self._move(snap.commit, commit.id, message):
                    self._snap = _Snap(commit.id, root)
                    return changes
        raise StoreError(f"{self._ref} kept moving while writing; try again")

    @staticmethod
    def _blob(data: bytes, objects: list[Any]) -> GitNode:
        blob = Blob.from_string(data)
        objects.append(blob)
        return (FILE_MODE, blob.id)

    def _tree(self, entries: dict[str, GitNode], base: GitNode | None,
              objects: list[Any]) -> GitNode:
        tree = Tree()
        for name, (mode, sha) in entries.items():
            tree.add(name.encode("utf-8"), mode, sha)
        for name_b, mode, sha in self._git.hidden(base) if base is not None else ():
            if name_b not in tree:  # a key of the same name replaced it
                tree.add(name_b, mode, sha)
        objects.append(tree)
        return (DIR_MODE, tree.id)

    def _make_commit(self, snap: _Snap, tree: bytes, message: str, author: str) -> Commit:
        now = int(time.time())
        c = Commit()
        c.tree = tree
        c.parents = [snap.commit] if snap.commit else []
        c.author = author.encode("utf-8")
        c.committer = self._author.encode("utf-8")
        c.author_time = c.commit_time = now
        c.author_timezone = c.commit_timezone = 0
        c.encoding = b"UTF-8"
        c.message = message.rstrip("\n").encode("utf-8") + b"\n"
        return c

    def _move(self, old: bytes | None, new: bytes, why: str) -> bool:
        """Compare-and-swap the branch from ``old`` to ``new`` (under :meth:`_locked`)."""
        note = b"ingot: " + why.splitlines()[0].encode("utf-8", "replace") if why else None
        ref = self._ref.encode()
        deadline = time.monotonic() + REF_LOCK_WAIT
        while True:
            self._mark(True)
            try:
                if old is None:
                    return self._repo.refs.add_if_new(ref, new, message=note)
                return self._repo.refs.set_if_equals(ref, old, new, message=note)
            except FileLocked:
                pass
            finally:
                self._mark(False)
            if time.monotonic() > deadline:
                raise StoreError(f"{self._ref_lock} is held: another git command is moving "
                                 f"the branch, or one died holding it (remove the file if no "
                                 f"git command runs)")
            time.sleep(0.01)

    # -- remote ------------------------------------------------------------
    def _need_remote(self) -> str:
        if self._closed:
            raise Closed(self._what)
        if not self._remote:
            raise RemoteError(f"{self._what}: no remote configured")
        return self._remote

    async def pull(self) -> bool:
        remote = self._need_remote()
        theirs = await asyncio.to_thread(self._fetch, remote)
        if theirs is None:
            return False
        with self._guard("pull"):
            for _ in range(8):
                ours = self._snapshot().commit
                if ours == theirs or (ours is not None and self._descends(ours, theirs)):
                    return False
                if ours is not None and not self._descends(theirs, ours):
                    raise Conflict(self._ref, bytes.fromhex(ours.decode()),
                                   bytes.fromhex(theirs.decode()))
                with self._locked():
                    moved = self._move(ours, theirs, f"pull from {remote}")
                if moved:
                    self._snapshot()
                    return True
            raise StoreError(f"{self._ref} kept moving while pulling; try again")

    async def push(self) -> None:
        remote = self._need_remote()
        with self._guard("push"):
            head = self._snapshot().commit
        if head is not None:
            await asyncio.to_thread(self._send, remote, head)

    def _descends(self, commit: bytes, ancestor: bytes) -> bool:
        return _descends_in(self._repo, commit, ancestor)

    def _fetch(self, remote: str) -> bytes | None:
        """(worker thread) Fetch the remote branch's objects; its commit id or None."""
        found: dict[str, bytes | None] = {}
        ref = self._ref.encode()
        try:
            client, path = get_transport_and_path(remote)
            repo = Repo(self._path)
            repo.object_store.fsync_object_files = True
            try:
                def wants(refs: Any, depth: Any = None) -> list[bytes]:
                    sha = refs.get(ref)
                    found["sha"] = sha
                    return [] if sha is None or sha in repo.object_store else [sha]

                client.fetch(path, repo, determine_wants=wants)
            finally:
                repo.close()
        except Exception as exc:  # noqa: BLE001 - whatever the transport raises
            raise RemoteError(f"pull from {remote}: {_describe(exc)}") from exc
        return found.get("sha")

    def _send(self, remote: str, head: bytes) -> None:
        """(worker thread) Push ``head`` to the remote branch."""
        ref = self._ref.encode()
        refused: list[str] = []
        try:
            client, path = get_transport_and_path(remote)
            repo = Repo(self._path)
            try:
                def update_refs(refs: dict[bytes, bytes]) -> dict[bytes, bytes]:
                    theirs = refs.get(ref)
                    if theirs is not None and theirs != head and not _descends_in(
                            repo, head, theirs):
                        refused.append("the remote branch has commits this store lacks; "
                                       "pull first")
                        raise RemoteError(refused[-1])
                    return {ref: head}

                def pack(have: Any, want: Any, *, ofs_delta: bool = False,
                         progress: Any = None) -> Any:
                    return repo.generate_pack_data(set(have), set(want), progress=progress,
                                                   ofs_delta=ofs_delta)

                path_b = path.encode() if isinstance(path, str) else path
                result = client.send_pack(path_b, update_refs, generate_pack_data=pack)
            finally:
                repo.close()
            for name, error in (result.ref_status or {}).items():
                if error is not None:
                    refused.append(f"{name.decode(errors='replace')}: {error}")
        except Exception as exc:  # noqa: BLE001 - whatever the transport raises
            if refused:
                raise RemoteError(f"push to {remote} refused: {refused[0]}") from exc
            raise RemoteError(f"push to {remote}: {_describe(exc)}") from exc
        if refused:
            raise RemoteError(f"push to {remote} refused: {refused[0]}")


def _descends_in(repo: Repo, commit: bytes, ancestor: bytes) -> bool:
    """Whether ``ancestor`` is ``commit`` or in its history."""
    store = repo.object_store
    todo, seen = [commit], set()
    while todo:
        sha = todo.pop()
        if sha == ancestor:
            return True
        if sha in seen or sha not in store:
            continue
        seen.add(sha)
        todo.extend(store[sha].parents)
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, (OSError, DeviceError)) else f"{type(exc).__name__}: {text}"


def connect_ro(ctx: DeviceContext) -> GitReader:
    return GitReader(str(ctx.keys["repo"]), str(ctx.keys.get("ref") or "HEAD"),
                     str(ctx.keys.get("subdir") or ""))


def connect_rw(ctx: DeviceContext) -> GitStore:
    try:
        return GitStore(str(ctx.keys["repo"]), branch=str(ctx.keys.get("branch") or "main"),
                        remote=ctx.keys.get("remote") or None,
                        author=str(ctx.keys.get("author") or DEFAULT_AUTHOR),
                        init=bool(ctx.keys.get("init", False)))
    except ValueError as exc:
        raise StoreError(f"{exc} (set {ctx.key_flag('author')})") from None
