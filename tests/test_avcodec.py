"""G.722 and Opus through PyAV: round trips, exact sizes, streaming state, bad input."""

from __future__ import annotations

import fractions

import av
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.avcodec import (
    OPUS_FRAME_MS_CHOICES,
    G722Decoder,
    G722Encoder,
    OpusDecoder,
    OpusEncoder,
)

OPUS_PRESKIP = 312  # libopus look-ahead at 48 kHz (6.5 ms)


def tone(freq_hz: float, n: int, rate_hz: int, amplitude: float = 8000) -> npt.NDArray[np.int16]:
    t = np.arange(n) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def chirp(n: int, rate_hz: int, f0_hz: float = 200, f1_hz: float = 3400) -> npt.NDArray[np.int16]:
    t = np.arange(n) / rate_hz
    sweep = (f1_hz - f0_hz) / (n / rate_hz)
    return (8000 * np.sin(2 * np.pi * (f0_hz * t + 0.5 * sweep * t**2))).astype(np.int16)


def best_lag(
    sent: npt.NDArray[np.int16], got: npt.NDArray[np.int16], max_lag: int
) -> tuple[int, float]:
    """Delay (samples) of ``got`` behind ``sent`` with the highest normalised correlation."""
    n = sent.size - max_lag
    a = sent[:n].astype(np.float64)
    best = (0, -1.0)
    for lag in range(max_lag):
        b = got[lag : lag + n].astype(np.float64)
        corr = float(a @ b / np.sqrt((a @ a) * (b @ b) + 1e-9))
        if corr > best[1]:
            best = (lag, corr)
    return best


def snr_db(sent: npt.NDArray[np.int16], got: npt.NDArray[np.int16], lag: int, skip: int) -> float:
    n = sent.size - lag - skip
    a = sent[skip : skip + n].astype(np.float64)
    b = got[lag + skip : lag + skip + n].astype(np.float64)
    return float(10 * np.log10((a @ a) / ((a - b) @ (a - b))))


def stream(
    encoder: G722Encoder | OpusEncoder,
    decoder: G722Decoder | OpusDecoder,
    pcm: npt.NDArray[np.int16],
) -> tuple[list[bytes], npt.NDArray[np.int16]]:
    n = encoder.frame_samples
    payloads = [encoder.encode(pcm[i : i + n]) for i in range(0, pcm.size - n + 1, n)]
    return payloads, np.concatenate([decoder.decode(p) for p in payloads])


# ------------------------------------------------------------------- G.722


def test_g722_round_trip_of_a_chirp() -> None:
    sent = chirp(16000, 16000)
    payloads, got = stream(G722Encoder(), G722Decoder(), sent)
    assert [len(p) for p in payloads] == [160] * 50
    assert got.size == sent.size
    lag, corr = best_lag(sent, got, 200)
    assert 18 <= lag <= 26  # QMF analysis + synthesis delay
    assert corr > 0.995
    assert snr_db(sent, got, lag, 320) > 35


def test_g722_round_trip_of_a_tone() -> None:
    _, chirp_back = stream(G722Encoder(), G722Decoder(), chirp(16000, 16000))
    delay, _ = best_lag(chirp(16000, 16000), chirp_back, 200)
    sent = tone(1000, 16000, 16000)
    _, got = stream(G722Encoder(), G722Decoder(), sent)
    assert snr_db(sent, got, delay, 320) > 35


@pytest.mark.parametrize("frame_ms", [10, 20, 30, 60])
def test_g722_sizes_follow_the_frame(frame_ms: int) -> None:
    encoder, decoder = G722Encoder(frame_ms), G722Decoder()
    n = 16 * frame_ms
    assert encoder.frame_samples == n
    assert encoder.max_payload_bytes == n // 2
    payload = encoder.encode(tone(440, n, 16000))
    assert len(payload) == n // 2
    pcm = decoder.decode(payload)
    assert pcm.dtype == np.int16 and pcm.shape == (n,)


