"""The mail appliance, part 1: SMTP MX, submission and relay.

Services (``services`` key), each an :class:`~ingot.plugins.smtp.adapter.SmtpService`:

``smtp`` (MX, ``smtp-port``)
    mail for the users of ``domains`` only: an unknown user gets ``550 5.1.1``
    at RCPT, any other domain ``554 5.7.1`` (no open relay). No AUTH here.
    SPF, DKIM and DMARC are checked (``verify``) and recorded in an
    ``Authentication-Results`` header; a DMARC failure under ``p=reject`` is
    refused with ``550 5.7.1`` (``dmarc-reject``). STARTTLS is offered when
    the config store holds a certificate.
``submission`` (``submission-port``, STARTTLS) and ``smtps`` (``smtps-port``, TLS)
    AUTH PLAIN/LOGIN, only over TLS; MAIL before AUTH gets ``530 5.7.0``; the
    sender must be the authenticated user (``553 5.7.1`` otherwise). Mail to
    any domain; mail from a domain with a key in ``dkim/`` is DKIM-signed.

Every accepted message gets a ``Received`` header. Delivery happens before
the final ``250``: local recipients into their mailbox (``mailboxes``
device, durable when it returns), the others onto the relay queue (the
``queue`` device, durable when it returns). So an acknowledged message is
on disk; a kill -9 at any time loses nothing that was acknowledged, and the
relay (:class:`~ingot.plugins.smtp.relay.Relay`) picks the queue up again at
the next start.
"""

from __future__ import annotations

import asyncio
import email.utils
from datetime import datetime, timezone
from typing import Any

from ingot.plugins.imap import adapter as imap_adapter
from ingot.plugins.imap.selected import MessageCache
from ingot.plugins.imap.session import Settings as ImapSettings
from ingot.plugins.mailstore.notify import Notifying
from ingot.plugins.smtp import authcheck, passwords
from ingot.plugins.smtp.adapter import ServiceConfig, Session, SmtpService
from ingot.plugins.smtp.relay import Relay
from ingot.plugins.smtp.server import Auth, Envelope, MailFrom, RcptTo, ServerSettings
from ingot.plugins.smtp.spool import Entry, RetryPolicy, Spool
from ingot.plugins.smtp.wire import Reply
from ingot.signatures import KvRO, KvRW, PClock, Random, Stack, Tls

from .settings import ConfigError, Settings, load, normalise

OK_MAIL = Reply(250, ("Sender OK",), "2.1.0")
OK_RCPT = Reply(250, ("Recipient OK",), "2.1.5")
NO_USER = Reply(550, ("No such user here",), "5.1.1")
NO_RELAY = Reply(554, ("Relay access denied",), "5.7.1")
NOT_OWNER = Reply(553, ("Sender address not owned by the authenticated user",), "5.7.1")
TEMP = Reply(451, ("Local error in processing, try again later",), "4.3.0")


