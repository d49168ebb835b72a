"""AssemblyAI Universal-Streaming v3 speech-to-text (``/v3/ws``): the whole wire protocol.

One WebSocket per :class:`AssemblyAiStream`:

* Handshake: ``GET {base_url}/v3/ws?sample_rate=16000&encoding=pcm_s16le
  &speech_model=…&format_turns=…&end_of_turn_confidence_threshold=…
  &min_end_of_turn_silence_when_confident=…&max_turn_silence=…`` with
  ``Authorization: <api key>`` (the raw key, no scheme).  The session is open
  once the server's ``Begin`` arrives.
* Client to server: binary frames of raw pcm_s16le, each 50-1000 ms (the stream
  batches pushed 20 ms frames into ``chunk_ms`` messages and pads a short last
  piece with silence to 50 ms before a control message), and text frames
  ``{"type":"ForceEndpoint"}`` (flush), ``{"type":"Terminate"}`` (close: the
  server ends open turns, sends ``Termination`` and closes with 1000),
  ``{"type":"UpdateConfiguration",…}`` and ``{"type":"KeepAlive"}`` (only
  useful with ``inactivity_timeout``).
* Server to client: JSON text frames, one of :data:`AssemblyAiMessage`
  (``Begin``, ``Turn``, ``SpeechStarted``, ``Termination``, ``Error``,
  ``Warning``; other types are ignored).  An error is an ``Error`` frame whose
  ``error_code`` is also the close code: 1008 unauthorized (or too many
  sessions), 3005 server error, 3006 invalid message, 3007 chunk duration or
  rate violation, 3008 session expired, 3009 too many concurrent sessions.
  Word times are ms of audio received in the session.

Mapping to :class:`SttEvent` (see :class:`AssemblyAiEventMapper`); words are
immutable once ``word_is_final``:

* newly final words of a ``Turn``: FINAL with those words (the turn's text is
  the concatenation of its FINAL texts);
* the words not yet final: INTERIM (the tail that may still change);
* ``end_of_turn``: END_OF_TURN with the turn's transcript and words, and
  ``confidence`` set to ``end_of_turn_confidence``.  With ``format_turns`` the
  formatted duplicate of an ended turn (same ``turn_order``) yields nothing;
* ``SpeechStarted``: SPEECH_STARTED.

Reconnects: if the socket drops or stalls mid-stream (no message for
``receive_timeout_ms`` during an open turn while that much audio went out), the
stream reconnects with :class:`Backoff` into a new session and events continue.
Audio pushed while the connection is down, and audio queued but unsent when it
dropped, is lost (counted in :attr:`AssemblyAiStream.dropped_ms`), and so is a
turn that was open; event times stay on the stream's clock.  The send buffer
holds at most ``max_unsent_ms``; newer audio beyond that is dropped and counted.
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
    AuthError,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    RateLimitedError,
    SttEvent,
    SttEventKind,
    SttProvider,
    SttStream,
    Word,
)
from server.providers.connect import Backoff, error_for_exception
from server.providers.timeline import Timeline

PROVIDER: Final = "assemblyai"
WS_PATH: Final = "/v3/ws"
FRAME_BYTES: Final = STT_RATE_HZ * 2 * 20 // 1000
"""One 20 ms frame of 16 kHz int16 PCM (640 bytes)."""
BYTES_PER_MS: Final = STT_RATE_HZ * 2 // 1000
MIN_CHUNK_MS: Final = 50
MAX_CHUNK_MS: Final = 1000
CLOSE_NORMAL: Final = 1000

_log = logging.getLogger(__name__)

NonNegativeInt: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
PositiveMs: TypeAlias = Annotated[int, msgspec.Meta(gt=0)]
UnitFloat: TypeAlias = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


# ------------------------------------------------------------------------- settings


class AssemblyAiSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.assemblyai]``: credentials, session options and client timing (ms)."""

    api_key: str
    base_url: str = "wss://streaming.assemblyai.com"
    """Scheme and host (EU: ``wss://streaming.eu.assemblyai.com``); ``/v3/ws`` is appended."""
    model: str = "universal-streaming-english"
    """The ``speech_model`` query value."""
    format_turns: bool = False
    """Also ask for a formatted copy of each ended turn (costs latency; no extra events)."""
    end_of_turn_confidence_threshold: UnitFloat = 0.4
    min_end_of_turn_silence_when_confident_ms: NonNegativeInt = 400
    max_turn_silence_ms: NonNegativeInt = 1280
    inactivity_timeout_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] | None = None
    """The server ends a session without audio for this long; ``None`` omits it."""
    keepalive_interval_ms: PositiveMs | None = None
    """Send KeepAlive after this long without audio (with ``inactivity_timeout_s``)."""
    chunk_ms: Annotated[int, msgspec.Meta(ge=MIN_CHUNK_MS, le=MAX_CHUNK_MS)] = 100
    """Audio per binary message (the service takes 50-1000 ms)."""
    max_unsent_ms: PositiveMs = 5000
    """Audio waiting to be sent beyond this is dropped (and counted)."""
    connect_timeout_ms: PositiveMs = 5000
    """Deadline for the handshake and the ``Begin`` message."""
    receive_timeout_ms: PositiveMs = 5000
    """Stall deadline: no message for this long during a turn while this much audio went out."""
    close_timeout_ms: PositiveMs = 3000
    """How long :meth:`AssemblyAiStream.close` waits for the last turns and Termination."""
    reconnect_attempts: NonNegativeInt = 5
    """Reconnects tried after drops (0: none), counted until a connection stays up
    for ``reconnect_reset_ms``."""
    reconnect_base_ms: PositiveMs = 100
    reconnect_max_ms: PositiveMs = 5000
    reconnect_reset_ms: PositiveMs = 30000

    def __post_init__(self) -> None:
        if self.reconnect_max_ms < self.reconnect_base_ms:
            raise ValueError("reconnect_max_ms must be >= reconnect_base_ms")


