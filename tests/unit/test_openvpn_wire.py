"""OpenVPN packet formats: round trips, malformed input, TCP framing, TLS-stream messages."""

from __future__ import annotations

import ast
import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.openvpn import wire
from ingot.plugins.openvpn.wire import (
    IV_PROTO_AUTH_FAIL_TEMP, IV_PROTO_AUTH_PENDING_KW, IV_PROTO_CC_EXIT_NOTIFY, IV_PROTO_DATA_V2,
    IV_PROTO_DNS_OPTION, IV_PROTO_DYN_TLS_CRYPT, IV_PROTO_NCP_P2P, IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT, ControlPacket, DataPacket, KeyMethod2, MalformedPacket,
    MessageSplitter, Opcode, TcpFramer, build_control, build_data, build_key_method_2,
    build_message, build_peer_info, build_push_reply, frame, parse_control,
    parse_control_body, parse_control_header, parse_data, parse_key_method_2, parse_peer_info,
    parse_push_reply, split_tls_auth, split_tls_crypt)

SID = bytes.fromhex("0102030405060708")
RSID = bytes.fromhex("a1a2a3a4a5a6a7a8")


def test_no_io_imports():
    tree = ast.parse(inspect.getsource(wire))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert not names & {"socket", "asyncio", "time", "random", "os", "select", "ssl"}


def test_opcode_values():
    assert [int(o) for o in Opcode] == list(range(1, 12))
    assert Opcode.P_CONTROL_HARD_RESET_CLIENT_V2 == 7 and Opcode.P_DATA_V2 == 9
    assert Opcode.P_CONTROL_WKC_V1 == 11


def test_iv_proto_flags_match_stock_client():
    # The stock 2.6.14 client sends IV_PROTO=990 (FIELD-NOTES): all but NCP_P2P of bits 1..9.
    stock = (IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | IV_PROTO_TLS_KEY_EXPORT
             | IV_PROTO_AUTH_PENDING_KW | IV_PROTO_DNS_OPTION | IV_PROTO_CC_EXIT_NOTIFY
             | IV_PROTO_AUTH_FAIL_TEMP | IV_PROTO_DYN_TLS_CRYPT)
    assert stock == 990 and not stock & IV_PROTO_NCP_P2P
    assert IV_PROTO_DATA_V2 == 2 and IV_PROTO_DYN_TLS_CRYPT == 512


CONTROL_CASES = [
    ControlPacket(Opcode.P_CONTROL_HARD_RESET_CLIENT_V2, 0, SID, (), None, 0, b""),
    ControlPacket(Opcode.P_CONTROL_HARD_RESET_SERVER_V2, 0, SID, (0,), RSID, 0, b""),
    ControlPacket(Opcode.P_CONTROL_V1, 0, SID, (1, 2, 3), RSID, 7, b"\x16\x03\x01tls"),
    ControlPacket(Opcode.P_CONTROL_V1, 5, SID, (), None, 0xFFFFFFFF, b"x" * 1200),
    ControlPacket(Opcode.P_ACK_V1, 0, SID, (4,), RSID, None, b""),
    ControlPacket(Opcode.P_ACK_V1, 2, SID, tuple(range(8)), RSID, None, b""),
    ControlPacket(Opcode.P_CONTROL_SOFT_RESET_V1, 1, SID, (), None, 0, b""),
    ControlPacket(Opcode.P_CONTROL_HARD_RESET_CLIENT_V1, 0, SID, (), None, 0, b""),
    ControlPacket(Opcode.P_CONTROL_HARD_RESET_SERVER_V1, 0, SID, (9,), RSID, 0, b""),
    ControlPacket(Opcode.P_CONTROL_HARD_RESET_CLIENT_V3, 0, SID, (), None, 0, b""),
    ControlPacket(Opcode.P_CONTROL_WKC_V1, 0, SID, (0,), RSID, 1, b"tls"),
]


@pytest.mark.parametrize("pkt", CONTROL_CASES, ids=lambda p: p.opcode.name)
def test_control_round_trip(pkt):
    data = build_control(pkt)
    assert parse_control(data) == pkt
    assert build_control(parse_control(data)) == data


