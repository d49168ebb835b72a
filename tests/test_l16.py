"""L16: internal little-endian int16 <-> RTP big-endian, native == reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import l16
from engine.reference import g711 as ref

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)


def test_every_int16_round_trips_through_big_endian() -> None:
    wire = bytearray(2 * ALL_PCM.size)
    assert l16.pcm_to_l16be_into(ALL_PCM, wire) == ALL_PCM.size
    assert bytes(wire) == ALL_PCM.astype(">i2").tobytes()
    assert bytes(wire) == ref.pcm_to_l16be(ALL_PCM.tobytes())
    back = np.zeros(ALL_PCM.size, np.int16)
    assert l16.l16be_to_pcm_into(wire, back) == ALL_PCM.size
    assert (back == ALL_PCM).all()
    assert back.tobytes() == ref.l16be_to_pcm(bytes(wire))


def test_known_values() -> None:
    assert l16.pcm_to_l16be(b"\x01\x00\xff\x7f\x00\x80") == b"\x00\x01\x7f\xff\x80\x00"
    assert l16.l16be_to_pcm(b"\x00\x01\x7f\xff\x80\x00") == b"\x01\x00\xff\x7f\x00\x80"
    out = np.zeros(3, np.int16)
    l16.l16be_to_pcm_into(b"\x00\x01\x7f\xff\x80\x00", out)
    assert out.tolist() == [1, 32767, -32768]


def test_conversion_in_place() -> None:
    pcm = np.ascontiguousarray(ALL_PCM[::7])
    buffer = bytearray(pcm.tobytes())
    assert l16.pcm_to_l16be_into(buffer, buffer) == pcm.size
    assert bytes(buffer) == pcm.astype(">i2").tobytes()
    samples = np.frombuffer(buffer, dtype=np.int16)
    assert l16.l16be_to_pcm_into(buffer, samples) == pcm.size
    assert (samples == pcm).all()


def test_le_bytes_and_int16_array_inputs_agree() -> None:
    pcm = np.ascontiguousarray(ALL_PCM[::101])
    from_array, from_bytes = bytearray(2 * pcm.size), bytearray(2 * pcm.size)
    l16.pcm_to_l16be_into(pcm, from_array)
    l16.pcm_to_l16be_into(pcm.tobytes(), from_bytes)
    assert from_array == from_bytes


@pytest.mark.parametrize(
    ("fn", "src", "out", "problem"),
    [
        (l16.l16be_to_pcm_into, b"\x00\x01\x02", np.zeros(2, np.int16), "odd byte count"),
        (l16.l16be_to_pcm_into, bytes(8), np.zeros(3, np.int16), "too small"),
        (l16.l16be_to_pcm_into, bytes(8), bytearray(8), "format"),
        (l16.l16be_to_pcm_into, np.zeros(4, np.int16), np.zeros(4, np.int16), "format"),
        (l16.l16be_to_pcm_into, bytes(8), np.zeros(8, np.int16)[::2], "contiguous"),
        (l16.pcm_to_l16be_into, b"\x00\x01\x02", bytearray(4), "odd byte count"),
        (l16.pcm_to_l16be_into, np.zeros(4, np.int16), bytearray(7), "too small"),
        (l16.pcm_to_l16be_into, np.zeros(4, np.int16), np.zeros(4, np.int16), "format"),
        (l16.pcm_to_l16be_into, np.zeros(4, np.int16), bytes(8), "writable"),
        (l16.pcm_to_l16be_into, np.zeros(4, np.float32), bytearray(8), "format"),
        (l16.pcm_to_l16be_into, None, bytearray(8), "buffer"),
    ],
)
def test_bad_arguments_raise_value_error(fn: Any, src: Any, out: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        fn(src, out)


def test_allocating_versions_refuse_odd_byte_counts() -> None:
    with pytest.raises(ValueError, match="odd byte count"):
        l16.l16be_to_pcm(b"\x00")
    with pytest.raises(ValueError, match="odd byte count"):
        l16.pcm_to_l16be(b"\x00\x00\x00")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), extra=st.integers(min_value=-3, max_value=3))
def test_random_big_endian_input(data: bytes, extra: int) -> None:
    n = len(data) // 2
    room = max(n + extra, 0)
    out = np.full(room + 2, 0x1234, np.int16)
    if len(data) % 2 or room < n:
        with pytest.raises(ValueError):
            l16.l16be_to_pcm_into(data, out[:room])
        assert (out == 0x1234).all()
        return
    assert l16.l16be_to_pcm_into(data, out[:room]) == n
    assert out[:n].tobytes() == ref.l16be_to_pcm(data)
    assert (out[n:] == 0x1234).all()


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=3000),
    extra=st.integers(min_value=-3, max_value=3),
    as_array=st.booleans(),
)
def test_random_pcm_input(data: bytes, extra: int, as_array: bool) -> None:
    n = len(data) // 2
    room = max(2 * n + extra, 0)
    out = np.full(room + 2, 0xEE, np.uint8)
    src: Any = np.frombuffer(data[: 2 * n], np.int16) if as_array else data
    if (not as_array and len(data) % 2) or room < 2 * n:
        with pytest.raises(ValueError):
            l16.pcm_to_l16be_into(src, out[:room])
        assert (out == 0xEE).all()
        return
    assert l16.pcm_to_l16be_into(src, out[:room]) == n
    assert out[: 2 * n].tobytes() == ref.pcm_to_l16be(data[: 2 * n])
    assert (out[2 * n :] == 0xEE).all()
