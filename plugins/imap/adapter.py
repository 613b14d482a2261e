"""An IMAP service over a stack: the parser (:mod:`.wire`) and a :class:`~.session.Session`
on each accepted flow.

The adapter owns the I/O: it reads, feeds the parser, answers literal
continuations (``+ Ready``), sends what the session returns, runs STARTTLS
through the ``tls`` device (and then discards whatever the client had sent
after the command: RFC 3501 6.2.1), reads the SASL line of AUTHENTICATE,
and waits during IDLE for either the client's ``DONE`` or a change of the
selected mailbox (pushed at once as untagged responses).

Limits: a client silent for ``autologout`` seconds (30 minutes, RFC 3501
5.4; the same during IDLE) gets ``* BYE``; ``max_errors`` bad commands in
a row end the connection; a literal over the limit is refused before it is
read (``NO [TOOBIG]``); a connection over ``max_connections`` gets
``* BYE`` at once.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from ingot.signatures import (Closed, ConnectionReset, DeviceError, Flow, Listener, Stack, Tls,
                              TlsError, TlsServerConfig)

from . import wire
from .selected import MessageCache
from .session import Authenticator, Next, Session, Settings

_ids = itertools.count(1)


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    settings: Settings
    implicit_tls: bool = False
    tls: TlsServerConfig | None = None
    autologout: float = 1800.0
    max_connections: int = 500
    max_errors: int = 20
    plaintext_hosts: tuple[str, ...] = ()
    """Peers (address literals) allowed to log in without TLS when the settings allow it."""


class ImapService:
    def __init__(self, stack: Stack, tls: Tls | None, store: Any, authenticate: Authenticator,
                 config: ServiceConfig, log: Any, *, cache: MessageCache | None = None,
                 recent: dict | None = None) -> None:
        if (config.implicit_tls or config.settings.starttls) and (tls is None or config.tls is None):
            raise ValueError(f"{config.name}: TLS asked for without a certificate")
        self.stack = stack
        self.tls = tls
        self.store = store
        self.authenticate = authenticate
        self.config = config
        self.log = log
        self.cache = cache if cache is not None else MessageCache()
        self.recent = recent if recent is not None else {}
        self.active = 0
        self.sessions = 0
        self.refused = 0
        self.listener: Listener | None = None

    async def listen(self, host: str, port: int) -> Listener:
        self.listener = await self.stack.listen_tcp(host, port, self._serve, backlog=1024)
        return self.listener

    def close(self) -> None:
        if self.listener:
            self.listener.close()

    async def _serve(self, flow: Flow) -> None:
        if self.active >= self.config.max_connections:
            self.refused += 1
            try:
                await flow.write(b"* BYE Too many connections, try again later\r\n")
            except DeviceError:
                pass
            return
        self.active += 1
        self.sessions += 1
        sid = f"{next(_ids):x}"
        try:
            await self._session(flow, sid)
        except (ConnectionReset, Closed) as exc:
            self.log.debug("connection lost", session=sid, error=str(exc))
        except TlsError as exc:
            self.log.info("TLS handshake failed", session=sid, peer=flow.peer[0], error=str(exc))
        except asyncio.TimeoutError:
            pass
        finally:
            self.active -= 1

    async def _read(self, flow: Flow, parser: wire.CommandParser) -> bool:
        """Feed the next bytes; False at end of stream or after the autologout time."""
        try:
            data = await asyncio.wait_for(flow.read(65536), self.config.autologout)
        except asyncio.TimeoutError:
            await flow.write(b"* BYE Autologout: idle for too long\r\n")
            return False
        if not data:
            return False
        parser.feed(data)
        return True

    async def _line(self, flow: Flow, parser: wire.CommandParser) -> bytes | None:
        while True:
            line = parser.next_line()
            if isinstance(line, wire.Bad):
                return b""  # over-long: answered as a malformed line
            if line is not wire.NEED_DATA:
                return line
            if not await self._read(flow, parser):
                return None

    def _parser(self, session: Session) -> wire.CommandParser:
        return wire.CommandParser(max_literal=session.settings.max_literal)

    async def _session(self, flow: Flow, sid: str) -> Session:
        cfg = self.config
        if cfg.implicit_tls:
            assert self.tls is not None and cfg.tls is not None
            flow = await self.tls.server(flow, cfg.tls)
        settings = cfg.settings
        if settings.plaintext and flow.peer[0] not in cfg.plaintext_hosts:
            settings = Settings(settings.hostname, settings.starttls, False, settings.max_literal)
        session = Session(self.store, self.authenticate, settings, self.log, tls=cfg.implicit_tls,
                          cache=self.cache, recent_hub=self.recent, peer=flow.peer[0])
        parser = self._parser(session)
        await flow.write(session.greeting())
        errors = 0
        try:
            while True:
                event = parser.next_event()
                if event is wire.NEED_DATA:
                    if not await self._read(flow, parser):
                        return session
                    continue
                if isinstance(event, wire.Continue):
                    await flow.write(b"+ Ready for literal data\r\n")
                    continue
                if isinstance(event, wire.BadCharset):
                    await flow.write(f"{event.tag} NO [{event.code}] Charset {event.charset} "
                                     "is not supported\r\n".encode())
                    continue
                if isinstance(event, (wire.Bad, wire.TooBig)):
                    errors += 1
                    if isinstance(event, wire.TooBig):
                        await flow.write(f"{event.tag} NO [TOOBIG] Literal of {event.size} "
                                         f"bytes is over the limit\r\n".encode())
                    else:
                        await flow.write(f"{event.tag or '*'} BAD {event.text}\r\n".encode())
                    if errors >= cfg.max_errors:
                        await flow.write(b"* BYE Too many bad commands\r\n")
                        return session
                    continue
                errors = 0
                outcome = await session.execute(event)
                await flow.write(outcome.data)
                step = outcome.next
                if step is Next.CONTINUE:
                    continue
                if step is Next.LOGOUT:
                    return session
                if step is Next.STARTTLS:
                    assert self.tls is not None and cfg.tls is not None
                    flow = await self.tls.server(flow, cfg.tls)
                    session.tls_started()
                    parser = self._parser(session)  # what came before the handshake is gone
                elif step is Next.SASL:
                    line = await self._line(flow, parser)
                    if line is None:
                        return session
                    await flow.write(await session.sasl_response(line))
                elif step is Next.IDLE:
                    if not await self._idle(flow, parser, session):
                        return session
        finally:
            session.close()

    async def _idle(self, flow: Flow, parser: wire.CommandParser, session: Session) -> bool:
        """Until DONE: push the selected mailbox's changes as they happen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.autologout
        read: asyncio.Task[bytes] | None = None
        try:
            while True:
                line = parser.next_line()
                if line is not wire.NEED_DATA:
                    await flow.write(session.idle_done(b"" if isinstance(line, wire.Bad)
                                                       else line))
                    return True
                if read is None:
                    read = asyncio.ensure_future(flow.read(65536))
                watch = session.idle_watch()
                waits: set[asyncio.Future[Any]] = {read}
                changed = None
                if watch is not None:
                    changed = asyncio.ensure_future(watch.wait())
                    waits.add(changed)
                done, _pending = await asyncio.wait(waits, timeout=max(0.0, deadline - loop.time()),
                                                    return_when=asyncio.FIRST_COMPLETED)
                if changed is not None and not changed.done():
                    changed.cancel()
                if not done:
                    await flow.write(b"* BYE Autologout: idle for too long\r\n")
                    return False
                if read in done:
                    data = read.result()
                    read = None
                    if not data:
                        return False
                    parser.feed(data)
                    continue
                updates = await session.idle_updates()
                if updates:
                    await flow.write(updates)
        finally:
            if read is not None and not read.done():
                read.cancel()
