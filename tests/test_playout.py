"""Playout queue: framing, padding, marks, generations, pause, played time."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import PCMU8K, AudioFormat
from engine.playout import PlayoutQueue
from tests.allocation import peak_growth

FRAME = 160  # mu-law bytes per 20 ms


def _queue(**kwargs: int) -> PlayoutQueue:
    return PlayoutQueue(FRAME, 20, 0xFF, **kwargs)


def _drain(q: PlayoutQueue) -> list[bytes]:
    out = bytearray(q.frame_bytes)
    frames = []
    while q.pop_into(out):
        frames.append(bytes(out))
    return frames


def test_chunks_of_any_size_come_out_as_frames() -> None:
    q = _queue()
    audio = bytes(range(256)) * 5  # 1280 bytes = 8 frames
    for lo, hi in [(0, 1), (1, 200), (200, 999), (999, 1280)]:
        assert q.push(audio[lo:hi], generation=0)
    frames = _drain(q)
    assert b"".join(frames) == audio
    assert q.played_ms == 160
    assert q.queued_ms == 0


def test_partial_tail_waits_then_is_padded_with_the_silence_byte() -> None:
    q = _queue()
    q.push(b"\x01" * 200, generation=0)
    assert q.frames_ready == 1
    assert q.queued_ms == pytest.approx(25.0)
    assert len(_drain(q)) == 1  # the 40-byte tail waits
    q.push(b"\x02" * 20, generation=0)
    assert _drain(q) == []
    q.end_of_segment(0)
    assert _drain(q) == [b"\x01" * 40 + b"\x02" * 20 + b"\xff" * 100]
    assert q.played_ms == 40


@pytest.mark.parametrize(
    ("codec", "silence"), [("pcmu", 0xFF), ("pcma", 0xD5), ("l16", 0x00), ("l16be", 0x00)]
)
def test_for_format_pads_with_the_codec_silence(codec: str, silence: int) -> None:
    fmt = AudioFormat(codec, 8000, 1, 20)
    q = PlayoutQueue.for_format(fmt)
    q.push(b"\x10\x10", generation=0)
    q.end_of_segment(0)
    out = bytearray(fmt.frame_bytes)
    assert q.pop_into(out)
    assert out == b"\x10\x10" + bytes([silence]) * (fmt.frame_bytes - 2)


def test_for_format_refuses_codecs_without_one_byte_silence() -> None:
    with pytest.raises(ValueError):
        PlayoutQueue.for_format(AudioFormat("opus", 48000, 1, 20))


def test_marks_are_passed_in_order_as_their_audio_plays() -> None:
    q = _queue()
    q.push(b"a" * 320, generation=1)
    assert q.mark("first", generation=1)
    q.push(b"b" * 100, generation=1)
    assert q.mark("second", generation=1)
    q.end_of_segment(1)
    assert q.mark("third", generation=1)  # same place as "second" after padding
    out = bytearray(FRAME)
    assert q.take_played_marks() == ()
    assert q.pop_into(out)
    assert q.take_played_marks() == ()
    assert q.pop_into(out)
    assert q.take_played_marks() == ("first",)
    assert q.pop_into(out)
    assert q.take_played_marks() == ("second", "third")
    assert q.take_played_marks() == ()
    assert not q.pop_into(out)


def test_mark_with_nothing_left_to_play_is_passed_at_once() -> None:
    q = _queue()
    assert q.mark("start", generation=0)
    assert q.take_played_marks() == ("start",)
    q.push(b"x" * FRAME, generation=0)
    _drain(q)
    q.mark("after", generation=0)
    assert q.take_played_marks() == ("after",)


def test_clear_drops_audio_and_returns_unplayed_marks() -> None:
    q = _queue()
    q.push(b"a" * FRAME, generation=1)
    q.mark("m1", generation=1)
    q.push(b"b" * FRAME * 3, generation=1)
    q.mark("m2", generation=1)
    q.push(b"c" * 50, generation=1)
    q.mark("m3", generation=1)
    out = bytearray(FRAME)
    assert q.pop_into(out)
    assert q.take_played_marks() == ("m1",)
    assert q.clear(2) == ["m2", "m3"]
    assert q.generation == 2
    assert q.queued_ms == 0
    assert not q.pop_into(out)
    assert q.take_played_marks() == ()
    # Marks of the new generation work from the new position.
    q.push(b"d" * FRAME, generation=2)
    q.mark("n1", generation=2)
    assert q.pop_into(out)
    assert out == b"d" * FRAME
    assert q.take_played_marks() == ("n1",)


def test_passed_but_untaken_marks_survive_clear() -> None:
    q = _queue()
    q.push(b"a" * FRAME, generation=0)
    q.mark("done", generation=0)
    q.pop_into(bytearray(FRAME))
    assert q.clear(1) == []
    assert q.take_played_marks() == ("done",)


def test_late_chunks_and_marks_of_a_cleared_generation_are_dropped() -> None:
    q = _queue()
    q.push(b"a" * FRAME, generation=3)
    q.clear(4)
    assert not q.push(b"late" * 10, generation=3)
    assert not q.mark("late-mark", generation=3)
    assert q.late_chunks == 1
    assert q.late_bytes == 40
    assert q.queued_ms == 0
    q.end_of_segment(3)  # late: nothing is padded
    assert q.queued_ms == 0
    assert q.push(b"n" * FRAME, generation=4)
    assert _drain(q) == [b"n" * FRAME]


def test_clear_refuses_an_older_generation() -> None:
    q = _queue(generation=5)
    with pytest.raises(ValueError):
        q.clear(4)
    assert q.clear(5) == []


def test_pause_and_resume_keep_the_position() -> None:
    q = _queue()
    for i in range(4):
        q.push(bytes([i]) * FRAME, generation=0)
    q.mark("end", generation=0)
    out = bytearray(FRAME)
    assert q.pop_into(out)
    q.pause()
    assert q.paused
    out[:] = b"\xee" * FRAME
    for _ in range(10):
        assert not q.pop_into(out)
    assert out == b"\xee" * FRAME  # untouched while paused
    assert q.played_ms == 20
    assert q.queued_ms == 60
    q.resume()
    assert [f[0] for f in _drain(q)] == [1, 2, 3]
    assert q.take_played_marks() == ("end",)
    assert q.played_ms == 80


def test_played_and_heard_ms_per_generation() -> None:
    q = _queue()
    q.push(b"a" * FRAME * 3, generation=1)
    q.push(b"b" * FRAME * 2, generation=2)  # next utterance queued behind the first
    assert q.generation == 2
    out = bytearray(FRAME)
    assert q.pop_into(out)
    assert (q.playing_generation, q.heard_ms) == (1, 20)
    q.pop_into(out)
    q.pop_into(out)
    assert (q.playing_generation, q.heard_ms) == (1, 60)
    q.pop_into(out)
    assert (q.playing_generation, q.heard_ms) == (2, 20)
    assert q.played_ms == 80
    # Barge-in: what was heard of generation 2 stays readable after the clear.
    q.clear(3)
    assert (q.playing_generation, q.heard_ms) == (2, 20)
    q.push(b"c" * FRAME, generation=3)
    q.pop_into(out)
    assert (q.playing_generation, q.heard_ms) == (3, 20)
    assert q.played_ms == 100


def test_new_generation_pads_the_previous_partial_frame() -> None:
    q = _queue()
    q.push(b"a" * 100, generation=1)
    q.push(b"b" * FRAME, generation=2)
    assert _drain(q) == [b"a" * 100 + b"\xff" * 60, b"b" * FRAME]
    assert (q.playing_generation, q.heard_ms) == (2, 20)


def test_same_generation_after_clear_keeps_counting_heard() -> None:
    q = _queue()
    q.push(b"a" * FRAME * 2, generation=1)
    q.pop_into(bytearray(FRAME))
    q.clear(1)
    q.push(b"b" * FRAME, generation=1)
    q.pop_into(bytearray(FRAME))
    assert (q.playing_generation, q.heard_ms) == (1, 40)


def test_unplayed_new_generation_after_clear_does_not_count_for_the_old() -> None:
    q = _queue()
    q.push(b"a" * FRAME, generation=0)
    q.pop_into(bytearray(FRAME))
    q.push(b"b" * FRAME, generation=1)
    q.clear(1)  # generation 1 never played
    q.push(b"c" * FRAME, generation=1)
    q.pop_into(bytearray(FRAME))
    assert (q.playing_generation, q.heard_ms) == (1, 20)


def test_capacity_refuses_the_excess_and_keeps_queued_audio() -> None:
    q = _queue(capacity_ms=60)
    q.push(b"a" * FRAME * 2, generation=0)
    q.push(b"b" * FRAME * 2, generation=0)
    assert q.overflow_bytes == FRAME
    assert q.queued_ms == 60
    assert _drain(q) == [b"a" * FRAME, b"a" * FRAME, b"b" * FRAME]


def test_pcm_queue_takes_int16_arrays_and_refuses_odd_bytes() -> None:
    q = PlayoutQueue(320, 20, 0, sample_bytes=2)
    q.push(np.arange(100, dtype=np.int16), generation=0)
    with pytest.raises(ValueError):
        q.push(b"\x00" * 3, generation=0)
    with pytest.raises(ValueError):
        q.push(b"\x00" * 3, generation=1)
    assert q.generation == 0
    q.end_of_segment(0)
    out = np.zeros(160, dtype=np.int16)
    assert q.pop_into(out)
    assert out.tolist() == [*range(100), *([0] * 60)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frame_bytes": 0, "frame_ms": 20, "silence_byte": 0},
        {"frame_bytes": 160, "frame_ms": 0, "silence_byte": 0},
        {"frame_bytes": 160, "frame_ms": 20, "silence_byte": 256},
        {"frame_bytes": 160, "frame_ms": 20, "silence_byte": 0, "capacity_ms": 30},
        {"frame_bytes": 161, "frame_ms": 20, "silence_byte": 0, "sample_bytes": 2},
    ],
)
def test_constructor_refuses_bad_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        PlayoutQueue(**kwargs)


def test_pop_into_refuses_a_wrong_size_buffer() -> None:
    q = PlayoutQueue.for_format(PCMU8K)
    q.push(b"\x00" * FRAME, generation=0)
    with pytest.raises(ValueError):
        q.pop_into(bytearray(FRAME - 1))
    assert q.played_ms == 0


def test_push_and_pop_allocate_nothing_per_frame() -> None:
    q = PlayoutQueue.for_format(PCMU8K)
    chunk = bytes(range(160))
    out = bytearray(160)

    def run(n: int) -> None:
        for _ in itertools.repeat(None, n):
            q.push(chunk, 0)
            q.pop_into(out)
            q.take_played_marks()

    assert peak_growth(run, 10_000) < 10_000  # under one byte per iteration: nothing per frame


# --- scripted random sessions against a plain model -------------------------

_actions = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 500), st.integers(-1, 1)),
        st.tuples(st.just("pop"), st.integers(1, 4), st.just(0)),
        st.tuples(st.just("mark"), st.just(0), st.integers(-1, 1)),
        st.tuples(st.just("end"), st.just(0), st.just(0)),
        st.tuples(st.just("clear"), st.just(0), st.integers(0, 1)),
        st.tuples(st.just("pause"), st.just(0), st.just(0)),
        st.tuples(st.just("resume"), st.just(0), st.just(0)),
    ),
    max_size=50,
)


@settings(max_examples=300, deadline=None)
@given(actions=_actions)
def test_random_sessions_match_a_byte_model(actions: list[tuple[str, int, int]]) -> None:
    """Model: a bytes string of queued audio, marks as byte positions in it."""
    frame = 8
    q = PlayoutQueue(frame, 1, 0xFF, capacity_ms=10_000)
    queued = bytearray()  # not yet played, including a partial tail
    marks: list[tuple[int, str]] = []  # (bytes of `queued` to play to pass it, name)
    passed: list[str] = []
    played = 0
    paused = False
    gen = 0
    tail_gen: int | None = 0  # generation of the last audio queued; None after a clear
    out = bytearray(frame)
    for counter, (action, size, delta) in enumerate(actions):
        if action == "push":
            g = gen + delta
            chunk = bytes([counter % 256]) * size
            accepted = q.push(chunk, g)
            assert accepted == (g >= gen)
            if accepted:
                gen = max(gen, g)
                if tail_gen is not None and g != tail_gen:
                    queued += b"\xff" * (-len(queued) % frame)  # previous utterance ends
                tail_gen = g
                queued += chunk
        elif action == "pop":
            for _ in range(size):
                got = q.pop_into(out)
                assert got == (not paused and len(queued) >= frame)
                if got:
                    assert out == queued[:frame]
                    del queued[:frame]
                    played += 1
                    still = []
                    for pos, name in marks:
                        if pos <= frame:
                            passed.append(name)
                        else:
                            still.append((pos - frame, name))
                    marks = still
        elif action == "mark":
            g = gen + delta
            name = f"m{counter}"
            accepted = q.mark(name, g)
            assert accepted == (g >= gen)
            if accepted:
                gen = max(gen, g)
                if queued:
                    marks.append((len(queued), name))
                else:
                    passed.append(name)
        elif action == "end":
            q.end_of_segment(gen)
            queued += b"\xff" * (-len(queued) % frame)
        elif action == "clear":
            gen += delta
            dropped = q.clear(gen)
            assert dropped == [name for _, name in marks]
            queued.clear()
            marks = []
            tail_gen = None
        elif action == "pause":
            q.pause()
            paused = True
        else:
            q.resume()
            paused = False
        assert q.take_played_marks() == tuple(passed)
        passed = []
        assert q.played_ms == played
        assert q.queued_ms == pytest.approx(len(queued) / frame)
        assert q.generation == gen
