# cython: language_level=3
"""Packet-loss concealment for mono int16 PCM (pitch repetition with fade).

Native twin of :mod:`engine.reference.plc`, which documents the algorithm and
which this module matches bit for bit (integer arithmetic plus one IEEE double
score per pitch candidate, computed with the same operations in the same order).

Frames cross the boundary as C-contiguous buffers: int16 arrays (format ``h``)
or little-endian bytes (format ``B``) of exactly ``2 * frame_samples`` bytes.
They are read through the buffer protocol, so a call allocates nothing.

Other native kernels (the jitter buffer) call a concealer without going through
Python via ``C_API``, a capsule named ``engine._plc.C_API_v1`` holding a
:c:type:`ConcealerCApi` (declared identically by its users; change the name
when the struct changes).
"""

cimport cython
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport int16_t, int64_t
from libc.string cimport memcpy, memmove, memset

import numpy as np

from engine.format import SUPPORTED_RATES_HZ

FRAME_MS_CHOICES = (10, 20, 30, 40, 60)
MAX_CONCEAL_MS = 60

cdef enum:
    CANDIDATES = 3  # coarse pitch candidates refined at full resolution
    Q15 = 32768
    HALF = 16384


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


cdef int acquire_frame(
    object obj, Py_buffer* view, Py_ssize_t n_samples, bint writable, str name
) except -1:
    """Get a buffer of exactly ``n_samples`` int16 samples from ``obj`` or raise ValueError.

    On success the caller owns ``view`` and must release it.
    """
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


def check_config(rate_hz, frame_ms):
    """Validate a (rate, frame) pair; return samples per frame."""
    if type(rate_hz) is not int or rate_hz not in SUPPORTED_RATES_HZ:
        raise ValueError(f"rate_hz must be one of {SUPPORTED_RATES_HZ}, got {rate_hz!r}")
    if type(frame_ms) is not int or frame_ms not in FRAME_MS_CHOICES:
        raise ValueError(f"frame_ms must be one of {FRAME_MS_CHOICES}, got {frame_ms!r}")
    if rate_hz * frame_ms % 1000:
        raise ValueError(f"{frame_ms} ms is not a whole number of samples at {rate_hz} Hz")
    return rate_hz * frame_ms // 1000


