"""OpenAI-compatible Chat Completions streaming over Server-Sent Events: the whole wire format.

One request per reply: ``POST {base_url}/chat/completions`` with
``Authorization: Bearer <api_key>`` (omitted when no key is set, for local
servers such as Ollama, vLLM or llama.cpp) and a JSON body
``{model, messages, stream: true, stream_options: {include_usage: true}, ...}``.

The answer is ``text/event-stream``.  Each event's ``data`` is one JSON chunk:

* a role chunk first (``choices[0].delta = {"role": "assistant", "content": ""}``),
* content chunks (``choices[0].delta.content``),
* a chunk with ``choices[0].finish_reason`` (``stop``, ``length``, ...),
* with ``include_usage`` a last chunk with ``choices: []`` and ``usage``,
* then the literal ``data: [DONE]``.

A chunk ``{"error": {...}}`` (or an SSE event named ``error``) is a mid-stream
failure.  Comment lines (``: keep-alive``) are ignored.  There is no cancel
message: closing the iterator aborts the HTTP request (the connection is closed,
not returned to the pool).  A stream read to ``[DONE]`` leaves its connection in
the session's pool, so the next reply reuses it (HTTP keep-alive).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Final, Literal

import aiohttp
import msgspec

from server.providers.base import (
    AuthError,
    ChatMessage,
    ConnectionLostError,
    LlmDelta,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    RateLimitedError,
)
from server.providers.connect import error_for_exception, error_for_status

PROVIDER: Final = "openai_chat"
"""Name in errors and in :attr:`OpenAiChatProvider.name`."""

DONE_DATA: Final = "[DONE]"
"""The ``data`` of the event that ends a stream."""

DRAIN_TIMEOUT_S: Final = 1.0
"""How long to wait for the end of the body after ``[DONE]`` before dropping the connection."""

MAX_EVENT_BYTES: Final = 1 << 20
"""Largest SSE line or event accepted (bytes); a longer one is a protocol error."""


class OpenAiChatSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.openai_chat]``: where and how to ask for replies."""

    api_key: str | None = None
    """Bearer token; ``None`` sends no Authorization header (local servers)."""
    base_url: str = "https://api.openai.com/v1"
    """Everything before ``/chat/completions`` (Groq: https://api.groq.com/openai/v1,
    Ollama: http://localhost:11434/v1, vLLM and llama.cpp: http://host:port/v1)."""
    model: str = "gpt-4o-mini"
    temperature: float | None = None
    """Sampling temperature 0..2; ``None`` leaves the server's default."""
    max_tokens: int | None = None
    """Reply length cap in tokens; ``None`` leaves the server's default."""
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    """Body field carrying :attr:`max_tokens` (older servers only know ``max_tokens``)."""
    include_usage: bool = True
    """Ask for the trailing usage chunk (``stream_options.include_usage``)."""
    connect_timeout_s: float = 10.0
    """Deadline for the TCP/TLS connection (s)."""
    receive_timeout_s: float = 30.0
    """Deadline for the response headers and for each read after them (s): a stall."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if not self.model:
            raise ValueError("model must not be empty")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in 0..2, got {self.temperature}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.connect_timeout_s <= 0 or self.receive_timeout_s <= 0:
            raise ValueError("connect_timeout_s and receive_timeout_s must be > 0")


# ---------------------------------------------------------------- request body


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The request body; unset optional fields are left out of the JSON."""

    model: str
    messages: Sequence[ChatMessage]
    stream: bool
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


def build_request(settings: OpenAiChatSettings, messages: Sequence[ChatMessage]) -> bytes:
    """The JSON body asking for a streamed reply to ``messages``."""
    limit = settings.max_tokens
    legacy = settings.max_tokens_field == "max_tokens"
    request = ChatRequest(
        model=settings.model,
        messages=messages,
        stream=True,
        stream_options=StreamOptions(include_usage=True) if settings.include_usage else None,
        temperature=settings.temperature,
        max_tokens=limit if legacy else None,
        max_completion_tokens=None if legacy else limit,
    )
    return msgspec.json.encode(request)


