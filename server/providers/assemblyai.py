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
* ``end_of_turn``: END_OF_TURN with the turn's transcript and words (both
  possibly empty), and ``confidence`` set to ``end_of_turn_confidence``.  With
  ``format_turns`` the formatted duplicate of an ended turn (same
  ``turn_order``) yields nothing;
* ``SpeechStarted``: SPEECH_STARTED.

Flush: ForceEndpoint makes the server end the open turn (an ``end_of_turn``
Turn), which is the flush's END_OF_TURN.  With no turn open the protocol sends
nothing back, so the stream makes an empty END_OF_TURN itself once the
ForceEndpoint is on the wire (see :meth:`AssemblyAiStream.flush`).

Reconnects: if the socket drops or stalls mid-stream (no message for
``receive_timeout_ms`` during an open turn while that much audio went out), the
stream reconnects with :class:`Backoff` into a new session and events continue.
Audio pushed while the connection is down, and audio queued but unsent when it
dropped, is lost (counted in :attr:`AssemblyAiStream.dropped_ms`), and so is a
turn that was open; event times stay on the stream's clock.  The send buffer
holds at most ``max_unsent_ms``; newer audio beyond that is dropped and counted.
That machinery is shared with the other streaming STT clients
(:mod:`server.providers.sttstream`).
"""

from __future__ import annotations

import asyncio
import logging
import time
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
    RateLimitedError,
    SttEvent,
    SttEventKind,
    SttProvider,
    SttStream,
    Word,
)
from server.providers.connect import Backoff, error_for_exception
from server.providers.sttstream import HttpSession, SocketSttStream, StreamTiming, WebSocket
from server.providers.timeline import Timeline

PROVIDER: Final = "assemblyai"
WS_PATH: Final = "/v3/ws"
MIN_CHUNK_MS: Final = 50
MAX_CHUNK_MS: Final = 1000

_log = logging.getLogger(__name__)

NonNegativeInt: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
PositiveMs: TypeAlias = Annotated[int, msgspec.Meta(gt=0)]
UnitFloat: TypeAlias = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


# ------------------------------------------------------------------------- settings


class AssemblyAiSettings(StreamTiming, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.assemblyai]``: credentials, session options and client timing (ms; the
    timing fields are :class:`~server.providers.sttstream.StreamTiming`'s)."""

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
        """A turn has begun and not ended (the stall deadline applies; ForceEndpoint
        gets an answer)."""
        self._turn_order = -1
        self._reported_final = 0
        self._final_words: list[Word] = []
        self._last_ended = -1

    def events_for(self, message: AssemblyAiMessage, received_ns: int) -> list[SttEvent]:
        if isinstance(message, AaiTurn):
            return self._turn(message, received_ns)
        if isinstance(message, AaiSpeechStarted):
            self.turn_open = True
            at_ms = self.timeline.to_stream_ms(message.timestamp)
            return [SttEvent(SttEventKind.SPEECH_STARTED, received_ns, audio_end_ms=at_ms)]
        return []

    def end_turn(self, received_ns: int, audio_end_ms: float) -> SttEvent:
        """END_OF_TURN for a turn the server will not end (its words reported final so
        far, none if no turn is open); a late end of that turn is then ignored."""
        words = tuple(self._final_words) if self.turn_open else ()
        self._last_ended = max(self._last_ended, self._turn_order)
        self._final_words = []
        self.turn_open = False
        text = " ".join(w.text for w in words)
        return SttEvent(
            SttEventKind.END_OF_TURN, received_ns, text, words, audio_end_ms=audio_end_ms
        )

    def _words(self, words: list[AaiWord]) -> tuple[Word, ...]:
        ms = self.timeline.to_stream_ms
        return tuple(Word(w.text, ms(w.start), ms(w.end), w.confidence) for w in words)

    def _turn(self, turn: AaiTurn, received_ns: int) -> list[SttEvent]:
        if turn.turn_order <= self._last_ended:
            return []  # the formatted copy of an ended turn, or a late duplicate
        if turn.turn_order != self._turn_order:
            self._turn_order = turn.turn_order
            self._reported_final = 0
            self._final_words = []
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
            self._final_words.extend(new)
        if not turn.end_of_turn:
            tail = self._words(words[n_final:])
            if tail:
                text = " ".join(w.text for w in tail)
                out.append(
                    SttEvent(SttEventKind.INTERIM, received_ns, text, tail, None, tail[-1].end_ms)
                )
            return out
        self._last_ended = turn.turn_order
        self._final_words = []
        all_words = self._words(words)
        text = turn.transcript.strip() or " ".join(w.text for w in all_words)
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


