"""Deterministic network traces for the jitter buffer, and a quality comparison.

A trace is a speech-like int16 signal cut into 20 ms packets plus, for each
packet that survives the simulated network, its sequence number, RTP timestamp,
send time and arrival time (all seeded, so every run is identical).  The
sequence numbers start just below 65535 so every trace crosses the 16-bit wrap.

:func:`compare_on_traces` plays each trace through voxgate's
:class:`engine.jitter.JitterBuffer` (pulled on a steady 20 ms clock) and through
``aiortc.jitterbuffer.JitterBuffer(capacity=16, prefetch=4)`` fed packet by packet
as ``RTCRtpReceiver`` feeds it, and scores both the same way:

* ``frames_lost``: frames of the signal never played, neither real nor
  concealed at their slot, up to the last frame the implementation played (and
  not in the last :data:`TAIL_FRAMES`): frames still held back when the trace
  ends, as aiortc's prefetch does, are late rather than lost.
* ``stall_ms``: time the output stopped.  voxgate: pulls that produced SILENCE
  or EMPTY after playout began.  aiortc has no clock of its own, so its frames
  are played by a consumer taking one frame per 20 ms as soon as one is
  available; ``stall_ms`` is the time that consumer waited with nothing to
  play.  ``stall_ms_per_loss`` divides by the packets the network lost (by
  ``max(1, lost)``, so for loss-free traces it is the total stall).
* ``mean_delay_ms``: mean of play time minus send time over real frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from aiortc.jitterbuffer import JitterBuffer as AiortcJitterBuffer
from aiortc.rtp import RtpPacket

from engine.jitter import FrameKind, JitterBuffer

Pcm = npt.NDArray[np.int16]

RATE_HZ: Final = 8000
FRAME_MS: Final = 20
FRAME_SAMPLES: Final = RATE_HZ * FRAME_MS // 1000
BASE_DELAY_MS: Final = 30
"""One-way network delay every packet has, before jitter."""
PULL_PHASE_MS: Final = 7
"""Offset of the playout clock's ticks from the sender's frame boundaries."""
TAIL_FRAMES: Final = 8
"""Frames at the end of a trace that are not scored."""
SEQ_START: Final = 65535 - 40
TS_START: Final = 2**32 - 160 * 25
"""The first timestamp: the 32-bit wrap falls 25 frames into the trace."""


class PullBuffer(Protocol):
    """What :func:`run_voxgate` needs of a jitter buffer (native or reference)."""

    def put(self, seq: int, timestamp: int, pcm: Pcm, arrival_ms: int) -> int: ...
    def pull_into(self, out: Pcm, now_ms: int) -> int: ...
    @property
    def last_timestamp(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet as it arrives: ``index`` is its frame's position in the signal."""

    index: int
    seq: int
    timestamp: int
    send_ms: int
    arrival_ms: int


@dataclass(frozen=True, slots=True)
class Network:
    """How a trace's packets are lost, delayed and reordered (all seeded)."""

    loss: float = 0.0
    """Independent loss probability per packet."""
    burst_enter: float = 0.0
    """Gilbert model: probability of entering the lossy state per packet."""
    burst_leave: float = 1.0
    """Gilbert model: probability of leaving the lossy state per packet."""
    jitter_ms: int = 0
    """Delay varies uniformly over ``BASE_DELAY_MS + [0, 2 * jitter_ms]``."""
    fifo: bool = True
    """Packets leave the network in order (a queue); otherwise delays are independent."""
    swap: float = 0.0
    """Probability that a packet is swapped with the next one."""


NETWORKS: Final[dict[str, Network]] = {
    "clean": Network(jitter_ms=2),
    "loss_1pct": Network(loss=0.01, jitter_ms=3),
    "loss_5pct": Network(loss=0.05, jitter_ms=3),
    "bursty_loss": Network(burst_enter=0.01, burst_leave=0.4, jitter_ms=3),
    "jitter_40ms": Network(jitter_ms=40),
    "jitter_reorder": Network(loss=0.005, jitter_ms=40, fifo=False, swap=0.02),
    "loss_5pct_jitter_40ms": Network(loss=0.05, jitter_ms=40),
}
"""The named traces, in report order (a trace's seed depends on its position: add
new ones at the end, so the others stay the same)."""


@dataclass(frozen=True, slots=True)
class Trace:
    """A signal and the packets of it that reach the receiver, in arrival order."""

    name: str
    audio: Pcm
    """Shape (n_frames, FRAME_SAMPLES): the frames as sent."""
    packets: tuple[Packet, ...]
    lost: frozenset[int]
    """Frame indices the network dropped."""

    @property
    def n_frames(self) -> int:
        return int(self.audio.shape[0])

    @property
    def scored(self) -> range:
        """Frame indices that are scored."""
        return range(self.n_frames - TAIL_FRAMES)

    def index_of(self, timestamp: int) -> int:
        """The frame index of an RTP timestamp of this trace."""
        return ((timestamp - TS_START) % 2**32) // FRAME_SAMPLES


