"""ElevenLabs text-to-speech: the multi-context WebSocket and HTTP streaming.

WebSocket (:class:`ElevenLabsTts`), ``GET /v1/text-to-speech/{voice_id}/multi-stream-input``
with ``model_id``, ``output_format=pcm_<rate>``, ``sync_alignment=true``,
``inactivity_timeout`` and ``auto_mode`` in the query and the key in the
``xi-api-key`` header.  One socket per output rate, opened by :meth:`prewarm` or
on first use; one context per generation (``context_id`` ``g<generation>``):

* open: ``{"text": " ", "context_id", "voice_settings", "generation_config"?}``
  (the context's first text must be a single space);
* text: ``{"text", "context_id"}``;
* flush: ``{"text": "", "context_id", "flush": true}`` then
  ``{"context_id", "close_context": true}`` — the server finishes the flushed
  audio and ends the context with ``isFinal``;
* cancel: ``{"context_id", "close_context": true}``; audio the server already
  queued still arrives and is dropped here;
* keep-alive: ``{"text": "", "context_id"}`` for contexts still waiting for text
  (every ``keepalive_interval_s``); an idle socket is left to close and is
  reopened on next use;
* close: ``{"close_socket": true}``.

Server frames are JSON text: ``{"audio": <base64 PCM>, "alignment":
{"chars", "charStartTimesMs", "charDurationsMs"}, "contextId"}`` (character
times relative to that chunk; the ``charsDurationsMs`` spelling is accepted
too) and ``{"isFinal": true, "contextId"}`` (``is_final`` accepted too).
Character alignment is folded into :class:`Word` spans (runs of non-space
characters), in ms since the generation's first sample.

HTTP (:class:`ElevenLabsHttpTts`), ``POST /v1/text-to-speech/{voice_id}/stream``
(raw PCM body) or ``.../stream/with-timestamps`` (newline-separated JSON
``{"audio_base64", "alignment": {"characters", "character_start_times_seconds",
"character_end_times_seconds"}}``, times in seconds from the request's first
sample), query ``output_format=pcm_<rate>``, body ``{"text", "model_id",
"voice_settings", "previous_text"?}``.  Pushed text is cut into phrases at
sentence ends and requested one phrase at a time, in order; cancel aborts the
request in flight.  Refused requests are retried with :class:`Backoff` until
audio has started.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Final, Literal

import aiohttp
import msgspec

from server.providers.base import (
    AuthError,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    TtsChunk,
    Word,
)
from server.providers.connect import error_for_exception, error_for_status
from server.providers.ttsmux import (
    ChunkQueue,
    SampleCarry,
    SocketLink,
    SocketTiming,
    WebSocket,
    check_rate,
    connect_ws,
    pcm_ms,
    ws_base_url,
)

NAME: Final = "elevenlabs"


class ElevenLabsSettings(SocketTiming, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.elevenlabs]``: account, voice and protocol options."""

    api_key: str
    base_url: str = "https://api.elevenlabs.io"
    """HTTP base; the WebSocket URL uses the same host with ``wss://`` (``ws://`` for ``http://``)."""
    voice_id: str = "21m00Tcm4TlvDq8ikWAM"
    model: str = "eleven_flash_v2_5"
    transport: Literal["websocket", "http"] = "websocket"
    """Which client :func:`make_provider` builds."""
    stability: float = 0.5
    similarity_boost: float = 0.75
    speed: float = 1.0
    chunk_length_schedule: tuple[int, ...] = ()
    """Characters buffered before each generation (50..500 each); empty: the provider's default."""
    auto_mode: bool = False
    """Generate on every text message instead of following the chunk schedule."""
    inactivity_timeout_s: int = 20
    """Server closes a socket that received nothing for this long (1..180 s)."""
    keepalive_interval_s: float = 10.0
    """Keep-alive period for contexts still waiting for text (s)."""
    http_timestamps: bool = True
    """HTTP: use ``/stream/with-timestamps`` for word alignment."""
    prewarm_rate_hz: int = 16000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.inactivity_timeout_s <= 180:
            raise ValueError("inactivity_timeout_s must be in 1..180")
        if any(not 50 <= n <= 500 for n in self.chunk_length_schedule):
            raise ValueError("chunk_length_schedule items must be in 50..500")
        if self.prewarm_rate_hz not in (8000, 16000, 24000):
            raise ValueError("prewarm_rate_hz must be 8000, 16000 or 24000")
        if self.keepalive_interval_s <= 0:
            raise ValueError("keepalive_interval_s must be > 0")
        if self.keepalive_interval_s >= self.inactivity_timeout_s:
            raise ValueError("keepalive_interval_s must be < inactivity_timeout_s")