def test_g722_streaming_equals_one_continuous_stream() -> None:
    """State persists: frame-by-frame coding == coding the whole signal at once."""
    sent = chirp(16000, 16000, f1_hz=7000)
    payloads, got = stream(G722Encoder(), G722Decoder(), sent)

    whole = av.CodecContext.create("g722", "w")
    whole.format, whole.layout, whole.sample_rate = "s16", "mono", 16000
    whole.time_base = fractions.Fraction(1, 16000)
    whole.options = {"frame_size": str(sent.size)}
    frame = av.AudioFrame.from_ndarray(sent.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16000
    assert b"".join(payloads) == b"".join(bytes(p) for p in whole.encode(frame))

    assert (G722Decoder().decode(b"".join(payloads)) == got).all()
    # A decoder without memory (new per packet) would not match: the state matters.
    fresh = np.concatenate([G722Decoder().decode(p) for p in payloads])
    assert not (fresh == got).all()


def test_g722_decodes_any_bytes_to_two_samples_per_byte() -> None:
    decoder = G722Decoder()
    for payload in (b"\x00", bytes(range(256)), bytearray(b"\xff" * 33), memoryview(b"\x55" * 7)):
        assert decoder.decode(payload).size == 2 * len(payload)


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=500))
def test_g722_random_payloads(payload: bytes) -> None:
    decoder = G722Decoder()
    if not payload:
        with pytest.raises(ValueError, match=r"G\.722: empty payload"):
            decoder.decode(payload)
        return
    pcm = decoder.decode(payload)
    assert pcm.dtype == np.int16 and pcm.size == 2 * len(payload)


# -------------------------------------------------------------------- Opus


def test_opus_round_trip_of_a_chirp() -> None:
    sent = chirp(48000, 48000)
    payloads, got = stream(OpusEncoder(bitrate_bps=64000), OpusDecoder(), sent)
    assert len(payloads) == 50
    assert got.size == sent.size
    lag, corr = best_lag(sent, got, 1000)
    assert abs(lag - OPUS_PRESKIP) <= 4
    assert corr > 0.98
    assert snr_db(sent, got, lag, 4800) > 15


def test_opus_round_trip_of_a_tone() -> None:
    sent = tone(440, 48000, 48000)
    _, got = stream(OpusEncoder(bitrate_bps=32000), OpusDecoder(), sent)
    _, corr = best_lag(sent, got, 1000)
    assert corr > 0.95
    level = np.sqrt(np.mean(got[4800:].astype(np.float64) ** 2))
    assert 0.8 < level / (8000 / np.sqrt(2)) < 1.2


def test_opus_streamed_decode_has_no_clicks() -> None:
    sent = tone(440, 48000, 48000)
    _, got = stream(OpusEncoder(bitrate_bps=32000), OpusDecoder(), sent)
    steps = np.abs(np.diff(got[4800:].astype(np.int32)))
    max_slope = 8000 * 2 * np.pi * 440 / 48000  # largest step of the clean tone
    assert steps.max() < 1.5 * max_slope
    # Frame boundaries look like every other sample.
    boundary = steps[960 - 1 - 4800 % 960 :: 960]
    assert boundary.max() < 1.5 * max_slope


