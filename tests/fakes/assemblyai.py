"""A local AssemblyAI Universal-Streaming v3 service (``/v3/ws``) for tests.

It speaks the real protocol and shares no code with the client: the raw-key
``Authorization`` header (401 on a bad key, or with ``auth_failure="close"`` an
``Error`` 1008 frame and close 1008 after the upgrade), query validation,
``Begin`` on connect, binary pcm_s16le / pcm_mulaw audio of 50-1000 ms per
message (anything else: ``Error`` 3007 and close 3007), the text messages
ForceEndpoint / Terminate / UpdateConfiguration / KeepAlive (anything else:
``Error`` 3006 and close 3006), and the server messages SpeechStarted, Turn and
Termination with times in ms of received audio.

Transcripts come from ``script`` (one text per utterance, restarting on every
connection); timing comes from the audio
(:class:`~tests.fakes.speechdetect.SpeechScript`): SpeechStarted when speech
begins, a partial Turn every ``partial_interval_ms`` of speech (every word but
the newest is final, and final words never change), and an ended Turn after
``min_end_of_turn_silence_when_confident`` ms of silence when the heard share of
the utterance reaches ``end_of_turn_confidence_threshold``, else after
``max_turn_silence`` ms.  With ``format_turns`` a formatted copy follows
``format_delay_ms`` later.  ForceEndpoint ends the open turn at once; Terminate
ends it, sends Termination and closes with 1000.  With ``inactivity_timeout``,
a session without audio or KeepAlive for that long gets Termination and 1000.

The :class:`Profile` paces server messages and picks the fault; mid-stream
faults happen after ``after_chunks`` server messages (``Begin`` included).
``faulty_connections`` limits faults to the first N connections (``None``: all).
What clients sent is recorded in ``app[RECEIVED]`` and ``app[HANDSHAKES]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

from engine.g711 import ulaw_decode
from tests.fakes.outbox import PacedOutbox
from tests.fakes.profile import Fault, Profile
from tests.fakes.speechdetect import SpeechScript, TimedWord

ENCODINGS = frozenset({"pcm_s16le", "pcm_mulaw", "opus", "ogg_opus", "aac"})
DECODABLE = frozenset({"pcm_s16le", "pcm_mulaw"})
MODELS = frozenset(
    {
        "universal-streaming-english",
        "universal-streaming-multilingual",
        "u3-rt-pro",
        "whisper-rt",
    }
)
UPDATABLE = frozenset(
    {
        "end_of_turn_confidence_threshold",
        "min_end_of_turn_silence_when_confident",
        "min_turn_silence",
        "max_turn_silence",
        "vad_threshold",
        "format_turns",
        "keyterms_prompt",
        "filter_profanity",
    }
)


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


@dataclass
class Options:
    """The session's settings (thresholds can change with UpdateConfiguration)."""

    encoding: str
    sample_rate: int
    format_turns: bool
    confidence_threshold: float
    min_silence_ms: int
    max_silence_ms: int
    inactivity_timeout_s: int | None


@dataclass
class FakeConfig:
    api_key: str
    script: Sequence[str]
    profile: Profile
    partial_interval_ms: float
    format_delay_ms: float
    threshold_dbfs: float
    ms_per_word: float
    faulty_connections: int | None
    auth_failure: Literal["http", "close"]
    connections: int = 0
    sent: list[tuple[int, str]] = field(default_factory=list)


RECEIVED = web.AppKey("received", list[Received])
HANDSHAKES = web.AppKey("handshakes", list[Handshake])
CONFIG = web.AppKey("config", FakeConfig)


def assemblyai_app(
    *,
    api_key: str = "test-key",
    script: Sequence[str] = (),
    profile: Profile | None = None,
    partial_interval_ms: float = 200.0,
    format_delay_ms: float = 50.0,
    threshold_dbfs: float = -45.0,
    ms_per_word: float = 300.0,
    faulty_connections: int | None = None,
    auth_failure: Literal["http", "close"] = "http",
) -> web.Application:
    """The fake service; bind it to 127.0.0.1 (e.g. with the ``aiohttp_server`` fixture)."""
    app = web.Application()
    app[RECEIVED] = []
    app[HANDSHAKES] = []
    app[CONFIG] = FakeConfig(
        api_key=api_key,
        script=list(script),
        profile=profile or Profile(),
        partial_interval_ms=partial_interval_ms,
        format_delay_ms=format_delay_ms,
        threshold_dbfs=threshold_dbfs,
        ms_per_word=ms_per_word,
        faulty_connections=faulty_connections,
        auth_failure=auth_failure,
    )
    app.router.add_get("/v3/ws", _stream)
    return app


