"""RFC 4733 telephone-events (DTMF over RTP): the payload, a receiver and a sender.

Payload (4 bytes, network byte order)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     event     |E|R|  volume   |          duration             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

``event``: 0-9 the digits, 10 ``*``, 11 ``#``, 12-15 ``A``-``D``, 16 flash
(written ``!`` here).  ``E`` marks the end of the event, ``volume`` is the tone's
power in -dBm0 (0-63), ``duration`` counts RTP clock units since the event's
start.  All packets of one event carry the event's start as RTP timestamp; the
first has the marker bit set, the duration grows with each update, and the final
(E=1) packet is sent three times.  An event longer than 0xFFFF units is sent as
segments (RFC 4733 §2.5.1.3): the segment reaching 0xFFFF ends with that
duration and E=0 (also sent three times) and the next segment starts at
timestamp + 0xFFFF without the marker.

:class:`DtmfReceiver` turns received packets into one ``DOWN`` and one ``UP``
per key press; :class:`DtmfSender` produces the packets of queued digits, one
per 20 ms tick.  Both are pure state machines: time and RTP timestamps are
arguments.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "DIGITS",
    "FLASH",
    "DtmfEdge",
    "DtmfError",
    "DtmfEvent",
    "DtmfPacket",
    "DtmfReceiver",
    "DtmfSender",
    "TelephoneEvent",
    "digit_of",
    "event_of",
    "parse_telephone_event",
]

DIGITS: Final = "0123456789*#ABCD!"
"""Event code -> character: index 0-15 the DTMF keys, 16 (``!``) flash."""
FLASH: Final = 16
MAX_DURATION: Final = 0xFFFF
"""Largest duration one segment can carry (RTP clock units)."""
PAYLOAD_SIZE: Final = 4
MAX_DIGIT_MS: Final = 60_000
"""Longest key press :class:`DtmfSender` accepts."""
_ENDED_MEMORY: Final = 8


class DtmfError(ValueError):
    """A telephone-event payload or a digit that is not valid; the message says why."""


def digit_of(event: int) -> str:
    """The character of event code 0-16 (``!`` for flash); :class:`DtmfError` otherwise."""
    if not 0 <= event <= FLASH:
        raise DtmfError(f"telephone-event {event} is not a DTMF key or flash")
    return DIGITS[event]


def event_of(digit: str) -> int:
    """The event code of a key: ``0-9 * # A-D`` (lowercase accepted) or ``!`` for flash."""
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise DtmfError(f"{digit!r} is not a DTMF key (0-9 * # A-D, ! for flash)")
    return index


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One telephone-event payload."""

    event: int
    """0-255 (0-16 are DTMF keys and flash)."""
    end: bool
    volume: int
    """Power level in -dBm0, 0-63."""
    duration: int
    """RTP clock units since the event (segment) start, 0-65535."""

    def encode(self) -> bytes:
        """The 4-byte payload (the reserved R bit is sent as 0)."""
        if not 0 <= self.event <= 255:
            raise DtmfError(f"event must be 0-255, got {self.event}")
        if not 0 <= self.volume <= 63:
            raise DtmfError(f"volume must be 0-63, got {self.volume}")
        if not 0 <= self.duration <= MAX_DURATION:
            raise DtmfError(f"duration must be 0-65535, got {self.duration}")
        flags = (0x80 if self.end else 0) | self.volume
        return bytes((self.event, flags, self.duration >> 8, self.duration & 0xFF))


def parse_telephone_event(payload: bytes | bytearray | memoryview) -> TelephoneEvent:
    """The first event of a telephone-event payload; raises only :class:`DtmfError`.

    Bytes past the first 4 are ignored (RFC 4733 allows several events only
    through RFC 2198 redundancy, which is not negotiated here).
    """
    try:
        raw = bytes(payload[:PAYLOAD_SIZE])
    except (TypeError, ValueError) as exc:
        raise DtmfError(f"telephone-event payload is not bytes-like: {exc}") from None
    if len(raw) < PAYLOAD_SIZE:
        raise DtmfError(f"telephone-event payload of {len(raw)} bytes, needs 4")
    return TelephoneEvent(
        event=raw[0],
        end=raw[1] >= 0x80,
        volume=raw[1] & 0x3F,
        duration=(raw[2] << 8) | raw[3],
    )


# -- receiving -------------------------------------------------------------------


class DtmfEdge(IntEnum):
    DOWN = 0
    UP = 1


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """A key went down or came up."""

    edge: DtmfEdge
    digit: str
    timestamp: int
    """RTP timestamp of the event's start (its key while it lasts)."""
    duration: int = 0
    """Last duration field seen, in the sender's units (informational only)."""
    timed_out: bool = False
    """UP without an end packet: the end packets were lost or another event began."""


_NOTHING: Final[tuple[DtmfEvent, ...]] = ()


