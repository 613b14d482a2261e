"""SMTP for Ingot: a server core, a client core, the relay queue, SPF/DKIM/DMARC, bounces.

Files: ``wire.py`` (command lines, paths, replies, dot-stuffing), ``server.py``
(the server state machine, sans-I/O), ``client.py`` (the client state
machine used by the relay, sans-I/O), ``dsn.py`` (delivery status
notifications, RFC 3464), ``authcheck.py`` (SPF with pyspf, DKIM with dkimpy,
DMARC, Authentication-Results; lookups through the ``resolver`` device),
``passwords.py`` (argon2id and bcrypt hashes), ``spool.py`` (the durable
queue over a ``kv_rw`` device), and the files with I/O: ``adapter.py`` (an
SMTP service over a stack :class:`~ingot.signatures.Flow`, STARTTLS through
the ``tls`` device) and ``relay.py`` (delivery to remote MX servers).
As a plugin it adds no device: the mail appliance uses it as a library.
"""
