"""Deepgram Aura TTS client against the fake over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp.pytest_plugin import AiohttpServer
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.providers.base import (
    AuthError,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    RateLimitedError,
    TtsChunk,
)
from server.providers.deepgram_tts import DeepgramTts, DeepgramTtsSettings, SpeakState
from tests.fakes.deepgram_tts import LOG, FakeLog, create_app, synth
from tests.fakes.profile import Fault, Profile

PIECES = ["Hello ", "from ", "Aura, ", "the voice."]
TEXT = "".join(PIECES)


async def start_fake(aiohttp_server: AiohttpServer, **kwargs: Any) -> tuple[TestServer, FakeLog]:
    app = create_app(**kwargs)
    server = await aiohttp_server(app, host="127.0.0.1")
    return server, app[LOG]


def settings_for(server: TestServer, **kwargs: Any) -> DeepgramTtsSettings:
    options: dict[str, Any] = {
        "api_key": "test-key",
        "base_url": str(server.make_url("")).rstrip("/"),
        "receive_timeout_s": 2.0,
        "handoff_timeout_s": 2.0,
        "connect_retries": 1,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
    }
    options.update(kwargs)
    return DeepgramTtsSettings(**options)


async def collect(chunks: AsyncIterator[TtsChunk]) -> list[TtsChunk]:
    return [chunk async for chunk in chunks]


async def speak(
    provider: DeepgramTts, generation: int, pieces: list[str], rate_hz: int
) -> list[TtsChunk]:
    stream = await provider.open_stream(generation=generation, rate_hz=rate_hz)
    for piece in pieces:
        await stream.push_text(piece)
    await stream.flush()
    return await collect(stream.chunks())


def audio(chunks: list[TtsChunk]) -> bytes:
    return b"".join(c.pcm for c in chunks)


async def settled(baseline: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks beyond ``baseline`` still running once the loop has settled (server sides end too)."""
    extra: set[asyncio.Task[Any]] = set()
    for _ in range(300):
        extra = {t for t in asyncio.all_tasks() if t not in baseline and not t.done()}
        current = asyncio.current_task()
        if current is not None:
            extra.discard(current)
        if not extra:
            break
        await asyncio.sleep(0.01)
    return extra


@pytest.mark.parametrize("rate_hz", [8000, 16000, 24000])
async def test_happy_path_audio_and_wire(aiohttp_server: AiohttpServer, rate_hz: int) -> None:
    server, log = await start_fake(aiohttp_server)
    baseline = set(asyncio.all_tasks())
    provider = DeepgramTts(settings_for(server, model="aura-2-andromeda-en"))
    started_ns = time.monotonic_ns()
    chunks = await speak(provider, 9, PIECES, rate_hz)
    await provider.aclose()

    assert chunks[-1].done and chunks[-1].pcm == b"" and not any(c.done for c in chunks[:-1])
    assert {c.generation for c in chunks} == {9}
    assert all(c.words == () for c in chunks)  # Aura gives no alignment
    stamps = [c.received_ns for c in chunks]
    assert stamps == sorted(stamps) and stamps[0] >= started_ns
    assert audio(chunks) == synth(TEXT, rate_hz)
    assert log.handshakes == [
        {
            "query": {
                "model": "aura-2-andromeda-en",
                "encoding": "linear16",
                "sample_rate": str(rate_hz),
            },
            "authorization": "Token test-key",
        }
    ]
    sent = [{k: v for k, v in m.items() if k != "_conn"} for m in log.received]
    assert sent == [
        *({"type": "Speak", "text": p} for p in PIECES),
        {"type": "Flush"},
        {"type": "Close"},
    ]
    assert log.errors == []
    assert not await settled(baseline)


