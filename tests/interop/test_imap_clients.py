"""The mail appliance's IMAP side against real clients: Python's imaplib (over STARTTLS and
port imaps), aioimaplib for IDLE, and mbsync (isync) syncing a local Maildir; mail comes in
through the MX port from swaks, as it would from the outside."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import imaplib
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.interop.mail_harness import CONFIG, MailServer, replies, swaks

pytestmark = pytest.mark.slow

ALICE = ("alice@example.test", "alice-password")
BOB = ("bob@example.test", "bob-password")
CERT = CONFIG / "tls" / "cert.pem"

imaplib.Commands.setdefault("MOVE", ("SELECTED",))


def no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---------------------------------------------------------------- messages and delivery

PLAIN = (b"From: Carol Sender <carol@example.test>\r\n"
         b"To: Alice <alice@example.test>\r\n"
         b"Subject: plain hello\r\n"
         b"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
         b"Message-ID: <plain1@example.test>\r\n"
         b"\r\n"
         b"The first line of a plain message.\r\n"
         b"Second line with the word zebra.\r\n")

ATTACHMENT = b"%PDF-1.4 not really a pdf \x00\x01\x02\xff" * 8
MULTIPART = (b"From: dave@example.test\r\n"
             b"To: alice@example.test\r\n"
             b"Subject: report attached\r\n"
             b"Date: Wed, 02 Dec 2026 11:00:00 +0000\r\n"
             b"Message-ID: <multi1@example.test>\r\n"
             b"MIME-Version: 1.0\r\n"
             b'Content-Type: multipart/mixed; boundary="XyZ"\r\n'
             b"\r\n"
             b"preamble\r\n"
             b"--XyZ\r\n"
             b"Content-Type: text/plain; charset=us-ascii\r\n"
             b"\r\n"
             b"See the attached report.\r\n"
             b"--XyZ\r\n"
             b'Content-Type: application/pdf; name="report.pdf"\r\n'
             b'Content-Disposition: attachment; filename="report.pdf"\r\n'
             b"Content-Transfer-Encoding: base64\r\n"
             b"\r\n"
             + base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n")
             + b"--XyZ--\r\n")

UTF8_SUBJECT = "Café für Jürgen"
UTF8 = (b"From: erin@example.test\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: =?UTF-8?Q?Caf=C3=A9_f=C3=BCr_J=C3=BCrgen?=\r\n"
        b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
        b"Message-ID: <utf8@example.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        + "Viele Grüße aus Köln.\r\n".encode())


def deliver(mail: MailServer, tmp_path: Path, data: bytes, to: str = ALICE[0],
            sender: str = "carol@example.test") -> None:
    f = tmp_path / f"msg-{time.monotonic_ns()}.eml"
    f.write_bytes(data)
    res = swaks("--server", f"127.0.0.1:{mail.ports['smtp']}", "--from", sender, "--to", to,
                "--data", str(f))
    got = replies(res.stdout + res.stderr)
    assert got and got[-2].startswith("250 2.0.0"), res.stdout + res.stderr


def inbox_files(mail: MailServer, user: str) -> dict[str, bytes]:
    box = mail.mailboxes / user
    return {p.name.split(":2,")[0]: p.read_bytes() for sub in ("new", "cur")
            if (box / sub).is_dir() for p in (box / sub).iterdir()}


def deliver_all(mail: MailServer, tmp_path: Path, *messages: bytes,
                user: str = ALICE[0]) -> list[bytes]:
    """Deliver one by one; the INBOX's files in delivery order (mtimes are whole seconds,
    the internal dates, so the harness's mtime order may tie)."""
    order: list[str] = []
    known = inbox_files(mail, user)
    for m in messages:
        deliver(mail, tmp_path, m, to=user)
        deadline = time.monotonic() + 60
        while not (set(inbox_files(mail, user)) - set(known)):
            assert time.monotonic() < deadline, "not delivered"
            time.sleep(0.05)
        now = inbox_files(mail, user)
        order += sorted(set(now) - set(known))
        known = now
    return [known[n] for n in order]


# ---------------------------------------------------------------- imaplib helpers

def connect(mail: MailServer, user: tuple[str, str] = ALICE, how: str = "starttls"
            ) -> imaplib.IMAP4:
    if how == "ssl":
        m = imaplib.IMAP4_SSL("127.0.0.1", mail.ports["imaps"], ssl_context=no_verify(),
                              timeout=30)
    else:
        m = imaplib.IMAP4("127.0.0.1", mail.ports["imap"], timeout=30)
        if how == "starttls":
            m.starttls(ssl_context=no_verify())
    m.login(*user)
    return m


def raw(m: imaplib.IMAP4, command: str | bytes) -> tuple[list[bytes], bytes]:
    """Send one command by hand: (untagged response lines with literals inlined, tagged line)."""
    if isinstance(command, str):
        command = command.encode()
    tag = m._new_tag()
    m.send(tag + b" " + command + b"\r\n")
    lines: list[bytes] = []
    while True:
        line = m.readline()
        assert line, "connection closed"
        while (lit := re.search(rb"\{(\d+)\}\r\n\Z", line)):
            line += m.read(int(lit.group(1)))
            line += m.readline()
        if line.startswith(tag + b" "):
            return lines, line.rstrip(b"\r\n")
        lines.append(line.rstrip(b"\r\n"))


def ok(result: tuple) -> list:
    typ, data = result
    assert typ == "OK", result
    return data


def fetch_one(m: imaplib.IMAP4, which: str, items: str, uid: bool = False) -> bytes:
    """The whole FETCH response of one message, literals inlined."""
    lines, tagged = raw(m, f"{'UID ' if uid else ''}FETCH {which} {items}")
    assert b" OK " in tagged, (lines, tagged)
    fetches = [line for line in lines if re.match(rb"\* \d+ FETCH ", line)]
    assert len(fetches) == 1, lines
    return fetches[0]


def literal_of(response: bytes, item: bytes) -> bytes:
    """The string value of ``item`` in a FETCH response (a literal or a quoted string)."""
    at = response.index(item + b" ") + len(item) + 1
    if response[at:at + 1] == b"{":
        end = response.index(b"}\r\n", at)
        n = int(response[at + 1:end])
        return response[end + 3:end + 3 + n]
    if response[at:at + 1] == b'"':
        end = at + 1
        out = b""
        while response[end:end + 1] != b'"':
            if response[end:end + 1] == b"\\":
                end += 1
            out += response[end:end + 1]
            end += 1
        return out
    raise AssertionError(f"no string for {item!r} in {response!r}")


def flags_of(m: imaplib.IMAP4, which: str, uid: bool = False) -> set[str]:
    resp = fetch_one(m, which, "(FLAGS)", uid)
    return set(re.search(rb"FLAGS \(([^)]*)\)", resp).group(1).decode().split())


def search(m: imaplib.IMAP4, *criteria: str, uid: bool = False) -> list[int]:
    if uid:
        data = ok(m.uid("SEARCH", *criteria))
    else:
        data = ok(m.search(None, *criteria))
    return [int(x) for x in b" ".join(d for d in data if d).split()]


def list_names(m: imaplib.IMAP4, ref: str = '""', pattern: str = '"*"') -> dict[str, set[str]]:
    lines, tagged = raw(m, f"LIST {ref} {pattern}")
    assert b" OK " in tagged, tagged
    out = {}
    for line in lines:
        mo = re.match(rb'\* LIST \(([^)]*)\) (?:"/"|NIL) (.*)\Z', line)
        assert mo, line
        name = mo.group(2)
        name = name[1:-1] if name.startswith(b'"') else name
        out[name.decode()] = set(mo.group(1).decode().lower().split())
    return out


def code(data: list, name: str) -> list[str]:
    text = b" ".join(d for d in data if isinstance(d, bytes)).decode()
    mo = re.search(r"\[" + name + r" ([^\]]*)\]", text)
    assert mo, (name, data)
    return mo.group(1).split()


def uid_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        out += list(range(int(a), int(b or a) + 1))
    return out


# ---------------------------------------------------------------- 1. imaplib: login and TLS