def _serial_newer(a: int, b: int) -> bool:
    """True when 32-bit timestamp ``a`` is after ``b`` (RFC 1982 serial arithmetic)."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000


class DtmfReceiver:
    """Telephone-event packets in, key DOWN/UP events out, one pair per press.

    An event is keyed on its RTP timestamp (and code), never on the duration
    field, whose units some senders get wrong (baresip counts 48 kHz units
    with an 8 kHz telephone-event clock).  ``DOWN`` comes with the first packet
    seen of an event (even if its start packets were lost), ``UP`` with the
    first E=1 packet; updates and the end retransmits are absorbed.  An event
    with no packet for ``end_timeout_ms`` ends with ``timed_out`` (checked by
    ``poll`` and at every ``feed``), as does one superseded by a new event.
    Packets of an earlier event than the last one started are ignored.
    Malformed payloads and event codes above 16 are counted and ignored:
    ``feed`` never raises on packet data.
    """

    def __init__(self, *, end_timeout_ms: int = 150) -> None:
        if end_timeout_ms <= 0:
            raise ValueError(f"end_timeout_ms must be positive, got {end_timeout_ms}")
        self.end_timeout_ms = end_timeout_ms
        self._active = False
        self._ts = 0
        self._code = 0
        self._duration = 0
        self._last_ms = 0
        self._has_started = False
        self._last_start = 0
        self._ended: deque[tuple[int, int]] = deque(maxlen=_ENDED_MEMORY)
        self.packets = 0
        """Packets fed."""
        self.digits = 0
        """Events reported (DOWN edges)."""
        self.duplicates = 0
        """Packets that changed nothing: updates, end retransmits, packets of older events."""
        self.malformed = 0
        """Payloads shorter than 4 bytes."""
        self.unsupported = 0
        """Packets with an event code other than 0-16."""
        self.timeouts = 0
        """Events ended without an end packet."""

    @property
    def active_digit(self) -> str | None:
        """The key currently down, if any."""
        return DIGITS[self._code] if self._active else None

    def _up(self, timed_out: bool) -> DtmfEvent:
        self._active = False
        self._ended.append((self._ts, self._code))
        if timed_out:
            self.timeouts += 1
        return DtmfEvent(DtmfEdge.UP, DIGITS[self._code], self._ts, self._duration, timed_out)

    def poll(self, now_ms: int) -> tuple[DtmfEvent, ...]:
        """End the active event if nothing of it arrived for ``end_timeout_ms``."""
        if self._active and now_ms - self._last_ms >= self.end_timeout_ms:
            return (self._up(True),)
        return _NOTHING

    def feed(
        self,
        timestamp: int,
        marker: bool,
        payload: bytes | bytearray | memoryview,
        now_ms: int,
    ) -> tuple[DtmfEvent, ...]:
        """Account for one telephone-event packet; return the edges it causes (often none).

        ``timestamp`` is the packet's RTP timestamp, ``now_ms`` its arrival time.
        """
        self.packets += 1
        try:
            te = parse_telephone_event(payload)
        except DtmfError:
            self.malformed += 1
            return _NOTHING
        if te.event > FLASH:
            self.unsupported += 1
            return _NOTHING
        timestamp &= 0xFFFFFFFF
        code = te.event
        out: tuple[DtmfEvent, ...] = self.poll(now_ms)
        if self._active and timestamp == self._ts and code == self._code:
            self._last_ms = now_ms
            self._duration = te.duration
            if te.end:
                return (*out, self._up(False))
            self.duplicates += 1  # an update: no news
            return out
        if (timestamp, code) in self._ended or (
            self._has_started and _serial_newer(self._last_start, timestamp)
        ):
            self.duplicates += 1
            return out
        if (
            self._active
            and code == self._code
            and not marker
            and ((timestamp - self._ts) & 0xFFFFFFFF) == MAX_DURATION
        ):
            # the next segment of a long event (RFC 4733 §2.5.1.3): same key still down
            self._ts = timestamp
            self._last_start = timestamp
            self._last_ms = now_ms
            self._duration = te.duration
            if te.end:
                return (*out, self._up(False))
            return out
        if self._active:
            out = (*out, self._up(True))
        self._active = True
        self._ts = timestamp
        self._code = code
        self._duration = te.duration
        self._last_ms = now_ms
        self._has_started = True
        self._last_start = timestamp
        self.digits += 1
        down = DtmfEvent(DtmfEdge.DOWN, DIGITS[code], timestamp, te.duration)
        if te.end:
            return (*out, down, self._up(False))
        return (*out, down)


# -- sending ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    """One telephone-event RTP packet to send on this tick (same SSRC and seq space as audio)."""

    payload_type: int
    marker: bool
    timestamp: int
    """RTP timestamp: the start of the event (segment), not the current time."""
    payload: bytes
    end: bool


class DtmfSender:
    """Queued digits -> telephone-event packets, at most one per ``tick``.

    Call :meth:`tick` once per packet interval (``packet_ms``, normally the
    audio ptime) with ``rtp_ts``, the timestamp the audio packet of this tick
    would carry.  It returns the packet to send now, or None (send audio as
    usual).  A digit of ``duration_ms`` becomes ``ceil(duration_ms /
    packet_ms)`` packets with durations ``k * samples_per_packet`` (the last one
    with E=1, sent three times on consecutive ticks), followed by ``gap_ms`` of
    ticks without events before the next digit.  The event timestamp is the
    ``rtp_ts`` of its first tick, and durations count ticks, so the sender only
    needs ``rtp_ts`` to advance by ``samples_per_packet`` per tick for the
    packets to describe real time.
    """

    def __init__(
        self,
        payload_type: int,
        clock_rate_hz: int = 8000,
        *,
        packet_ms: int = 20,
        volume: int = 10,
        gap_ms: int = 100,
    ) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload_type must be 0-127, got {payload_type}")
        if clock_rate_hz <= 0 or packet_ms <= 0 or (clock_rate_hz * packet_ms) % 1000:
            raise ValueError(
                f"{packet_ms} ms at {clock_rate_hz} Hz is not a whole number of samples"
            )
        if not 0 <= volume <= 63:
            raise ValueError(f"volume must be 0-63 (-dBm0), got {volume}")
        if gap_ms < 0:
            raise ValueError(f"gap_ms must be >= 0, got {gap_ms}")
        self.payload_type = payload_type
        self.clock_rate_hz = clock_rate_hz
        self.packet_ms = packet_ms
        self.volume = volume
        self.gap_ms = gap_ms
        self.samples_per_packet = clock_rate_hz * packet_ms // 1000
        if self.samples_per_packet > MAX_DURATION:
            raise ValueError("one packet interval exceeds the 16-bit duration field")
        self._queue: deque[tuple[int, int]] = deque()
        self._plan: deque[tuple[bool, int, int, bool]] = deque()  # marker, seg offset, dur, end
        self._code = 0
        self._start_ts = 0
        self._gap_ticks = 0

    @property
    def busy(self) -> bool:
        """True while digits are queued, being sent, or in their trailing gap."""
        return bool(self._queue or self._plan or self._gap_ticks)

    def send(self, digits: str, duration_ms: int = 160) -> None:
        """Queue ``digits`` (``0-9 * # A-D``, ``!`` flash), each held ``duration_ms``."""
        if not self.packet_ms <= duration_ms <= MAX_DIGIT_MS:
            raise DtmfError(
                f"duration_ms must be {self.packet_ms}-{MAX_DIGIT_MS} ms, got {duration_ms}"
            )
        codes = [event_of(d) for d in digits]  # validate all before queueing any
        n_packets = -(-duration_ms // self.packet_ms)
        self._queue.extend((code, n_packets) for code in codes)

    def cancel(self) -> None:
        """Drop queued digits; a digit being sent still ends properly (its E=1 packets)."""
        self._queue.clear()

    def _plan_digit(self, n_packets: int) -> None:
        """One entry per tick: (marker, segment start offset, duration, end)."""
        spp = self.samples_per_packet
        total = n_packets * spp
        plan = self._plan
        seg_start = 0
        first = True
        repeats = 0  # retransmissions of a full segment's last packet still to send
        tick = 0
        while True:
            tick += 1
            elapsed = min(tick * spp, total)
            if repeats:
                plan.append((False, seg_start - MAX_DURATION, MAX_DURATION, False))
                repeats -= 1
                continue
            duration = elapsed - seg_start
            if duration > MAX_DURATION or (duration == MAX_DURATION and elapsed < total):
                # segment full (RFC 4733 §2.5.1.3): 0xFFFF without E, three times
                plan.append((first, seg_start, MAX_DURATION, False))
                first = False
                repeats = 2
                seg_start += MAX_DURATION
                continue
            if elapsed >= total:
                for _ in range(3):
                    plan.append((first, seg_start, duration, True))
                    first = False
                return
            plan.append((first, seg_start, duration, False))
            first = False

    def tick(self, rtp_ts: int) -> DtmfPacket | None:
        """The telephone-event packet for this tick, or None when no event is on."""
        if not self._plan:
            if self._gap_ticks:
                self._gap_ticks -= 1
                return None
            if not self._queue:
                return None
            self._code, n_packets = self._queue.popleft()
            self._start_ts = rtp_ts & 0xFFFFFFFF
            self._plan_digit(n_packets)
        marker, seg_start, duration, end = self._plan.popleft()
        if not self._plan:
            self._gap_ticks = -(-self.gap_ms // self.packet_ms)
        payload = TelephoneEvent(self._code, end, self.volume, duration).encode()
        timestamp = (self._start_ts + seg_start) & 0xFFFFFFFF
        return DtmfPacket(self.payload_type, marker, timestamp, payload, end)
