"""Delivery status notifications, built and parsed back with the email package."""

from __future__ import annotations

import ast
import email
import email.policy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ingot.plugins.smtp import dsn
from ingot.plugins.smtp.dsn import (CONNECTION_FAILED, DNS_TEMPORARY, EXPIRED, NO_SUCH_HOST,
                                    RecipientFailure, build_bounce, should_bounce,
                                    status_from_reply)

NOW = datetime(2026, 12, 2, 20, 0, tzinfo=timezone.utc)
ARRIVED = NOW - timedelta(days=5)
ORIGINAL = (b"From: Alice <alice@example.org>\r\n"
            b"To: bob@example.net\r\n"
            b"Subject: lunch\r\n"
            b"Message-ID: <m1@example.org>\r\n"
            b"\r\n"
            b"Shall we?\r\n"
            b".leading dot\r\n"
            b"SECRET-BODY-LINE\r\n")

FAIL = RecipientFailure("bob@example.net", "failed", "5.1.1", "smtp; 550 5.1.1 no such user",
                        "mx.example.net", NOW - timedelta(minutes=1))
DELAY = RecipientFailure("carol@example.net", "delayed", "4.4.1", None, None,
                         NOW - timedelta(minutes=2), will_retry_until=NOW + timedelta(days=1))


def bounce(failures=(FAIL,), **kw):
    args = dict(reporting_mta="relay.example.org", original_sender="alice@example.org",
                original_envelope_id="ENV-42", arrival_date=ARRIVED, failures=list(failures),
                original=ORIGINAL, now=NOW, message_id_domain="example.org", unique="b0unce1")
    args.update(kw)
    return build_bounce(**args)


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def status_blocks(msg):
    [part] = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    return [dict(block.items()) for block in part.get_payload()]


def test_structure_and_headers():
    raw = bounce()
    msg = parse(raw)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@example.org>"
    assert msg["To"] == "alice@example.org"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"] == "<b0unce1@example.org>"
    assert msg["Date"].datetime == NOW
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    human = parts[0].get_content()
    assert "bob@example.net" in human and "550 5.1.1 no such user" in human
    assert "could not be delivered" in human


def test_delivery_status_fields():
    per_message, rcpt = status_blocks(parse(bounce()))
    assert per_message["Reporting-MTA"] == "dns; relay.example.org"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVED
    assert rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.example.net"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert (email.utils.parsedate_to_datetime(rcpt["Last-Attempt-Date"])
            == NOW - timedelta(minutes=1))


def test_no_envelope_id_and_epoch_times():
    raw = bounce(original_envelope_id=None, arrival_date=int(ARRIVED.timestamp()),
                 now=int(NOW.timestamp()))
    per_message, _ = status_blocks(parse(raw))
    assert "Original-Envelope-Id" not in per_message
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVED
    assert parse(raw)["Date"].datetime == NOW


def test_naive_datetime_refused():
    with pytest.raises(ValueError):
        bounce(now=datetime(2026, 1, 1))


def test_several_recipients_and_delay_only_subject():
    msg = parse(bounce([FAIL, DELAY]))
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    blocks = status_blocks(msg)
    assert len(blocks) == 3
    assert blocks[2]["Action"] == "delayed" and blocks[2]["Status"] == "4.4.1"
    assert "Remote-MTA" not in blocks[2] and "Diagnostic-Code" not in blocks[2]
    assert "Will-Retry-Until" in blocks[2]
    msg = parse(bounce([DELAY]))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert "will keep trying" in msg.get_payload()[0].get_content()


def test_crlf_line_endings():
    raw = bounce([FAIL, DELAY], return_full=True)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert raw.endswith(b"\r\n")


def test_no_line_over_998_even_with_long_diagnostic():
    long_word = RecipientFailure("bob@example.net", "failed", "5.0.0",
                                 "smtp; 550 " + "x" * 5000, "mx." + "y" * 2000 + ".net", NOW)
    long_words = RecipientFailure("carol@example.net", "failed", "5.0.0",
                                  "smtp; 550 " + "word " * 2000, None, NOW)
    raw = bounce([long_word, long_words], return_full=True)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    blocks = status_blocks(parse(raw))
    assert blocks[1]["Diagnostic-Code"].startswith("smtp; 550 xxx")
    assert "=?" not in blocks[1]["Diagnostic-Code"]  # no RFC 2047 in DSN fields


