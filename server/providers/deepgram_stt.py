"""Deepgram live streaming speech-to-text (``/v1/listen``): the whole wire protocol.

One WebSocket per :class:`DeepgramSttStream`:

* Handshake: ``GET {base_url}/v1/listen?model=…&encoding=linear16&sample_rate=16000
  &channels=1&interim_results=…&endpointing=…&utterance_end_ms=…&vad_events=…
  &smart_format=…&punctuate=…&language=…`` with ``Authorization: Token <key>``.
  A refused handshake is HTTP 401/403 (:class:`AuthError`), 429
  (:class:`RateLimitedError`) or 400 (bad query, not retryable).
* Client to server: binary frames of raw 16 kHz linear16 audio, and text frames
  ``{"type":"KeepAlive"}`` (sent by the stream itself after
  ``keepalive_interval_ms`` without audio; Deepgram closes a socket that gets
  neither audio nor KeepAlive for 10 s), ``{"type":"Finalize"}`` (flush) and
  ``{"type":"CloseStream"}`` (the server then sends the last ``Results``, a
  ``Metadata`` summary, and closes with 1000).
* Server to client: JSON text frames, one of :data:`DeepgramMessage`
  (``Results``, ``SpeechStarted``, ``UtteranceEnd``, ``Metadata``; unknown
  types are ignored).  Errors arrive as close frames: 1008 ``DATA-0000`` (audio
  not decodable), 1011 ``NET-0000`` (server error) or ``NET-0001`` (nothing
  received for 10 s).  Deepgram times are seconds of audio received on the
  socket; events carry ms since the stream's first pushed sample.

Mapping to :class:`SttEvent` (see :class:`DeepgramEventMapper`):

* ``Results`` with ``is_final`` false and a non-empty transcript: INTERIM, the
  current segment's text (it replaces the previous INTERIM).
* ``Results`` with ``is_final`` true and a non-empty transcript: FINAL; the
  turn's text is the concatenation of its FINAL texts.
* ``speech_final`` true, or ``UtteranceEnd``: END_OF_TURN with the turn's text,
  once per turn (whichever comes first; nothing if the turn has no text).
* ``SpeechStarted``: SPEECH_STARTED (``audio_end_ms`` is where speech began).

Reconnects: if the socket drops or stalls mid-stream (no message for
``receive_timeout_ms`` while at least that much audio was sent), the stream
reconnects with :class:`Backoff` and events continue.  Audio pushed while the
connection is down, and audio queued but unsent when it dropped, is lost (it is
counted in :attr:`DeepgramSttStream.dropped_ms`); event times stay on the
stream's clock.  The stream's send buffer holds at most ``max_unsent_ms`` of
audio; newer audio beyond that is dropped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Final, TypeAlias

import aiohttp
import msgspec
from yarl import URL

from server.providers.base import (
    STT_RATE_HZ,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    SttEvent,
    SttEventKind,
    SttProvider,
    SttStream,
    Word,
)
from server.providers.connect import Backoff, error_for_exception
from server.providers.timeline import Timeline

PROVIDER: Final = "deepgram"
LISTEN_PATH: Final = "/v1/listen"
FRAME_BYTES: Final = STT_RATE_HZ * 2 * 20 // 1000
"""One 20 ms frame of 16 kHz int16 PCM (640 bytes)."""
BYTES_PER_MS: Final = STT_RATE_HZ * 2 // 1000

CLOSE_NORMAL: Final = 1000
CLOSE_DATA_ERROR: Final = 1008
"""Close code with payload ``DATA-0000``: the audio could not be decoded."""
CLOSE_SERVER_ERROR: Final = 1011
"""Close code with payload ``NET-0000`` (server error) or ``NET-0001`` (idle timeout)."""

_log = logging.getLogger(__name__)

NonNegativeMs: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
PositiveMs: TypeAlias = Annotated[int, msgspec.Meta(gt=0)]


# ------------------------------------------------------------------------- settings


class DeepgramSttSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.deepgram_stt]``: credentials, query options and client timing (ms)."""

    api_key: str
    base_url: str = "wss://api.deepgram.com"
    """Scheme and host; the client appends ``/v1/listen``."""
    model: str = "nova-3"
    language: str = "en"
    """Default ``language`` query value; ``open_stream(language=…)`` overrides it."""
    interim_results: bool = True
    endpointing_ms: NonNegativeMs | None = 300
    """Silence (ms) that ends a segment with ``speech_final``; ``None`` sends ``false``."""
    utterance_end_ms: PositiveMs | None = 1000
    """Word gap (ms) that yields ``UtteranceEnd``; needs ``interim_results``; ``None`` omits it."""
    vad_events: bool = True
    smart_format: bool = False
    punctuate: bool = True
    keepalive_interval_ms: PositiveMs | None = 4000
    """Send KeepAlive after this long without audio; ``None`` never does."""
    max_chunk_ms: PositiveMs = 100
    """Queued audio is sent in binary frames of at most this many ms."""
    max_unsent_ms: PositiveMs = 5000
    """Audio waiting to be sent beyond this is dropped (and counted)."""
    connect_timeout_ms: PositiveMs = 5000
    receive_timeout_ms: PositiveMs = 5000
    """Stall deadline: no message for this long while this much audio went out."""
    close_timeout_ms: PositiveMs = 3000
    """How long :meth:`DeepgramSttStream.close` waits for the last results and Metadata."""
    reconnect_attempts: NonNegativeMs = 5
    """Reconnects tried after drops (0: none), counted until a connection stays up
    for ``reconnect_reset_ms``."""
    reconnect_base_ms: PositiveMs = 100
    reconnect_max_ms: PositiveMs = 5000
    reconnect_reset_ms: PositiveMs = 30000

    def __post_init__(self) -> None:
        if self.utterance_end_ms is not None and not self.interim_results:
            raise ValueError("utterance_end_ms needs interim_results = true")
        if self.reconnect_max_ms < self.reconnect_base_ms:
            raise ValueError("reconnect_max_ms must be >= reconnect_base_ms")


