"""Turn-taking and barge-in: one small state machine, clock passed in, no I/O.

All times are integer milliseconds on the call's media clock (``now_ms``); VAD
events carry their own media time (``at_ms``).  Every input method returns a
tuple of commands for the caller to carry out, the shared empty tuple when
nothing happens, so the per-frame :meth:`TurnMachine.tick` allocates nothing.

The machine owns the bot's *generation* counter: each :class:`StartResponse`
carries a new generation, and playout/response inputs for any other generation
are ignored (they are late events of a response that was already dropped).

States and transitions::

  LISTENING      --onset--------------------------> USER_SPEAKING   StartSttUtterance
  LISTENING      --start_bot_response-------------> THINKING        StartResponse (no user turn)
  USER_SPEAKING  --silence >= endpoint delay-------> THINKING        StopSttUtterance, StartResponse
  THINKING       --playout started----------------> BOT_SPEAKING
  THINKING       --response done, no audio--------> LISTENING
  THINKING       --onset (user was not done)------> USER_SPEAKING   ClearPlayout, StartSttUtterance
  BOT_SPEAKING   --playout finished + resp. done--> LISTENING
  BOT_SPEAKING   --onset (past echo guard)--------> PAUSED          PausePlayout, StartSttUtterance
  BOT_SPEAKING   --DTMF----------------------------> LISTENING       ClearPlayout, Interrupted
  PAUSED         --confirmed (duration/words)-----> INTERRUPTED     ClearPlayout, Interrupted
  PAUSED         --false interruption-------------> BOT_SPEAKING    ResumePlayout, StopSttUtterance,
                                                                    FalseInterruption
  PAUSED         --DTMF----------------------------> LISTENING       ClearPlayout, Interrupted,
                                                                    StopSttUtterance
  INTERRUPTED    --silence >= endpoint delay-------> THINKING        StopSttUtterance, StartResponse

INTERRUPTED is a user turn exactly like USER_SPEAKING, except that it began by
cutting the bot off; its turn starts at the barge-in onset.  An onset in
THINKING means the turn was ended too early: the pending response is dropped
and the same user turn continues (from its original start).  With
``allow_interruptions=False`` onsets in THINKING and BOT_SPEAKING are ignored
(and DTMF does not cut the bot off); if the user is still speaking when the bot
finishes, their turn starts at that moment.  Onsets beginning within
``echo_guard_ms`` after the bot's audio started are ignored likewise.

Endpointing: the turn ends ``min_delay_ms`` after the end of the user's last
speech (the VAD's ``SpeechStopped.at_ms``), or ``max_delay_ms`` after it while
the latest transcript's end-of-turn hint says the user is probably not done.
The VAD's own stop delay is therefore not added on top (the wait is the longer
of the two, not their sum).  Any new onset cancels the wait and clears the hint.

Barge-in is pause-then-decide.  A VAD onset while the bot speaks pauses
playout at once and opens an STT utterance.  Then, with ``B`` the
backchannel words and ``R`` the other words heard since the pause:

* ``R >= min_interruption_words`` (when that is > 0): confirmed at once;
* speech lasting ``min_interruption_ms`` from its onset: confirmed, unless
  words were heard and all of them are backchannels (``B > 0, R == 0``);
* a final transcript of backchannels only, once the user is silent: resumed
  at once (counted in ``backchannels_ignored``);
* otherwise ``false_interruption_timeout_ms`` after the speech stops: resumed.

Speech duration uses ``voiced_until_ms`` (end of the VAD's latest speech frame)
when :meth:`TurnMachine.tick` is given it, so the VAD's stop hangover does not
count as speech; without it, speech is taken to last until ``now_ms``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, TypeAlias

from engine.vad import SpeechStarted, SpeechStopped, VadEvent


class TurnState(enum.Enum):
    """Who holds the floor."""

    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"
    BOT_SPEAKING = "bot_speaking"
    PAUSED = "paused"
    INTERRUPTED = "interrupted"


class InterruptReason(enum.Enum):
    """What confirmed a barge-in."""

    DURATION = "duration"
    WORDS = "words"
    DTMF = "dtmf"


DEFAULT_BACKCHANNELS: Final = frozenset(
    {
        "uh-huh",
        "mm-hmm",
        "mhm",
        "hmm",
        "hm",
        "mm",
        "uh",
        "um",
        "ah",
        "oh",
        "aha",
        "okay",
        "ok",
        "yeah",
        "yep",
        "yup",
        "yes",
        "right",
        "sure",
        "alright",
        "cool",
    }
)
"""Words that, alone, acknowledge the speaker rather than take the floor."""

DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")

_WORD_SPLIT: Final = re.compile(r"[^\w']+")


def words(text: str) -> list[str]:
    """Lower-case words of a transcript; hyphens and punctuation separate words."""
    return [w for w in _WORD_SPLIT.split(text.lower().replace("_", " ")) if w.strip("'")]


def _check_ms(name: str, value: object, low: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low} (ms), got {value!r}")


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Endpointing and barge-in settings; invalid values raise ``ValueError`` naming the field.

    ``echo_guard_ms``: onsets that begin within this long after the bot starts
    an utterance are ignored (the far end's echo canceller may not have
    converged).  ``backchannel_words`` are matched word by word after
    :func:`words` normalisation (so "uh-huh" covers "uh huh" and "Uh-huh.").
    """

    allow_interruptions: bool = True
    min_interruption_ms: int = 500
    min_interruption_words: int = 1
    false_interruption_timeout_ms: int = 2000
    min_delay_ms: int = 500
    max_delay_ms: int = 3000
    echo_guard_ms: int = 300
    backchannel_words: frozenset[str] = DEFAULT_BACKCHANNELS

    def __post_init__(self) -> None:
        if not isinstance(self.allow_interruptions, bool):
            raise ValueError(
                f"allow_interruptions must be a bool, got {self.allow_interruptions!r}"
            )
        _check_ms("min_interruption_ms", self.min_interruption_ms)
        if (
            not isinstance(self.min_interruption_words, int)
            or isinstance(self.min_interruption_words, bool)
            or self.min_interruption_words < 0
        ):
            raise ValueError(
                f"min_interruption_words must be an integer >= 0, "
                f"got {self.min_interruption_words!r}"
            )
        _check_ms("false_interruption_timeout_ms", self.false_interruption_timeout_ms)
        _check_ms("min_delay_ms", self.min_delay_ms)
        _check_ms("max_delay_ms", self.max_delay_ms, low=self.min_delay_ms)
        _check_ms("echo_guard_ms", self.echo_guard_ms)
        if not isinstance(self.backchannel_words, frozenset) or not all(
            isinstance(w, str) and words(w) for w in self.backchannel_words
        ):
            raise ValueError("backchannel_words must be a frozenset of non-empty words")

    @property
    def backchannel_vocabulary(self) -> frozenset[str]:
        """The normalised single words of ``backchannel_words``."""
        return frozenset(w for phrase in self.backchannel_words for w in words(phrase))


