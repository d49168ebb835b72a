"""The OpenAI Realtime client against its fake over loopback WebSockets, with real speech."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from server.providers.base import (
    AuthError,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    RateLimitedError,
    S2sEvent,
    S2sEventKind,
)
from server.providers.openai_realtime import (
    GENERATION_KEY,
    OpenAiRealtimeProvider,
    OpenAiRealtimeSession,
    OpenAiRealtimeSettings,
    ResponseInfo,
    ResponseTracker,
    decode_server_event,
)
from tests import speech
from tests.fakes.openai_realtime import (
    DEFAULT_HEARD,
    DEFAULT_REPLY,
    STATE,
    RealtimeFakeState,
    create_app,
    reply_audio_ms,
    tone,
)
from tests.fakes.profile import Fault, Profile

ServerFactory = Callable[..., Awaitable[TestServer]]
Kind = S2sEventKind
RATE_HZ = 24000
FRAME_BYTES = 960  # 20 ms at 24 kHz
INSTRUCTIONS = "You are a friendly phone agent. Keep answers short."


async def _server_settings(
    aiohttp_server: ServerFactory, fake: Any, **overrides: Any
) -> OpenAiRealtimeSettings:
    server = await aiohttp_server(fake)
    fields: dict[str, Any] = {
        "api_key": "test-key",
        "base_url": str(server.make_url("/v1/realtime")).replace("http://", "ws://"),
        "model": "gpt-realtime-test",
        "receive_timeout_s": 5.0,
    }
    fields.update(overrides)
    return OpenAiRealtimeSettings(**fields)


@contextlib.asynccontextmanager
async def _session(
    aiohttp_server: ServerFactory, fake: Any, **overrides: Any
) -> AsyncIterator[tuple[OpenAiRealtimeSession, RealtimeFakeState]]:
    provider = OpenAiRealtimeProvider(await _server_settings(aiohttp_server, fake, **overrides))
    try:
        session = await provider.connect(rate_hz=RATE_HZ, instructions=INSTRUCTIONS)
        try:
            yield session, fake[STATE]
        finally:
            await session.close()
    finally:
        await provider.aclose()


async def _until(
    events: AsyncIterator[S2sEvent], done: Callable[[S2sEvent], bool], limit_s: float = 10.0
) -> list[S2sEvent]:
    """Events from ``events`` up to and including the first for which ``done`` holds."""
    seen: list[S2sEvent] = []
    async with asyncio.timeout(limit_s):
        async for event in events:
            seen.append(event)
            if done(event):
                return seen
    raise AssertionError(f"events ended early: {[e.kind for e in seen]}")


def _done_of(generation: int) -> Callable[[S2sEvent], bool]:
    return lambda e: e.kind is Kind.RESPONSE_DONE and e.generation == generation


def _push_frames(session: OpenAiRealtimeSession, pcm: bytes) -> None:
    for i in range(0, len(pcm) - len(pcm) % FRAME_BYTES, FRAME_BYTES):
        session.push_audio(pcm[i : i + FRAME_BYTES])


def _caller_turn(text: str = DEFAULT_HEARD, silence_ms: int = 800) -> bytes:
    pcm = speech.concat(
        [
            speech.silence(200, RATE_HZ),
            speech.speech(text, RATE_HZ),
            speech.silence(silence_ms, RATE_HZ),
        ]
    )
    return pcm.tobytes()


async def _settle(baseline: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks beyond ``baseline`` once the fake's handlers have wound down (bounded wait)."""
    current = asyncio.current_task()
    for _ in range(200):
        extra = {t for t in asyncio.all_tasks() - baseline - {current} if not t.done()}
        if not extra:
            return set()
        await asyncio.sleep(0.01)
    return extra


def _types(state: RealtimeFakeState) -> list[str]:
    return [e["type"] for e in state.received]


# ---------------------------------------------------------------- set-up


