"""engine.turn: scripted frame-by-frame timelines, plus real speech through the VAD."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from engine.turn import (
    NO_COMMANDS,
    ClearPlayout,
    Command,
    Commands,
    FalseInterruption,
    Interrupted,
    InterruptReason,
    PausePlayout,
    ResumePlayout,
    StartResponse,
    StartSttUtterance,
    StopSttUtterance,
    TurnConfig,
    TurnMachine,
    TurnState,
    words,
)
from engine.vad import Vad, VadConfig
from tests import speech

FRAME_MS = 20
VAD_STOP_MS = 300  # scripted VAD: SpeechStopped arrives this long after the speech ended
VAD_CONFIRM_MS = 60  # scripted VAD: SpeechStarted arrives this long after the onset

Step = Callable[[TurnMachine, int], Commands]
Log = list[tuple[int, Command]]


# --- a tiny timeline driver -----------------------------------------------------------------


def onset(at_ms: int) -> tuple[int, Step]:
    """User speech beginning at ``at_ms``, as the VAD reports it a little later."""
    return at_ms + VAD_CONFIRM_MS, lambda m, now: m.on_speech_started(at_ms, now)


def offset(at_ms: int) -> tuple[int, Step]:
    """User speech ending at ``at_ms``, reported after the VAD's stop delay."""
    return at_ms + VAD_STOP_MS, lambda m, now: m.on_speech_stopped(at_ms, now)


def say(start_ms: int, end_ms: int) -> list[tuple[int, Step]]:
    return [onset(start_ms), offset(end_ms)]


def transcript(
    at_ms: int, text: str, final: bool = False, end_of_turn: bool | None = None
) -> tuple[int, Step]:
    return at_ms, lambda m, now: m.on_transcript(text, final, now, end_of_turn)


def dtmf(at_ms: int, digit: str) -> tuple[int, Step]:
    return at_ms, lambda m, now: m.on_dtmf(digit, now)


class FakeBot:
    """Playout and response side: each response is ``utterance_ms`` of audio.

    Audio starts ``latency_ms`` after StartResponse and advances one frame per
    tick unless paused; it obeys Pause/Resume/Clear commands.
    """

    def __init__(self, latency_ms: int = 200, utterance_ms: int = 3000):
        self.latency_ms = latency_ms
        self.utterance_ms = utterance_ms
        self.generation: int | None = None
        self.starts_at_ms = 0
        self.position_ms = 0
        self.playing = False
        self.paused = False
        self.finished: list[int] = []
        self.cleared: list[int] = []

    def apply(self, command: Command, now_ms: int) -> None:
        if isinstance(command, StartResponse):
            self.generation = command.generation
            self.starts_at_ms = now_ms + self.latency_ms
            self.position_ms = 0
            self.playing = self.paused = False
        elif isinstance(command, PausePlayout):
            assert command.generation == self.generation
            assert command.position_ms == self.position_ms
            self.paused = True
        elif isinstance(command, ResumePlayout):
            assert command.generation == self.generation
            self.position_ms = command.position_ms
            self.paused = False
        elif isinstance(command, ClearPlayout):
            self.cleared.append(command.generation)
            if command.generation == self.generation:
                self.generation = None

    def advance(self, m: TurnMachine, now_ms: int) -> Commands:
        gen = self.generation
        if gen is None or now_ms < self.starts_at_ms:
            return NO_COMMANDS
        out: list[Command] = []
        if not self.playing:
            self.playing = True
            out += m.on_response_started(gen, now_ms)
            out += m.on_playout_started(gen, now_ms)
            out += m.on_response_done(gen, now_ms)  # all audio queued at once
        elif not self.paused:
            self.position_ms += FRAME_MS
            out += m.on_playout_progress(gen, self.position_ms, now_ms)
            if self.position_ms >= self.utterance_ms:
                self.finished.append(gen)
                self.generation = None
                out += m.on_playout_finished(gen, now_ms)
        return tuple(out)


