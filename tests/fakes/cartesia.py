"""Fake Cartesia TTS WebSocket on loopback (``/tts/websocket``).

Speaks the real protocol, validated by hand (nothing from the client is
imported): ``X-API-Key`` header or ``api_key`` query, ``Cartesia-Version``
header or ``cartesia_version`` query; generation requests with ``model_id``,
``transcript``, ``voice``, ``output_format``, ``context_id``, ``continue``,
``add_timestamps``; every field but ``transcript``/``continue``/``duration``/
``flush`` must stay the same on a context.

Audio is :func:`synth`, :data:`MS_PER_CHAR` ms per character.  Text is
generated up to its last whitespace as it arrives (whole words), the rest at
``continue: false``, followed by ``done``; ``flush: true`` answers
``flush_done`` with a growing ``flush_id``.  With ``add_timestamps`` each
generated piece is followed by ``timestamps`` (seconds since the context's
first sample).  A cancel stops queued text but, like the documented
behaviour, lets the piece being generated run to its end (late chunks); pass
``cancel_stops_generation=True`` for the newer semantics.  A context that got
``done`` expires ``context_expiry_s`` after its last audio.  Every
:class:`Fault` is injected on the first ``fault_sessions`` connections.
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

MS_PER_CHAR = 50
"""Audio per character of transcript (ms)."""

SAMPLE_RATES_HZ = (8000, 16000, 22050, 24000, 44100, 48000)
ENCODINGS = ("pcm_f32le", "pcm_s16le", "pcm_mulaw", "pcm_alaw")
MODELS = ("sonic-2", "sonic-3", "sonic-turbo", "sonic")
_REQUEST_KEYS = {
    "model_id",
    "transcript",
    "voice",
    "output_format",
    "context_id",
    "continue",
    "add_timestamps",
    "add_phoneme_timestamps",
    "use_normalized_timestamps",
    "language",
    "duration",
    "max_buffer_delay_ms",
    "flush",
    "speed",
    "generation_config",
}
_VARYING_KEYS = {"transcript", "continue", "duration", "flush"}


@lru_cache(maxsize=4096)
def _char_pcm(char: str, rate_hz: int) -> bytes:
    n = MS_PER_CHAR * rate_hz // 1000
    if not char.isalnum():
        return bytes(2 * n)
    freq_hz = 300 + 15 * (ord(char) % 50)
    t = np.arange(n) / rate_hz
    return (5000 * np.sin(2 * math.pi * freq_hz * t)).astype("<i2").tobytes()


def synth(text: str, rate_hz: int) -> bytes:
    """The fake's audio for ``text``: 16-bit PCM, :data:`MS_PER_CHAR` ms per character."""
    return b"".join(_char_pcm(c, rate_hz) for c in text)


@dataclass
class FakeLog:
    """What the fake saw and did; tests assert on it."""

    connections: int = 0
    handshakes: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    """Every client message, with ``"_conn"`` the connection's index."""
    sent: list[tuple[str, str]] = field(default_factory=list)
    """(type, context_id) of every message sent."""
    errors: list[str] = field(default_factory=list)
    """Protocol violations the fake detected in what the client sent."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever a context stops generating (done, cancel finished)."""
    idle: list[str] = field(default_factory=list)
    """Context ids that stopped generating, in order."""


@dataclass
class FakeConfig:
    api_key: str = "test-key"
    profile: Profile = field(default_factory=Profile)
    fault_sessions: int | None = None
    context_expiry_s: float = 1.0
    cancel_stops_generation: bool = False
    chars_per_chunk: int = 5

    def fault_for(self, index: int) -> Fault:
        if self.fault_sessions is None or index < self.fault_sessions:
            return self.profile.fault
        return Fault.NONE


LOG = web.AppKey("cartesia_log", FakeLog)
CONFIG = web.AppKey("cartesia_config", FakeConfig)


def create_app(
    *,
    api_key: str = "test-key",
    profile: Profile | None = None,
    fault_sessions: int | None = None,
    context_expiry_s: float = 1.0,
    cancel_stops_generation: bool = False,
    chars_per_chunk: int = 5,
) -> web.Application:
    """The fake as an aiohttp application (bind it to 127.0.0.1)."""
    app = web.Application()
    app[LOG] = FakeLog()
    app[CONFIG] = FakeConfig(
        api_key=api_key,
        profile=profile or Profile(),
        fault_sessions=fault_sessions,
        context_expiry_s=context_expiry_s,
        cancel_stops_generation=cancel_stops_generation,
        chars_per_chunk=chars_per_chunk,
    )
    app.router.add_get("/tts/websocket", _handler)
    return app


class _Invalid(Exception):
    pass


