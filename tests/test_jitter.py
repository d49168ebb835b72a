"""Jitter buffer: ordering, loss, wrap, adaptation, resync, bad input, native == reference."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _jitter
from engine.jitter import FrameKind, JitterBuffer, JitterBufferLike, JitterStats, PutStatus
from engine.reference import jitter as ref_jitter

Pcm = npt.NDArray[np.int16]
N = 160  # samples per 20 ms frame at 8 kHz


class Buffer(JitterBufferLike, Protocol):
    """What the tests use of either implementation, beyond the shared statistics."""

    @property
    def frame_samples(self) -> int: ...
    @property
    def last_timestamp(self) -> int: ...
    @property
    def playing(self) -> bool: ...
    def put(self, seq: int, timestamp: int, pcm: Pcm | bytes, arrival_ms: int) -> int: ...
    def pull_into(self, out: Pcm | bytearray, now_ms: int) -> int: ...
    def reset(self, clear_stats: bool = False) -> None: ...


IMPLS: dict[str, type[_jitter.JitterBuffer] | type[ref_jitter.JitterBuffer]] = {
    "native": _jitter.JitterBuffer,
    "reference": ref_jitter.JitterBuffer,
}
STATS = (
    "received",
    "lost",
    "late",
    "duplicates",
    "discarded",
    "concealed",
    "inserted",
    "dropped",
    "resyncs",
    "current_delay_ms",
    "target_delay_ms",
    "buffered_frames",
    "last_timestamp",
    "playing",
)


def make(impl: str, **kwargs: int) -> Buffer:
    jb: Buffer = IMPLS[impl](**kwargs)
    return jb


def loud(n_frames: int, seed: int = 1) -> Pcm:
    """Voiced-sounding frames, RMS about 4000."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames * N) / 8000
    wave = rng.normal(0, 200, t.size)
    for h in range(1, 5):
        wave += 5000 / h * np.sin(2 * np.pi * 140 * h * t)
    return np.round(wave).astype(np.int16).reshape(n_frames, N)