def run(
    script: Iterable[tuple[int, Step]],
    until_ms: int,
    config: TurnConfig | None = None,
    bot: FakeBot | None = None,
    machine: TurnMachine | None = None,
) -> tuple[TurnMachine, FakeBot, Log]:
    """Drive the machine in 20 ms ticks; scripted steps fire at their (frame-aligned) time."""
    m = machine if machine is not None else TurnMachine(config)
    bot = bot if bot is not None else FakeBot()
    steps: dict[int, list[Step]] = {}
    for at_ms, step in script:
        steps.setdefault(at_ms - at_ms % FRAME_MS, []).append(step)
    log: Log = []

    def handle(now_ms: int, commands: Commands) -> None:
        for command in commands:
            log.append((now_ms, command))
            bot.apply(command, now_ms)

    for now_ms in range(0, until_ms, FRAME_MS):
        for step in steps.get(now_ms, []):
            handle(now_ms, step(m, now_ms))
        handle(now_ms, bot.advance(m, now_ms))
        handle(now_ms, m.tick(now_ms))
    return m, bot, log


def of_type(log: Log, kind: type) -> list[tuple[int, Command]]:
    return [(t, c) for t, c in log if isinstance(c, kind)]


def state(m: TurnMachine) -> TurnState:
    """The machine's state (a call, so mypy does not keep narrowing it between steps)."""
    return m.state


# The common prefix: the user speaks 0..1000 ms, the turn ends at 1500 ms (min
# delay 500), the bot starts playing at 1700 ms and would finish at 4700 ms.
FIRST_TURN = say(0, 1000)
BOT_STARTS_MS = 1700


def test_first_turn_and_bot_reply() -> None:
    m, bot, log = run(FIRST_TURN, 6000)
    assert log == [
        (60, StartSttUtterance(0)),
        (1500, StopSttUtterance(1500, discard=False)),
        (1500, StartResponse(1, 0, 1000)),
    ]
    assert bot.finished == [1]
    assert state(m) is TurnState.LISTENING
    assert m.stats.user_turns == 1
    assert m.stats.last_end_of_turn_delay_ms == 500
    assert m.stats.last_response_start_ms == 200


def test_turn_ends_after_min_delay_of_silence_not_before() -> None:
    m, _, log = run(FIRST_TURN, 1500)
    assert of_type(log, StartResponse) == []
    assert state(m) is TurnState.USER_SPEAKING
    m, _, log = run(FIRST_TURN, 1520)
    assert of_type(log, StartResponse) == [(1500, StartResponse(1, 0, 1000))]
    assert state(m) is TurnState.THINKING


def test_pause_mid_sentence_shorter_than_min_delay_does_not_end_the_turn() -> None:
    script = [*say(0, 800), *say(1200, 2000)]  # 400 ms pause < 500 ms min delay
    _, _, log = run(script, 3000)
    assert of_type(log, StartResponse) == [(2500, StartResponse(1, 0, 2000))]
    assert of_type(log, StartSttUtterance) == [(60, StartSttUtterance(0))]


def test_max_delay_when_the_end_of_turn_hint_says_not_done() -> None:
    script = [*FIRST_TURN, transcript(1200, "I would like to", final=True, end_of_turn=False)]
    _, _, log = run(script, 5000)
    assert of_type(log, StartResponse) == [(4000, StartResponse(1, 0, 1000))]  # 1000 + 3000


def test_a_later_done_hint_brings_back_min_delay() -> None:
    script = [
        *FIRST_TURN,
        transcript(1200, "I would like to", end_of_turn=False),
        transcript(1800, "I would like to book", final=True, end_of_turn=True),
    ]
    _, _, log = run(script, 5000)
    # At 1800 the 500 ms min delay has long passed: the turn ends at once.
    assert of_type(log, StartResponse) == [(1800, StartResponse(1, 0, 1000))]


def test_cough_during_bot_speech_pauses_then_resumes_at_the_same_position() -> None:
    cough = say(2400, 2520)  # 120 ms burst, no words
    m, bot, log = run([*FIRST_TURN, *cough], 9000)
    ((pause_t, pause),) = of_type(log, PausePlayout)
    ((resume_t, resume),) = of_type(log, ResumePlayout)
    assert pause_t == 2460  # as soon as the VAD reported the onset
    assert isinstance(pause, PausePlayout)
    assert isinstance(resume, ResumePlayout)
    # Playout had advanced one frame per tick up to the tick before the pause.
    assert resume.position_ms == pause.position_ms == 2440 - BOT_STARTS_MS
    assert resume_t == 2520 + 2000  # false_interruption_timeout_ms after the speech ended
    assert of_type(log, ClearPlayout) == []
    assert of_type(log, FalseInterruption) == [(4520, FalseInterruption(1, 2400, False))]
    assert of_type(log, StopSttUtterance)[-1] == (4520, StopSttUtterance(4520, discard=True))
    assert bot.finished == [1]  # the whole utterance was played
    assert state(m) is TurnState.LISTENING
    assert (m.stats.interruptions, m.stats.false_interruptions) == (0, 1)
    assert m.stats.last_time_to_yield_ms == 60


