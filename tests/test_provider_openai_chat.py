"""The Chat Completions SSE client against its fake over loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

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
from server.providers.openai_chat import (
    OpenAiChatProvider,
    OpenAiChatSettings,
    SseEvent,
    SseParser,
    decode_chunk,
    delta_for_chunk,
)
from tests.fakes.openai_chat import DEFAULT_REPLY, STATE, ChatFakeState, create_app, reply_words
from tests.fakes.profile import Fault, Profile

ServerFactory = Callable[..., Awaitable[TestServer]]

MESSAGES = (
    ChatMessage(role="system", content="You are a phone agent."),
    ChatMessage(role="user", content="Hi, I need help with my bill."),
)


async def _start(
    aiohttp_server: ServerFactory, app: web.Application, **overrides: Any
) -> tuple[OpenAiChatProvider, ChatFakeState]:
    server = await aiohttp_server(app)
    fields: dict[str, Any] = {
        "api_key": "test-key",
        "base_url": str(server.make_url("/v1")),
        "model": "gpt-test",
        "receive_timeout_s": 5.0,
    }
    fields.update(overrides)
    return OpenAiChatProvider(OpenAiChatSettings(**fields)), app[STATE]


async def _collect(provider: OpenAiChatProvider) -> list[LlmDelta]:
    return [delta async for delta in provider.stream(MESSAGES)]


async def _settle(baseline: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks beyond ``baseline`` once the fake's handlers have wound down (bounded wait)."""
    current = asyncio.current_task()
    for _ in range(200):
        extra = asyncio.all_tasks() - baseline - {current}
        if not any(not t.done() for t in extra):
            return set()
        await asyncio.sleep(0.01)
    return {t for t in asyncio.all_tasks() - baseline - {current} if not t.done()}


# ------------------------------------------------------------------ happy path


async def test_streams_reply_word_by_word_in_order(aiohttp_server: ServerFactory) -> None:
    provider, fake = await _start(aiohttp_server, create_app())
    try:
        deltas = await _collect(provider)
    finally:
        await provider.aclose()
    words = reply_words(DEFAULT_REPLY)
    assert [d.text for d in deltas[:-1]] == words
    assert deltas[-1] == LlmDelta(received_ns=deltas[-1].received_ns, text="", finish_reason="stop")
    assert all(d.finish_reason is None for d in deltas[:-1])
    stamps = [d.received_ns for d in deltas]
    assert stamps == sorted(stamps)
    assert fake.received == [
        {
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "You are a phone agent."},
                {"role": "user", "content": "Hi, I need help with my bill."},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ]
    assert fake.headers[0]["Authorization"] == "Bearer test-key"
    assert fake.completed == 1


async def test_token_cap_and_temperature_reach_the_body(aiohttp_server: ServerFactory) -> None:
    provider, fake = await _start(
        aiohttp_server, create_app(), max_tokens=3, temperature=0.2, max_tokens_field="max_tokens"
    )
    try:
        deltas = await _collect(provider)
    finally:
        await provider.aclose()
    assert "".join(d.text for d in deltas) == "".join(reply_words(DEFAULT_REPLY)[:3])
    assert deltas[-1].finish_reason == "length"
    body = fake.received[0]
    assert body["max_tokens"] == 3
    assert body["temperature"] == 0.2
    assert "max_completion_tokens" not in body


async def test_default_token_field_is_max_completion_tokens(aiohttp_server: ServerFactory) -> None:
    provider, fake = await _start(aiohttp_server, create_app(), max_tokens=50, include_usage=False)
    try:
        await _collect(provider)
    finally:
        await provider.aclose()
    assert fake.received[0]["max_completion_tokens"] == 50
    assert "max_tokens" not in fake.received[0]
    assert "stream_options" not in fake.received[0]


