"""Mailbox stores: where the mail appliance's SMTP side delivers and its IMAP side reads.

:mod:`.store` holds the contract (:class:`~.store.MailStore`, its data
classes and errors); :mod:`.maildir` keeps mailboxes as real Maildir++ on
the host (readable by Dovecot, mutt, Python's :mod:`mailbox`), and
:mod:`.kvstore` keeps them in any ``kv_rw`` device (memory, direct, git).
Every backend passes the same suite (tests/integration/mailstore_conformance.py).
"""
