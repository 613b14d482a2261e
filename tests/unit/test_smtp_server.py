"""The SMTP server core (and its wire helpers) driven with byte strings, no sockets."""

import ast
import base64
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ingot.plugins.smtp import server as server_mod
from ingot.plugins.smtp import wire
from ingot.plugins.smtp.server import (NEED_DATA, PAUSED, Auth, Close, Hello, LocalProtocolError,
                                       MailFrom, Message, Quit, RcptTo, Reset, ServerConnection,
                                       ServerSettings, StartTls)
from ingot.plugins.smtp.wire import CommandError, Reply, parse_mail_args, parse_path, stuff

OK = Reply.of(250, "OK", "2.0.0")
AUTH_OK = Reply.of(235, "Authentication successful", "2.7.0")
AUTH_BAD = Reply.of(535, "Authentication credentials invalid", "5.7.8")


def accept_all(ev):
    return AUTH_OK if isinstance(ev, Auth) else OK


class Peer:
    """Feeds bytes to a server core, answers pending events with ``policy``, keeps events
    and parsed replies."""

    def __init__(self, policy=accept_all, *, implicit_tls=False, **kw):
        kw.setdefault("hostname", "mx.example")
        kw.setdefault("max_message_size", 10_000)
        self.conn = ServerConnection(ServerSettings(**kw), implicit_tls=implicit_tls)
        self.policy = policy
        self.events = []
        self.conn.start()
        self.greeting = self.replies()

    def feed(self, data: bytes):
        """Feed and run until NEED_DATA / Close / StartTls; returns the new events."""
        self.conn.receive_data(data)
        return self.run()

    def run(self):
        new = []
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                if self.conn.pending is None:     # waiting for tls_started()
                    break
                self.conn.answer(self.policy(self.conn.pending))
                continue
            new.append(ev)
            if isinstance(ev, Close):
                break
        self.events += new
        return new

    def replies(self):
        """Parsed replies sent since the last call: [(code, [texts])]."""
        out = []
        cur = []
        for line in self.conn.data_to_send().decode("utf-8").split("\r\n")[:-1]:
            cur.append(line[4:])
            if line[3] == " ":
                out.append((int(line[:3]), cur))
                cur = []
        assert not cur
        return out

    def codes(self):
        return [c for c, _ in self.replies()]

    def ehlo(self):
        self.feed(b"EHLO client.example\r\n")
        return self.replies()[0][1]


def first(events, cls):
    return next(e for e in events if isinstance(e, cls))


# ---------------------------------------------------------------- wire

def test_reply_to_bytes():
    assert Reply.of(250, "a\nb", "2.1.0").to_bytes() == b"250-2.1.0 a\r\n250 2.1.0 b\r\n"
    assert Reply(334, ("",)).to_bytes() == b"334 \r\n"
    assert Reply.of(220, "hi").to_bytes() == b"220 hi\r\n"
    with pytest.raises(ValueError):
        Reply.of(250, "x\r\ny")
    with pytest.raises(ValueError):
        Reply.of(250, "x", "5.0.0")


def test_parse_command():
    assert wire.parse_command(b"mail FROM:<a@b>  \r\n") == ("MAIL", "FROM:<a@b>")
    assert wire.parse_command(b"QUIT\r\n") == ("QUIT", "")
    for bad, code in [(b"\r\n", "5.5.1"), (b"NO\0OP\r\n", "5.5.2"), (b"\xff\xfe\r\n", "5.5.2"),
                      (b"MA-IL x\r\n", "5.5.1")]:
        with pytest.raises(CommandError) as e:
            wire.parse_command(bad)
        assert e.value.reply.code == 500 and e.value.reply.enhanced == code
    with pytest.raises(CommandError):
        wire.parse_command("NOOP é\r\n".encode(), utf8=False)


@pytest.mark.parametrize("text, want", [
    ("<user@example.com>", "user@example.com"),
    ("<>", ""),
    ("<@a.example,@b.example:user@d.example>", "user@d.example"),
    ('<"john doe"@example.com>', '"john doe"@example.com'),
    ('<"a\\"b"@example.com>', '"a\\"b"@example.com'),
    ("<u@[192.0.2.1]>", "u@[192.0.2.1]"),
    ("<u@[IPv6:2001:db8::1]>", "u@[IPv6:2001:db8::1]"),
    ("<a.b+c@x-y.example>", "a.b+c@x-y.example"),
])
def test_parse_path_good(text, want):
    assert parse_path(text, allow_empty=True, utf8=False) == want


