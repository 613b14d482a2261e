"""The control channel reliability layer and the data channel replay window: time is an input."""

from __future__ import annotations

import ast
import inspect
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plugins.openvpn import reliable
from ingot.plugins.openvpn.reliable import (RELIABLE_ACK_SIZE, Outgoing, ReliableChannel,
                                            ReplayWindow)

S = 1_000_000_000


def test_no_io_imports():
    tree = ast.parse(inspect.getsource(reliable))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert not names & {"socket", "asyncio", "time", "random", "os", "select"}


# --- incoming -------------------------------------------------------------------------------

def test_in_order_delivery_and_acks():
    ch = ReliableChannel()
    assert ch.receive(0, b"a") == [b"a"]
    assert ch.receive(1, b"b") == [b"b"]
    assert ch.acks_pending() == [0, 1]
    assert ch.standalone_ack_due(0) == (0, 1)
    assert ch.acks_pending() == [] and ch.standalone_ack_due(0) == ()
    assert ch.stats.delivered == 2


def test_reordering_within_window():
    ch = ReliableChannel(window=8)
    assert ch.receive(2, b"c") == []
    assert ch.receive(1, b"b") == []
    assert ch.receive(7, b"h") == []
    assert ch.receive(0, b"a") == [b"a", b"b", b"c"]
    assert ch.acks_pending() == [2, 1, 7, 0]
    for i in (3, 4, 5):
        ch.receive(i, bytes([97 + i]))
    assert ch.receive(6, b"g") == [b"g", b"h"]


def test_duplicates_dropped_but_acked_again():
    ch = ReliableChannel()
    ch.receive(0, b"a")
    ch.receive(2, b"c")
    ch.standalone_ack_due(0)
    assert ch.receive(0, b"a") == []  # already delivered
    assert ch.receive(2, b"c") == []  # already buffered
    assert ch.stats.duplicates == 2
    assert ch.acks_pending() == [0, 2]  # the first acks may have been lost
    assert ch.receive(1, b"b") == [b"b", b"c"]


def test_out_of_window_dropped_not_acked():
    ch = ReliableChannel(window=4)
    assert ch.receive(4, b"x") == []
    assert ch.receive(1000, b"x") == []
    assert ch.stats.out_of_window == 2 and ch.acks_pending() == []
    assert ch.receive(3, b"d") == []  # the window's last slot is fine
    assert ch.acks_pending() == [3]


def test_ack_limits():
    ch = ReliableChannel(window=16)
    for i in range(1, 13):
        ch.receive(i, b"x")
    assert len(ch.acks_pending()) == RELIABLE_ACK_SIZE == 8
    first = ch.standalone_ack_due(0)
    second = ch.standalone_ack_due(0)
    assert len(first) == 8 and len(second) == 4 and set(first + second) == set(range(1, 13))
    # piggybacked acks are capped at CONTROL_SEND_ACK_MAX = 4 per packet
    for i in range(13, 16):
        ch.receive(i, b"x")
    ch.receive(0, b"x")
    ch.send(b"p1")
    ch.send(b"p2")
    out = ch.packets_due(0)
    assert [len(o.acks) for o in out] == [4, 0]
    assert ch.standalone_ack_due(0) == ()


