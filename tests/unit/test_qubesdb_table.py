"""QubesDB's path and value rules, the ``file`` backend's table format, and the package's
rules: pure cores (no I/O imports), files under 600 lines, the plugin's registration."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ingot.plugins import qubesdb as plugin
from ingot.plugins.qubesdb import paths
from ingot.plugins.qubesdb.table import TableError, changed_paths, format_of, parse_table
from ingot.signatures import DeviceError, InvalidKey, NoSpace

PACKAGE = Path(paths.__file__).resolve().parent
FORBIDDEN = {"socket", "asyncio", "time", "random", "os", "select", "selectors",
             "subprocess", "threading", "signal"}


def test_core_modules_do_no_io():
    for mod in ("paths", "protocol", "table"):
        tree = ast.parse((PACKAGE / f"{mod}.py").read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        assert not names & FORBIDDEN, mod


def test_every_file_is_short_and_documented():
    for f in PACKAGE.glob("*.py"):
        text = f.read_text()
        assert len(text.splitlines()) < 600, f.name
        assert ast.get_docstring(ast.parse(text)), f.name


def test_the_plugin_docstring_says_what_the_backends_take():
    doc = plugin.__doc__
    for word in ("socket", "file", "path", "poll", "/var/run/qubes/qubesdb.sock", ".toml",
                 ".json", '"/qubes-ip" = "10.137.0.1"'):
        assert word in doc, word


def test_specs():
    specs = {s.backend: s for s in plugin.ingot_devices_register()}
    assert set(specs) == {"socket", "file"}
    assert all(s.kind == "qubesdb" and not s.default_on for s in specs.values())


# --------------------------------------------------------------------------
# paths and values


@pytest.mark.parametrize("path", ["/qubes-ip", "/a.b:c_d-e/F9", "/" + "x" * 62, "/a//b"])
def test_good_paths(path):
    assert paths.check_path(path) == path


@pytest.mark.parametrize("path, reason", [
    ("", "begins with '/'"), ("qubes-ip", "begins with '/'"),
    ("/a/", "does not end with '/'"), ("/", "does not end with '/'"),
    ("/" + "x" * 63, "longer than 63 characters (64)"),
    ("/a b", "character ' '"), ("/a@b", "character '@'"), ("/\u00e9", "character '\u00e9'"),
    ("/a\0", "character '\\x00'"), ("/a\n", "character '\\n'"),
    (b"/a", "a path is a str, not bytes"), (None, "not NoneType"),
])
def test_bad_paths_say_why(path, reason):
    with pytest.raises(InvalidKey) as info:
        paths.check_path(path)
    assert reason in info.value.reason


def test_prefixes():
    for prefix in ("", "/", "/qubes-firewall/", "/qubes-firewall", "/" + "x" * 62):
        assert paths.check_prefix(prefix) == prefix
    for prefix in ("q", "/" + "x" * 63, "/a b/"):
        with pytest.raises(InvalidKey):
            paths.check_prefix(prefix)


def test_values():
    assert paths.check_value("/a", bytearray(b"x" * 3072)) == b"x" * 3072
    assert paths.check_value("/a", memoryview(b"")) == b""
    with pytest.raises(NoSpace) as info:
        paths.check_value("/a", b"x" * 3073)
    assert info.value.need == 3073 and "/a" in str(info.value)
    with pytest.raises(DeviceError, match="NUL"):
        paths.check_value("/a", b"x\0")
    with pytest.raises(TypeError):
        paths.check_value("/a", "text")


def test_what_a_watch_sees():
    sees = paths.watch_sees
    assert sees("/a", "/a") and not sees("/a", "/a/b") and not sees("/a", "/ab")
    assert sees("/a/", "/a/b") and sees("/a/", "/a/b/c") and sees("/a/", "/a/")
    assert not sees("/a/", "/a") and not sees("/a/", "/ab")
    assert sees("/", "/anything") and sees("", "/anything")


def test_prefix_matching_is_by_string():
    assert paths.under("/qubes-firewall", "/qubes-firewall-error")
    assert not paths.under("/qubes-firewall/", "/qubes-firewall-error")
    assert paths.under("", "/x")


def test_paths_from_the_daemon_may_hold_an_at():
    assert paths.valid_remote_path(b"/qubes-service/a@b")
    assert not paths.valid_remote_path(b"/a b") and not paths.valid_remote_path(b"a")
    assert not paths.valid_remote_path(b"/" + b"x" * 63)


# --------------------------------------------------------------------------
# the table format

TOML = b'''
"/qubes-ip" = "10.137.0.1"
"/qubes-firewall/10.137.0.11/policy" = "drop"
"/qubes-firewall/10.137.0.11/0000" = "action=accept proto=tcp dstports=443-443"
"/qubes-firewall/10.137.0.11" = ""
"/u" = "caf\\u00e9"
'''
JSON = (b'{"/qubes-ip": "10.137.0.1", "/qubes-firewall/10.137.0.11/policy": "drop", '
        b'"/qubes-firewall/10.137.0.11/0000": "action=accept proto=tcp dstports=443-443", '
        b'"/qubes-firewall/10.137.0.11": "", "/u": "caf\\u00e9"}')
TABLE = {"/qubes-ip": b"10.137.0.1", "/qubes-firewall/10.137.0.11/policy": b"drop",
         "/qubes-firewall/10.137.0.11/0000": b"action=accept proto=tcp dstports=443-443",
         "/qubes-firewall/10.137.0.11": b"", "/u": "caf\u00e9".encode()}


def test_toml_and_json_give_the_same_table():
    assert parse_table("q.toml", TOML) == TABLE
    assert parse_table("/x/q.JSON", JSON) == TABLE
    assert parse_table("q.toml", b"") == {} and parse_table("q.json", b"{}") == {}


def test_the_format_is_chosen_by_the_suffix():
    assert format_of("a.toml") == "TOML" and format_of("a.json") == "JSON"
    with pytest.raises(ValueError, match="must end with .toml or .json"):
        format_of("a.yaml")


@pytest.mark.parametrize("name, data, reason", [
    ("q.toml", b'"/a" = ', "not valid TOML"),
    ("q.toml", b'"/a" = "x"\n"/a" = "y"\n', "not valid TOML"),
    ("q.json", b'{"/a": ', "not valid JSON"),
    ("q.json", b'{"/a": "x", "/a": "y"}', "'/a' appears twice"),
    ("q.json", b'"text"', "the JSON document is a str, not a table"),
    ("q.json", b'{"/a": 1}', "the value of '/a' is a int, not a string"),
    ("q.json", b'{"/a": null}', "the value of '/a' is a NoneType, not a string"),
    ("q.toml", b'[section]\n"/a" = "x"\n', "invalid key 'section': a path begins with '/'"),
    ("q.toml", b'"/a" = {b = "x"}\n', "the value of '/a' is a table, not a string"),
    ("q.toml", b'"/a/" = "x"\n', "a path does not end with '/'"),
    ("q.json", b'{"/a b": "x"}', "character ' '"),
    ("q.json", b'{"/a": "' + b"x" * 3073 + b'"}', "3073 bytes needed"),
    ("q.json", b'{"/a": "\\u0000"}', "NUL byte"),
    ("q.json", b'\xff', "not UTF-8 (byte 0)"),
])
def test_a_bad_table_names_the_first_problem(name, data, reason):
    with pytest.raises(TableError, match=None) as info:
        parse_table(name, data)
    assert reason in str(info.value)


def test_changed_paths():
    old = {"/a": b"1", "/b": b"2", "/c": b""}
    new = {"/a": b"1", "/b": b"3", "/d": b""}
    assert changed_paths(old, new) == ["/b", "/c", "/d"]
    assert changed_paths(old, dict(old)) == []