def test_real_stop_interrupts_at_once_when_words_arrive() -> None:
    script = [*FIRST_TURN, *say(2400, 2800), transcript(2640, "stop")]
    m, bot, log = run(script, 6000)
    assert of_type(log, PausePlayout) == [(2460, PausePlayout(1, 740))]
    assert of_type(log, ClearPlayout) == [(2640, ClearPlayout(1, 740))]
    assert of_type(log, Interrupted) == [(2640, Interrupted(1, 2400, InterruptReason.WORDS, 740))]
    # The barge-in is the next user turn: it ends 500 ms after the speech.
    assert of_type(log, StartResponse)[-1] == (3300, StartResponse(2, 2400, 2800))
    assert bot.cleared == [1]
    assert 1 not in bot.finished
    assert m.stats.interruptions == 1
    assert m.stats.last_confirm_ms == 240


def test_uh_huh_with_words_available_does_not_interrupt() -> None:
    # 700 ms of "mm-hmm": longer than min_interruption_ms, but the words veto it.
    script = [
        *FIRST_TURN,
        *say(2400, 3100),
        transcript(2600, "mm"),
        transcript(3300, "Mm-hmm.", final=True),
    ]
    m, bot, log = run(script, 9000)
    assert of_type(log, ClearPlayout) == []
    assert of_type(log, Interrupted) == []
    ((_, pause),) = of_type(log, PausePlayout)
    assert isinstance(pause, PausePlayout)
    # Resumed as soon as the final backchannel arrived and the user was silent.
    assert of_type(log, ResumePlayout) == [(3400, ResumePlayout(1, pause.position_ms))]
    assert of_type(log, FalseInterruption) == [(3400, FalseInterruption(1, 2400, True))]
    assert bot.finished == [1]
    assert m.stats.backchannels_ignored == 1
    assert m.stats.false_interruptions == 1


def test_backchannel_then_real_word_interrupts() -> None:
    script = [
        *FIRST_TURN,
        *say(2400, 3400),
        transcript(2600, "yeah"),
        transcript(3000, "yeah wait"),
    ]
    _, _, log = run(script, 6000)
    assert [t for t, _ in of_type(log, Interrupted)] == [3000]


def test_long_speech_without_stt_words_interrupts_after_min_interruption_ms() -> None:
    script = [*FIRST_TURN, *say(2400, 3600)]
    m, _, log = run(script, 6000)
    assert of_type(log, ClearPlayout) == [(2900, ClearPlayout(1, 740))]  # 2400 + 500
    ((_, interrupted),) = of_type(log, Interrupted)
    assert isinstance(interrupted, Interrupted)
    assert interrupted.reason is InterruptReason.DURATION
    assert of_type(log, StartResponse)[-1] == (4100, StartResponse(2, 2400, 3600))
    assert m.stats.interruptions == 1


def test_duration_ignores_the_vads_hangover_when_given_voiced_until() -> None:
    m, _, _ = run(FIRST_TURN, 2400)
    assert state(m) is TurnState.BOT_SPEAKING
    assert m.on_speech_started(2400, 2460) == (PausePlayout(1, 680), StartSttUtterance(2400))
    # Voiced until 2700 only; the VAD is in its stop hangover until 3000.
    for now in range(2480, 3000, 20):
        assert m.tick(now, voiced_until_ms=min(now, 2700)) == ()
    assert state(m) is TurnState.PAUSED
    assert m.on_speech_stopped(2700, 3000) == ()
    assert m.tick(4700) == (
        ResumePlayout(1, 680),
        StopSttUtterance(4700, discard=True),
        FalseInterruption(1, 2400, False),
    )


