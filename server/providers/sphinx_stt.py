"""Offline STT: pocketsphinx decoding 16 kHz PCM in worker threads.

The stream runs pocketsphinx's own endpointer (a WebRTC-style VAD) on every
20 ms frame.  When it hears speech the stream leases a decoder from the
provider's pool, feeds it the audio from a short pre-roll before the speech
start on, and reports:

* ``SPEECH_STARTED`` when the endpointer enters speech,
* ``INTERIM`` every ``interim_interval_ms`` of decoded audio while the
  hypothesis changes,
* ``FINAL`` then ``END_OF_TURN`` when the endpointer leaves speech (after
  ``endpoint_window_ms`` of mostly silence) or on :meth:`SphinxSttStream.flush`.

Every flush ends with exactly one ``END_OF_TURN`` covering all audio pushed
before it (empty text when nothing was recognised).  If the endpointer heard no
speech since the last utterance ended, the flush still decodes the audio pushed
since then (up to ``flush_lookback_ms`` of it): a short or quiet word such as
"yes" can end before the endpointer's window fills, and would otherwise be lost.

Word times come from the decoder's segmentation (10 ms frames) and are ms
since the stream's first pushed sample.

Decoding is CPU work (about 7x real time on one core) and pocketsphinx holds
the GIL while it decodes, so the worker feeds the decoder one 20 ms frame per
call and yields the GIL between frames, and the flat-lexicon second pass
(``second_pass``) is off by default: with it, ending an utterance holds the GIL
for tens of ms.  The event loop then waits a few ms at most (p99 ~11 ms while a
stream decodes 10x faster than real time).

One decoder costs about 90 MB (the language model's search structures
dominate; sharing the model object saves only ~20 MB and its score cache is
not thread-safe), so decoders are leased only while someone speaks and idle
ones are kept up to ``idle_decoders``.  Each stream keeps its own cepstral
mean across leases.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import msgspec
import pocketsphinx  # type: ignore[import-untyped]

from server.providers.base import (
    STT_RATE_HZ,
    ConnectionLostError,
    ProviderError,
    ProviderTimeoutError,
    SttEvent,
    SttEventKind,
    Word,
)

PROVIDER: Final = "sphinx"
FRAME_MS: Final = 20
FRAME_SAMPLES: Final = STT_RATE_HZ * FRAME_MS // 1000
FRAME_BYTES: Final = FRAME_SAMPLES * 2
DECODER_FRAME_SAMPLES: Final = STT_RATE_HZ // 100
"""Samples per pocketsphinx feature frame (100 frames per second)."""

_ALT_PRONUNCIATION = re.compile(r"\(\d+\)$")


class SphinxSttSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.sphinx]``: model paths (``None`` = the en-US model in the wheel) and tuning."""

    hmm_path: str | None = None
    """Acoustic model directory."""
    dict_path: str | None = None
    """Pronunciation dictionary."""
    lm_path: str | None = None
    """N-gram language model (ARPA or binary)."""
    language: str = "en-US"
    """Language of the model; streams asking for another language are refused."""
    vad_mode: int = 3
    """Endpointer VAD aggressiveness, 0 (loose) .. 3 (strict; best with line noise)."""
    endpoint_window_ms: int = 300
    """Window over which the endpointer decides speech/non-speech (a multiple of 20)."""
    endpoint_ratio: float = 0.9
    """Fraction of the window that must agree to switch state."""
    preroll_ms: int = 100
    """Audio before the detected speech start also fed to the decoder."""
    interim_interval_ms: int = 300
    """Decoded audio between two interim hypotheses."""
    flush_lookback_ms: int = 1000
    """On a flush with no speech heard since the last utterance, the recent audio
    decoded anyway (at most this much); 0 decodes none."""
    max_backlog_ms: int = 5000
    """Undecoded audio a stream may queue before it fails with ProviderTimeoutError."""
    second_pass: bool = False
    """pocketsphinx's flat-lexicon second pass at utterance end (fwdflat): a little more
    accurate, but it holds the GIL ~20 ms per second of speech, stalling the event loop."""
    threads: int = 2
    """Worker threads shared by all streams of the provider."""
    idle_decoders: int = 1
    """Loaded decoders kept for the next utterance (about 90 MB each)."""