def test_control_layout_bytes():
    pkt = ControlPacket(Opcode.P_CONTROL_V1, 3, SID, (0x01020304,), RSID, 5, b"hi")
    data = build_control(pkt)
    assert data[0] == 4 << 3 | 3
    assert data[1:9] == SID and data[9] == 1 and data[10:14] == b"\x01\x02\x03\x04"
    assert data[14:22] == RSID and data[22:26] == b"\x00\x00\x00\x05" and data[26:] == b"hi"
    # a client's first packet: no acks, so no remote session id
    first = build_control(CONTROL_CASES[0])
    assert first == bytes([7 << 3]) + SID + b"\x00" + b"\x00\x00\x00\x00"


@pytest.mark.parametrize("pkt", CONTROL_CASES, ids=lambda p: p.opcode.name)
def test_control_truncated_at_every_length(pkt):
    data = build_control(pkt)
    shortest = len(data) - len(pkt.payload)
    for n in range(shortest):
        with pytest.raises(MalformedPacket):
            parse_control(data[:n])


def test_control_malformed():
    good = build_control(CONTROL_CASES[2])
    with pytest.raises(MalformedPacket, match="ack count 9"):
        parse_control(good[:9] + b"\x09" + bytes(64))
    with pytest.raises(MalformedPacket, match="unknown opcode"):
        parse_control(bytes([0]) + good[1:])
    with pytest.raises(MalformedPacket, match="unknown opcode"):
        parse_control(bytes([12 << 3]) + good[1:])
    with pytest.raises(MalformedPacket, match="not a control opcode"):
        parse_control(bytes([Opcode.P_DATA_V2 << 3]) + good[1:])
    ack = build_control(CONTROL_CASES[4])
    with pytest.raises(MalformedPacket, match="after the acks"):
        parse_control(ack + b"\x00")
    with pytest.raises(MalformedPacket, match="without acks"):
        parse_control(bytes([Opcode.P_ACK_V1 << 3]) + SID + b"\x00")


def test_build_control_rejects_inconsistent():
    bad = [
        ControlPacket(Opcode.P_CONTROL_V1, 0, SID, (1,), None, 0, b""),
        ControlPacket(Opcode.P_CONTROL_V1, 0, SID, (), RSID, 0, b""),
        ControlPacket(Opcode.P_CONTROL_V1, 0, SID, (), None, None, b""),
        ControlPacket(Opcode.P_CONTROL_V1, 8, SID, (), None, 0, b""),
        ControlPacket(Opcode.P_CONTROL_V1, 0, b"short", (), None, 0, b""),
        ControlPacket(Opcode.P_CONTROL_V1, 0, SID, tuple(range(9)), RSID, 0, b""),
        ControlPacket(Opcode.P_ACK_V1, 0, SID, (1,), RSID, 3, b""),
        ControlPacket(Opcode.P_ACK_V1, 0, SID, (), None, None, b""),
        ControlPacket(Opcode.P_DATA_V1, 0, SID, (), None, 0, b""),
    ]
    for pkt in bad:
        with pytest.raises(ValueError):
            build_control(pkt)


def test_header_and_tls_auth_split():
    pkt = CONTROL_CASES[2]
    body = wire.build_control_body(pkt)
    hmac = bytes(range(32))
    wrapped = (bytes([pkt.opcode << 3]) + SID + hmac + b"\x00\x00\x00\x2a" + b"\x65\x00\x00\x01"
               + body)
    hdr = parse_control_header(wrapped)
    assert (hdr.opcode, hdr.key_id, hdr.session_id) == (Opcode.P_CONTROL_V1, 0, SID)
    f = split_tls_auth(hdr.rest, 32)
    assert f.hmac == hmac and f.replay_packet_id == 42 and f.net_time == 0x65000001
    assert parse_control_body(hdr, f.body) == pkt
    f20 = split_tls_auth(bytes(20) + bytes(8) + body, 20)
    assert f20.hmac == bytes(20) and f20.body == body
    with pytest.raises(MalformedPacket):
        split_tls_auth(bytes(39), 32)


