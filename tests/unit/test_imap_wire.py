"""The IMAP command parser and response writer: bytes in, events out, no sockets."""

from __future__ import annotations

import ast
import datetime as dt
import inspect
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.imap import wire
from ingot.plugins.imap.wire import (NEED_DATA, AppendMessage, Atom, Bad, BadCharset, Command,
                                     CommandParser, Continue, FetchItem, ListArgs,
                                     MailboxNameError, SearchArgs, SearchKey, Section,
                                     SequenceSet, StoreArgs, TooBig, decode_mailbox,
                                     encode_mailbox, fetch_response, flags_list,
                                     format_datetime, mailbox_value, response, serialize)


def events(data: bytes, **kw) -> list:
    p = CommandParser(**kw)
    p.feed(data)
    out = []
    while (ev := p.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def one(line: bytes, **kw):
    evs = [e for e in events(line, **kw) if not isinstance(e, Continue)]
    assert len(evs) == 1, evs
    return evs[0]


def cmd(line: bytes, **kw) -> Command:
    ev = one(line, **kw)
    assert isinstance(ev, Command), ev
    return ev


def bad(line: bytes, **kw) -> Bad:
    ev = one(line, **kw)
    assert isinstance(ev, Bad), ev
    return ev


# ------------------------------------------------------------------ purity

def test_wire_imports_no_io():
    tree = ast.parse(inspect.getsource(wire))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"socket", "asyncio", "time", "random", "os", "select", "selectors",
                        "secrets"}, names


# ------------------------------------------------------------------ simple commands

@pytest.mark.parametrize("name", ["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE",
                                  "UNSELECT", "EXPUNGE", "IDLE", "NAMESPACE"])
def test_no_arg_commands(name):
    c = cmd(b"a1 " + name.lower().encode() + b"\r\n")
    assert c == Command("a1", name, False, ())
    assert bad(b"a1 " + name.encode() + b" extra\r\n").tag == "a1"


def test_tags():
    assert cmd(b"A.b]9~ NOOP\r\n").tag == "A.b]9~"
    assert bad(b"a+b NOOP\r\n").tag is None
    assert bad(b" NOOP\r\n").tag is None
    assert bad(b"(x NOOP\r\n").tag is None
    assert bad(b"tag\r\n") == Bad("tag", "Missing command")
    b = bad(b"t1 FROBNICATE x\r\n")
    assert b.tag == "t1" and "Unknown command FROBNICATE" in b.text
    assert bad(b"t1 UID FROB 1\r\n").tag == "t1"
    assert bad(b"t1 UID\r\n").tag == "t1"


def test_empty_lines_ignored():
    assert events(b"\r\n\r\na NOOP\r\n") == [Command("a", "NOOP", False, ())]


def test_login_forms():
    assert cmd(b"a LOGIN fred secret\r\n").args == ("fred", "secret")
    assert cmd(b'a LOGIN "fr ed" "p\\"a\\\\ss"\r\n').args == ("fr ed", 'p"a\\ss')
    evs = events(b"a LOGIN {4}\r\nfr\xc3\xa9 {3+}\r\na b\r\n")
    assert evs == [Continue(), Command("a", "LOGIN", False, ("fré", "a b"))]
    assert "Missing argument" in bad(b"a LOGIN fred\r\n").text
    assert bad(b'a LOGIN "fred secret\r\n').tag == "a"
    assert bad(b"a LOGIN {2+}\r\n\xff\xfe x\r\n").tag == "a"   # not UTF-8


def test_authenticate():
    assert cmd(b"a authenticate plain\r\n").args == ("PLAIN", None)
    assert cmd(b"a AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0\r\n").args == ("PLAIN", b"AGZyZWQAc2VjcmV0")
    assert cmd(b"a AUTHENTICATE PLAIN =\r\n").args == ("PLAIN", b"")
    assert bad(b"a AUTHENTICATE PLAIN !!\r\n").tag == "a"


def test_enable():
    assert cmd(b"e ENABLE condstore UTF8=ACCEPT\r\n").args == (("CONDSTORE", "UTF8=ACCEPT"),)
    assert bad(b"e ENABLE\r\n").tag == "e"


def test_select_examine():
    assert cmd(b"s SELECT inbox\r\n") == Command("s", "SELECT", False, ("INBOX", ()))
    assert cmd(b"s EXAMINE \"Entw&APw-rfe\" (condstore)\r\n").args == ("Entwürfe", ("CONDSTORE",))
    assert bad(b"s SELECT\r\n").tag == "s"
    assert bad(b"s SELECT a ()\r\n").tag == "s"
    assert bad(b"s SELECT &Jjo\r\n").tag == "s"     # invalid mUTF-7


@pytest.mark.parametrize("name", ["CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE"])
def test_one_mailbox(name):
    assert cmd(b"t " + name.encode() + b" &U,BTFw-\r\n").args == ("台北",)
    assert cmd(b"t " + name.encode() + b" {5}\r\nInBoX\r\n").args == ("INBOX",)