def _check_settings(s: SphinxSttSettings) -> None:
    if not 0 <= s.vad_mode <= 3:
        raise ValueError(f"vad_mode must be 0..3, got {s.vad_mode}")
    if s.endpoint_window_ms < 60 or s.endpoint_window_ms % FRAME_MS:
        raise ValueError("endpoint_window_ms must be a multiple of 20 and >= 60")
    if not 0.0 < s.endpoint_ratio < 1.0:
        raise ValueError("endpoint_ratio must be in (0, 1)")
    if s.preroll_ms < 0 or s.interim_interval_ms <= 0 or s.max_backlog_ms < 100:
        raise ValueError("preroll_ms >= 0, interim_interval_ms > 0, max_backlog_ms >= 100")
    if s.flush_lookback_ms < 0:
        raise ValueError("flush_lookback_ms must be >= 0")
    if s.threads < 1 or s.idle_decoders < 0:
        raise ValueError("threads >= 1 and idle_decoders >= 0")


def _failure(message: str) -> ProviderError:
    error = ProviderError(PROVIDER, message)
    error.retryable = False
    return error


# ------------------------------------------------------------------- decoder pool


class DecoderPool:
    """Loaded pocketsphinx decoders, leased for one utterance at a time (thread-safe)."""

    def __init__(self, settings: SphinxSttSettings) -> None:
        self._kwargs: dict[str, Any] = {
            "samprate": STT_RATE_HZ,
            "loglevel": "FATAL",
            "fwdflat": settings.second_pass,
        }
        for key, path in (
            ("hmm", settings.hmm_path),
            ("dict", settings.dict_path),
            ("lm", settings.lm_path),
        ):
            if path is not None:
                self._kwargs[key] = path
        self._max_idle = settings.idle_decoders
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self.initial_cmn = ""
        self.created = 0

    def acquire(self) -> Any:
        """An idle decoder, or a new one (loading takes ~0.3 s; call off the loop)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            decoder = pocketsphinx.Decoder(**self._kwargs)
        except (RuntimeError, ValueError) as exc:
            raise _failure(f"cannot load the model: {exc}") from exc
        with self._lock:
            self.created += 1
            if not self.initial_cmn:
                self.initial_cmn = str(decoder.get_cmn(False))
        return decoder

    def release(self, decoder: Any) -> None:
        """Return a decoder with no open utterance; dropped beyond ``idle_decoders``."""
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(decoder)

    def fill(self) -> None:
        """Load decoders until ``idle_decoders`` are idle (call off the loop)."""
        while True:
            with self._lock:
                if len(self._idle) >= self._max_idle:
                    return
            self.release(self.acquire())

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()

    @property
    def n_idle(self) -> int:
        with self._lock:
            return len(self._idle)


# --------------------------------------------------------------------- recognizer


def _clean_word(word: str) -> str | None:
    """The spoken word of a segment, or None for silence and filler tokens."""
    if not word or word[0] in "<[" or word.startswith("++"):
        return None
    return _ALT_PRONUNCIATION.sub("", word)


class Recognizer:
    """One stream's endpointer and decoder lease; synchronous, one worker at a time.

    ``feed`` takes whole 20 ms frames and returns the events they caused.
    """

    def __init__(self, pool: DecoderPool, settings: SphinxSttSettings) -> None:
        self._pool = pool
        self._settings = settings
        try:
            self._endpointer = pocketsphinx.Endpointer(
                window=settings.endpoint_window_ms / 1000,
                ratio=settings.endpoint_ratio,
                vad_mode=settings.vad_mode,
                sample_rate=STT_RATE_HZ,
                frame_length=FRAME_MS / 1000,
            )
        except ValueError as exc:
            raise _failure(f"bad endpointer settings: {exc}") from exc
        self._lock = threading.Lock()
        # Recent audio for the pre-roll (the endpointer decides up to a window late)
        # and for a flush that decodes what the endpointer did not hear as speech.
        self._history = bytearray()
        self._history_start = 0  # sample index of _history[0]
        self._lookback_samples = settings.flush_lookback_ms * STT_RATE_HZ // 1000
        self._history_max_samples = max(
            (settings.endpoint_window_ms + settings.preroll_ms + 200) * STT_RATE_HZ // 1000,
            self._lookback_samples,
        )
        self._n_samples = 0  # samples consumed so far
        self._last_utt_end = 0
        self._decoder: Any = None
        self._cmn = ""
        self._origin = 0  # sample index of the first sample the decoder got
        self._announced = False
        self._since_interim = 0
        self._last_interim = ""
        self._closed = False

    # The public methods take the lock, so a late job and close never overlap, and
    # turn any failure of pocketsphinx into a ProviderError.

    def feed(self, pcm: bytes) -> list[SttEvent]:
        """Run whole 20 ms frames through the endpointer and decoder."""
        return self._locked(lambda events: self._feed(pcm, events))

    def finalize(self) -> list[SttEvent]:
        """Flush: end the open utterance now, or decode the audio since the last one if
        the endpointer heard no speech in it; always ends with one END_OF_TURN."""
        return self._locked(self._finalize)

    def close(self) -> list[SttEvent]:
        """Finalize and give the decoder back; later calls do nothing."""
        return self._locked(self._close)

    def _locked(self, step: Callable[[list[SttEvent]], None]) -> list[SttEvent]:
        events: list[SttEvent] = []
        with self._lock:
            if self._closed:
                return events
            try:
                step(events)
            except ProviderError:
                raise
            except Exception as exc:
                raise _failure(f"{type(exc).__name__}: {exc}") from exc
        return events

    def _feed(self, pcm: bytes, events: list[SttEvent]) -> None:
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self._frame(pcm[i : i + FRAME_BYTES], events)
            time.sleep(0)  # let the event loop take the GIL between frames

    def _finalize(self, events: list[SttEvent]) -> None:
        if self._decoder is None:
            start = max(
                self._last_utt_end, self._history_start, self._n_samples - self._lookback_samples
            )
            if start < self._n_samples:
                self._start_utterance(start, announce=False, events=events)
        if self._decoder is not None:
            self._end_utterance(events)
        if not events or events[-1].kind is not SttEventKind.END_OF_TURN:
            events.append(
                SttEvent(
                    kind=SttEventKind.END_OF_TURN,
                    received_ns=time.monotonic_ns(),
                    audio_end_ms=self._n_samples * 1000 / STT_RATE_HZ,
                )
            )

    def _close(self, events: list[SttEvent]) -> None:
        self._closed = True
        if self._decoder is not None:
            self._end_utterance(events)

    def discard(self) -> None:
        """Drop the open utterance unreported and give the decoder back."""
        with self._lock:
            self._closed = True
            if self._decoder is not None:
                decoder, self._decoder = self._decoder, None
                try:
                    decoder.end_utt()
                except RuntimeError:
                    return  # a broken decoder is not reused
                self._pool.release(decoder)

    # -- per frame

    def _frame(self, frame: bytes, events: list[SttEvent]) -> None:
        was_in_speech = bool(self._endpointer.in_speech)
        try:
            self._endpointer.process(frame)
        except (IndexError, ValueError) as exc:
            raise _failure(f"endpointer failed: {exc}") from exc
        frame_start = self._n_samples
        self._n_samples += FRAME_SAMPLES
        self._remember(frame)
        in_speech = bool(self._endpointer.in_speech)
        if self._decoder is None:
            if in_speech:
                fresh = not was_in_speech
                start = frame_start
                if fresh:
                    speech_start = round(float(self._endpointer.speech_start) * STT_RATE_HZ)
                    start = max(
                        speech_start - self._settings.preroll_ms * STT_RATE_HZ // 1000,
                        self._history_start,
                        self._last_utt_end,
                    )
                self._start_utterance(start, announce=fresh, events=events)
            return
        self._process(frame)
        if not in_speech:
            self._end_utterance(events)
        elif self._since_interim >= self._settings.interim_interval_ms * STT_RATE_HZ // 1000:
            self._interim(events)

    def _remember(self, frame: bytes) -> None:
        self._history += frame
        excess = len(self._history) // 2 - self._history_max_samples
        if excess > 0:
            del self._history[: excess * 2]
            self._history_start += excess

    def _start_utterance(self, start: int, *, announce: bool, events: list[SttEvent]) -> None:
        decoder = self._pool.acquire()
        try:
            decoder.set_cmn(self._cmn or self._pool.initial_cmn)
            decoder.start_utt()
        except RuntimeError as exc:
            raise _failure(f"decoder failed to start: {exc}") from exc
        self._decoder = decoder
        self._origin = start
        self._since_interim = 0
        self._last_interim = ""
        self._announced = False
        if announce:
            self._announce(events, self._origin * 1000 / STT_RATE_HZ)
        offset = (start - self._history_start) * 2
        backlog = bytes(self._history[offset:])
        for i in range(0, len(backlog), FRAME_BYTES):
            self._process(backlog[i : i + FRAME_BYTES])
            time.sleep(0)  # let the event loop take the GIL between frames

    def _announce(self, events: list[SttEvent], at_ms: float) -> None:
        """SPEECH_STARTED; ``at_ms`` is where the speech began (ms of stream time)."""
        self._announced = True
        events.append(
            SttEvent(
                kind=SttEventKind.SPEECH_STARTED,
                received_ns=time.monotonic_ns(),
                audio_end_ms=at_ms,
            )
        )

    def _process(self, pcm: bytes) -> None:
        try:
            self._decoder.process_raw(pcm, False, False)
        except RuntimeError as exc:
            raise _failure(f"decoder failed: {exc}") from exc
        self._since_interim += len(pcm) // 2

    def _interim(self, events: list[SttEvent]) -> None:
        self._since_interim = 0
        hyp = self._decoder.hyp()
        text = " ".join(
            w for w in (_clean_word(t) for t in (hyp.hypstr.split() if hyp else ())) if w
        )
        if not text or text == self._last_interim:
            return
        self._last_interim = text
        if not self._announced:
            self._announce(events, self._origin * 1000 / STT_RATE_HZ)
        events.append(
            SttEvent(
                kind=SttEventKind.INTERIM,
                received_ns=time.monotonic_ns(),
                text=text,
                audio_end_ms=self._n_samples * 1000 / STT_RATE_HZ,
            )
        )

    def _end_utterance(self, events: list[SttEvent]) -> None:
        decoder, self._decoder = self._decoder, None
        try:
            decoder.end_utt()
            words = self._words(decoder)
            self._cmn = str(decoder.get_cmn(False))
        except RuntimeError as exc:
            raise _failure(f"decoder failed to finish: {exc}") from exc
        self._pool.release(decoder)
        self._last_utt_end = self._n_samples
        text = " ".join(w.text for w in words)
        if not self._announced:
            if not text:
                return  # a continuation after flush, or flushed audio, that held nothing
            self._announce(events, words[0].start_ms)
        scores = [w.confidence for w in words if w.confidence is not None]
        now_ns = time.monotonic_ns()
        end_ms = self._n_samples * 1000 / STT_RATE_HZ
        events.append(
            SttEvent(
                kind=SttEventKind.FINAL,
                received_ns=now_ns,
                text=text,
                words=tuple(words),
                confidence=sum(scores) / len(scores) if scores else None,
                audio_end_ms=end_ms,
            )
        )
        events.append(
            SttEvent(
                kind=SttEventKind.END_OF_TURN, received_ns=now_ns, text=text, audio_end_ms=end_ms
            )
        )

    def _words(self, decoder: Any) -> list[Word]:
        words: list[Word] = []
        for segment in decoder.seg() or ():
            text = _clean_word(str(segment.word))
            if text is None:
                continue
            start = self._origin + int(segment.start_frame) * DECODER_FRAME_SAMPLES
            end = self._origin + (int(segment.end_frame) + 1) * DECODER_FRAME_SAMPLES
            prob = float(segment.prob)
            words.append(
                Word(
                    text=text,
                    start_ms=start * 1000 / STT_RATE_HZ,
                    end_ms=end * 1000 / STT_RATE_HZ,
                    confidence=min(max(prob, 0.0), 1.0),
                )
            )
        return words


# ------------------------------------------------------------------------- stream


class _End:
    """Marks the end of the event queue."""


_END: Final = _End()


class SphinxSttStream:
    """One pocketsphinx stream; see :mod:`server.providers.sphinx_stt` for the events."""

    def __init__(
        self,
        recognizer: Recognizer,
        executor: ThreadPoolExecutor,
        *,
        max_backlog_ms: int,
    ) -> None:
        self._recognizer = recognizer
        self._executor = executor
        self._max_backlog_bytes = max_backlog_ms * STT_RATE_HZ // 1000 * 2
        # Audio to decode and flushes to answer, in the order they came.
        self._work: collections.deque[bytearray | asyncio.Future[None]] = collections.deque()
        self._pending_bytes = 0
        self._closing = False
        self._error: ProviderError | None = None
        self._queue: asyncio.Queue[SttEvent | ProviderError | _End] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._pump = asyncio.get_running_loop().create_task(self._run(), name="sphinx-stt-pump")

    def push_audio(self, pcm: bytes) -> None:
        """Queue 16 kHz PCM in whole 20 ms frames (640 bytes); never blocks."""
        if len(pcm) % FRAME_BYTES:
            raise ValueError(f"push_audio takes whole 20 ms frames ({FRAME_BYTES} bytes each)")
        if self._closing or self._error is not None:
            return
        if self._work and isinstance(self._work[-1], bytearray):
            self._work[-1] += pcm
        else:
            self._work.append(bytearray(pcm))
        self._pending_bytes += len(pcm)
        if self._pending_bytes > self._max_backlog_bytes:
            behind_ms = self._pending_bytes // 2 * 1000 // STT_RATE_HZ
            self._fail(ProviderTimeoutError(PROVIDER, f"decoder fell {behind_ms} ms behind"))
            return
        self._wake.set()

    async def flush(self) -> None:
        """Decode everything pushed so far and end the turn; returns once its events are
        queued.  Exactly one END_OF_TURN answers each flush (see the module doc)."""
        if self._error is not None:
            raise self._error
        if self._closing or self._pump.done():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._work.append(waiter)
        self._wake.set()
        await waiter

    async def close(self) -> None:
        """Decode what is queued, finalize the open utterance, end :meth:`events`."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.shield(self._pump)
        except asyncio.CancelledError:
            self._pump.cancel()
            raise
        except ProviderError:
            pass  # already delivered through events()

    async def events(self) -> AsyncIterator[SttEvent]:
        """Events in order; ends after :meth:`close`, raises the stream's ProviderError."""
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                self._queue.put_nowait(item)  # later iterators end too
                return
            if isinstance(item, ProviderError):
                self._queue.put_nowait(item)
                raise item
            yield item

    # -- pump task

    def _fail(self, error: ProviderError) -> None:
        if self._error is None:
            self._error = error
            self._queue.put_nowait(error)
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        recognizer = self._recognizer
        closed_cleanly = False
        try:
            while not self._failed():
                await self._wake.wait()
                self._wake.clear()
                while self._work and not self._failed():
                    item = self._work[0]
                    if isinstance(item, bytearray):
                        self._work.popleft()
                        self._pending_bytes -= len(item)
                        pcm = bytes(item)
                        self._deliver(
                            await loop.run_in_executor(self._executor, recognizer.feed, pcm)
                        )
                        continue
                    self._deliver(await loop.run_in_executor(self._executor, recognizer.finalize))
                    self._work.popleft()
                    if not item.done():
                        item.set_result(None)
                if self._failed():
                    break
                if self._closing and not self._work:
                    self._deliver(await loop.run_in_executor(self._executor, recognizer.close))
                    closed_cleanly = True
                    self._queue.put_nowait(_END)
                    return
        except ProviderError as exc:
            self._fail(exc)
        except RuntimeError as exc:  # executor shut down under us
            self._fail(ConnectionLostError(PROVIDER, f"worker stopped: {exc}"))
        finally:
            if not closed_cleanly:
                # Give the decoder back even when this task was cancelled mid-job:
                # discard takes the recognizer's lock, so it runs after that job.
                try:
                    self._executor.submit(recognizer.discard)
                except RuntimeError:
                    recognizer.discard()
            for waiter in self._work:
                if isinstance(waiter, asyncio.Future) and not waiter.done():
                    if self._error is not None:
                        waiter.set_exception(self._error)
                    else:
                        waiter.cancel()
            self._work.clear()
            if not closed_cleanly and self._error is None:
                self._queue.put_nowait(_END)  # cancelled: end readers rather than strand them

    def _failed(self) -> bool:
        return self._error is not None

    def _deliver(self, events: list[SttEvent]) -> None:
        if self._error is not None:
            return
        for event in events:
            self._queue.put_nowait(event)


