"""Fake Deepgram Aura TTS WebSocket on loopback (``/v1/speak``).

Speaks the real protocol, validated by hand (nothing from the client is
imported): ``Authorization: Token <key>``; ``model``, ``encoding`` (this fake
synthesises ``linear16`` only) and ``sample_rate`` in the query; ``Metadata``
on connect; ``Speak`` buffers text, ``Flush`` synthesises it as binary frames
followed by ``Flushed {sequence_id}`` (more than ``flush_limit`` flushes in 60 s
also earns a ``Warning``); ``Clear`` drops buffered text and pending flushes,
lets ``late_frames`` more frames of the one in progress out, then answers
``Cleared`` (never, with ``answer_clear=False``); ``Close`` finishes the
current flush and closes with 1000.

Audio is :func:`synth`, :data:`MS_PER_CHAR` ms per character.  Every
:class:`Fault` is injected on the first ``fault_sessions`` connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.profile import Fault, Profile

MS_PER_CHAR = 55
"""Audio per character of text (ms)."""

SAMPLE_RATES_HZ = (8000, 16000, 24000, 32000, 48000)
FRAME_MS = 110
"""Audio per binary frame (two characters' worth)."""


@lru_cache(maxsize=4096)
def _char_pcm(char: str, rate_hz: int) -> bytes:
    n = MS_PER_CHAR * rate_hz // 1000
    if not char.isalnum():
        return bytes(2 * n)
    freq_hz = 250 + 25 * (ord(char) % 30)
    t = np.arange(n) / rate_hz
    return (7000 * np.sin(2 * math.pi * freq_hz * t)).astype("<i2").tobytes()


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
    sent: list[tuple[int, str]] = field(default_factory=list)
    """(connection, kind) of everything sent: ``audio`` or a message type."""
    late_frames: int = 0
    """Audio frames sent after a Clear was received."""
    errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever Flushed or Cleared is sent."""


@dataclass
class FakeConfig:
    api_key: str = "test-key"
    profile: Profile = field(default_factory=Profile)
    fault_sessions: int | None = None
    late_frames: int = 2
    answer_clear: bool = True
    flush_limit: int = 20

    def fault_for(self, index: int) -> Fault:
        if self.fault_sessions is None or index < self.fault_sessions:
            return self.profile.fault
        return Fault.NONE


LOG = web.AppKey("aura_log", FakeLog)
CONFIG = web.AppKey("aura_config", FakeConfig)


def create_app(
    *,
    api_key: str = "test-key",
    profile: Profile | None = None,
    fault_sessions: int | None = None,
    late_frames: int = 2,
    answer_clear: bool = True,
    flush_limit: int = 20,
) -> web.Application:
    """The fake as an aiohttp application (bind it to 127.0.0.1)."""
    app = web.Application()
    app[LOG] = FakeLog()
    app[CONFIG] = FakeConfig(
        api_key=api_key,
        profile=profile or Profile(),
        fault_sessions=fault_sessions,
        late_frames=late_frames,
        answer_clear=answer_clear,
        flush_limit=flush_limit,
    )
    app.router.add_get("/v1/speak", _handler)
    return app


class _Session:
    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, fault: Fault, rate_hz: int
    ) -> None:
        self.ws = ws
        self.request = request
        self.config = request.app[CONFIG]
        self.log = request.app[LOG]
        self.index = self.log.connections - 1
        self.fault = fault
        self.rate_hz = rate_hz
        self.buffer = ""
        self.jobs: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
        self.sequence = 0
        self.busy = False
        self.clearing = False
        self.late_left = 0
        self.flush_times: deque[float] = deque()
        self.n_frames = 0
        self.ended = asyncio.Event()

    async def run(self) -> None:
        await self._send_json(
            {
                "type": "Metadata",
                "request_id": str(uuid.uuid4()),
                "model_name": self.request.query.get("model", "aura-asteria-en"),
                "model_version": "2025-01-01.0",
                "model_uuid": str(uuid.uuid4()),
            }
        )
        generator = asyncio.get_running_loop().create_task(self._generate())
        try:
            await self._receive_loop()
        finally:
            self.ended.set()
            generator.cancel()
            await asyncio.wait([generator])

    async def _receive_loop(self) -> None:
        async for message in self.ws:
            if message.type is WSMsgType.BINARY:
                await self._violation("binary frames are not accepted")
                return
            if message.type is not WSMsgType.TEXT:
                continue
            try:
                msg = json.loads(message.data)
            except ValueError:
                await self._violation("invalid JSON")
                return
            if not isinstance(msg, dict):
                await self._violation("message must be an object")
                return
            self.log.received.append({**msg, "_conn": self.index})
            kind = msg.get("type")
            if kind == "Speak":
                if msg.keys() != {"type", "text"} or not isinstance(msg["text"], str):
                    await self._violation("Speak is {type, text}")
                    return
                self.buffer += msg["text"]
            elif kind in ("Flush", "Clear", "Close") and msg.keys() != {"type"}:
                await self._violation(f"{kind} takes no fields")
                return
            elif kind == "Flush":
                await self._flush()
            elif kind == "Clear":
                await self._clear()
            elif kind == "Close":
                self.jobs.put_nowait(None)
                while self.busy or not self.jobs.empty():
                    await asyncio.sleep(0.005)
                await self.ws.close(code=1000)
                return
            else:
                await self._violation(f"unknown message type {kind!r}")
                return

    async def _flush(self) -> None:
        now = time.monotonic()
        self.flush_times.append(now)
        while self.flush_times and now - self.flush_times[0] > 60:
            self.flush_times.popleft()
        if len(self.flush_times) > self.config.flush_limit:
            await self._send_json(
                {
                    "type": "Warning",
                    "description": "Too many Flush messages in 60 seconds",
                    "code": "FLUSH_LIMIT_EXCEEDED",
                }
            )
        self.jobs.put_nowait((self.buffer, self.sequence))
        self.sequence += 1
        self.buffer = ""

    async def _clear(self) -> None:
        self.buffer = ""
        while not self.jobs.empty():
            self.jobs.get_nowait()
        if self.busy:
            self.clearing = True
            self.late_left = self.config.late_frames
        else:
            await self._cleared()

    async def _cleared(self) -> None:
        self.clearing = False
        if self.config.answer_clear:
            await self._send_json({"type": "Cleared", "sequence_id": self.sequence})
            self.log.changed.set()

    async def _generate(self) -> None:
        profile = self.config.profile
        frame_bytes = 2 * FRAME_MS * self.rate_hz // 1000
        while True:
            job = await self.jobs.get()
            if job is None:
                return
            text, sequence = job
            self.busy = True
            await profile.first_byte()
            audio = synth(text, self.rate_hz)
            for i in range(0, len(audio), frame_bytes):
                if self.clearing:
                    if self.late_left == 0:
                        break
                    self.late_left -= 1
                    self.log.late_frames += 1
                await self._send_audio(audio[i : i + frame_bytes])
                await profile.between_chunks()
            self.busy = False
            if self.clearing:
                await self._cleared()
            else:
                await self._send_json({"type": "Flushed", "sequence_id": sequence})
                self.log.changed.set()

    async def _send_audio(self, frame: bytes) -> None:
        self.log.sent.append((self.index, "audio"))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_bytes(frame)
        self.n_frames += 1
        if self.n_frames != self.config.profile.after_chunks:
            return
        if self.fault is Fault.STALL:
            await self.ended.wait()
        elif self.fault is Fault.DISCONNECT:
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            await self.ended.wait()
        elif self.fault is Fault.MALFORMED:
            await self._send_json({"type": "Flushed", "sequence_id": "seven"})

    async def _send_json(self, payload: dict[str, Any]) -> None:
        self.log.sent.append((self.index, str(payload["type"])))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(payload))

    async def _violation(self, reason: str) -> None:
        self.log.errors.append(reason)
        await self.ws.close(code=1008, message=reason.encode())


async def _handler(request: web.Request) -> web.StreamResponse:
    log = request.app[LOG]
    config = request.app[CONFIG]
    fault = config.fault_for(log.connections)
    log.connections += 1
    auth = request.headers.get("Authorization", "")
    log.handshakes.append({"query": dict(request.query), "authorization": auth})
    if fault is Fault.UNAUTHORIZED or auth != f"Token {config.api_key}":
        return web.json_response(
            {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}, status=401
        )
    if fault is Fault.RATE_LIMITED:
        return web.json_response(
            {"err_code": "TOO_MANY_REQUESTS", "err_msg": "Too many requests."},
            status=429,
            headers={"Retry-After": "1"},
        )
    encoding = request.query.get("encoding", "linear16")
    try:
        rate_hz = int(request.query.get("sample_rate", "24000"))
    except ValueError:
        rate_hz = 0
    if encoding != "linear16" or rate_hz not in SAMPLE_RATES_HZ:
        log.errors.append(f"bad query {dict(request.query)}")
        return web.json_response({"err_code": "Bad Request", "err_msg": "bad query"}, status=400)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await _Session(ws, request, fault, rate_hz).run()
    return ws