# --- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PausePlayout:
    """Stop playing ``generation`` at ``position_ms`` (ms of it played so far); keep the rest."""

    generation: int
    position_ms: int


@dataclass(frozen=True, slots=True)
class ResumePlayout:
    """Continue playing ``generation`` from ``position_ms``, where it was paused."""

    generation: int
    position_ms: int


@dataclass(frozen=True, slots=True)
class ClearPlayout:
    """Drop all audio of ``generation`` (and cancel its LLM/TTS work).

    ``position_ms`` is how much of it the caller heard (0 if none played).
    """

    generation: int
    position_ms: int


@dataclass(frozen=True, slots=True)
class StartResponse:
    """Produce the bot's next utterance as ``generation``.

    For a user turn, the user's speech ran from ``speech_start_ms`` to
    ``speech_end_ms``; both are None for a bot-initiated response.
    """

    generation: int
    speech_start_ms: int | None
    speech_end_ms: int | None


@dataclass(frozen=True, slots=True)
class StartSttUtterance:
    """Open an STT utterance fed with inbound audio from media time ``from_ms`` on."""

    from_ms: int


@dataclass(frozen=True, slots=True)
class StopSttUtterance:
    """Close the STT utterance at ``at_ms``; ``discard`` means its text must not be used."""

    at_ms: int
    discard: bool