@pytest.mark.parametrize(
    "variant",
    [
        {"comments": False},
        {"multiline_data": True},
        {"crlf": True},
        {"crlf": True, "multiline_data": True, "comments": True},
    ],
)
async def test_sse_framing_variants_give_the_same_reply(
    aiohttp_server: ServerFactory, variant: dict[str, Any]
) -> None:
    provider, _ = await _start(aiohttp_server, create_app(**variant))
    try:
        deltas = await _collect(provider)
    finally:
        await provider.aclose()
    assert "".join(d.text for d in deltas) == DEFAULT_REPLY
    assert deltas[-1].finish_reason == "stop"


async def test_local_server_without_key_gets_no_auth_header(aiohttp_server: ServerFactory) -> None:
    provider, fake = await _start(aiohttp_server, create_app(api_key=None), api_key=None)
    try:
        deltas = await _collect(provider)
    finally:
        await provider.aclose()
    assert "".join(d.text for d in deltas) == DEFAULT_REPLY
    assert "Authorization" not in fake.headers[0]


async def test_consecutive_replies_reuse_one_connection(aiohttp_server: ServerFactory) -> None:
    provider, fake = await _start(aiohttp_server, create_app())
    try:
        for _ in range(3):
            assert "".join(d.text for d in await _collect(provider)) == DEFAULT_REPLY
    finally:
        await provider.aclose()
    assert len(fake.peers) == 3
    assert len(set(fake.peers)) == 1


async def test_borrowed_session_is_left_open(aiohttp_server: ServerFactory) -> None:
    import aiohttp

    server = await aiohttp_server(create_app())
    settings_ = OpenAiChatSettings(api_key="test-key", base_url=str(server.make_url("/v1")))
    async with aiohttp.ClientSession() as session:
        provider = OpenAiChatProvider(settings_, session=session)
        assert "".join(d.text for d in await _collect(provider)) == DEFAULT_REPLY
        await provider.aclose()
        assert not session.closed


# ----------------------------------------------------------------------- faults


async def test_bad_key_is_auth_error(aiohttp_server: ServerFactory) -> None:
    provider, fake = await _start(aiohttp_server, create_app(), api_key="wrong")
    try:
        with pytest.raises(AuthError) as info:
            await _collect(provider)
    finally:
        await provider.aclose()
    assert info.value.status == 401
    assert not info.value.retryable
    assert fake.received == []


async def test_unauthorized_fault(aiohttp_server: ServerFactory) -> None:
    provider, _ = await _start(aiohttp_server, create_app(Profile(fault=Fault.UNAUTHORIZED)))
    try:
        with pytest.raises(AuthError):
            await _collect(provider)
    finally:
        await provider.aclose()


async def test_rate_limited_carries_retry_after(aiohttp_server: ServerFactory) -> None:
    provider, _ = await _start(aiohttp_server, create_app(Profile(fault=Fault.RATE_LIMITED)))
    try:
        with pytest.raises(RateLimitedError) as info:
            await _collect(provider)
    finally:
        await provider.aclose()
    assert info.value.retry_after_s == 1.0
    assert info.value.status == 429


async def test_refused_request_is_not_retryable(aiohttp_server: ServerFactory) -> None:
    provider, fake = await _start(aiohttp_server, create_app())
    try:
        with pytest.raises(ProviderError) as info:
            async for _ in provider.stream([]):
                pass
    finally:
        await provider.aclose()
    assert info.value.status == 400
    assert not info.value.retryable
    assert "invalid_request_error" in str(info.value)
    assert fake.received == []


async def test_stall_is_timeout_and_the_connection_is_dropped(
    aiohttp_server: ServerFactory,
) -> None:
    profile = Profile(fault=Fault.STALL, after_chunks=2)
    provider, fake = await _start(aiohttp_server, create_app(profile), receive_timeout_s=0.3)
    seen: list[str] = []
    try:
        with pytest.raises(ProviderTimeoutError):
            async for delta in provider.stream(MESSAGES):
                seen.append(delta.text)
    finally:
        await provider.aclose()
    assert seen == reply_words(DEFAULT_REPLY)[:2]
    await asyncio.wait_for(fake.disconnected.wait(), 5)