def test_tls_crypt_split():
    rest = b"\x00\x00\x00\x01" + b"\x00\x00\x00\x02" + bytes(range(32)) + b"cipher"
    f = split_tls_crypt(rest)
    assert (f.replay_packet_id, f.net_time) == (1, 2)
    assert f.tag == bytes(range(32)) and f.ciphertext == b"cipher"
    with pytest.raises(MalformedPacket):
        split_tls_crypt(rest[:39])
    with pytest.raises(MalformedPacket):
        parse_control_header(bytes([Opcode.P_CONTROL_V1 << 3]) + SID[:7])


@pytest.mark.parametrize("pkt", [
    DataPacket(Opcode.P_DATA_V1, 0, None, b"ciphertext"),
    DataPacket(Opcode.P_DATA_V1, 7, None, b""),
    DataPacket(Opcode.P_DATA_V2, 1, 0, b"\x00\x00\x00\x01sealed"),
    DataPacket(Opcode.P_DATA_V2, 0, 0xFFFFFF, b""),
    DataPacket(Opcode.P_DATA_V2, 2, 0x123456, b"x" * 1500),
])
def test_data_round_trip(pkt):
    data = build_data(pkt)
    assert parse_data(data) == pkt
    assert data[0] == pkt.opcode << 3 | pkt.key_id
    if pkt.opcode == Opcode.P_DATA_V2:
        assert data[1:4] == pkt.peer_id.to_bytes(3, "big")
        assert wire.data_header(pkt.opcode, pkt.key_id, pkt.peer_id) == data[:4]


def test_data_malformed():
    for n in range(4):
        with pytest.raises(MalformedPacket):
            parse_data(build_data(DataPacket(Opcode.P_DATA_V2, 0, 5, b""))[:n])
    with pytest.raises(MalformedPacket):
        parse_data(b"")
    with pytest.raises(MalformedPacket, match="not a data opcode"):
        parse_data(bytes([Opcode.P_CONTROL_V1 << 3]) + bytes(20))
    with pytest.raises(MalformedPacket, match="unknown opcode"):
        parse_data(bytes([31 << 3]))
    with pytest.raises(ValueError):
        build_data(DataPacket(Opcode.P_DATA_V2, 0, None, b""))
    with pytest.raises(ValueError):
        build_data(DataPacket(Opcode.P_DATA_V1, 0, 3, b""))
    with pytest.raises(ValueError):
        build_data(DataPacket(Opcode.P_DATA_V2, 0, 1 << 24, b""))


# --- TCP framing ----------------------------------------------------------------------------

PACKETS = [build_control(p) for p in CONTROL_CASES[:4]] + [b"\x48" + bytes(100)]
STREAM = b"".join(frame(p) for p in PACKETS)


def test_frame():
    assert frame(b"abc") == b"\x00\x03abc"
    with pytest.raises(ValueError):
        frame(b"")
    with pytest.raises(ValueError):
        frame(bytes(65536))


def test_tcp_framer_split_at_every_position():
    for cut in range(len(STREAM) + 1):
        f = TcpFramer()
        assert f.feed(STREAM[:cut]) + f.feed(STREAM[cut:]) == PACKETS
        assert f.buffered == 0


def test_tcp_framer_byte_by_byte_and_two_cuts():
    f = TcpFramer()
    got = []
    for b in STREAM:
        got += f.feed(bytes([b]))
    assert got == PACKETS
    for a in range(0, len(STREAM), 7):
        for b in range(a, len(STREAM) + 1, 11):
            f = TcpFramer()
            assert f.feed(STREAM[:a]) + f.feed(STREAM[a:b]) + f.feed(STREAM[b:]) == PACKETS


