"""What the conversation layer needs from STT, LLM, TTS and speech-to-speech providers.

Each kind of provider is a small async protocol.  A stream is an object with
explicit push/flush/cancel methods and an async iterator of typed events.

Contracts shared by every provider:

* Audio crosses these interfaces as mono signed 16-bit little-endian PCM
  (``pcm``) at a stated ``rate_hz``.  STT input is always 16000 Hz in whole
  20 ms frames (640 bytes), the engine's VAD-side format.
* ``push_audio`` is synchronous and never blocks: it appends to the stream's
  send buffer and a task of the stream sends it (in the provider's preferred
  chunk size).  Everything that talks to the provider is ``async``.
* Every event carries ``received_ns``: :func:`time.monotonic_ns` when its bytes
  were read from the socket.  Latency metrics and budgets are computed outside
  the providers from these stamps.
* Provider times (word timings, ``audio_end_ms``) are ms of audio since the
  stream's first pushed sample.
* Generations are the engine's integer generation ids (one per bot
  utterance); a TTS or speech-to-speech stream drops audio of a cancelled
  generation itself, even when the provider keeps sending it.
* Failures raise :class:`ProviderError` subclasses from the ``async`` methods
  and from the event iterators; ``retryable`` says whether trying again (or the
  next provider) can help.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol

import msgspec

STT_RATE_HZ = 16000
"""Sample rate of the PCM pushed to every STT stream."""


# ------------------------------------------------------------------------- errors


class ProviderError(Exception):
    """A provider failed; ``retryable`` if a retry or the next provider may succeed."""

    retryable = True

    def __init__(self, provider: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status


class AuthError(ProviderError):
    """Credentials refused (HTTP 401/403, or the provider's auth close code)."""

    retryable = False


class RateLimitedError(ProviderError):
    """HTTP 429 or a rate-limit error frame; ``retry_after_s`` when the provider said."""

    def __init__(
        self, provider: str, message: str, *, status: int | None = 429, retry_after_s: float | None
    ) -> None:
        super().__init__(provider, message, status=status)
        self.retry_after_s = retry_after_s


class ProviderProtocolError(ProviderError):
    """The provider sent something its protocol does not allow (malformed frame, bad order)."""


class ConnectionLostError(ProviderError):
    """The connection closed or stalled before the stream was done."""


class ProviderTimeoutError(ProviderError):
    """No answer within the client's own deadline."""


# -------------------------------------------------------------------------- words


class Word(msgspec.Struct, frozen=True, gc=False):
    """One word and where it is in the audio (ms since the stream's first sample)."""

    text: str
    start_ms: float
    end_ms: float
    confidence: float | None = None


# ---------------------------------------------------------------------------- STT


class SttEventKind(enum.Enum):
    SPEECH_STARTED = "speech_started"
    """The provider heard speech begin (Deepgram SpeechStarted, AssemblyAI SpeechStarted)."""
    INTERIM = "interim"
    """A transcript of the current segment that may still change."""
    FINAL = "final"
    """A segment whose text will not change (Deepgram is_final, AssemblyAI final words)."""
    END_OF_TURN = "end_of_turn"
    """The provider thinks the speaker finished (speech_final/UtteranceEnd, end_of_turn)."""


class SttEvent(msgspec.Struct, frozen=True, gc=False):
    """One transcript event; ``text`` is the segment's (or the turn's) text so far."""

    kind: SttEventKind
    received_ns: int
    text: str = ""
    words: tuple[Word, ...] = ()
    confidence: float | None = None
    audio_end_ms: float | None = None


class SttStream(Protocol):
    """One utterance-spanning STT session (usually one per call)."""

    def push_audio(self, pcm: bytes) -> None:
        """Queue 16 kHz PCM (whole 20 ms frames); never blocks."""
        ...

    async def flush(self) -> None:
        """Ask for finals of everything sent so far now (Finalize, ForceEndpoint).

        Once the provider has answered, the stream emits exactly one END_OF_TURN
        whose text is the turn's final text (empty when nothing was recognised)
        and whose ``audio_end_ms`` covers all audio pushed before the flush; a
        flush still pending when the stream closes cleanly is answered before
        :meth:`events` ends.
        """
        ...

    async def close(self) -> None:
        """Send the end-of-stream message, let the last events arrive, then close."""
        ...

    def events(self) -> AsyncIterator[SttEvent]:
        """Events in arrival order; ends after :meth:`close` or raises ProviderError."""
        ...


class SttProvider(Protocol):
    name: str

    async def open_stream(self, *, language: str | None = None) -> SttStream:
        """Connect and start a stream taking 16 kHz PCM; raises ProviderError."""
        ...


# ---------------------------------------------------------------------------- LLM

Role = Literal["system", "user", "assistant"]


class ChatMessage(msgspec.Struct, frozen=True, gc=False):
    role: Role
    content: str


class LlmDelta(msgspec.Struct, frozen=True, gc=False):
    """A piece of the reply; the last one has ``finish_reason`` set."""

    received_ns: int
    text: str = ""
    finish_reason: str | None = None


class LlmProvider(Protocol):
    name: str

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        """The reply as it is generated; closing the iterator aborts the request."""
        ...


# ---------------------------------------------------------------------------- TTS


class TtsChunk(msgspec.Struct, frozen=True, gc=False):
    """Audio of one generation, with the words it speaks when the provider aligns them.

    ``pcm`` is at the stream's ``rate_hz``; word times are ms since the
    generation's first sample.  The last chunk has ``done`` set (and may be empty).
    """

    generation: int
    received_ns: int
    pcm: bytes = b""
    words: tuple[Word, ...] = ()
    done: bool = False


class TtsStream(Protocol):
    """One bot utterance (one generation)."""

    generation: int
    rate_hz: int

    async def push_text(self, text: str) -> None:
        """Add text to speak (a phrase or a token run); may be called many times."""
        ...

    async def flush(self) -> None:
        """No more text: synthesise what remains and finish with a ``done`` chunk."""
        ...

    async def cancel(self) -> None:
        """Stop this generation at once; later chunks of it are dropped here. Idempotent."""
        ...

    def chunks(self) -> AsyncIterator[TtsChunk]:
        """Audio in order; ends after the ``done`` chunk or after :meth:`cancel`."""
        ...


class TtsProvider(Protocol):
    name: str

    async def open_stream(self, *, generation: int, rate_hz: int) -> TtsStream:
        """Start a generation producing PCM at ``rate_hz`` (8000, 16000 or 24000)."""
        ...

    async def prewarm(self) -> None:
        """Open connections ahead of the first utterance (no-op where none are pooled)."""
        ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------- speech-to-speech


class S2sEventKind(enum.Enum):
    SPEECH_STARTED = "speech_started"
    SPEECH_STOPPED = "speech_stopped"
    INPUT_TRANSCRIPT = "input_transcript"
    """What the provider heard the caller say (``text``)."""
    AUDIO = "audio"
    """Reply audio (``pcm``) of ``generation``."""
    TRANSCRIPT = "transcript"
    """Reply text (``text``) of ``generation``, a delta."""
    RESPONSE_DONE = "response_done"
    """``status``: completed, cancelled, failed or incomplete."""


class S2sEvent(msgspec.Struct, frozen=True, gc=False):
    kind: S2sEventKind
    received_ns: int
    generation: int | None = None
    item_id: str | None = None
    pcm: bytes = b""
    text: str = ""
    status: str | None = None


class S2sSession(Protocol):
    """One call's speech-to-speech conversation."""

    rate_hz: int

    def push_audio(self, pcm: bytes) -> None:
        """Queue caller PCM at ``rate_hz``; never blocks."""
        ...

    async def respond(self, generation: int) -> None:
        """Commit the caller's audio and ask for a reply tagged ``generation``."""
        ...

    async def cancel(self, generation: int) -> None:
        """Stop the reply of ``generation``; its late audio is dropped here. Idempotent."""
        ...

    async def truncate(self, item_id: str, played_ms: int) -> None:
        """Cut the reply item to what the caller heard (``played_ms`` of its audio)."""
        ...

    def events(self) -> AsyncIterator[S2sEvent]: ...

    async def close(self) -> None: ...


class S2sProvider(Protocol):
    name: str

    async def connect(self, *, rate_hz: int, instructions: str) -> S2sSession: ...
