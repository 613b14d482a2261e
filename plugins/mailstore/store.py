"""The mail store contract: mailboxes of users, messages with UIDs and flags.

One abstract store, several backends (as Xandikos has), one shared test
suite that every backend passes. The SMTP side calls :meth:`MailStore.deliver`;
the IMAP side lists, reads, flags, copies and expunges. Storage errors are
the classes below; the protocol layers turn them into SMTP/IMAP replies.

Names
    A *user* is a non-empty string of at most 200 UTF-8 bytes without
    ``/``, NUL or control characters, not starting with ``.`` and without
    ``..``. A *mailbox* name is UTF-8 text (IMAP's modified UTF-7 is the
    IMAP layer's job) with ``/`` as the hierarchy separator: at most 200
    UTF-8 bytes, no NUL or control characters, no leading or trailing
    ``/``, no empty segment, no ``..`` anywhere and no ``.`` segment.
    ``INBOX`` is case-insensitive (``inbox`` names it too) and always
    exists; every other name is case-sensitive. A malformed name raises
    :class:`InvalidName`; a backend may refuse a valid name that it cannot
    store (too long once encoded) with :class:`InvalidName` as well.

UIDs
    Each mailbox has a UIDVALIDITY and hands out UIDs from ``uidnext``
    upwards: strictly increasing, never reused within one UIDVALIDITY, also
    after the message with the highest UID is removed and the process
    restarts. A new store object on the same data sees the same UIDVALIDITY
    and UIDs. A mailbox deleted and created again gets a new UIDVALIDITY.
    :meth:`MailStore.list` never shows a UID lower than one it has already
    shown (a delivery still in progress hides the UIDs above its own).

Flags
    The IMAP system flags ``\\Seen \\Answered \\Flagged \\Deleted \\Draft``
    (case-insensitive in, canonical spelling out) and keywords (IMAP atoms
    without ``\\``, e.g. ``$Forwarded``, kept as given). ``\\Recent`` is
    session state and not stored. Anything else raises :class:`InvalidFlag`.

Concurrency
    One store object owns its data: backends may cache, and two store
    objects writing the same data at once are not supported (the Maildir
    backend refuses a second one with :class:`StoreFailure`). Calls on one
    store object may run concurrently (``asyncio.gather``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ingot.signatures import DeviceError

INBOX = "INBOX"
SEPARATOR = "/"
NAME_LIMIT = 200
"""Bytes (UTF-8) a user or mailbox name may have at most."""

SYSTEM_FLAGS = ("\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Seen")
SEEN = "\\Seen"
_SYSTEM = {f.lower(): f for f in SYSTEM_FLAGS}
_ATOM_SPECIALS = set('(){ %*"\\]')

# --------------------------------------------------------------------------
# errors


class MailStoreError(DeviceError):
    """Base class of every error a mail store raises."""


class MailboxNotFound(MailStoreError):
    """``user`` has no mailbox ``mailbox``."""

    def __init__(self, user: str, mailbox: str) -> None:
        super().__init__(f"no mailbox {mailbox!r} for {user!r}")
        self.user = user
        self.mailbox = mailbox


class MailboxExists(MailStoreError):
    """``create_mailbox``/``rename_mailbox`` onto a mailbox that exists."""

    def __init__(self, user: str, mailbox: str) -> None:
        super().__init__(f"mailbox {mailbox!r} of {user!r} exists already")
        self.user = user
        self.mailbox = mailbox


class MessageNotFound(MailStoreError):
    """No message with ``uid`` in the mailbox."""

    def __init__(self, user: str, mailbox: str, uid: int) -> None:
        super().__init__(f"no message with UID {uid} in {mailbox!r} of {user!r}")
        self.user = user
        self.mailbox = mailbox
        self.uid = uid


class InvalidName(MailStoreError):
    """A user or mailbox name (``what``) is malformed, or may not be used so."""

    def __init__(self, what: str, name: object, reason: str) -> None:
        super().__init__(f"invalid {what} {name!r}: {reason}")
        self.what = what
        self.name = name
        self.reason = reason


class InvalidFlag(InvalidName):
    """A flag is neither a known system flag nor a valid keyword."""

    def __init__(self, flag: object, reason: str) -> None:
        super().__init__("flag", flag, reason)


class StoreFailure(MailStoreError):
    """The storage below failed (I/O error, corrupt state, store in use)."""


# --------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class MessageInfo:
    """One message as :meth:`MailStore.list` reports it.

    ``internal_date`` is POSIX seconds (IMAP's INTERNALDATE); ``size`` the
    exact length of the stored bytes (RFC822.SIZE); ``key`` the backend's
    own name for the message (Maildir base name, kv key), for logs only.
    """

    uid: int
    flags: frozenset[str]
    internal_date: int
    size: int
    key: str


@dataclass(frozen=True)
class MailboxStatus:
    """IMAP STATUS of a mailbox: ``unseen`` counts messages without ``\\Seen``."""

    uidvalidity: int
    uidnext: int
    messages: int
    unseen: int


# --------------------------------------------------------------------------
# the contract


class MailStore(Protocol):
    """Mailboxes of users (see the module docstring for names, UIDs, flags).

    Every method is a coroutine except :meth:`close`. A method given a
    mailbox that does not exist raises :class:`MailboxNotFound` (``INBOX``
    always exists). I/O failures raise :class:`StoreFailure`. Bytes passed
    in are not kept; bytes returned belong to the caller.
    """

    async def deliver(self, user: str, data: bytes, *, mailbox: str = INBOX,
                      flags: Iterable[str] = (), internal_date: int | None = None) -> int:
        """Store ``data`` (the whole message, byte for byte) and return its UID.

        When it returns, the message is durable (fsynced); a crash at any
        point leaves the whole message or nothing, never part of one.
        ``internal_date`` defaults to now. O(1) in the mailbox's size.
        """
        ...

    async def mailboxes(self, user: str) -> list[str]:
        """Every mailbox of ``user``, sorted, ``INBOX`` included."""
        ...

    async def create_mailbox(self, user: str, mailbox: str) -> None:
        """Create an empty mailbox (parents need not exist).

        :class:`MailboxExists` when it exists (``INBOX`` always does).
        """
        ...

    async def delete_mailbox(self, user: str, mailbox: str) -> None:
        """Delete the mailbox and its messages (not its children).

        ``INBOX`` cannot be deleted (:class:`InvalidName`).
        """
        ...

    async def rename_mailbox(self, user: str, old: str, new: str) -> None:
        """Rename ``old`` and its children (``old/x`` -> ``new/x``).

        The mailbox keeps its UIDVALIDITY and UIDs. Renaming ``INBOX``
        (simplified RFC 3501 semantics) creates ``new`` and moves every INBOX
        message there (copy, then remove: not atomic, new UIDs), leaving
        ``INBOX`` empty; INBOX's children stay. :class:`MailboxExists` when
        ``new`` exists; renaming a mailbox below itself is :class:`InvalidName`.
        """
        ...

    async def status(self, user: str, mailbox: str) -> MailboxStatus:
        """UIDVALIDITY, UIDNEXT and message counts of the mailbox."""
        ...

    async def list(self, user: str, mailbox: str) -> list[MessageInfo]:
        """The messages of the mailbox, by ascending UID.

        May assign UIDs to messages that arrived by other means (a Maildir
        delivery agent writing into ``new/``).
        """
        ...

    async def get(self, user: str, mailbox: str, uid: int) -> bytes:
        """The message's bytes, exactly as delivered (:class:`MessageNotFound`)."""
        ...

    async def set_flags(self, user: str, mailbox: str, uid: int, flags: Iterable[str]) -> None:
        """Replace the message's flags (IMAP ``STORE FLAGS``; :class:`MessageNotFound`)."""
        ...

    async def remove(self, user: str, mailbox: str, uids: Iterable[int]) -> None:
        """Remove these messages for good (IMAP expunge). Unknown UIDs are skipped."""
        ...

    async def copy(self, user: str, src: str, uids: Iterable[int], dest: str) -> dict[int, int]:
        """Copy messages (bytes, flags, internal date) from ``src`` to ``dest``.

        Returns ``{old_uid: new_uid}`` for the UIDs found (unknown ones are
        skipped), new UIDs ascending with the old ones. Each copied message
        is durable and whole when this returns.
        """
        ...

    async def load_cache(self, user: str, mailbox: str) -> bytes | None:
        """The mailbox's cache blob (what :meth:`save_cache` stored last), or None.

        A cache holds what readers derived from messages (IMAP keeps ENVELOPE and
        BODYSTRUCTURE there): it may be lost or stale at any time and is never
        the only copy of anything."""
        ...

    async def save_cache(self, user: str, mailbox: str, data: bytes) -> None:
        """Replace the mailbox's cache blob (atomically; durability is not promised)."""
        ...

    async def subscriptions(self, user: str) -> list[str]:
        """The mailbox names the user subscribed to (IMAP SUBSCRIBE), sorted; a
        name may outlive its mailbox (RFC 3501 6.3.6)."""
        ...

    async def subscribe(self, user: str, mailbox: str, subscribed: bool = True) -> None:
        """Add ``mailbox`` to the user's subscriptions, or remove it (durable when it
        returns; removing a name that is not there does nothing)."""
        ...

    def close(self) -> None:
        """Release the store (locks, open files). Never raises; idempotent."""
        ...


# --------------------------------------------------------------------------
# helpers shared by the backends


def _check_text(what: str, name: object) -> str:
    if not isinstance(name, str):
        raise InvalidName(what, name, "not a string")
    if not name:
        raise InvalidName(what, name, "empty")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(what, name, "not valid UTF-8 text") from None
    if len(encoded) > NAME_LIMIT:
        raise InvalidName(what, name, f"longer than {NAME_LIMIT} bytes")
    for ch in name:
        if ch == "\0":
            raise InvalidName(what, name, "contains NUL")
        if ord(ch) < 0x20 or ord(ch) == 0x7F or unicodedata.category(ch) == "Cc":
            raise InvalidName(what, name, "contains a control character")
    if ".." in name:
        raise InvalidName(what, name, "contains '..'")
    return name


def check_user(user: object) -> str:
    """``user`` if it is a valid user name (module docstring), else :class:`InvalidName`."""
    name = _check_text("user", user)
    if "/" in name:
        raise InvalidName("user", name, "contains '/'")
    if name.startswith("."):
        raise InvalidName("user", name, "starts with '.'")
    return name


def check_mailbox(mailbox: object) -> str:
    """The canonical form of a valid mailbox name (``inbox`` -> ``INBOX``)."""
    name = _check_text("mailbox", mailbox)
    if name.startswith("/"):
        raise InvalidName("mailbox", name, "starts with '/'")
    if name.endswith("/"):
        raise InvalidName("mailbox", name, "ends with '/'")
    for seg in name.split("/"):
        if seg == "":
            raise InvalidName("mailbox", name, "has an empty segment")
        if seg == ".":
            raise InvalidName("mailbox", name, "has a '.' segment")
    if name.upper() == INBOX:
        return INBOX
    return name


def check_flags(flags: Iterable[str]) -> frozenset[str]:
    """Validated, canonical flags (system flags spelt as in :data:`SYSTEM_FLAGS`)."""
    if isinstance(flags, str):
        flags = (flags,)
    out = set()
    for flag in flags:
        if not isinstance(flag, str) or not flag:
            raise InvalidFlag(flag, "empty or not a string")
        if flag.startswith("\\"):
            canon = _SYSTEM.get(flag.lower())
            if canon is None:
                raise InvalidFlag(flag, "not a storable system flag")
            out.add(canon)
            continue
        if len(flag.encode("utf-8", "replace")) > 100:
            raise InvalidFlag(flag, "longer than 100 bytes")
        for ch in flag:
            if ord(ch) <= 0x20 or ord(ch) >= 0x7F or ch in _ATOM_SPECIALS:
                raise InvalidFlag(flag, f"{ch!r} is not allowed in a keyword")
        out.add(flag)
    return frozenset(out)


def check_uid(uid: object) -> int:
    if not isinstance(uid, int) or isinstance(uid, bool) or uid < 1:
        raise ValueError(f"a UID is a positive integer, not {uid!r}")
    return uid


def is_below(name: str, parent: str) -> bool:
    """``name`` is ``parent`` or one of its descendants."""
    return name == parent or name.startswith(parent + SEPARATOR)


async def begin_rename(store: MailStore, user: object, old: object, new: object
                       ) -> tuple[str, str, str] | None:
    """The checks every backend's ``rename_mailbox`` starts with. Renaming INBOX is
    done here (:func:`rename_inbox`) and gives None; otherwise the checked names."""
    user, old, new = check_user(user), check_mailbox(old), check_mailbox(new)
    if new == INBOX:
        raise MailboxExists(user, new)
    if is_below(new, old):
        raise InvalidName("mailbox", new, f"cannot rename {old!r} below itself")
    if old == INBOX:
        if new in await store.mailboxes(user):
            raise MailboxExists(user, new)
        await rename_inbox(store, user, new)
        return None
    return user, old, new


async def rename_inbox(store: MailStore, user: str, new: str) -> None:
    """RFC 3501 INBOX rename over the other operations (create, copy, remove)."""
    await store.create_mailbox(user, new)
    uids = [m.uid for m in await store.list(user, INBOX)]
    if uids:
        await store.copy(user, INBOX, uids, new)
        await store.remove(user, INBOX, uids)


def sorted_uids(uids: Iterable[int]) -> Sequence[int]:
    return sorted({check_uid(u) for u in uids})