def test_logindisabled_before_starttls_and_login_over_starttls(start_mail):
    mail = start_mail()
    m = imaplib.IMAP4("127.0.0.1", mail.ports["imap"], timeout=30)
    assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities, m.capabilities
    assert "AUTH=PLAIN" not in m.capabilities
    lines, tagged = raw(m, 'LOGIN "alice@example.test" "alice-password"')
    assert re.match(rb"\S+ NO ", tagged), tagged
    with pytest.raises(imaplib.IMAP4.error):
        m.authenticate("PLAIN", lambda _c: b"\0alice@example.test\0alice-password")
    m.starttls(ssl_context=no_verify())
    assert "LOGINDISABLED" not in m.capabilities and "STARTTLS" not in m.capabilities
    assert "AUTH=PLAIN" in m.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice@example.test", "wrong")
    ok(m.login(*ALICE))
    caps = set(ok(m.capability())[0].decode().split())
    assert {"IMAP4rev1", "IDLE", "UIDPLUS", "MOVE", "NAMESPACE", "UNSELECT",
            "SPECIAL-USE", "CHILDREN"} <= caps, caps
    assert "LOGINDISABLED" not in caps
    assert ok(m.namespace()) == [b'(("" "/")) NIL NIL']
    m.logout()


def test_imaps_login_and_authenticate_plain(start_mail):
    mail = start_mail()
    m = imaplib.IMAP4_SSL("127.0.0.1", mail.ports["imaps"], ssl_context=no_verify(), timeout=30)
    assert "LOGINDISABLED" not in m.capabilities and "STARTTLS" not in m.capabilities
    ok(m.login(*ALICE))
    ok(m.select("INBOX"))
    m.logout()
    m = imaplib.IMAP4_SSL("127.0.0.1", mail.ports["imaps"], ssl_context=no_verify(), timeout=30)
    ok(m.authenticate("PLAIN", lambda _c: b"\0bob@example.test\0bob-password"))
    assert ok(m.select("INBOX")) == [b"0"]
    m.logout()


def test_plaintext_login_with_the_key(start_mail):
    mail = start_mail("--imap-plaintext", "true")
    m = imaplib.IMAP4("127.0.0.1", mail.ports["imap"], timeout=30)
    assert "LOGINDISABLED" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
    ok(m.login(*ALICE))
    m.logout()


# ---------------------------------------------------------------- mailboxes

def test_list_create_rename_delete_subscribe(start_mail):
    mail = start_mail()
    m = connect(mail)
    for name in ("Work", "Work/Projects", "Archive"):
        ok(m.create(name))
    typ, data = m.create("Work")
    assert typ == "NO", data
    every = list_names(m)
    assert set(every) == {"INBOX", "Work", "Work/Projects", "Archive"}, every
    assert "\\haschildren" in every["Work"] and "\\hasnochildren" not in every["Work"]
    assert "\\hasnochildren" in every["Work/Projects"]
    assert "\\hasnochildren" in every["INBOX"]
    assert "\\archive" in every["Archive"] and "\\hasnochildren" in every["Archive"]
    top = list_names(m, '""', "%")
    assert set(top) == {"INBOX", "Work", "Archive"}, top
    assert set(list_names(m, '""', '"Work/%"')) == {"Work/Projects"}
    assert set(list_names(m, '"Work/"', "%")) == {"Work/Projects"}
    lines, tagged = raw(m, 'LIST "" ""')
    assert lines == [b'* LIST (\\Noselect) "/" ""'], lines
    # SUBSCRIBE / LSUB / UNSUBSCRIBE
    ok(m.subscribe("Work"))
    ok(m.subscribe("Archive"))
    lsub = b" ".join(ok(m.lsub()))
    assert b'"Work"' in lsub or b" Work" in lsub, lsub
    assert b"Archive" in lsub and b"Projects" not in lsub
    ok(m.unsubscribe("Archive"))
    assert b"Archive" not in b" ".join(d for d in ok(m.lsub()) if d)
    # RENAME keeps the messages and moves children along
    ok(m.append("Work", None, None, PLAIN))
    ok(m.rename("Work", "Jobs"))
    names = list_names(m)
    assert set(names) == {"INBOX", "Jobs", "Jobs/Projects", "Archive"}, names
    assert ok(m.select("Jobs")) == [b"1"]
    ok(m.unselect())
    typ, data = m.rename("Nowhere", "Else")
    assert typ == "NO", data
    # DELETE
    ok(m.delete("Archive"))
    assert "Archive" not in list_names(m)
    typ, data = m.delete("INBOX")
    assert typ == "NO", data
    typ, data = m.select("Archive")
    assert typ == "NO", data
    m.logout()


def test_select_and_examine_responses(start_mail, tmp_path):
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART)
    m = connect(mail)
    lines, tagged = raw(m, "SELECT INBOX")
    assert b"[READ-WRITE]" in tagged and b" OK " in tagged, tagged
    assert b"* 2 EXISTS" in lines, lines
    assert any(line.startswith(b"* FLAGS (") and b"\\Seen" in line for line in lines), lines
    assert any(b"[PERMANENTFLAGS (" in line and b"\\*" in line for line in lines), lines
    validity = [int(x) for x in re.findall(rb"\[UIDVALIDITY (\d+)\]", b"\n".join(lines))]
    uidnext = [int(x) for x in re.findall(rb"\[UIDNEXT (\d+)\]", b"\n".join(lines))]
    assert len(validity) == 1 and validity[0] > 0, lines
    assert uidnext == [3], lines
    assert any(b"[UNSEEN 1]" in line for line in lines), lines
    lines, tagged = raw(m, "EXAMINE INBOX")
    assert b"[READ-ONLY]" in tagged and b" OK " in tagged, tagged
    assert b"* 2 EXISTS" in lines
    assert re.findall(rb"\[UIDVALIDITY (\d+)\]", b"\n".join(lines)) == [b"%d" % validity[0]]
    m.state = "SELECTED"
    # read-only: STORE refused, FETCH BODY[] does not set \Seen
    lines, tagged = raw(m, "STORE 1 +FLAGS (\\Flagged)")
    assert re.match(rb"\S+ NO ", tagged), tagged
    fetch_one(m, "1", "(BODY[])")
    assert "\\Seen" not in flags_of(m, "1")
    lines, tagged = raw(m, "SELECT Missing")
    assert re.match(rb"\S+ NO ", tagged), tagged
    lines, tagged = raw(m, "FETCH 1 (FLAGS)")
    assert re.match(rb"\S+ BAD ", tagged), (tagged, "a failed SELECT leaves no mailbox selected")
    m.logout()


# ---------------------------------------------------------------- FETCH

