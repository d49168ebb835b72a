"""Pure-Python specification of the ``engine._plc`` kernel: packet-loss concealment.

Pitch-repetition concealment in the spirit of ITU-T G.711 Appendix I, written
from its description.  All arithmetic is on exact integers (Q15 weights, ``>>``
rounding) except one double-precision score per pitch candidate, computed with
the same three IEEE operations in both implementations, so the native kernel
matches this module bit for bit.

Timeline of one erasure (``n`` counts concealed samples since the last good one,
``T`` is 10 ms of samples):

* ``n == 0``: freeze the history, estimate the pitch period ``P`` (5..15 ms) by
  normalised autocorrelation (coarse on a ~4 kHz grid, then refined around the
  three best coarse lags).
* ``0 <= n < T``: repeat the last period; the first ``P // 4`` samples carry a
  decaying offset so the waveform leaves the last real sample without a step.
* ``T <= n < 2T``: repeat the last two periods, ``n >= 2T``: the last three
  (each switch crossfades over ``P // 4`` samples), so long gaps buzz less.
* gain: 1 up to ``T``, then down 20 % per 10 ms, 0 from ``6T`` (60 ms) on.
* first good frame: crossfade from the continued synthetic signal into the real
  one over ``P // 4`` samples plus 4 ms per extra 10 ms erased (at most 10 ms).

Every output frame, real or concealed, goes into the history, so the history is
always the continuous signal that was played.
"""

from __future__ import annotations

from array import array
from typing import Final

from engine.format import SUPPORTED_RATES_HZ

FRAME_MS_CHOICES: Final = (10, 20, 30, 40, 60)
"""Frame durations the concealer accepts (common RTP packetisation intervals)."""

MAX_CONCEAL_MS: Final = 60
"""After this much concealment the output is silence."""

_CANDIDATES: Final = 3  # coarse pitch candidates refined at full resolution
_Q15: Final = 1 << 15
_HALF: Final = 1 << 14
_INT16_FORMATS: Final = frozenset({"h", "<h", "=h"})
_BYTE_FORMATS: Final = frozenset({"B", "b", "c"})


def check_config(rate_hz: object, frame_ms: object) -> int:
    """Validate a (rate, frame) pair; return samples per frame."""
    if type(rate_hz) is not int or rate_hz not in SUPPORTED_RATES_HZ:
        raise ValueError(f"rate_hz must be one of {SUPPORTED_RATES_HZ}, got {rate_hz!r}")
    if type(frame_ms) is not int or frame_ms not in FRAME_MS_CHOICES:
        raise ValueError(f"frame_ms must be one of {FRAME_MS_CHOICES}, got {frame_ms!r}")
    if rate_hz * frame_ms % 1000:
        raise ValueError(f"{frame_ms} ms is not a whole number of samples at {rate_hz} Hz")
    return rate_hz * frame_ms // 1000


def read_frame(pcm: object, n_samples: int, name: str) -> list[int]:
    """Samples of one frame given as an int16 buffer or little-endian bytes."""
    view = _view(pcm, writable=False, name=name)
    if view.nbytes != 2 * n_samples:
        raise ValueError(f"{name} holds {view.nbytes} bytes, expected {2 * n_samples}")
    return list(view.cast("B").cast("h"))


def check_out(out: object, n_samples: int, name: str = "out") -> None:
    """Refuse anything but a writable buffer of exactly ``n_samples`` int16 samples."""
    view = _view(out, writable=True, name=name)
    if view.nbytes != 2 * n_samples:
        raise ValueError(f"{name} holds {view.nbytes} bytes, expected {2 * n_samples}")


def write_frame(out: object, values: list[int], name: str = "out") -> None:
    """Store ``values`` into a writable int16 buffer (or bytearray) of the same length."""
    check_out(out, len(values), name)
    memoryview(out).cast("B").cast("h")[:] = array("h", values)  # type: ignore[arg-type]


def _view(obj: object, *, writable: bool, name: str) -> memoryview:
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an int16 array or bytes-like, got {type(obj)}") from None
    if writable and view.readonly:
        raise ValueError(f"{name} must be writable")
    if not view.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not (
        (view.format in _INT16_FORMATS and view.itemsize == 2)
        or (view.format in _BYTE_FORMATS and view.itemsize == 1)
    ):
        raise ValueError(f"{name} must hold int16 samples or bytes, got format {view.format!r}")
    return view