# ---------------------------------------------------------------- client -> server


class _VoiceSettings(msgspec.Struct, frozen=True):
    stability: float
    similarity_boost: float
    speed: float


class _GenerationConfig(msgspec.Struct, frozen=True):
    chunk_length_schedule: list[int]


class InitContext(msgspec.Struct, frozen=True, omit_defaults=True):
    """Opens a context; ``text`` must be a single space."""

    text: str
    context_id: str
    voice_settings: _VoiceSettings
    generation_config: _GenerationConfig | None = None


class SendText(msgspec.Struct, frozen=True, omit_defaults=True):
    """Text for a context; empty text with ``flush`` flushes, empty text alone keeps it alive."""

    text: str
    context_id: str
    flush: bool = False


class CloseContext(msgspec.Struct, frozen=True):
    context_id: str
    close_context: bool


class CloseSocket(msgspec.Struct, frozen=True):
    close_socket: bool


# ---------------------------------------------------------------- server -> client


class CharAlignment(msgspec.Struct, frozen=True, rename="camel"):
    """Character timing of one chunk (ms from that chunk's first sample)."""

    chars: list[str]
    char_start_times_ms: list[float]
    char_durations_ms: list[float] | None = None
    chars_durations_ms: list[float] | None = None


class ServerMessage(msgspec.Struct, frozen=True):
    """Any multi-stream-input server frame: audio of a context, its end, or an error."""

    audio: bytes | None = None
    alignment: CharAlignment | None = None
    normalizedAlignment: CharAlignment | None = None
    contextId: str | None = None
    isFinal: bool | None = None
    is_final: bool | None = None
    error: str | None = None
    message: str | None = None
    code: int | str | None = None


class _SpeakRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    text: str
    model_id: str
    voice_settings: _VoiceSettings
    previous_text: str | None = None


class HttpAlignment(msgspec.Struct, frozen=True):
    """Character timing of one HTTP chunk (s from the request's first sample)."""

    characters: list[str]
    character_start_times_seconds: list[float]
    character_end_times_seconds: list[float]


class HttpChunk(msgspec.Struct, frozen=True):
    """One line of ``/stream/with-timestamps``."""

    audio_base64: bytes
    alignment: HttpAlignment | None = None
    normalized_alignment: HttpAlignment | None = None


_encoder = msgspec.json.Encoder()
_ws_decoder = msgspec.json.Decoder(ServerMessage)
_http_decoder = msgspec.json.Decoder(HttpChunk)


def decode_message(frame: str | bytes) -> ServerMessage:
    """Decode one WebSocket frame; ProviderProtocolError if it is not a valid message."""
    if isinstance(frame, bytes):
        raise ProviderProtocolError(NAME, "unexpected binary frame")
    try:
        return _ws_decoder.decode(frame)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProviderProtocolError(NAME, f"malformed frame: {exc}") from exc


def decode_http_line(line: bytes) -> HttpChunk:
    """Decode one with-timestamps line; ProviderProtocolError if invalid."""
    try:
        return _http_decoder.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProviderProtocolError(NAME, f"malformed chunk: {exc}") from exc


