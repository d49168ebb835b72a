"""In-process providers with scripted answers, latencies and failures, for pipeline tests.

They implement the protocols of :mod:`server.providers.base` without sockets,
so a test controls exactly when each provider answers or fails.  The
protocol-level fakes (one loopback server per real provider) live beside this
module; these are for the agent's own logic: budgets, fallbacks, interruption.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from server.providers.base import (
    ChatMessage,
    ConnectionLostError,
    LlmDelta,
    ProviderError,
    SttEvent,
    SttEventKind,
    TtsChunk,
    Word,
)

_END = object()


# ----------------------------------------------------------------------- metrics


@dataclass
class RecordingObserver:
    """A StageObserver that keeps everything it is told, for assertions."""

    stages: list[tuple[str, float]] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def observe_stage_ms(self, stage: str, latency_ms: float) -> None:
        self.stages.append((stage, latency_ms))

    def observe_overhead_ms(self, latency_ms: float) -> None:
        self.overheads.append(latency_ms)

    def count_violation(self, stage: str) -> None:
        self.violations.append(stage)

    def count_fallback(self, stage: str, action: str) -> None:
        self.fallbacks.append((stage, action))

    def count_provider_error(self, provider: str, kind: str) -> None:
        self.errors.append((provider, kind))


# ---------------------------------------------------------------------------- STT


@dataclass
class SttScript:
    """What a scripted STT says: one text per utterance (the last one repeats)."""

    texts: list[str]
    hear_after_ms: int = 200
    """A FINAL of the utterance's text once this much audio arrived (0: only on flush)."""
    flush_delay_s: float = 0.0
    fail_on_flush: bool = False
    stall_on_flush: bool = False
    received: bytearray = field(default_factory=bytearray)
    flushes: int = 0
    streams: int = 0


class ScriptedSttStream:
    def __init__(self, name: str, script: SttScript) -> None:
        self._name = name
        self._script = script
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._ms = 0.0
        self._heard_this_turn = 0.0
        self._said = False
        self._turn = 0

    def _text(self) -> str:
        texts = self._script.texts
        return texts[min(self._turn, len(texts) - 1)]

    def push_audio(self, pcm: bytes) -> None:
        self._script.received += pcm
        self._ms += len(pcm) / 32
        self._heard_this_turn += len(pcm) / 32
        hear = self._script.hear_after_ms
        if hear and not self._said and self._heard_this_turn >= hear:
            self._said = True
            self._emit(SttEventKind.FINAL, self._text())

    def _emit(self, kind: SttEventKind, text: str) -> None:
        words = tuple(Word(w, self._ms - 100, self._ms) for w in text.split())
        event = SttEvent(kind, time.monotonic_ns(), text, words, None, self._ms)
        self._queue.put_nowait(event)

    async def flush(self) -> None:
        self._script.flushes += 1
        if self._script.fail_on_flush:
            self._queue.put_nowait(ConnectionLostError(self._name, "scripted failure"))
            return
        if self._script.stall_on_flush:
            return
        await asyncio.sleep(self._script.flush_delay_s)
        text = self._text()
        if not self._said and text:
            self._emit(SttEventKind.FINAL, text)
        self._emit(SttEventKind.END_OF_TURN, text)
        self._said = False
        self._heard_this_turn = 0.0
        self._turn += 1

    async def close(self) -> None:
        self._queue.put_nowait(_END)

    async def events(self) -> AsyncIterator[SttEvent]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, ProviderError):
                raise item
            assert isinstance(item, SttEvent)
            yield item


class ScriptedStt:
    def __init__(self, name: str, script: SttScript) -> None:
        self.name = name
        self.script = script

    async def open_stream(self, *, language: str | None = None) -> ScriptedSttStream:
        self.script.streams += 1
        return ScriptedSttStream(self.name, self.script)


# ---------------------------------------------------------------------------- LLM


@dataclass
class LlmScript:
    reply: str
    first_token_s: float = 0.0
    token_s: float = 0.0
    fail: ProviderError | None = None
    requests: list[list[ChatMessage]] = field(default_factory=list)
    closed: int = 0


class ScriptedLlm:
    def __init__(self, name: str, script: LlmScript) -> None:
        self.name = name
        self.script = script

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        script = self.script
        script.requests.append(list(messages))
        try:
            await asyncio.sleep(script.first_token_s)
            if script.fail is not None:
                raise script.fail
            for i, word in enumerate(script.reply.split(" ")):
                if i:
                    await asyncio.sleep(script.token_s)
                yield LlmDelta(time.monotonic_ns(), (" " if i else "") + word)
            yield LlmDelta(time.monotonic_ns(), "", "stop")
        finally:
            script.closed += 1


# ---------------------------------------------------------------------------- TTS

MS_PER_WORD = 200
"""Audio a scripted TTS makes per word."""


@dataclass
class TtsScript:
    first_audio_s: float = 0.0
    fail: ProviderError | None = None
    texts: list[str] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


class ScriptedTtsStream:
    """Audio: a 300 Hz tone, MS_PER_WORD per word, one chunk per phrase, words aligned."""

    def __init__(self, script: TtsScript, generation: int, rate_hz: int) -> None:
        self.generation = generation
        self.rate_hz = rate_hz
        self._script = script
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._ms = 0.0
        self._first = True
        self._cancelled = False
        self._work: list[asyncio.Task[None]] = []

    async def push_text(self, text: str) -> None:
        self._script.texts.append(text)
        after = self._work[-1] if self._work else None
        self._work.append(asyncio.get_running_loop().create_task(self._speak(text, after)))

    async def _speak(self, text: str, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await after
        if self._first:
            self._first = False
            await asyncio.sleep(self._script.first_audio_s)
            if self._script.fail is not None:
                self._queue.put_nowait(self._script.fail)
                return
        words: list[Word] = []
        n = int(self.rate_hz * MS_PER_WORD / 1000)
        for word in text.split():
            words.append(Word(word, self._ms, self._ms + MS_PER_WORD))
            self._ms += MS_PER_WORD
        t = np.arange(n * len(words)) / self.rate_hz
        pcm = (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2").tobytes()
        if not self._cancelled:
            self._queue.put_nowait(
                TtsChunk(self.generation, time.monotonic_ns(), pcm, tuple(words))
            )

    async def flush(self) -> None:
        before = list(self._work)

        async def done() -> None:
            if before:
                await asyncio.gather(*before)
            self._queue.put_nowait(TtsChunk(self.generation, time.monotonic_ns(), done=True))

        self._work.append(asyncio.get_running_loop().create_task(done()))

    async def cancel(self) -> None:
        self._cancelled = True
        self._script.cancelled.append(self.generation)
        for task in self._work:
            task.cancel()
        self._queue.put_nowait(_END)

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        while True:
            item = await self._queue.get()
            if item is _END or self._cancelled:
                return
            if isinstance(item, ProviderError):
                raise item
            assert isinstance(item, TtsChunk)
            yield item
            if item.done:
                return


class ScriptedTts:
    def __init__(self, name: str, script: TtsScript) -> None:
        self.name = name
        self.script = script

    async def open_stream(self, *, generation: int, rate_hz: int) -> ScriptedTtsStream:
        return ScriptedTtsStream(self.script, generation, rate_hz)

    async def prewarm(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
