"""G.711: native kernels == ITU reference, anchors of the standard, FFmpeg cross-check."""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any, Literal

import av
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import g711, l16
from engine.reference import g711 as ref
from tests.allocation import traced_growth

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)

Kernel = Callable[..., int]
LAWS = {
    "ulaw": (g711.ulaw_encode_into, g711.ulaw_decode_into, ref.ulaw_encode, ref.ulaw_decode),
    "alaw": (g711.alaw_encode_into, g711.alaw_decode_into, ref.alaw_encode, ref.alaw_decode),
}


def encode_all(encode_into: Kernel, pcm: npt.NDArray[np.int16] | bytes) -> npt.NDArray[np.uint8]:
    n = len(pcm) // 2 if isinstance(pcm, bytes) else len(pcm)
    out = np.zeros(n, dtype=np.uint8)
    assert encode_into(pcm, out) == n
    return out


def decode_all(decode_into: Kernel, codes: npt.NDArray[np.uint8] | bytes) -> npt.NDArray[np.int16]:
    out = np.zeros(len(codes), dtype=np.int16)
    assert decode_into(codes, out) == len(codes)
    return out


# ------------------------------------------------------------ native == reference


@pytest.mark.parametrize("law", LAWS)
def test_encode_matches_reference_for_every_int16(law: str) -> None:
    encode_into, _, ref_encode, _ = LAWS[law]
    expected = ref_encode(ALL_PCM.tobytes())
    assert encode_all(encode_into, ALL_PCM).tobytes() == expected
    assert encode_all(encode_into, ALL_PCM.tobytes()).tobytes() == expected


@pytest.mark.parametrize("law", LAWS)
def test_decode_matches_reference_for_every_code(law: str) -> None:
    _, decode_into, _, ref_decode = LAWS[law]
    assert decode_all(decode_into, ALL_CODES).tobytes() == ref_decode(ALL_CODES.tobytes())
    assert decode_all(decode_into, bytes(ALL_CODES)).tobytes() == ref_decode(bytes(ALL_CODES))


@pytest.mark.parametrize("law", LAWS)
def test_reencoding_a_decoded_code_gives_the_code_back(law: str) -> None:
    encode_into, decode_into, _, _ = LAWS[law]
    decoded = decode_all(decode_into, ALL_CODES)
    reencoded = encode_all(encode_into, decoded)
    if law == "ulaw":
        # 0x7F (negative zero) decodes to 0, which encodes as 0xFF (positive zero).
        expected = ALL_CODES.copy()
        expected[0x7F] = 0xFF
        assert (reencoded == expected).all()
    else:
        assert (reencoded == ALL_CODES).all()


# ----------------------------------------------------------- anchors of G.711


@pytest.mark.parametrize(
    ("code", "sample"),
    [(0xFF, 0), (0x7F, 0), (0x80, 32124), (0x00, -32124), (0xFE, 8), (0x7E, -8), (0xEF, 132)],
)
def test_ulaw_decode_anchors(code: int, sample: int) -> None:
    assert decode_all(g711.ulaw_decode_into, bytes([code]))[0] == sample


@pytest.mark.parametrize(
    ("code", "sample"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0xC5, 264)],
)
def test_alaw_decode_anchors(code: int, sample: int) -> None:
    assert decode_all(g711.alaw_decode_into, bytes([code]))[0] == sample


@pytest.mark.parametrize(
    ("sample", "ulaw", "alaw"),
    [(0, 0xFF, 0xD5), (-1, 0x7F, 0x55), (32767, 0x80, 0xAA), (-32768, 0x00, 0x2A)],
)
def test_encode_anchors(sample: int, ulaw: int, alaw: int) -> None:
    pcm = np.array([sample], dtype=np.int16)
    assert encode_all(g711.ulaw_encode_into, pcm)[0] == ulaw
    assert encode_all(g711.alaw_encode_into, pcm)[0] == alaw


