"""Frame buffer: native ring == pure-Python reference, framing, overflow, validation."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import PCMU8K, AudioFormat
from engine._framebuf import FrameBuffer as NativeFrameBuffer
from engine.framebuf import FrameBuffer, frame_buffer_for, pcm_frame_buffer
from engine.reference.framebuf import FrameBuffer as ReferenceFrameBuffer
from tests.allocation import peak_growth

IMPLS = [NativeFrameBuffer, ReferenceFrameBuffer]


def _stream(n: int, start: int = 0) -> bytes:
    """Recognisable bytes: position ``i`` holds ``i % 251``."""
    return bytes((i % 251) for i in range(start, start + n))


@pytest.mark.parametrize("impl", IMPLS)
def test_cuts_chunks_of_any_size_into_frames(impl: Any) -> None:
    fb = impl(160, 1600)
    data = _stream(800)
    for lo, hi in [(0, 7), (7, 150), (150, 161), (161, 500), (500, 800)]:
        fb.push(data[lo:hi])
    frames = []
    out = bytearray(160)
    while fb.pop_into(out):
        frames.append(bytes(out))
    assert b"".join(frames) == data
    assert fb.available_bytes == 0
    assert fb.pop() is None


@pytest.mark.parametrize("impl", IMPLS)
def test_partial_frame_waits(impl: Any) -> None:
    fb = impl(4, 16)
    fb.push(b"abc")
    assert fb.frames_available == 0
    assert fb.available_bytes == 3
    assert fb.pop() is None
    fb.push(b"de")
    assert fb.frames_available == 1
    view = fb.pop()
    assert view is not None
    assert bytes(view) == b"abcd"
    assert fb.available_bytes == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_pop_returns_one_reused_read_only_view(impl: Any) -> None:
    fb = impl(2, 8)
    fb.push(b"abcd")
    first = fb.pop()
    assert first is not None
    assert bytes(first) == b"ab"
    assert first.readonly
    second = fb.pop()
    assert second is first
    assert bytes(first) == b"cd"  # contents replaced by the next pop


@pytest.mark.parametrize("impl", IMPLS)
def test_overflow_drops_oldest_whole_frames(impl: Any) -> None:
    fb = impl(4, 12)
    fb.push(_stream(10))  # 2.5 frames queued
    fb.push(_stream(5, start=10))  # 15 bytes > 12: drop ceil(3/4) = 1 frame
    assert fb.dropped_bytes == 4
    assert fb.dropped_frames == 1
    assert fb.available_bytes == 11
    view = fb.pop()
    assert view is not None
    assert bytes(view) == _stream(4, start=4)  # frame boundary kept


@pytest.mark.parametrize("impl", IMPLS)
def test_chunk_larger_than_capacity_keeps_the_newest_frames(impl: Any) -> None:
    fb = impl(4, 8)
    fb.push(b"xy")
    fb.push(_stream(21))  # stream is 23 bytes; keep the last 8 or fewer, frame-aligned
    assert fb.dropped_bytes == 16
    assert fb.available_bytes == 7
    view = fb.pop()
    assert view is not None
    assert bytes(view) == (b"xy" + _stream(21))[16:20]


@pytest.mark.parametrize("impl", IMPLS)
def test_push_within_refuses_the_excess_and_keeps_the_queue(impl: Any) -> None:
    fb = impl(4, 12, 2)
    assert fb.push_within(b"abcdef") == 0
    assert fb.push_within(b"ghijklmnop") == 4  # 6 free bytes taken, 4 refused
    assert fb.available_bytes == 12
    assert fb.dropped_bytes == 0
    assert fb.push_within(b"qr") == 2
    frames = [bytes(fb.pop() or b"") for _ in range(3)]
    assert frames == [b"abcd", b"efgh", b"ijkl"]
    with pytest.raises(ValueError):
        fb.push_within(b"odd")


@pytest.mark.parametrize("impl", IMPLS)
def test_clear_empties_without_counting_a_drop(impl: Any) -> None:
    fb = impl(4, 8)
    fb.push(b"abcdef")
    fb.clear()
    assert fb.available_bytes == 0
    assert fb.dropped_bytes == 0
    fb.push(b"wxyz")
    view = fb.pop()
    assert view is not None
    assert bytes(view) == b"wxyz"


@pytest.mark.parametrize("impl", IMPLS)
def test_pcm_accepts_int16_arrays_and_fills_int16_out(impl: Any) -> None:
    fb = impl(8, 32, 2)
    fb.push(np.arange(3, dtype=np.int16))
    fb.push(np.arange(3, 5, dtype=np.int16).tobytes())
    out = np.zeros(4, dtype=np.int16)
    assert fb.pop_into(out)
    assert out.tolist() == [0, 1, 2, 3]
    assert fb.available_bytes == 2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "chunk",
    [
        b"abc",  # odd byte count for 2-byte samples
        np.zeros(4, dtype=np.float32),  # not int16
        np.zeros(4, dtype=np.int32),
        np.zeros((4, 4), dtype=np.int16)[:, 0],  # not contiguous
    ],
)
def test_pcm_push_refuses_bad_chunks(impl: Any, chunk: Any) -> None:
    fb = impl(8, 32, 2)
    with pytest.raises(ValueError):
        fb.push(chunk)
    assert fb.available_bytes == 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "out",
    [
        bytes(8),  # read-only
        bytearray(7),  # too small
        bytearray(9),  # too large
        np.zeros((8, 2), dtype=np.uint8)[:, 0],  # not contiguous
    ],
)
def test_pop_into_refuses_bad_out(impl: Any, out: Any) -> None:
    fb = impl(8, 32, 2)
    fb.push(bytes(16))
    with pytest.raises(ValueError):
        fb.pop_into(out)
    assert fb.available_bytes == 16


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("frame_bytes", "capacity_bytes", "sample_bytes"),
    [
        (0, 8, 1),
        (-2, 8, 1),
        (3, 12, 2),
        (4, 10, 1),
        (4, 0, 1),
        (4, 8, 3),
        (4, 2**40, 1),  # too large
        (2**70, 2**70, 1),  # beyond any C integer
        (4.0, 8, 1),
        (4, 8, True),
    ],
)
def test_constructor_refuses_bad_sizes(
    impl: Any, frame_bytes: Any, capacity_bytes: Any, sample_bytes: Any
) -> None:
    with pytest.raises(ValueError):
        impl(frame_bytes, capacity_bytes, sample_bytes)


def test_pcm_frame_buffer_sizes() -> None:
    fb = pcm_frame_buffer(16000, frame_ms=20, capacity_ms=200)
    assert isinstance(fb, FrameBuffer)
    assert fb.frame_bytes == 640
    assert fb.capacity_bytes == 6400
    assert fb.sample_bytes == 2
    with pytest.raises(ValueError):
        fb.push(b"\x00")
    assert pcm_frame_buffer(8000, frame_ms=10, capacity_ms=30).frame_bytes == 160
    assert pcm_frame_buffer(48000, frame_ms=30, capacity_ms=60).frame_bytes == 2880
    with pytest.raises(ValueError):
        pcm_frame_buffer(16000, frame_ms=20, capacity_ms=50)  # not a multiple
    with pytest.raises(ValueError):
        pcm_frame_buffer(12345)


def test_frame_buffer_for_g711_and_opus() -> None:
    fb = frame_buffer_for(PCMU8K, capacity_ms=1000)
    assert (fb.frame_bytes, fb.capacity_bytes, fb.sample_bytes) == (160, 8000, 1)
    fb.push(b"\xff" * 161)  # any byte count is fine for G.711
    assert fb.frames_available == 1
    with pytest.raises(ValueError):
        frame_buffer_for(AudioFormat("opus", 48000, 1, 20), capacity_ms=1000)


def test_push_and_pop_allocate_nothing_per_frame() -> None:
    fb = FrameBuffer(160, 1600)
    chunk = bytes(range(160))
    out = bytearray(160)

    def run(n: int) -> None:
        for _ in itertools.repeat(None, n):
            fb.push(chunk)
            fb.pop_into(out)
            fb.push_within(chunk)
            fb.pop()

    assert peak_growth(run, 10_000) < 10_000  # under one byte per iteration: nothing per frame


# --- native == reference over random operation sequences -------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 120)),
        st.tuples(st.just("push_within"), st.integers(0, 120)),
        st.tuples(st.just("pop"), st.just(0)),
        st.tuples(st.just("pop_into"), st.just(0)),
        st.tuples(st.just("clear"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(
    frame_units=st.integers(1, 12),
    capacity_frames=st.integers(1, 8),
    sample_bytes=st.sampled_from([1, 2]),
    ops=_ops,
    seed=st.integers(0, 2**32 - 1),
)
def test_native_matches_reference(
    frame_units: int,
    capacity_frames: int,
    sample_bytes: int,
    ops: list[tuple[str, int]],
    seed: int,
) -> None:
    frame_bytes = frame_units * sample_bytes
    capacity = frame_bytes * capacity_frames
    native = NativeFrameBuffer(frame_bytes, capacity, sample_bytes)
    reference = ReferenceFrameBuffer(frame_bytes, capacity, sample_bytes)
    rng = np.random.default_rng(seed)
    out_n = bytearray(frame_bytes)
    out_r = bytearray(frame_bytes)
    for op, size in ops:
        if op in ("push", "push_within"):
            chunk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            if size % sample_bytes:
                with pytest.raises(ValueError):
                    getattr(native, op)(chunk)
                with pytest.raises(ValueError):
                    getattr(reference, op)(chunk)
            else:
                assert getattr(native, op)(chunk) == getattr(reference, op)(chunk)
        elif op == "pop":
            got_n, got_r = native.pop(), reference.pop()
            assert (got_n is None) == (got_r is None)
            if got_n is not None and got_r is not None:
                assert bytes(got_n) == bytes(got_r)
        elif op == "pop_into":
            assert native.pop_into(out_n) == reference.pop_into(out_r)
            assert out_n == out_r
        else:
            native.clear()
            reference.clear()
        assert native.available_bytes == reference.available_bytes
        assert native.frames_available == reference.frames_available
        assert native.dropped_bytes == reference.dropped_bytes
        assert native.dropped_frames == reference.dropped_frames
        assert 0 <= native.available_bytes <= capacity


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.integers(0, 700), max_size=40),
    capacity_frames=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_popped_frames_are_frame_aligned_pieces_of_the_stream(
    chunks: list[int], capacity_frames: int, seed: int
) -> None:
    """Whatever overflow drops, frame number ``popped + dropped`` of the pushed stream
    is the one that comes out next."""
    frame_bytes = 160
    fb = NativeFrameBuffer(frame_bytes, frame_bytes * capacity_frames)
    rng = np.random.default_rng(seed)
    stream = bytearray()
    popped = 0
    for size in chunks:
        chunk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        stream += chunk
        fb.push(chunk)
        view = fb.pop()
        if view is None:
            continue
        index = popped + fb.dropped_frames
        assert bytes(view) == bytes(stream[index * frame_bytes : (index + 1) * frame_bytes])
        popped += 1
    assert len(stream) == (popped + fb.dropped_frames) * frame_bytes + fb.available_bytes