def strip_own_results(data: bytes, authserv_id: str) -> bytes:
    """The message without Authentication-Results fields that claim to be ours: a sender
    could forge them (RFC 8601 5). Other servers' fields and the body stay as they are."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or b"authentication-results" not in data[:end].lower():
        return data
    own = authserv_id.lower().encode()
    kept: list[bytes] = []
    drop = False
    for line in data[:end + 2].split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not drop:
                kept.append(line)
            continue
        name, _, value = line.partition(b":")
        drop = name.strip().lower() == b"authentication-results" and \
            value.strip().split(b";")[0].split()[:1] == [own]
        if not drop:
            kept.append(line)
    return b"\r\n".join(kept) + data[end:]


def _header_date(t: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(t, timezone.utc))


class Mail:
    """The appliance: see the module docstring."""

    def __init__(self, stack: Stack, tls: Tls, config: KvRO, queue: KvRW, mailboxes: Any,
                 resolver: Any, pclock: PClock, random: Random, keys: Any, log: Any) -> None:
        self.stack = stack
        self.tls = tls
        self.config = config
        self.mailboxes = Notifying(mailboxes)
        self.resolver = resolver
        self.pclock = pclock
        self.random = random
        self.keys = keys
        self.log = log
        self.spool = Spool(queue, log)
        self.settings = Settings()
        self.domains = {d.lower().rstrip(".") for d in keys.domains}
        self.services: dict[str, Any] = {}
        self.dummy_hash: str | None = None
        self.addresses: dict[str, tuple[str, int]] = {}
        self.relay: Relay | None = None
        self.ready = asyncio.Event()
        self.accepted = 0
        self.delivered_local = 0

    # -- start -----------------------------------------------------------------

    async def start(self) -> None:
        keys = self.keys
        try:
            self.settings = await load(self.config, keys)
        except ConfigError as exc:
            raise ValueError(f"config store: {exc}") from None
        tls = self.settings.tls
        needs_tls = {"submission", "smtps", "imaps"} & set(keys.services)
        if tls is None and needs_tls:
            raise ValueError(f"config store: {', '.join(sorted(needs_tls))} need tls/cert.pem "
                             "and tls/key.pem (passwords only ever travel over TLS); or run "
                             "--services smtp,imap")
        queued = await self.spool.load()
        self.relay = Relay(
            spool=self.spool, stack=self.stack, tls=self.tls, resolver=self.resolver,
            pclock=self.pclock, random=self.random, log=self.log, hostname=keys.hostname,
            port=keys.relay_port, smarthost=keys.relay_host, starttls=keys.relay_starttls,
            concurrency=keys.relay_concurrency, timeout=keys.relay_timeout,
            resolve_timeout=keys.resolve_timeout,
            policy=RetryPolicy([float(s) for s in keys.retry], keys.queue_lifetime),
            is_local=self.is_local, deliver_local=self.deliver_local)
        base = dict(hostname=keys.hostname, max_message_size=keys.max_size,
                    max_recipients=keys.max_recipients)
        plan = {
            "smtp": (keys.smtp_port, ServerSettings(**base, starttls=tls is not None,
                                                    auth_mechanisms=()), False),
            "submission": (keys.submission_port,
                           ServerSettings(**base, starttls=True, require_auth=True), False),
            "smtps": (keys.smtps_port, ServerSettings(**base, require_auth=True), True),
        }
        imap_settings = ImapSettings(hostname=keys.hostname, starttls=tls is not None,
                                     plaintext=keys.imap_plaintext, max_literal=keys.max_size)
        imap_plan = {"imap": (keys.imap_port, imap_settings, False),
                     "imaps": (keys.imaps_port, imap_settings, True)}
        cache = MessageCache()
        recent: dict = {}
        relay_task = asyncio.create_task(self.relay.run())
        try:
            for name in keys.services:
                if name in imap_plan:
                    port, isettings, implicit = imap_plan[name]
                    service = imap_adapter.ImapService(
                        self.stack, self.tls, self.mailboxes, self.check_login,
                        imap_adapter.ServiceConfig(
                            name, isettings, implicit_tls=implicit, tls=tls,
                            max_connections=keys.max_connections,
                            plaintext_hosts=("127.0.0.1", "::1")),
                        self.log, cache=cache, recent=recent)
                    listener = await service.listen(keys.host, port)
                    self.services[name] = service
                    self.addresses[name] = listener.address
                    self.log.info("listening", service=name, host=listener.address[0],
                                  port=listener.address[1],
                                  tls="implicit" if implicit else
                                  ("starttls" if isettings.starttls else "none"))
                    continue
                port, settings, implicit = plan[name]
                handler = MxHandler(self) if name == "smtp" else SubmissionHandler(self)
                service = SmtpService(self.stack, self.tls, handler, ServiceConfig(
                    name, settings, implicit_tls=implicit, tls=tls,
                    idle_timeout=keys.idle_timeout, max_connections=keys.max_connections),
                    self.log)
                listener = await service.listen(keys.host, port)
                self.services[name] = service
                self.addresses[name] = listener.address
                self.log.info("listening", service=name, host=listener.address[0],
                              port=listener.address[1], tls="implicit" if implicit else
                              ("starttls" if settings.starttls else "none"))
            self.log.info("mail ready", domains=",".join(sorted(self.domains)),
                          users=len(self.settings.users),
                          dkim=",".join(sorted(self.settings.dkim_keys)) or "none",
                          queued=len(queued))
            self.ready.set()
            self.relay.wake()
            await relay_task
        finally:
            relay_task.cancel()
            for service in self.services.values():
                service.close()
            self.log.info("stopped", accepted=self.accepted, delivered=self.delivered_local,
                          relayed=self.relay.delivered, deferred=self.relay.deferred,
                          bounced=self.relay.bounced, queued=len(self.spool))

    # -- shared by the handlers --------------------------------------------------

    def is_local(self, address: str) -> bool:
        return address.rpartition("@")[2].lower().rstrip(".") in self.domains

    def user_of(self, address: str) -> str | None:
        addr = normalise(address)
        return addr if addr in self.settings.users else None

    async def check_login(self, login: str, password: str) -> str | None:
        """The user a login and password name (SMTP AUTH, IMAP LOGIN), or None."""
        user = self.user_of(login) if "@" in login else None
        if user is None:
            # the same work as a real check, so that timing does not tell users apart
            if self.dummy_hash is None:
                self.dummy_hash = await asyncio.to_thread(passwords.hash_password, "-")
            await passwords.verify_password_async(self.dummy_hash, password)
            return None
        ok = await passwords.verify_password_async(self.settings.users[user].hash, password)
        return user if ok else None

    async def deliver_local(self, recipient: str, data: bytes) -> None:
        user = self.user_of(recipient)
        if user is None:
            raise LookupError(recipient)
        await self.mailboxes.deliver(user, data)
        self.delivered_local += 1

    def received(self, session: Session, envelope: Envelope, queue_id: str, now: float) -> bytes:
        proto = "ESMTP" if envelope.helo and session.helo is not None else "SMTP"
        if envelope.tls:
            proto += "S"
        if envelope.auth_user:
            proto += "A"
        peer = session.peer[0]
        helo = (envelope.helo or "unknown").replace("(", "").replace(")", "")
        rcpt = f"\r\n\tfor <{envelope.recipients[0]}>" if len(envelope.recipients) == 1 else ""
        return (f"Received: from {helo} ([{peer}])\r\n\tby {self.keys.hostname} (Ingot) with "
                f"{proto} id {queue_id}{rcpt};\r\n\t{_header_date(now)}\r\n").encode()

    async def accept(self, session: Session, envelope: Envelope, data: bytes) -> Reply:
        """Deliver locally and queue the rest; the 250 means it is all on disk."""
        assert self.relay is not None
        queue_id = self.relay.new_id()
        now = self.pclock.now_d_ps()
        data = self.received(session, envelope, queue_id, now) + data
        queued: list[str] = []
        delivered = 0
        for rcpt in envelope.recipients:
            if not self.is_local(rcpt):
                queued.append(rcpt)
                continue
            try:
                await self.deliver_local(rcpt, data)
                delivered += 1
            except Exception as exc:  # noqa: BLE001 - retried from the queue
                self.log.warning("local delivery failed, queued for retry", queue_id=queue_id,
                                 recipient=rcpt, error=str(exc))
                queued.append(rcpt)
        if queued:
            entry = Entry(id=queue_id, sender=envelope.sender, recipients=queued, arrival=now,
                          next_attempt=now, smtputf8=envelope.smtputf8,
                          body8bit=(envelope.body or "").upper() == "8BITMIME", data=data)
            try:
                await self.spool.put(entry)
            except Exception as exc:  # noqa: BLE001 - not acknowledged: the client retries
                self.log.error("queue write failed", queue_id=queue_id, error=str(exc))
                return TEMP
            self.relay.wake()
        self.accepted += 1
        self.log.info("accepted", queue_id=queue_id, service=session.service,
                      sender=envelope.sender or "<>", recipients=len(envelope.recipients),
                      local=delivered, queued=len(queued), size=len(data),
                      user=session.auth_user or "")
        return Reply(250, (f"OK queued as {queue_id}",), "2.0.0")


class MxHandler:
    """Port 25: mail for local users, checked with SPF, DKIM and DMARC."""

    def __init__(self, app: Mail) -> None:
        self.app = app

    async def mail_from(self, session: Session, event: MailFrom) -> Reply:
        return OK_MAIL

    async def rcpt_to(self, session: Session, event: RcptTo) -> Reply:
        if not self.app.is_local(event.recipient):
            return NO_RELAY
        return OK_RCPT if self.app.user_of(event.recipient) else NO_USER

    async def authenticate(self, session: Session, event: Auth) -> bool:
        return False  # not offered here

    async def message(self, session: Session, envelope: Envelope, data: bytes) -> Reply:
        app = self.app
        if app.keys.verify:
            spf = await authcheck.check_spf(app.resolver, session.peer[0], envelope.sender,
                                            envelope.helo)
            dkim = await authcheck.verify_dkim(app.resolver, data)
            author = authcheck.from_domain(data)
            dmarc = await authcheck.check_dmarc(app.resolver, author, spf, dkim)
            header = authcheck.authentication_results(
                app.keys.hostname, spf, dkim, dmarc, helo=envelope.helo,
                mail_from=envelope.sender, from_domain=author)
            if dmarc.disposition == "reject" and app.keys.dmarc_reject:
                app.log.info("refused by DMARC policy", session=session.id, domain=author,
                             spf=spf.result)
                return Reply(550, (f"Rejected by the DMARC policy of {author}",), "5.7.1")
            data = b"Authentication-Results: " + header.encode() + b"\r\n" \
                + strip_own_results(data, app.keys.hostname)
        return await app.accept(session, envelope, data)


class SubmissionHandler:
    """Ports 587 and 465: authenticated users send mail anywhere, DKIM-signed."""

    def __init__(self, app: Mail) -> None:
        self.app = app

    async def authenticate(self, session: Session, event: Auth) -> bool:
        user = await self.app.check_login(event.username, event.password)
        return user is not None and not (event.authzid and normalise(event.authzid) != user)

    async def mail_from(self, session: Session, event: MailFrom) -> Reply:
        if session.auth_user is None or normalise(event.sender or "@") != normalise(
                session.auth_user):
            return NOT_OWNER
        return OK_MAIL

    async def rcpt_to(self, session: Session, event: RcptTo) -> Reply:
        if self.app.is_local(event.recipient) and not self.app.user_of(event.recipient):
            return NO_USER
        return OK_RCPT

    async def message(self, session: Session, envelope: Envelope, data: bytes) -> Reply:
        app = self.app
        now = app.pclock.now_d_ps()
        head_end = data.find(b"\r\n\r\n")
        head = data[:head_end if head_end >= 0 else len(data)].lower()
        extra = b""
        if b"\nmessage-id:" not in b"\n" + head:
            extra += (f"Message-ID: <{app.relay.new_id()}@{app.keys.hostname}>\r\n").encode()
        if b"\ndate:" not in b"\n" + head:
            extra += f"Date: {_header_date(now)}\r\n".encode()
        data = extra + data
        domain = envelope.sender.rpartition("@")[2].lower()
        key = app.settings.dkim_keys.get(domain)
        if key is not None:
            try:
                data = authcheck.dkim_sign(data, domain=domain, selector=app.keys.dkim_selector,
                                           private_key_pem=key) + data
            except Exception as exc:  # noqa: BLE001 - sent unsigned rather than lost
                app.log.error("DKIM signing failed, sending unsigned", domain=domain,
                              error=str(exc))
        return await app.accept(session, envelope, data)