def test_rename():
    assert cmd(b"r RENAME a \"b c\"\r\n").args == ("a", "b c")
    assert bad(b"r RENAME a\r\n").tag == "r"


def test_mailbox_utf8_accept():
    p = CommandParser(utf8_accept=True)
    p.feed('t CREATE "Entwürfe"\r\n'.encode())
    assert p.next_event().args == ("Entwürfe",)
    assert bad('t CREATE "Entwürfe"\r\n'.encode()).tag == "t"


def test_list_basic_and_extended():
    c = cmd(b'l LIST "" *\r\n')
    assert c.args == (ListArgs("", ("*",)),)
    c = cmd(b'l LIST ~/Mail/ %/foo]\r\n')
    assert c.args[0].reference == "~/Mail/" and c.args[0].patterns == ("%/foo]",)
    c = cmd(b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" ("*" "%") '
            b'RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))\r\n')
    a = c.args[0]
    assert a.select_options == ("SUBSCRIBED", "RECURSIVEMATCH")
    assert a.patterns == ("*", "%")
    assert a.return_options == ("CHILDREN", "SPECIAL-USE", "STATUS")
    assert a.status_items == ("MESSAGES", "UNSEEN")
    assert cmd(b'l LIST () "" "" RETURN ()\r\n').args[0] == ListArgs("", ("",), (), (), ())
    assert bad(b'l LIST (RECURSIVEMATCH) "" *\r\n').tag == "l"
    assert bad(b'l LIST (BOGUS) "" *\r\n').tag == "l"
    assert bad(b'l LIST "" * RETURN (BOGUS)\r\n').tag == "l"
    assert bad(b'l LIST "" * RETURN (STATUS (BOGUS))\r\n').tag == "l"
    assert bad(b'l LIST ""\r\n').tag == "l"


def test_lsub():
    assert cmd(b'l LSUB "#news." "comp.mail.*"\r\n').args == ("#news.", "comp.mail.*")


def test_status():
    c = cmd(b"s STATUS blurdybloop (uidnext messages highestmodseq SIZE)\r\n")
    assert c.args == ("blurdybloop", ("UIDNEXT", "MESSAGES", "HIGHESTMODSEQ", "SIZE"))
    assert "BOGUS" in bad(b"s STATUS x (BOGUS)\r\n").text
    assert bad(b"s STATUS x ()\r\n").tag == "s"


# ------------------------------------------------------------------ APPEND

def test_append_single():
    evs = events(b'A003 APPEND saved-messages (\\Seen $Junk) "05-Jul-1994 02:31:05 -0700" {5}\r\n'
                 b'hello\r\n')
    assert evs[0] == Continue()
    c = evs[1]
    assert c.name == "APPEND" and c.args[0] == "saved-messages"
    (m,) = c.args[1]
    assert m.flags == ("\\Seen", "$Junk") and m.data == b"hello"
    assert m.date == dt.datetime(1994, 7, 5, 2, 31, 5, tzinfo=dt.timezone(-dt.timedelta(hours=7)))
    assert m.date.utcoffset() is not None


def test_append_space_padded_day_and_plain():
    c = cmd(b'a APPEND x " 5-Jul-1994 02:31:05 +0130" {1+}\r\nZ\r\n')
    assert c.args[1][0].date.day == 5
    assert c.args[1][0].date.utcoffset() == dt.timedelta(hours=1, minutes=30)
    c = cmd(b'a APPEND x {0+}\r\n\r\n')
    assert c.args[1] == (AppendMessage((), None, b""),)


def test_multiappend():
    c = cmd(b'a APPEND x (\\Seen) {2+}\r\nab () "01-Jan-2020 00:00:00 +0000" {3+}\r\ncde {1+}\r\nf\r\n')
    ms = c.args[1]
    assert [m.data for m in ms] == [b"ab", b"cde", b"f"]
    assert ms[1].date == dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    assert ms[0].flags == ("\\Seen",) and ms[1].flags == () and ms[2].flags == ()


def test_append_errors():
    assert "literal" in bad(b'a APPEND x "hello"\r\n').text
    assert bad(b'a APPEND x "31-Feb-2020 00:00:00 +0000" {1+}\r\nZ\r\n').tag == "a"
    assert bad(b'a APPEND x "01-Foo-2020 00:00:00 +0000" {1+}\r\nZ\r\n').tag == "a"
    # literal8 refused at announcement; the {n+} bytes are dropped
    p = CommandParser()
    p.feed(b"a APPEND x ~{3+}\r\nabc\r\nb NOOP\r\n")
    assert p.next_event() == Bad("a", "literal8 is not supported")
    assert p.next_event() == Command("b", "NOOP", False, ())
    p = CommandParser()
    p.feed(b"a APPEND x ~{3}\r\nb NOOP\r\n")
    assert isinstance(p.next_event(), Bad)
    assert p.next_event() == Command("b", "NOOP", False, ())


# ------------------------------------------------------------------ literals

