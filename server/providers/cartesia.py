"""Cartesia text-to-speech over one WebSocket with a context per generation.

Handshake: ``GET /tts/websocket?cartesia_version=<version>`` with the
``X-API-Key`` and ``Cartesia-Version`` headers.  One socket serves every
generation and every output rate (the format travels in each message); it is
opened by :meth:`CartesiaTts.prewarm` or on first use and replaced once older
than ``max_session_s`` and idle, or when it broke.

Client messages (JSON text), all fields but ``transcript``/``continue`` equal on
one context:

* text: ``{"model_id", "transcript", "voice": {"mode": "id", "id"}, "language"?,
  "context_id": "g<generation>", "output_format": {"container": "raw",
  "encoding": "pcm_s16le", "sample_rate"}, "add_timestamps", "continue": true,
  "max_buffer_delay_ms"?}`` — transcripts are concatenated as sent;
* flush (end of input): the same with ``"transcript": ""`` and ``"continue": false``;
* cancel: ``{"context_id", "cancel": true}`` — Cartesia may finish a generation
  already in progress, so this client also drops the context's chunks itself.

Server messages, tagged by ``type``: ``chunk`` (base64 PCM in ``data``),
``timestamps`` (``word_timestamps`` ``words``/``start``/``end`` in seconds since
the context's first sample), ``phoneme_timestamps``, ``flush_done``, ``done``
and ``error`` (``status_code``, ``title``, ``message``, ``error_code``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import msgspec

from server.providers.base import (
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    TtsChunk,
    Word,
)
from server.providers.connect import error_for_status
from server.providers.ttsmux import (
    ChunkQueue,
    SampleCarry,
    SocketLink,
    SocketTiming,
    WebSocket,
    check_rate,
    connect_ws,
    ws_base_url,
)

NAME: Final = "cartesia"


class CartesiaSettings(SocketTiming, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.cartesia]``: account, voice and protocol options."""

    api_key: str
    base_url: str = "https://api.cartesia.ai"
    """The WebSocket URL uses the same host with ``wss://`` (``ws://`` for ``http://``)."""
    version: str = "2025-04-16"
    model: str = "sonic-2"
    voice_id: str = "a0e99841-438c-4a64-b679-ae501e7d6091"
    language: str | None = "en"
    add_timestamps: bool = True
    """Ask for word timestamps (they become :attr:`TtsChunk.words`)."""
    max_buffer_delay_ms: int | None = None
    """Server-side text buffering (0..1000 ms); None: the provider's default."""
    max_session_s: float = 300.0
    """A socket older than this is replaced when next idle (s)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_buffer_delay_ms is not None and not 0 <= self.max_buffer_delay_ms <= 1000:
            raise ValueError("max_buffer_delay_ms must be in 0..1000")
        if self.max_session_s <= 0:
            raise ValueError("max_session_s must be > 0")


# ---------------------------------------------------------------- client -> server


class Voice(msgspec.Struct, frozen=True):
    mode: str
    id: str


class OutputFormat(msgspec.Struct, frozen=True):
    container: str
    encoding: str
    sample_rate: int


class GenerationRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """Text for a context; ``continue_`` (``continue`` on the wire) is False on the last one."""

    model_id: str
    transcript: str
    voice: Voice
    output_format: OutputFormat
    context_id: str
    add_timestamps: bool
    continue_: bool = msgspec.field(name="continue")
    language: str | None = None
    max_buffer_delay_ms: int | None = None


class CancelContext(msgspec.Struct, frozen=True):
    context_id: str
    cancel: bool


# ---------------------------------------------------------------- server -> client


class _Message(msgspec.Struct, tag_field="type", frozen=True):
    """Base of the server messages; unknown fields are ignored."""


class AudioChunk(_Message, tag="chunk", frozen=True):
    data: bytes
    context_id: str | None = None
    done: bool = False
    status_code: int | None = None
    step_time: float | None = None
    flush_id: int | None = None


class WordTimestamps(msgspec.Struct, frozen=True):
    words: list[str]
    start: list[float]
    end: list[float]


class Timestamps(_Message, tag="timestamps", frozen=True):
    word_timestamps: WordTimestamps
    context_id: str | None = None
    done: bool = False


class PhonemeTimestamps(_Message, tag="phoneme_timestamps", frozen=True):
    context_id: str | None = None


class FlushDone(_Message, tag="flush_done", frozen=True):
    context_id: str | None = None
    flush_id: int | None = None


class Done(_Message, tag="done", frozen=True):
    context_id: str | None = None


class ErrorMessage(_Message, tag="error", frozen=True):
    context_id: str | None = None
    status_code: int | None = None
    title: str | None = None
    message: str | None = None
    error_code: str | None = None
    error: str | None = None


ServerMessage = AudioChunk | Timestamps | PhonemeTimestamps | FlushDone | Done | ErrorMessage

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[ServerMessage] = msgspec.json.Decoder(ServerMessage)


def decode_message(frame: str | bytes) -> ServerMessage:
    """Decode one server frame; ProviderProtocolError if it is not a valid message."""
    if isinstance(frame, bytes):
        raise ProviderProtocolError(NAME, "unexpected binary frame")
    try:
        return _decoder.decode(frame)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProviderProtocolError(NAME, f"malformed frame: {exc}") from exc


def ws_url(settings: CartesiaSettings) -> str:
    query = urllib.parse.urlencode({"cartesia_version": settings.version})
    return f"{ws_base_url(settings.base_url)}/tts/websocket?{query}"


def _error_of(message: ErrorMessage) -> ProviderError:
    text = " - ".join(
        part for part in (message.error_code, message.title, message.message, message.error) if part
    )
    if message.status_code is not None and message.status_code >= 400:
        return error_for_status(NAME, message.status_code, text, {})
    return ProviderError(NAME, text or "error")


def _close_error(code: int | None, reason: str) -> ProviderError:
    return ConnectionLostError(NAME, f"socket closed (code {code}: {reason or 'no reason'})")


# ------------------------------------------------------------------- routing


class _Context:
    __slots__ = ("carry", "queue")

    def __init__(self, queue: ChunkQueue) -> None:
        self.queue = queue
        self.carry = SampleCarry()


class ContextRouter:
    """Routes the messages of one Cartesia socket to its contexts (no I/O).

    Messages of unknown or cancelled contexts are dropped and counted in :attr:`dropped`.
    """

    def __init__(self) -> None:
        self.dropped = 0
        self._contexts: dict[str, _Context] = {}
        self._used: set[str] = set()

    @property
    def active(self) -> bool:
        return bool(self._contexts)

    def new_context_id(self, generation: int) -> str:
        """``g<generation>``, suffixed if this socket already used it."""
        context_id = f"g{generation}"
        n = 1
        while context_id in self._used:
            context_id = f"g{generation}.{n}"
            n += 1
        self._used.add(context_id)
        return context_id

    def open(self, context_id: str, generation: int) -> ChunkQueue:
        queue = ChunkQueue(NAME, generation)
        self._contexts[context_id] = _Context(queue)
        return queue

    def forget(self, context_id: str) -> None:
        """Stop routing a context (cancelled): its late messages are dropped."""
        self._contexts.pop(context_id, None)

    def fail_all(self, error: ProviderError) -> None:
        for context in self._contexts.values():
            context.queue.fail(error)
        self._contexts.clear()

    def handle(self, frame: str | bytes, received_ns: int) -> None:
        """Route one server frame; raises ProviderProtocolError, or a socket-wide error frame."""
        message = decode_message(frame)
        context_id = message.context_id
        if context_id is None:
            if isinstance(message, ErrorMessage):
                raise _error_of(message)
            raise ProviderProtocolError(NAME, f"{type(message).__name__} without context_id")
        context = self._contexts.get(context_id)
        if context is None or not context.queue.open:
            self.dropped += 1
            return
        queue = context.queue
        if isinstance(message, AudioChunk):
            pcm = context.carry.take(message.data)
            if pcm:
                queue.put(TtsChunk(queue.generation, received_ns, pcm))
        elif isinstance(message, Timestamps):
            stamps = message.word_timestamps
            if not len(stamps.words) == len(stamps.start) == len(stamps.end):
                raise ProviderProtocolError(NAME, "word_timestamps arrays differ in length")
            words = tuple(
                Word(text, start_s * 1000, end_s * 1000)
                for text, start_s, end_s in zip(stamps.words, stamps.start, stamps.end, strict=True)
            )
            if words:
                queue.put(TtsChunk(queue.generation, received_ns, words=words))
        elif isinstance(message, Done):
            del self._contexts[context_id]
            queue.put(TtsChunk(queue.generation, received_ns, done=True))
        elif isinstance(message, ErrorMessage):
            del self._contexts[context_id]
            queue.fail(_error_of(message))


# -------------------------------------------------------------------- client


class _Socket:
    """One Cartesia socket and its contexts."""

    def __init__(self, ws: WebSocket, settings: CartesiaSettings) -> None:
        self.settings = settings
        self.router = ContextRouter()
        self.link = SocketLink(
            NAME,
            ws,
            on_frame=self.router.handle,
            on_end=self.router.fail_all,
            close_error=_close_error,
        )

    def usable(self) -> bool:
        if not self.link.alive:
            return False
        age_s = time.monotonic() - self.link.opened_s
        return self.router.active or age_s < self.settings.max_session_s

    async def send(self, message: msgspec.Struct) -> None:
        await self.link.send_text(_encoder.encode(message))

    async def aclose(self, error: ProviderError | None = None) -> None:
        await self.link.aclose(error)


class CartesiaStream:
    """One generation: one Cartesia context on the shared socket."""

    def __init__(
        self, socket: _Socket, context_id: str, queue: ChunkQueue, *, rate_hz: int
    ) -> None:
        self.generation = queue.generation
        self.rate_hz = rate_hz
        self.context_id = context_id
        self._socket = socket
        self._queue = queue
        self._flushed = False
        settings = socket.settings
        self._template = GenerationRequest(
            model_id=settings.model,
            transcript="",
            voice=Voice(mode="id", id=settings.voice_id),
            output_format=OutputFormat(container="raw", encoding="pcm_s16le", sample_rate=rate_hz),
            context_id=context_id,
            add_timestamps=settings.add_timestamps,
            continue_=True,
            language=settings.language,
            max_buffer_delay_ms=settings.max_buffer_delay_ms,
        )

    async def push_text(self, text: str) -> None:
        """Send text to the context (ignored after cancel; an error after flush)."""
        if self._flushed:
            raise RuntimeError("push_text after flush")
        if text and self._queue.open:
            await self._socket.send(msgspec.structs.replace(self._template, transcript=text))

    async def flush(self) -> None:
        """End the context's input: the rest of its audio, then ``done``."""
        if self._flushed or not self._queue.open:
            return
        self._flushed = True
        await self._socket.send(msgspec.structs.replace(self._template, continue_=False))
        self._queue.expect(self._socket.settings.receive_timeout_s)

    async def cancel(self) -> None:
        """Cancel the context and drop its chunks, including ones still on the way. Idempotent."""
        was_open = self._queue.cancel()
        self._socket.router.forget(self.context_id)
        if was_open and self._socket.link.alive:
            with contextlib.suppress(ProviderError):
                await self._socket.send(CancelContext(context_id=self.context_id, cancel=True))

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        """Audio and word timestamps until ``done``; a stall closes the socket."""
        try:
            async for chunk in self._queue.iterate():
                yield chunk
        except ProviderTimeoutError as error:
            await self._socket.aclose(error)
            raise


