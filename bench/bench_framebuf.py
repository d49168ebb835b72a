"""Frame buffer: push one 160-sample chunk of 8 kHz int16 PCM, pop one 20 ms frame.

Impls in group ``frame_buffer``: ``voxgate`` (native ring, ``push`` +
``pop_into`` a preallocated bytearray), ``python_reference``
(engine.reference.framebuf), ``numpy`` (a preallocated numpy byte ring written
here, slice copies with wrap-around) and ``bytearray`` (the usual
``buf += chunk; frame = buf[:n]; del buf[:n]``).  The buffer starts with 100
bytes queued so frames straddle chunk borders and the rings wrap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from bench.conftest import Measure
from engine.framebuf import FrameBuffer
from engine.reference.framebuf import FrameBuffer as ReferenceFrameBuffer

FRAME_BYTES = 320  # 20 ms of 8 kHz int16
CAPACITY_BYTES = FRAME_BYTES * 50
PRIME_BYTES = 100
IMPLS = ["voxgate", "python_reference", "numpy", "bytearray"]


class NumpyRing:
    """A frame ring over a preallocated numpy byte array (no drop policy needed here)."""

    def __init__(self, frame_bytes: int, capacity_bytes: int) -> None:
        self.ring = np.zeros(capacity_bytes, dtype=np.uint8)
        self.frame_bytes = frame_bytes
        self.head = 0
        self.size = 0

    def push(self, chunk: bytes) -> None:
        data = np.frombuffer(chunk, dtype=np.uint8)
        capacity = len(self.ring)
        tail = (self.head + self.size) % capacity
        first = min(len(data), capacity - tail)
        self.ring[tail : tail + first] = data[:first]
        self.ring[: len(data) - first] = data[first:]
        self.size += len(data)

    def pop_into(self, out: npt.NDArray[np.uint8]) -> bool:
        n = self.frame_bytes
        if self.size < n:
            return False
        capacity = len(self.ring)
        first = min(n, capacity - self.head)
        out[:first] = self.ring[self.head : self.head + first]
        out[first:] = self.ring[: n - first]
        self.head = (self.head + n) % capacity
        self.size -= n
        return True


class BytearrayFrames:
    """The common pattern: grow a bytearray, slice a frame off the front."""

    def __init__(self, frame_bytes: int) -> None:
        self.buf = bytearray()
        self.frame_bytes = frame_bytes
        self.frame = bytearray()

    def push(self, chunk: bytes) -> None:
        self.buf += chunk

    def pop(self) -> bool:
        if len(self.buf) < self.frame_bytes:
            return False
        self.frame = self.buf[: self.frame_bytes]
        del self.buf[: self.frame_bytes]
        return True


def make_impl(
    impl: str,
) -> tuple[Callable[[bytes], object], Callable[[], bool], Callable[[], bytes]]:
    """``(push, pop, last)``: push a chunk, pop one frame, bytes of the last frame popped."""
    if impl in ("voxgate", "python_reference"):
        cls = FrameBuffer if impl == "voxgate" else ReferenceFrameBuffer
        fb = cls(FRAME_BYTES, CAPACITY_BYTES, 2)
        out = bytearray(FRAME_BYTES)
        return fb.push, lambda: fb.pop_into(out), lambda: bytes(out)
    if impl == "numpy":
        ring = NumpyRing(FRAME_BYTES, CAPACITY_BYTES)
        out_np = np.zeros(FRAME_BYTES, dtype=np.uint8)
        return ring.push, lambda: ring.pop_into(out_np), out_np.tobytes
    frames = BytearrayFrames(FRAME_BYTES)
    return frames.push, frames.pop, lambda: bytes(frames.frame)


@pytest.mark.benchmark(group="frame_buffer")
@pytest.mark.parametrize("impl", IMPLS)
def test_frame_buffer(measure: Measure, impl: str) -> None:
    rng = np.random.default_rng(5)
    chunks = [rng.integers(0, 256, FRAME_BYTES, dtype=np.uint8).tobytes() for _ in range(120)]
    prime = bytes(range(PRIME_BYTES))
    stream = prime + b"".join(chunks)

    # Agreement: the same frames come out of every impl, across ring wrap-around.
    push, pop, last = make_impl(impl)
    push(prime)
    for i, chunk in enumerate(chunks):
        push(chunk)
        assert pop()
        assert last() == stream[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]

    # The measured step: one chunk in, one frame out, through the impl's own methods.
    chunk = chunks[0]
    if impl in ("voxgate", "python_reference"):
        cls = FrameBuffer if impl == "voxgate" else ReferenceFrameBuffer
        fb = cls(FRAME_BYTES, CAPACITY_BYTES, 2)
        fb.push(prime)
        out = bytearray(FRAME_BYTES)

        def step() -> object:
            fb.push(chunk)
            return fb.pop_into(out)

    elif impl == "numpy":
        ring = NumpyRing(FRAME_BYTES, CAPACITY_BYTES)
        ring.push(prime)
        out_np = np.zeros(FRAME_BYTES, dtype=np.uint8)

        def step() -> object:
            ring.push(chunk)
            return ring.pop_into(out_np)

    else:
        buf = bytearray(prime)

        def step() -> object:
            nonlocal buf
            buf += chunk
            frame = buf[:FRAME_BYTES]
            del buf[:FRAME_BYTES]
            return frame

    measure(impl, step, frames=1)