SAMPLE = b'x1 APPEND "Drafts" (\\Draft) {11}\r\nhello world {3+}\r\nabc\r\nx2 NOOP\r\n'


def test_split_at_every_position():
    expect = [Continue(), Command("x1", "APPEND", False, ("Drafts", (
        AppendMessage(("\\Draft",), None, b"hello world"), AppendMessage((), None, b"abc")))),
        Command("x2", "NOOP", False, ())]
    assert events(SAMPLE) == expect
    for i in range(len(SAMPLE) + 1):
        for j in range(i, len(SAMPLE) + 1):
            p = CommandParser()
            got = []
            for chunk in (SAMPLE[:i], SAMPLE[i:j], SAMPLE[j:]):
                p.feed(chunk)
                while (ev := p.next_event()) is not NEED_DATA:
                    got.append(ev)
            assert got == expect, (i, j)


def test_byte_at_a_time():
    p = CommandParser()
    got = []
    for k in range(len(SAMPLE)):
        p.feed(SAMPLE[k:k + 1])
        while (ev := p.next_event()) is not NEED_DATA:
            got.append(ev)
    assert [type(e) for e in got] == [Continue, Command, Command]


def test_continue_before_literal_data():
    p = CommandParser()
    p.feed(b"a LOGIN {3}\r\n")
    assert p.next_event() == Continue()
    assert p.next_event() is NEED_DATA
    p.feed(b"bob")
    assert p.next_event() is NEED_DATA
    p.feed(b" pw\r\n")
    assert p.next_event() == Command("a", "LOGIN", False, ("bob", "pw"))


def test_literal_plus_no_continue():
    assert events(b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\n") == [
        Command("a", "LOGIN", False, ("bob", "pw"))]


def test_literal_minus():
    big = b"x" * 5000
    p = CommandParser(literal_minus=True)
    p.feed(b"a APPEND x {5000+}\r\n" + big[:100])
    assert p.next_event() == TooBig("a", 5000, True)
    assert p.next_event() is NEED_DATA
    assert p.buffered == 0
    p.feed(big[100:] + b" more {2+}\r\nzz\r\nb NOOP\r\n")
    assert p.next_event() == Command("b", "NOOP", False, ())
    # 4096 is still fine, and sync literals of any size (below max) too
    assert cmd(b"a APPEND x {4096+}\r\n" + b"y" * 4096 + b"\r\n", literal_minus=True).name == "APPEND"
    evs = events(b"a APPEND x {5000}\r\n" + big + b"\r\n", literal_minus=True)
    assert evs[0] == Continue() and evs[1].args[1][0].data == big


def test_too_big_sync_reads_nothing():
    p = CommandParser(max_literal=10)
    p.feed(b"a APPEND x {11}\r\n")
    assert p.next_event() == TooBig("a", 11, False)
    assert p.next_event() is NEED_DATA
    p.feed(b"b NOOP\r\n")
    assert p.next_event() == Command("b", "NOOP", False, ())


def test_too_big_non_sync_discarded():
    p = CommandParser(max_literal=10)
    p.feed(b"a APPEND x {100000+}\r\n")
    assert p.next_event() == TooBig("a", 100000, True)
    for _ in range(100):
        p.feed(b"z" * 1000)
        assert p.next_event() is NEED_DATA
        assert p.buffered == 0
    p.feed(b"\r\nb NOOP\r\n")
    assert p.next_event() == Command("b", "NOOP", False, ())


def test_too_big_counts_all_literals_of_a_command():
    evs = events(b"a APPEND x {6+}\r\n123456 {6+}\r\n123456\r\nb NOOP\r\n", max_literal=10)
    assert evs == [TooBig("a", 6, True), Command("b", "NOOP", False, ())]


def test_bad_resync_skips_announced_literals():
    # unknown command with a non-synchronizing literal: its bytes (holding a CRLF) are dropped
    p = CommandParser()
    p.feed(b"a FROB {7+}\r\nx\r\nb NO {2+}\r\nyy\r\nc NOOP\r\n")
    assert p.next_event() == Bad("a", "Unknown command FROB")
    assert p.next_event() == Command("c", "NOOP", False, ())
    # a syntax error found after the literals were read
    evs = events(b"a LOGIN {3}\r\nbob\r\nb NOOP\r\n")
    assert evs[0] == Continue() and evs[1].tag == "a" and "Missing argument" in evs[1].text
    assert evs[2] == Command("b", "NOOP", False, ())
    # synchronizing literal on a bad command: the client waits, nothing to drop
    assert events(b"a FROB {3}\r\nb NOOP\r\n") == [Bad("a", "Unknown command FROB"),
                                                   Command("b", "NOOP", False, ())]


def test_line_too_long_bounded():
    p = CommandParser(max_line=100)
    p.feed(b"a1 LOGIN " + b"x" * 200)
    ev = p.next_event()
    assert ev == Bad("a1", "Command line too long")
    for _ in range(1000):
        p.feed(b"y" * 1000)
        assert p.next_event() is NEED_DATA
        assert p.buffered <= 100
    p.feed(b"\r\nb NOOP\r\n")
    assert p.next_event() == Command("b", "NOOP", False, ())