def test_tcp_framer_bad_lengths():
    f = TcpFramer()
    with pytest.raises(MalformedPacket, match="length 0"):
        f.feed(b"\x00\x00")
    with pytest.raises(MalformedPacket):  # out of sync for good
        f.feed(frame(b"ok"))
    f = TcpFramer(max_packet=1600)
    assert f.feed(frame(bytes(1600))) == [bytes(1600)]
    with pytest.raises(MalformedPacket, match="1601"):
        f.feed((1601).to_bytes(2, "big"))
    with pytest.raises(ValueError):
        TcpFramer(max_packet=0)


# --- key method 2 ---------------------------------------------------------------------------

CLIENT_OPTIONS = ("V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,"
                  "auth [null-digest],keysize 256,key-method 2,tls-client")
SERVER_OPTIONS = CLIENT_OPTIONS.replace("tls-client", "tls-server")
PEER_INFO = ("IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n"
             "IV_CIPHERS=AES-256-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n"
             "IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n")


def test_key_method_2_client_round_trip():
    msg = KeyMethod2(CLIENT_OPTIONS, bytes(range(32)), bytes(range(32, 64)),
                     pre_master=bytes(range(100, 148)), username="", password="",
                     peer_info=PEER_INFO)
    data = build_key_method_2(msg)
    assert data[:5] == b"\x00\x00\x00\x00\x02"
    assert data[5:53] == msg.pre_master and data[53:85] == msg.random1
    n = int.from_bytes(data[117:119], "big")
    assert n == len(CLIENT_OPTIONS) + 1 and data[119 + n - 1] == 0
    assert data[119 + n:119 + n + 4] == b"\x00\x00\x00\x00"  # empty username, password
    back = parse_key_method_2(data, from_client=True)
    assert back == msg and back.is_client
    info = parse_peer_info(back.peer_info)
    assert info["IV_VER"] == "2.6.14" and int(info["IV_PROTO"]) & IV_PROTO_DYN_TLS_CRYPT
    assert info["IV_CIPHERS"].split(":") == ["AES-256-GCM", "CHACHA20-POLY1305"]
    assert parse_peer_info(build_peer_info(info)) == info


def test_key_method_2_server_and_auth():
    srv = KeyMethod2(SERVER_OPTIONS, bytes(32), b"\xff" * 32)
    data = build_key_method_2(srv)
    assert len(data) == 5 + 64 + 2 + len(SERVER_OPTIONS) + 1
    assert parse_key_method_2(data, from_client=False) == srv
    with_auth = KeyMethod2(SERVER_OPTIONS, bytes(32), bytes(32), username="", password="")
    assert parse_key_method_2(build_key_method_2(with_auth), from_client=False) == with_auth
    cli = KeyMethod2(CLIENT_OPTIONS, bytes(32), bytes(32), bytes(48), "alice", "s3crët", PEER_INFO)
    assert parse_key_method_2(build_key_method_2(cli), from_client=True) == cli


def test_key_method_2_malformed():
    cli = KeyMethod2(CLIENT_OPTIONS, bytes(32), bytes(32), bytes(48), "alice", "pw", PEER_INFO)
    data = build_key_method_2(cli)
    for n in range(len(data)):
        try:
            parse_key_method_2(data[:n], from_client=True)
        except MalformedPacket:
            pass
        else:  # a prefix ending exactly after a string is a shorter, valid message
            assert n in _string_ends(data)
    with pytest.raises(MalformedPacket, match="4 zero"):
        parse_key_method_2(b"\x00\x00\x00\x01" + data[4:], from_client=True)
    with pytest.raises(MalformedPacket, match="key method 1"):
        parse_key_method_2(data[:4] + b"\x01" + data[5:], from_client=True)
    with pytest.raises(MalformedPacket, match="after"):
        parse_key_method_2(data + b"\x00\x00", from_client=True)
    no_nul = data[:117] + b"\x00\x01a" + b"\x00\x00"
    with pytest.raises(MalformedPacket, match="NUL"):
        parse_key_method_2(no_nul, from_client=True)
    with pytest.raises(MalformedPacket, match="UTF-8"):
        parse_key_method_2(data[:117] + b"\x00\x02\xff\x00", from_client=True)
    with pytest.raises(ValueError):
        build_key_method_2(KeyMethod2("x", bytes(31), bytes(32)))