def listen_url(settings: DeepgramSttSettings, language: str | None = None) -> URL:
    """The ``/v1/listen`` URL with every query parameter for 16 kHz mono linear16."""

    def flag(value: bool) -> str:
        return "true" if value else "false"

    query = {
        "model": settings.model,
        "encoding": "linear16",
        "sample_rate": str(STT_RATE_HZ),
        "channels": "1",
        "interim_results": flag(settings.interim_results),
        "endpointing": (
            "false" if settings.endpointing_ms is None else str(settings.endpointing_ms)
        ),
        "vad_events": flag(settings.vad_events),
        "smart_format": flag(settings.smart_format),
        "punctuate": flag(settings.punctuate),
        "language": language or settings.language,
    }
    if settings.utterance_end_ms is not None:
        query["utterance_end_ms"] = str(settings.utterance_end_ms)
    return URL(settings.base_url.rstrip("/") + LISTEN_PATH).with_query(query)


def auth_headers(settings: DeepgramSttSettings) -> dict[str, str]:
    return {"Authorization": f"Token {settings.api_key}"}


# --------------------------------------------------------------- server messages


class DgWord(msgspec.Struct, frozen=True):
    word: str
    start: float
    """Seconds of audio received on this socket."""
    end: float
    confidence: float | None = None
    punctuated_word: str | None = None


class DgAlternative(msgspec.Struct, frozen=True):
    transcript: str
    confidence: float | None = None
    words: list[DgWord] = []


class DgChannel(msgspec.Struct, frozen=True):
    alternatives: Annotated[list[DgAlternative], msgspec.Meta(min_length=1)]


class DgResults(msgspec.Struct, frozen=True, tag="Results", tag_field="type"):
    channel: DgChannel
    start: float = 0.0
    duration: float = 0.0
    is_final: bool = False
    speech_final: bool = False
    from_finalize: bool = False
    channel_index: list[int] = []


