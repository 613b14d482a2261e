"""plugins/imap/mime.py and search.py against a real Dovecot over the same corpus.

The corpus is dropped into a private Dovecot's Maildir; imaplib FETCHes ENVELOPE,
BODYSTRUCTURE, BODY, RFC822.SIZE and BODY.PEEK[section]s and runs SEARCHes; mime.py and
search.py must give the same answers.

Accepted differences (each one checked, not just waved through):

* Line endings. IMAP is CRLF; Dovecot presents a bare-LF stored message with CRLF line
  endings (RFC822.SIZE, body sizes and section bytes all CRLF). mime.py returns slices of
  the bytes as stored, so for a bare-LF message the comparison is made against
  ``Message(crlf(raw))`` (the appliance stores what IMAP APPEND / SMTP gave it: CRLF), and
  the unit tests check that ``Message(raw)`` has the same structure, only the sizes
  differing by the number of LF line ends.
* SEARCH BEFORE/ON/SINCE: RFC 3501 compares "disregarding time and timezone", i.e. in the
  internal date's own zone. The store keeps epoch seconds only, so search.py uses UTC; the
  peer runs with TZ=UTC, which makes Dovecot's local dates UTC dates too.
* SENTBEFORE & co. on a message without a usable Date header: the RFC does not say;
  search.py does as Dovecot (sent on 1 January 1970), so no difference remains.

Everything else is compared exactly: the values (after parsing Dovecot's answer) and, where
Dovecot wrote no literal, the very text, with ``ser_wire`` (servers write no space between
the parts of a multipart or the addresses of a list).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import imaplib
import os
import quopri
import re
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest

from ingot.plugins.imap import mime, search
from tests.interop import dovecot_peer
from tests.interop.dovecot_peer import Dovecot, free_port

pytestmark = pytest.mark.skipif(dovecot_peer.available() is not None,
                                reason=str(dovecot_peer.available()))

# --- local stand-ins for plugins/imap/wire.py ---------------------------------------------
Section = namedtuple("Section", "part text fields")
SearchKey = namedtuple("SearchKey", "op args")


class SeqSet:
    def __init__(self, text: str) -> None:
        self.ranges = []
        for item in text.split(","):
            a, _, b = item.partition(":")
            self.ranges.append((a, b or a))

    def contains(self, n: int, largest: int) -> bool:
        for a, b in self.ranges:
            lo = largest if a == "*" else int(a)
            hi = largest if b == "*" else int(b)
            lo, hi = min(lo, hi), max(lo, hi)
            if lo <= n <= hi:
                return True
        return False


def K(op, *args):
    return SearchKey(op, tuple(args))


def crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", raw)


# --- the corpus -----------------------------------------------------------------------------
def _lf(s: str) -> bytes:
    return s.encode("utf-8")


def _c(s: str) -> bytes:
    return crlf(s.encode("utf-8"))


B64_TEXT = base64.encodebytes(b"A zebra crossing, encoded in base64.\nSecond line.\n").decode()
QP_TEXT = quopri.encodestring("Caf\u00e9 au lait with a giraffe = tall \u2014 and a very long line "
                              "that must be soft-broken by quoted-printable encoding rules.\n"
                              .encode()).decode()
PDF = base64.encodebytes(bytes(range(256)) * 3).decode()

CORPUS: list[bytes] = [
    # 0 plain CRLF
    _c("Date: Mon, 1 Mar 2021 10:00:00 +0000\nFrom: Alice Example <alice@example.org>\n"
       "To: Bob <bob@example.net>\nSubject: hello world\nMessage-ID: <m0@example.org>\n"
       "\nHello Bob,\nhow are you?\n"),
    # 1 plain LF
    _lf("Date: Tue, 2 Mar 2021 23:30:00 -0800\nFrom: carol@example.com\nTo: dave@example.com\n"
        "Subject: lf only\n\nline one\nline two\nline three\n"),
    # 2 quoted-printable
    _c("Date: Wed, 10 Feb 2021 08:00:00 +0100\nFrom: \"Eve, the QP\" <eve@example.org>\n"
       "To: alice@example.org\nSubject: qp\nMIME-Version: 1.0\n"
       "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n"
       "\n" + QP_TEXT),
    # 3 base64 text
    _c("From: alice@example.org\nTo: bob@example.net\nSubject: b64\nMIME-Version: 1.0\n"
       "Content-Type: text/plain; charset=\"us-ascii\"\nContent-Transfer-Encoding: base64\n"
       "\n" + B64_TEXT),
    # 4 multipart/alternative
    _c("From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: alt\nMIME-Version: 1.0\n"
       "Date: Thu, 4 Mar 2021 12:00:00 +0000\n"
       "Content-Type: multipart/alternative; boundary=\"alt-1\"\n\n"
       "This is a multi-part message.\n--alt-1\nContent-Type: text/plain; charset=us-ascii\n\n"
       "Plain version with an okapi.\n\n--alt-1\nContent-Type: text/html; charset=us-ascii\n"
       "Content-Transfer-Encoding: 7bit\n\n<p>HTML version with an okapi.</p>\n--alt-1--\n"),
    # 5 multipart/mixed with attachments, RFC 2231 filename*
    _c("From: bob@example.net\nTo: alice@example.org, Carol <carol@example.com>\n"
       "Cc: dave@example.com\nSubject: report attached\nMIME-Version: 1.0\n"
       "Date: Fri, 5 Mar 2021 09:15:00 +0200\n"
       "Content-Type: multipart/mixed;\n boundary=\"==mixed==\"\n\n"
       "--==mixed==\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
       "See the report, na\u00efve reader.\n--==mixed==\n"
       "Content-Type: application/pdf; name=\"report.pdf\"\n"
       "Content-Disposition: attachment; filename=\"report.pdf\"; size=768\n"
       "Content-Transfer-Encoding: base64\nContent-ID: <pdf1@example.net>\n"
       "Content-Description: The report\n\n" + PDF +
       "--==mixed==\nContent-Type: text/plain; name*=utf-8''r%C3%A9sum%C3%A9.txt\n"
       "Content-Disposition: attachment;\n filename*0*=utf-8''r%C3%A9;\n"
       " filename*1*=sum%C3%A9.txt\n"
       "Content-Language: fr\n\nrésumé\n--==mixed==--\nepilogue text\n"),
    # 6 nested multipart
    _c("From: nest@example.org\nTo: bob@example.net\nSubject: nested\nMIME-Version: 1.0\n"
       "Content-Type: multipart/mixed; boundary=outer\n\n--outer\n"
       "Content-Type: multipart/alternative; boundary=inner\n\n--inner\n"
       "Content-Type: text/plain\n\nnested plain with a narwhal\n--inner\n"
       "Content-Type: text/html\n\n<b>nested html</b>\n--inner--\n\n--outer\n"
       "Content-Type: image/png; name=dot.png\nContent-Transfer-Encoding: base64\n"
       "Content-Disposition: inline\n\niVBORw0KGgo=\n--outer--\n"),
    # 7 message/rfc822 attachment
    _c("From: fwd@example.org\nTo: alice@example.org\nSubject: Fwd: hello\nMIME-Version: 1.0\n"
       "Content-Type: multipart/mixed; boundary=\"fwd\"\n\n--fwd\nContent-Type: text/plain\n\n"
       "Forwarded below.\n--fwd\nContent-Type: message/rfc822\n\n"
       "Date: Sat, 6 Mar 2021 01:02:03 +0000\nFrom: Inner Sender <inner@example.com>\n"
       "To: fwd@example.org\nSubject: inner subject\nMessage-ID: <inner@example.com>\n"
       "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=ib\n\n"
       "--ib\nContent-Type: text/plain\n\ninner text with a quokka\n--ib\n"
       "Content-Type: text/html\n\n<i>inner html</i>\n--ib--\n\n--fwd--\n"),
    # 8 RFC 2047 subject and names
    _c("From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>\n"
       "To: =?ISO-8859-1?B?Suly9G1l?= <jerome@example.fr>\n"
       "Subject: =?UTF-8?B?Q2Fmw6kgY3LDqG1l?= and =?utf-8?q?more_text?=\n"
       "Date: Sun, 7 Mar 2021 18:00:00 +0100\n\nCaf\u00e9 body in utf-8 without MIME headers.\n"),
    # 9 groups in To
    _c("From: alice@example.org\nTo: friends: bob@example.net, \"Carol C\" <carol@example.com>;,"
       " dave@example.com\nCc: undisclosed-recipients:;\nSubject: groups\n\ngroup body\n"),
    # 10 missing Date
    _c("From: nodate@example.org\nTo: bob@example.net\nSubject: no date here\n\nbody\n"),
    # 11 missing From
    _c("To: bob@example.net\nSubject: no from\nDate: Mon, 8 Mar 2021 00:00:00 +0000\n"
       "Reply-To: replies@example.org\nSender: sender@example.org\n\nbody without from\n"),
    # 12 long folded headers
    _c("From: Folded Person <folded@example.org>\nTo: a@example.org,\n\tb@example.org,\n"
       "  c@example.org\nSubject: this is a very long subject line that has been folded\n"
       " over several lines by a mail client\n\tand more\n"
       "In-Reply-To: <parent@example.org>\nMessage-ID:\n <folded-id@example.org>\n"
       "Date: Tue, 9 Mar 2021 10:00:00 +0000\n\nfolded body\n"),
    # 13 8-bit body without MIME
    _c("From: eight@example.org\nTo: bob@example.net\nSubject: 8bit\n"
       "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n")
    + b"Gr\xfc\xdfe aus M\xfcnchen\r\n",
    # 14 malformed boundary (boundary never appears)
    _c("From: broken@example.org\nSubject: broken multipart\nMIME-Version: 1.0\n"
       "Content-Type: multipart/mixed; boundary=\"nothere\"\n\n--elsewhere\n"
       "Content-Type: text/plain\n\nbroken part text\n--elsewhere--\n"),
    # 15 empty body
    _c("From: empty@example.org\nTo: bob@example.net\nSubject: empty\n\n"),
    # 16 multipart, missing final boundary
    _c("From: nofinal@example.org\nSubject: no final boundary\nMIME-Version: 1.0\n"
       "Content-Type: multipart/mixed; boundary=b1\n\n--b1\nContent-Type: text/plain\n\n"
       "first part\n--b1\nContent-Type: text/plain\n\nsecond part never closed\n"),
    # 17 multipart without boundary parameter
    _c("From: noboundary@example.org\nSubject: no boundary param\nMIME-Version: 1.0\n"
       "Content-Type: multipart/mixed\n\njust some text\n"),
    # 18 upper-case types, parameters, no charset
    _c("From: upper@example.org\nSubject: upper\nMIME-Version: 1.0\nContent-Type: TEXT/HTML\n"
       "Content-Transfer-Encoding: QUOTED-PRINTABLE\n\n<html>upper=20case</html>\n"),
    # 19 LF multipart with preamble and epilogue
    _lf("From: lfmp@example.org\nTo: bob@example.net\nSubject: lf multipart\nMIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=\"lf\"\n\npreamble\n--lf\n\n"
        "part without headers\n--lf\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: base64\n\n"
        + base64.encodebytes("ocelot in base64\n".encode()).decode() + "--lf--\nepilogue\n"),
    # 20 comment in address, message-id and in-reply-to, Content-Location
    _c("From: commented@example.org (The Commenter)\nTo: <angle@example.org>\n"
       "Subject: comments\nIn-Reply-To: <a@x> <b@y>\nContent-Location: http://example.org/x\n"
       "Content-Type: text/plain; format=flowed; delsp=yes\n\nflowed text \n"),
    # 21 multipart/digest (default message/rfc822 parts)
    _c("From: digest@example.org\nSubject: digest\nMIME-Version: 1.0\n"
       "Content-Type: multipart/digest; boundary=dg\n\n--dg\n\n"
       "From: d1@example.org\nSubject: digest one\n\ndigest body one with a tapir\n--dg\n\n"
       "From: d2@example.org\nSubject: digest two\n\ndigest body two\n--dg--\n"),
    # 22 message/rfc822 with single part inner message
    _c("From: fwd2@example.org\nSubject: forwarded single\nMIME-Version: 1.0\n"
       "Content-Type: multipart/mixed; boundary=f2\n\n--f2\nContent-Type: message/rfc822\n"
       "Content-Disposition: attachment; filename=\"fwd.eml\"\n\n"
       "From: single@example.com\nSubject: single inner\nTo: x@example.com\n\n"
       "single inner body\n--f2--\n"),
    # 23 Bcc, multiple To headers? (one), big plain body
    _c("From: big@example.org\nTo: bob@example.net\nBcc: secret@example.org\nSubject: big one\n"
       "Date: Wed, 10 Mar 2021 10:00:00 -0500\n\n" + ("lorem ipsum dolor sit amet\n" * 200)),
    # 24 X-Mailer header, quoted name with escapes
    _c("From: \"Quote \\\"Q\\\" Person\" <q@example.org>\nTo: bob@example.net\n"
       "X-Mailer: TestMailer 1.0\nSubject: escapes \"quoted\" \\ back\n\nxmailer body\n"),
    # 25 8-bit header value (raw UTF-8 subject)
    _c("From: raw@example.org\nSubject: Gr\u00fc\u00dfe raw utf-8\n\nraw header\n"),
    # 26 RFC 2231 continuations, mixed extended and not
    _c("From: cont@example.org\nSubject: continuations\nMIME-Version: 1.0\n"
       "Content-Type: application/x-thing; a*0=\"one \"; a*1=two; b=3;\n"
       " c*0*=us-ascii'en'x%20y; c*1=\"z w\"; d=\"last\"\n"
       "Content-Disposition: inline; filename*0=\"long\"; filename*1=\"name.txt\"\n"
       "Content-Language: en, de\n\nthing\n"),
    # 27 header only, no blank line, no body
    _c("From: headonly@example.org\nSubject: header only\n"),
    # 28 address oddities: bare word, several From, empty Subject, unparseable Date
    _c("From: one@example.org, Two <two@example.org>\nTo: undisclosed\nCc: \"\" <empty@x.org>\n"
       "Subject:\nDate: not a date at all\n\nodd addresses\n"),
    # 29 comment in Content-Type, delimiter with trailing space, no newline before boundary
    _c("From: ct@example.org\nSubject: comments in type\nMIME-Version: 1.0\n"
       "Content-Type: multipart/mixed (a comment); boundary=\"sp\" (another)\n\n"
       "--sp  \nContent-Type: text/plain (plain text); charset=\"utf-8\"\n"
       "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n\nno final newline--sp\nstill part one\n"
       "--sp\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: 7BIT\n\n"
       "line one\nline two\n--sp--  \n"),
    # 30 whole message is message/rfc822
    _c("From: outer@example.org\nSubject: outer wrapper\nMIME-Version: 1.0\n"
       "Content-Type: message/rfc822\n\nFrom: wrapped@example.org\nSubject: wrapped\n\n"
       "wrapped body with a wombat\n"),
    # 31 a part with a header but no blank line, and an empty part
    _c("From: parts@example.org\nSubject: odd parts\nMIME-Version: 1.0\n"
       "Content-Type: multipart/mixed; boundary=op\n\n--op\nContent-Type: text/plain\n"
       "--op\n--op\nContent-Type: text/plain\n\nthird\n--op--\n"),
    # 32 encoded-word in a parameter, 8-bit name, Content-Language with comment
    _c("From: J\u00fcrgen <juergen@example.org>\nSubject: params\nMIME-Version: 1.0\n"
       "Content-Type: text/plain; name=\"=?utf-8?q?na=C3=AFve?=.txt\"\n"
       "Content-Disposition: INLINE; FILENAME=a.txt\n"
       "Content-Language: en (English)\n\nparams body\n"),
    # 33 inner boundary with the outer boundary as prefix (RFC says must not; happens)
    _c("From: prefix@example.org\nSubject: prefix boundaries\nMIME-Version: 1.0\n"
       "Content-Type: multipart/mixed; boundary=\"pre\"\n\n--pre\n"
       "Content-Type: multipart/alternative; boundary=\"pre-inner\"\n\n--pre-inner\n"
       "Content-Type: text/plain\n\nin one\n--pre-inner--\n--pre\nContent-Type: text/plain\n\n"
       "outer two\n--pre--\n"),
    # 34 route address, group with display-name in quotes
    _c("From: <@relay.example:route@example.org>\nTo: \"The Group\": a@example.org;\n"
       "Subject: route\n\nroute body\n"),
]

# internal dates (maildir mtime): one per message, spread over a few days, some of them
# late in the (UTC) evening or just after midnight
BASE = int(dt.datetime(2021, 3, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp())
INTERNAL = [BASE + (i % 6) * 86400 + 3600 * (i % 3) + (41400 if i % 5 == 0 else 0)
            for i in range(len(CORPUS))]


# --- IMAP response parsing and serializing --------------------------------------------------
def flatten(data) -> bytes:
    out = b""
    for item in data:
        if isinstance(item, tuple):
            out += item[0] + b"\r\n" + item[1]
        elif item is not None:
            out += item
    return out


_ATOM = re.compile(rb"[^\s()\[\]{}\"]+(?:\[[^\]]*\](?:<\d+>)?)?")


def parse_value(buf: bytes, i: int):
    while buf[i:i + 1] == b" ":
        i += 1
    c = buf[i:i + 1]
    if c == b"(":
        i += 1
        out = []
        while True:
            while buf[i:i + 1] == b" ":
                i += 1
            if buf[i:i + 1] == b")":
                return out, i + 1
            v, i = parse_value(buf, i)
            out.append(v)
    if c == b'"':
        j = i + 1
        s = bytearray()
        while buf[j:j + 1] != b'"':
            if buf[j:j + 1] == b"\\":
                j += 1
            s += buf[j:j + 1]
            j += 1
        return bytes(s).decode("utf-8", "surrogateescape"), j + 1
    if c == b"{":
        j = buf.index(b"}", i)
        n = int(buf[i + 1:j])
        start = j + 3  # "}\r\n"
        return buf[start:start + n], start + n
    m = _ATOM.match(buf, i)
    tok = m.group(0).decode()
    if tok.upper() == "NIL":
        return None, m.end()
    if tok.isdigit():
        return int(tok), m.end()
    return ("ATOM", tok), m.end()


def parse_fetch(data) -> dict[int, dict[str, object]]:
    buf = flatten(data)
    out: dict[int, dict[str, object]] = {}
    i = 0
    while i < len(buf):
        m = re.compile(rb"\s*(\d+) ").match(buf, i)
        if not m:
            break
        seq = int(m.group(1))
        items, i = parse_value(buf, m.end())
        d = out.setdefault(seq, {})
        for k in range(0, len(items), 2):
            d[items[k][1].upper()] = items[k + 1]
    return out


def canon(v):
    """Dovecot's parsed answer in mime.py's value space (literals in structures: str)."""
    if isinstance(v, list):
        return [canon(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return v


def ser(v) -> str:
    """The IMAP text of a value: str quoted, None NIL, int, list parenthesized, bytes literal."""
    if v is None:
        return "NIL"
    if isinstance(v, bool):
        raise TypeError(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, bytes):
        return "{%d}\r\n" % len(v) + v.decode("utf-8", "surrogateescape")
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "(" + " ".join(ser(x) for x in v) + ")"


def ser_wire(v) -> str:
    """As ser, the way servers space it: in a list whose first element is a list (address
    lists, the parts of a multipart), consecutive lists are written without a space."""
    if not isinstance(v, list):
        return ser(v)
    out = []
    tight = bool(v) and isinstance(v[0], list)
    for k, x in enumerate(v):
        if k and not (tight and isinstance(x, list) and isinstance(v[k - 1], list)):
            out.append(" ")
        out.append(ser_wire(x))
    return "(" + "".join(out) + ")"


def has_literal(v) -> bool:
    return isinstance(v, bytes) or (isinstance(v, list) and any(has_literal(x) for x in v))


# --- the Dovecot session ----------------------------------------------------------------------
SECTIONS = ["1", "1.MIME", "2", "2.MIME", "2.1", "2.2", "1.1", "3", "2.HEADER", "2.TEXT",
            "1.HEADER", "1.TEXT", "1.1.MIME", "1.1.1", "3.1", "2.1.2", "2.1.HEADER",
            "1.HEADER.FIELDS (FROM)", "2.2.MIME", "1.2.MIME",
            "2.1.MIME", "1.2", "HEADER", "TEXT", "HEADER.FIELDS (SUBJECT FROM)",
            "HEADER.FIELDS.NOT (SUBJECT FROM TO)", "2.HEADER.FIELDS (SUBJECT)",
            "HEADER.FIELDS (X-NONE)", "3.MIME", "9"]


def to_section(spec: str):
    m = re.match(r"^([\d.]*?)\.?((?:HEADER\.FIELDS(?:\.NOT)?)|HEADER|TEXT|MIME)?(?: \((.*)\))?$",
                 spec)
    nums, text, fields = m.group(1), m.group(2), m.group(3)
    part = tuple(int(x) for x in nums.split(".") if x)
    return Section(part, text, tuple(fields.split()) if fields else ())


@pytest.fixture(scope="module")
def peer():
    # not tmp_path: pytest's base folder is 0700, and Dovecot's processes run as the
    # unprivileged dovecot account when the tests run as root
    root = Path(tempfile.mkdtemp(prefix="ingot-dovecot-"))
    root.chmod(0o755)
    dc = Dovecot(root, free_port(), {"tester": "secret"})
    for i, raw in enumerate(CORPUS):
        path = dc.deliver("tester", f"{1600000000 + i}.M{i:04d}P{i}.corpus", raw)
        os.utime(path, (INTERNAL[i], INTERNAL[i]))
    dc.start()
    imap = None
    try:
        imap = imaplib.IMAP4("127.0.0.1", dc.port)
        imap.login("tester", "secret")
        typ, _ = imap.select("INBOX")
        assert typ == "OK"
        # which corpus message is which sequence number: compare the full text
        typ, data = imap.fetch("1:*", "(UID RFC822.SIZE FLAGS BODY.PEEK[])")
        assert typ == "OK"
        fetched = parse_fetch(data)
        by_hash = {hashlib.sha256(crlf(raw)).hexdigest(): i for i, raw in enumerate(CORPUS)}
        order: dict[int, int] = {}
        for seq, items in fetched.items():
            order[seq] = by_hash[hashlib.sha256(items["BODY[]"]).hexdigest()]
        assert sorted(order.values()) == list(range(len(CORPUS)))
        yield dc, imap, order, fetched
    finally:
        try:
            if imap is not None:
                imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
        finally:
            dc.stop()
            shutil.rmtree(root, ignore_errors=True)


def exact_message(i: int) -> mime.Message:
    return mime.Message(crlf(CORPUS[i]))


def test_fetch_structures(peer):
    dc, imap, order, _ = peer
    typ, data = imap.fetch("1:*", "(ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE)")
    assert typ == "OK"
    got = parse_fetch(data)
    raw_text = flatten(data)
    failures = []
    for seq, items in got.items():
        i = order[seq]
        m = exact_message(i)
        mine = {"RFC822.SIZE": m.size, "ENVELOPE": m.envelope(),
                "BODYSTRUCTURE": m.bodystructure(True), "BODY": m.bodystructure(False)}
        for name, value in mine.items():
            theirs = canon(items[name])
            if ser(value) != ser(theirs):
                failures.append(f"message {i} {name}:\n  dovecot {ser(theirs)}\n"
                                f"  mime.py {ser(value)}")
            # the exact text too, where Dovecot used no literal
            elif not has_literal(items[name]) and name != "RFC822.SIZE":
                text = f"{name} {ser_wire(value)}".encode("utf-8", "surrogateescape")
                if text not in raw_text:
                    failures.append(f"message {i} {name}: same value, other text: {text!r}")
    assert not failures, "\n".join(failures)


def test_fetch_sections(peer):
    dc, imap, order, _ = peer
    spec = " ".join(f"BODY.PEEK[{s}]" for s in SECTIONS)
    typ, data = imap.fetch("1:*", f"({spec})")
    assert typ == "OK"
    got = parse_fetch(data)
    failures = []
    for seq, items in got.items():
        i = order[seq]
        m = exact_message(i)
        for s in SECTIONS:
            theirs = items[f"BODY[{s}]"]
            theirs = b"" if theirs is None else theirs
            if isinstance(theirs, str):
                theirs = theirs.encode("utf-8", "surrogateescape")
            mine = m.section(to_section(s))
            if mine != theirs:
                failures.append(f"message {i} BODY[{s}]:\n  dovecot {theirs!r}\n  mime.py {mine!r}")
            # a bare-LF message as stored: the same bytes once its line ends are CRLF
            as_stored = crlf(mime.Message(CORPUS[i]).section(to_section(s)))
            if as_stored != theirs:
                failures.append(f"message {i} (as stored) BODY[{s}]:\n  dovecot {theirs!r}\n"
                                f"  mime.py {as_stored!r}")
    assert not failures, "\n".join(failures)


# --- SEARCH -------------------------------------------------------------------------------
class Ctx:
    def __init__(self, seq, uid, largest_seq, largest_uid, flags, recent, internal_date,
                 size, modseq, raw):
        self.seq, self.uid = seq, uid
        self.largest_seq, self.largest_uid = largest_seq, largest_uid
        self.flags, self.recent = flags, recent
        self.internal_date, self.size, self.modseq = internal_date, size, modseq
        self._raw, self._msg = raw, None
        self.loaded = False

    def message(self):
        if self._msg is None:
            self.loaded = True
            self._msg = mime.Message(self._raw)
        return self._msg


D = dt.date
SEARCHES = [
    (("ALL",), K("ALL")),
    (("SUBJECT", '"hello"'), K("HEADER", "Subject", "hello")),
    (("SUBJECT", '"HELLO"'), K("HEADER", "Subject", "HELLO")),
    (("FROM", '"alice"'), K("HEADER", "From", "alice")),
    (("TO", '"bob"'), K("HEADER", "To", "bob")),
    (("CC", '"dave"'), K("HEADER", "Cc", "dave")),
    (("BCC", '"secret"'), K("HEADER", "Bcc", "secret")),
    (("HEADER", "X-Mailer", '""'), K("HEADER", "X-Mailer", "")),
    (("HEADER", "Content-Type", '"multipart"'), K("HEADER", "Content-Type", "multipart")),
    (("HEADER", "Subject", '"more text"'), K("HEADER", "Subject", "more text")),
    (("BODY", '"zebra"'), K("BODY", "zebra")),
    (("BODY", '"giraffe"'), K("BODY", "giraffe")),
    (("BODY", '"okapi"'), K("BODY", "okapi")),
    (("BODY", '"narwhal"'), K("BODY", "narwhal")),
    (("BODY", '"quokka"'), K("BODY", "quokka")),
    (("BODY", '"ocelot"'), K("BODY", "ocelot")),
    (("BODY", '"tapir"'), K("BODY", "tapir")),
    (("BODY", '"LOREM"'), K("BODY", "LOREM")),
    (("TEXT", '"alice"'), K("TEXT", "alice")),
    (("TEXT", '"broken part"'), K("TEXT", "broken part")),
    (("LARGER", "1000"), K("LARGER", 1000)),
    (("SMALLER", "200"), K("SMALLER", 200)),
    (("SENTBEFORE", "5-Mar-2021"), K("SENTBEFORE", D(2021, 3, 5))),
    (("SENTSINCE", "5-Mar-2021"), K("SENTSINCE", D(2021, 3, 5))),
    (("SENTON", "2-Mar-2021"), K("SENTON", D(2021, 3, 2))),
    (("BEFORE", "3-Mar-2021"), K("BEFORE", D(2021, 3, 3))),
    (("SINCE", "4-Mar-2021"), K("SINCE", D(2021, 3, 4))),
    (("ON", "2-Mar-2021"), K("ON", D(2021, 3, 2))),
    (("SEEN",), K("FLAG", "\\Seen")),
    (("UNSEEN",), K("NOFLAG", "\\Seen")),
    (("FLAGGED",), K("FLAG", "\\Flagged")),
    (("KEYWORD", "$Label1"), K("FLAG", "$Label1")),
    (("UNKEYWORD", "$Label1"), K("NOFLAG", "$Label1")),
    (("NOT", "SEEN"), K("NOT", K("FLAG", "\\Seen"))),
    (("OR", "FLAGGED", "SUBJECT", '"groups"'),
     K("OR", K("FLAG", "\\Flagged"), K("HEADER", "Subject", "groups"))),
    (("SEEN", "LARGER", "500"), K("AND", K("FLAG", "\\Seen"), K("LARGER", 500))),
    (("2:4,7",), K("SEQ", SeqSet("2:4,7"))),
    (("20:*",), K("SEQ", SeqSet("20:*"))),
    (("UID", "3:5,*"), K("UID", SeqSet("3:5,*"))),
    (("FROM", '"joerg@example"'), K("HEADER", "From", "joerg@example")),
    (("TO", '"friends"'), K("HEADER", "To", "friends")),
    (("SUBJECT", '"fwd:"'), K("HEADER", "Subject", "fwd:")),
    (("HEADER", "Message-ID", '"inner@example.com"'),
     K("HEADER", "Message-ID", "inner@example.com")),
    (("BODY", '"HTML version"'), K("BODY", "HTML version")),
    (("BODY", '"single inner body"'), K("BODY", "single inner body")),
    (("TEXT", '"hello"'), K("TEXT", "hello")),
    (("TEXT", '"zebra"'), K("TEXT", "zebra")),
    (("NOT", "BODY", '"body"'), K("NOT", K("BODY", "body"))),
    (("SENTON", "3-Mar-2021"), K("SENTON", D(2021, 3, 3))),
    (("SENTBEFORE", "1-Jan-1971"), K("SENTBEFORE", D(1971, 1, 1))),
    (("ON", "1-Mar-2021"), K("ON", D(2021, 3, 1))),
    (("LARGER", "350", "SMALLER", "800"), K("AND", K("LARGER", 350), K("SMALLER", 800))),
    (("OR", "OR", "SEEN", "FLAGGED", "NOT", "TO", '"bob"'),
     K("OR", K("OR", K("FLAG", "\\Seen"), K("FLAG", "\\Flagged")),
       K("NOT", K("HEADER", "To", "bob")))),
    (("RECENT",), K("RECENT")),
    (("NEW",), K("NEW")),
    (("OLD",), K("OLD")),
]


def seqs(data) -> list[int]:
    # after a MODSEQ fetch (CONDSTORE on), SEARCH answers end with "(MODSEQ n)"
    return sorted(int(x) for x in re.sub(rb"\(MODSEQ \d+\)", b"", data[0] or b"").split())


def test_search(peer):
    dc, imap, order, fetched = peer
    n = len(CORPUS)
    for seq in (2, 5, 9, 12):
        assert imap.store(str(seq), "+FLAGS", "(\\Seen)")[0] == "OK"
    for seq in (3, 9):
        assert imap.store(str(seq), "+FLAGS", "(\\Flagged $Label1)")[0] == "OK"
    typ, data = imap.fetch("1:*", "(UID FLAGS MODSEQ RFC822.SIZE)")
    assert typ == "OK"
    info = parse_fetch(data)
    largest_uid = max(v["UID"] for v in info.values())
    contexts = []
    for seq in sorted(info):
        v = info[seq]
        flags = frozenset(f[1] for f in v["FLAGS"])
        i = order[seq]
        contexts.append(Ctx(seq, v["UID"], n, largest_uid, flags - {"\\Recent"},
                            "\\Recent" in flags, INTERNAL[i], v["RFC822.SIZE"],
                            v["MODSEQ"][0], crlf(CORPUS[i])))
    modseqs = sorted({c.modseq for c in contexts})
    searches = list(SEARCHES) + [(("MODSEQ", str(modseqs[-1])), K("MODSEQ", modseqs[-1]))]
    failures = []
    for criteria, key in searches:
        typ, data = imap.search(None, *criteria)
        assert typ == "OK", criteria
        theirs = seqs(data)
        mine = sorted(search.evaluate(key, contexts))
        if theirs != mine:
            failures.append(f"{' '.join(criteria)}: dovecot {theirs} search.py {mine}")
    # non-ASCII search strings (CHARSET UTF-8, as a literal)
    for field, word, key in (("SUBJECT", "caf\u00e9", K("HEADER", "Subject", "caf\u00e9")),
                             ("FROM", "m\u00fcller", K("HEADER", "From", "m\u00fcller")),
                             ("BODY", "na\u00efve", K("BODY", "na\u00efve")),
                             ("BODY", "gr\u00fc\u00dfe", K("BODY", "gr\u00fc\u00dfe")),
                             ("TEXT", "r\u00e9sum\u00e9", K("TEXT", "r\u00e9sum\u00e9")),
                             ("SUBJECT", "cr\u00e8me", K("HEADER", "Subject", "cr\u00e8me")),
                             ("TO", "j\u00e9r\u00f4me", K("HEADER", "To", "j\u00e9r\u00f4me")),
                             ("SUBJECT", "GR\u00dc\u00dfE",
                              K("HEADER", "Subject", "GR\u00dc\u00dfE")),
                             ("BODY", "caf\u00e9 au", K("BODY", "caf\u00e9 au"))):
        imap.literal = word.encode()
        typ, data = imap.search("UTF-8", field)
        assert typ == "OK"
        theirs = seqs(data)
        mine = sorted(search.evaluate(key, contexts))
        if theirs != mine:
            failures.append(f"{field} {word}: dovecot {theirs} search.py {mine}")
    assert not failures, "\n".join(failures)


def test_search_reads_content_only_when_needed(peer):
    dc, imap, order, _ = peer
    ctxs = [Ctx(k + 1, k + 1, 3, 3, frozenset(), False, BASE, 100, 1, crlf(CORPUS[k]))
            for k in range(3)]
    key = SearchKey("AND", (K("BODY", "zebra"), K("FLAG", "\\Seen")))
    assert search.evaluate(key, ctxs) == []
    assert not any(c.loaded for c in ctxs)
