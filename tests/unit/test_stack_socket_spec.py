"""The socket stack's registration, keys, error mapping and loop choice (no sockets)."""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
import types

import pytest

from ingot.errors import KeyValueError
from ingot.plugins import stack_socket
from ingot.plugins.stack_socket import loop as loops
from ingot.plugins.stack_socket.stack import error_for, family_of, show
from ingot.signatures import (
    AddressInUse,
    ConnectionRefused,
    ConnectionReset,
    DeviceError,
    Unreachable,
)


def test_registers_the_socket_stack():
    (spec,) = stack_socket.ingot_devices_register()
    assert (spec.kind, spec.backend) == ("stack", "socket")
    assert spec.factory == "ingot.plugins.stack_socket.stack:connect"
    assert spec.default_on == ("unix", "vm", "qubes", "oci")
    assert {k.name: k.default for k in spec.keys} == {"mtu": 1500, "udp-max": 65535,
                                                      "uvloop": True}


@pytest.mark.parametrize("name,text", [("udp-max", "100"), ("udp-max", "70000"),
                                       ("mtu", "100"), ("mtu", "100000")])
def test_size_keys_are_checked(name, text):
    (k,) = [k for k in stack_socket.KEYS if k.name == name]
    with pytest.raises(KeyValueError):
        k.parse(text)


@pytest.mark.parametrize("exc,expected", [
    (OSError(errno.EADDRINUSE, "in use"), AddressInUse),
    (OSError(errno.ECONNREFUSED, "refused"), ConnectionRefused),
    (ConnectionRefusedError("refused"), ConnectionRefused),
    (OSError(errno.ENETUNREACH, "unreachable"), Unreachable),
    (OSError(errno.EHOSTUNREACH, "unreachable"), Unreachable),
    (OSError(errno.EADDRNOTAVAIL, "not available"), Unreachable),
    (TimeoutError(), Unreachable),
    (OSError(errno.ECONNRESET, "reset"), ConnectionReset),
    (OSError(errno.EPIPE, "pipe"), ConnectionReset),
    (ConnectionResetError("Connection lost"), ConnectionReset),
    (OSError(errno.EACCES, "denied"), DeviceError),
])
def test_oserrors_map_to_signature_errors(exc, expected):
    err = error_for(exc, ("::1", 7))
    assert type(err) is expected
    assert "[::1]:7" in str(err)


def test_show_and_family():
    assert show(("127.0.0.1", 7)) == "127.0.0.1:7"
    assert show(("::1", 7, 0, 0)) == "[::1]:7"
    assert family_of("10.0.0.1") == socket.AF_INET
    assert family_of("::") == socket.AF_INET6
    with pytest.raises(ValueError, match="does not resolve names"):
        family_of("localhost")


def test_loop_choice_without_uvloop(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails
    assert loops.policy() is None
    assert loops.loop_factory() is None


def test_loop_choice_with_uvloop(monkeypatch):
    fake = types.ModuleType("uvloop")
    fake.EventLoopPolicy = asyncio.DefaultEventLoopPolicy
    fake.new_event_loop = asyncio.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", fake)
    assert isinstance(loops.policy(), asyncio.DefaultEventLoopPolicy)
    assert loops.loop_factory() is asyncio.new_event_loop
    assert loops.policy(False) is None
    assert loops.loop_factory(False) is None


def test_loop_name():
    loop = asyncio.new_event_loop()
    try:
        assert loops.name(loop) == "asyncio"
    finally:
        loop.close()
