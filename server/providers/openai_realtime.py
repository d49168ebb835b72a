"""OpenAI Realtime speech-to-speech over WebSocket (GA event names): the whole wire format.

Connection: ``wss://api.openai.com/v1/realtime?model=<model>`` with
``Authorization: Bearer <api_key>``.  Every frame is a JSON text frame with a
``type``; audio travels base64-encoded inside them as ``audio/pcm`` (mono
int16 little-endian at 24000 Hz, the only PCM rate the API takes).

Session set-up: the server opens with ``session.created``; we send one
``session.update`` (instructions, audio formats, voice, turn detection,
input transcription) and wait for ``session.updated``.

The engine owns turn-taking, so the server never answers or interrupts by
itself (``create_response`` and ``interrupt_response`` are off).  With
``server_vad`` it still reports ``input_audio_buffer.speech_started`` /
``speech_stopped`` and commits the caller's audio; with ``none`` nothing is
committed until :meth:`OpenAiRealtimeSession.respond`.

Client events: ``input_audio_buffer.append`` (pushed frames batched to
``append_batch_ms``), ``input_audio_buffer.commit``, ``response.create``
(tagged with our generation in ``response.metadata``), ``response.cancel``,
``conversation.item.truncate`` and ``conversation.item.delete``.

Server events mapped to :class:`~server.providers.base.S2sEvent`: speech
started/stopped, ``conversation.item.input_audio_transcription.completed``
(INPUT_TRANSCRIPT), ``response.output_audio.delta`` (AUDIO),
``response.output_audio_transcript.delta`` (TRANSCRIPT) and ``response.done``
(RESPONSE_DONE with its status).  ``response.created`` binds a response id to
the generation asked for; audio and transcript of a cancelled generation are
dropped here, even when the server sends some after ``response.cancel``.  An
``error`` answering our ``response.create`` ends that generation with status
``failed``; credential and rate-limit errors end the session.

There is no reconnect: a new socket starts an empty conversation, so a lost
connection ends the session with ConnectionLostError and the call decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Final, Literal, get_args

import aiohttp
import msgspec

from server.providers.base import (
    AuthError,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    RateLimitedError,
    S2sEvent,
    S2sEventKind,
)
from server.providers.connect import error_for_exception

log = logging.getLogger(__name__)

PROVIDER: Final = "openai_realtime"
"""Name in errors and in :attr:`OpenAiRealtimeProvider.name`."""

RATE_HZ: Final = 24000
"""Sample rate of ``audio/pcm`` in both directions."""

BYTES_PER_MS: Final = RATE_HZ * 2 // 1000
"""int16 mono at 24 kHz: 48 bytes per ms."""

MIN_COMMIT_MS: Final = 100
"""The server refuses to commit less buffered audio than this."""

GENERATION_KEY: Final = "voxgate_generation"
"""``response.metadata`` key carrying our generation id."""

MAX_TRACKED: Final = 64
"""Items (audio lengths) and cancelled generations remembered per session."""


class OpenAiRealtimeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.openai_realtime]``: endpoint, voice and turn detection."""

    api_key: str = ""
    base_url: str = "wss://api.openai.com/v1/realtime"
    model: str = "gpt-realtime"
    voice: str = "marin"
    """Fixed once the first audio reply has been produced."""
    turn_detection: Literal["server_vad", "none"] = "server_vad"
    """``server_vad``: the server reports speech and commits; ``none``: respond() commits."""
    vad_threshold: float = 0.5
    """Server VAD activation threshold, 0..1 (higher needs louder speech)."""
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    """Model transcribing the caller (INPUT_TRANSCRIPT events); ``None`` turns it off."""
    append_batch_ms: int = 40
    """Caller audio is sent in appends of at least this many ms (20 ms frames pushed)."""
    connect_timeout_s: float = 10.0
    """Deadline for the handshake up to ``session.updated`` (s)."""
    receive_timeout_s: float = 10.0
    """Longest silence from the server while a reply is due (s): a stall."""
    heartbeat_s: float = 20.0
    """WebSocket ping interval (s); a missing pong ends the session."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("ws://", "wss://")):
            raise ValueError(f"base_url must be a ws(s) URL, got {self.base_url!r}")
        if not self.model:
            raise ValueError("model must not be empty")
        if not 0.0 <= self.vad_threshold <= 1.0:
            raise ValueError(f"vad_threshold must be in 0..1, got {self.vad_threshold}")
        if self.vad_prefix_padding_ms < 0 or self.vad_silence_duration_ms < 0:
            raise ValueError("vad_prefix_padding_ms and vad_silence_duration_ms must be >= 0")
        if not 10 <= self.append_batch_ms <= 1000:
            raise ValueError(f"append_batch_ms must be in 10..1000, got {self.append_batch_ms}")
        if min(self.connect_timeout_s, self.receive_timeout_s, self.heartbeat_s) <= 0:
            raise ValueError("timeouts and heartbeat_s must be > 0")


# ------------------------------------------------------------------ client events


class AudioFormat(msgspec.Struct, frozen=True):
    type: str
    rate: int | None = None


class TurnDetection(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["server_vad"]
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool
    interrupt_response: bool


class Transcription(msgspec.Struct, frozen=True):
    model: str


class AudioInput(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    format: AudioFormat
    turn_detection: TurnDetection | None
    """Always sent: ``null`` switches turn detection off."""
    transcription: Transcription | None = None


class AudioOutput(msgspec.Struct, frozen=True, kw_only=True):
    format: AudioFormat
    voice: str


class AudioConfig(msgspec.Struct, frozen=True, kw_only=True):
    input: AudioInput
    output: AudioOutput


class SessionConfig(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["realtime"]
    instructions: str
    output_modalities: list[str]
    audio: AudioConfig


class ResponseParams(msgspec.Struct, frozen=True):
    metadata: dict[str, str]


class ClientEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    event_id: str | None = None


class SessionUpdate(ClientEvent, frozen=True, kw_only=True, tag="session.update"):
    session: SessionConfig


class InputAudioBufferAppend(
    ClientEvent, frozen=True, kw_only=True, tag="input_audio_buffer.append"
):
    audio: bytes
    """PCM; msgspec writes ``bytes`` as base64."""


class InputAudioBufferCommit(
    ClientEvent, frozen=True, kw_only=True, tag="input_audio_buffer.commit"
):
    pass


class ResponseCreate(ClientEvent, frozen=True, kw_only=True, tag="response.create"):
    response: ResponseParams


class ResponseCancel(ClientEvent, frozen=True, kw_only=True, tag="response.cancel"):
    response_id: str | None = None


class ConversationItemTruncate(
    ClientEvent, frozen=True, kw_only=True, tag="conversation.item.truncate"
):
    item_id: str
    content_index: int
    audio_end_ms: int


class ConversationItemDelete(
    ClientEvent, frozen=True, kw_only=True, tag="conversation.item.delete"
):
    item_id: str


def session_config(settings: OpenAiRealtimeSettings, instructions: str) -> SessionConfig:
    """The ``session.update`` body for ``settings``."""
    pcm = AudioFormat(type="audio/pcm", rate=RATE_HZ)
    turn = None
    if settings.turn_detection == "server_vad":
        turn = TurnDetection(
            type="server_vad",
            threshold=settings.vad_threshold,
            prefix_padding_ms=settings.vad_prefix_padding_ms,
            silence_duration_ms=settings.vad_silence_duration_ms,
            create_response=False,
            interrupt_response=False,
        )
    transcription = (
        Transcription(settings.transcription_model) if settings.transcription_model else None
    )
    return SessionConfig(
        type="realtime",
        instructions=instructions,
        output_modalities=["audio"],
        audio=AudioConfig(
            input=AudioInput(format=pcm, turn_detection=turn, transcription=transcription),
            output=AudioOutput(format=pcm, voice=settings.voice),
        ),
    )


def realtime_url(settings: OpenAiRealtimeSettings) -> str:
    return f"{settings.base_url}?{urllib.parse.urlencode({'model': settings.model})}"


# ------------------------------------------------------------------ server events


class ErrorDetail(msgspec.Struct, frozen=True, gc=False):
    message: str = ""
    type: str = ""
    code: str | None = None
    event_id: str | None = None
    param: str | None = None


class ResponseInfo(msgspec.Struct, frozen=True, gc=False):
    id: str
    status: str | None = None
    metadata: dict[str, str] | None = None


class ItemInfo(msgspec.Struct, frozen=True, gc=False):
    id: str
    type: str = ""
    role: str | None = None


class ServerEvent(msgspec.Struct, frozen=True, gc=False, tag_field="type"):
    """Base of the server events this module reads; unknown fields are ignored."""


class SessionCreated(ServerEvent, frozen=True, tag="session.created"):
    pass


class SessionUpdated(ServerEvent, frozen=True, tag="session.updated"):
    pass


class ErrorEvent(ServerEvent, frozen=True, tag="error"):
    error: ErrorDetail


class SpeechStarted(ServerEvent, frozen=True, tag="input_audio_buffer.speech_started"):
    item_id: str
    audio_start_ms: int = 0


class SpeechStopped(ServerEvent, frozen=True, tag="input_audio_buffer.speech_stopped"):
    item_id: str
    audio_end_ms: int = 0


class InputCommitted(ServerEvent, frozen=True, tag="input_audio_buffer.committed"):
    item_id: str
    previous_item_id: str | None = None


class InputTranscriptCompleted(
    ServerEvent, frozen=True, tag="conversation.item.input_audio_transcription.completed"
):
    item_id: str
    transcript: str
    content_index: int = 0


class ResponseCreated(ServerEvent, frozen=True, tag="response.created"):
    response: ResponseInfo


class OutputItemAdded(ServerEvent, frozen=True, tag="response.output_item.added"):
    response_id: str
    item: ItemInfo


class OutputAudioDelta(ServerEvent, frozen=True, tag="response.output_audio.delta"):
    response_id: str
    item_id: str
    delta: bytes
    """PCM; msgspec reads the base64 string into bytes."""


class OutputTranscriptDelta(ServerEvent, frozen=True, tag="response.output_audio_transcript.delta"):
    response_id: str
    item_id: str
    delta: str


class ResponseDone(ServerEvent, frozen=True, tag="response.done"):
    response: ResponseInfo


class ItemTruncated(ServerEvent, frozen=True, tag="conversation.item.truncated"):
    item_id: str
    audio_end_ms: int
    content_index: int = 0


class Ignored(ServerEvent, frozen=True):
    """Base of known events that carry nothing the session needs."""


class ItemAdded(Ignored, frozen=True, tag="conversation.item.added"):
    pass


class ItemCreated(Ignored, frozen=True, tag="conversation.item.created"):
    pass


class ItemDone(Ignored, frozen=True, tag="conversation.item.done"):
    pass


class ItemDeleted(Ignored, frozen=True, tag="conversation.item.deleted"):
    pass


class InputCleared(Ignored, frozen=True, tag="input_audio_buffer.cleared"):
    pass


class InputTranscriptDelta(
    Ignored, frozen=True, tag="conversation.item.input_audio_transcription.delta"
):
    pass


class InputTranscriptFailed(
    Ignored, frozen=True, tag="conversation.item.input_audio_transcription.failed"
):
    pass


class OutputItemDone(Ignored, frozen=True, tag="response.output_item.done"):
    pass


class ContentPartAdded(Ignored, frozen=True, tag="response.content_part.added"):
    pass


class ContentPartDone(Ignored, frozen=True, tag="response.content_part.done"):
    pass


class OutputAudioDone(Ignored, frozen=True, tag="response.output_audio.done"):
    pass


class OutputTranscriptDone(Ignored, frozen=True, tag="response.output_audio_transcript.done"):
    pass


class RateLimitsUpdated(Ignored, frozen=True, tag="rate_limits.updated"):
    pass


ServerMessage = (
    SessionCreated
    | SessionUpdated
    | ErrorEvent
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | InputTranscriptCompleted
    | ResponseCreated
    | OutputItemAdded
    | OutputAudioDelta
    | OutputTranscriptDelta
    | ResponseDone
    | ItemTruncated
    | ItemAdded
    | ItemCreated
    | ItemDone
    | ItemDeleted
    | InputCleared
    | InputTranscriptDelta
    | InputTranscriptFailed
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputAudioDone
    | OutputTranscriptDone
    | RateLimitsUpdated
)


class _Envelope(msgspec.Struct, frozen=True, gc=False):
    type: str


_decoder: Final = msgspec.json.Decoder(ServerMessage)
_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_KNOWN_TYPES: Final = frozenset(cls.__struct_config__.tag for cls in get_args(ServerMessage))
_encoder: Final = msgspec.json.Encoder()


def decode_server_event(frame: str | bytes) -> ServerMessage | None:
    """One server frame as a typed event; ``None`` for an event type this module does not know.

    Raises ProviderProtocolError for invalid JSON, a frame without a string
    ``type``, or a known event with missing or mistyped fields.
    """
    try:
        event: ServerMessage = _decoder.decode(frame)
    except msgspec.ValidationError as exc:
        try:
            kind = _envelope_decoder.decode(frame).type
        except msgspec.DecodeError:
            raise ProviderProtocolError(PROVIDER, f"bad event: {exc}") from exc
        if kind in _KNOWN_TYPES:
            raise ProviderProtocolError(PROVIDER, f"bad {kind} event: {exc}") from exc
        return None
    except msgspec.DecodeError as exc:
        raise ProviderProtocolError(PROVIDER, f"frame is not JSON: {exc}") from exc
    return event


def session_error(detail: ErrorDetail) -> ProviderError | None:
    """The error ending the session for a server ``error``; ``None`` when it is not fatal."""
    message = f"{detail.type or 'error'} {detail.code or ''}: {detail.message[:200]}"
    code = detail.code or ""
    if code == "invalid_api_key" or detail.type == "authentication_error":
        return AuthError(PROVIDER, message)
    if "rate_limit" in code or "rate_limit" in detail.type:
        return RateLimitedError(PROVIDER, message, status=None, retry_after_s=None)
    if code == "session_expired":
        return ConnectionLostError(PROVIDER, message)
    return None


# ------------------------------------------------------------------ generations


class ResponseTracker:
    """Which response carries which generation; no I/O.

    Generations asked for wait in order until ``response.created`` names their
    response (by our metadata when echoed, else first come first served).
    Cancelled generations and per-item audio lengths (for truncation) are
    remembered for the last :data:`MAX_TRACKED` of each.
    """

    __slots__ = ("_by_response", "_cancelled", "_item_bytes", "_last_item", "_pending")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._by_response: dict[str, int] = {}
        self._last_item: dict[str, str] = {}
        self._cancelled: OrderedDict[int, None] = OrderedDict()
        self._item_bytes: OrderedDict[str, int] = OrderedDict()

    def requested(self, generation: int) -> None:
        self._pending.append(generation)

    def request_failed(self, generation: int) -> None:
        if generation in self._pending:
            self._pending.remove(generation)

    def created(self, response: ResponseInfo) -> int | None:
        """Bind ``response`` to its generation (``None``: not one we asked for)."""
        wanted = (response.metadata or {}).get(GENERATION_KEY)
        generation: int | None = None
        if wanted is not None and wanted.lstrip("-").isdigit() and int(wanted) in self._pending:
            generation = int(wanted)
            self._pending.remove(generation)
        elif wanted is None and self._pending:
            generation = self._pending.popleft()
        if generation is not None:
            self._by_response[response.id] = generation
        return generation

    def generation(self, response_id: str) -> int | None:
        return self._by_response.get(response_id)

    def response_id(self, generation: int) -> str | None:
        for response_id, gen in self._by_response.items():
            if gen == generation:
                return response_id
        return None

    def live(self, generation: int) -> bool:
        """Asked for and not yet done."""
        return generation in self._pending or generation in self._by_response.values()

    def awaiting(self) -> bool:
        """Some reply is asked for or still being generated."""
        return bool(self._pending or self._by_response)

    def cancel(self, generation: int) -> bool:
        """Mark ``generation`` cancelled; ``False`` if it already was."""
        if generation in self._cancelled:
            return False
        self._cancelled[generation] = None
        if len(self._cancelled) > MAX_TRACKED:
            self._cancelled.popitem(last=False)
        return True

    def cancelled(self, generation: int | None) -> bool:
        return generation is not None and generation in self._cancelled

    def audio(self, response_id: str, item_id: str, n_bytes: int) -> int | None:
        """Count an audio delta; its generation, or ``None`` when it must be dropped."""
        self._item_bytes[item_id] = self._item_bytes.pop(item_id, 0) + n_bytes
        if len(self._item_bytes) > MAX_TRACKED:
            self._item_bytes.popitem(last=False)
        generation = self._by_response.get(response_id)
        if generation is not None:
            self._last_item[response_id] = item_id
        return None if self.cancelled(generation) else generation

    def item_audio_ms(self, item_id: str) -> int | None:
        """Whole ms of audio received for ``item_id`` (dropped deltas included)."""
        n_bytes = self._item_bytes.get(item_id)
        return None if n_bytes is None else n_bytes // BYTES_PER_MS

    def done(self, response_id: str) -> tuple[int | None, str | None]:
        """Forget a finished response: its generation and last audio item."""
        return self._by_response.pop(response_id, None), self._last_item.pop(response_id, None)


# ---------------------------------------------------------------------- session

_Queued = S2sEvent | BaseException | None


class OpenAiRealtimeSession:
    """One call's Realtime conversation (:class:`~server.providers.base.S2sSession`).

    A reader task stamps and maps server events into a queue read by
    :meth:`events`; a sender task sends pushed audio in batches.  Both end with
    :meth:`close` or when the connection fails (the failure is raised from
    :meth:`events`).
    """

    rate_hz = RATE_HZ

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, settings: OpenAiRealtimeSettings
    ) -> None:
        self.settings = settings
        self._ws = ws
        self._tracker = ResponseTracker()
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._audio = bytearray()
        self._audio_ready = asyncio.Event()
        self._batch_bytes = settings.append_batch_ms * BYTES_PER_MS
        self._send_lock = asyncio.Lock()
        self._uncommitted_ms = 0
        self._speech_open = False
        self._create_events: dict[str, int] = {}
        self._event_seq = 0
        self._deadline: asyncio.Timeout | None = None
        self._ended = False
        self._finished = False
        self._closed = False
        self._sender = asyncio.create_task(self._send_loop(), name="openai-realtime-send")
        self._reader = asyncio.create_task(self._read_loop(), name="openai-realtime-read")

    # ------------------------------------------------------------------ interface

    def push_audio(self, pcm: bytes) -> None:
        """Queue 24 kHz PCM; sent in appends of ``append_batch_ms``. Dropped once ended."""
        if len(pcm) % 2:
            raise ValueError(f"PCM must be whole int16 samples, got {len(pcm)} bytes")
        if self._ended:
            return
        self._audio += pcm
        if len(self._audio) >= self._batch_bytes:
            self._audio_ready.set()

    async def respond(self, generation: int) -> None:
        """Send buffered audio, commit the caller's turn if needed, ask for a reply.

        With ``server_vad`` the turn is committed here only while the server
        still holds uncommitted speech; with ``none`` whenever at least
        :data:`MIN_COMMIT_MS` of audio is buffered.
        """
        self._check_open()
        async with self._send_lock:
            await self._flush_audio()
            commit = (
                self._speech_open
                if self.settings.turn_detection == "server_vad"
                else self._uncommitted_ms >= MIN_COMMIT_MS
            )
            if commit:
                await self._send(InputAudioBufferCommit(event_id=self._next_event_id("commit")))
                self._uncommitted_ms = 0
                self._speech_open = False
            event_id = self._next_event_id("create")
            self._create_events[event_id] = generation
            self._tracker.requested(generation)
            await self._send(
                ResponseCreate(
                    event_id=event_id,
                    response=ResponseParams(metadata={GENERATION_KEY: str(generation)}),
                )
            )
        self._arm_deadline()

    async def cancel(self, generation: int) -> None:
        """Stop ``generation``'s reply; its later audio and text are dropped. Idempotent."""
        if not self._tracker.cancel(generation) or self._ended:
            return
        if self._tracker.live(generation):
            response_id = self._tracker.response_id(generation)
            event = ResponseCancel(event_id=self._next_event_id("cancel"), response_id=response_id)
            try:
                async with self._send_lock:
                    await self._send(event)
            except ProviderError:
                pass  # the session is ending; the reader reports why

    async def truncate(self, item_id: str, played_ms: int) -> None:
        """Cut ``item_id`` to the ``played_ms`` the caller heard (delete it when 0).

        ``played_ms`` is clamped to the audio received for the item, since the
        server refuses a cut beyond the audio it generated.
        """
        if played_ms < 0:
            raise ValueError(f"played_ms must be >= 0, got {played_ms}")
        generated_ms = self._tracker.item_audio_ms(item_id)
        if generated_ms is None:
            raise ValueError(f"no audio was received for item {item_id!r}")
        self._check_open()
        end_ms = min(played_ms, generated_ms)
        event: ClientEvent
        if end_ms == 0:
            event = ConversationItemDelete(event_id=self._next_event_id("delete"), item_id=item_id)
        else:
            event = ConversationItemTruncate(
                event_id=self._next_event_id("truncate"),
                item_id=item_id,
                content_index=0,
                audio_end_ms=end_ms,
            )
        async with self._send_lock:
            await self._send(event)

    async def events(self) -> AsyncIterator[S2sEvent]:
        """Events in arrival order; ends after :meth:`close`, raises ProviderError on failure."""
        while True:
            item = await self._queue.get()
            if item is None or isinstance(item, BaseException):
                self._queue.put_nowait(item)  # every later iteration ends the same way
                if item is None:
                    return
                raise item
            if item.kind is not S2sEventKind.RESPONSE_DONE and self._tracker.cancelled(
                item.generation
            ):
                continue  # queued before cancel() was called
            yield item

    async def close(self) -> None:
        """Stop both tasks and close the socket; :meth:`events` then ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ended = True
        self._sender.cancel()
        try:
            await self._ws.close()  # wakes the reader, then completes the close handshake
        finally:
            self._reader.cancel()
            await asyncio.gather(self._sender, self._reader, return_exceptions=True)
            self._finish(None)

    # ------------------------------------------------------------------- sending

    def _next_event_id(self, kind: str) -> str:
        self._event_seq += 1
        return f"vg_{kind}_{self._event_seq}"

    def _check_open(self) -> None:
        if self._ended:
            raise ConnectionLostError(PROVIDER, "the session has ended")

    async def _send(self, event: ClientEvent) -> None:
        try:
            await self._ws.send_str(_encoder.encode(event).decode())
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise ConnectionLostError(PROVIDER, f"send failed: {exc!r}") from exc

    async def _flush_audio(self) -> None:
        """Send everything pushed so far as one append (send lock held)."""
        if not self._audio:
            return
        pcm = bytes(self._audio)
        self._audio.clear()
        self._audio_ready.clear()
        self._uncommitted_ms += len(pcm) // BYTES_PER_MS
        await self._send(InputAudioBufferAppend(audio=pcm))

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._audio_ready.wait()
                async with self._send_lock:
                    await self._flush_audio()
        except ProviderError as exc:
            self._fail(exc)

    # ------------------------------------------------------------------- receiving

    def _arm_deadline(self) -> None:
        deadline = self._deadline
        if deadline is not None and deadline.when() is None and not self._ended:
            deadline.reschedule(asyncio.get_running_loop().time() + self.settings.receive_timeout_s)

    async def _receive(self) -> aiohttp.WSMessage:
        loop = asyncio.get_running_loop()
        due = self._tracker.awaiting()
        when = loop.time() + self.settings.receive_timeout_s if due else None
        try:
            async with asyncio.timeout_at(when) as deadline:
                self._deadline = deadline
                return await self._ws.receive()
        except TimeoutError as exc:
            raise ProviderTimeoutError(
                PROVIDER, f"no event for {self.settings.receive_timeout_s} s while a reply was due"
            ) from exc
        finally:
            self._deadline = None

    async def _read_loop(self) -> None:
        try:
            while not self._closed:
                message = await self._receive()
                received_ns = time.monotonic_ns()
                if message.type is aiohttp.WSMsgType.TEXT:
                    event = decode_server_event(message.data)
                    if event is not None:
                        self._handle(event, received_ns)
                elif message.type is aiohttp.WSMsgType.BINARY:
                    raise ProviderProtocolError(PROVIDER, "unexpected binary frame")
                elif message.type is aiohttp.WSMsgType.ERROR:
                    raise error_for_exception(PROVIDER, message.data)
                elif not self._closed:  # CLOSE, CLOSING, CLOSED from the provider
                    raise ConnectionLostError(
                        PROVIDER, f"closed by the provider (code {self._ws.close_code})"
                    )
        except ProviderError as exc:
            self._fail(exc)
        except (aiohttp.ClientError, ConnectionError) as exc:
            self._fail(error_for_exception(PROVIDER, exc))
        except Exception as exc:  # a bug here: surface it from events() rather than hang
            self._fail(exc)

    def _fail(self, error: BaseException) -> None:
        """End the session with ``error`` (first failure wins)."""
        if self._ended:
            return
        self._ended = True
        self._finish(error)
        for task in (self._sender, self._reader):
            if task is not asyncio.current_task():
                task.cancel()

    def _finish(self, item: BaseException | None) -> None:
        """Queue the end of :meth:`events` (``None``) or its failure, once."""
        if not self._finished:
            self._finished = True
            self._queue.put_nowait(item)

    def _emit(self, event: S2sEvent) -> None:
        self._queue.put_nowait(event)

    def _handle(self, event: ServerMessage, received_ns: int) -> None:
        """Update state for one server event and queue what the engine sees."""
        tracker = self._tracker
        match event:
            case OutputAudioDelta(response_id=response_id, item_id=item_id, delta=pcm):
                if len(pcm) % 2:
                    raise ProviderProtocolError(PROVIDER, "audio delta is not whole samples")
                generation = tracker.audio(response_id, item_id, len(pcm))
                if generation is not None and pcm:
                    self._emit(
                        S2sEvent(
                            S2sEventKind.AUDIO, received_ns, generation, item_id=item_id, pcm=pcm
                        )
                    )
            case OutputTranscriptDelta(response_id=response_id, item_id=item_id, delta=text):
                generation = tracker.generation(response_id)
                if generation is not None and not tracker.cancelled(generation) and text:
                    self._emit(
                        S2sEvent(
                            S2sEventKind.TRANSCRIPT, received_ns, generation, item_id, text=text
                        )
                    )
            case ResponseCreated(response=response):
                generation = tracker.created(response)
                for event_id in [k for k, v in self._create_events.items() if v == generation]:
                    del self._create_events[event_id]
            case ResponseDone(response=response):
                generation, last_item = tracker.done(response.id)
                if generation is not None:
                    self._emit(
                        S2sEvent(
                            S2sEventKind.RESPONSE_DONE,
                            received_ns,
                            generation,
                            last_item,
                            status=response.status or "completed",
                        )
                    )
            case SpeechStarted(item_id=item_id):
                self._speech_open = True
                self._emit(S2sEvent(S2sEventKind.SPEECH_STARTED, received_ns, item_id=item_id))
            case SpeechStopped(item_id=item_id):
                self._emit(S2sEvent(S2sEventKind.SPEECH_STOPPED, received_ns, item_id=item_id))
            case InputCommitted():
                self._speech_open = False
                self._uncommitted_ms = 0
            case InputTranscriptCompleted(item_id=item_id, transcript=text):
                self._emit(
                    S2sEvent(S2sEventKind.INPUT_TRANSCRIPT, received_ns, item_id=item_id, text=text)
                )
            case ErrorEvent(error=detail):
                self._on_error(detail, received_ns)
            case _:
                pass  # session.*, item bookkeeping, truncation acks, rate limits

    def _on_error(self, detail: ErrorDetail, received_ns: int) -> None:
        generation = self._create_events.pop(detail.event_id or "", None)
        if generation is not None:
            self._tracker.request_failed(generation)
            self._emit(
                S2sEvent(S2sEventKind.RESPONSE_DONE, received_ns, generation, status="failed")
            )
            log.warning("openai realtime refused generation %d: %s", generation, detail.message)
            return
        fatal = session_error(detail)
        if fatal is not None:
            raise fatal
        log.warning(
            "openai realtime error %s (%s) for %s: %s",
            detail.type,
            detail.code,
            detail.event_id,
            detail.message,
        )


# --------------------------------------------------------------------- provider


class OpenAiRealtimeProvider:
    """:class:`~server.providers.base.S2sProvider` for the OpenAI Realtime API.

    Uses ``session`` when given (the caller closes it); otherwise owns one
    :class:`aiohttp.ClientSession`, closed by :meth:`aclose`.
    """

    name = PROVIDER

    def __init__(
        self, settings: OpenAiRealtimeSettings, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None

    async def connect(self, *, rate_hz: int, instructions: str) -> OpenAiRealtimeSession:
        """Open a configured session taking and producing ``rate_hz`` (24000) PCM."""
        if rate_hz != RATE_HZ:
            raise ValueError(f"OpenAI Realtime PCM is {RATE_HZ} Hz, got {rate_hz}")
        settings = self.settings
        try:
            async with asyncio.timeout(settings.connect_timeout_s):
                ws = await self._client().ws_connect(
                    realtime_url(settings),
                    headers={"Authorization": f"Bearer {settings.api_key}"}
                    if settings.api_key
                    else {},
                    heartbeat=settings.heartbeat_s,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                    max_msg_size=16 * 1024 * 1024,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise error_for_exception(PROVIDER, exc) from exc
        try:
            async with asyncio.timeout(settings.connect_timeout_s):
                await _expect(ws, SessionCreated)
                update = SessionUpdate(
                    event_id="vg_session_update", session=session_config(settings, instructions)
                )
                await ws.send_str(_encoder.encode(update).decode())
                await _expect(ws, SessionUpdated)
        except BaseException as exc:
            await ws.close()
            if isinstance(exc, TimeoutError):
                raise ProviderTimeoutError(PROVIDER, "no session.updated in time") from exc
            if isinstance(exc, aiohttp.ClientError | ConnectionError):
                raise error_for_exception(PROVIDER, exc) from exc
            raise
        return OpenAiRealtimeSession(ws, settings)

    async def aclose(self) -> None:
        """Close the owned session (a no-op for a borrowed one)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise ConnectionLostError(PROVIDER, "the borrowed ClientSession is closed")
            self._session = aiohttp.ClientSession()
        return self._session


async def _expect(
    ws: aiohttp.ClientWebSocketResponse, kind: type[SessionCreated] | type[SessionUpdated]
) -> None:
    """Read frames until ``kind`` arrives; an ``error`` or a close on the way raises."""
    while True:
        message = await ws.receive()
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionLostError(PROVIDER, f"closed during set-up ({message.type.name})")
        event = decode_server_event(message.data)
        if isinstance(event, kind):
            return
        if isinstance(event, ErrorEvent):
            fatal = session_error(event.error)
            if fatal is not None:
                raise fatal
            error = ProviderError(PROVIDER, f"session refused: {event.error.message[:200]}")
            error.retryable = False
            raise error