def test_fetch_every_item(start_mail, tmp_path):
    mail = start_mail()
    files = deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    m = connect(mail)
    assert ok(m.select("INBOX")) == [b"3"]

    for seq, data in enumerate(files, 1):
        resp = fetch_one(m, str(seq), "(RFC822.SIZE UID)")
        assert re.search(rb"RFC822\.SIZE %d\b" % len(data), resp), (resp, len(data))
        assert re.search(rb"UID %d\b" % seq, resp), resp
        body = literal_of(fetch_one(m, str(seq), "(BODY.PEEK[])"), b"BODY[]")
        assert body == data
        head, _, text = data.partition(b"\r\n\r\n")
        assert literal_of(fetch_one(m, str(seq), "(RFC822.HEADER)"),
                          b"RFC822.HEADER") == head + b"\r\n\r\n"
        assert literal_of(fetch_one(m, str(seq), "(BODY.PEEK[HEADER])"),
                          b"BODY[HEADER]") == head + b"\r\n\r\n"
        assert literal_of(fetch_one(m, str(seq), "(BODY.PEEK[TEXT])"), b"BODY[TEXT]") == text

    # FLAGS, INTERNALDATE
    resp = fetch_one(m, "1", "(FLAGS INTERNALDATE)")
    mo = re.search(rb'INTERNALDATE "([^"]+)"', resp)
    assert mo, resp
    when = imaplib.Internaldate2tuple(b'INTERNALDATE "' + mo.group(1) + b'"')
    assert when is not None and abs(time.mktime(when) - time.time()) < 600, resp
    assert re.search(rb"FLAGS \(\\Recent\)", resp), resp

    # ENVELOPE
    env = fetch_one(m, "1", "(ENVELOPE)")
    assert b'"Wed, 02 Dec 2026 10:00:00 +0000"' in env, env
    assert b'"plain hello"' in env
    assert b'(("Carol Sender" NIL "carol" "example.test"))' in env, env
    assert b'(("Alice" NIL "alice" "example.test"))' in env, env
    assert b'"<plain1@example.test>"' in env
    env3 = fetch_one(m, "3", "(ENVELOPE)")
    assert b"=?UTF-8?Q?Caf=C3=A9_f=C3=BCr_J=C3=BCrgen?=" in env3, env3

    # BODYSTRUCTURE and BODY
    bs = fetch_one(m, "2", "(BODYSTRUCTURE)")
    assert re.search(rb'\("TEXT" "PLAIN" \("CHARSET" "us-ascii"\) NIL NIL "7BIT" \d+ \d+',
                     bs, re.I), bs
    assert re.search(rb'"APPLICATION" "PDF" \("NAME" "report.pdf"\) NIL NIL "BASE64" \d+',
                     bs, re.I), bs
    assert re.search(rb'"MIXED" \("BOUNDARY" "XyZ"\)', bs, re.I), bs
    assert re.search(rb'\("ATTACHMENT" \("FILENAME" "report.pdf"\)\)', bs, re.I), bs
    b = fetch_one(m, "2", "(BODY)")
    assert b"BODY (" in b and b"BOUNDARY" not in b.upper(), b
    bs1 = fetch_one(m, "1", "(BODYSTRUCTURE)")
    text1 = files[0].partition(b"\r\n\r\n")[2]
    assert re.search(rb'BODYSTRUCTURE \("TEXT" "PLAIN" \("CHARSET" "us-ascii"\) NIL NIL '
                     rb'"7BIT" %d %d NIL' % (len(text1), text1.count(b"\r\n")), bs1, re.I), bs1
    bs3 = fetch_one(m, "3", "(BODYSTRUCTURE)")
    assert re.search(rb'"8BIT"', bs3, re.I) and re.search(rb'"CHARSET" "utf-8"', bs3, re.I), bs3

    # sections
    fields = literal_of(fetch_one(m, "1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])"),
                        b"BODY[HEADER.FIELDS (SUBJECT FROM)]")
    assert fields == (b"From: Carol Sender <carol@example.test>\r\n"
                      b"Subject: plain hello\r\n\r\n"), fields
    part1 = literal_of(fetch_one(m, "2", "(BODY.PEEK[1])"), b"BODY[1]")
    assert part1 == b"See the attached report.", part1
    part2 = literal_of(fetch_one(m, "2", "(BODY.PEEK[2])"), b"BODY[2]")
    assert base64.b64decode(part2) == ATTACHMENT
    mime2 = literal_of(fetch_one(m, "2", "(BODY.PEEK[2.MIME])"), b"BODY[2.MIME]")
    assert mime2 == (b'Content-Type: application/pdf; name="report.pdf"\r\n'
                     b'Content-Disposition: attachment; filename="report.pdf"\r\n'
                     b"Content-Transfer-Encoding: base64\r\n\r\n"), mime2
    partial = fetch_one(m, "1", "(BODY.PEEK[]<0.10>)")
    assert literal_of(partial, b"BODY[]<0>") == files[0][:10], partial
    partial = fetch_one(m, "1", "(BODY.PEEK[]<5.10000000>)")
    assert literal_of(partial, b"BODY[]<5>") == files[0][5:], partial

    # \Seen: not by PEEK (all of the above), yes by BODY[] and BODY[TEXT]
    assert all("\\Seen" not in flags_of(m, str(s)) for s in (1, 2, 3))
    resp = fetch_one(m, "1", "(BODY[])")
    assert literal_of(resp, b"BODY[]") == files[0]
    assert re.search(rb"FLAGS \([^)]*\\Seen", resp), ("FLAGS with \\Seen comes along", resp)
    assert "\\Seen" in flags_of(m, "1")
    fetch_one(m, "2", "(BODY[TEXT])")
    assert "\\Seen" in flags_of(m, "2")
    assert "\\Seen" not in flags_of(m, "3")
    # RFC822 is BODY[]: the same bytes, and it sets \Seen; RFC822.HEADER does not
    resp = fetch_one(m, "3", "(RFC822)")
    assert literal_of(resp, b"RFC822") == files[2]
    assert "\\Seen" in flags_of(m, "3")

    # UID FETCH brings UID along; ranges with *
    resp = fetch_one(m, "3", "(FLAGS)", uid=True)
    assert b"UID 3" in resp
    lines, tagged = raw(m, "UID FETCH 2:* (UID)")
    assert [re.search(rb"UID (\d+)", line).group(1) for line in lines] == [b"2", b"3"], lines
    lines, tagged = raw(m, "FETCH 1:* FAST")
    assert len(lines) == 3 and all(b"RFC822.SIZE" in line and b"INTERNALDATE" in line
                                   for line in lines), lines
    # imaplib's own parsing of a FETCH
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == files[0]
    m.logout()


# ---------------------------------------------------------------- SEARCH

def test_search(start_mail, tmp_path):
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    m = connect(mail)
    ok(m.select("INBOX"))
    ok(m.store("1", "+FLAGS", "(\\Seen)"))
    assert search(m, "ALL") == [1, 2, 3]
    assert search(m, "UNSEEN") == [2, 3]
    assert search(m, "SEEN") == [1]
    assert search(m, "SUBJECT", '"plain"') == [1]
    assert search(m, "SUBJECT", "REPORT") == [2]
    assert search(m, "FROM", "dave") == [2]
    assert search(m, "FROM", '"Carol Sender"') == [1]
    assert search(m, "TEXT", "zebra") == [1]
    assert search(m, "TEXT", "dave@example") == [2], "TEXT searches the header too"
    assert search(m, "BODY", "attached") == [2]
    assert search(m, "LARGER", str(len(PLAIN) + 400)) == [2]
    assert search(m, "SMALLER", "100") == []
    assert search(m, "SINCE", "1-Jan-2020") == [1, 2, 3]
    assert search(m, "SINCE", "1-Jan-2099") == []
    assert search(m, "BEFORE", "1-Jan-2020") == []
    assert search(m, "SENTON", "2-Dec-2026") == [1, 2, 3]
    assert search(m, "UID", "2:3") == [2, 3]
    assert search(m, "UID", "3:*") == [3]
    assert search(m, "2:*") == [2, 3]
    assert search(m, "OR", "SUBJECT", "plain", "FROM", "erin") == [1, 3]
    assert search(m, "NOT", "SEEN") == [2, 3]
    assert search(m, "NOT", "OR", "FROM", "dave", "FROM", "erin") == [1]
    assert search(m, "(FROM", "dave", "SUBJECT", "report)") == [2]
    assert search(m, "HEADER", "Message-ID", "utf8@") == [3]
    # CHARSET UTF-8 with non-ASCII literals (imaplib sends them as a literal)
    m.literal = "Grüße".encode()
    assert [int(x) for x in ok(m.search("UTF-8", "BODY"))[0].split()] == [3]
    m.literal = "für Jürgen".encode()
    assert [int(x) for x in ok(m.search("UTF-8", "SUBJECT"))[0].split()] == [3]
    m.literal = "Köln".encode()
    assert [int(x) for x in ok(m.search("UTF-8", "TEXT"))[0].split()] == [3]
    # UID SEARCH answers UIDs: expunge the first message so that seq != uid
    ok(m.store("1", "+FLAGS", "(\\Deleted)"))
    ok(m.expunge())
    assert search(m, "ALL") == [1, 2]
    assert search(m, "ALL", uid=True) == [2, 3]
    assert search(m, "FROM", "erin", uid=True) == [3]
    assert search(m, "UID", "3", uid=True) == [3]
    assert search(m, "UID", "3") == [2]
    assert search(m, "1", uid=True) == [2]
    lines, tagged = raw(m, "SEARCH NONSENSE")
    assert re.match(rb"\S+ BAD ", tagged), tagged
    m.logout()


# ---------------------------------------------------------------- STORE