def test_echo_guard_ignores_an_onset_right_after_the_bot_starts() -> None:
    echo = say(BOT_STARTS_MS + 100, BOT_STARTS_MS + 400)  # within the 300 ms guard
    m, bot, log = run([*FIRST_TURN, *echo], 6000)
    assert of_type(log, PausePlayout) == []
    assert bot.finished == [1]
    assert m.stats.onsets_ignored == 1
    # The same onset after the guard pauses.
    later = say(BOT_STARTS_MS + 400, BOT_STARTS_MS + 500)
    _, _, log = run([*FIRST_TURN, *later], 6000)
    assert [t for t, _ in of_type(log, PausePlayout)] == [BOT_STARTS_MS + 460]


def test_echo_guard_does_not_hide_speech_that_began_before_the_bot() -> None:
    # The user starts at 1680, the VAD confirms at 1740, after playout began at 1700.
    _, _, log = run([*FIRST_TURN, *say(BOT_STARTS_MS - 20, BOT_STARTS_MS + 600)], 3000)
    assert [t for t, _ in of_type(log, PausePlayout)] == [BOT_STARTS_MS + 40]


def test_dtmf_during_bot_speech_clears_playout() -> None:
    m, bot, log = run([*FIRST_TURN, dtmf(2500, "5")], 6000)
    assert log[-2:] == [
        (2500, ClearPlayout(1, 780)),
        (2500, Interrupted(1, 2500, InterruptReason.DTMF, 780)),
    ]
    assert bot.cleared == [1]
    assert state(m) is TurnState.LISTENING
    assert m.stats.interruptions == 1


def test_dtmf_while_paused_also_closes_the_stt_utterance() -> None:
    _, _, log = run([*FIRST_TURN, onset(2400), dtmf(2600, "#")], 4000)
    assert [c for t, c in log if t == 2600] == [
        ClearPlayout(1, 740),
        Interrupted(1, 2600, InterruptReason.DTMF, 740),
        StopSttUtterance(2600, discard=True),
    ]


def test_dtmf_outside_bot_speech_does_nothing_and_bad_digits_raise() -> None:
    m = TurnMachine()
    assert m.on_dtmf("1", 0) == ()
    with pytest.raises(ValueError, match="DTMF digit"):
        m.on_dtmf("x", 0)


def test_interruptions_disabled() -> None:
    config = TurnConfig(allow_interruptions=False)
    script = [*FIRST_TURN, *say(2400, 3600), transcript(2600, "stop"), dtmf(3000, "1")]
    m, bot, log = run(script, 7000, config=config)
    assert of_type(log, PausePlayout) == []
    assert of_type(log, ClearPlayout) == []
    assert bot.finished == [1]
    assert m.stats.onsets_ignored == 1
    assert state(m) is TurnState.LISTENING


def test_user_still_talking_when_an_uninterruptible_bot_finishes_gets_the_turn() -> None:
    config = TurnConfig(allow_interruptions=False)
    script = [*FIRST_TURN, *say(4000, 5200)]
    m, _, log = run(script, 5720, config=config)
    assert of_type(log, StartSttUtterance)[-1] == (4700, StartSttUtterance(4700))
    assert of_type(log, StartResponse)[-1] == (5700, StartResponse(2, 4700, 5200))
    assert state(m) is TurnState.THINKING


def test_user_continues_before_the_bot_speaks() -> None:
    # The turn ended at 1500 but the user goes on at 1600, before playout (1700).
    script = [*FIRST_TURN, *say(1600, 2200)]
    m, bot, log = run(script, 4000)
    assert (1660, ClearPlayout(1, 0)) in log
    assert bot.cleared == [1]
    assert of_type(log, StartResponse) == [
        (1500, StartResponse(1, 0, 1000)),
        (2700, StartResponse(2, 0, 2200)),  # one turn from the first onset
    ]
    assert m.stats.early_turn_ends == 1


def test_late_events_of_a_dropped_generation_are_ignored() -> None:
    m, _, _ = run([*FIRST_TURN, *say(2400, 2800), transcript(2640, "stop")], 3400)
    assert state(m) is TurnState.THINKING
    assert m.generation == 2
    assert m.on_playout_started(1, 3400) == ()
    assert m.on_playout_finished(1, 3400) == ()
    assert m.on_response_done(1, 3400) == ()
    assert state(m) is TurnState.THINKING


def test_bot_initiated_response() -> None:
    m = TurnMachine()
    assert m.start_bot_response(0) == (StartResponse(1, None, None),)
    assert state(m) is TurnState.THINKING
    assert m.start_bot_response(10) == ()  # only from LISTENING
    assert m.on_playout_started(1, 100) == ()
    assert state(m) is TurnState.BOT_SPEAKING
    assert m.on_response_done(1, 120) == ()
    assert m.on_playout_finished(1, 2000) == ()
    assert state(m) is TurnState.LISTENING