class DgSpeechStarted(msgspec.Struct, frozen=True, tag="SpeechStarted", tag_field="type"):
    timestamp: float
    channel: list[int] = []


class DgUtteranceEnd(msgspec.Struct, frozen=True, tag="UtteranceEnd", tag_field="type"):
    last_word_end: float
    channel: list[int] = []


class DgMetadata(msgspec.Struct, frozen=True, tag="Metadata", tag_field="type"):
    request_id: str = ""
    duration: float = 0.0
    channels: int = 0


DeepgramMessage: TypeAlias = DgResults | DgSpeechStarted | DgUtteranceEnd | DgMetadata


class _TypeOnly(msgspec.Struct, frozen=True):
    type: str


_decoder: Final[msgspec.json.Decoder[DeepgramMessage]] = msgspec.json.Decoder(DeepgramMessage)
_type_decoder: Final = msgspec.json.Decoder(_TypeOnly)
_KNOWN_TYPES: Final = frozenset({"Results", "SpeechStarted", "UtteranceEnd", "Metadata"})


def decode_message(data: str | bytes) -> DeepgramMessage | None:
    """One server text frame; ``None`` for a well-formed message of an unknown type.

    Raises :class:`ProviderProtocolError` for anything else.
    """
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        try:
            kind = _type_decoder.decode(data).type
        except msgspec.DecodeError:
            kind = None
        if kind is not None and kind not in _KNOWN_TYPES:
            return None
        raise ProviderProtocolError(PROVIDER, f"malformed message: {exc}") from None


# --------------------------------------------------------------- client messages


class _KeepAlive(msgspec.Struct, frozen=True, tag="KeepAlive", tag_field="type"):
    pass


class _Finalize(msgspec.Struct, frozen=True, tag="Finalize", tag_field="type"):
    pass


class _CloseStream(msgspec.Struct, frozen=True, tag="CloseStream", tag_field="type"):
    pass


KEEPALIVE: Final = msgspec.json.encode(_KeepAlive()).decode()
FINALIZE: Final = msgspec.json.encode(_Finalize()).decode()
CLOSE_STREAM: Final = msgspec.json.encode(_CloseStream()).decode()


# ------------------------------------------------------------------------ mapping


class DeepgramEventMapper:
    """Turns Deepgram messages into :class:`SttEvent`; holds the turn's FINAL texts."""

    def __init__(self) -> None:
        self.timeline = Timeline(0.0)
        self._turn_texts: list[str] = []
        self._turn_words: list[Word] = []

    def events_for(self, message: DeepgramMessage, received_ns: int) -> list[SttEvent]:
        if isinstance(message, DgResults):
            return self._results(message, received_ns)
        if isinstance(message, DgSpeechStarted):
            at_ms = self._ms(message.timestamp)
            return [SttEvent(SttEventKind.SPEECH_STARTED, received_ns, audio_end_ms=at_ms)]
        if isinstance(message, DgUtteranceEnd):
            return self._end_of_turn(received_ns, self._ms(message.last_word_end))
        return []

    def _ms(self, seconds: float) -> float:
        return self.timeline.to_stream_ms(seconds * 1000.0)

    def _results(self, message: DgResults, received_ns: int) -> list[SttEvent]:
        best = message.channel.alternatives[0]
        end_ms = self._ms(message.start + message.duration)
        out: list[SttEvent] = []
        text = best.transcript.strip()
        if text:
            words = tuple(
                Word(w.punctuated_word or w.word, self._ms(w.start), self._ms(w.end), w.confidence)
                for w in best.words
            )
            kind = SttEventKind.FINAL if message.is_final else SttEventKind.INTERIM
            out.append(SttEvent(kind, received_ns, text, words, best.confidence, end_ms))
            if message.is_final:
                self._turn_texts.append(text)
                self._turn_words.extend(words)
        if message.speech_final:
            out.extend(self._end_of_turn(received_ns, end_ms))
        return out

    def _end_of_turn(self, received_ns: int, end_ms: float) -> list[SttEvent]:
        if not self._turn_texts:
            return []
        event = SttEvent(
            SttEventKind.END_OF_TURN,
            received_ns,
            " ".join(self._turn_texts),
            tuple(self._turn_words),
            audio_end_ms=end_ms,
        )
        self._turn_texts.clear()
        self._turn_words.clear()
        return [event]


