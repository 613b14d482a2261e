"""The ``file`` QubesDB backend: the shared suite over a TOML and a JSON file, plus what is
particular to it (reloading, a bad or missing file, writes kept on top, the factory)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os

import pytest

from ingot.errors import KeyValueError
from ingot.log import Logger, Sink
from ingot.plugins import qubesdb as plugin
from ingot.plugins.qubesdb.file import connect, open_file
from ingot.registry import DeviceContext
from ingot.signatures import DeviceError

from .qubesdb_conformance import ENTRIES, QubesDBConformance, drain, expect, next_path

POLL = 0.05


def dump(path, entries: dict[str, bytes]) -> None:
    """Write ``entries`` atomically (a new file renamed over the old), as an editor would."""
    text = {k: v.decode("utf-8") for k, v in entries.items()}
    if str(path).endswith(".json"):
        data = json.dumps(text, indent=1)
    else:  # a JSON string is a valid TOML basic string
        data = "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in text.items())
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


class FileOutside:
    def __init__(self, path, entries: dict[str, bytes]) -> None:
        self.path = path
        self.entries = dict(entries)

    async def set(self, path: str, value: bytes | None) -> None:
        if value is None:
            self.entries.pop(path, None)
        else:
            self.entries[path] = value
        dump(self.path, self.entries)


def log_sink():
    stream = io.StringIO()
    return stream, Logger("qubesdb", Sink(stream))


class TestToml(QubesDBConformance):
    suffix = ".toml"

    @contextlib.asynccontextmanager
    async def backend(self, tmp_path, entries):
        path = tmp_path / f"qubesdb{self.suffix}"
        dump(path, entries)
        db = await open_file(str(path), POLL, log_sink()[1])
        try:
            yield db, FileOutside(path, entries)
        finally:
            db.close()


class TestJson(TestToml):
    suffix = ".json"


# --------------------------------------------------------------------------
# the file changing underneath


@contextlib.asynccontextmanager
async def opened(tmp_path, entries=None, poll=POLL, name="qubesdb.toml"):
    path = tmp_path / name
    dump(path, ENTRIES if entries is None else entries)
    stream, log = log_sink()
    db = await open_file(str(path), poll, log)
    try:
        yield path, db, stream
    finally:
        db.close()


def test_a_reload_fires_exactly_the_paths_added_changed_or_removed(tmp_path):
    async def main():
        async with opened(tmp_path) as (path, db, log):
            w = db.watch("")
            new = dict(ENTRIES)
            new["/qubes-ip"] = b"10.137.0.7"                      # changed
            del new["/qubes-firewall/10.137.0.11/0001"]           # removed
            new["/qubes-firewall/10.137.0.13/policy"] = b"drop"   # added
            dump(path, new)
            assert await expect(w, 3) == ["/qubes-firewall/10.137.0.11/0001",
                                      "/qubes-firewall/10.137.0.13/policy", "/qubes-ip"]
            assert await db.multiread("") == dict(sorted(new.items()))
            assert 'msg="QubesDB file reloaded"' in log.getvalue() and "changed=3" in log.getvalue()
            os.utime(path, ns=(1, 1))  # touched, same contents: nothing to tell
            assert await drain(w) == []
    asyncio.run(main())


@pytest.mark.parametrize("bad, reason", [
    ('"/qubes-ip" = \n', "not valid TOML"),
    ('"/qubes-ip" = 7\n', "the value of '/qubes-ip' is a int, not a string"),
    ('[qubes]\nip = "x"\n', "invalid key 'qubes': a path begins with '/'"),
    ('"/big" = "' + "v" * 3073 + '"\n', "3073 bytes needed"),
    ('"/nul" = "a\\u0000b"\n', "NUL byte"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_a_bad_file_is_logged_once_and_the_previous_contents_stay(tmp_path, bad, reason):
    async def main():
        async with opened(tmp_path) as (path, db, log):
            w = db.watch("")
            with open(path, "wb") as f:
                f.write(bad.encode() if isinstance(bad, str) else bad)
            await asyncio.sleep(POLL * 6)
            for _ in range(3):
                assert await db.read("/qubes-ip") == b"10.137.0.1"
            assert await db.multiread("") == dict(sorted(ENTRIES.items()))
            lines = [l for l in log.getvalue().splitlines() if "level=error" in l]
            assert len(lines) == 1, lines
            assert 'msg="QubesDB file not reloaded; keeping its previous contents"' in lines[0]
            assert f"file={path}" in lines[0] and reason in lines[0]
            assert await drain(w, 0.1) == []
            fixed = {**ENTRIES, "/qubes-ip": b"10.137.0.8"}
            dump(path, fixed)
            assert await next_path(w) == "/qubes-ip"
            assert await db.read("/qubes-ip") == b"10.137.0.8"
            assert len([l for l in log.getvalue().splitlines() if "level=error" in l]) == 1
    asyncio.run(main())


def test_a_second_bad_version_is_logged_again(tmp_path):
    async def main():
        async with opened(tmp_path) as (path, db, log):
            path.write_text('"/a" = \n')
            await asyncio.sleep(POLL * 4)
            path.write_text('"/a" = [\n')
            await asyncio.sleep(POLL * 4)
            assert log.getvalue().count("level=error") == 2
    asyncio.run(main())


def test_a_removed_file_is_logged_once_and_the_contents_stay(tmp_path):
    async def main():
        async with opened(tmp_path) as (path, db, log):
            w = db.watch("")
            os.unlink(path)
            await asyncio.sleep(POLL * 5)
            assert await db.read("/qubes-ip") == b"10.137.0.1"
            assert log.getvalue().count("level=error") == 1
            assert "No such file or directory" in log.getvalue()
            dump(path, {"/qubes-ip": b"10.137.0.1"})
            assert len(await expect(w, len(ENTRIES) - 1)) == len(ENTRIES) - 1
            assert await db.list("") == ["/qubes-ip"]
    asyncio.run(main())


def test_poll_zero_notices_changes_at_the_next_call(tmp_path):
    async def main():
        async with opened(tmp_path, poll=0) as (path, db, _):
            w = db.watch("/qubes-ip")
            dump(path, {**ENTRIES, "/qubes-ip": b"10.137.0.3"})
            assert await drain(w, 0.2) == []
            assert await db.read("/qubes-ip") == b"10.137.0.3"
            assert await next_path(w) == "/qubes-ip"
    asyncio.run(main())


def test_writes_stay_in_memory_on_top_of_the_file(tmp_path):
    async def main():
        async with opened(tmp_path) as (path, db, _):
            before = path.read_bytes()
            w = db.watch("")
            await db.write("/qubes-ip", b"10.137.0.99")
            await db.write("/qubes-firewall-error/x", b"e")
            assert await expect(w, 2) == ["/qubes-ip", "/qubes-firewall-error/x"]
            assert path.read_bytes() == before
            # the file changes both a written path and another: only the other is seen
            dump(path, {**ENTRIES, "/qubes-ip": b"10.137.0.5", "/qubes-gateway": b"10.137.0.5"})
            assert await expect(w, 1) == ["/qubes-gateway"]
            assert await db.read("/qubes-ip") == b"10.137.0.99"
            # a path the file drops stays while written
            dump(path, {"/qubes-gateway": b"10.137.0.5"})
            assert await db.list("") == ["/qubes-firewall-error/x", "/qubes-gateway",
                                         "/qubes-ip"]
        async with opened(tmp_path) as (path, db, _):
            assert await db.read("/qubes-firewall-error/x") is None  # gone with the device
    asyncio.run(main())


# --------------------------------------------------------------------------
# connecting


def ctx(**keys) -> DeviceContext:
    return DeviceContext(name="qubesdb", kind="qubesdb", backend="file", target="unix",
                         keys=keys, deps={}, data=None, log=log_sink()[1])


@pytest.mark.parametrize("name, content, message", [
    ("absent.toml", None, "cannot read the QubesDB file {path}: No such file or directory"),
    ("bad.toml", '"/a" = "b"\n"/a" = "c"\n', "the QubesDB file {path} is not valid: not valid TOML"),
    ("bad.json", '{"/a": "b", "/a": "c"}', "is not valid: '/a' appears twice"),
    ("list.json", '["/a"]', "the JSON document is a list, not a table"),
    ("file.yaml", '"/a": "b"', "must end with .toml or .json"),
])
def test_a_file_that_cannot_be_used_stops_the_connect(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DeviceError, match=message.format(path=path).replace(".", r"\.")
                       .replace("[", r"\[")):
        asyncio.run(connect(ctx(path=str(path), poll=0.5)))


def test_the_factory_reads_the_keys(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"/qubes-ip": "10.137.0.1"}))

    async def main():
        db = await connect(ctx(path=str(path), poll=0.0))
        assert await db.read("/qubes-ip") == b"10.137.0.1"
        db.close()
    asyncio.run(main())


def test_the_spec():
    spec = {s.backend: s for s in plugin.ingot_devices_register()}["file"]
    assert spec.kind == "qubesdb" and set(spec.targets) == {"unix", "vm", "qubes", "oci"}
    assert spec.factory == "ingot.plugins.qubesdb.file:connect"
    keys = {k.name: k for k in spec.keys}
    assert keys["path"].required and keys["poll"].default == 0.5
    assert keys["path"].check("/etc/q.toml") and keys["path"].check("q.JSON")
    with pytest.raises(KeyValueError, match="must end with .toml or .json"):
        keys["path"].check("q.yaml")
    with pytest.raises(KeyValueError):
        keys["poll"].check(-1.0)
