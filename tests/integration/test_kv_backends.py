"""Every kv backend against the shared suite, plus what is particular to each."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import zipfile

import pytest

from ingot.errors import BuildError
from ingot.image import DirData, ImageWriter, ZipData
from ingot.log import Logger, Sink
from ingot.plan import Plan, PlannedDevice
from ingot.plugins import kv as kv_plugin
from ingot.plugins.kv import crunch, direct, memory
from ingot.plugins.kv import git as git_mod
from ingot.plugins.kv.git import GitReader, GitStore
from ingot.registry import DeviceContext
from ingot.signatures import (
    Change,
    Conflict,
    InvalidKey,
    Kind,
    NoSpace,
    NotFound,
    RemoteError,
    StoreError,
)

from .kv_conformance import KvROConformance, KvRWConformance, drain, next_change

GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "Cli", "GIT_AUTHOR_EMAIL": "cli@example.org",
           "GIT_COMMITTER_NAME": "Cli", "GIT_COMMITTER_EMAIL": "cli@example.org"}


def git(*args, cwd=None) -> str:
    return subprocess.run(["git", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                          text=True, env=dict(os.environ, **GIT_ENV)).stdout


def write_files(folder, files) -> None:
    for key, data in files.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def ctx(name="store", kind="kv_ro", backend="crunch", data=None, **keys) -> DeviceContext:
    return DeviceContext(name=name, kind=kind, backend=backend, target="unix", keys=keys,
                         deps={}, data=data, log=Logger(name, Sink(io.StringIO())))


def crunch_plan(source, name="zones") -> Plan:
    dev = PlannedDevice(name, "kv_ro", "crunch", "kv", "ingot.plugins.kv.crunch:connect",
                        {"source": str(source)})
    return Plan(appliance="t", target="unix", package="t", main="t.app:T",
                manifest="t.manifest", devices=[dev])


def collect(source, name="zones") -> ImageWriter:
    writer = ImageWriter()
    kv_plugin.ingot_image_collect(plan=crunch_plan(source, name), image=writer)
    return writer


# --------------------------------------------------------------------------
# the shared suite, per backend


class TestMemory(KvRWConformance):
    def make_rw(self, tmp_path):
        return memory.MemoryStore()

    def test_writes_survive_reopening(self, tmp_path):
        """Memory keeps nothing by design: a new store starts empty."""
        async def body():
            kv = memory.MemoryStore()
            await kv.set("a", b"1")
            kv.close()
            fresh = memory.MemoryStore()
            assert await fresh.exists("a") is None
            assert await fresh.list("") == []
        asyncio.run(body())


class TestDirectRW(KvRWConformance):
    def make_rw(self, tmp_path):
        return direct.connect_rw(ctx(kind="kv_rw", backend="direct",
                                     path=str(tmp_path / "store"), poll=0.05))


class TestDirectRO(KvROConformance):
    def make_ro(self, tmp_path, files):
        write_files(tmp_path / "ro", files)
        return direct.connect_ro(ctx(backend="direct", path=str(tmp_path / "ro")))


class TestCrunchZip(KvROConformance):
    """Baked by the build hook, read from a zip image as the runtime does."""

    def make_ro(self, tmp_path, files):
        write_files(tmp_path / "src", files)
        writer = collect(tmp_path / "src")
        image = tmp_path / "image.pyz"
        with zipfile.ZipFile(image, "w") as zf:
            for path, data in sorted(writer.data.items()):
                zf.writestr(path, data)
        return crunch.connect(ctx(data=ZipData(str(image), "zones"), source="unused"))


class TestCrunchDir(KvROConformance):
    """Baked by the build hook, read from an unpacked image."""

    def make_ro(self, tmp_path, files):
        write_files(tmp_path / "src", files)
        for path, data in collect(tmp_path / "src").data.items():
            target = tmp_path / "image" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        data = DirData(str(tmp_path / "image" / "_ingot" / "data" / "zones"))
        return crunch.connect(ctx(data=data))


class TestGitRO(KvROConformance):
    """A commit made by the git command line, read through dulwich."""

    def make_ro(self, tmp_path, files):
        work = tmp_path / "work"
        git("init", "-q", "-b", "main", work)
        write_files(work, files)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "content", cwd=work)
        return GitReader(str(work), "main")


class TestGitRW(KvRWConformance):
    def make_rw(self, tmp_path):
        return git_mod.connect_rw(ctx(kind="kv_rw", backend="git",
                                      repo=str(tmp_path / "store.git"), init=True))


# --------------------------------------------------------------------------
# memory


def test_memory_limit_raises_no_space_and_keeps_the_old_value():
    async def main():
        kv = memory.connect(ctx(kind="kv_rw", backend="memory", limit=10))
        await kv.set("a", b"12345")
        with pytest.raises(NoSpace):
            await kv.set("b", b"1234567")
        assert await kv.exists("b") is None
        await kv.set("a", b"1")  # shrinking is always fine
        await kv.set("b", b"123456789")
    asyncio.run(main())


# --------------------------------------------------------------------------
# direct


def test_direct_files_are_plain_files_and_no_temporaries_remain(tmp_path):
    async def main():
        kv = direct.DirectStore(str(tmp_path / "s"))
        await kv.set("x/y", b"1")
        async with kv.batch() as b:
            await b.set("x/z", b"2")
            await b.remove("x/y")
        kv.close()
    asyncio.run(main())
    assert (tmp_path / "s" / "x" / "z").read_bytes() == b"2"
    assert sorted(os.listdir(tmp_path / "s")) == [".ingot-lock", "x"]


def test_direct_reserved_names_are_invisible_and_refused(tmp_path):
    async def main():
        kv = direct.DirectStore(str(tmp_path / "s"))
        await kv.set("a", b"1")
        assert await kv.list("") == [("a", Kind.VALUE)]
        for key in (".ingot-lock", ".ingot-journal", ".ingot-x/y"):
            with pytest.raises(InvalidKey):
                await kv.get(key)
            with pytest.raises(InvalidKey):
                await kv.set(key, b"x")
        await kv.set("d/.ingot-ok", b"fine below the top")
        kv.close()
    asyncio.run(main())


def test_direct_links_out_of_the_folder_are_invisible(tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key").write_bytes(b"secret")
    root = tmp_path / "ro"
    root.mkdir()
    (root / "in").write_bytes(b"inside")
    os.symlink(outside, root / "out")
    os.symlink(outside / "key", root / "outfile")
    os.symlink(root / "in", root / "alias")
    os.mkfifo(root / "fifo")

    async def main():
        kv = direct.DirectReader(str(root))
        assert await kv.list("") == [("alias", Kind.VALUE), ("in", Kind.VALUE)]
        for key in ("out/key", "outfile", "out", "fifo"):
            with pytest.raises(NotFound):
                await kv.get(key)
        assert await kv.get("alias") == b"inside"
    asyncio.run(main())


def test_direct_writes_never_leave_the_folder_through_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "s"
    root.mkdir()
    os.symlink(outside, root / "out")

    async def main():
        kv = direct.DirectStore(str(root))
        with pytest.raises(StoreError, match="link"):
            await kv.set("out/x", b"escaped?")
        async with kv.batch() as b:
            await b.set("fine", b"1")
        with pytest.raises(StoreError):
            async with kv.batch() as b:
                await b.set("fine", b"2")
                await b.set("out/deeper/x", b"escaped?")
        assert await kv.get("fine") == b"1"
        await kv.set("out", b"a value replaces the link itself")
        kv.close()
    asyncio.run(main())
    assert os.listdir(outside) == []
    assert not os.path.islink(root / "out")
    assert sorted(os.listdir(root)) == [".ingot-lock", "fine", "out"]


def test_direct_rw_on_a_file_names_the_flag(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="--store-path"):
        direct.connect_rw(ctx(kind="kv_rw", backend="direct", path=str(tmp_path / "file")))


def test_direct_ro_missing_folder_names_the_flag(tmp_path):
    with pytest.raises(StoreError, match="--zones-path"):
        direct.connect_ro(ctx(name="zones", backend="direct", path=str(tmp_path / "nope")))


def test_direct_watch_sees_other_writers_by_polling(tmp_path):
    root = tmp_path / "s"

    async def main():
        kv = direct.DirectStore(str(root), poll=0.05)
        await kv.set("mine", b"1")
        w = kv.watch("")
        (root / "theirs").write_bytes(b"from elsewhere")
        assert await next_change(w, 3) == Change("theirs", True)
        await kv.set("mine", b"2")
        assert await next_change(w, 3) == Change("mine", True)
        (root / "sub").mkdir()
        (root / "sub" / "f").write_bytes(b"x")
        os.unlink(root / "theirs")
        got = await drain(w, 0.5)
        assert sorted(got, key=lambda c: c.key) == [Change("sub/f", True),
                                                     Change("theirs", False)]
        w.close()
        kv.close()
    asyncio.run(main())


def test_direct_two_stores_on_one_folder_see_each_other(tmp_path):
    async def main():
        one = direct.DirectStore(str(tmp_path / "s"))
        two = direct.DirectStore(str(tmp_path / "s"))
        await one.set("k", b"1")
        assert await two.get("k") == b"1"
        d = await two.digest("k")
        await one.set("k", b"2")
        with pytest.raises(Conflict):
            await two.set("k", b"3", if_digest=d)
        one.close()
        two.close()
    asyncio.run(main())


# --------------------------------------------------------------------------
# crunch


def test_crunch_digests_are_sha256_and_times_fixed(tmp_path):
    write_files(tmp_path / "src", {"a": b"alpha"})
    writer = collect(tmp_path / "src")

    for path, data in writer.data.items():
        target = tmp_path / "img" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    async def main():
        kv = crunch.connect(ctx(data=DirData(str(tmp_path / "img/_ingot/data/zones"))))
        assert await kv.digest("a") == hashlib.sha256(b"alpha").digest()
        assert await kv.last_modified("a") == (0, 0)
    asyncio.run(main())


def test_crunch_skips_dotfiles_and_refuses_links_outside(tmp_path):
    src = tmp_path / "src"
    write_files(src, {"a": b"1", ".git/config": b"x", "d/.hidden": b"x", "d/b": b"2"})
    os.symlink(src / "a", src / "alias")
    assert sorted(collect(src).data) == ["_ingot/data/zones/a", "_ingot/data/zones/alias",
                                         "_ingot/data/zones/d/b"]
    os.symlink(tmp_path, src / "escape")
    with pytest.raises(BuildError, match="outside"):
        collect(src)
    os.unlink(src / "escape")
    os.symlink(src, src / "d" / "loop")
    with pytest.raises(BuildError, match="link back"):
        collect(src)


def test_crunch_plan_validate_reports_a_missing_folder(tmp_path):
    assert kv_plugin.ingot_plan_validate(plan=crunch_plan(tmp_path)) == []
    problems = kv_plugin.ingot_plan_validate(plan=crunch_plan(tmp_path / "nope"))
    assert len(problems) == 1 and "--zones-source" in problems[0] and "\n" not in problems[0]
    (tmp_path / "file").write_bytes(b"")
    assert kv_plugin.ingot_plan_validate(plan=crunch_plan(tmp_path / "file"))


def test_crunch_without_image_reads_the_folder(tmp_path):
    write_files(tmp_path / "src", {"x/y": b"1"})

    async def main():
        kv = crunch.connect(ctx(source=str(tmp_path / "src")))
        assert await kv.get("x/y") == b"1"
    asyncio.run(main())


# --------------------------------------------------------------------------
# git


def _log(repo, fmt="%an <%ae>|%cn|%s") -> list[str]:
    return git("--git-dir", repo, "log", f"--format={fmt}", "main").splitlines()


def test_git_batch_is_one_commit_with_message_and_author(tmp_path):
    repo = tmp_path / "r.git"

    async def main():
        kv = GitStore(str(repo), init=True)
        await kv.set("a/b", b"1")
        async with kv.batch("Import two things", "Alice <alice@example.org>") as b:
            await b.set("x", b"2")
            await b.set("y", b"3")
            await b.remove("a/b")
        await kv.remove("nothing-there")  # no change, no commit
        await kv.rename("x", "z")
        kv.close()
    asyncio.run(main())
    assert _log(repo) == ["Ingot <ingot@localhost>|Ingot|rename x to z",
                          "Alice <alice@example.org>|Ingot|Import two things",
                          "Ingot <ingot@localhost>|Ingot|set a/b"]
    assert git("--git-dir", repo, "show", "main:y") == "3"
    git("--git-dir", repo, "fsck", "--strict")


def test_git_bad_author_is_refused(tmp_path):
    kv = GitStore(str(tmp_path / "r.git"), init=True)
    with pytest.raises(ValueError):
        kv.batch("m", "no email")
    with pytest.raises(StoreError, match="--store-author"):
        git_mod.connect_rw(ctx(kind="kv_rw", backend="git", repo=str(tmp_path / "q.git"),
                               init=True, author="nobody"))


def test_git_digest_is_the_object_id(tmp_path):
    async def main():
        kv = GitStore(str(tmp_path / "r.git"), init=True)
        await kv.set("k", b"hello")
        blob = git("--git-dir", tmp_path / "r.git", "rev-parse", "main:k").strip()
        assert (await kv.digest("k")).hex() == blob
        tree = git("--git-dir", tmp_path / "r.git", "rev-parse", "main^{tree}").strip()
        assert (await kv.digest("")).hex() == tree
    asyncio.run(main())


def test_git_rw_on_a_working_copy_leaves_the_work_tree_alone(tmp_path):
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", work)
    (work / "f").write_text("from cli")
    git("add", "f", cwd=work)
    git("commit", "-q", "-m", "cli", cwd=work)

    async def main():
        kv = GitStore(str(work), branch="data")
        assert await kv.list("") == []
        await kv.set("k", b"1")
        other = GitStore(str(work), branch="main")
        assert await other.get("f") == b"from cli"
    asyncio.run(main())
    assert git("show", "data:k", cwd=work) == "1"
    assert sorted(os.listdir(work)) == [".git", "f"]


def test_git_sees_commits_made_by_others_on_its_branch(tmp_path):
    work = tmp_path / "work"

    async def main():
        kv = GitStore(str(work), init=True)
        w = kv.watch("")
        await kv.set("a", b"1")
        assert await next_change(w) == Change("a", True)
        git("clone", "-q", "-b", "main", work, tmp_path / "clone")
        (tmp_path / "clone" / "b").write_text("2")
        git("add", "b", cwd=tmp_path / "clone")
        git("commit", "-q", "-m", "b", cwd=tmp_path / "clone")
        git("push", "-q", "origin", "main", cwd=tmp_path / "clone")
        assert await kv.refresh() is True
        assert await next_change(w) == Change("b", True)
        assert await kv.get("b") == b"2"
        s, _ = await kv.last_modified("b")
        assert s == int(git("log", "-1", "--format=%ct", cwd=tmp_path / "clone"))
    asyncio.run(main())


def test_git_last_modified_is_the_commit_that_last_changed_the_key(tmp_path):
    repo = tmp_path / "r.git"

    async def main():
        kv = GitStore(str(repo), init=True)
        await kv.set("old", b"1")
        first = int(git("--git-dir", repo, "log", "-1", "--format=%ct", "main"))
        await asyncio.sleep(1.1)
        await kv.set("new", b"2")
        assert await kv.last_modified("old") == (first, 0)
        assert (await kv.last_modified("new"))[0] > first
        assert (await kv.last_modified(""))[0] > first
    asyncio.run(main())


def test_git_ro_ref_subdir_and_refresh(tmp_path):
    repo = tmp_path / "r.git"

    async def main():
        kv = GitStore(str(repo), init=True)
        await kv.set("site/index", b"v1")
        await kv.set("other", b"x")
        git("--git-dir", repo, "tag", "v1", "main")
        await kv.set("site/index", b"v2")
        tagged = GitReader(str(repo), "v1", "site")
        assert await tagged.list("") == [("index", Kind.VALUE)]
        assert await tagged.get("index") == b"v1"
        following = GitReader(str(repo), "main")
        assert await following.get("site/index") == b"v2"
        await kv.set("site/index", b"v3")
        assert await following.get("site/index") == b"v2"  # a fixed commit
        assert await following.refresh() is True
        assert await following.get("site/index") == b"v3"
        assert await following.refresh() is False
        for ref, sub in (("nope", ""), ("main", "missing"), ("main", "other"),
                         ("main", "../x")):
            with pytest.raises(StoreError):
                GitReader(str(repo), ref, sub)
        with pytest.raises(StoreError):
            GitReader(str(tmp_path), "HEAD")
    asyncio.run(main())


def test_git_remote_calls_without_remote_raise_remote_error(tmp_path):
    async def main():
        kv = GitStore(str(tmp_path / "r.git"), init=True)
        with pytest.raises(RemoteError):
            await kv.pull()
        with pytest.raises(RemoteError):
            await kv.push()
    asyncio.run(main())


# --------------------------------------------------------------------------
# registration


def test_specs_keys_and_defaults():
    specs = {(s.kind, s.backend): s for s in kv_plugin.ingot_devices_register()}
    assert set(specs) == {("kv_ro", "direct"), ("kv_ro", "crunch"), ("kv_ro", "git"),
                          ("kv_rw", "memory"), ("kv_rw", "direct"), ("kv_rw", "git")}
    keys = {k: {key.name: key for key in s.keys} for k, s in specs.items()}
    assert keys[("kv_ro", "crunch")]["source"].stage == "build"
    assert keys[("kv_ro", "git")]["ref"].default == "HEAD"
    assert keys[("kv_rw", "git")]["branch"].default == "main"
    assert keys[("kv_rw", "git")]["author"].default == "Ingot <ingot@localhost>"
    assert specs[("kv_ro", "direct")].default_on == ("unix",)
    assert specs[("kv_rw", "direct")].default_on == ("unix",)
    assert specs[("kv_ro", "crunch")].default_on == ("vm", "qubes", "oci")
    for spec in specs.values():
        module = spec.factory.partition(":")[0]
        assert module.startswith("ingot.plugins.kv.")


@pytest.mark.parametrize("module", ["ingot.plugins.kv", "ingot.plugins.kv.crunch",
                                    "ingot.plugins.kv.direct", "ingot.plugins.kv.memory"])
def test_no_git_code_outside_the_git_backend(module):
    code = (f"import sys, {module}; "
            "bad = [m for m in sys.modules if m.startswith('dulwich') "
            "or m == 'ingot.plugins.kv.git']; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_git_factory_errors_are_store_errors(tmp_path):
    with pytest.raises(StoreError):
        git_mod.connect_rw(ctx(kind="kv_rw", backend="git", repo=str(tmp_path / "none")))
    with pytest.raises(StoreError):
        git_mod.connect_rw(ctx(kind="kv_rw", backend="git", repo=str(tmp_path / "x.git"),
                               init=True, branch="bad..name"))


def test_git_writes_keep_entries_the_store_does_not_show(tmp_path):
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", work)
    (work / "d").mkdir()
    (work / "d" / "shown").write_text("1")
    (work / "d" / b"latin-\xe9".decode("utf-8", "surrogateescape")).write_text("2")
    git("add", "-A", cwd=work)
    blob = git("hash-object", "-w", work / "d" / "shown", cwd=work).strip()
    git("update-index", "--add", "--cacheinfo", f"160000,{blob},d/sub", cwd=work)
    git("commit", "-q", "-m", "odd entries", cwd=work)

    async def main():
        kv = GitStore(str(work), branch="main")
        assert await kv.list("d") == [("shown", Kind.VALUE)]
        await kv.set("d/new", b"3")
        await kv.remove("d/shown")
    asyncio.run(main())
    listing = git("ls-tree", "main", "d/", cwd=work)
    assert "160000 commit" in listing and "d/sub" in listing
    assert "latin-" in listing and "d/new" in listing and "d/shown" not in listing