def test_response_without_audio_returns_to_listening() -> None:
    m, _, _ = run(FIRST_TURN, 1520)
    assert m.on_response_done(1, 1600) == ()
    assert state(m) is TurnState.LISTENING


def test_tick_returns_the_shared_empty_tuple_in_steady_states() -> None:
    m = TurnMachine()
    assert m.tick(0) is NO_COMMANDS
    m, _, _ = run(FIRST_TURN, 2000)
    assert state(m) is TurnState.BOT_SPEAKING
    assert m.tick(2000) is NO_COMMANDS
    assert m.on_playout_progress(1, 320, 2000) is NO_COMMANDS


def test_min_interruption_words_zero_relies_on_duration_only() -> None:
    config = TurnConfig(min_interruption_words=0)
    script = [*FIRST_TURN, *say(2400, 3200), transcript(2600, "stop")]
    _, _, log = run(script, 5000, config=config)
    assert [t for t, _ in of_type(log, ClearPlayout)] == [2900]


def test_words_normalisation() -> None:
    assert words("Uh-huh. OK, WAIT!") == ["uh", "huh", "ok", "wait"]
    assert words("  ") == []
    assert words("don't stop") == ["don't", "stop"]
    vocab = TurnConfig().backchannel_vocabulary
    assert {"uh", "huh", "mm", "hmm", "yeah", "okay"} <= vocab
    assert "stop" not in vocab
    assert "wait" not in vocab


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_interruption_ms": -1}, "min_interruption_ms"),
        ({"min_interruption_ms": 0.5}, "min_interruption_ms"),
        ({"min_interruption_words": -1}, "min_interruption_words"),
        ({"false_interruption_timeout_ms": -5}, "false_interruption_timeout_ms"),
        ({"min_delay_ms": -1}, "min_delay_ms"),
        ({"min_delay_ms": 800, "max_delay_ms": 500}, "max_delay_ms"),
        ({"echo_guard_ms": float("nan")}, "echo_guard_ms"),
        ({"allow_interruptions": 1}, "allow_interruptions"),
        ({"backchannel_words": {"uh"}}, "backchannel_words"),
        ({"backchannel_words": frozenset({"", "ok"})}, "backchannel_words"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TurnConfig(**kwargs)  # type: ignore[arg-type]


# --- real speech through VAD and turn machine ------------------------------------------------


def test_real_speech_pipeline_gives_one_response_per_utterance() -> None:
    utterances = [
        "Hello, I would like to book a table for two",
        "Tomorrow at seven, please",
        "Can you, um, make it outside",
    ]
    parts = [speech.silence(500)]
    for text in utterances:
        parts += [speech.speech(text), speech.silence(2500)]
    signal = speech.concat(parts)
    signal = signal[: len(signal) // 320 * 320]

    vad = Vad(VadConfig())
    m = TurnMachine()
    bot = FakeBot(latency_ms=200, utterance_ms=600)
    log: Log = []
    for now_ms, frame in speech.frames(signal, FRAME_MS):
        commands: list[Command] = []
        event = vad.process(frame, now_ms)
        if event is not None:
            commands += m.on_vad_event(event, now_ms)
        commands += bot.advance(m, now_ms)
        commands += m.tick(now_ms, vad.voiced_until_ms)
        for command in commands:
            log.append((now_ms, command))
            bot.apply(command, now_ms)

    responses = [c for _, c in of_type(log, StartResponse)]
    assert len(responses) == len(utterances)
    assert of_type(log, PausePlayout) == []
    # Each response brackets one utterance's real boundaries (within two frames).
    cursor = 500
    for text, response in zip(utterances, responses, strict=True):
        assert isinstance(response, StartResponse)
        length_ms = len(speech.speech(text)) * 1000 // 16000
        assert response.speech_start_ms is not None and response.speech_end_ms is not None
        assert abs(response.speech_start_ms - cursor) <= 2 * FRAME_MS
        assert abs(response.speech_end_ms - (cursor + length_ms)) <= 2 * FRAME_MS
        cursor += length_ms + 2500
    assert m.stats.user_turns == 3
    assert m.stats.interruptions == m.stats.false_interruptions == 0
