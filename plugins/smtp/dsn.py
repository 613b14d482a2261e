"""Delivery status notifications: bounces and delay warnings (RFC 3464, 6522, 3463, 3834).

Pure: the caller passes the time (``now``, ``arrival_date``, ``last_attempt``
as aware datetimes or epoch seconds) and the unique part of the Message-ID;
nothing here reads a clock or draws randomness.

* :func:`build_bounce` returns a ``multipart/report; report-type=delivery-status``
  message as CRLF bytes, ready for DATA. It has three parts: a text/plain
  explanation, a ``message/delivery-status`` part (per-message fields, then
  one block per recipient), and the original's headers
  (``text/rfc822-headers``) or, with ``return_full``, the whole original
  (``message/rfc822``; it falls back to headers when the original has a line
  longer than 998 octets, which could not be carried). The caller sends it
  with the null reverse-path ``<>`` to ``original_sender``.
* :func:`should_bounce` is False for the null sender and MAILER-DAEMON-like
  senders: a notification is never answered by another (RFC 5321 6.1, 3464 2).
* :func:`status_from_reply` maps an SMTP reply, or a local failure kind, to
  an RFC 3463 status code.

Delivery-status field values are sanitised (control characters become
spaces) and capped at :data:`MAX_FIELD` characters so that no line of the
report exceeds 998 octets, whatever the remote server said.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy as _policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime
from typing import Literal, Union

TimeLike = Union[datetime, int, float]

MAX_FIELD = 900
"""Longest delivery-status field value (characters) kept; longer ones are cut."""

# Delivery-status fields must not become RFC 2047 encoded words, which the
# folder produces for a word longer than the line limit, so fold only at the
# hard limit of 998 octets (field values are capped below it); headers parsed
# from the returned original are left as they came.
POLICY = _policy.SMTP.clone(max_line_length=998, refold_source="none")

CONNECTION_FAILED = "connection-failed"  # 4.4.1 no answer from host
NO_SUCH_HOST = "no-such-host"            # 5.1.2 bad destination system address
DNS_TEMPORARY = "dns-temporary"          # 4.4.3 directory server failure
EXPIRED = "expired"                      # 4.4.7 delivery time expired
_KIND_STATUS = {CONNECTION_FAILED: "4.4.1", NO_SUCH_HOST: "5.1.2", DNS_TEMPORARY: "4.4.3",
                EXPIRED: "4.4.7"}

_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")


@dataclass(frozen=True)
class RecipientFailure:
    recipient: str
    action: Literal["failed", "delayed"]
    status: str                        # RFC 3463, e.g. "5.1.1"
    diagnostic: str | None = None      # e.g. "smtp; 550 5.1.1 no such user"
    remote_mta: str | None = None      # host name of the MX that answered
    last_attempt: TimeLike | None = None
    will_retry_until: TimeLike | None = None  # for "delayed"
    original_recipient: str | None = None     # ORCPT, "rfc822; addr", when known


def status_from_reply(reply_code: int | None, enhanced: str | None = None, *,
                      failure: str | None = None) -> str:
    """The RFC 3463 status for a failure.

    ``failure`` names a failure without a (usable) reply: CONNECTION_FAILED
    (4.4.1), NO_SUCH_HOST (5.1.2), DNS_TEMPORARY (4.4.3), EXPIRED (4.4.7; the
    final bounce of a message that outlived its queue lifetime reports
    ``failed`` with 4.4.7, as RFC 3463 describes). Otherwise a valid enhanced
    code is used, its class forced to agree with the reply code; without one
    a 5xx gives 5.0.0 and a 4xx 4.0.0 (a 2xx 2.0.0).
    """
    if failure is not None:
        try:
            return _KIND_STATUS[failure]
        except KeyError:
            raise ValueError(f"unknown failure kind {failure!r}") from None
    if reply_code is None or not 200 <= reply_code < 600 or reply_code // 100 == 3:
        raise ValueError(f"no status for reply code {reply_code!r}")
    cls = str(reply_code // 100)
    m = _STATUS.fullmatch(enhanced or "")
    if m is not None:
        return f"{cls}.{int(m.group(2))}.{int(m.group(3))}"
    return f"{cls}.0.0"


def should_bounce(sender: str) -> bool:
    """False for the null reverse-path and for MAILER-DAEMON-like senders."""
    s = sender.strip().strip("<>").strip()
    if not s:
        return False
    local = s.rsplit("@", 1)[0].lower() if "@" in s else s.lower()
    return local not in ("mailer-daemon", "mailer_daemon", "mailerdaemon")


def _as_datetime(t: TimeLike) -> datetime:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise ValueError("naive datetime: pass an aware one")
        return t
    return datetime.fromtimestamp(t, timezone.utc)


def _date(t: TimeLike) -> str:
    return format_datetime(_as_datetime(t))


_CTL = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(value: str) -> str:
    value = _CTL.sub(" ", value).strip()
    if len(value) > MAX_FIELD:
        value = value[: MAX_FIELD - 3] + "..."
    return value


def _address_field(address: str) -> str:
    # RFC 6533: a non-ASCII address is of type utf-8.
    return ("rfc822; " if address.isascii() else "utf-8; ") + _clean(address)


def _block(fields: list[tuple[str, str]]) -> Message:
    block = Message(policy=POLICY)
    for name, value in fields:
        block[name] = _clean(value)
    return block


def _split_original(original: bytes) -> tuple[bytes, bytes]:
    data = original.replace(b"\r\n", b"\n")
    if data.startswith(b"\n"):
        return b"", data[1:]
    head, sep, body = data.partition(b"\n\n")
    return head + b"\n", body


def _human_text(reporting_mta: str, failures: list[RecipientFailure], failed: bool) -> str:
    if failed:
        lines = [f"This is the mail system at host {reporting_mta}.", "",
                 "Your message could not be delivered to one or more recipients.",
                 "It is attached below.", ""]
    else:
        lines = [f"This is the mail system at host {reporting_mta}.", "",
                 "Your message has not been delivered yet to one or more recipients.",
                 "The mail system will keep trying; you need not send it again.", ""]
    for f in failures:
        what = "failed" if f.action == "failed" else "delayed"
        lines.append(f"<{_clean(f.recipient)}>: {what}, status {f.status}")
        if f.remote_mta:
            lines.append(f"    host {_clean(f.remote_mta)} said: {_clean(f.diagnostic or '')}")
        elif f.diagnostic:
            lines.append(f"    {_clean(f.diagnostic)}")
    return "\n".join(line[:990] for line in lines) + "\n"


def build_bounce(*, reporting_mta: str, original_sender: str,
                 original_envelope_id: str | None, arrival_date: TimeLike,
                 failures: list[RecipientFailure], original: bytes, now: TimeLike,
                 message_id_domain: str, unique: str, return_full: bool = False) -> bytes:
    """A DSN for ``failures`` (all of one original message) as CRLF bytes."""
    if not failures:
        raise ValueError("no recipient failures to report")
    for f in failures:
        if f.action not in ("failed", "delayed"):
            raise ValueError(f"action {f.action!r} is not 'failed' or 'delayed'")
        if _STATUS.fullmatch(f.status) is None:
            raise ValueError(f"status {f.status!r} is not an RFC 3463 code")
    any_failed = any(f.action == "failed" for f in failures)

    msg = EmailMessage(policy=POLICY)
    msg["From"] = f"Mail Delivery System <MAILER-DAEMON@{message_id_domain}>"
    msg["To"] = original_sender
    msg["Subject"] = ("Undelivered Mail Returned to Sender" if any_failed
                      else "Delayed Mail (still being retried)")
    msg["Date"] = _date(now)
    msg["Message-ID"] = f"<{unique}@{message_id_domain}>"
    msg["Auto-Submitted"] = "auto-replied"
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/report; report-type=delivery-status"

    text = EmailMessage(policy=POLICY)
    text.set_content(_human_text(reporting_mta, failures, any_failed))
    del text["MIME-Version"]

    per_message = [("Reporting-MTA", f"dns; {reporting_mta}")]
    if original_envelope_id:
        per_message.append(("Original-Envelope-Id", original_envelope_id))
    per_message.append(("Arrival-Date", _date(arrival_date)))
    blocks = [_block(per_message)]
    for f in failures:
        fields = []
        if f.original_recipient:
            fields.append(("Original-Recipient", f.original_recipient))
        fields += [("Final-Recipient", _address_field(f.recipient)),
                   ("Action", f.action), ("Status", f.status)]
        if f.remote_mta:
            fields.append(("Remote-MTA", f"dns; {f.remote_mta}"))
        if f.diagnostic:
            diag = f.diagnostic if ";" in f.diagnostic else f"smtp; {f.diagnostic}"
            fields.append(("Diagnostic-Code", diag))
        if f.last_attempt is not None:
            fields.append(("Last-Attempt-Date", _date(f.last_attempt)))
        if f.will_retry_until is not None and f.action == "delayed":
            fields.append(("Will-Retry-Until", _date(f.will_retry_until)))
        blocks.append(_block(fields))
    status = Message(policy=POLICY)
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)

    head, _body = _split_original(original)
    longest = max((len(line) for line in original.split(b"\n")), default=0)
    returned = EmailMessage(policy=POLICY)
    if return_full and longest <= 998:
        inner = BytesParser(policy=POLICY).parsebytes(original.replace(b"\r\n", b"\n"))
        returned.set_content(inner, cte="7bit" if original.isascii() else "8bit")
    else:
        returned.set_content(head.decode("utf-8", "replace"), subtype="rfc822-headers")
    del returned["MIME-Version"]

    msg.set_payload([text, status, returned])
    return msg.as_bytes(policy=POLICY)