async def test_generations_take_turns_on_one_socket(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, profile=Profile(chunk_interval_ms=3))
    provider = DeepgramTts(settings_for(server))
    first = await provider.open_stream(generation=1, rate_hz=16000)
    await first.push_text("first turn speaking")
    await first.flush()
    # the second generation waits until the first one's Flushed frees the socket
    opening = asyncio.get_running_loop().create_task(
        provider.open_stream(generation=2, rate_hz=16000)
    )
    first_chunks = await collect(first.chunks())
    second = await opening
    await second.push_text("second turn")
    await second.flush()
    second_chunks = await collect(second.chunks())
    await provider.aclose()
    assert audio(first_chunks) == synth("first turn speaking", 16000)
    assert audio(second_chunks) == synth("second turn", 16000)
    assert {c.generation for c in second_chunks} == {2}
    assert log.connections == 1


async def test_cancel_clears_and_drops_late_frames(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(chunk_interval_ms=5), late_frames=3
    )
    baseline = set(asyncio.all_tasks())
    provider = DeepgramTts(settings_for(server))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("a long reply that the caller interrupts halfway through")
    await stream.flush()
    iterator = stream.chunks()
    assert (await anext(iterator)).pcm
    await stream.cancel()
    await stream.cancel()  # idempotent
    assert [c async for c in iterator] == []
    # the next generation waits for Cleared; the late frames in between are dropped
    text = "clean answer"
    chunks = await speak(provider, 2, [text], 16000)
    assert audio(chunks) == synth(text, 16000)
    assert log.late_frames == 3
    assert provider.dropped_frames >= 3
    kinds = [k for _, k in log.sent]
    assert kinds.index("Cleared") < len(kinds) - 1 - kinds[::-1].index("Flushed")
    assert [m["type"] for m in log.received].count("Clear") == 1
    await provider.aclose()
    assert log.connections == 1 and log.errors == []
    assert not await settled(baseline)


async def test_cancel_before_any_text_needs_no_clear(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server)
    provider = DeepgramTts(settings_for(server))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.cancel()
    chunks = await speak(provider, 2, ["next"], 16000)
    await provider.aclose()
    assert audio(chunks) == synth("next", 16000)
    assert "Clear" not in [m["type"] for m in log.received]


async def test_missing_cleared_opens_a_fresh_socket(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(chunk_interval_ms=5), answer_clear=False
    )
    baseline = set(asyncio.all_tasks())
    provider = DeepgramTts(settings_for(server, handoff_timeout_s=0.2))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("interrupted before long")
    await stream.flush()
    await stream.cancel()
    chunks = await speak(provider, 2, ["fresh"], 16000)
    await provider.aclose()
    assert audio(chunks) == synth("fresh", 16000)
    assert log.connections == 2
    assert not await settled(baseline)


async def test_flush_limit_warning_is_kept_not_fatal(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server, flush_limit=1)
    provider = DeepgramTts(settings_for(server))
    await speak(provider, 1, ["one"], 16000)
    chunks = await speak(provider, 2, ["two"], 16000)
    assert audio(chunks) == synth("two", 16000)
    assert provider.warnings and provider.warnings[0].startswith("FLUSH_LIMIT_EXCEEDED")
    await provider.aclose()


async def test_unauthorized(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, profile=Profile(fault=Fault.UNAUTHORIZED))
    provider = DeepgramTts(settings_for(server))
    with pytest.raises(AuthError):
        await provider.open_stream(generation=1, rate_hz=16000)
    await provider.aclose()
    assert log.connections == 1


async def test_wrong_key(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server)
    provider = DeepgramTts(settings_for(server, api_key="bad"))
    with pytest.raises(AuthError):
        await provider.prewarm()
    await provider.aclose()


async def test_rate_limited(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, profile=Profile(fault=Fault.RATE_LIMITED))
    provider = DeepgramTts(settings_for(server, connect_retries=2))
    with pytest.raises(RateLimitedError) as info:
        await provider.prewarm()
    assert info.value.retry_after_s == 1.0 and log.connections == 3
    await provider.aclose()


