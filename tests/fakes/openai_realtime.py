"""A local OpenAI Realtime server: GA events over WebSocket, server VAD, scripted replies.

``GET /v1/realtime?model=...`` checks ``Authorization: Bearer <api_key>`` before
the upgrade (401/429 as JSON error bodies), then speaks the GA protocol:

* ``session.created`` on connect; ``session.update`` is validated by hand,
  merged into the session and answered with ``session.updated``.
* ``input_audio_buffer.append`` (base64 ``audio/pcm``, int16 at 24000 Hz) feeds
  an energy VAD when turn detection is ``server_vad``: ``speech_started``
  (with ``interrupt_response``, an active reply is cancelled), and after
  ``silence_duration_ms`` of quiet ``speech_stopped``, ``committed``, the user
  item, its transcription (the scripted ``heard`` text, when transcription is
  on) and, with ``create_response``, a reply.  Times are ms of audio appended.
* ``input_audio_buffer.commit`` (at least 100 ms buffered, else an error).
* ``response.create`` -> ``response.created``, the assistant item, transcript
  and audio deltas word by word (a 440 Hz tone, :data:`MS_PER_CHAR` per
  character of the scripted reply, sent faster than real time), then the
  ``*.done`` events and ``response.done``.  A second one while a reply is
  active is an error.
* ``response.cancel`` frees the reply slot at once, but the reply still sends
  ``late_deltas`` more audio deltas before ``response.done`` with status
  ``cancelled`` (the race clients must handle).
* ``conversation.item.truncate`` -> ``conversation.item.truncated``, or an
  error when ``audio_end_ms`` is beyond the audio generated for the item;
  ``conversation.item.delete`` -> ``conversation.item.deleted``.

Profile timing: first byte before a reply's first delta, the chunk pace before
each delta.  Mid-stream faults trigger after ``after_chunks`` audio deltas of
the connection's first reply.  Everything is recorded on :class:`RealtimeFakeState`.
Only ``audio/pcm`` is analysed; other formats are refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.profile import Fault, Profile

RATE_HZ: Final = 24000
BYTES_PER_MS: Final = 48
MS_PER_CHAR: Final = 60
"""Reply audio per character of the scripted reply text (ms)."""
TONE_HZ: Final = 440.0
TONE_AMPLITUDE: Final = 8000
VAD_WINDOW_MS: Final = 20
MIN_COMMIT_MS: Final = 100
DEFAULT_REPLY: Final = "Your balance is forty two dollars."
DEFAULT_HEARD: Final = "What is my balance?"

_CLIENT_TYPES: Final = frozenset(
    {
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "conversation.item.delete",
        "response.create",
        "response.cancel",
    }
)
_SESSION_KEYS: Final = frozenset(
    {
        "type",
        "model",
        "instructions",
        "output_modalities",
        "audio",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "tracing",
        "truncation",
        "prompt",
        "include",
    }
)
_FORMATS: Final = frozenset({"audio/pcm", "audio/pcmu", "audio/pcma"})
_VOICES: Final = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)


def reply_pieces(text: str) -> list[str]:
    """The transcript deltas of ``text``: each word with the space before it."""
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])] if text else []


def reply_audio_ms(text: str) -> int:
    """Duration of the audio generated for reply ``text`` (ms)."""
    return len(text) * MS_PER_CHAR


def tone(start_ms: int, duration_ms: int) -> bytes:
    """The reply tone from ``start_ms`` to ``start_ms + duration_ms`` (phase-continuous)."""
    first = start_ms * RATE_HZ // 1000
    n = np.arange(first, first + duration_ms * RATE_HZ // 1000)
    wave = np.round(TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * n / RATE_HZ))
    return wave.astype("<i2").tobytes()


@dataclass
class RealtimeFakeState:
    """Script and recordings of one fake server (shared by its connections)."""

    profile: Profile
    api_key: str | None
    reply: str
    heard: str
    late_deltas: int
    received: list[dict[str, Any]] = field(default_factory=list)
    """Client events in order; appends are recorded with ``audio_bytes`` instead of audio."""
    audio_in: bytearray = field(default_factory=bytearray)
    """All PCM appended, over all connections."""
    queries: list[dict[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    """Each connection's session configuration (updated in place)."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Server events sent (audio deltas with ``audio_bytes`` instead of audio)."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    truncations: list[dict[str, Any]] = field(default_factory=list)
    deletions: list[str] = field(default_factory=list)
    late_deltas_sent: int = 0
    """Audio deltas sent after the reply was cancelled."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a client connection has ended."""