def test_line_too_long_ending_in_literal_plus():
    p = CommandParser(max_line=50)
    p.feed(b"a LOGIN " + b"x" * 100 + b" {4+}\r\n\r\n\r\n b NOOP\r\nc NOOP\r\n")
    assert p.next_event() == Bad("a", "Command line too long")
    assert p.next_event() == Command("c", "NOOP", False, ())
    # complete line arriving at once
    assert events(b"a " + b"x" * 100 + b"\r\nb NOOP\r\n", max_line=50) == [
        Bad("a", "Command line too long"), Command("b", "NOOP", False, ())]


def test_line_too_long_tiny_limit():
    p = CommandParser(max_line=8)
    p.feed(b"abc NOOP NOOP NOOP NOOP")
    assert p.next_event() == Bad("abc", "Command line too long")
    for _ in range(50):
        p.feed(b"q" * 100)
        assert p.next_event() is NEED_DATA
        assert p.buffered <= 8 + 32
    p.feed(b"\r\nb NOOP\r\n")
    assert p.next_event() == Command("b", "NOOP", False, ())
    p = CommandParser(max_line=8)
    p.feed(b"q" * 100)
    assert p.next_line() == Bad(None, "Line too long")
    p.feed(b"q" * 100)
    assert p.next_line() is NEED_DATA
    p.feed(b"\r\nDONE\r\n")
    assert p.next_line() == b"DONE"


def test_command_name_boundary():
    assert bad(b"a NOOP2\r\n") == Bad("a", "Invalid command name")
    assert bad(b"a UID FETCH2 1 FLAGS\r\n").tag == "a"


def test_line_bound_spans_continuation_lines():
    data = b"a APPEND x" + b" {0+}\r\n" * 20 + b"\r\nb NOOP\r\n"
    evs = events(data, max_line=40)
    assert Bad("a", "Command line too long") in evs
    assert evs[-1] == Command("b", "NOOP", False, ())


def test_line_mode():
    p = CommandParser(max_line=20)
    p.feed(b"a IDLE\r\nDON")
    assert p.next_event() == Command("a", "IDLE", False, ())
    assert p.next_line() is NEED_DATA
    p.feed(b"E\r\n" + b"z" * 30)
    assert p.next_line() == b"DONE"
    assert p.next_line() == Bad(None, "Line too long")
    p.feed(b"zz\r\nAGZv\r\n")
    assert p.next_line() == b"AGZv"
    assert p.next_line() is NEED_DATA


# ------------------------------------------------------------------ sequence sets

def test_sequence_set_parse():
    assert SequenceSet.parse("1").ranges == ((1, 1),)
    assert SequenceSet.parse("*").ranges == ((None, None),)
    assert SequenceSet.parse("2:4,7:*,9").ranges == ((2, 4), (7, None), (9, 9))
    assert str(SequenceSet.parse("2:4,7:*,9,*")) == "2:4,7:*,9,*"
    for badset in ["0", "1:0", "", "1,", ",1", "a", "1::2", "$", "4294967296"]:
        with pytest.raises(ValueError):
            SequenceSet.parse(badset)
    assert SequenceSet.parse("4294967295").ranges == ((4294967295, 4294967295),)


def test_sequence_set_resolve_contains():
    s = SequenceSet.parse("2:4,7:*,3")
    assert s.resolve(10) == [2, 3, 4, 7, 8, 9, 10]
    assert s.resolve(5) == [2, 3, 4, 5]          # 7:* is 5:7
    assert s.resolve(0) == []
    assert SequenceSet.parse("*:3").resolve(6) == [3, 4, 5, 6]
    assert SequenceSet.parse("20:30").resolve(10) == []
    assert SequenceSet.parse("20:*").resolve(10) == [10]
    assert s.contains(5, 5) and s.contains(8, 10) and not s.contains(6, 10)
    assert not s.contains(11, 10) and not s.contains(0, 10)
    assert SequenceSet.parse("*").contains(9, 9)


def test_sequence_set_in_commands():
    assert "$" in bad(b"a FETCH $ FLAGS\r\n").text
    assert bad(b"a FETCH 0 FLAGS\r\n").tag == "a"
    assert bad(b"a FETCH 1:0 FLAGS\r\n").tag == "a"


# ------------------------------------------------------------------ FETCH

def names(c: Command) -> list[str]:
    return [i.name for i in c.args[1]]


def test_fetch_macros():
    assert names(cmd(b"a FETCH 1 ALL\r\n")) == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert names(cmd(b"a FETCH 1 fast\r\n")) == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert names(cmd(b"a FETCH 1 FULL\r\n")) == ["FLAGS", "INTERNALDATE", "RFC822.SIZE",
                                                 "ENVELOPE", "BODY"]
    assert bad(b"a FETCH 1 (ALL)\r\n").tag == "a"     # macros stand alone