class Concealer:
    """Conceals lost frames of one mono int16 stream; see the module docstring."""

    def __init__(self, rate_hz: int = 8000, frame_ms: int = 20) -> None:
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
        self._hist = [0] * self._hist_len
        self._src = [0] * self._hist_len
        self.reset()

    def reset(self) -> None:
        """Forget the history and any erasure in progress."""
        for i in range(self._hist_len):
            self._hist[i] = 0
        self._filled = 0
        self._erased = 0
        self._pitch = self._pitch_max
        self._overlap = self._pitch_max // 4
        self._delta = 0

    @property
    def erased_samples(self) -> int:
        """Samples concealed since the last good frame (capped at 60 ms)."""
        return self._erased

    @property
    def pitch_samples(self) -> int:
        """Pitch period (samples) used by the current or last erasure."""
        return self._pitch

    def good_into(self, src: object, out: object) -> int:
        """Write a received frame to ``out`` (crossfaded after a loss); return samples written."""
        x = read_frame(src, self.frame_samples, "src")
        check_out(out, self.frame_samples)
        write_frame(out, self.good(x))
        return self.frame_samples

    def conceal_into(self, out: object) -> int:
        """Write one concealment frame to ``out``.

        Returns how many of its samples are synthesised audio (gain > 0); 0 means
        the frame is silence (nothing heard yet, or concealment ran out).
        """
        check_out(out, self.frame_samples)
        y, audible = self.conceal()
        write_frame(out, y)
        return audible

    def good(self, x: list[int]) -> list[int]:
        """The output for received frame ``x`` (a list of frame_samples ints)."""
        n = self.frame_samples
        y = list(x)
        if self._erased > 0:
            ten = self._ten_ms
            blocks = (self._erased + ten - 1) // ten - 1
            m = min(self._overlap + blocks * self._merge_step, ten, n)
            for t in range(m):
                syn = self._synth(self._erased + t)
                w = ((t + 1) << 15) // (m + 1)
                y[t] = (syn * (_Q15 - w) + x[t] * w + _HALF) >> 15
            self._erased = 0
        self._push(y)
        return y

    def conceal(self) -> tuple[list[int], int]:
        """One concealment frame and its count of audible samples (see conceal_into)."""
        n = self.frame_samples
        if self._filled == 0:
            return [0] * n, 0
        if self._erased == 0:
            self._start_erasure()
        y = [self._synth(self._erased + i) for i in range(n)]
        end = 6 * self._ten_ms
        audible = min(n, max(0, end - self._erased))
        self._erased = min(self._erased + n, end)
        self._push(y)
        return y, audible

    def _push(self, y: list[int]) -> None:
        h = self._hist_len
        n = len(y)
        if n >= h:
            self._hist[:] = y[n - h :]
        else:
            self._hist[: h - n] = self._hist[n:]
            self._hist[h - n :] = y
        self._filled = min(h, self._filled + n)

    def _start_erasure(self) -> None:
        self._src[:] = self._hist
        p = self._estimate_pitch()
        h = self._hist_len
        self._pitch = p
        self._overlap = p // 4
        self._delta = self._src[h - 1] - self._src[h - p - 1]

    def _estimate_pitch(self) -> int:
        """Pitch period in samples: the best of a coarse grid, refined around its top 3."""
        x = self._src
        start = self._hist_len - self._corr_len
        step = self._decim
        top: list[tuple[float, int]] = []  # (score, lag), best first, earlier lag on ties
        for lag in range(self._pitch_min, self._pitch_max + 1, step):
            score = _score(x, start, lag, self._corr_len, step)
            if score <= 0.0:
                continue
            k = len(top)
            while k > 0 and score > top[k - 1][0]:
                k -= 1
            if k < _CANDIDATES:
                top.insert(k, (score, lag))
                del top[_CANDIDATES:]
        if not top:
            return self._pitch_max
        best = 0.0
        best_lag = top[0][1]
        for _, coarse in top:
            lo = max(self._pitch_min, coarse - step + 1)
            hi = min(self._pitch_max, coarse + step - 1)
            for lag in range(lo, hi + 1):
                score = _score(x, start, lag, self._corr_len, 1)
                if score > best:
                    best, best_lag = score, lag
        return best_lag

    def _segment(self, periods: int, n: int) -> int:
        """Sample ``n`` of the repetition of the last ``periods`` pitch periods."""
        x = self._src
        span = periods * self._pitch
        base = self._hist_len - span
        ov = self._overlap
        j = n % span
        tail = span - ov
        if j < tail:
            return x[base + j]
        t = j - tail
        w = ((t + 1) << 15) // (ov + 1)
        return (x[base + j] * (_Q15 - w) + x[base - ov + t] * w + _HALF) >> 15

    def _synth(self, n: int) -> int:
        """Concealed sample ``n`` of the current erasure, attenuated and clipped."""
        ten = self._ten_ms
        if n >= 6 * ten:
            return 0
        ov = self._overlap
        if n < ten:
            v = self._segment(1, n)
            if n < ov:
                v += (self._delta * (((ov - n) << 15) // ov) + _HALF) >> 15
        else:
            periods = 2 if n < 2 * ten else 3
            v = self._segment(periods, n)
            into = n - (periods - 1) * ten
            if into < ov:
                w = ((into + 1) << 15) // (ov + 1)
                old = self._segment(periods - 1, n)
                v = (old * (_Q15 - w) + v * w + _HALF) >> 15
            gain = _Q15 - ((n - ten) * _Q15) // (5 * ten)
            v = (v * gain + _HALF) >> 15
        return max(-32768, min(32767, v))


def _score(x: list[int], start: int, lag: int, length: int, step: int) -> float:
    """Normalised correlation score c*c/e of x[start:] with x[start-lag:], 0 if c <= 0."""
    c = 0
    e = 0
    for i in range(0, length, step):
        a = x[start - lag + i]
        c += x[start + i] * a
        e += a * a
    if c <= 0:
        return 0.0
    return float(c) * float(c) / float(e)
