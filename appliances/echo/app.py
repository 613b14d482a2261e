"""The echo appliance: a greeting, then every byte back; every datagram back.

TCP: each client first gets the greeting (the value under the ``greeting``
store key, a newline added if it has none; an empty value sends nothing),
then everything it sends comes back until it closes its side. UDP: each
datagram goes back to its sender, from the same port, in the stack's
datagram handler (no queue, no task). A missing or unreadable greeting is
logged and the built-in one used: bad config must not stop the appliance.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ingot.signatures import (Address, ConnectionReset, Datagrams, DeviceError, Flow, KvRO, Stack,
                              Unsupported)

DEFAULT_GREETING = b"Hello from Ingot echo\n"
GREETING_MAX = 4096
"""Longer greetings are cut to this many bytes."""


def _show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Echo:
    """Echo over TCP and UDP on ``(keys.host, keys.port)``."""

    def __init__(self, stack: Stack, kv_ro: KvRO, keys: Any, log: Any) -> None:
        self._stack = stack
        self._kv = kv_ro
        self._keys = keys
        self._log = log
        self._udp: Datagrams | None = None
        self.greeting = DEFAULT_GREETING
        self.tcp_address: Address | None = None
        self.udp_address: Address | None = None
        self.ready = asyncio.Event()
        """Set once both sockets listen."""
        self.active = 0
        self.connections = 0
        self.refused = 0
        self.datagrams = 0

    async def _load_greeting(self) -> bytes:
        name = self._keys.greeting
        try:
            text = await self._kv.get(name)
        except (DeviceError, ValueError) as exc:
            self._log.warning("greeting not readable, using the built-in one", key=name,
                              error=str(exc))
            return DEFAULT_GREETING
        if len(text) > GREETING_MAX:
            self._log.warning("greeting too long, cut", key=name, size=len(text),
                              limit=GREETING_MAX)
            text = text[:GREETING_MAX]
        if text and not text.endswith(b"\n"):
            text += b"\n"
        return text

    async def start(self) -> None:
        """Listen and echo until cancelled; then close both sockets."""
        self.greeting = await self._load_greeting()
        host = self._keys.host
        listener = None
        try:
            listener = await self._stack.listen_tcp(host, self._keys.port, self._serve)
        except Unsupported as exc:  # a stack without TCP: echo over UDP only
            self._log.warning("no TCP echo", reason=str(exc))
        port = listener.address[1] if listener else self._keys.port
        try:
            # Port 0 asks for any port: UDP then takes the one TCP got.
            self._udp = await self._stack.bind_udp(host, port, self._echo)
        except BaseException:
            if listener:
                listener.close()
            raise
        self.udp_address = self._udp.address
        if listener:
            self.tcp_address = listener.address
            self._log.info("listening", proto="tcp", host=self.tcp_address[0],
                           port=self.tcp_address[1])
        self._log.info("listening", proto="udp", host=self.udp_address[0],
                       port=self.udp_address[1])
        self.ready.set()
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            if listener:
                listener.close()
            self._udp.close()
            self._log.info("stopped", connections=self.connections, refused=self.refused,
                           datagrams=self.datagrams, dropped=self._udp.dropped)

    async def _serve(self, flow: Flow) -> None:
        peer = _show(flow.peer)
        if self.active >= self._keys.max_connections:
            self.refused += 1
            self._log.warning("too many connections, closing", peer=peer,
                              limit=self._keys.max_connections)
            return
        self.active += 1
        self.connections += 1
        echoed = 0
        self._log.debug("connection", peer=peer, active=self.active)
        try:
            if self.greeting:
                await flow.write(self.greeting)
            while data := await flow.read(65536):
                echoed += len(data)
                await flow.write(data)
        except ConnectionReset as exc:
            self._log.debug("connection reset", peer=peer, error=str(exc))
        finally:
            self.active -= 1
            self._log.debug("connection closed", peer=peer, echoed=echoed)

    def _echo(self, data: bytes, address: Address) -> None:
        self.datagrams += 1
        udp = self._udp
        if udp is not None:
            udp.sendto(data, address)
