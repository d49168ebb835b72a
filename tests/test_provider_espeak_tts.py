"""The offline espeak-ng TTS: library and binary backends, chunking, alignment, cancel."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.providers.base import ProviderError, TtsChunk
from server.providers.espeak_tts import (
    EspeakTts,
    EspeakTtsSettings,
    PhraseSplitter,
    _read_wav_header,
)

TEXT = "Hello world, this is a test. And here is a second sentence!"


def text_words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text)


async def speak(
    tts: EspeakTts, pieces: list[str], *, rate_hz: int = 16000, generation: int = 1
) -> list[TtsChunk]:
    stream = await tts.open_stream(generation=generation, rate_hz=rate_hz)
    for piece in pieces:
        await stream.push_text(piece)
    await stream.flush()
    return [chunk async for chunk in stream.chunks()]


def duration_ms(chunks: list[TtsChunk], rate_hz: int) -> float:
    return sum(len(c.pcm) for c in chunks) / 2 * 1000 / rate_hz


def library() -> EspeakTts:
    return EspeakTts(EspeakTtsSettings(backend="library"))


# ----------------------------------------------------------------- happy path


@pytest.mark.parametrize("rate_hz", [8000, 16000, 24000])
async def test_chunks_in_order_with_a_done_chunk(rate_hz: int) -> None:
    tts = library()
    chunks = await speak(tts, [TEXT], rate_hz=rate_hz, generation=42)
    assert tts.backend == "library"
    assert all(c.generation == 42 for c in chunks)
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    chunk_samples = rate_hz // 10  # 100 ms
    assert all(len(c.pcm) == chunk_samples * 2 for c in chunks[:-1])
    assert len(chunks[-1].pcm) <= chunk_samples * 2
    stamps = [c.received_ns for c in chunks]
    assert stamps == sorted(stamps)
    pcm = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2")
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300  # real sound, not silence


async def test_audio_length_follows_the_text_and_not_the_rate() -> None:
    tts = library()
    short = duration_ms(await speak(tts, ["Hello there."], rate_hz=16000), 16000)
    long = duration_ms(await speak(tts, [TEXT], rate_hz=16000), 16000)
    n_short, n_long = len(text_words("Hello there.")), len(text_words(TEXT))
    # 160 words a minute is 375 ms a word; allow for pauses and short words.
    assert 150 * n_short <= short <= 900 * n_short
    assert 150 * n_long <= long <= 900 * n_long
    assert long > 2 * short
    at_8k = duration_ms(await speak(tts, [TEXT], rate_hz=8000), 8000)
    at_24k = duration_ms(await speak(tts, [TEXT], rate_hz=24000), 24000)
    assert abs(at_8k - long) <= 1 and abs(at_24k - long) <= 1


async def test_words_are_aligned_in_order_and_cover_the_text() -> None:
    chunks = await speak(library(), [TEXT])
    words = [w for c in chunks for w in c.words]
    assert [w.text.strip(",.!") for w in words] == text_words(TEXT)
    assert words[0].start_ms == 0
    for before, after in itertools.pairwise(words):
        assert before.start_ms <= before.end_ms <= after.start_ms
        assert after.start_ms > before.start_ms
    assert words[-1].end_ms <= duration_ms(chunks, 16000) + 1
    assert words[-1].end_ms > 0.8 * duration_ms(chunks, 16000)


async def test_words_arrive_no_later_than_the_chunk_after_their_end() -> None:
    chunks = await speak(library(), [TEXT])
    played_ms = 0.0
    for chunk in chunks:
        played_ms += len(chunk.pcm) / 2 * 1000 / 16000
        for word in chunk.words:
            assert word.end_ms <= played_ms + 200


async def test_phrases_are_spoken_in_order_whatever_the_pieces() -> None:
    tts = library()
    whole = await speak(tts, [TEXT])
    pieces = [TEXT[i : i + 3] for i in range(0, len(TEXT), 3)]  # token runs cut mid-word
    split = await speak(tts, pieces)
    assert [w.text for c in split for w in c.words] == [w.text for c in whole for w in c.words]
    assert abs(duration_ms(split, 16000) - duration_ms(whole, 16000)) < 1


async def test_several_streams_at_once_keep_their_own_words() -> None:
    tts = library()
    texts = ["One two three. Four five.", "Red green blue. Yellow.", "Alpha beta. Gamma delta."]
    results = await asyncio.gather(*(speak(tts, [t], generation=i) for i, t in enumerate(texts)))
    for i, (text, chunks) in enumerate(zip(texts, results, strict=True)):
        assert all(c.generation == i for c in chunks)
        assert [w.text.strip(",.") for c in chunks for w in c.words] == text_words(text)


async def test_empty_generation_is_just_a_done_chunk() -> None:
    chunks = await speak(library(), ["   "])
    assert len(chunks) == 1 and chunks[0].done and chunks[0].pcm == b""


# --------------------------------------------------------------------- cancel


async def test_cancel_drops_the_rest_at_once() -> None:
    baseline = asyncio.all_tasks()
    tts = library()
    stream = await tts.open_stream(generation=3, rate_hz=16000)
    await stream.push_text(TEXT * 20 + " ")
    await stream.flush()
    got: list[TtsChunk] = []
    async for chunk in stream.chunks():
        got.append(chunk)
        if len(got) == 2:
            await stream.cancel()
    assert len(got) == 2 and not any(c.done for c in got)
    await stream.cancel()  # idempotent
    assert [c async for c in stream.chunks()] == []
    await stream.push_text("ignored after cancel.")
    await stream.flush()
    assert [c async for c in stream.chunks()] == []
    # The engine is free again: the next generation speaks in full.
    chunks = await speak(tts, ["Still working."], generation=4)
    assert chunks[-1].done and [w.text for c in chunks for w in c.words] == ["Still", "working"]
    assert asyncio.all_tasks() == baseline


async def test_cancel_before_any_audio() -> None:
    tts = library()
    stream = await tts.open_stream(generation=5, rate_hz=8000)
    await stream.push_text(TEXT)
    await stream.cancel()
    await stream.flush()
    assert [c async for c in stream.chunks()] == []


async def test_cancel_from_another_task_ends_a_waiting_reader() -> None:
    tts = library()
    stream = await tts.open_stream(generation=6, rate_hz=16000)
    await stream.push_text("no flush, so the reader waits")  # no phrase end, nothing spoken

    async def read() -> list[TtsChunk]:
        return [c async for c in stream.chunks()]

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    await stream.cancel()
    assert await reader == []


# ------------------------------------------------------------------- backends


async def test_binary_backend_speaks_without_alignment() -> None:
    lib_chunks = await speak(library(), [TEXT])
    tts = EspeakTts(EspeakTtsSettings(backend="binary"))
    chunks = await speak(tts, [TEXT])
    assert tts.backend == "binary"
    assert chunks[-1].done and all(c.words == () for c in chunks)
    assert abs(duration_ms(chunks, 16000) - duration_ms(lib_chunks, 16000)) < 100


async def test_auto_falls_back_to_the_binary_when_the_library_cannot_load() -> None:
    tts = EspeakTts(EspeakTtsSettings(library_path="/nonexistent/libespeak-ng.so"))
    chunks = await speak(tts, ["Fallback works."])
    assert tts.backend == "binary"
    assert duration_ms(chunks, 16000) > 300


async def test_library_only_fails_clearly_when_it_cannot_load() -> None:
    tts = EspeakTts(EspeakTtsSettings(backend="library", library_path="/nonexistent/lib.so"))
    with pytest.raises(ProviderError, match="libespeak-ng") as info:
        await tts.open_stream(generation=1, rate_hz=16000)
    assert not info.value.retryable


async def test_missing_binary_fails_clearly() -> None:
    tts = EspeakTts(EspeakTtsSettings(backend="binary", binary="/nonexistent/espeak-ng"))
    with pytest.raises(ProviderError, match="no espeak-ng"):
        await tts.prewarm()


async def test_unknown_voice_is_a_provider_error() -> None:
    tts = EspeakTts(EspeakTtsSettings(backend="library", voice="xx-nonexistent"))
    with pytest.raises(ProviderError, match="voice"):
        await speak(tts, ["Hello."])
    # The shared library still works for the default voice afterwards.
    assert (await speak(library(), ["Hello."]))[-1].done


async def test_rejects_unsupported_rates_and_settings() -> None:
    with pytest.raises(ValueError, match="rate_hz"):
        await library().open_stream(generation=1, rate_hz=22050)
    with pytest.raises(ValueError, match="words_per_minute"):
        EspeakTts(EspeakTtsSettings(words_per_minute=5))


# ----------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ab .!?;:\n,'", max_size=12), max_size=12))
@example(pieces=["::::::a", ":::::::::a\na", "ab"])  # the length cap cuts at a line break too
def test_phrase_splitter_keeps_every_word_in_order(pieces: list[str]) -> None:
    splitter = PhraseSplitter(max_chars=20)
    phrases: list[str] = []
    for piece in pieces:
        phrases += splitter.push(piece)
    rest = splitter.rest()
    if rest:
        phrases.append(rest)
    assert all(p == p.strip() and p for p in phrases)
    # Cuts fall between words, except the length cap on a word longer than max_chars.
    joined = "".join(pieces)
    assert "".join(re.findall(r"[ab]+", "".join(phrases))) == "".join(re.findall(r"[ab]+", joined))
    if all(len(token) < 20 for token in joined.split()):
        assert re.findall(r"[ab]+", " ".join(phrases)) == re.findall(r"[ab]+", joined)


def wav_header(rate_hz: int = 22050, channels: int = 1, bits: int = 16) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate_hz, rate_hz * 2, 2, bits)
    return b"RIFF\xff\xff\xff\x7fWAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data\0\0\0\0"


def test_wav_header_reader_accepts_espeak_output() -> None:
    assert _read_wav_header(io.BytesIO(wav_header() + b"\0\0")) == 22050
    with pytest.raises(ProviderError, match="mono"):
        _read_wav_header(io.BytesIO(wav_header(channels=2)))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.integers(min_value=0, max_value=60), st.binary(max_size=4))
def test_wav_header_reader_fuzz(noise: bytes, at: int, patch: bytes) -> None:
    for data in (noise, wav_header()[:at] + patch + wav_header()[at + len(patch) :]):
        try:
            rate_hz = _read_wav_header(io.BytesIO(data))
        except ProviderError:
            continue
        assert rate_hz > 0


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=60))
def test_any_text_synthesises_or_fails_cleanly(text: str) -> None:
    async def run() -> list[TtsChunk]:
        return await speak(library(), [text])

    chunks = asyncio.run(run())
    assert chunks[-1].done
    for word in (w for c in chunks for w in c.words):
        assert word.text.strip() and word.text in text
