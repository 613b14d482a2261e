"""plugins/imap/mime.py (ENVELOPE, BODYSTRUCTURE, BODY[section]) and search.py (SEARCH).

The differential test against Dovecot is tests/interop/test_imap_mime_dovecot.py; these
check the properties that test cannot see (byte-exact slices of bare-LF messages, bad
input, laziness) and each SEARCH key on its own.
"""

from __future__ import annotations

import ast
import datetime as dt
import random as _random
import re
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ingot.plugins.imap import mime, search
from ingot.plugins.imap.mime import Message

ROOT = Path(__file__).resolve().parents[2]

# stand-ins for plugins/imap/wire.py's Section, SearchKey and SequenceSet (duck typing)
Section = namedtuple("Section", "part text fields")
SearchKey = namedtuple("SearchKey", "op args")


class SeqSet:
    def __init__(self, *ranges):
        self.ranges = ranges  # (lo, hi) with None for "*"

    def contains(self, n, largest):
        for lo, hi in self.ranges:
            lo = largest if lo is None else lo
            hi = largest if hi is None else hi
            if min(lo, hi) <= n <= max(lo, hi):
                return True
        return False


def S(spec: str = "", text=None, *fields) -> Section:
    return Section(tuple(int(x) for x in spec.split(".") if x), text, tuple(fields))


def K(op, *args):
    return SearchKey(op, args)


