"""Pure-Python specification of the ``engine._jitter`` kernel: an adaptive jitter buffer.

Packets go in with ``put(seq, timestamp, pcm, arrival_ms)`` (one decoded frame of
int16 PCM each); a steady caller-driven clock takes one frame out per
``pull_into(out, now_ms)``.  Everything is integer arithmetic, so the native
kernel matches this module exactly.

Timeline.  A packet's *slot* is its extended RTP timestamp, relative to the first
packet of the stream, in frames (rounded to the nearest frame).  Each pull plays
the slot at the playout point and advances it by one; a packet whose slot is
already behind the playout point is *late* and dropped.

Delay.  For each packet (late ones included, duplicates not) the *transit* is
``arrival - send time`` on the sender's timestamp clock, kept for the last 2 s of
arrivals.  The reference is the smallest transit in that window (the fastest
path); a packet's *relative delay* is its transit minus the reference.  The
target delay is the 95th percentile (nearest rank) of relative delays, rounded up
to whole ms and clamped to ``[min_delay_ms, max_delay_ms]``; it rises at once
but falls by at most 1 ms per update (one per pull that follows new packets).
The current delay is ``now - (reference + send time of the slot being played)``.
Playout starts at the first pull where the current delay reaches the target.

Adaptation, only in silence.  When the previous output frame was quiet and the
next slot is quiet or missing (quiet: RMS below ``silence_rms``, from the exact
sum of squares), a pull whose current delay is below target repeats the previous
frame (INSERTED, delay + 1 frame), and a pull whose delay is at least 1.5 frames
above target skips that slot (counted as dropped, delay - 1 frame).  During
speech the delay never changes (short of a playout restart, see Resync).

Loss.  A missing slot is concealed by :class:`~engine.reference.plc.Concealer`
(CONCEALED while the concealment is audible, SILENCE after ~60 ms); the first
real frame after it is crossfaded back in.  ``lost`` counts sequence numbers
skipped at playout (late packets included).

Resync.  Sequence numbers follow RFC 3550 A.1: a jump of 3000 or more ahead or
more than 100 behind is discarded unless the next packet continues it, which
restarts the stream (new timeline, empty buffer, fresh estimator and concealer).
A packet in sequence whose slot is a whole capacity ahead of or behind the
playout point (a timestamp jump) also restarts the stream, and five late packets
in a row restart playout at the latest one (the buffer is flushed, the estimator
kept).  ``reset()`` restarts by hand, e.g. when the SSRC changes.
"""

from __future__ import annotations

import operator
from typing import Final, SupportsIndex

from engine.reference.plc import Concealer, check_config, check_out, read_frame, write_frame

NORMAL: Final = 0
"""A received frame (after a loss, crossfaded in from the concealment)."""
CONCEALED: Final = 1
"""A missing frame, synthesised by the concealer."""
INSERTED: Final = 2
"""A repeat of the previous quiet frame, inserted to grow the delay."""
SILENCE: Final = 3
"""Zeros: a gap longer than the concealment covers (loss, DTX, end of stream)."""
EMPTY: Final = 4
"""Zeros: nothing to play yet (no packet since reset, or buffering to the target)."""

PUT_ACCEPTED: Final = 0
PUT_DUPLICATE: Final = 1
PUT_LATE: Final = 2
PUT_DISCARDED: Final = 3
PUT_RESYNC: Final = 4

MAX_DROPOUT: Final = 3000
MAX_MISORDER: Final = 100
LATE_RUN_RESYNC: Final = 5
WINDOW_MS: Final = 2000
QUANTILE_PERCENT: Final = 95
TARGET_FALL_MS: Final = 1
"""The target delay falls by at most this much per update (it rises at once)."""
MAX_DELAY_LIMIT_MS: Final = 5000
MAX_CAPACITY_FRAMES: Final = 4096
TIME_LIMIT_MS: Final = 1 << 40
"""``arrival_ms`` and ``now_ms`` must lie within +-2**40 ms (about 35 years)."""

_NO_SLOT: Final = -(1 << 62)
_NO_SEQ: Final = -(1 << 62)


