"""Adaptive jitter buffer with packet-loss concealment ("NetEQ-lite").

Inbound RTP audio is decoded to int16 PCM per packet and handed to
:class:`JitterBuffer` with ``put(seq, timestamp, pcm, arrival_ms)``; the media
tick takes exactly one frame out every ``frame_ms`` with
``pull_into(out, now_ms)``, which returns a :class:`FrameKind`.  The buffer
reorders, drops duplicates and late packets, conceals losses with
:mod:`engine.plc`, handles 16-bit sequence and 32-bit timestamp wrap and sender
restarts, and steers its delay to the 95th percentile of the last 2 s of relative
arrival delay (within ``[min_delay_ms, max_delay_ms]``), moving the actual delay
only while the audio is quiet (frame RMS below ``silence_rms``; 0 disables
adaptation).  The behaviour is specified in :mod:`engine.reference.jitter`; the
class here is the native kernel.

Timestamps are in samples of ``clock_rate_hz``, which is also the PCM rate.  For
G.722 (RTP clock 8 kHz, audio 16 kHz) pass ``clock_rate_hz=16000`` and twice the
RTP timestamp modulo 2**32.  Call :meth:`JitterBuffer.reset` when the SSRC
changes.

Per-call use, allocation-free after construction::

    jb = JitterBuffer(clock_rate_hz=8000, frame_ms=20)
    out = np.zeros(jb.frame_samples, np.int16)   # owned by the call
    jb.put(seq, ts, pcm, arrival_ms)             # per received packet
    kind = jb.pull_into(out, now_ms)             # per 20 ms tick
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from engine._jitter import JitterBuffer, check_jitter_config

__all__ = [
    "FrameKind",
    "JitterBuffer",
    "JitterBufferLike",
    "JitterStats",
    "PutStatus",
    "check_jitter_config",
]


class FrameKind(IntEnum):
    """What one pulled frame holds (the int ``pull_into`` returns)."""

    NORMAL = 0
    """A received frame (crossfaded in from the concealment after a loss)."""
    CONCEALED = 1
    """A missing frame synthesised by packet-loss concealment."""
    INSERTED = 2
    """A repeat of the previous quiet frame, inserted to grow the delay."""
    SILENCE = 3
    """Zeros: a gap longer than concealment covers (loss, DTX, end of stream)."""
    EMPTY = 4
    """Zeros: nothing to play yet (no packet since reset, or buffering)."""


class PutStatus(IntEnum):
    """What ``put`` did with a packet."""

    ACCEPTED = 0
    DUPLICATE = 1
    """Already received; dropped."""
    LATE = 2
    """Its slot was already played; dropped (still used for the delay estimate)."""
    DISCARDED = 3
    """A sequence jump not yet confirmed by a second packet, or nonsense; dropped."""
    RESYNC = 4
    """Accepted as the first packet of a restarted stream or playout."""


class JitterBufferLike(Protocol):
    """The read-only statistics both the native and the reference buffer expose."""

    @property
    def received(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def late(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def discarded(self) -> int: ...
    @property
    def concealed(self) -> int: ...
    @property
    def inserted(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def resyncs(self) -> int: ...
    @property
    def current_delay_ms(self) -> int: ...
    @property
    def target_delay_ms(self) -> int: ...
    @property
    def buffered_frames(self) -> int: ...


@dataclass(frozen=True, slots=True)
class JitterStats:
    """A snapshot of a buffer's counters (for metrics; allocates, so not per frame).

    ``received`` counts every valid ``put``; ``duplicates``, ``late`` and
    ``discarded`` are the subsets dropped.  ``lost`` counts sequence numbers
    skipped at playout (late packets included), ``concealed`` the CONCEALED
    frames, ``inserted``/``dropped`` the frames added/skipped in silence to move
    the delay, ``resyncs`` the stream or playout restarts.
    """

    received: int
    lost: int
    late: int
    duplicates: int
    discarded: int
    concealed: int
    inserted: int
    dropped: int
    resyncs: int
    current_delay_ms: int
    target_delay_ms: int
    buffered_frames: int

    @classmethod
    def of(cls, jb: JitterBufferLike) -> JitterStats:
        """Read every counter of ``jb`` now."""
        return cls(
            received=jb.received,
            lost=jb.lost,
            late=jb.late,
            duplicates=jb.duplicates,
            discarded=jb.discarded,
            concealed=jb.concealed,
            inserted=jb.inserted,
            dropped=jb.dropped,
            resyncs=jb.resyncs,
            current_delay_ms=jb.current_delay_ms,
            target_delay_ms=jb.target_delay_ms,
            buffered_frames=jb.buffered_frames,
        )
