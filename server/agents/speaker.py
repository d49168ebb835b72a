"""The TTS stage of one bot utterance: phrases in, wire audio into the call's playout.

A :class:`Speaker` speaks one generation.  Phrases go to the current provider's
stream as they come; its audio is encoded for the wire, recorded in the
utterance's :class:`server.agents.spoken.SpokenLedger` and queued with
:meth:`CallControl.play`.  When a stream gives no audio within
``budget_ms`` of its first text, or fails, the speaker moves on: the same
provider once more (a retryable failure, while a whole budget fits before the
turn's deadline), then the next providers, ending with the offline voice.
Phrases that had produced no audio yet are sent again; a stream that fails
after some audio loses the phrases in flight (logged).

:meth:`cancel` stops everything at once: the stream is cancelled (the TTS
drops its late chunks itself) and nothing more is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from server.agents.base import CallControl
from server.agents.replyaudio import WIRE_RATE_HZ, WireEncoder, wire_ms
from server.agents.spoken import SpokenLedger
from server.agents.sttsession import error_kind, explain
from server.agents.turnlog import StageObserver, TurnRecord
from server.providers.base import ProviderError, TtsProvider, TtsStream, Word

log = logging.getLogger(__name__)

MAX_UTTERANCE_S = 120.0
"""Longest wait for one generation's audio to finish after its last phrase."""


