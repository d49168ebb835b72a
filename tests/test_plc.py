"""Packet-loss concealment: quality on known signals, fades, exact sizes, native == reference."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _plc
from engine.plc import MAX_CONCEAL_MS, Concealer, conceal_stream
from engine.reference import plc as ref_plc

Pcm = npt.NDArray[np.int16]


class ConcealerLike(Protocol):
    @property
    def frame_samples(self) -> int: ...

    def good_into(self, src: Pcm | bytes, out: Pcm) -> int: ...
    def conceal_into(self, out: Pcm) -> int: ...
    def reset(self) -> None: ...
    @property
    def pitch_samples(self) -> int: ...


IMPLS: dict[str, type[_plc.Concealer] | type[ref_plc.Concealer]] = {
    "native": _plc.Concealer,
    "reference": ref_plc.Concealer,
}


def make(impl: str, rate_hz: int = 8000, frame_ms: int = 20) -> ConcealerLike:
    concealer: ConcealerLike = IMPLS[impl](rate_hz, frame_ms)
    return concealer


def sine(freq_hz: float, rate_hz: int, n_samples: int, amplitude: float = 10000.0) -> Pcm:
    t = np.arange(n_samples)
    return np.round(amplitude * np.sin(2 * np.pi * freq_hz * t / rate_hz)).astype(np.int16)


def play(plc: ConcealerLike, signal: Pcm, lost: set[int]) -> tuple[Pcm, list[int]]:
    """Run ``signal`` frame by frame through ``plc``, losing the frames in ``lost``."""
    n = plc.frame_samples
    frames = len(signal) // n
    out = np.zeros(frames * n, dtype=np.int16)
    returned = []
    for k in range(frames):
        dest = out[k * n : (k + 1) * n]
        if k in lost:
            returned.append(plc.conceal_into(dest))
        else:
            returned.append(plc.good_into(signal[k * n : (k + 1) * n], dest))
    return out, returned


def snr_db(reference: Pcm, test: Pcm) -> float:
    ref = reference.astype(np.float64)
    err = ref - test.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum(err**2), 1e-9)))


@pytest.mark.parametrize("impl", list(IMPLS))
def test_good_frames_pass_through_bit_exact(impl: str) -> None:
    rng = np.random.default_rng(3)
    signal = rng.integers(-32768, 32768, 160 * 10).astype(np.int16)
    out, returned = play(make(impl), signal, lost=set())
    assert np.array_equal(out, signal)
    assert returned == [160] * 10


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize(
    ("freq_hz", "rate_hz"),
    [(100, 8000), (200, 8000), (220, 8000), (300, 16000), (440, 16000), (1000, 16000)],
)
def test_single_lost_frame_of_a_sine_is_concealed_closely(
    impl: str, freq_hz: int, rate_hz: int
) -> None:
    plc = make(impl, rate_hz)
    n = plc.frame_samples
    signal = sine(freq_hz, rate_hz, n * 16)
    out, returned = play(plc, signal, lost={10})
    assert returned[10] == n  # every concealed sample is audible
    lost = slice(10 * n, 11 * n)
    assert snr_db(signal[lost], out[lost]) > 15.0
    # No clicks: the largest sample-to-sample step around both boundaries stays
    # within that of the true sine.
    true_step = np.abs(np.diff(signal.astype(np.int64))).max()
    around = out[9 * n : 12 * n].astype(np.int64)
    assert np.abs(np.diff(around)).max() <= 1.05 * true_step
    # Frames before the loss are untouched; the frame after it converges to the
    # real signal within 10 ms, and the one after that is bit-exact again.
    assert np.array_equal(out[: 10 * n], signal[: 10 * n])
    ten_ms = rate_hz // 100
    assert np.array_equal(out[11 * n + ten_ms : 12 * n], signal[11 * n + ten_ms : 12 * n])
    assert np.array_equal(out[12 * n :], signal[12 * n :])


@pytest.mark.parametrize("impl", list(IMPLS))
def test_pitch_estimate_is_a_multiple_of_the_true_period(impl: str) -> None:
    plc = make(impl)
    signal = sine(200, 8000, 160 * 6)  # period 40 samples
    play(plc, signal, lost={5})
    assert plc.pitch_samples in (40, 80, 120)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_long_loss_fades_to_silence(impl: str, frame_ms: int) -> None:
    plc = make(impl, 8000, frame_ms)
    n = plc.frame_samples
    lost_frames = 120 // frame_ms
    signal = sine(250, 8000, n * (5 + lost_frames))
    out, returned = play(plc, signal, lost=set(range(5, 5 + lost_frames)))
    concealed = out[5 * n : (5 + lost_frames) * n].astype(np.float64)
    blocks = concealed.reshape(-1, 80)  # 10 ms blocks at 8 kHz
    rms = np.sqrt(np.mean(blocks**2, axis=1))
    full = 10000 / np.sqrt(2)
    assert rms[0] == pytest.approx(full, rel=0.05)  # first 10 ms at full level
    assert all(rms[k + 1] < rms[k] for k in range(5))  # then fading every 10 ms
    assert rms[1] == pytest.approx(0.9 * full, rel=0.05)  # ~20 % per 10 ms
    assert np.all(blocks[6:] == 0)  # silence from 60 ms on
    per_frame_audible = [min(n, max(0, 480 - k * n)) for k in range(lost_frames)]
    assert returned[5 : 5 + lost_frames] == per_frame_audible
    assert MAX_CONCEAL_MS == 60


@pytest.mark.parametrize("impl", list(IMPLS))
def test_recovery_after_silence_fades_in_without_a_step(impl: str) -> None:
    plc = make(impl)
    signal = sine(180, 8000, 160 * 12)
    out, _ = play(plc, signal, lost=set(range(3, 8)))
    first_good = out[8 * 160 : 9 * 160].astype(np.int64)
    assert abs(int(first_good[0])) < 500  # starts near the silence it follows
    assert np.array_equal(out[9 * 160 :], signal[9 * 160 :])


@pytest.mark.parametrize("impl", list(IMPLS))
def test_concealment_before_any_audio_is_silence(impl: str) -> None:
    plc = make(impl)
    out = np.full(160, 7, dtype=np.int16)
    assert plc.conceal_into(out) == 0
    assert np.all(out == 0)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_reset_forgets_history(impl: str) -> None:
    plc = make(impl)
    out = np.zeros(160, dtype=np.int16)
    plc.good_into(sine(300, 8000, 160), out)
    plc.reset()
    assert plc.conceal_into(out) == 0
    assert np.all(out == 0)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_bytes_input_equals_array_input(impl: str) -> None:
    signal = sine(150, 8000, 160 * 8)
    a, _ = play(make(impl), signal, lost={4, 5})
    plc = make(impl)
    b = np.zeros_like(signal)
    for k in range(8):
        dest = b[k * 160 : (k + 1) * 160]
        if k in (4, 5):
            plc.conceal_into(dest)
        else:
            plc.good_into(signal[k * 160 : (k + 1) * 160].tobytes(), dest)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_output_length_is_always_exactly_one_frame(impl: str) -> None:
    plc = make(impl)
    buf = np.full(480, 1234, dtype=np.int16)
    out = buf[160:320]
    src = sine(300, 8000, 160)
    plc.good_into(src, out)
    for _ in range(5):
        plc.conceal_into(out)
    assert np.all(buf[:160] == 1234)
    assert np.all(buf[320:] == 1234)
    for size in (159, 161, 320):
        with pytest.raises(ValueError, match="expected 320"):
            plc.conceal_into(np.zeros(size, dtype=np.int16))
        with pytest.raises(ValueError, match="expected 320"):
            plc.good_into(np.zeros(size, dtype=np.int16), np.zeros(160, dtype=np.int16))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize(
    "bad",
    [
        b"\x00" * 319,  # odd byte count
        np.zeros(160, dtype=np.float32),
        np.zeros(160, dtype=np.int32),
        np.zeros(320, dtype=np.int16)[::2],  # not contiguous
        "not audio",
        160,
        None,
    ],
)
def test_bad_frames_are_refused(impl: str, bad: object) -> None:
    plc = make(impl)
    with pytest.raises(ValueError):
        plc.good_into(bad, np.zeros(160, dtype=np.int16))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        plc.conceal_into(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("impl", list(IMPLS))
def test_read_only_output_is_refused(impl: str) -> None:
    plc = make(impl)
    frozen = np.zeros(160, dtype=np.int16)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        plc.conceal_into(frozen)
    with pytest.raises(ValueError):
        plc.conceal_into(bytes(320))  # type: ignore[arg-type]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize(
    ("rate_hz", "frame_ms"),
    [(7999, 20), (8000, 25), (8000, 0), (-8000, 20), (22050, 10), (8000.0, 20), (True, 20)],
)
def test_bad_configuration_is_refused(impl: str, rate_hz: object, frame_ms: object) -> None:
    with pytest.raises(ValueError):
        IMPLS[impl](rate_hz, frame_ms)  # type: ignore[arg-type]


def test_conceal_stream_joins_and_conceals() -> None:
    signal = sine(200, 8000, 160 * 6)
    frames: list[Pcm | None] = [signal[k * 160 : (k + 1) * 160] for k in range(6)]
    frames[3] = None
    joined = conceal_stream(frames)
    assert joined.shape == (960,)
    assert np.array_equal(joined[:480], signal[:480])
    assert np.abs(joined[480:640]).max() > 5000


def test_public_class_is_the_native_one() -> None:
    assert Concealer is _plc.Concealer


signals = st.sampled_from(["sine", "noise", "zeros", "speechy"])


@st.composite
def loss_patterns(draw: st.DrawFn) -> tuple[int, int, int, str, list[bool]]:
    rate_hz = draw(st.sampled_from([8000, 16000, 24000, 48000]))
    frame_ms = draw(st.sampled_from([10, 20, 30]))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(signals)
    lost = draw(st.lists(st.booleans(), min_size=1, max_size=14))
    return rate_hz, frame_ms, seed, kind, lost


def make_signal(kind: str, rate_hz: int, n_samples: int, seed: int) -> Pcm:
    rng = np.random.default_rng(seed)
    if kind == "zeros":
        return np.zeros(n_samples, dtype=np.int16)
    if kind == "noise":
        return rng.integers(-32768, 32768, n_samples).astype(np.int16)
    t = np.arange(n_samples) / rate_hz
    if kind == "sine":
        wave = 20000 * np.sin(2 * np.pi * rng.uniform(60, 2000) * t)
    else:
        f0 = rng.uniform(80, 300)
        wave = rng.normal(0, 500, n_samples)
        for h in range(1, 6):
            wave += 6000 / h * np.sin(2 * np.pi * h * f0 * t)
    return np.clip(np.round(wave), -32768, 32767).astype(np.int16)


@settings(max_examples=60, deadline=None)
@given(loss_patterns())
def test_native_matches_reference(case: tuple[int, int, int, str, list[bool]]) -> None:
    rate_hz, frame_ms, seed, kind, lost = case
    native = _plc.Concealer(rate_hz, frame_ms)
    reference = ref_plc.Concealer(rate_hz, frame_ms)
    n = native.frame_samples
    # a few good frames first so there is history to conceal from
    pattern = [False, False, False, *lost, False, False]
    signal = make_signal(kind, rate_hz, n * len(pattern), seed)
    a = np.zeros(n, dtype=np.int16)
    b = np.zeros(n, dtype=np.int16)
    for k, is_lost in enumerate(pattern):
        frame = signal[k * n : (k + 1) * n]
        if is_lost:
            assert native.conceal_into(a) == reference.conceal_into(b)
        else:
            assert native.good_into(frame, a) == reference.good_into(frame.tobytes(), b)
        assert np.array_equal(a, b), f"frame {k} differs"
        assert native.pitch_samples == reference.pitch_samples
        assert native.erased_samples == reference.erased_samples
