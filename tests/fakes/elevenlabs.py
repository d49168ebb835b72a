"""Fake ElevenLabs TTS on loopback: multi-stream-input WebSocket and HTTP streaming.

Speaks the real wire protocol, validated by hand (nothing from the client is
imported): ``/v1/text-to-speech/{voice_id}/multi-stream-input`` with
``model_id``/``output_format`` in the query and ``xi-api-key`` in the header (or
``xi_api_key`` in a context's first message), and ``POST
/v1/text-to-speech/{voice_id}/stream[/with-timestamps]``.

Audio is :func:`synth`: :data:`MS_PER_CHAR` ms per character of the text, a
tone per letter or digit and silence for anything else, so expected audio and
alignment follow from the text alone.  Quirks reproduced: a context's first
text must be ``" "``; text is buffered until the chunk schedule
(``generation_config.chunk_length_schedule``, default 120/160/250/290
characters) is reached, a flush, or at once under ``auto_mode``; ``close_context``
drops unflushed text but audio already scheduled still goes out, then
``isFinal``; the socket closes (1008) after ``inactivity_timeout`` seconds without
a message while nothing is being generated.  Every :class:`Fault` is injected
on the first ``fault_sessions`` connections or requests (all when ``None``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.profile import Fault, Profile

MS_PER_CHAR = 60
"""Audio per character of text (ms)."""

PCM_RATES_HZ = (8000, 16000, 22050, 24000, 44100)
DEFAULT_SCHEDULE = (120, 160, 250, 290)
_INIT_KEYS = {
    "text",
    "context_id",
    "voice_settings",
    "generation_config",
    "pronunciation_dictionary_locators",
    "xi_api_key",
    "authorization",
    "flush",
    "try_trigger_generation",
}
_VOICE_KEYS = {"stability", "similarity_boost", "style", "use_speaker_boost", "speed"}
_HTTP_KEYS = {
    "text",
    "model_id",
    "language_code",
    "voice_settings",
    "pronunciation_dictionary_locators",
    "seed",
    "previous_text",
    "next_text",
    "previous_request_ids",
    "next_request_ids",
    "apply_text_normalization",
}


@lru_cache(maxsize=4096)
def _char_pcm(char: str, rate_hz: int) -> bytes:
    n = MS_PER_CHAR * rate_hz // 1000
    if not char.isalnum():
        return bytes(2 * n)
    freq_hz = 200 + 20 * (ord(char) % 40)
    t = np.arange(n) / rate_hz
    return (6000 * np.sin(2 * math.pi * freq_hz * t)).astype("<i2").tobytes()


def synth(text: str, rate_hz: int) -> bytes:
    """The fake's audio for ``text``: 16-bit PCM, :data:`MS_PER_CHAR` ms per character."""
    return b"".join(_char_pcm(c, rate_hz) for c in text)


@dataclass
class FakeLog:
    """What the fake saw and did; tests assert on it."""

    connections: int = 0
    http_requests: int = 0
    handshakes: list[dict[str, Any]] = field(default_factory=list)
    """Every WebSocket upgrade request: ``path``, ``query``, ``key`` (the xi-api-key header)."""
    received: list[dict[str, Any]] = field(default_factory=list)
    """Every client WebSocket message, with ``"_conn"`` the connection's index."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Every HTTP request: ``path``, ``query``, ``body``."""
    sent_chunks: list[str] = field(default_factory=list)
    """Context id of every audio frame sent."""
    finals: list[str] = field(default_factory=list)
    """Context ids whose isFinal was sent, in order."""
    errors: list[str] = field(default_factory=list)
    """Protocol violations the fake detected in what the client sent."""
    closes: list[tuple[int, str]] = field(default_factory=list)
    """Close codes and reasons the fake sent."""
    ended: int = 0
    """WebSocket connections whose handler has finished (closing handshake done)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever a final is sent (tests wait on it)."""


@dataclass
class FakeConfig:
    api_key: str = "test-key"
    profile: Profile = field(default_factory=Profile)
    fault_sessions: int | None = None
    inactivity_timeout_s: float | None = None
    """Overrides the query's ``inactivity_timeout`` (s) so tests need not wait 20 s."""
    chars_per_chunk: int = 5
    final_key: str = "isFinal"
    durations_key: str = "charDurationsMs"

    def fault_for(self, index: int) -> Fault:
        if self.fault_sessions is None or index < self.fault_sessions:
            return self.profile.fault
        return Fault.NONE


LOG = web.AppKey("elevenlabs_log", FakeLog)
CONFIG = web.AppKey("elevenlabs_config", FakeConfig)