# ------------------------------------------------------------------------ URLs


def ws_url(settings: ElevenLabsSettings, rate_hz: int) -> str:
    """The multi-stream-input URL for PCM at ``rate_hz``."""
    query = {
        "model_id": settings.model,
        "output_format": f"pcm_{rate_hz}",
        "sync_alignment": "true",
        "inactivity_timeout": str(settings.inactivity_timeout_s),
        "auto_mode": "true" if settings.auto_mode else "false",
    }
    voice = urllib.parse.quote(settings.voice_id, safe="")
    base = ws_base_url(settings.base_url)
    return f"{base}/v1/text-to-speech/{voice}/multi-stream-input?{urllib.parse.urlencode(query)}"


def http_url(settings: ElevenLabsSettings, rate_hz: int) -> str:
    """The HTTP streaming URL (with timestamps when ``settings.http_timestamps``)."""
    voice = urllib.parse.quote(settings.voice_id, safe="")
    path = "stream/with-timestamps" if settings.http_timestamps else "stream"
    base = settings.base_url.rstrip("/")
    return f"{base}/v1/text-to-speech/{voice}/{path}?output_format=pcm_{rate_hz}"


def _voice_settings(settings: ElevenLabsSettings) -> _VoiceSettings:
    return _VoiceSettings(settings.stability, settings.similarity_boost, settings.speed)


def _close_error(code: int | None, reason: str) -> ProviderError:
    text = f"socket closed (code {code}: {reason or 'no reason'})"
    lowered = reason.lower()
    if code == 1008 and ("key" in lowered or "auth" in lowered):
        return AuthError(NAME, text)
    return ConnectionLostError(NAME, text)


# ----------------------------------------------------------------- alignment


class WordFolder:
    """Folds character timings into words: runs of non-space characters, in order."""

    def __init__(self) -> None:
        self._chars: list[str] = []
        self._start_ms = 0.0
        self._end_ms = 0.0

    def feed(
        self, chars: Sequence[str], starts_ms: Sequence[float], ends_ms: Sequence[float]
    ) -> list[Word]:
        """Words completed by these characters (a word ends at the next whitespace)."""
        words: list[Word] = []
        for char, start_ms, end_ms in zip(chars, starts_ms, ends_ms, strict=True):
            if not char or char.isspace():
                if self._chars:
                    words.append(self._take())
                continue
            if not self._chars:
                self._start_ms = start_ms
            self._chars.append(char)
            self._end_ms = end_ms
        return words

    def finish(self) -> list[Word]:
        """The word still open at the end of the audio, if any."""
        return [self._take()] if self._chars else []

    def _take(self) -> Word:
        word = Word("".join(self._chars), self._start_ms, self._end_ms)
        self._chars.clear()
        return word


def _check_lengths(n: int, *others: int) -> None:
    if any(m != n for m in others):
        raise ProviderProtocolError(NAME, "alignment arrays differ in length")


# ------------------------------------------------------------ WebSocket routing


class _Context:
    __slots__ = ("carry", "flushed", "folder", "queue", "received_bytes")

    def __init__(self, queue: ChunkQueue) -> None:
        self.queue = queue
        self.carry = SampleCarry()
        self.folder = WordFolder()
        self.received_bytes = 0
        self.flushed = False