async def test_disconnect_mid_stream_is_connection_lost(aiohttp_server: ServerFactory) -> None:
    provider, _ = await _start(aiohttp_server, create_app(Profile(fault=Fault.DISCONNECT)))
    seen: list[str] = []
    try:
        with pytest.raises(ConnectionLostError):
            async for delta in provider.stream(MESSAGES):
                seen.append(delta.text)
    finally:
        await provider.aclose()
    assert seen == reply_words(DEFAULT_REPLY)[:2]


async def test_malformed_chunk_is_protocol_error(aiohttp_server: ServerFactory) -> None:
    provider, _ = await _start(
        aiohttp_server, create_app(Profile(fault=Fault.MALFORMED, after_chunks=3))
    )
    seen: list[str] = []
    try:
        with pytest.raises(ProviderProtocolError):
            async for delta in provider.stream(MESSAGES):
                seen.append(delta.text)
    finally:
        await provider.aclose()
    assert seen == reply_words(DEFAULT_REPLY)[:3]


async def test_mid_stream_error_payload_is_provider_error(aiohttp_server: ServerFactory) -> None:
    provider, _ = await _start(aiohttp_server, create_app(error_after_chunks=4))
    seen: list[str] = []
    try:
        with pytest.raises(ProviderError) as info:
            async for delta in provider.stream(MESSAGES):
                seen.append(delta.text)
    finally:
        await provider.aclose()
    assert type(info.value) is ProviderError
    assert "server_error" in str(info.value)
    assert info.value.retryable
    assert seen == reply_words(DEFAULT_REPLY)[:4]


async def test_slow_drip_still_delivers_everything(aiohttp_server: ServerFactory) -> None:
    profile = Profile(fault=Fault.SLOW_DRIP, chunk_interval_ms=1.0)
    provider, _ = await _start(aiohttp_server, create_app(profile))
    try:
        deltas = await _collect(provider)
    finally:
        await provider.aclose()
    assert "".join(d.text for d in deltas) == DEFAULT_REPLY


async def test_connection_refused_is_connection_lost(
    aiohttp_unused_port: Callable[[], int],
) -> None:
    port = aiohttp_unused_port()
    provider = OpenAiChatProvider(
        OpenAiChatSettings(api_key="k", base_url=f"http://127.0.0.1:{port}/v1")
    )
    try:
        with pytest.raises(ConnectionLostError):
            await _collect(provider)
    finally:
        await provider.aclose()


async def test_non_sse_answer_is_protocol_error(aiohttp_server: ServerFactory) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"choices": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    provider = OpenAiChatProvider(OpenAiChatSettings(base_url=str(server.make_url("/v1"))))
    try:
        with pytest.raises(ProviderProtocolError):
            await _collect(provider)
    finally:
        await provider.aclose()


async def test_server_error_status_is_retryable(aiohttp_server: ServerFactory) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "overloaded"}}, status=503)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    provider = OpenAiChatProvider(OpenAiChatSettings(base_url=str(server.make_url("/v1"))))
    try:
        with pytest.raises(ProviderError) as info:
            await _collect(provider)
    finally:
        await provider.aclose()
    assert info.value.status == 503
    assert info.value.retryable


# ----------------------------------------------------------------- cancellation


async def test_aclose_aborts_the_request_at_once(aiohttp_server: ServerFactory) -> None:
    baseline = asyncio.all_tasks()
    provider, fake = await _start(aiohttp_server, create_app(Profile(chunk_interval_ms=50)))
    try:
        stream = provider.stream(MESSAGES)
        first = await anext(stream)
        while not first.text:
            first = await anext(stream)
        assert first.text == reply_words(DEFAULT_REPLY)[0]
        await stream.aclose()
        await asyncio.wait_for(fake.disconnected.wait(), 5)
        assert fake.content_chunks_sent[0] < len(reply_words(DEFAULT_REPLY))
        assert fake.completed == 0
        assert len(fake.disconnects_ns) == 1
        # The aborted connection is not reused: the next reply comes on a fresh one.
        fake.profile.chunk_interval_ms = 0.0
        assert "".join(d.text for d in await _collect(provider)) == DEFAULT_REPLY
        assert fake.peers[0] != fake.peers[1]
    finally:
        await provider.aclose()
    assert await _settle(baseline) == set()