def error_for_close(code: int | None, reason: str) -> ProviderError:
    """The typed error for a close frame the client did not ask for."""
    detail = f"socket closed with {code} {reason}".rstrip()
    if code == CLOSE_DATA_ERROR:
        error = ProviderError(PROVIDER, f"audio not accepted: {detail}")
        error.retryable = False
        return error
    return ConnectionLostError(PROVIDER, detail)


# ------------------------------------------------------------------------- stream

_END: Final = object()


class DeepgramSttStream:
    """One live transcription: push 16 kHz PCM, read :class:`SttEvent` from :meth:`events`.

    Create with :meth:`DeepgramStt.open_stream`.  One consumer reads :meth:`events`.
    """

    def __init__(
        self,
        settings: DeepgramSttSettings,
        session: aiohttp.ClientSession,
        url: URL,
        ws: aiohttp.ClientWebSocketResponse,
        backoff: Backoff | None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._url = url
        self._ws = ws
        self._backoff = backoff
        self._mapper = DeepgramEventMapper()
        self._events: asyncio.Queue[SttEvent | ProviderError | object] = asyncio.Queue()
        self._outbox: collections.deque[bytes | str] = collections.deque()
        self._wake = asyncio.Event()
        self._connected = True
        self._closing = False
        self._failure: ProviderError | None = None
        self._pushed_bytes = 0
        self._conn_bytes = 0
        self._unsent_bytes = 0
        self._dropped_bytes = 0
        self._max_unsent_bytes = settings.max_unsent_ms * BYTES_PER_MS
        self._sent_since_receipt_bytes = 0
        self._last_receipt_ns = time.monotonic_ns()
        self._connected_ns = self._last_receipt_ns
        self._reconnects = 0
        self.request_id: str | None = None
        """Deepgram's id of the current socket's request (from its Metadata)."""
        self._runner = asyncio.create_task(self._run(), name="deepgram-stt")

    # ------------------------------------------------------------------ public

    @property
    def dropped_ms(self) -> int:
        """Audio (ms) pushed but never sent: buffer overflow and reconnect gaps."""
        return self._dropped_bytes // BYTES_PER_MS

    @property
    def reconnects(self) -> int:
        return self._reconnects

    def push_audio(self, pcm: bytes) -> None:
        """Queue 16 kHz mono int16 PCM (whole 20 ms frames); never blocks.

        Audio is dropped (and counted) while the socket is down or when more
        than ``max_unsent_ms`` would be waiting; ignored after :meth:`close`.
        """
        if len(pcm) % FRAME_BYTES:
            raise ValueError(f"push_audio takes whole 20 ms frames ({FRAME_BYTES} bytes each)")
        if not pcm or self._closing:
            return
        self._pushed_bytes += len(pcm)
        if not self._connected or self._unsent_bytes + len(pcm) > self._max_unsent_bytes:
            if self._connected:
                if not self._dropped_bytes:
                    _log.warning("deepgram: send buffer full, dropping audio")
                self._mapper.timeline.skip(self._conn_bytes / BYTES_PER_MS, len(pcm) / BYTES_PER_MS)
            self._dropped_bytes += len(pcm)
            return
        self._conn_bytes += len(pcm)
        self._unsent_bytes += len(pcm)
        self._outbox.append(bytes(pcm))
        self._wake.set()

    async def flush(self) -> None:
        """Send Finalize after the audio queued so far: finals for it come at once."""
        if self._failure is not None:
            raise self._failure
        if self._closing or not self._connected:
            return
        self._outbox.append(FINALIZE)
        self._wake.set()

    async def close(self) -> None:
        """Send CloseStream after the queued audio, wait (``close_timeout_ms``) for the
        last results and the server's close, then release everything.  Idempotent."""
        if not self._closing:
            self._closing = True
            self._outbox.append(CLOSE_STREAM)
            self._wake.set()
        try:
            done, _ = await asyncio.wait(
                {self._runner}, timeout=self._settings.close_timeout_ms / 1000
            )
        except asyncio.CancelledError:
            await self.abort()
            raise
        if not done:
            await self._stop(ProviderTimeoutError(PROVIDER, "no close after CloseStream"))

    async def abort(self) -> None:
        """Drop the socket at once without waiting for results.  Idempotent."""
        self._closing = True
        await self._stop(None)

    async def events(self) -> AsyncIterator[SttEvent]:
        """Events in arrival order; ends after :meth:`close`, raises :class:`ProviderError`."""
        while True:
            item = await self._events.get()
            if isinstance(item, SttEvent):
                yield item
                continue
            self._events.put_nowait(item)  # later readers see the same ending
            if isinstance(item, ProviderError):
                raise item
            return

    # ---------------------------------------------------------------- internals

    async def _stop(self, error: ProviderError | None) -> None:
        if not self._runner.done():
            self._runner.cancel()
            await asyncio.wait({self._runner})
            self._finish(error)

    def _finish(self, error: ProviderError | None) -> None:
        if self._failure is None and error is not None:
            self._failure = error
        self._events.put_nowait(error if error is not None else _END)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._serve()
                    self._finish(None)
                    return
                except (ConnectionLostError, ProviderTimeoutError) as exc:
                    if self._closing or self._backoff is None:
                        raise
                    await self._reconnect(exc)
        except ProviderError as exc:
            self._finish(exc)
        except Exception as exc:
            _log.exception("deepgram: stream failed")
            self._finish(error_for_exception(PROVIDER, exc))
        finally:
            self._connected = False
            await self._ws.close()

    async def _reconnect(self, error: ProviderError) -> None:
        assert self._backoff is not None
        self._connected = False
        up_ns = time.monotonic_ns() - self._connected_ns
        if up_ns >= self._settings.reconnect_reset_ms * 1_000_000:
            self._backoff.reset()
        self._outbox.clear()
        self._dropped_bytes += self._unsent_bytes
        self._unsent_bytes = 0
        await self._ws.close()
        while True:
            delay_s = self._backoff.next_delay_s(error)
            if delay_s is None:
                raise error
            _log.warning("deepgram: %s; reconnecting in %.2f s", error, delay_s)
            await asyncio.sleep(delay_s)
            try:
                self._ws = await connect(self._session, self._settings, self._url)
            except ProviderError as exc:
                error = exc
                continue
            break
        self._connected_ns = time.monotonic_ns()
        self._reconnects += 1
        self._mapper.timeline = Timeline(self._pushed_bytes / BYTES_PER_MS)
        self._conn_bytes = 0
        self._sent_since_receipt_bytes = 0
        self._last_receipt_ns = time.monotonic_ns()
        self._connected = True

    async def _serve(self) -> None:
        sender = asyncio.create_task(self._send_loop(self._ws), name="deepgram-stt-send")
        try:
            await self._receive_loop(self._ws)
        finally:
            sender.cancel()
            await asyncio.wait({sender})

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        max_chunk = self._settings.max_chunk_ms * BYTES_PER_MS
        keepalive_s = (
            None
            if self._settings.keepalive_interval_ms is None
            else self._settings.keepalive_interval_ms / 1000
        )
        try:
            while True:
                while self._outbox:
                    item = self._outbox.popleft()
                    if isinstance(item, str):
                        await ws.send_str(item)
                        if item == CLOSE_STREAM:
                            return
                        continue
                    chunk = [item]
                    size = len(item)
                    while (
                        self._outbox
                        and isinstance(self._outbox[0], bytes)
                        and size + len(self._outbox[0]) <= max_chunk
                    ):
                        nxt = self._outbox.popleft()
                        assert isinstance(nxt, bytes)
                        chunk.append(nxt)
                        size += len(nxt)
                    self._unsent_bytes -= size
                    self._sent_since_receipt_bytes += size
                    await ws.send_bytes(b"".join(chunk))
                self._wake.clear()
                try:
                    async with asyncio.timeout(keepalive_s):
                        await self._wake.wait()
                except TimeoutError:
                    await ws.send_str(KEEPALIVE)
        except (ConnectionError, aiohttp.ClientError) as exc:
            # The receive loop sees the broken socket and reports it.
            _log.debug("deepgram: send failed: %s", exc)

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        timeout_ns = self._settings.receive_timeout_ms * 1_000_000
        stall_bytes = self._settings.receive_timeout_ms * BYTES_PER_MS
        poll_s = self._settings.receive_timeout_ms / 4000
        while True:
            try:
                msg = await ws.receive(timeout=poll_s)
            except TimeoutError:
                waited_ns = time.monotonic_ns() - self._last_receipt_ns
                if waited_ns >= timeout_ns and self._sent_since_receipt_bytes >= stall_bytes:
                    raise ProviderTimeoutError(PROVIDER, "no results while audio flowed") from None
                continue
            received_ns = time.monotonic_ns()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._last_receipt_ns = received_ns
                self._sent_since_receipt_bytes = 0
                message = decode_message(msg.data)
                if isinstance(message, DgMetadata):
                    self.request_id = message.request_id or self.request_id
                elif message is not None:
                    for event in self._mapper.events_for(message, received_ns):
                        self._events.put_nowait(event)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                raise ProviderProtocolError(PROVIDER, "unexpected binary frame")
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                if self._closing and msg.data == CLOSE_NORMAL:
                    return
                raise error_for_close(msg.data, str(msg.extra or ""))
            else:
                raise ConnectionLostError(PROVIDER, f"connection lost ({msg.type.name})")


# ----------------------------------------------------------------------- provider


async def connect(
    session: aiohttp.ClientSession, settings: DeepgramSttSettings, url: URL
) -> aiohttp.ClientWebSocketResponse:
    """Open the socket; raises the typed :class:`ProviderError` of a refusal."""
    try:
        async with asyncio.timeout(settings.connect_timeout_ms / 1000):
            return await session.ws_connect(
                url,
                headers=auth_headers(settings),
                timeout=aiohttp.ClientWSTimeout(ws_close=settings.close_timeout_ms / 1000),
                autoping=True,
            )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise error_for_exception(PROVIDER, exc) from exc


class DeepgramStt:
    """The Deepgram STT provider; uses ``session`` or owns one (closed by :meth:`aclose`)."""

    name = PROVIDER

    def __init__(
        self, settings: DeepgramSttSettings, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None

    async def open_stream(self, *, language: str | None = None) -> DeepgramSttStream:
        """Connect (one attempt) and start a stream taking 16 kHz PCM; raises ProviderError."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = listen_url(self.settings, language)
        ws = await connect(self._session, self.settings, url)
        backoff = None
        if self.settings.reconnect_attempts:
            backoff = Backoff(
                self.settings.reconnect_base_ms / 1000,
                self.settings.reconnect_max_ms / 1000,
                self.settings.reconnect_attempts,
            )
        return DeepgramSttStream(self.settings, self._session, url, ws, backoff)

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


if TYPE_CHECKING:  # both classes satisfy the interfaces of server.providers.base

    def _conforms(
        provider: DeepgramStt, stream: DeepgramSttStream
    ) -> tuple[SttProvider, SttStream]:
        return provider, stream