class CartesiaTts:
    """Cartesia over one multiplexed WebSocket; create one per call."""

    name = NAME

    def __init__(
        self, settings: CartesiaSettings, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._socket: _Socket | None = None
        self._retired_dropped = 0
        self._lock = asyncio.Lock()

    @property
    def dropped_frames(self) -> int:
        """Messages of cancelled or unknown contexts dropped so far, over every socket."""
        current = self._socket.router.dropped if self._socket else 0
        return self._retired_dropped + current

    async def prewarm(self) -> None:
        """Open the socket now."""
        await self._get_socket()

    async def open_stream(self, *, generation: int, rate_hz: int) -> CartesiaStream:
        """Start context ``g<generation>`` producing PCM at ``rate_hz``; raises ProviderError.

        Nothing is sent until the first text: a Cartesia context starts with its first input.
        """
        check_rate(NAME, rate_hz)
        socket = await self._get_socket()
        context_id = socket.router.new_context_id(generation)
        queue = socket.router.open(context_id, generation)
        return CartesiaStream(socket, context_id, queue, rate_hz=rate_hz)

    async def aclose(self) -> None:
        """Close the socket; open generations fail with ConnectionLostError."""
        async with self._lock:
            if self._socket is not None:
                await self._retire(self._socket)
            self._socket = None
            if self._owns_session and self._session is not None:
                await self._session.close()
                self._session = None

    async def _retire(self, socket: _Socket) -> None:
        await socket.aclose()
        self._retired_dropped += socket.router.dropped

    async def _get_socket(self) -> _Socket:
        async with self._lock:
            socket = self._socket
            if socket is not None and socket.usable():
                return socket
            if socket is not None:
                self._socket = None
                await self._retire(socket)
            if self._session is None:
                self._session = aiohttp.ClientSession()
            ws = await connect_ws(
                self._session,
                ws_url(self.settings),
                provider=NAME,
                headers={
                    "X-API-Key": self.settings.api_key,
                    "Cartesia-Version": self.settings.version,
                },
                timeout_s=self.settings.connect_timeout_s,
                backoff=self.settings.backoff(),
            )
            self._socket = _Socket(ws, self.settings)
            return self._socket
