"""Playout queue: one 20 ms mu-law frame through the queue (push it, pop it).

Group ``playout_pop``.  Impls: ``voxgate`` (:class:`engine.playout.PlayoutQueue`
over the native frame buffer, popping into a preallocated bytearray) and
``deque`` (the naive queue: a ``deque`` of ``bytes`` frames cut from a
``bytearray`` of pending audio, with the same generation check, pause flag,
played count and mark check, so both do the same job).  The queue holds
200 ms when timing starts, as it would mid-utterance.
"""

from __future__ import annotations

from collections import deque

import pytest

from bench.conftest import Measure
from engine import PCMU8K
from engine.playout import PlayoutQueue

FRAME_BYTES = 160
IMPLS = ["voxgate", "deque"]


class DequePlayout:
    """The usual first version of a playout queue."""

    def __init__(self, frame_bytes: int) -> None:
        self.frame_bytes = frame_bytes
        self.frames: deque[bytes] = deque()
        self.pending = bytearray()
        self.generation = 0
        self.paused = False
        self.played = 0
        self.marks: deque[tuple[int, str]] = deque()
        self.played_marks: list[str] = []

    def push(self, chunk: bytes, generation: int) -> bool:
        if generation < self.generation:
            return False
        self.generation = generation
        self.pending += chunk
        n = self.frame_bytes
        while len(self.pending) >= n:
            self.frames.append(bytes(self.pending[:n]))
            del self.pending[:n]
        return True

    def pop_into(self, out: bytearray) -> bool:
        if self.paused or not self.frames:
            return False
        out[:] = self.frames.popleft()
        self.played += 1
        while self.marks and self.marks[0][0] <= self.played:
            self.played_marks.append(self.marks.popleft()[1])
        return True


@pytest.mark.benchmark(group="playout_pop")
@pytest.mark.parametrize("impl", IMPLS)
def test_playout_pop(measure: Measure, impl: str) -> None:
    frames = [bytes([i]) * FRAME_BYTES for i in range(60)]
    queue = PlayoutQueue.for_format(PCMU8K) if impl == "voxgate" else DequePlayout(FRAME_BYTES)
    out = bytearray(FRAME_BYTES)

    # Agreement: frames come out in order, whole, after a 10-frame lead.
    for frame in frames[:10]:
        queue.push(frame, 0)
    for i, frame in enumerate(frames[10:]):
        queue.push(frame, 0)
        assert queue.pop_into(out)
        assert out == frames[i]

    chunk = frames[0]

    def step() -> bool:
        queue.push(chunk, 0)
        return queue.pop_into(out)

    measure(impl, step, frames=1)