def stream_url(settings: AssemblyAiSettings, language: str | None = None) -> URL:
    """The ``/v3/ws`` URL for 16 kHz pcm_s16le with the session options.

    A language other than English needs a multilingual model; it then turns on
    ``language_detection``.
    """
    query = {
        "sample_rate": str(STT_RATE_HZ),
        "encoding": "pcm_s16le",
        "speech_model": settings.model,
        "format_turns": "true" if settings.format_turns else "false",
        "end_of_turn_confidence_threshold": str(settings.end_of_turn_confidence_threshold),
        "min_end_of_turn_silence_when_confident": str(
            settings.min_end_of_turn_silence_when_confident_ms
        ),
        "max_turn_silence": str(settings.max_turn_silence_ms),
    }
    if settings.inactivity_timeout_s is not None:
        query["inactivity_timeout"] = str(settings.inactivity_timeout_s)
    if language is not None and not language.lower().startswith("en"):
        if "multilingual" not in settings.model:
            error = ProviderError(PROVIDER, f"model {settings.model} transcribes English only")
            error.retryable = False
            raise error
        query["language_detection"] = "true"
    return URL(settings.base_url.rstrip("/") + WS_PATH).with_query(query)


def auth_headers(settings: AssemblyAiSettings) -> dict[str, str]:
    return {"Authorization": settings.api_key}


# --------------------------------------------------------------- server messages


class AaiWord(msgspec.Struct, frozen=True):
    text: str
    start: float
    """ms of audio received in the session."""
    end: float
    word_is_final: bool
    confidence: float | None = None


class AaiBegin(msgspec.Struct, frozen=True, tag="Begin", tag_field="type"):
    id: str
    expires_at: float | str | None = None


class AaiTurn(msgspec.Struct, frozen=True, tag="Turn", tag_field="type"):
    turn_order: Annotated[int, msgspec.Meta(ge=0)]
    end_of_turn: bool
    transcript: str = ""
    turn_is_formatted: bool = False
    end_of_turn_confidence: float | None = None
    words: list[AaiWord] = []


class AaiSpeechStarted(msgspec.Struct, frozen=True, tag="SpeechStarted", tag_field="type"):
    timestamp: float


class AaiTermination(msgspec.Struct, frozen=True, tag="Termination", tag_field="type"):
    audio_duration_seconds: float | None = None
    session_duration_seconds: float | None = None


