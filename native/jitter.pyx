# cython: language_level=3
"""Adaptive jitter buffer for one stream of decoded int16 frames.

Native twin of :mod:`engine.reference.jitter`, which documents the behaviour
(timeline, delay estimate, silence-only adaptation, loss, resync) and which this
module matches exactly.  Concealment is delegated to an ``engine._plc.Concealer``
called through that module's C API capsule (no Python call per frame).

Storage is allocated once in ``__init__``: a ring of ``capacity_frames`` (rounded
up to a power of two) frames, a ring of recently seen sequence numbers, and a
2 s window of packet transits.  ``put`` and ``pull_into`` read and write the
caller's buffers through the buffer protocol and allocate nothing.
"""

cimport cython
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport int16_t, int64_t, uint8_t
from libc.string cimport memcpy, memset

import operator

import numpy as np

from engine import _plc
from engine._plc import Concealer, check_config

NORMAL = 0
CONCEALED = 1
INSERTED = 2
SILENCE = 3
EMPTY = 4

PUT_ACCEPTED = 0
PUT_DUPLICATE = 1
PUT_LATE = 2
PUT_DISCARDED = 3
PUT_RESYNC = 4

MAX_DROPOUT = 3000
MAX_MISORDER = 100
LATE_RUN_RESYNC = 5
WINDOW_MS = 2000
QUANTILE_PERCENT = 95
TARGET_FALL_MS = 1
MAX_DELAY_LIMIT_MS = 5000
MAX_CAPACITY_FRAMES = 4096
TIME_LIMIT_MS = 1 << 40

cdef enum:
    K_NORMAL = 0
    K_CONCEALED = 1
    K_INSERTED = 2
    K_SILENCE = 3
    K_EMPTY = 4
    P_ACCEPTED = 0
    P_DUPLICATE = 1
    P_LATE = 2
    P_DISCARDED = 3
    P_RESYNC = 4
    C_MAX_DROPOUT = 3000
    C_MAX_MISORDER = 100
    C_LATE_RUN_RESYNC = 5
    C_WINDOW_MS = 2000
    C_QUANTILE_PERCENT = 95
    C_TARGET_FALL_MS = 1

# engine._plc's C API (see native/plc.pyx, which declares the same struct).
ctypedef int (*good_fn)(object plc, const int16_t* x, int16_t* y) except -1
ctypedef int (*conceal_fn)(object plc, int16_t* y) except -1

cdef struct ConcealerCApi:
    good_fn good
    conceal_fn conceal

cdef ConcealerCApi* plc_api = <ConcealerCApi*>PyCapsule_GetPointer(
    _plc.C_API, b"engine._plc.C_API_v1"
)

cdef int64_t NO_SLOT = -(1 << 62)
cdef int64_t NO_SEQ = -(1 << 62)
cdef int64_t C_TIME_LIMIT_MS = 1 << 40


cdef bint _format_ok(const char* fmt, Py_ssize_t itemsize) noexcept:
    if fmt == NULL:
        return itemsize == 1
    if itemsize == 2:
        if fmt[0] == b"<" or fmt[0] == b"=":
            fmt += 1
        return fmt[0] == b"h" and fmt[1] == 0
    if itemsize == 1:
        return (fmt[0] == b"B" or fmt[0] == b"b" or fmt[0] == b"c") and fmt[1] == 0
    return False


cdef int _acquire_frame(
    object obj, Py_buffer* view, Py_ssize_t n_samples, bint writable, str name
) except -1:
    # Same rules as engine._plc: a C-contiguous int16 (format h) or byte buffer of
    # exactly 2 * n_samples bytes.  On success the caller must release ``view``.
    cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
    if writable:
        flags |= PyBUF_WRITABLE
    try:
        PyObject_GetBuffer(obj, view, flags)
    except (TypeError, BufferError, ValueError):
        kind = "a writable C-contiguous" if writable else "a C-contiguous"
        raise ValueError(
            f"{name} must be {kind} int16 array or bytes-like object, got {type(obj).__name__}"
        ) from None
    if not _format_ok(view.format, view.itemsize):
        fmt = "?" if view.format == NULL else view.format.decode("ascii", "replace")
        PyBuffer_Release(view)
        raise ValueError(f"{name} must hold int16 samples or bytes, got format {fmt!r}")
    if view.len != 2 * n_samples:
        got = view.len
        PyBuffer_Release(view)
        raise ValueError(f"{name} holds {got} bytes, expected {2 * n_samples} ({n_samples} samples)")
    return 0


