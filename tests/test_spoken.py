"""SpokenLedger: the text of a bot utterance the caller heard, from its audio timing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.agents.spoken import CHARS_PER_S, SpokenLedger
from server.providers.base import Word


def timed(*spans: tuple[str, float, float]) -> tuple[Word, ...]:
    return tuple(Word(text, start, end) for text, start, end in spans)


def one_segment(text: str, audio_ms: float, *, complete: bool = True) -> SpokenLedger:
    ledger = SpokenLedger()
    ledger.begin()
    ledger.add_text(text)
    ledger.add_audio(audio_ms)
    if complete:
        ledger.complete()
    return ledger


# ------------------------------------------------------------------ word timings

WORDS = timed(("Hello", 0, 200), ("there", 200, 400), ("general", 400, 700), ("Kenobi", 700, 1000))


@pytest.mark.parametrize(
    ("heard_ms", "text"),
    [
        (99, ""),
        (100, "Hello"),  # the middle of "Hello" was played
        (299, "Hello"),
        (300, "Hello there"),
        (549, "Hello there"),
        (550, "Hello there general"),
        (849, "Hello there general"),
        (850, "Hello there general Kenobi"),
        (5000, "Hello there general Kenobi"),
    ],
)
def test_words_whose_middle_was_played(heard_ms: float, text: str) -> None:
    ledger = SpokenLedger()
    ledger.begin()
    ledger.add_text("Hello there general Kenobi")
    ledger.add_audio(600, WORDS[:2])
    ledger.add_audio(400, WORDS[2:])
    ledger.complete()
    assert ledger.heard_text(heard_ms) == text


def test_word_timings_keep_the_segment_spelling() -> None:
    ledger = SpokenLedger()
    ledger.begin()
    ledger.add_text("Dr. Smith owes $5 today")
    ledger.add_audio(
        2000,
        timed(
            ("Doctor", 0, 400),
            ("Smith", 400, 800),
            ("owes", 800, 1000),
            ("five dollars", 1000, 1600),
            ("today", 1600, 2000),
        ),
    )
    ledger.complete()
    assert ledger.heard_text(700) == "Dr. Smith"
    assert ledger.heard_text(1400) == "Dr. Smith owes $5"


def test_word_timings_while_audio_still_arrives() -> None:
    ledger = SpokenLedger()
    ledger.begin()
    ledger.add_text("Hello there general Kenobi")
    ledger.add_audio(400, WORDS[:2])
    # Heard all the audio so far: the timed words, not the whole (incomplete) segment.
    assert ledger.heard_text(400) == "Hello there"
    assert ledger.heard_text(10_000) == "Hello there"


# --------------------------------------------------------------- without timings


@pytest.mark.parametrize(
    ("heard_ms", "text"),
    [
        (399, ""),  # 3.99 of 14 characters: "aaaa" not reached
        (400, "aaaa"),
        (899, "aaaa"),
        (900, "aaaa bbbb"),
        (1399, "aaaa bbbb"),
        (1400, "aaaa bbbb cccc"),
        (9999, "aaaa bbbb cccc"),
    ],
)
def test_complete_segment_is_cut_proportionally(heard_ms: float, text: str) -> None:
    ledger = one_segment("aaaa bbbb cccc", 1400)  # 14 characters in 1400 ms
    assert ledger.heard_text(heard_ms) == text


def test_incomplete_segment_uses_the_speaking_rate() -> None:
    text = "one two three four five six seven eight nine ten"
    ledger = one_segment(text, 60_000, complete=False)  # a lot of audio, still arriving
    ms_per_char = 1000 / CHARS_PER_S
    assert ledger.heard_text(12.5 * ms_per_char) == "one two"
    assert ledger.heard_text(13.5 * ms_per_char) == "one two three"
    assert ledger.heard_text(len(text) * ms_per_char + 1) == text


def test_incomplete_segment_ignores_how_much_audio_arrived() -> None:
    ledger = one_segment("aaaa bbbb cccc", 100, complete=False)
    ms_per_char = 1000 / CHARS_PER_S
    # Not "all the audio received so far was heard": the speaking rate decides.
    assert ledger.heard_text(9.5 * ms_per_char) == "aaaa bbbb"
    assert ledger.heard_text(8.5 * ms_per_char) == "aaaa"


# ------------------------------------------------------------------------ fillers


def test_filler_clip_goes_first_and_shifts_the_rest() -> None:
    ledger = SpokenLedger()
    ledger.begin()
    ledger.add_text("Hello there general Kenobi")
    ledger.insert_clip(500)  # queued before any reply audio arrived
    ledger.add_audio(1000, WORDS)
    ledger.complete()
    assert [s.in_history for s in ledger.segments] == [False, True]
    assert ledger.segments[1].start_ms == 500
    assert ledger.audio_ms == 1500
    assert ledger.heard_text(450) == ""  # only the filler was heard
    assert ledger.heard_text(500 + 299) == "Hello"
    assert ledger.heard_text(500 + 300) == "Hello there"
    assert ledger.heard_text(1500) == ledger.full_text() == "Hello there general Kenobi"


def test_filler_clip_before_any_segment() -> None:
    ledger = SpokenLedger()
    ledger.insert_clip(300)
    assert ledger.audio_ms == 300
    segment = ledger.begin()
    assert segment.start_ms == 300
    ledger.add_text("aaaa bbbb")
    ledger.add_audio(900)
    ledger.complete()
    assert ledger.full_text() == "aaaa bbbb"
    assert ledger.heard_text(300) == ""
    assert ledger.heard_text(300 + 500) == "aaaa"


def test_filler_clip_after_audio_is_refused() -> None:
    ledger = one_segment("Hello", 100, complete=False)
    with pytest.raises(ValueError, match="clip"):
        ledger.insert_clip(500)


def test_segment_outside_the_history_takes_time_but_adds_no_text() -> None:
    ledger = SpokenLedger()
    ledger.begin()
    ledger.add_text("aaaa bbbb")
    ledger.add_audio(900)
    ledger.begin(in_history=False)
    ledger.add_text("Just a moment.")
    ledger.add_audio(1000)
    ledger.begin()
    ledger.add_text("cccc dddd")
    ledger.add_audio(900)
    ledger.complete()
    assert ledger.full_text() == "aaaa bbbb cccc dddd"
    assert ledger.heard_text(1500) == "aaaa bbbb"
    assert ledger.heard_text(1900 + 500) == "aaaa bbbb cccc"


# ------------------------------------------------------------------ several segments


def several() -> SpokenLedger:
    ledger = SpokenLedger()
    first = ledger.begin()
    ledger.add_text("Hello there.")
    ledger.add_audio(1000)
    second = ledger.begin()
    assert first.complete  # begin() completes the previous segment
    assert second.start_ms == 1000
    ledger.add_text("How are")
    ledger.add_text("you?")
    ledger.add_audio(600)
    ledger.add_audio(600)
    ledger.complete()
    return ledger


@pytest.mark.parametrize(
    ("heard_ms", "text"),
    [
        (0, ""),
        (-5, ""),
        (500, "Hello"),
        (1000, "Hello there."),
        (1300, "Hello there. How"),  # 300 of 1200 ms: 3 of "How are you?"'s 12 characters
        (1799, "Hello there. How are"),
        (2200, "Hello there. How are you?"),
        (60_000, "Hello there. How are you?"),
    ],
)
def test_several_segments(heard_ms: float, text: str) -> None:
    ledger = several()
    assert ledger.audio_ms == 2200
    assert ledger.full_text() == "Hello there. How are you?"
    assert ledger.heard_text(heard_ms) == text


def test_empty_ledger() -> None:
    ledger = SpokenLedger()
    assert ledger.audio_ms == 0
    assert ledger.full_text() == ""
    assert ledger.heard_text(1000) == ""


def test_segment_without_text_is_skipped() -> None:
    ledger = SpokenLedger()
    ledger.begin()
    ledger.add_audio(500)
    ledger.begin()
    ledger.add_text("aaaa bbbb")
    ledger.add_audio(900)
    ledger.complete()
    assert ledger.full_text() == "aaaa bbbb"
    assert ledger.heard_text(500 + 450) == "aaaa"


# --------------------------------------------------------------------- properties

WORD = st.text("abcxyz019.,?'", min_size=1, max_size=8)
WIRE_MS = st.integers(1, 40_000).map(lambda n_bytes: n_bytes / 8)
"""Durations as the pipeline measures them: whole 8 kHz mu-law bytes (exact binary floats)."""


@st.composite
def ledgers(draw: st.DrawFn) -> SpokenLedger:
    ledger = SpokenLedger()
    if draw(st.booleans()):
        ledger.insert_clip(draw(WIRE_MS))
    for _ in range(draw(st.integers(0, 4))):
        ledger.begin(in_history=draw(st.booleans()) or draw(st.booleans()))
        words = draw(st.lists(WORD, min_size=1, max_size=8))
        ledger.add_text(" ".join(words))
        audio_ms = draw(WIRE_MS)
        timing: tuple[Word, ...] = ()
        if draw(st.booleans()):
            step = audio_ms / len(words)
            timing = tuple(Word(w, i * step, (i + 1) * step) for i, w in enumerate(words))
        ledger.add_audio(audio_ms, timing)
    if draw(st.booleans()):
        ledger.complete()
    return ledger


def ends_on_a_word(heard: str, full: str) -> bool:
    return full.startswith(heard) and (heard in ("", full) or full[len(heard)] == " ")


@settings(max_examples=300, deadline=None)
@given(ledger=ledgers(), a=st.floats(-100, 30_000), b=st.floats(-100, 30_000))
def test_heard_text_is_a_whole_word_prefix_that_grows(
    ledger: SpokenLedger, a: float, b: float
) -> None:
    full = ledger.full_text()
    early, late = ledger.heard_text(min(a, b)), ledger.heard_text(max(a, b))
    assert ends_on_a_word(early, full)
    assert ends_on_a_word(late, full)
    assert late.startswith(early)


@settings(max_examples=200, deadline=None)
@given(ledger=ledgers())
def test_heard_to_the_end_is_the_full_text(ledger: SpokenLedger) -> None:
    ledger.complete()
    assert ledger.heard_text(ledger.audio_ms) == ledger.full_text()
    assert ledger.heard_text(ledger.audio_ms + 1) == ledger.full_text()
    assert ledger.heard_text(0) == ""


def test_heard_exactly_to_the_end_with_inexact_durations() -> None:
    ledger = SpokenLedger()
    ledger.begin()
    ledger.add_text("first")
    ledger.add_audio(255.0)
    ledger.begin()
    ledger.add_text("x")
    ledger.add_audio(1.9)
    ledger.complete()
    assert ledger.heard_text(ledger.audio_ms) == ledger.full_text() == "first x"