@dataclass
class _Context:
    id: str
    fixed: dict[str, Any]
    rate_hz: int
    timestamps: bool
    buffer: str = ""
    chars_done: int = 0
    flush_id: int = 0
    ended: bool = False
    cancelled: bool = False
    finished: bool = False
    work: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class _Session:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request, fault: Fault) -> None:
        self.ws = ws
        self.request = request
        self.config = request.app[CONFIG]
        self.log = request.app[LOG]
        self.index = self.log.connections - 1
        self.fault = fault
        self.contexts: dict[str, _Context] = {}
        self.n_chunks = 0
        self.n_auto = 0
        self.ended = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            async for message in self.ws:
                if message.type is WSMsgType.TEXT:
                    await self._handle(message.data)
                elif message.type is WSMsgType.BINARY:
                    self.log.errors.append("binary frame from client")
                    await self.ws.close(code=1003, message=b"binary frames are not accepted")
                    return
        finally:
            self.ended.set()
            for task in self.tasks:
                task.cancel()
            if self.tasks:
                await asyncio.wait(self.tasks)

    async def _handle(self, data: str) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            await self._error(None, "invalid JSON")
            return
        if not isinstance(msg, dict):
            await self._error(None, "message must be an object")
            return
        self.log.received.append({**msg, "_conn": self.index})
        try:
            if "cancel" in msg:
                self._cancel(msg)
            else:
                self._request(msg)
        except _Invalid as exc:
            context_id = msg.get("context_id")
            await self._error(context_id if isinstance(context_id, str) else None, str(exc))

    def _cancel(self, msg: dict[str, Any]) -> None:
        if msg.keys() != {"context_id", "cancel"} or msg["cancel"] is not True:
            raise _Invalid("a cancel is {context_id, cancel: true}")
        context = self.contexts.get(msg["context_id"])
        if context is None or context.finished:
            return
        context.cancelled = True
        context.buffer = ""
        while not context.work.empty():
            context.work.get_nowait()
        context.work.put_nowait(("stop", None))

    def _request(self, msg: dict[str, Any]) -> None:
        unknown = msg.keys() - _REQUEST_KEYS
        if unknown:
            raise _Invalid(f"unknown fields {sorted(unknown)}")
        for key in ("model_id", "transcript", "voice", "output_format"):
            if key not in msg:
                raise _Invalid(f"missing {key}")
        if msg["model_id"] not in MODELS:
            raise _Invalid(f"model_not_found: {msg['model_id']}")
        transcript = msg["transcript"]
        if not isinstance(transcript, str):
            raise _Invalid("transcript must be a string")
        voice = msg["voice"]
        if not (
            isinstance(voice, dict)
            and voice.get("mode") == "id"
            and isinstance(voice.get("id"), str)
        ):
            raise _Invalid("voice must be {mode: id, id}")
        fmt = msg["output_format"]
        if (
            not isinstance(fmt, dict)
            or fmt.get("container") != "raw"
            or fmt.get("encoding") not in ENCODINGS
            or fmt.get("sample_rate") not in SAMPLE_RATES_HZ
        ):
            raise _Invalid("bad output_format")
        if fmt["encoding"] != "pcm_s16le":
            raise _Invalid("this fake only synthesises pcm_s16le")
        for key in ("continue", "add_timestamps", "flush"):
            if key in msg and not isinstance(msg[key], bool):
                raise _Invalid(f"{key} must be a boolean")
        delay = msg.get("max_buffer_delay_ms", 0)
        if not isinstance(delay, int) or not 0 <= delay <= 1000:
            raise _Invalid("max_buffer_delay_ms must be in 0..1000")
        context_id = msg.get("context_id")
        if context_id is None:
            self.n_auto += 1
            context_id = f"auto-{self.n_auto}"
        if not isinstance(context_id, str) or not context_id:
            raise _Invalid("context_id must be a non-empty string")
        fixed = {k: v for k, v in msg.items() if k not in _VARYING_KEYS}
        context = self.contexts.get(context_id)
        if context is None:
            context = _Context(
                context_id, fixed, fmt["sample_rate"], bool(msg.get("add_timestamps", False))
            )
            context.task = asyncio.get_running_loop().create_task(self._generate(context))
            self.tasks.add(context.task)
            self.contexts[context_id] = context
        elif context.ended or context.cancelled:
            raise _Invalid(f"context {context_id} is closed")
        elif fixed != context.fixed:
            raise _Invalid("fields other than transcript and continue changed on a context")
        context.buffer += transcript
        if not msg.get("continue", False):
            context.ended = True
            self._take(context, everything=True)
            context.work.put_nowait(("done", None))
        elif msg.get("flush", False):
            self._take(context, everything=True)
            context.flush_id += 1
            context.work.put_nowait(("flush", context.flush_id))
        else:
            self._take(context, everything=False)

    @staticmethod
    def _take(context: _Context, *, everything: bool) -> None:
        """Queue whole words (everything at the end of input or a flush)."""
        cut = len(context.buffer)
        if not everything:
            cut = max(context.buffer.rfind(" "), context.buffer.rfind("\n")) + 1
        if cut > 0:
            context.work.put_nowait(("text", context.buffer[:cut]))
            context.buffer = context.buffer[cut:]

    async def _generate(self, context: _Context) -> None:
        profile = self.config.profile
        first = True
        while True:
            kind, value = await context.work.get()
            if kind == "stop":
                break
            if kind == "flush":
                await self._send(
                    {
                        "type": "flush_done",
                        "done": False,
                        "flush_done": True,
                        "flush_id": value,
                        "context_id": context.id,
                    }
                )
                continue
            if kind == "done":
                await self._send(
                    {"type": "done", "done": True, "status_code": 206, "context_id": context.id}
                )
                context.finished = True
                break
            if first:
                await profile.first_byte()
                first = False
            await self._speak(context, value)
        self.log.idle.append(context.id)
        self.log.changed.set()
        if context.finished:
            await asyncio.sleep(self.config.context_expiry_s)
            self.contexts.pop(context.id, None)

    async def _speak(self, context: _Context, text: str) -> None:
        profile = self.config.profile
        step = self.config.chars_per_chunk
        for i in range(0, len(text), step):
            if context.cancelled and self.config.cancel_stops_generation:
                return
            part = text[i : i + step]
            await self._send(
                {
                    "type": "chunk",
                    "data": base64.b64encode(synth(part, context.rate_hz)).decode(),
                    "done": False,
                    "status_code": 206,
                    "step_time": 12.5,
                    "context_id": context.id,
                }
            )
            await self._after_chunk(context)
            await profile.between_chunks()
        if context.timestamps and not (context.cancelled and self.config.cancel_stops_generation):
            await self._send(
                {
                    "type": "timestamps",
                    "done": False,
                    "status_code": 206,
                    "context_id": context.id,
                    "word_timestamps": _word_timestamps(text, context.chars_done),
                }
            )
        context.chars_done += len(text)

    async def _after_chunk(self, context: _Context) -> None:
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
            await self._send({"type": "chunk", "data": 5, "context_id": context.id})

    async def _error(self, context_id: str | None, message: str) -> None:
        self.log.errors.append(message)
        payload: dict[str, Any] = {
            "type": "error",
            "done": True,
            "status_code": 400,
            "title": "Invalid request",
            "message": message,
            "error_code": message.split(":", maxsplit=1)[0]
            if ":" in message
            else "invalid_request",
        }
        if context_id is not None:
            payload["context_id"] = context_id
            context = self.contexts.get(context_id)
            if context is not None and not context.finished:
                context.cancelled = True
                context.work.put_nowait(("stop", None))
        await self._send(payload)

    async def _send(self, payload: dict[str, Any]) -> None:
        self.log.sent.append((payload["type"], payload.get("context_id", "")))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(payload))


