"""Manifest of the mail appliance, part 1: SMTP receiving (MX), submission and relay.

The guide, docs/appliances/mail.md, documents every key and the layout of the
``config`` store; list keys take comma-separated values.
"""

from ingot.keys import key, non_negative, port, positive
from ingot.manifest import Appliance, device
from ingot.plugins.dns.device import Resolver
from ingot.plugins.mailstore.store import MailStore
from ingot.signatures import KvRO, KvRW, Stack, Tls


SERVICES = ("smtp", "submission", "smtps", "imap", "imaps")


def _services(value: list[str]) -> None:
    unknown = set(value) - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)} ({', '.join(SERVICES)})")
    if not value:
        raise ValueError(f"at least one of {', '.join(SERVICES)}")


def _retry(value: list[str]) -> None:
    try:
        delays = [float(v) for v in value]
    except ValueError:
        raise ValueError(f"retry delays must be seconds, got {value}") from None
    if not delays or not all(0 < d < float("inf") for d in delays):
        raise ValueError("retry delays must be positive seconds")


appliance = Appliance(
    name="mail",
    main="app:Mail",
    doc="Mail server: SMTP MX with SPF/DKIM/DMARC checks, submission with AUTH and DKIM "
        "signing, a durable relay queue, IMAP",
    plugins=["smtp", "imap", "mailstore", "dns", "tls"],
    # loaded by native code (cryptography's and argon2's bindings), invisible to the closure
    modules=["_cffi_backend"],
    devices=[
        device("stack", Stack, doc="where the SMTP services listen and the relay connects"),
        device("tls", Tls, doc="STARTTLS and implicit TLS (465); the relay's STARTTLS"),
        device("config", KvRO, default={"unix": "direct", "vm": "crunch", "qubes": "crunch",
                                        "oci": "crunch"},
               doc="users (address and password hash per line), dkim/<domain>.pem signing "
                   "keys, tls/cert.pem and tls/key.pem"),
        device("queue", KvRW, default={"unix": "direct", "oci": "direct", "vm": "memory",
                                       "qubes": "memory"},
               doc="the relay queue: a message is on it (fsynced) before it is accepted"),
        device("mailboxes", MailStore, doc="the local users' mailboxes"),
        device("resolver", Resolver, doc="MX, A/AAAA, SPF, DKIM and DMARC lookups"),
    ],
    keys=[
        key("hostname", str, "This server's name: greeting, Received headers, "
            "Authentication-Results, bounces", "localhost"),
        key("domains", list, "Domains whose users get mail here (their users are in the "
            "config store's users file)", []),
        key("host", str, "Address the services listen on (IPv4 or IPv6 literal)", "127.0.0.1"),
        key("services", list, "Which services run: smtp (MX, port --smtp-port), submission "
            "(STARTTLS + AUTH), smtps (implicit TLS + AUTH), imap (STARTTLS), imaps (TLS)",
            list(SERVICES), validate=_services),
        key("smtp-port", int, "Port of the MX service", 25, validate=port),
        key("submission-port", int, "Port of the submission service (STARTTLS)", 587,
            validate=port),
        key("smtps-port", int, "Port of the implicit-TLS submission service", 465,
            validate=port),
        key("imap-port", int, "Port of the IMAP service (STARTTLS)", 143, validate=port),
        key("imaps-port", int, "Port of the implicit-TLS IMAP service", 993, validate=port),
        key("imap-plaintext", bool, "Allow IMAP LOGIN without TLS from loopback addresses "
            "(127.0.0.0/8, ::1) only: for local tools on the same host", False),
        key("max-size", int, "Largest message accepted (bytes; advertised as SIZE)",
            25 * 1024 * 1024, validate=positive),
        key("max-recipients", int, "Recipients per message", 100, validate=positive),
        key("max-connections", int, "Connections served at once per service; more get 421",
            500, validate=positive),
        key("idle-timeout", float, "Seconds a client may stay silent (RFC 5321: 5 minutes)",
            300.0, validate=positive),
        key("users-file", str, "Key of the users file in the config store", "users"),
        key("verify", bool, "Check SPF, DKIM and DMARC of mail received on the MX service "
            "and add Authentication-Results", True),
        key("dmarc-reject", bool, "Refuse (550 5.7.1) mail whose DMARC check fails under a "
            "p=reject policy", True),
        key("dkim-selector", str, "Selector of the DKIM signatures of submitted mail "
            "(the key is dkim/<domain>.pem in the config store)", "ingot"),
        key("relay-port", int, "Port of remote MX servers (25 on the Internet)", 25,
            validate=port),
        key("relay-host", str, "Send all outgoing mail to this host[:port] instead of the "
            "recipients' MX (a smart host); empty: MX lookup", ""),
        key("relay-starttls", str, "STARTTLS toward remote servers: may (when offered, "
            "unauthenticated), never", "may", choices=("may", "never")),
        key("relay-concurrency", int, "Messages delivered at once", 10, validate=positive),
        key("relay-timeout", float, "Seconds to wait for a remote server's reply", 60.0,
            validate=positive),
        key("retry", list, "Seconds between delivery attempts after a temporary failure "
            "(the last one repeats)", ["60", "300", "900", "1800", "3600"], validate=_retry),
        key("queue-lifetime", float, "Seconds a message may wait in the queue before it "
            "bounces", 5 * 86400.0, validate=positive),
        key("resolve-timeout", float, "Seconds a DNS lookup may take", 5.0,
            validate=non_negative),
    ],
)
