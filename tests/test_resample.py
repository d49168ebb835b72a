"""Streaming resampler: equals one-shot soxr, exact lengths, no drift, delay, validation."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.format import SUPPORTED_RATES_HZ
from engine.resample import StreamResampler

PAIRS = list(itertools.permutations(SUPPORTED_RATES_HZ, 2))
PAIR_IDS = [f"{a}-{b}" for a, b in PAIRS]


def _tones(rate_hz: int, n: int, freqs_hz: list[float], phases: list[float], amp: float) -> Any:
    t = np.arange(n) / rate_hz
    return sum(amp * np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs_hz, phases, strict=True))


def _sine(
    rate_hz: int, n: int, freq_hz: float = 440.0, amp: float = 12000.0
) -> npt.NDArray[np.int16]:
    t = np.arange(n) / rate_hz
    return np.round(amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def _one_shot(x: npt.NDArray[np.int16], in_hz: int, out_hz: int) -> npt.NDArray[np.int16]:
    """soxr's one-shot resampling, rounded and saturated to int16 without dither."""
    y: npt.NDArray[np.float32] = soxr.resample(x.astype(np.float32), in_hz, out_hz, quality="HQ")
    return np.rint(np.clip(y, -32768, 32767)).astype(np.int16)


def _stream(
    r: StreamResampler, x: npt.NDArray[np.int16], sizes: list[int]
) -> npt.NDArray[np.int16]:
    parts = []
    pos = 0
    for size in sizes:
        parts.append(r.process(x[pos : pos + size]))
        pos += size
    parts.append(r.process(x[pos:]))
    parts.append(r.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize(("in_hz", "out_hz"), PAIRS, ids=PAIR_IDS)
def test_20ms_chunks_equal_one_shot(in_hz: int, out_hz: int) -> None:
    n_chunk = in_hz // 50
    x = _sine(in_hz, 50 * n_chunk)
    x[n_chunk * 10 : n_chunk * 11] = 32767  # a full-scale step: soxr overshoots, we saturate
    y = _stream(StreamResampler(in_hz, out_hz), x, [n_chunk] * 50)
    expected = _one_shot(x, in_hz, out_hz)
    assert len(y) == len(expected)
    assert np.array_equal(y, expected)  # no clicks at chunk borders: identical samples
    # soxr's own int16 one-shot differs only by its +-1 LSB TPDF dither.
    dithered = soxr.resample(x, in_hz, out_hz, quality="HQ")
    assert np.max(np.abs(dithered.astype(np.int32) - y)) <= 2


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    sizes=st.lists(st.integers(0, 2000), min_size=1, max_size=30),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_chunking_equals_one_shot(pair: tuple[int, int], sizes: list[int], seed: int) -> None:
    in_hz, out_hz = pair
    rng = np.random.default_rng(seed)
    x = rng.integers(-32768, 32768, sum(sizes) + int(rng.integers(0, 500)), dtype=np.int16)
    y = _stream(StreamResampler(in_hz, out_hz), x, sizes)
    assert np.array_equal(y, _one_shot(x, in_hz, out_hz))


@pytest.mark.parametrize(("in_hz", "out_hz"), PAIRS, ids=PAIR_IDS)
def test_length_exact_and_no_drift_over_a_long_stream(in_hz: int, out_hz: int) -> None:
    r = StreamResampler(in_hz, out_hz)
    ratio = out_hz / in_hz
    holdback_max = r.delay_ms * out_hz / 1000
    chunk = np.zeros(in_hz // 50, dtype=np.int16)
    n_in = n_out = 0
    for _ in range(3000):  # 60 s
        n_out += len(r.process(chunk))
        n_in += len(chunk)
        held = n_in * ratio - n_out
        assert -1 < held <= holdback_max + 1e-9  # never ahead, never drifting behind
    n_out += len(r.flush())
    assert abs(n_out - n_in * ratio) <= 1


@pytest.mark.parametrize(("in_hz", "out_hz"), PAIRS, ids=PAIR_IDS)
def test_frequency_is_preserved(in_hz: int, out_hz: int) -> None:
    freq_hz = 1000.0
    n_chunk = in_hz // 50
    x = _sine(in_hz, 50 * n_chunk, freq_hz)
    y = _stream(StreamResampler(in_hz, out_hz), x, [n_chunk] * 50).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * out_hz / len(y)
    assert abs(peak_hz - freq_hz) <= out_hz / len(y)
    # And the level is kept: RMS of a 12000-amplitude sine, away from the edges.
    mid = y[len(y) // 4 : 3 * len(y) // 4]
    assert abs(np.sqrt(np.mean(mid**2)) - 12000 / np.sqrt(2)) < 12000 * 0.01


@pytest.mark.parametrize(
    ("in_hz", "out_hz"), [(8000, 16000), (24000, 8000), (44100, 16000), (16000, 48000)]
)
def test_output_is_aligned_with_input_by_cross_correlation(in_hz: int, out_hz: int) -> None:
    """soxr compensates its filter delay: the streamed output lines up with the ideal
    signal at lag 0, so all of the delay is hold-back, which delay_ms bounds."""
    rng = np.random.default_rng(7)
    band_hz = 0.4 * min(in_hz, out_hz)
    freqs = list(rng.uniform(50, band_hz, 60))
    phases = list(rng.uniform(0, 2 * np.pi, 60))
    seconds = 1.0
    x = np.round(_tones(in_hz, int(in_hz * seconds), freqs, phases, 400.0)).astype(np.int16)
    ideal = _tones(out_hz, int(out_hz * seconds), freqs, phases, 400.0)
    n_chunk = in_hz // 50
    y = _stream(StreamResampler(in_hz, out_hz), x, [n_chunk] * 49).astype(np.float64)
    n = min(len(y), len(ideal))
    max_lag = out_hz // 10
    corr = np.correlate(y[:n], ideal[max_lag : n - max_lag], mode="valid")
    assert int(np.argmax(corr)) - max_lag == 0


@pytest.mark.parametrize(
    ("in_hz", "out_hz", "quality"),
    [(8000, 16000, "HQ"), (24000, 8000, "HQ"), (48000, 16000, "MQ"), (22050, 8000, "LQ")],
)
def test_delay_ms_bounds_the_hold_back_and_is_reached(
    in_hz: int, out_hz: int, quality: str
) -> None:
    r = StreamResampler(in_hz, out_hz, quality)
    rng = np.random.default_rng(3)
    ratio = out_hz / in_hz
    n_in = n_out = 0
    worst_ms = 0.0
    for _ in range(600):
        size = int(rng.integers(1, in_hz // 100))  # up to 10 ms per chunk
        n_out += len(r.process(np.zeros(size, dtype=np.int16)))
        n_in += size
        held_ms = (n_in * ratio - n_out) * 1000 / out_hz
        assert held_ms <= r.delay_ms + 1e-9
        assert r.pending_ms == pytest.approx(held_ms, abs=1000 / out_hz)
        worst_ms = max(worst_ms, held_ms)
    # Tight: within the chunk size, one measuring step and the 2 % margin.
    assert worst_ms >= r.delay_ms * 0.98 - 10 - 1
    assert r.delay_ms > 0


def test_silence_stays_digital_silence() -> None:
    r = StreamResampler(24000, 8000)
    out = np.concatenate([r.process(np.zeros(480, dtype=np.int16)) for _ in range(50)])
    assert len(out) > 0
    assert not out.any()


def test_bytes_and_arrays_give_the_same_result() -> None:
    x = _sine(16000, 3200)
    a = StreamResampler(16000, 8000)
    b = StreamResampler(16000, 8000)
    ya = np.concatenate([a.process(x), a.flush()])
    yb = np.concatenate([b.process(x.tobytes()), b.flush()])
    assert np.array_equal(ya, yb)


def test_flush_starts_a_fresh_segment() -> None:
    x = _sine(8000, 1600)
    r = StreamResampler(8000, 16000)
    first = np.concatenate([r.process(_sine(8000, 777, 300.0)), r.flush()])
    assert len(first) == 1554
    again = np.concatenate([r.process(x), r.flush()])
    fresh = StreamResampler(8000, 16000)
    assert np.array_equal(again, np.concatenate([fresh.process(x), fresh.flush()]))


def test_reset_drops_pending_output() -> None:
    r = StreamResampler(8000, 16000)
    r.process(_sine(8000, 800))
    assert r.pending_ms > 0
    r.reset()
    assert r.pending_ms == 0
    assert len(r.flush()) == 0


@pytest.mark.parametrize("rate_hz", SUPPORTED_RATES_HZ)
def test_equal_rates_pass_through(rate_hz: int) -> None:
    r = StreamResampler(rate_hz, rate_hz)
    x = _sine(rate_hz, 321)
    assert r.process(x) is x
    assert np.array_equal(r.process(x.tobytes()), x)
    assert r.delay_ms == 0
    assert r.pending_ms == 0
    assert len(r.flush()) == 0


@pytest.mark.parametrize(
    ("in_hz", "out_hz", "quality"),
    [
        (11025, 16000, "HQ"),
        (16000, 32000, "HQ"),
        (0, 8000, "HQ"),
        (8000.0, 16000, "HQ"),
        (8000, 16000, "best"),
    ],
)
def test_refuses_unsupported_configuration(in_hz: Any, out_hz: int, quality: str) -> None:
    with pytest.raises(ValueError):
        StreamResampler(in_hz, out_hz, quality)


@pytest.mark.parametrize(
    "pcm",
    [
        b"\x00\x01\x02",  # odd byte count
        np.zeros(4, dtype=np.float32),
        np.zeros(4, dtype=np.int32),
        np.zeros((4, 2), dtype=np.int16),  # not mono
        [0, 1, 2],
    ],
)
def test_refuses_bad_pcm(pcm: object) -> None:
    r = StreamResampler(8000, 16000)
    with pytest.raises(ValueError):
        r.process(pcm)  # type: ignore[arg-type]
    p = StreamResampler(8000, 8000)
    with pytest.raises(ValueError):
        p.process(pcm)  # type: ignore[arg-type]
