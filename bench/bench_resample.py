"""Streaming resampling of one 20 ms chunk of int16 PCM.

Groups ``resample_8k_16k`` (telephony in, to the VAD/STT rate) and
``resample_24k_8k`` (TTS out, to telephony).  Impls:

- ``voxgate``: :class:`engine.polyphase.PolyphaseResampler.process_into` into a
  preallocated buffer (native polyphase FIR, 60 dB stopband, ~2.3 ms delay).
- ``soxr_stream``: :class:`engine.resample.StreamResampler`, the soxr wrapper
  ("HQ", int32 in/out, saturation to int16).
- ``soxr_raw``: ``soxr.ResampleStream(dtype="int16").resample_chunk`` alone.
- ``pyav``: ``av.AudioResampler`` fed one ``AudioFrame`` per chunk, the way
  aiortc resamples each frame (libswresample, its default filter).
- ``numpy``: streaming linear interpolation with ``np.interp`` (state: the last
  sample and the fractional phase).  No anti-alias filter: a speed baseline,
  not a quality peer.

Outside the timed call every impl must keep a 440 Hz tone's frequency, and
voxgate must agree with soxr's one-shot resampling (after removing voxgate's
delay) to within :data:`MIN_AGREEMENT_DB` on a passband multi-tone.

Each benchmark also carries a table (``extra_info["table_rows"]``) of what the
impls cost in delay and quality, measured on 1 s of audio in 20 ms chunks:

- ``delay_ms``: how far the output trails the input in real time: the lag of
  the output's content (cross-correlation with the ideal signal) plus the most
  output ever held back behind the input at a chunk boundary.
- ``snr_db``: a 1 kHz sine's power over everything else in the output
  (noise, distortion, images), by a least-squares fit of the sine.
- ``alias_rejection_db``: the worst case over a sweep of tones
  (:data:`ALIAS_TONES_HZ`).  8k->16k: each tone (0.5-3.4 kHz) over its image at
  8 kHz - f.  24k->8k: each input tone above the 4 kHz output Nyquist (4.1-11 kHz,
  which would fold into 0-4 kHz) over what comes out.

Unwanted power is floored at int16 rounding noise (1/12 LSB^2), so about 88 dB
is the best ``snr_db`` and ``alias_rejection_db`` can show.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt
import pytest
import soxr

from bench.conftest import Measure
from engine.polyphase import PolyphaseResampler
from engine.resample import StreamResampler

IMPLS: Final = ["voxgate", "soxr_stream", "soxr_raw", "pyav", "numpy"]
PAIRS: Final = [(8000, 16000), (24000, 8000)]
ALIAS_TONES_HZ: Final = {
    (8000, 16000): [500.0, 1000.0, 2000.0, 3000.0, 3400.0],
    (24000, 8000): [4100.0, 4500.0, 5000.0, 6000.0, 8000.0, 11000.0],
}
"""Tones whose images (upsampling) or aliases (downsampling) the quality table measures."""
MIN_AGREEMENT_DB: Final = 60.0
"""Least SNR of voxgate against soxr one-shot (HQ) on tones below 0.3 x the lower rate."""

Int16Array = npt.NDArray[np.int16]
Resample = Callable[[Int16Array], Int16Array]


class NumpyLinearStream:
    """Linear interpolation across chunk borders with ``np.interp``."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int) -> None:
        self.step = in_rate_hz / out_rate_hz  # input samples per output sample
        self.phase = 0.0  # position of the next output sample, in input samples
        self.previous = 0.0  # last input sample of the previous chunk (position -1)
        self.grid = np.arange(-1, 0, dtype=np.float64)

    def process(self, x: Int16Array) -> Int16Array:
        n = len(x)
        if len(self.grid) != n + 1:
            self.grid = np.arange(-1, n, dtype=np.float64)
        count = int((n - 1 - self.phase) // self.step) + 1 if self.phase <= n - 1 else 0
        at = self.phase + self.step * np.arange(count)
        y = np.interp(at, self.grid, np.concatenate(([self.previous], x)))
        self.phase += count * self.step - n
        self.previous = float(x[-1])
        out: Int16Array = np.rint(y).astype(np.int16)
        return out


def pyav_stream(in_rate_hz: int, out_rate_hz: int) -> Resample:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate_hz)
    pts = 0

    def process(x: Int16Array) -> Int16Array:
        nonlocal pts
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = in_rate_hz
        frame.pts = pts
        pts += len(x)
        out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        y: Int16Array = np.concatenate(out) if out else np.zeros(0, np.int16)
        return y

    return process


def voxgate_stream(in_rate_hz: int, out_rate_hz: int) -> Resample:
    """An allocating adapter for the quality checks; the benchmark times process_into."""
    return PolyphaseResampler(in_rate_hz, out_rate_hz).process