@dataclass(frozen=True, slots=True)
class Interrupted:
    """Notification: the user cut off ``generation`` after hearing ``position_ms`` of it."""

    generation: int
    onset_ms: int
    reason: InterruptReason
    position_ms: int


@dataclass(frozen=True, slots=True)
class FalseInterruption:
    """Notification: the pause of ``generation`` was not an interruption; playout resumed."""

    generation: int
    onset_ms: int
    backchannel: bool


Command: TypeAlias = (
    PausePlayout
    | ResumePlayout
    | ClearPlayout
    | StartResponse
    | StartSttUtterance
    | StopSttUtterance
    | Interrupted
    | FalseInterruption
)
Commands: TypeAlias = tuple[Command, ...]

NO_COMMANDS: Final[Commands] = ()


@dataclass(slots=True)
class TurnStats:
    """Counters and the latest timings, for metrics."""

    user_turns: int = 0
    """User turns ended (StartResponse issued for them)."""
    interruptions: int = 0
    false_interruptions: int = 0
    backchannels_ignored: int = 0
    """False interruptions decided by a backchannel-only transcript."""
    onsets_ignored: int = 0
    """Onsets during bot speech ignored (echo guard or interruptions disabled)."""
    early_turn_ends: int = 0
    """The user spoke again after their turn was ended, before the bot spoke."""
    last_time_to_yield_ms: int | None = None
    """Barge-in speech onset to the PausePlayout command (DTMF: 0)."""
    last_confirm_ms: int | None = None
    """Barge-in speech onset to the interruption being confirmed."""
    last_end_of_turn_delay_ms: int | None = None
    """End of the user's speech to the turn-end decision."""
    last_response_start_ms: int | None = None
    """Turn-end decision to the response reporting that it started."""


_USER_TURN: Final = frozenset({TurnState.USER_SPEAKING, TurnState.INTERRUPTED})
_BOT_AUDIBLE: Final = frozenset({TurnState.BOT_SPEAKING, TurnState.PAUSED})