def test_store(start_mail, tmp_path):
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    m = connect(mail)
    ok(m.select("INBOX"))
    lines, tagged = raw(m, "STORE 1 +FLAGS (\\Flagged $Work)")
    assert b" OK " in tagged
    assert len(lines) == 1 and re.match(rb"\* 1 FETCH \(FLAGS \(([^)]*)\)\)", lines[0]), lines
    assert set(re.search(rb"FLAGS \(([^)]*)\)", lines[0]).group(1).split()) == \
        {b"\\Flagged", b"$Work", b"\\Recent"}, lines
    assert flags_of(m, "1") == {"\\Flagged", "$Work", "\\Recent"}
    lines, tagged = raw(m, "STORE 1 -FLAGS ($Work)")
    assert flags_of(m, "1") == {"\\Flagged", "\\Recent"}
    lines, tagged = raw(m, "STORE 1:2 FLAGS.SILENT (\\Seen \\Answered)")
    assert b" OK " in tagged and lines == [], lines
    assert flags_of(m, "1") == {"\\Seen", "\\Answered", "\\Recent"}
    assert flags_of(m, "2") == {"\\Seen", "\\Answered", "\\Recent"}
    lines, tagged = raw(m, "STORE 2 +FLAGS.SILENT (\\Draft)")
    assert lines == []
    lines, tagged = raw(m, "UID STORE 3 +FLAGS (\\Flagged)")
    assert len(lines) == 1 and b"UID 3" in lines[0] and lines[0].startswith(b"* 3 FETCH"), lines
    lines, tagged = raw(m, "UID STORE 2:3 -FLAGS.SILENT (\\Flagged \\Draft)")
    assert lines == []
    assert flags_of(m, "3") == {"\\Recent"}
    assert flags_of(m, "2") == {"\\Seen", "\\Answered", "\\Recent"}
    # case of a system flag does not matter
    raw(m, "STORE 3 +FLAGS (\\flagged)")
    assert flags_of(m, "3") == {"\\Flagged", "\\Recent"}
    raw(m, "STORE 3 -FLAGS (\\FLAGGED)")
    assert flags_of(m, "3") == {"\\Recent"}
    # imaplib's API
    ok(m.store("3", "+FLAGS", "(\\Seen)"))
    assert search(m, "SEEN") == [1, 2, 3]
    # flags are kept in the store: a new session sees them (without \Recent)
    m2 = connect(mail)
    ok(m2.select("INBOX"))
    assert flags_of(m2, "1") == {"\\Seen", "\\Answered"}
    m2.logout()
    m.logout()


# ---------------------------------------------------------------- COPY / MOVE / EXPUNGE

def test_copy_move_expunge(start_mail, tmp_path):
    mail = start_mail()
    files = deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    m = connect(mail)
    ok(m.create("Work"))
    ok(m.create("Archive"))
    ok(m.select("INBOX"))
    ok(m.store("2", "+FLAGS", "(\\Flagged)"))
    data = ok(m.copy("1:2", "Work"))
    validity_work = ok(m.status("Work", "(UIDVALIDITY)"))[0]
    v = re.search(rb"UIDVALIDITY (\d+)", validity_work).group(1).decode()
    cu = code(data, "COPYUID")
    assert cu[0] == v and uid_list(cu[1]) == [1, 2] and uid_list(cu[2]) == [1, 2], data
    typ, data = m.copy("1", "Nowhere")
    assert typ == "NO" and b"[TRYCREATE]" in data[0], data
    # MOVE: COPYUID then EXPUNGE responses
    m.untagged_responses.clear()
    lines, tagged = raw(m, "MOVE 1 Archive")
    assert b" OK " in tagged, tagged
    text = b"\n".join(lines + [tagged])
    mo = re.search(rb"\[COPYUID (\d+) (\S+) (\S+)\]", text)
    assert mo and mo.group(2) == b"1" and mo.group(3) == b"1", text
    assert b"* 1 EXPUNGE" in lines, lines
    assert ok(m.select("INBOX")) == [b"2"]
    lines, tagged = raw(m, "UID MOVE 3 Archive")
    assert b" OK " in tagged and b"* 2 EXPUNGE" in lines, lines
    mo = re.search(rb"\[COPYUID \d+ 3 2\]", b"\n".join(lines + [tagged]))
    assert mo, (lines, tagged)
    assert ok(m.select("Archive")) == [b"2"]
    assert literal_of(fetch_one(m, "2", "(BODY.PEEK[])"), b"BODY[]") == files[2]
    assert ok(m.select("Work")) == [b"2"]
    assert literal_of(fetch_one(m, "1", "(BODY.PEEK[])"), b"BODY[]") == files[0]
    assert "\\Flagged" in flags_of(m, "2"), "COPY keeps the flags"
    # EXPUNGE: only \Deleted ones, responses from the highest number down
    ok(m.append("Work", None, None, PLAIN))
    ok(m.append("Work", None, None, PLAIN))
    ok(m.select("Work"))
    ok(m.store("1,3,4", "+FLAGS", "(\\Deleted)"))
    # UID EXPUNGE removes only the named \Deleted ones
    lines, tagged = raw(m, "UID EXPUNGE 3:4")
    assert b" OK " in tagged and lines == [b"* 4 EXPUNGE", b"* 3 EXPUNGE"], lines
    lines, tagged = raw(m, "EXPUNGE")
    assert lines == [b"* 1 EXPUNGE"], lines
    assert search(m, "ALL", uid=True) == [2]
    m.logout()


# ---------------------------------------------------------------- APPEND / STATUS

