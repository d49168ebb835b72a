"""Codec registry: every codec in engine.format.CODECS, its sizes, round trips and refusals."""

from __future__ import annotations

import array

import numpy as np
import numpy.typing as npt
import pytest

from engine import avcodec, g711
from engine.codecs import Decoder, Encoder, make_decoder, make_encoder
from engine.format import CODECS, AudioFormat
from tests.test_g711 import traced_growth

VALID = {
    "pcmu": AudioFormat("pcmu", 8000),
    "pcma": AudioFormat("pcma", 8000),
    "l16": AudioFormat("l16", 16000),
    "l16be": AudioFormat("l16be", 8000),
    "g722": AudioFormat("g722", 16000),
    "opus": AudioFormat("opus", 48000),
}


def tone(n: int, rate_hz: int, freq_hz: float = 440) -> npt.NDArray[np.int16]:
    t = np.arange(n) / rate_hz
    return (8000 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def test_every_known_codec_has_a_valid_format_here() -> None:
    assert set(VALID) == set(CODECS)


def test_pyav_codecs_satisfy_the_protocols() -> None:
    encoders: list[Encoder] = [avcodec.G722Encoder(), avcodec.OpusEncoder()]
    decoders: list[Decoder] = [avcodec.G722Decoder(), avcodec.OpusDecoder()]
    assert [e.rate_hz for e in encoders] == [d.rate_hz for d in decoders] == [16000, 48000]


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_sizes(codec: str) -> None:
    fmt = VALID[codec]
    encoder, decoder = make_encoder(fmt), make_decoder(fmt)
    assert encoder.rate_hz == decoder.rate_hz == fmt.rate_hz
    assert encoder.frame_samples == fmt.frame_samples
    for _ in range(3):
        payload = encoder.encode(tone(fmt.frame_samples, fmt.rate_hz))
        if fmt.is_constant_bitrate:
            assert len(payload) == fmt.frame_bytes
        assert 0 < len(payload) <= encoder.max_payload_bytes
        pcm = decoder.decode(payload)
        assert pcm.dtype == np.int16 and pcm.shape == (fmt.frame_samples,)


@pytest.mark.parametrize("codec", ["l16", "l16be"])
def test_linear_codecs_are_lossless(codec: str) -> None:
    fmt = AudioFormat(codec, 48000, frame_ms=10)
    pcm = np.arange(-240, 240, dtype=np.int16) * 131
    payload = make_encoder(fmt).encode(pcm)
    assert payload == pcm.astype("<i2" if codec == "l16" else ">i2").tobytes()
    assert (make_decoder(fmt).decode(payload) == pcm).all()


@pytest.mark.parametrize(
    ("codec", "encode"), [("pcmu", g711.ulaw_encode), ("pcma", g711.alaw_encode)]
)
def test_g711_registry_uses_the_g711_kernels(codec: str, encode: object) -> None:
    fmt = VALID[codec]
    pcm = tone(160, 8000)
    payload = make_encoder(fmt).encode(pcm.tobytes())
    assert callable(encode)
    assert payload == encode(pcm.tobytes())
    back = make_decoder(fmt).decode(payload).astype(np.float64)
    noise = back - pcm
    assert 10 * np.log10((pcm.astype(np.float64) ** 2).sum() / (noise**2).sum()) > 30


@pytest.mark.parametrize("codec", CODECS)
def test_into_variants_match_allocating_ones(codec: str) -> None:
    fmt = VALID[codec]
    pcm = tone(fmt.frame_samples, fmt.rate_hz)
    payload = make_encoder(fmt).encode(pcm)
    encoder = make_encoder(fmt)
    out = bytearray(encoder.max_payload_bytes)
    n = encoder.encode_into(pcm, out)
    assert bytes(out[:n]) == payload
    expected = make_decoder(fmt).decode(payload)
    samples = np.zeros(fmt.frame_samples + 10, np.int16)
    assert make_decoder(fmt).decode_into(payload, samples) == fmt.frame_samples
    assert (samples[: fmt.frame_samples] == expected).all()
    assert (samples[fmt.frame_samples :] == 0).all()


@pytest.mark.parametrize("codec", CODECS)
def test_wrong_frame_size_is_refused(codec: str) -> None:
    fmt = VALID[codec]
    encoder = make_encoder(fmt)
    for n in (fmt.frame_samples - 1, fmt.frame_samples + 1, 0):
        with pytest.raises(ValueError, match="frame"):
            encoder.encode(np.zeros(n, np.int16))
    with pytest.raises(ValueError):
        encoder.encode(bytes(2 * fmt.frame_samples + 1))
    with pytest.raises(ValueError):
        encoder.encode(np.zeros(fmt.frame_samples, np.float32))
    with pytest.raises(ValueError, match="small"):
        encoder.encode_into(np.zeros(fmt.frame_samples, np.int16), bytearray(1))


@pytest.mark.parametrize("codec", CODECS)
def test_empty_or_non_bytes_payload_is_refused(codec: str) -> None:
    decoder = make_decoder(VALID[codec])
    for payload in (b"", "text", None):
        with pytest.raises(ValueError):
            decoder.decode(payload)  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", ["l16", "l16be"])
def test_odd_linear_payload_is_refused(codec: str) -> None:
    with pytest.raises(ValueError, match="odd byte count"):
        make_decoder(VALID[codec]).decode(b"\x00\x01\x02")


@pytest.mark.parametrize(
    ("fmt", "problem"),
    [
        (AudioFormat("pcmu", 16000), "8000 Hz"),
        (AudioFormat("pcma", 48000), "8000 Hz"),
        (AudioFormat("g722", 8000), "16000 Hz"),
        (AudioFormat("opus", 16000), "48000 Hz"),
        (AudioFormat("opus", 48000, frame_ms=30), "opus frames"),
        (AudioFormat("l16", 32000), "32000 Hz"),
        (AudioFormat("pcmu", 8000, channels=2), "mono"),
        (AudioFormat("g722", 16000, channels=2), "mono"),
    ],
)
def test_unsupported_combinations_are_refused(fmt: AudioFormat, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_encoder(fmt)
    with pytest.raises(ValueError, match=problem):
        make_decoder(fmt)


def test_opus_options() -> None:
    stereo = make_encoder(AudioFormat("opus", 48000, channels=2), bitrate_bps=64000)
    assert isinstance(stereo, avcodec.OpusEncoder)
    assert stereo.channels == 2 and stereo.bitrate_bps == 64000
    payload = stereo.encode(tone(960, 48000))
    assert make_decoder(AudioFormat("opus", 48000, channels=2)).decode(payload).size == 960
    with pytest.raises(ValueError, match="bitrate"):
        make_encoder(VALID["pcmu"], bitrate_bps=64000)
    with pytest.raises(ValueError, match="bitrate"):
        make_encoder(VALID["opus"], bitrate_bps=10)


def test_g722_frame_follows_the_format() -> None:
    encoder = make_encoder(AudioFormat("g722", 16000, frame_ms=30))
    assert encoder.frame_samples == 480
    assert len(encoder.encode(tone(480, 16000))) == 240


@pytest.mark.parametrize("codec", ["pcmu", "pcma", "l16be"])
def test_kernel_codecs_into_allocate_nothing(codec: str) -> None:
    fmt = AudioFormat(codec, 8000)
    encoder, decoder = make_encoder(fmt), make_decoder(fmt)
    control = traced_growth(max, 1, 2)
    pcm, payload = bytes(320), bytearray(encoder.max_payload_bytes)
    samples = array.array("h", bytes(320))
    assert traced_growth(encoder.encode_into, pcm, payload) == control
    assert traced_growth(decoder.decode_into, bytes(payload), samples) == control