async def test_connect_configures_the_session(aiohttp_server: ServerFactory) -> None:
    async with _session(aiohttp_server, create_app(), transcription_model="whisper-1") as (
        session,
        fake,
    ):
        assert session.rate_hz == RATE_HZ
    assert fake.queries == [{"model": "gpt-realtime-test"}]
    assert fake.headers[0]["Authorization"] == "Bearer test-key"
    assert _types(fake)[0] == "session.update"
    config = fake.sessions[0]
    assert config["instructions"] == INSTRUCTIONS
    assert config["output_modalities"] == ["audio"]
    audio = config["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio["output"]["voice"] == "marin"
    assert audio["input"]["transcription"] == {"model": "whisper-1"}
    turn = audio["input"]["turn_detection"]
    assert turn["type"] == "server_vad"
    assert (turn["threshold"], turn["prefix_padding_ms"], turn["silence_duration_ms"]) == (
        0.5,
        300,
        500,
    )
    assert turn["create_response"] is False
    assert turn["interrupt_response"] is False
    assert fake.errors == []


async def test_turn_detection_none_sends_null(aiohttp_server: ServerFactory) -> None:
    async with _session(
        aiohttp_server, create_app(), turn_detection="none", transcription_model=None
    ) as (_, fake):
        pass
    assert fake.sessions[0]["audio"]["input"]["turn_detection"] is None
    assert fake.sessions[0]["audio"]["input"]["transcription"] is None


async def test_refused_session_update_fails_connect(aiohttp_server: ServerFactory) -> None:
    baseline = asyncio.all_tasks()
    fake = create_app()
    provider = OpenAiRealtimeProvider(await _server_settings(aiohttp_server, fake, voice="nobody"))
    with pytest.raises(ProviderError, match="session refused") as info:
        await provider.connect(rate_hz=RATE_HZ, instructions="")
    await provider.aclose()
    assert not info.value.retryable
    assert [e["param"] for e in fake[STATE].errors] == [None]
    await asyncio.wait_for(fake[STATE].closed.wait(), 5)
    assert await _settle(baseline) == set()


async def test_only_24khz_is_accepted(aiohttp_server: ServerFactory) -> None:
    provider = OpenAiRealtimeProvider(await _server_settings(aiohttp_server, create_app()))
    with pytest.raises(ValueError, match="24000"):
        await provider.connect(rate_hz=16000, instructions="")
    await provider.aclose()


# ---------------------------------------------------------------- happy paths


async def test_server_vad_turn_then_reply_tagged_with_generation(
    aiohttp_server: ServerFactory,
) -> None:
    turn = _caller_turn()
    speech_ms = len(speech.speech(DEFAULT_HEARD, RATE_HZ)) * 1000 // RATE_HZ
    async with _session(aiohttp_server, create_app()) as (session, fake):
        events = session.events()
        _push_frames(session, turn)
        heard = await _until(events, lambda e: e.kind is Kind.INPUT_TRANSCRIPT)
        assert [e.kind for e in heard] == [
            Kind.SPEECH_STARTED,
            Kind.SPEECH_STOPPED,
            Kind.INPUT_TRANSCRIPT,
        ]
        assert heard[0].item_id == heard[1].item_id == heard[2].item_id
        assert heard[2].text == DEFAULT_HEARD
        assert heard[0].received_ns <= heard[1].received_ns <= heard[2].received_ns

        await session.respond(7)
        reply = await _until(events, _done_of(7))
    # The fake's VAD ran on the real speech: it stopped where the speech ended (audio time).
    stopped = next(e for e in fake.sent if e["type"] == "input_audio_buffer.speech_stopped")
    assert abs(stopped["audio_end_ms"] - (200 + speech_ms)) <= 40
    audio = [e for e in reply if e.kind is Kind.AUDIO]
    text = [e for e in reply if e.kind is Kind.TRANSCRIPT]
    assert {e.generation for e in reply} == {7}
    assert "".join(e.text for e in text) == DEFAULT_REPLY
    pcm = b"".join(e.pcm for e in audio)
    assert pcm == tone(0, reply_audio_ms(DEFAULT_REPLY))
    assert reply[-1].status == "completed"
    assert reply[-1].item_id == audio[0].item_id
    assert [e.received_ns for e in reply] == sorted(e.received_ns for e in reply)
    # Server VAD committed the turn, so respond() only asked for a reply.
    types = _types(fake)
    assert "input_audio_buffer.commit" not in types
    create = next(e for e in fake.received if e["type"] == "response.create")
    assert create["response"]["metadata"] == {GENERATION_KEY: "7"}
    assert sum(e["audio_bytes"] for e in fake.received if "audio_bytes" in e) == len(fake.audio_in)
    assert bytes(fake.audio_in) == turn[: len(turn) - len(turn) % FRAME_BYTES]
    assert fake.errors == []


async def test_manual_turn_commits_after_all_audio(aiohttp_server: ServerFactory) -> None:
    turn = _caller_turn(silence_ms=100)
    async with _session(aiohttp_server, create_app(), turn_detection="none") as (session, fake):
        events = session.events()
        _push_frames(session, turn)
        await session.respond(1)
        reply = await _until(events, _done_of(1))
    assert all(e.kind is not Kind.SPEECH_STARTED for e in reply)
    assert reply[-1].status == "completed"
    types = _types(fake)
    first_create = types.index("response.create")
    assert types[first_create - 1] == "input_audio_buffer.commit"
    assert "input_audio_buffer.append" not in types[first_create:]
    assert len(fake.audio_in) == len(turn) - len(turn) % FRAME_BYTES
    assert fake.errors == []


async def test_manual_respond_without_audio_does_not_commit(aiohttp_server: ServerFactory) -> None:
    async with _session(aiohttp_server, create_app(), turn_detection="none") as (session, fake):
        events = session.events()
        session.push_audio(bytes(FRAME_BYTES))  # 20 ms: below the 100 ms the server needs
        await session.respond(3)
        reply = await _until(events, _done_of(3))
    assert reply[-1].status == "completed"
    assert "input_audio_buffer.commit" not in _types(fake)
    assert fake.errors == []


async def test_slow_drip_still_delivers_the_whole_reply(aiohttp_server: ServerFactory) -> None:
    profile = Profile(fault=Fault.SLOW_DRIP, chunk_interval_ms=0.5)
    async with _session(aiohttp_server, create_app(profile)) as (session, _):
        events = session.events()
        await session.respond(2)
        reply = await _until(events, _done_of(2))
    assert "".join(e.text for e in reply if e.kind is Kind.TRANSCRIPT) == DEFAULT_REPLY
    assert reply[-1].status == "completed"


# -------------------------------------------------------- cancel and truncate


async def test_cancel_drops_late_deltas_of_that_generation(aiohttp_server: ServerFactory) -> None:
    profile = Profile(chunk_interval_ms=10)
    async with _session(aiohttp_server, create_app(profile, late_deltas=2)) as (session, fake):
        events = session.events()
        await session.respond(1)
        await _until(events, lambda e: e.kind is Kind.AUDIO)
        await session.cancel(1)
        await session.cancel(1)  # idempotent
        after = await _until(events, _done_of(1))
    assert [e.kind for e in after] == [Kind.RESPONSE_DONE]
    assert after[0].status == "cancelled"
    assert fake.late_deltas_sent == 2  # the fake did send audio after the cancel
    cancels = [e for e in fake.received if e["type"] == "response.cancel"]
    created = next(e for e in fake.sent if e["type"] == "response.created")
    assert cancels == [
        {
            "type": "response.cancel",
            "event_id": cancels[0]["event_id"],
            "response_id": created["response"]["id"],
        }
    ]
    assert fake.errors == []


async def test_new_generation_while_the_old_one_drains(aiohttp_server: ServerFactory) -> None:
    profile = Profile(chunk_interval_ms=10)
    async with _session(aiohttp_server, create_app(profile, late_deltas=3)) as (session, fake):
        events = session.events()
        await session.respond(1)
        await _until(events, lambda e: e.kind is Kind.AUDIO)
        await session.cancel(1)
        await session.respond(2)
        seen = await _until(events, _done_of(2))
    done = {e.generation: e.status for e in seen if e.kind is Kind.RESPONSE_DONE}
    assert done == {1: "cancelled", 2: "completed"}
    assert {e.generation for e in seen if e.kind in (Kind.AUDIO, Kind.TRANSCRIPT)} == {2}
    pcm = b"".join(e.pcm for e in seen if e.kind is Kind.AUDIO)
    assert pcm == tone(0, reply_audio_ms(DEFAULT_REPLY))
    assert fake.late_deltas_sent == 3
    assert fake.errors == []


async def test_cancel_before_response_created(aiohttp_server: ServerFactory) -> None:
    async with _session(aiohttp_server, create_app(Profile(ttfb_ms=50))) as (session, fake):
        events = session.events()
        await session.respond(4)
        await session.cancel(4)  # response.created has not arrived yet
        seen = await _until(events, _done_of(4))
    assert [e.kind for e in seen] == [Kind.RESPONSE_DONE]
    assert seen[0].status == "cancelled"
    cancel = next(e for e in fake.received if e["type"] == "response.cancel")
    created = next(e for e in fake.sent if e["type"] == "response.created")
    # Usually sent before response.created arrived, so without an id; either way it hits.
    assert cancel.get("response_id") in (None, created["response"]["id"])
    assert fake.errors == []


async def test_truncate_clamps_to_generated_audio(aiohttp_server: ServerFactory) -> None:
    async with _session(aiohttp_server, create_app()) as (session, fake):
        events = session.events()
        await session.respond(1)
        reply = await _until(events, _done_of(1))
        item_id = next(e.item_id for e in reply if e.kind is Kind.AUDIO)
        assert item_id is not None
        await session.truncate(item_id, 10**6)  # more than was ever generated
        await session.truncate(item_id, 500)
        await session.respond(2)  # a round trip, so the truncations have been handled
        await _until(events, _done_of(2))
    assert fake.truncations == [
        {"item_id": item_id, "audio_end_ms": reply_audio_ms(DEFAULT_REPLY)},
        {"item_id": item_id, "audio_end_ms": 500},
    ]
    assert fake.errors == []


async def test_truncate_of_unheard_reply_deletes_it(aiohttp_server: ServerFactory) -> None:
    async with _session(aiohttp_server, create_app()) as (session, fake):
        events = session.events()
        await session.respond(1)
        reply = await _until(events, _done_of(1))
        item_id = next(e.item_id for e in reply if e.kind is Kind.AUDIO)
        assert item_id is not None
        await session.truncate(item_id, 0)
        with pytest.raises(ValueError, match="no audio"):
            await session.truncate("item_unknown", 100)
        await session.respond(2)
        await _until(events, _done_of(2))
    assert fake.deletions == [item_id]
    assert fake.truncations == []
    assert fake.errors == []


async def test_fake_refuses_truncation_past_generated_audio(aiohttp_server: ServerFactory) -> None:
    """The fake errors like the real server when a client does not clamp."""
    server = await aiohttp_server(create_app())
    url = server.make_url("/v1/realtime?model=m")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers={"Authorization": "Bearer test-key"}) as ws,
    ):
        assert (await ws.receive_json())["type"] == "session.created"
        await ws.send_json({"type": "response.create"})
        item_id = None
        while True:
            event = await ws.receive_json()
            if event["type"] == "response.output_audio.delta":
                item_id = event["item_id"]
            if event["type"] == "response.done":
                break
        too_long = reply_audio_ms(DEFAULT_REPLY) + 1
        await ws.send_json(
            {
                "type": "conversation.item.truncate",
                "event_id": "ev1",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": too_long,
            }
        )
        error = await ws.receive_json()
    assert error["type"] == "error"
    assert error["error"]["event_id"] == "ev1"
    assert error["error"]["type"] == "invalid_request_error"


