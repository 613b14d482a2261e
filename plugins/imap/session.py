"""One IMAP connection's state and commands (RFC 3501 / RFC 9051), over a mail store.

States (RFC 3501 3)::

    not authenticated --LOGIN/AUTHENTICATE--> authenticated --SELECT/EXAMINE--> selected
    selected --CLOSE/UNSELECT/failed SELECT--> authenticated;  any --LOGOUT--> logout

Commands allowed in each state; anything else is ``BAD``:

=====================  ========================================================
any                    CAPABILITY NOOP LOGOUT
not authenticated      STARTTLS LOGIN AUTHENTICATE
authenticated          ENABLE SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE
                       UNSUBSCRIBE LIST LSUB NAMESPACE STATUS APPEND IDLE
selected               the authenticated ones, and CHECK CLOSE UNSELECT EXPUNGE
                       SEARCH FETCH STORE COPY MOVE and their UID forms
=====================  ========================================================

LOGIN and AUTHENTICATE PLAIN need TLS (STARTTLS, or port 993) unless the
session was started with ``plaintext=True`` (the appliance allows that on
loopback only, by a key); before that the capability list says
LOGINDISABLED and has no AUTH=PLAIN.

The session does no network I/O: :meth:`Session.execute` takes a parsed
:class:`~.wire.Command` and returns an :class:`Outcome` (the bytes to send,
and what the adapter must do next: start TLS, read a SASL line, idle,
close). Store access is awaited (the store is a device).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ingot.plugins.mailstore.store import (INBOX, InvalidFlag, InvalidName, MailboxExists,
                                           MailboxNotFound, MailStoreError, MessageNotFound)

from . import wire
from .selected import MessageCache, View, uid_set

BASE_CAPS = ("IMAP4rev1", "LITERAL+", "SASL-IR", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS",
             "MOVE", "UNSELECT", "CHILDREN", "LIST-EXTENDED", "SPECIAL-USE", "STATUS=SIZE")
SPECIAL_USE = {"sent": "\\Sent", "sent messages": "\\Sent", "sent items": "\\Sent",
               "drafts": "\\Drafts", "trash": "\\Trash", "deleted messages": "\\Trash",
               "junk": "\\Junk", "spam": "\\Junk", "archive": "\\Archive"}


class Next(enum.Enum):
    CONTINUE = "continue"
    STARTTLS = "starttls"      # send the bytes, then run the TLS handshake, then tls_started()
    SASL = "sasl"              # send the bytes (a "+" challenge), then read one line
    IDLE = "idle"              # send "+ idling", wait for DONE or changes
    LOGOUT = "logout"          # send the bytes, then close


@dataclass
class Outcome:
    data: bytes
    next: Next = Next.CONTINUE


@dataclass(frozen=True)
class Settings:
    hostname: str = "localhost"
    starttls: bool = False        # a certificate is there: STARTTLS is offered
    plaintext: bool = False       # LOGIN without TLS allowed (loopback)
    max_literal: int = 64 * 1024 * 1024


Authenticator = Callable[[str, str], Awaitable[str | None]]
"""``(login, password) -> user`` (the store's user name) or None."""


def _ok(tag: str, text: str, code: str | None = None) -> bytes:
    return f"{tag} OK {'[' + code + '] ' if code else ''}{text}\r\n".encode()


def _no(tag: str, text: str, code: str | None = None) -> bytes:
    return f"{tag} NO {'[' + code + '] ' if code else ''}{text}\r\n".encode()


def _bad(tag: str, text: str) -> bytes:
    return f"{tag} BAD {text}\r\n".encode()


def _pattern(reference: str, pattern: str) -> re.Pattern[str]:
    """LIST's wildcards: ``*`` matches anything, ``%`` anything but the separator.
    ``INBOX`` is matched in any case (RFC 3501 5.1)."""
    full = reference + pattern
    if full[:5].upper() == INBOX and (len(full) == 5 or full[5] in "/*%"):
        full = INBOX + full[5:]
    rx = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in full)
    return re.compile(rx + r"\Z", re.S)


