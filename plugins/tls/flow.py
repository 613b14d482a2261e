"""The ``tls/ssl`` device and the TLS flow it returns.

A :class:`TlsFlow` holds an ``ssl.SSLObject`` between two memory BIOs:
records read from the flow below go into one, records the TLS engine wants
sent come out of the other and are written to the flow below (with its
backpressure). Sends go out in order through one lock, so a reading task and
a writing task may share a flow.

End of stream: ``read`` returns ``b""`` when the peer sent close_notify, and
also when the connection below ended without one (as ``ssl`` sockets do by
default); protocols that must detect truncation frame their data.
``shutdown()`` sends close_notify and half-closes the flow below; reads go on
until the peer closes. ``close()`` closes the flow below at once without
close_notify (it cannot wait for the send): call ``shutdown()`` first for a
clean end. A failed handshake sends the peer its alert and raises
:class:`TlsError`; the flow below stays open for its owner to close.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from ingot.registry import DeviceContext
from ingot.signatures import (
    Address,
    Closed,
    ConnectionReset,
    Flow,
    TlsClientConfig,
    TlsError,
    TlsServerConfig,
)

from .context import Contexts, reason

CHUNK = 65536
"""Plaintext bytes encrypted per step of a write (bounds the records buffered)."""


class TlsFlow:
    """:class:`ingot.signatures.Flow` of plaintext over a flow of TLS records."""

    def __init__(self, flow: Flow, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self._flow = flow
        self._obj = obj
        self._in = incoming
        self._out = outgoing
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._shut = False

    @property
    def peer(self) -> Address:
        return self._flow.peer

    @property
    def local(self) -> Address:
        return self._flow.local

    @property
    def alpn(self) -> str | None:
        """The protocol agreed by ALPN, or None."""
        return self._obj.selected_alpn_protocol()

    @property
    def version(self) -> str | None:
        """The TLS version in use (``"TLSv1.3"``)."""
        return self._obj.version()

    def __repr__(self) -> str:
        return f"<TlsFlow {self.version} over {self._flow!r}>"

    def _check(self) -> None:
        if self._closed:
            raise Closed("TLS flow")

    async def _send(self) -> None:
        """Write what the TLS engine produced to the flow below, in order."""
        if not self._out.pending:
            return
        async with self._send_lock:
            data = self._out.read()
            if data:
                await self._flow.write(data)

    async def _receive(self) -> None:
        """Feed the TLS engine from the flow below (EOF included)."""
        data = await self._flow.read(CHUNK)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    async def handshake(self) -> None:
        """Run the handshake; ``TlsError`` with the reason if it fails."""
        try:
            while True:
                try:
                    self._obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._send()
                    await self._receive()
            await self._send()
        except ssl.SSLError as exc:
            try:
                await self._send()  # the alert tells the peer why
            except Exception:  # noqa: BLE001 - the handshake failed already
                pass
            raise TlsError(reason(exc)) from None
        except ConnectionReset as exc:
            raise TlsError(f"connection reset during the handshake ({exc})") from None

    async def read(self, max_bytes: int = 65536) -> bytes:
        self._check()
        while True:
            try:
                data = self._obj.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._send()  # e.g. the answer to a key update
                await self._receive()
                self._check()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise TlsError(reason(exc)) from None
            if self._out.pending:
                await self._send()
            return data

    async def readexactly(self, n: int) -> bytes:
        parts = []
        remaining = n
        while remaining > 0:
            chunk = await self.read(remaining)
            if not chunk:
                raise ConnectionReset(f"TLS stream ended after {n - remaining} of {n} bytes")
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)

    async def write(self, data: bytes) -> None:
        self._check()
        if self._shut:
            raise Closed("TLS flow's sending side (shut down)")
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            try:
                self._obj.write(view[start:start + CHUNK])
            except ssl.SSLError as exc:
                raise TlsError(reason(exc)) from None
            await self._send()

    async def shutdown(self) -> None:
        self._check()
        if self._shut:
            return
        self._shut = True
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is out; the peer's comes with its end of stream
        except ssl.SSLError as exc:
            raise TlsError(reason(exc)) from None
        await self._send()
        await self._flow.shutdown()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._flow.close()
        except Exception:  # noqa: BLE001 - close never raises
            pass


class SslTls:
    """:class:`ingot.signatures.Tls` with Python's ``ssl`` over memory BIOs."""

    def __init__(self, log: Any = None) -> None:
        self._log = log
        self._contexts = Contexts()

    async def _run(self, flow: Flow, ctx: ssl.SSLContext, server_side: bool,
                   server_name: str | None) -> TlsFlow:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            obj = ctx.wrap_bio(incoming, outgoing, server_side=server_side,
                               server_hostname=server_name)
        except ValueError as exc:  # e.g. check_hostname without a name
            raise TlsError(str(exc)) from None
        tls = TlsFlow(flow, obj, incoming, outgoing)
        await tls.handshake()
        return tls

    async def server(self, flow: Flow, config: TlsServerConfig) -> TlsFlow:
        return await self._run(flow, self._contexts.server(config), True, None)

    async def client(self, flow: Flow, config: TlsClientConfig) -> TlsFlow:
        if config.verify and not config.server_name:
            raise TlsError("a verifying client needs server_name (the name or address "
                           "the certificate must show)")
        return await self._run(flow, self._contexts.client(config), False, config.server_name)

    def close(self) -> None:
        self._contexts.clear()


def connect(ctx: DeviceContext) -> SslTls:
    """The device factory."""
    ctx.log.info("tls ready", library=ssl.OPENSSL_VERSION)
    return SslTls(ctx.log)