async def test_second_reply_while_one_is_active_fails_that_generation(
    aiohttp_server: ServerFactory,
) -> None:
    async with _session(aiohttp_server, create_app(Profile(chunk_interval_ms=5))) as (
        session,
        fake,
    ):
        events = session.events()
        await session.respond(1)
        await session.respond(2)
        seen = await _until(events, _done_of(1))
    done = {e.generation: e.status for e in seen if e.kind is Kind.RESPONSE_DONE}
    assert done == {2: "failed", 1: "completed"}
    assert {e.generation for e in seen if e.kind is Kind.AUDIO} == {1}
    assert [e["code"] for e in fake.errors] == ["conversation_already_has_active_response"]


# --------------------------------------------------------------------- faults


async def test_bad_key_is_auth_error(aiohttp_server: ServerFactory) -> None:
    provider = OpenAiRealtimeProvider(
        await _server_settings(aiohttp_server, create_app(), api_key="wrong")
    )
    with pytest.raises(AuthError) as info:
        await provider.connect(rate_hz=RATE_HZ, instructions="")
    await provider.aclose()
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("fault", "error"), [(Fault.UNAUTHORIZED, AuthError), (Fault.RATE_LIMITED, RateLimitedError)]
)
async def test_refused_handshake(
    aiohttp_server: ServerFactory, fault: Fault, error: type[ProviderError]
) -> None:
    provider = OpenAiRealtimeProvider(
        await _server_settings(aiohttp_server, create_app(Profile(fault=fault)))
    )
    with pytest.raises(error) as info:
        await provider.connect(rate_hz=RATE_HZ, instructions="")
    await provider.aclose()
    if isinstance(info.value, RateLimitedError):
        assert info.value.retry_after_s == 1.0


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.STALL, ProviderTimeoutError),
        (Fault.DISCONNECT, ConnectionLostError),
        (Fault.MALFORMED, ProviderProtocolError),
    ],
)
async def test_mid_reply_faults_end_the_session(
    aiohttp_server: ServerFactory, fault: Fault, error: type[ProviderError]
) -> None:
    baseline = asyncio.all_tasks()
    profile = Profile(fault=fault, after_chunks=2)
    async with _session(aiohttp_server, create_app(profile), receive_timeout_s=0.5) as (
        session,
        _,
    ):
        events = session.events()
        await session.respond(1)
        seen: list[S2sEvent] = []
        with pytest.raises(error):
            async with asyncio.timeout(10):
                async for event in events:
                    seen.append(event)
        assert len([e for e in seen if e.kind is Kind.AUDIO]) == 2
        with pytest.raises(error):  # a later iteration ends the same way
            async for _ in session.events():
                pass
        with pytest.raises(ConnectionLostError):
            await session.respond(2)
        session.push_audio(bytes(FRAME_BYTES))  # dropped, never raises
        await session.cancel(1)  # no-op once ended
    assert await _settle(baseline) == set()