def test_opus_encoder_matches_a_plain_pyav_pipeline() -> None:
    """Reusing one input frame gives the same packets as fresh frames each time."""
    sent = chirp(48000, 48000)
    ours = OpusEncoder(bitrate_bps=40000)
    context = av.CodecContext.create("libopus", "w")
    context.bit_rate = 40000
    context.format, context.layout, context.sample_rate = "s16", "mono", 48000
    context.time_base = fractions.Fraction(1, 48000)
    context.options = {"application": "voip", "frame_duration": "20"}
    for i in range(0, sent.size, 960):
        frame = av.AudioFrame.from_ndarray(
            sent[i : i + 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = i
        expected = [bytes(p) for p in context.encode(frame)]
        assert [ours.encode(sent[i : i + 960])] == expected


@pytest.mark.parametrize("frame_ms", OPUS_FRAME_MS_CHOICES)
def test_opus_frame_sizes(frame_ms: int) -> None:
    encoder, decoder = OpusEncoder(frame_ms=frame_ms), OpusDecoder()
    n = 48 * frame_ms
    assert encoder.frame_samples == n
    for _ in range(3):
        payload = encoder.encode(tone(440, n, 48000))
        assert 0 < len(payload) <= encoder.max_payload_bytes
        pcm = decoder.decode(payload)
        assert pcm.dtype == np.int16 and pcm.shape == (n,)


def test_opus_stereo_on_the_wire_mono_inside() -> None:
    sent = chirp(48000, 48000)
    payloads, got = stream(OpusEncoder(bitrate_bps=64000, channels=2), OpusDecoder(), sent)
    assert all(p[0] & 0x04 for p in payloads)  # TOC stereo flag
    assert got.size == sent.size
    _, corr = best_lag(sent, got, 1000)
    assert corr > 0.95
    mono_payloads, _ = stream(OpusEncoder(channels=1), OpusDecoder(), sent)
    assert not any(p[0] & 0x04 for p in mono_payloads)


def test_opus_bitrate_is_configurable() -> None:
    sent = chirp(48000, 48000)
    low, _ = stream(OpusEncoder(bitrate_bps=12000), OpusDecoder(), sent)
    high, _ = stream(OpusEncoder(bitrate_bps=96000), OpusDecoder(), sent)
    low_bps = sum(len(p) for p in low) * 8
    high_bps = sum(len(p) for p in high) * 8
    assert low_bps < 20000
    assert high_bps > 3 * low_bps


@pytest.mark.parametrize("payload", [b"\x03", b"\x03\x00", b"\xff\xff\xff", b"\x0b" + b"\xff" * 2])
def test_opus_corrupt_payload_raises_and_decoder_recovers(payload: bytes) -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    decoder.decode(encoder.encode(tone(440, 960, 48000)))
    with pytest.raises(ValueError, match="Opus"):
        decoder.decode(payload)
    assert decoder.decode(encoder.encode(tone(440, 960, 48000))).size == 960


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=400))
def test_opus_random_payloads_give_audio_or_value_error(payload: bytes) -> None:
    decoder = OpusDecoder()
    try:
        pcm = decoder.decode(payload)
    except ValueError as exc:
        assert "Opus" in str(exc)
        return
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert pcm.size % 120 == 0 and 0 < pcm.size <= 5760  # 2.5 .. 120 ms at 48 kHz


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize("make", [G722Encoder, OpusEncoder], ids=["G.722", "Opus"])
def test_encoders_refuse_wrong_frames(make: type[G722Encoder] | type[OpusEncoder]) -> None:
    encoder = make()
    n = encoder.frame_samples
    label = "G.722" if make is G722Encoder else "Opus"
    for pcm in (
        np.zeros(n - 1, np.int16),
        np.zeros(n + 1, np.int16),
        bytes(2 * n - 2),
        bytes(2 * n + 1),
        np.zeros(n, np.int32),
        np.zeros(n, np.float32),
        "x" * (2 * n),
        None,
        b"",
    ):
        with pytest.raises(ValueError, match=label):
            encoder.encode(pcm)  # type: ignore[arg-type]
    # Still usable afterwards, with arrays or LE bytes.
    assert encoder.encode(np.zeros(n, np.int16))
    assert encoder.encode(bytes(2 * n))


@pytest.mark.parametrize("make", [G722Decoder, OpusDecoder], ids=["G.722", "Opus"])
def test_decoders_refuse_empty_and_non_bytes(make: type[G722Decoder] | type[OpusDecoder]) -> None:
    decoder = make()
    label = "G.722" if make is G722Decoder else "Opus"
    for payload in (b"", bytearray(), "abc", None, 42):
        with pytest.raises(ValueError, match=label):
            decoder.decode(payload)  # type: ignore[arg-type]


def test_opus_encoder_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="bitrate"):
        OpusEncoder(bitrate_bps=1000)
    with pytest.raises(ValueError, match="bitrate"):
        OpusEncoder(bitrate_bps=1_000_000)
    with pytest.raises(ValueError, match="bitrate"):
        OpusEncoder(bitrate_bps=32000.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels"):
        OpusEncoder(channels=3)
    with pytest.raises(ValueError, match="frame_ms"):
        OpusEncoder(frame_ms=25)


def test_into_variants() -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    payload = bytearray(encoder.max_payload_bytes)
    n = encoder.encode_into(tone(440, 960, 48000), payload)
    assert 0 < n < len(payload)
    out = np.zeros(1000, np.int16)
    assert decoder.decode_into(bytes(payload[:n]), out) == 960
    with pytest.raises(ValueError, match="too small"):
        decoder.decode_into(bytes(payload[:n]), np.zeros(100, np.int16))
    with pytest.raises(ValueError, match="too small"):
        encoder.encode_into(tone(440, 960, 48000), bytearray(1))
