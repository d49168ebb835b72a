"""Streaming resampling of one 20 ms chunk of int16 PCM.

Groups ``resample_8k_16k`` (telephony in, to the VAD/STT rate) and
``resample_24k_8k`` (TTS out, to telephony).  Impls:

- ``voxgate``: :class:`engine.resample.StreamResampler` (soxr "HQ", no dither).
- ``pyav``: ``av.AudioResampler`` fed one ``AudioFrame`` per chunk, the way
  aiortc resamples each frame (libswresample, its default filter).
- ``numpy``: streaming linear interpolation with ``np.interp`` (state: the last
  sample and the fractional phase).  It is cheap but has no anti-alias filter:
  on 24 kHz -> 8 kHz a 5 kHz tone folds back to 3 kHz at full level (0 dB)
  where soxr removes it entirely, so it is a speed baseline, not a quality peer.

Before timing, each impl resamples 1 s of a 440 Hz tone in 20 ms chunks and
must keep its frequency and (within its delay) the expected length.
"""

from __future__ import annotations

from collections.abc import Callable

import av
import numpy as np
import numpy.typing as npt
import pytest

from bench.conftest import Measure
from engine.resample import StreamResampler

IMPLS = ["voxgate", "pyav", "numpy"]
Resample = Callable[[npt.NDArray[np.int16]], npt.NDArray[np.int16]]


class NumpyLinearStream:
    """Linear interpolation across chunk borders with ``np.interp``."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int) -> None:
        self.step = in_rate_hz / out_rate_hz  # input samples per output sample
        self.phase = 0.0  # position of the next output sample, in input samples
        self.previous = 0.0  # last input sample of the previous chunk (position -1)
        self.grid = np.arange(-1, 0, dtype=np.float64)

    def process(self, x: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        n = len(x)
        if len(self.grid) != n + 1:
            self.grid = np.arange(-1, n, dtype=np.float64)
        count = int((n - 1 - self.phase) // self.step) + 1 if self.phase <= n - 1 else 0
        at = self.phase + self.step * np.arange(count)
        y = np.interp(at, self.grid, np.concatenate(([self.previous], x)))
        self.phase += count * self.step - n
        self.previous = float(x[-1])
        out: npt.NDArray[np.int16] = np.rint(y).astype(np.int16)
        return out


def pyav_stream(in_rate_hz: int, out_rate_hz: int) -> Resample:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate_hz)
    pts = 0

    def process(x: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        nonlocal pts
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = in_rate_hz
        frame.pts = pts
        pts += len(x)
        out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        y: npt.NDArray[np.int16] = np.concatenate(out) if out else np.zeros(0, np.int16)
        return y

    return process


def make(impl: str, in_rate_hz: int, out_rate_hz: int) -> Resample:
    if impl == "voxgate":
        return StreamResampler(in_rate_hz, out_rate_hz).process
    if impl == "pyav":
        return pyav_stream(in_rate_hz, out_rate_hz)
    return NumpyLinearStream(in_rate_hz, out_rate_hz).process


def tone(rate_hz: int, n: int, freq_hz: float) -> npt.NDArray[np.int16]:
    t = np.arange(n) / rate_hz
    return np.round(10000 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def check_tone(impl: str, in_rate_hz: int, out_rate_hz: int) -> None:
    """1 s of 440 Hz in 20 ms chunks: frequency kept, length short by at most the delay."""
    process = make(impl, in_rate_hz, out_rate_hz)
    x = tone(in_rate_hz, in_rate_hz, 440.0)
    n_chunk = in_rate_hz // 50
    y = np.concatenate([process(x[i : i + n_chunk]) for i in range(0, len(x), n_chunk)])
    max_delay = 0.2 * out_rate_hz  # soxr holds back at most 117 ms for these pairs
    assert out_rate_hz - max_delay <= len(y) <= out_rate_hz + 1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * out_rate_hz / len(y) - 440.0) <= 2 * out_rate_hz / len(y)


def run(measure: Measure, impl: str, in_rate_hz: int, out_rate_hz: int) -> None:
    check_tone(impl, in_rate_hz, out_rate_hz)
    process = make(impl, in_rate_hz, out_rate_hz)
    chunk = tone(in_rate_hz, in_rate_hz // 50, 440.0)
    measure(impl, process, chunk, frames=1)


@pytest.mark.benchmark(group="resample_8k_16k")
@pytest.mark.parametrize("impl", IMPLS)
def test_resample_8k_16k(measure: Measure, impl: str) -> None:
    run(measure, impl, 8000, 16000)


@pytest.mark.benchmark(group="resample_24k_8k")
@pytest.mark.parametrize("impl", IMPLS)
def test_resample_24k_8k(measure: Measure, impl: str) -> None:
    run(measure, impl, 24000, 8000)
