"""The pipeline agent on a real Call, in real time, with scripted providers.

Each test drives a :class:`Call` one 20 ms frame per 20 ms (caller audio in,
a media-clock tick out) with in-process providers whose answers, latencies and
failures are scripted (:mod:`tests.fakes.scripted`), and checks what reached
the transport, the turn records and the conversation history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from server.agents.clips import Clip, Clips
from server.agents.pipeline import PipelineAgent, PipelineContext
from server.call import Call
from server.config import AgentSection, BudgetsSection
from server.providers.base import AuthError, ChatMessage, ProviderError
from server.providers.registry import Chains, ProviderSet, ProvidersSection
from server.transport import CallStarted, Dtmf, MarkPlayed
from tests import speech
from tests.fakes.scripted import (
    LlmScript,
    RecordingObserver,
    ScriptedLlm,
    ScriptedStt,
    ScriptedTts,
    SttScript,
    TtsScript,
)
from tests.test_call import RecordingTransport, wire

FILLER = Clip("One moment.", b"\x10" * 2400)  # 300 ms
APOLOGY = Clip("Sorry, something went wrong.", b"\x20" * 4000)  # 500 ms


class Harness:
    """A call with the pipeline agent and scripted providers, driven in real time."""

    def __init__(
        self,
        stt: list[tuple[str, SttScript]],
        llm: list[tuple[str, LlmScript]],
        tts: list[tuple[str, TtsScript]],
        *,
        budgets: BudgetsSection | None = None,
        **agent: Any,
    ) -> None:
        agent.setdefault("greeting", "")
        agent.setdefault("min_interruption_ms", 300)
        agent.setdefault("false_interruption_timeout_ms", 600)
        self.config = AgentSection(**agent)
        self.budgets = budgets or BudgetsSection()
        providers = ProviderSet(ProvidersSection(), Chains(("-",), ("-",), ("-",)))
        providers.stt = [(n, ScriptedStt(n, s)) for n, s in stt]
        providers.llm = [(n, ScriptedLlm(n, s)) for n, s in llm]
        providers.tts = [(n, ScriptedTts(n, s)) for n, s in tts]
        self.offline = TtsScript()
        providers.offline_tts = ScriptedTts("espeak", self.offline)  # type: ignore[assignment]
        self.observer = RecordingObserver()
        context = PipelineContext(
            providers=providers,
            agent=self.config,
            budgets=self.budgets,
            clips=Clips(filler=FILLER, apology=APOLOGY),
            observer=self.observer,
        )
        self.transport = RecordingTransport()
        self._seen = 0
        self.agent: PipelineAgent | None = None

        def factory(control: Any) -> PipelineAgent:
            self.agent = PipelineAgent(control, context)
            return self.agent

        self.call = Call(
            "CA1",
            self.transport,
            self.config,
            agent=factory,
            eou_budget_ms=self.budgets.eou_ms,
        )
        self.call.on_event(CallStarted("CA1", "MZ1", "pcmu", 8000))

    async def play(self, frames: list[bytes]) -> None:
        """Caller audio in real time; marks are echoed as played, as the carrier does."""
        for frame in frames:
            self.call.on_audio(frame)
            self.call.on_tick()
            for kind, name in self.transport.log[self._seen :]:
                if kind == "mark":
                    assert isinstance(name, str)
                    self.call.on_event(MarkPlayed(name, played=True))
            self._seen = len(self.transport.log)
            await asyncio.sleep(0.02)

    async def say(self, text: str) -> None:
        await self.play(wire(speech.speech(text, 8000)))

    async def quiet(self, ms: int) -> None:
        await self.play(wire(speech.silence(ms, 8000)))

    async def until(self, done: Callable[[], bool], limit_ms: int = 5000) -> None:
        """Silence until ``done()`` (or fail after ``limit_ms``)."""
        silence = wire(speech.silence(20, 8000))[0]
        for _ in range(limit_ms // 20):
            if done():
                return
            await self.play([silence])
        raise AssertionError("condition not reached")

    def summary(self) -> dict[str, Any]:
        return self.call.summary()

    def turns(self) -> list[dict[str, Any]]:
        turns = self.summary()["turns"]
        assert isinstance(turns, list)
        return turns

    def history(self) -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in self.summary()["history"]]

    def reply_done(self, index: int = -1) -> bool:
        turns = self.turns()
        return bool(turns) and turns[index]["outcome"] not in ("pending",)

    def played(self) -> bool:
        return self.call.turn.state.value == "listening" and self.call.stats.frames_out > 0

    async def close(self) -> None:
        self.call.end("test over")
        await asyncio.sleep(0.05)


def ok_llm(reply: str = "It is noon. Anything else?", **kw: Any) -> tuple[str, LlmScript]:
    return ("good", LlmScript(reply=reply, **kw))


async def test_a_turn_is_answered_and_recorded_stage_by_stage() -> None:
    h = Harness([("stt", SttScript(["what time is it"]))], [ok_llm()], [("tts", TtsScript())])
    await h.quiet(400)
    await h.say("what time is it")
    await h.until(h.played)
    [turn] = h.turns()
    assert turn["kind"] == "user" and turn["outcome"] == "answered"
    assert turn["user_text"] == "what time is it"
    assert turn["reply_text"] == "It is noon. Anything else?"
    assert set(turn["stages_ms"]) == {
        "eou",
        "stt_final",
        "llm_first_token",
        "tts_first_audio",
        "turn_total",
    }
    assert turn["overhead_ms"] is not None
    assert turn["providers"] == {"stt": "stt", "llm": "good", "tts": "tts"}
    assert turn["violations"] == [] and turn["fallbacks"] == []
    assert h.history() == [("user", "what time is it"), ("assistant", "It is noon. Anything else?")]
    # 5 words x 200 ms of tone reached the wire, and the end mark after it.
    assert h.call.stats.frames_out >= 5 * 200 // 20
    assert ("mark", "end-1") in h.transport.log
    await h.close()


async def test_greeting_opens_the_call_and_is_in_the_history() -> None:
    tts = TtsScript()
    h = Harness([("stt", SttScript(["hi"]))], [ok_llm()], [("tts", tts)], greeting="Hello there.")
    await h.until(h.played)
    assert tts.texts == ["Hello there. "]  # a whole phrase ends with a space
    assert h.turns()[0]["kind"] == "greeting"
    assert h.history() == [("assistant", "Hello there.")]
    await h.close()


async def test_stalled_llm_is_retried_then_the_next_provider_answers() -> None:
    slow = LlmScript(reply="too late", first_token_s=5.0)
    good = LlmScript(reply="Here I am.")
    budgets = BudgetsSection(llm_first_token_ms=150, turn_total_ms=5000)
    h = Harness(
        [("stt", SttScript(["hello"]))],
        [("slow", slow), ("good", good)],
        [("tts", TtsScript())],
        budgets=budgets,
    )
    await h.quiet(300)
    await h.say("hello")
    await h.until(h.played)
    [turn] = h.turns()
    assert turn["outcome"] == "answered" and turn["reply_text"] == "Here I am."
    assert turn["fallbacks"] == ["llm:retry", "llm:next:good"]
    assert turn["violations"] == ["llm_first_token"]
    assert len(slow.requests) == 2 and slow.closed == 2  # both attempts aborted
    assert h.observer.errors.count(("slow", "timeout")) == 2
    await h.close()


async def test_rejected_key_is_not_retried_and_every_failure_ends_in_the_apology(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = LlmScript(reply="", fail=AuthError("openai", "invalid api key", status=401))
    broken = LlmScript(reply="", fail=ProviderError("backup", "500 from upstream", status=500))
    h = Harness(
        [("stt", SttScript(["hello"]))],
        [("openai", refused), ("backup", broken)],
        [("tts", TtsScript())],
    )
    await h.quiet(300)
    await h.say("hello")
    await h.until(h.played)
    [turn] = h.turns()
    assert turn["outcome"] == "failed"
    assert turn["fallbacks"] == ["llm:next:backup", "llm:failed"]
    assert len(refused.requests) == 1  # an auth failure is not retried
    assert "check providers.openai.api_key" in caplog.text
    assert ("openai", "auth") in h.observer.errors
    assert h.history()[-1] == ("assistant", APOLOGY.text)
    assert APOLOGY.ulaw[:160] in h.transport.audio()
    await h.close()


async def test_tts_failure_moves_to_the_next_voice_with_the_same_text() -> None:
    failing = TtsScript(fail=ProviderError("cartesia", "socket closed"))
    backup = TtsScript()
    h = Harness(
        [("stt", SttScript(["hello"]))],
        [ok_llm("Fine, thanks.")],
        [("cartesia", failing), ("backup", backup)],
    )
    await h.quiet(300)
    await h.say("hello")
    await h.until(h.played)
    [turn] = h.turns()
    assert turn["outcome"] == "answered"
    assert turn["fallbacks"] == ["tts:retry", "tts:next:backup"]
    assert backup.texts == ["Fine, thanks. "]
    assert turn["providers"]["tts"] == "backup"
    assert h.history()[-1] == ("assistant", "Fine, thanks.")
    await h.close()


async def test_failed_stt_replays_the_utterance_to_the_next_provider() -> None:
    broken = SttScript(["never"], hear_after_ms=0, fail_on_flush=True)
    backup = SttScript(["book a table"], hear_after_ms=0)
    llm = LlmScript(reply="Booked.")
    h = Harness(
        [("deepgram", broken), ("sphinx", backup)],
        [("good", llm)],
        [("tts", TtsScript())],
    )
    await h.quiet(300)
    await h.say("book a table")
    await h.until(h.played)
    [turn] = h.turns()
    assert turn["user_text"] == "book a table"
    assert turn["providers"]["stt"] == "sphinx"
    assert "stt:next:sphinx" in turn["fallbacks"]
    # The backup heard the whole utterance again (at least its speech).
    assert len(backup.received) >= len(broken.received) // 2 > 0
    assert llm.requests[0][-1] == ChatMessage(role="user", content="book a table")
    await h.close()


async def test_silent_stt_within_budget_means_no_reply() -> None:
    h = Harness([("stt", SttScript([""], hear_after_ms=0))], [ok_llm()], [("tts", TtsScript())])
    await h.quiet(300)
    await h.say("mm")
    await h.until(h.reply_done)
    assert h.turns()[0]["outcome"] == "no_speech"
    await h.quiet(400)
    assert h.call.stats.frames_out == 0 and h.history() == []
    await h.close()


async def test_a_late_reply_is_preceded_by_the_filler() -> None:
    budgets = BudgetsSection(turn_total_ms=400, llm_first_token_ms=2000)
    h = Harness(
        [("stt", SttScript(["tell me a story"]))],
        [ok_llm("Once upon a time.", first_token_s=0.6)],
        [("tts", TtsScript())],
        budgets=budgets,
    )
    await h.quiet(300)
    await h.say("tell me a story")
    await h.until(h.played)
    [turn] = h.turns()
    assert "turn:filler" in turn["fallbacks"] and "turn_total" in turn["violations"]
    audio = h.transport.audio()
    assert audio.startswith(FILLER.ulaw[:160])  # the filler went out first
    assert h.history()[-1] == ("assistant", "Once upon a time.")  # not the filler
    await h.close()


async def test_barge_in_cancels_the_reply_and_keeps_only_what_was_heard() -> None:
    long_reply = " ".join(f"word{i}" for i in range(40)) + "."
    tts = TtsScript()
    llm = LlmScript(reply=long_reply)
    h = Harness(
        [("stt", SttScript(["first question", "stop please right now"]))],
        [("good", llm)],
        [("tts", tts)],
    )
    await h.quiet(300)
    await h.say("first question")
    await h.until(lambda: h.call.stats.frames_out > 60)  # 1.2 s of the reply played
    await h.say("stop please right now")
    await h.until(lambda: len(h.turns()) == 2 and h.reply_done(), limit_ms=8000)
    first = h.turns()[0]
    assert first["outcome"] == "interrupted"
    assert h.transport.kinds().count("clear") >= 1
    heard = first["reply_text"]
    assert heard and long_reply.startswith(heard) and heard != long_reply
    # The history keeps the heard words; the next request saw exactly that.
    assert llm.requests[1][-2] == ChatMessage(role="assistant", content=heard)
    assert first["yield_ms"] is not None
    await h.close()


async def test_a_backchannel_over_the_reply_does_not_interrupt_it() -> None:
    reply = " ".join(f"item{i}" for i in range(15)) + "."
    h = Harness(
        [("stt", SttScript(["list the items", "okay"], hear_after_ms=100))],
        [("good", LlmScript(reply=reply))],
        [("tts", TtsScript())],
        min_interruption_ms=600,
    )
    await h.quiet(300)
    await h.say("list the items")
    await h.until(lambda: h.call.stats.frames_out > 40)
    await h.say("okay")
    await h.until(h.played, limit_ms=8000)
    [turn] = h.turns()
    assert turn["outcome"] == "answered" and turn["reply_text"] == reply
    assert "clear" not in h.transport.kinds()
    assert h.call.turn.stats.backchannels_ignored == 1
    await h.close()


async def test_dtmf_keys_reach_the_llm_as_one_message() -> None:
    llm = LlmScript(reply="Got it.")
    h = Harness([("stt", SttScript(["x"]))], [("good", llm)], [("tts", TtsScript())])
    await h.quiet(200)
    for digit in "12#":
        h.call.on_event(Dtmf(digit))
    await h.until(h.played)
    assert llm.requests[0][-1] == ChatMessage(role="user", content="I pressed 1 2 #.")
    assert h.turns()[0]["kind"] == "dtmf"
    await h.close()


async def test_idle_caller_is_hung_up() -> None:
    h = Harness([("stt", SttScript(["x"]))], [ok_llm()], [("tts", TtsScript())], idle_hangup_s=0.5)
    await h.quiet(700)
    assert h.call.ended and h.call.end_reason == "idle"
    assert ("hangup", None) in h.transport.log
    await h.close()


@pytest.mark.parametrize("reason", ["closed"])
async def test_hangup_mid_reply_stops_every_task(reason: str) -> None:
    before = asyncio.all_tasks()
    tts = TtsScript(first_audio_s=0.3)
    h = Harness([("stt", SttScript(["hello"]))], [ok_llm()], [("tts", tts)])
    await h.quiet(300)
    await h.say("hello")
    await h.quiet(260)  # the turn ended; the TTS is still working
    h.call.end(reason)
    await asyncio.sleep(0.3)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert leftover == set(), leftover


async def test_unspeakable_and_huge_replies_are_skipped_or_split() -> None:
    tts = TtsScript()
    huge = " ".join(["blah"] * 400)  # no punctuation at all: 2000 characters
    llm = LlmScript(reply="*** ...")
    h = Harness([("stt", SttScript(["one", "two"]))], [("good", llm)], [("tts", tts)])
    await h.quiet(300)
    await h.say("one")
    await h.until(h.reply_done)
    assert h.turns()[0]["outcome"] == "answered" and tts.texts == []
    llm.reply = huge
    await h.quiet(300)
    await h.say("two")
    await h.until(lambda: len(h.turns()) == 2 and h.reply_done(), limit_ms=8000)
    assert len(tts.texts) >= 2000 // 250
    assert all(0 < len(t.strip()) <= 250 for t in tts.texts)
    assert "".join(tts.texts).strip() == huge
    await h.close()