@pytest.mark.parametrize("text", [
    "user@example.com", "<user>", "<user@>", "<@example.com>", "<a..b@example.com>",
    "<.a@example.com>", "<a@-example.com>", "<a@example-.com>", "<a@[300.1.1.1]>",
    "<a@[IPv6:zz::1]>", "<" + "a" * 65 + "@example.com>", "<a@" + "b" * 64 + ".com>",
    "<a@" + ".".join(["b" * 60] * 5) + ">", "<a b@example.com>", "<a@b@c>",
])
def test_parse_path_bad(text):
    with pytest.raises(CommandError) as e:
        parse_path(text, allow_empty=True, utf8=True)
    assert e.value.reply.code == 501


def test_parse_path_limits_and_utf8():
    with pytest.raises(CommandError):
        parse_path("<>", allow_empty=False, utf8=False)
    local = "a" * 64
    assert parse_path(f"<{local}@example.com>", allow_empty=False, utf8=False)
    with pytest.raises(CommandError) as e:
        parse_path("<jörg@bücher.example>", allow_empty=False, utf8=False)
    assert (e.value.reply.code, e.value.reply.enhanced) == (553, "5.6.7")
    assert parse_path("<jörg@bücher.example>", allow_empty=False, utf8=True) == \
        "jörg@bücher.example"
    # 256 octets of path at most
    long_domain = ".".join(["d" * 60] * 4)
    with pytest.raises(CommandError):
        parse_path(f"<{'a' * 64}@{long_domain}.example>", allow_empty=False, utf8=False)


def test_parse_mail_args():
    assert parse_mail_args("FROM:<a@b.example> SIZE=12 body=8BITMIME SMTPUTF8") == \
        ("a@b.example", {"SIZE": "12", "BODY": "8BITMIME", "SMTPUTF8": None})
    assert parse_mail_args("from: <a@b.example>") == ("a@b.example", {})
    assert parse_mail_args("TO:<Postmaster>", "TO") == ("Postmaster", {})
    assert parse_mail_args('TO:<"a>b"@c.example>', "TO") == ('"a>b"@c.example', {})
    for arg, enh in [("<a@b>", "5.5.4"), ("FROM:a@b", "5.1.7"), ("FROM:<a@b> X==", "5.5.4"),
                     ("FROM:<a@b> SIZE=1 size=2", "5.5.4"), ("FROM:<a@b>SIZE=1", "5.5.4")]:
        with pytest.raises(CommandError) as e:
            parse_mail_args(arg)
        assert e.value.reply.enhanced == enh, arg
    with pytest.raises(CommandError) as e:
        parse_mail_args("TO:<>", "TO")
    assert e.value.reply.enhanced == "5.1.3"


def test_xtext():
    assert wire.xtext_decode("a+2Bb+3D") == "a+b="
    assert wire.xtext_encode("a+b= c") == "a+2Bb+3D+20c"
    with pytest.raises(ValueError):
        wire.xtext_decode("a+2")


def test_stuff():
    assert stuff(b"") == b".\r\n"
    assert stuff(b".a\n.b\r\nc") == b"..a\r\n..b\r\nc\r\n.\r\n"
    assert stuff(b"x\r\n.\r\n") == b"x\r\n..\r\n.\r\n"


# ---------------------------------------------------------------- a transaction

