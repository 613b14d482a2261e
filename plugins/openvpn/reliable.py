"""The control channel's reliability layer, and the data channel's replay window; sans-I/O.

OpenVPN runs TLS over UDP by giving every control packet (except P_ACK_V1) a
32-bit message packet id, starting at 0 per key, which the receiver
acknowledges in the ack array of a later control packet or of a P_ACK_V1. The
sender retransmits what stays unacknowledged, with a timeout that doubles on
each retry (``initial_timeout_ns`` up to ``max_timeout_ns``); the receiver
buffers ids ahead of the next expected one, within ``window``, and hands the
payloads over in order. The payloads are a byte stream (TLS records cut
anywhere), so ``send`` may split a message at ``max_payload``.

Time is an input: every method that depends on it takes ``now_ns``
(monotonic nanoseconds); ``next_deadline()`` says when to call again.

Limits from OpenVPN (reliable.h, ssl_pkt.h): an ack array holds at most
``RELIABLE_ACK_SIZE`` = 8 ids (a P_ACK_V1 carries up to that many);
OpenVPN piggybacks at most ``CONTROL_SEND_ACK_MAX`` = 4 on other control
packets. A packet id outside ``[next_expected, next_expected + window)`` is
dropped without an ack (counted); a duplicate is dropped but acked again, since
its ack may have been lost.

One round of a caller (adapter)::

    for out in chan.packets_due(now):            # first sends and retransmissions
        send(P_CONTROL_V1 with out.packet_id, out.acks, out.payload)
    while acks := chan.standalone_ack_due(now):  # what no packet carried
        send(P_ACK_V1 with acks)
    arm a timer for chan.next_deadline()
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Outgoing", "ReliableStats", "ReliableChannel", "ReplayWindow", "ReplayStats",
           "RELIABLE_ACK_SIZE", "CONTROL_SEND_ACK_MAX", "MAX_PACKET_ID"]

RELIABLE_ACK_SIZE = 8
CONTROL_SEND_ACK_MAX = 4
MAX_PACKET_ID = 0xFFFFFFFF


@dataclass(frozen=True)
class Outgoing:
    """One control packet to put on the wire now; ``acks`` are ids to piggyback."""

    packet_id: int
    payload: bytes
    acks: tuple[int, ...]
    retransmission: bool = False


@dataclass
class ReliableStats:
    sent: int = 0
    retransmitted: int = 0
    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    out_of_window: int = 0
    unknown_acks: int = 0


@dataclass
class _Slot:
    packet_id: int
    payload: bytes
    sent: bool = False
    timeout_ns: int = 0
    next_try_ns: int = 0


class ReliableChannel:
    """Both directions of one key's control channel reliability.

    ``window`` bounds both the packets in flight (ids from the oldest
    unacknowledged one) and the ids the receiver buffers ahead of the next
    expected one; both ends must agree on it (the default 8 is this layer's,
    set it to the stock peer's buffer count if it is smaller). ``ack_delay_ns``
    lets acks wait that long for a packet to ride on before
    ``standalone_ack_due`` hands them out (0: at once).
    """

    def __init__(self, initial_timeout_ns: int = 2_000_000_000,
                 max_timeout_ns: int = 60_000_000_000, window: int = 8,
                 max_payload: int | None = None, *, ack_delay_ns: int = 0,
                 piggyback_acks: int = CONTROL_SEND_ACK_MAX) -> None:
        if initial_timeout_ns <= 0 or max_timeout_ns < initial_timeout_ns:
            raise ValueError("need 0 < initial_timeout_ns <= max_timeout_ns")
        if window < 1:
            raise ValueError("window must be at least 1")
        if max_payload is not None and max_payload < 1:
            raise ValueError("max_payload must be positive")
        if not 0 <= piggyback_acks <= RELIABLE_ACK_SIZE:
            raise ValueError(f"piggyback_acks must be in 0..{RELIABLE_ACK_SIZE}")
        self.initial_timeout_ns = initial_timeout_ns
        self.max_timeout_ns = max_timeout_ns
        self.window = window
        self.max_payload = max_payload
        self.ack_delay_ns = ack_delay_ns
        self.piggyback_acks = piggyback_acks
        self.stats = ReliableStats()
        # outgoing
        self._next_send_id = 0
        self._unacked: dict[int, _Slot] = {}  # by packet id, insertion = id order
        # incoming
        self._next_expected = 0
        self._ahead: dict[int, bytes] = {}
        self._acks: list[int] = []
        self._acks_since_ns: int | None = None

    # --- outgoing ---------------------------------------------------------------------------

    def send(self, payload: bytes) -> list[int]:
        """Queue ``payload`` (split at ``max_payload``); returns the packet ids it got."""
        if not payload:
            raise ValueError("empty payload")
        step = self.max_payload or len(payload)
        ids = []
        for off in range(0, len(payload), step):
            if self._next_send_id > MAX_PACKET_ID:
                raise OverflowError("control channel packet ids exhausted; renegotiate")
            pid = self._next_send_id
            self._next_send_id += 1
            self._unacked[pid] = _Slot(pid, bytes(payload[off:off + step]))
            ids.append(pid)
        return ids

    @property
    def unacked(self) -> int:
        """Packets queued or in flight, not yet acknowledged."""
        return len(self._unacked)

    def _window_end(self) -> int:
        base = next(iter(self._unacked), self._next_send_id)
        return base + self.window

    def packets_due(self, now_ns: int) -> list[Outgoing]:
        """First transmissions within the window and retransmissions whose timer ran out."""
        out = []
        end = self._window_end()
        for slot in self._unacked.values():
            if slot.packet_id >= end:
                break
            if not slot.sent:
                slot.sent = True
                slot.timeout_ns = self.initial_timeout_ns
                retrans = False
                self.stats.sent += 1
            elif now_ns >= slot.next_try_ns:
                slot.timeout_ns = min(slot.timeout_ns * 2, self.max_timeout_ns)
                retrans = True
                self.stats.retransmitted += 1
            else:
                continue
            slot.next_try_ns = now_ns + slot.timeout_ns
            out.append(Outgoing(slot.packet_id, slot.payload,
                                self._take_acks(self.piggyback_acks), retrans))
        return out

    def ack_received(self, packet_ids) -> int:
        """Release acknowledged packets; returns how many were released."""
        released = 0
        for pid in packet_ids:
            slot = self._unacked.get(pid)
            if slot is not None and slot.sent:
                del self._unacked[pid]
                released += 1
            else:
                self.stats.unknown_acks += 1
        return released

    # --- incoming ---------------------------------------------------------------------------

    def receive(self, packet_id: int, payload: bytes, now_ns: int = 0) -> list[bytes]:
        """Take a received packet; returns the payloads now deliverable, in order."""
        self.stats.received += 1
        if packet_id < self._next_expected or packet_id in self._ahead:
            self.stats.duplicates += 1
            self._record_ack(packet_id, now_ns)
            return []
        if packet_id >= self._next_expected + self.window:
            self.stats.out_of_window += 1
            return []
        self._record_ack(packet_id, now_ns)
        self._ahead[packet_id] = bytes(payload)
        out = []
        while self._next_expected in self._ahead:
            out.append(self._ahead.pop(self._next_expected))
            self._next_expected += 1
        self.stats.delivered += len(out)
        return out

    def _record_ack(self, packet_id: int, now_ns: int) -> None:
        if packet_id not in self._acks:
            self._acks.append(packet_id)
        if self._acks_since_ns is None:
            self._acks_since_ns = now_ns

    def _take_acks(self, limit: int) -> tuple[int, ...]:
        taken, self._acks = self._acks[:limit], self._acks[limit:]
        if not self._acks:
            self._acks_since_ns = None
        return tuple(taken)

    def acks_pending(self) -> list[int]:
        """The ids waiting to be acked that fit in one ack array (a peek; nothing is taken)."""
        return self._acks[:RELIABLE_ACK_SIZE]

    def standalone_ack_due(self, now_ns: int) -> tuple[int, ...]:
        """Acks for a P_ACK_V1 now (taken; up to 8), or ``()`` when none are due yet.

        Call after ``packets_due`` so that acks ride on packets when they can;
        call again while it returns acks.
        """
        if not self._acks or now_ns < self._acks_since_ns + self.ack_delay_ns:
            return ()
        return self._take_acks(RELIABLE_ACK_SIZE)

    def next_deadline(self) -> int | None:
        """When ``packets_due`` / ``standalone_ack_due`` next have work: ns, or None.

        A packet that can go out at once (queued within the window) gives 0.
        """
        times = []
        end = self._window_end()
        for slot in self._unacked.values():
            if slot.packet_id >= end:
                break
            times.append(slot.next_try_ns if slot.sent else 0)
        if self._acks:
            times.append(self._acks_since_ns + self.ack_delay_ns)
        return min(times) if times else None


# --- data channel replay protection ---------------------------------------------------------

@dataclass
class ReplayStats:
    accepted: int = 0
    zero: int = 0
    duplicate: int = 0
    too_old: int = 0
    out_of_range: int = 0


@dataclass
class ReplayWindow:
    """Sliding-bitmap replay check for data channel packet ids (1..2**32-1).

    ``check_and_update`` accepts an id once: new highest ids slide the window,
    older ones within ``size`` of the highest are checked against the bitmap.
    Call it only after the packet authenticated. ``exhausted`` turns true when
    the highest id reaches ``max_id``: no later id can come, renegotiate.
    """

    size: int = 64
    max_id: int = MAX_PACKET_ID
    highest: int = 0
    stats: ReplayStats = field(default_factory=ReplayStats)
    _bits: int = 0  # bit i set: id highest - i seen

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("size must be at least 1")

    @property
    def exhausted(self) -> bool:
        return self.highest >= self.max_id

    def check(self, packet_id: int) -> bool:
        """Would ``packet_id`` be accepted? (Does not record it.)"""
        return self._verdict(packet_id) is None

    def _verdict(self, packet_id: int) -> str | None:
        if packet_id == 0:
            return "zero"
        if not 0 < packet_id <= self.max_id:
            return "out_of_range"
        if packet_id > self.highest:
            return None
        back = self.highest - packet_id
        if back >= self.size:
            return "too_old"
        if self._bits >> back & 1:
            return "duplicate"
        return None

    def check_and_update(self, packet_id: int) -> bool:
        why = self._verdict(packet_id)
        if why is not None:
            setattr(self.stats, why, getattr(self.stats, why) + 1)
            return False
        if packet_id > self.highest:
            shift = packet_id - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) \
                if shift < self.size else 1
            self.highest = packet_id
        else:
            self._bits |= 1 << (self.highest - packet_id)
        self.stats.accepted += 1
        return True