def test_fetch_items():
    c = cmd(b"a FETCH 2:4 (flags uid INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY "
            b"RFC822 RFC822.HEADER RFC822.TEXT MODSEQ)\r\n")
    assert c.args[0] == SequenceSet(((2, 4),))
    assert names(c) == ["FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE",
                        "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT",
                        "MODSEQ"]
    assert all(i.section is None for i in c.args[1])
    assert c.args[2] is None


def test_fetch_sections():
    c = cmd(b"a FETCH 1 (BODY[] BODY.PEEK[HEADER.FIELDS (Subject From)]<0.100> body[1.2.mime] "
            b"BODY[3.HEADER.FIELDS.NOT (X-A)] BODY[TEXT]<5.10> BODY[2] BODY[HEADER] BODY[4.TEXT])\r\n")
    items = c.args[1]
    assert items[0] == FetchItem("BODY", Section())
    assert items[0].response_name() == "BODY[]"
    assert items[1] == FetchItem("BODY", Section((), "HEADER.FIELDS", ("Subject", "From")),
                                 True, (0, 100))
    assert items[1].response_name() == "BODY[HEADER.FIELDS (Subject From)]<0>"
    assert items[2].section == Section((1, 2), "MIME")
    assert items[2].response_name() == "BODY[1.2.MIME]"
    assert str(items[3].section) == "3.HEADER.FIELDS.NOT (X-A)"
    assert items[4].response_name() == "BODY[TEXT]<5>"
    assert str(items[5].section) == "2" and str(items[6].section) == "HEADER"
    assert str(items[7].section) == "4.TEXT"
    assert FetchItem("FLAGS").response_name() == "FLAGS"


def test_fetch_section_literal_field_and_bare():
    c = cmd(b"a FETCH 1 BODY.PEEK[HEADER.FIELDS ({7+}\r\nSubject \"X-Y\")]\r\n")
    assert c.args[1][0].section.fields == ("Subject", "X-Y")
    assert cmd(b"a UID FETCH 1:* BODY[]\r\n").uid


def test_fetch_section_errors():
    for line in [b"a FETCH 1 BODY[MIME]\r\n", b"a FETCH 1 BODY[FOO]\r\n",
                 b"a FETCH 1 BODY[HEADER.FIELDS]\r\n", b"a FETCH 1 BODY[HEADER.FIELDS ()]\r\n",
                 b"a FETCH 1 BODY[1.]\r\n", b"a FETCH 1 BODY[0]\r\n", b"a FETCH 1 BODY[]<0.0>\r\n",
                 b"a FETCH 1 BODY[]<1>\r\n", b"a FETCH 1 FLAGS[]\r\n", b"a FETCH 1 BOGUS\r\n",
                 b"a FETCH 1 ()\r\n", b"a FETCH 1 (FLAGS\r\n", b"a FETCH 1\r\n"]:
        assert bad(line).tag == "a", line


def test_fetch_binary():
    items = cmd(b"a FETCH 1 (BINARY[1] BINARY.PEEK[2]<0.10> BINARY.SIZE[1])\r\n").args[1]
    assert items[0] == FetchItem("BINARY", Section((1,)))
    assert items[1].peek and items[1].response_name() == "BINARY[2]<0>"
    assert items[2].response_name() == "BINARY.SIZE[1]"


def test_fetch_changedsince():
    c = cmd(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)\r\n")
    assert c.uid and c.name == "FETCH" and c.args[2] == 12345
    assert names(c) == ["FLAGS", "MODSEQ"]
    c = cmd(b"a FETCH 1 (MODSEQ FLAGS) (CHANGEDSINCE 1)\r\n")
    assert names(c) == ["MODSEQ", "FLAGS"]
    assert bad(b"a FETCH 1 FLAGS (VANISHED)\r\n").tag == "a"


# ------------------------------------------------------------------ STORE

def test_store_variants():
    c = cmd(b"a STORE 2:4 +FLAGS (\\Deleted)\r\n")
    assert c.args == (SequenceSet(((2, 4),)), StoreArgs("+", False, ("\\Deleted",)))
    c = cmd(b"a STORE 1 -flags.silent \\Seen $Junk\r\n")
    assert c.args[1] == StoreArgs("-", True, ("\\Seen", "$Junk"))
    c = cmd(b"a STORE 1 FLAGS ()\r\n")
    assert c.args[1] == StoreArgs("", False, ())
    c = cmd(b"a UID STORE 1:* (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Seen)\r\n")
    assert c.uid and c.name == "STORE"
    assert c.args[1] == StoreArgs("+", True, ("\\Seen",), 320162338)
    for line in [b"a STORE 1 FLAG (\\Seen)\r\n", b"a STORE 1 +FLAGS\r\n",
                 b"a STORE 1 (FOO 1) FLAGS x\r\n", b"a STORE 1 *FLAGS x\r\n"]:
        assert bad(line).tag == "a"


# ------------------------------------------------------------------ COPY / MOVE / EXPUNGE

