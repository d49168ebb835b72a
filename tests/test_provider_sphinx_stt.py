"""The offline pocketsphinx STT on real (espeak-ng) speech: events, words, flush, faults.

pocketsphinx's generic model hears espeak-ng's voice imperfectly; the
sentences here are ones it transcribes, and the tests assert on their key words.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.providers.base import (
    ConnectionLostError,
    ProviderError,
    ProviderTimeoutError,
    SttEvent,
    SttEventKind,
)
from server.providers.sphinx_stt import (
    FRAME_BYTES,
    DecoderPool,
    Recognizer,
    SphinxStt,
    SphinxSttSettings,
    SphinxSttStream,
)
from tests import speech

K = SttEventKind
LEAD_MS = 500


@pytest.fixture(scope="module")
def shared_pool() -> Iterator[DecoderPool]:
    """A pool for the synchronous Recognizer tests (loading a decoder takes ~0.3 s)."""
    pool = DecoderPool(SphinxSttSettings(idle_decoders=2))
    yield pool
    pool.clear()


def pcm_frames(pcm: speech.Pcm) -> bytes:
    data = pcm.tobytes()
    return data[: len(data) // FRAME_BYTES * FRAME_BYTES]


def spoken(*texts: str, pause_ms: int = 1000, tail_ms: int = 1000) -> bytes:
    """Lead-in silence, the texts with pauses between them, then trailing silence."""
    return pcm_frames(
        speech.concat(
            [
                speech.silence(LEAD_MS),
                speech.utterance_with_pauses(texts, pause_ms),
                speech.silence(tail_ms),
            ]
        )
    )


def push(stream: SphinxSttStream, data: bytes) -> None:
    for i in range(0, len(data), FRAME_BYTES):
        stream.push_audio(data[i : i + FRAME_BYTES])


async def transcribe(provider: SphinxStt, data: bytes, *, flush: bool = False) -> list[SttEvent]:
    stream = await provider.open_stream(language="en-US")
    push(stream, data)
    if flush:
        await stream.flush()
    await stream.close()
    return [event async for event in stream.events()]


def turns(events: list[SttEvent]) -> list[list[SttEvent]]:
    """Events split after each END_OF_TURN."""
    out: list[list[SttEvent]] = [[]]
    for event in events:
        out[-1].append(event)
        if event.kind is K.END_OF_TURN:
            out.append([])
    return [turn for turn in out if turn]


def check_turn_shape(turn: list[SttEvent]) -> None:
    kinds = [e.kind for e in turn]
    assert kinds[0] is K.SPEECH_STARTED
    assert kinds[-2:] == [K.FINAL, K.END_OF_TURN]
    assert set(kinds[1:-2]) <= {K.INTERIM}
    assert turn[-1].text == turn[-2].text
    stamps = [e.received_ns for e in turn]
    assert stamps == sorted(stamps)
    ends = [e.audio_end_ms for e in turn if e.audio_end_ms is not None]
    assert ends == sorted(ends)


def settings_for_tests(**overrides: object) -> SphinxSttSettings:
    # Tests push seconds of audio at once, faster than real time.
    fields: dict[str, object] = {"max_backlog_ms": 60_000}
    fields.update(overrides)
    return SphinxSttSettings(**fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------- happy path


async def test_one_utterance_events_and_words() -> None:
    baseline = asyncio.all_tasks()
    provider = SphinxStt(settings_for_tests())
    events = await transcribe(provider, spoken("where are you"))
    (turn,) = turns(events)
    check_turn_shape(turn)
    final = turn[-2]
    assert final.text == "where are you"
    assert [w.text for w in final.words] == ["where", "are", "you"]
    assert final.confidence is not None and 0.0 <= final.confidence <= 1.0
    speech_ms = len(speech.speech("where are you")) / 16
    for before, after in itertools.pairwise(final.words):
        assert before.start_ms < before.end_ms <= after.start_ms
    # Times are ms since the first pushed sample: the speech starts after the lead-in.
    assert LEAD_MS - 150 <= final.words[0].start_ms <= LEAD_MS + 150
    assert final.words[-1].end_ms <= LEAD_MS + speech_ms + 150
    assert turn[0].audio_end_ms is not None and turn[0].audio_end_ms <= LEAD_MS
    await provider.aclose()
    assert asyncio.all_tasks() == baseline


async def test_interims_grow_during_a_long_utterance() -> None:
    provider = SphinxStt(settings_for_tests())
    events = await transcribe(provider, spoken("what is the weather like today"))
    (turn,) = turns(events)
    check_turn_shape(turn)
    interims = [e for e in turn if e.kind is K.INTERIM]
    assert len(interims) >= 2
    assert all(e.text for e in interims)
    assert len({e.text for e in interims}) == len(interims)  # only changes are reported
    assert "weather" in turn[-2].text.split()
    await provider.aclose()


async def test_three_utterances_three_turns_in_order() -> None:
    provider = SphinxStt(settings_for_tests())
    events = await transcribe(provider, spoken("yes", "i like coffee", "where are you"))
    found = turns(events)
    assert len(found) == 3
    for turn in found:
        check_turn_shape(turn)
    finals = [turn[-2].text.split() for turn in found]
    assert "yes" in finals[0]
    assert "coffee" in finals[1] and "like" in finals[1]
    assert "where" in finals[2]
    starts = [turn[-2].words[0].start_ms for turn in found]
    assert starts == sorted(starts) and starts[1] > 1000 and starts[2] > starts[1] + 1000
    # One decoder served all three utterances.
    assert provider.pool.created == 1
    await provider.aclose()


async def test_two_streams_at_once_keep_their_own_transcripts() -> None:
    provider = SphinxStt(settings_for_tests(idle_decoders=2))
    a, b = await asyncio.gather(
        transcribe(provider, spoken("i like coffee")), transcribe(provider, spoken("yes"))
    )
    assert "coffee" in turns(a)[0][-2].text
    assert turns(b)[0][-2].text == "yes"
    await provider.aclose()


async def test_silence_and_quiet_noise_produce_nothing_but_the_flush_answer() -> None:
    provider = SphinxStt(settings_for_tests())
    quiet = pcm_frames(speech.concat([speech.silence(1000), speech.noise(2000, -60.0)]))
    assert await transcribe(provider, quiet) == []
    events = await transcribe(provider, quiet, flush=True)
    assert [(e.kind, e.text, e.words, e.audio_end_ms) for e in events] == [
        (K.END_OF_TURN, "", (), 3000.0)
    ]
    await provider.aclose()


# --------------------------------------------------------------- flush / close


async def test_flush_finalizes_before_the_endpointer_would() -> None:
    provider = SphinxStt(settings_for_tests())
    stream = await provider.open_stream()
    push(stream, spoken("i like coffee", tail_ms=0))
    await stream.flush()  # returns once the final is queued
    push(stream, pcm_frames(speech.silence(1000)))  # nothing more after the flush
    await stream.close()
    events = [e async for e in stream.events()]
    (turn,) = turns(events)
    check_turn_shape(turn)
    assert "coffee" in turn[-2].text
    await provider.aclose()


async def test_each_flush_of_silence_gives_one_empty_end_of_turn() -> None:
    provider = SphinxStt(settings_for_tests())
    stream = await provider.open_stream()
    push(stream, pcm_frames(speech.silence(400)))
    await stream.flush()
    await stream.flush()
    push(stream, pcm_frames(speech.silence(200)))
    await stream.flush()
    await stream.close()
    events = [e async for e in stream.events()]
    assert [(e.kind, e.text, e.audio_end_ms) for e in events] == [
        (K.END_OF_TURN, "", 400.0),
        (K.END_OF_TURN, "", 400.0),
        (K.END_OF_TURN, "", 600.0),
    ]
    await provider.aclose()


async def test_flushes_queued_together_keep_their_place_in_the_audio() -> None:
    provider = SphinxStt(settings_for_tests())
    stream = await provider.open_stream()
    push(stream, pcm_frames(speech.silence(200)))
    first = asyncio.ensure_future(stream.flush())
    await asyncio.sleep(0)  # the flush is queued before the audio below
    push(stream, spoken("i like coffee", tail_ms=200))
    second = asyncio.ensure_future(stream.flush())
    await asyncio.gather(first, second)
    await stream.close()
    ends = [e for e in [e async for e in stream.events()] if e.kind is K.END_OF_TURN]
    assert ends[0].text == ""
    assert "coffee" in ends[1].text.split()
    assert [e.audio_end_ms for e in ends] == [
        200.0,
        200.0 + len(spoken("i like coffee", tail_ms=200)) / 32,
    ]
    await provider.aclose()


@pytest.mark.parametrize("tail_ms", [100, 200])
async def test_short_word_flushed_soon_after_is_recognised(tail_ms: int) -> None:
    provider = SphinxStt(settings_for_tests())
    stream = await provider.open_stream()
    push(stream, spoken("yes", tail_ms=tail_ms))  # well under the 300 ms endpoint window
    await stream.flush()
    await stream.close()
    (turn,) = turns([e async for e in stream.events()])
    check_turn_shape(turn)
    assert turn[-1].text == "yes"
    assert turn[-1].audio_end_ms == LEAD_MS + len(speech.speech("yes")) // 320 * 20 + tail_ms
    await provider.aclose()


def quiet(text: str, gain_db: float = -18.0) -> speech.Pcm:
    """``text`` spoken ``gain_db`` below the usual level: too quiet for the endpointer."""
    voice = speech.speech(text).astype(np.float64) * 10 ** (gain_db / 20)
    return np.round(voice).astype(np.int16)


@pytest.mark.parametrize("tail_ms", [0, 100, 280])
def test_word_the_endpointer_missed_is_decoded_on_flush(
    shared_pool: DecoderPool, tail_ms: int
) -> None:
    recognizer = Recognizer(shared_pool, settings_for_tests())
    audio = pcm_frames(
        speech.concat([speech.silence(LEAD_MS), quiet("stop"), speech.silence(tail_ms)])
    )
    assert recognizer.feed(audio) == []  # the endpointer heard no speech
    (turn,) = turns(recognizer.finalize())
    check_turn_shape(turn)
    assert turn[-1].text == "stop"
    assert turn[-1].audio_end_ms == len(audio) / 32
    word = turn[-2].words[0]
    assert turn[0].audio_end_ms == word.start_ms  # speech began with the word
    assert LEAD_MS - 100 <= word.start_ms <= LEAD_MS + 150
    # Decoded audio is not decoded again: the endpointer starts afresh after it.
    later = recognizer.feed(pcm_frames(speech.silence(1000))) + recognizer.finalize()
    assert [(e.kind, e.text) for e in later] == [(K.END_OF_TURN, "")]
    recognizer.discard()


async def test_missed_word_through_the_stream() -> None:
    provider = SphinxStt(settings_for_tests())
    audio = pcm_frames(speech.concat([speech.silence(LEAD_MS), quiet("stop")]))
    (turn,) = turns(await transcribe(provider, audio, flush=True))
    check_turn_shape(turn)
    assert turn[-1].text == "stop"
    await provider.aclose()


async def test_flush_lookback_zero_leaves_missed_words_alone() -> None:
    provider = SphinxStt(settings_for_tests(flush_lookback_ms=0))
    audio = pcm_frames(speech.concat([speech.silence(LEAD_MS), quiet("stop")]))
    events = await transcribe(provider, audio, flush=True)
    assert [(e.kind, e.text) for e in events] == [(K.END_OF_TURN, "")]
    await provider.aclose()


def test_speech_continuing_after_flush_is_still_transcribed(
    shared_pool: DecoderPool,
) -> None:
    recognizer = Recognizer(shared_pool, settings_for_tests())
    first = speech.speech("i like coffee")
    half = len(first) // 2 // 320 * 320
    events = recognizer.feed(pcm_frames(speech.concat([speech.silence(LEAD_MS), first[:half]])))
    events += recognizer.finalize()
    assert [e.kind for e in events][-2:] == [K.FINAL, K.END_OF_TURN]
    rest = recognizer.feed(
        pcm_frames(speech.concat([first[half:], speech.silence(200), speech.speech("yes")]))
    )
    rest += recognizer.feed(pcm_frames(speech.silence(1000)))
    kinds = [e.kind for e in rest]
    assert kinds[0] is K.SPEECH_STARTED and kinds[-2:] == [K.FINAL, K.END_OF_TURN]
    assert rest[-2].words and rest[-2].words[0].start_ms >= LEAD_MS + half / 16 - 1
    recognizer.discard()


async def test_close_finalizes_the_open_utterance_and_ends_events() -> None:
    provider = SphinxStt(settings_for_tests())
    stream = await provider.open_stream()
    push(stream, spoken("where are you", tail_ms=0))
    await stream.close()
    events = [e async for e in stream.events()]
    (turn,) = turns(events)
    assert "where" in turn[-2].text
    assert [e async for e in stream.events()] == []  # stays ended
    await stream.close()  # idempotent
    stream.push_audio(bytes(FRAME_BYTES))  # ignored after close
    await provider.aclose()


# ------------------------------------------------------------------- faults


async def test_decoder_falling_behind_is_a_timeout() -> None:
    baseline = asyncio.all_tasks()
    provider = SphinxStt(settings_for_tests(max_backlog_ms=200))
    stream = await provider.open_stream()
    push(stream, spoken("what is the weather like today"))  # seconds at once
    with pytest.raises(ProviderTimeoutError, match="behind"):
        async for _ in stream.events():
            pass
    stream.push_audio(bytes(FRAME_BYTES))  # a failed stream ignores audio
    with pytest.raises(ProviderTimeoutError):
        await stream.flush()
    await stream.close()
    await provider.aclose()
    assert asyncio.all_tasks() == baseline


async def test_refuses_other_languages_and_partial_frames() -> None:
    provider = SphinxStt(settings_for_tests())
    with pytest.raises(ProviderError, match="language") as info:
        await provider.open_stream(language="de-DE")
    assert not info.value.retryable
    stream = await provider.open_stream(language="en")
    with pytest.raises(ValueError, match="640 bytes"):
        stream.push_audio(bytes(100))
    await stream.close()
    await provider.aclose()


async def test_bad_model_path_fails_at_open() -> None:
    provider = SphinxStt(settings_for_tests(hmm_path="/nonexistent/model"))
    with pytest.raises(ProviderError, match="model"):
        await provider.open_stream()
    await provider.aclose()


async def test_closed_provider_refuses_streams() -> None:
    provider = SphinxStt(settings_for_tests())
    await provider.aclose()
    with pytest.raises(ConnectionLostError):
        await provider.open_stream()


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="vad_mode"):
        SphinxStt(SphinxSttSettings(vad_mode=7))
    with pytest.raises(ValueError, match="endpoint_window_ms"):
        SphinxStt(SphinxSttSettings(endpoint_window_ms=250))


# --------------------------------------------------------------- cancellation


async def test_cancelled_reader_and_close_leave_nothing_running() -> None:
    baseline = asyncio.all_tasks()
    provider = SphinxStt(settings_for_tests())
    stream = await provider.open_stream()
    seen: list[SttEvent] = []
    first = asyncio.Event()

    async def read() -> None:
        async for event in stream.events():
            seen.append(event)
            first.set()

    reader = asyncio.create_task(read())
    push(stream, spoken("what is the weather like today", tail_ms=0))
    await first.wait()
    reader.cancel()
    closer = asyncio.create_task(stream.close())
    await asyncio.sleep(0)
    closer.cancel()  # a cancelled close cancels the stream's pump too
    for task in (reader, closer):
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(200):
        if asyncio.all_tasks() == baseline:
            break
        await asyncio.sleep(0.01)
    assert asyncio.all_tasks() == baseline
    assert seen and seen[0].kind is K.SPEECH_STARTED
    # The leased decoder goes back to the pool once its worker job ends.
    for _ in range(300):
        if provider.pool.n_idle == 1:
            break
        await asyncio.sleep(0.01)
    assert provider.pool.n_idle == 1
    await provider.aclose()


# ----------------------------------------------------------------------- fuzz


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["silence", "noise", "speech", "clipped", "random"]),
            st.integers(min_value=1, max_value=40),
            st.integers(min_value=0, max_value=2**16),
        ),
        max_size=6,
    ),
    st.booleans(),
)
def test_any_audio_gives_well_formed_events(
    shared_pool: DecoderPool, parts: list[tuple[str, int, int]], flush: bool
) -> None:
    """Random, loud, clipped or spoken frames: events stay well formed, nothing else escapes."""
    recognizer = Recognizer(shared_pool, settings_for_tests())
    rng = np.random.default_rng(0)
    events: list[SttEvent] = []
    for kind, n_frames, seed in parts:
        n = n_frames * 320
        if kind == "silence":
            pcm = np.zeros(n, dtype=np.int16)
        elif kind == "noise":
            pcm = speech.noise(n_frames * 20, -20.0 - seed % 40, seed=seed)
        elif kind == "speech":
            voice = speech.speech("yes")
            pcm = np.resize(voice, n).astype(np.int16)
        elif kind == "clipped":
            pcm = np.where(rng.random(n) < 0.5, -32768, 32767).astype(np.int16)
        else:
            pcm = np.random.default_rng(seed).integers(-32768, 32767, n).astype(np.int16)
        try:
            events += recognizer.feed(pcm.tobytes())
        except ProviderError:
            recognizer.discard()
            return
        if flush:
            answer = recognizer.finalize()
            assert answer and answer[-1].kind is K.END_OF_TURN
            assert [e.kind for e in answer].count(K.END_OF_TURN) == 1
            events += answer
    events += recognizer.close()
    open_turn = False
    for event in events:
        if event.kind is K.END_OF_TURN and not open_turn:  # a flush that heard nothing
            assert flush and event.text == "" and event.words == ()
        elif event.kind is K.SPEECH_STARTED:
            assert not open_turn
            open_turn = True
        else:
            assert open_turn
        if event.kind is K.END_OF_TURN:
            open_turn = False
    assert not open_turn