def test_append_and_status(start_mail, tmp_path):
    mail = start_mail()
    files = deliver_all(mail, tmp_path, PLAIN)
    m = connect(mail)
    when = email.utils.parsedate_to_datetime("Mon, 05 Jan 2026 08:30:00 +0100")
    data = ok(m.append("INBOX", "(\\Flagged $Important)", imaplib.Time2Internaldate(when),
                       MULTIPART))
    validity = ok(m.status("INBOX", "(UIDVALIDITY)"))[0]
    v = re.search(rb"UIDVALIDITY (\d+)", validity).group(1).decode()
    assert code(data, "APPENDUID") == [v, "2"], data
    typ, data = m.append("Missing", None, None, PLAIN)
    assert typ == "NO" and b"[TRYCREATE]" in data[0], data
    st = ok(m.status("INBOX", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY SIZE)"))[0]
    values = dict(re.findall(rb"(MESSAGES|UNSEEN|UIDNEXT|UIDVALIDITY|SIZE) (\d+)", st))
    assert values == {b"MESSAGES": b"2", b"UNSEEN": b"2", b"UIDNEXT": b"3",
                      b"UIDVALIDITY": v.encode(),
                      b"SIZE": b"%d" % (len(files[0]) + len(MULTIPART))}, st
    ok(m.select("INBOX"))
    resp = fetch_one(m, "2", "(FLAGS INTERNALDATE BODY.PEEK[])")
    assert literal_of(resp, b"BODY[]") == MULTIPART
    assert re.search(rb"FLAGS \(([^)]*)\)", resp).group(1).split().count(b"\\Flagged") == 1
    assert b"$Important" in resp
    mo = re.search(rb'INTERNALDATE "([^"]+)"', resp)
    got = imaplib.Internaldate2tuple(b'INTERNALDATE "' + mo.group(1) + b'"')
    assert time.mktime(got) == when.timestamp(), resp
    ok(m.store("1", "+FLAGS", "(\\Seen)"))
    st = ok(m.status("INBOX", "(UNSEEN MESSAGES)"))[0]
    assert re.search(rb"UNSEEN 1\b", st) and re.search(rb"MESSAGES 2\b", st), st
    typ, data = m.status("Missing", "(MESSAGES)")
    assert typ == "NO", data
    # APPEND to the selected mailbox: EXISTS comes with the next command
    lines, tagged = raw(m, "NOOP")
    m.untagged_responses.clear()
    ok(m.append("INBOX", None, None, UTF8))
    lines, tagged = raw(m, "NOOP")
    assert b"* 3 EXISTS" in lines or m.untagged_responses.get("EXISTS") == [b"3"], \
        (lines, m.untagged_responses)
    m.logout()


def test_close_expunges_unselect_does_not(start_mail, tmp_path):
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    m = connect(mail)
    ok(m.select("INBOX"))
    ok(m.store("1", "+FLAGS", "(\\Deleted)"))
    ok(m.unselect())
    assert ok(m.select("INBOX")) == [b"3"]
    assert "\\Deleted" in flags_of(m, "1")
    lines, tagged = raw(m, "CLOSE")
    assert b" OK " in tagged and lines == [], ("CLOSE sends no EXPUNGE responses", lines)
    m.state = "AUTH"
    assert ok(m.select("INBOX")) == [b"2"]
    assert len(mail.mailbox(ALICE[0])) == 2
    ok(m.store("1", "+FLAGS", "(\\Deleted)"))
    ok(m.select("INBOX", readonly=True))
    ok(m.close())  # EXAMINE then CLOSE: nothing expunged
    assert ok(m.select("INBOX")) == [b"2"]
    m.logout()


# ---------------------------------------------------------------- restart

def test_uids_and_uidvalidity_survive_a_restart(start_mail, tmp_path):
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    m = connect(mail)
    ok(m.create("Work"))
    ok(m.select("INBOX"))
    ok(m.store("2", "+FLAGS", "(\\Deleted)"))
    ok(m.expunge())
    ok(m.store("1", "+FLAGS", "(\\Flagged)"))
    ok(m.copy("1", "Work"))
    before = {box: ok(m.status(box, "(MESSAGES UIDNEXT UIDVALIDITY)"))[0].split(b" ", 1)[1]
              for box in ("INBOX", "Work")}
    uids = search(m, "ALL", uid=True)
    assert uids == [1, 3]
    m.logout()
    mail.stop()
    mail = start_mail(ports=distinct_ports(mail.ports))
    m = connect(mail)
    after = {box: ok(m.status(box, "(MESSAGES UIDNEXT UIDVALIDITY)"))[0].split(b" ", 1)[1]
             for box in ("INBOX", "Work")}
    assert after == before
    ok(m.select("INBOX"))
    assert search(m, "ALL", uid=True) == uids
    assert "\\Flagged" in flags_of(m, "1")
    assert literal_of(fetch_one(m, "3", "(BODY.PEEK[])", uid=True), b"BODY[]") == UTF8 \
        or b"Subject: =?UTF-8?Q?Caf" in literal_of(fetch_one(m, "3", "(BODY.PEEK[])", uid=True),
                                                    b"BODY[]")
    deliver(mail, tmp_path, PLAIN)
    mail.wait_mailbox(ALICE[0], 3)
    raw(m, "NOOP")
    assert search(m, "ALL", uid=True) == [1, 3, 4], "UIDs are not reused after a restart"
    m.logout()


def distinct_ports(names) -> dict[str, int]:
    """Free ports, all different (the harness's free_port() may repeat itself)."""
    socks = []
    for _ in names:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = {n: s.getsockname()[1] for n, s in zip(names, socks)}
    for s in socks:
        s.close()
    return ports


# ---------------------------------------------------------------- 2. two sessions

def test_second_session_sees_flags_expunges_and_new_mail(start_mail, tmp_path):
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    a = connect(mail)
    b = connect(mail, how="ssl")
    ok(a.select("INBOX"))
    ok(b.select("INBOX"))
    lines, _ = raw(b, "NOOP")
    assert lines == []
    ok(a.store("2", "+FLAGS", "(\\Flagged)"))
    lines, tagged = raw(b, "NOOP")
    assert len(lines) == 1 and re.match(rb"\* 2 FETCH \(.*FLAGS \([^)]*\\Flagged", lines[0]), \
        lines
    ok(a.store("1", "+FLAGS", "(\\Deleted)"))
    ok(a.expunge())
    lines, tagged = raw(b, "NOOP")
    assert b"* 1 EXPUNGE" in lines, lines
    assert not any(b"FETCH" in line and b"\\Deleted" in line and not line.startswith(b"* 1 ")
                   for line in lines), lines
    deliver(mail, tmp_path, PLAIN)
    mail.wait_mailbox(ALICE[0], 3)
    lines, tagged = raw(b, "NOOP")
    assert b"* 3 EXISTS" in lines, lines
    assert search(b, "ALL", uid=True) == [2, 3, 4]
    # an expunge is not announced during FETCH (RFC 3501 7.4.1) but during NOOP
    ok(a.store("1", "+FLAGS", "(\\Deleted)"))
    ok(a.expunge())
    lines, tagged = raw(b, "FETCH 1 (FLAGS)")
    assert not any(line.endswith(b"EXPUNGE") for line in lines), lines
    lines, tagged = raw(b, "NOOP")
    assert b"* 1 EXPUNGE" in lines, lines
    a.logout()
    b.logout()


# ---------------------------------------------------------------- 3. IDLE with aioimaplib

def test_idle_wakes_up_on_delivery(start_mail, tmp_path):
    import aioimaplib

    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN)

    async def scenario() -> tuple[list, str, list]:
        client = aioimaplib.IMAP4_SSL("127.0.0.1", mail.ports["imaps"], ssl_context=no_verify(),
                                      timeout=30)
        await client.wait_hello_from_server()
        resp = await client.login(*ALICE)
        assert resp.result == "OK", resp
        resp = await client.select("INBOX")
        assert resp.result == "OK" and b"1 EXISTS" in b"\n".join(
            x for x in resp.lines if isinstance(x, bytes)), resp
        resp = await client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert resp.result == "OK" and any(b"plain hello" in bytes(x) for x in resp.lines), resp
        idle = await client.idle_start(timeout=60)
        assert client.has_pending_idle()
        loop = asyncio.get_running_loop()
        delivery = loop.run_in_executor(None, deliver, mail, tmp_path, MULTIPART)
        pushed: list = []
        # wait_server_push times out (asyncio.TimeoutError) if nothing comes
        while not any(b"EXISTS" in bytes(x) for x in pushed):
            got = await client.wait_server_push(timeout=20)
            pushed += got if isinstance(got, list) else [got]
        await delivery
        client.idle_done()
        done = await asyncio.wait_for(idle, 10)
        # the connection is usable after IDLE: FETCH the new message
        resp = await client.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert resp.result == "OK" and any(b"report attached" in bytes(x)
                                           for x in resp.lines), resp
        await client.logout()
        return pushed, done.result

    pushed, result = asyncio.run(scenario())
    assert [bytes(x) for x in pushed][:1] == [b"2 EXISTS"], pushed
    assert result == "OK"


def test_idle_reports_another_sessions_flag_change_and_expunge(start_mail, tmp_path):
    """IDLE also reports another session's flag change and expunge (raw socket)."""
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART)
    a = connect(mail)
    ok(a.select("INBOX"))
    s = ssl.create_default_context()
    s.check_hostname = False
    s.verify_mode = ssl.CERT_NONE
    sock = s.wrap_socket(socket.create_connection(("127.0.0.1", mail.ports["imaps"]), 30))
    f = sock.makefile("rwb")
    f.readline()
    for line in (b"a1 LOGIN alice@example.test alice-password\r\n", b"a2 SELECT INBOX\r\n"):
        f.write(line)
        f.flush()
        while not f.readline().startswith(line[:3]):
            pass
    f.write(b"a3 IDLE\r\n")
    f.flush()
    assert f.readline().startswith(b"+")
    ok(a.store("1", "+FLAGS", "(\\Seen)"))
    line = f.readline()
    assert re.match(rb"\* 1 FETCH \(.*\\Seen", line), line
    ok(a.store("2", "+FLAGS", "(\\Deleted)"))
    ok(a.expunge())
    line = f.readline()
    assert line == b"* 2 EXPUNGE\r\n" or b"FETCH" in line, line
    if b"FETCH" in line:
        line = f.readline()
        assert line == b"* 2 EXPUNGE\r\n", line
    f.write(b"DONE\r\n")
    f.flush()
    assert f.readline().startswith(b"a3 OK"), "IDLE ends with a tagged OK"
    sock.close()
    a.logout()


# ---------------------------------------------------------------- 4. mbsync

def mbsync_rc(tmp_path: Path, mail: MailServer, local: Path, tls: bool) -> Path:
    host = "localhost" if tls else "127.0.0.1"  # isync matches DNS names only, not IP SANs
    security = (f"SSLType STARTTLS\nCertificateFile {CERT}\n" if tls else "SSLType None\n")
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""IMAPAccount remote
Host {host}
Port {mail.ports['imap']}
User {ALICE[0]}
Pass {ALICE[1]}
{security}AuthMechs LOGIN