@pytest.mark.parametrize("law", LAWS)
def test_negative_inputs_mirror_positive_ones_by_ones_complement(law: str) -> None:
    # G.711 (as G.191 implements it) treats x and -1 - x as the same magnitude.
    encode_into, decode_into, _, _ = LAWS[law]
    codes = encode_all(encode_into, ALL_PCM)
    positive = codes[32768:]  # x = 0 .. 32767
    negative = codes[32767::-1]  # -1 - x for the same x
    assert (negative == positive ^ 0x80).all()
    decoded = decode_all(decode_into, ALL_CODES)
    assert (decoded[ALL_CODES ^ 0x80] == -decoded).all()


# Segment-boundary decision values of G.711 Tables 1 and 2, in 16-bit units, with the
# step (16-bit units) of the segment below and above.  A boundary's decision value is
# not the midpoint of its two output levels, so these pin the tables exactly.
ULAW_BOUNDARIES = [
    (4 * b, 8 << k, 16 << k) for k, b in enumerate((31, 95, 223, 479, 991, 2015, 4063))
]
ALAW_BOUNDARIES = [(256 << k, 16 << max(k - 1, 0), 16 << k) for k in range(7)]


@pytest.mark.parametrize(
    ("law", "boundaries"), [("ulaw", ULAW_BOUNDARIES), ("alaw", ALAW_BOUNDARIES)]
)
def test_segment_boundaries_follow_the_g711_decision_values(
    law: str, boundaries: list[tuple[int, int, int]]
) -> None:
    encode_into, decode_into, _, _ = LAWS[law]
    for boundary, step_below, step_above in boundaries:
        pcm = np.array([boundary - 1, boundary], dtype=np.int16)
        decoded = decode_all(decode_into, encode_all(encode_into, pcm))
        assert decoded.tolist() == [boundary - step_below // 2, boundary + step_above // 2]


# ------------------------------------------------------------ FFmpeg (PyAV)


def ffmpeg_encode(
    codec_name: Literal["pcm_mulaw", "pcm_alaw"], pcm: npt.NDArray[np.int16]
) -> npt.NDArray[np.uint8]:
    context = av.CodecContext.create(codec_name, "w")
    context.format = "s16"
    context.layout = "mono"
    context.sample_rate = 8000
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    payload = b"".join(bytes(p) for p in context.encode(frame))
    return np.frombuffer(payload, dtype=np.uint8)


def ffmpeg_decode(
    codec_name: Literal["pcm_mulaw", "pcm_alaw"], codes: bytes
) -> npt.NDArray[np.int16]:
    context = av.CodecContext.create(codec_name, "r")
    context.format = "s16"
    context.layout = "mono"
    context.sample_rate = 8000
    frames = context.decode(av.Packet(codes))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def ffmpeg_encoder_model(
    decode_sample: Callable[[int], int], zero_code: int
) -> npt.NDArray[np.uint8]:
    """How FFmpeg's pcm_mulaw/pcm_alaw encoders pick codes (libavcodec/pcm_tablegen.h).

    A 16384-entry table indexed by ``(x + 32768) >> 2`` (two's complement, for A-law
    too) maps each index to the code whose output level is nearest: the threshold
    between neighbouring codes is the midpoint of their output levels.
    """
    table = np.empty(16384, dtype=np.uint8)
    center = 8192
    table[center] = zero_code
    j = 1
    for i in range(128):
        if i < 127:
            midpoint = (decode_sample(i ^ zero_code) + decode_sample((i + 1) ^ zero_code) + 4) >> 3
        else:
            midpoint = center
        while j < midpoint:
            table[center + j] = i ^ zero_code
            table[center - j] = i ^ zero_code ^ 0x80
            j += 1
    table[0] = table[1]
    return table


FFMPEG: dict[str, tuple[Literal["pcm_mulaw", "pcm_alaw"], Callable[[int], int], int, Any]] = {
    "ulaw": ("pcm_mulaw", ref.ulaw_decode_sample, 0xFF, ULAW_BOUNDARIES),
    "alaw": ("pcm_alaw", ref.alaw_decode_sample, 0xD5, ALAW_BOUNDARIES),
}


@pytest.mark.parametrize("law", LAWS)
def test_decode_agrees_with_ffmpeg_for_every_code(law: str) -> None:
    codec_name = FFMPEG[law][0]
    _, decode_into, _, _ = LAWS[law]
    expected = ffmpeg_decode(codec_name, bytes(ALL_CODES))
    assert (decode_all(decode_into, ALL_CODES) == expected).all()


@pytest.mark.parametrize("law", LAWS)
def test_encode_differs_from_ffmpeg_only_where_ffmpeg_leaves_g711(law: str) -> None:
    """FFmpeg's encoders are not G.711-exact; ours are.  Where and why they differ:

    1. FFmpeg rounds to the nearest output level.  Inside a segment that equals
       G.711's decision values, but at a segment boundary G.711 puts the decision
       value below that midpoint (e.g. mu-law 223 between outputs 219 and 231,
       whose midpoint is 225), so FFmpeg encodes the first inputs above each
       boundary one code lower.
    2. FFmpeg takes the magnitude of a negative sample as ``-(x >> 2)`` (two's
       complement); G.711/G.191 uses ``~x`` (one's complement: x and -1-x mirror),
       so FFmpeg's negative magnitudes are one 14-bit unit larger.
    Both are one-step differences; G.191, ITU's own reference code, is normative.
    """
    codec_name, decode_sample, zero_code, boundaries = FFMPEG[law]
    encode_into, _, _, _ = LAWS[law]
    ours = encode_all(encode_into, ALL_PCM)
    theirs = ffmpeg_encode(codec_name, ALL_PCM)

    # FFmpeg is fully explained by its nearest-level model ...
    model = ffmpeg_encoder_model(decode_sample, zero_code)
    assert (theirs == model[(ALL_PCM.astype(np.int32) + 32768) >> 2]).all()

    # ... the two agree on most inputs and never differ by more than one level ...
    differ = ours != theirs
    assert 0 < differ.sum() < 1000
    assert ((ours[differ] ^ theirs[differ]) & 0x80 == 0).all()  # same sign bit
    # Codes are sign | 7-bit rank once the zero code's mask is undone.
    ours_rank = (ours[differ] ^ zero_code) & 0x7F
    theirs_rank = (theirs[differ] ^ zero_code) & 0x7F
    assert (np.abs(ours_rank.astype(int) - theirs_rank.astype(int)) == 1).all()

    # ... and on non-negative inputs they differ exactly just above segment boundaries,
    # up to FFmpeg's threshold (midpoint of the two output levels, as a 14-bit index).
    x = ALL_PCM.astype(np.int32)
    positive = x >= 0
    expected = np.zeros(x.size, dtype=bool)
    for boundary, step_below, step_above in boundaries:
        level_below, level_above = boundary - step_below // 2, boundary + step_above // 2
        threshold = (level_below + level_above + 4) >> 3
        expected |= (x >= boundary) & ((x >> 2) < threshold)
    assert (differ[positive] == expected[positive]).all()


# ------------------------------------------------------------- conveniences


@pytest.mark.parametrize("law", LAWS)
def test_allocating_functions_match_reference(law: str) -> None:
    pcm = ALL_PCM[::37].tobytes()
    encode = getattr(g711, f"{law}_encode")
    decode = getattr(g711, f"{law}_decode")
    _, _, ref_encode, ref_decode = LAWS[law]
    assert encode(pcm) == ref_encode(pcm)
    assert decode(bytes(ALL_CODES)) == ref_decode(bytes(ALL_CODES))
    with pytest.raises(ValueError, match="odd byte count"):
        encode(b"\x00\x01\x02")


def test_empty_input_writes_nothing() -> None:
    assert g711.ulaw_encode_into(b"", bytearray()) == 0
    assert g711.alaw_decode_into(b"", np.zeros(0, np.int16)) == 0
    assert g711.ulaw_encode(b"") == b""
    assert g711.alaw_decode(b"") == b""


def test_accepts_common_buffer_types() -> None:
    pcm = ALL_PCM[1000:1160]
    expected = encode_all(g711.ulaw_encode_into, pcm)
    for src in (
        pcm,
        pcm.tobytes(),
        bytearray(pcm.tobytes()),
        memoryview(pcm.tobytes()),
        array.array("h", pcm.tolist()),
        memoryview(pcm.tobytes()).cast("h"),
    ):
        out = bytearray(160)
        assert g711.ulaw_encode_into(src, out) == 160
        assert out == expected.tobytes()
    codes = expected.tobytes()
    decoded = decode_all(g711.ulaw_decode_into, codes)
    for dst in (array.array("h", bytes(320)), memoryview(bytearray(320)).cast("h")):
        assert g711.ulaw_decode_into(memoryview(codes), dst) == 160
        assert bytes(dst) == decoded.tobytes()


# ------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("law", LAWS)
def test_encode_rejects_bad_arguments(law: str) -> None:
    encode_into, _, _, _ = LAWS[law]
    pcm = np.zeros(160, np.int16)
    out = np.zeros(160, np.uint8)
    bad: list[tuple[Any, Any, str]] = [
        (b"\x00" * 3, out, "odd byte count"),
        (pcm, np.zeros(159, np.uint8), "too small"),
        (pcm, bytes(160), "writable"),
        (pcm, np.zeros(160, np.int16), "format"),
        (pcm.astype(np.int32), out, "format"),
        (pcm.astype(np.uint16), out, "format"),
        (pcm.astype(np.float32), out, "format"),
        (pcm.astype(">i2"), out, "format"),
        (np.zeros(320, np.int16)[::2], out, "contiguous"),
        (pcm, np.zeros(320, np.uint8)[::2], "contiguous"),
        (None, out, "buffer"),
        ("text", out, "buffer"),
        (pcm, None, "buffer"),
    ]
    for src, dst, problem in bad:
        with pytest.raises(ValueError, match=problem):
            encode_into(src, dst)


@pytest.mark.parametrize("law", LAWS)
def test_decode_rejects_bad_arguments(law: str) -> None:
    _, decode_into, _, _ = LAWS[law]
    codes = bytes(160)
    out = np.zeros(160, np.int16)
    bad: list[tuple[Any, Any, str]] = [
        (codes, np.zeros(159, np.int16), "too small"),
        (codes, bytearray(320), "format"),
        (codes, np.zeros(160, np.uint16), "format"),
        (codes, np.zeros(160, np.int32), "format"),
        (codes, np.zeros(160, np.int16).astype(">i2"), "format"),
        (codes, np.zeros(320, np.int16)[::2], "contiguous"),
        (np.zeros(160, np.int16), out, "format"),
        (codes, bytes(320), "writable"),
        ("text", out, "buffer"),
        (codes, 3, "buffer"),
    ]
    for src, dst, problem in bad:
        with pytest.raises(ValueError, match=problem):
            decode_into(src, dst)


def test_read_only_numpy_out_is_refused() -> None:
    out = np.zeros(4, np.int16)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        g711.ulaw_decode_into(b"\x00\x01", out)


# ------------------------------------------------------------ property tests


@settings(max_examples=300, deadline=None)
@given(
    law=st.sampled_from(sorted(LAWS)),
    data=st.binary(max_size=2000),
    extra=st.integers(min_value=-5, max_value=5),
    as_array=st.booleans(),
)
def test_encode_random_buffers(law: str, data: bytes, extra: int, as_array: bool) -> None:
    encode_into, _, ref_encode, _ = LAWS[law]
    n_samples = len(data) // 2
    room_size = max(n_samples + extra, 0)
    out = np.full(room_size + 4, 0xA5, dtype=np.uint8)
    room = out[:room_size]
    src: Any = np.frombuffer(data[: 2 * n_samples], np.int16) if as_array else data
    odd = not as_array and len(data) % 2 == 1
    if odd or room_size < n_samples:
        with pytest.raises(ValueError, match="odd byte count" if odd else "too small"):
            encode_into(src, room)
        assert (out == 0xA5).all()
        return
    assert encode_into(src, room) == n_samples
    assert out[:n_samples].tobytes() == ref_encode(data[: 2 * n_samples])
    assert (out[n_samples:] == 0xA5).all()  # nothing written past the samples


@settings(max_examples=300, deadline=None)
@given(
    law=st.sampled_from(sorted(LAWS)),
    codes=st.binary(max_size=2000),
    extra=st.integers(min_value=-5, max_value=5),
)
def test_decode_random_buffers(law: str, codes: bytes, extra: int) -> None:
    _, decode_into, _, ref_decode = LAWS[law]
    room_size = max(len(codes) + extra, 0)
    out = np.full(room_size + 4, 0x5A5A, dtype=np.int16)
    room = out[:room_size]
    if room_size < len(codes):
        with pytest.raises(ValueError, match="too small"):
            decode_into(codes, room)
        assert (out == 0x5A5A).all()
        return
    assert decode_into(codes, room) == len(codes)
    assert out[: len(codes)].tobytes() == ref_decode(codes)
    assert (out[len(codes) :] == 0x5A5A).all()


BUFFER_KINDS = st.sampled_from(
    ["bytes", "int16", "uint8", "int32", "float64", "strided16", "strided8", "readonly16", "none"]
)


def make_buffer(kind: str, n_items: int) -> Any:
    if kind == "bytes":
        return bytes(n_items)
    if kind == "none":
        return None
    if kind.startswith("strided"):
        dtype = np.int16 if kind == "strided16" else np.uint8
        return np.zeros(2 * n_items + 4, dtype)[::2]  # >= 2 items, so never contiguous
    if kind == "readonly16":
        array16 = np.zeros(n_items, np.int16)
        array16.flags.writeable = False
        return array16
    return np.zeros(n_items, dtype=kind)


@settings(max_examples=1000, deadline=None)
@given(
    kernel=st.sampled_from(
        ["ulaw_encode_into", "alaw_encode_into", "ulaw_decode_into", "alaw_decode_into"]
    ),
    src_kind=BUFFER_KINDS,
    out_kind=BUFFER_KINDS,
    n_src=st.integers(min_value=0, max_value=400),
    n_out=st.integers(min_value=0, max_value=400),
)
def test_any_buffer_combination_is_a_result_or_value_error(
    kernel: str, src_kind: str, out_kind: str, n_src: int, n_out: int
) -> None:
    fn = getattr(g711, kernel)
    src, out = make_buffer(src_kind, n_src), make_buffer(out_kind, n_out)
    try:
        n = fn(src, out)
    except ValueError:
        return
    # Accepted: the only valid layouts, with enough room.
    if kernel.endswith("encode_into"):
        assert src_kind in ("bytes", "int16", "readonly16", "uint8") and out_kind == "uint8"
    else:
        assert src_kind in ("bytes", "uint8") and out_kind == "int16"
    assert 0 <= n <= n_out


# ---------------------------------------------------------------- allocation


def test_into_functions_allocate_nothing_per_call() -> None:
    """Per-frame calls create no Python objects: same footprint as calling ``max(1, 2)``.

    numpy's own buffer export mallocs a small transient info struct per export
    (freed within the call), so with numpy arguments a few dozen bytes of peak are
    numpy's, not ours; plain Python buffers show none at all.
    """
    control = traced_growth(max, 1, 2)
    pcm = bytes(320)
    calls: list[tuple[Callable[..., int], Any, Any]] = [
        (g711.ulaw_encode_into, pcm, bytearray(160)),
        (g711.alaw_encode_into, memoryview(pcm).cast("h"), bytearray(160)),
        (g711.ulaw_decode_into, pcm[:160], array.array("h", pcm)),
        (g711.alaw_decode_into, pcm[:160], memoryview(bytearray(320)).cast("h")),
        (l16.pcm_to_l16be_into, pcm, bytearray(320)),
        (l16.l16be_to_pcm_into, pcm, array.array("h", pcm)),
    ]
    for fn, src, out in calls:
        assert traced_growth(fn, src, out) == control, fn.__name__
    retained, peak = traced_growth(
        g711.ulaw_encode_into, np.zeros(160, np.int16), np.zeros(160, np.uint8)
    )
    assert retained == control[0]
    assert peak - control[1] <= 64