class Speaker:
    """Speaks one generation through the TTS chain (see the module docstring)."""

    def __init__(
        self,
        chain: list[tuple[str, TtsProvider]],
        generation: int,
        control: CallControl,
        ledger: SpokenLedger,
        *,
        budget_ms: float,
        turn_deadline: float,
        record: TurnRecord,
        observer: StageObserver,
        on_audio: Callable[[], None] = lambda: None,
    ) -> None:
        self._chain = chain
        self.generation = generation
        self._control = control
        self._ledger = ledger
        self._budget_s = budget_ms / 1000
        self._turn_deadline = turn_deadline
        self._record = record
        self._observer = observer
        self._on_audio = on_audio
        self._attempts = [0, 0, *range(1, len(chain))]  # the first provider gets one retry
        self._retry_ok = True
        self._name = ""
        self._stream: TtsStream | None = None
        self._encoder = WireEncoder(WIRE_RATE_HZ)
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._unvoiced: list[str] = []  # phrases of this stream with no audio yet
        self._first_push: float | None = None  # first text sent to the current stream
        self._stage_t0: float | None = None  # first text sent to any stream
        self._got_audio = False
        self._any_audio = False
        self._stage_done = False
        self._over_budget = False
        self._flushed = False
        self._settled = asyncio.Event()
        self._cancelled = False
        self._began = False  # the ledger segment of this speaker is open
        self._switching: asyncio.Task[None] | None = None
        self._retiring: asyncio.Task[None] | None = None  # a failed stream being cancelled
        self.failed = False
        """Every provider failed; nothing more will be spoken."""

    @property
    def spoke(self) -> bool:
        """Whether any audio was queued."""
        return self._any_audio

    async def say(self, phrase: str) -> None:
        """Speak ``phrase`` after what was said before."""
        if self._cancelled or self.failed:
            return
        if self._switching is not None:
            await self._switching
        if self._stream is None and not await self._open_next():
            return
        if not self._began:
            self._began = True
            self._ledger.begin()
        self._ledger.add_text(phrase)
        self._unvoiced.append(phrase)
        await self._push(phrase)

    async def finish(self) -> None:
        """No more phrases: wait until the last audio is queued (or everything failed)."""
        self._flushed = True
        while not self._cancelled and not self.failed:
            if self._switching is not None:
                await self._switching
            stream = self._stream
            if stream is None:
                break
            self._settled.clear()
            try:
                await stream.flush()
            except ProviderError as exc:
                self._on_failure(stream, exc)
                continue
            try:
                async with asyncio.timeout(MAX_UTTERANCE_S):
                    await self._settled.wait()
            except TimeoutError:
                self._on_failure(stream, None)
                continue
            if self._stream is stream:
                break
        self._stop_watchdog()
        self._ledger.complete()

    async def cancel(self) -> None:
        """Stop at once: cancel the stream; nothing more is queued (idempotent)."""
        if self._cancelled:
            return
        self._cancelled = True
        self._stop_watchdog()
        if self._switching is not None:
            self._switching.cancel()
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(ProviderError):
                await stream.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    # -- streams

    async def _open_next(self) -> bool:
        """Open the next provider of the chain; False when none is left."""
        while self._attempts:
            index = self._attempts.pop(0)
            retry = bool(self._name) and self._chain[index][0] == self._name
            if retry and not self._retry_ok:
                continue
            name, provider = self._chain[index]
            if self._name:
                if time.monotonic() + self._budget_s > self._turn_deadline and self._attempts:
                    continue  # no time for this one: skip to the next, the last one always runs
                self._fallback("retry" if retry else f"next:{name}")
            self._name = name
            try:
                async with asyncio.timeout(self._budget_s):
                    stream = await provider.open_stream(
                        generation=self.generation, rate_hz=WIRE_RATE_HZ
                    )
            except (ProviderError, TimeoutError) as exc:
                kind = error_kind(exc) if isinstance(exc, ProviderError) else "timeout"
                self._retry_ok = isinstance(exc, TimeoutError) or exc.retryable
                self._observer.count_provider_error(name, kind)
                log.warning(
                    "call %s: TTS %s could not start: %s", self._cid, name, explain(name, exc)
                )
                continue
            if self._cancelled:
                with contextlib.suppress(ProviderError):
                    await stream.cancel()
                return False
            self._stream = stream
            self._encoder = WireEncoder(WIRE_RATE_HZ)
            self._got_audio = False
            self._first_push = None
            self._reader = asyncio.get_running_loop().create_task(self._read(stream))
            return True
        self.failed = True
        self._fallback("failed")
        self._settled.set()
        log.error(
            "call %s: every TTS provider failed; generation %d stops", self._cid, self.generation
        )
        return False

    async def _push(self, phrase: str) -> None:
        stream = self._stream
        if stream is None:
            return
        if self._first_push is None:
            self._first_push = time.monotonic()
            if self._stage_t0 is None:
                self._stage_t0 = self._first_push
            self._arm_watchdog(stream)
        try:
            # The trailing space tells streaming TTSs that buffer to a word or
            # sentence boundary (Cartesia, ElevenLabs, espeak) that the phrase is whole.
            await stream.push_text(phrase + " ")
        except ProviderError as exc:
            self._on_failure(stream, exc)

    async def _read(self, stream: TtsStream) -> None:
        try:
            async for chunk in stream.chunks():
                if self._stream is not stream:
                    return
                if chunk.pcm:
                    self._deliver(self._encoder.encode(chunk.pcm), chunk.words)
                if chunk.done:
                    self._deliver(self._encoder.finish(), ())
                    self._settled.set()
                    return
        except ProviderError as exc:
            self._on_failure(stream, exc)
            return
        if self._stream is stream and not self._cancelled:
            self._on_failure(stream, None)  # ended without its done chunk

    def _deliver(self, ulaw: bytes, words: tuple[Word, ...]) -> None:
        if not ulaw or self._cancelled:
            return
        if not self._got_audio:
            self._got_audio = True
            self._stop_watchdog()
            if not self._stage_done and self._stage_t0 is not None:
                self._stage_done = True
                latency_ms = (time.monotonic() - self._stage_t0) * 1000
                self._record.set_stage("tts_first_audio", latency_ms)
                self._observer.observe_stage_ms("tts_first_audio", latency_ms)
                self._record.providers["tts"] = self._name
        self._unvoiced.clear()
        self._ledger.add_audio(wire_ms(ulaw), words)
        self._any_audio = True
        self._control.play(ulaw, self.generation)
        self._on_audio()

    # -- failures

    def _arm_watchdog(self, stream: TtsStream) -> None:
        self._stop_watchdog()
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._budget_s, self._first_audio_late, stream)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _first_audio_late(self, stream: TtsStream) -> None:
        self._watchdog = None
        if self._stream is not stream or self._got_audio:
            return
        if not self._over_budget:
            self._over_budget = True
            self._record.violations.append("tts_first_audio")
            self._observer.count_violation("tts_first_audio")
        log.warning(
            "call %s: TTS %s gave no audio within %.0f ms",
            self._cid,
            self._name,
            self._budget_s * 1000,
        )
        self._observer.count_provider_error(self._name, "timeout")
        self._on_failure(stream, None, counted=True)

    def _on_failure(
        self, stream: TtsStream, error: ProviderError | None, *, counted: bool = False
    ) -> None:
        if self._stream is not stream or self._cancelled:
            return
        if error is not None:
            self._retry_ok = error.retryable
            if not counted:
                self._observer.count_provider_error(self._name, error_kind(error))
            log.warning(
                "call %s: TTS %s failed: %s", self._cid, self._name, explain(self._name, error)
            )
        elif not counted:
            self._observer.count_provider_error(self._name, "closed")
            log.warning("call %s: TTS %s ended its stream early", self._cid, self._name)
        self._stream = None
        self._stop_watchdog()
        loop = asyncio.get_running_loop()
        self._retiring = loop.create_task(_cancel_quietly(stream))
        resend = list(self._unvoiced) if not self._got_audio else []
        if self._got_audio and self._unvoiced:
            log.warning(
                "call %s: %d phrase(s) in flight on %s are lost",
                self._cid,
                len(self._unvoiced),
                self._name,
            )
        self._unvoiced = []
        self._switching = loop.create_task(self._switch(resend))

    async def _switch(self, resend: list[str]) -> None:
        try:
            if self._got_audio:
                self._ledger.begin()
            if not await self._open_next():
                return
            for phrase in resend:
                self._unvoiced.append(phrase)
                await self._push(phrase)
        finally:
            self._switching = None
            self._settled.set()

    def _fallback(self, action: str) -> None:
        self._record.fallbacks.append(f"tts:{action}")
        self._observer.count_fallback("tts", action.partition(":")[0])

    @property
    def _cid(self) -> str:
        return self._control.call_id


async def _cancel_quietly(stream: TtsStream) -> None:
    with contextlib.suppress(ProviderError):
        await stream.cancel()
