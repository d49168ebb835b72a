"""The Deepgram live STT client against the local fake, over real loopback sockets.

Real synthesised speech is pushed in 20 ms frames (faster than real time: the
fake times everything by the audio it receives), and the tests check the events
the client derives, what the client put on the wire, every fault of the
profile, cancellation, and (hypothesis) that garbage from the server can only
surface as ProviderProtocolError.
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
from server.providers import deepgram_stt, sttstream
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
from server.providers.deepgram_stt import (
    DeepgramEventMapper,
    DeepgramStt,
    DeepgramSttSettings,
    DeepgramSttStream,
    Timeline,
    decode_message,
)
from tests import speech
from tests.fakes.deepgram_stt import CONFIG, HANDSHAKES, RECEIVED, deepgram_stt_app
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


CLIENT_FILES = frozenset({deepgram_stt.__file__, sttstream.__file__})


def client_tasks() -> set[asyncio.Task[Any]]:
    """Live tasks running code of the client module or its shared stream machinery."""
    out = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and code.co_filename in CLIENT_FILES and not task.done():
            out.add(task)
    return out


async def push(stream: DeepgramSttStream, pcm: bytes) -> None:
    """Push ``pcm`` frame by frame, letting the sender run between frames."""
    for i in range(0, len(pcm), FRAME):
        stream.push_audio(pcm[i : i + FRAME])
        await asyncio.sleep(0)


async def drain(stream: DeepgramSttStream) -> list[SttEvent]:
    return [event async for event in stream.events()]


async def next_event(
    events: AsyncIterator[SttEvent], kind: SttEventKind, seen: list[SttEvent] | None = None
) -> SttEvent:
    async with asyncio.timeout(10):  # a hang guard, not a latency check
        async for event in events:
            if seen is not None:
                seen.append(event)
            if event.kind is kind:
                return event
    raise AssertionError(f"stream ended before {kind}")


def kinds(events: Iterable[SttEvent]) -> list[SttEventKind]:
    return [e.kind for e in events]


class Rig:
    def __init__(self, server: TestServer, app: web.Application) -> None:
        self.server = server
        self.app = app

    def settings(self, **overrides: Any) -> DeepgramSttSettings:
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
        return DeepgramSttSettings(**values)

    def texts(self, connection: int | None = None) -> list[str]:
        return [
            str(r.data)
            for r in self.app[RECEIVED]
            if r.kind == "text" and (connection is None or r.connection == connection)
        ]

    def audio_bytes(self) -> int:
        return sum(len(r.data) for r in self.app[RECEIVED] if r.kind == "audio")


@pytest.fixture
async def rig_factory(
    aiohttp_server: ServerFactory,
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    async def make(**fake_options: Any) -> Rig:
        fake_options.setdefault("script", [UTTERANCE_1, UTTERANCE_2])
        app = deepgram_stt_app(**fake_options)
        server = await aiohttp_server(app, host="127.0.0.1")
        return Rig(server, app)

    yield make


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --------------------------------------------------------------------- happy path


async def test_handshake_carries_query_and_token(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    provider = DeepgramStt(rig.settings(smart_format=True), http)
    stream = await provider.open_stream(language="en-GB")
    await stream.close()
    assert await drain(stream) == []
    (handshake,) = rig.app[HANDSHAKES]
    assert handshake.path == "/v1/listen"
    assert handshake.authorization == "Token test-key"
    assert handshake.query == {
        "model": "nova-3",
        "encoding": "linear16",
        "sample_rate": "16000",
        "channels": "1",
        "interim_results": "true",
        "endpointing": "300",
        "utterance_end_ms": "1000",
        "vad_events": "true",
        "smart_format": "true",
        "punctuate": "true",
        "language": "en-GB",
    }
    assert rig.texts() == ['{"type":"CloseStream"}']
    assert client_tasks() == set()


async def test_utterance_gives_ordered_events_and_one_end_of_turn(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    spoken = speech.speech(UTTERANCE_1)
    pcm = pcm_of(speech.silence(300), spoken, speech.silence(1600))
    await push(stream, pcm)
    await stream.close()
    events = await drain(stream)

    order = kinds(events)
    assert order[0] is SttEventKind.SPEECH_STARTED
    assert SttEventKind.INTERIM in order
    assert order.count(SttEventKind.END_OF_TURN) == 1  # speech_final, then UtteranceEnd: once
    assert order.index(SttEventKind.INTERIM) < order.index(SttEventKind.FINAL)
    assert order.index(SttEventKind.FINAL) < order.index(SttEventKind.END_OF_TURN)
    final = next(e for e in events if e.kind is SttEventKind.FINAL)
    end = next(e for e in events if e.kind is SttEventKind.END_OF_TURN)
    assert words_of(final.text) == words_of(UTTERANCE_1)
    assert end.text == final.text
    assert [w.text for w in end.words] == [w.text for w in final.words]
    # Word times come from the detected speech, in ms since the first pushed sample.
    onset_ms, offset_ms = speech.active_bounds_ms(speech.concat([speech.silence(300), spoken]))
    assert final.words[0].start_ms == pytest.approx(onset_ms, abs=60)
    assert final.words[-1].end_ms <= offset_ms + 40
    starts = [w.start_ms for w in final.words]
    assert starts == sorted(starts)
    started = events[0]
    assert started.audio_end_ms == pytest.approx(onset_ms, abs=60)
    stamps = [e.received_ns for e in events]
    assert stamps == sorted(stamps)
    # Every byte went out, then CloseStream, and nothing after it.
    assert rig.audio_bytes() == len(pcm)
    assert rig.texts()[-1] == '{"type":"CloseStream"}'
    assert client_tasks() == set()


async def test_two_utterances_are_two_turns(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(utterance_end_ms=None), http).open_stream()
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


async def test_flush_sends_finalize_after_audio_and_gets_final(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    events = stream.events()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(100)))
    await stream.flush()
    seen: list[SttEvent] = []
    final = await next_event(events, SttEventKind.FINAL, seen)
    assert words_of(final.text) == words_of(UTTERANCE_1)
    assert SttEventKind.END_OF_TURN not in kinds(seen)  # 100 ms < endpointing
    texts = rig.texts()
    assert texts == ['{"type":"Finalize"}']
    received = rig.app[RECEIVED]
    finalize_at = next(i for i, r in enumerate(received) if r.kind == "text")
    assert all(r.kind == "audio" for r in received[:finalize_at])
    await stream.close()
    assert client_tasks() == set()


# ------------------------------------------------------------------ flush answers


def push_now(stream: DeepgramSttStream, pcm: bytes) -> None:
    """Push ``pcm`` without yielding: nothing can arrive before the next call."""
    for i in range(0, len(pcm), FRAME):
        stream.push_audio(pcm[i : i + FRAME])


async def flush_and_close(stream: DeepgramSttStream) -> list[SttEvent]:
    """Flush, wait for its END_OF_TURN, close, and return every event."""
    events = stream.events()
    await stream.flush()
    seen: list[SttEvent] = []
    await next_event(events, SttEventKind.END_OF_TURN, seen)
    await stream.close()
    return seen + [event async for event in events]


async def test_flush_of_silence_gives_one_empty_end_of_turn(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    push_now(stream, pcm_of(speech.silence(600)))
    events = await flush_and_close(stream)
    assert kinds(events) == [SttEventKind.END_OF_TURN]
    (end,) = events
    assert end.text == "" and end.words == ()
    assert end.audio_end_ms == 600.0  # covers everything pushed before the flush
    answers = [m for _, m in rig.app[CONFIG].sent if '"from_finalize": true' in m]
    assert len(answers) == 1  # the service's answer, not a client-side guess
    assert client_tasks() == set()


async def test_late_finalize_answer_still_answers_the_flush(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(finalize_delay_ms=200)
    stream = await DeepgramStt(rig.settings(flush_timeout_ms=5000), http).open_stream()
    push_now(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(100)))
    events = await flush_and_close(stream)
    ends = [e for e in events if e.kind is SttEventKind.END_OF_TURN]
    assert [words_of(e.text) for e in ends] == [words_of(UTTERANCE_1)]


async def test_flush_after_speech_gives_final_then_one_end_of_turn(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    push_now(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(100)))
    events = await flush_and_close(stream)
    order = kinds(events)
    assert order.count(SttEventKind.END_OF_TURN) == 1
    assert order[-2:] == [SttEventKind.FINAL, SttEventKind.END_OF_TURN]
    final, end = events[-2:]
    assert words_of(end.text) == words_of(UTTERANCE_1) == words_of(final.text)
    assert [w.text for w in end.words] == [w.text for w in final.words]
    assert end.audio_end_ms == pytest.approx(len(pcm_of(speech.speech(UTTERANCE_1))) / 32 + 100)


async def test_speech_final_waiting_for_a_flush_answer_is_the_answer(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    # The fake ends the segment with speech_final after 300 ms of the 500 ms of
    # silence, then answers the Finalize with an empty final: one END_OF_TURN.
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    push_now(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(500)))
    events = await flush_and_close(stream)
    ends = [e for e in events if e.kind is SttEventKind.END_OF_TURN]
    assert [words_of(e.text) for e in ends] == [words_of(UTTERANCE_1)]
    sent = [json.loads(m) for _, m in rig.app[CONFIG].sent]
    results = [m for m in sent if m["type"] == "Results" and m["is_final"]]
    assert results[0]["speech_final"] and results[-1].get("from_finalize")


async def test_two_flushes_give_two_end_of_turns_in_order(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    push_now(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(100)))
    await stream.flush()
    await stream.flush()
    await stream.close()
    ends = [e for e in await drain(stream) if e.kind is SttEventKind.END_OF_TURN]
    assert [words_of(e.text) for e in ends] == [words_of(UTTERANCE_1), []]
    assert rig.texts()[:2] == ['{"type":"Finalize"}'] * 2


async def test_unanswered_finalize_is_answered_after_the_flush_timeout(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(answer_idle_finalize=False)
    stream = await DeepgramStt(rig.settings(flush_timeout_ms=100), http).open_stream()
    push_now(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(400)))
    events = stream.events()
    await stream.flush()  # answered by the fake: speech was pending
    await stream.flush()  # nothing since the last final: no answer from the fake
    ends = [await next_event(events, SttEventKind.END_OF_TURN) for _ in range(2)]
    assert [words_of(e.text) for e in ends] == [words_of(UTTERANCE_1), []]
    await stream.close()
    answers = [m for _, m in rig.app[CONFIG].sent if '"from_finalize": true' in m]
    assert len(answers) == 1
    assert client_tasks() == set()


async def test_close_answers_a_flush_the_server_left_unanswered(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(answer_idle_finalize=False)
    stream = await DeepgramStt(rig.settings(flush_timeout_ms=60_000), http).open_stream()
    await stream.flush()  # no audio at all: the fake does not answer
    await stream.close()
    events = await drain(stream)
    assert [(e.kind, e.text, e.audio_end_ms) for e in events] == [
        (SttEventKind.END_OF_TURN, "", 0.0)
    ]


async def test_flush_while_reconnecting_is_answered_at_once(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(
        profile=Profile(fault=Fault.DISCONNECT, after_chunks=1), faulty_connections=1
    )
    settings = rig.settings(reconnect_base_ms=1000, reconnect_max_ms=1000)
    stream = await DeepgramStt(settings, http).open_stream()
    events = stream.events()
    pcm = pcm_of(speech.speech(UTTERANCE_1), speech.silence(400))
    async with asyncio.timeout(10):  # a hang guard
        while not stream.dropped_ms:  # audio is dropped once the socket is down
            await push(stream, pcm[: 10 * FRAME])
    pushed_ms = stream.dropped_ms + sum(len(r.data) for r in rig.app[RECEIVED]) / 32
    await stream.flush()
    end = await next_event(events, SttEventKind.END_OF_TURN)
    assert end.text == ""
    assert end.audio_end_ms is not None and end.audio_end_ms >= pushed_ms
    assert stream.reconnects == 0  # answered before the new socket came up
    await stream.abort()
    assert client_tasks() == set()


async def test_punctuated_words_are_used(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(punctuate=True), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(500)))
    await stream.close()
    final = next(e for e in await drain(stream) if e.kind is SttEventKind.FINAL)
    assert final.text == "Hello there how are you."
    assert final.words[0].text == "Hello"
    assert final.words[-1].text == "you."


# ---------------------------------------------------------------- keep-alive, idle


async def test_keepalive_holds_an_idle_socket_open(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(idle_timeout_s=0.3)
    stream = await DeepgramStt(rig.settings(keepalive_interval_ms=60), http).open_stream()
    await asyncio.sleep(1.0)  # idle for over three of the fake's idle timeouts
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(500)))
    await stream.close()
    events = await drain(stream)
    assert words_of(next(e for e in events if e.kind is SttEventKind.FINAL).text) == words_of(
        UTTERANCE_1
    )
    assert rig.texts().count('{"type":"KeepAlive"}') >= 3
    assert stream.reconnects == 0


async def test_idle_socket_is_closed_with_net_0001(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(idle_timeout_s=0.2)
    settings = rig.settings(keepalive_interval_ms=None, reconnect_attempts=0)
    stream = await DeepgramStt(settings, http).open_stream()
    with pytest.raises(ConnectionLostError, match="1011 NET-0001"):
        await drain(stream)
    await stream.close()
    assert client_tasks() == set()


async def test_unknown_control_closes_with_data_error(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    stream._outbox.append('{"type":"Bogus"}')  # a client bug the server refuses
    stream._wake.set()
    with pytest.raises(ProviderError, match="DATA-0000") as caught:
        await drain(stream)
    assert not caught.value.retryable
    await stream.close()


# ------------------------------------------------------------------------- faults


async def test_bad_key_is_auth_error(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    with pytest.raises(AuthError) as caught:
        await DeepgramStt(rig.settings(api_key="wrong"), http).open_stream()
    assert caught.value.status == 401
    assert not caught.value.retryable


async def test_unauthorized_fault_is_auth_error(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.UNAUTHORIZED))
    with pytest.raises(AuthError):
        await DeepgramStt(rig.settings(), http).open_stream()


async def test_rate_limit_carries_retry_after(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.RATE_LIMITED))
    with pytest.raises(RateLimitedError) as caught:
        await DeepgramStt(rig.settings(), http).open_stream()
    assert caught.value.retry_after_s == 1.0


async def push_until_done(stream: DeepgramSttStream, pcm: bytes) -> list[SttEvent]:
    """Push ``pcm`` in a loop (2x real time) while draining events, until they end."""

    async def pusher() -> None:
        while True:
            for i in range(0, len(pcm), FRAME):
                stream.push_audio(pcm[i : i + FRAME])
                await asyncio.sleep(0.01)

    task = asyncio.create_task(pusher())
    try:
        return await drain(stream)
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_stall_times_out_after_reconnects(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.STALL, after_chunks=1))
    settings = rig.settings(receive_timeout_ms=200, reconnect_attempts=1)
    stream = await DeepgramStt(settings, http).open_stream()
    with pytest.raises(ProviderTimeoutError):
        await push_until_done(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(400)))
    assert len(rig.app[HANDSHAKES]) == 2
    await stream.close()
    assert client_tasks() == set()


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a hang guard, not a latency check)."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def push_forever(stream: DeepgramSttStream, pcm: bytes) -> None:
    while True:
        for i in range(0, len(pcm), FRAME):
            stream.push_audio(pcm[i : i + FRAME])
            await asyncio.sleep(0.005)


async def reconnect_scenario(rig: Rig, http: aiohttp.ClientSession, **overrides: Any) -> None:
    stream = await DeepgramStt(rig.settings(**overrides), http).open_stream()
    consumer = asyncio.create_task(drain(stream))
    pusher = asyncio.create_task(
        push_forever(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(400)))
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
    assert len(rig.app[HANDSHAKES]) == 2
    # Times after the reconnect stay on the stream's clock (after everything pushed before).
    pushed_before_ms = sum(len(r.data) for r in rig.app[RECEIVED] if r.connection == 0) / 32
    assert turn.words[0].start_ms > pushed_before_ms
    assert client_tasks() == set()


async def test_disconnect_mid_stream_reconnects_and_events_continue(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(
        profile=Profile(fault=Fault.DISCONNECT, after_chunks=3),
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
    rig = await rig_factory(profile=Profile(fault=Fault.DISCONNECT, after_chunks=1))
    stream = await DeepgramStt(rig.settings(reconnect_attempts=2), http).open_stream()
    with pytest.raises(ConnectionLostError):
        await push_until_done(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(400)))
    assert len(rig.app[HANDSHAKES]) == 3
    await stream.close()
    assert client_tasks() == set()


async def test_malformed_frame_is_protocol_error(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.MALFORMED, after_chunks=1))
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(500)))
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
        interim_interval_ms=800,
    )
    stream = await DeepgramStt(rig.settings(close_timeout_ms=8000), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1), speech.silence(1200)))
    await stream.close()
    events = await drain(stream)
    end = next(e for e in events if e.kind is SttEventKind.END_OF_TURN)
    assert words_of(end.text) == words_of(UTTERANCE_1)


async def test_close_without_metadata_in_time_times_out(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.STALL, after_chunks=0))
    stream = await DeepgramStt(rig.settings(close_timeout_ms=200), http).open_stream()
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
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    consumer = asyncio.create_task(drain(stream))
    await push(stream, pcm_of(speech.speech(UTTERANCE_1)))
    consumer.cancel()
    await asyncio.wait({consumer})
    await stream.close()
    assert client_tasks() == set()
    # The fake's handler ends too once it has seen the close: back to where we were.
    await until(lambda: not {t for t in asyncio.all_tasks() - before if not t.done()})


async def test_cancelled_close_aborts(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(profile=Profile(fault=Fault.STALL, after_chunks=0))
    stream = await DeepgramStt(rig.settings(close_timeout_ms=5000), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1)))
    closer = asyncio.create_task(stream.close())
    await asyncio.sleep(0.05)
    closer.cancel()
    await asyncio.wait({closer})
    assert closer.cancelled()
    assert client_tasks() == set()
    assert await drain(stream) == []  # the fake stalled before its first message


async def test_abort_stops_at_once(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    stream = await DeepgramStt(rig.settings(), http).open_stream()
    await push(stream, pcm_of(speech.speech(UTTERANCE_1)))
    await stream.abort()
    await stream.abort()
    assert client_tasks() == set()
    await drain(stream)  # ends without error
    assert '{"type":"CloseStream"}' not in rig.texts()


# ------------------------------------------------------------------- send buffer


async def test_push_never_blocks_and_drops_beyond_the_buffer(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory(script=[UTTERANCE_2])
    stream = await DeepgramStt(rig.settings(max_unsent_ms=1000), http).open_stream()
    silence = pcm_of(speech.silence(3000))
    for i in range(0, len(silence), FRAME):  # no await: the sender cannot run
        stream.push_audio(silence[i : i + FRAME])
    assert stream.dropped_ms == 2000
    spoken = pcm_of(speech.speech(UTTERANCE_2), speech.silence(500))
    await push(stream, spoken)  # its first frames may meet a still-full buffer
    await stream.close()
    final = next(e for e in await drain(stream) if e.kind is SttEventKind.FINAL)
    assert rig.audio_bytes() == len(silence) + len(spoken) - stream.dropped_ms * 32
    # The fake heard speech at 1000 ms of its audio; on the stream's clock it began at 3000 ms.
    assert final.words[0].start_ms == pytest.approx(3000, abs=60)


def test_push_takes_whole_frames_only() -> None:
    stream = object.__new__(DeepgramSttStream)
    with pytest.raises(ValueError, match="whole 20 ms frames"):
        stream.push_audio(b"\x00" * 100)


def test_settings_decode_from_toml_shape_and_validate() -> None:
    settings = msgspec.convert({"api_key": "k", "endpointing_ms": None}, DeepgramSttSettings)
    assert settings.base_url == "wss://api.deepgram.com"
    url = deepgram_stt.listen_url(settings)
    assert url.path == "/v1/listen"
    assert url.query["endpointing"] == "false"
    with pytest.raises(msgspec.ValidationError, match="interim_results"):
        msgspec.convert({"api_key": "k", "interim_results": False}, DeepgramSttSettings)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"api_key": "k", "bogus": 1}, DeepgramSttSettings)


def test_timeline_maps_across_skips() -> None:
    timeline = Timeline(1000.0)
    timeline.skip(200.0, 500.0)
    timeline.skip(200.0, 100.0)
    timeline.skip(400.0, 40.0)
    assert timeline.to_stream_ms(100.0) == 1100.0
    assert timeline.to_stream_ms(200.0) == 1800.0
    assert timeline.to_stream_ms(500.0) == 2140.0


# -------------------------------------------------------------------- decoding fuzz


def results_frame(**fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": 1.0,
        "start": 0.5,
        "is_final": True,
        "speech_final": True,
        "channel": {
            "alternatives": [
                {
                    "transcript": "hi there",
                    "confidence": 0.9,
                    "words": [
                        {"word": "hi", "start": 0.6, "end": 0.8, "confidence": 0.9},
                        {"word": "there", "start": 0.9, "end": 1.2, "confidence": 0.9},
                    ],
                }
            ]
        },
    }
    frame.update(fields)
    return frame


VALID_FRAMES = [
    results_frame(),
    results_frame(is_final=False, speech_final=False),
    {"type": "SpeechStarted", "channel": [0], "timestamp": 0.4},
    {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.2},
    {"type": "Metadata", "request_id": "r", "duration": 3.0, "channels": 1},
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


def feed_mapper(data: str | bytes) -> None:
    mapper = DeepgramEventMapper()
    try:
        message = decode_message(data)
    except ProviderProtocolError:
        return
    if message is not None:
        mapper.hold_turn_end = len(data) % 2 == 1  # as while a Finalize waits
        for event in mapper.events_for(message, 1):
            assert isinstance(event, SttEvent)
        end = mapper.end_turn(2, 0.0)  # a flush answer after any message
        assert end.kind is SttEventKind.END_OF_TURN and isinstance(end.text, str)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.sampled_from(VALID_FRAMES),
    st.lists(st.integers(min_value=0, max_value=20), max_size=6),
    json_values,
)
def test_mutated_frames_only_raise_protocol_errors(
    frame: dict[str, Any], path: list[int], value: Any
) -> None:
    feed_mapper(json.dumps(mutate(frame, path, value)))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), st.text(max_size=64), json_values.map(json.dumps)))
def test_random_frames_only_raise_protocol_errors(data: str | bytes) -> None:
    feed_mapper(data)


def test_unknown_message_types_are_ignored() -> None:
    assert decode_message('{"type":"Warning","description":"x"}') is None
    with pytest.raises(ProviderProtocolError):
        decode_message('{"type":"Results","channel":{"alternatives":[]}}')
    with pytest.raises(ProviderProtocolError):
        decode_message("[]")


def test_mapper_turns_and_interims() -> None:
    mapper = DeepgramEventMapper()
    interim = decode_message(json.dumps(results_frame(is_final=False, speech_final=False)))
    final = decode_message(json.dumps(results_frame(speech_final=False)))
    final_end = decode_message(json.dumps(results_frame()))
    utterance_end = decode_message('{"type":"UtteranceEnd","last_word_end":1.2}')
    assert interim is not None and final is not None and final_end is not None
    assert utterance_end is not None
    assert kinds(mapper.events_for(interim, 1)) == [SttEventKind.INTERIM]
    assert kinds(mapper.events_for(final, 2)) == [SttEventKind.FINAL]
    events = mapper.events_for(final_end, 3)
    assert kinds(events) == [SttEventKind.FINAL, SttEventKind.END_OF_TURN]
    assert events[1].text == "hi there hi there"
    assert events[1].audio_end_ms == 1500.0
    assert events[0].words[0].start_ms == 600.0
    assert mapper.events_for(utterance_end, 4) == []  # the turn already ended


def test_mapper_holds_the_turn_end_for_a_flush_answer() -> None:
    mapper = DeepgramEventMapper()
    mapper.hold_turn_end = True
    final_end = decode_message(json.dumps(results_frame()))
    utterance_end = decode_message('{"type":"UtteranceEnd","last_word_end":1.2}')
    assert final_end is not None and utterance_end is not None
    assert kinds(mapper.events_for(final_end, 1)) == [SttEventKind.FINAL]
    assert mapper.events_for(utterance_end, 2) == []
    end = mapper.end_turn(3, 2000.0)
    assert (end.kind, end.text, end.audio_end_ms) == (SttEventKind.END_OF_TURN, "hi there", 2000.0)
    assert [w.text for w in end.words] == ["hi", "there"]
    empty = mapper.end_turn(4, 2500.0)
    assert (empty.text, empty.words) == ("", ())


# ----------------------------------------------------------------- the fake itself


async def test_fake_refuses_raw_audio_without_sample_rate(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    settings = rig.settings()
    url = deepgram_stt.listen_url(settings).without_query_params("sample_rate")
    with pytest.raises(ProviderError, match="HTTP 400") as caught:
        await deepgram_stt.connect(http, settings, url)
    assert caught.value.status == 400
    assert not caught.value.retryable


async def test_fake_decodes_mulaw_and_closes_after_metadata(
    rig_factory: Callable[..., Awaitable[Rig]], http: aiohttp.ClientSession
) -> None:
    rig = await rig_factory()
    url = f"ws://127.0.0.1:{rig.server.port}/v1/listen"
    query = {"encoding": "mulaw", "sample_rate": "8000", "endpointing": "300"}
    audio = ulaw_encode(
        speech.concat([speech.speech(UTTERANCE_1, 8000), speech.silence(500, 8000)]).tobytes()
    )
    messages: list[dict[str, Any]] = []
    async with http.ws_connect(
        url, params=query, headers={"Authorization": "token test-key"}
    ) as ws:
        for i in range(0, len(audio), 160):
            await ws.send_bytes(audio[i : i + 160])
        await ws.send_str('{"type":"CloseStream"}')
        async for msg in ws:
            messages.append(json.loads(msg.data))
        assert ws.close_code == 1000
    finals = [m for m in messages if m["type"] == "Results" and m["speech_final"]]
    assert words_of(finals[0]["channel"]["alternatives"][0]["transcript"]) == words_of(UTTERANCE_1)
    assert messages[-1]["type"] == "Metadata"
    assert messages[-1]["duration"] == pytest.approx(len(audio) / 8000, abs=0.02)