def quiet(n_frames: int, seed: int = 2) -> Pcm:
    """Background-noise frames, RMS about 20."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0, 20, n_frames * N)).astype(np.int16).reshape(n_frames, N)


@dataclass(frozen=True)
class Sent:
    index: int
    seq: int
    timestamp: int
    arrival_ms: int


@dataclass(frozen=True)
class Pulled:
    now_ms: int
    kind: int
    pcm: Pcm
    timestamp: int


def packets(
    n_frames: int,
    *,
    seq0: int = 1000,
    ts0: int = 50000,
    delay_ms: int = 30,
    skip: Iterable[int] = (),
    extra_delay: dict[int, int] | None = None,
) -> list[Sent]:
    """One packet per frame, sent every 20 ms, arriving ``delay_ms`` (+extra) later."""
    extra = extra_delay or {}
    missing = set(skip)
    return [
        Sent(
            k,
            (seq0 + k) & 0xFFFF,
            (ts0 + k * N) & 0xFFFFFFFF,
            k * 20 + delay_ms + extra.get(k, 0),
        )
        for k in range(n_frames)
        if k not in missing
    ]


def drive(
    jb: Buffer, audio: Pcm, sent: Sequence[Sent], n_pulls: int, phase_ms: int = 7
) -> tuple[list[Pulled], list[int]]:
    """Deliver ``sent`` in arrival order and pull every 20 ms; return pulls and put results."""
    queue = sorted(sent, key=lambda s: s.arrival_ms)
    out = np.zeros(N, dtype=np.int16)
    pulled: list[Pulled] = []
    statuses: list[int] = []
    j = 0
    for m in range(n_pulls):
        now = phase_ms + 20 * m
        while j < len(queue) and queue[j].arrival_ms <= now:
            s = queue[j]
            statuses.append(jb.put(s.seq, s.timestamp, audio[s.index], s.arrival_ms))
            j += 1
        kind = jb.pull_into(out, now)
        pulled.append(Pulled(now, kind, out.copy(), jb.last_timestamp))
    return pulled, statuses


def index_of(p: Pulled, ts0: int = 50000) -> int:
    return ((p.timestamp - ts0) % 2**32) // N if p.timestamp >= 0 else -1


def kinds(pulled: Sequence[Pulled]) -> list[int]:
    return [p.kind for p in pulled]


def after_start(pulled: Sequence[Pulled]) -> list[Pulled]:
    first = next(i for i, p in enumerate(pulled) if p.kind == FrameKind.NORMAL)
    return list(pulled[first:])


# -- constants ------------------------------------------------------------------


def test_kind_and_status_constants_agree() -> None:
    for module in (_jitter, ref_jitter):
        assert [module.NORMAL, module.CONCEALED, module.INSERTED, module.SILENCE, module.EMPTY] == [
            FrameKind.NORMAL,
            FrameKind.CONCEALED,
            FrameKind.INSERTED,
            FrameKind.SILENCE,
            FrameKind.EMPTY,
        ]
        assert list(PutStatus) == [
            module.PUT_ACCEPTED,
            module.PUT_DUPLICATE,
            module.PUT_LATE,
            module.PUT_DISCARDED,
            module.PUT_RESYNC,
        ]
    assert JitterBuffer is _jitter.JitterBuffer


# -- ordering -------------------------------------------------------------------


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("content", ["loud", "quiet"])
def test_in_order_stream_passes_through_bit_exact(impl: str, content: str) -> None:
    audio = loud(60) if content == "loud" else quiet(60)
    jb = make(impl)
    pulled, statuses = drive(jb, audio, packets(60), n_pulls=63)
    assert set(statuses) == {PutStatus.ACCEPTED}
    assert pulled[0].kind == FrameKind.EMPTY  # buffering to the initial delay
    played = after_start(pulled)
    assert kinds(played[:60]) == [FrameKind.NORMAL] * 60
    for k, p in enumerate(played[:60]):
        assert np.array_equal(p.pcm, audio[k]), f"frame {k}"
        assert index_of(p) == k
    assert jb.lost == jb.late == jb.concealed == jb.inserted == jb.dropped == 0
    assert jb.received == 60
    assert 20 <= jb.current_delay_ms < 40


@pytest.mark.parametrize("impl", list(IMPLS))
def test_reordering_within_the_delay_is_repaired(impl: str) -> None:
    audio = loud(80)
    # every 7th packet arrives 25 ms late, i.e. after its successor
    sent = packets(80, extra_delay={k: 25 for k in range(3, 80, 7)})
    jb = make(impl, min_delay_ms=40)
    pulled, _ = drive(jb, audio, sent, n_pulls=86)
    played = after_start(pulled)
    for k in range(80):
        assert played[k].kind == FrameKind.NORMAL
        assert np.array_equal(played[k].pcm, audio[k])
    assert jb.lost == jb.late == 0


@pytest.mark.parametrize("impl", list(IMPLS))
def test_duplicates_are_dropped_and_counted(impl: str) -> None:
    audio = loud(40)
    once = packets(40)
    twice = once + [Sent(s.index, s.seq, s.timestamp, s.arrival_ms + 5) for s in once]
    reference, _ = drive(make(impl), audio, once, n_pulls=44)
    jb = make(impl)
    pulled, statuses = drive(jb, audio, twice, n_pulls=44)
    assert statuses.count(PutStatus.DUPLICATE) == 40
    assert jb.duplicates == 40
    assert jb.received == 80
    assert all(np.array_equal(a.pcm, b.pcm) for a, b in zip(pulled, reference, strict=True))
    # a copy of a packet that was already played is a duplicate, not a late packet
    assert jb.put(once[0].seq, once[0].timestamp, audio[0], 5000) == PutStatus.DUPLICATE
    assert jb.late == 0


@pytest.mark.parametrize("impl", list(IMPLS))
def test_late_packet_is_dropped_counted_and_concealed(impl: str) -> None:
    audio = loud(50)
    jb = make(impl)
    # frame k is played at pull k + 3; stop with the last one
    pulled, statuses = drive(jb, audio, packets(50, extra_delay={30: 150}), n_pulls=53)
    assert statuses.count(PutStatus.LATE) == 1
    assert jb.late == 1
    assert jb.lost == 1
    assert jb.concealed == 1
    concealed = [p for p in pulled if p.kind == FrameKind.CONCEALED]
    assert [index_of(p) for p in concealed] == [30]


# -- loss -----------------------------------------------------------------------


@pytest.mark.parametrize("impl", list(IMPLS))
def test_single_loss_gives_one_concealed_frame_and_no_silence(impl: str) -> None:
    audio = loud(50)
    jb = make(impl)
    pulled, _ = drive(jb, audio, packets(50, skip=[20]), n_pulls=52)
    played = after_start(pulled)[:50]
    assert [p.kind for p in played].count(FrameKind.CONCEALED) == 1
    assert all(p.kind in (FrameKind.NORMAL, FrameKind.CONCEALED) for p in played)
    concealed = played[20]
    assert concealed.kind == FrameKind.CONCEALED
    assert index_of(concealed) == 20
    rms = np.sqrt(np.mean(concealed.pcm.astype(np.float64) ** 2))
    assert rms > 2000  # audible concealment, not a gap
    assert jb.concealed == 1
    assert jb.lost == 1
    assert np.array_equal(played[19].pcm, audio[19])
    assert np.array_equal(played[22].pcm, audio[22])


@pytest.mark.parametrize("impl", list(IMPLS))
def test_burst_loss_is_concealed_then_silenced(impl: str) -> None:
    audio = loud(60)
    jb = make(impl)
    pulled, _ = drive(jb, audio, packets(60, skip=range(20, 26)), n_pulls=62)
    played = after_start(pulled)
    assert kinds(played[20:26]) == [FrameKind.CONCEALED] * 3 + [FrameKind.SILENCE] * 3
    assert all(not np.any(p.pcm) for p in played[23:26])
    assert played[26].kind == FrameKind.NORMAL
    assert jb.lost == 6
    assert jb.concealed == 3
    assert jb.resyncs == 0


# -- wrap -----------------------------------------------------------------------


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize(
    ("seq0", "ts0"), [(65520, 50000), (1000, 2**32 - 10 * N), (65530, 2**32 - 7 * N - 3)]
)
def test_sequence_and_timestamp_wrap_mid_stream(impl: str, seq0: int, ts0: int) -> None:
    audio = loud(40)
    jb = make(impl)
    pulled, statuses = drive(jb, audio, packets(40, seq0=seq0, ts0=ts0), n_pulls=44)
    assert set(statuses) == {PutStatus.ACCEPTED}
    played = after_start(pulled)
    for k in range(40):
        assert played[k].kind == FrameKind.NORMAL
        assert np.array_equal(played[k].pcm, audio[k])
        assert played[k].timestamp == (ts0 + k * N) % 2**32
    assert jb.lost == jb.resyncs == jb.discarded == 0


@pytest.mark.parametrize("impl", list(IMPLS))
def test_loss_exactly_at_the_sequence_wrap(impl: str) -> None:
    audio = loud(30)
    jb = make(impl)
    sent = packets(30, seq0=65530, skip=[5])  # seq 65535 is lost
    pulled, _ = drive(jb, audio, sent, n_pulls=32)
    played = after_start(pulled)
    assert played[5].kind == FrameKind.CONCEALED
    assert jb.lost == 1
    assert jb.concealed == 1


# -- adaptation -----------------------------------------------------------------


@pytest.mark.parametrize("impl", list(IMPLS))
def test_target_delay_rises_under_jitter_and_playout_moves_only_in_silence(impl: str) -> None:
    # quiet 0..49, loud 50..149, quiet 150..199, loud 200..249, quiet 250..549
    audio = quiet(550)
    audio[50:150] = loud(100)
    audio[200:250] = loud(50, seed=5)
    is_quiet = np.ones(550, dtype=bool)
    is_quiet[50:150] = is_quiet[200:250] = False
    # from frame 50 to 249 every 10th packet is 60 ms late; then the network calms
    spikes = {k: 60 for k in range(55, 250, 10)}
    jb = make(impl)
    pulled, _ = drive(jb, audio, packets(550, extra_delay=spikes), n_pulls=560)
    delay_of = {index_of(p): p.now_ms - index_of(p) * 20 for p in pulled if p.kind == 0}

    first_talk = [delay_of[k] for k in range(50, 150) if k in delay_of]
    second_talk = [delay_of[k] for k in range(200, 250) if k in delay_of]
    assert len(set(first_talk)) == 1  # constant while talking ...
    assert len(set(second_talk)) == 1
    assert second_talk[0] >= first_talk[0] + 20  # ... and grown in the pause between
    assert jb.late == 10  # the spikes of the first talkspurt, before the delay grew
    assert jb.resyncs == 0

    # every insertion and every skipped slot sits inside quiet audio
    played_indices = [index_of(p) for p in pulled if p.kind in (0, 1, 3)]
    skipped = sorted(set(range(played_indices[0], 540)) - set(played_indices))
    assert len(skipped) == jb.dropped > 0  # the delay came back down after the jitter
    assert all(is_quiet[k] for k in skipped)
    for i, p in enumerate(pulled):
        if p.kind == FrameKind.INSERTED:
            before = next(index_of(q) for q in reversed(pulled[:i]) if index_of(q) >= 0)
            after = next(index_of(q) for q in pulled[i:] if index_of(q) >= 0)
            assert is_quiet[before] and is_quiet[after]
    assert jb.inserted >= 1


@pytest.mark.parametrize("impl", list(IMPLS))
def test_target_delay_tracks_the_95th_percentile(impl: str) -> None:
    rng = np.random.default_rng(9)
    jitter = {k: int(rng.integers(0, 81)) for k in range(200)}
    jb = make(impl)
    drive(jb, quiet(200), packets(200, extra_delay=jitter), n_pulls=205)
    window = [jitter[k] for k in range(200) if (k * 20 + 30 + jitter[k]) >= 200 * 20 - 2000]
    assert abs(jb.target_delay_ms - np.percentile(window, 95)) <= 8
    assert jb.current_delay_ms >= jb.target_delay_ms


@pytest.mark.parametrize("impl", list(IMPLS))
def test_target_is_clamped_to_the_configured_range(impl: str) -> None:
    jitter = {k: 300 * (k % 2) for k in range(100)}
    jb = make(impl, min_delay_ms=40, max_delay_ms=120)
    drive(jb, quiet(100), packets(100, extra_delay=jitter), n_pulls=100)
    assert jb.target_delay_ms == 120
    calm = make(impl, min_delay_ms=40, max_delay_ms=120)
    drive(calm, quiet(100), packets(100), n_pulls=100)
    assert calm.target_delay_ms == 40


@pytest.mark.parametrize("impl", list(IMPLS))
def test_no_adaptation_when_silence_detection_is_off(impl: str) -> None:
    spikes = {k: 60 for k in range(5, 200, 10)}
    jb = make(impl, silence_rms=0)
    drive(jb, quiet(200), packets(200, extra_delay=spikes), n_pulls=205)
    assert jb.target_delay_ms >= 60
    assert jb.inserted == jb.dropped == 0


# -- gaps, restarts -------------------------------------------------------------


@pytest.mark.parametrize("impl", list(IMPLS))
def test_dtx_gap_plays_silence_and_resumes_without_resync(impl: str) -> None:
    audio = loud(100)
    # frames 30..79 are never sent (silence suppression): timestamps jump, seq does not
    sent = [
        Sent(k, 1000 + (k if k < 30 else k - 50), 50000 + k * N, k * 20 + 30)
        for k in range(100)
        if not 30 <= k < 80
    ]
    jb = make(impl)
    pulled, statuses = drive(jb, audio, sent, n_pulls=104)
    assert set(statuses) == {PutStatus.ACCEPTED}
    played = after_start(pulled)
    assert kinds(played[30:80]) == [FrameKind.CONCEALED] * 3 + [FrameKind.SILENCE] * 47
    for k in range(80, 100):
        assert played[k].kind == FrameKind.NORMAL
        assert index_of(played[k]) == k
    assert np.array_equal(played[81].pcm, audio[81])
    assert jb.lost == 0
    assert jb.resyncs == 0


@pytest.mark.parametrize("impl", list(IMPLS))
def test_sender_restart_resyncs_after_two_packets(impl: str) -> None:
    audio = loud(80)
    first = packets(40)
    second = [
        Sent(k, (40000 + k) & 0xFFFF, (123456789 + k * N) & 0xFFFFFFFF, k * 20 + 30)
        for k in range(40, 80)
    ]
    jb = make(impl)
    pulled, statuses = drive(jb, audio, first + second, n_pulls=85)
    assert statuses[40] == PutStatus.DISCARDED  # one packet is not a restart yet
    assert statuses[41] == PutStatus.RESYNC
    assert set(statuses[42:]) == {PutStatus.ACCEPTED}
    assert jb.resyncs == 1
    assert jb.discarded == 1
    new_stream = [
        ((p.timestamp - 123456789) % 2**32 // N, p)
        for p in pulled
        if p.kind == FrameKind.NORMAL and (p.timestamp - 123456789) % 2**32 < 100 * N
    ]
    assert [k for k, _ in new_stream] == list(range(41, 80))
    for k, p in new_stream:
        assert np.array_equal(p.pcm, audio[k])


@pytest.mark.parametrize("impl", list(IMPLS))
def test_timestamp_jump_in_sequence_resyncs(impl: str) -> None:
    audio = loud(60)
    sent = [
        Sent(k, 1000 + k, 50000 + k * N + (40000 * N if k >= 30 else 0), k * 20 + 30)
        for k in range(60)
    ]
    jb = make(impl)
    pulled, statuses = drive(jb, audio, sent, n_pulls=64)
    assert statuses[30] == PutStatus.RESYNC
    assert jb.resyncs == 1
    tail = [p for p in pulled if p.kind == FrameKind.NORMAL][-20:]
    for p in tail:
        k = ((p.timestamp - 50000 - 40000 * N) % 2**32) // N
        assert np.array_equal(p.pcm, audio[k])


@pytest.mark.parametrize("impl", list(IMPLS))
def test_reset_starts_a_new_stream(impl: str) -> None:
    audio = loud(60)
    jb = make(impl)
    drive(jb, audio, packets(30), n_pulls=30)
    received = jb.received
    jb.reset()
    out = np.zeros(N, dtype=np.int16)
    assert jb.pull_into(out, 700) == FrameKind.EMPTY
    assert not np.any(out)
    assert jb.received == received  # counters survive a reset ...
    assert jb.buffered_frames == 0
    assert not jb.playing
    assert jb.put(7, 999, audio[0], 710) == PutStatus.ACCEPTED
    jb.reset(clear_stats=True)  # ... unless asked
    assert jb.received == 0
    pulled, statuses = drive(jb, audio, packets(30, seq0=7, ts0=999), n_pulls=34)
    assert set(statuses) == {PutStatus.ACCEPTED}
    played = after_start(pulled)
    assert all(np.array_equal(played[k].pcm, audio[k]) for k in range(30))


@pytest.mark.parametrize("impl", list(IMPLS))
def test_before_any_packet_pulls_are_empty(impl: str) -> None:
    jb = make(impl)
    out = np.full(N, 5, dtype=np.int16)
    assert jb.pull_into(out, 0) == FrameKind.EMPTY
    assert not np.any(out)
    assert jb.last_timestamp == -1
    assert jb.target_delay_ms == 20


# -- bad input --------------------------------------------------------------------


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize(
    "kwargs",
    [
        {"clock_rate_hz": 7000},
        {"clock_rate_hz": -8000},
        {"frame_ms": 25},
        {"frame_ms": 0},
        {"min_delay_ms": -1},
        {"max_delay_ms": -5},
        {"min_delay_ms": 100, "max_delay_ms": 50},
        {"max_delay_ms": 999_999},
        {"capacity_frames": 4},
        {"capacity_frames": 0},
        {"capacity_frames": 1 << 20},
        {"silence_rms": -1},
        {"silence_rms": 40000},
        {"min_delay_ms": float("nan")},
        {"max_delay_ms": 200.0},
        {"capacity_frames": True},
        {"frame_ms": "20"},
    ],
)
def test_bad_configuration_is_refused(impl: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        IMPLS[impl](**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize(
    "args",
    [
        (-1, 0, np.zeros(N, np.int16), 0),
        (65536, 0, np.zeros(N, np.int16), 0),
        (1.0, 0, np.zeros(N, np.int16), 0),
        (True, 0, np.zeros(N, np.int16), 0),
        (1, -1, np.zeros(N, np.int16), 0),
        (1, 2**32, np.zeros(N, np.int16), 0),
        (1, float("nan"), np.zeros(N, np.int16), 0),
        (1, 0, np.zeros(N, np.int16), float("nan")),
        (1, 0, np.zeros(N, np.int16), 2**41),
        (1, 0, np.zeros(N, np.int16), "0"),
        (1, 0, np.zeros(N - 1, np.int16), 0),
        (1, 0, np.zeros(N + 1, np.int16), 0),
        (1, 0, bytes(2 * N - 1), 0),
        (1, 0, np.zeros(N, np.float32), 0),
        (1, 0, np.zeros(N, np.int32), 0),
        (1, 0, np.zeros(2 * N, np.int16)[::2], 0),
        (1, 0, None, 0),
        (1, 0, [0] * N, 0),
    ],
)
def test_bad_packets_are_refused_without_side_effects(impl: str, args: tuple[object, ...]) -> None:
    jb = make(impl)
    with pytest.raises(ValueError):
        jb.put(*args)  # type: ignore[arg-type]
    assert jb.received == 0
    out = np.zeros(N, dtype=np.int16)
    assert jb.pull_into(out, 0) == FrameKind.EMPTY


@pytest.mark.parametrize("impl", list(IMPLS))
def test_bad_output_buffers_are_refused(impl: str) -> None:
    jb = make(impl)
    jb.put(1, 0, np.zeros(N, np.int16), 0)
    frozen = np.zeros(N, dtype=np.int16)
    frozen.flags.writeable = False
    for out in (np.zeros(N - 1, np.int16), np.zeros(N, np.float64), bytes(2 * N), frozen, None):
        with pytest.raises(ValueError):
            jb.pull_into(out, 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        jb.pull_into(np.zeros(N, np.int16), 1.5)  # type: ignore[arg-type]
    assert not jb.playing  # nothing was pulled
    assert jb.pull_into(bytearray(2 * N), 25) == FrameKind.NORMAL  # bytes-like works


def test_bytes_and_numpy_packets_are_equivalent() -> None:
    audio = loud(30)
    a = JitterBuffer()
    b = JitterBuffer()
    oa = np.zeros(N, np.int16)
    ob = np.zeros(N, np.int16)
    for k in range(30):
        a.put(k, k * N, audio[k], k * 20)
        b.put(k, k * N, audio[k].tobytes(), k * 20)
        assert a.pull_into(oa, k * 20 + 5) == b.pull_into(ob, k * 20 + 5)
        assert np.array_equal(oa, ob)


# -- statistics, allocation ---------------------------------------------------------


def test_stats_snapshot() -> None:
    jb = JitterBuffer()
    drive(jb, loud(30), packets(30, skip=[10]), n_pulls=32)
    stats = JitterStats.of(jb)
    assert stats.received == 29
    assert stats.lost == 1
    assert stats.concealed == 1
    assert stats.target_delay_ms == jb.target_delay_ms


def test_put_and_pull_do_not_allocate() -> None:
    audio = loud(64)
    jb = JitterBuffer()
    out = np.zeros(N, dtype=np.int16)
    frames = [audio[k] for k in range(64)]
    for k in range(200):  # warm up: caches, numpy buffer info
        if k % 17 != 5:
            jb.put(k & 0xFFFF, k * N, frames[k % 64], k * 20)
        jb.pull_into(out, k * 20 + 7)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for k in range(200, 1200):
            if k % 17 != 5:  # with losses, so concealment runs too
                jb.put(k & 0xFFFF, k * N, frames[k % 64], k * 20)
            jb.pull_into(out, k * 20 + 7)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert jb.concealed > 50
    assert after - before < 512
    assert peak - before < 2048


# -- native == reference ----------------------------------------------------------


@st.composite
def traces(draw: st.DrawFn) -> dict[str, int]:
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "frame_ms": draw(st.sampled_from([10, 20, 30])),
        "rate_hz": draw(st.sampled_from([8000, 16000])),
        "seq0": draw(st.one_of(st.integers(0, 65535), st.integers(65500, 65535))),
        "ts0": draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 20000, 2**32 - 1))),
        "n_packets": draw(st.integers(5, 160)),
        "jitter_ms": draw(st.sampled_from([0, 10, 40, 120, 400])),
        "loss_pct": draw(st.sampled_from([0, 2, 10, 40])),
        "dup_pct": draw(st.sampled_from([0, 5, 30])),
        "jump_pct": draw(st.sampled_from([0, 1, 5])),
        "min_delay_ms": draw(st.sampled_from([0, 20, 60])),
        "silence_rms": draw(st.sampled_from([0, 150, 3000])),
        "phase_ms": draw(st.integers(0, 29)),
    }


@settings(max_examples=120, deadline=None)
@given(traces())
def test_native_matches_reference(case: dict[str, int]) -> None:
    rng = np.random.default_rng(case["seed"])
    frame_ms = case["frame_ms"]
    n = case["rate_hz"] * frame_ms // 1000
    kwargs = {
        "clock_rate_hz": case["rate_hz"],
        "frame_ms": frame_ms,
        "min_delay_ms": case["min_delay_ms"],
        "max_delay_ms": 200,
        "capacity_frames": 32 if frame_ms >= 20 else 64,
        "silence_rms": case["silence_rms"],
    }
    native = _jitter.JitterBuffer(**kwargs)
    reference = ref_jitter.JitterBuffer(**kwargs)
    events: list[tuple[int, int, int, int, Pcm | None]] = []  # (time, order, seq, ts, pcm)
    seq, ts = case["seq0"], case["ts0"]
    for k in range(case["n_packets"]):
        level = [0, 20, 4000][int(rng.integers(0, 3))] if k % 8 == 0 else None
        amplitude = level if level is not None else 4000
        frame = np.round(rng.normal(0, amplitude, n)).astype(np.int16)
        if rng.random() < case["jump_pct"] / 100:
            seq = int(rng.integers(0, 65536))
        if rng.random() < case["jump_pct"] / 100:
            ts = int(rng.integers(0, 2**32))
        if rng.random() >= case["loss_pct"] / 100:
            arrival = k * frame_ms + int(rng.integers(0, case["jitter_ms"] + 1))
            events.append((arrival, 0, seq, ts, frame))
            if rng.random() < case["dup_pct"] / 100:
                events.append((arrival + int(rng.integers(0, 60)), 0, seq, ts, frame))
        seq = (seq + 1) & 0xFFFF
        ts = (ts + n * int(rng.choice([1, 1, 1, 1, 2, 3]))) & 0xFFFFFFFF
    end = case["n_packets"] * frame_ms + case["jitter_ms"] + 300
    events += [(t, 1, 0, 0, None) for t in range(case["phase_ms"], end, frame_ms)]
    events.sort(key=lambda e: (e[0], e[1]))
    out_a = np.zeros(n, dtype=np.int16)
    out_b = np.zeros(n, dtype=np.int16)
    for step, (now, order, s, t, pcm) in enumerate(events):
        if order == 0:
            assert pcm is not None
            assert native.put(s, t, pcm, now) == reference.put(s, t, pcm.tobytes(), now)
        else:
            assert native.pull_into(out_a, now) == reference.pull_into(out_b, now), step
            assert np.array_equal(out_a, out_b), f"output differs at step {step}"
        for name in STATS:
            assert getattr(native, name) == getattr(reference, name), (step, name)
