"""A local OpenAI Chat Completions server that streams replies over Server-Sent Events.

``POST /v1/chat/completions`` checks ``Authorization: Bearer <api_key>`` (401 with
an OpenAI-style error body otherwise; no check when ``api_key`` is ``None``),
validates the JSON body by hand (400 ``invalid_request_error`` on anything the
real API refuses), then streams the scripted reply one word per chunk: a role
chunk, content chunks, a ``finish_reason`` chunk (``length`` when the token cap
cuts the reply, a token being one word here), a usage chunk when
``stream_options.include_usage`` is set, and ``data: [DONE]``.

Timing comes from the :class:`Profile` (first byte before the role chunk, the
chunk pace before each content chunk) and so do the faults; ``after_chunks``
counts content chunks.  ``error_after_chunks`` replaces the rest of the reply
with a mid-stream ``{"error": ...}`` payload.  Everything the client sent, and the
instant it went away, is recorded on the app's :class:`ChatFakeState`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from tests.fakes.profile import Fault, Profile

DEFAULT_REPLY: Final = "Sure, I can help with that. What is your account number?"

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
_KNOWN_FIELDS: Final = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "n",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "metadata",
        "store",
        "service_tier",
        "reasoning_effort",
    }
)


@dataclass
class ChatFakeState:
    """Script and recordings of one fake server."""

    profile: Profile
    api_key: str | None
    reply: str
    error_after_chunks: int | None = None
    comments: bool = True
    multiline_data: bool = False
    crlf: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)
    """Request bodies that passed validation, in arrival order."""
    headers: list[dict[str, str]] = field(default_factory=list)
    """Request headers of every request (valid or not)."""
    peers: list[tuple[str, int]] = field(default_factory=list)
    """Client (host, port) of each valid request: equal ports mean a reused connection."""
    content_chunks_sent: list[int] = field(default_factory=list)
    """Content chunks written per valid request (updated as they go out)."""
    completed: int = 0
    """Streams that reached ``[DONE]`` (or the scripted error's end)."""
    disconnects_ns: list[int] = field(default_factory=list)
    """``time.monotonic_ns()`` of each client that went away mid-stream."""
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


STATE: Final = web.AppKey("openai_chat_state", ChatFakeState)


def create_app(
    profile: Profile | None = None,
    *,
    api_key: str | None = "test-key",
    reply: str = DEFAULT_REPLY,
    error_after_chunks: int | None = None,
    comments: bool = True,
    multiline_data: bool = False,
    crlf: bool = False,
) -> web.Application:
    """The fake; the client's ``base_url`` is the server's ``/v1``.

    ``comments`` sends a ``: keep-alive`` comment before the first chunk;
    ``multiline_data`` spreads each JSON chunk over several ``data:`` lines;
    ``crlf`` ends lines with CRLF instead of LF.
    """
    app = web.Application()
    app[STATE] = ChatFakeState(
        profile=profile or Profile(),
        api_key=api_key,
        reply=reply,
        error_after_chunks=error_after_chunks,
        comments=comments,
        multiline_data=multiline_data,
        crlf=crlf,
    )
    app.router.add_post("/v1/chat/completions", _completions)
    return app


def _error_response(
    status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def validate_body(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The parsed body and ``""``, or ``None`` and why the real API would refuse it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "We could not parse the JSON body of your request."
    if not isinstance(body, dict):
        return None, "The request body must be a JSON object."
    unknown = sorted(set(body) - _KNOWN_FIELDS)
    if unknown:
        return None, f"Unrecognized request argument supplied: {unknown[0]}"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return None, "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "'messages' must be a non-empty array"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return None, f"Invalid value for 'messages[{i}].role'"
        if not isinstance(message.get("content"), str | list):
            return None, f"Invalid type for 'messages[{i}].content'"
    if body.get("stream") is not True:
        return None, "this fake only serves stream: true"
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict)
        or not isinstance(options.get("include_usage", False), bool)
        or set(options) - {"include_usage", "include_obfuscation"}
    ):
        return None, "Invalid value for 'stream_options'"
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        return None, "Invalid 'temperature': must be a number between 0 and 2"
    if "max_tokens" in body and "max_completion_tokens" in body:
        return None, "max_tokens and max_completion_tokens cannot both be set"
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            return None, f"Invalid '{key}': must be an integer >= 1"
    return body, ""


def reply_words(reply: str) -> list[str]:
    """The content deltas of ``reply``: each word with the space before it."""
    words = reply.split(" ")
    return [words[0], *(" " + w for w in words[1:])] if reply else []


async def _completions(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    profile = st.profile
    st.headers.append(dict(request.headers))
    if profile.fault is Fault.UNAUTHORIZED or (
        st.api_key is not None and request.headers.get("Authorization") != f"Bearer {st.api_key}"
    ):
        return _error_response(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
    if profile.fault is Fault.RATE_LIMITED:
        return _error_response(
            429,
            "Rate limit reached for requests.",
            "requests",
            "rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )
    body, problem = validate_body(await request.read())
    if body is None:
        return _error_response(400, problem, "invalid_request_error", None)
    st.received.append(body)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    st.peers.append((str(peer[0]), int(peer[1])) if peer else ("", 0))
    st.content_chunks_sent.append(0)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        if await _stream_reply(request, response, body):
            st.completed += 1
            await response.write_eof()
    except (asyncio.CancelledError, ConnectionResetError):
        st.disconnects_ns.append(time.monotonic_ns())
        st.disconnected.set()
        raise
    return response


async def _stream_reply(
    request: web.Request, response: web.StreamResponse, body: dict[str, Any]
) -> bool:
    """Write the reply's events; ``False`` when a fault ended the stream abnormally."""
    st = request.app[STATE]
    profile = st.profile
    eol = "\r\n" if st.crlf else "\n"
    ident = f"chatcmpl-fake{len(st.received)}"
    created = int(time.time())

    async def send(payload: dict[str, Any] | str) -> None:
        if isinstance(payload, str):
            lines = [payload]
        else:
            text = json.dumps(payload, indent=1 if st.multiline_data else None)
            lines = text.split("\n")
        await response.write(
            "".join(f"data: {line}{eol}" for line in lines).encode() + eol.encode()
        )

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    if st.comments:
        await response.write(f": keep-alive{eol}{eol}".encode())
    await profile.first_byte()
    await send(chunk({"role": "assistant", "content": "", "refusal": None}, None))
    words = reply_words(st.reply)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    finish = "stop"
    if limit is not None and limit < len(words):
        words, finish = words[:limit], "length"
    index = len(st.content_chunks_sent) - 1
    for sent, word in enumerate(words):
        await profile.between_chunks()
        if sent == st.error_after_chunks:
            await send(
                {
                    "error": {
                        "message": "The server had an error while processing your request.",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
            return True
        if sent == profile.after_chunks and not await _fault(request, send):
            return False
        await send(chunk({"content": word}, None))
        st.content_chunks_sent[index] = sent + 1
    await profile.between_chunks()
    await send(chunk({}, finish))
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        prompt_tokens = sum(
            len(str(m.get("content", "")).split()) for m in body["messages"] if isinstance(m, dict)
        )
        await send(
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(words),
                    "total_tokens": prompt_tokens + len(words),
                },
            }
        )
    await send("[DONE]")
    return True


async def _fault(request: web.Request, send: Any) -> bool:
    """Inject the profile's mid-stream fault; ``False`` when the stream must end here."""
    fault = request.app[STATE].profile.fault
    if fault is Fault.STALL:
        await asyncio.Event().wait()  # until the client gives up and disconnects
    if fault is Fault.DISCONNECT:
        if request.transport is not None:
            request.transport.abort()  # RST, no terminating chunk
        return False
    if fault is Fault.MALFORMED:
        await send('{"id": "chatcmpl-fake", "choices": [{"index": 0, "delta": {"content": "oo')
    return True