STATE: Final = web.AppKey("openai_realtime_state", RealtimeFakeState)


def create_app(
    profile: Profile | None = None,
    *,
    api_key: str | None = "test-key",
    reply: str = DEFAULT_REPLY,
    heard: str = DEFAULT_HEARD,
    late_deltas: int = 2,
) -> web.Application:
    """The fake; the client's ``base_url`` is ``ws://host:port/v1/realtime``."""
    app = web.Application()
    app[STATE] = RealtimeFakeState(
        profile=profile or Profile(),
        api_key=api_key,
        reply=reply,
        heard=heard,
        late_deltas=late_deltas,
    )
    app.router.add_get("/v1/realtime", _realtime)
    return app


def _http_error(status: int, message: str, kind: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.json_response(body, status=status, headers=headers)


async def _realtime(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    st.headers.append(dict(request.headers))
    st.queries.append(dict(request.query))
    if st.profile.fault is Fault.UNAUTHORIZED or (
        st.api_key is not None and request.headers.get("Authorization") != f"Bearer {st.api_key}"
    ):
        return _http_error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
    if st.profile.fault is Fault.RATE_LIMITED:
        return _http_error(429, "Rate limit reached.", "requests", "rate_limit_exceeded")
    model = request.query.get("model")
    if not model:
        return _http_error(
            400, "Missing required parameter: 'model'.", "invalid_request_error", None
        )
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    connection = _Connection(request, ws, st, model)
    try:
        await connection.run()
    finally:
        st.closed.set()
        await connection.stop()
    return ws


def _default_session(model: str, index: int) -> dict[str, Any]:
    pcm = {"type": "audio/pcm", "rate": RATE_HZ}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": f"sess_fake{index}",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a helpful assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": _turn_defaults({"type": "server_vad"}),
            },
            "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
        },
    }


def _turn_defaults(turn: dict[str, Any]) -> dict[str, Any]:
    if turn.get("type") == "semantic_vad":
        base: dict[str, Any] = {"eagerness": "auto"}
    else:
        base = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
        base["idle_timeout_ms"] = None
    base.update({"create_response": True, "interrupt_response": True})
    base.update(turn)
    return base


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if key == "turn_detection":
            into[key] = None if value is None else _turn_defaults(value)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def validate_session(session: Any) -> str:
    """Why a ``session.update`` body is refused (``""`` when it is fine)."""
    if not isinstance(session, dict):
        return "'session' must be an object"
    if session.get("type") != "realtime":
        return "Missing or invalid 'session.type': expected 'realtime'"
    unknown = sorted(set(session) - _SESSION_KEYS)
    if unknown:
        return f"Unknown parameter: 'session.{unknown[0]}'"
    if "instructions" in session and not isinstance(session["instructions"], str):
        return "'session.instructions' must be a string"
    modalities = session.get("output_modalities", ["audio"])
    if modalities not in (["audio"], ["text"]):
        return "'session.output_modalities' must be ['audio'] or ['text']"
    audio = session.get("audio", {})
    if not isinstance(audio, dict) or set(audio) - {"input", "output"}:
        return "invalid 'session.audio'"
    for side in ("input", "output"):
        part = audio.get(side, {})
        if not isinstance(part, dict):
            return f"'session.audio.{side}' must be an object"
        fmt = part.get("format")
        if fmt is not None:
            if not isinstance(fmt, dict) or fmt.get("type") not in _FORMATS:
                return f"Invalid 'session.audio.{side}.format'"
            if fmt["type"] != "audio/pcm":
                return "this fake only implements audio/pcm"
            if fmt.get("rate", RATE_HZ) != RATE_HZ:
                return f"'session.audio.{side}.format.rate' must be 24000"
    turn = audio.get("input", {}).get("turn_detection", {})
    if turn is not None and turn != {}:
        if not isinstance(turn, dict) or turn.get("type") not in ("server_vad", "semantic_vad"):
            return "Invalid 'session.audio.input.turn_detection.type'"
        threshold = turn.get("threshold", 0.5)
        if not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            return "'turn_detection.threshold' must be in 0..1"
        for key in ("prefix_padding_ms", "silence_duration_ms"):
            value = turn.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return f"'turn_detection.{key}' must be an integer >= 0"
    transcription = audio.get("input", {}).get("transcription")
    if transcription is not None and not isinstance(transcription.get("model"), str):
        return "'transcription.model' must be a string"
    voice = audio.get("output", {}).get("voice", "alloy")
    if voice not in _VOICES:
        return f"Invalid value: '{voice}'. Supported values are: {', '.join(sorted(_VOICES))}."
    return ""


