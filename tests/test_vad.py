"""engine.vad: onset/offset accuracy on real espeak-ng speech, hysteresis, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.vad import (
    SpeechHysteresis,
    SpeechStarted,
    SpeechStopped,
    Vad,
    VadConfig,
    VadEvent,
)
from tests import speech
from tests.speech import Pcm

TEXTS = [
    "Please stop talking now",
    "Hello there, how are you today",
    "I would like to book a flight to Boston",
    "Wait",
]


def run_vad(signal: Pcm, config: VadConfig, as_bytes: bool = False) -> list[VadEvent]:
    vad = Vad(config)
    events: list[VadEvent] = []
    for start_ms, frame in speech.frames(signal, config.frame_ms, config.rate_hz):
        event = vad.process(frame.tobytes() if as_bytes else frame, start_ms)
        if event is not None:
            events.append(event)
    return events


def framed(parts: list[Pcm], rate_hz: int) -> Pcm:
    """Concatenate and trim to a whole number of 10 ms units."""
    signal = speech.concat(parts)
    unit = rate_hz // 100
    return signal[: len(signal) // unit * unit]


@pytest.mark.parametrize("rate_hz", [8000, 16000])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("text", TEXTS)
def test_onset_and_offset_match_the_speech_boundaries(
    rate_hz: int, frame_ms: int, text: str
) -> None:
    # Quiet background noise so the test is not about digital silence.
    voice = framed(
        [speech.silence(600, rate_hz), speech.speech(text, rate_hz), speech.silence(900, rate_hz)],
        rate_hz,
    )
    background = speech.noise(len(voice) * 1000 // rate_hz, -65.0, rate_hz, seed=3)
    signal = speech.mix(voice, background, 0, rate_hz)
    true_start, true_end = speech.active_bounds_ms(voice, rate_hz)

    events = run_vad(signal, VadConfig(frame_ms=frame_ms, rate_hz=rate_hz))

    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    tolerance_ms = 2 * frame_ms
    assert abs(events[0].at_ms - true_start) <= tolerance_ms
    assert abs(events[1].at_ms - true_end) <= tolerance_ms
    # Stamps are frame boundaries.
    assert events[0].at_ms % frame_ms == 0
    assert events[1].at_ms % frame_ms == 0


def test_bytes_and_arrays_give_identical_events() -> None:
    signal = framed([speech.silence(300), speech.speech(TEXTS[2]), speech.silence(700)], 16000)
    config = VadConfig()
    assert run_vad(signal, config) == run_vad(signal, config, as_bytes=True)


def test_events_are_stamped_in_media_time_not_confirmation_time() -> None:
    signal = framed([speech.silence(500), speech.speech("Hello there"), speech.silence(800)], 16000)
    vad = Vad(VadConfig(start_ms=100, start_window_ms=200, stop_ms=400))
    confirmed: list[tuple[int, VadEvent]] = []
    for start_ms, frame in speech.frames(signal, 20):
        event = vad.process(frame, start_ms)
        if event is not None:
            confirmed.append((start_ms, event))
    (start_frame_ms, started), (stop_frame_ms, stopped) = confirmed
    assert isinstance(started, SpeechStarted)
    assert isinstance(stopped, SpeechStopped)
    assert start_frame_ms - started.at_ms >= 80  # confirmed after 5 speech frames
    assert stop_frame_ms + 20 - stopped.at_ms == 400  # after 400 ms of non-speech


def test_speaking_flag_follows_events() -> None:
    signal = framed([speech.silence(300), speech.speech("Wait"), speech.silence(600)], 16000)
    vad = Vad()
    states: list[bool] = []
    for start_ms, frame in speech.frames(signal, 20):
        event = vad.process(frame, start_ms)
        if isinstance(event, SpeechStarted):
            assert vad.speaking
        if isinstance(event, SpeechStopped):
            assert not vad.speaking
            assert vad.voiced_until_ms == event.at_ms
        states.append(vad.speaking)
    assert states[0] is False
    assert states[-1] is False
    assert any(states)


def test_short_gaps_inside_an_utterance_are_bridged() -> None:
    signal = framed(
        [
            speech.silence(400),
            speech.utterance_with_pauses(["I would like", "to book a flight"], pause_ms=200),
            speech.silence(800),
        ],
        16000,
    )
    events = run_vad(signal, VadConfig(stop_ms=300))
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_long_pauses_split_utterances() -> None:
    signal = framed(
        [
            speech.silence(400),
            speech.utterance_with_pauses(["I would like", "to book a flight"], pause_ms=700),
            speech.silence(800),
        ],
        16000,
    )
    events = run_vad(signal, VadConfig(stop_ms=300))
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * 2


@pytest.mark.parametrize("burst_ms", [20, 30, 40])
def test_a_single_short_burst_is_ignored(burst_ms: int) -> None:
    # A click shorter than start_ms (60 ms = 3 frames) must not start speech,
    # even though webrtcvad keeps flagging ~100 ms after it (its hangover).
    signal = framed(
        [speech.silence(400), speech.cough(burst_ms, -10.0), speech.silence(600)], 16000
    )
    assert run_vad(signal, VadConfig()) == []


def test_a_burst_longer_than_start_ms_is_speech_to_the_vad() -> None:
    # The VAD cannot tell a cough from a word; the turn machine's
    # min_interruption_ms does that.  The event still brackets the burst.
    signal = framed([speech.silence(400), speech.cough(120, -10.0), speech.silence(600)], 16000)
    events = run_vad(signal, VadConfig())
    assert events == [SpeechStarted(400), SpeechStopped(520)]


def test_energy_floor_suppresses_quiet_noise() -> None:
    noise = speech.noise(3000, -50.0, seed=5)
    assert run_vad(noise, VadConfig(aggressiveness=2, energy_floor_dbfs=None)) != []
    assert run_vad(noise, VadConfig(aggressiveness=2, energy_floor_dbfs=-40.0)) == []


def test_energy_floor_keeps_real_speech() -> None:
    signal = framed([speech.silence(300), speech.speech(TEXTS[0]), speech.silence(600)], 16000)
    events = run_vad(signal, VadConfig(energy_floor_dbfs=-40.0))
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_reset_forgets_ongoing_speech() -> None:
    signal = framed([speech.silence(200), speech.speech(TEXTS[2])], 16000)
    vad = Vad()
    for start_ms, frame in speech.frames(signal, 20)[:40]:
        vad.process(frame, start_ms)
    speaking_before = vad.speaking
    vad.reset()
    assert speaking_before
    assert not vad.speaking
    assert vad.voiced_until_ms is None


# --- SpeechHysteresis on scripted decisions -------------------------------------------------


def drive(h: SpeechHysteresis, pattern: str, frame_ms: int = 20) -> list[VadEvent]:
    """Feed '1'/'0' decisions, one per frame starting at 0 ms."""
    events: list[VadEvent] = []
    for i, c in enumerate(pattern):
        event = h.update(c == "1", i * frame_ms)
        if event is not None:
            events.append(event)
    return events


def test_hysteresis_start_needs_enough_speech_in_the_window() -> None:
    h = SpeechHysteresis(frame_ms=20, start_frames=3, window_frames=5, stop_frames=4)
    # 1 0 1 0 0 1: never 3 speech frames within 5.
    assert drive(h, "101001000000") == []
    h = SpeechHysteresis(frame_ms=20, start_frames=3, window_frames=5, stop_frames=4)
    # 0 1 0 1 1: third speech frame at index 4, run began at index 1.
    assert drive(h, "01011") == [SpeechStarted(20)]
    assert h.speaking


def test_hysteresis_stop_is_the_end_of_the_last_speech_frame() -> None:
    h = SpeechHysteresis(frame_ms=20, start_frames=2, window_frames=2, stop_frames=3)
    events = drive(h, "0011101100010000")
    # Speech 40..100, a one-frame gap, speech 120..160, then 3 silent frames.
    assert events == [SpeechStarted(40), SpeechStopped(160)]


def test_hysteresis_onset_is_the_earliest_speech_frame_in_the_window() -> None:
    h = SpeechHysteresis(frame_ms=10, start_frames=3, window_frames=6, stop_frames=2)
    # speech at 0 falls out of the window before the third speech frame arrives.
    assert drive(h, "1000001011", frame_ms=10) == [SpeechStarted(60)]


@given(
    st.lists(st.booleans(), max_size=300), st.integers(1, 6), st.integers(0, 6), st.integers(1, 8)
)
def test_hysteresis_invariants(
    decisions: list[bool], start: int, extra_window: int, stop: int
) -> None:
    frame_ms = 20
    h = SpeechHysteresis(frame_ms, start, start + extra_window, stop)
    events: list[tuple[int, VadEvent]] = []
    for i, d in enumerate(decisions):
        e = h.update(d, i * frame_ms)
        if e is not None:
            events.append((i, e))
    # Events alternate, starting with SpeechStarted.
    for k, (_, e) in enumerate(events):
        assert isinstance(e, SpeechStarted if k % 2 == 0 else SpeechStopped)
    for i, e in events:
        idx = e.at_ms // frame_ms
        if isinstance(e, SpeechStarted):
            # The onset frame is a speech frame inside the window, and the
            # window held at least `start` speech frames.
            assert decisions[idx]
            assert i - idx < start + extra_window
            assert sum(decisions[max(0, i - start - extra_window + 1) : i + 1]) >= start
        else:
            # at_ms is the end of a speech frame followed by `stop` silent frames.
            assert decisions[idx - 1]
            assert not any(decisions[idx : i + 1])
            assert i + 1 - idx == stop
    assert h.speaking == (len(events) % 2 == 1)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"aggressiveness": 4}, "aggressiveness"),
        ({"aggressiveness": -1}, "aggressiveness"),
        ({"aggressiveness": True}, "aggressiveness"),
        ({"frame_ms": 25}, "frame_ms"),
        ({"frame_ms": 20.0}, "frame_ms"),
        ({"rate_hz": 44100}, "rate_hz"),
        ({"rate_hz": 22050}, "rate_hz"),
        ({"start_ms": 0}, "start_ms"),
        ({"start_ms": 100, "start_window_ms": 80}, "start_window_ms"),
        ({"stop_ms": 0}, "stop_ms"),
        ({"stop_ms": -20}, "stop_ms"),
        ({"energy_floor_dbfs": float("nan")}, "energy_floor_dbfs"),
        ({"energy_floor_dbfs": 3.0}, "energy_floor_dbfs"),
        ({"speech_range_db": 0.0}, "speech_range_db"),
        ({"speech_range_db": float("inf")}, "speech_range_db"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        VadConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rate_hz", "frame_ms"), [(8000, 10), (16000, 30), (32000, 20), (48000, 10)]
)
def test_every_supported_rate_and_frame_size_runs(rate_hz: int, frame_ms: int) -> None:
    config = VadConfig(rate_hz=rate_hz, frame_ms=frame_ms)
    vad = Vad(config)
    assert config.frame_samples == rate_hz * frame_ms // 1000
    assert vad.process(np.zeros(config.frame_samples, dtype=np.int16), 0) is None


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros(160, dtype=np.int16), "holds 160 samples, expected 320"),
        (np.zeros(480, dtype=np.int16), "holds 480 samples, expected 320"),
        (bytes(320), "holds 160 samples, expected 320"),
        (bytes(639), "odd byte count"),
        (np.zeros(320, dtype=np.float32), "dtype must be int16"),
        (np.zeros(640, dtype=np.int16)[::2], "C-contiguous"),
    ],
)
def test_bad_frames_raise_value_error(frame: object, message: str) -> None:
    vad = Vad()
    with pytest.raises(ValueError, match=message):
        vad.process(frame, 0)  # type: ignore[arg-type]
