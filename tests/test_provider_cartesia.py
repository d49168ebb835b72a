"""Cartesia TTS client against the fake over real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
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
    Word,
)
from server.providers.cartesia import CartesiaSettings, CartesiaTts, ContextRouter
from tests.fakes.cartesia import LOG, MS_PER_CHAR, FakeLog, create_app, synth
from tests.fakes.profile import Fault, Profile

PIECES = ["Hi there, ", "this is", " Sonic spea", "king. ", "Bye"]
TEXT = "".join(PIECES)


def expected_words(text: str) -> list[Word]:
    words: list[Word] = []
    i = 0
    for token in text.split():
        i = text.index(token, i)
        words.append(Word(token, i * MS_PER_CHAR, (i + len(token)) * MS_PER_CHAR))
        i += len(token)
    return words


async def start_fake(aiohttp_server: AiohttpServer, **kwargs: Any) -> tuple[TestServer, FakeLog]:
    app = create_app(**kwargs)
    server = await aiohttp_server(app, host="127.0.0.1")
    return server, app[LOG]


def settings_for(server: TestServer, **kwargs: Any) -> CartesiaSettings:
    options: dict[str, Any] = {
        "api_key": "test-key",
        "base_url": str(server.make_url("")).rstrip("/"),
        "receive_timeout_s": 2.0,
        "connect_retries": 1,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
    }
    options.update(kwargs)
    return CartesiaSettings(**options)


async def collect(chunks: AsyncIterator[TtsChunk]) -> list[TtsChunk]:
    return [chunk async for chunk in chunks]


async def speak(
    provider: CartesiaTts, generation: int, pieces: list[str], rate_hz: int
) -> list[TtsChunk]:
    stream = await provider.open_stream(generation=generation, rate_hz=rate_hz)
    for piece in pieces:
        await stream.push_text(piece)
    await stream.flush()
    return await collect(stream.chunks())


def joined(chunks: list[TtsChunk]) -> tuple[bytes, list[Word]]:
    return b"".join(c.pcm for c in chunks), [w for c in chunks for w in c.words]


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


async def wait_idle(log: FakeLog, context_id: str) -> None:
    while context_id not in log.idle:
        log.changed.clear()
        await log.changed.wait()


@pytest.mark.parametrize("rate_hz", [8000, 16000, 24000])
async def test_happy_path_audio_timestamps_and_wire(
    aiohttp_server: AiohttpServer, rate_hz: int
) -> None:
    server, log = await start_fake(aiohttp_server, chars_per_chunk=4)
    baseline = set(asyncio.all_tasks())
    provider = CartesiaTts(settings_for(server))
    await provider.prewarm()
    started_ns = time.monotonic_ns()
    chunks = await speak(provider, 5, PIECES, rate_hz)
    await provider.aclose()

    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert {c.generation for c in chunks} == {5}
    stamps = [c.received_ns for c in chunks]
    assert stamps == sorted(stamps) and stamps[0] >= started_ns
    pcm, words = joined(chunks)
    assert pcm == synth(TEXT, rate_hz)
    assert words == expected_words(TEXT)  # "speaking" spans two pushes: whole words only
    # the wire: handshake, then one message per push and the end of input
    assert log.handshakes == [
        {"query": {"cartesia_version": "2025-04-16"}, "key": "test-key", "version": "2025-04-16"}
    ]
    sent = [{k: v for k, v in m.items() if k != "_conn"} for m in log.received]
    assert [m["transcript"] for m in sent] == [*PIECES, ""]
    assert [m["continue"] for m in sent] == [True] * len(PIECES) + [False]
    fixed = {k: v for k, v in sent[0].items() if k not in ("transcript", "continue")}
    assert fixed == {
        "model_id": "sonic-2",
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": rate_hz},
        "context_id": "g5",
        "add_timestamps": True,
        "language": "en",
    }
    assert all(
        {k: v for k, v in m.items() if k not in ("transcript", "continue")} == fixed for m in sent
    )
    assert log.errors == []
    assert not await settled(baseline)


async def test_generations_never_mix(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(chunk_interval_ms=2), chars_per_chunk=3
    )
    provider = CartesiaTts(settings_for(server))
    jobs = {1: ("one voice at eight kilohertz", 8000), 2: ("another at twenty four", 24000)}
    results = await asyncio.gather(*(speak(provider, g, [t], r) for g, (t, r) in jobs.items()))
    await provider.aclose()
    for (generation, (text, rate_hz)), chunks in zip(jobs.items(), results, strict=True):
        assert {c.generation for c in chunks} == {generation}
        assert joined(chunks) == (synth(text, rate_hz), expected_words(text))
    assert log.connections == 1
    chunk_contexts = [c for kind, c in log.sent if kind == "chunk"]
    assert chunk_contexts.index("g2") < len(chunk_contexts) - chunk_contexts[::-1].index("g1") - 1


@pytest.mark.parametrize("stops", [False, True])
async def test_cancel_drops_late_chunks(aiohttp_server: AiohttpServer, stops: bool) -> None:
    server, log = await start_fake(
        aiohttp_server,
        profile=Profile(chunk_interval_ms=5),
        chars_per_chunk=4,
        cancel_stops_generation=stops,
    )
    baseline = set(asyncio.all_tasks())
    provider = CartesiaTts(settings_for(server))
    stream = await provider.open_stream(generation=3, rate_hz=16000)
    await stream.push_text("a rather long sentence that keeps the generator busy ")
    await stream.push_text("and text queued behind it ")
    iterator = stream.chunks()
    assert (await anext(iterator)).pcm
    await stream.cancel()
    await stream.cancel()  # idempotent
    assert [c async for c in iterator] == []
    await wait_idle(log, "g3")
    assert log.received[-1] == {"context_id": "g3", "cancel": True, "_conn": 0}
    sent_for_g3 = sum(1 for kind, c in log.sent if c == "g3")
    if not stops:
        # the old semantics: the piece in progress ran to its end after the cancel
        assert sent_for_g3 > 2
        assert provider.dropped_frames >= sent_for_g3 - 2
    assert ("done", "g3") not in log.sent  # queued text was dropped

    text = "clean next turn"
    chunks = await speak(provider, 4, [text], 16000)
    assert joined(chunks) == (synth(text, 16000), expected_words(text))
    await provider.aclose()
    assert log.errors == [] and log.connections == 1
    assert not await settled(baseline)


async def test_flush_without_text(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server)
    provider = CartesiaTts(settings_for(server))
    chunks = await speak(provider, 1, [], 16000)
    await provider.aclose()
    assert [c.done for c in chunks] == [True] and chunks[0].pcm == b""


async def test_without_timestamps(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server)
    provider = CartesiaTts(
        settings_for(server, add_timestamps=False, language=None, max_buffer_delay_ms=0)
    )
    chunks = await speak(provider, 1, ["no words here"], 16000)
    await provider.aclose()
    assert joined(chunks) == (synth("no words here", 16000), [])
    assert log.received[0]["add_timestamps"] is False and "language" not in log.received[0]
    assert log.received[0]["max_buffer_delay_ms"] == 0


async def test_error_frame_fails_only_its_generation(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server)
    good = CartesiaTts(settings_for(server))
    bad = CartesiaTts(settings_for(server, model="sonic-9"))
    with pytest.raises(ProviderError) as info:
        await speak(bad, 1, ["x"], 16000)
    assert info.value.status == 400 and not info.value.retryable
    assert "model_not_found" in str(info.value)
    # the same socket keeps serving
    stream = await bad.open_stream(generation=2, rate_hz=16000)
    await stream.cancel()
    chunks = await speak(good, 1, ["fine"], 16000)
    assert joined(chunks)[0] == synth("fine", 16000)
    await bad.aclose()
    await good.aclose()
    assert log.connections == 2


async def test_old_socket_replaced_when_idle(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server)
    provider = CartesiaTts(settings_for(server, max_session_s=0.05))
    await speak(provider, 1, ["one"], 16000)
    await asyncio.sleep(0.1)
    chunks = await speak(provider, 2, ["two"], 16000)
    await provider.aclose()
    assert joined(chunks)[0] == synth("two", 16000)
    assert log.connections == 2


async def test_unauthorized(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, profile=Profile(fault=Fault.UNAUTHORIZED))
    provider = CartesiaTts(settings_for(server))
    with pytest.raises(AuthError):
        await provider.open_stream(generation=1, rate_hz=16000)
    await provider.aclose()
    assert log.connections == 1


async def test_wrong_key(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server)
    provider = CartesiaTts(settings_for(server, api_key="nope"))
    with pytest.raises(AuthError):
        await provider.prewarm()
    await provider.aclose()


async def test_rate_limited(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, profile=Profile(fault=Fault.RATE_LIMITED))
    provider = CartesiaTts(settings_for(server, connect_retries=0))
    with pytest.raises(RateLimitedError) as info:
        await provider.prewarm()
    assert info.value.retry_after_s == 1.0 and log.connections == 1
    await provider.aclose()


async def test_rate_limited_once_then_retried(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(fault=Fault.RATE_LIMITED), fault_sessions=1
    )
    provider = CartesiaTts(settings_for(server))
    chunks = await speak(provider, 1, ["again"], 16000)
    await provider.aclose()
    assert joined(chunks)[0] == synth("again", 16000) and log.connections == 2


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
    provider = CartesiaTts(settings_for(server, receive_timeout_s=0.3))
    received: list[TtsChunk] = []
    with pytest.raises(error):
        stream = await provider.open_stream(generation=1, rate_hz=16000)
        await stream.push_text("enough words for several audio chunks")
        await stream.flush()
        async for chunk in stream.chunks():
            received.append(chunk)
    assert 1 <= len(received) <= 2 and not any(c.done for c in received)
    chunks = await speak(provider, 2, ["recovered"], 16000)
    assert joined(chunks)[0] == synth("recovered", 16000)
    assert log.connections == 2
    await provider.aclose()
    assert not await settled(baseline)


async def test_slow_drip(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(
        aiohttp_server, profile=Profile(fault=Fault.SLOW_DRIP, chunk_interval_ms=1)
    )
    provider = CartesiaTts(settings_for(server))
    chunks = await speak(provider, 1, ["slowly but surely"], 8000)
    await provider.aclose()
    assert joined(chunks) == (synth("slowly but surely", 8000), expected_words("slowly but surely"))


async def test_aclose_fails_open_generation(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server)
    baseline = set(asyncio.all_tasks())
    provider = CartesiaTts(settings_for(server))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("pending ")
    await provider.aclose()
    with pytest.raises(ConnectionLostError):
        await collect(stream.chunks())
    assert not await settled(baseline)


def test_settings_from_config() -> None:
    settings = msgspec.convert(
        {"api_key": "k", "model": "sonic-3", "max_buffer_delay_ms": 100}, CartesiaSettings
    )
    assert settings.model == "sonic-3"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"api_key": "k", "max_buffer_delay_ms": 5000}, CartesiaSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"api_key": "k", "surprise": True}, CartesiaSettings)


# ------------------------------------------------------------------------ fuzz

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _valid(kind: str, context_id: str) -> dict[str, Any]:
    if kind == "chunk":
        return {
            "type": "chunk",
            "data": base64.b64encode(b"\x00\x01\x02").decode(),
            "done": False,
            "status_code": 206,
            "step_time": 1.0,
            "context_id": context_id,
        }
    if kind == "timestamps":
        return {
            "type": "timestamps",
            "context_id": context_id,
            "done": False,
            "word_timestamps": {"words": ["a", "b"], "start": [0.0, 0.1], "end": [0.1, 0.2]},
        }
    if kind == "error":
        return {
            "type": "error",
            "context_id": context_id,
            "status_code": 500,
            "title": "t",
            "done": True,
        }
    return {"type": kind, "context_id": context_id, "done": kind == "done", "flush_id": 1}


@st.composite
def _frames(draw: st.DrawFn) -> str | bytes:
    mode = draw(st.sampled_from(["valid", "mutated", "json", "bytes", "text"]))
    if mode == "bytes":
        return draw(st.binary(max_size=40))
    if mode == "text":
        return draw(st.text(max_size=40))
    if mode == "json":
        return json.dumps(draw(_json))
    kind = draw(
        st.sampled_from(
            ["chunk", "timestamps", "flush_done", "done", "error", "phoneme_timestamps"]
        )
    )
    frame = _valid(kind, draw(st.sampled_from(["g1", "g2", "zz"])))
    if mode == "mutated":
        key = draw(st.sampled_from([*frame, "word_timestamps.words", "word_timestamps.start"]))
        value = draw(_json)
        if key.startswith("word_timestamps.") and "word_timestamps" in frame:
            frame["word_timestamps"][key.split(".")[1]] = value
        elif draw(st.booleans()):
            frame[key] = value
        else:
            frame.pop(key, None)
    return json.dumps(frame)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_frames(), max_size=6))
def test_fuzz_frames_only_raise_typed_errors(frames: list[str | bytes]) -> None:
    router = ContextRouter()
    router.open("g1", 1)
    router.open("g2", 2)
    for frame in frames:
        try:
            router.handle(frame, 0)
        except ProviderProtocolError:
            pass
        except ProviderError as exc:  # an error frame without a context is typed too
            assert "error" in str(frame)
            assert isinstance(exc, ProviderError)
