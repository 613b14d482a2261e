"""The ``mailstore`` device kind: where mail is delivered and read (SMTP delivers, IMAP reads).

Backends:

``maildir``
    real Maildir++ folders under ``--<device>-path`` on the host
    (:mod:`.maildir`): other Maildir tools (Dovecot, mutt, mbsync) read them.
``kv``
    the same interface over the appliance's ``kv_rw`` device (:mod:`.kvstore`):
    with the ``git`` backend every delivery and flag change is a commit.
"""

from __future__ import annotations

import os

import ingot
from ingot.keys import key
from ingot.registry import DeviceContext, DeviceSpec


@ingot.hookimpl
def ingot_kinds_register() -> dict[str, type]:
    from .store import MailStore

    return {"mailstore": MailStore}


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    return [
        DeviceSpec("mailstore", "maildir", "ingot.plugins.mailstore.plugin:connect_maildir",
                   "Maildir++ folders on the host, one per user (tmp/new/cur, atomic rename)",
                   targets=("unix", "oci"),
                   keys=(key("path", str, "Folder holding one Maildir per user"),),
                   default_on=("unix", "oci")),
        DeviceSpec("mailstore", "kv", "ingot.plugins.mailstore.plugin:connect_kv",
                   "Mailboxes in a kv_rw store (git: one commit per change)",
                   requires=(("store", "kv_rw"),), default_on=("vm", "qubes")),
    ]


def connect_maildir(ctx: DeviceContext):
    from .maildir import MaildirStore

    path = ctx.keys["path"]
    if not path:
        raise ValueError(f"no Maildir folder (set {ctx.key_flag('path')})")
    os.makedirs(path, exist_ok=True)
    return MaildirStore(path)


def connect_kv(ctx: DeviceContext):
    from .kvstore import KvMailStore

    return KvMailStore(ctx.deps["store"])
