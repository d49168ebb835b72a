"""The pipeline agent: STT -> LLM -> TTS, driven by the turn machine, under budgets.

Per call:

* STT streams while the caller speaks (:class:`SttSession`): the turn
  machine opens and closes utterances, and their transcripts feed its
  barge-in veto.
* At the end of a turn (``StartResponse``) a response task takes the final
  transcript, asks the LLM (:class:`LlmReply`), cuts its tokens into phrases
  (:class:`PhraseCutter`) and speaks them (:class:`Speaker`) into the playout
  queue as they come.
* A greeting opens the call; DTMF keys (after ``DTMF_PAUSE_S`` without one, or
  ``#``) reach the LLM as a user message.
* ``ClearPlayout`` (a confirmed barge-in, DTMF, or the caller resuming before
  the reply played) cancels that generation's LLM request and TTS stream; the
  history keeps only the words the caller heard (:class:`SpokenLedger`), and a
  user turn nobody heard an answer to is carried into the next one.

Budgets (``[budgets]``): each stage has a deadline with a fallback (see the
stage classes), and ``turn_total_ms`` after the caller stopped, a reply that
has produced no audio yet is preceded by the filler clip.  When every
provider of a stage fails, the apology clip is spoken.  Every turn is a
:class:`TurnRecord`, logged when it ends and listed by :meth:`summary`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt

from engine.turn import (
    ClearPlayout,
    Command,
    Interrupted,
    StartResponse,
    StartSttUtterance,
    StopSttUtterance,
)
from server.agents.base import CallControl
from server.agents.clips import Clip, Clips
from server.agents.llmreply import LlmReply
from server.agents.phrases import PhraseCutter, speakable
from server.agents.speaker import Speaker
from server.agents.spoken import SpokenLedger
from server.agents.sttsession import SttSession, Utterance
from server.agents.turnlog import StageObserver, TurnKind, TurnRecord
from server.callevents import Transcript, TurnStages
from server.config import AgentSection, BudgetsSection
from server.providers.base import ChatMessage, TtsProvider
from server.providers.registry import ProviderSet

log = logging.getLogger(__name__)

DTMF_PAUSE_S: Final = 1.5
"""Keys pressed within this long of each other form one message."""
MAX_TURNS_KEPT: Final = 200
"""Turn records kept per call for the summary."""


@dataclass(frozen=True)
class PipelineContext:
    """What every call's pipeline shares: providers, settings, clips, metrics."""

    providers: ProviderSet
    agent: AgentSection
    budgets: BudgetsSection
    clips: Clips
    observer: StageObserver


@dataclass(eq=False)
class _Response:
    """One generation being produced."""

    record: TurnRecord
    ledger: SpokenLedger
    speech_end: float | None  # time.monotonic() of the end of the caller's speech
    task: asyncio.Task[None] | None = None
    user_index: int | None = None  # the user message in the history
    assistant_index: int | None = None
    audio_queued: bool = False
    audio_sent: bool = False
    done: bool = False
    cleared_at: float | None = None  # time.monotonic() of the ClearPlayout