IMAPStore remote
Account remote

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")
    return rc


def mbsync(rc: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["mbsync", "-c", str(rc), *extra, "-a"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def local_files(box: Path) -> dict[str, bytes]:
    return {f"{sub}/{p.name}": p.read_bytes() for sub in ("new", "cur") if (box / sub).is_dir()
            for p in sorted((box / sub).iterdir())}


def as_served(local: bytes) -> bytes:
    head, _, body = local.partition(b"\n\n")
    head = re.sub(rb"(?m)^X-TUID: .*\n", b"", head + b"\n")
    return (head + b"\n" + body).replace(b"\n", b"\r\n")


def server_state(mail: MailServer) -> dict:
    m = connect(mail)
    out = {}
    for box in sorted(list_names(m)):
        ok(m.select(box))
        lines, _ = raw(m, "UID FETCH 1:* (FLAGS RFC822.SIZE)") if search(m, "ALL") else ([], b"")
        out[box] = sorted(re.sub(rb"^\* \d+ |\\Recent ?", b"", line).replace(b" )", b")")
                          for line in lines)
    m.logout()
    return out


def test_mbsync_two_way(start_mail, tmp_path):
    mail = start_mail()
    files = deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    local = tmp_path / "local"
    local.mkdir()
    rc = mbsync_rc(tmp_path, mail, local, tls=True)
    mbsync(rc)  # STARTTLS, the example certificate trusted by CertificateFile
    inbox = local / "INBOX"
    got = local_files(inbox)
    # mbsync stores LF line ends locally and adds its X-TUID header: otherwise the same bytes
    assert sorted(as_served(v) for v in got.values()) == sorted(files), \
        "byte-exact copies of the delivered mail"

    # local changes: one seen, one deleted, one new
    names = sorted(got, key=lambda n: int(re.search(r",U=(\d+)", n).group(1)))
    seen_file = inbox / names[0]
    seen_file.rename(inbox / "cur" / (seen_file.name.split(":2,")[0] + ":2,S"))
    (inbox / names[1]).unlink()
    new_msg = (b"From: alice@example.test\r\nTo: bob@example.test\r\n"
               b"Subject: written offline\r\nDate: Wed, 02 Dec 2026 13:00:00 +0000\r\n"
               b"Message-ID: <offline@example.test>\r\n\r\nComposed without a network.\r\n")
    (inbox / "new" / "1764680000.M1P1.laptop").write_bytes(new_msg)
    mbsync(rc)
    m = connect(mail)
    ok(m.select("INBOX"))
    assert search(m, "ALL", uid=True) == [1, 3, 4], "2 expunged, the new one appended"
    assert "\\Seen" in flags_of(m, "1", uid=True)
    assert "\\Seen" not in flags_of(m, "3", uid=True)
    body = literal_of(fetch_one(m, "4", "(BODY.PEEK[])", uid=True), b"BODY[]")
    assert body.endswith(new_msg.partition(b"\r\n\r\n")[2]) and b"Subject: written offline" \
        in body, body
    # a server-side folder reaches the local side
    ok(m.create("Work"))
    ok(m.append("Work", "(\\Seen)", None, PLAIN))
    m.logout()
    mbsync(rc)
    assert (local / "Work" / "cur").is_dir() or (local / "Work" / "new").is_dir(), \
        list(local.iterdir())
    assert [as_served(v) for v in local_files(local / "Work").values()] == [PLAIN]
    assert list(local_files(local / "Work"))[0].endswith(":2,S")

    # and a further sync changes nothing on either side
    server_before = server_state(mail)
    local_before = {box: local_files(local / box) for box in ("INBOX", "Work")}
    res = mbsync(rc, "-V")
    assert server_state(mail) == server_before
    assert {box: local_files(local / box) for box in ("INBOX", "Work")} == local_before
    out = res.stdout + res.stderr
    assert not re.search(r"(?i)error|warning|expung|propagat|upload|copying", out), out


# ---------------------------------------------------------------- corners (RFC 3501 / 9051)

def test_inbox_is_case_insensitive_and_rename_inbox(start_mail, tmp_path):
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART)
    m = connect(mail)
    assert ok(m.select("inbox")) == [b"2"]
    st = ok(m.status("Inbox", "(MESSAGES)"))[0]
    assert b"MESSAGES 2" in st, st
    data = ok(m.copy("1", "inbox"))
    assert code(data, "COPYUID")[2] == "3", data
    ok(m.append("iNbOx", None, None, UTF8))
    ok(m.unselect())
    assert ok(m.select("INBOX")) == [b"4"]
    ok(m.unselect())
    # RENAME INBOX moves its messages into a new mailbox, INBOX stays (empty)
    ok(m.rename("INBOX", "Old"))
    assert ok(m.select("INBOX")) == [b"0"]
    assert ok(m.select("Old")) == [b"4"]
    # INBOX is case-insensitive (RFC 3501 5.1): LIST "" "inbox" lists it, as Dovecot does
    assert set(list_names(m, '""', "inbox")) == {"INBOX"}, "LIST matches INBOX in any case"
    assert set(list_names(m, '""', "InBox")) == {"INBOX"}
    m.logout()


def test_mailbox_names_and_hierarchy_corners(start_mail):
    mail = start_mail()
    m = connect(mail)
    ok(m.create('"My Stuff"'))
    ok(m.create("Entw&APw-rfe"))  # "Entwürfe" in modified UTF-7
    ok(m.create("Work/Projects/"))  # a trailing separator: creates Work/Projects (and Work)
    names = list_names(m)
    assert {"My Stuff", "Entw&APw-rfe", "Work", "Work/Projects"} <= set(names), names
    assert ok(m.select('"My Stuff"')) == [b"0"]
    ok(m.unselect())
    # LIST (SPECIAL-USE), RETURN (SUBSCRIBED)
    ok(m.create("Trash"))
    ok(m.create("Sent"))
    lines, tagged = raw(m, 'LIST (SPECIAL-USE) "" "*"')
    assert b" OK " in tagged
    got = {re.search(rb'"/" "?([^"]*)"?\Z', line).group(1): line for line in lines}
    assert set(got) == {b"Trash", b"Sent"}, lines
    assert b"\\Trash" in got[b"Trash"] and b"\\Sent" in got[b"Sent"]
    ok(m.subscribe("Sent"))
    lines, tagged = raw(m, 'LIST "" "S*" RETURN (SUBSCRIBED)')
    assert len(lines) == 1 and b"\\Subscribed" in lines[0], lines
    # RENAME to an existing name, or below itself: refused
    typ, data = m.rename("Trash", "Sent")
    assert typ == "NO", data
    typ, data = m.rename("Work", "Work/Projects/Work")
    assert typ == "NO", (data, list_names(m))
    # DELETE of a mailbox with children: it goes, the children stay (RFC 3501 6.3.4)
    typ, data = m.delete("Work")
    names = list_names(m)
    if typ == "OK":
        assert "Work/Projects" in names, names
        assert "Work" not in names or "\\noselect" in names["Work"], names
    else:
        assert "Work" in names and "Work/Projects" in names, names
    m.logout()


def test_fetch_and_search_corners(start_mail, tmp_path):
    mail = start_mail()
    files = deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    m = connect(mail)
    ok(m.select("INBOX"))
    # UID ranges: n:* where n is beyond the last UID names the last message (RFC 9051 6.4.8)
    lines, tagged = raw(m, "UID FETCH 10:* (UID)")
    assert b" OK " in tagged and len(lines) == 1 and b"UID 3" in lines[0], (lines, tagged)
    assert search(m, "UID", "10:*", uid=True) == [3]
    lines, tagged = raw(m, "UID FETCH 10:20 (UID)")
    assert b" OK " in tagged and lines == [], (lines, tagged)
    # partial past the end: an empty string
    resp = fetch_one(m, "1", "(BODY.PEEK[]<100000.10>)")
    assert re.search(rb'BODY\[\]<100000> (""|\{0\}\r\n)', resp), resp
    # HEADER.FIELDS.NOT
    head = literal_of(fetch_one(m, "1", "(BODY.PEEK[HEADER.FIELDS.NOT (RECEIVED "
                                        "AUTHENTICATION-RESULTS)])"),
                      b"BODY[HEADER.FIELDS.NOT (RECEIVED AUTHENTICATION-RESULTS)]")
    assert head.startswith(b"From: Carol Sender") and head.endswith(b"\r\n\r\n"), head
    assert b"Received" not in head
    # BODY[1] of a non-multipart message is its body (RFC 3501 6.4.5)
    assert literal_of(fetch_one(m, "1", "(BODY.PEEK[1])"), b"BODY[1]") == \
        files[0].partition(b"\r\n\r\n")[2]
    # several items at once, in one FETCH response
    resp = fetch_one(m, "2", "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] "
                             "BODY.PEEK[1])")
    assert b"UID 2" in resp and b"RFC822.SIZE %d" % len(files[1]) in resp and b"FLAGS (" in resp
    # NEW / OLD / RECENT / KEYWORD / CHARSET
    assert search(m, "RECENT") == [1, 2, 3]
    assert search(m, "NEW") == [1, 2, 3]
    ok(m.store("2", "+FLAGS", "($Todo)"))
    assert search(m, "KEYWORD", "$Todo") == [2]
    assert search(m, "UNKEYWORD", "$Todo") == [1, 3]
    lines, tagged = raw(m, "SEARCH CHARSET KOI8-R SUBJECT x")
    assert re.match(rb"\S+ NO \[BADCHARSET", tagged), tagged
    lines, tagged = raw(m, "SEARCH CHARSET US-ASCII SUBJECT plain")
    assert lines == [b"* SEARCH 1"], (lines, tagged)
    # a fresh session: nothing is \Recent any more
    m2 = connect(mail)
    ok(m2.select("INBOX"))
    assert search(m2, "RECENT") == [] and search(m2, "OLD") == [1, 2, 3]
    m2.logout()
    # an empty mailbox
    ok(m.create("Empty"))
    ok(m.select("Empty"))
    lines, tagged = raw(m, "UID FETCH 1:* (FLAGS)")
    assert b" OK " in tagged and lines == [], (lines, tagged)
    assert search(m, "ALL") == []
    m.logout()


def test_copy_into_the_selected_mailbox_is_announced(start_mail, tmp_path):
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN)
    m = connect(mail)
    ok(m.select("INBOX"))
    lines, tagged = raw(m, "COPY 1 INBOX")
    lines2, _ = raw(m, "NOOP")
    assert b"* 2 EXISTS" in lines + lines2, (lines, lines2)
    assert search(m, "ALL", uid=True) == [1, 2]
    m.logout()