def speech_like(n_frames: int, seed: int) -> Pcm:
    """Talkspurts of a voiced, harmonic, pitch-gliding signal between quiet pauses."""
    rng = np.random.default_rng(seed)
    total = n_frames * FRAME_SAMPLES
    signal = rng.normal(0.0, 20.0, total)  # background noise, about -64 dBFS
    pos = RATE_HZ * 400 // 1000
    while pos < total:
        length = int(rng.integers(600, 1600)) * RATE_HZ // 1000
        t = np.arange(length) / RATE_HZ
        f0 = rng.uniform(100.0, 220.0) * (1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        phase = np.cumsum(2 * np.pi * f0 / RATE_HZ)
        voiced = sum(np.sin(h * phase) / h for h in range(1, 9))
        ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.03)
        syllables = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t) ** 2
        end = min(total, pos + length)
        signal[pos:end] += (5000.0 * voiced * ramp * syllables)[: end - pos]
        pos += length + int(rng.integers(300, 800)) * RATE_HZ // 1000
    pcm: Pcm = np.clip(np.round(signal), -32768, 32767).astype(np.int16)
    return pcm.reshape(n_frames, FRAME_SAMPLES)


def make_trace(name: str, n_frames: int = 1500, seed: int = 1) -> Trace:
    """The named trace (see :data:`NETWORKS`), ``n_frames`` frames long."""
    net = NETWORKS[name]
    rng = np.random.default_rng([seed, list(NETWORKS).index(name)])
    audio = speech_like(n_frames, seed)
    lost: set[int] = set()
    bad = False
    arrivals: list[tuple[int, int]] = []  # (arrival_ms, index)
    last_arrival = 0
    for k in range(n_frames):
        bad = (rng.random() >= net.burst_leave) if bad else (rng.random() < net.burst_enter)
        dropped = bad or rng.random() < net.loss
        send_ms = k * FRAME_MS
        delay = BASE_DELAY_MS + (
            int(rng.integers(0, 2 * net.jitter_ms + 1)) if net.jitter_ms else 0
        )
        arrival = send_ms + delay
        if net.fifo:
            arrival = max(arrival, last_arrival)
        if dropped:
            lost.add(k)
            continue
        last_arrival = arrival
        arrivals.append((arrival, k))
    arrivals.sort()
    order = [k for _, k in arrivals]
    times = [t for t, _ in arrivals]
    for j in range(len(order) - 1):
        if rng.random() < net.swap:
            order[j], order[j + 1] = order[j + 1], order[j]
    packets = tuple(
        Packet(
            index=k,
            seq=(SEQ_START + k) & 0xFFFF,
            timestamp=(TS_START + k * FRAME_SAMPLES) & 0xFFFFFFFF,
            send_ms=k * FRAME_MS,
            arrival_ms=max(t, k * FRAME_MS + BASE_DELAY_MS),
        )
        for t, k in zip(times, order, strict=True)
    )
    packets = tuple(sorted(packets, key=lambda p: p.arrival_ms))
    return Trace(name=name, audio=audio, packets=packets, lost=frozenset(lost))


def all_traces(n_frames: int = 1500, seed: int = 1) -> list[Trace]:
    """Every named trace, in report order."""
    return [make_trace(name, n_frames, seed) for name in NETWORKS]


# -- playing a trace ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Playout:
    """What an implementation played: ``(time_ms, kind, frame index or -1)`` per frame."""

    frames: tuple[tuple[int, int, int], ...]
    stall_ms: int


def pull_times(trace: Trace) -> range:
    """The playout clock's ticks for a trace (until everything could have been played)."""
    end = max(p.arrival_ms for p in trace.packets) + 400
    return range(PULL_PHASE_MS, end, FRAME_MS)


def run_voxgate(trace: Trace, make_buffer: Callable[[], PullBuffer] = JitterBuffer) -> Playout:
    """Play ``trace`` through a voxgate-style buffer pulled every 20 ms."""
    jb = make_buffer()
    out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    played: list[tuple[int, int, int]] = []
    packets = trace.packets
    j = 0
    started = False
    last_scored = trace.scored.stop - 1
    stall = 0
    done = False
    for now in pull_times(trace):
        while j < len(packets) and packets[j].arrival_ms <= now:
            p = packets[j]
            jb.put(p.seq, p.timestamp, trace.audio[p.index], p.arrival_ms)
            j += 1
        kind = jb.pull_into(out, now)
        index = trace.index_of(jb.last_timestamp) if jb.last_timestamp >= 0 else -1
        played.append((now, kind, index))
        if kind == FrameKind.NORMAL:
            started = True
        elif started and not done and kind in (FrameKind.SILENCE, FrameKind.EMPTY):
            stall += FRAME_MS
        if index >= last_scored and kind in (FrameKind.NORMAL, FrameKind.CONCEALED):
            done = True
    return Playout(frames=tuple(played), stall_ms=stall)