class ContextRouter:
    """Routes the frames of one multi-stream-input socket to its contexts (no I/O).

    Frames of unknown or cancelled contexts are dropped and counted in
    :attr:`dropped`.
    """

    def __init__(self, rate_hz: int) -> None:
        self.rate_hz = rate_hz
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

    def mark_flushed(self, context_id: str) -> None:
        context = self._contexts.get(context_id)
        if context is not None:
            context.flushed = True

    def waiting_for_text(self) -> list[str]:
        """Contexts open and not yet flushed (the ones keep-alives are for)."""
        return [cid for cid, ctx in self._contexts.items() if not ctx.flushed]

    def forget(self, context_id: str) -> None:
        """Stop routing a context (cancelled): its late frames are dropped."""
        self._contexts.pop(context_id, None)

    def fail_all(self, error: ProviderError) -> None:
        for context in self._contexts.values():
            context.queue.fail(error)
        self._contexts.clear()

    def handle(self, frame: str | bytes, received_ns: int) -> None:
        """Route one server frame; raises ProviderProtocolError or the provider's error."""
        message = decode_message(frame)
        if message.error is not None:
            self._handle_error(message)
            return
        context_id = message.contextId
        if context_id is None:
            raise ProviderProtocolError(NAME, "frame without contextId")
        context = self._contexts.get(context_id)
        if context is None or not context.queue.open:
            self.dropped += 1
            return
        pcm = b""
        words: list[Word] = []
        if message.audio:
            offset_ms = pcm_ms(context.received_bytes, self.rate_hz)
            context.received_bytes += len(message.audio)
            pcm = context.carry.take(message.audio)
            alignment = message.alignment or message.normalizedAlignment
            if alignment is not None:
                words = self._fold(context.folder, alignment, offset_ms)
        final = bool(message.isFinal or message.is_final)
        if final:
            words.extend(context.folder.finish())
            del self._contexts[context_id]
        if pcm or words or final:
            context.queue.put(
                TtsChunk(context.queue.generation, received_ns, pcm, tuple(words), final)
            )

    def _handle_error(self, message: ServerMessage) -> None:
        text = message.message or message.error or "error"
        status = message.code if isinstance(message.code, int) else None
        error = ProviderError(NAME, f"{message.error}: {text}", status=status)
        context = self._contexts.pop(message.contextId or "", None)
        if context is None:
            raise error
        context.queue.fail(error)

    @staticmethod
    def _fold(folder: WordFolder, alignment: CharAlignment, offset_ms: float) -> list[Word]:
        durations = alignment.char_durations_ms or alignment.chars_durations_ms
        if durations is None:
            raise ProviderProtocolError(NAME, "alignment without durations")
        _check_lengths(len(alignment.chars), len(alignment.char_start_times_ms), len(durations))
        starts = [offset_ms + s for s in alignment.char_start_times_ms]
        ends = [start + d for start, d in zip(starts, durations, strict=True)]
        return folder.feed(alignment.chars, starts, ends)


# ------------------------------------------------------------ WebSocket client


class _Socket:
    """One multi-stream-input socket: its contexts, reader and keep-alive task."""

    def __init__(self, ws: WebSocket, rate_hz: int, settings: ElevenLabsSettings) -> None:
        self.settings = settings
        self.router = ContextRouter(rate_hz)
        self.link = SocketLink(
            NAME, ws, on_frame=self.router.handle, on_end=self._on_end, close_error=_close_error
        )
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())

    def usable(self) -> bool:
        """Alive, and not so idle that the server may be closing it right now."""
        if not self.link.alive:
            return False
        idle_s = time.monotonic() - self.link.last_sent_s
        return self.router.active or idle_s < 0.8 * self.settings.inactivity_timeout_s

    async def send(self, message: msgspec.Struct) -> None:
        await self.link.send_text(_encoder.encode(message))

    async def aclose(self, error: ProviderError | None = None) -> None:
        last = _encoder.encode(CloseSocket(close_socket=True))
        await self.link.aclose(error, last=last)
        self._keepalive.cancel()
        await asyncio.wait([self._keepalive])

    def _on_end(self, error: ProviderError) -> None:
        self.router.fail_all(error)
        self._keepalive.cancel()

    async def _keep_alive(self) -> None:
        interval_s = self.settings.keepalive_interval_s
        while self.link.alive:
            await asyncio.sleep(interval_s / 2)
            if time.monotonic() - self.link.last_sent_s < interval_s:
                continue
            for context_id in self.router.waiting_for_text():
                with contextlib.suppress(ProviderError):
                    await self.send(SendText(text="", context_id=context_id))


