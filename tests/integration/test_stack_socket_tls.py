"""TLS (``tls/ssl``) over in-memory flows and over the socket stack, against real peers:
``openssl s_client``, ``openssl s_server`` and Python's blocking ``ssl`` sockets."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import ssl
import stat
import subprocess
from types import SimpleNamespace

import pytest

import ingot.plugins.tls as tls_plugin
from ingot.log import Logger, Sink
from ingot.plugins.stack_socket.stack import SocketStack
from ingot.plugins.tls.context import private_file
from ingot.plugins.tls.flow import SslTls, connect
from ingot.registry import DeviceContext
from ingot.signatures import (
    Closed,
    ConnectionRefused,
    ConnectionReset,
    TlsClientConfig,
    TlsError,
    TlsServerConfig,
)

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")


def self_signed(folder, name, cn, san):
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={cn}", "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(folder, "server", "localhost", "DNS:localhost,IP:127.0.0.1,IP:::1")
    other, _ = self_signed(folder, "other", "other", "DNS:other")
    return SimpleNamespace(
        cert_file=cert, key_file=key,
        server=TlsServerConfig(cert.read_bytes(), key.read_bytes(), alpn=("h2", "http/1.1")),
        client=TlsClientConfig("localhost", cert.read_bytes(), alpn=("http/1.1",)),
        untrusting=TlsClientConfig("localhost", other.read_bytes()))


class MemoryFlow:
    """One end of an in-memory byte pipe: any Flow will do for TLS."""

    def __init__(self, name):
        self.inbox = asyncio.StreamReader()
        self.other = None
        self.peer = self.local = (name, 0)
        self.closed = False

    @classmethod
    def pair(cls):
        a, b = cls("a"), cls("b")
        a.other, b.other = b, a
        return a, b

    async def read(self, max_bytes=65536):
        if self.closed:
            raise Closed("flow")
        return await self.inbox.read(max_bytes)

    async def write(self, data):
        if self.closed:
            raise Closed("flow")
        self.other.inbox.feed_data(bytes(data))

    async def shutdown(self):
        self.other.inbox.feed_eof()

    def close(self):
        self.closed = True
        self.inbox.feed_eof()
        self.other.inbox.feed_eof()


def run(main, *args):
    async def wrapper():
        return await asyncio.wait_for(main(*args), 10)

    return asyncio.run(wrapper())


async def tls_echo(tls, config, flow, errors=None):
    """A TLS echo server for one flow; a failed handshake is kept in ``errors``."""
    try:
        secure = await tls.server(flow, config)
    except TlsError as exc:
        if errors is not None:
            errors.append(exc)
        return
    while data := await secure.read():
        await secure.write(data)
    await secure.shutdown()


async def memory_session(pki):
    """A TLS client connected over memory flows to a TLS echo server task."""
    tls = SslTls()
    a, b = MemoryFlow.pair()
    server_task = asyncio.create_task(tls_echo(tls, pki.server, a))
    return await tls.client(b, pki.client), server_task


def test_registers_the_ssl_backend():
    (spec,) = tls_plugin.ingot_devices_register()
    assert (spec.kind, spec.backend, spec.factory) == ("tls", "ssl",
                                                       "ingot.plugins.tls.flow:connect")
    assert spec.default_on == ("unix", "vm", "qubes", "oci")


def test_tls_over_memory_flows(pki):
    async def main():
        client, server_task = await memory_session(pki)
        assert client.version in ("TLSv1.2", "TLSv1.3")
        assert client.alpn == "http/1.1"
        await client.write(b"over memory")
        echoed = await client.readexactly(11)
        await client.shutdown()
        rest = await client.read()
        await server_task
        return echoed, rest

    assert run(main) == (b"over memory", b"")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tls_over_the_socket_stack(pki, host):
    async def main():
        stack, tls = SocketStack(), SslTls()
        try:
            listener = await stack.listen_tcp(host, 0, lambda f: tls_echo(tls, pki.server, f))
            flow = await stack.connect_tcp(host, listener.address[1])
            secure = await tls.client(flow, pki.client)
            assert (secure.peer, secure.local) == (flow.peer, flow.local)
            payload = os.urandom(1 << 20)
            reader = asyncio.create_task(secure.readexactly(len(payload)))
            await secure.write(payload)
            echoed = await reader
            await secure.shutdown()
            assert await secure.read() == b""
            with pytest.raises(Closed):
                await secure.write(b"after shutdown")
            secure.close()
            return echoed == payload
        finally:
            stack.close()

    assert run(main)


def test_openssl_s_client_against_our_server(pki):
    async def line_echo(tls, flow):
        secure = await tls.server(flow, pki.server)
        line = b""
        while not line.endswith(b"\n"):
            data = await secure.read()
            if not data:
                break
            line += data
        await secure.write(b"echo: " + line)
        await secure.shutdown()

    async def main():
        stack, tls = SocketStack(), SslTls()
        try:
            listener = await stack.listen_tcp("127.0.0.1", 0, lambda f: line_echo(tls, f))
            proc = await asyncio.create_subprocess_exec(
                OPENSSL, "s_client", "-connect", f"127.0.0.1:{listener.address[1]}",
                "-servername", "localhost", "-CAfile", str(pki.cert_file),
                "-verify_return_error", "-quiet",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(b"hello\n"), 8)
            return proc.returncode, out, err
        finally:
            stack.close()

    code, out, err = run(main)
    assert b"echo: hello\n" in out, err
    assert code == 0, err


def test_our_client_against_openssl_s_server(pki):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(pki.cert_file),
         "-key", str(pki.key_file), "-naccept", "1", "-rev"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def main():
        stack, tls = SocketStack(), SslTls()
        try:
            for _ in range(200):  # until s_server listens
                try:
                    flow = await stack.connect_tcp("127.0.0.1", port)
                    break
                except ConnectionRefused:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("openssl s_server did not start")
            by_address = TlsClientConfig("127.0.0.1", pki.cert_file.read_bytes())
            secure = await tls.client(flow, by_address)
            await secure.write(b"hello\n")
            answer = b""
            while b"\n" not in answer:
                data = await secure.read()
                if not data:
                    break
                answer += data
            secure.close()
            return answer
        finally:
            stack.close()

    try:
        assert run(main).startswith(b"olleh")
    finally:
        server.kill()
        server.wait()


def test_python_ssl_socket_client_against_our_server(pki):
    def client(port):
        ctx = ssl.create_default_context(cafile=str(pki.cert_file))
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"blocking peer")
                got = b""
                while len(got) < 13:
                    got += s.recv(100)
                version = s.version()
                s.unwrap()  # close_notify both ways
                return got, version

    async def main():
        stack, tls = SocketStack(), SslTls()
        try:
            listener = await stack.listen_tcp("127.0.0.1", 0,
                                              lambda f: tls_echo(tls, pki.server, f))
            return await asyncio.to_thread(client, listener.address[1])
        finally:
            stack.close()

    got, version = run(main)
    assert got == b"blocking peer" and version == "TLSv1.3"


@pytest.mark.parametrize("config,reason", [
    (TlsClientConfig("example.org", None), "Hostname mismatch"),
    ("untrusting", "self-signed certificate"),
])
def test_a_failed_verification_is_a_tls_error_on_both_ends(pki, config, reason):
    if config == "untrusting":
        config = pki.untrusting
    else:
        config = TlsClientConfig(config.server_name, pki.client.ca_certificates)

    async def main():
        stack, tls = SocketStack(), SslTls()
        errors = []
        try:
            listener = await stack.listen_tcp(
                "127.0.0.1", 0, lambda f: tls_echo(tls, pki.server, f, errors))
            flow = await stack.connect_tcp("127.0.0.1", listener.address[1])
            with pytest.raises(TlsError) as info:
                await tls.client(flow, config)
            flow.close()
            for _ in range(100):
                if errors:
                    break
                await asyncio.sleep(0.01)
            return info.value, errors
        finally:
            stack.close()

    client_error, server_errors = run(main)
    assert "certificate verify failed" in client_error.reason
    assert reason in client_error.reason
    assert server_errors and "alert" in server_errors[0].reason


def test_a_plain_text_peer_fails_the_handshake(pki):
    async def main():
        tls = SslTls()
        a, b = MemoryFlow.pair()
        await b.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(TlsError) as info:
            await tls.server(a, pki.server)
        return info.value.reason

    assert "http request" in run(main)


def test_a_peer_that_leaves_during_the_handshake(pki):
    async def main():
        tls = SslTls()
        a, b = MemoryFlow.pair()
        await b.shutdown()
        with pytest.raises(TlsError, match="closed the connection during the handshake"):
            await tls.server(a, pki.server)

    run(main)


def test_bad_configs_are_tls_errors(pki):
    async def main():
        tls = SslTls()
        a, _ = MemoryFlow.pair()
        with pytest.raises(TlsError, match="cannot load the certificate chain"):
            await tls.server(a, TlsServerConfig(pki.server.certificate_chain, b"not a key"))
        with pytest.raises(TlsError, match="unknown TLS version"):
            await tls.server(a, TlsServerConfig(b"", b"", minimum_version="SSLv2"))
        with pytest.raises(TlsError, match="needs server_name"):
            await tls.client(a, TlsClientConfig(None, pki.client.ca_certificates))
        with pytest.raises(TlsError, match="CA certificates"):
            await tls.client(a, TlsClientConfig("x", b"-----BEGIN nonsense"))

    run(main)


def test_unverified_client_and_truncated_stream(pki):
    async def main():
        tls = SslTls()
        a, b = MemoryFlow.pair()
        server_task = asyncio.create_task(tls.server(a, pki.server))
        client = await tls.client(b, TlsClientConfig(verify=False))
        server = await server_task
        await server.write(b"abc")
        a.close()  # no close_notify: the stream just ends
        with pytest.raises(ConnectionReset, match="after 3 of 5 bytes"):
            await client.readexactly(5)
        assert await client.read() == b""

    run(main)


@pytest.mark.parametrize("memfd", [True, False])
def test_key_material_file_is_private_and_removed(memfd):
    with private_file(b"secret", memfd=memfd) as path:
        with open(path, "rb") as f:
            assert f.read() == b"secret"
        if memfd:
            assert path.startswith("/proc/self/fd/")
        else:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert memfd or not os.path.exists(path)


def test_device_factory():
    out = io.StringIO()
    ctx = DeviceContext(name="tls", kind="tls", backend="ssl", target="unix", keys={},
                        deps={}, data=None, log=Logger("tls", Sink(out, "debug")))
    device = connect(ctx)
    assert isinstance(device, SslTls)
    device.close()
    assert "tls ready" in out.getvalue() and "OpenSSL" in out.getvalue()


def test_a_shared_flow_serves_a_reader_and_a_writer_at_once(pki):
    async def main():
        client, server_task = await memory_session(pki)
        chunks = [bytes([i]) * 5000 for i in range(50)]

        async def send():
            for chunk in chunks:
                await client.write(chunk)

        sender = asyncio.create_task(send())
        echoed = await client.readexactly(5000 * 50)
        await sender
        await client.shutdown()
        await server_task
        return echoed == b"".join(chunks)

    assert run(main)