async def test_cancelling_the_consumer_aborts_the_request(aiohttp_server: ServerFactory) -> None:
    baseline = asyncio.all_tasks()
    provider, fake = await _start(aiohttp_server, create_app(Profile(chunk_interval_ms=50)))
    got_one = asyncio.Event()

    async def consume() -> None:
        async for delta in provider.stream(MESSAGES):
            if delta.text:
                got_one.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(got_one.wait(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.wait_for(fake.disconnected.wait(), 5)
        assert fake.completed == 0
    finally:
        await provider.aclose()
    assert await _settle(baseline) == set()


async def test_no_tasks_left_after_errors(aiohttp_server: ServerFactory) -> None:
    baseline = asyncio.all_tasks()
    for profile in (Profile(fault=Fault.MALFORMED), Profile(fault=Fault.DISCONNECT)):
        provider, _ = await _start(aiohttp_server, create_app(profile))
        with pytest.raises(ProviderError):
            await _collect(provider)
        await provider.aclose()
    assert await _settle(baseline) == set()


# ------------------------------------------------------------------ SSE parser


def _events(parts: list[bytes]) -> list[SseEvent]:
    parser = SseParser()
    out: list[SseEvent] = []
    for part in parts:
        out.extend(parser.feed(part))
    return out


SAMPLE = (
    b"\xef\xbb\xbf: comment\r\n\r\n"
    b"event: error\ndata: one\ndata:two\n\n"
    b"data: x\r\rdata: y\r\n\r\n"
    b"id: 7\nretry: 10\nfoo\ndata\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SseEvent("error", "one\ntwo"),
    SseEvent("message", "x"),
    SseEvent("message", "y"),
    SseEvent("message", ""),
    SseEvent("message", "[DONE]"),
]


def test_sse_parser_reads_fields_comments_and_line_endings() -> None:
    assert _events([SAMPLE]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=12))
def test_sse_parser_is_indifferent_to_read_boundaries(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(SAMPLE)]
    assert _events([SAMPLE[a:b] for a, b in itertools.pairwise(points)]) == EXPECTED


def test_sse_parser_refuses_oversized_lines_and_bad_utf8() -> None:
    with pytest.raises(ProviderProtocolError):
        SseParser(max_event_bytes=16).feed(b"data: " + b"x" * 64)
    with pytest.raises(ProviderProtocolError):
        SseParser().feed(b"data: \xff\xfe\n\n")


# ----------------------------------------------------------------------- fuzz

VALID_CHUNK = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
).encode()


def _process(stream: bytes) -> None:
    """Parse and map like the client does; only ProviderProtocolError may escape."""
    parser = SseParser()
    try:
        for event in parser.feed(stream):
            if event.data.startswith("[DONE]"):
                return
            chunk = decode_chunk(event.data)
            if chunk.error is None:
                delta_for_chunk(chunk, 0)
    except ProviderProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(stream: bytes) -> None:
    _process(stream)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID_CHUNK)), st.integers(0, 8), st.binary(max_size=8))
def test_fuzz_mutated_chunks(at: int, cut: int, insert: bytes) -> None:
    mutated = VALID_CHUNK[:at] + insert + VALID_CHUNK[at + cut :]
    _process(b"data: " + mutated + b"\n\n")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["choices", "usage", "error", "id", "delta", "index"]),
        json_values,
        max_size=3,
    ),
    st.lists(
        st.dictionaries(
            st.sampled_from(["index", "delta", "finish_reason"]),
            json_values | st.fixed_dictionaries({"content": json_values}),
            max_size=3,
        ),
        max_size=2,
    ),
)
def test_fuzz_structured_chunks(top: dict[str, Any], choices: list[dict[str, Any]]) -> None:
    payload = dict(top)
    if choices:
        payload["choices"] = choices
    _process(b"data: " + json.dumps(payload).encode() + b"\n\n")
