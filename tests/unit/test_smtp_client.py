"""The SMTP client core against scripted server replies: no sockets, no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.smtp import client
from ingot.plugins.smtp.client import (ClientConnection, DeliveryResult, Extensions,
                                       LocalProtocolError, RemoteProtocolError, ReplyParser,
                                       ServerReply, State, Transaction, stuff)

GREETING = b"220 mx.example.net ESMTP ready\r\n"
EHLO_FULL = (b"250-mx.example.net greets relay.example.org\r\n"
             b"250-PIPELINING\r\n"
             b"250-SIZE 10240000\r\n"
             b"250-8BITMIME\r\n"
             b"250-SMTPUTF8\r\n"
             b"250-ENHANCEDSTATUSCODES\r\n"
             b"250-STARTTLS\r\n"
             b"250-AUTH PLAIN LOGIN\r\n"
             b"250 CHUNKING\r\n")
EHLO_PLAIN = b"250-mx.example.net\r\n250 SIZE\r\n"


def ready(ehlo: bytes = EHLO_FULL) -> ClientConnection:
    conn = ClientConnection("relay.example.org")
    conn.receive_data(GREETING)
    assert conn.ehlo() == b"EHLO relay.example.org\r\n"
    conn.receive_data(ehlo)
    assert conn.state is State.READY
    return conn


def parse_all(data: bytes) -> list[ServerReply]:
    return ReplyParser().feed(data)


# -- reply parser ------------------------------------------------------------

def test_single_line_reply_with_enhanced_code():
    [r] = parse_all(b"550 5.1.1 <bob@example.net>: no such user\r\n")
    assert r == ServerReply(550, ("<bob@example.net>: no such user",), "5.1.1")
    assert r.is_permanent and not r.is_transient and not r.is_positive
    assert r.diagnostic() == "550 5.1.1 <bob@example.net>: no such user"


def test_enhanced_code_must_agree_with_reply_class():
    [r] = parse_all(b"550 4.1.1 odd\r\n")
    assert r.enhanced is None and r.lines == ("4.1.1 odd",)
    [r] = parse_all(b"250 2.0.0\r\n")
    assert r.enhanced == "2.0.0" and r.lines == ("",)
    [r] = parse_all(b"250 2.0.0Ok\r\n")
    assert r.enhanced is None


def test_multiline_reply_and_enhanced_code_on_each_line():
    [r] = parse_all(b"451-4.3.0 first\r\n451-4.3.0 second\r\n451 4.3.0 third\r\n")
    assert r.code == 451 and r.enhanced == "4.3.0"
    assert r.lines == ("first", "second", "third")
    assert r.text == "first\nsecond\nthird"
    assert r.is_transient


def test_bare_code_and_bare_lf_are_accepted():
    assert parse_all(b"250\n354 go\r\n") == [ServerReply(250, ("",)),
                                             ServerReply(354, ("go",))]


@pytest.mark.parametrize("line", [b"25 short\r\n", b"abc def\r\n", b"250_x\r\n", b"650 no\r\n",
                                  b"\r\n", b"199 x\r\n", b" 250 x\r\n", b"2500 x\r\n"])
def test_malformed_lines_raise(line):
    with pytest.raises(RemoteProtocolError):
        parse_all(line)


def test_code_change_inside_multiline_raises():
    with pytest.raises(RemoteProtocolError, match="changed"):
        parse_all(b"250-a\r\n251 b\r\n")


def test_overlong_line_raises_even_without_newline():
    p = ReplyParser()
    p.feed(b"250 " + b"x" * 4000)
    with pytest.raises(RemoteProtocolError, match="longer"):
        p.feed(b"x" * 200)
    assert parse_all(b"250 " + b"x" * (client.MAX_LINE - 6) + b"\r\n")[0].code == 250
    with pytest.raises(RemoteProtocolError):
        parse_all(b"250 " + b"x" * (client.MAX_LINE - 5) + b"\r\n")


def test_split_at_every_position():
    data = EHLO_FULL + b"550-5.7.1 a\r\n550 5.7.1 b\r\n" + b"250 ok\n"
    whole = parse_all(data)
    assert len(whole) == 3
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            p = ReplyParser()
            got = p.feed(data[:i]) + p.feed(data[i:j]) + p.feed(data[j:])
            assert got == whole, (i, j)


def test_one_byte_at_a_time():
    p = ReplyParser()
    got = []
    for b in EHLO_FULL:
        got += p.feed(bytes([b]))
    assert got == parse_all(EHLO_FULL)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_parser_only_raises_remote_protocol_error(chunks):
    p = ReplyParser()
    try:
        for c in chunks:
            for r in p.feed(c):
                assert isinstance(r, ServerReply) and 200 <= r.code < 600
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"250-", b"250 ", b"2", b"5", b"\r", b"\n", b"x", b"5.1.1 ",
                                 b"550 ", b"\xff"]), max_size=40))
def test_parser_only_raises_remote_protocol_error_near_valid(pieces):
    conn = ready()
    try:
        conn.receive_data(b"".join(pieces))
    except RemoteProtocolError:
        pass


# -- extensions --------------------------------------------------------------

def test_ehlo_extensions():
    [r] = parse_all(EHLO_FULL)
    ext = Extensions.parse(r)
    assert ext.domain == "mx.example.net"
    assert ext.pipelining and ext.starttls and ext.eightbitmime and ext.smtputf8
    assert ext.enhancedstatuscodes and ext.size_advertised
    assert ext.size == 10240000
    assert ext.auth == {"PLAIN", "LOGIN"}
    assert ext.has("chunking") and ext.has("Pipelining") and not ext.has("DSN")


def test_ehlo_extensions_edge_cases():
    [r] = parse_all(b"250-x\r\n250-size 0\r\n250-AUTH=LOGIN\r\n250 auth cram-md5\r\n")
    ext = Extensions.parse(r)
    assert ext.size_advertised and ext.size is None
    assert ext.auth == {"LOGIN", "CRAM-MD5"}
    assert not ext.pipelining
    [r] = parse_all(b"250 mx.example.net\r\n")
    assert Extensions.parse(r).keywords == {}
    with pytest.raises(LocalProtocolError):
        Extensions.parse(ServerReply(550, ("no",)))


# -- connection --------------------------------------------------------------

def test_greeting_and_ehlo():
    conn = ready()
    assert conn.extensions.pipelining
    assert conn.answered[-1][0] == "EHLO"


def test_greeting_554_is_a_host_refusal_not_an_error():
    conn = ClientConnection("relay.example.org")
    conn.receive_data(b"554 5.7.1 go away\r\n")
    assert conn.state is State.CLOSED
    assert conn.host_refused.is_permanent
    with pytest.raises(LocalProtocolError):
        conn.ehlo()


def test_greeting_421_is_a_transient_host_refusal():
    conn = ClientConnection("relay.example.org")
    conn.receive_data(b"421 busy\r\n")
    assert conn.host_refused.is_transient and conn.state is State.CLOSED


@pytest.mark.parametrize("greeting", [b"250 hello\r\n", b"550 no\r\n", b"354 x\r\n"])
def test_greeting_not_220_raises(greeting):
    with pytest.raises(RemoteProtocolError, match="greeting"):
        ClientConnection("relay.example.org").receive_data(greeting)


def test_no_command_before_greeting():
    with pytest.raises(LocalProtocolError):
        ClientConnection("relay.example.org").ehlo()


def test_bad_helo_name():
    with pytest.raises(LocalProtocolError):
        ClientConnection("bad name\r\nRSET")


def test_helo_fallback_after_ehlo_5xx():
    conn = ClientConnection("relay.example.org")
    conn.receive_data(GREETING)
    conn.ehlo()
    conn.receive_data(b"502 5.5.1 unrecognised\r\n")
    assert conn.state is State.CONNECTED and conn.extensions is None
    assert conn.helo() == b"HELO relay.example.org\r\n"
    conn.receive_data(b"250 mx.example.net\r\n")
    assert conn.state is State.READY and not conn.extensions.pipelining
    # no extensions: no SIZE / BODY / SMTPUTF8 parameters
    assert conn.mail("a@example.org", size=5, body8bit=True) == b"MAIL FROM:<a@example.org>\r\n"


def test_starttls_then_ehlo_again():
    conn = ready()
    assert conn.starttls() == b"STARTTLS\r\n"
    conn.receive_data(b"220 2.0.0 go ahead\r\n")
    assert conn.state is State.TLS_READY
    with pytest.raises(LocalProtocolError):
        conn.mail("a@example.org")
    conn.after_tls()
    assert conn.extensions is None and conn.state is State.CONNECTED
    with pytest.raises(LocalProtocolError):
        conn.mail("a@example.org")
    conn.ehlo()
    conn.receive_data(EHLO_PLAIN)
    assert conn.state is State.READY and not conn.extensions.starttls


def test_starttls_response_injection_rejected():
    conn = ready()
    conn.starttls()
    with pytest.raises(RemoteProtocolError, match="STARTTLS"):
        conn.receive_data(b"220 go ahead\r\n250 injected\r\n")
    conn = ready()
    conn.starttls()
    with pytest.raises(RemoteProtocolError, match="STARTTLS"):
        conn.receive_data(b"220 go ahead\r\n25")
    conn = ready()
    conn.starttls()
    conn.receive_data(b"220 go ahead\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"250 late\r\n")


def test_starttls_refused_stays_ready():
    conn = ready()
    conn.starttls()
    conn.receive_data(b"454 4.7.0 TLS not available\r\n")
    assert conn.state is State.READY
    with pytest.raises(LocalProtocolError):
        ready(EHLO_PLAIN).starttls()


def test_mail_parameters_only_when_advertised():
    conn = ready()
    assert (conn.mail("a@example.org", size=1234, body8bit=True, smtputf8=True)
            == b"MAIL FROM:<a@example.org> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n")
    conn = ready(EHLO_PLAIN)
    assert conn.mail("", size=99, body8bit=True) == b"MAIL FROM:<> SIZE=99\r\n"


def test_smtputf8_refused_when_not_advertised():
    conn = ready(EHLO_PLAIN)
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        conn.mail("a@example.org", smtputf8=True)
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        conn.mail("jösé@example.org")
    conn.receive_data(b"")
    conn.mail("a@example.org")
    conn.receive_data(b"250 ok\r\n")
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        conn.rcpt("jösé@example.net")


def test_non_ascii_sender_at_utf8_server():
    conn = ready()
    assert conn.mail("jösé@example.org") == "MAIL FROM:<jösé@example.org> SMTPUTF8\r\n".encode()


@pytest.mark.parametrize("addr", ["a@b>\r\nRSET", "a b@c", "<a@b>", "a@b\x00"])
def test_command_injection_in_addresses_refused(addr):
    conn = ready()
    with pytest.raises(LocalProtocolError):
        conn.mail(addr)
    with pytest.raises(LocalProtocolError):
        conn.rcpt(addr)


def test_no_pipelining_means_one_command_at_a_time():
    conn = ready(EHLO_PLAIN)
    conn.mail("a@example.org")
    with pytest.raises(LocalProtocolError, match="before the replies"):
        conn.rcpt("b@example.net")


def test_pipelining_rules():
    conn = ready()
    conn.mail("a@example.org")
    conn.rcpt("b@example.net")
    conn.data()
    with pytest.raises(LocalProtocolError):  # DATA must end a group
        conn.rcpt("c@example.net")
    replies = conn.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert [v for v, _ in conn.answered[-3:]] == ["MAIL", "RCPT", "DATA"]
    assert len(replies) == 3 and conn.state is State.DATA
    with pytest.raises(LocalProtocolError):
        conn.rset()
    conn.message(b"hi\r\n")
    conn.receive_data(b"250 queued\r\n")
    assert conn.state is State.READY and conn.pending == 0
    assert conn.quit() == b"QUIT\r\n"
    conn.receive_data(b"221 bye\r\n")
    assert conn.state is State.CLOSED


def test_message_needs_354():
    conn = ready()
    with pytest.raises(LocalProtocolError):
        conn.message(b"x")


def test_unsolicited_reply_raises_but_421_closes():
    conn = ready()
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        conn.receive_data(b"250 surprise\r\n")
    conn = ready()
    conn.receive_data(b"421 4.3.2 shutting down\r\n")
    assert conn.state is State.CLOSED


# -- dot-stuffing --------------------------------------------------------------

@pytest.mark.parametrize("data, wire", [
    (b"", b".\r\n"),
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b"a\nb", b"a\r\nb\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b".hidden\n..two\nx.y\n", b"..hidden\r\n...two\r\nx.y\r\n.\r\n"),
    (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a\n\n.\n", b"a\r\n\r\n..\r\n.\r\n"),
    (b"no newline", b"no newline\r\n.\r\n"),
    (b"mixed\r\nlf\ncr\rend", b"mixed\r\nlf\r\ncr\rend\r\n.\r\n"),
])
def test_dot_stuffing(data, wire):
    assert stuff(data) == wire


@given(st.binary(max_size=200))
def test_stuffed_message_is_well_formed(data):
    wire = stuff(data)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[:-3]
    assert b"\r\n.\r\n" not in b"\r\n" + body
    assert b"\n" not in body.replace(b"\r\n", b"")
    unstuffed = b"\r\n".join(line[1:] if line.startswith(b".") else line
                             for line in body.split(b"\r\n"))
    expected = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert unstuffed == expected


# -- transactions --------------------------------------------------------------

RCPTS = ["b@example.net", "c@example.net", "d@example.net"]
MSG = b"Subject: hi\r\n\r\nhello\r\n"


def run(conn: ClientConnection, script: list[bytes], recipients=RCPTS, data=MSG, **kw):
    """Drive a Transaction; each element of script answers one write."""
    tx = Transaction(conn, "a@example.org", recipients, data, **kw)
    writes = []
    out = tx.begin()
    script = list(script)
    while not tx.done:
        writes.append(out)
        out = tx.receive(conn.receive_data(script.pop(0)))
    assert out == b""
    assert not script, "unused replies"
    return tx.result, writes


def test_pipelined_all_accepted():
    conn = ready()
    result, writes = run(conn, [b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"
                                b"250 2.1.5 ok\r\n354 go\r\n", b"250 2.0.0 queued as X\r\n"])
    assert writes[0] == (b"MAIL FROM:<a@example.org> SIZE=22\r\n"
                         b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n"
                         b"RCPT TO:<d@example.net>\r\nDATA\r\n")
    assert writes[1] == MSG + b".\r\n"
    assert result == DeliveryResult(accepted=RCPTS, failed={},
                                    message_reply=ServerReply(250, ("queued as X",), "2.0.0"),
                                    transient=False)
    assert conn.state is State.READY and conn.pending == 0


def test_pipelined_replies_may_arrive_in_pieces():
    conn = ready()
    replies = b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n"
    result, writes = run(conn, [replies[:5], replies[5:20], replies[20:], b"250 ok\r\n"])
    assert result.accepted == ["b@example.net", "d@example.net"]
    assert result.failed["c@example.net"].enhanced == "5.1.1"
    assert len(writes) == 4 and writes[1] == writes[2] == b""


def test_one_by_one_without_pipelining():
    conn = ready(EHLO_PLAIN)
    result, writes = run(conn, [b"250 ok\r\n", b"250 ok\r\n", b"451 4.2.0 later\r\n",
                                b"550 5.1.1 unknown\r\n", b"354 go\r\n", b"250 queued\r\n"])
    assert writes == [b"MAIL FROM:<a@example.org> SIZE=22\r\n", b"RCPT TO:<b@example.net>\r\n",
                      b"RCPT TO:<c@example.net>\r\n", b"RCPT TO:<d@example.net>\r\n",
                      b"DATA\r\n", MSG + b".\r\n"]
    assert result.accepted == ["b@example.net"]
    assert result.failed["c@example.net"].is_transient
    assert result.failed["d@example.net"].is_permanent
    assert result.transient
    assert set(result.transient_failures) == {"c@example.net"}
    assert set(result.permanent_failures) == {"d@example.net"}


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("code, transient", [(b"451 4.3.0 try later", True),
                                             (b"550 5.7.1 sender refused", False)])
def test_mail_refused_fails_everyone(pipelining, code, transient):
    conn = ready(EHLO_FULL if pipelining else EHLO_PLAIN)
    if pipelining:
        script = [code + b"\r\n503 5.5.1 no MAIL\r\n503 no\r\n503 no\r\n554 5.5.1 no rcpt\r\n"]
    else:
        script = [code + b"\r\n"]
    result, writes = run(conn, script)
    assert result.accepted == [] and set(result.failed) == set(RCPTS)
    assert all(r.code == int(code[:3]) for r in result.failed.values())
    assert result.transient is transient and result.message_reply is None
    assert len(writes) == 1  # no RSET: no transaction was opened
    assert conn.pending == 0 and conn.state is State.READY


@pytest.mark.parametrize("pipelining", [True, False])
def test_all_rcpts_refused_data_reply_is_not_a_message_rejection(pipelining):
    conn = ready(EHLO_FULL if pipelining else EHLO_PLAIN)
    if pipelining:
        script = [b"250 ok\r\n550 5.1.1 a\r\n450 4.2.1 b\r\n550 5.1.1 c\r\n554 5.5.1 no rcpt\r\n",
                  b"250 reset\r\n"]
    else:
        script = [b"250 ok\r\n", b"550 5.1.1 a\r\n", b"450 4.2.1 b\r\n", b"550 5.1.1 c\r\n",
                  b"250 reset\r\n"]
    result, writes = run(conn, script)
    assert writes[-1] == b"RSET\r\n"
    assert b"DATA" not in b"".join(writes[1:])
    assert result.message_reply is None
    assert result.failed["b@example.net"].is_permanent
    assert result.failed["c@example.net"].is_transient
    assert result.failed["c@example.net"].text == "b"
    assert result.failed["c@example.net"].enhanced == "4.2.1"
    assert result.failed["d@example.net"].is_permanent
    assert result.transient and result.accepted == []


def test_all_rcpts_refused_but_data_354_gets_a_lone_dot():
    conn = ready()
    result, writes = run(conn, [b"250 ok\r\n550 no\r\n550 no\r\n550 no\r\n354 go\r\n",
                                b"554 no valid recipients\r\n", b"250 reset\r\n"])
    assert writes[1:] == [b".\r\n", b"RSET\r\n"]
    assert result.message_reply is None and set(result.failed) == set(RCPTS)
    assert not result.transient


@pytest.mark.parametrize("code, transient", [(b"451 4.3.0 busy", True), (b"554 5.3.0 no", False)])
def test_data_refused_fails_accepted_recipients(code, transient):
    conn = ready()
    result, writes = run(conn, [b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n" + code + b"\r\n",
                                b"250 reset\r\n"])
    assert writes[-1] == b"RSET\r\n"
    assert result.accepted == []
    assert result.message_reply.code == int(code[:3])
    assert result.failed["b@example.net"] == result.message_reply
    assert result.failed["d@example.net"] == result.message_reply
    assert result.failed["c@example.net"].enhanced == "5.1.1"
    assert result.transient is transient


@pytest.mark.parametrize("code, transient", [(b"452 4.3.1 full", True),
                                             (b"554 5.6.0 content rejected", False)])
def test_final_reply_refusal(code, transient):
    conn = ready(EHLO_PLAIN)
    result, _ = run(conn, [b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"550 no\r\n",
                           b"354 go\r\n", code + b"\r\n"])
    assert result.accepted == []
    assert result.message_reply.code == int(code[:3])
    assert result.failed["b@example.net"] is result.message_reply
    assert result.failed["d@example.net"].code == 550
    assert result.transient is transient


def test_421_mid_transaction_leaves_undecided_transient():
    conn = ready(EHLO_PLAIN)
    result, _ = run(conn, [b"250 ok\r\n", b"250 ok\r\n", b"550 no\r\n", b"421 4.3.2 bye\r\n"])
    assert result.accepted == []
    assert result.failed["b@example.net"].code == 421  # accepted but never delivered
    assert result.failed["c@example.net"].code == 550
    assert result.failed["d@example.net"].code == 421
    assert result.transient and conn.state is State.CLOSED


def test_421_to_the_final_dot():
    conn = ready()
    result, _ = run(conn, [b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
                           b"421 4.4.2 timeout\r\n"])
    assert result.message_reply.code == 421
    assert set(result.transient_failures) == set(RCPTS)


def test_connection_lost():
    conn = ready()
    tx = Transaction(conn, "a@example.org", RCPTS, MSG)
    tx.begin()
    assert tx.receive(conn.receive_data(b"250 ok\r\n250 ok\r\n")) == b""
    tx.connection_lost("timeout")
    assert tx.done
    res = tx.result
    assert set(res.failed) == set(RCPTS) and res.transient
    assert res.failed["b@example.net"].local and res.failed["b@example.net"].text == "timeout"


def test_size_exceeded_fails_locally():
    conn = ready(b"250-mx\r\n250 SIZE 10\r\n")
    tx = Transaction(conn, "a@example.org", RCPTS, MSG)
    assert tx.begin() == b"" and tx.done
    assert all(r.enhanced == "5.3.4" and r.local for r in tx.result.failed.values())
    assert not tx.result.transient


def test_smtputf8_needed_fails_locally_with_567():
    conn = ready(EHLO_PLAIN)
    tx = Transaction(conn, "a@example.org", ["jösé@example.net"], MSG)
    assert tx.begin() == b"" and tx.done
    assert tx.result.failed["jösé@example.net"].enhanced == "5.6.7"
    tx = Transaction(ready(), "a@example.org", ["jösé@example.net"], MSG)
    assert tx.begin().startswith(b"MAIL FROM:<a@example.org> SIZE=22 SMTPUTF8\r\n")


def test_two_transactions_on_one_connection():
    conn = ready()
    for _ in range(2):
        result, _ = run(conn, [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n"],
                        recipients=["b@example.net"])
        assert result.accepted == ["b@example.net"]
    assert conn.quit() == b"QUIT\r\n"


def test_transaction_needs_ready_connection():
    conn = ClientConnection("relay.example.org")
    with pytest.raises(LocalProtocolError):
        Transaction(conn, "a@example.org", RCPTS, MSG).begin()
    with pytest.raises(LocalProtocolError):
        Transaction(ready(), "a@example.org", [], MSG)


# -- purity ----------------------------------------------------------------------

def test_no_io_clock_or_randomness_imports():
    forbidden = {"socket", "asyncio", "time", "random", "os", "select", "selectors", "secrets"}
    for node in ast.walk(ast.parse(Path(client.__file__).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        assert not {n.split(".")[0] for n in names} & forbidden, names