cdef class Concealer:
    """Conceals lost frames of one mono int16 stream (see engine.reference.plc)."""

    cdef readonly int rate_hz
    cdef readonly int frame_ms
    cdef readonly int frame_samples
    cdef int _ten_ms
    cdef int _pitch_min
    cdef int _pitch_max
    cdef int _corr_len
    cdef int _hist_len
    cdef int _decim
    cdef int _merge_step
    cdef int16_t[::1] _hist
    cdef int16_t[::1] _src
    cdef int16_t[::1] _frame
    cdef int _filled
    cdef int _erased
    cdef int _pitch
    cdef int _overlap
    cdef int64_t _delta

    def __init__(self, rate_hz=8000, frame_ms=20):
        self.frame_samples = check_config(rate_hz, frame_ms)
        self.rate_hz = rate_hz
        self.frame_ms = frame_ms
        self._ten_ms = rate_hz // 100
        self._pitch_min = rate_hz * 5 // 1000
        self._pitch_max = rate_hz * 15 // 1000
        self._corr_len = rate_hz * 20 // 1000
        self._hist_len = 3 * self._pitch_max + self._pitch_max // 4
        self._decim = max(1, rate_hz // 4000)
        self._merge_step = rate_hz * 4 // 1000
        self._hist = np.zeros(self._hist_len, dtype=np.int16)
        self._src = np.zeros(self._hist_len, dtype=np.int16)
        self._frame = np.zeros(self.frame_samples, dtype=np.int16)
        self.reset()

    def reset(self):
        """Forget the history and any erasure in progress."""
        self._hist[:] = 0
        self._filled = 0
        self._erased = 0
        self._pitch = self._pitch_max
        self._overlap = self._pitch_max // 4
        self._delta = 0

    @property
    def erased_samples(self):
        """Samples concealed since the last good frame (capped at 60 ms)."""
        return self._erased

    @property
    def pitch_samples(self):
        """Pitch period (samples) used by the current or last erasure."""
        return self._pitch

    def good_into(self, src, out):
        """Write a received frame to ``out`` (crossfaded after a loss); return samples written."""
        cdef Py_buffer sv
        cdef Py_buffer ov
        acquire_frame(src, &sv, self.frame_samples, False, "src")
        try:
            acquire_frame(out, &ov, self.frame_samples, True, "out")
            try:
                self._good(<const int16_t*>sv.buf, <int16_t*>ov.buf)
            finally:
                PyBuffer_Release(&ov)
        finally:
            PyBuffer_Release(&sv)
        return self.frame_samples

    def conceal_into(self, out):
        """Write one concealment frame to ``out``.

        Returns how many of its samples are synthesised audio (gain > 0); 0 means
        the frame is silence (nothing heard yet, or concealment ran out).
        """
        cdef Py_buffer ov
        cdef int audible
        acquire_frame(out, &ov, self.frame_samples, True, "out")
        try:
            audible = self._conceal(<int16_t*>ov.buf)
        finally:
            PyBuffer_Release(&ov)
        return audible

    @cython.boundscheck(False)
    @cython.wraparound(False)
    @cython.cdivision(True)
    cdef void _good(self, const int16_t* x, int16_t* y) noexcept:
        # x and y hold frame_samples samples (checked by acquire_frame); they
        # may alias, so each x[t] is read before y[t] is written.
        cdef int n = self.frame_samples
        cdef int ten = self._ten_ms
        cdef int t, m, blocks
        cdef int64_t syn, w, xt
        if self._erased > 0:
            blocks = (self._erased + ten - 1) // ten - 1
            m = self._overlap + blocks * self._merge_step
            if m > ten:
                m = ten
            if m > n:
                m = n
            for t in range(m):  # 0 <= t < m <= n
                syn = self._synth(self._erased + t)
                w = ((t + 1) << 15) // (m + 1)
                xt = x[t]
                y[t] = <int16_t>((syn * (Q15 - w) + xt * w + HALF) >> 15)
            if x != y:
                memmove(y + m, x + m, (n - m) * sizeof(int16_t))
            self._erased = 0
        elif x != y:
            memmove(y, x, n * sizeof(int16_t))
        self._push(y)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _conceal(self, int16_t* y) noexcept:
        # y holds frame_samples samples (checked by acquire_frame).
        cdef int n = self.frame_samples
        cdef int i, audible
        cdef int end = 6 * self._ten_ms
        if self._filled == 0:
            memset(y, 0, n * sizeof(int16_t))
            return 0
        if self._erased == 0:
            self._start_erasure()
        for i in range(n):  # 0 <= i < n
            y[i] = <int16_t>self._synth(self._erased + i)
        audible = end - self._erased
        if audible < 0:
            audible = 0
        if audible > n:
            audible = n
        self._erased = self._erased + n if self._erased + n < end else end
        self._push(y)
        return audible

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _push(self, const int16_t* y) noexcept:
        # Append the n samples of y to the history, keeping the last hist_len.
        cdef int n = self.frame_samples
        cdef int h = self._hist_len
        cdef int16_t* hist = &self._hist[0]
        if n >= h:
            memcpy(hist, y + (n - h), h * sizeof(int16_t))
        else:
            memmove(hist, hist + n, (h - n) * sizeof(int16_t))
            memcpy(hist + (h - n), y, n * sizeof(int16_t))
        self._filled = self._filled + n if self._filled + n < h else h

    cdef void _start_erasure(self) noexcept:
        cdef int h = self._hist_len
        cdef int p
        self._src[:] = self._hist
        p = self._estimate_pitch()
        self._pitch = p
        self._overlap = p // 4
        # h - p - 1 >= h - pitch_max - 1 >= 0
        self._delta = <int64_t>self._src[h - 1] - self._src[h - p - 1]

    cdef int _estimate_pitch(self) noexcept:
        cdef int start = self._hist_len - self._corr_len
        cdef int step = self._decim
        cdef int lag, lo, hi, k, c, n_top
        cdef int best_lag
        cdef double best, score
        cdef double top_score[CANDIDATES]
        cdef int top_lag[CANDIDATES]
        n_top = 0
        lag = self._pitch_min - step
        while lag + step <= self._pitch_max:  # lag = pitch_min, pitch_min + step, ...
            lag += step
            score = self._score(start, lag, step)
            if score <= 0.0:
                continue
            k = n_top
            while k > 0 and score > top_score[k - 1]:
                k -= 1
            if k < CANDIDATES:
                # shift [k, n_top) down one place, dropping the last when full
                if n_top < CANDIDATES:
                    n_top += 1
                c = n_top - 1
                while c > k:
                    top_score[c] = top_score[c - 1]
                    top_lag[c] = top_lag[c - 1]
                    c -= 1
                top_score[k] = score
                top_lag[k] = lag
        if n_top == 0:
            return self._pitch_max
        best = 0.0
        best_lag = top_lag[0]
        for c in range(n_top):
            lo = top_lag[c] - step + 1
            if lo < self._pitch_min:
                lo = self._pitch_min
            hi = top_lag[c] + step - 1
            if hi > self._pitch_max:
                hi = self._pitch_max
            for lag in range(lo, hi + 1):
                score = self._score(start, lag, 1)
                if score > best:
                    best = score
                    best_lag = lag
        return best_lag

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef double _score(self, int start, int lag, int step) noexcept:
        # Indices: start - lag + i >= hist_len - corr_len - pitch_max >= 0 and
        # start + i < start + corr_len == hist_len.
        cdef const int16_t* x = &self._src[0]
        cdef int i
        cdef int64_t c = 0
        cdef int64_t e = 0
        cdef int64_t a
        i = 0
        while i < self._corr_len:  # i = 0, step, 2 * step, ... < corr_len
            a = x[start - lag + i]
            c += x[start + i] * a
            e += a * a
            i += step
        if c <= 0:
            return 0.0
        return <double>c * <double>c / <double>e

    @cython.boundscheck(False)
    @cython.wraparound(False)
    @cython.cdivision(True)
    cdef inline int64_t _segment(self, int periods, int n) noexcept:
        # span = periods * pitch <= 3 * pitch_max and overlap <= pitch_max // 4,
        # so base - overlap = hist_len - span - overlap >= 0 and base + j < hist_len.
        cdef const int16_t* x = &self._src[0]
        cdef int span = periods * self._pitch
        cdef int base = self._hist_len - span
        cdef int ov = self._overlap
        cdef int j = n % span
        cdef int tail = span - ov
        cdef int t
        cdef int64_t w
        if j < tail:
            return x[base + j]
        t = j - tail
        w = ((t + 1) << 15) // (ov + 1)
        return (x[base + j] * (Q15 - w) + x[base - ov + t] * w + HALF) >> 15

    @cython.cdivision(True)
    cdef int64_t _synth(self, int n) noexcept:
        cdef int ten = self._ten_ms
        cdef int ov = self._overlap
        cdef int periods, into
        cdef int64_t v, w, old, gain
        if n >= 6 * ten:
            return 0
        if n < ten:
            v = self._segment(1, n)
            if n < ov:
                v += (self._delta * ((<int64_t>(ov - n) << 15) // ov) + HALF) >> 15
        else:
            periods = 2 if n < 2 * ten else 3
            v = self._segment(periods, n)
            into = n - (periods - 1) * ten
            if into < ov:
                w = (<int64_t>(into + 1) << 15) // (ov + 1)
                old = self._segment(periods - 1, n)
                v = (old * (Q15 - w) + v * w + HALF) >> 15
            gain = Q15 - (<int64_t>(n - ten) * Q15) // (5 * ten)
            v = (v * gain + HALF) >> 15
        if v > 32767:
            return 32767
        if v < -32768:
            return -32768
        return v


# -- C API for other native kernels ---------------------------------------------

ctypedef int (*good_fn)(object plc, const int16_t* x, int16_t* y) except -1
ctypedef int (*conceal_fn)(object plc, int16_t* y) except -1

cdef struct ConcealerCApi:
    # good(plc, x, y): Concealer.good_into on raw frames; conceal(plc, y):
    # Concealer.conceal_into, returning the audible sample count.  ``plc`` must
    # be a Concealer (checked); x and y must hold its frame_samples samples
    # (the caller's duty, as for any C pointer) and may alias.
    good_fn good
    conceal_fn conceal


cdef int _capi_good(object plc, const int16_t* x, int16_t* y) except -1:
    (<Concealer?>plc)._good(x, y)
    return 0


cdef int _capi_conceal(object plc, int16_t* y) except -1:
    return (<Concealer?>plc)._conceal(y)


cdef ConcealerCApi _capi
_capi.good = _capi_good
_capi.conceal = _capi_conceal
C_API = PyCapsule_New(<void*>&_capi, b"engine._plc.C_API_v1", NULL)