def test_copy_move_uid_expunge():
    assert cmd(b"a COPY 2:4 MEETING\r\n").args == (SequenceSet(((2, 4),)), "MEETING")
    c = cmd(b"a UID MOVE 42:69 foo\r\n")
    assert (c.name, c.uid, c.args) == ("MOVE", True, (SequenceSet(((42, 69),)), "foo"))
    c = cmd(b"a uid expunge 3000:3002\r\n")
    assert (c.name, c.uid, c.args) == ("EXPUNGE", True, (SequenceSet(((3000, 3002),)),))
    assert cmd(b"a EXPUNGE\r\n").args == ()
    assert bad(b"a UID EXPUNGE\r\n").tag == "a"
    assert bad(b"a UID LOGIN a b\r\n").tag == "a"


# ------------------------------------------------------------------ SEARCH

def key(line: bytes) -> SearchKey:
    return cmd(b"s SEARCH " + line + b"\r\n").args[0].key


def test_search_simple_keys():
    assert key(b"ALL") == SearchKey("ALL")
    assert key(b"seen") == SearchKey("FLAG", ("\\Seen",))
    assert key(b"UNANSWERED") == SearchKey("NOFLAG", ("\\Answered",))
    assert key(b"KEYWORD $Junk") == SearchKey("FLAG", ("$Junk",))
    assert key(b"UNKEYWORD $Junk") == SearchKey("NOFLAG", ("$Junk",))
    for op in ["RECENT", "NEW", "OLD"]:
        assert key(op.encode()) == SearchKey(op)
    assert key(b"SINCE 1-Feb-1994") == SearchKey("SINCE", (dt.date(1994, 2, 1),))
    assert key(b'SENTBEFORE "01-Feb-1994"') == SearchKey("SENTBEFORE", (dt.date(1994, 2, 1),))
    assert key(b"LARGER 1000") == SearchKey("LARGER", (1000,))
    assert key(b'FROM "Smith"') == SearchKey("HEADER", ("FROM", "Smith"))
    assert key(b"subject hello") == SearchKey("HEADER", ("SUBJECT", "hello"))
    assert key(b"HEADER X-Spam yes") == SearchKey("HEADER", ("X-Spam", "yes"))
    assert key(b'BODY "a b"') == SearchKey("BODY", ("a b",))
    assert key(b"TEXT {3+}\r\nabc") == SearchKey("TEXT", ("abc",))
    assert key(b"MODSEQ 620162338") == SearchKey("MODSEQ", (620162338,))
    assert key(b'MODSEQ "/flags/\\\\draft" all 620162338') == SearchKey("MODSEQ", (620162338,))
    assert key(b"1:3,5") == SearchKey("SEQ", (SequenceSet(((1, 3), (5, 5))),))
    assert key(b"UID 2:*") == SearchKey("UID", (SequenceSet(((2, None),)),))


def test_search_nested():
    k = key(b"OR (SEEN FLAGGED) NOT (FROM a OR TO b CC c) 1:*")
    assert k.op == "AND"
    or_, seq = k.args
    assert seq.op == "SEQ"
    assert or_.op == "OR"
    a, b = or_.args
    assert a == SearchKey("AND", (SearchKey("FLAG", ("\\Seen",)), SearchKey("FLAG", ("\\Flagged",))))
    assert b.op == "NOT"
    inner = b.args[0]
    assert inner == SearchKey("AND", (SearchKey("HEADER", ("FROM", "a")),
                                      SearchKey("OR", (SearchKey("HEADER", ("TO", "b")),
                                                       SearchKey("HEADER", ("CC", "c"))))))
    assert key(b"(DELETED)") == SearchKey("FLAG", ("\\Deleted",))
    assert key(b"NOT NOT ALL") == SearchKey("NOT", (SearchKey("NOT", (SearchKey("ALL"),)),))


def test_search_errors():
    for line in [b"", b"BOGUS", b"OR SEEN", b"LARGER x", b"SINCE 32-Jan-2020",
                 b"SINCE 1-Foo-2020", b"()", b"(SEEN", b"SEEN)", b"$", b"0"]:
        assert bad(b"s SEARCH " + line + b"\r\n").tag == "s", line
    deep = b"(" * 200 + b"ALL" + b")" * 200
    assert "nested" in bad(b"s SEARCH " + deep + b"\r\n").text
    assert bad(b"s SEARCH " + b"NOT " * 500 + b"ALL\r\n").tag == "s"


def test_search_charset():
    a = cmd('s SEARCH CHARSET UTF-8 SUBJECT {5}\r\nÜber\r\n'.encode()).args[0]
    assert a == SearchArgs("UTF-8", SearchKey("HEADER", ("SUBJECT", "Über")), None)
    assert cmd(b"s SEARCH charset us-ascii ALL\r\n").args[0].charset == "US-ASCII"
    ev = one(b"s SEARCH CHARSET KOI8-R SUBJECT {2+}\r\n\xf0\xf2\r\n")
    assert ev == BadCharset("s", "KOI8-R")
    assert ev.code == "BADCHARSET (UTF-8 US-ASCII)"
    assert bad(b"s SEARCH CHARSET UTF-8 SUBJECT {2+}\r\n\xff\xfe\r\n").tag == "s"