def aiortc_packets(trace: Trace) -> list[RtpPacket]:
    """The trace as the ``RtpPacket``s ``RTCRtpReceiver`` hands its jitter buffer."""
    packets = []
    for p in trace.packets:
        payload = trace.audio[p.index].tobytes()
        rtp = RtpPacket(
            payload_type=0, sequence_number=p.seq, timestamp=p.timestamp, payload=payload
        )
        rtp._data = payload  # type: ignore[attr-defined]  # where RTCRtpReceiver puts it
        packets.append(rtp)
    return packets


def run_aiortc(trace: Trace) -> Playout:
    """Feed ``trace`` to aiortc's audio jitter buffer and play what it emits.

    A consumer plays one 20 ms frame at a time as soon as the buffer has emitted
    one; whenever it has nothing, the output stalls.
    """
    jb = AiortcJitterBuffer(capacity=16, prefetch=4)
    played: list[tuple[int, int, int]] = []
    free_at: int | None = None  # when the consumer finishes its current frame
    stall = 0
    last_scored = trace.scored.stop - 1
    done = False
    for p, rtp in zip(trace.packets, aiortc_packets(trace), strict=True):
        _, frame = jb.add(rtp)
        if frame is None:
            continue
        index = trace.index_of(frame.timestamp)
        start = p.arrival_ms if free_at is None else max(p.arrival_ms, free_at)
        if free_at is not None and start > free_at and not done:
            stall += start - free_at
        free_at = start + FRAME_MS
        played.append((start, int(FrameKind.NORMAL), index))
        done = done or index >= last_scored
    return Playout(frames=tuple(played), stall_ms=stall)


def score(trace: Trace, impl: str, playout: Playout) -> dict[str, object]:
    """One comparison row for ``playout`` of ``trace``."""
    covered = {
        index
        for _, kind, index in playout.frames
        if kind in (FrameKind.NORMAL, FrameKind.CONCEALED) and index >= 0
    }
    delays = [
        now - index * FRAME_MS for now, kind, index in playout.frames if kind == FrameKind.NORMAL
    ]
    # frames after the last one played are still on their way (aiortc holds
    # prefetch frames back until later packets arrive), not lost
    last_played = max((index for _, _, index in playout.frames), default=-1)
    scored = range(min(trace.scored.stop, last_played + 1))
    lost = len(trace.lost & set(trace.scored))
    frames_out = sum(
        1
        for _, kind, index in playout.frames
        if kind in (FrameKind.NORMAL, FrameKind.CONCEALED) and 0 <= index < trace.n_frames
    )
    return {
        "trace": trace.name,
        "impl": impl,
        "packets": len(trace.packets),
        "lost_packets": lost,
        "frames_out": frames_out,
        "frames_lost": sum(1 for k in scored if k not in covered),
        "concealed": sum(
            1
            for _, kind, index in playout.frames
            if kind == FrameKind.CONCEALED and 0 <= index < trace.scored.stop
        ),
        "stall_ms": playout.stall_ms,
        "stall_ms_per_loss": round(playout.stall_ms / max(1, lost), 1),
        "mean_delay_ms": round(float(np.mean(delays)), 1) if delays else 0.0,
    }


def compare_on_traces(n_frames: int = 1500, seed: int = 1) -> list[dict[str, object]]:
    """voxgate versus aiortc on every named trace: one row per (trace, impl)."""
    rows: list[dict[str, object]] = []
    for trace in all_traces(n_frames, seed):
        rows.append(score(trace, "voxgate", run_voxgate(trace)))
        rows.append(score(trace, "aiortc", run_aiortc(trace)))
    return rows


def single_loss_trace(n_packets: int = 60, lost_seq: int = 20) -> Trace:
    """The spec's probe: packets 0..n-1 at 20 ms steps without jitter, one lost."""
    audio = speech_like(n_packets, seed=7)
    packets = tuple(
        Packet(
            index=k,
            seq=(SEQ_START + k) & 0xFFFF,
            timestamp=(TS_START + k * FRAME_SAMPLES) & 0xFFFFFFFF,
            send_ms=k * FRAME_MS,
            arrival_ms=k * FRAME_MS,
        )
        for k in range(n_packets)
        if k != lost_seq
    )
    return Trace(name="single_loss", audio=audio, packets=packets, lost=frozenset({lost_seq}))


def format_rows(rows: list[dict[str, object]]) -> str:
    """The comparison as a plain-text table."""
    keys = list(rows[0])
    cells = [[str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cs, widths, strict=True)) for cs in cells]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_rows(compare_on_traces()))
