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
* ``Results`` with ``from_finalize`` (the answer to a Finalize): END_OF_TURN
  with the turn's text, even when it is empty, so every :meth:`flush
  <DeepgramSttStream.flush>` gets exactly one.  While a Finalize waits for its
  answer, ``speech_final`` and ``UtteranceEnd`` leave the turn to the answer.
  Deepgram says the answer is usual but not certain when it has little or no
  audio to finalize; after ``flush_timeout_ms`` without one the stream ends
  the turn itself.
* ``SpeechStarted``: SPEECH_STARTED (``audio_end_ms`` is where speech began).

Reconnects: if the socket drops or stalls mid-stream (no message for
``receive_timeout_ms`` while at least that much audio was sent), the stream
reconnects with :class:`Backoff` and events continue.  Audio pushed while the
connection is down, and audio queued but unsent when it dropped, is lost (it is
counted in :attr:`DeepgramSttStream.dropped_ms`); event times stay on the
stream's clock.  The stream's send buffer holds at most ``max_unsent_ms`` of
audio; newer audio beyond that is dropped and counted.  That machinery is shared
with the other streaming STT clients (:mod:`server.providers.sttstream`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Final, TypeAlias

import aiohttp
import msgspec
from yarl import URL

from server.providers.base import (
    STT_RATE_HZ,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    SttEvent,
    SttEventKind,
    SttProvider,
    SttStream,
    Word,
)
from server.providers.connect import Backoff, error_for_exception
from server.providers.sttstream import HttpSession, SocketSttStream, StreamTiming, WebSocket
from server.providers.timeline import Timeline

PROVIDER: Final = "deepgram"
LISTEN_PATH: Final = "/v1/listen"

CLOSE_DATA_ERROR: Final = 1008
"""Close code with payload ``DATA-0000``: the audio could not be decoded."""
CLOSE_SERVER_ERROR: Final = 1011
"""Close code with payload ``NET-0000`` (server error) or ``NET-0001`` (idle timeout)."""

NonNegativeMs: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
PositiveMs: TypeAlias = Annotated[int, msgspec.Meta(gt=0)]


# ------------------------------------------------------------------------- settings


class DeepgramSttSettings(StreamTiming, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.deepgram_stt]``: credentials, query options and client timing (ms;
    the timing fields are :class:`~server.providers.sttstream.StreamTiming`'s)."""

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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.utterance_end_ms is not None and not self.interim_results:
            raise ValueError("utterance_end_ms needs interim_results = true")


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
        self.hold_turn_end = False
        """While a Finalize waits for its answer, speech_final and UtteranceEnd do not
        end the turn: the answer does (:meth:`end_turn`), so a flush gets one END_OF_TURN."""
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

    def end_turn(self, received_ns: int, audio_end_ms: float) -> SttEvent:
        """END_OF_TURN with the turn's text so far (empty if it has none); a new turn begins."""
        event = SttEvent(
            SttEventKind.END_OF_TURN,
            received_ns,
            " ".join(self._turn_texts),
            tuple(self._turn_words),
            audio_end_ms=audio_end_ms,
        )
        self._turn_texts.clear()
        self._turn_words.clear()
        return event

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
        if not self._turn_texts or self.hold_turn_end:
            return []
        return [self.end_turn(received_ns, end_ms)]


def error_for_close(code: int | None, reason: str) -> ProviderError:
    """The typed error for a close frame the client did not ask for."""
    detail = f"socket closed with {code} {reason}".rstrip()
    if code == CLOSE_DATA_ERROR:
        error = ProviderError(PROVIDER, f"audio not accepted: {detail}")
        error.retryable = False
        return error
    return ConnectionLostError(PROVIDER, detail)


# ------------------------------------------------------------------------- stream


class DeepgramSttStream(SocketSttStream):
    """One live transcription: push 16 kHz PCM, read :class:`SttEvent` from :meth:`events`.

    Made by :meth:`DeepgramStt.open_stream`, for one consumer of :meth:`events`;
    the rest of its public API is :class:`~server.providers.sttstream.SocketSttStream`'s.
    """

    provider = PROVIDER
    end_message = CLOSE_STREAM
    keepalive_message = KEEPALIVE

    def __init__(
        self,
        settings: DeepgramSttSettings,
        session: aiohttp.ClientSession,
        url: URL,
        ws: WebSocket,
        backoff: Backoff | None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._url = url
        self._mapper = DeepgramEventMapper()
        self.request_id: str | None = None
        """Deepgram's id of the current socket's request (from its Metadata)."""
        super().__init__(
            settings,
            ws,
            backoff,
            chunk_ms=settings.max_chunk_ms,
            keepalive_interval_ms=settings.keepalive_interval_ms,
        )

    async def flush(self) -> None:
        """Send Finalize after the audio queued so far: finals for it come at once.

        The answer (the Results with ``from_finalize``) ends the turn: exactly one
        END_OF_TURN follows, with the turn's text (empty if nothing was
        recognised) and ``audio_end_ms`` covering all audio pushed before.
        Deepgram does not promise an answer when it has no audio to finalize; the
        END_OF_TURN is then made here after ``flush_timeout_ms`` (at once while
        reconnecting).  Ignored after :meth:`close`.
        """
        self._queue_flush(FINALIZE, owed=True)

    # ------------------------------------------------------------------- hooks

    async def _reopen(self) -> WebSocket:
        return await connect(self._session, self._settings, self._url)

    def _timeline(self) -> Timeline:
        return self._mapper.timeline

    def _new_session(self, origin_ms: float) -> None:
        self._mapper.timeline = Timeline(origin_ms)

    def _on_text(self, data: str, received_ns: int) -> list[SttEvent]:
        message = decode_message(data)
        if isinstance(message, DgMetadata):
            self.request_id = message.request_id or self.request_id
            return []
        if message is None:
            return []
        self._mapper.hold_turn_end = len(self._flushes) > 0
        events = self._mapper.events_for(message, received_ns)
        if isinstance(message, DgResults) and message.from_finalize:
            events += self._answer_flush(received_ns, None)
        return events

    def _close_error(self, code: int | None, reason: str) -> ProviderError:
        return error_for_close(code, reason)

    def _end_turn(self, received_ns: int, audio_end_ms: float, *, owed: bool) -> SttEvent:
        return self._mapper.end_turn(received_ns, audio_end_ms)


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
        self._http = HttpSession(session)

    async def open_stream(self, *, language: str | None = None) -> DeepgramSttStream:
        """Connect (one attempt) and start a stream taking 16 kHz PCM; raises ProviderError."""
        session = self._http.get()
        url = listen_url(self.settings, language)
        ws = await connect(session, self.settings, url)
        return DeepgramSttStream(self.settings, session, url, ws, self.settings.backoff())

    async def aclose(self) -> None:
        await self._http.aclose()


if TYPE_CHECKING:  # both classes satisfy the interfaces of server.providers.base

    def _conforms(
        provider: DeepgramStt, stream: DeepgramSttStream
    ) -> tuple[SttProvider, SttStream]:
        return provider, stream
