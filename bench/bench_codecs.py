"""Codec kernels: G.711 encode/decode and L16 byte swap over one 20 ms frame.

Impls per group: ``voxgate`` (native ``*_into`` with a preallocated out),
``python_reference`` (engine.reference.g711), ``numpy`` (vectorised table
lookup into a preallocated out, tables computed here from segments) and ``pyav``
(FFmpeg through PyAV the way aiortc's PcmuEncoder/PcmaEncoder drive it: build an
AudioFrame, pass it through a frame-size resampler, encode, take the bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import av
import numpy as np
import numpy.typing as npt
import pytest

from bench.conftest import Measure
from engine import g711, l16
from engine.reference import g711 as ref

G711_RATE_HZ = 8000
G711_FRAME = 160  # 20 ms at 8 kHz
L16_FRAME = 320  # 20 ms at 16 kHz

IMPLS = ["voxgate", "python_reference", "numpy", "pyav"]


def speech_like_frame(n: int, seed: int) -> npt.NDArray[np.int16]:
    """Two tones plus noise with a wide dynamic range (exercises every segment)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / G711_RATE_HZ
    envelope = np.linspace(0.02, 1.0, n)
    signal = envelope * (12000 * np.sin(2 * np.pi * 300 * t) + 6000 * np.sin(2 * np.pi * 1170 * t))
    signal += rng.normal(0, 800, n)
    frame: npt.NDArray[np.int16] = np.clip(signal, -32768, 32767).astype(np.int16)
    return frame


# ------------------------------------------------------------------ numpy


def numpy_ulaw_table() -> npt.NDArray[np.uint8]:
    """mu-law code for every 14-bit index ``(uint16)x >> 2``, computed by segments."""
    top = (np.arange(16384, dtype=np.int32) << 2).astype(np.uint16).view(np.int16) >> 2
    top = top.astype(np.int32)
    magnitude = np.where(top < 0, ~top, top)
    biased = np.minimum(magnitude + 33, 0x1FFF)
    segment = np.floor(np.log2(biased)).astype(np.int32) - 5
    mantissa = (biased >> (segment + 1)) & 0x0F
    code = (segment << 4) | mantissa | np.where(top < 0, 0x80, 0)
    table: npt.NDArray[np.uint8] = (code ^ 0xFF).astype(np.uint8)
    return table


def numpy_alaw_table() -> npt.NDArray[np.uint8]:
    """A-law code for every 12-bit index ``(uint16)x >> 4``, computed by segments."""
    top = (np.arange(4096, dtype=np.int32) << 4).astype(np.uint16).view(np.int16) >> 4
    top = top.astype(np.int32)
    magnitude = np.where(top < 0, ~top, top)
    segment = np.maximum(np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 3, 0)
    mantissa = np.where(segment == 0, magnitude, magnitude >> np.maximum(segment - 1, 0)) & 0x0F
    code = (segment << 4) | mantissa | np.where(top >= 0, 0x80, 0)
    table: npt.NDArray[np.uint8] = (code ^ 0x55).astype(np.uint8)
    return table


def numpy_decode_table(law: str) -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32)
    if law == "ulaw":
        bits = codes ^ 0xFF
        segment, mantissa = (bits >> 4) & 7, bits & 0x0F
        magnitude = (((mantissa << 3) + 132) << segment) - 132
    else:
        bits = codes ^ 0x55
        segment, mantissa = (bits >> 4) & 7, bits & 0x0F
        units = np.where(segment == 0, mantissa, (mantissa | 0x10) << np.maximum(segment - 1, 0))
        magnitude = (units << 4) + (8 << np.maximum(segment - 1, 0))
    table: npt.NDArray[np.int16] = np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)
    return table


def numpy_encoder(law: str) -> Callable[[npt.NDArray[np.int16], npt.NDArray[np.uint8]], int]:
    table = numpy_ulaw_table() if law == "ulaw" else numpy_alaw_table()
    shift = np.uint16(2 if law == "ulaw" else 4)
    index = np.empty(G711_FRAME, dtype=np.uint16)

    def encode(pcm: npt.NDArray[np.int16], out: npt.NDArray[np.uint8]) -> int:
        np.right_shift(pcm.view(np.uint16), shift, out=index)
        np.take(table, index, out=out)
        return int(pcm.size)

    return encode


