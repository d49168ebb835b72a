"""engine.energy / engine._energy against the pure-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _energy
from engine.energy import (
    MAX_FRAME_SAMPLES,
    check_frame,
    dbfs_threshold,
    frame_energy_at_least,
    frame_peak,
    frame_rms_dbfs,
    frame_sum_squares,
    sum_squares_to_dbfs,
)
from engine.reference import energy as reference

int16_lists = st.lists(st.integers(-32768, 32767), max_size=2000)


def _pcm(samples: list[int]) -> bytes:
    return np.array(samples, dtype="<i2").tobytes()


@settings(max_examples=300)
@given(int16_lists)
def test_native_sum_squares_and_peak_match_reference(samples: list[int]) -> None:
    pcm = _pcm(samples)
    arr = np.array(samples, dtype=np.int16)
    want_sum = reference.sum_squares(pcm)
    want_peak = reference.peak(pcm)
    assert _energy.sum_squares_i16(arr) == want_sum
    assert _energy.sum_squares_le(pcm) == want_sum
    assert _energy.sum_squares_le(bytearray(pcm)) == want_sum
    assert _energy.peak_i16(arr) == want_peak
    assert _energy.peak_le(pcm) == want_peak
    assert frame_sum_squares(arr) == frame_sum_squares(pcm) == want_sum
    assert frame_peak(arr.data) == frame_peak(memoryview(pcm)) == want_peak


@settings(max_examples=300)
@given(int16_lists, st.integers(0, 2000 * 32768 * 32768 + 1))
def test_native_energy_gate_matches_reference(samples: list[int], threshold: int) -> None:
    pcm = _pcm(samples)
    arr = np.array(samples, dtype=np.int16)
    want = reference.sum_squares_at_least(pcm, threshold)
    assert _energy.sum_squares_at_least_i16(arr, threshold) is want
    assert _energy.sum_squares_at_least_le(pcm, threshold) is want
    assert frame_energy_at_least(arr, threshold) is want


def test_energy_gate_accepts_thresholds_beyond_any_frame() -> None:
    loud = np.full(320, -32768, dtype=np.int16)
    assert frame_energy_at_least(loud, 320 * 32768 * 32768) is True
    assert frame_energy_at_least(loud, 320 * 32768 * 32768 + 1) is False
    assert frame_energy_at_least(loud, 1 << 80) is False


@settings(max_examples=200)
@given(int16_lists)
def test_rms_dbfs_is_exactly_the_reference_formula(samples: list[int]) -> None:
    # dBFS is computed in Python from the exact integer sum, so there is no
    # tolerance: native and reference agree bit for bit.
    pcm = _pcm(samples)
    want = sum_squares_to_dbfs(reference.sum_squares(pcm), len(samples))
    got_bytes = frame_rms_dbfs(pcm)
    got_array = frame_rms_dbfs(np.array(samples, dtype=np.int16))
    if math.isinf(want):
        assert got_bytes == got_array == -math.inf
    else:
        assert got_bytes == got_array == want


@settings(max_examples=200)
@given(st.binary(max_size=1001))
def test_odd_trailing_byte_is_never_read(data: bytes) -> None:
    # The raw kernels read whole samples only; the wrapper refuses odd lengths.
    even = data[: len(data) // 2 * 2]
    assert _energy.sum_squares_le(data) == reference.sum_squares(even)
    assert _energy.peak_le(data) == reference.peak(even)
    if len(data) % 2:
        with pytest.raises(ValueError, match="odd byte count"):
            frame_sum_squares(data)


def test_known_levels() -> None:
    full = np.full(320, -32768, dtype=np.int16)
    assert frame_rms_dbfs(full) == 0.0
    assert frame_peak(full) == 32768
    assert frame_rms_dbfs(np.zeros(320, dtype=np.int16)) == -math.inf
    assert frame_rms_dbfs(b"") == -math.inf
    half = np.full(160, 16384, dtype=np.int16)
    assert frame_rms_dbfs(half) == pytest.approx(20 * math.log10(0.5))
    t = np.arange(16000) / 16000
    sine = np.round(np.sin(2 * math.pi * 1000 * t) * 32767).astype(np.int16)
    assert frame_rms_dbfs(sine) == pytest.approx(-3.0103, abs=1e-3)


def test_little_endian_bytes_are_decoded_as_signed() -> None:
    assert frame_peak(b"\x00\x80") == 32768  # -32768
    assert frame_sum_squares(b"\xff\xff\x01\x00") == 2  # -1, 1
    assert frame_peak(b"\xff\x7f") == 32767


@settings(max_examples=200)
@given(
    st.floats(min_value=-100.0, max_value=0.0),
    st.sampled_from([80, 160, 320, 480, 960]),
)
def test_dbfs_threshold_is_the_smallest_sum_at_that_level(level: float, n: int) -> None:
    threshold = dbfs_threshold(level, n)
    assert sum_squares_to_dbfs(threshold, n) >= level - 1e-9
    if threshold > 1:
        assert sum_squares_to_dbfs(threshold - 1, n) < level + 1e-9


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros(320, dtype=np.int32), "dtype must be int16"),
        (np.zeros(320, dtype=np.float32), "dtype must be int16"),
        (np.zeros((2, 160), dtype=np.int16), "1-D"),
        (np.zeros(640, dtype=np.int16)[::2], "C-contiguous"),
        (b"\x00" * 641, "odd byte count"),
        (bytearray(3), "odd byte count"),
        (np.zeros(4, dtype=np.float64).data, "format"),
        ("not audio", "int16 numpy array or bytes-like"),
    ],
)
def test_bad_frames_raise_value_error(frame: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_frame(frame)  # type: ignore[arg-type]


def test_frame_size_checks() -> None:
    assert check_frame(np.zeros(320, dtype=np.int16), 320) is True
    assert check_frame(bytes(640), 320) is False
    assert check_frame(np.zeros(320, dtype=np.int16).data, 320) is True
    with pytest.raises(ValueError, match="holds 319 samples, expected 320"):
        check_frame(np.zeros(319, dtype=np.int16), 320)
    with pytest.raises(ValueError, match="holds 321 samples, expected 320"):
        check_frame(bytes(642), 320)
    assert MAX_FRAME_SAMPLES >= 48000 * 60


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.5])
def test_bad_levels_raise_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="level_dbfs"):
        dbfs_threshold(bad, 320)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        frame_energy_at_least(bytes(640), -1)
    with pytest.raises(ValueError, match="n_samples"):
        dbfs_threshold(-20.0, 0)