def soxr_raw_stream(in_rate_hz: int, out_rate_hz: int) -> Resample:
    stream = soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="int16")
    process: Resample = stream.resample_chunk
    return process


def make(impl: str, in_rate_hz: int, out_rate_hz: int) -> Resample:
    if impl == "voxgate":
        return voxgate_stream(in_rate_hz, out_rate_hz)
    if impl == "soxr_stream":
        return StreamResampler(in_rate_hz, out_rate_hz).process
    if impl == "soxr_raw":
        return soxr_raw_stream(in_rate_hz, out_rate_hz)
    if impl == "pyav":
        return pyav_stream(in_rate_hz, out_rate_hz)
    return NumpyLinearStream(in_rate_hz, out_rate_hz).process


# ---------------------------------------------------------------- signals


def tones(
    rate_hz: int, n: int, freqs_hz: npt.NDArray[np.float64], phases: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    t = np.arange(n) / rate_hz
    total = np.zeros(n)
    for f, p in zip(freqs_hz, phases, strict=True):
        total += np.sin(2 * np.pi * f * t + p)
    return total


def tone(rate_hz: int, n: int, freq_hz: float, amp: float = 10000.0) -> Int16Array:
    return np.round(amp * tones(rate_hz, n, np.array([freq_hz]), np.zeros(1))).astype(np.int16)


def stream_chunks(process: Resample, x: Int16Array, n_chunk: int) -> tuple[Int16Array, list[int]]:
    """Output of ``x`` fed in chunks of ``n_chunk``, and the output count after each chunk."""
    parts: list[Int16Array] = []
    counts: list[int] = []
    total = 0
    for i in range(0, len(x), n_chunk):
        parts.append(process(x[i : i + n_chunk]))
        total += len(parts[-1])
        counts.append(total)
    return np.concatenate(parts), counts


def fitted_power(y: npt.NDArray[np.float64], rate_hz: int, freqs_hz: list[float]) -> list[float]:
    """Power of each sinusoid in ``y`` (least-squares fit of all of them), then of the rest."""
    t = np.arange(len(y)) / rate_hz
    basis = np.column_stack(
        [fn(2 * np.pi * f * t) for f in freqs_hz for fn in (np.sin, np.cos)] + [np.ones(len(y))]
    )
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    powers = [(coef[2 * k] ** 2 + coef[2 * k + 1] ** 2) / 2 for k in range(len(freqs_hz))]
    residual = y - basis @ coef
    return [float(p) for p in powers] + [float(np.mean(residual**2))]


ROUNDING_POWER: Final = 1 / 12
"""Power (LSB^2) of int16 rounding noise: the floor under any measured unwanted power."""


def db(wanted: float, unwanted: float) -> float:
    """``10 log10(wanted / unwanted)``, the unwanted power floored at int16 rounding noise."""
    return float(10 * np.log10(wanted / max(unwanted, ROUNDING_POWER)))


# ---------------------------------------------------------------- quality table


def measure_delay_ms(impl: str, in_rate_hz: int, out_rate_hz: int) -> float:
    rng = np.random.default_rng(11)
    freqs = rng.uniform(50, 0.35 * min(in_rate_hz, out_rate_hz), 40)
    phases = rng.uniform(0, 2 * np.pi, 40)
    x = np.round(300 * tones(in_rate_hz, in_rate_hz, freqs, phases)).astype(np.int16)
    n_chunk = in_rate_hz // 50
    y, counts = stream_chunks(make(impl, in_rate_hz, out_rate_hz), x, n_chunk)
    ideal = 300 * tones(out_rate_hz, out_rate_hz, freqs, phases)
    max_lag = out_rate_hz // 4
    usable = min(len(y), len(ideal)) - max_lag
    corr = np.correlate(y[: usable + max_lag].astype(np.float64), ideal[:usable], mode="valid")
    lag = int(np.argmax(corr))
    ratio = out_rate_hz / in_rate_hz
    held = max((k + 1) * n_chunk * ratio - n for k, n in enumerate(counts))
    return (lag + held) * 1000 / out_rate_hz


def measure_snr_db(impl: str, in_rate_hz: int, out_rate_hz: int) -> float:
    x = tone(in_rate_hz, in_rate_hz, 1000.0)
    y, _ = stream_chunks(make(impl, in_rate_hz, out_rate_hz), x, in_rate_hz // 50)
    steady = y[out_rate_hz // 5 : len(y) - out_rate_hz // 10].astype(np.float64)
    sine, rest = fitted_power(steady, out_rate_hz, [1000.0])
    return db(sine, rest)


def measure_alias_rejection_db(impl: str, in_rate_hz: int, out_rate_hz: int) -> float:
    """Worst case over :data:`ALIAS_TONES_HZ` (see the module docstring)."""
    worst = math.inf
    for freq_hz in ALIAS_TONES_HZ[in_rate_hz, out_rate_hz]:
        x = tone(in_rate_hz, in_rate_hz, freq_hz)
        y, _ = stream_chunks(make(impl, in_rate_hz, out_rate_hz), x, in_rate_hz // 50)
        steady = y[out_rate_hz // 5 : len(y) - out_rate_hz // 10].astype(np.float64)
        if out_rate_hz > in_rate_hz:  # the tone over its image at in - f
            wanted, image, _ = fitted_power(steady, out_rate_hz, [freq_hz, in_rate_hz - freq_hz])
            worst = min(worst, db(wanted, image))
        else:  # the input tone over whatever folds into the output
            worst = min(
                worst, db(float(np.mean(x.astype(np.float64) ** 2)), float(np.mean(steady**2)))
            )
    return worst


@functools.cache
def quality_rows() -> tuple[dict[str, Any], ...]:
    rows = []
    for in_rate_hz, out_rate_hz in PAIRS:
        for impl in IMPLS:
            rows.append(
                {
                    "impl": impl,
                    "pair": f"{in_rate_hz // 1000}k->{out_rate_hz // 1000}k",
                    "delay_ms": round(measure_delay_ms(impl, in_rate_hz, out_rate_hz), 2),
                    "snr_db": round(measure_snr_db(impl, in_rate_hz, out_rate_hz), 1),
                    "alias_rejection_db": round(
                        measure_alias_rejection_db(impl, in_rate_hz, out_rate_hz), 1
                    ),
                }
            )
    return tuple(rows)


# ---------------------------------------------------------------- checks


def check_tone(impl: str, in_rate_hz: int, out_rate_hz: int) -> None:
    """1 s of 440 Hz in 20 ms chunks: frequency kept, length short by at most the delay."""
    x = tone(in_rate_hz, in_rate_hz, 440.0)
    y, _ = stream_chunks(make(impl, in_rate_hz, out_rate_hz), x, in_rate_hz // 50)
    max_delay = 0.2 * out_rate_hz  # soxr holds back at most 117 ms for these pairs
    assert out_rate_hz - max_delay <= len(y) <= out_rate_hz + 1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * out_rate_hz / len(y) - 440.0) <= 2 * out_rate_hz / len(y)


def check_voxgate_agrees_with_soxr(in_rate_hz: int, out_rate_hz: int) -> None:
    rng = np.random.default_rng(3)
    freqs = rng.uniform(100, 0.3 * min(in_rate_hz, out_rate_hz), 40)
    phases = rng.uniform(0, 2 * np.pi, 40)
    x = np.round(400 * tones(in_rate_hz, in_rate_hz, freqs, phases)).astype(np.int16)
    r = PolyphaseResampler(in_rate_hz, out_rate_hz)
    ours = np.concatenate([r.process(x), r.flush()])[r.delay_samples :].astype(np.float64)
    theirs = soxr.resample(x.astype(np.float32), in_rate_hz, out_rate_hz, quality="HQ")
    edge = out_rate_hz // 10
    a = theirs[edge:-edge].astype(np.float64)
    b = ours[edge : len(theirs) - edge]
    assert db(float(np.mean(a**2)), float(np.mean((a - b) ** 2))) >= MIN_AGREEMENT_DB


# ---------------------------------------------------------------- benchmarks


def run(benchmark: Any, measure: Measure, impl: str, in_rate_hz: int, out_rate_hz: int) -> None:
    check_tone(impl, in_rate_hz, out_rate_hz)
    benchmark.extra_info["table_title"] = "resampler delay (ms) and quality"
    benchmark.extra_info["table_rows"] = list(quality_rows())
    chunk = tone(in_rate_hz, in_rate_hz // 50, 440.0)
    if impl == "voxgate":
        check_voxgate_agrees_with_soxr(in_rate_hz, out_rate_hz)
        r = PolyphaseResampler(in_rate_hz, out_rate_hz)
        out = np.empty(r.max_output(len(chunk)), dtype=np.int16)
        measure(impl, r.process_into, chunk, out, frames=1)
        return
    measure(impl, make(impl, in_rate_hz, out_rate_hz), chunk, frames=1)


@pytest.mark.benchmark(group="resample_8k_16k")
@pytest.mark.parametrize("impl", IMPLS)
def test_resample_8k_16k(benchmark: Any, measure: Measure, impl: str) -> None:
    run(benchmark, measure, impl, 8000, 16000)


@pytest.mark.benchmark(group="resample_24k_8k")
@pytest.mark.parametrize("impl", IMPLS)
def test_resample_24k_8k(benchmark: Any, measure: Measure, impl: str) -> None:
    run(benchmark, measure, impl, 24000, 8000)