@dataclass
class _Reply:
    id: str
    item_id: str
    metadata: dict[str, str] | None
    cancelled: bool = False
    task: asyncio.Task[None] | None = None


class _Connection:
    """One client's conversation: session, input buffer, VAD, items and replies."""

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, st: RealtimeFakeState, model: str
    ) -> None:
        self.request = request
        self.ws = ws
        self.st = st
        self.session = _default_session(model, len(st.sessions) + 1)
        st.sessions.append(self.session)
        self.lock = asyncio.Lock()
        self.seq = 0
        self.buffer = bytearray()  # uncommitted input audio
        self.input_ms = 0  # audio appended on this connection (ms)
        self.window = bytearray()  # VAD remainder below one window
        self.speaking = False
        self.speech_item = ""
        self.last_voiced_ms = 0
        self.items: dict[str, dict[str, Any]] = {}
        self.last_item: str | None = None
        self.active: _Reply | None = None
        self.replies: list[_Reply] = []
        self.fault_used = False

    def next_id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}_fake{self.seq}"

    async def send(self, event: dict[str, Any]) -> None:
        event = {"event_id": self.next_id("event"), **event}
        record = dict(event)
        if event["type"] == "response.output_audio.delta":
            record["delta"] = None
            record["audio_bytes"] = len(base64.b64decode(event["delta"]))
        self.st.sent.append(record)
        async with self.lock:
            await self.ws.send_str(json.dumps(event))

    async def error(self, message: str, code: str | None, event_id: str | None) -> None:
        detail = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": None,
            "event_id": event_id,
        }
        self.st.errors.append(detail)
        await self.send({"type": "error", "error": detail})

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": copy.deepcopy(self.session)})
        async for message in self.ws:
            if message.type is WSMsgType.TEXT:
                await self.on_text(message.data)
            elif message.type is WSMsgType.BINARY:
                await self.error("Binary frames are not supported.", "invalid_json", None)
            else:
                break

    async def stop(self) -> None:
        tasks = [r.task for r in self.replies if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def on_text(self, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            await self.error("The message is not valid JSON.", "invalid_json", None)
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self.error("Missing or invalid 'type'.", "invalid_value", None)
            return
        event_id = event.get("event_id")
        if event_id is not None and not isinstance(event_id, str):
            await self.error("'event_id' must be a string.", "invalid_value", None)
            return
        kind = event["type"]
        record = dict(event)
        if kind == "input_audio_buffer.append":
            audio = record.pop("audio", None)
            record["audio_bytes"] = len(audio) * 3 // 4 if isinstance(audio, str) else None
        self.st.received.append(record)
        if kind not in _CLIENT_TYPES:
            await self.error(f"Invalid value: '{kind}'.", "invalid_value", event_id)
            return
        handler = getattr(self, "on_" + kind.replace(".", "_"), None)
        if handler is None:
            await self.error(f"The fake does not implement '{kind}'.", "unsupported", event_id)
            return
        await handler(event, event_id)

    # --------------------------------------------------------------- session

    async def on_session_update(self, event: dict[str, Any], event_id: str | None) -> None:
        problem = validate_session(event.get("session"))
        if problem:
            await self.error(problem, "invalid_value", event_id)
            return
        _merge(self.session, event["session"])
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.session)})

    def turn(self) -> dict[str, Any] | None:
        turn: dict[str, Any] | None = self.session["audio"]["input"]["turn_detection"]
        return turn

    # ------------------------------------------------------------ input audio

    async def on_input_audio_buffer_append(
        self, event: dict[str, Any], event_id: str | None
    ) -> None:
        audio = event.get("audio")
        try:
            pcm = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
        except (binascii.Error, ValueError):
            pcm = None
        if pcm is None or len(pcm) % 2:
            await self.error("Invalid 'audio': expected base64 PCM16.", "invalid_value", event_id)
            return
        self.st.audio_in += pcm
        self.buffer += pcm
        turn = self.turn()
        if turn is None or turn.get("type") != "server_vad":
            self.input_ms += len(pcm) // BYTES_PER_MS
            return
        self.window += pcm
        size = VAD_WINDOW_MS * BYTES_PER_MS
        while len(self.window) >= size:
            frame = np.frombuffer(bytes(self.window[:size]), dtype="<i2").astype(np.float64)
            del self.window[:size]
            self.input_ms += VAD_WINDOW_MS
            rms = math.sqrt(float(np.mean(frame * frame))) / 32768.0
            level_db = 20 * math.log10(rms) if rms > 0 else -120.0
            await self.vad(level_db > -60.0 + 45.0 * float(turn["threshold"]), turn)

    async def vad(self, voiced: bool, turn: dict[str, Any]) -> None:
        end_ms = self.input_ms
        if voiced and not self.speaking:
            self.speaking = True
            self.speech_item = self.next_id("item")
            self.last_voiced_ms = end_ms
            start_ms = max(0, end_ms - VAD_WINDOW_MS - int(turn["prefix_padding_ms"]))
            await self.send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": start_ms,
                    "item_id": self.speech_item,
                }
            )
            if turn.get("interrupt_response") and self.active is not None:
                self.cancel_reply(self.active)
        elif voiced:
            self.last_voiced_ms = end_ms
        elif self.speaking and end_ms - self.last_voiced_ms >= int(turn["silence_duration_ms"]):
            self.speaking = False
            await self.send(
                {
                    "type": "input_audio_buffer.speech_stopped",
                    "audio_end_ms": self.last_voiced_ms,
                    "item_id": self.speech_item,
                }
            )
            await self.commit(self.speech_item)
            if turn.get("create_response"):
                await self.start_reply(None)

    async def on_input_audio_buffer_commit(
        self, event: dict[str, Any], event_id: str | None
    ) -> None:
        buffered_ms = len(self.buffer) // BYTES_PER_MS
        if buffered_ms < MIN_COMMIT_MS:
            await self.error(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {buffered_ms}ms of audio.",
                "input_audio_buffer_commit_empty",
                event_id,
            )
            return
        item_id = self.speech_item if self.speaking else self.next_id("item")
        self.speaking = False
        await self.commit(item_id)

    async def on_input_audio_buffer_clear(
        self, event: dict[str, Any], event_id: str | None
    ) -> None:
        self.buffer.clear()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def commit(self, item_id: str) -> None:
        audio_ms = len(self.buffer) // BYTES_PER_MS
        self.buffer.clear()
        previous, self.last_item = self.last_item, item_id
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.items[item_id] = {"role": "user", "audio_ms": audio_ms}
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": previous,
                "item_id": item_id,
            }
        )
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item}
        )
        if self.session["audio"]["input"].get("transcription"):
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": self.st.heard,
                }
            )

    # -------------------------------------------------------------- replies

    async def on_response_create(self, event: dict[str, Any], event_id: str | None) -> None:
        params = event.get("response", {})
        metadata = params.get("metadata") if isinstance(params, dict) else None
        if not isinstance(params, dict) or (
            metadata is not None
            and (
                not isinstance(metadata, dict)
                or len(metadata) > 16
                or not all(
                    isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                    for k, v in metadata.items()
                )
            )
        ):
            await self.error("Invalid 'response'.", "invalid_value", event_id)
            return
        if self.active is not None:
            await self.error(
                "Conversation already has an active response in progress: "
                f"{self.active.id}. Wait until the response is finished before creating a new one.",
                "conversation_already_has_active_response",
                event_id,
            )
            return
        await self.start_reply(metadata)

    async def start_reply(self, metadata: dict[str, str] | None) -> None:
        reply = _Reply(self.next_id("resp"), self.next_id("item"), metadata)
        self.active = reply
        self.replies.append(reply)
        self.items[reply.item_id] = {"role": "assistant", "audio_ms": 0}
        reply.task = asyncio.create_task(self.generate(reply))

    async def on_response_cancel(self, event: dict[str, Any], event_id: str | None) -> None:
        wanted = event.get("response_id")
        reply = self.active
        if reply is None or (wanted is not None and wanted != reply.id):
            await self.error(
                "Cancellation failed: no active response found.",
                "response_cancel_not_active",
                event_id,
            )
            return
        self.cancel_reply(reply)

    def cancel_reply(self, reply: _Reply) -> None:
        reply.cancelled = True
        if self.active is reply:
            self.active = None

    def response_body(self, reply: _Reply, status: str, output: list[Any]) -> dict[str, Any]:
        details = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": "client_cancelled"}
        return {
            "object": "realtime.response",
            "id": reply.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": "conv_fake",
            "output_modalities": ["audio"],
            "metadata": reply.metadata,
            "usage": None,
        }

    async def generate(self, reply: _Reply) -> None:
        """Stream one reply; after a cancel send ``late_deltas`` audio deltas, then done."""
        st = self.st
        profile = st.profile
        item: dict[str, Any] = {
            "id": reply.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        where = {"response_id": reply.id, "item_id": reply.item_id, "output_index": 0}
        await self.send(
            {"type": "response.created", "response": self.response_body(reply, "in_progress", [])}
        )
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": reply.id,
                "output_index": 0,
                "item": item,
            }
        )
        previous, self.last_item = self.last_item, reply.item_id
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        await self.send(
            {
                "type": "response.content_part.added",
                **where,
                "content_index": 0,
                "part": {"type": "audio", "transcript": ""},
            }
        )
        await profile.first_byte()
        transcript = ""
        late = 0
        for audio_deltas, piece in enumerate(reply_pieces(st.reply)):
            if reply.cancelled and late >= st.late_deltas:
                break
            if not reply.cancelled:
                await profile.between_chunks()
                await self.send(
                    {
                        "type": "response.output_audio_transcript.delta",
                        **where,
                        "content_index": 0,
                        "delta": piece,
                    }
                )
                transcript += piece
            if not self.fault_used and audio_deltas == profile.after_chunks:
                self.fault_used = True
                if not await self.fault(reply):
                    return
            await profile.between_chunks()
            start_ms = self.items[reply.item_id]["audio_ms"]
            pcm = tone(start_ms, len(piece) * MS_PER_CHAR)
            self.items[reply.item_id]["audio_ms"] = start_ms + len(piece) * MS_PER_CHAR
            if reply.cancelled:
                late += 1
                st.late_deltas_sent += 1
            await self.send(
                {
                    "type": "response.output_audio.delta",
                    **where,
                    "content_index": 0,
                    "delta": base64.b64encode(pcm).decode(),
                }
            )
        status = "cancelled" if reply.cancelled else "completed"
        item = {
            **item,
            "status": "incomplete" if reply.cancelled else "completed",
            "content": [{"type": "output_audio", "transcript": transcript}],
        }
        self.items[reply.item_id]["transcript"] = transcript
        await self.send({"type": "response.output_audio.done", **where, "content_index": 0})
        await self.send(
            {
                "type": "response.output_audio_transcript.done",
                **where,
                "content_index": 0,
                "transcript": transcript,
            }
        )
        await self.send(
            {
                "type": "response.content_part.done",
                **where,
                "content_index": 0,
                "part": {"type": "audio", "transcript": transcript},
            }
        )
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": reply.id,
                "output_index": 0,
                "item": item,
            }
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item}
        )
        if self.active is reply:
            self.active = None
        await self.send(
            {"type": "response.done", "response": self.response_body(reply, status, [item])}
        )

    async def fault(self, reply: _Reply) -> bool:
        """Inject the profile's mid-stream fault; ``False`` when the reply must stop here."""
        fault = self.st.profile.fault
        if fault is Fault.STALL:
            await asyncio.Event().wait()  # silent until the client leaves
        if fault is Fault.DISCONNECT:
            if self.request.transport is not None:
                self.request.transport.abort()  # no close frame
            return False
        if fault is Fault.MALFORMED:
            async with self.lock:
                await self.ws.send_str(
                    json.dumps(
                        {
                            "type": "response.output_audio.delta",
                            "event_id": "event_bad",
                            "response_id": reply.id,
                            "item_id": reply.item_id,
                            "delta": 42,
                        }
                    )
                )
        return True

    # -------------------------------------------------------------- items

    async def on_conversation_item_truncate(
        self, event: dict[str, Any], event_id: str | None
    ) -> None:
        item_id = event.get("item_id")
        end_ms = event.get("audio_end_ms")
        item = self.items.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            await self.error(f"Item with item_id '{item_id}' not found.", "invalid_value", event_id)
            return
        if item["role"] != "assistant":
            await self.error("Only assistant messages can be truncated.", "invalid_value", event_id)
            return
        if event.get("content_index") != 0:
            await self.error("Invalid 'content_index'.", "invalid_value", event_id)
            return
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
            await self.error("Invalid 'audio_end_ms'.", "invalid_value", event_id)
            return
        if end_ms > item["audio_ms"]:
            await self.error(
                f"Audio content of {item['audio_ms']}ms is already shorter than {end_ms}ms",
                "invalid_value",
                event_id,
            )
            return
        item["audio_ms"] = end_ms
        item["transcript"] = None
        self.st.truncations.append({"item_id": item_id, "audio_end_ms": end_ms})
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": end_ms,
            }
        )

    async def on_conversation_item_delete(
        self, event: dict[str, Any], event_id: str | None
    ) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or item_id not in self.items:
            await self.error(f"Item with item_id '{item_id}' not found.", "invalid_value", event_id)
            return
        del self.items[item_id]
        self.st.deletions.append(item_id)
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})