def create_app(
    *,
    api_key: str = "test-key",
    profile: Profile | None = None,
    fault_sessions: int | None = None,
    inactivity_timeout_s: float | None = None,
    chars_per_chunk: int = 5,
    final_key: str = "isFinal",
    durations_key: str = "charDurationsMs",
) -> web.Application:
    """The fake as an aiohttp application (bind it to 127.0.0.1)."""
    app = web.Application()
    app[LOG] = FakeLog()
    app[CONFIG] = FakeConfig(
        api_key=api_key,
        profile=profile or Profile(),
        fault_sessions=fault_sessions,
        inactivity_timeout_s=inactivity_timeout_s,
        chars_per_chunk=chars_per_chunk,
        final_key=final_key,
        durations_key=durations_key,
    )
    app.router.add_get("/v1/text-to-speech/{voice_id}/multi-stream-input", _ws_handler)
    app.router.add_post("/v1/text-to-speech/{voice_id}/stream", _http_handler)
    app.router.add_post("/v1/text-to-speech/{voice_id}/stream/with-timestamps", _http_handler)
    return app


def _refusal(fault: Fault) -> web.Response | None:
    if fault is Fault.UNAUTHORIZED:
        return web.json_response({"detail": {"status": "invalid_api_key"}}, status=401)
    if fault is Fault.RATE_LIMITED:
        return web.json_response(
            {"detail": {"status": "too_many_concurrent_requests"}},
            status=429,
            headers={"Retry-After": "1"},
        )
    return None


def _rate_of(output_format: str | None) -> int | None:
    if output_format is None or not output_format.startswith("pcm_"):
        return None
    try:
        rate = int(output_format[4:])
    except ValueError:
        return None
    return rate if rate in PCM_RATES_HZ else None


def _alignment(part: str, durations_key: str) -> dict[str, Any]:
    return {
        "chars": list(part),
        "charStartTimesMs": [i * MS_PER_CHAR for i in range(len(part))],
        durations_key: [MS_PER_CHAR] * len(part),
    }


# ------------------------------------------------------------------- WebSocket


class _ProtocolViolation(Exception):
    pass


@dataclass
class _Context:
    id: str
    schedule: tuple[int, ...]
    buffer: str = ""
    step: int = 0
    flushed: bool = False
    closing: bool = False
    segments: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    busy: bool = False