def test_search_return():
    a = cmd(b"s UID SEARCH RETURN (MIN COUNT) UNSEEN\r\n").args[0]
    assert a.return_options == ("MIN", "COUNT")
    a = cmd(b"s SEARCH RETURN () CHARSET UTF-8 ALL\r\n").args[0]
    assert a.return_options == () and a.charset == "UTF-8"
    assert bad(b"s SEARCH RETURN (SAVE) ALL\r\n").tag == "s"


# ------------------------------------------------------------------ mUTF-7

@pytest.mark.parametrize("name,enc", [("Entwürfe", "Entw&APw-rfe"), ("台北", "&U,BTFw-"),
                                      ("A&B", "A&-B"), ("INBOX", "INBOX"),
                                      ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
                                      ("😀", "&2D3eAA-")])
def test_mutf7(name, enc):
    assert encode_mailbox(name) == enc
    assert decode_mailbox(enc) == name


@pytest.mark.parametrize("text", ["&", "&U,BTFw", "&Jjo!", "a\u00e9", "&AGE-", "&U,BTF2-",
                                  "&AOk-&AOk-", "\x01"])
def test_mutf7_invalid(text):
    with pytest.raises(MailboxNameError):
        decode_mailbox(text)


@given(st.text(max_size=30))
def test_mutf7_round_trip(name):
    enc = encode_mailbox(name.replace("\ud800", ""))
    assert re.fullmatch(r"[\x20-\x7e]*", enc)
    assert decode_mailbox(enc) == name.replace("\ud800", "")


# ------------------------------------------------------------------ writer

class Reader:
    """An independent reader of IMAP response values, for the round trips."""

    def __init__(self, data: bytes):
        self.d, self.i = data, 0

    def value(self):
        d = self.d
        c = d[self.i:self.i + 1]
        if c == b"(":
            self.i += 1
            out = []
            while d[self.i:self.i + 1] != b")":
                out.append(self.value())
                if d[self.i:self.i + 1] == b" ":
                    self.i += 1
            self.i += 1
            return out
        if c == b'"':
            j, buf = self.i + 1, bytearray()
            while d[j:j + 1] != b'"':
                if d[j:j + 1] == b"\\":
                    j += 1
                buf += d[j:j + 1]
                j += 1
            self.i = j + 1
            return ("q", bytes(buf))
        if c == b"{":
            j = d.index(b"}\r\n", self.i)
            n = int(d[self.i + 1:j])
            self.i = j + 3 + n
            return ("l", d[j + 3:j + 3 + n])
        j = self.i
        while j < len(d) and d[j:j + 1] not in (b" ", b")", b"("):
            j += 1
        tok, self.i = d[self.i:j], j
        if tok == b"NIL":
            return None
        if tok.isdigit():
            return int(tok)
        return ("a", tok)


def read(data: bytes):
    r = Reader(data)
    v = r.value()
    assert r.i == len(data)
    return v


def test_serialize_basics():
    assert serialize("hello") == b'"hello"'
    assert serialize('a"b\\c') == b'"a\\"b\\\\c"'
    assert serialize("") == b'""'
    assert serialize("é") == b"{2}\r\n\xc3\xa9"
    assert serialize("a\r\nb") == b"{4}\r\na\r\nb"
    assert serialize("x" * 999) == b'"' + b"x" * 999 + b'"'
    assert serialize("x" * 1000).startswith(b"{1000}\r\n")
    assert serialize(b"") == b'""'
    assert serialize(b"abc") == b"{3}\r\nabc"
    assert serialize(42) == b"42"
    assert serialize(None) == b"NIL"
    assert serialize(Atom("\\Seen")) == b"\\Seen"
    assert serialize([1, ["a", None], []]) == b'(1 ("a" NIL) ())'
    assert serialize(flags_list(["\\Seen", "$Junk"])) == b"(\\Seen $Junk)"
    assert flags_list([]) == "()" and isinstance(flags_list([]), Atom)
    assert serialize(dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5)))) \
        == b'"02-Jan-2020 03:04:05 -0500"'
    with pytest.raises(TypeError):
        serialize(object())
    with pytest.raises(TypeError):
        serialize(True)