def test_ack_delay():
    ch = ReliableChannel(ack_delay_ns=S // 10)
    ch.receive(0, b"a", now_ns=5 * S)
    assert ch.next_deadline() == 5 * S + S // 10
    assert ch.standalone_ack_due(5 * S) == ()
    assert ch.standalone_ack_due(5 * S + S // 10) == (0,)
    assert ch.next_deadline() is None


# --- outgoing -------------------------------------------------------------------------------

def test_first_send_and_retransmission_backoff():
    ch = ReliableChannel(initial_timeout_ns=2 * S, max_timeout_ns=8 * S)
    assert ch.send(b"hello") == [0]
    assert ch.next_deadline() == 0
    assert ch.packets_due(0) == [Outgoing(0, b"hello", (), False)]
    assert ch.packets_due(1) == []
    assert ch.next_deadline() == 2 * S
    times = []
    t = 0
    while t <= 40 * S:
        if ch.packets_due(t):
            times.append(t)
        t += S // 2
    # sent at 0; retries after 2 s, then 4, 8, 8, 8 (capped)
    assert times == [2 * S, 6 * S, 14 * S, 22 * S, 30 * S, 38 * S]
    assert ch.stats.retransmitted == 6 and ch.stats.sent == 1


def test_ack_release():
    ch = ReliableChannel()
    ch.send(b"a")
    ch.send(b"b")
    ch.packets_due(0)
    assert ch.ack_received([1]) == 1 and ch.unacked == 1
    assert [o.packet_id for o in ch.packets_due(2 * S)] == [0]
    assert ch.ack_received([0, 0, 99]) == 1
    assert ch.stats.unknown_acks == 2
    assert ch.unacked == 0 and ch.packets_due(100 * S) == [] and ch.next_deadline() is None


def test_ack_of_unsent_packet_ignored():
    ch = ReliableChannel(window=1)
    ch.send(b"a")
    ch.send(b"b")
    ch.packets_due(0)
    assert ch.ack_received([1]) == 0 and ch.unacked == 2


def test_window_full_blocks_new_sends():
    ch = ReliableChannel(window=8)
    for i in range(10):
        ch.send(bytes([i]))
    assert [o.packet_id for o in ch.packets_due(0)] == list(range(8))
    assert ch.packets_due(0) == []
    ch.ack_received([3])  # not the oldest: the window does not move
    assert ch.packets_due(0) == []
    ch.ack_received([0])
    assert [o.packet_id for o in ch.packets_due(0)] == [8]
    ch.ack_received([1, 2])
    assert [o.packet_id for o in ch.packets_due(0)] == [9]


def test_max_payload_split():
    ch = ReliableChannel(max_payload=4)
    assert ch.send(b"0123456789") == [0, 1, 2]
    assert [o.payload for o in ch.packets_due(0)] == [b"0123", b"4567", b"89"]
    with pytest.raises(ValueError):
        ch.send(b"")


def test_constructor_checks():
    for kw in ({"window": 0}, {"initial_timeout_ns": 0}, {"max_timeout_ns": 1},
               {"max_payload": 0}, {"piggyback_acks": 9}):
        with pytest.raises(ValueError):
            ReliableChannel(**kw)


# --- two channels over a lossy link ---------------------------------------------------------

def run_link(seed: int, messages: list[bytes], loss: float, window: int = 8,
             max_payload: int = 50) -> tuple[bytes, ReliableChannel, ReliableChannel]:
    """Two channels, a link with seeded loss, reordering and delay, and a fake clock."""
    rng = random.Random(seed)
    a = ReliableChannel(initial_timeout_ns=S // 5, max_timeout_ns=2 * S, window=window,
                        max_payload=max_payload, ack_delay_ns=S // 100)
    b = ReliableChannel(initial_timeout_ns=S // 5, max_timeout_ns=2 * S, window=window,
                        max_payload=max_payload, ack_delay_ns=S // 100)
    for m in messages:
        a.send(m)
    in_flight: list[tuple[int, int, object, tuple]] = []  # (arrival, seq, dest, packet)
    seq = 0
    got = bytearray()
    now = 0

    def transmit(dest, packet):
        nonlocal seq
        if rng.random() < loss:
            return
        seq += 1
        in_flight.append((now + rng.randrange(S // 1000, S // 20), seq, dest, packet))

    for _ in range(200_000):
        for src, dst in ((a, b), (b, a)):
            for o in src.packets_due(now):
                transmit(dst, ("ctl", o.packet_id, o.payload, o.acks))
            while acks := src.standalone_ack_due(now):
                transmit(dst, ("ack", acks))
        deadlines = [d for d in (a.next_deadline(), b.next_deadline()) if d is not None]
        arrivals = [t for t, *_ in in_flight]
        if not arrivals and a.unacked == 0 and not deadlines:
            break
        now = max(now, min(deadlines + arrivals))
        in_flight.sort(key=lambda x: (x[0], x[1]))
        while in_flight and in_flight[0][0] <= now:
            _, _, dst, pkt = in_flight.pop(0)
            if pkt[0] == "ctl":
                _, pid, payload, acks = pkt
                dst.ack_received(acks)
                for chunk in dst.receive(pid, payload, now):
                    if dst is b:
                        got += chunk
            else:
                dst.ack_received(pkt[1])
    assert a.unacked == 0
    return bytes(got), a, b


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("loss", [0.0, 0.2, 0.5])
def test_lossy_link_delivers_everything_once_in_order(seed, loss):
    messages = [bytes([i % 256]) * (1 + (i * 37) % 180) for i in range(60)]
    got, a, b = run_link(seed, messages, loss)
    assert got == b"".join(messages)
    if loss:
        assert a.stats.retransmitted > 0
    assert b.stats.delivered == a.stats.sent


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.floats(0, 0.6), st.integers(1, 12))
def test_lossy_link_property(seed, loss, window):
    messages = [bytes([i]) * (i + 1) for i in range(20)]
    got, _, _ = run_link(seed, messages, loss, window=window, max_payload=7)
    assert got == b"".join(messages)


# --- replay window --------------------------------------------------------------------------

def test_replay_window_basics():
    w = ReplayWindow(size=64)
    assert not w.check_and_update(0) and w.stats.zero == 1
    assert w.check_and_update(1)
    assert not w.check_and_update(1) and w.stats.duplicate == 1
    assert w.check_and_update(3) and w.check_and_update(2)
    assert not w.check_and_update(2)
    assert w.check(4) and w.check(4)  # check alone records nothing
    assert w.stats.accepted == 3


def test_replay_window_edges():
    w = ReplayWindow(size=64)
    assert w.check_and_update(100)
    assert w.check_and_update(37)  # 100 - 37 = 63: the oldest slot
    assert not w.check_and_update(36) and w.stats.too_old == 1
    assert not w.check_and_update(37)
    assert w.check_and_update(100 + 64)  # a jump of exactly the size clears everything
    assert not w.check_and_update(100) and w.check_and_update(101)
    assert w.check_and_update(10_000) and not w.check_and_update(101)
    assert not w.check_and_update(2**32) and w.stats.out_of_range == 1
    assert not w.check_and_update(-1)


def test_replay_window_exhausted():
    w = ReplayWindow(size=8, max_id=10)
    assert w.check_and_update(9) and not w.exhausted
    assert w.check_and_update(10) and w.exhausted
    assert not w.check_and_update(11)
    assert w.check_and_update(8)  # late packets still count until renegotiation
    w32 = ReplayWindow()
    assert w32.check_and_update(0xFFFFFFFF) and w32.exhausted
    with pytest.raises(ValueError):
        ReplayWindow(size=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=200), st.integers(1, 70))
def test_replay_window_matches_model(ids, size):
    w = ReplayWindow(size=size)
    seen: set[int] = set()
    highest = 0
    for pid in ids:
        expect = pid != 0 and pid not in seen and pid > highest - size
        assert w.check_and_update(pid) == expect
        if expect:
            seen.add(pid)
            highest = max(highest, pid)