def test_full_transaction():
    p = Peer()
    assert p.greeting == [(220, ["mx.example ESMTP"])]
    ext = p.ehlo()
    assert ext == ["mx.example", "SIZE 10000", "8BITMIME", "SMTPUTF8", "PIPELINING",
                   "ENHANCEDSTATUSCODES"]
    assert p.events == [Hello("client.example", True)]
    p.feed(b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\n")
    mail = p.events[-1]
    assert mail == MailFrom("a@example.org", {"SIZE": "100", "BODY": "8BITMIME"}, 100,
                            "8BITMIME", False)
    p.feed(b"RCPT TO:<b@example.net>\r\n")
    assert p.events[-1] == RcptTo("b@example.net", {})
    p.feed(b"DATA\r\n")
    assert p.replies() == [(250, ["2.0.0 OK"]), (250, ["2.0.0 OK"]),
                           (354, ["End data with <CR><LF>.<CR><LF>"])]
    p.feed(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n")
    msg = p.events[-1]
    assert isinstance(msg, Message)
    assert msg.data == b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"
    env = msg.envelope
    assert (env.helo, env.sender, env.recipients, env.body, env.tls, env.auth_user) == \
        ("client.example", "a@example.org", ("b@example.net",), "8BITMIME", False, None)
    assert p.codes() == [250]
    p.feed(b"QUIT\r\n")
    assert p.events[-2:] == [Quit(), Close("quit")]
    assert p.replies() == [(221, ["2.0.0 Bye"])]
    assert p.conn.closed and p.conn.next_event() == Close("quit")


def test_pipelining_answers_in_order():
    order = []

    def policy(ev):
        order.append(type(ev).__name__)
        if isinstance(ev, RcptTo) and ev.recipient.startswith("bad"):
            return Reply.of(550, "No such user", "5.1.1")
        return OK

    p = Peer(policy)
    p.ehlo()
    c = p.conn
    c.receive_data(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<bad@y.example>\r\n"
                   b"RCPT TO:<good@y.example>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\n")
    ev = c.next_event()
    assert isinstance(ev, MailFrom)
    assert c.next_event() is PAUSED and c.next_event() is PAUSED
    assert c.data_to_send() == b""          # nothing answered yet
    c.answer(OK)
    assert isinstance(c.next_event(), RcptTo)
    assert c.data_to_send() == b"250 2.0.0 OK\r\n"
    c.answer(Reply.of(550, "No such user", "5.1.1"))
    assert c.next_event().recipient == "good@y.example"
    c.answer(OK)
    msg = c.next_event()
    assert isinstance(msg, Message) and msg.envelope.recipients == ("good@y.example",)
    assert msg.data == b"hello\r\n"
    c.answer(Reply.of(250, "Queued as 1", "2.0.0"))
    assert c.next_event() is NEED_DATA
    assert c.data_to_send() == (b"550 5.1.1 No such user\r\n250 2.0.0 OK\r\n"
                                b"354 End data with <CR><LF>.<CR><LF>\r\n"
                                b"250 2.0.0 Queued as 1\r\n250 2.0.0 OK\r\n")


def test_answer_misuse():
    p = Peer()
    with pytest.raises(LocalProtocolError):
        p.conn.answer(OK)
    p.ehlo()
    with pytest.raises(LocalProtocolError):
        p.conn.answer(OK)
    with pytest.raises(LocalProtocolError):
        p.conn.tls_started()
    c = ServerConnection(ServerSettings("h", 10))
    with pytest.raises(LocalProtocolError):
        c.next_event()
    c.start()
    with pytest.raises(LocalProtocolError):
        c.start()
    c.receive_data(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n")
    c.next_event()
    assert isinstance(c.next_event(), MailFrom)
    with pytest.raises(LocalProtocolError):
        c.answer(Reply(354, ("go",)))
    with pytest.raises(LocalProtocolError):
        c.answer("250 ok")


def test_app_421_closes():
    p = Peer(lambda ev: Reply.of(421, "Service not available", "4.3.0"))
    p.ehlo()
    p.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n")
    assert p.events[-1] == Close("421 from the application")
    assert p.codes() == [421]


# ---------------------------------------------------------------- EHLO, STARTTLS, AUTH

def test_ehlo_lists_before_and_after_tls_and_auth():
    p = Peer(starttls=True)
    ext = p.ehlo()
    assert "STARTTLS" in ext and not any(x.startswith("AUTH") for x in ext)
    p.feed(b"STARTTLS\r\n")
    assert p.events[-1] == StartTls()
    assert p.replies() == [(220, ["2.0.0 Ready to start TLS"])]
    assert p.conn.state == "tls"
    p.conn.tls_started({"version": "TLSv1.3"})
    assert p.conn.tls_active and p.conn.state == "greet"
    ext = p.ehlo()
    assert "STARTTLS" not in ext and "AUTH PLAIN LOGIN" in ext
    p.feed(b"AUTH PLAIN " + base64.b64encode(b"\0joe\0pw") + b"\r\n")
    assert p.events[-1] == Auth("PLAIN", None, "joe", "pw")
    assert p.conn.auth_user == "joe"
    ext = p.ehlo()
    assert not any(x.startswith("AUTH") for x in ext)
    p.replies()
    p.feed(b"AUTH PLAIN " + base64.b64encode(b"\0joe\0pw") + b"\r\n")
    assert p.replies() == [(503, ["5.5.1 Already authenticated"])]


def test_helo_plain_reply_and_no_params():
    p = Peer()
    p.feed(b"HELO client\r\n")
    assert p.replies() == [(250, ["mx.example"])]
    assert p.events == [Hello("client", False)]
    p.feed(b"MAIL FROM:<a@b.example> SIZE=10\r\n")
    assert p.codes() == [555]
    p.feed(b"EHLO\r\n")
    assert p.replies() == [(501, ["5.5.4 Syntax: EHLO hostname"])]


def test_implicit_tls_offers_no_starttls():
    p = Peer(starttls=True, implicit_tls=True)
    ext = p.ehlo()
    assert "STARTTLS" not in ext and "AUTH PLAIN LOGIN" in ext
    p.feed(b"STARTTLS\r\n")
    assert p.codes() == [503]
    c = ServerConnection(ServerSettings("h", 10, starttls=True))
    c.implicit_tls({"x": 1})
    assert c.tls_active and c.tls_info == {"x": 1}


def test_starttls_discards_injected_commands():
    p = Peer(starttls=True)
    p.ehlo()
    p.conn.receive_data(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\n")
    assert p.run() == [StartTls()]
    assert p.conn.next_event() is PAUSED
    p.conn.receive_data(b"more plaintext\r\n")
    p.conn.tls_started()
    p.replies()
    assert p.feed(b"") == [Close("peer closed")]
    assert not any(isinstance(e, MailFrom) for e in p.events)
    assert p.codes() == []


def test_starttls_unavailable_and_resets_state():
    p = Peer()
    p.ehlo()
    p.feed(b"STARTTLS\r\n")
    assert p.replies() == [(502, ["5.5.1 STARTTLS not available"])]
    p = Peer(starttls=True, auth_requires_tls=False)
    p.feed(b"STARTTLS\r\n")
    assert p.codes() == [503]                 # EHLO first
    p.ehlo()
    p.feed(b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\nMAIL FROM:<a@b.example>\r\n"
           b"STARTTLS\r\n")
    assert isinstance(p.events[-2], Reset) and p.events[-1] == StartTls()
    p.conn.tls_started()
    assert p.conn.auth_user is None and p.conn.helo is None
    p.replies()
    p.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert p.replies() == [(503, ["5.5.1 Send HELO/EHLO first"])]


def test_auth_before_tls_refused():
    p = Peer(starttls=True)
    p.ehlo()
    p.feed(b"AUTH PLAIN " + base64.b64encode(b"\0joe\0pw") + b"\r\n")
    assert p.replies() == [(538, ["5.7.11 Encryption required for requested authentication "
                                  "mechanism"])]
    assert not any(isinstance(e, Auth) for e in p.events)


def test_auth_plain_with_challenge_and_authzid():
    p = Peer(auth_requires_tls=False)
    assert "AUTH PLAIN LOGIN" in p.ehlo()
    p.feed(b"AUTH PLAIN\r\n")
    assert p.conn.data_to_send() == b"334 \r\n"
    p.feed(base64.b64encode("admin\0jöe\0sécret".encode()) + b"\r\n")
    assert p.events[-1] == Auth("PLAIN", "admin", "jöe", "sécret")
    assert p.replies() == [(235, ["2.7.0 Authentication successful"])]


def test_auth_login_and_failure():
    p = Peer(lambda ev: AUTH_BAD, auth_requires_tls=False)
    p.ehlo()
    p.feed(b"AUTH LOGIN\r\n")
    assert p.conn.data_to_send() == b"334 VXNlcm5hbWU6\r\n"
    p.feed(base64.b64encode(b"joe") + b"\r\n")
    assert p.conn.data_to_send() == b"334 UGFzc3dvcmQ6\r\n"
    p.feed(base64.b64encode(b"pw") + b"\r\n")
    assert p.events[-1] == Auth("LOGIN", None, "joe", "pw")
    assert p.replies() == [(535, ["5.7.8 Authentication credentials invalid"])]
    assert p.conn.auth_user is None
    # initial response carries the user name
    p.feed(b"AUTH LOGIN " + base64.b64encode(b"ann") + b"\r\n")
    assert p.conn.data_to_send() == b"334 UGFzc3dvcmQ6\r\n"
    p.feed(base64.b64encode(b"x") + b"\r\n")
    assert p.events[-1] == Auth("LOGIN", None, "ann", "x")


def test_auth_errors():
    p = Peer(auth_requires_tls=False)
    p.ehlo()
    p.feed(b"AUTH PLAIN\r\n*\r\n")
    assert p.replies() == [(334, [""]), (501, ["5.7.0 Authentication cancelled"])]
    p.feed(b"AUTH PLAIN !!!notbase64\r\n")
    assert p.replies() == [(501, ["5.5.2 Cannot decode response"])]
    p.feed(b"AUTH CRAM-MD5\r\n")
    assert p.codes() == [504]
    p.feed(b"AUTH PLAIN " + base64.b64encode(b"no-nuls") + b"\r\n")
    assert p.codes() == [501]
    p.feed(b"AUTH LOGIN\r\n*\r\n")
    assert p.codes() == [334, 501]
    p.feed(b"MAIL FROM:<a@b.example>\r\nAUTH PLAIN\r\n")
    assert p.codes() == [250, 503]
    assert not any(isinstance(e, Auth) for e in p.events)
    # a long initial response is allowed up to 12288 octets on AUTH lines
    p.feed(b"RSET\r\nAUTH PLAIN " + base64.b64encode(b"\0u\0" + b"p" * 3000) + b"\r\n")
    assert p.events[-1] == Auth("PLAIN", None, "u", "p" * 3000)


def test_require_auth():
    p = Peer(require_auth=True, auth_requires_tls=False)
    p.ehlo()
    p.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert p.replies() == [(530, ["5.7.0 Authentication required"])]
    p.feed(b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\nMAIL FROM:<a@b.example>\r\n"
           b"RCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n")
    assert p.codes() == [235, 250, 250, 354, 250]
    assert p.events[-1].envelope.auth_user == "u"


def test_require_tls():
    p = Peer(require_tls=True, starttls=True)
    p.ehlo()
    p.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert p.replies() == [(530, ["5.7.0 Must issue a STARTTLS command first"])]
    p.feed(b"STARTTLS\r\n")
    p.conn.tls_started()
    p.replies()
    p.ehlo()
    p.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n")
    assert p.events[-1].envelope.tls is True


# ---------------------------------------------------------------- sequence and syntax

@pytest.mark.parametrize("script, want", [
    (b"MAIL FROM:<a@b.example>\r\n", [(503, "5.5.1 Send HELO/EHLO first")]),
    (b"EHLO x\r\nRCPT TO:<a@b.example>\r\n", [(250, None), (503, "5.5.1 Need MAIL command")]),
    (b"EHLO x\r\nDATA\r\n", [(250, None), (503, "5.5.1 Need MAIL command")]),
    (b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n",
     [(250, None), (250, None), (503, "5.5.1 Need RCPT command")]),
    (b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n",
     [(250, None), (250, None), (503, "5.5.1 Nested MAIL command")]),
    (b"EHLO x\r\nXYZZY\r\n", [(250, None), (500, "5.5.1 Command unrecognized")]),
    (b"EHLO x\r\nBDAT 10 LAST\r\n", [(250, None), (500, "5.5.1 Command unrecognized")]),
    (b"EHLO x\r\nMAIL FROM:a@b.example\r\n", [(250, None), (501, "5.1.7 Bad sender address syntax")]),
    (b"EHLO x\r\nMAIL <a@b.example>\r\n", [(250, None), (501, "5.5.4 Syntax: MAIL FROM:<address>")]),
    (b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bad>\r\n",
     [(250, None), (250, None), (501, "5.1.3 Bad address syntax")]),
    (b"EHLO x\r\nMAIL FROM:<a@b.example> FOO=1\r\n",
     [(250, None), (555, "5.5.4 Unsupported parameter: FOO")]),
    (b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example> NOTIFY=NEVER\r\n",
     [(250, None), (250, None), (555, "5.5.4 Unsupported parameter: NOTIFY")]),
    (b"EHLO x\r\nMAIL FROM:<a@b.example> BODY=BINARYMIME\r\n",
     [(250, None), (501, "5.5.4 BODY must be 7BIT or 8BITMIME")]),
    (b"EHLO x\r\nMAIL FROM:<a@b.example> SIZE=abc\r\n", [(250, None), (501, "5.5.4 Bad SIZE value")]),
    (b"EHLO x\r\nMAIL FROM:<a@b.example> SIZE=10001\r\n",
     [(250, None), (552, "5.3.4 Message size exceeds fixed maximum message size")]),
    ("EHLO x\r\nMAIL FROM:<jörg@b.example>\r\n".encode(),
     [(250, None), (553, "5.6.7 Non-ASCII address requires SMTPUTF8")]),
    ("EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<jörg@b.example>\r\n".encode(),
     [(250, None), (250, None), (553, "5.6.7 Non-ASCII address requires SMTPUTF8")]),
    (b"EHLO x\r\nNOOP\r\nHELP\r\nVRFY joe\r\nRSET\r\n",
     [(250, None), (250, "2.0.0 OK"), (214, "2.0.0 See RFC 5321"),
      (252, "2.5.2 Cannot VRFY user, but will accept message"), (250, "2.0.0 Reset OK")]),
    (b"EHLO x\r\nRSET now\r\nDATA x\r\n",
     [(250, None), (501, "5.5.4 Syntax error: no arguments allowed"),
      (503, "5.5.1 Need MAIL command")]),
])
def test_core_replies(script, want):
    p = Peer()
    p.feed(script)
    got = p.replies()
    assert [c for c, _ in got] == [c for c, _ in want]
    for (_, text), (_, w) in zip(got, want):
        if w is not None:
            assert text == [w]


def test_data_after_all_recipients_refused():
    p = Peer(lambda ev: Reply.of(550, "no", "5.1.1") if isinstance(ev, RcptTo) else OK)
    p.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    assert p.replies()[-1] == (554, ["5.5.1 No valid recipients"])


def test_refused_sender_keeps_no_transaction():
    p = Peer(lambda ev: Reply.of(550, "no", "5.7.1"))
    p.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n")
    assert p.codes() == [250, 550, 503]


def test_smtputf8_addresses():
    p = Peer()
    p.feed("EHLO x\r\nMAIL FROM:<jörg@bücher.example> SMTPUTF8\r\nRCPT TO:<пример@почта.рф>\r\n"
           "DATA\r\nü\r\n.\r\n".encode())
    assert p.codes() == [250, 250, 250, 354, 250]
    mail = first(p.events, MailFrom)
    assert mail.sender == "jörg@bücher.example" and mail.smtputf8
    env = p.events[-1].envelope
    assert env.recipients == ("пример@почта.рф",) and env.smtputf8
    p2 = Peer(smtputf8=False)
    assert "SMTPUTF8" not in p2.ehlo()
    p2.feed(b"MAIL FROM:<a@b.example> SMTPUTF8\r\n")
    assert p2.codes() == [555]


def test_null_sender_source_route_quoted_postmaster():
    p = Peer()
    p.feed(b'EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<@relay.example:joe@d.example>\r\n'
           b'RCPT TO:<"joe q"@d.example>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<u@[192.0.2.7]>\r\n')
    assert p.codes() == [250] * 6
    assert first(p.events, MailFrom).sender == ""
    assert [e.recipient for e in p.events if isinstance(e, RcptTo)] == \
        ["joe@d.example", '"joe q"@d.example', "postmaster", "u@[192.0.2.7]"]


def test_too_many_recipients():
    p = Peer(max_recipients=3)
    p.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n" + b"RCPT TO:<c@d.example>\r\n" * 4)
    assert p.replies()[-1] == (452, ["4.5.3 Too many recipients"])
    assert sum(isinstance(e, RcptTo) for e in p.events) == 3


def test_refused_recipients_do_not_count():
    p = Peer(lambda ev: Reply.of(550, "no", "5.1.1") if isinstance(ev, RcptTo) else OK,
             max_recipients=2)
    p.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n" + b"RCPT TO:<c@d.example>\r\n" * 4)
    assert p.codes() == [250, 250, 550, 550, 550, 550]


def test_rset_semantics():
    p = Peer()
    p.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRSET\r\n"
           b"RCPT TO:<c@d.example>\r\nMAIL FROM:<e@b.example>\r\nRCPT TO:<f@d.example>\r\n"
           b"DATA\r\nx\r\n.\r\n")
    assert p.codes() == [250, 250, 250, 250, 503, 250, 250, 354, 250]
    assert Reset() in p.events
    env = p.events[-1].envelope
    assert env.sender == "e@b.example" and env.recipients == ("f@d.example",)
    assert p.conn.helo == "x"                 # RSET keeps the greeting
    # EHLO in a transaction resets it
    p.feed(b"MAIL FROM:<a@b.example>\r\nEHLO y\r\nRCPT TO:<c@d.example>\r\n")
    assert p.codes() == [250, 250, 503]
    assert isinstance(p.events[-2], Reset) and p.events[-1] == Hello("y", True)


# ---------------------------------------------------------------- command line framing

def test_command_line_too_long_is_discarded():
    p = Peer()
    p.ehlo()
    p.feed(b"NOOP " + b"x" * 600)
    assert p.replies() == [(500, ["5.5.2 Line too long"])]
    assert len(p.conn._in) == 0
    p.feed(b"y" * 100_000)                   # still the same line: dropped, not buffered
    assert len(p.conn._in) == 0 and p.codes() == []
    p.feed(b"zz\r\nNOOP\r\n")
    assert p.codes() == [250]
    line = b"NOOP " + b"x" * 505 + b"\r\n"        # 512 octets with CRLF: fine
    assert len(line) == 512
    p.feed(line + b"NOOP " + b"x" * 506 + b"\r\n")
    assert p.codes() == [250, 500]


def test_bare_lf_and_bad_bytes_in_commands():
    p = Peer()
    p.feed(b"EHLO x\nNOOP\r\nNO\rOP\r\nNOOP \xff\r\nNO\0OP\r\n")
    assert p.codes() == [500, 250, 500, 500, 500]
    assert not any(isinstance(e, Hello) for e in p.events)


def test_max_errors_closes():
    p = Peer(max_errors=3)
    p.feed(b"BAD1\r\nBAD2\r\nBAD3\r\nNOOP\r\n")
    assert p.codes() == [500, 500, 500, 421]
    assert p.events[-1] == Close("too many errors")
    assert p.conn.next_event() == Close("too many errors")


def test_peer_close_in_command_state():
    p = Peer()
    assert p.feed(b"EHLO x\r\nNOO") == [Hello("x", True)]
    assert p.feed(b"") == [Close("peer closed")]


# ---------------------------------------------------------------- DATA

def open_data(**kw):
    p = Peer(**kw)
    p.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    assert p.codes() == [250, 250, 250, 354]
    return p


def test_empty_message_and_unstuffing():
    p = open_data()
    p.feed(b".\r\n")
    assert p.events[-1].data == b""
    p = open_data()
    p.feed(b"..\r\n...x\r\na.b\r\n.\r\n")
    assert p.events[-1].data == b".\r\n..x\r\na.b\r\n"


@pytest.mark.parametrize("cut", range(1, 40))
def test_terminator_split_everywhere(cut):
    stream = b"line one\r\n..two\r\n\r\n.\r\nNOOP\r\n"
    p = open_data()
    events = p.feed(stream[:cut]) + p.feed(stream[cut:])
    msgs = [e for e in events if isinstance(e, Message)]
    assert len(msgs) == 1 and msgs[0].data == b"line one\r\n.two\r\n\r\n"
    assert p.codes() == [250, 250]


def test_byte_by_byte_feed():
    p = open_data()
    for b in b"a\r\n.b\r\n.\r\nQUIT\r\n":
        p.feed(bytes([b]))
    assert first(p.events, Message).data == b"a\r\nb\r\n"
    assert p.events[-1] == Close("quit")


def test_size_limit_in_data_and_bounded_memory():
    p = open_data(max_message_size=100_000)
    chunk = (b"x" * 70 + b"\r\n") * 900         # about 64 KB
    peak = 0
    for _ in range(300):                        # about 20 MB
        p.feed(chunk)
        peak = max(peak, p.conn.buffered_size)
    assert peak <= 100_000 + 2 * len(chunk)
    assert not any(isinstance(e, Message) for e in p.events)
    p.feed(b".\r\nNOOP\r\n")
    assert p.replies() == [(552, ["5.3.4 Message size exceeds fixed maximum message size"]),
                           (250, ["2.0.0 OK"])]
    assert not any(isinstance(e, Message) for e in p.events)
    assert p.conn.buffered_size < 100


def test_size_limit_exact_boundary():
    p = open_data(max_message_size=10)
    p.feed(b"12345678\r\n.\r\n")
    assert p.events[-1].data == b"12345678\r\n"
    p = open_data(max_message_size=10)
    p.feed(b"123456789\r\n.\r\n")
    assert p.codes() == [552]


def test_data_line_too_long():
    p = open_data()
    p.feed(b"ok\r\n" + b"y" * 999 + b"\r\nmore\r\n.\r\n")
    assert p.replies() == [(500, ["5.5.2 Line too long"])]
    assert not any(isinstance(e, Message) for e in p.events)
    p = open_data()
    p.feed(b"y" * 998 + b"\r\n.\r\n")            # exactly 1000 with CRLF
    assert isinstance(p.events[-1], Message)


def test_data_line_too_long_streamed_without_newline():
    p = open_data(max_message_size=10**9)
    for _ in range(100):
        p.feed(b"z" * 10_000)
        assert p.conn.buffered_size <= 1000
    p.feed(b"\r\n.\r\nNOOP\r\n")
    assert p.codes() == [500, 250]


@pytest.mark.parametrize("body", [b"a\nb\r\n.\r\n", b"a\rb\r\n.\r\n", b"a\r\n\n.\r\n.\r\n",
                                  b"x\r\r\n.\r\n"])
def test_bare_lf_cr_in_data(body):
    p = open_data()
    p.feed(body)
    assert p.replies() == [(550, ["5.5.2 Message contains bare LF/CR"])]
    assert not any(isinstance(e, Message) for e in p.events)


def test_bare_lf_dot_is_not_a_terminator():
    """SMTP smuggling: <LF>.<LF> or <LF>.<CRLF> must not end the message."""
    p = open_data()
    p.feed(b"a\n.\nMAIL FROM:<evil@x.example>\r\nb\r\n.\n\r\nstill data\r\n")
    assert not any(isinstance(e, (Message, MailFrom)) for e in p.events[3:])
    assert p.conn.state == "data"
    p.feed(b".\r\n")
    assert p.codes() == [550]


def test_peer_close_mid_data():
    p = open_data()
    p.feed(b"partial message\r\nno end")
    assert p.feed(b"") == [Close("peer closed during DATA")]
    assert not any(isinstance(e, Message) for e in p.events)


def test_several_messages_pipelined():
    p = Peer()
    one = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
    p.feed(b"EHLO x\r\n" + (one + b"hello\r\n.\r\n") * 50 + b"QUIT\r\n")
    msgs = [e for e in p.events if isinstance(e, Message)]
    assert len(msgs) == 50 and all(m.data == b"hello\r\n" for m in msgs)
    assert p.codes() == [250] + [250, 250, 354, 250] * 50 + [221]


# ---------------------------------------------------------------- properties

_TOKENS = [b"EHLO x\r\n", b"HELO y\r\n", b"MAIL FROM:<a@b.example>\r\n", b"MAIL FROM:<>",
           b" SIZE=99999999", b" BODY=8BITMIME", b" SMTPUTF8", b"RCPT TO:<c@d.example>\r\n",
           b"RCPT TO:<\xc3\xbc@d.example>\r\n", b"DATA\r\n", b"\r\n.\r\n", b".\r\n", b"\r\n",
           b"\n", b"\r", b".", b"..", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n",
           b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"AUTH PLAIN AHUAcA==\r\n", b"dXNlcg==\r\n",
           b"*\r\n", b"BDAT 1\r\n", b"x" * 600, b"\xff\x00", b"VRFY a\r\n"]
_input = st.lists(st.sampled_from(_TOKENS) | st.binary(max_size=20), max_size=40).map(b"".join)


def _policy(ev):
    h = hash(repr(ev)) % 4
    if isinstance(ev, Auth):
        return AUTH_OK if h else AUTH_BAD
    return [OK, OK, Reply.of(550, "no", "5.1.1"), Reply.of(451, "later", "4.3.0")][h]


@settings(max_examples=400, deadline=None)
@given(_input | st.binary(max_size=400), st.lists(st.integers(min_value=1, max_value=50),
                                                   max_size=30), st.booleans())
def test_random_input_never_raises(data, cuts, pre):
    p = Peer(_policy, max_errors=1000, auth_requires_tls=False, starttls=True)
    if pre:
        data = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n" + data
    i = 0
    for n in cuts + [len(data)]:
        chunk = data[i:i + n]
        i += n
        if chunk:
            if p.conn.state == "tls":
                p.conn.tls_started()
            p.feed(chunk)
        if p.conn.closed:
            break
    if p.conn.state == "tls":
        p.conn.tls_started()
    p.feed(b"")
    assert isinstance(p.events[-1], Close)
    out = p.conn.data_to_send()
    assert all(line[:3].isdigit() for line in out.split(b"\r\n")[:-1])


_lines = st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x."])
                  | st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                  max_size=30)


@settings(max_examples=300, deadline=None)
@given(_lines, st.integers(min_value=1, max_value=64))
def test_stuff_unstuff_round_trip(lines, chunk):
    body = b"".join(line + b"\r\n" for line in lines)
    p = open_data(max_message_size=10**6)
    wire_data = stuff(body) + b"NOOP\r\n"
    for i in range(0, len(wire_data), chunk):
        p.feed(wire_data[i:i + chunk])
    msgs = [e for e in p.events if isinstance(e, Message)]
    assert len(msgs) == 1 and msgs[0].data == body
    assert wire.unstuff(stuff(body)) == body
    assert p.codes() == [250, 250]


# ---------------------------------------------------------------- purity

def test_core_modules_import_no_io():
    forbidden = {"socket", "asyncio", "time", "random", "os", "select", "selectors", "secrets"}
    for mod in (wire, server_mod):
        tree = ast.parse(Path(mod.__file__).read_text())
        names = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                names |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0:
                names.add(n.module.split(".")[0])
        assert not names & forbidden, (mod.__name__, names & forbidden)