class AaiError(msgspec.Struct, frozen=True, tag="Error", tag_field="type"):
    error: str = ""
    error_code: int | None = None


class AaiWarning(msgspec.Struct, frozen=True, tag="Warning", tag_field="type"):
    warning: str = ""
    warning_code: int | None = None


AssemblyAiMessage: TypeAlias = (
    AaiBegin | AaiTurn | AaiSpeechStarted | AaiTermination | AaiError | AaiWarning
)


class _Untyped(msgspec.Struct, frozen=True):
    type: str | None = None
    error: str | None = None
    error_code: int | None = None


_decoder: Final[msgspec.json.Decoder[AssemblyAiMessage]] = msgspec.json.Decoder(AssemblyAiMessage)
_untyped_decoder: Final = msgspec.json.Decoder(_Untyped)
_KNOWN_TYPES: Final = frozenset(
    {"Begin", "Turn", "SpeechStarted", "Termination", "Error", "Warning"}
)


def decode_message(data: str | bytes) -> AssemblyAiMessage | None:
    """One server text frame; ``None`` for a well-formed message of an unknown type.

    A bare ``{"error": …}`` (no ``type``) is read as an :class:`AaiError`.
    Raises :class:`ProviderProtocolError` for anything else.
    """
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        try:
            untyped = _untyped_decoder.decode(data)
        except msgspec.DecodeError:
            untyped = None
        if untyped is not None:
            if untyped.type is None and untyped.error is not None:
                return AaiError(untyped.error, untyped.error_code)
            if untyped.type is not None and untyped.type not in _KNOWN_TYPES:
                return None
        raise ProviderProtocolError(PROVIDER, f"malformed message: {exc}") from None


def error_for_code(code: int | None, text: str) -> ProviderError:
    """The typed error for an ``Error`` frame or an unrequested close code."""
    detail = f"{code} {text}".strip()
    if code in (1008, 4001, 4002, 4003):
        if "concurrent" in text.lower():
            return RateLimitedError(PROVIDER, detail, status=None, retry_after_s=None)
        return AuthError(PROVIDER, detail)
    if code in (3009, 4029, 4102):
        return RateLimitedError(PROVIDER, detail, status=None, retry_after_s=None)
    if code in (3006, 3007, 4000, 4032, 4033, 4034, 4100, 4101):
        error = ProviderError(PROVIDER, f"request refused: {detail}")
        error.retryable = False
        return error
    return ConnectionLostError(PROVIDER, f"session ended: {detail}")


# --------------------------------------------------------------- client messages


class _ForceEndpoint(msgspec.Struct, frozen=True, tag="ForceEndpoint", tag_field="type"):
    pass


class _Terminate(msgspec.Struct, frozen=True, tag="Terminate", tag_field="type"):
    pass


class _KeepAlive(msgspec.Struct, frozen=True, tag="KeepAlive", tag_field="type"):
    pass


class UpdateConfiguration(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    tag="UpdateConfiguration",
    tag_field="type",
):
    """Change end-of-turn detection mid-session (``None`` fields are left as they are)."""

    end_of_turn_confidence_threshold: float | None = None
    min_end_of_turn_silence_when_confident: int | None = None
    max_turn_silence: int | None = None


FORCE_ENDPOINT: Final = msgspec.json.encode(_ForceEndpoint()).decode()
TERMINATE: Final = msgspec.json.encode(_Terminate()).decode()
KEEPALIVE: Final = msgspec.json.encode(_KeepAlive()).decode()


# ------------------------------------------------------------------------ mapping


