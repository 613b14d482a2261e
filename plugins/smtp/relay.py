"""Delivery of queued mail: MX lookup, SMTP to the remote server, retries, bounces.

For each due :class:`~.spool.Entry`, recipients are grouped by domain. A
domain's hosts are its MX records in preference order (equal preferences in
a random order), or the domain itself when it has none (RFC 5321 5.1,
implicit MX); a null MX (RFC 7505) or a domain that does not exist fails its
recipients permanently (5.1.10, 5.1.2). With ``smarthost`` every domain
goes there instead. Each host's addresses (A, then AAAA) are tried in turn;
the next host is tried when a connection fails, the greeting refuses, or
the whole transaction failed transiently (no recipient taken). STARTTLS is
used when the server offers it (``starttls="may"``: encryption without
certificate checks, as Postfix's ``may`` level).

Outcomes per recipient: accepted ones leave the entry; a permanent failure
(5xx) joins the bounce; a transient one (4xx, no connection, DNS failure)
stays, and the entry is rewritten with its next attempt time
(:class:`~.spool.RetryPolicy`). When the queue lifetime has run out the
remaining recipients fail with 4.4.7. A bounce (RFC 3464, :mod:`.dsn`) goes
to the sender with the null reverse-path, through the same queue (or the
local mailboxes); a bounce is never bounced.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ingot.signatures import DeviceError, PClock, Random, Stack, Tls, TlsClientConfig, TlsError

from . import dsn
from .client import (ClientConnection, LocalProtocolError, RemoteProtocolError, ServerReply,
                     State, Transaction)
from .spool import Entry, RetryPolicy, Spool


@dataclass
class Failure:
    status: str
    diagnostic: str
    remote: str | None = None
    permanent: bool = False


class HostFailed(Exception):
    """This host could not take the message: try the next one."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.diagnostic)
        self.failure = failure


LocalDeliver = Callable[[str, bytes], Awaitable[None]]