def test_no_spurious_updates_after_own_changes(start_mail, tmp_path):
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART)
    m = connect(mail)
    ok(m.select("INBOX"))
    raw(m, "STORE 1 +FLAGS (\\Flagged $Work \\seen)")
    lines, _ = raw(m, "NOOP")
    assert lines == [], ("the client already knows its own flag change", lines)
    fetch_one(m, "2", "(BODY[])")  # sets \Seen, with FLAGS in the response
    lines, _ = raw(m, "NOOP")
    assert lines == [], lines
    raw(m, "STORE 1:2 FLAGS.SILENT ()")
    lines, _ = raw(m, "NOOP")
    assert lines == [], lines
    m.logout()


def test_starttls_discards_pipelined_plaintext(start_mail):
    mail = start_mail()
    sock = socket.create_connection(("127.0.0.1", mail.ports["imap"]), 30)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"* OK")
    sock.sendall(b"a STARTTLS\r\nb CAPABILITY\r\n")
    assert f.readline().startswith(b"a OK"), "STARTTLS answered"
    tls = no_verify().wrap_socket(sock, server_hostname="mail.example.test")
    tf = tls.makefile("rwb")
    tf.write(b"c NOOP\r\n")
    tf.flush()
    assert tf.readline().startswith(b"c OK"), "the injected command was not run"
    tls.close()


def test_bad_input_does_not_kill_the_server(start_mail):
    mail = start_mail()
    for junk in (b"\x00\xff\xfe garbage\r\n", b"a LOGIN {99999999999}\r\n",
                 b"a LOGIN {5}\r\nab", b"a FETCH 1 (BODY[\r\n", b"*\r\n",
                 b"a " + b"X" * 200000 + b"\r\n", b"a SELECT INBOX\r\n",
                 b"a AUTHENTICATE PLAIN\r\n!!!notbase64\r\n"):
        sock = socket.create_connection(("127.0.0.1", mail.ports["imap"]), 30)
        sock.settimeout(5)
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(junk)
        try:
            f.readline()
        except (TimeoutError, OSError):
            pass
        sock.close()
    m = connect(mail)
    ok(m.select("INBOX"))
    m.logout()


def test_append_corner_messages(start_mail):
    mail = start_mail()
    m = connect(mail)
    ok(m.select("INBOX"))
    bare_lf = b"From: x@example.test\nSubject: bare LF\n\nline one\nline two\n"
    big = PLAIN + (b"0123456789abcdef" * 4 + b"\r\n") * 16000   # about 1 MB
    for data in (bare_lf, big):
        ok(m.append("INBOX", None, None, data))
    raw(m, "NOOP")
    for seq in (1, 2):
        resp = fetch_one(m, str(seq), "(RFC822.SIZE BODY.PEEK[])")
        body = literal_of(resp, b"BODY[]")
        size = int(re.search(rb"RFC822\.SIZE (\d+)", resp).group(1))
        assert size == len(body), ("RFC822.SIZE is the length of BODY[]", seq, size, len(body))
    assert literal_of(fetch_one(m, "2", "(BODY.PEEK[])"), b"BODY[]") == big
    part = literal_of(fetch_one(m, "2", "(BODY.PEEK[]<500000.1000>)"), b"BODY[]<500000>")
    assert part == big[500000:501000]
    m.logout()


def test_child_of_inbox_and_odd_names(start_mail):
    mail = start_mail()
    m = connect(mail)
    for name in ("INBOX/Lists", "Lists.ietf", "a%b", "Work/2026.Q1"):
        ok(m.create(f'"{name}"'))
        ok(m.append(f'"{name}"', None, None, PLAIN))
    names = list_names(m)
    assert {"INBOX", "INBOX/Lists", "Lists.ietf", "a%b", "Work", "Work/2026.Q1"} <= set(names), \
        names
    assert "\\haschildren" in names["INBOX"], names
    for name in ("INBOX/Lists", "Lists.ietf", "a%b", "Work/2026.Q1"):
        assert ok(m.select(f'"{name}"')) == [b"1"], name
    assert ok(m.select("INBOX")) == [b"0"], "the children's messages are not INBOX's"
    m.logout()


def test_idle_without_a_selected_mailbox_and_sasl_ir(start_mail):
    mail = start_mail()
    sock = socket.create_connection(("127.0.0.1", mail.ports["imaps"]), 30)
    tls = no_verify().wrap_socket(sock, server_hostname="mail.example.test")
    f = tls.makefile("rwb")
    f.readline()
    ir = base64.b64encode(b"\0alice@example.test\0alice-password")
    f.write(b"a AUTHENTICATE PLAIN " + ir + b"\r\n")
    f.flush()
    assert f.readline().startswith(b"a OK"), "SASL-IR"
    f.write(b"b IDLE\r\n")
    f.flush()
    assert f.readline().startswith(b"+")
    f.write(b"DONE\r\n")
    f.flush()
    assert f.readline().startswith(b"b OK")
    f.write(b"c SELECT INBOX\r\nd NOOP\r\n")  # pipelined
    f.flush()
    lines = []
    while not lines or not lines[-1].startswith(b"d "):
        lines.append(f.readline())
    assert any(line.startswith(b"c OK [READ-WRITE]") for line in lines), lines
    assert lines[-1].startswith(b"d OK"), lines
    tls.close()