def _pow2_at_least(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


def check_int(value: object, name: str, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]``; bools, floats and NaN are refused."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    number = operator.index(value)
    if not lo <= number <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {number}")
    return number


def check_jitter_config(
    clock_rate_hz: object,
    frame_ms: object,
    *,
    min_delay_ms: object,
    max_delay_ms: object,
    capacity_frames: object,
    silence_rms: object,
) -> int:
    """Validate the constructor arguments; return samples per frame."""
    n = check_config(clock_rate_hz, frame_ms)
    assert isinstance(frame_ms, int)
    lo = check_int(min_delay_ms, "min_delay_ms", 0, MAX_DELAY_LIMIT_MS)
    hi = check_int(max_delay_ms, "max_delay_ms", 0, MAX_DELAY_LIMIT_MS)
    if hi < lo:
        raise ValueError(f"max_delay_ms ({hi}) must be >= min_delay_ms ({lo})")
    need = -(-hi // frame_ms) + 2
    cap = check_int(capacity_frames, "capacity_frames", 1, MAX_CAPACITY_FRAMES)
    if cap < need:
        raise ValueError(
            f"capacity_frames ({cap}) must hold max_delay_ms plus two frames: at least {need}"
        )
    check_int(silence_rms, "silence_rms", 0, 32767)
    return n


class JitterBuffer:
    """Reorders, times and conceals one stream of int16 frames; see the module docstring."""

    def __init__(
        self,
        clock_rate_hz: int = 8000,
        frame_ms: int = 20,
        min_delay_ms: int = 20,
        max_delay_ms: int = 200,
        capacity_frames: int = 64,
        *,
        silence_rms: int = 150,
    ) -> None:
        n = check_jitter_config(
            clock_rate_hz,
            frame_ms,
            min_delay_ms=min_delay_ms,
            max_delay_ms=max_delay_ms,
            capacity_frames=capacity_frames,
            silence_rms=silence_rms,
        )
        self.clock_rate_hz = clock_rate_hz
        self.frame_ms = frame_ms
        self.frame_samples = n
        self.min_delay_ms = min_delay_ms
        self.max_delay_ms = max_delay_ms
        self.capacity_frames = capacity_frames
        self.silence_rms = silence_rms
        self._quiet_below = silence_rms * silence_rms * n
        ring = _pow2_at_least(capacity_frames)
        self._ring_mask = ring - 1
        self._slot_of = [_NO_SLOT] * ring
        self._seq_of = [0] * ring
        self._ts_of = [0] * ring
        self._quiet = [False] * ring
        self._pcm = [[0] * n for _ in range(ring)]
        seen = _pow2_at_least(max(256, 2 * ring))
        self._seen_mask = seen - 1
        self._seen = [_NO_SEQ] * seen
        window = _pow2_at_least(2 * (WINDOW_MS // frame_ms))
        self._win_mask = window - 1
        self._win_arrival = [0] * window
        self._win_transit = [0] * window
        self._plc = Concealer(clock_rate_hz, frame_ms)
        self._last_out = [0] * n
        self._clear_stats()
        self._reset_stream()

    # -- statistics ----------------------------------------------------------

    def _clear_stats(self) -> None:
        self.received = 0
        self.lost = 0
        self.late = 0
        self.duplicates = 0
        self.discarded = 0
        self.concealed = 0
        self.inserted = 0
        self.dropped = 0
        self.resyncs = 0

    @property
    def current_delay_ms(self) -> int:
        """Playout delay over the fastest recent packet at the last pull (ms)."""
        return self._current_delay_ms

    @property
    def target_delay_ms(self) -> int:
        """Delay the buffer steers to during silence (ms)."""
        return self._target_delay_ms

    @property
    def buffered_frames(self) -> int:
        """Frames waiting to be played."""
        return self._buffered

    @property
    def last_timestamp(self) -> int:
        """RTP timestamp of the slot the last pull played, or -1 (EMPTY, INSERTED)."""
        return self._last_ts

    @property
    def playing(self) -> bool:
        """Whether playout has started (the initial delay has been reached)."""
        return self._started

    # -- state ---------------------------------------------------------------

    def reset(self, clear_stats: bool = False) -> None:
        """Forget the stream (call on an SSRC change); counters survive unless asked."""
        self._reset_stream()
        if clear_stats:
            self._clear_stats()

    def _reset_stream(self) -> None:
        self._has_stream = False
        self._flush()
        for i in range(len(self._seen)):
            self._seen[i] = _NO_SEQ
        self._win_tail = 0
        self._win_count = 0
        self._newest_arrival = 0
        self._dirty = False
        self._ref_transit = 0
        self._target_delay_ms = self.min_delay_ms
        self._current_delay_ms = 0
        self._max_seq = 0
        self._max_ts = 0
        self._ts_base = 0
        self._probe_seq = -1
        self._last_seq = _NO_SEQ
        self._last_ts = -1
        self._last_quiet = True
        for i in range(self.frame_samples):
            self._last_out[i] = 0
        self._plc.reset()

    def _flush(self) -> None:
        for i in range(len(self._slot_of)):
            self._slot_of[i] = _NO_SLOT
        self._buffered = 0
        self._play_slot = 0
        self._max_slot = 0
        self._started = False
        self._late_run = 0

    # -- input ---------------------------------------------------------------

    def put(self, seq: int, timestamp: int, pcm: object, arrival_ms: int) -> int:
        """Insert one packet's decoded frame; return a ``PUT_*`` status."""
        seq = check_int(seq, "seq", 0, 0xFFFF)
        ts = check_int(timestamp, "timestamp", 0, 0xFFFFFFFF)
        arrival = check_int(arrival_ms, "arrival_ms", -TIME_LIMIT_MS, TIME_LIMIT_MS)
        frame = read_frame(pcm, self.frame_samples, "pcm")
        self.received += 1
        if not self._has_stream:
            self._begin(seq, ts, frame, arrival)
            return PUT_ACCEPTED
        d16 = (seq - self._max_seq) & 0xFFFF
        if d16 >= 0x8000:
            d16 -= 0x10000
        if d16 >= MAX_DROPOUT or d16 < -MAX_MISORDER:
            if seq == self._probe_seq:
                return self._restart(seq, ts, frame, arrival)
            self._probe_seq = (seq + 1) & 0xFFFF
            self.discarded += 1
            return PUT_DISCARDED
        self._probe_seq = -1
        ext_seq = self._max_seq + d16
        if self._seen[ext_seq & self._seen_mask] == ext_seq:
            self.duplicates += 1
            return PUT_DUPLICATE
        d32 = (ts - self._max_ts) & 0xFFFFFFFF
        if d32 >= 0x80000000:
            d32 -= 0x100000000
        ext_ts = self._max_ts + d32
        n = self.frame_samples
        slot = (ext_ts - self._ts_base + n // 2) // n
        cap = self.capacity_frames
        if slot >= self._play_slot + cap:
            if d16 > 0:
                return self._restart(seq, ts, frame, arrival)
            self.discarded += 1
            return PUT_DISCARDED
        if slot < self._play_slot - cap and d16 > 0:
            return self._restart(seq, ts, frame, arrival)
        self._seen[ext_seq & self._seen_mask] = ext_seq
        if d16 > 0:
            self._max_seq = ext_seq
        if d32 > 0:
            self._max_ts = ext_ts
        self._observe(arrival, ext_ts)
        if slot < self._play_slot:
            if not self._started and self._max_slot - slot < cap:
                self._play_slot = slot
            else:
                self.late += 1
                if d16 <= 0:
                    return PUT_LATE
                self._late_run += 1
                if self._late_run < LATE_RUN_RESYNC:
                    return PUT_LATE
                self.resyncs += 1
                self._flush()
                self._play_slot = slot
                self._max_slot = slot
                self._store(slot, ext_seq, ts, frame)
                return PUT_RESYNC
        self._late_run = 0
        return self._store(slot, ext_seq, ts, frame)

    def _begin(self, seq: int, ts: int, frame: list[int], arrival: int) -> None:
        """Make this packet the first of a new stream (slot 0)."""
        self._has_stream = True
        self._max_seq = seq
        self._max_ts = ts
        self._ts_base = ts
        self._seen[seq & self._seen_mask] = seq
        self._observe(arrival, ts)
        self._store(0, seq, ts, frame)

    def _restart(self, seq: int, ts: int, frame: list[int], arrival: int) -> int:
        self.resyncs += 1
        self._reset_stream()
        self._begin(seq, ts, frame, arrival)
        return PUT_RESYNC

    def _store(self, slot: int, ext_seq: int, ts: int, frame: list[int]) -> int:
        i = slot & self._ring_mask
        if self._slot_of[i] == slot:
            self.duplicates += 1
            return PUT_DUPLICATE
        self._slot_of[i] = slot
        self._seq_of[i] = ext_seq
        self._ts_of[i] = ts
        self._pcm[i][:] = frame
        self._quiet[i] = sum(s * s for s in frame) < self._quiet_below
        self._buffered += 1
        self._max_slot = max(self._max_slot, slot)
        return PUT_ACCEPTED

    def _observe(self, arrival: int, ext_ts: int) -> None:
        """Add one packet's transit (units of 1/1000 sample) to the delay window."""
        transit = arrival * self.clock_rate_hz - (ext_ts - self._ts_base) * 1000
        size = self._win_mask + 1
        if self._win_count == size:
            self._win_tail = (self._win_tail + 1) & self._win_mask
            self._win_count -= 1
        i = (self._win_tail + self._win_count) & self._win_mask
        self._win_arrival[i] = arrival
        self._win_transit[i] = transit
        self._win_count += 1
        if self._win_count == 1 or arrival > self._newest_arrival:
            self._newest_arrival = arrival
        self._dirty = True

    def _update_target(self) -> None:
        self._dirty = False
        oldest_kept = self._newest_arrival - WINDOW_MS
        while self._win_count > 0 and self._win_arrival[self._win_tail] < oldest_kept:
            self._win_tail = (self._win_tail + 1) & self._win_mask
            self._win_count -= 1
        count = self._win_count
        if count == 0:
            return
        values = sorted(
            self._win_transit[(self._win_tail + k) & self._win_mask] for k in range(count)
        )
        rank = (QUANTILE_PERCENT * count + 99) // 100
        self._ref_transit = values[0]
        spread = values[rank - 1] - values[0]
        rate = self.clock_rate_hz
        quantile_ms = (spread + rate - 1) // rate
        target = min(self.max_delay_ms, max(self.min_delay_ms, quantile_ms))
        # rise at once (packets are arriving late); fall slowly (one quiet window
        # with few samples must not undo what the last spike taught)
        self._target_delay_ms = max(target, self._target_delay_ms - TARGET_FALL_MS)

    # -- output --------------------------------------------------------------

    def pull_into(self, out: object, now_ms: int) -> int:
        """Fill ``out`` with exactly one frame for time ``now_ms``; return its kind."""
        now = check_int(now_ms, "now_ms", -TIME_LIMIT_MS, TIME_LIMIT_MS)
        n = self.frame_samples
        check_out(out, n)
        if not self._has_stream:
            write_frame(out, [0] * n)
            self._last_ts = -1
            return EMPTY
        if self._dirty:
            self._update_target()
        rate = self.clock_rate_hz
        frame_u = self.frame_ms * rate
        cur = now * rate - self._ref_transit - self._play_slot * frame_u
        target = self._target_delay_ms * rate
        if not self._started:
            if cur < target:
                write_frame(out, [0] * n)
                self._last_ts = -1
                return EMPTY
            self._started = True
        i = self._play_slot & self._ring_mask
        present = self._slot_of[i] == self._play_slot
        kind = -1
        if self._last_quiet and (not present or self._quiet[i]):
            if cur < target:
                kind = INSERTED
            elif cur >= target + (3 * frame_u) // 2:
                if present:
                    self._last_seq = self._seq_of[i]
                    self._slot_of[i] = _NO_SLOT
                    self._buffered -= 1
                self._play_slot += 1
                self.dropped += 1
                cur -= frame_u
                i = self._play_slot & self._ring_mask
                present = self._slot_of[i] == self._play_slot
        if kind == INSERTED:
            y = self._plc.good(self._last_out)
            self.inserted += 1
            self._last_ts = -1
        else:
            slot = self._play_slot
            self._play_slot += 1
            if present:
                seq = self._seq_of[i]
                if self._last_seq != _NO_SEQ and seq > self._last_seq + 1:
                    self.lost += seq - self._last_seq - 1
                if self._last_seq == _NO_SEQ or seq > self._last_seq:
                    self._last_seq = seq
                y = self._plc.good(self._pcm[i])
                self._slot_of[i] = _NO_SLOT
                self._buffered -= 1
                kind = NORMAL
                self._last_ts = self._ts_of[i]
            else:
                y, audible = self._plc.conceal()
                if audible > 0:
                    kind = CONCEALED
                    self.concealed += 1
                else:
                    kind = SILENCE
                self._last_ts = (self._ts_base + slot * n) & 0xFFFFFFFF
        write_frame(out, y)
        self._last_out[:] = y
        self._last_quiet = sum(s * s for s in y) < self._quiet_below
        self._current_delay_ms = cur // rate
        return kind