async def test_rate_limited_once_then_retried(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(fault=Fault.RATE_LIMITED), fault_sessions=1
    )
    provider = DeepgramTts(settings_for(server))
    chunks = await speak(provider, 1, ["ok"], 8000)
    await provider.aclose()
    assert audio(chunks) == synth("ok", 8000) and log.connections == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.STALL, ProviderTimeoutError),
        (Fault.DISCONNECT, ConnectionLostError),
        (Fault.MALFORMED, ProviderProtocolError),
    ],
)
async def test_mid_stream_faults_then_recovery(
    aiohttp_server: AiohttpServer, fault: Fault, error: type[ProviderError]
) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(fault=fault, after_chunks=2), fault_sessions=1
    )
    baseline = set(asyncio.all_tasks())
    provider = DeepgramTts(settings_for(server, receive_timeout_s=0.3))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("several frames of audio to come")
    await stream.flush()
    received: list[TtsChunk] = []
    with pytest.raises(error):
        async for chunk in stream.chunks():
            received.append(chunk)
    assert 1 <= len(received) <= 2 and not any(c.done for c in received)
    chunks = await speak(provider, 2, ["recovered"], 16000)
    assert audio(chunks) == synth("recovered", 16000)
    assert log.connections == 2
    await provider.aclose()
    assert not await settled(baseline)


async def test_slow_drip(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(
        aiohttp_server, profile=Profile(fault=Fault.SLOW_DRIP, chunk_interval_ms=1)
    )
    provider = DeepgramTts(settings_for(server))
    chunks = await speak(provider, 1, ["drip by drip"], 24000)
    await provider.aclose()
    assert audio(chunks) == synth("drip by drip", 24000)


async def test_aclose_fails_open_generation(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server)
    baseline = set(asyncio.all_tasks())
    provider = DeepgramTts(settings_for(server))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("pending ")
    await provider.aclose()
    with pytest.raises(ConnectionLostError):
        await collect(stream.chunks())
    assert not await settled(baseline)


def test_settings_from_config() -> None:
    settings = msgspec.convert({"api_key": "k", "speed": 1.2}, DeepgramTtsSettings)
    assert settings.speed == 1.2
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"api_key": "k", "speed": 9.0}, DeepgramTtsSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"api_key": "k", "extra": 1}, DeepgramTtsSettings)


# ------------------------------------------------------------------------ fuzz

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

_VALID: list[dict[str, Any]] = [
    {
        "type": "Metadata",
        "request_id": "r",
        "model_name": "m",
        "model_version": "v",
        "model_uuid": "u",
    },
    {"type": "Flushed", "sequence_id": 0},
    {"type": "Cleared", "sequence_id": 1},
    {"type": "Warning", "description": "d", "code": "c"},
]


@st.composite
def _frames(draw: st.DrawFn) -> str | bytes:
    mode = draw(st.sampled_from(["valid", "mutated", "json", "audio", "text"]))
    if mode == "audio":
        return draw(st.binary(max_size=40))
    if mode == "text":
        return draw(st.text(max_size=40))
    if mode == "json":
        return json.dumps(draw(_json))
    frame = dict(draw(st.sampled_from(_VALID)))
    if mode == "mutated":
        key = draw(st.sampled_from(sorted(frame)))
        if draw(st.booleans()):
            frame[key] = draw(_json)
        else:
            del frame[key]
    return json.dumps(frame)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_frames(), max_size=8), st.sampled_from(["open", "clearing", "idle"]))
def test_fuzz_frames_only_raise_protocol_errors(frames: list[str | bytes], phase: str) -> None:
    state = SpeakState()
    if phase != "idle":
        queue = state.begin(1)
        if phase == "clearing":
            queue.cancel()
            state.clearing(queue)
    for frame in frames:
        with contextlib.suppress(ProviderProtocolError):
            state.handle(frame, 0)