def test_mbsync_plaintext_local_folder_and_flags(start_mail, tmp_path):
    """The FIELD-NOTES setup (SSLType None, --imap-plaintext): a folder made locally reaches
    the server, and flag letters map to IMAP flags both ways."""
    mail = start_mail("--imap-plaintext", "true")
    files = deliver_all(mail, tmp_path, PLAIN, MULTIPART)
    local = tmp_path / "local"
    local.mkdir()
    rc = mbsync_rc(tmp_path, mail, local, tls=False)
    mbsync(rc)
    inbox = local / "INBOX"
    names = sorted(local_files(inbox), key=lambda n: int(re.search(r",U=(\d+)", n).group(1)))
    assert len(names) == 2
    # F (flagged) and R (replied) locally
    old = inbox / names[0]
    old.rename(inbox / "cur" / (old.name.split(":2,")[0] + ":2,FR"))
    # a new local folder with a message
    for sub in ("cur", "new", "tmp"):
        (local / "Drafts" / sub).mkdir(parents=True)
    (local / "Drafts" / "cur" / "1764680001.M2P2.laptop:2,DS").write_bytes(
        b"From: alice@example.test\nSubject: draft\n\nnot finished\n")
    # and a server-side flag change
    m = connect(mail, how="ssl")
    ok(m.select("INBOX"))
    ok(m.store("2", "+FLAGS", "(\\Seen)"))
    m.logout()
    mbsync(rc)
    m = connect(mail, how="ssl")
    ok(m.select("INBOX"))
    assert flags_of(m, "1", uid=True) >= {"\\Flagged", "\\Answered"}
    assert "Drafts" in list_names(m)
    assert "\\drafts" in list_names(m)["Drafts"]
    ok(m.select("Drafts"))
    assert search(m, "ALL") == [1]
    assert {"\\Draft", "\\Seen"} <= flags_of(m, "1")
    assert b"not finished" in literal_of(fetch_one(m, "1", "(BODY.PEEK[])"), b"BODY[]")
    m.logout()
    now = local_files(inbox)
    second = [n for n in now if re.search(r",U=2:", n)]
    assert len(second) == 1 and second[0].endswith(":2,S"), now
    assert as_served(now[second[0]]) == files[1]
    # an expunge on the server removes the local copy
    m = connect(mail, how="ssl")
    ok(m.select("INBOX"))
    ok(m.store("2", "+FLAGS", "(\\Deleted)"))
    ok(m.expunge())
    m.logout()
    mbsync(rc)
    assert not [n for n in local_files(inbox) if re.search(r",U=2:", n)], local_files(inbox)
    assert len(local_files(inbox)) == 1


def test_concurrent_flag_changes_are_not_lost(start_mail, tmp_path):
    """STORE +FLAGS/-FLAGS adds/removes flags to what the message has now, not to what this
    session last heard (RFC 3501 6.4.6); a second session's change in between stays."""
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART, UTF8)
    a = connect(mail)
    b = connect(mail)
    ok(a.select("INBOX"))
    ok(b.select("INBOX"))
    ok(a.store("1", "+FLAGS", "(\\Flagged)"))
    raw(b, "STORE 1 +FLAGS (\\Seen)")          # b has not heard of \Flagged yet
    ok(a.store("2", "+FLAGS", "(\\Flagged)"))
    raw(b, "STORE 2 -FLAGS (\\Answered)")
    ok(a.store("3", "+FLAGS", "(\\Flagged)"))
    fetch_one(b, "3", "(BODY[])")               # sets \Seen
    raw(b, "NOOP")
    c = connect(mail)
    ok(c.select("INBOX", readonly=True))
    got = {n: flags_of(c, str(n)) for n in (1, 2, 3)}
    assert got == {1: {"\\Flagged", "\\Seen"}, 2: {"\\Flagged"}, 3: {"\\Flagged", "\\Seen"}}, got
    for m in (a, b, c):
        m.logout()


def test_expunge_uses_the_current_deleted_flags(start_mail, tmp_path):
    """EXPUNGE removes the messages that have \\Deleted now (RFC 3501 6.4.3): one that
    another session undeleted stays, one that it deleted goes."""
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART)
    a = connect(mail)
    b = connect(mail)
    ok(a.select("INBOX"))
    ok(b.select("INBOX"))
    ok(a.store("1", "+FLAGS", "(\\Deleted)"))
    raw(b, "NOOP")                       # b knows 1 is \Deleted
    ok(a.store("1", "-FLAGS", "(\\Deleted)"))  # a changes its mind
    ok(a.store("2", "+FLAGS", "(\\Deleted)"))
    lines, tagged = raw(b, "EXPUNGE")    # b has not heard yet
    assert b" OK " in tagged
    c = connect(mail)
    ok(c.select("INBOX", readonly=True))
    assert search(c, "ALL", uid=True) == [1], ("the undeleted message stays, the deleted goes",
                                               lines)
    for m in (a, b, c):
        m.logout()


def test_lsub_percent_shows_an_unsubscribed_parent_as_noselect(start_mail):
    """RFC 3501 6.3.9: "foo/bar" subscribed, "foo" not: LSUB "" "%" returns "foo" with
    \\Noselect."""
    mail = start_mail()
    m = connect(mail)
    ok(m.create("Work/Projects"))
    ok(m.subscribe("Work/Projects"))
    lines, tagged = raw(m, 'LSUB "" "*"')
    assert lines == [b'* LSUB () "/" Work/Projects'] or \
        lines == [b'* LSUB () "/" "Work/Projects"'], lines
    lines, tagged = raw(m, 'LSUB "" "%"')
    assert len(lines) == 1 and re.match(rb'\* LSUB \(\\Noselect\) "/" "?Work"?\Z', lines[0],
                                        re.I), lines
    m.logout()


def test_status_recent(start_mail, tmp_path):
    """IMAP4rev1 (the server's only revision) has STATUS RECENT: the \\Recent messages."""
    mail = start_mail()
    deliver_all(mail, tmp_path, PLAIN, MULTIPART)
    m = connect(mail)
    st = ok(m.status("INBOX", "(MESSAGES RECENT)"))[0]
    assert b"RECENT 2" in st, st
    ok(m.select("INBOX"))
    assert search(m, "RECENT") == [1, 2]
    m.logout()


def test_list_extended(start_mail):
    """LIST-EXTENDED (RFC 5258), which the server announces."""
    mail = start_mail()
    m = connect(mail)
    ok(m.create("Work/Projects"))
    ok(m.create("Archive"))
    ok(m.subscribe("Work/Projects"))
    ok(m.subscribe("Gone"))
    lines, tagged = raw(m, 'LIST "" ("INBOX" "Arch*")')
    assert b" OK " in tagged and len(lines) == 2, lines
    lines, tagged = raw(m, 'LIST (SUBSCRIBED) "" "*"')
    got = {line.rsplit(b" ", 1)[1].strip(b'"'): line for line in lines}
    assert set(got) == {b"Work/Projects", b"Gone"}, lines
    assert b"\\NonExistent" in got[b"Gone"] and b"\\Subscribed" in got[b"Gone"], lines
    # SELECT a parent that is only implied: NO
    typ, data = m.select("Work")
    assert typ == "NO", data
    # RECURSIVEMATCH: the parent comes with CHILDINFO (RFC 5258 3.5)
    lines, tagged = raw(m, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert b" OK " in tagged
    assert any(re.search(rb'"/" "?Work"? \("CHILDINFO" \("SUBSCRIBED"\)\)\Z', line)
               for line in lines), lines
    m.logout()


def test_login_with_literals_and_append_seen_by_another_session(start_mail):
    mail = start_mail()
    sock = socket.create_connection(("127.0.0.1", mail.ports["imaps"]), 30)
    tls = no_verify().wrap_socket(sock, server_hostname="mail.example.test")
    f = tls.makefile("rwb")
    f.readline()
    f.write(b"a LOGIN {18+}\r\nalice@example.test {14}\r\n")
    f.flush()
    assert f.readline().startswith(b"+"), "a synchronizing literal gets its continuation"
    f.write(b"alice-password\r\n")
    f.flush()
    assert f.readline().startswith(b"a OK"), "LOGIN with literals"
    f.write(b"b SELECT INBOX\r\n")
    f.flush()
    while not f.readline().startswith(b"b "):
        pass
    m = connect(mail)
    ok(m.append("INBOX", None, None, PLAIN))
    m.logout()
    f.write(b"c NOOP\r\n")
    f.flush()
    lines = []
    while not lines or not lines[-1].startswith(b"c "):
        lines.append(f.readline())
    assert b"* 1 EXISTS\r\n" in lines, lines
    tls.close()
