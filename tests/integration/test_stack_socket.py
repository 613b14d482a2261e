"""The socket stack on loopback, IPv4 and IPv6: TCP flows, listeners, UDP sockets."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest

from ingot.log import Logger, Sink
from ingot.plugins.stack_socket.stack import QUEUE_LIMIT, SocketStack, connect
from ingot.registry import DeviceContext
from ingot.signatures import (
    AddressInUse,
    Closed,
    ConnectionRefused,
    ConnectionReset,
    MessageTooLong,
    Unreachable,
)

HOSTS = pytest.mark.parametrize("host", ["127.0.0.1", "::1"])


def run(main, *args, **kwargs):
    """Run ``main(stack, *args)`` on a fresh loop with a stack that logs into a buffer."""
    out = io.StringIO()

    async def wrapper():
        stack = SocketStack(log=Logger("stack", Sink(out, "debug")), **kwargs)
        try:
            return await asyncio.wait_for(main(stack, *args), 10)
        finally:
            stack.close()

    result = asyncio.run(wrapper())
    return result, out.getvalue()


async def echo_handler(flow):
    while data := await flow.read():
        await flow.write(data)


async def read_all(flow):
    received = b""
    while data := await flow.read():
        received += data
    return received


async def until(predicate, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def free_port(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# TCP


@HOSTS
def test_tcp_echo(host):
    async def main(stack):
        listener = await stack.listen_tcp(host, 0, echo_handler)
        assert listener.address[0] == host and listener.address[1] > 0
        flow = await stack.connect_tcp(host, listener.address[1])
        assert flow.peer == listener.address
        assert flow.local[0] == host
        await flow.write(b"hello " * 10_000)
        got = await flow.readexactly(60_000)
        flow.close()
        return got

    got, _ = run(main)
    assert got == b"hello " * 10_000


@HOSTS
def test_readexactly_and_end_of_stream(host):
    async def server(flow):
        await flow.write(b"0123456789")  # then the handler returns: the flow is closed

    async def main(stack):
        listener = await stack.listen_tcp(host, 0, server)
        flow = await stack.connect_tcp(host, listener.address[1])
        first = await flow.readexactly(4)
        with pytest.raises(ConnectionReset, match="after 6 of 10 bytes"):
            await flow.readexactly(10)
        assert await flow.read() == b""
        return first

    first, _ = run(main)
    assert first == b"0123"


@HOSTS
def test_shutdown_half_closes(host):
    async def server(flow):
        await flow.write(b"got %d bytes" % len(await read_all(flow)))

    async def main(stack):
        listener = await stack.listen_tcp(host, 0, server)
        flow = await stack.connect_tcp(host, listener.address[1])
        await flow.write(b"x" * 1000)
        await flow.shutdown()
        with pytest.raises(Closed):
            await flow.write(b"more")
        return await read_all(flow)

    answer, _ = run(main)
    assert answer == b"got 1000 bytes"


@HOSTS
def test_listen_twice_is_address_in_use(host):
    async def main(stack):
        listener = await stack.listen_tcp(host, 0, echo_handler)
        with pytest.raises(AddressInUse) as info:
            await stack.listen_tcp(host, listener.address[1], echo_handler)
        udp = await stack.bind_udp(host, 0)
        with pytest.raises(AddressInUse):
            await stack.bind_udp(host, udp.address[1])
        return str(info.value)

    text, _ = run(main)
    assert text.startswith("address in use: ")


@HOSTS
def test_connect_to_a_closed_port_is_refused(host):
    async def main(stack):
        with pytest.raises(ConnectionRefused):
            await stack.connect_tcp(host, free_port(host))

    run(main)


def test_connect_timeout_is_unreachable():
    async def main(stack):
        listener = await stack.listen_tcp("127.0.0.1", 0, echo_handler)
        with pytest.raises(Unreachable, match="no answer within 0 s"):
            await stack.connect_tcp("127.0.0.1", listener.address[1], timeout_s=0)

    run(main)


def test_a_failing_handler_is_logged_and_closes_only_its_flow():
    async def server(flow):
        first = await flow.read()
        if first == b"boom":
            raise ValueError("bad request")
        await flow.write(first)

    async def main(stack):
        listener = await stack.listen_tcp("127.0.0.1", 0, server)
        bad = await stack.connect_tcp("127.0.0.1", listener.address[1])
        good = await stack.connect_tcp("127.0.0.1", listener.address[1])
        await bad.write(b"boom")
        assert await bad.read() == b""
        await good.write(b"fine")
        return await good.readexactly(4), bad.local

    (answer, bad_local), log = run(main)
    assert answer == b"fine"
    assert "connection handler failed" in log
    assert f"peer=127.0.0.1:{bad_local[1]}" in log
    assert '"ValueError: bad request"' in log


def test_write_waits_while_the_peer_does_not_read():
    release = asyncio.Event()
    received = 0

    async def slow_server(flow):
        nonlocal received
        await release.wait()
        while data := await flow.read():
            received += len(data)

    async def main(stack):
        listener = await stack.listen_tcp("127.0.0.1", 0, slow_server)
        flow = await stack.connect_tcp("127.0.0.1", listener.address[1])
        chunk = b"z" * (1 << 20)
        sent = 0

        async def writer():
            nonlocal sent
            for _ in range(256):
                await flow.write(chunk)
                sent += len(chunk)
            await flow.shutdown()

        task = asyncio.create_task(writer())
        await asyncio.sleep(0.3)
        blocked_at = sent
        assert not task.done()  # 256 MiB did not all go into buffers
        release.set()
        await task
        await until(lambda: received == sent)
        return blocked_at, sent

    blocked_at, sent = run(main)[0]
    assert blocked_at < sent // 4


@HOSTS
def test_close_ends_a_pending_read(host):
    async def main(stack):
        listener = await stack.listen_tcp(host, 0, echo_handler)
        flow = await stack.connect_tcp(host, listener.address[1])
        reading = asyncio.create_task(flow.read())
        await asyncio.sleep(0.01)
        flow.close()
        flow.close()  # twice is fine
        with pytest.raises(Closed):
            await reading
        with pytest.raises(Closed):
            await flow.write(b"late")

    run(main)


def test_listener_close_keeps_accepted_flows():
    async def main(stack):
        listener = await stack.listen_tcp("127.0.0.1", 0, echo_handler)
        port = listener.address[1]
        flow = await stack.connect_tcp("127.0.0.1", port)
        await flow.write(b"a")
        assert await flow.read() == b"a"
        listener.close()
        await asyncio.sleep(0.01)
        with pytest.raises(ConnectionRefused):
            await stack.connect_tcp("127.0.0.1", port)
        await flow.write(b"b")
        return await flow.read()

    assert run(main)[0] == b"b"


def test_stack_close_closes_everything():
    async def main(stack):
        handler_started = asyncio.Event()

        async def server(flow):
            handler_started.set()
            await asyncio.sleep(3600)

        listener = await stack.listen_tcp("127.0.0.1", 0, server)
        flow = await stack.connect_tcp("127.0.0.1", listener.address[1])
        udp = await stack.bind_udp("127.0.0.1", 0)
        await handler_started.wait()
        reading = asyncio.create_task(flow.read())
        receiving = asyncio.create_task(udp.recvfrom())
        await asyncio.sleep(0.01)
        stack.close()
        stack.close()
        for task in (reading, receiving):
            with pytest.raises(Closed):
                await task
        with pytest.raises(Closed):
            await stack.listen_tcp("127.0.0.1", 0, server)
        with pytest.raises(ConnectionRefused):
            await SocketStack().connect_tcp("127.0.0.1", listener.address[1])

    _, log = run(main)
    assert "handler failed" not in log


def test_names_are_not_resolved():
    async def main(stack):
        with pytest.raises(ValueError, match="not an IP address literal"):
            await stack.connect_tcp("localhost", 80)

    run(main)


# --------------------------------------------------------------------------
# UDP


@HOSTS
def test_udp_handler_echo(host):
    async def main(stack):
        server = None

        def echo(data, address):
            server.sendto(data, address)

        server = await stack.bind_udp(host, 0, echo)
        client = await stack.bind_udp(host, 0)
        for i in range(5):
            client.sendto(b"ping %d" % i, server.address)
        got = [await client.recvfrom() for _ in range(5)]
        with pytest.raises(RuntimeError):
            await server.recvfrom()
        return got, server.address, client.address

    got, server_address, client_address = run(main)[0]
    assert [data for data, _ in got] == [b"ping %d" % i for i in range(5)]
    assert {source for _, source in got} == {server_address}
    assert client_address[0] == host


@HOSTS
def test_udp_queue_overflow_is_dropped_and_counted(host):
    async def main(stack):
        udp = await stack.bind_udp(host, 0)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sender:
            for i in range(QUEUE_LIMIT + 44):
                sender.sendto(b"%d" % i, udp.address)
                if i % 16 == 15:  # let the loop take them before the kernel's buffer fills
                    await until(lambda n=i + 1: udp._queue.qsize() + udp.dropped == n)
            await until(lambda: udp._queue.qsize() + udp.dropped == QUEUE_LIMIT + 44)
            first = await udp.recvfrom()
            return first, udp.dropped, sender.getsockname()[1]

    (data, source), dropped, sender_port = run(main)[0]
    assert data == b"0" and source == (host, sender_port)
    assert dropped == 44


@HOSTS
def test_udp_size_limits(host):
    limit = 65507 if host == "127.0.0.1" else 65527

    async def main(stack):
        udp = await stack.bind_udp(host, 0)
        with pytest.raises(MessageTooLong) as info:
            udp.sendto(b"x" * (limit + 1), udp.address)
        udp.sendto(b"y" * limit, udp.address)  # the largest is received whole
        data, _ = await udp.recvfrom()
        return info.value, data

    too_long, data = run(main)[0]
    assert (too_long.size, too_long.limit) == (limit + 1, limit)
    assert len(data) == limit


def test_udp_receive_size_is_set_per_transport():
    async def main(stack):
        udp = await stack.bind_udp("127.0.0.1", 0)
        transport = udp._transport
        if not hasattr(transport, "max_size"):
            pytest.skip("this loop's datagram transport has no max_size (uvloop)")
        udp.sendto(b"q" * 3000, udp.address)
        data, _ = await udp.recvfrom()
        return transport.max_size, type(transport).max_size, len(data)

    own, class_default, received = run(main, udp_max=2000)[0]
    assert own == 2000
    assert class_default == 256 * 1024  # the class attribute is left alone
    assert received == 2000  # larger datagrams are cut to udp-max
    default, _, _ = run(main)[0]
    assert default == 65535


def test_udp_send_is_dropped_while_the_kernel_buffer_is_full():
    class Full:  # a transport still holding a datagram after EAGAIN
        def get_write_buffer_size(self):
            return 1500

        def sendto(self, data, address):
            raise AssertionError("queued behind a full buffer")

    async def main(stack):
        udp = await stack.bind_udp("127.0.0.1", 0)
        real, udp._transport = udp._transport, Full()
        udp.sendto(b"lost", udp.address)
        udp.sendto(b"lost", udp.address)
        udp._transport = real
        return udp.dropped

    assert run(main)[0] == 2


def test_udp_handler_errors_are_logged_and_the_socket_lives_on():
    async def main(stack):
        seen = []

        def handler(data, address):
            if data == b"bad":
                raise KeyError("bad datagram")
            seen.append(data)

        server = await stack.bind_udp("127.0.0.1", 0, handler)
        client = await stack.bind_udp("127.0.0.1", 0)
        client.sendto(b"bad", server.address)
        client.sendto(b"good", server.address)
        await until(lambda: seen)
        return seen, server.handler_errors

    (seen, errors), log = run(main)
    assert seen == [b"good"] and errors == 1
    assert "datagram handler failed" in log


def test_udp_close():
    async def main(stack):
        udp = await stack.bind_udp("::1", 0)
        waiting = [asyncio.create_task(udp.recvfrom()) for _ in range(2)]
        await asyncio.sleep(0.01)
        udp.close()
        for task in waiting:
            with pytest.raises(Closed):
                await task
        with pytest.raises(Closed):
            udp.sendto(b"x", ("::1", 9))
        with pytest.raises(Closed):
            await udp.recvfrom()
        # the port is free again
        again = await stack.bind_udp("::1", udp.address[1])
        return again.address == udp.address

    assert run(main)[0]


def test_device_factory():
    out = io.StringIO()

    async def main():
        ctx = DeviceContext(name="stack", kind="stack", backend="socket", target="unix",
                            keys={"mtu": 9000, "udp-max": 4000, "uvloop": False}, deps={},
                            data=None, log=Logger("stack", Sink(out, "debug")))
        stack = connect(ctx)
        try:
            udp = await stack.bind_udp("127.0.0.1", 0)
            return stack.mtu, udp._recv_size
        finally:
            stack.close()

    assert asyncio.run(main()) == (9000, 4000)
    assert "socket stack ready" in out.getvalue() and "loop=" in out.getvalue()
