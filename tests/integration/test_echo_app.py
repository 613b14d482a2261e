"""The echo appliance in-process, on the real socket stack, with real TCP and UDP clients."""

from __future__ import annotations

import asyncio
import io
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from ingot.appliances.echo.app import DEFAULT_GREETING, Echo
from ingot.log import Logger, Sink
from ingot.plugins.stack_socket.stack import SocketStack
from ingot.signatures import NotFound

EXAMPLE_DATA = Path(__file__).resolve().parents[2] / "configs" / "echo" / "data"


class DictStore:
    """Just enough of a KvRO for the echo appliance."""

    def __init__(self, values):
        self.values = values

    async def get(self, key):
        try:
            return self.values[key]
        except KeyError:
            raise NotFound(key) from None

    def close(self):
        pass


def tcp_client(address, send, half_close=True):
    """Connect, send, half-close; return everything received until the server closes."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(address)
        s.sendall(send)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        received = b""
        while data := s.recv(65536):
            received += data
        return received


def udp_client(address, datagrams):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        answers = []
        for datagram in datagrams:
            s.sendto(datagram, address)
            data, source = s.recvfrom(65535)
            assert source[:2] == tuple(address)
            answers.append(data)
        return answers


def run_echo(store, client, host="127.0.0.1", max_connections=1024):
    """Start Echo on a free port, run ``client(echo)`` in a thread, stop it; return the log."""
    out = io.StringIO()
    log = Logger("echo", Sink(out, "debug"))

    async def main():
        stack = SocketStack(log=log.child("stack"))
        keys = SimpleNamespace(host=host, port=0, greeting="greeting.txt",
                               max_connections=max_connections)
        echo = Echo(stack=stack, kv_ro=store, keys=keys, log=log)
        task = asyncio.create_task(echo.start())
        try:
            await asyncio.wait_for(echo.ready.wait(), 5)
            result = await asyncio.wait_for(asyncio.to_thread(client, echo), 10)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            stack.close()
        return echo, result

    echo, result = asyncio.run(main())
    return echo, result, out.getvalue()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcp_greeting_then_echo_and_udp_echo(host):
    store = DictStore({"greeting.txt": b"Hi there"})

    def client(echo):
        assert echo.tcp_address[1] == echo.udp_address[1]
        return (tcp_client(echo.tcp_address, b"ping\n" * 1000),
                udp_client(echo.udp_address, [b"one", b"two", b"x" * 60000]))

    echo, (tcp, udp), log = run_echo(store, client, host)
    assert tcp == b"Hi there\n" + b"ping\n" * 1000
    assert udp == [b"one", b"two", b"x" * 60000]
    assert (echo.connections, echo.datagrams) == (1, 3)
    assert log.count('msg=listening') == 2
    assert f"proto=tcp host={host} port={echo.tcp_address[1]}" in log
    assert f"proto=udp host={host} port={echo.udp_address[1]}" in log
    assert "msg=stopped connections=1 refused=0 datagrams=3 dropped=0" in log


def test_missing_greeting_uses_the_default():
    echo, tcp, log = run_echo(DictStore({}), lambda e: tcp_client(e.tcp_address, b"x"))
    assert tcp == DEFAULT_GREETING + b"x"
    assert "level=warning" in log and "greeting not readable" in log
    assert "not found: 'greeting.txt'" in log


def test_example_config_greeting():
    store = DictStore({"greeting.txt": (EXAMPLE_DATA / "greeting.txt").read_bytes()})
    _, tcp, _ = run_echo(store, lambda e: tcp_client(e.tcp_address, b""))
    assert tcp == b"Hello from Ingot echo\n"


def test_connections_over_the_limit_are_closed():
    def client(echo):
        family, address = socket.AF_INET, echo.tcp_address
        with socket.socket(family, socket.SOCK_STREAM) as first:
            first.settimeout(5)
            first.connect(address)
            assert first.recv(100) == DEFAULT_GREETING
            second = tcp_client(address, b"", half_close=False)
            first.sendall(b"still here")
            first.shutdown(socket.SHUT_WR)
            return second, first.recv(100)

    echo, (second, first), log = run_echo(DictStore({}), client, max_connections=1)
    assert second == b""
    assert first == b"still here"
    assert echo.refused == 1 and "too many connections" in log


def test_stopping_frees_the_port():
    echo, _, _ = run_echo(DictStore({}), lambda e: None)
    with socket.socket() as s:
        assert s.connect_ex(echo.tcp_address) != 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(echo.udp_address)  # free again