def crlf(b: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", b)


PLAIN = crlf(b"Date: Tue, 2 Mar 2021 23:30:00 -0800\nFrom: Alice <alice@example.org>\n"
             b"To: team: bob@example.net, Carol <carol@example.com>;, dave@example.com\n"
             b"Subject: =?UTF-8?Q?Caf=C3=A9?= menu\n  continued\nX-Long: one\n two\n"
             b"Message-ID: <p1@example.org>\n\nHello world\nsecond line\n")

MIXED_LF = (b"From: bob@example.net\nSubject: mixed\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/mixed; boundary=\"XYZ\"\n\npreamble\n"
            b"--XYZ\nContent-Type: text/plain; charset=iso-8859-1\n"
            b"Content-Transfer-Encoding: quoted-printable\n\nGr=FC=DFe, giraffe\n"
            b"--XYZ\nContent-Type: multipart/alternative; boundary=XYZ2\n\n"
            b"--XYZ2\nContent-Type: text/plain\n\ninner plain\n--XYZ2\n"
            b"Content-Type: text/html\nContent-Transfer-Encoding: base64\n\n"
            b"PGI+b2thcGk8L2I+\n--XYZ2--\n"
            b"--XYZ\nContent-Type: message/rfc822\n\nFrom: in@example.com\nSubject: inner\n"
            b"Date: Wed, 3 Mar 2021 01:00:00 +0000\n\ninner body\n--XYZ--\nepilogue\n")
MIXED = crlf(MIXED_LF)


# --- purity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mime.py", "search.py"])
def test_core_modules_are_sans_io(name):
    tree = ast.parse((ROOT / "plugins" / "imap" / name).read_text())
    banned = {"socket", "asyncio", "time", "random", "os", "subprocess", "threading", "select"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        assert not banned & set(names), f"{name} imports {names}"


# --- ENVELOPE ---------------------------------------------------------------------------------
def test_envelope_fields_groups_and_defaults():
    env = Message(PLAIN).envelope()
    assert env[0] == "Tue, 2 Mar 2021 23:30:00 -0800"
    assert env[1] == "=?UTF-8?Q?Caf=C3=A9?= menu  continued"  # left encoded, unfolded
    alice = [["Alice", None, "alice", "example.org"]]
    assert env[2] == env[3] == env[4] == alice  # sender and reply-to default to from
    assert env[5] == [[None, None, "team", None], [None, None, "bob", "example.net"],
                      ["Carol", None, "carol", "example.com"], [None, None, None, None],
                      [None, None, "dave", "example.com"]]
    assert env[6] is env[7] is env[8] is None
    assert env[9] == "<p1@example.org>"


def test_envelope_missing_everything_is_nil():
    assert Message(b"\r\nbody only\r\n").envelope() == [None] * 10
    assert Message(b"").envelope() == [None] * 10


def test_envelope_is_cached_and_parses_headers_only():
    m = Message(PLAIN)
    assert m.envelope() is m.envelope()
    assert m._root is None  # no full structure for ENVELOPE


# --- BODYSTRUCTURE -----------------------------------------------------------------------------
def test_bodystructure_plain():
    bs = Message(PLAIN).bodystructure()
    body = PLAIN.split(b"\r\n\r\n", 1)[1]
    assert bs == ["text", "plain", ["charset", "us-ascii"], None, None, "7bit", len(body), 2,
                  None, None, None, None]
    assert Message(PLAIN).bodystructure(extended=False) == bs[:8]


def test_bodystructure_nested_and_rfc822():
    bs = Message(MIXED).bodystructure()
    qp, alt, msg = bs[0], bs[1], bs[2]
    assert bs[3:] == ["mixed", ["boundary", "XYZ"], None, None, None]
    assert qp[:7] == ["text", "plain", ["charset", "iso-8859-1"], None, None,
                      "quoted-printable", len(b"Gr=FC=DFe, giraffe")]
    assert alt[0][:2] == ["text", "plain"] and alt[1][:2] == ["text", "html"]
    assert alt[2] == "alternative"
    assert msg[:3] == ["message", "rfc822", None]
    assert msg[7][1] == "inner" and msg[7][2] == [[None, None, "in", "example.com"]]
    assert msg[8][:2] == ["text", "plain"]
    inner = crlf(b"From: in@example.com\nSubject: inner\n"
                 b"Date: Wed, 3 Mar 2021 01:00:00 +0000\n\ninner body")
    assert msg[6] == len(inner) and msg[9] == inner.count(b"\n") == 4  # its lines


def test_bare_lf_has_the_same_structure_as_crlf():
    lf, cr = Message(MIXED_LF).bodystructure(), Message(MIXED).bodystructure()

    def strip_sizes(v):
        if isinstance(v, list):
            return [strip_sizes(x) for x in v]
        return 0 if isinstance(v, int) else v

    assert strip_sizes(lf) == strip_sizes(cr)
    assert lf != cr  # the sizes are those of the bytes as stored


def test_multipart_edge_cases():
    no_final = crlf(b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\n")
    bs = Message(no_final).bodystructure(False)
    assert [p[6] for p in bs[:-1]] == [3, 5] and bs[-1] == "mixed"
    no_boundary = crlf(b"Content-Type: multipart/mixed\n\ntext\n")
    assert Message(no_boundary).bodystructure(False) == [
        ["text", "plain", ["charset", "us-ascii"], None, None, "7bit", 0, 0], "mixed"]
    digest = crlf(b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: x\n\n"
                  b"body\n--d--\n")
    part = Message(digest).bodystructure(False)[0]
    assert part[:2] == ["message", "rfc822"] and part[7][1] == "x"
    prefix = crlf(b"Content-Type: multipart/mixed; boundary=ab\n\n--abc\n\nnot a part\n--ab\n\n"
                  b"real\n--ab--\n")
    bs = Message(prefix).bodystructure(False)
    assert len(bs) == 2 and bs[0][6] == 4


def test_parameters_as_written_with_2231_continuations_joined():
    raw = crlf(b"Content-Type: Application/X-Thing; Name*=utf-8''a%20b; x*0=\"p q\"; x*1=r;\n"
               b" y=\"quo\\\"ted\"\nContent-Disposition: attachment; filename*0*=utf-8''%C3%A9;"
               b" filename*1*=.txt\nContent-Language: en, fr\n\nz\n")
    bs = Message(raw).bodystructure()
    assert bs[:3] == ["Application", "X-Thing", ["Name*", "utf-8''a%20b", "y", 'quo"ted',
                                                 "x", "p qr"]]
    assert bs[8] == ["attachment", ["filename*", "utf-8''%C3%A9.txt"]]
    assert bs[9] == ["en", "fr"]


# --- BODY[section] ------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [MIXED, MIXED_LF], ids=["crlf", "lf"])
def test_sections_are_slices_of_the_original(raw):
    m = Message(raw)
    nl = b"\r\n" if b"\r\n" in raw else b"\n"
    assert m.section(None) == raw and m.section(S()) == raw
    header, text = raw.split(nl + nl, 1)
    assert m.section(S("", "HEADER")) == header + nl + nl
    assert m.section(S("", "TEXT")) == text
    assert m.section(S("1")) == b"Gr=FC=DFe, giraffe"
    assert m.section(S("1", "MIME")) == (b"Content-Type: text/plain; charset=iso-8859-1" + nl
                                         + b"Content-Transfer-Encoding: quoted-printable"
                                         + nl + nl)
    assert m.section(S("2.1")) == b"inner plain"
    assert m.section(S("2.2")) == b"PGI+b2thcGk8L2I+"
    assert m.section(S("2.2.1")) == b"PGI+b2thcGk8L2I+"  # a leaf is its own part 1, once
    assert m.section(S("2.2.1.1")) == b""
    inner = m.section(S("3"))
    assert inner.startswith(b"From: in@example.com") and inner.endswith(b"inner body")
    assert m.section(S("3", "HEADER")) + m.section(S("3", "TEXT")) == inner
    assert m.section(S("3.1")) == b"inner body"
    assert m.section(S("3", "HEADER.FIELDS", "subject")) == b"Subject: inner" + nl + b"\r\n"
    for spec in ("4", "2.3", "0", "1.2", "3.2"):
        assert m.section(S(spec)) == b""
    assert m.section(S("1", "HEADER")) == b"" and m.section(S("1", "TEXT")) == b""
    for s in (S("1"), S("2.1"), S("3", "HEADER"), S("2", "MIME")):
        assert m.section(s) in raw


def test_lf_sections_equal_crlf_sections_after_normalizing():
    a, b = Message(MIXED_LF), Message(MIXED)
    for s in (S("1"), S("1", "MIME"), S("2"), S("2.1"), S("2.2", "MIME"), S("3"),
              S("3", "TEXT"), S("", "TEXT"), S("", "HEADER")):
        assert crlf(a.section(s)) == b.section(s)


def test_header_fields_keep_folding_and_order():
    m = Message(PLAIN)
    got = m.section(S("", "HEADER.FIELDS", "X-LONG", "subject"))
    assert got == (b"Subject: =?UTF-8?Q?Caf=C3=A9?= menu\r\n  continued\r\n"
                   b"X-Long: one\r\n two\r\n\r\n")
    assert m.section(S("", "HEADER.FIELDS", "absent")) == b"\r\n"
    rest = m.section(S("", "HEADER.FIELDS.NOT", "subject", "x-long", "to"))
    assert rest.startswith(b"Date:") and b"Subject" not in rest and b"To:" not in rest
    assert rest.endswith(b"<p1@example.org>\r\n\r\n")


def test_single_part_numbering():
    m = Message(PLAIN)
    assert m.section(S("1")) == m.section(S("", "TEXT"))
    assert m.section(S("1", "MIME")) == m.section(S("", "HEADER"))
    assert m.section(S("1.1")) == b"" and m.section(S("2")) == b""


# --- bad input ------------------------------------------------------------------------------------
BAD = [b"", b"\r\n", b"\n\n\n", b"no colon line\r\n\r\nx", b"Subject: only header",
       b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n",
       b"Content-Type: multipart/mixed; boundary=\"unterminated\r\n\r\n--unterminated\r\n",
       b"Content-Type: message/rfc822\r\n\r\n",
       b"Content-Type: /\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!",
       b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n\xff\xfe",
       b"From: <<<@@>>>, \"unterminated\r\nTo: :;;:, g: ;\r\nDate: not a date\r\n\r\n",
       b"\x00\xff\xfe" * 50,
       b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\n" * 500]


def _exercise(raw: bytes) -> None:
    m = Message(raw)
    m.envelope()
    m.bodystructure()
    m.bodystructure(False)
    for s in (None, S(), S("1"), S("1.1"), S("2", "MIME"), S("", "HEADER"), S("", "TEXT"),
              S("1", "HEADER.FIELDS.NOT", "x")):
        out = m.section(s)
        assert isinstance(out, bytes) and (out in raw or out.endswith(b"\r\n"))
    m.header_values("From")
    m.sent_date()
    m.text_contains("x")
    m.body_contains("y")


@pytest.mark.parametrize("raw", BAD)
def test_malformed_messages_never_raise(raw):
    _exercise(raw)


def test_truncations_and_mutations_never_raise():
    rng = _random.Random(7)
    for base in (MIXED, MIXED_LF, PLAIN):
        for cut in range(0, len(base), 7):
            _exercise(base[:cut])
        for _ in range(150):
            b = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.choice(b"-\r\n:;=\"()<>@ \x00\xffab")
            _exercise(bytes(b))


_PIECES = st.sampled_from([b"--", b"b", b"\r\n", b"\n", b";", b"=?utf-8?q?", b"?=", b"*0*=", b'"',
                           b"(", b":", b" ", b"Content-Type: multipart/mixed; boundary=b\r\n",
                           b"Content-Type: message/rfc822\r\n", b"To: g: a@b;\r\n",
                           b"Content-Transfer-Encoding: base64\r\n", b"\xff", b"x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=60).map(b"".join) | st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw):
    _exercise(raw)


def test_deep_nesting_is_cut_off_not_fatal():
    raw = b"".join(b"Content-Type: message/rfc822\r\n\r\n" for _ in range(3000)) + b"x"
    bs = Message(raw).bodystructure()
    depth = 0
    while bs[0] == "message":
        bs, depth = bs[8], depth + 1
    assert depth <= mime._MAX_DEPTH
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                      for i in range(2000))
    Message(nested).bodystructure()


# --- search helpers ----------------------------------------------------------------------------
def test_header_values_sent_date_and_content_search():
    m = Message(PLAIN)
    assert m.header_values("subject") == ["Café menu  continued"]
    assert m.header_values("X-None") == []
    assert m.sent_date() == dt.date(2021, 3, 2)  # in the header's own zone (UTC: 3 March)
    assert Message(b"Date: garbage\r\n\r\n").sent_date() is None
    mixed = Message(MIXED)
    assert mixed.body_contains("GRÜSSE") and mixed.body_contains("giraffe")  # qp + latin-1
    assert mixed.body_contains("<b>OKAPI</b>")  # base64 text/html
    assert mixed.body_contains("inner body")  # inside message/rfc822
    assert not mixed.body_contains("preamble") and not mixed.body_contains("mixed")
    assert mixed.text_contains("MIXED") and mixed.text_contains("giraffe")
    assert not Message(PLAIN).body_contains("café")
    assert Message(PLAIN).text_contains("café")


# --- SEARCH ------------------------------------------------------------------------------------
class Ctx:
    def __init__(self, seq, *, uid=None, flags=(), recent=False, when=0, size=100, modseq=1,
                 raw=PLAIN, largest=10, largest_uid=100):
        self.seq, self.uid = seq, uid if uid is not None else seq * 10
        self.largest_seq, self.largest_uid = largest, largest_uid
        self.flags, self.recent = frozenset(flags), recent
        self.internal_date, self.size, self.modseq = when, size, modseq
        self.raw, self.loads = raw, 0

    def message(self):
        self.loads += 1
        return Message(self.raw)


def ts(*args) -> int:
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp())


def test_search_flags_numbers_and_sets():
    c = Ctx(3, flags={"\\Seen", "$Work"}, recent=True, size=500, modseq=42)
    m = search.matches
    assert m(K("ALL"), c)
    assert m(K("FLAG", "\\seen"), c) and m(K("FLAG", "$work"), c)
    assert not m(K("FLAG", "\\Deleted"), c)
    assert m(K("NOFLAG", "\\Deleted"), c) and not m(K("NOFLAG", "\\Seen"), c)
    assert m(K("RECENT"), c) and not m(K("OLD"), c) and not m(K("NEW"), c)
    assert m(K("NEW"), Ctx(1, recent=True)) and m(K("OLD"), Ctx(1))
    assert m(K("LARGER", 499), c) and not m(K("LARGER", 500), c)
    assert m(K("SMALLER", 501), c) and not m(K("SMALLER", 500), c)
    assert m(K("MODSEQ", 42), c) and not m(K("MODSEQ", 43), c)
    assert m(K("SEQ", SeqSet((2, 4))), c) and not m(K("SEQ", SeqSet((4, None))), c)
    assert m(K("SEQ", SeqSet((None, None))), Ctx(10))  # "*" is the largest
    assert m(K("UID", SeqSet((30, 30))), c) and not m(K("UID", SeqSet((31, None))), c)
    assert c.loads == 0


def test_search_logic():
    c = Ctx(1, flags={"\\Seen"})
    seen, flagged = K("FLAG", "\\Seen"), K("FLAG", "\\Flagged")
    assert search.matches(K("AND", seen, K("NOT", flagged)), c)
    assert not search.matches(K("AND", seen, flagged), c)
    assert search.matches(K("OR", flagged, seen), c)
    assert not search.matches(K("NOT", K("OR", flagged, seen)), c)


def test_search_dates():
    c = Ctx(1, when=ts(2021, 3, 2, 23, 59, 59))  # internal dates are taken in UTC
    d = dt.date
    assert search.matches(K("ON", d(2021, 3, 2)), c)
    assert search.matches(K("BEFORE", d(2021, 3, 3)), c)
    assert not search.matches(K("BEFORE", d(2021, 3, 2)), c)
    assert search.matches(K("SINCE", d(2021, 3, 2)), c)
    assert not search.matches(K("SINCE", d(2021, 3, 3)), c)
    assert search.matches(K("SENTON", d(2021, 3, 2)), c)  # PLAIN's Date, in its own zone
    assert search.matches(K("SENTSINCE", d(2021, 3, 2)), c)
    assert search.matches(K("SENTBEFORE", d(2021, 3, 3)), c)
    undated = Ctx(1, raw=b"Subject: x\r\n\r\n")
    assert search.matches(K("SENTBEFORE", d(1990, 1, 1)), undated)  # as Dovecot: 1970
    assert not search.matches(K("SENTSINCE", d(1990, 1, 1)), undated)


def test_search_content():
    c = Ctx(1, raw=MIXED)
    assert search.matches(K("HEADER", "subject", "MIX"), c)
    assert search.matches(K("HEADER", "Content-Type", ""), c)  # empty value: the field exists
    assert not search.matches(K("HEADER", "X-Absent", ""), c)
    assert search.matches(K("BODY", "Giraffe"), c) and not search.matches(K("BODY", "mixed"), c)
    assert search.matches(K("TEXT", "mixed"), c)
    assert search.matches(K("HEADER", "Subject", "café"), Ctx(1))


def test_cheap_keys_run_first_and_content_is_loaded_lazily():
    c = Ctx(1, flags=())
    key = K("AND", K("BODY", "hello"), K("HEADER", "Subject", "x"), K("FLAG", "\\Seen"))
    assert not search.matches(key, c)
    assert c.loads == 0
    assert not search.matches(K("OR", K("BODY", "nothing"), K("FLAG", "\\Seen")), c)
    assert search.matches(K("OR", K("BODY", "hello"), K("ALL")), c) and c.loads == 1


def test_evaluate():
    ctxs = [Ctx(i, flags={"\\Seen"} if i % 2 else ()) for i in range(1, 7)]
    assert search.evaluate(K("FLAG", "\\Seen"), ctxs) == [1, 3, 5]
    assert search.evaluate(K("NOT", K("FLAG", "\\Seen")), ctxs) == [2, 4, 6]


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError):
        search.matches(K("FROBNICATE"), Ctx(1))
