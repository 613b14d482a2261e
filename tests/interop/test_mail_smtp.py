"""The mail appliance against real SMTP software: swaks as the client, a stock Postfix as the
remote MX, dkimpy verifying the signatures, the DNS appliance serving the zones."""

from __future__ import annotations

import email
import email.policy
import socket
import subprocess
import ssl
import time

from pathlib import Path

import dkim
import pytest

from tests.conftest import ROOT, Cli
from tests.interop import postfix_peer
from tests.interop.mail_harness import SERVICES, MailServer, dig_txt, free_port, replies, swaks

pytestmark = pytest.mark.slow

@pytest.fixture
def cli_factory_mail(tmp_path):
    """Build the mail image with other device choices: ``cli_factory_mail(*configure_args)``."""
    def build(*args: str) -> Path:
        cli = Cli(tmp_path / "build")
        (tmp_path / "build").mkdir(exist_ok=True)
        cli("configure", ROOT / "appliances" / "mail", "--target", "unix", *args)
        cli("build", ROOT / "appliances" / "mail", timeout=300)
        return cli.image("mail-unix")
    return build


@pytest.fixture
def postfix(tmp_path):
    why = postfix_peer.available()
    if why:
        pytest.fail(why)
    peer = postfix_peer.Postfix(tmp_path / "postfix", free_port())
    yield peer
    peer.stop()


ALICE = ("--auth-user", "alice@example.test", "--auth-password", "alice-password")


def submit(mail: MailServer, *args: str, to: str = "carol@remote.test",
           sender: str = "alice@example.test", auth: tuple[str, ...] = ALICE) -> list[str]:
    res = swaks("--server", f"127.0.0.1:{mail.ports['submission']}", "--tls", "--auth", "PLAIN",
                *auth, "--from", sender, "--to", to, *args)
    return replies(res.stdout + res.stderr)


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_mx_delivers_to_a_local_user_with_trace_and_authentication_results(start_mail):
    mail = start_mail()
    got = replies(swaks("--server", f"127.0.0.1:{mail.ports['smtp']}", "--from",
                        "someone@example.test", "--to", "Alice@Example.Test", "--header",
                        "Subject: hello alice", "--body", "first line\n.dot line").stdout)
    assert got[-2].startswith("250 2.0.0 OK queued as"), got
    (raw,) = mail.wait_mailbox("alice@example.test", 1)
    msg = parse(raw)
    assert msg["Subject"] == "hello alice"
    assert raw.startswith(b"Received: from ")
    assert b"by mail.example.test (Ingot) with ESMTP id " in raw
    ar = str(msg["Authentication-Results"])
    assert ar.startswith("mail.example.test")
    assert "spf=pass" in ar and "dmarc=pass" in ar and "dkim=none" in ar, ar
    assert b"\r\n.dot line" in raw  # un-dot-stuffed, CRLF kept


