"""Per-source RTP reception statistics: RFC 3550 Appendix A.1, A.3 and A.8.

:class:`SeqTracker` follows one SSRC.  ``update(seq)`` validates the source
(probation: ``MIN_SEQUENTIAL`` packets in sequence before it counts), extends the
16-bit sequence number across wraps, detects duplicates and reordering, and
declares a restart when a large jump is confirmed by the next packet.
``update_jitter(timestamp, arrival)`` runs the A.8 interarrival jitter estimate;
both arguments are in RTP clock units (convert arrival time with the payload's
clock rate, e.g. ``now_ms * 8`` at 8000 Hz).  ``take_report()`` yields the
numbers of an RTCP report block (A.3) and starts a new reporting interval.

Pure integer arithmetic: no clock, no I/O, nothing that raises on packet data.
A new SSRC needs a new tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "MIN_SEQUENTIAL",
    "LossReport",
    "SeqStatus",
    "SeqTracker",
]

MIN_SEQUENTIAL: Final = 2
"""Packets in sequence before a new source is valid."""
MAX_DROPOUT: Final = 3000
"""A forward jump of this many sequence numbers or more is suspect."""
MAX_MISORDER: Final = 100
"""A packet less than this far behind the highest is a reordered or duplicate one."""
SEQ_MOD: Final = 1 << 16
DUP_WINDOW: Final = 128
"""Sequence numbers behind the highest whose arrival is remembered (> MAX_MISORDER)."""
_DUP_MASK: Final = (1 << DUP_WINDOW) - 1
_LOST_MAX: Final = 0x7FFFFF
_LOST_MIN: Final = -0x800000


class SeqStatus(IntEnum):
    """What :meth:`SeqTracker.update` made of a packet.

    IN_ORDER, LATE and RESTART packets are media to play; the others are not.
    """

    IN_ORDER = 0
    """The highest so far (possibly after a gap: the gap is loss until filled)."""
    LATE = 1
    """Behind the highest, not seen before (reordered); counts as received."""
    DUPLICATE = 2
    """Seen before; counts as received (RFC 3550 A.3) and in ``duplicates``."""
    PROBATION = 3
    """The source is not validated yet; not counted."""
    JUMP = 4
    """A jump too far ahead or behind; dropped unless the next packet follows it."""
    RESTART = 5
    """The jump was confirmed: statistics restart at this packet (reset the jitter buffer)."""


@dataclass(frozen=True, slots=True)
class LossReport:
    """The reception fields of one RTCP report block (RFC 3550 §6.4.1)."""

    fraction_lost: int
    """Lost share of the packets expected since the previous report, in 1/256 (0-255)."""
    cumulative_lost: int
    """Expected minus received since the start, clamped to signed 24 bits (can be < 0)."""
    highest_seq: int
    """Extended highest sequence number received, modulo 2**32."""
    jitter: int
    """Interarrival jitter, RTP clock units."""


class SeqTracker:
    """RFC 3550 A.1 source validation and sequence statistics for one SSRC."""

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_cycles",
        "_expected_prior",
        "_has_transit",
        "_jitter16",
        "_max_seq",
        "_probation",
        "_received_prior",
        "_seen",
        "_started",
        "_transit",
        "duplicates",
        "extended_seq",
        "jumps",
        "received",
        "restarts",
    )

    def __init__(self) -> None:
        self._started = False
        self._probation = MIN_SEQUENTIAL
        self._max_seq = 0
        self._base_seq = 0
        self._bad_seq = SEQ_MOD + 1  # matches no 16-bit value
        self._cycles = 0
        self._seen = 0
        self._received_prior = 0
        self._expected_prior = 0
        self._transit = 0
        self._has_transit = False
        self._jitter16 = 0
        self.received = 0
        """Packets counted since validation or the last restart (duplicates included)."""
        self.duplicates = 0
        """Packets counted in ``received`` that had been received before."""
        self.jumps = 0
        """Packets dropped as unconfirmed jumps."""
        self.restarts = 0
        """Confirmed jumps (sender restarts)."""
        self.extended_seq = -1
        """Extended sequence number of the last packet counted (-1 before any)."""

    def _init_seq(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = SEQ_MOD + 1
        self._cycles = 0
        self._seen = 1
        self.received = 0
        self._received_prior = 0
        self._expected_prior = 0
        self.extended_seq = seq

    def update(self, seq: int) -> SeqStatus:
        """Account for a packet with 16-bit sequence number ``seq`` (taken modulo 2**16)."""
        seq &= 0xFFFF
        if not self._started:
            self._started = True
            self._init_seq(seq)
            self._max_seq = (seq - 1) & 0xFFFF
            self._probation = MIN_SEQUENTIAL
        if self._probation:
            if seq == (self._max_seq + 1) & 0xFFFF:
                self._probation -= 1
                self._max_seq = seq
                if self._probation == 0:
                    self._init_seq(seq)
                    self.received = 1
                    return SeqStatus.IN_ORDER
            else:
                self._probation = MIN_SEQUENTIAL - 1
                self._max_seq = seq
            return SeqStatus.PROBATION
        udelta = (seq - self._max_seq) & 0xFFFF
        if udelta < MAX_DROPOUT:
            self.received += 1
            if udelta == 0:
                self.duplicates += 1
                self.extended_seq = self._cycles + seq
                return SeqStatus.DUPLICATE
            if seq < self._max_seq:
                self._cycles += SEQ_MOD
            self._max_seq = seq
            self._seen = ((self._seen << udelta) | 1) & _DUP_MASK
            self.extended_seq = self._cycles + seq
            return SeqStatus.IN_ORDER
        if udelta <= SEQ_MOD - MAX_MISORDER:
            if seq == self._bad_seq:
                self._init_seq(seq)
                self.received = 1
                self.restarts += 1
                self._has_transit = False
                return SeqStatus.RESTART
            self._bad_seq = (seq + 1) & 0xFFFF
            self.jumps += 1
            return SeqStatus.JUMP
        behind = SEQ_MOD - udelta  # 1..MAX_MISORDER - 1
        self.received += 1
        self.extended_seq = self._cycles + self._max_seq - behind
        bit = 1 << behind
        if self._seen & bit:
            self.duplicates += 1
            return SeqStatus.DUPLICATE
        self._seen |= bit
        return SeqStatus.LATE

    def update_jitter(self, timestamp: int, arrival: int) -> None:
        """A.8 jitter update for an audio packet sent at ``timestamp``, received at ``arrival``.

        Both in RTP clock units (``arrival`` from any monotonic origin).  Feed only
        media packets (not telephone-events, which repeat one timestamp).
        Differences are taken modulo 2**32, so timestamp wraps are harmless.
        """
        transit = arrival - timestamp
        if self._has_transit:
            d = (transit - self._transit) & 0xFFFFFFFF
            if d > 0x7FFFFFFF:
                d = 0x100000000 - d
            self._jitter16 += d - ((self._jitter16 + 8) >> 4)
        self._transit = transit
        self._has_transit = True

    @property
    def valid(self) -> bool:
        """True once the source has passed probation."""
        return self._started and self._probation == 0

    @property
    def extended_max(self) -> int:
        """Highest extended sequence number received (-1 before validation)."""
        if not self.valid:
            return -1
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        """Packets expected since validation or the last restart (A.3)."""
        if not self.valid:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost, unclamped; negative when duplicates outnumber losses."""
        return self.expected - self.received

    @property
    def jitter(self) -> int:
        """Interarrival jitter estimate, RTP clock units (the A.8 integer form, rounded)."""
        return (self._jitter16 + 8) >> 4

    def take_report(self) -> LossReport:
        """The report-block numbers now; the next ``fraction_lost`` counts from here."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        self._expected_prior = expected
        received_interval = self.received - self._received_prior
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        lost = min(_LOST_MAX, max(_LOST_MIN, expected - self.received))
        highest = self.extended_max & 0xFFFFFFFF if self.valid else 0
        return LossReport(
            fraction_lost=fraction,
            cumulative_lost=lost,
            highest_seq=highest,
            jitter=self.jitter,
        )
