"""WireEncoder: TTS PCM at 8/16/24 kHz, in chunks of any byte length, to 8 kHz mu-law."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.g711 import ulaw_decode, ulaw_encode
from engine.resample import StreamResampler
from server.agents.replyaudio import WIRE_BYTES_PER_MS, WIRE_RATE_HZ, WireEncoder, wire_ms

TTS_RATES_HZ = (8000, 16000, 24000)


def tone(rate_hz: int, seconds: float, freq_hz: float = 440.0) -> bytes:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (np.sin(2 * np.pi * freq_hz * t) * 12000).astype("<i2").tobytes()


def noise(n_samples: int, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, n_samples, dtype=np.int16).astype("<i2").tobytes()


def chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into pieces of the given byte lengths, cycling; the last takes the rest."""
    out, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[at : at + size])
        at += size
        i += 1
    return out


def encode_all(rate_hz: int, pieces: list[bytes]) -> tuple[bytes, bytes]:
    """(the encode() outputs joined, finish())."""
    encoder = WireEncoder(rate_hz)
    body = b"".join(encoder.encode(p) for p in pieces)
    return body, encoder.finish()


def decode(ulaw: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(ulaw_decode(ulaw), dtype="<i2")


def dominant_hz(samples: npt.NDArray[np.int16], rate_hz: int) -> float:
    x = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(samples), 1 / rate_hz)[int(np.argmax(spectrum))])


# ---------------------------------------------------------------------- 8 kHz


def test_8k_is_mu_law_of_the_same_samples() -> None:
    pcm = noise(4000)
    body, tail = encode_all(8000, [pcm])
    assert body == ulaw_encode(pcm)
    assert len(body) == 4000
    assert tail == b""


def test_odd_byte_counts_keep_whole_samples() -> None:
    pcm = noise(1000)
    encoder = WireEncoder(8000)
    assert encoder.encode(pcm[:1]) == b""  # half a sample: held back
    assert encoder.encode(pcm[1:2]) == ulaw_encode(pcm[:2])  # now whole
    assert encoder.encode(b"") == b""
    outputs = [encoder.encode(p) for p in chunks(pcm[2:], [3, 1, 7, 2, 5])]
    assert b"".join(outputs) == ulaw_encode(pcm)[1:]
    assert encoder.finish() == b""


def test_8k_odd_chunks_match_one_chunk() -> None:
    pcm = noise(3000, seed=7)
    assert encode_all(8000, chunks(pcm, [1, 321, 160, 3]))[0] == ulaw_encode(pcm)


# ---------------------------------------------------------------- resampled rates


@pytest.mark.parametrize(("rate_hz", "factor"), [(16000, 2), (24000, 3)])
def test_resampled_length(rate_hz: int, factor: int) -> None:
    n_in = rate_hz  # one second
    pcm = noise(n_in, seed=rate_hz)
    encoder = WireEncoder(rate_hz)
    body = b"".join(encoder.encode(p) for p in chunks(pcm, [rate_hz // 50 * 2]))  # 20 ms
    expected = n_in // factor
    holdback = StreamResampler(rate_hz, WIRE_RATE_HZ, "HQ").delay_ms * WIRE_BYTES_PER_MS
    assert expected - holdback - 1 <= len(body) <= expected + 1
    tail = encoder.finish()
    assert len(tail) > 0  # the resampler held some back
    assert abs(len(body) + len(tail) - expected) <= 2
    assert encoder.finish() == b""  # nothing left after the end


@pytest.mark.parametrize("rate_hz", [16000, 24000])
def test_resampled_odd_chunks_match_one_chunk(rate_hz: int) -> None:
    pcm = noise(rate_hz // 2, seed=3)
    assert encode_all(rate_hz, chunks(pcm, [1, 3, 641, 2, 999])) == encode_all(rate_hz, [pcm])


@pytest.mark.parametrize("rate_hz", TTS_RATES_HZ)
def test_a_440_hz_tone_survives(rate_hz: int) -> None:
    body, tail = encode_all(rate_hz, chunks(tone(rate_hz, 1.0), [rate_hz // 50 * 2 + 1]))
    samples = decode(body + tail)
    assert abs(len(samples) - WIRE_RATE_HZ) <= 2
    steady = samples[800:-800]  # skip the filter's edges
    bin_hz = WIRE_RATE_HZ / len(steady)
    assert abs(dominant_hz(steady, WIRE_RATE_HZ) - 440) <= bin_hz
    # The level survives too: mu-law and resampling keep a 12000-peak sine near 12000.
    assert 10_000 < int(np.max(np.abs(steady.astype(np.int32)))) < 14_000


def test_tone_above_the_wire_band_is_filtered_out() -> None:
    # 6 kHz cannot exist at 8 kHz: the resampler's low-pass removes it instead of aliasing.
    body, tail = encode_all(24000, [tone(24000, 0.5, freq_hz=6000)])
    steady = decode(body + tail)[400:-400].astype(np.float64)
    assert np.sqrt(np.mean(steady**2)) < 200  # vs ~8500 RMS for the input


def test_silence_stays_silent() -> None:
    for rate_hz in TTS_RATES_HZ:
        body, tail = encode_all(rate_hz, [bytes(rate_hz // 5 * 2)])
        assert set(decode(body + tail).tolist()) <= {0}


def test_wire_ms() -> None:
    assert WIRE_BYTES_PER_MS == 8
    assert wire_ms(b"") == 0
    assert wire_ms(bytes(160)) == 20
    assert wire_ms(bytes(1)) == 0.125


@settings(max_examples=60, deadline=None)
@given(
    rate_hz=st.sampled_from(TTS_RATES_HZ),
    n_samples=st.integers(0, 3000),
    sizes=st.lists(st.integers(0, 700), min_size=1, max_size=8).filter(any),
)
def test_any_chunking_gives_the_same_bytes(rate_hz: int, n_samples: int, sizes: list[int]) -> None:
    pcm = noise(n_samples, seed=n_samples)
    assert encode_all(rate_hz, chunks(pcm, sizes)) == encode_all(rate_hz, [pcm])