def test_format_datetime_round_trip_through_append():
    d = dt.datetime(1994, 7, 5, 2, 31, 5, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    line = b'a APPEND x "' + format_datetime(d).encode() + b'" {1+}\r\nZ\r\n'
    assert cmd(line).args[1][0].date == d


values = st.recursive(
    st.none() | st.integers(0, 2**63) | st.text(max_size=20) | st.binary(max_size=20)
    | st.sampled_from([Atom("\\Seen"), Atom("BODY[]"), Atom("FLAGS")]),
    lambda inner: st.lists(inner, max_size=4), max_leaves=20)


def expected(v):
    if v is None or isinstance(v, int):
        return v
    if isinstance(v, Atom):
        return ("a", v.encode())
    if isinstance(v, str):
        return ("q" if re.fullmatch(r"[\x20-\x7e]{0,999}", v) else "l", v.encode())
    if isinstance(v, bytes):
        return ("l", v) if v else ("q", b"")
    return [expected(x) for x in v]


@given(values)
def test_serialize_round_trip(v):
    assert read(serialize(v)) == expected(v)


def test_response_lines():
    assert response("*", "OK UIDs valid", "UIDVALIDITY 3") == b"* OK [UIDVALIDITY 3] UIDs valid\r\n"
    assert response("a1", "OK LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert response("*", "5 EXISTS") == b"* 5 EXISTS\r\n"
    assert response("a", "NO", "TOOBIG") == b"a NO [TOOBIG]\r\n"
    with pytest.raises(ValueError):
        response("*", "OK a\r\nb")


def test_fetch_response():
    out = fetch_response(12, [("UID", 5), ("FLAGS", flags_list(["\\Seen"])),
                              ("BODY[]", b"hello\r\n")])
    assert out == b"* 12 FETCH (UID 5 FLAGS (\\Seen) BODY[] {7}\r\nhello\r\n)\r\n"
    assert out.startswith(b"* 12 FETCH ")
    assert read(out[len(b"* 12 FETCH "):-2]) == [("a", b"UID"), 5, ("a", b"FLAGS"),
                                                  [("a", b"\\Seen")], ("a", b"BODY[]"),
                                                  ("l", b"hello\r\n")]


def test_starttls_injection_visible():
    p = CommandParser()
    p.feed(b"a STARTTLS\r\nb CAPABILITY\r\n")
    assert p.next_event().name == "STARTTLS"
    assert p.unparsed == len(b"b CAPABILITY\r\n")
    p.clear()
    assert p.unparsed == 0 and p.next_event() is NEED_DATA


def test_mailbox_value():
    assert serialize(mailbox_value("Entwürfe")) == b'"Entw&APw-rfe"'
    assert serialize(mailbox_value("Entwürfe", utf8=True)) == '"Entwürfe"'.encode()
    assert serialize(mailbox_value("a\nb", utf8=True)) == b"{3}\r\na\nb"


def test_serialize_parses_back_as_command_argument():
    # what the writer produces is also a valid astring for the parser
    for s in ["plain", 'q"u\\o te', "ünï", "x" * 1500, "a\r\nb"]:
        data = serialize(s).replace(b"}\r\n", b"+}\r\n", 1)
        c = cmd(b"a LOGIN " + data + b" " + serialize("pw") + b"\r\n")
        assert c.args == (s, "pw")


text_no_surrogates = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@given(text_no_surrogates, text_no_surrogates)
def test_login_round_trip(user, password):
    def arg(s):
        return serialize(s).replace(b"}\r\n", b"+}\r\n", 1)
    assert cmd(b"a LOGIN " + arg(user) + b" " + arg(password) + b"\r\n").args == (user, password)


@given(text_no_surrogates)
def test_mailbox_round_trip_through_parser(name):
    c = cmd(b"a CREATE " + serialize(encode_mailbox(name)).replace(b"}\r\n", b"+}\r\n", 1)
            + b"\r\n")
    assert c.args == ("INBOX" if name.upper() == "INBOX" else name,)


# ------------------------------------------------------------------ robustness

MAX_LINE, MAX_LITERAL = 200, 300


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b"\r\n", b"{5}\r\n", b"{400+}\r\n", b"{3+}\r\n", b"a1 ", b"APPEND x ",
                     b"LOGIN ", b"FETCH 1:* (BODY[", b"SEARCH OR (", b"~{2+}\r\n", b'"',
                     b"UID STORE 1 +FLAGS (", b"LIST (", b"x" * 250])), max_size=40),
    st.booleans(), st.booleans())
def test_random_input_never_raises_and_stays_bounded(chunks, line_mode, minus):
    p = CommandParser(max_literal=MAX_LITERAL, max_line=MAX_LINE, literal_minus=minus)
    for k, chunk in enumerate(chunks):
        p.feed(chunk)
        while True:
            ev = p.next_line() if line_mode and k % 3 == 0 else p.next_event()
            if ev is NEED_DATA:
                break
            assert isinstance(ev, (bytes, Command, Continue, Bad, BadCharset, TooBig))
        assert p.buffered <= MAX_LINE + MAX_LITERAL


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, len(SAMPLE)), max_size=6))
def test_random_split_points(cuts):
    cuts = sorted(cuts)
    pieces = [SAMPLE[a:b] for a, b in zip([0] + cuts, cuts + [len(SAMPLE)])]
    p = CommandParser()
    got = []
    for piece in pieces:
        p.feed(piece)
        while (ev := p.next_event()) is not NEED_DATA:
            got.append(ev)
    assert events(SAMPLE) == got
