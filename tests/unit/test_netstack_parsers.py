"""Every parser, given any bytes, returns a value or raises ParseError, and
nothing else; the state machines never raise on what parsers return. Also
the package's rule: no I/O, clock or randomness imports."""

import ast
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingot.plugins.netstack import (arp, ethernet, icmp, icmpv6, ipv4, ipv6, tcp, udp)
from ingot.plugins.netstack.errors import ParseError

PACKAGE = Path(ipv4.__file__).resolve().parent
FORBIDDEN = {"socket", "asyncio", "time", "random", "os", "select", "selectors",
             "subprocess", "threading", "signal"}
LAYERS = {"ethernet", "arp", "ipv4", "icmp", "udp", "tcp", "ipv6", "icmpv6"}

A, B = bytes([10, 137, 0, 1]), bytes([10, 137, 0, 2])
A6, B6 = ipv6.addr("fd00::1"), ipv6.addr("fd00::2")

PARSERS = {
    "ethernet": ethernet.parse,
    "arp": arp.parse,
    "ipv4": ipv4.parse,
    "ipv4-nocheck": lambda d: ipv4.parse(d, verify_checksum=False),
    "icmp": icmp.parse,
    "icmp-quote": lambda d: icmp.quoted_header(icmp.parse(d, verify_checksum=False)),
    "udp": udp.parse,
    "udp4": lambda d: udp.parse(d, A, B),
    "udp6": lambda d: udp.parse(d, A6, B6),
    "tcp": tcp.parse,
    "tcp4": lambda d: tcp.parse(d, A, B),
    "tcp6": lambda d: tcp.parse(d, A6, B6),
    "tcp-options": tcp.parse_options,
    "ipv6": ipv6.parse,
    "icmpv6": icmpv6.parse,
    "icmpv6-sum": lambda d: icmpv6.parse(d, A6, B6),
    "icmpv6-echo": lambda d: icmpv6.parse(d).echo(),
}

# Valid packets of each kind, to mutate: random bytes seldom get past a
# version check or a checksum, mutated valid ones do.
SEEDS = [
    ethernet.build(ethernet.BROADCAST, b"\x02" * 6, 0x0806,
                   arp.build(arp.ArpPacket(1, b"\x02" * 6, A, bytes(6), B))),
    ipv4.build(A, B, 17, udp.build(1, 53, b"query", A, B), options=b"\x94\x04\x00\x00"),
    ipv4.build(A, B, 6, tcp.build(1, 2, 3, 4, tcp.SYN, 5, src=A, dst=B,
                                  options=[tcp.Mss(1460), tcp.Timestamps(1, 2)])),
    icmp.dest_unreachable(3, ipv4.build(A, B, 17, bytes(16))),
    tcp.build(1, 2, 3, 4, tcp.ACK, 5, b"data", src=A6, dst=B6,
              options=[tcp.Sack(((1, 2), (3, 4))), tcp.WindowScale(7)]),
    ipv6.build(A6, B6, ipv6.HOP_BY_HOP, ipv6.options_header(ipv6.FRAGMENT)
               + ipv6.fragment_header(58, 0, True, 1) + icmpv6.echo_request(1, 2, b"x", A6, B6)),
]


@st.composite
def mutated(draw) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[draw(st.integers(0, 14)):][:draw(st.integers(0, len(raw)))])


inputs = st.binary(max_size=120) | mutated()


def parses_or_refuses(parser, data: bytes) -> None:
    try:
        parser(data)
    except ParseError as err:
        assert err.layer in LAYERS
        assert str(err) == f"{err.layer}: {err.reason}"


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_any_bytes_give_a_value_or_a_parse_error(name):
    parser = PARSERS[name]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(inputs)
    def check(data):
        parses_or_refuses(parser, data)
        parses_or_refuses(parser, memoryview(bytearray(data)))

    check()


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"[0-9a-f:.]{0,40}", fullmatch=True))
def test_text_parsers(text):
    for parser in (ethernet.mac_from_str, ipv4.addr, ipv6.addr):
        parses_or_refuses(parser, text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(inputs, st.integers(0, 40 * 10**9)), max_size=12))
def test_the_reassembler_takes_anything_a_parser_returns(items):
    r = ipv4.Reassembler(max_bytes=8000)
    for data, now in sorted(items, key=lambda x: x[1]):
        try:
            pkt = ipv4.parse(data, verify_checksum=False)
        except ParseError:
            continue
        r.push(pkt, now)
        assert r.bytes_in_flight <= 8000
        r.expire(now)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=28, max_size=28), st.integers(0, 10**11)),
                max_size=12))
def test_the_arp_cache_takes_anything_a_parser_returns(items):
    cache = arp.ArpCache(b"\x02" * 6, [A], queue_per_ip=2, max_pending=2, max_entries=2)
    for data, now in sorted(items, key=lambda x: x[1]):
        raw = bytearray(data)
        raw[:6] = b"\x00\x01\x08\x00\x06\x04"
        raw[6:8] = (1 + data[7] % 2).to_bytes(2, "big")
        pkt = arp.parse(raw)
        cache.input(pkt, now)
        cache.resolve(pkt.spa, data, now)
        cache.tick(now)
        assert len(cache.pending()) <= 2 and len(cache.entries(now)) <= 2


def _modules() -> list[Path]:
    return sorted(PACKAGE.glob("*.py"))


def test_no_io_clock_or_randomness_imports():
    assert len(_modules()) >= 10
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
        calls = {n.func.id for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not calls & {"__import__", "open", "exec", "eval"}, path.name


def test_package_init_is_only_a_docstring():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)
    assert isinstance(tree.body[0].value, ast.Constant) and len(tree.body[0].value.value) > 200


def test_modules_stay_small_and_document_their_errors():
    for path in _modules():
        text = path.read_text()
        assert len(text.splitlines()) <= 600, path.name
        doc = ast.get_docstring(ast.parse(text))
        assert doc, path.name
        if "def parse" in text:
            assert "ParseError" in doc, f"{path.name} does not say what its parser raises"