@dataclass
class Session:
    store: Any
    authenticate: Authenticator
    settings: Settings
    log: Any
    tls: bool = False
    cache: MessageCache = field(default_factory=MessageCache)
    recent_hub: dict = field(default_factory=dict)
    peer: str = ""

    def __post_init__(self) -> None:
        self.user: str | None = None
        self.view: View | None = None
        self.sasl_tag: str | None = None
        self.idle_tag: str | None = None
        self.logged_out = False
        self.enabled: set[str] = set()

    # ---------------------------------------------------------------- capabilities

    @property
    def login_allowed(self) -> bool:
        return self.tls or self.settings.plaintext

    def capabilities(self) -> str:
        caps = list(BASE_CAPS)
        if self.user is None:
            if self.settings.starttls and not self.tls:
                caps.append("STARTTLS")
            if self.login_allowed:
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
        return " ".join(caps)

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {self.capabilities()}] {self.settings.hostname} " \
               "IMAP4rev1 ready\r\n".encode()

    def tls_started(self) -> None:
        self.tls = True

    # ---------------------------------------------------------------- dispatch

    NONAUTH = {"STARTTLS", "LOGIN", "AUTHENTICATE"}
    ANY = {"CAPABILITY", "NOOP", "LOGOUT"}
    AUTH = {"ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
            "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE"}
    SELECTED = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY",
                "MOVE"}
    # no EXPUNGE responses while these run (RFC 3501 7.4.1); their UID forms may have them
    NO_EXPUNGES = {"FETCH", "STORE", "SEARCH"}

    async def execute(self, cmd: wire.Command) -> Outcome:
        name, tag = cmd.name, cmd.tag
        if name in self.ANY:
            pass
        elif name in self.NONAUTH:
            if self.user is not None:
                return Outcome(_bad(tag, f"{name} is not allowed once authenticated"))
        elif name in self.AUTH:
            if self.user is None:
                return Outcome(_bad(tag, f"{name} needs authentication first"))
        elif name in self.SELECTED:
            if self.view is None:
                return Outcome(_bad(tag, f"{name} needs a selected mailbox"))
        else:
            return Outcome(_bad(tag, f"unknown command {name}"))
        handler = getattr(self, "cmd_" + name.lower())
        try:
            out = await handler(cmd)
        except MailboxNotFound:
            out = _no(tag, "No such mailbox", "NONEXISTENT")
        except MailboxExists:
            out = _no(tag, "Mailbox exists", "ALREADYEXISTS")
        except InvalidFlag as exc:
            out = _bad(tag, f"Invalid flag: {exc}")
        except InvalidName as exc:
            out = _no(tag, f"Invalid mailbox name: {exc}", "CANNOT")
        except MessageNotFound:
            out = _no(tag, "Some messages were expunged meanwhile", "EXPUNGEISSUED")
        except MailStoreError as exc:
            self.log.error("store error", command=name, error=str(exc))
            out = _no(tag, "The mail store failed; try again", "UNAVAILABLE")
        if isinstance(out, Outcome):
            return out
        if self.view is not None and name not in ("SELECT", "EXAMINE", "CLOSE", "UNSELECT",
                                                  "LOGOUT"):
            updates = await self.view.refresh(expunges=cmd.uid or name not in self.NO_EXPUNGES)
            if updates:
                # untagged updates go before the tagged completion, the last line
                cut = out.rfind(b"\r\n", 0, len(out) - 2) + 2 if out.count(b"\r\n") > 1 else 0
                out = out[:cut] + b"".join(updates) + out[cut:]
        return Outcome(out)

    # ---------------------------------------------------------------- any state

    async def cmd_capability(self, cmd: wire.Command) -> bytes:
        return f"* CAPABILITY {self.capabilities()}\r\n".encode() + _ok(cmd.tag, "CAPABILITY done")

    async def cmd_noop(self, cmd: wire.Command) -> bytes:
        return _ok(cmd.tag, "NOOP done")

    async def cmd_logout(self, cmd: wire.Command) -> Outcome:
        self.close()
        self.logged_out = True
        return Outcome(b"* BYE Logging out\r\n" + _ok(cmd.tag, "LOGOUT done"), Next.LOGOUT)

    # ---------------------------------------------------------------- not authenticated

    async def cmd_starttls(self, cmd: wire.Command) -> bytes | Outcome:
        if self.tls or not self.settings.starttls:
            return _bad(cmd.tag, "STARTTLS is not available here")
        return Outcome(_ok(cmd.tag, "Begin TLS negotiation now"), Next.STARTTLS)

    async def _login(self, tag: str, login: str, password: str, how: str) -> bytes:
        user = await self.authenticate(login, password)
        if user is None:
            self.log.info("authentication failed", peer=self.peer, login=login, via=how)
            return _no(tag, "Invalid credentials", "AUTHENTICATIONFAILED")
        self.user = user
        self.log.info("logged in", peer=self.peer, user=user, via=how, tls=self.tls)
        return _ok(tag, "Logged in", f"CAPABILITY {self.capabilities()}")

    async def cmd_login(self, cmd: wire.Command) -> bytes:
        if not self.login_allowed:
            return _no(cmd.tag, "LOGIN needs TLS: use STARTTLS or port 993", "PRIVACYREQUIRED")
        login, password = cmd.args
        return await self._login(cmd.tag, login, password, "LOGIN")

    async def cmd_authenticate(self, cmd: wire.Command) -> bytes | Outcome:
        mechanism, initial = cmd.args
        if mechanism.upper() != "PLAIN":
            return _no(cmd.tag, f"Unsupported mechanism {mechanism}", "CANNOT")
        if not self.login_allowed:
            return _no(cmd.tag, "AUTHENTICATE needs TLS: use STARTTLS or port 993",
                       "PRIVACYREQUIRED")
        if initial is None:
            self.sasl_tag = cmd.tag
            return Outcome(b"+ \r\n", Next.SASL)
        return await self._plain(cmd.tag, initial)

    async def sasl_response(self, line: bytes) -> bytes:
        """The client's answer to the ``+`` of AUTHENTICATE (RFC 3501 6.2.2)."""
        tag, self.sasl_tag = self.sasl_tag or "*", None
        if line.strip() == b"*":
            return _bad(tag, "AUTHENTICATE cancelled")
        return await self._plain(tag, line.strip())

    async def _plain(self, tag: str, response: bytes) -> bytes:
        try:
            raw = b"" if response in (b"=", b"") else base64.b64decode(response, validate=True)
            authzid, login, password = raw.decode("utf-8").split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return _bad(tag, "Malformed PLAIN response")
        if authzid and authzid != login:
            return _no(tag, "Acting as another user is not allowed", "AUTHORIZATIONFAILED")
        return await self._login(tag, login, password, "AUTHENTICATE PLAIN")

    # ---------------------------------------------------------------- authenticated

    async def cmd_enable(self, cmd: wire.Command) -> bytes:
        # no extension that ENABLE turns on is implemented: none is enabled
        return b"* ENABLED\r\n" + _ok(cmd.tag, "ENABLE done")

    async def cmd_namespace(self, cmd: wire.Command) -> bytes:
        return b'* NAMESPACE (("" "/")) NIL NIL\r\n' + _ok(cmd.tag, "NAMESPACE done")

    async def _select(self, cmd: wire.Command, readonly: bool) -> bytes:
        mailbox = cmd.args[0]
        if self.view is not None:
            self.view.close()
            self.view = None
            closed = b"* OK [CLOSED] Previous mailbox closed\r\n"
        else:
            closed = b""
        view = View(self.store, self.cache, self.user, mailbox, readonly, self.recent_hub)
        try:
            lines = await view.open()
        except BaseException:
            view.close()
            raise
        self.view = view
        verb = "EXAMINE" if readonly else "SELECT"
        return closed + b"".join(lines) + _ok(cmd.tag, f"{verb} done",
                                              "READ-ONLY" if readonly else "READ-WRITE")

    async def cmd_select(self, cmd: wire.Command) -> bytes:
        return await self._select(cmd, False)

    async def cmd_examine(self, cmd: wire.Command) -> bytes:
        return await self._select(cmd, True)

    async def cmd_create(self, cmd: wire.Command) -> bytes:
        name = cmd.args[0].rstrip("/")
        if name.upper() == INBOX:
            return _no(cmd.tag, "INBOX always exists", "ALREADYEXISTS")
        await self.store.create_mailbox(self.user, name)
        return _ok(cmd.tag, "CREATE done")

    async def cmd_delete(self, cmd: wire.Command) -> bytes:
        name = cmd.args[0]
        if name.upper() == INBOX:
            return _no(cmd.tag, "INBOX cannot be deleted", "CANNOT")
        if self.view is not None and self.view.mailbox == name:
            self.view.close()
            self.view = None
        await self.store.delete_mailbox(self.user, name)
        return _ok(cmd.tag, "DELETE done")

    async def cmd_rename(self, cmd: wire.Command) -> bytes:
        old, new = cmd.args
        await self.store.rename_mailbox(self.user, old, new)
        return _ok(cmd.tag, "RENAME done")

    async def cmd_subscribe(self, cmd: wire.Command) -> bytes:
        await self.store.subscribe(self.user, cmd.args[0], True)
        return _ok(cmd.tag, "SUBSCRIBE done")

    async def cmd_unsubscribe(self, cmd: wire.Command) -> bytes:
        await self.store.subscribe(self.user, cmd.args[0], False)
        return _ok(cmd.tag, "UNSUBSCRIBE done")

    async def _tree(self) -> tuple[list[str], set[str]]:
        names = await self.store.mailboxes(self.user)
        parents = {n.rsplit("/", 1)[0] for n in names if "/" in n}
        for p in list(parents):  # every ancestor level
            while "/" in p:
                p = p.rsplit("/", 1)[0]
                parents.add(p)
        return names, parents

    def _attributes(self, name: str, exists: bool, parents: set[str],
                    subscribed: set[str], show_subscribed: bool) -> list[str]:
        attrs = []
        if not exists:
            attrs.append("\\NoSelect" if not show_subscribed else "\\NonExistent")
        attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        use = SPECIAL_USE.get(name.lower())
        if use:
            attrs.append(use)
        if show_subscribed and name in subscribed:
            attrs.append("\\Subscribed")
        return attrs

    async def cmd_list(self, cmd: wire.Command) -> bytes:
        args = cmd.args[0]
        select = {o.upper() for o in args.select_options}
        returns = {o.upper() for o in args.return_options}
        if not args.patterns or args.patterns == ("",):
            return b'* LIST (\\Noselect) "/" ""\r\n' + _ok(cmd.tag, "LIST done")
        names, parents = await self._tree()
        subscribed = set(await self.store.subscriptions(self.user)) \
            if ({"SUBSCRIBED"} & (select | returns)) else set()
        candidates = set(names) | parents
        if "SUBSCRIBED" in select:
            candidates = subscribed | ({p for s in subscribed for p in _ancestors(s)}
                                       if "RECURSIVEMATCH" in select else set())
        rxs = [_pattern(args.reference, p) for p in args.patterns]
        existing = set(names)
        out: list[bytes] = []
        recursive = "RECURSIVEMATCH" in select and "SUBSCRIBED" in select
        for name in sorted(candidates, key=lambda n: (n != INBOX, n)):
            if not any(rx.match(name) for rx in rxs):
                continue
            attrs = self._attributes(name, name in existing, parents, subscribed,
                                     "SUBSCRIBED" in (select | returns))
            if "SPECIAL-USE" in select and not any(a in SPECIAL_USE.values() for a in attrs):
                continue
            extended = b""
            if recursive and any(s.startswith(name + "/") for s in subscribed):
                extended = b' ("CHILDINFO" ("SUBSCRIBED"))'  # RFC 5258 3.5
            out.append(b"* LIST (" + " ".join(attrs).encode() + b') "/" '
                       + wire.serialize(wire.encode_mailbox(name)) + extended + b"\r\n")
            if "STATUS" in returns and name in existing and getattr(args, "status_items", ()):
                out.append(await self._status_line(name, args.status_items))
        return b"".join(out) + _ok(cmd.tag, "LIST done")

    async def cmd_lsub(self, cmd: wire.Command) -> bytes:
        reference, pattern = cmd.args
        rx = _pattern(reference, pattern)
        names, parents = await self._tree()
        existing = set(names)
        subscribed = set(await self.store.subscriptions(self.user))
        shown: dict[str, list[str]] = {}
        for name in sorted(subscribed):
            if rx.match(name):
                shown[name] = [] if name in existing else ["\\Noselect"]
                continue
            # a subscribed child that "%" does not reach shows its unsubscribed parent
            # as \Noselect (RFC 3501 6.3.9)
            for parent in _ancestors(name):
                if parent not in subscribed and parent not in shown and rx.match(parent):
                    shown[parent] = ["\\Noselect"]
        out = []
        for name in sorted(shown, key=lambda n: (n != INBOX, n)):
            out.append(b"* LSUB (" + " ".join(shown[name]).encode() + b') "/" '
                       + wire.serialize(wire.encode_mailbox(name)) + b"\r\n")
        return b"".join(out) + _ok(cmd.tag, "LSUB done")

    async def _status_line(self, mailbox: str, items: tuple[str, ...]) -> bytes:
        status = await self.store.status(self.user, mailbox)
        values: list[str] = []
        size = None
        for item in items:
            item = item.upper()
            if item == "MESSAGES":
                values += ["MESSAGES", str(status.messages)]
            elif item == "RECENT":
                # not yet seen by any session that selected the mailbox (see View)
                seen_up_to = self.recent_hub.get((self.user, mailbox), 0)
                recent = sum(1 for m in await self.store.list(self.user, mailbox)
                             if m.uid > seen_up_to)
                values += ["RECENT", str(recent)]
            elif item == "UIDNEXT":
                values += ["UIDNEXT", str(status.uidnext)]
            elif item == "UIDVALIDITY":
                values += ["UIDVALIDITY", str(status.uidvalidity)]
            elif item == "UNSEEN":
                values += ["UNSEEN", str(status.unseen)]
            elif item == "SIZE":
                if size is None:
                    size = sum(m.size for m in await self.store.list(self.user, mailbox))
                values += ["SIZE", str(size)]
            else:
                raise ValueError(item)
        return b"* STATUS " + wire.serialize(wire.encode_mailbox(mailbox)) + b" (" \
            + " ".join(values).encode() + b")\r\n"

    async def cmd_status(self, cmd: wire.Command) -> bytes:
        mailbox, items = cmd.args
        try:
            line = await self._status_line(mailbox, items)
        except ValueError as exc:
            return _bad(cmd.tag, f"Unknown STATUS item {exc}")
        return line + _ok(cmd.tag, "STATUS done")

    async def cmd_append(self, cmd: wire.Command) -> bytes:
        mailbox, messages = cmd.args
        if mailbox.upper() != INBOX and mailbox not in await self.store.mailboxes(self.user):
            return _no(cmd.tag, "No such mailbox", "TRYCREATE")
        uids = []
        for m in messages:
            when = int(m.date.timestamp()) if m.date is not None else None
            flags = [f for f in m.flags if f.lower() != "\\recent"]
            uids.append(await self.store.deliver(self.user, m.data, mailbox=mailbox, flags=flags,
                                                 internal_date=when))
        status = await self.store.status(self.user, mailbox)
        return _ok(cmd.tag, "APPEND done", f"APPENDUID {status.uidvalidity} {uid_set(uids)}")

    async def cmd_idle(self, cmd: wire.Command) -> Outcome:
        self.idle_tag = cmd.tag
        out = b"+ idling\r\n"
        if self.view is not None:
            out += b"".join(await self.view.refresh(expunges=True))
        return Outcome(out, Next.IDLE)

    async def idle_updates(self) -> bytes:
        if self.view is None:
            return b""
        return b"".join(await self.view.refresh(expunges=True))

    def idle_watch(self) -> Any:
        return self.view.watch if self.view is not None else None

    def idle_done(self, line: bytes) -> bytes:
        tag, self.idle_tag = self.idle_tag or "*", None
        if line.strip().upper() != b"DONE":
            return _bad(tag, "Expected DONE")
        return _ok(tag, "IDLE done")

    # ---------------------------------------------------------------- selected

    async def cmd_check(self, cmd: wire.Command) -> bytes:
        return _ok(cmd.tag, "CHECK done")

    async def cmd_close(self, cmd: wire.Command) -> bytes:
        assert self.view is not None
        if not self.view.readonly:
            await self.view.expunge()
        self.view.close()
        self.view = None
        return _ok(cmd.tag, "CLOSE done")

    async def cmd_unselect(self, cmd: wire.Command) -> bytes:
        assert self.view is not None
        self.view.close()
        self.view = None
        return _ok(cmd.tag, "UNSELECT done")

    def _writable(self, tag: str) -> bytes | None:
        assert self.view is not None
        return _no(tag, "The mailbox is read-only", "READ-ONLY") if self.view.readonly else None

    async def cmd_expunge(self, cmd: wire.Command) -> bytes:
        if (refused := self._writable(cmd.tag)) is not None:
            return refused
        assert self.view is not None
        uids = None
        if cmd.uid:
            uids = [u for _s, u in self.view.select(cmd.args[0], True)]
        return b"".join(await self.view.expunge(uids)) + _ok(cmd.tag, "EXPUNGE done")

    async def cmd_search(self, cmd: wire.Command) -> bytes:
        assert self.view is not None
        args = cmd.args[0]
        found = await self.view.search(args.key, cmd.uid)
        line = b"* SEARCH" + b"".join(b" %d" % n for n in found) + b"\r\n"
        return line + _ok(cmd.tag, "SEARCH done")

    async def cmd_fetch(self, cmd: wire.Command) -> bytes:
        assert self.view is not None
        seqset, items, changedsince = cmd.args
        unsupported = {i.name for i in items} & {"BINARY", "BINARY.SIZE", "MODSEQ"}
        if unsupported or changedsince is not None:
            return _bad(cmd.tag, "Not supported here: "
                        + (" ".join(sorted(unsupported)) or "CHANGEDSINCE"))
        return b"".join(await self.view.fetch(seqset, items, cmd.uid)) + _ok(cmd.tag,
                                                                             "FETCH done")

    async def cmd_store(self, cmd: wire.Command) -> bytes:
        if (refused := self._writable(cmd.tag)) is not None:
            return refused
        assert self.view is not None
        seqset, args = cmd.args
        return b"".join(await self.view.store_flags(seqset, args, cmd.uid)) + _ok(cmd.tag,
                                                                                  "STORE done")

    async def _copy(self, cmd: wire.Command, move: bool) -> bytes:
        assert self.view is not None
        seqset, dest = cmd.args
        if dest.upper() != INBOX and dest not in await self.store.mailboxes(self.user):
            return _no(cmd.tag, "No such mailbox", "TRYCREATE")
        if move and (refused := self._writable(cmd.tag)) is not None:
            return refused
        code, chosen = await self.view.copy(seqset, dest, cmd.uid)
        verb = "MOVE" if move else "COPY"
        if not move:
            return _ok(cmd.tag, f"{verb} done", code)
        expunged = await self.view.remove(chosen)
        head = f"* OK [{code}] Moved\r\n".encode() if code else b""
        return head + b"".join(expunged) + _ok(cmd.tag, f"{verb} done")

    async def cmd_copy(self, cmd: wire.Command) -> bytes:
        return await self._copy(cmd, False)

    async def cmd_move(self, cmd: wire.Command) -> bytes:
        return await self._copy(cmd, True)

    # ---------------------------------------------------------------- end

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
            self.view = None


def _ancestors(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]