class _WsSession:
    """One fake multi-stream-input connection."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        *,
        rate_hz: int,
        fault: Fault,
        need_key: bool,
        auto_mode: bool,
        inactivity_s: float,
    ) -> None:
        self.ws = ws
        self.request = request
        self.config = request.app[CONFIG]
        self.log = request.app[LOG]
        self.index = self.log.connections - 1
        self.rate_hz = rate_hz
        self.fault = fault
        self.need_key = need_key
        self.auto_mode = auto_mode
        self.inactivity_s = inactivity_s
        self.contexts: dict[str, _Context] = {}
        self.n_chunks = 0
        self.ended = asyncio.Event()

    async def run(self) -> None:
        try:
            await self._receive_loop()
        finally:
            self.ended.set()
            tasks = [c.task for c in self.contexts.values() if c.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.ws.receive(timeout=self.inactivity_s)
            except TimeoutError:
                if any(c.busy or not c.segments.empty() for c in self.contexts.values()):
                    continue
                await self._close(1008, "Have not received new text within the inactivity timeout")
                return
            if message.type is WSMsgType.TEXT:
                try:
                    done = await self._handle(message.data)
                except _ProtocolViolation as exc:
                    self.log.errors.append(str(exc))
                    await self._close(1008, str(exc)[:120])
                    return
                if done:
                    return
            elif message.type is WSMsgType.BINARY:
                self.log.errors.append("binary frame from client")
                await self._close(1003, "binary frames are not accepted")
                return
            else:
                return

    async def _close(self, code: int, reason: str) -> None:
        self.log.closes.append((code, reason))
        await self.ws.close(code=code, message=reason.encode())

    async def _handle(self, data: str) -> bool:
        try:
            msg = json.loads(data)
        except ValueError:
            raise _ProtocolViolation("invalid JSON") from None
        if not isinstance(msg, dict):
            raise _ProtocolViolation("message is not an object")
        self.log.received.append({**msg, "_conn": self.index})
        if "close_socket" in msg:
            if msg.keys() - {"close_socket"} or msg["close_socket"] is not True:
                raise _ProtocolViolation("bad close_socket message")
            for open_context in list(self.contexts.values()):
                await self._close_context(open_context)
            tasks = [c.task for c in self.contexts.values() if c.task is not None]
            if tasks:
                await asyncio.wait(tasks)
            await self._close(1000, "")
            return True
        context_id = msg.get("context_id", "default")
        if not isinstance(context_id, str) or not context_id:
            raise _ProtocolViolation("context_id must be a non-empty string")
        if "close_context" in msg:
            if msg.keys() - {"close_context", "context_id"} or msg["close_context"] is not True:
                raise _ProtocolViolation("bad close_context message")
            closing = self.contexts.get(context_id)
            if closing is None or closing.closing:
                raise _ProtocolViolation(f"close_context for unknown context {context_id}")
            await self._close_context(closing)
            return False
        unknown = msg.keys() - _INIT_KEYS
        if unknown:
            raise _ProtocolViolation(f"unknown fields {sorted(unknown)}")
        text = msg.get("text")
        if not isinstance(text, str):
            raise _ProtocolViolation("text must be a string")
        flush = msg.get("flush", False)
        if not isinstance(flush, bool):
            raise _ProtocolViolation("flush must be a boolean")
        context = self.contexts.get(context_id)
        if context is None:
            self._open_context(context_id, msg)
            return False
        if context.closing:
            raise _ProtocolViolation(f"text for closed context {context_id}")
        context.buffer += text
        if flush:
            context.flushed = True
            self._schedule(context, everything=True)
        elif text:
            self._schedule(context, everything=self.auto_mode)
        return False

    def _open_context(self, context_id: str, msg: dict[str, Any]) -> None:
        if msg["text"] != " ":
            raise _ProtocolViolation("a context's first message must have text ' '")
        if self.need_key and msg.get("xi_api_key") != self.config.api_key:
            raise _ProtocolViolation("invalid api key")
        voice = msg.get("voice_settings", {})
        if not isinstance(voice, dict) or voice.keys() - _VOICE_KEYS:
            raise _ProtocolViolation("bad voice_settings")
        if any(not isinstance(v, int | float) for v in voice.values()):
            raise _ProtocolViolation("voice_settings values must be numbers")
        schedule: tuple[int, ...] = DEFAULT_SCHEDULE
        config = msg.get("generation_config")
        if config is not None:
            sched = config.get("chunk_length_schedule") if isinstance(config, dict) else None
            if (
                not isinstance(sched, list)
                or not sched
                or any(not isinstance(n, int | float) or not 50 <= n <= 500 for n in sched)
            ):
                raise _ProtocolViolation("bad generation_config.chunk_length_schedule")
            schedule = tuple(int(n) for n in sched)
        context = _Context(context_id, schedule)
        context.task = asyncio.get_running_loop().create_task(self._generate(context))
        self.contexts[context_id] = context

    def _schedule(self, context: _Context, *, everything: bool) -> None:
        threshold = context.schedule[min(context.step, len(context.schedule) - 1)]
        if not context.buffer or (not everything and len(context.buffer) < threshold):
            return
        context.segments.put_nowait(context.buffer)
        context.buffer = ""
        context.step += 1

    async def _close_context(self, context: _Context) -> None:
        context.closing = True
        context.buffer = ""  # unflushed text is dropped; scheduled audio still goes out
        context.segments.put_nowait(None)

    async def _generate(self, context: _Context) -> None:
        profile = self.config.profile
        first = True
        while True:
            segment = await context.segments.get()
            if segment is None:
                break
            context.busy = True
            if first:
                await profile.first_byte()
                first = False
            step = self.config.chars_per_chunk
            for i in range(0, len(segment), step):
                part = segment[i : i + step]
                await self._send_audio(context, part)
                await profile.between_chunks()
            context.busy = False
        await self._send({self.config.final_key: True, "contextId": context.id})
        self.log.finals.append(context.id)
        self.log.changed.set()

    async def _send_audio(self, context: _Context, part: str) -> None:
        alignment = _alignment(part, self.config.durations_key)
        await self._send(
            {
                "audio": base64.b64encode(synth(part, self.rate_hz)).decode(),
                self.config.final_key: False,
                "normalizedAlignment": alignment,
                "alignment": alignment,
                "contextId": context.id,
            }
        )
        self.log.sent_chunks.append(context.id)
        self.n_chunks += 1
        if self.n_chunks != self.config.profile.after_chunks:
            return
        if self.fault is Fault.STALL:
            await self.ended.wait()
        elif self.fault is Fault.DISCONNECT:
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            await self.ended.wait()
        elif self.fault is Fault.MALFORMED:
            await self._send({"audio": "**not base64**", "contextId": context.id})

    async def _send(self, payload: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(payload))


async def _ws_handler(request: web.Request) -> web.StreamResponse:
    log = request.app[LOG]
    config = request.app[CONFIG]
    fault = config.fault_for(log.connections)
    log.connections += 1
    key = request.headers.get("xi-api-key")
    log.handshakes.append({"path": request.path, "query": dict(request.query), "key": key})
    refusal = _refusal(fault)
    if refusal is not None:
        return refusal
    if key is not None and key != config.api_key:
        return web.json_response({"detail": {"status": "invalid_api_key"}}, status=401)
    rate_hz = _rate_of(request.query.get("output_format", "mp3_44100_128"))
    if rate_hz is None or not request.query.get("model_id"):
        log.errors.append(f"bad query {dict(request.query)}")
        return web.json_response({"detail": "bad query"}, status=400)
    try:
        inactivity_s = float(request.query.get("inactivity_timeout", "20"))
    except ValueError:
        return web.json_response({"detail": "bad inactivity_timeout"}, status=400)
    if not 0 < inactivity_s <= 180:
        return web.json_response({"detail": "bad inactivity_timeout"}, status=400)
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    session = _WsSession(
        ws,
        request,
        rate_hz=rate_hz,
        fault=fault,
        need_key=key is None,
        auto_mode=request.query.get("auto_mode") == "true",
        inactivity_s=config.inactivity_timeout_s or inactivity_s,
    )
    try:
        await session.run()
    finally:
        log.ended += 1
    return ws


# ------------------------------------------------------------------------ HTTP


async def _http_handler(request: web.Request) -> web.StreamResponse:
    log = request.app[LOG]
    config = request.app[CONFIG]
    profile = config.profile
    fault = config.fault_for(log.http_requests)
    log.http_requests += 1
    refusal = _refusal(fault)
    if refusal is not None:
        return refusal
    if request.headers.get("xi-api-key") != config.api_key:
        return web.json_response({"detail": {"status": "invalid_api_key"}}, status=401)
    rate_hz = _rate_of(request.query.get("output_format", "mp3_44100_128"))
    try:
        body = await request.json()
    except ValueError:
        body = None
    log.requests.append({"path": request.path, "query": dict(request.query), "body": body})
    problem = _check_body(body) or (None if rate_hz else "output_format must be pcm_<rate>")
    if problem is not None or rate_hz is None:
        log.errors.append(problem or "bad request")
        return web.json_response({"detail": problem}, status=422)
    text: str = body["text"]
    timestamps = request.path.endswith("/with-timestamps")
    response = web.StreamResponse(
        headers={"Content-Type": "application/json" if timestamps else "audio/pcm"}
    )
    await profile.first_byte()
    await response.prepare(request)
    step = config.chars_per_chunk
    for n, i in enumerate(range(0, len(text), step)):
        part = text[i : i + step]
        pcm = synth(part, rate_hz)
        if timestamps:
            line = {
                "audio_base64": base64.b64encode(pcm).decode(),
                "alignment": {
                    "characters": list(part),
                    "character_start_times_seconds": [
                        (i + k) * MS_PER_CHAR / 1000 for k in range(len(part))
                    ],
                    "character_end_times_seconds": [
                        (i + k + 1) * MS_PER_CHAR / 1000 for k in range(len(part))
                    ],
                },
                "normalized_alignment": None,
            }
            await response.write(json.dumps(line).encode() + b"\n")
        else:
            await response.write(pcm)
        if n + 1 == profile.after_chunks and await _http_fault(request, response, fault):
            return response
        await profile.between_chunks()
    await response.write_eof()
    return response


def _check_body(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if body.keys() - _HTTP_KEYS:
        return f"unknown fields {sorted(body.keys() - _HTTP_KEYS)}"
    if not isinstance(body.get("text"), str) or not body["text"]:
        return "text is required"
    if "model_id" in body and not isinstance(body["model_id"], str):
        return "model_id must be a string"
    return None


async def _http_fault(request: web.Request, response: web.StreamResponse, fault: Fault) -> bool:
    """Inject a mid-stream fault; True when the response must end here."""
    transport = request.transport
    if fault is Fault.STALL:
        while transport is not None and not transport.is_closing():
            await asyncio.sleep(0.02)
        return True
    if fault is Fault.DISCONNECT:
        if transport is not None:
            transport.abort()
        return True
    if fault is Fault.MALFORMED:
        await response.write(b'{"audio_base64": 12, "alignment": "nope"\n')
    return False