def _word_timestamps(text: str, offset_chars: int) -> dict[str, list[Any]]:
    words: list[str] = []
    start: list[float] = []
    end: list[float] = []
    i = 0
    for token in text.split():
        i = text.index(token, i)
        words.append(token)
        start.append((offset_chars + i) * MS_PER_CHAR / 1000)
        end.append((offset_chars + i + len(token)) * MS_PER_CHAR / 1000)
        i += len(token)
    return {"words": words, "start": start, "end": end}


async def _handler(request: web.Request) -> web.StreamResponse:
    log = request.app[LOG]
    config = request.app[CONFIG]
    fault = config.fault_for(log.connections)
    log.connections += 1
    key = request.headers.get("X-API-Key") or request.query.get("api_key")
    version = request.headers.get("Cartesia-Version") or request.query.get("cartesia_version")
    log.handshakes.append(
        {
            "query": dict(request.query),
            "key": request.headers.get("X-API-Key"),
            "version": request.headers.get("Cartesia-Version"),
        }
    )
    if fault is Fault.UNAUTHORIZED or key != config.api_key:
        return web.json_response({"error": "Invalid API key"}, status=401)
    if fault is Fault.RATE_LIMITED:
        return web.json_response(
            {"error": "Too many requests"}, status=429, headers={"Retry-After": "1"}
        )
    if not version:
        return web.json_response({"error": "Cartesia-Version is required"}, status=400)
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    await _Session(ws, request, fault).run()
    return ws
