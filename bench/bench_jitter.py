"""Jitter buffer: cost of put + pull per 20 ms frame, and loss handling against aiortc.

Timing group ``jitter_buffer``: one call plays a whole 10 s trace (500 frames,
±40 ms jitter with reordering and 0.5 % loss, from :mod:`bench.jitter_traces`)
through a fresh buffer.

* ``voxgate``: :class:`engine.jitter.JitterBuffer`, ``put`` per packet as it
  arrives and ``pull_into`` a preallocated array every 20 ms (with concealment).
* ``python_reference``: :class:`engine.reference.jitter.JitterBuffer`, same calls.
* ``aiortc``: ``aiortc.jitterbuffer.JitterBuffer(capacity=16, prefetch=4)``,
  ``add`` per packet as ``RTCRtpReceiver`` does (it has no pull side; the
  packets are built beforehand, as the receiver parses them anyway).

The voxgate entry also attaches :func:`bench.jitter_traces.compare_on_traces`
as a quality table (``extra_info["table_title"/"table_rows"]``).  The other
``test_*`` functions check loss handling on the traces: the spec's aiortc
measurement (one lost packet costs about five frames and a ~320 ms stall) is
reproduced, and voxgate must beat aiortc on frames lost and stall on every lossy
trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from aiortc.jitterbuffer import JitterBuffer as AiortcJitterBuffer
from aiortc.rtp import RtpPacket

from bench.conftest import Measure
from bench.jitter_traces import (
    FRAME_MS,
    FRAME_SAMPLES,
    NETWORKS,
    PullBuffer,
    Trace,
    aiortc_packets,
    compare_on_traces,
    make_trace,
    pull_times,
    run_aiortc,
    run_voxgate,
    score,
    single_loss_trace,
)
from engine.jitter import FrameKind, JitterBuffer
from engine.reference.jitter import JitterBuffer as ReferenceJitterBuffer

TIMED_TRACE = "jitter_reorder"
TIMED_FRAMES = 500
IMPLS = ["voxgate", "python_reference", "aiortc"]

# (0, seq, timestamp, pcm, arrival_ms) for a packet, (1, now_ms, 0, None, 0) for a pull
Event = tuple[int, int, int, np.ndarray | None, int]


def trace_events(trace: Trace) -> list[Event]:
    """Packets at their arrival times interleaved with the 20 ms pulls."""
    rows = [trace.audio[k] for k in range(trace.n_frames)]
    events: list[Event] = []
    j = 0
    for now in pull_times(trace):
        while j < len(trace.packets) and trace.packets[j].arrival_ms <= now:
            p = trace.packets[j]
            events.append((0, p.seq, p.timestamp, rows[p.index], p.arrival_ms))
            j += 1
        events.append((1, now, 0, None, 0))
    return events


def play_events(make_buffer: Callable[[], PullBuffer], events: list[Event]) -> list[int]:
    """Run ``events`` through a fresh buffer; return the kinds pulled."""
    jb = make_buffer()
    out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    put = jb.put
    pull_into = jb.pull_into
    played = []
    for op, a, b, pcm, arrival in events:
        if op == 0:
            put(a, b, pcm, arrival)  # type: ignore[arg-type]
        else:
            played.append(pull_into(out, a))
    return played


def add_packets(packets: list[RtpPacket]) -> int:
    """Feed ``packets`` to a fresh aiortc audio jitter buffer; return frames emitted."""
    jb = AiortcJitterBuffer(capacity=16, prefetch=4)
    emitted = 0
    for packet in packets:
        _, frame = jb.add(packet)
        if frame is not None:
            emitted += 1
    return emitted


def outputs(make_buffer: Callable[[], PullBuffer], events: list[Event]) -> list[bytes]:
    jb = make_buffer()
    out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    frames = []
    for op, a, b, pcm, arrival in events:
        if op == 0:
            jb.put(a, b, pcm, arrival)  # type: ignore[arg-type]
        else:
            jb.pull_into(out, a)
            frames.append(out.tobytes())
    return frames


QUALITY_TITLE = (
    "jitter buffer vs aiortc on 30 s traces: frames never played, output stall, "
    "concealment, mean delay"
)


@pytest.mark.benchmark(group="jitter_buffer")
@pytest.mark.parametrize("impl", IMPLS)
def test_jitter_buffer(measure: Measure, benchmark: Any, impl: str) -> None:
    trace = make_trace(TIMED_TRACE, n_frames=TIMED_FRAMES)
    events = trace_events(trace)
    frames = trace.n_frames
    if impl == "aiortc":
        packets = aiortc_packets(trace)
        by_ts = {p.timestamp: trace.audio[p.index].tobytes() for p in trace.packets}
        check = AiortcJitterBuffer(capacity=16, prefetch=4)
        for packet in packets:  # what aiortc emits is the frames it was given
            _, frame = check.add(packet)
            if frame is not None:
                assert frame.data == by_ts[frame.timestamp]
        emitted = measure("aiortc", add_packets, packets, frames=frames)
        assert emitted > 0.9 * frames
        return
    make: Callable[[], PullBuffer] = JitterBuffer if impl == "voxgate" else ReferenceJitterBuffer
    if impl == "voxgate":  # native and reference play the trace identically
        assert outputs(JitterBuffer, events) == outputs(ReferenceJitterBuffer, events)
        # the loss-handling comparison, printed by `voxgate bench engine`
        benchmark.extra_info["table_title"] = QUALITY_TITLE
        benchmark.extra_info["table_rows"] = compare_on_traces()
    kinds = measure(impl, play_events, make, events, frames=frames)
    assert kinds.count(FrameKind.NORMAL) > 0.9 * frames


# -- loss handling on the traces -------------------------------------------------


def test_aiortc_single_loss_reproduces_the_spec_measurement() -> None:
    trace = single_loss_trace()
    playout = run_aiortc(trace)
    row = score(trace, "aiortc", playout)
    emitted = [index for _, _, index in playout.frames]
    assert emitted[:16] == list(range(16))
    assert 16 not in emitted and 19 not in emitted  # frames 16-19 never come out
    assert row["frames_lost"] == 5  # 16..19 plus the lost 20
    # frame 15 comes out at arrival step 19, frame 21 only at step 35: 320 ms
    # between emissions, of which 300 ms with nothing to play
    times = {index: t for t, _, index in playout.frames}
    assert times[21] - times[15] == 320
    assert row["stall_ms"] == 300


def test_voxgate_single_loss_conceals_one_frame_without_stall() -> None:
    trace = single_loss_trace()
    row = score(trace, "voxgate", run_voxgate(trace))
    assert row["frames_lost"] == 0
    assert row["stall_ms"] == 0
    assert row["concealed"] == 1


def test_voxgate_beats_aiortc_on_every_lossy_trace() -> None:
    rows = compare_on_traces()
    by_trace: dict[str, dict[str, dict[str, object]]] = {}
    for row in rows:
        by_trace.setdefault(str(row["trace"]), {})[str(row["impl"])] = row
    assert list(by_trace) == list(NETWORKS)
    lossy = [name for name, pair in by_trace.items() if pair["voxgate"]["lost_packets"] != 0]
    assert set(lossy) >= {"loss_1pct", "loss_5pct", "bursty_loss", "jitter_reorder"}
    for name in lossy:
        vox, aio = by_trace[name]["voxgate"], by_trace[name]["aiortc"]
        assert int(vox["frames_lost"]) < int(aio["frames_lost"]), name  # type: ignore[call-overload]
        assert int(vox["stall_ms"]) < int(aio["stall_ms"]), name  # type: ignore[call-overload]
    for name in ("loss_1pct", "loss_5pct"):  # isolated losses: one concealed frame each
        vox = by_trace[name]["voxgate"]
        assert vox["frames_lost"] == 0
        assert vox["stall_ms"] == 0
        assert vox["concealed"] == vox["lost_packets"]
    assert by_trace["clean"]["voxgate"]["concealed"] == 0
    assert FRAME_MS == 20
