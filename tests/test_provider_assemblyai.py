"""The AssemblyAI v3 streaming client against the local fake, over real loopback sockets.

Real synthesised speech is pushed in 20 ms frames (faster than real time: the
fake times everything by the audio it receives), and the tests check the events
the client derives, the 50-1000 ms chunking the service demands, every fault of
the profile, cancellation, and (hypothesis) that garbage from the server can
only surface as ProviderProtocolError.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.g711 import ulaw_encode
from server.providers import assemblyai, sttstream
from server.providers.assemblyai import (
    AaiTurn,
    AssemblyAi,
    AssemblyAiEventMapper,
    AssemblyAiSettings,
    AssemblyAiStream,
    Timeline,
    UpdateConfiguration,
    decode_message,
)
from server.providers.base import (
    AuthError,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    RateLimitedError,
    SttEvent,
    SttEventKind,
)
from tests import speech
from tests.fakes.assemblyai import CONFIG, HANDSHAKES, RECEIVED, assemblyai_app
from tests.fakes.profile import Fault, Profile

FRAME = 640
ServerFactory = Callable[..., Awaitable[TestServer]]

UTTERANCE_1 = "hello there how are you"
UTTERANCE_2 = "the weather is lovely today"


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def pcm_of(*parts: np.ndarray[Any, Any]) -> bytes:
    data = speech.concat(parts).tobytes()
    return data[: len(data) // FRAME * FRAME]


CLIENT_FILES = frozenset({assemblyai.__file__, sttstream.__file__})


def client_tasks() -> set[asyncio.Task[Any]]:
    """Live tasks running code of the client module or its shared stream machinery."""
    out = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and code.co_filename in CLIENT_FILES and not task.done():
            out.add(task)
    return out


async def push(stream: AssemblyAiStream, pcm: bytes) -> None:
    """Push ``pcm`` frame by frame, letting the sender run between frames."""
    for i in range(0, len(pcm), FRAME):
        stream.push_audio(pcm[i : i + FRAME])
        await asyncio.sleep(0)


async def push_forever(stream: AssemblyAiStream, pcm: bytes) -> None:
    while True:
        for i in range(0, len(pcm), FRAME):
            stream.push_audio(pcm[i : i + FRAME])
            await asyncio.sleep(0.005)


async def drain(stream: AssemblyAiStream) -> list[SttEvent]:
    return [event async for event in stream.events()]


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a hang guard, not a latency check)."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


def kinds(events: Iterable[SttEvent]) -> list[SttEventKind]:
    return [e.kind for e in events]


class Rig:
    def __init__(self, server: TestServer, app: web.Application) -> None:
        self.server = server
        self.app = app

    def settings(self, **overrides: Any) -> AssemblyAiSettings:
        values: dict[str, Any] = {
            "api_key": "test-key",
            "base_url": f"ws://127.0.0.1:{self.server.port}",
            "receive_timeout_ms": 2000,
            "close_timeout_ms": 3000,
            "connect_timeout_ms": 3000,
            "reconnect_base_ms": 10,
            "reconnect_max_ms": 50,
        }
        values.update(overrides)
        return AssemblyAiSettings(**values)

    def texts(self) -> list[str]:
        return [str(r.data) for r in self.app[RECEIVED] if r.kind == "text"]

    def chunk_sizes(self) -> list[int]:
        return [len(r.data) for r in self.app[RECEIVED] if r.kind == "audio"]

    def sent(self, kind: str) -> list[dict[str, Any]]:
        messages = [json.loads(text) for _, text in self.app[CONFIG].sent]
        return [m for m in messages if m.get("type") == kind]


@pytest.fixture
async def rig_factory(
    aiohttp_server: ServerFactory,
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    async def make(**fake_options: Any) -> Rig:
        fake_options.setdefault("script", [UTTERANCE_1, UTTERANCE_2])
        app = assemblyai_app(**fake_options)
        server = await aiohttp_server(app, host="127.0.0.1")
        return Rig(server, app)

    yield make


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --------------------------------------------------------------------- happy path


async def test_handshake_carries_query_and_raw_key(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream(language="en")
    assert stream.session_id
    await stream.close()
    assert await drain(stream) == []
    (handshake,) = rig.app[HANDSHAKES]
    assert handshake.path == "/v3/ws"
    assert handshake.authorization == "test-key"
    assert handshake.query == {
        "sample_rate": "16000",
        "encoding": "pcm_s16le",
        "speech_model": "universal-streaming-english",
        "format_turns": "false",
        "end_of_turn_confidence_threshold": "0.4",
        "min_end_of_turn_silence_when_confident": "400",
        "max_turn_silence": "1280",
    }
    assert rig.texts() == ['{"type":"Terminate"}']
    assert len(rig.sent("Termination")) == 1
    assert client_tasks() == set()


async def test_utterance_gives_finals_interims_and_one_end_of_turn(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    spoken = speech.speech(UTTERANCE_1)
    pcm = pcm_of(speech.silence(300), spoken, speech.silence(800))
    await push(stream, pcm)
    await stream.close()
    events = await drain(stream)

    order = kinds(events)
    assert order[0] is SttEventKind.SPEECH_STARTED
    assert SttEventKind.INTERIM in order
    assert order.count(SttEventKind.END_OF_TURN) == 1
    assert order[-1] is SttEventKind.END_OF_TURN
    finals = [e for e in events if e.kind is SttEventKind.FINAL]
    assert len(finals) > 1  # words became final one after another while speech went on
    end = events[-1]
    assert " ".join(f.text for f in finals) == end.text
    assert words_of(end.text) == words_of(UTTERANCE_1)
    assert [w.text for f in finals for w in f.words] == [w.text for w in end.words]
    onset_ms, offset_ms = speech.active_bounds_ms(speech.concat([speech.silence(300), spoken]))
    assert end.words[0].start_ms == pytest.approx(onset_ms, abs=60)
    assert end.words[-1].end_ms <= offset_ms + 40
    assert events[0].audio_end_ms == pytest.approx(onset_ms, abs=60)
    assert end.confidence is not None and end.confidence >= 0.4
    stamps = [e.received_ns for e in events]
    assert stamps == sorted(stamps)
    # Every byte went out in 100 ms messages (the last one padded to >= 50 ms).
    sizes = rig.chunk_sizes()
    assert all(size == 3200 for size in sizes[:-1])
    assert 1600 <= sizes[-1] <= 3200
    assert sum(sizes) >= len(pcm)
    assert rig.texts() == ['{"type":"Terminate"}']
    assert client_tasks() == set()


async def test_two_utterances_are_two_turns(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    pcm = pcm_of(
        speech.speech(UTTERANCE_1),
        speech.silence(600),
        speech.speech(UTTERANCE_2),
        speech.silence(600),
    )
    await push(stream, pcm)
    await stream.close()
    turns = [e for e in await drain(stream) if e.kind is SttEventKind.END_OF_TURN]
    assert [words_of(t.text) for t in turns] == [words_of(UTTERANCE_1), words_of(UTTERANCE_2)]
    assert turns[0].words[-1].end_ms < turns[1].words[0].start_ms
    assert [m["turn_order"] for m in rig.sent("Turn") if m["end_of_turn"]] == [0, 1]


async def test_formatted_duplicate_turn_gives_no_second_end_of_turn(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(format_turns=True), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(600)))
    await stream.close()
    events = await drain(stream)
    assert kinds(events).count(SttEventKind.END_OF_TURN) == 1
    end = next(e for e in events if e.kind is SttEventKind.END_OF_TURN)
    assert end.text == UTTERANCE_1
    formatted = [m for m in rig.sent("Turn") if m["turn_is_formatted"]]
    assert [m["transcript"] for m in formatted] == ["Hello there how are you."]
    assert rig.app[HANDSHAKES][0].query["format_turns"] == "true"


async def test_flush_pads_the_last_piece_and_ends_the_turn(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    events = stream.events()
    pcm = pcm_of(speech.speech(UTTERANCE_1))
    pcm = pcm[: len(pcm) // 3200 * 3200 + 640]  # 20 ms past a whole number of chunks
    await push(stream, pcm)
    await push(stream, pcm_of(speech.silence(100)))  # well short of the turn silence
    await stream.flush()
    seen: list[SttEvent] = []
    async with asyncio.timeout(10):  # a hang guard
        async for event in events:
            seen.append(event)
            if event.kind is SttEventKind.END_OF_TURN:
                break
    assert words_of(seen[-1].text) == words_of(UTTERANCE_1)
    sizes = rig.chunk_sizes()
    assert set(sizes[:-1]) == {3200}
    assert sizes[-1] == 1600  # the last 20 ms padded with silence to 50 ms
    await push(stream, pcm_of(speech.silence(60)))
    await stream.flush()
    await stream.close()
    assert rig.chunk_sizes()[len(sizes) :] == [1920]  # 60 ms needs no padding
    assert rig.texts() == ['{"type":"ForceEndpoint"}'] * 2 + ['{"type":"Terminate"}']
    assert client_tasks() == set()


# ------------------------------------------------------------------ flush answers


def push_now(stream: AssemblyAiStream, pcm: bytes) -> None:
    """Push ``pcm`` without yielding: nothing can arrive before the next call."""
    for i in range(0, len(pcm), FRAME):
        stream.push_audio(pcm[i : i + FRAME])


async def next_end_of_turn(events: AsyncIterator[SttEvent], seen: list[SttEvent]) -> SttEvent:
    async with asyncio.timeout(10):  # a hang guard, not a latency check
        async for event in events:
            seen.append(event)
            if event.kind is SttEventKind.END_OF_TURN:
                return event
    raise AssertionError("stream ended before END_OF_TURN")


async def test_flush_of_silence_gives_one_empty_end_of_turn(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    # The service answers ForceEndpoint only by ending an open turn; with none
    # open it sends nothing, so the stream answers the flush itself.
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    events = stream.events()
    push_now(stream, pcm_of(speech.silence(620)))
    await stream.flush()
    seen: list[SttEvent] = []
    end = await next_end_of_turn(events, seen)
    assert kinds(seen) == [SttEventKind.END_OF_TURN]
    assert (end.text, end.words, end.audio_end_ms) == ("", (), 620.0)
    await stream.close()
    assert [e async for e in events] == []
    assert rig.texts() == ['{"type":"ForceEndpoint"}', '{"type":"Terminate"}']
    assert rig.sent("Turn") == []
    assert client_tasks() == set()


async def test_flush_after_speech_gives_finals_then_one_end_of_turn(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    spoken = pcm_of(speech.speech(UTTERANCE_1), speech.silence(100))
    await push(stream, spoken)
    await stream.flush()
    await stream.close()
    events = await drain(stream)
    order = kinds(events)
    assert order.count(SttEventKind.END_OF_TURN) == 1
    assert order[-2:] == [SttEventKind.FINAL, SttEventKind.END_OF_TURN]
    end = events[-1]
    finals = [e for e in events if e.kind is SttEventKind.FINAL]
    assert words_of(end.text) == words_of(UTTERANCE_1)
    assert [w.text for f in finals for w in f.words] == [w.text for w in end.words]
    padded_ms = sum(rig.chunk_sizes()) / 32
    assert len(spoken) / 32 <= end.audio_end_ms <= padded_ms  # type: ignore[operator]
    assert [m["end_of_turn"] for m in rig.sent("Turn")][-1] is True


async def test_two_flushes_in_one_turn_give_two_end_of_turns_in_order(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    events = stream.events()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(100)))
    seen: list[SttEvent] = []
    async with asyncio.timeout(10):
        async for event in events:  # the turn is open once SpeechStarted is in
            seen.append(event)
            if event.kind is SttEventKind.SPEECH_STARTED:
                break
    await stream.flush()
    await stream.flush()  # the first one ends the turn: nothing is left for this one
    first = await next_end_of_turn(events, seen)
    second = await next_end_of_turn(events, seen)
    assert words_of(first.text) == words_of(UTTERANCE_1)
    assert second.text == "" and second.words == ()
    await stream.close()
    assert [m["end_of_turn"] for m in rig.sent("Turn")].count(True) == 1


async def test_turn_ending_with_no_words_gives_an_empty_end_of_turn(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(script=[])  # speech is heard but no words recognised
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(1500)))
    await stream.close()
    events = await drain(stream)
    assert [(e.kind, e.text) for e in events] == [
        (SttEventKind.SPEECH_STARTED, ""),
        (SttEventKind.END_OF_TURN, ""),
    ]
    assert [m["transcript"] for m in rig.sent("Turn") if m["end_of_turn"]] == [""]


async def test_turn_left_open_after_a_flush_is_ended_after_the_flush_timeout(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    # Begin, SpeechStarted, two partial Turns (one final word), then the fake goes silent.
    rig = await rig_factory(profile=Profile(fault=Fault.STALL, after_chunks=4))
    stream = await AssemblyAi(rig.settings(flush_timeout_ms=100), http).open_stream()
    events = stream.events()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1)))
    seen: list[SttEvent] = []
    async with asyncio.timeout(10):
        async for event in events:
            seen.append(event)
            if event.kind is SttEventKind.FINAL:
                break
    await stream.flush()
    end = await next_end_of_turn(events, seen)
    finals = [w.text for e in seen if e.kind is SttEventKind.FINAL for w in e.words]
    assert finals and [w.text for w in end.words] == finals
    assert end.text == " ".join(finals)
    assert kinds(seen).count(SttEventKind.END_OF_TURN) == 1
    await stream.abort()
    assert client_tasks() == set()


async def test_update_configuration_is_sent_and_applied(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    update = UpdateConfiguration(min_end_of_turn_silence_when_confident=5000, max_turn_silence=5000)
    await stream.update_configuration(update)
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(1500)))
    await until(lambda: len(rig.app[RECEIVED]) >= 10)
    await stream.close()
    events = await drain(stream)
    assert rig.texts()[0] == (
        '{"type":"UpdateConfiguration","min_end_of_turn_silence_when_confident":5000,'
        '"max_turn_silence":5000}'
    )
    # 1.5 s of silence no longer ends the turn; only Terminate does.
    assert kinds(events).count(SttEventKind.END_OF_TURN) == 1
    assert rig.sent("Turn")[-1]["end_of_turn_confidence"] == 1.0


async def test_keepalive_is_sent_while_no_audio_flows(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    settings = rig.settings(keepalive_interval_ms=50, inactivity_timeout_s=5)
    stream = await AssemblyAi(settings, http).open_stream()
    await until(lambda: rig.texts().count('{"type":"KeepAlive"}') >= 3)
    await stream.close()
    assert rig.app[HANDSHAKES][0].query["inactivity_timeout"] == "5"


async def test_short_chunk_is_refused_like_the_service(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    await stream._ws.send_bytes(bytes(640))  # 20 ms: below the 50 ms minimum
    with pytest.raises(ProviderError, match="3007 Input duration violation: 20 ms") as caught:
        await drain(stream)
    assert not caught.value.retryable
    await stream.close()
    assert client_tasks() == set()


async def test_unknown_message_is_refused_like_the_service(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    stream._queue_control('{"type":"Bogus"}')
    with pytest.raises(ProviderError, match="3006") as caught:
        await drain(stream)
    assert not caught.value.retryable
    await stream.close()


async def test_non_english_needs_a_multilingual_model(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    with pytest.raises(ProviderError, match="English only") as caught:
        await AssemblyAi(rig.settings(), http).open_stream(language="de")
    assert not caught.value.retryable
    assert rig.app[HANDSHAKES] == []
    multilingual = rig.settings(model="universal-streaming-multilingual")
    stream = await AssemblyAi(multilingual, http).open_stream(language="de")
    await stream.close()
    assert rig.app[HANDSHAKES][0].query["language_detection"] == "true"


# ------------------------------------------------------------------------- faults


async def test_bad_key_is_auth_error(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    with pytest.raises(AuthError) as caught:
        await AssemblyAi(rig.settings(api_key="wrong"), http).open_stream()
    assert caught.value.status == 401


async def test_bad_key_refused_after_upgrade_is_auth_error(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(auth_failure="close")
    with pytest.raises(AuthError, match="1008 Unauthorized"):
        await AssemblyAi(rig.settings(api_key="wrong"), http).open_stream()
    assert client_tasks() == set()


async def test_unauthorized_fault_is_auth_error(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.UNAUTHORIZED))
    with pytest.raises(AuthError):
        await AssemblyAi(rig.settings(), http).open_stream()


async def test_rate_limit_carries_retry_after(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.RATE_LIMITED))
    with pytest.raises(RateLimitedError) as caught:
        await AssemblyAi(rig.settings(), http).open_stream()
    assert caught.value.retry_after_s == 1.0


async def push_until_done(stream: AssemblyAiStream, pcm: bytes) -> list[SttEvent]:
    """Push ``pcm`` in a loop (4x real time) while draining events, until they end."""
    task = asyncio.create_task(push_forever(stream, pcm))
    try:
        return await drain(stream)
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_stall_in_a_turn_times_out_after_reconnects(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    # Begin and SpeechStarted arrive, then nothing: the open turn stalls.
    rig = await rig_factory(profile=Profile(fault=Fault.STALL, after_chunks=2))
    settings = rig.settings(receive_timeout_ms=200, reconnect_attempts=1)
    stream = await AssemblyAi(settings, http).open_stream()
    with pytest.raises(ProviderTimeoutError):
        await push_until_done(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(400)))
    assert len(rig.app[HANDSHAKES]) == 2
    await stream.close()
    assert client_tasks() == set()


async def test_silence_without_a_turn_is_not_a_stall(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(receive_timeout_ms=100), http).open_stream()
    await push(stream, pcm_of(speech.silence(2000)))
    await until(lambda: sum(rig.chunk_sizes()) == 2000 * 32)
    await asyncio.sleep(0.3)  # three receive deadlines without a message
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(600)))
    await stream.close()
    events = await drain(stream)
    assert words_of(events[-1].text) == words_of(UTTERANCE_1)
    assert stream.reconnects == 0


async def reconnect_scenario(rig: Rig, http: aiohttp.ClientSession, **overrides: Any) -> None:
    stream = await AssemblyAi(rig.settings(**overrides), http).open_stream()
    first_session = stream.session_id
    consumer = asyncio.create_task(drain(stream))
    pusher = asyncio.create_task(
        push_forever(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(600)))
    )
    try:
        await until(lambda: stream.reconnects > 0)
    finally:
        pusher.cancel()
        await asyncio.wait({pusher})
    await push(stream, pcm_of(speech.silence(600), speech.speech(UTTERANCE_1)))
    await push(stream, pcm_of(speech.silence(600)))
    await stream.close()
    events = await consumer
    turn = [e for e in events if e.kind is SttEventKind.END_OF_TURN][-1]
    assert words_of(turn.text) == words_of(UTTERANCE_1)
    assert stream.reconnects == 1
    assert stream.session_id != first_session
    assert len(rig.app[HANDSHAKES]) == 2
    # Times after the reconnect stay on the stream's clock (after everything pushed before).
    pushed_before_ms = sum(len(r.data) for r in rig.app[RECEIVED] if r.connection == 0) / 32
    assert turn.words[0].start_ms > pushed_before_ms
    assert client_tasks() == set()


async def test_disconnect_mid_stream_reconnects_and_events_continue(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(
        profile=Profile(fault=Fault.DISCONNECT, after_chunks=4),
        faulty_connections=1,
        script=[UTTERANCE_1] * 9,
    )
    await reconnect_scenario(rig, http)


async def test_stall_mid_stream_reconnects_and_events_continue(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(
        profile=Profile(fault=Fault.STALL, after_chunks=3),
        faulty_connections=1,
        script=[UTTERANCE_1] * 9,
    )
    await reconnect_scenario(rig, http, receive_timeout_ms=200)


async def test_disconnect_every_time_gives_up(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.DISCONNECT, after_chunks=2))
    stream = await AssemblyAi(rig.settings(reconnect_attempts=2), http).open_stream()
    with pytest.raises(ConnectionLostError):
        await push_until_done(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(400)))
    assert len(rig.app[HANDSHAKES]) == 3
    await stream.close()
    assert client_tasks() == set()


async def test_malformed_frame_is_protocol_error(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.MALFORMED, after_chunks=2))
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(600)))
    with pytest.raises(ProviderProtocolError):
        await drain(stream)
    assert stream.reconnects == 0
    with pytest.raises(ProviderProtocolError):
        await stream.flush()
    await stream.close()
    assert client_tasks() == set()


async def test_slow_drip_still_delivers_everything(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(
        profile=Profile(fault=Fault.SLOW_DRIP, ttfb_ms=20, chunk_interval_ms=3, jitter_ms=2),
        partial_interval_ms=600,
    )
    stream = await AssemblyAi(rig.settings(close_timeout_ms=8000), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(600)))
    await stream.close()
    events = await drain(stream)
    assert words_of(events[-1].text) == words_of(UTTERANCE_1)


async def test_close_without_termination_in_time_times_out(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.STALL, after_chunks=1))
    stream = await AssemblyAi(rig.settings(close_timeout_ms=200), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1)))
    await stream.close()
    with pytest.raises(ProviderTimeoutError):
        await drain(stream)
    assert client_tasks() == set()


# ------------------------------------------------------------------- cancellation


async def test_cancelled_consumer_then_close_leaves_nothing_running(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    before = asyncio.all_tasks()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    consumer = asyncio.create_task(drain(stream))
    await push(stream, pcm_of(speech.speech(UTTERANCE_1)))
    consumer.cancel()
    await asyncio.wait({consumer})
    await stream.close()
    assert client_tasks() == set()
    await until(lambda: not {t for t in asyncio.all_tasks() - before if not t.done()})


async def test_cancelled_open_leaves_nothing_running(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(ttfb_ms=5000))  # Begin comes late
    opener = asyncio.create_task(AssemblyAi(rig.settings(), http).open_stream())
    await until(lambda: len(rig.app[HANDSHAKES]) == 1)
    opener.cancel()
    await asyncio.wait({opener})
    assert opener.cancelled()
    assert client_tasks() == set()


async def test_cancelled_close_aborts(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.STALL, after_chunks=1))
    stream = await AssemblyAi(rig.settings(close_timeout_ms=5000), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1)))
    closer = asyncio.create_task(stream.close())
    await until(lambda: '{"type":"Terminate"}' in rig.texts())
    closer.cancel()
    await asyncio.wait({closer})
    assert closer.cancelled()
    assert client_tasks() == set()
    assert await drain(stream) == []  # the fake stalled after Begin


async def test_abort_stops_at_once(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await AssemblyAi(rig.settings(), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1)))
    await stream.abort()
    await stream.abort()
    assert client_tasks() == set()
    await drain(stream)  # ends without error
    assert '{"type":"Terminate"}' not in rig.texts()


# ------------------------------------------------------------------- send buffer


async def test_push_never_blocks_and_drops_beyond_the_buffer(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(script=[UTTERANCE_2])
    stream = await AssemblyAi(rig.settings(max_unsent_ms=1000), http).open_stream()
    silence = pcm_of(speech.silence(3000))
    for i in range(0, len(silence), FRAME):  # no await: the sender cannot run
        stream.push_audio(silence[i : i + FRAME])
    assert stream.dropped_ms == 2000
    spoken = pcm_of(speech.speech(UTTERANCE_2), speech.silence(600))
    await push(stream, spoken)  # its first frames may meet a still-full buffer
    await stream.close()
    end = [e for e in await drain(stream) if e.kind is SttEventKind.END_OF_TURN][-1]
    padding = sum(rig.chunk_sizes()) - (len(silence) + len(spoken) - stream.dropped_ms * 32)
    assert 0 <= padding < 1600
    # The fake heard speech at 1000 ms of its audio; on the stream's clock it began at 3000 ms.
    assert end.words[0].start_ms == pytest.approx(3000, abs=60)


def test_push_takes_whole_frames_only() -> None:
    stream = object.__new__(AssemblyAiStream)
    with pytest.raises(ValueError, match="whole 20 ms frames"):
        stream.push_audio(b"\x00" * 100)


def test_settings_decode_from_toml_shape_and_validate() -> None:
    settings = msgspec.convert({"api_key": "k", "chunk_ms": 50}, AssemblyAiSettings)
    assert settings.base_url == "wss://streaming.assemblyai.com"
    assert assemblyai.stream_url(settings).path == "/v3/ws"
    with pytest.raises(msgspec.ValidationError, match="chunk_ms"):
        msgspec.convert({"api_key": "k", "chunk_ms": 40}, AssemblyAiSettings)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"api_key": "k", "bogus": 1}, AssemblyAiSettings)


def test_timeline_maps_across_drops_and_padding() -> None:
    timeline = Timeline(500.0)
    timeline.skip(100.0, 40.0)  # 40 ms dropped at 100 ms
    timeline.skip(230.0, -30.0)  # 30 ms of padding ended at 230 ms
    assert timeline.to_stream_ms(50.0) == 550.0
    assert timeline.to_stream_ms(150.0) == 690.0
    assert timeline.to_stream_ms(300.0) == 810.0


# -------------------------------------------------------------------- decoding fuzz


def turn_frame(**fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "Turn",
        "turn_order": 0,
        "turn_is_formatted": False,
        "end_of_turn": False,
        "transcript": "hi",
        "end_of_turn_confidence": 0.2,
        "words": [
            {"start": 100, "end": 300, "confidence": 0.9, "text": "hi", "word_is_final": True},
            {"start": 400, "end": 600, "confidence": 0.8, "text": "the", "word_is_final": False},
        ],
    }
    frame.update(fields)
    return frame


VALID_FRAMES = [
    turn_frame(),
    turn_frame(end_of_turn=True, transcript="hi there"),
    turn_frame(end_of_turn=True, turn_is_formatted=True, transcript="Hi there."),
    {"type": "Begin", "id": "s", "expires_at": 1735000000},
    {"type": "SpeechStarted", "timestamp": 90},
    {"type": "Termination", "audio_duration_seconds": 3, "session_duration_seconds": 4},
    {"type": "Error", "error_code": 3005, "error": "boom"},
    {"type": "Warning", "warning_code": 1, "warning": "hm"},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def mutate(frame: Any, path: list[int], value: Any) -> Any:
    """Replace one node of ``frame`` (chosen by ``path``) with ``value``."""
    if not path or not isinstance(frame, (dict, list)) or not frame:
        return value
    keys = list(frame.keys()) if isinstance(frame, dict) else list(range(len(frame)))
    key = keys[path[0] % len(keys)]
    copy = dict(frame) if isinstance(frame, dict) else list(frame)
    copy[key] = mutate(frame[key], path[1:], value)
    return copy


def feed_mapper(frames: list[str | bytes]) -> None:
    mapper = AssemblyAiEventMapper()
    for data in frames:
        try:
            message = decode_message(data)
        except ProviderProtocolError:
            continue
        if message is not None:
            for event in mapper.events_for(message, 1):
                assert isinstance(event, SttEvent)
        if len(data) % 3 == 0:  # now and then a flush the server left unanswered
            end = mapper.end_turn(2, 0.0)
            assert end.kind is SttEventKind.END_OF_TURN and not mapper.turn_open


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(VALID_FRAMES),
            st.lists(st.integers(min_value=0, max_value=20), max_size=6),
            json_values,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_frames_only_raise_protocol_errors(
    cases: list[tuple[dict[str, Any], list[int], Any]],
) -> None:
    feed_mapper([json.dumps(mutate(frame, path, value)) for frame, path, value in cases])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.binary(max_size=64), st.text(max_size=64), json_values.map(json.dumps)),
        max_size=4,
    )
)
def test_random_frames_only_raise_protocol_errors(frames: list[str | bytes]) -> None:
    feed_mapper(frames)


def test_decoding_edge_cases() -> None:
    assert decode_message('{"type":"LLMGatewayResponse","turn_order":1}') is None
    error = decode_message('{"error":"Session Expired"}')
    assert isinstance(error, assemblyai.AaiError) and error.error == "Session Expired"
    with pytest.raises(ProviderProtocolError):
        decode_message('{"type":"Turn","turn_order":-1,"end_of_turn":false}')
    with pytest.raises(ProviderProtocolError):
        decode_message("{}")


def test_error_codes_map_to_typed_errors() -> None:
    assert isinstance(assemblyai.error_for_code(1008, "Unauthorized Connection"), AuthError)
    limited = assemblyai.error_for_code(1008, "Unauthorized Connection: Too many concurrent")
    assert isinstance(limited, RateLimitedError)
    assert isinstance(assemblyai.error_for_code(3009, "x"), RateLimitedError)
    assert not assemblyai.error_for_code(3007, "x").retryable
    assert isinstance(assemblyai.error_for_code(3005, "x"), ConnectionLostError)
    assert isinstance(assemblyai.error_for_code(3008, "expired"), ConnectionLostError)


def test_mapper_reports_each_word_final_once() -> None:
    mapper = AssemblyAiEventMapper()

    def turn(**fields: Any) -> AaiTurn:
        message = decode_message(json.dumps(turn_frame(**fields)))
        assert isinstance(message, AaiTurn)
        return message

    first = mapper.events_for(turn(), 1)
    assert [(e.kind, e.text) for e in first] == [
        (SttEventKind.FINAL, "hi"),
        (SttEventKind.INTERIM, "the"),
    ]
    again = mapper.events_for(turn(), 2)  # nothing new became final
    assert [(e.kind, e.text) for e in again] == [(SttEventKind.INTERIM, "the")]
    ended = mapper.events_for(turn(end_of_turn=True, transcript="hi the"), 3)
    assert [(e.kind, e.text) for e in ended] == [
        (SttEventKind.FINAL, "the"),
        (SttEventKind.END_OF_TURN, "hi the"),
    ]
    assert ended[1].confidence == 0.2
    formatted = turn(end_of_turn=True, turn_is_formatted=True, transcript="Hi the.")
    assert mapper.events_for(formatted, 4) == []
    assert not mapper.turn_open


def test_mapper_ends_turns_the_server_does_not() -> None:
    mapper = AssemblyAiEventMapper()
    turn = decode_message(json.dumps(turn_frame()))
    assert isinstance(turn, AaiTurn)
    mapper.events_for(turn, 1)
    assert mapper.turn_open
    end = mapper.end_turn(2, 900.0)
    assert (end.kind, end.text, end.audio_end_ms) == (SttEventKind.END_OF_TURN, "hi", 900.0)
    assert not mapper.turn_open
    late = decode_message(json.dumps(turn_frame(end_of_turn=True, transcript="hi the")))
    assert isinstance(late, AaiTurn)
    assert mapper.events_for(late, 3) == []  # that turn already ended here
    empty = decode_message(json.dumps(turn_frame(turn_order=1, end_of_turn=True, words=[])))
    assert isinstance(empty, AaiTurn)
    (ended,) = mapper.events_for(empty, 4)
    assert (ended.kind, ended.text, ended.words) == (SttEventKind.END_OF_TURN, "hi", ())
    blank = turn_frame(turn_order=2, end_of_turn=True, words=[], transcript="")
    (ended,) = mapper.events_for(AaiTurn(**{k: v for k, v in blank.items() if k != "type"}), 5)
    assert (ended.kind, ended.text, ended.audio_end_ms) == (SttEventKind.END_OF_TURN, "", None)
    assert mapper.end_turn(6, 1000.0).text == ""  # no turn open: nothing to report


# ----------------------------------------------------------------- the fake itself


async def test_fake_refuses_a_session_without_sample_rate(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    settings = rig.settings()
    url = assemblyai.stream_url(settings).without_query_params("sample_rate")
    with pytest.raises(ProviderError, match="3006 Invalid Message: Sample rate") as caught:
        await assemblyai.connect(http, settings, url)
    assert not caught.value.retryable


async def test_fake_takes_mulaw_in_chunks_of_50_to_1000_ms(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    url = f"ws://127.0.0.1:{rig.server.port}/v3/ws"
    query = {"encoding": "pcm_mulaw", "sample_rate": "8000"}
    spoken = speech.concat([speech.speech(UTTERANCE_1, 8000), speech.silence(800, 8000)])
    audio = ulaw_encode(spoken.tobytes())
    messages: list[dict[str, Any]] = []
    async with http.ws_connect(url, params=query, headers={"Authorization": "test-key"}) as ws:
        for i in range(0, len(audio) // 400 * 400, 400):  # 50 ms of 8 kHz μ-law
            await ws.send_bytes(audio[i : i + 400])
        await ws.send_str('{"type":"Terminate"}')
        async for msg in ws:
            messages.append(json.loads(msg.data))
        assert ws.close_code == 1000
    assert messages[0]["type"] == "Begin"
    ended = [m for m in messages if m["type"] == "Turn" and m["end_of_turn"]]
    assert words_of(ended[0]["transcript"]) == words_of(UTTERANCE_1)
    assert messages[-1]["type"] == "Termination"