def build_headers(settings: OpenAiChatSettings) -> dict[str, str]:
    """Request headers: JSON in, event stream out, Bearer auth when a key is set."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return headers


def completions_url(settings: OpenAiChatSettings) -> str:
    return settings.base_url.rstrip("/") + "/chat/completions"


# ------------------------------------------------------------------ stream chunks


class Delta(msgspec.Struct, frozen=True, gc=False):
    """``choices[i].delta``; tool-call and other fields are ignored."""

    role: str | None = None
    content: str | None = None


class Choice(msgspec.Struct, frozen=True, gc=False):
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None


class Usage(msgspec.Struct, frozen=True, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ErrorBody(msgspec.Struct, frozen=True, gc=False):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class Chunk(msgspec.Struct, frozen=True, gc=False):
    """One ``data`` payload: a ``chat.completion.chunk`` or an ``{"error": ...}`` object."""

    choices: list[Choice] | None = None
    usage: Usage | None = None
    error: ErrorBody | None = None


_chunk_decoder: Final = msgspec.json.Decoder(Chunk)


def decode_chunk(data: str) -> Chunk:
    """Decode one event's data; raises ProviderProtocolError on anything malformed."""
    try:
        chunk = _chunk_decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise ProviderProtocolError(PROVIDER, f"bad chunk: {exc}") from exc
    if chunk.error is None and chunk.choices is None:
        raise ProviderProtocolError(PROVIDER, "chunk has neither choices nor error")
    return chunk


def error_from_payload(body: ErrorBody) -> ProviderError:
    """The typed error for a mid-stream ``{"error": ...}`` payload."""
    kind = body.type or ""
    code = "" if body.code is None else str(body.code)
    message = f"stream error {kind or code or 'unknown'}: {body.message[:200]}"
    if "rate_limit" in code or "rate_limit" in kind:
        return RateLimitedError(PROVIDER, message, status=None, retry_after_s=None)
    if code == "invalid_api_key" or kind == "authentication_error":
        return AuthError(PROVIDER, message)
    error = ProviderError(PROVIDER, message)
    error.retryable = kind != "invalid_request_error"
    return error


def delta_for_chunk(chunk: Chunk, received_ns: int) -> LlmDelta | None:
    """The reply piece in ``chunk`` (choice 0), ``None`` when it carries none.

    Raises the mapped :class:`ProviderError` for an error payload.
    """
    if chunk.error is not None:
        raise error_from_payload(chunk.error)
    for choice in chunk.choices or ():
        if choice.index != 0:
            continue
        text = choice.delta.content or ""
        if text or choice.finish_reason is not None:
            return LlmDelta(received_ns=received_ns, text=text, finish_reason=choice.finish_reason)
    return None


# ---------------------------------------------------------------------- SSE


class SseEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event: its type (``message`` unless named) and its joined data lines."""

    event: str
    data: str


class SseParser:
    """Incremental ``text/event-stream`` parser: feed bytes as read, get whole events.

    Lines end in CRLF, LF or CR (a CR at the end of a read is held until the next
    read shows whether LF follows).  ``data`` lines of one event are joined with
    LF; ``:`` lines are comments; ``id`` and ``retry`` are ignored; an event is
    dispatched at a blank line.  Bytes that are not UTF-8, or a line or event
    over ``max_event_bytes``, raise ProviderProtocolError.
    """

    __slots__ = ("_data", "_event", "_first_line", "_max", "_size", "_tail")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._tail = b""
        self._data: list[str] = []
        self._event = ""
        self._size = 0
        self._first_line = True

    def feed(self, data: bytes) -> list[SseEvent]:
        buf = self._tail + data if self._tail else data
        lines = buf.splitlines(keepends=True)
        self._tail = b""
        if lines and (lines[-1].endswith(b"\r") or not lines[-1].endswith(b"\n")):
            self._tail = lines.pop()  # unfinished, or a CR that may be half of CRLF
        if len(self._tail) > self._max:
            raise ProviderProtocolError(PROVIDER, f"SSE line over {self._max} bytes")
        events: list[SseEvent] = []
        for raw in lines:
            event = self._line(raw[:-2] if raw.endswith(b"\r\n") else raw[:-1])
            if event is not None:
                events.append(event)
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProviderProtocolError(PROVIDER, "SSE line is not UTF-8") from exc
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._size += len(raw)
            if self._size > self._max:
                raise ProviderProtocolError(PROVIDER, f"SSE event over {self._max} bytes")
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None

    def _dispatch(self) -> SseEvent | None:
        event = SseEvent(self._event or "message", "\n".join(self._data)) if self._data else None
        self._data = []
        self._event = ""
        self._size = 0
        return event


# ---------------------------------------------------------------------- client


class OpenAiChatProvider:
    """:class:`~server.providers.base.LlmProvider` over an OpenAI-compatible endpoint.

    Uses ``session`` when given (the caller closes it); otherwise owns one
    :class:`aiohttp.ClientSession`, created on first use and closed by
    :meth:`aclose`, so consecutive replies share pooled keep-alive connections.
    """

    name = PROVIDER

    def __init__(
        self, settings: OpenAiChatSettings, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._url = completions_url(settings)
        self._headers = build_headers(settings)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s)

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[LlmDelta, None]:
        """The reply to ``messages`` as it is generated.

        Ends after ``[DONE]``; closing the iterator (``aclose``) or cancelling
        its consumer aborts the request at once.  Raises ProviderError subclasses.
        """
        return self._stream(build_request(self.settings, tuple(messages)))

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

    async def _stream(self, body: bytes) -> AsyncGenerator[LlmDelta, None]:
        receive_s = self.settings.receive_timeout_s
        try:
            async with asyncio.timeout(receive_s + self.settings.connect_timeout_s):
                response = await self._client().post(
                    self._url, data=body, headers=self._headers, timeout=self._timeout
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise error_for_exception(PROVIDER, exc) from exc
        complete = False
        try:
            if response.status >= 400:
                raise error_for_status(
                    PROVIDER, response.status, await self._read_text(response), response.headers
                )
            if not response.content_type.startswith("text/event-stream"):
                raise ProviderProtocolError(
                    PROVIDER, f"expected text/event-stream, got {response.content_type!r}"
                )
            parser = SseParser()
            finished = False
            while True:
                data = await self._read(response)
                received_ns = time.monotonic_ns()
                if not data:
                    if finished:  # some servers end without [DONE] after the finish chunk
                        complete = True
                        return
                    raise ConnectionLostError(PROVIDER, "stream ended before [DONE]")
                for event in parser.feed(data):
                    if event.data.startswith(DONE_DATA):
                        complete = await self._drain(response)
                        return
                    chunk = decode_chunk(event.data)
                    if event.event == "error" and chunk.error is None:
                        raise ProviderError(PROVIDER, f"error event: {event.data[:200]}")
                    delta = delta_for_chunk(chunk, received_ns)
                    if delta is not None:
                        finished = finished or delta.finish_reason is not None
                        yield delta
        finally:
            if complete:
                response.release()
            else:
                response.close()  # abort: the connection is dropped, not pooled

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The next bytes of the body (``b""`` at its end), within the receive deadline."""
        try:
            async with asyncio.timeout(self.settings.receive_timeout_s):
                return await response.content.readany()
        except TimeoutError as exc:
            raise ProviderTimeoutError(
                PROVIDER, f"no data for {self.settings.receive_timeout_s} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise error_for_exception(PROVIDER, exc) from exc

    async def _drain(self, response: aiohttp.ClientResponse) -> bool:
        """Read to the end of the body within :data:`DRAIN_TIMEOUT_S`; ``True`` if reached.

        Only a body read to its end leaves a connection that can be reused.
        """
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while await response.content.readany():
                    pass
        except (aiohttp.ClientError, TimeoutError):
            return False
        return True

    async def _read_text(self, response: aiohttp.ClientResponse) -> str:
        try:
            async with asyncio.timeout(self.settings.receive_timeout_s):
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            return ""
        return raw.decode("utf-8", "replace")