def _string_ends(data):
    pos, ends = 117, []
    while pos < len(data):
        pos += 2 + int.from_bytes(data[pos:pos + 2], "big")
        ends.append(pos)
    return ends


# --- text control messages ------------------------------------------------------------------

REPLY = ("PUSH_REPLY,route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 120,"
         "ifconfig 10.8.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM,"
         "protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500")


def test_push_reply_parse():
    r = parse_push_reply(REPLY)
    assert r.options[0] == ("route-gateway", "10.8.0.1")
    assert r.get("ifconfig") == ("10.8.0.2", "255.255.255.0")
    assert r.get("protocol-flags") == ("cc-exit", "tls-ekm", "dyn-tls-crypt")
    assert r.get("peer-id") == ("0",) and r.get("cipher") == ("AES-256-GCM",)
    assert r.get("tun-mtu") == ("1500",) and r.get("route") is None
    assert [o[0] for o in r.options] == ["route-gateway", "topology", "ping", "ping-restart",
                                         "ifconfig", "peer-id", "cipher", "protocol-flags",
                                         "tun-mtu"]
    assert r.continuation is None
    assert build_push_reply(r.options) == REPLY


def test_push_reply_quotes_continuation_and_repeats():
    text = ('PUSH_REPLY,dhcp-option DOMAIN "corp example",route 10.1.0.0 255.255.0.0,,'
            'route 10.2.0.0 255.255.0.0,push-continuation 2')
    r = parse_push_reply(text)
    assert r.get("dhcp-option") == ("DOMAIN", "corp example")
    assert r.all("route") == [("10.1.0.0", "255.255.0.0"), ("10.2.0.0", "255.255.0.0")]
    assert r.continuation == 2
    assert parse_push_reply(build_push_reply(r.options, 2)) == r
    for bad in ("PUSH_REQUEST", "PUSH_REPLY,x \"open", "PUSH_REPLY,push-continuation 3"):
        with pytest.raises(MalformedPacket):
            parse_push_reply(bad)
    with pytest.raises(ValueError):
        build_push_reply([("route", "a,b")])


def test_message_splitter():
    stream = build_message(wire.PUSH_REQUEST) + build_message(REPLY)
    assert stream.endswith(b"\x00") and stream.startswith(b"PUSH_REQUEST\x00")
    for cut in range(len(stream) + 1):
        s = MessageSplitter()
        assert s.feed(stream[:cut]) + s.feed(stream[cut:]) == [wire.PUSH_REQUEST, REPLY]
    s = MessageSplitter(max_message=16)
    assert s.feed(b"\xff\x00AUTH_FAILED\x00") == ["AUTH_FAILED"]
    assert s.dropped == 1 and "UTF-8" in s.last_error
    assert s.feed(b"x" * 40) == [] and s.dropped == 2
    assert s.feed(b"yyy\x00RESTART\x00") == ["RESTART"]  # the long one skipped to its NUL
    with pytest.raises(ValueError):
        build_message("a\x00b")


# --- robustness -----------------------------------------------------------------------------

PARSERS = [
    parse_control, parse_data, parse_control_header,
    lambda b: parse_key_method_2(b, from_client=True),
    lambda b: parse_key_method_2(b, from_client=False),
    lambda b: split_tls_auth(b, 20), split_tls_crypt,
    lambda b: parse_push_reply(b.decode("latin-1")),
    lambda b: parse_peer_info(b.decode("latin-1")),
    lambda b: TcpFramer(max_packet=64).feed(b),
    lambda b: MessageSplitter(max_message=8).feed(b),
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(range(len(PARSERS))))
def test_random_bytes_only_raise_malformed(data, which):
    try:
        PARSERS[which](data)
    except MalformedPacket:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CONTROL_CASES), st.integers(0, 300), st.integers(0, 255))
def test_mutated_control_only_raises_malformed(pkt, pos, value):
    data = bytearray(build_control(pkt))
    data[pos % len(data)] = value
    try:
        back = parse_control(bytes(data))
    except MalformedPacket:
        return
    assert build_control(back) == bytes(data)