class TurnMachine:
    """The turn / barge-in state machine for one call (see the module docstring)."""

    def __init__(self, config: TurnConfig | None = None):
        self.config = config if config is not None else TurnConfig()
        self._backchannels = self.config.backchannel_vocabulary
        self.stats = TurnStats()
        self.state = TurnState.LISTENING
        self.generation = 0
        """The newest generation issued (0 before the first response)."""
        self._live_generation = -1  # events of other generations are late: ignored
        self._timer_ms: int | None = None
        self._vad_speaking = False
        # The user turn.
        self._turn_start_ms = 0
        self._speech_end_ms: int | None = None
        self._not_done_hint = False
        self._turn_end_ms = 0
        # The bot utterance of `generation`.
        self._bot_started_ms = 0
        self._position_ms = 0
        self._playout_idle = True
        self._response_done = False
        # The barge-in being decided (PAUSED).
        self._onset_ms = 0
        self._segment_onset_ms = 0
        self._final_real = 0
        self._final_backchannel = 0
        self._interim_real = 0
        self._interim_backchannel = 0
        self._heard_final = False

    # --- read-only views ----------------------------------------------------------------------

    @property
    def user_speaking(self) -> bool:
        """Whether the VAD currently reports user speech."""
        return self._vad_speaking

    @property
    def position_ms(self) -> int:
        """How much of the current generation has been played, per playout progress."""
        return self._position_ms

    # --- VAD ---------------------------------------------------------------------------------

    def on_vad_event(self, event: VadEvent, now_ms: int) -> Commands:
        """Dispatch a :mod:`engine.vad` event."""
        if type(event) is SpeechStarted:
            return self.on_speech_started(event.at_ms, now_ms)
        if type(event) is SpeechStopped:
            return self.on_speech_stopped(event.at_ms, now_ms)
        raise ValueError(f"not a VAD event: {event!r}")

    def on_speech_started(self, at_ms: int, now_ms: int) -> Commands:
        """The VAD confirmed user speech that began at ``at_ms``."""
        self._vad_speaking = True
        state = self.state
        if state is TurnState.LISTENING:
            return self._begin_user_turn(at_ms)
        if state in _USER_TURN:
            self._timer_ms = None
            self._not_done_hint = False
            return NO_COMMANDS
        if state is TurnState.THINKING:
            if not self.config.allow_interruptions:
                self.stats.onsets_ignored += 1
                return NO_COMMANDS
            # The turn was ended too early: drop the pending response and
            # continue the same user turn.
            self.stats.early_turn_ends += 1
            self._live_generation = -1
            self.state = TurnState.USER_SPEAKING
            self._timer_ms = None
            self._not_done_hint = False
            return (ClearPlayout(self.generation, 0), StartSttUtterance(at_ms))
        if state is TurnState.BOT_SPEAKING:
            # Echo cannot precede the bot's audio, so the guard covers only
            # onsets from the bot's start to echo_guard_ms after it.
            started = self._bot_started_ms
            if not self.config.allow_interruptions or (
                started <= at_ms < started + self.config.echo_guard_ms
            ):
                self.stats.onsets_ignored += 1
                return NO_COMMANDS
            return self._pause(at_ms, now_ms)
        # PAUSED: a new speech segment within the same barge-in.
        self._segment_onset_ms = at_ms
        self._arm_confirm_timer()
        return NO_COMMANDS

    def on_speech_stopped(self, at_ms: int, now_ms: int) -> Commands:
        """The VAD ended user speech; its last speech frame ended at ``at_ms``."""
        self._vad_speaking = False
        state = self.state
        if state in _USER_TURN:
            self._speech_end_ms = at_ms
            self._arm_endpoint_timer()
            return NO_COMMANDS
        if state is not TurnState.PAUSED:
            return NO_COMMANDS
        self._speech_end_ms = at_ms
        if not self._vetoed() and at_ms - self._segment_onset_ms >= self.config.min_interruption_ms:
            return self._confirm(now_ms, InterruptReason.DURATION)
        if self._vetoed() and self._heard_final:
            return self._resume(now_ms, backchannel=True)
        self._timer_ms = at_ms + self.config.false_interruption_timeout_ms
        return NO_COMMANDS

    # --- STT ---------------------------------------------------------------------------------

    def on_transcript(
        self, text: str, is_final: bool, now_ms: int, end_of_turn: bool | None = None
    ) -> Commands:
        """An STT result for the open utterance.

        ``text`` is the interim hypothesis for the current segment, or a final
        segment when ``is_final``.  ``end_of_turn`` is the optional hint from an
        end-of-turn model: False means "probably not done" (wait ``max_delay_ms``).
        """
        state = self.state
        if state in _USER_TURN:
            if end_of_turn is not None:
                self._not_done_hint = not end_of_turn
                if not self._vad_speaking and self._speech_end_ms is not None:
                    self._arm_endpoint_timer()
            return NO_COMMANDS
        if state is not TurnState.PAUSED:
            return NO_COMMANDS
        real, backchannel = self._count_words(text)
        if is_final:
            self._final_real += real
            self._final_backchannel += backchannel
            self._interim_real = self._interim_backchannel = 0
            self._heard_final = True
        else:
            self._interim_real, self._interim_backchannel = real, backchannel
        needed = self.config.min_interruption_words
        if needed and self._final_real + self._interim_real >= needed:
            return self._confirm(now_ms, InterruptReason.WORDS)
        if self._vad_speaking:
            self._arm_confirm_timer()
        elif self._vetoed() and self._heard_final:
            return self._resume(now_ms, backchannel=True)
        return NO_COMMANDS

    # --- playout and response lifecycle -------------------------------------------------------

    def start_bot_response(self, now_ms: int) -> Commands:
        """Ask for a bot-initiated utterance (greeting, reminder); only from LISTENING."""
        if self.state is not TurnState.LISTENING:
            return NO_COMMANDS
        return self._start_response(now_ms, None, None)

    def on_response_started(self, generation: int, now_ms: int) -> Commands:
        """The response of ``generation`` began producing output (for metrics)."""
        if generation == self._live_generation and self.state is TurnState.THINKING:
            self.stats.last_response_start_ms = now_ms - self._turn_end_ms
        return NO_COMMANDS

    def on_response_done(self, generation: int, now_ms: int) -> Commands:
        """No more audio will be queued for ``generation``."""
        if generation != self._live_generation:
            return NO_COMMANDS
        self._response_done = True
        if self.state is TurnState.THINKING or (
            self.state is TurnState.BOT_SPEAKING and self._playout_idle
        ):
            return self._bot_done(now_ms)
        return NO_COMMANDS

    def on_playout_started(self, generation: int, now_ms: int) -> Commands:
        """The first audio of ``generation`` (or more after an underrun) started playing."""
        if generation != self._live_generation:
            return NO_COMMANDS
        self._playout_idle = False
        if self.state is TurnState.THINKING:
            self.state = TurnState.BOT_SPEAKING
            self._bot_started_ms = now_ms
        return NO_COMMANDS

    def on_playout_progress(self, generation: int, position_ms: int, now_ms: int) -> Commands:
        """``position_ms`` of ``generation`` has been played."""
        if generation == self._live_generation:
            self._position_ms = position_ms
        return NO_COMMANDS

    def on_playout_finished(self, generation: int, now_ms: int) -> Commands:
        """Everything queued for ``generation`` has been played."""
        if generation != self._live_generation:
            return NO_COMMANDS
        self._playout_idle = True
        if self.state is TurnState.BOT_SPEAKING and self._response_done:
            return self._bot_done(now_ms)
        return NO_COMMANDS

    # --- DTMF and timers ----------------------------------------------------------------------

    def on_dtmf(self, digit: str, now_ms: int) -> Commands:
        """A DTMF key press; it cuts off bot speech at once (when interruptions are allowed).

        The digit itself is for the application; the machine only yields the floor.
        """
        if digit not in DTMF_DIGITS:
            raise ValueError(f"DTMF digit must be one of 0-9 * # A-D, got {digit!r}")
        state = self.state
        if state not in _BOT_AUDIBLE or not self.config.allow_interruptions:
            return NO_COMMANDS
        generation, position = self.generation, self._position_ms
        self.stats.interruptions += 1
        self._live_generation = -1
        self.stats.last_time_to_yield_ms = 0
        self.stats.last_confirm_ms = 0
        self.state = TurnState.LISTENING
        self._timer_ms = None
        cleared = (
            ClearPlayout(generation, position),
            Interrupted(generation, now_ms, InterruptReason.DTMF, position),
        )
        if state is TurnState.PAUSED:
            return (*cleared, StopSttUtterance(now_ms, discard=True))
        return cleared

    def tick(self, now_ms: int, voiced_until_ms: int | None = None) -> Commands:
        """Advance timers to ``now_ms``; call once per frame.

        ``voiced_until_ms`` is the end of the VAD's latest speech frame
        (:attr:`engine.vad.Vad.voiced_until_ms`); see the module docstring.
        """
        deadline = self._timer_ms
        if deadline is None:
            return NO_COMMANDS
        if self.state is TurnState.PAUSED and self._vad_speaking:
            spoken_until = now_ms if voiced_until_ms is None else voiced_until_ms
            if spoken_until < deadline:
                return NO_COMMANDS
            return self._confirm(now_ms, InterruptReason.DURATION)
        if now_ms < deadline:
            return NO_COMMANDS
        # Only PAUSED and the user-turn states ever arm the timer.
        if self.state is TurnState.PAUSED:
            return self._resume(now_ms, backchannel=False)
        return self._end_user_turn(now_ms)

    # --- transitions --------------------------------------------------------------------------

    def _begin_user_turn(self, at_ms: int) -> Commands:
        self.state = TurnState.USER_SPEAKING
        self._turn_start_ms = at_ms
        self._speech_end_ms = None
        self._not_done_hint = False
        self._timer_ms = None
        return (StartSttUtterance(at_ms),)

    def _end_user_turn(self, now_ms: int) -> Commands:
        speech_end = self._speech_end_ms
        assert speech_end is not None  # the endpoint timer is armed only after speech stopped
        self.stats.user_turns += 1
        self.stats.last_end_of_turn_delay_ms = now_ms - speech_end
        stop = StopSttUtterance(now_ms, discard=False)
        return (stop, *self._start_response(now_ms, self._turn_start_ms, speech_end))

    def _start_response(self, now_ms: int, start_ms: int | None, end_ms: int | None) -> Commands:
        self.generation += 1
        self._live_generation = self.generation
        self.state = TurnState.THINKING
        self._timer_ms = None
        self._turn_end_ms = now_ms
        self._position_ms = 0
        self._playout_idle = True
        self._response_done = False
        return (StartResponse(self.generation, start_ms, end_ms),)

    def _bot_done(self, now_ms: int) -> Commands:
        self.state = TurnState.LISTENING
        self._timer_ms = None
        if self._vad_speaking:
            # The user has been talking over an uninterruptible (or echo-guarded)
            # bot; their turn starts now, with the bot out of the way.
            return self._begin_user_turn(now_ms)
        return NO_COMMANDS

    def _pause(self, at_ms: int, now_ms: int) -> Commands:
        self.state = TurnState.PAUSED
        self._onset_ms = self._segment_onset_ms = at_ms
        self._speech_end_ms = None
        self._final_real = self._final_backchannel = 0
        self._interim_real = self._interim_backchannel = 0
        self._heard_final = False
        self._arm_confirm_timer()
        self.stats.last_time_to_yield_ms = now_ms - at_ms
        return (PausePlayout(self.generation, self._position_ms), StartSttUtterance(at_ms))

    def _confirm(self, now_ms: int, reason: InterruptReason) -> Commands:
        generation, position = self.generation, self._position_ms
        self.stats.interruptions += 1
        self.stats.last_confirm_ms = now_ms - self._onset_ms
        self._live_generation = -1
        # The barge-in becomes the user's turn; the STT utterance stays open.
        self.state = TurnState.INTERRUPTED
        self._turn_start_ms = self._onset_ms
        self._not_done_hint = False
        self._timer_ms = None
        if not self._vad_speaking:
            self._arm_endpoint_timer()
        return (
            ClearPlayout(generation, position),
            Interrupted(generation, self._onset_ms, reason, position),
        )

    def _resume(self, now_ms: int, backchannel: bool) -> Commands:
        generation = self.generation
        self.stats.false_interruptions += 1
        if backchannel:
            self.stats.backchannels_ignored += 1
        self.state = TurnState.BOT_SPEAKING
        self._timer_ms = None
        commands = (
            ResumePlayout(generation, self._position_ms),
            StopSttUtterance(now_ms, discard=True),
            FalseInterruption(generation, self._onset_ms, backchannel),
        )
        if self._playout_idle and self._response_done:
            # Playout drained while paused: nothing left to resume into.
            return commands + self._bot_done(now_ms)
        return commands

    # --- helpers ------------------------------------------------------------------------------

    def _arm_endpoint_timer(self) -> None:
        assert self._speech_end_ms is not None
        c = self.config
        delay = c.max_delay_ms if self._not_done_hint else c.min_delay_ms
        self._timer_ms = self._speech_end_ms + delay

    def _arm_confirm_timer(self) -> None:
        if self._vetoed():
            self._timer_ms = None
        else:
            self._timer_ms = self._segment_onset_ms + self.config.min_interruption_ms

    def _vetoed(self) -> bool:
        """Words were heard since the pause and every one of them is a backchannel."""
        real = self._final_real + self._interim_real
        backchannel = self._final_backchannel + self._interim_backchannel
        return backchannel > 0 and real == 0

    def _count_words(self, text: str) -> tuple[int, int]:
        backchannel = real = 0
        for word in words(text):
            if word in self._backchannels:
                backchannel += 1
            else:
                real += 1
        return real, backchannel