# ----------------------------------------------------------------------- provider


class SphinxStt:
    """The offline STT provider: one thread pool and decoder pool for all its streams."""

    name = PROVIDER

    def __init__(self, settings: SphinxSttSettings | None = None) -> None:
        self.settings = settings or SphinxSttSettings()
        _check_settings(self.settings)
        self.pool = DecoderPool(self.settings)
        self._executor = ThreadPoolExecutor(
            max_workers=self.settings.threads, thread_name_prefix="sphinx-stt"
        )

    async def open_stream(self, *, language: str | None = None) -> SphinxSttStream:
        """A stream taking 16 kHz PCM; refuses languages other than the model's."""
        if language is not None and not _same_language(language, self.settings.language):
            raise _failure(f"language {language!r} not available (model: {self.settings.language})")
        loop = asyncio.get_running_loop()
        try:  # so the first utterance does not wait for a model load
            await loop.run_in_executor(self._executor, self.pool.fill)
        except RuntimeError as exc:
            raise ConnectionLostError(PROVIDER, f"provider closed: {exc}") from exc
        recognizer = Recognizer(self.pool, self.settings)
        return SphinxSttStream(
            recognizer, self._executor, max_backlog_ms=self.settings.max_backlog_ms
        )

    async def prewarm(self) -> None:
        """Load ``idle_decoders`` decoders now rather than at the first utterance."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.pool.fill)

    async def aclose(self) -> None:
        """Stop the worker threads (after their current job) and drop idle decoders."""
        await asyncio.to_thread(self._executor.shutdown, True)
        self.pool.clear()


def _same_language(asked: str, model: str) -> bool:
    """``en``, ``en-us`` and ``en_US`` all match an ``en-US`` model."""
    a = asked.replace("_", "-").lower()
    m = model.replace("_", "-").lower()
    return a == m or a == m.split("-")[0]