async def test_connection_refused(aiohttp_unused_port: Callable[[], int]) -> None:
    settings_ = OpenAiRealtimeSettings(
        api_key="k", base_url=f"ws://127.0.0.1:{aiohttp_unused_port()}/v1/realtime"
    )
    provider = OpenAiRealtimeProvider(settings_)
    with pytest.raises(ConnectionLostError):
        await provider.connect(rate_hz=RATE_HZ, instructions="")
    await provider.aclose()


# --------------------------------------------------------------- lifecycle


async def test_close_ends_events_and_leaves_no_tasks(aiohttp_server: ServerFactory) -> None:
    baseline = asyncio.all_tasks()
    provider = OpenAiRealtimeProvider(
        await _server_settings(aiohttp_server, create_app(Profile(chunk_interval_ms=20)))
    )
    session = await provider.connect(rate_hz=RATE_HZ, instructions=INSTRUCTIONS)
    seen: list[S2sEvent] = []

    async def consume() -> None:
        async for event in session.events():
            seen.append(event)

    consumer = asyncio.create_task(consume())
    _push_frames(session, _caller_turn())
    await session.respond(1)
    while not any(e.kind is Kind.AUDIO for e in seen):
        await asyncio.sleep(0.01)
    await session.close()
    await session.close()  # idempotent
    await asyncio.wait_for(consumer, 5)  # events() ended without an error
    await provider.aclose()
    assert await _settle(baseline) == set()