class ElevenLabsStream:
    """One generation on a shared multi-stream-input socket (one context)."""

    def __init__(
        self, socket: _Socket, context_id: str, queue: ChunkQueue, *, rate_hz: int
    ) -> None:
        self.generation = queue.generation
        self.rate_hz = rate_hz
        self.context_id = context_id
        self._socket = socket
        self._queue = queue
        self._flushed = False

    async def push_text(self, text: str) -> None:
        """Send text for this context (ignored after cancel; an error after flush)."""
        if self._flushed:
            raise RuntimeError("push_text after flush")
        if text and self._queue.open:
            await self._socket.send(SendText(text=text, context_id=self.context_id))

    async def flush(self) -> None:
        """Flush the context and close it: the rest of its audio, then ``done``."""
        if self._flushed or not self._queue.open:
            return
        self._flushed = True
        self._socket.router.mark_flushed(self.context_id)
        await self._socket.send(SendText(text="", context_id=self.context_id, flush=True))
        await self._socket.send(CloseContext(context_id=self.context_id, close_context=True))
        self._queue.expect(self._socket.settings.receive_timeout_s)

    async def cancel(self) -> None:
        """Drop this generation's audio, including late frames; close its context. Idempotent."""
        was_open = self._queue.cancel()
        self._socket.router.forget(self.context_id)
        # A flushed context was closed at flush: the server finishes its audio
        # whatever we send now, so the drop here is all a cancel can do.
        if was_open and not self._flushed and self._socket.link.alive:
            with contextlib.suppress(ProviderError):
                await self._socket.send(
                    CloseContext(context_id=self.context_id, close_context=True)
                )

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        """Audio until the ``done`` chunk; a stall closes the socket (it is not reused)."""
        try:
            async for chunk in self._queue.iterate():
                yield chunk
        except ProviderTimeoutError as error:
            await self._socket.aclose(error)
            raise