def numpy_decoder(law: str) -> Callable[[bytes, npt.NDArray[np.int16]], int]:
    table = numpy_decode_table(law)

    def decode(codes: bytes, out: npt.NDArray[np.int16]) -> int:
        np.take(table, np.frombuffer(codes, dtype=np.uint8), out=out)
        return len(codes)

    return decode


# ------------------------------------------------------------------- pyav


def pyav_encoder(
    codec_name: Literal["pcm_mulaw", "pcm_alaw"],
) -> Callable[[npt.NDArray[np.int16]], bytes]:
    context = av.CodecContext.create(codec_name, "w")
    context.format = "s16"
    context.layout = "mono"
    context.sample_rate = G711_RATE_HZ
    resampler = av.AudioResampler(
        format="s16", layout="mono", rate=G711_RATE_HZ, frame_size=G711_FRAME
    )
    pts = 0

    def encode(pcm: npt.NDArray[np.int16]) -> bytes:
        nonlocal pts
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = G711_RATE_HZ
        frame.pts = pts
        pts += pcm.size
        packets = []
        for resampled in resampler.resample(frame):
            packets += context.encode(resampled)
        return b"".join(bytes(p) for p in packets)

    return encode


def pyav_decoder(
    codec_name: Literal["pcm_mulaw", "pcm_alaw"],
) -> Callable[[bytes], npt.NDArray[np.int16]]:
    context = av.CodecContext.create(codec_name, "r")
    context.format = "s16"
    context.layout = "mono"
    context.sample_rate = G711_RATE_HZ

    def decode(codes: bytes) -> npt.NDArray[np.int16]:
        frames = context.decode(av.Packet(codes))
        return np.asarray(frames[0].to_ndarray().reshape(-1), dtype=np.int16)

    return decode


# ----------------------------------------------------------------- groups


def rank_distance(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], zero_code: int) -> int:
    """Largest distance in quantisation levels between two code arrays of the same sign."""
    assert ((a ^ b) & 0x80 == 0).all()
    ra = ((a ^ zero_code) & 0x7F).astype(int)
    rb = ((b ^ zero_code) & 0x7F).astype(int)
    return int(np.abs(ra - rb).max(initial=0))


ENCODE_CASES: dict[str, tuple[Any, Any, Literal["pcm_mulaw", "pcm_alaw"], int]] = {
    "ulaw": (g711.ulaw_encode_into, ref.ulaw_encode, "pcm_mulaw", 0xFF),
    "alaw": (g711.alaw_encode_into, ref.alaw_encode, "pcm_alaw", 0xD5),
}


def run_encode(measure: Measure, law: str, impl: str) -> None:
    encode_into, ref_encode, codec_name, zero_code = ENCODE_CASES[law]
    pcm = speech_like_frame(G711_FRAME, seed=1)
    expected = np.frombuffer(ref_encode(pcm.tobytes()), dtype=np.uint8)
    out = np.zeros(G711_FRAME, dtype=np.uint8)
    if impl == "voxgate":
        assert encode_into(pcm, out) == G711_FRAME
        assert (out == expected).all()
        measure(impl, encode_into, pcm, out, frames=1)
    elif impl == "python_reference":
        measure(impl, ref_encode, pcm.tobytes(), frames=1)
    elif impl == "numpy":
        encode = numpy_encoder(law)
        encode(pcm, out)
        assert (out == expected).all()
        measure(impl, encode, pcm, out, frames=1)
    else:
        pyav_encode = pyav_encoder(codec_name)
        got = np.frombuffer(pyav_encode(pcm), dtype=np.uint8)
        # FFmpeg is not G.711-exact at segment boundaries and for negative
        # inputs (see tests/test_g711.py); it is never more than one level off.
        assert got.size == G711_FRAME and rank_distance(got, expected, zero_code) <= 1
        measure(impl, pyav_encode, pcm, frames=1)