async def test_cancelling_the_consumer_then_closing(aiohttp_server: ServerFactory) -> None:
    baseline = asyncio.all_tasks()
    async with _session(aiohttp_server, create_app(Profile(chunk_interval_ms=20))) as (
        session,
        fake,
    ):

        async def consume() -> None:
            async for _ in session.events():
                pass

        consumer = asyncio.create_task(consume())
        await session.respond(1)
        await asyncio.sleep(0.05)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    await asyncio.wait_for(fake.closed.wait(), 5)
    assert await _settle(baseline) == set()


# ----------------------------------------------------------------------- fuzz

AUDIO_DELTA = json.dumps(
    {
        "type": "response.output_audio.delta",
        "event_id": "event_1",
        "response_id": "resp_1",
        "item_id": "item_1",
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(bytes(96)).decode(),
    }
)
RESPONSE_DONE = json.dumps(
    {"type": "response.done", "event_id": "e", "response": {"id": "resp_1", "status": "cancelled"}}
)


def _decode_only_protocol_errors(frame: str | bytes) -> None:
    with contextlib.suppress(ProviderProtocolError):
        decode_server_event(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_fuzz_random_frames(frame: str | bytes) -> None:
    _decode_only_protocol_errors(frame)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([AUDIO_DELTA, RESPONSE_DONE]),
    st.integers(0, 400),
    st.integers(0, 12),
    st.text(max_size=8),
)
def test_fuzz_mutated_frames(frame: str, at: int, cut: int, insert: str) -> None:
    at = min(at, len(frame))
    _decode_only_protocol_errors(frame[:at] + insert + frame[at + cut :])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
