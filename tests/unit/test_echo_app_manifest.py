"""The echo appliance's manifest: devices, keys and what the main class takes."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from ingot import manifest
from ingot.errors import KeyValueError
from ingot.signatures import KvRO, Stack

ECHO = Path(__file__).resolve().parents[2] / "appliances" / "echo"


@pytest.fixture(scope="module")
def loaded():
    return manifest.load(ECHO)


def test_manifest_loads(loaded):
    app = loaded.appliance
    assert app.name == "echo"
    assert loaded.main_ref == "ingot.appliances.echo.app:Echo"
    assert [(d.name, d.signature) for d in app.devices] == [("stack", Stack), ("kv_ro", KvRO)]
    kv_ro = app.devices[1]
    assert dict(kv_ro.default) == {"unix": "direct", "vm": "crunch", "qubes": "crunch",
                                   "oci": "crunch"}


def test_keys_and_defaults(loaded):
    keys = {k.name: k for k in loaded.appliance.keys}
    assert {n: k.default for n, k in keys.items()} == {
        "host": "127.0.0.1", "port": 7007, "greeting": "greeting.txt", "max-connections": 1024}
    assert all(k.stage == "runtime" for k in keys.values())
    assert keys["port"].parse("0") == 0
    with pytest.raises(KeyValueError):
        keys["port"].parse("70000")
    with pytest.raises(KeyValueError):
        keys["max-connections"].parse("0")


def test_main_class_takes_the_devices_keys_and_log(loaded):
    from ingot.appliances.echo.app import Echo

    params = list(inspect.signature(Echo).parameters)
    assert params == [d.name for d in loaded.appliance.devices] + ["keys", "log"]
    assert inspect.iscoroutinefunction(Echo.start)