class ElevenLabsTts:
    """ElevenLabs over multi-stream-input WebSockets; create one per call."""

    name = NAME

    def __init__(
        self, settings: ElevenLabsSettings, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._sockets: dict[int, _Socket] = {}
        self._retired_dropped = 0
        self._lock = asyncio.Lock()

    @property
    def dropped_frames(self) -> int:
        """Frames of cancelled or unknown contexts dropped so far, over every socket."""
        current = sum(s.router.dropped for s in self._sockets.values())
        return self._retired_dropped + current

    async def prewarm(self) -> None:
        """Open the socket for ``settings.prewarm_rate_hz`` now."""
        await self._socket(self.settings.prewarm_rate_hz)

    async def open_stream(self, *, generation: int, rate_hz: int) -> ElevenLabsStream:
        """Open context ``g<generation>`` on the socket for ``rate_hz``; raises ProviderError."""
        check_rate(NAME, rate_hz)
        for attempt in range(2):
            socket = await self._socket(rate_hz)
            context_id = socket.router.new_context_id(generation)
            queue = socket.router.open(context_id, generation)
            init = InitContext(
                text=" ",
                context_id=context_id,
                voice_settings=_voice_settings(self.settings),
                generation_config=(
                    _GenerationConfig(list(self.settings.chunk_length_schedule))
                    if self.settings.chunk_length_schedule
                    else None
                ),
            )
            try:
                await socket.send(init)
            except ConnectionLostError:
                socket.router.forget(context_id)
                if attempt == 1:
                    raise
                continue
            return ElevenLabsStream(socket, context_id, queue, rate_hz=rate_hz)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close every socket (``close_socket``); open generations fail with ConnectionLostError."""
        async with self._lock:
            sockets = list(self._sockets.values())
            self._sockets.clear()
            for socket in sockets:
                await self._retire(socket)
            if self._owns_session and self._session is not None:
                await self._session.close()
                self._session = None

    async def _retire(self, socket: _Socket) -> None:
        await socket.aclose()
        self._retired_dropped += socket.router.dropped

    async def _socket(self, rate_hz: int) -> _Socket:
        async with self._lock:
            socket = self._sockets.get(rate_hz)
            if socket is not None and socket.usable():
                return socket
            if socket is not None:
                del self._sockets[rate_hz]
                await self._retire(socket)
            if self._session is None:
                self._session = aiohttp.ClientSession()
            ws = await connect_ws(
                self._session,
                ws_url(self.settings, rate_hz),
                provider=NAME,
                headers={"xi-api-key": self.settings.api_key},
                timeout_s=self.settings.connect_timeout_s,
                backoff=self.settings.backoff(),
            )
            socket = _Socket(ws, rate_hz, self.settings)
            self._sockets[rate_hz] = socket
            return socket


# ----------------------------------------------------------------- HTTP client

_SENTENCE_END = re.compile(r"[.!?;:]\s+")


class ElevenLabsHttpStream:
    """One generation over HTTP streaming: one request per phrase, in order."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: ElevenLabsSettings,
        *,
        generation: int,
        rate_hz: int,
    ) -> None:
        self.generation = generation
        self.rate_hz = rate_hz
        self._session = session
        self._settings = settings
        self._queue = ChunkQueue(NAME, generation)
        self._buffer = ""
        self._phrases: asyncio.Queue[str | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._flushed = False
        self._spoken_bytes = 0
        """Audio delivered by earlier phrases (bytes): the next phrase's time offset."""

    @property
    def finished(self) -> bool:
        return not self._queue.open and (self._task is None or self._task.done())

    async def push_text(self, text: str) -> None:
        """Buffer text; each completed sentence is requested at once."""
        if self._flushed:
            raise RuntimeError("push_text after flush")
        if not self._queue.open:
            return
        self._buffer += text
        cut = 0
        for match in _SENTENCE_END.finditer(self._buffer):
            cut = match.end()
        if cut:
            self._enqueue(self._buffer[:cut])
            self._buffer = self._buffer[cut:]

    async def flush(self) -> None:
        """Request what remains, then finish with ``done``."""
        if self._flushed or not self._queue.open:
            return
        self._flushed = True
        if self._buffer.strip():
            self._enqueue(self._buffer)
        self._buffer = ""
        self._enqueue(None)
        self._queue.expect(self._settings.receive_timeout_s)

    async def cancel(self) -> None:
        """Abort the request in flight and drop everything not yet consumed. Idempotent."""
        self._queue.cancel()
        await self._stop()

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        """Audio of every phrase in order, then ``done``."""
        try:
            async for chunk in self._queue.iterate():
                yield chunk
        except ProviderError:
            await self._stop()
            raise

    async def abort(self, error: ProviderError) -> None:
        """End the generation with ``error`` and stop its request."""
        self._queue.fail(error)
        await self._stop()

    async def _stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])

    def _enqueue(self, phrase: str | None) -> None:
        self._phrases.put_nowait(phrase)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        previous = ""
        try:
            while True:
                phrase = await self._phrases.get()
                if phrase is None:
                    self._queue.put(TtsChunk(self.generation, time.monotonic_ns(), done=True))
                    return
                await self._speak(phrase, previous)
                previous = (previous + phrase)[-1000:]
        except ProviderError as error:
            self._queue.fail(error)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._queue.fail(error_for_exception(NAME, exc))

    async def _request(self, phrase: str, previous: str) -> aiohttp.ClientResponse:
        settings = self._settings
        body = _encoder.encode(
            _SpeakRequest(
                text=phrase,
                model_id=settings.model,
                voice_settings=_voice_settings(settings),
                previous_text=previous or None,
            )
        )
        headers = {"xi-api-key": settings.api_key, "Content-Type": "application/json"}
        backoff = settings.backoff()
        while True:
            try:
                async with asyncio.timeout(settings.connect_timeout_s):
                    response = await self._session.post(
                        http_url(settings, self.rate_hz), data=body, headers=headers
                    )
                    if response.status < 400:
                        return response
                    text = await response.text()
                    response.release()
                error = error_for_status(NAME, response.status, text, response.headers)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = error_for_exception(NAME, exc)
            delay_s = backoff.next_delay_s(error) if backoff is not None else None
            if delay_s is None:
                raise error
            await asyncio.sleep(delay_s)

    async def _speak(self, phrase: str, previous: str) -> None:
        response = await self._request(phrase, previous)
        carry = SampleCarry()
        folder = WordFolder()
        offset_ms = pcm_ms(self._spoken_bytes, self.rate_hz)
        pending = b""
        async with response:
            while True:
                async with asyncio.timeout(self._settings.receive_timeout_s):
                    data = await response.content.readany()
                received_ns = time.monotonic_ns()
                if not data:
                    break
                if not self._settings.http_timestamps:
                    self._emit(carry.take(data), [], received_ns)
                    continue
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._emit_line(line, carry, folder, offset_ms, received_ns)
        if pending.strip():
            self._emit_line(pending, carry, folder, offset_ms, time.monotonic_ns())
        self._emit(b"", folder.finish(), time.monotonic_ns())
        self._spoken_bytes += carry.n_bytes

    def _emit_line(
        self,
        line: bytes,
        carry: SampleCarry,
        folder: WordFolder,
        offset_ms: float,
        received_ns: int,
    ) -> None:
        chunk = decode_http_line(line)
        words: list[Word] = []
        alignment = chunk.alignment or chunk.normalized_alignment
        if alignment is not None:
            _check_lengths(
                len(alignment.characters),
                len(alignment.character_start_times_seconds),
                len(alignment.character_end_times_seconds),
            )
            starts = [offset_ms + s * 1000 for s in alignment.character_start_times_seconds]
            ends = [offset_ms + e * 1000 for e in alignment.character_end_times_seconds]
            words = folder.feed(alignment.characters, starts, ends)
        self._emit(carry.take(chunk.audio_base64), words, received_ns)

    def _emit(self, pcm: bytes, words: list[Word], received_ns: int) -> None:
        if pcm or words:
            self._queue.put(TtsChunk(self.generation, received_ns, pcm, tuple(words)))


