"""AudioFormat validation and unit conversions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.format import (
    PCM16K,
    PCMU8K,
    SUPPORTED_RATES_HZ,
    AudioFormat,
    ms_to_samples,
    pcm_bytes_to_samples,
    samples_to_ms,
)


def test_canonical_formats() -> None:
    assert PCM16K.frame_samples == 320
    assert PCM16K.frame_bytes == 640
    assert PCMU8K.frame_samples == 160
    assert PCMU8K.frame_bytes == 160


def test_g722_frame_is_half_a_byte_per_sample() -> None:
    fmt = AudioFormat("g722", 16000, 1, 20)
    assert fmt.frame_samples == 320
    assert fmt.frame_bytes == 160
    assert fmt.bytes_to_ms(160) == 20


def test_opus_has_no_fixed_frame_size() -> None:
    fmt = AudioFormat("opus", 48000, 2, 20)
    assert not fmt.is_constant_bitrate
    with pytest.raises(ValueError, match="variable-bitrate"):
        _ = fmt.frame_bytes
    with pytest.raises(ValueError, match="variable-bitrate"):
        fmt.bytes_to_ms(100)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codec": "gsm"}, "unsupported codec"),
        ({"rate_hz": 0}, "sample rate"),
        ({"rate_hz": -8000}, "sample rate"),
        ({"rate_hz": 8000.0}, "sample rate"),
        ({"channels": 3}, "channels"),
        ({"frame_ms": 0}, "frame_ms"),
        ({"frame_ms": 500}, "frame_ms"),
        ({"rate_hz": 22050, "frame_ms": 1}, "whole number of samples"),
    ],
)
def test_bad_formats_name_the_problem(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AudioFormat(**kwargs)  # type: ignore[arg-type]


def test_odd_pcm_byte_count_is_refused() -> None:
    assert pcm_bytes_to_samples(640) == 320
    with pytest.raises(ValueError, match="16-bit"):
        pcm_bytes_to_samples(641)
    with pytest.raises(ValueError):
        pcm_bytes_to_samples(-2)


def test_bytes_to_ms_refuses_partial_samples() -> None:
    with pytest.raises(ValueError, match="whole number"):
        AudioFormat("l16", 16000).bytes_to_ms(3)


@given(
    rate_hz=st.sampled_from(SUPPORTED_RATES_HZ),
    frame_ms=st.sampled_from((10, 20, 30, 40, 60)),
)
def test_ms_samples_round_trip(rate_hz: int, frame_ms: int) -> None:
    n = frame_ms * rate_hz // 1000
    if n * 1000 != frame_ms * rate_hz:
        with pytest.raises(ValueError):
            ms_to_samples(frame_ms, rate_hz)
        return
    assert ms_to_samples(frame_ms, rate_hz) == n
    assert math.isclose(samples_to_ms(n, rate_hz), frame_ms)
    fmt = AudioFormat("l16", rate_hz, 1, frame_ms)
    assert fmt.ms_to_bytes(frame_ms) == fmt.frame_bytes == 2 * n