def _int_in(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int | str:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        return f"{name} must be an integer in [{low}, {high}]"
    return int(raw)


def _parse_options(query: Mapping[str, str]) -> Options | str:
    """The session's options, or the reason to refuse them."""
    encoding = query.get("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        return f"Invalid encoding: {encoding}"
    if encoding not in DECODABLE:
        return f"this fake decodes only {sorted(DECODABLE)}"
    rate = _int_in(query, "sample_rate", 0, 1, 192000)
    if isinstance(rate, str) or rate == 0:
        return "Sample rate must be a positive integer"
    if query.get("speech_model", "universal-streaming-english") not in MODELS:
        return f"Invalid speech_model: {query.get('speech_model')}"
    for name in ("format_turns", "language_detection"):
        if query.get(name, "false") not in ("true", "false"):
            return f"{name} must be true or false"
    try:
        threshold = float(query.get("end_of_turn_confidence_threshold", "0.4"))
    except ValueError:
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        return "end_of_turn_confidence_threshold must be in [0, 1]"
    min_name = "min_turn_silence" if "min_turn_silence" in query else None
    min_silence = _int_in(
        query, min_name or "min_end_of_turn_silence_when_confident", 400, 0, 60000
    )
    max_silence = _int_in(query, "max_turn_silence", 1280, 0, 60000)
    inactivity = _int_in(query, "inactivity_timeout", 0, 5, 3600)
    for value in (min_silence, max_silence, inactivity):
        if isinstance(value, str):
            return value
    assert isinstance(min_silence, int) and isinstance(max_silence, int)
    assert isinstance(inactivity, int)
    return Options(
        encoding=encoding,
        sample_rate=rate,
        format_turns=query.get("format_turns") == "true",
        confidence_threshold=threshold,
        min_silence_ms=min_silence,
        max_silence_ms=max_silence,
        inactivity_timeout_s=inactivity or None,
    )


async def _stream(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    index = config.connections
    config.connections += 1
    faulty = config.faulty_connections is None or index < config.faulty_connections
    fault = config.profile.fault if faulty else Fault.NONE
    authorization = request.headers.get("Authorization")
    request.app[HANDSHAKES].append(
        Handshake(index, request.path, dict(request.query), authorization)
    )
    key_ok = config.api_key in (authorization, request.query.get("token"))
    if fault is Fault.UNAUTHORIZED or (not key_ok and config.auth_failure == "http"):
        return web.json_response({"error": "Unauthorized Connection: Invalid API key"}, status=401)
    if fault is Fault.RATE_LIMITED:
        return web.json_response(
            {"error": "Too many requests"}, status=429, headers={"Retry-After": "1"}
        )
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    session = _Session(request, ws, config=config, index=index, fault=fault)
    options = _parse_options(request.query)
    if not key_ok:
        session.fail(1008, "Unauthorized Connection: Invalid API key")
    elif isinstance(options, str):
        session.fail(3006, f"Invalid Message: {options}")
    else:
        session.start(options)
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
        index: int,
        fault: Fault,
    ) -> None:
        self.request = request
        self.ws = ws
        self.config = config
        self.index = index
        self.fault = fault
        self.received = request.app[RECEIVED]
        self.out = PacedOutbox(
            request,
            ws,
            profile=config.profile,
            fault=fault,
            malformed='{"type": "Turn", "turn_order": "x", "words": 7}',
            record=lambda frame: config.sent.append((index, frame)),
        )
        self.options: Options | None = None
        self.script = SpeechScript(
            config.script,
            16000,
            threshold_dbfs=config.threshold_dbfs,
            ms_per_word=config.ms_per_word,
        )
        self.started_s = time.monotonic()
        self.turn_order = 0
        self.final_words: list[TimedWord] = []
        self.last_partial_ms = 0.0

    def start(self, options: Options) -> None:
        self.options = options
        self.script = SpeechScript(
            self.config.script,
            options.sample_rate,
            threshold_dbfs=self.config.threshold_dbfs,
            ms_per_word=self.config.ms_per_word,
        )
        self._send(
            {"type": "Begin", "id": str(uuid.uuid4()), "expires_at": int(time.time()) + 10800}
        )

    def fail(self, code: int, message: str) -> None:
        self._send({"type": "Error", "error_code": code, "error": message})
        self._close(code, message[:120])

    async def run(self) -> None:
        await self.out.run(self._read)

    # ------------------------------------------------------------------ reading

    async def _read(self) -> None:
        while True:
            idle_s = self.options.inactivity_timeout_s if self.options else None
            try:
                msg = await self.ws.receive(timeout=idle_s)
            except TimeoutError:
                self._terminate()
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
            self.fail(3006, f"Invalid JSON: {data[:60]}")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.fail(3006, f"Invalid Message: {data[:60]}")
            return
        kind = message["type"]
        if kind == "KeepAlive":
            return
        if kind == "ForceEndpoint":
            if self.script.segment_open:
                self._end_turn(whole=not self.script.in_speech, confidence=1.0)
        elif kind == "Terminate":
            self._terminate()
        elif kind == "UpdateConfiguration":
            self._update(message)
        else:
            self.fail(3006, f"Invalid Message Type: {kind}")

    def _update(self, message: dict[str, Any]) -> None:
        assert self.options is not None
        unknown = set(message) - UPDATABLE - {"type"}
        if unknown:
            self.fail(3006, f"Invalid Message: unknown fields {sorted(unknown)}")
            return
        threshold = message.get("end_of_turn_confidence_threshold")
        if isinstance(threshold, (int, float)) and 0 <= threshold <= 1:
            self.options.confidence_threshold = float(threshold)
        for name in ("min_end_of_turn_silence_when_confident", "min_turn_silence"):
            if isinstance(message.get(name), int):
                self.options.min_silence_ms = message[name]
        if isinstance(message.get("max_turn_silence"), int):
            self.options.max_silence_ms = message["max_turn_silence"]

    def _terminate(self) -> None:
        if self.script.segment_open:
            self._end_turn(whole=True, confidence=1.0)
        self._send(
            {
                "type": "Termination",
                "audio_duration_seconds": int(self.script.audio_ms // 1000),
                "session_duration_seconds": int(time.monotonic() - self.started_s),
            }
        )
        self._close(1000, "")

    def _audio(self, data: bytes) -> None:
        assert self.options is not None
        width = 2 if self.options.encoding == "pcm_s16le" else 1
        duration_ms = len(data) / width / self.options.sample_rate * 1000
        if not 50 <= duration_ms <= 1000:
            self.fail(
                3007,
                f"Input duration violation: {duration_ms:.0f} ms. Expected between 50 and 1000 ms",
            )
            return
        pcm = data if width == 2 else ulaw_decode(data)
        script = self.script
        for _ in script.frames(pcm):
            if script.started:
                self.last_partial_ms = script.audio_ms
                self._send({"type": "SpeechStarted", "timestamp": int(script.segment_start_ms)})
            if not script.segment_open:
                continue
            if script.in_speech:
                if script.audio_ms - self.last_partial_ms >= self.config.partial_interval_ms:
                    self.last_partial_ms = script.audio_ms
                    self._partial()
                continue
            heard = len(script.revealed())
            confidence = heard / script.words_left if script.words_left else 1.0
            needed_ms = (
                self.options.min_silence_ms
                if confidence >= self.options.confidence_threshold
                else self.options.max_silence_ms
            )
            if script.silence_ms >= needed_ms:
                self._end_turn(whole=True, confidence=confidence)

    def _partial(self) -> None:
        revealed = self.script.revealed()
        settled = len(revealed) - 1  # the newest word may still change
        if settled > len(self.final_words):
            self.final_words.extend(revealed[len(self.final_words) : settled])
        words = [(w, True) for w in self.final_words]
        words += [(w, False) for w in revealed[len(self.final_words) :]]
        self._turn(words, end_of_turn=False, confidence=0.1)

    def _end_turn(self, *, whole: bool, confidence: float) -> None:
        closing = self.script.close_segment(whole=whole)
        words = self.final_words + closing[len(self.final_words) :]
        self._turn([(w, True) for w in words], end_of_turn=True, confidence=confidence)
        assert self.options is not None
        if self.options.format_turns and words:
            self.out.delay(self.config.format_delay_ms)
            self._turn(
                [(w, True) for w in words], end_of_turn=True, confidence=confidence, pretty=True
            )
        self.turn_order += 1
        self.final_words = []

    def _turn(
        self,
        words: list[tuple[TimedWord, bool]],
        *,
        end_of_turn: bool,
        confidence: float,
        pretty: bool = False,
    ) -> None:
        texts = [w.text for w, _ in words]
        if pretty and texts:
            texts[0] = texts[0][:1].upper() + texts[0][1:]
            texts[-1] += "."
        finals = [t for t, (_, final) in zip(texts, words, strict=True) if final]
        self._send(
            {
                "type": "Turn",
                "turn_order": self.turn_order,
                "turn_is_formatted": pretty,
                "end_of_turn": end_of_turn,
                "transcript": " ".join(finals),
                "end_of_turn_confidence": round(confidence, 3),
                "words": [
                    {
                        "start": int(w.start_ms),
                        "end": int(w.end_ms),
                        "confidence": 0.97,
                        "text": text,
                        "word_is_final": final,
                    }
                    for text, (w, final) in zip(texts, words, strict=True)
                ],
            }
        )

    def _send(self, message: dict[str, Any]) -> None:
        self.out.send(message)

    def _close(self, code: int, reason: str) -> None:
        self.out.close(code, reason)