class ElevenLabsHttpTts:
    """ElevenLabs over HTTP streaming (one request per phrase); no pooled sockets to warm."""

    name = NAME

    def __init__(
        self, settings: ElevenLabsSettings, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._streams: list[ElevenLabsHttpStream] = []

    async def prewarm(self) -> None:
        """Nothing to open ahead: aiohttp pools the connection after the first request."""

    async def open_stream(self, *, generation: int, rate_hz: int) -> ElevenLabsHttpStream:
        check_rate(NAME, rate_hz)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._streams = [s for s in self._streams if not s.finished]
        stream = ElevenLabsHttpStream(
            self._session, self.settings, generation=generation, rate_hz=rate_hz
        )
        self._streams.append(stream)
        return stream

    async def aclose(self) -> None:
        """Stop open generations (they fail with ConnectionLostError); close the owned session."""
        for stream in self._streams:
            await stream.abort(ConnectionLostError(NAME, "closed by the client"))
        self._streams.clear()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


def make_provider(
    settings: ElevenLabsSettings, *, session: aiohttp.ClientSession | None = None
) -> ElevenLabsTts | ElevenLabsHttpTts:
    """The client ``settings.transport`` names."""
    if settings.transport == "http":
        return ElevenLabsHttpTts(settings, session=session)
    return ElevenLabsTts(settings, session=session)
