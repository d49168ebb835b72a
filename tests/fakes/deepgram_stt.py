"""A local Deepgram live transcription service (``/v1/listen``) for tests.

It speaks the real protocol and shares no code with the client: the handshake
(``Authorization: Token <key>``, query validation with HTTP 400, 401 on a bad
key), binary audio decoded as linear16, mulaw or alaw, the text controls
KeepAlive / Finalize / CloseStream, and the server messages Results,
SpeechStarted, UtteranceEnd and Metadata with times in seconds of received audio.

Transcripts come from ``script`` (one text per utterance, restarting on every
connection, as each socket is a new session); their timing comes
from the audio (:class:`~tests.fakes.speechdetect.SpeechScript`): SpeechStarted
when speech begins (``vad_events``), interim Results every
``interim_interval_ms`` of audio while a segment is open, a final with
``speech_final`` after ``endpointing`` ms of silence, UtteranceEnd
``utterance_end_ms`` after the last final word, and an empty final every
``silence_result_ms`` of audio outside speech.  Finalize answers at once with
one final Results carrying ``from_finalize``, empty when no speech is pending
(as the service usually does); with ``answer_idle_finalize=False`` a Finalize
finding no audio since the last final gets no answer (Deepgram does not
promise one then).  ``finalize_delay_ms`` holds the answer (and everything
after it) back that long, as the service's processing time.  CloseStream
flushes, sends Metadata and closes with 1000.
A socket that gets neither audio nor text for ``idle_timeout_s`` is closed with
1011 ``NET-0001``; an unknown text message closes it with 1008 ``DATA-0000``.

The :class:`Profile` sets the pace of server messages (``ttfb_ms`` before the
first, ``chunk_interval_ms`` between the others) and the fault; mid-stream
faults happen after ``after_chunks`` server messages.  ``faulty_connections``
limits faults to the first N connections (``None``: all).  What clients sent is
recorded in ``app[RECEIVED]`` and ``app[HANDSHAKES]``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from engine.g711 import alaw_decode, ulaw_decode
from tests.fakes.outbox import PacedOutbox
from tests.fakes.profile import Fault, Profile
from tests.fakes.speechdetect import SpeechScript, TimedWord

ENCODINGS = frozenset(
    {"linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus"}
    | {"speex", "g729"}
)
DECODABLE = frozenset({"linear16", "mulaw", "alaw"})
BOOL_PARAMS = ("interim_results", "vad_events", "smart_format", "punctuate")


@dataclass(frozen=True)
class Received:
    """One frame a client sent: ``kind`` is "audio" (bytes) or "text" (str)."""

    connection: int
    kind: str
    data: bytes | str


@dataclass(frozen=True)
class Handshake:
    connection: int
    path: str
    query: dict[str, str]
    authorization: str | None


@dataclass(frozen=True)
class Options:
    """The validated query of one connection."""

    model: str
    encoding: str
    sample_rate: int
    interim_results: bool
    endpointing_ms: int | None
    utterance_end_ms: int | None
    vad_events: bool
    punctuate: bool
    language: str


@dataclass
class FakeConfig:
    api_key: str
    script: Sequence[str]
    profile: Profile
    idle_timeout_s: float
    interim_interval_ms: float
    silence_result_ms: float
    threshold_dbfs: float
    ms_per_word: float
    faulty_connections: int | None
    answer_idle_finalize: bool
    finalize_delay_ms: float
    connections: int = 0
    sent: list[tuple[int, str]] = field(default_factory=list)


RECEIVED = web.AppKey("received", list[Received])
HANDSHAKES = web.AppKey("handshakes", list[Handshake])
CONFIG = web.AppKey("config", FakeConfig)


def deepgram_stt_app(
    *,
    api_key: str = "test-key",
    script: Sequence[str] = (),
    profile: Profile | None = None,
    idle_timeout_s: float = 10.0,
    interim_interval_ms: float = 400.0,
    silence_result_ms: float = 1000.0,
    threshold_dbfs: float = -45.0,
    ms_per_word: float = 300.0,
    faulty_connections: int | None = None,
    answer_idle_finalize: bool = True,
    finalize_delay_ms: float = 0.0,
) -> web.Application:
    """The fake service; bind it to 127.0.0.1 (e.g. with the ``aiohttp_server`` fixture)."""
    app = web.Application()
    app[RECEIVED] = []
    app[HANDSHAKES] = []
    app[CONFIG] = FakeConfig(
        api_key=api_key,
        script=list(script),
        profile=profile or Profile(),
        idle_timeout_s=idle_timeout_s,
        interim_interval_ms=interim_interval_ms,
        silence_result_ms=silence_result_ms,
        threshold_dbfs=threshold_dbfs,
        ms_per_word=ms_per_word,
        faulty_connections=faulty_connections,
        answer_idle_finalize=answer_idle_finalize,
        finalize_delay_ms=finalize_delay_ms,
    )
    app.router.add_get("/v1/listen", _listen)
    return app


def _error_response(status: int, code: str, message: str) -> web.Response:
    body = {"err_code": code, "err_msg": message, "request_id": str(uuid.uuid4())}
    return web.json_response(body, status=status)


def _parse_options(query: Mapping[str, str]) -> Options | str:
    """The connection's options, or the reason to refuse it."""
    for name in BOOL_PARAMS:
        if query.get(name, "false") not in ("true", "false"):
            return f"{name} must be true or false"
    encoding = query.get("encoding", "linear16")
    if encoding not in ENCODINGS:
        return f"unknown encoding {encoding!r}"
    if encoding not in DECODABLE:
        return f"this fake decodes only {sorted(DECODABLE)}"
    rate = query.get("sample_rate")
    if rate is None or not rate.isdigit() or int(rate) <= 0:
        return "raw encodings need a positive integer sample_rate"
    if query.get("channels", "1") != "1":
        return "this fake takes one channel"
    endpointing = query.get("endpointing", "10")
    if endpointing != "false" and not endpointing.isdigit():
        return "endpointing must be an integer (ms) or false"
    utterance_end = query.get("utterance_end_ms")
    if utterance_end is not None and not utterance_end.isdigit():
        return "utterance_end_ms must be an integer (ms)"
    interim = query.get("interim_results", "false") == "true"
    if utterance_end is not None and not interim:
        return "utterance_end_ms requires interim_results=true"
    return Options(
        model=query.get("model", "base"),
        encoding=encoding,
        sample_rate=int(rate),
        interim_results=interim,
        endpointing_ms=None if endpointing == "false" else int(endpointing),
        utterance_end_ms=None if utterance_end is None else int(utterance_end),
        vad_events=query.get("vad_events") == "true",
        punctuate=query.get("punctuate") == "true" or query.get("smart_format") == "true",
        language=query.get("language", "en"),
    )