def test_control_characters_in_diagnostic_cannot_inject_fields():
    evil = RecipientFailure("bob@example.net", "failed", "5.0.0",
                            "smtp; 550 x\r\nAction: delivered\r\n\r\nFinal-Recipient: rfc822; z",
                            None, NOW)
    blocks = status_blocks(parse(bounce([evil])))
    assert len(blocks) == 2 and blocks[1]["Action"] == "failed"


def test_headers_only_return():
    raw = bounce()
    assert b"SECRET-BODY-LINE" not in raw
    part = parse(raw).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    headers = part.get_content()
    assert "Subject: lunch" in headers and "Message-ID: <m1@example.org>" in headers


def test_full_return():
    raw = bounce(return_full=True)
    part = parse(raw).get_payload()[2]
    assert part.get_content_type() == "message/rfc822"
    inner = part.get_payload()[0]
    assert inner["Subject"] == "lunch"
    assert "SECRET-BODY-LINE" in inner.get_content()
    assert ".leading dot" in inner.get_content()


def test_full_return_with_8bit_body():
    raw = bounce(return_full=True, original=ORIGINAL + "café\r\n".encode())
    part = parse(raw).get_payload()[2]
    assert part["Content-Transfer-Encoding"] == "8bit"
    assert "café".encode() in raw


def test_full_return_falls_back_to_headers_for_overlong_lines():
    raw = bounce(return_full=True, original=ORIGINAL + b"z" * 2000 + b"\r\n")
    assert parse(raw).get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_bad_arguments():
    with pytest.raises(ValueError):
        bounce([])
    with pytest.raises(ValueError):
        bounce([RecipientFailure("b@x", "relayed", "2.0.0")])
    with pytest.raises(ValueError):
        bounce([RecipientFailure("b@x", "failed", "550")])


@pytest.mark.parametrize("sender, expected", [
    ("", False), ("<>", False), ("MAILER-DAEMON@example.org", False),
    ("mailer-daemon@example.org", False), ("<Mailer-Daemon@x.example>", False),
    ("MAILER-DAEMON", False), ("alice@example.org", True), ("postmaster@example.org", True),
])
def test_should_bounce(sender, expected):
    assert should_bounce(sender) is expected


@pytest.mark.parametrize("code, enhanced, failure, status", [
    (550, None, None, "5.0.0"),
    (451, None, None, "4.0.0"),
    (550, "5.1.1", None, "5.1.1"),
    (452, "4.2.2", None, "4.2.2"),
    (550, "4.2.2", None, "5.2.2"),   # class follows the reply code
    (550, "garbage", None, "5.0.0"),
    (None, None, CONNECTION_FAILED, "4.4.1"),
    (None, None, NO_SUCH_HOST, "5.1.2"),
    (None, None, DNS_TEMPORARY, "4.4.3"),
    (451, "4.3.0", EXPIRED, "4.4.7"),
])
def test_status_from_reply(code, enhanced, failure, status):
    assert status_from_reply(code, enhanced, failure=failure) == status


def test_status_from_reply_errors():
    with pytest.raises(ValueError):
        status_from_reply(None, None)
    with pytest.raises(ValueError):
        status_from_reply(354, None)
    with pytest.raises(ValueError):
        status_from_reply(None, None, failure="nope")


def test_expired_final_bounce_is_failed_with_447():
    f = RecipientFailure("bob@example.net", "failed", status_from_reply(None, failure=EXPIRED),
                         "smtp; 451 4.3.0 try later", "mx.example.net", NOW)
    _, rcpt = status_blocks(parse(bounce([f])))
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "4.4.7"


def test_no_clock_or_randomness_imports():
    forbidden = {"socket", "asyncio", "time", "random", "os", "secrets"}
    for node in ast.walk(ast.parse(Path(dsn.__file__).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        assert not {n.split(".")[0] for n in names} & forbidden, names