class PipelineAgent:
    """:class:`server.agents.base.Agent` holding a spoken conversation (module docstring)."""

    def __init__(self, control: CallControl, context: PipelineContext) -> None:
        self._control = control
        self._ctx = context
        self._config = context.agent
        self._budgets = context.budgets
        self._observer = context.observer
        self._stt = SttSession(
            context.providers.stt,
            control,
            context.observer,
            language=context.agent.language,
            settled_ms=context.agent.endpointing_ms,
        )
        self._history: list[ChatMessage] = []
        self._turns: list[TurnRecord] = []
        self._responses: dict[int, _Response] = {}
        self._pending: list[Utterance] = []  # closed utterances of the coming user turn
        self._carry = ""  # a user turn that got no audible answer, said again next turn
        self._bot_reason: TurnKind | None = None
        self._digits: list[str] = []
        self._dtmf_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._closing: asyncio.Task[None] | None = None

    # -- Agent ------------------------------------------------------------------------

    def on_start(self, parameters: dict[str, str]) -> None:
        self._stt.start()
        if speakable(self._config.greeting):
            self._bot_reason = "greeting"
            if not self._control.request_turn():
                self._bot_reason = None

    def on_caller_frame(self, ulaw: bytearray, pcm16k: npt.NDArray[np.int16], at_ms: int) -> None:
        self._stt.frame(pcm16k, at_ms)

    def on_command(self, command: Command) -> None:
        if self._closed:
            return
        if isinstance(command, StartSttUtterance):
            self._stt.open(command.from_ms)
        elif isinstance(command, StopSttUtterance):
            utterance = self._stt.close(discard=command.discard)
            if utterance is not None:
                self._pending.append(utterance)
        elif isinstance(command, StartResponse):
            self._start(command)
        elif isinstance(command, ClearPlayout):
            self._clear(command.generation, command.position_ms)
        elif isinstance(command, Interrupted):
            response = self._responses.get(command.generation)
            if response is not None:
                response.record.yield_ms = float(self._control.now_ms - command.onset_ms)

    def on_dtmf(self, digit: str) -> None:
        if self._closed:
            return
        self._digits.append(digit)
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        delay = 0.0 if digit == "#" else DTMF_PAUSE_S
        self._dtmf_timer = asyncio.get_running_loop().call_later(delay, self._dtmf_due)

    def on_text(self, text: str) -> None:
        """A typed message: answered as a turn of its own, or joins the caller's turn."""
        text = text.strip()
        if not text or self._closed:
            return
        self._carry = " ".join(t for t in (self._carry, text) if t)
        self._bot_reason = "text"
        if not self._control.request_turn():
            self._bot_reason = None  # the caller is talking or being answered: next turn

    def on_first_audio(self, generation: int) -> None:
        response = self._responses.get(generation)
        if response is None:
            return
        response.audio_sent = True
        record = response.record
        if response.speech_end is not None:
            total_ms = (time.monotonic() - response.speech_end) * 1000
            record.set_stage("turn_total", total_ms)
            self._observer.observe_stage_ms("turn_total", total_ms)
            if record.overhead_ms is not None:
                self._observer.observe_overhead_ms(record.overhead_ms)
            if total_ms > self._budgets.turn_total_ms and "turn_total" not in record.violations:
                record.violations.append("turn_total")
                self._observer.count_violation("turn_total")
        if response.done:
            self._log_turn(record)

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        for response in self._responses.values():
            if response.task is not None and not response.task.done():
                response.task.cancel()
        self._closing = asyncio.get_running_loop().create_task(self._stt.aclose())
        turns = "; ".join(t.describe() for t in self._turns) or "no turns"
        log.info("call %s summary (%s): %s", self._control.call_id, reason, turns)

    def summary(self) -> dict[str, object]:
        return {
            "agent": "pipeline",
            "stt": self._stt.provider,
            "history": [{"role": m.role, "content": m.content} for m in self._history],
            "turns": [_record_dict(t) for t in self._turns],
        }

    # -- responses ----------------------------------------------------------------------

    def _start(self, command: StartResponse) -> None:
        generation = command.generation
        for old in self._responses.values():
            if old.task is not None and not old.task.done():
                old.task.cancel()
        kind: TurnKind = "user"
        speech_end: float | None = None
        if command.speech_end_ms is not None:
            eou_ms = float(self._control.now_ms - command.speech_end_ms)
            speech_end = time.monotonic() - eou_ms / 1000
        else:
            kind = self._bot_reason or "greeting"
            self._bot_reason = None
        record = TurnRecord(index=len(self._turns) + 1, generation=generation, kind=kind)
        self._turns.append(record)
        del self._turns[:-MAX_TURNS_KEPT]
        if speech_end is not None:
            record.set_stage("eou", eou_ms)
            self._observer.observe_stage_ms("eou", eou_ms)
            if eou_ms > self._budgets.eou_ms:
                record.violations.append("eou")
                self._observer.count_violation("eou")
        response = _Response(record=record, ledger=SpokenLedger(), speech_end=speech_end)
        self._responses = {g: r for g, r in self._responses.items() if not r.done}
        self._responses[generation] = response
        response.task = asyncio.get_running_loop().create_task(
            self._respond(generation, response), name=f"respond-{generation}"
        )

    async def _respond(self, generation: int, response: _Response) -> None:
        record = response.record
        turn_deadline = (
            response.speech_end
            if response.speech_end is not None
            else time.monotonic() - self._config.endpointing_ms / 1000
        ) + self._budgets.turn_total_ms / 1000
        filler = asyncio.get_running_loop().call_at(
            _loop_time(turn_deadline), self._filler_due, generation
        )
        llm: LlmReply | None = None
        speaker: Speaker | None = None
        try:
            if record.kind == "greeting":
                text: str | None = self._config.greeting
            else:
                user_text = await self._user_text(record, turn_deadline)
                if user_text is None:
                    self._play_clip(generation, response, self._ctx.clips.apology, True)
                    record.outcome = "failed"
                    return
                if not user_text:
                    record.outcome = "no_speech"
                    return
                record.user_text = user_text
                self._control.publish(Transcript("user", user_text, True, generation))
                response.user_index = self._append(ChatMessage(role="user", content=user_text))
                llm = LlmReply(
                    self._ctx.providers.llm,
                    [ChatMessage(role="system", content=self._config.instructions), *self._history],
                    budget_ms=self._budgets.llm_first_token_ms,
                    turn_deadline=turn_deadline,
                    record=record,
                    observer=self._observer,
                    call_id=self._control.call_id,
                )
                if not await llm.start():
                    self._play_clip(generation, response, self._ctx.clips.apology, True)
                    record.outcome = "failed"
                    return
                text = None
            speaker = Speaker(
                self._tts_chain(),
                generation,
                self._control,
                response.ledger,
                budget_ms=self._budgets.tts_first_audio_ms,
                turn_deadline=turn_deadline,
                record=record,
                observer=self._observer,
                on_audio=lambda: self._audio_queued(generation),
            )
            await self._speak(speaker, llm, text, record, generation)
            if speaker.failed and not speaker.spoke:
                self._play_clip(generation, response, self._ctx.clips.apology, True)
                record.outcome = "failed"
                return
            record.outcome = "answered"
        except asyncio.CancelledError:
            if record.outcome == "pending":
                record.outcome = "cancelled"
            raise
        finally:
            filler.cancel()
            if speaker is not None and record.outcome in ("pending", "cancelled", "interrupted"):
                await _shielded(speaker.cancel())
            if llm is not None:
                await _shielded(llm.aclose())
            if response.cleared_at is not None:
                record.cancel_ms = round((time.monotonic() - response.cleared_at) * 1000, 1)
            self._finish(generation, response)

    async def _user_text(self, record: TurnRecord, turn_deadline: float) -> str | None:
        """The caller's words for this turn ("" if none; None if every STT failed)."""
        t0 = time.monotonic()
        utterances, self._pending = self._pending, []
        texts = [self._carry] if self._carry else []
        failed = False
        for utterance in utterances:
            text = await self._stt.final_text(
                utterance, self._budgets.stt_final_ms, turn_deadline, record
            )
            failed = failed or text is None
            texts.append(text or "")
        stt_ms = (time.monotonic() - t0) * 1000
        record.set_stage("stt_final", stt_ms)
        self._observer.observe_stage_ms("stt_final", stt_ms)
        self._carry = ""
        joined = " ".join(t.strip() for t in texts if t.strip())
        return None if failed and not joined else joined

    async def _speak(
        self,
        speaker: Speaker,
        llm: LlmReply | None,
        text: str | None,
        record: TurnRecord,
        generation: int,
    ) -> None:
        cutter = PhraseCutter()
        said: list[str] = []

        async def say(phrase: str) -> None:
            said.append(phrase)
            self._control.publish(Transcript("assistant", " ".join(said), False, generation))
            await speaker.say(phrase)

        if text is not None:
            for phrase in cutter.push(text):
                await say(phrase)
        elif llm is not None:
            async for piece in llm.pieces():
                phrases = cutter.push(piece)
                if phrases and record.first_phrase_ms is None and llm.started_at is not None:
                    record.first_phrase_ms = round((time.monotonic() - llm.started_at) * 1000, 1)
                for phrase in phrases:
                    await say(phrase)
        rest = cutter.flush()
        if rest and record.first_phrase_ms is None and llm is not None and llm.started_at:
            record.first_phrase_ms = round((time.monotonic() - llm.started_at) * 1000, 1)
        for phrase in rest:
            await say(phrase)
        await speaker.finish()

    def _tts_chain(self) -> list[tuple[str, TtsProvider]]:
        """The configured TTS chain, ending with the offline voice."""
        chain = list(self._ctx.providers.tts)
        offline = self._ctx.providers.offline_tts
        if all(provider is not offline for _, provider in chain):
            chain.append(("espeak", offline))
        return chain

    def _finish(self, generation: int, response: _Response) -> None:
        response.done = True
        record = response.record
        if record.outcome in {"answered", "failed"}:
            text = response.ledger.full_text()
            record.reply_text = text
            if text and response.assistant_index is None:
                response.assistant_index = self._append(ChatMessage(role="assistant", content=text))
            elif response.assistant_index is not None:
                self._set_message(response.assistant_index, text)
            if text:
                self._control.publish(Transcript("assistant", text, True, generation))
        if record.outcome not in ("cancelled", "interrupted") and not self._closed:
            self._control.finish(generation)
        if response.audio_sent or not response.audio_queued:
            self._log_turn(record)  # else once its first audio leaves, with turn_total

    def _log_turn(self, record: TurnRecord) -> None:
        log.info("call %s %s", self._control.call_id, record.describe())
        self._control.publish(
            TurnStages(
                generation=record.generation,
                kind=record.kind,
                outcome=record.outcome,
                stages_ms=dict(record.stages_ms),
                overhead_ms=record.overhead_ms,
                providers=dict(record.providers),
            )
        )

    def _audio_queued(self, generation: int) -> None:
        response = self._responses.get(generation)
        if response is None or response.audio_queued:
            return
        response.audio_queued = True
        self._control.response_started(generation)
        if response.assistant_index is None:
            response.assistant_index = self._append(ChatMessage(role="assistant", content=""))

    def _play_clip(
        self, generation: int, response: _Response, clip: Clip, in_history: bool
    ) -> None:
        if not clip.ulaw:
            return
        ledger = response.ledger
        ledger.begin(in_history=in_history)
        ledger.add_text(clip.text)
        ledger.add_audio(clip.ms)
        ledger.complete()
        self._control.play(clip.ulaw, generation)
        self._audio_queued(generation)

    def _filler_due(self, generation: int) -> None:
        response = self._responses.get(generation)
        if response is None or response.done or response.audio_queued or self._closed:
            return
        clip = self._ctx.clips.filler
        record = response.record
        record.violations.append("turn_total")
        self._observer.count_violation("turn_total")
        if not clip.ulaw:
            return
        record.fallbacks.append("turn:filler")
        self._observer.count_fallback("turn", "filler")
        response.ledger.insert_clip(clip.ms)
        self._control.play(clip.ulaw, generation)
        self._audio_queued(generation)

    # -- interruptions ------------------------------------------------------------------

    def _clear(self, generation: int, position_ms: int) -> None:
        response = self._responses.get(generation)
        if response is None:
            return
        if response.task is not None and not response.task.done():
            response.cleared_at = time.monotonic()
            response.task.cancel()
        record = response.record
        heard = response.ledger.heard_text(position_ms) if position_ms > 0 else ""
        record.heard_ms = position_ms
        record.reply_text = heard
        record.outcome = "interrupted" if position_ms > 0 else "cancelled"
        self._control.publish(Transcript("assistant", heard, True, generation))
        if response.assistant_index is not None:
            self._set_message(response.assistant_index, heard)
        if not heard and response.user_index is not None:
            # Nothing of the answer was heard: the caller's words carry into the next turn.
            self._carry = " ".join(
                t for t in (self._history[response.user_index].content, self._carry) if t
            )
            self._set_message(response.user_index, "")
        self._history = [m for m in self._history if m.content]
        for r in self._responses.values():
            r.user_index = r.assistant_index = None
        response.done = True

    # -- DTMF ---------------------------------------------------------------------------

    def _dtmf_due(self) -> None:
        self._dtmf_timer = None
        if not self._digits or self._closed:
            return
        keys = " ".join(self._digits)
        self._digits.clear()
        self._carry = " ".join(t for t in (self._carry, f"I pressed {keys}.") if t)
        self._bot_reason = "dtmf"
        if not self._control.request_turn():
            self._bot_reason = None  # the caller is talking: the keys join their turn

    # -- history ------------------------------------------------------------------------

    def _append(self, message: ChatMessage) -> int:
        self._history.append(message)
        excess = len(self._history) - self._config.max_history_messages
        if excess > 0:
            del self._history[:excess]
            for r in self._responses.values():
                r.user_index = _shift(r.user_index, excess)
                r.assistant_index = _shift(r.assistant_index, excess)
        return len(self._history) - 1

    def _set_message(self, index: int, content: str) -> None:
        if 0 <= index < len(self._history):
            old = self._history[index]
            self._history[index] = ChatMessage(role=old.role, content=content)


def _shift(index: int | None, by: int) -> int | None:
    if index is None or index - by < 0:
        return None
    return index - by


def _record_dict(record: TurnRecord) -> dict[str, object]:
    result: dict[str, object] = msgspec.to_builtins(record)
    return result


async def _shielded(work: Coroutine[object, object, None]) -> None:
    """Run ``work`` to the end even if the task running it is being cancelled."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.shield(work)


def _loop_time(monotonic_deadline: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