def _authorized(header: str | None, api_key: str) -> bool:
    if header is None or " " not in header:
        return False
    scheme, _, credential = header.partition(" ")
    return scheme.lower() in ("token", "bearer") and credential == api_key


async def _listen(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    index = config.connections
    config.connections += 1
    faulty = config.faulty_connections is None or index < config.faulty_connections
    fault = config.profile.fault if faulty else Fault.NONE
    authorization = request.headers.get("Authorization")
    request.app[HANDSHAKES].append(
        Handshake(index, request.path, dict(request.query), authorization)
    )
    if fault is Fault.UNAUTHORIZED or not _authorized(authorization, config.api_key):
        return _error_response(401, "INVALID_AUTH", "Invalid credentials.")
    if fault is Fault.RATE_LIMITED:
        response = _error_response(429, "TOO_MANY_REQUESTS", "Too many requests.")
        response.headers["Retry-After"] = "1"
        return response
    options = _parse_options(request.query)
    if isinstance(options, str):
        return _error_response(400, "Bad Request", options)
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    session = _Session(request, ws, config=config, options=options, index=index, fault=fault)
    await session.run()
    return ws


class _Session:
    """One client socket: reads and checks client frames, writes paced server messages."""

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        *,
        config: FakeConfig,
        options: Options,
        index: int,
        fault: Fault,
    ) -> None:
        self.request = request
        self.ws = ws
        self.config = config
        self.options = options
        self.index = index
        self.fault = fault
        self.received = request.app[RECEIVED]
        self.out = PacedOutbox(
            request,
            ws,
            profile=config.profile,
            fault=fault,
            malformed='{"type": "Results", "channel": {"alternatives": 7}}',
            record=lambda frame: config.sent.append((index, frame)),
        )
        self.script = SpeechScript(
            config.script,
            options.sample_rate,
            threshold_dbfs=config.threshold_dbfs,
            ms_per_word=config.ms_per_word,
        )
        self.request_id = str(uuid.uuid4())
        self.audio_hash = hashlib.sha256()
        self.window_start_ms = 0.0
        self.last_interim_ms = 0.0
        self.last_word_end_ms = 0.0
        self.utterance_end_pending = False

    async def run(self) -> None:
        await self.out.run(self._read)

    # ------------------------------------------------------------------ reading

    async def _read(self) -> None:
        while True:
            try:
                msg = await self.ws.receive(timeout=self.config.idle_timeout_s)
            except TimeoutError:
                self._close(1011, "NET-0001")
                msg = await self.ws.receive()  # the client's close reply
            if msg.type is WSMsgType.BINARY:
                self.received.append(Received(self.index, "audio", msg.data))
                if not self.out.closing:
                    self._audio(msg.data)
            elif msg.type is WSMsgType.TEXT:
                self.received.append(Received(self.index, "text", msg.data))
                if not self.out.closing:
                    self._control(msg.data)
            else:
                return

    def _control(self, data: str) -> None:
        try:
            message: Any = json.loads(data)
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "KeepAlive":
            return
        if kind == "Finalize":
            self._finalize()
        elif kind == "CloseStream":
            if self.script.segment_open:
                self._final(speech_final=False, whole=True)
            self._send(
                {
                    "type": "Metadata",
                    "transaction_key": "deprecated",
                    "request_id": self.request_id,
                    "sha256": self.audio_hash.hexdigest(),
                    "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    "duration": self.script.audio_ms / 1000,
                    "channels": 1,
                }
            )
            self._close(1000, "")
        else:
            self._close(1008, "DATA-0000")

    def _audio(self, data: bytes) -> None:
        self.audio_hash.update(data)
        if self.options.encoding == "mulaw":
            pcm = ulaw_decode(data)
        elif self.options.encoding == "alaw":
            pcm = alaw_decode(data)
        else:
            pcm = data
        script = self.script
        for _ in script.frames(pcm):
            if script.started:
                self.utterance_end_pending = False
                self.last_interim_ms = script.audio_ms
                if self.options.vad_events:
                    self._send(
                        {
                            "type": "SpeechStarted",
                            "channel": [0],
                            "timestamp": script.segment_start_ms / 1000,
                        }
                    )
            if script.segment_open:
                self._segment_step()
            elif script.audio_ms - self.window_start_ms >= self.config.silence_result_ms:
                self._results([], is_final=True)
            due_ms = self.last_word_end_ms + (self.options.utterance_end_ms or 0)
            if (
                self.options.utterance_end_ms is not None
                and self.utterance_end_pending
                and not script.segment_open
                and script.audio_ms >= due_ms
            ):
                self.utterance_end_pending = False
                self._send(
                    {
                        "type": "UtteranceEnd",
                        "channel": [0, 1],
                        "last_word_end": self.last_word_end_ms / 1000,
                    }
                )

    def _segment_step(self) -> None:
        script = self.script
        endpointing = self.options.endpointing_ms
        if not script.in_speech:
            if endpointing is not None and script.silence_ms >= endpointing:
                self._final(speech_final=True, whole=True)
                return
            if endpointing is None and script.silence_ms >= 500:
                self._final(speech_final=False, whole=True)
                return
        if (
            self.options.interim_results
            and script.audio_ms - self.last_interim_ms >= self.config.interim_interval_ms
        ):
            self.last_interim_ms = script.audio_ms
            self._results(script.revealed(), is_final=False)

    def _finalize(self) -> None:
        if self.config.finalize_delay_ms > 0:
            self.out.delay(self.config.finalize_delay_ms)
        if self.script.segment_open:
            self._final(speech_final=False, whole=not self.script.in_speech, from_finalize=True)
        elif self.config.answer_idle_finalize or self.script.audio_ms > self.window_start_ms:
            self._results([], is_final=True, from_finalize=True)

    def _final(self, *, speech_final: bool, whole: bool, from_finalize: bool = False) -> None:
        words = self.script.close_segment(whole=whole)
        self._results(words, is_final=True, speech_final=speech_final, from_finalize=from_finalize)
        if words:
            self.last_word_end_ms = words[-1].end_ms
            self.utterance_end_pending = True

    def _results(
        self,
        words: list[TimedWord],
        *,
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> None:
        shown = [w.text for w in words]
        if self.options.punctuate and shown:
            shown[0] = shown[0][:1].upper() + shown[0][1:]
            if is_final:
                shown[-1] += "."
        start_ms = self.window_start_ms
        if is_final:
            self.window_start_ms = self.script.audio_ms
        message: dict[str, Any] = {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round((self.script.audio_ms - start_ms) / 1000, 3),
            "start": round(start_ms / 1000, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {
                "alternatives": [
                    {
                        "transcript": " ".join(shown),
                        "confidence": 0.99 if words else 0.0,
                        "words": [
                            {
                                "word": w.text.lower(),
                                "start": w.start_ms / 1000,
                                "end": w.end_ms / 1000,
                                "confidence": 0.98,
                                "punctuated_word": p,
                            }
                            for w, p in zip(words, shown, strict=True)
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": {"name": self.options.model, "version": "fake", "arch": "fake"},
                "model_uuid": "00000000-0000-0000-0000-000000000000",
            },
        }
        if from_finalize:
            message["from_finalize"] = True
        self._send(message)

    def _send(self, message: dict[str, Any]) -> None:
        self.out.send(message)

    def _close(self, code: int, reason: str) -> None:
        self.out.close(code, reason)
