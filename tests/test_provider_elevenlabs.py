"""ElevenLabs TTS clients against the fake over real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
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
    Word,
)
from server.providers.elevenlabs import (
    ContextRouter,
    ElevenLabsHttpTts,
    ElevenLabsSettings,
    ElevenLabsTts,
    decode_http_line,
    make_provider,
)
from tests.fakes.elevenlabs import LOG, MS_PER_CHAR, FakeLog, create_app, synth
from tests.fakes.profile import Fault, Profile

TEXT_PIECES = ["Hello there, ", "how are", " you today? ", "Fine."]
TEXT = "".join(TEXT_PIECES)


def expected_words(text: str, offset_ms: float = 0.0) -> list[Word]:
    words: list[Word] = []
    i = 0
    for token in text.split():
        i = text.index(token, i)
        start = offset_ms + i * MS_PER_CHAR
        words.append(Word(token, start, start + len(token) * MS_PER_CHAR))
        i += len(token)
    return words


async def start_fake(aiohttp_server: AiohttpServer, **kwargs: Any) -> tuple[TestServer, FakeLog]:
    app = create_app(**kwargs)
    server = await aiohttp_server(app, host="127.0.0.1")
    return server, app[LOG]


def settings_for(server: TestServer, **kwargs: Any) -> ElevenLabsSettings:
    options: dict[str, Any] = {
        "api_key": "test-key",
        "base_url": str(server.make_url("")).rstrip("/"),
        "receive_timeout_s": 2.0,
        "connect_retries": 1,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
    }
    options.update(kwargs)
    return ElevenLabsSettings(**options)


async def collect(chunks: AsyncIterator[TtsChunk]) -> list[TtsChunk]:
    return [chunk async for chunk in chunks]


async def speak(provider: Any, generation: int, pieces: list[str], rate_hz: int) -> list[TtsChunk]:
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


def check_chunks(chunks: list[TtsChunk], generation: int, started_ns: int) -> None:
    assert chunks and chunks[-1].done
    assert all(not c.done for c in chunks[:-1])
    assert all(c.generation == generation for c in chunks)
    stamps = [c.received_ns for c in chunks]
    assert stamps == sorted(stamps) and stamps[0] >= started_ns
    assert all(len(c.pcm) % 2 == 0 for c in chunks)


# ------------------------------------------------------------------ WebSocket


@pytest.mark.parametrize("rate_hz", [8000, 16000, 24000])
async def test_ws_happy_path_audio_alignment_and_wire(
    aiohttp_server: AiohttpServer, rate_hz: int
) -> None:
    server, log = await start_fake(aiohttp_server, chars_per_chunk=7)
    baseline = set(asyncio.all_tasks())
    provider = ElevenLabsTts(settings_for(server, chunk_length_schedule=(50, 80)))
    started_ns = time.monotonic_ns()
    chunks = await speak(provider, 3, TEXT_PIECES, rate_hz)
    await provider.aclose()

    check_chunks(chunks, 3, started_ns)
    pcm, words = joined(chunks)
    assert pcm == synth(TEXT, rate_hz)
    assert words == expected_words(TEXT)
    assert words[-1].end_ms == pytest.approx(len(TEXT) * MS_PER_CHAR)
    # what went over the wire, in order
    sent = [{k: v for k, v in m.items() if k != "_conn"} for m in log.received]
    assert sent[0]["text"] == " " and sent[0]["context_id"] == "g3"
    assert sent[0]["voice_settings"] == {"stability": 0.5, "similarity_boost": 0.75, "speed": 1.0}
    assert sent[0]["generation_config"] == {"chunk_length_schedule": [50, 80]}
    assert [m["text"] for m in sent[1:5]] == TEXT_PIECES
    assert sent[5] == {"text": "", "context_id": "g3", "flush": True}
    assert sent[6] == {"context_id": "g3", "close_context": True}
    assert sent[7] == {"close_socket": True}
    assert log.errors == [] and log.connections == 1
    assert not await settled(baseline)


@pytest.mark.parametrize(
    ("final_key", "durations_key"),
    [("is_final", "charsDurationsMs"), ("isFinal", "charDurationsMs")],
)
async def test_ws_accepts_both_spellings(
    aiohttp_server: AiohttpServer, final_key: str, durations_key: str
) -> None:
    server, _ = await start_fake(aiohttp_server, final_key=final_key, durations_key=durations_key)
    provider = ElevenLabsTts(settings_for(server))
    chunks = await speak(provider, 1, ["Two words"], 16000)
    await provider.aclose()
    assert joined(chunks) == (synth("Two words", 16000), expected_words("Two words"))


async def test_ws_query_and_header(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server)
    provider = ElevenLabsTts(settings_for(server, voice_id="voice-1", model="eleven_turbo_v2_5"))
    await provider.prewarm()  # prewarm_rate_hz
    await provider.open_stream(generation=1, rate_hz=24000)  # another rate: another socket
    await provider.aclose()
    assert [h["path"] for h in log.handshakes] == [
        "/v1/text-to-speech/voice-1/multi-stream-input"
    ] * 2
    assert log.handshakes[1]["query"] == {
        "model_id": "eleven_turbo_v2_5",
        "output_format": "pcm_24000",
        "sync_alignment": "true",
        "inactivity_timeout": "20",
        "auto_mode": "false",
    }
    assert log.handshakes[0]["query"]["output_format"] == "pcm_16000"
    assert all(h["key"] == "test-key" for h in log.handshakes)


async def test_ws_chunk_schedule_generates_before_flush(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server)
    provider = ElevenLabsTts(settings_for(server, chunk_length_schedule=(50,)))
    stream = await provider.open_stream(generation=1, rate_hz=8000)
    first = "a" * 30 + " " + "b" * 30 + " "
    await stream.push_text(first)
    iterator = stream.chunks()
    chunk = await anext(iterator)  # audio before any flush: the schedule was reached
    assert chunk.pcm and not chunk.done
    await stream.push_text("end")
    await stream.flush()
    rest = [chunk, *[c async for c in iterator]]
    assert joined(rest)[0] == synth(first + "end", 8000)
    await provider.aclose()
    assert log.errors == []


async def test_ws_generations_never_mix(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(chunk_interval_ms=2), chars_per_chunk=3
    )
    provider = ElevenLabsTts(settings_for(server))
    texts = {1: "first voice speaking slowly", 2: "second one, also here"}
    results = await asyncio.gather(*(speak(provider, g, [t], 16000) for g, t in texts.items()))
    await provider.aclose()
    for (generation, text), chunks in zip(texts.items(), results, strict=True):
        assert {c.generation for c in chunks} == {generation}
        assert joined(chunks) == (synth(text, 16000), expected_words(text))
    assert log.connections == 1
    # the fake really interleaved the two contexts on the one socket
    order = log.sent_chunks
    assert order.index("g2") < len(order) - order[::-1].index("g1") - 1


async def test_ws_cancel_after_flush_drops_late_audio(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(chunk_interval_ms=5), chars_per_chunk=4
    )
    baseline = set(asyncio.all_tasks())
    provider = ElevenLabsTts(settings_for(server))
    stream = await provider.open_stream(generation=7, rate_hz=16000)
    await stream.push_text("this sentence is long enough to keep streaming for a while")
    await stream.flush()
    iterator = stream.chunks()
    first = await anext(iterator)
    await stream.cancel()
    await stream.cancel()  # idempotent
    assert [c async for c in iterator] == []
    # the fake keeps sending the flushed context; every late frame is dropped here
    while "g7" not in log.finals:
        log.changed.clear()
        await log.changed.wait()
    await asyncio.sleep(0.05)
    assert first.pcm
    late = log.sent_chunks.count("g7") - 1
    assert late > 0
    assert provider.dropped_frames >= late  # late audio frames (+ the final)

    text = "next one"
    chunks = await speak(provider, 8, [text], 16000)
    assert joined(chunks) == (synth(text, 16000), expected_words(text))
    closes = [m for m in log.received if m.get("close_context") and m["context_id"] == "g7"]
    assert len(closes) == 1  # closed once, at flush
    await provider.aclose()
    assert log.connections == 1 and log.errors == []
    assert not await settled(baseline)


async def test_ws_cancel_before_flush_closes_context(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server)
    provider = ElevenLabsTts(settings_for(server))
    stream = await provider.open_stream(generation=2, rate_hz=16000)
    await stream.push_text("never spoken ")
    await stream.cancel()
    assert [c async for c in stream.chunks()] == []
    await stream.push_text("ignored after cancel")
    while "g2" not in log.finals:
        log.changed.clear()
        await log.changed.wait()
    assert log.received[-1]["close_context"] is True
    assert "g2" not in log.sent_chunks  # unflushed text was dropped by the server
    await provider.aclose()
    assert log.errors == []


async def test_ws_reconnects_after_inactivity_close(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, inactivity_timeout_s=0.15)
    provider = ElevenLabsTts(settings_for(server))
    first = await speak(provider, 1, ["one"], 16000)
    while not log.ended:  # the closing handshake is over: the client saw the close
        await asyncio.sleep(0.02)
    assert log.closes[0][0] == 1008
    second = await speak(provider, 2, ["two"], 16000)
    await provider.aclose()
    assert joined(first)[0] == synth("one", 16000)
    assert joined(second)[0] == synth("two", 16000)
    assert log.connections == 2


async def test_ws_keepalive_holds_a_waiting_context(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, inactivity_timeout_s=0.25)
    provider = ElevenLabsTts(settings_for(server, keepalive_interval_s=0.05))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("slow ")
    await asyncio.sleep(0.7)  # the LLM is thinking
    await stream.push_text("reply")
    await stream.flush()
    chunks = await collect(stream.chunks())
    await provider.aclose()
    assert joined(chunks)[0] == synth("slow reply", 16000)
    assert log.connections == 1 and log.closes == [(1000, "")]
    keepalives = [m for m in log.received if m.get("text") == "" and "flush" not in m]
    assert keepalives and all(m["context_id"] == "g1" for m in keepalives)


async def test_ws_unauthorized(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server, profile=Profile(fault=Fault.UNAUTHORIZED))
    provider = ElevenLabsTts(settings_for(server))
    with pytest.raises(AuthError):
        await provider.open_stream(generation=1, rate_hz=16000)
    await provider.aclose()


async def test_ws_wrong_key_is_refused(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server)
    provider = ElevenLabsTts(settings_for(server, api_key="wrong"))
    with pytest.raises(AuthError) as info:
        await provider.prewarm()
    assert info.value.status == 401 and not info.value.retryable
    await provider.aclose()
    assert log.connections == 1  # auth errors are not retried


async def test_ws_rate_limited(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, profile=Profile(fault=Fault.RATE_LIMITED))
    provider = ElevenLabsTts(settings_for(server, connect_retries=2))
    with pytest.raises(RateLimitedError) as info:
        await provider.open_stream(generation=1, rate_hz=16000)
    assert info.value.retry_after_s == 1.0
    assert log.connections == 3
    await provider.aclose()


async def test_ws_rate_limited_once_then_retried(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(fault=Fault.RATE_LIMITED), fault_sessions=1
    )
    provider = ElevenLabsTts(settings_for(server))
    chunks = await speak(provider, 1, ["retry"], 16000)
    await provider.aclose()
    assert joined(chunks)[0] == synth("retry", 16000)
    assert log.connections == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.STALL, ProviderTimeoutError),
        (Fault.DISCONNECT, ConnectionLostError),
        (Fault.MALFORMED, ProviderProtocolError),
    ],
)
async def test_ws_mid_stream_faults_then_recovery(
    aiohttp_server: AiohttpServer, fault: Fault, error: type[ProviderError]
) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(fault=fault, after_chunks=2), fault_sessions=1
    )
    baseline = set(asyncio.all_tasks())
    provider = ElevenLabsTts(settings_for(server, receive_timeout_s=0.3))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("a sentence with several chunks of audio")
    await stream.flush()
    received: list[TtsChunk] = []
    with pytest.raises(error):
        async for chunk in stream.chunks():
            received.append(chunk)
    assert 1 <= len(received) <= 2 and not any(c.done for c in received)
    # the broken socket is not reused: the next generation gets a fresh one
    chunks = await speak(provider, 2, ["after"], 16000)
    assert joined(chunks)[0] == synth("after", 16000)
    assert log.connections == 2
    await provider.aclose()
    assert not await settled(baseline)


async def test_ws_slow_drip_still_completes(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(
        aiohttp_server, profile=Profile(fault=Fault.SLOW_DRIP, chunk_interval_ms=1)
    )
    provider = ElevenLabsTts(settings_for(server))
    chunks = await speak(provider, 1, ["drip drip drop"], 24000)
    await provider.aclose()
    assert joined(chunks) == (synth("drip drip drop", 24000), expected_words("drip drip drop"))


async def test_ws_aclose_fails_open_generation(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server)
    baseline = set(asyncio.all_tasks())
    provider = ElevenLabsTts(settings_for(server))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("pending ")
    await provider.aclose()
    with pytest.raises(ConnectionLostError):
        await collect(stream.chunks())
    assert not await settled(baseline)


async def test_ws_consumer_cancelled_mid_iteration(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server, profile=Profile(chunk_interval_ms=20))
    baseline = set(asyncio.all_tasks())
    provider = ElevenLabsTts(settings_for(server))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("a long enough text to be interrupted")
    await stream.flush()
    consumer = asyncio.get_running_loop().create_task(collect(stream.chunks()))
    await asyncio.sleep(0.05)
    consumer.cancel()
    await stream.cancel()
    await asyncio.wait([consumer])
    assert consumer.cancelled()
    await provider.aclose()
    assert not await settled(baseline)


def test_rejects_unsupported_rate() -> None:
    provider = ElevenLabsTts(ElevenLabsSettings(api_key="k"))
    with pytest.raises(ValueError, match="rate_hz"):
        asyncio.run(provider.open_stream(generation=1, rate_hz=44100))


def test_settings_decode_from_config() -> None:
    settings = msgspec.convert(
        {"api_key": "k", "voice_id": "v", "transport": "http", "chunk_length_schedule": [60]},
        ElevenLabsSettings,
    )
    assert settings.transport == "http" and settings.chunk_length_schedule == (60,)
    assert isinstance(make_provider(settings), ElevenLabsHttpTts)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"api_key": "k", "inactivity_timeout_s": 500}, ElevenLabsSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"api_key": "k", "keepalive_interval_s": 30}, ElevenLabsSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"api_key": "k", "surprise": 1}, ElevenLabsSettings)
    with pytest.raises(msgspec.ValidationError, match="api_key"):
        msgspec.convert({}, ElevenLabsSettings)


# ------------------------------------------------------------------------ HTTP


async def test_http_phrases_audio_and_alignment(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, chars_per_chunk=4)
    baseline = set(asyncio.all_tasks())
    provider = ElevenLabsHttpTts(settings_for(server, transport="http"))
    started_ns = time.monotonic_ns()
    chunks = await speak(provider, 4, TEXT_PIECES, 16000)
    await provider.aclose()
    check_chunks(chunks, 4, started_ns)
    pcm, words = joined(chunks)
    assert pcm == synth(TEXT, 16000)
    assert words == expected_words(TEXT)  # offsets carry across phrases
    phrases = [r["body"]["text"] for r in log.requests]
    assert phrases == ["Hello there, how are you today? ", "Fine."]
    assert all(
        r["path"] == "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream/with-timestamps"
        for r in log.requests
    )
    assert log.requests[0]["query"] == {"output_format": "pcm_16000"}
    assert log.requests[1]["body"]["previous_text"] == phrases[0]
    assert log.requests[0]["body"]["model_id"] == "eleven_flash_v2_5"
    assert log.errors == []
    assert not await settled(baseline)


async def test_http_raw_pcm(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(aiohttp_server, chars_per_chunk=3)
    provider = ElevenLabsHttpTts(settings_for(server, transport="http", http_timestamps=False))
    chunks = await speak(provider, 1, ["raw audio only"], 8000)
    await provider.aclose()
    assert joined(chunks) == (synth("raw audio only", 8000), [])
    assert log.requests[0]["path"].endswith("/stream")


async def test_http_cancel_aborts_request(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server, profile=Profile(chunk_interval_ms=20))
    baseline = set(asyncio.all_tasks())
    provider = ElevenLabsHttpTts(settings_for(server, transport="http"))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("a long phrase that takes a while to stream out")
    await stream.flush()
    iterator = stream.chunks()
    assert (await anext(iterator)).pcm
    await stream.cancel()
    assert [c async for c in iterator] == []
    await provider.aclose()
    assert not await settled(baseline)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.UNAUTHORIZED, AuthError),
        (Fault.RATE_LIMITED, RateLimitedError),
        (Fault.STALL, ProviderTimeoutError),
        (Fault.DISCONNECT, ConnectionLostError),
        (Fault.MALFORMED, ProviderProtocolError),
    ],
)
async def test_http_faults(
    aiohttp_server: AiohttpServer, fault: Fault, error: type[ProviderError]
) -> None:
    server, _ = await start_fake(aiohttp_server, profile=Profile(fault=fault), chars_per_chunk=3)
    baseline = set(asyncio.all_tasks())
    provider = ElevenLabsHttpTts(settings_for(server, transport="http", receive_timeout_s=0.3))
    with pytest.raises(error) as info:
        await speak(provider, 1, ["some text to speak here"], 16000)
    if fault is Fault.RATE_LIMITED:
        assert info.value.retry_after_s == 1.0  # type: ignore[attr-defined]
    await provider.aclose()
    assert not await settled(baseline)


async def test_http_aclose_fails_open_generation(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(aiohttp_server, profile=Profile(chunk_interval_ms=20))
    baseline = set(asyncio.all_tasks())
    provider = ElevenLabsHttpTts(settings_for(server, transport="http"))
    stream = await provider.open_stream(generation=1, rate_hz=16000)
    await stream.push_text("a phrase in flight. ")
    await provider.aclose()
    with pytest.raises(ConnectionLostError):
        await collect(stream.chunks())
    assert not await settled(baseline)


async def test_http_slow_drip(aiohttp_server: AiohttpServer) -> None:
    server, _ = await start_fake(
        aiohttp_server, profile=Profile(fault=Fault.SLOW_DRIP, chunk_interval_ms=1)
    )
    provider = ElevenLabsHttpTts(settings_for(server, transport="http"))
    chunks = await speak(provider, 1, ["drip. drop"], 16000)
    await provider.aclose()
    assert joined(chunks) == (synth("drip. drop", 16000), expected_words("drip. drop"))


async def test_http_rate_limited_once_then_retried(aiohttp_server: AiohttpServer) -> None:
    server, log = await start_fake(
        aiohttp_server, profile=Profile(fault=Fault.RATE_LIMITED), fault_sessions=1
    )
    provider = ElevenLabsHttpTts(settings_for(server, transport="http"))
    chunks = await speak(provider, 1, ["retried"], 16000)
    await provider.aclose()
    assert joined(chunks)[0] == synth("retried", 16000)
    assert log.http_requests == 2


# ------------------------------------------------------------------------ fuzz

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _valid_frame(text: str, context_id: str) -> dict[str, Any]:
    return {
        "audio": base64.b64encode(b"\x01\x00" * len(text)).decode(),
        "isFinal": False,
        "alignment": {
            "chars": list(text),
            "charStartTimesMs": [i * 10 for i in range(len(text))],
            "charDurationsMs": [10] * len(text),
        },
        "contextId": context_id,
    }


@st.composite
def _frames(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.sampled_from(["valid", "mutated", "json", "bytes", "text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "text":
        return draw(st.text(max_size=40))
    if kind == "json":
        return json.dumps(draw(_json))
    frame = _valid_frame(draw(st.text(max_size=6)), draw(st.sampled_from(["g1", "g2", "x"])))
    if kind == "mutated":
        key = draw(st.sampled_from([*frame, "alignment.chars", "alignment.charDurationsMs"]))
        value = draw(_json)
        if key.startswith("alignment."):
            frame["alignment"][key.split(".")[1]] = value
        elif draw(st.booleans()):
            frame[key] = value
        else:
            del frame[key]
    return json.dumps(frame)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_frames(), max_size=6))
def test_fuzz_ws_frames_only_raise_protocol_errors(frames: list[str | bytes]) -> None:
    router = ContextRouter(16000)
    router.open("g1", 1)
    router.open("g2", 2)
    for frame in frames:
        try:
            router.handle(frame, 0)
        except ProviderProtocolError:
            pass
        except ProviderError as exc:  # an error frame from the provider is typed too
            assert type(exc) is ProviderError


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=60), _json.map(lambda v: json.dumps(v).encode())))
def test_fuzz_http_lines_only_raise_protocol_errors(line: bytes) -> None:
    with contextlib.suppress(ProviderProtocolError):
        decode_http_line(line)


def test_router_folds_words_across_chunks() -> None:
    router = ContextRouter(8000)
    queue = router.open("g1", 1)
    for part in ["hel", "lo w", "orld"]:
        frame = _valid_frame(part, "g1")
        router.handle(json.dumps(frame), 1)
    router.handle(json.dumps({"isFinal": True, "contextId": "g1"}), 2)
    chunks = [queue._items.get_nowait() for _ in range(queue._items.qsize())]
    words = [w for c in chunks if isinstance(c, TtsChunk) for w in c.words]
    # 1 sample (2 bytes) per char at 8000 Hz = 0.125 ms of audio per char; alignment says 10 ms
    assert [w.text for w in words] == ["hello", "world"]
    assert words[0].start_ms == 0 and words[1].start_ms == pytest.approx(3 * 0.125 + 30)