class AssemblyAiEventMapper:
    """Turns one session's messages into :class:`SttEvent`; remembers which words of
    the open turn were already reported final and which turns have ended."""

    def __init__(self, timeline: Timeline | None = None) -> None:
        self.timeline = timeline or Timeline(0.0)
        self.turn_open = False
        """A turn has begun and not ended (the stall deadline applies)."""
        self._turn_order = -1
        self._reported_final = 0
        self._last_ended = -1

    def events_for(self, message: AssemblyAiMessage, received_ns: int) -> list[SttEvent]:
        if isinstance(message, AaiTurn):
            return self._turn(message, received_ns)
        if isinstance(message, AaiSpeechStarted):
            self.turn_open = True
            at_ms = self.timeline.to_stream_ms(message.timestamp)
            return [SttEvent(SttEventKind.SPEECH_STARTED, received_ns, audio_end_ms=at_ms)]
        return []

    def _words(self, words: list[AaiWord]) -> tuple[Word, ...]:
        ms = self.timeline.to_stream_ms
        return tuple(Word(w.text, ms(w.start), ms(w.end), w.confidence) for w in words)

    def _turn(self, turn: AaiTurn, received_ns: int) -> list[SttEvent]:
        if turn.turn_order <= self._last_ended:
            return []  # the formatted copy of an ended turn, or a late duplicate
        if turn.turn_order != self._turn_order:
            self._turn_order = turn.turn_order
            self._reported_final = 0
        self.turn_open = not turn.end_of_turn
        words = turn.words
        n_final = len(words)
        if not turn.end_of_turn:
            n_final = next((i for i, w in enumerate(words) if not w.word_is_final), len(words))
        out: list[SttEvent] = []
        if n_final > self._reported_final:
            new = self._words(words[self._reported_final : n_final])
            text = " ".join(w.text for w in new)
            out.append(SttEvent(SttEventKind.FINAL, received_ns, text, new, None, new[-1].end_ms))
            self._reported_final = n_final
        if not turn.end_of_turn:
            tail = self._words(words[n_final:])
            if tail:
                text = " ".join(w.text for w in tail)
                out.append(
                    SttEvent(SttEventKind.INTERIM, received_ns, text, tail, None, tail[-1].end_ms)
                )
            return out
        self._last_ended = turn.turn_order
        all_words = self._words(words)
        text = turn.transcript.strip() or " ".join(w.text for w in all_words)
        if text:
            out.append(
                SttEvent(
                    SttEventKind.END_OF_TURN,
                    received_ns,
                    text,
                    all_words,
                    turn.end_of_turn_confidence,
                    all_words[-1].end_ms if all_words else None,
                )
            )
        return out


# ------------------------------------------------------------------------- stream

_END: Final = object()