EVENT_TYPES = [
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.created",
    "response.done",
    "error",
    "input_audio_buffer.speech_started",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.truncated",
    "something.new",
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(EVENT_TYPES),
    st.dictionaries(
        st.sampled_from(["response_id", "item_id", "delta", "response", "error", "transcript"]),
        json_values,
        max_size=4,
    ),
)
def test_fuzz_structured_frames(kind: str, fields: dict[str, Any]) -> None:
    _decode_only_protocol_errors(json.dumps({"type": kind, **fields}))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["request", "created", "cancel", "audio", "done"]), st.integers(0, 3)
        ),
        max_size=40,
    )
)
def test_tracker_never_passes_audio_of_a_cancelled_generation(ops: list[tuple[str, int]]) -> None:
    tracker = ResponseTracker()
    cancelled: set[int] = set()
    asked: list[int] = []
    for op, n in ops:
        response_id = f"resp_{n}"
        if op == "request":
            tracker.requested(n)
            asked.append(n)
        elif op == "created":
            generation = tracker.created(ResponseInfo(id=response_id))
            if generation is not None:
                assert generation == asked.pop(0)  # first come, first served
        elif op == "cancel":
            tracker.cancel(n)
            cancelled.add(n)
        elif op == "audio":
            generation = tracker.audio(response_id, f"item_{n}", 48)
            assert generation is None or generation not in cancelled
        else:
            tracker.done(response_id)
        assert tracker.item_audio_ms(f"item_{n}") in (None, *range(0, 1000))
