"""An SMTP service over a stack: the server core (:mod:`.server`) on each accepted flow.

The adapter owns the I/O: it reads from the :class:`~ingot.signatures.Flow`,
feeds :class:`~.server.ServerConnection`, asks the :class:`Handler` for the
decisions the core leaves to the application (MAIL, RCPT, the message, AUTH),
runs STARTTLS through the ``tls`` device, and writes the replies. Replies
to pipelined commands are written together, when the core needs more input
(RFC 2920 4: flush before blocking on a read).

Limits: ``idle_timeout`` seconds without a byte from the client end the
session with ``421 4.4.2``; a connection over ``max_connections`` gets
``421 4.3.2`` at once. An exception in a handler is logged and answered with
``451 4.3.0`` (the client tries again; nothing was accepted).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any, Protocol

from ingot.signatures import (Address, ConnectionReset, Closed, DeviceError, Flow, Listener,
                              Stack, Tls, TlsError, TlsServerConfig)

from . import server as core
from .wire import Reply

_ids = itertools.count(1)


@dataclass
class Session:
    """One client connection, as a handler sees it."""

    id: str
    service: str
    peer: Address
    local: Address
    tls: bool = False
    helo: str | None = None
    auth_user: str | None = None


class Handler(Protocol):
    """The application's decisions (aiosmtpd's handler hooks, as coroutines)."""

    async def mail_from(self, session: Session, event: core.MailFrom) -> Reply: ...

    async def rcpt_to(self, session: Session, event: core.RcptTo) -> Reply: ...

    async def message(self, session: Session, envelope: core.Envelope, data: bytes) -> Reply: ...

    async def authenticate(self, session: Session, event: core.Auth) -> bool: ...


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    settings: core.ServerSettings
    implicit_tls: bool = False
    tls: TlsServerConfig | None = None
    idle_timeout: float = 300.0
    max_connections: int = 500


TEMPFAIL = Reply(451, ("Local error, try again later",), "4.3.0")


class SmtpService:
    """Serves one SMTP service (MX, submission, smtps) on a stack."""

    def __init__(self, stack: Stack, tls: Tls | None, handler: Handler, config: ServiceConfig,
                 log: Any) -> None:
        if (config.implicit_tls or config.settings.starttls) and (tls is None or config.tls is None):
            raise ValueError(f"{config.name}: TLS asked for without a certificate")
        self.stack = stack
        self.tls = tls
        self.handler = handler
        self.config = config
        self.log = log
        self.active = 0
        self.sessions = 0
        self.refused = 0
        self.errors = 0
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
                await flow.write(Reply(421, (f"{self.config.settings.hostname} too many "
                                              "connections, try again later",), "4.3.2").to_bytes())
            except DeviceError:
                pass
            return
        self.active += 1
        self.sessions += 1
        session = Session(f"{next(_ids):x}", self.config.name, flow.peer, flow.local)
        try:
            await self._session(flow, session)
        except (ConnectionReset, Closed) as exc:
            self.log.debug("connection lost", session=session.id, error=str(exc))
        except TlsError as exc:
            self.log.info("TLS handshake failed", session=session.id, peer=session.peer[0],
                          error=str(exc))
        except asyncio.TimeoutError:
            pass
        finally:
            self.active -= 1

    async def _session(self, flow: Flow, session: Session) -> None:
        cfg = self.config
        if cfg.implicit_tls:
            assert self.tls is not None and cfg.tls is not None
            flow = await self.tls.server(flow, cfg.tls)
            session.tls = True
        conn = core.ServerConnection(cfg.settings)
        if cfg.implicit_tls:
            conn.implicit_tls()
        conn.start()
        handler = self.handler
        while True:
            event = conn.next_event()
            if event is core.NEED_DATA:
                out = conn.data_to_send()
                if out:
                    await flow.write(out)
                try:
                    data = await asyncio.wait_for(flow.read(65536), cfg.idle_timeout)
                except asyncio.TimeoutError:
                    await flow.write(Reply(421, (f"{cfg.settings.hostname} idle for too long, "
                                                 "closing",), "4.4.2").to_bytes())
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, core.MailFrom):
                conn.answer(await self._ask(handler.mail_from(session, event), session))
            elif isinstance(event, core.RcptTo):
                conn.answer(await self._ask(handler.rcpt_to(session, event), session))
            elif isinstance(event, core.Message):
                conn.answer(await self._ask(handler.message(session, event.envelope, event.data),
                                            session))
            elif isinstance(event, core.Auth):
                try:
                    ok = await handler.authenticate(session, event)
                except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the session
                    self.errors += 1
                    self.log.error("AUTH handler failed", session=session.id, error=repr(exc))
                    conn.answer(Reply(454, ("Temporary authentication failure",), "4.7.0"))
                    continue
                if ok:
                    session.auth_user = event.username
                    conn.answer(Reply(235, ("Authentication successful",), "2.7.0"))
                else:
                    self.log.info("authentication failed", session=session.id,
                                  peer=session.peer[0], user=event.username)
                    conn.answer(Reply(535, ("Authentication credentials invalid",), "5.7.8"))
            elif isinstance(event, core.Hello):
                session.helo = event.name
            elif isinstance(event, core.StartTls):
                await flow.write(conn.data_to_send())
                assert self.tls is not None and cfg.tls is not None
                flow = await self.tls.server(flow, cfg.tls)
                session.tls = True
                session.helo = None
                session.auth_user = None
                conn.tls_started()
            elif isinstance(event, core.Close):
                out = conn.data_to_send()
                if out:
                    try:
                        await flow.write(out)
                    except DeviceError:
                        pass
                return
            # Reset, Quit and other informational events need nothing here

    async def _ask(self, call: Any, session: Session) -> Reply:
        try:
            return await call
        except Exception as exc:  # noqa: BLE001 - answered 451, logged
            self.errors += 1
            self.log.error("handler failed", session=session.id, error=repr(exc))
            return TEMPFAIL