cdef int64_t _int_arg(object value, str name, int64_t lo, int64_t hi) except? -1:
    """``value`` as a C integer in ``[lo, hi]``, or ValueError naming ``name``."""
    cdef int64_t v
    if type(value) is not int:
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = operator.index(value)
    try:
        v = value
    except OverflowError:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}") from None
    if v < lo or v > hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return v


def check_jitter_config(
    clock_rate_hz, frame_ms, *, min_delay_ms, max_delay_ms, capacity_frames, silence_rms
):
    """Validate the constructor arguments; return samples per frame."""
    n = check_config(clock_rate_hz, frame_ms)
    lo = _int_arg(min_delay_ms, "min_delay_ms", 0, MAX_DELAY_LIMIT_MS)
    hi = _int_arg(max_delay_ms, "max_delay_ms", 0, MAX_DELAY_LIMIT_MS)
    if hi < lo:
        raise ValueError(f"max_delay_ms ({hi}) must be >= min_delay_ms ({lo})")
    need = -(-hi // frame_ms) + 2
    cap = _int_arg(capacity_frames, "capacity_frames", 1, MAX_CAPACITY_FRAMES)
    if cap < need:
        raise ValueError(
            f"capacity_frames ({cap}) must hold max_delay_ms plus two frames: at least {need}"
        )
    _int_arg(silence_rms, "silence_rms", 0, 32767)
    return n


cdef int _pow2_at_least(int n) noexcept:
    cdef int size = 1
    while size < n:
        size *= 2
    return size


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int64_t _sum_squares(const int16_t* x, int n) noexcept:
    # x holds n samples (checked by the caller).
    cdef int i
    cdef int64_t s
    cdef int64_t acc = 0
    for i in range(n):
        s = x[i]
        acc += s * s
    return acc


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _take(
    const int64_t* values, int64_t n, int64_t* top, int64_t m, int64_t* fill, int64_t* lowest
) noexcept:
    # Fold values[0:n] into the running minimum and the m largest values seen,
    # kept in top[0:fill] in descending order (fill <= m <= len(top)).
    cdef int64_t k, j, v
    cdef int64_t low = lowest[0]
    cdef int64_t f = fill[0]
    for k in range(n):
        v = values[k]
        if v < low:
            low = v
        if f < m:
            j = f
            f += 1
        elif v > top[m - 1]:
            j = m - 1
        else:
            continue
        while j > 0 and top[j - 1] < v:
            top[j] = top[j - 1]
            j -= 1
        top[j] = v
    lowest[0] = low
    fill[0] = f


@cython.cdivision(True)
cdef inline int64_t _floor_div(int64_t a, int64_t b) noexcept:
    # Python's a // b for b > 0.
    cdef int64_t q = a // b if a >= 0 else -((-a + b - 1) // b)
    return q


cdef class JitterBuffer:
    """Reorders, times and conceals one stream of int16 frames (see engine.reference.jitter)."""

    cdef readonly int clock_rate_hz
    cdef readonly int frame_ms
    cdef readonly int frame_samples
    cdef readonly int min_delay_ms
    cdef readonly int max_delay_ms
    cdef readonly int capacity_frames
    cdef readonly int silence_rms
    # counters
    cdef readonly int64_t received
    cdef readonly int64_t lost
    cdef readonly int64_t late
    cdef readonly int64_t duplicates
    cdef readonly int64_t discarded
    cdef readonly int64_t concealed
    cdef readonly int64_t inserted
    cdef readonly int64_t dropped
    cdef readonly int64_t resyncs
    # configuration derived
    cdef int64_t _quiet_below
    cdef int64_t _ring_mask
    cdef int64_t _seen_mask
    cdef int64_t _win_mask
    # frame ring
    cdef int64_t[::1] _slot_of
    cdef int64_t[::1] _seq_of
    cdef int64_t[::1] _ts_of
    cdef uint8_t[::1] _quiet
    cdef int16_t[:, ::1] _pcm
    cdef int64_t[::1] _seen
    # delay window
    cdef int64_t[::1] _win_arrival
    cdef int64_t[::1] _win_transit
    cdef int64_t[::1] _top
    cdef int64_t _win_tail
    cdef int64_t _win_count
    cdef int64_t _newest_arrival
    cdef bint _dirty
    cdef int64_t _ref_transit
    cdef int64_t _target_delay_ms
    cdef int64_t _current_delay_ms
    # stream state
    cdef bint _has_stream
    cdef bint _started
    cdef int64_t _max_seq
    cdef int64_t _max_ts
    cdef int64_t _ts_base
    cdef int64_t _probe_seq
    cdef int64_t _play_slot
    cdef int64_t _max_slot
    cdef int64_t _buffered
    cdef int64_t _late_run
    cdef int64_t _last_seq
    cdef int64_t _last_ts
    cdef bint _last_quiet
    # concealment
    cdef object _plc
    cdef int16_t[::1] _last_out

    def __init__(
        self,
        clock_rate_hz=8000,
        frame_ms=20,
        min_delay_ms=20,
        max_delay_ms=200,
        capacity_frames=64,
        *,
        silence_rms=150,
    ):
        cdef int n = check_jitter_config(
            clock_rate_hz,
            frame_ms,
            min_delay_ms=min_delay_ms,
            max_delay_ms=max_delay_ms,
            capacity_frames=capacity_frames,
            silence_rms=silence_rms,
        )
        cdef int ring, seen, window
        self.clock_rate_hz = clock_rate_hz
        self.frame_ms = frame_ms
        self.frame_samples = n
        self.min_delay_ms = min_delay_ms
        self.max_delay_ms = max_delay_ms
        self.capacity_frames = capacity_frames
        self.silence_rms = silence_rms
        self._quiet_below = <int64_t>silence_rms * silence_rms * n
        ring = _pow2_at_least(capacity_frames)
        self._ring_mask = ring - 1
        self._slot_of = np.full(ring, NO_SLOT, dtype=np.int64)
        self._seq_of = np.zeros(ring, dtype=np.int64)
        self._ts_of = np.zeros(ring, dtype=np.int64)
        self._quiet = np.zeros(ring, dtype=np.uint8)
        self._pcm = np.zeros((ring, n), dtype=np.int16)
        seen = _pow2_at_least(max(256, 2 * ring))
        self._seen_mask = seen - 1
        self._seen = np.full(seen, NO_SEQ, dtype=np.int64)
        window = _pow2_at_least(2 * (C_WINDOW_MS // frame_ms))
        self._win_mask = window - 1
        self._win_arrival = np.zeros(window, dtype=np.int64)
        self._win_transit = np.zeros(window, dtype=np.int64)
        # the m-th largest of `count` values, m = count - rank + 1, is at most this
        self._top = np.zeros(window - (C_QUANTILE_PERCENT * window + 99) // 100 + 1, dtype=np.int64)
        self._plc = Concealer(clock_rate_hz, frame_ms)  # same frame size as ours
        self._last_out = np.zeros(n, dtype=np.int16)
        self._clear_stats()
        self._reset_stream()

    # -- statistics ----------------------------------------------------------

    cdef void _clear_stats(self) noexcept:
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
    def current_delay_ms(self):
        """Playout delay over the fastest recent packet at the last pull (ms)."""
        return self._current_delay_ms

    @property
    def target_delay_ms(self):
        """Delay the buffer steers to during silence (ms)."""
        return self._target_delay_ms

    @property
    def buffered_frames(self):
        """Frames waiting to be played."""
        return self._buffered

    @property
    def last_timestamp(self):
        """RTP timestamp of the slot the last pull played, or -1 (EMPTY, INSERTED)."""
        return self._last_ts

    @property
    def playing(self):
        """Whether playout has started (the initial delay has been reached)."""
        return self._started

    # -- state ---------------------------------------------------------------

    def reset(self, clear_stats=False):
        """Forget the stream (call on an SSRC change); counters survive unless asked."""
        self._reset_stream()
        if clear_stats:
            self._clear_stats()

    cdef int _reset_stream(self) except -1:
        self._has_stream = False
        self._flush()
        self._seen[:] = NO_SEQ
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
        self._last_seq = NO_SEQ
        self._last_ts = -1
        self._last_quiet = True
        self._last_out[:] = 0
        self._plc.reset()
        return 0

    cdef void _flush(self) noexcept:
        self._slot_of[:] = NO_SLOT
        self._buffered = 0
        self._play_slot = 0
        self._max_slot = 0
        self._started = False
        self._late_run = 0

    # -- input ---------------------------------------------------------------

    def put(self, seq, timestamp, pcm, arrival_ms):
        """Insert one packet's decoded frame; return a ``PUT_*`` status."""
        cdef int64_t s = _int_arg(seq, "seq", 0, 0xFFFF)
        cdef int64_t ts = _int_arg(timestamp, "timestamp", 0, 0xFFFFFFFF)
        cdef int64_t arrival = _int_arg(arrival_ms, "arrival_ms", -C_TIME_LIMIT_MS, C_TIME_LIMIT_MS)
        cdef Py_buffer view
        cdef int status
        _acquire_frame(pcm, &view, self.frame_samples, False, "pcm")
        try:
            status = self._put(s, ts, <const int16_t*>view.buf, arrival)
        finally:
            PyBuffer_Release(&view)
        return status

    @cython.cdivision(True)
    cdef int _put(self, int64_t seq, int64_t ts, const int16_t* frame, int64_t arrival) except -1:
        cdef int64_t d16, d32, ext_seq, ext_ts, slot
        cdef int64_t n = self.frame_samples
        cdef int64_t cap = self.capacity_frames
        self.received += 1
        if not self._has_stream:
            self._begin(seq, ts, frame, arrival)
            return P_ACCEPTED
        d16 = (seq - self._max_seq) & 0xFFFF
        if d16 >= 0x8000:
            d16 -= 0x10000
        if d16 >= C_MAX_DROPOUT or d16 < -C_MAX_MISORDER:
            if seq == self._probe_seq:
                return self._restart(seq, ts, frame, arrival)
            self._probe_seq = (seq + 1) & 0xFFFF
            self.discarded += 1
            return P_DISCARDED
        self._probe_seq = -1
        ext_seq = self._max_seq + d16
        if self._seen[ext_seq & self._seen_mask] == ext_seq:
            self.duplicates += 1
            return P_DUPLICATE
        d32 = (ts - self._max_ts) & 0xFFFFFFFF
        if d32 >= 0x80000000:
            d32 -= 0x100000000
        ext_ts = self._max_ts + d32
        slot = _floor_div(ext_ts - self._ts_base + n // 2, n)
        if slot >= self._play_slot + cap:
            if d16 > 0:
                return self._restart(seq, ts, frame, arrival)
            self.discarded += 1
            return P_DISCARDED
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
                    return P_LATE
                self._late_run += 1
                if self._late_run < C_LATE_RUN_RESYNC:
                    return P_LATE
                self.resyncs += 1
                self._flush()
                self._play_slot = slot
                self._max_slot = slot
                self._store(slot, ext_seq, ts, frame)
                return P_RESYNC
        self._late_run = 0
        return self._store(slot, ext_seq, ts, frame)

    cdef void _begin(self, int64_t seq, int64_t ts, const int16_t* frame, int64_t arrival) noexcept:
        self._has_stream = True
        self._max_seq = seq
        self._max_ts = ts
        self._ts_base = ts
        self._seen[seq & self._seen_mask] = seq
        self._observe(arrival, ts)
        self._store(0, seq, ts, frame)

    cdef int _restart(self, int64_t seq, int64_t ts, const int16_t* frame, int64_t arrival) except -1:
        self.resyncs += 1
        self._reset_stream()
        self._begin(seq, ts, frame, arrival)
        return P_RESYNC

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _store(self, int64_t slot, int64_t ext_seq, int64_t ts, const int16_t* frame) noexcept:
        # i = slot & ring_mask is in [0, ring); frame holds frame_samples samples.
        cdef Py_ssize_t i = slot & self._ring_mask
        cdef int n = self.frame_samples
        if self._slot_of[i] == slot:
            self.duplicates += 1
            return P_DUPLICATE
        self._slot_of[i] = slot
        self._seq_of[i] = ext_seq
        self._ts_of[i] = ts
        memcpy(&self._pcm[i, 0], frame, n * sizeof(int16_t))
        self._quiet[i] = _sum_squares(frame, n) < self._quiet_below
        self._buffered += 1
        if slot > self._max_slot:
            self._max_slot = slot
        return P_ACCEPTED

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _observe(self, int64_t arrival, int64_t ext_ts) noexcept:
        # Indices are masked into [0, window).
        cdef int64_t transit = arrival * self.clock_rate_hz - (ext_ts - self._ts_base) * 1000
        cdef int64_t size = self._win_mask + 1
        cdef Py_ssize_t i
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

    @cython.boundscheck(False)
    @cython.wraparound(False)
    @cython.cdivision(True)
    cdef void _update_target(self) noexcept:
        # Window indices are masked into [0, window); the top array holds
        # m = count - rank + 1 <= len(top) values (see __init__).
        cdef int64_t oldest_kept = self._newest_arrival - C_WINDOW_MS
        cdef int64_t count, rank, m, fill, first, lowest, spread, quantile_ms
        cdef int64_t rate = self.clock_rate_hz
        cdef int64_t* top
        self._dirty = False
        while self._win_count > 0 and self._win_arrival[self._win_tail] < oldest_kept:
            self._win_tail = (self._win_tail + 1) & self._win_mask
            self._win_count -= 1
        count = self._win_count
        if count == 0:
            return
        rank = (C_QUANTILE_PERCENT * count + 99) // 100
        m = count - rank + 1
        fill = 0
        lowest = self._win_transit[self._win_tail]
        # the window is ring[tail:tail + first] then ring[0:count - first]
        first = min(count, self._win_mask + 1 - self._win_tail)
        top = &self._top[0]
        _take(&self._win_transit[self._win_tail], first, top, m, &fill, &lowest)
        _take(&self._win_transit[0], count - first, top, m, &fill, &lowest)
        self._ref_transit = lowest
        spread = self._top[m - 1] - lowest
        quantile_ms = (spread + rate - 1) // rate
        if quantile_ms < self.min_delay_ms:
            quantile_ms = self.min_delay_ms
        if quantile_ms > self.max_delay_ms:
            quantile_ms = self.max_delay_ms
        if quantile_ms < self._target_delay_ms - C_TARGET_FALL_MS:
            quantile_ms = self._target_delay_ms - C_TARGET_FALL_MS
        self._target_delay_ms = quantile_ms

    # -- output --------------------------------------------------------------

    def pull_into(self, out, now_ms):
        """Fill ``out`` with exactly one frame for time ``now_ms``; return its kind."""
        cdef int64_t now = _int_arg(now_ms, "now_ms", -C_TIME_LIMIT_MS, C_TIME_LIMIT_MS)
        cdef Py_buffer view
        cdef int kind
        _acquire_frame(out, &view, self.frame_samples, True, "out")
        try:
            kind = self._pull(<int16_t*>view.buf, now)
        finally:
            PyBuffer_Release(&view)
        return kind

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _pull(self, int16_t* y, int64_t now) except -1:
        # y is the caller's buffer of frame_samples samples; ring indices are
        # masked; ring rows, last_out and y all hold frame_samples samples, the
        # concealer's frame size.
        cdef int n = self.frame_samples
        cdef int64_t rate = self.clock_rate_hz
        cdef int64_t frame_u = self.frame_ms * rate
        cdef int64_t cur, target, seq, slot
        cdef Py_ssize_t i
        cdef bint present
        cdef int kind = -1
        cdef int audible
        if not self._has_stream:
            memset(y, 0, n * sizeof(int16_t))
            self._last_ts = -1
            return K_EMPTY
        if self._dirty:
            self._update_target()
        cur = now * rate - self._ref_transit - self._play_slot * frame_u
        target = self._target_delay_ms * rate
        if not self._started:
            if cur < target:
                memset(y, 0, n * sizeof(int16_t))
                self._last_ts = -1
                return K_EMPTY
            self._started = True
        i = self._play_slot & self._ring_mask
        present = self._slot_of[i] == self._play_slot
        if self._last_quiet and (not present or self._quiet[i]):
            if cur < target:
                kind = K_INSERTED
            elif cur >= target + (3 * frame_u) // 2:
                if present:
                    self._last_seq = self._seq_of[i]
                    self._slot_of[i] = NO_SLOT
                    self._buffered -= 1
                self._play_slot += 1
                self.dropped += 1
                cur -= frame_u
                i = self._play_slot & self._ring_mask
                present = self._slot_of[i] == self._play_slot
        if kind == K_INSERTED:
            plc_api.good(self._plc, &self._last_out[0], y)
            self.inserted += 1
            self._last_ts = -1
        else:
            slot = self._play_slot
            self._play_slot += 1
            if present:
                seq = self._seq_of[i]
                if self._last_seq != NO_SEQ and seq > self._last_seq + 1:
                    self.lost += seq - self._last_seq - 1
                if self._last_seq == NO_SEQ or seq > self._last_seq:
                    self._last_seq = seq
                plc_api.good(self._plc, &self._pcm[i, 0], y)
                self._slot_of[i] = NO_SLOT
                self._buffered -= 1
                kind = K_NORMAL
                self._last_ts = self._ts_of[i]
            else:
                audible = plc_api.conceal(self._plc, y)
                if audible > 0:
                    kind = K_CONCEALED
                    self.concealed += 1
                else:
                    kind = K_SILENCE
                self._last_ts = (self._ts_base + slot * n) & 0xFFFFFFFF
        memcpy(&self._last_out[0], y, n * sizeof(int16_t))
        self._last_quiet = _sum_squares(y, n) < self._quiet_below
        self._current_delay_ms = _floor_div(cur, rate)
        return kind
