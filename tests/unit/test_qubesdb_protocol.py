"""qubesdb-daemon's wire protocol without sockets: the exact bytes of the header layout of
include/qubesdb.h, the decoder on split, merged and malformed input, and the client state
machine (answers in order, multi-part answers, watch events anywhere, one event per change)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.qubesdb.protocol import (
    COMMANDS,
    HEADER_SIZE,
    RESPONSES,
    Changed,
    Client,
    Decoder,
    LocalProtocolError,
    Message,
    Msg,
    Refused,
    RemoteProtocolError,
    Reply,
    WatchRefused,
    encode,
)
from ingot.signatures import DeviceError, InvalidKey, NoSpace


def raw_header(type_: int, path: bytes, data_len: int, pad: bytes = b"\0\0\0") -> bytes:
    """struct qdb_hdr by hand: uint8 type, char path[64], 3 bytes padding, uint32 LE."""
    return bytes([type_]) + path.ljust(64, b"\0") + pad + data_len.to_bytes(4, "little")


def decode_all(data: bytes, accept=RESPONSES) -> list[Message]:
    d = Decoder(accept)
    d.feed(data)
    out = []
    while (m := d.next_message()) is not None:
        out.append(m)
    return out


def events(client: Client, data: bytes) -> list:
    client.receive_data(data)
    out = []
    while (e := client.next_event()) is not None:
        out.append(e)
    return out


# --------------------------------------------------------------------------
# the layout


def test_message_numbers_are_those_of_enum_qdb_msg():
    assert [(m.name, m.value) for m in Msg] == [
        ("CMD_READ", 0), ("CMD_WRITE", 1), ("CMD_MULTIREAD", 2), ("CMD_LIST", 3),
        ("CMD_RM", 4), ("CMD_WATCH", 5), ("CMD_UNWATCH", 6), ("RESP_OK", 7),
        ("RESP_ERROR_NOENT", 8), ("RESP_ERROR", 9), ("RESP_READ", 10),
        ("RESP_MULTIREAD", 11), ("RESP_LIST", 12), ("RESP_WATCH", 13)]
    assert len(COMMANDS) == 7 and len(RESPONSES) == 7
    assert HEADER_SIZE == 72  # 1 + 64 + 3 (alignment of the uint32) + 4


def test_exact_bytes_of_a_read_request():
    rid, data = Client().read("/qubes-ip")
    assert data == (b"\x00" + b"/qubes-ip" + b"\x00" * 55 + b"\x00" * 3 + b"\x00\x00\x00\x00")
    assert data == raw_header(0, b"/qubes-ip", 0) and len(data) == 72


def test_exact_bytes_of_a_read_answer():
    data = encode(Msg.RESP_READ, "/qubes-ip", b"10.137.0.1")
    assert data[0] == 10
    assert data[1:65] == b"/qubes-ip" + bytes(55)
    assert data[65:68] == bytes(3)
    assert data[68:72] == b"\x0a\x00\x00\x00"  # data_len 10, little-endian
    assert data[72:] == b"10.137.0.1"
    # and a hand-made one, with garbage where the C struct is not meaningful, decodes
    hand = raw_header(10, b"/qubes-ip\0\x99\x98", 10, pad=b"\xaa\xbb\xcc") + b"10.137.0.1"
    assert decode_all(hand) == [Message(Msg.RESP_READ, "/qubes-ip", b"10.137.0.1")]


def test_exact_bytes_of_a_write_and_the_other_requests():
    c = Client()
    assert c.write("/a", b"xyz")[1] == raw_header(1, b"/a", 3) + b"xyz"
    assert c.multiread("")[1] == raw_header(2, b"/", 0)
    assert c.multiread("/qubes-firewall/")[1] == raw_header(2, b"/qubes-firewall/", 0)
    assert c.list("/q")[1] == raw_header(3, b"/q", 0)
    assert c.rm("/q/")[1] == raw_header(4, b"/q/", 0)
    assert c.watch("/q/") == raw_header(5, b"/q/", 0)
    assert c.unwatch("/q/") == raw_header(6, b"/q/", 0)


def test_encode_refuses_what_the_header_cannot_carry():
    for path in ("/" + "x" * 63, "/\u00e9", "/a\0b"):
        with pytest.raises(LocalProtocolError):
            encode(Msg.CMD_READ, path)
    with pytest.raises(LocalProtocolError):
        encode(Msg.CMD_WRITE, "/a", b"x" * 3073)
    assert len(encode(Msg.CMD_WRITE, "/" + "x" * 62, b"x" * 3072)) == 72 + 3072


# --------------------------------------------------------------------------
# the decoder

STREAM = (encode(Msg.RESP_READ, "/qubes-ip", b"10.137.0.1")
          + encode(Msg.RESP_WATCH, "/qubes-firewall/10.137.0.11")
          + encode(Msg.RESP_MULTIREAD, "/a", b"")
          + encode(Msg.RESP_MULTIREAD, "/b", b"x" * 3072)
          + encode(Msg.RESP_MULTIREAD, "")
          + encode(Msg.RESP_OK, "/a"))
MESSAGES = [Message(Msg.RESP_READ, "/qubes-ip", b"10.137.0.1"),
            Message(Msg.RESP_WATCH, "/qubes-firewall/10.137.0.11"),
            Message(Msg.RESP_MULTIREAD, "/a"), Message(Msg.RESP_MULTIREAD, "/b", b"x" * 3072),
            Message(Msg.RESP_MULTIREAD, ""), Message(Msg.RESP_OK, "/a")]


def test_merged_chunks():
    assert decode_all(STREAM) == MESSAGES


def test_one_byte_at_a_time():
    d = Decoder()
    out = []
    for i in range(len(STREAM)):
        d.feed(STREAM[i:i + 1])
        while (m := d.next_message()) is not None:
            out.append(m)
    assert out == MESSAGES and d.at_boundary


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_split(cuts):
    d, out, last = Decoder(), [], 0
    for cut in sorted(cuts) + [len(STREAM)]:
        d.feed(STREAM[last:cut])
        last = cut
        while (m := d.next_message()) is not None:
            out.append(m)
    assert out == MESSAGES


def test_a_command_decoder():
    data = Client().write("/a", b"v")[1] + Client().read("/b")[1]
    assert decode_all(data, COMMANDS) == [Message(Msg.CMD_WRITE, "/a", b"v"),
                                          Message(Msg.CMD_READ, "/b")]
    with pytest.raises(RemoteProtocolError, match="RESP_OK is not a command"):
        decode_all(encode(Msg.RESP_OK, "/a"), COMMANDS)


@pytest.mark.parametrize("header, message", [
    (bytes([14]) + bytes(71), "unknown message type 14"),
    (bytes([255]) + bytes(71), "unknown message type 255"),
    (raw_header(0, b"/a", 0), "CMD_READ is not a response"),
    (raw_header(10, b"/a", 3073), "data_len 3073 exceeds 3072"),
    (raw_header(10, b"/a", 0xFFFFFFFF), "data_len 4294967295 exceeds 3072"),
    (bytes([10]) + b"/" * 64 + bytes(7), "path is not NUL-terminated"),
    (raw_header(10, b"/\xc3\xa9", 0), "is not a QubesDB path"),
    (raw_header(10, b"no-slash", 0), "is not a QubesDB path"),
    (raw_header(7, b"/a", 1), "RESP_OK carries no data"),
    (raw_header(13, b"/a", 2), "RESP_WATCH carries no data"),
    (raw_header(12, b"/a", 5), "RESP_LIST carries no data"),
])
def test_a_bad_header_is_a_clear_error_at_once(header, message):
    d = Decoder()
    good = encode(Msg.RESP_OK, "/x")
    d.feed(good + header)  # no data follows: the error must not wait for it
    assert d.next_message() == Message(Msg.RESP_OK, "/x")
    with pytest.raises(RemoteProtocolError, match=message) as info:
        d.next_message()
    assert "stream offset 72" in str(info.value)
    assert isinstance(info.value, DeviceError)
    d.feed(encode(Msg.RESP_OK, "/y"))
    with pytest.raises(RemoteProtocolError, match=message):  # dead for good
        d.next_message()


def test_an_incomplete_message_waits():
    d = Decoder()
    d.feed(encode(Msg.RESP_READ, "/a", b"abc")[:-1])
    assert d.next_message() is None and not d.at_boundary
    d.feed(b"c")
    assert d.next_message() == Message(Msg.RESP_READ, "/a", b"abc") and d.at_boundary


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_give_messages_or_a_protocol_error(data):
    d = Decoder()
    d.feed(data)
    try:
        while d.next_message() is not None:
            pass
    except RemoteProtocolError:
        pass


# --------------------------------------------------------------------------
# the client


def test_read_answers_and_absence():
    c = Client()
    r1, _ = c.read("/qubes-ip")
    r2, _ = c.read("/nope")
    assert c.waiting == 2
    got = events(c, encode(Msg.RESP_READ, "/qubes-ip", b"10.137.0.1")
                 + encode(Msg.RESP_ERROR_NOENT, "/nope"))
    assert got == [Reply(r1, b"10.137.0.1"), Reply(r2, None)] and c.waiting == 0


def test_multiread_and_list_with_watch_events_in_between():
    c = Client()
    c.watch("/q/")
    events(c, encode(Msg.RESP_OK, "/q/"))
    m, _ = c.multiread("/q/")
    ls, _ = c.list("/q/")
    stream = (encode(Msg.RESP_MULTIREAD, "/q/b", b"2")
              + encode(Msg.RESP_WATCH, "/q/z")
              + encode(Msg.RESP_MULTIREAD, "/q/a", b"")
              + encode(Msg.RESP_MULTIREAD, "")
              + encode(Msg.RESP_LIST, "/q/a")
              + encode(Msg.RESP_WATCH, "/q/y")
              + encode(Msg.RESP_LIST, ""))
    for size in (1, 7, 72, len(stream)):  # the same events however the bytes are cut
        c2 = Client()
        c2.watch("/q/")
        out = events(c2, encode(Msg.RESP_OK, "/q/"))
        c2.multiread("/q/")
        c2.list("/q/")
        for i in range(0, len(stream), size):
            out += events(c2, stream[i:i + size])
        assert out == [Changed("/q/z"), Reply(m, {"/q/a": b"", "/q/b": b"2"}),
                       Changed("/q/y"), Reply(ls, ["/q/a"])]


def test_write_rm_and_refusals():
    c = Client()
    w, _ = c.write("/a", b"v")
    big, _ = c.write("/b", b"v" * 3072)
    rm, _ = c.rm("/c/")
    rm2, _ = c.rm("/d")
    got = events(c, encode(Msg.RESP_OK, "/a") + encode(Msg.RESP_ERROR, "/b")
                 + encode(Msg.RESP_OK, "/c/") + encode(Msg.RESP_ERROR_NOENT, "/d"))
    assert got[0] == Reply(w, None) and got[2] == Reply(rm, True) and got[3] == Reply(rm2, False)
    assert isinstance(got[1], Refused) and got[1].rid == big
    assert "refused to write '/b' (3072 bytes)" in got[1].reason and "3071" in got[1].reason


def test_arguments_are_checked_before_anything_is_sent():
    c = Client()
    with pytest.raises(InvalidKey):
        c.read("/a/")
    with pytest.raises(InvalidKey):
        c.write("/a b", b"")
    with pytest.raises(NoSpace):
        c.write("/a", b"x" * 3073)
    with pytest.raises(DeviceError, match="NUL"):
        c.write("/a", b"\0")
    with pytest.raises(TypeError):
        c.write("/a", "text")
    with pytest.raises(InvalidKey):
        c.watch("no-slash")
    assert c.waiting == 0


@pytest.mark.parametrize("answer, message", [
    (encode(Msg.RESP_OK, "/a"), "RESP_OK answered the CMD_READ of '/a'; expected RESP_READ"),
    (encode(Msg.RESP_READ, "/b", b"x"), "RESP_READ for '/b' answered the CMD_READ of '/a'"),
    (encode(Msg.RESP_LIST, "/a"), "RESP_LIST answered the CMD_READ"),
    (encode(Msg.RESP_WATCH, ""), "RESP_WATCH with an empty path"),
])
def test_a_wrong_answer_is_a_remote_protocol_error(answer, message):
    c = Client()
    c.read("/a")
    with pytest.raises(RemoteProtocolError, match=message):
        events(c, answer)


def test_multiread_entries_must_be_under_the_prefix_and_the_end_carry_nothing():
    c = Client()
    c.multiread("/q/")
    with pytest.raises(RemoteProtocolError, match="'/r' is not under '/q/'"):
        events(c, encode(Msg.RESP_MULTIREAD, "/r", b"x"))
    c = Client()
    c.multiread("/q/")
    with pytest.raises(RemoteProtocolError, match="end of a CMD_MULTIREAD answer carries data"):
        events(c, encode(Msg.RESP_MULTIREAD, "", b"x"))


def test_an_answer_without_a_request():
    with pytest.raises(RemoteProtocolError, match="RESP_OK arrived with no request waiting"):
        events(Client(), encode(Msg.RESP_OK, "/a"))


def test_a_pattern_is_registered_once_and_unregistered_after_the_last():
    c = Client()
    assert c.watch("/q/") != b"" and c.watch("/q/") == b"" and c.watch("") != b""
    assert c.unwatch("/q/") == b""
    assert c.unwatch("/q/") == raw_header(6, b"/q/", 0)
    assert c.unwatch("/q/") == b""  # more closes than watches: nothing to send
    assert c.unwatch("") == raw_header(6, b"/", 0)


def test_one_event_per_change_however_many_registrations_see_it():
    c = Client()
    for pattern in ("/q/", "/q/a", "/"):
        c.watch(pattern)
    assert events(c, b"".join(encode(Msg.RESP_OK, p) for p in ("/q/", "/q/a", "/"))) == []
    # the daemon fires one RESP_WATCH per matching registration, consecutively
    fired = encode(Msg.RESP_WATCH, "/q/a") * 3 + encode(Msg.RESP_WATCH, "/q/b") * 2
    assert events(c, fired * 2) == [Changed("/q/a"), Changed("/q/b")] * 2
    assert events(c, encode(Msg.RESP_WATCH, "/x")) == [Changed("/x")]


def test_events_count_only_registrations_the_daemon_confirmed():
    c = Client()
    c.watch("/q/")
    # an event fired before the daemon took the second WATCH counts one registration
    c.watch("/q/a")
    got = events(c, encode(Msg.RESP_OK, "/q/") + encode(Msg.RESP_WATCH, "/q/a")
                 + encode(Msg.RESP_OK, "/q/a") + encode(Msg.RESP_WATCH, "/q/a") * 2)
    assert got == [Changed("/q/a"), Changed("/q/a")]
    c.unwatch("/q/a")
    got = events(c, encode(Msg.RESP_WATCH, "/q/a") * 2 + encode(Msg.RESP_OK, "/q/a")
                 + encode(Msg.RESP_WATCH, "/q/a"))
    assert got == [Changed("/q/a"), Changed("/q/a")]


def test_a_refused_watch():
    c = Client()
    c.watch("/q/")
    c.watch("/q/")
    assert events(c, encode(Msg.RESP_ERROR, "/q/")) == [
        WatchRefused("/q/", "qubesdb-daemon refused to watch '/q/'")]
    assert c.watch("/q/") != b""  # registered anew