class AssemblyAiStream:
    """One streaming session: push 16 kHz PCM, read :class:`SttEvent` from :meth:`events`.

    Create with :meth:`AssemblyAi.open_stream`.  One consumer reads :meth:`events`.
    """

    def __init__(
        self,
        settings: AssemblyAiSettings,
        session: aiohttp.ClientSession,
        url: URL,
        opened: tuple[aiohttp.ClientWebSocketResponse, AaiBegin],
        backoff: Backoff | None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._url = url
        self._ws, begin = opened
        self.session_id: str = begin.id
        """The current session's id (from ``Begin``; a reconnect starts a new one)."""
        self._backoff = backoff
        self._mapper = AssemblyAiEventMapper()
        self._events: asyncio.Queue[SttEvent | ProviderError | object] = asyncio.Queue()
        self._outbox: collections.deque[bytes | str] = collections.deque()
        self._wake = asyncio.Event()
        self._connected = True
        self._closing = False
        self._failure: ProviderError | None = None
        self._chunk_bytes = settings.chunk_ms * BYTES_PER_MS
        self._max_unsent_bytes = settings.max_unsent_ms * BYTES_PER_MS
        self._pushed_bytes = 0
        self._conn_bytes = 0
        self._unsent_bytes = 0
        self._dropped_bytes = 0
        self._open_chunk_bytes = 0
        self._sent_since_receipt_bytes = 0
        self._last_receipt_ns = time.monotonic_ns()
        self._connected_ns = self._last_receipt_ns
        self._reconnects = 0
        self._runner = asyncio.create_task(self._run(), name="assemblyai-stt")

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
                    _log.warning("assemblyai: send buffer full, dropping audio")
                self._mapper.timeline.skip(self._conn_bytes / BYTES_PER_MS, len(pcm) / BYTES_PER_MS)
            self._dropped_bytes += len(pcm)
            return
        self._queue_audio(bytes(pcm))

    async def flush(self) -> None:
        """Send ForceEndpoint after the audio queued so far: the open turn ends now."""
        self._queue_control(FORCE_ENDPOINT)

    async def update_configuration(self, update: UpdateConfiguration) -> None:
        """Change end-of-turn detection for the rest of the session."""
        self._queue_control(msgspec.json.encode(update).decode())

    async def close(self) -> None:
        """Send Terminate after the queued audio, wait (``close_timeout_ms``) for the
        last turns, Termination and the server's close, then release everything.
        Idempotent."""
        if not self._closing:
            self._queue_control(TERMINATE, force=True)
            self._closing = True
        try:
            timeout_s = self._settings.close_timeout_ms / 1000
            done, _ = await asyncio.wait({self._runner}, timeout=timeout_s)
        except asyncio.CancelledError:
            await self.abort()
            raise
        if not done:
            await self._stop(ProviderTimeoutError(PROVIDER, "no Termination after Terminate"))

    async def abort(self) -> None:
        """Drop the socket at once without waiting for the last turns.  Idempotent."""
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

    def _queue_audio(self, pcm: bytes) -> None:
        self._conn_bytes += len(pcm)
        self._unsent_bytes += len(pcm)
        self._open_chunk_bytes = (self._open_chunk_bytes + len(pcm)) % self._chunk_bytes
        self._outbox.append(pcm)
        self._wake.set()

    def _queue_control(self, message: str, *, force: bool = False) -> None:
        """Queue a text frame after the audio so far, padding the last piece to 50 ms."""
        if self._failure is not None and not force:
            raise self._failure
        if self._closing or not self._connected:
            return
        short = self._open_chunk_bytes
        if 0 < short < MIN_CHUNK_MS * BYTES_PER_MS:
            pad = MIN_CHUNK_MS * BYTES_PER_MS - short
            self._queue_audio(bytes(pad))
            self._mapper.timeline.skip(self._conn_bytes / BYTES_PER_MS, -pad / BYTES_PER_MS)
        self._open_chunk_bytes = 0
        self._outbox.append(message)
        self._wake.set()

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
            _log.exception("assemblyai: stream failed")
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
            _log.warning("assemblyai: %s; reconnecting in %.2f s", error, delay_s)
            await asyncio.sleep(delay_s)
            try:
                self._ws, begin = await connect(self._session, self._settings, self._url)
            except ProviderError as exc:
                error = exc
                continue
            break
        self.session_id = begin.id
        self._connected_ns = time.monotonic_ns()
        self._reconnects += 1
        self._mapper = AssemblyAiEventMapper(Timeline(self._pushed_bytes / BYTES_PER_MS))
        self._conn_bytes = 0
        self._open_chunk_bytes = 0
        self._sent_since_receipt_bytes = 0
        self._last_receipt_ns = time.monotonic_ns()
        self._connected = True

    async def _serve(self) -> None:
        sender = asyncio.create_task(self._send_loop(self._ws), name="assemblyai-stt-send")
        try:
            await self._receive_loop(self._ws)
        finally:
            sender.cancel()
            await asyncio.wait({sender})

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        keepalive_s = (
            None
            if self._settings.keepalive_interval_ms is None
            else self._settings.keepalive_interval_ms / 1000
        )
        pending = bytearray()
        try:
            while True:
                while self._outbox:
                    item = self._outbox.popleft()
                    if isinstance(item, bytes):
                        pending += item
                        while len(pending) >= self._chunk_bytes:
                            await self._send_audio(ws, bytes(pending[: self._chunk_bytes]))
                            del pending[: self._chunk_bytes]
                        continue
                    if pending:  # padded to >= 50 ms when the control was queued
                        await self._send_audio(ws, bytes(pending))
                        pending.clear()
                    await ws.send_str(item)
                    if item == TERMINATE:
                        return
                self._wake.clear()
                try:
                    async with asyncio.timeout(keepalive_s):
                        await self._wake.wait()
                except TimeoutError:
                    await ws.send_str(KEEPALIVE)
        except (ConnectionError, aiohttp.ClientError) as exc:
            # The receive loop sees the broken socket and reports it.
            _log.debug("assemblyai: send failed: %s", exc)

    async def _send_audio(self, ws: aiohttp.ClientWebSocketResponse, chunk: bytes) -> None:
        self._unsent_bytes -= len(chunk)
        self._sent_since_receipt_bytes += len(chunk)
        await ws.send_bytes(chunk)

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        timeout_ns = self._settings.receive_timeout_ms * 1_000_000
        stall_bytes = self._settings.receive_timeout_ms * BYTES_PER_MS
        poll_s = self._settings.receive_timeout_ms / 4000
        while True:
            try:
                msg = await ws.receive(timeout=poll_s)
            except TimeoutError:
                waited_ns = time.monotonic_ns() - self._last_receipt_ns
                if (
                    self._mapper.turn_open
                    and waited_ns >= timeout_ns
                    and self._sent_since_receipt_bytes >= stall_bytes
                ):
                    raise ProviderTimeoutError(
                        PROVIDER, "no turn update while audio flowed"
                    ) from None
                continue
            received_ns = time.monotonic_ns()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._last_receipt_ns = received_ns
                self._sent_since_receipt_bytes = 0
                message = decode_message(msg.data)
                if isinstance(message, AaiError):
                    raise error_for_code(message.error_code, message.error)
                if isinstance(message, AaiWarning):
                    _log.warning("assemblyai: warning %s %s", message.warning_code, message.warning)
                elif isinstance(message, AaiBegin):
                    raise ProviderProtocolError(PROVIDER, "second Begin in a session")
                elif message is not None:
                    for event in self._mapper.events_for(message, received_ns):
                        self._events.put_nowait(event)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                raise ProviderProtocolError(PROVIDER, "unexpected binary frame")
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                if self._closing and msg.data == CLOSE_NORMAL:
                    return
                raise error_for_code(msg.data, str(msg.extra or ""))
            else:
                raise ConnectionLostError(PROVIDER, f"connection lost ({msg.type.name})")


# ----------------------------------------------------------------------- provider


async def connect(
    session: aiohttp.ClientSession, settings: AssemblyAiSettings, url: URL
) -> tuple[aiohttp.ClientWebSocketResponse, AaiBegin]:
    """Open a session: the socket and its ``Begin``; raises the typed :class:`ProviderError`."""
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        async with asyncio.timeout(settings.connect_timeout_ms / 1000):
            ws = await session.ws_connect(
                url,
                headers=auth_headers(settings),
                timeout=aiohttp.ClientWSTimeout(ws_close=settings.close_timeout_ms / 1000),
                autoping=True,
            )
            msg = await ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            message = decode_message(msg.data)
            if isinstance(message, AaiBegin):
                return ws, message
            if isinstance(message, AaiError):
                raise error_for_code(message.error_code, message.error)
            raise ProviderProtocolError(PROVIDER, "the session did not start with Begin")
        if msg.type is aiohttp.WSMsgType.CLOSE:
            raise error_for_code(msg.data, str(msg.extra or ""))
        raise ConnectionLostError(PROVIDER, f"connection lost before Begin ({msg.type.name})")
    except BaseException as exc:
        if ws is not None:
            await ws.close()
        if isinstance(exc, (aiohttp.ClientError, OSError, TimeoutError)):
            raise error_for_exception(PROVIDER, exc) from exc
        raise


class AssemblyAi:
    """The AssemblyAI streaming STT provider; uses ``session`` or owns one (:meth:`aclose`)."""

    name = PROVIDER

    def __init__(
        self, settings: AssemblyAiSettings, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None

    async def open_stream(self, *, language: str | None = None) -> AssemblyAiStream:
        """Start a session (one attempt) taking 16 kHz PCM; raises ProviderError."""
        url = stream_url(self.settings, language)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        opened = await connect(self._session, self.settings, url)
        backoff = None
        if self.settings.reconnect_attempts:
            backoff = Backoff(
                self.settings.reconnect_base_ms / 1000,
                self.settings.reconnect_max_ms / 1000,
                self.settings.reconnect_attempts,
            )
        return AssemblyAiStream(self.settings, self._session, url, opened, backoff)

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


if TYPE_CHECKING:  # both classes satisfy the interfaces of server.providers.base

    def _conforms(provider: AssemblyAi, stream: AssemblyAiStream) -> tuple[SttProvider, SttStream]:
        return provider, stream