class Relay:
    def __init__(self, *, spool: Spool, stack: Stack, tls: Tls | None, resolver: Any,
                 pclock: PClock, random: Random, log: Any, hostname: str, port: int = 25,
                 smarthost: str = "", starttls: str = "may", concurrency: int = 10,
                 timeout: float = 60.0, resolve_timeout: float = 5.0,
                 policy: RetryPolicy = RetryPolicy(),
                 is_local: Callable[[str], bool] = lambda _r: False,
                 deliver_local: LocalDeliver | None = None) -> None:
        self.spool = spool
        self.stack = stack
        self.tls = tls
        self.resolver = resolver
        self.pclock = pclock
        self.random = random
        self.log = log
        self.hostname = hostname
        self.port = port
        self.smarthost = _host_port(smarthost, port) if smarthost else None
        self.starttls = starttls
        self.timeout = timeout
        self.resolve_timeout = resolve_timeout
        self.policy = policy
        self.is_local = is_local
        self.deliver_local = deliver_local
        self.slots = asyncio.Semaphore(concurrency)
        self.wakeup = asyncio.Event()
        self.busy: set[str] = set()
        self.delivered = 0
        self.deferred = 0
        self.bounced = 0

    def now(self) -> float:
        return self.pclock.now_d_ps()

    def new_id(self) -> str:
        s, ns = self.pclock.now()
        return f"{s:x}{ns // 1000:05x}{self.random.generate(5).hex()}"

    def wake(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        """Deliver due entries until cancelled."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                self.wakeup.clear()
                for entry in self.spool.due(self.now()):
                    if entry.id in self.busy:
                        continue
                    self.busy.add(entry.id)
                    task = asyncio.create_task(self._attempt(entry))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                nxt = self.spool.next_due()
                idle = 3600.0 if nxt is None else max(0.05, nxt - self.now())
                try:
                    await asyncio.wait_for(self.wakeup.wait(), min(idle, 3600.0))
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in tasks:
                task.cancel()

    async def _attempt(self, entry: Entry) -> None:
        try:
            async with self.slots:
                await self._deliver(entry)
        except Exception as exc:  # noqa: BLE001 - the entry stays queued and is retried
            self.log.error("delivery attempt failed", queue_id=entry.id, error=repr(exc))
            entry.attempts += 1
            nxt = self.policy.next_attempt(entry.attempts, entry.arrival, self.now())
            entry.next_attempt = nxt if nxt is not None else self.now()
            try:
                await self.spool.put(entry)
            except DeviceError:
                pass
        finally:
            self.busy.discard(entry.id)
            self.wake()

    async def _deliver(self, entry: Entry) -> None:
        failures: dict[str, Failure] = {}
        by_domain: dict[str, list[str]] = {}
        for rcpt in entry.recipients:
            by_domain.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        done: list[str] = []
        for domain, rcpts in by_domain.items():
            if self.is_local(rcpts[0]) and self.deliver_local is not None:
                for rcpt in rcpts:
                    try:
                        await self.deliver_local(rcpt, entry.data)
                        done.append(rcpt)
                    except LookupError:
                        failures[rcpt] = Failure("5.1.1", "x-local; no such user here",
                                                 permanent=True)
                    except Exception as exc:  # noqa: BLE001 - retried later
                        failures[rcpt] = Failure("4.3.0", f"x-local; {exc}")
                continue
            ok, failed = await self._to_domain(entry, domain, rcpts)
            done += ok
            failures.update(failed)
        self.delivered += len(done)
        if done:
            self.log.info("delivered", queue_id=entry.id, recipients=",".join(done),
                          attempt=entry.attempts + 1)
        permanent = {r: f for r, f in failures.items() if f.permanent}
        transient = {r: f for r, f in failures.items() if not f.permanent}
        entry.attempts += 1
        if transient:
            nxt = self.policy.next_attempt(entry.attempts, entry.arrival, self.now())
            if nxt is None:
                for r, f in transient.items():
                    permanent[r] = Failure("4.4.7", f"{f.diagnostic} (gave up: message "
                                           "too long in the queue)", f.remote, True)
                transient = {}
            else:
                entry.next_attempt = nxt
                for r, f in transient.items():
                    entry.last_error[r] = f.diagnostic
                self.deferred += len(transient)
                self.log.info("deferred", queue_id=entry.id, recipients=",".join(transient),
                              attempt=entry.attempts, retry_in=round(nxt - self.now(), 1),
                              reason=next(iter(transient.values())).diagnostic)
        if permanent:
            self.log.info("bounced", queue_id=entry.id, recipients=",".join(permanent),
                          reason=next(iter(permanent.values())).diagnostic)
            self.bounced += len(permanent)
            await self._bounce(entry, permanent)
        entry.recipients = [r for r in entry.recipients if r in transient]
        if entry.recipients:
            await self.spool.put(entry)
        else:
            await self.spool.remove(entry)

    async def _bounce(self, entry: Entry, failures: dict[str, Failure]) -> None:
        if entry.bounce or not dsn.should_bounce(entry.sender):
            return
        now = self.now()
        report = [dsn.RecipientFailure(recipient=r, action="failed", status=f.status,
                                       diagnostic=f.diagnostic, remote_mta=f.remote,
                                       last_attempt=now)
                  for r, f in failures.items()]
        unique = self.new_id()
        data = dsn.build_bounce(reporting_mta=self.hostname, original_sender=entry.sender,
                                original_envelope_id=entry.envid, arrival_date=entry.arrival,
                                failures=report, original=entry.data, now=now,
                                message_id_domain=self.hostname, unique=unique)
        bounce = Entry(id=unique, sender="", recipients=[entry.sender], arrival=now,
                       next_attempt=now, bounce=True, data=data)
        await self.spool.put(bounce)

    # -- one domain ----------------------------------------------------------

    async def _hosts(self, domain: str) -> list[tuple[str, int]] | Failure:
        if self.smarthost is not None:
            return [self.smarthost]
        try:
            literal = ipaddress.ip_address(domain.strip("[]").removeprefix("IPv6:"))
        except ValueError:
            literal = None
        if literal is not None:
            return [(str(literal), self.port)]
        try:
            answer = await self.resolver.resolve(domain, "MX", timeout_s=self.resolve_timeout)
        except Exception as exc:  # noqa: BLE001 - ResolveError and friends: try later
            return Failure("4.4.3", f"x-dns; MX lookup of {domain} failed: {exc}")
        if answer.nxdomain:
            return Failure("5.1.2", f"x-dns; domain {domain} does not exist", permanent=True)
        if answer.rcode not in (0, 3):
            return Failure("4.4.3", f"x-dns; MX lookup of {domain}: rcode {answer.rcode}")
        mx = [v for v in answer.values if isinstance(v, tuple)]
        if not mx:
            return [(domain, self.port)]
        if any(host in ("", ".") for _pref, host in mx):
            return Failure("5.1.10", f"x-dns; {domain} accepts no mail (null MX)",
                           permanent=True)
        order = sorted(mx, key=lambda m: (m[0], self.random.randbelow(1 << 16)))
        return [(host.rstrip("."), self.port) for _pref, host in order]

    async def _addresses(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        found: list[str] = []
        for rtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rtype, timeout_s=self.resolve_timeout)
            except Exception:  # noqa: BLE001 - the other family may still work
                continue
            found += [v for v in answer.values if isinstance(v, str)]
        return found

    async def _to_domain(self, entry: Entry, domain: str, rcpts: list[str]
                         ) -> tuple[list[str], dict[str, Failure]]:
        hosts = await self._hosts(domain)
        if isinstance(hosts, Failure):
            return [], {r: hosts for r in rcpts}
        last = Failure("4.4.1", f"x-unix; no MX host of {domain} could be reached")
        for host, port in hosts:
            addresses = await self._addresses(host)
            if not addresses:
                last = Failure("4.4.3", f"x-dns; no address for {host}")
                continue
            for address in addresses:
                try:
                    return await self._session(entry, host, address, port, rcpts)
                except HostFailed as exc:
                    last = exc.failure
                    if last.permanent:
                        return [], {r: last for r in rcpts}
        return [], {r: last for r in rcpts}

    async def _session(self, entry: Entry, host: str, address: str, port: int,
                       rcpts: list[str]) -> tuple[list[str], dict[str, Failure]]:
        where = f"{host}[{address}]:{port}"
        try:
            flow = await self.stack.connect_tcp(address, port, timeout_s=self.timeout)
        except DeviceError as exc:
            raise HostFailed(Failure("4.4.1", f"x-unix; connect to {where}: {exc}")) from None
        conn = ClientConnection(self.hostname)
        try:
            return await asyncio.wait_for(self._converse(flow, conn, entry, host, where, rcpts),
                                          self.timeout * 4)
        except (asyncio.TimeoutError, DeviceError, RemoteProtocolError, TlsError) as exc:
            raise HostFailed(Failure("4.4.2", f"x-unix; {where}: {type(exc).__name__} "
                                     f"{exc}".rstrip(), host)) from None
        finally:
            flow.close()

    async def _replies(self, flow: Any, conn: ClientConnection) -> list[ServerReply]:
        while True:
            data = await asyncio.wait_for(flow.read(65536), self.timeout)
            if not data:
                raise RemoteProtocolError("connection closed by the server")
            replies = conn.receive_data(data)
            if replies:
                return replies

    async def _command(self, flow: Any, conn: ClientConnection, data: bytes) -> ServerReply:
        await flow.write(data)
        return (await self._replies(flow, conn))[-1]

    async def _converse(self, flow: Any, conn: ClientConnection, entry: Entry, host: str,
                        where: str, rcpts: list[str]) -> tuple[list[str], dict[str, Failure]]:
        await self._replies(flow, conn)
        if conn.host_refused is not None:
            r = conn.host_refused
            raise HostFailed(Failure(dsn.status_from_reply(r.code, r.enhanced),
                                     f"smtp; {r.diagnostic()}", host))
        reply = await self._command(flow, conn, conn.ehlo())
        if conn.state is not State.READY:
            reply = await self._command(flow, conn, conn.helo())
            if conn.state is not State.READY:
                raise HostFailed(Failure(dsn.status_from_reply(reply.code, reply.enhanced),
                                         f"smtp; {reply.diagnostic()}", host))
        ext = conn.extensions
        if (self.starttls == "may" and self.tls is not None and ext is not None
                and ext.starttls):
            await self._command(flow, conn, conn.starttls())
            if conn.state is State.TLS_READY:
                flow = await self.tls.client(flow, TlsClientConfig(server_name=host,
                                                                  verify=False))
                conn.after_tls()
                await self._command(flow, conn, conn.ehlo())
                if conn.state is not State.READY:
                    raise HostFailed(Failure("4.7.0", f"x-unix; {where}: EHLO after TLS "
                                             "refused", host))
        tx = Transaction(conn, entry.sender, rcpts, entry.data, body8bit=entry.body8bit,
                         smtputf8=entry.smtputf8)
        out = tx.begin()
        try:
            while not tx.done:
                await flow.write(out)
                out = tx.receive(await self._replies(flow, conn))
            if out:
                await flow.write(out)
        except (asyncio.TimeoutError, DeviceError, RemoteProtocolError) as exc:
            tx.connection_lost(f"{type(exc).__name__} {exc}".strip())
        except LocalProtocolError as exc:
            tx.connection_lost(str(exc))
        res = tx.result
        try:
            if conn.state is State.READY and not conn.pending:
                await asyncio.wait_for(flow.write(conn.quit()), 5)
        except Exception:  # noqa: BLE001 - the transaction is over either way
            pass
        failures: dict[str, Failure] = {}
        for r, rep in res.failed.items():
            failures[r] = Failure(dsn.status_from_reply(rep.code, rep.enhanced),
                                  f"smtp; {rep.diagnostic()}", host, rep.is_permanent)
        if not res.accepted and failures and all(not f.permanent for f in failures.values()):
            raise HostFailed(next(iter(failures.values())))
        return list(res.accepted), failures


def _host_port(text: str, default: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or default)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default