class AssemblyAiStream(SocketSttStream):
    """One streaming session: push 16 kHz PCM, read :class:`SttEvent` from :meth:`events`.

    :meth:`AssemblyAi.open_stream` makes it; one consumer reads :meth:`events`.
    Audio goes out in ``chunk_ms`` messages, a short last piece padded to 50 ms
    before a control message.
    """

    provider = PROVIDER
    end_message = TERMINATE
    keepalive_message = KEEPALIVE
    hold_partial = True
    min_chunk_ms = MIN_CHUNK_MS

    def __init__(
        self,
        settings: AssemblyAiSettings,
        session: aiohttp.ClientSession,
        url: URL,
        opened: tuple[WebSocket, AaiBegin],
        backoff: Backoff | None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._url = url
        self.session_id: str = opened[1].id
        """The current session's id (from ``Begin``; a reconnect starts a new one)."""
        self._mapper = AssemblyAiEventMapper()
        super().__init__(
            settings,
            opened[0],
            backoff,
            chunk_ms=settings.chunk_ms,
            keepalive_interval_ms=settings.keepalive_interval_ms,
        )

    async def flush(self) -> None:
        """Send ForceEndpoint after the audio queued so far: the open turn ends now.

        Exactly one END_OF_TURN answers it, with the turn's text (empty if nothing
        was recognised) and ``audio_end_ms`` covering all audio pushed before.
        The service answers ForceEndpoint only when a turn is open; when none is
        as it goes out (no SpeechStarted or partial Turn since the last ended
        turn, and no earlier ForceEndpoint waiting for that turn's end), the
        protocol has nothing to send, so the empty END_OF_TURN is made here.  A
        turn whose end does not come within ``flush_timeout_ms`` is ended here
        with its final words.  Ignored after :meth:`close`.
        """
        self._queue_flush(FORCE_ENDPOINT, owed=None)

    async def update_configuration(self, update: UpdateConfiguration) -> None:
        """Change end-of-turn detection for the rest of the session."""
        self._queue_control(msgspec.json.encode(update).decode())

    # ------------------------------------------------------------------- hooks

    async def _reopen(self) -> WebSocket:
        ws, begin = await connect(self._session, self._settings, self._url)
        self.session_id = begin.id
        return ws

    def _timeline(self) -> Timeline:
        return self._mapper.timeline

    def _new_session(self, origin_ms: float) -> None:
        self._mapper = AssemblyAiEventMapper(Timeline(origin_ms))

    def _on_text(self, data: str, received_ns: int) -> list[SttEvent]:
        message = decode_message(data)
        if isinstance(message, AaiError):
            raise error_for_code(message.error_code, message.error)
        if isinstance(message, AaiWarning):
            _log.warning("assemblyai: warning %s %s", message.warning_code, message.warning)
            return []
        if isinstance(message, AaiBegin):
            raise ProviderProtocolError(PROVIDER, "second Begin in a session")
        if message is None:
            return []
        events = self._mapper.events_for(message, received_ns)
        if events and events[-1].kind is SttEventKind.END_OF_TURN:
            events[-1:] = self._answer_flush(received_ns, events[-1])
        return events

    def _sent_text(self, message: str) -> None:
        if message == FORCE_ENDPOINT:
            self._flushes.decide(self._mapper.turn_open and not self._flushes.owed)
            now_ns = time.monotonic_ns()
            self._emit(self._flush_ends(now_ns, self._flushes.due(now_ns)))

    def _stall_possible(self) -> bool:
        return self._mapper.turn_open

    def _close_error(self, code: int | None, reason: str) -> ProviderError:
        return error_for_code(code, reason)

    def _end_turn(self, received_ns: int, audio_end_ms: float, *, owed: bool) -> SttEvent:
        if not owed:  # nothing was open: the turn after the flush is not this one
            return SttEvent(SttEventKind.END_OF_TURN, received_ns, audio_end_ms=audio_end_ms)
        return self._mapper.end_turn(received_ns, audio_end_ms)


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
        self._http = HttpSession(session)

    async def open_stream(self, *, language: str | None = None) -> AssemblyAiStream:
        """Start a session (one attempt) taking 16 kHz PCM; raises ProviderError."""
        url = stream_url(self.settings, language)  # refuses a language before connecting
        opened = await connect(self._http.get(), self.settings, url)
        backoff = self.settings.backoff()
        return AssemblyAiStream(self.settings, self._http.get(), url, opened, backoff)

    async def aclose(self) -> None:
        await self._http.aclose()


if TYPE_CHECKING:  # both classes satisfy the interfaces of server.providers.base

    def _conforms(provider: AssemblyAi, stream: AssemblyAiStream) -> tuple[SttProvider, SttStream]:
        return provider, stream