def test_mx_over_starttls_verifies_an_incoming_dkim_signature(start_mail, tmp_path):
    from tests.interop.mail_harness import DKIM_KEY

    mail = start_mail()
    body = (b"From: news@example.test\r\nTo: alice@example.test\r\nSubject: signed\r\n"
            b"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <s1@example.test>\r\n\r\n"
            b"A signed body.\r\n")
    sig = dkim.sign(body, b"ingot", b"example.test", DKIM_KEY.read_bytes(),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    (tmp_path / "signed.eml").write_bytes(sig + body)
    out = replies(swaks("--server", f"127.0.0.1:{mail.ports['smtp']}", "--tls", "--from",
                        "news@example.test", "--to", "alice@example.test", "--data",
                        str(tmp_path / "signed.eml")).stdout)
    assert out[-2].startswith("250 2.0.0"), out
    (raw,) = mail.wait_mailbox("alice@example.test", 1)
    assert b"with ESMTPS id" in raw
    ar = str(parse(raw)["Authentication-Results"])
    assert "dkim=pass" in ar and "header.d=example.test" in ar and "dmarc=pass" in ar, ar
    # stored as signed (swaks ends the data with one more CRLF of its own)
    stored = raw[raw.index(b"DKIM-Signature:"):]
    assert stored.rstrip(b"\r\n") == (sig + body).rstrip(b"\r\n")


def test_mx_refuses_unknown_users_other_domains_and_dmarc_reject(start_mail):
    mail = start_mail()
    port = f"127.0.0.1:{mail.ports['smtp']}"
    out = replies(swaks("--server", port, "--from", "x@example.test", "--to",
                        "nobody@example.test").stdout)
    assert any(r.startswith("550 5.1.1") for r in out), out
    out = replies(swaks("--server", port, "--from", "x@example.test", "--to",
                        "carol@remote.test").stdout)
    assert any(r.startswith("554 5.7.1") for r in out), out
    # SPF fails for 127.0.0.1 and the domain says p=reject: refused after DATA
    out = replies(swaks("--server", port, "--from", "eve@strict.test", "--to",
                        "alice@example.test").stdout)
    assert any(r.startswith("550 5.7.1") and "DMARC" in r for r in out), out
    # the same failure under p=none is delivered, marked
    # (with a forged Authentication-Results in our name, which must not survive)
    out = replies(swaks("--server", port, "--from", "eve@soft.test", "--to",
                        "alice@example.test", "--add-header",
                        "Authentication-Results: mail.example.test; dmarc=pass").stdout)
    assert out[-2].startswith("250 2.0.0"), out
    (raw,) = mail.wait_mailbox("alice@example.test", 1)
    fields = parse(raw).get_all("Authentication-Results")
    assert len(fields) == 1, fields
    ar = str(fields[0])
    assert "spf=fail" in ar and "dmarc=fail" in ar, ar
    assert mail.queued() == []


def _session(port: int, lines: list[bytes], tls: bool = False) -> list[str]:
    """Send command lines one at a time, return each reply's first line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
    f = sock.makefile("rb")

    def reply() -> str:
        first = f.readline().decode()
        line = first
        while line[3:4] == "-":
            line = f.readline().decode()
        return first[:3] + line[3:].rstrip("\r\n")

    out = [reply()]
    for line in lines:
        sock.sendall(line)
        out.append(reply())
    sock.close()
    return out


def test_submission_needs_tls_for_auth_and_the_sender_must_be_the_user(start_mail):
    mail = start_mail()
    sub = mail.ports["submission"]
    plain = b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wYXNzd29yZA==\r\n"
    got = _session(sub, [b"EHLO c.test\r\n", plain, b"MAIL FROM:<alice@example.test>\r\n"])
    assert got[0].startswith("220 mail.example.test")
    assert got[2].startswith("538 5.7.11"), got   # no AUTH in clear text
    assert got[3].startswith("530 5.7.0"), got    # and no mail without it
    ehlo = _session(sub, [b"EHLO c.test\r\n"])
    assert "AUTH" not in ehlo[1]
    # over implicit TLS: wrong password, then the right one, then another user's address
    got = _session(mail.ports["smtps"], [
        b"EHLO c.test\r\n",
        b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw==\r\n",
        plain, b"MAIL FROM:<bob@example.test>\r\n", b"MAIL FROM:<alice@example.test>\r\n",
        b"RCPT TO:<nobody@example.test>\r\n", b"RCPT TO:<dave@remote.test>\r\n",
        b"QUIT\r\n"], tls=True)
    assert got[2].startswith("535 5.7.8"), got
    assert got[3].startswith("235 2.7.0"), got
    assert got[4].startswith("553 5.7.1"), got
    assert got[5].startswith("250 2.1.0"), got
    assert got[6].startswith("550 5.1.1"), got
    assert got[7].startswith("250 2.1.5"), got
    # swaks over STARTTLS with a wrong password
    out = submit(mail, auth=("--auth-user", "alice@example.test", "--auth-password", "nope"))
    assert any(r.startswith("535") for r in out), out
    assert mail.queued() == []


def test_submission_relays_to_postfix_signed_with_dkim(start_mail, postfix, mail_dns):
    postfix.start()
    mail = start_mail("--relay-port", str(postfix.port), "--retry", "1")
    out = submit(mail, "--header", "Subject: to the remote MX", "--body", "signed body\n")
    assert out[-2].startswith("250 2.0.0"), out
    (raw,) = postfix.wait_messages(1)
    msg = parse(raw)
    assert msg["Subject"] == "to the remote MX"
    assert "DKIM-Signature" in msg and "d=example.test" in str(msg["DKIM-Signature"])
    assert b"by mail.example.test (Ingot) with ESMTPSA" in raw
    # dkimpy verifies it, looking the key up in the DNS appliance
    assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: dig_txt(mail_dns.port, name.decode()))
    assert "status=sent" in postfix.log_text()
    deadline = time.monotonic() + 10
    while mail.queued() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mail.queued() == []


def test_a_remote_answering_4xx_is_retried_until_it_takes_the_message(start_mail, postfix):
    postfix.mode = "defer"
    postfix.start()
    mail = start_mail("--relay-port", str(postfix.port), "--retry", "1")
    assert submit(mail, "--header", "Subject: deferred first")[-2].startswith("250 2.0.0")
    assert "450 4.3.2" in mail.wait_line("msg=deferred")
    assert postfix.messages() == [] and len(mail.queued()) == 1
    postfix.set_mode("accept")
    (raw,) = postfix.wait_messages(1)
    assert parse(raw)["Subject"] == "deferred first"


def test_kill_9_with_a_full_queue_loses_nothing(start_mail, postfix, tmp_path):
    # the remote MX is down: every message waits in the queue
    mail = start_mail("--relay-port", str(postfix.port), "--retry", "1")
    for i in range(12):
        assert submit(mail, "--header", f"Subject: queued {i}")[-2].startswith("250 2.0.0")
    assert len(mail.queued()) == 12
    mail.kill()
    postfix.start()
    again = start_mail("--relay-port", str(postfix.port), "--retry", "1",
                       ports={s: free_port() for s in SERVICES})
    assert "queued=12" in again.lines[-1]
    got = postfix.wait_messages(12)
    assert sorted(parse(m)["Subject"] for m in got) == sorted(f"queued {i}" for i in range(12))
    deadline = time.monotonic() + 10
    while again.queued() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert again.queued() == []


def test_a_permanent_refusal_bounces_to_the_sender(start_mail, postfix):
    postfix.mode = "reject"
    postfix.start()
    mail = start_mail("--relay-port", str(postfix.port), "--retry", "1")
    assert submit(mail, "--header", "Subject: will bounce", to="dave@remote.test")[-2] \
        .startswith("250 2.0.0")
    (raw,) = mail.wait_mailbox("alice@example.test", 1)
    bounce = parse(raw)
    assert bounce.get_content_type() == "multipart/report"
    assert bounce["Auto-Submitted"] == "auto-replied"
    parts = list(bounce.iter_parts())
    status = parts[1]
    assert status.get_content_type() == "message/delivery-status"
    text = status.as_string()
    assert "Final-Recipient: rfc822; dave@remote.test" in text
    assert "Action: failed" in text and "Status: 5.7.1" in text
    assert "554" in text  # Postfix's own words in the Diagnostic-Code
    assert "will bounce" in parts[2].as_string()
    assert postfix.messages() == []


def test_a_message_that_outlives_the_queue_lifetime_bounces_with_4_4_7(start_mail, postfix):
    postfix.mode = "defer"
    postfix.start()
    mail = start_mail("--relay-port", str(postfix.port), "--retry", "1", "--queue-lifetime", "3")
    assert submit(mail, to="erin@remote.test")[-2].startswith("250 2.0.0")
    (raw,) = mail.wait_mailbox("alice@example.test", 1, timeout=60)
    text = parse(raw).as_string()
    assert "Status: 4.4.7" in text and "Final-Recipient: rfc822; erin@remote.test" in text
    assert mail.queued() == []


def test_mailboxes_and_queue_in_git_one_commit_per_delivery(cli_factory_mail, start_mail,
                                                            tmp_path):
    """--mailboxes kv --queue git: every delivery is a commit in the queue's repository."""
    image = cli_factory_mail("--mailboxes", "kv", "--queue", "git")
    repo = tmp_path / "store.git"
    mail = start_mail(image=image, stores=("--queue-repo", str(repo), "--queue-init", "true"))
    for i in range(2):
        out = replies(swaks("--server", f"127.0.0.1:{mail.ports['smtp']}", "--from",
                            "someone@example.test", "--to", "bob@example.test", "--header",
                            f"Subject: in git {i}").stdout)
        assert out[-2].startswith("250 2.0.0"), out
    mail.stop()
    log = subprocess.run(["git", "--git-dir", str(repo), "log", "--format=%s", "main"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert log[:2] == ["deliver to bob@example.test/INBOX uid 2",
                       "deliver to bob@example.test/INBOX uid 1"], log
    assert subprocess.run(["git", "--git-dir", str(repo), "fsck", "--strict"],
                          capture_output=True).returncode == 0
    files = subprocess.run(["git", "--git-dir", str(repo), "ls-tree", "-r", "--name-only",
                            "main"], capture_output=True, text=True, check=True).stdout
    assert "bob@example.test/INBOX/m/0/0/1" in files, files