DECODE_CASES: dict[str, tuple[Any, Any, Literal["pcm_mulaw", "pcm_alaw"]]] = {
    "ulaw": (g711.ulaw_decode_into, ref.ulaw_decode, "pcm_mulaw"),
    "alaw": (g711.alaw_decode_into, ref.alaw_decode, "pcm_alaw"),
}


def run_decode(measure: Measure, law: str, impl: str) -> None:
    decode_into, ref_decode, codec_name = DECODE_CASES[law]
    codes = bytes(np.random.default_rng(2).integers(0, 256, G711_FRAME, dtype=np.uint8))
    expected = np.frombuffer(ref_decode(codes), dtype=np.int16)
    out = np.zeros(G711_FRAME, dtype=np.int16)
    if impl == "voxgate":
        assert decode_into(codes, out) == G711_FRAME
        assert (out == expected).all()
        measure(impl, decode_into, codes, out, frames=1)
    elif impl == "python_reference":
        measure(impl, ref_decode, codes, frames=1)
    elif impl == "numpy":
        decode = numpy_decoder(law)
        decode(codes, out)
        assert (out == expected).all()
        measure(impl, decode, codes, out, frames=1)
    else:
        pyav_decode = pyav_decoder(codec_name)
        assert (pyav_decode(codes) == expected).all()
        measure(impl, pyav_decode, codes, frames=1)


@pytest.mark.benchmark(group="g711_ulaw_encode")
@pytest.mark.parametrize("impl", IMPLS)
def test_g711_ulaw_encode(measure: Measure, impl: str) -> None:
    run_encode(measure, "ulaw", impl)


@pytest.mark.benchmark(group="g711_ulaw_decode")
@pytest.mark.parametrize("impl", IMPLS)
def test_g711_ulaw_decode(measure: Measure, impl: str) -> None:
    run_decode(measure, "ulaw", impl)


@pytest.mark.benchmark(group="g711_alaw_encode")
@pytest.mark.parametrize("impl", IMPLS)
def test_g711_alaw_encode(measure: Measure, impl: str) -> None:
    run_encode(measure, "alaw", impl)


@pytest.mark.benchmark(group="g711_alaw_decode")
@pytest.mark.parametrize("impl", IMPLS)
def test_g711_alaw_decode(measure: Measure, impl: str) -> None:
    run_decode(measure, "alaw", impl)


# ------------------------------------------------------------- L16 swap


def numpy_l16be_writer(out: bytearray) -> Callable[[npt.NDArray[np.int16]], int]:
    big_endian = np.frombuffer(out, dtype=">i2")

    def write(pcm: npt.NDArray[np.int16]) -> int:
        big_endian[:] = pcm  # numpy swaps bytes while casting
        return int(pcm.size)

    return write


def pyav_l16be_encoder() -> Callable[[npt.NDArray[np.int16]], bytes]:
    context = av.CodecContext.create("pcm_s16be", "w")
    context.format = "s16"
    context.layout = "mono"
    context.sample_rate = 16000

    def encode(pcm: npt.NDArray[np.int16]) -> bytes:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        return b"".join(bytes(p) for p in context.encode(frame))

    return encode


@pytest.mark.benchmark(group="l16be_swap")
@pytest.mark.parametrize("impl", IMPLS)
def test_l16be_swap(measure: Measure, impl: str) -> None:
    pcm = speech_like_frame(L16_FRAME, seed=3)
    expected = pcm.astype(">i2").tobytes()
    out = bytearray(2 * L16_FRAME)
    if impl == "voxgate":
        assert l16.pcm_to_l16be_into(pcm, out) == L16_FRAME
        assert bytes(out) == expected
        measure(impl, l16.pcm_to_l16be_into, pcm, out, frames=1)
    elif impl == "python_reference":
        assert ref.pcm_to_l16be(pcm.tobytes()) == expected
        measure(impl, ref.pcm_to_l16be, pcm.tobytes(), frames=1)
    elif impl == "numpy":
        write = numpy_l16be_writer(out)
        write(pcm)
        assert bytes(out) == expected
        measure(impl, write, pcm, frames=1)
    else:
        encode = pyav_l16be_encoder()
        assert encode(pcm) == expected
        measure(impl, encode, pcm, frames=1)
