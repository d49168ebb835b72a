"""Reference frame buffer: the readable specification of ``native/framebuf.pyx``.

A byte stream goes in as chunks of any size and comes out as frames of
``frame_bytes``.  The buffer holds at most ``capacity_bytes``; when a push would
exceed that, the oldest bytes are dropped in whole frames (rounded up), so every
frame popped afterwards still starts at a frame boundary of the pushed stream.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import Buffer

_INT16_FORMATS = ("h", "<h", "=h")

MAX_CAPACITY_BYTES = 1 << 30
"""Largest ring accepted (1 GiB)."""


def _as_bytes(chunk: Buffer, sample_bytes: int) -> memoryview:
    """``chunk`` as a flat byte view, refusing item types the native buffer refuses."""
    view = memoryview(chunk)
    if not view.c_contiguous:
        raise ValueError("chunk must be a contiguous buffer")
    if view.itemsize != 1 and not (
        view.itemsize == 2 and sample_bytes == 2 and view.format in _INT16_FORMATS
    ):
        raise ValueError(
            f"chunk must hold bytes or int16 samples, got items of format {view.format!r} "
            f"({view.itemsize} bytes each)"
        )
    if view.nbytes % sample_bytes:
        raise ValueError(
            f"chunk of {view.nbytes} bytes is not a whole number of {sample_bytes}-byte samples"
        )
    return view.cast("B")


def _check_sizes(frame_bytes: int, capacity_bytes: int, sample_bytes: int) -> None:
    """ValueError unless the sizes are ints that make a valid ring."""
    for name, value in (
        ("frame_bytes", frame_bytes),
        ("capacity_bytes", capacity_bytes),
        ("sample_bytes", sample_bytes),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if sample_bytes not in (1, 2):
        raise ValueError(f"sample_bytes must be 1 or 2, got {sample_bytes}")
    if frame_bytes <= 0 or frame_bytes % sample_bytes:
        raise ValueError(
            f"frame_bytes must be a positive multiple of {sample_bytes}, got {frame_bytes}"
        )
    if not 0 < capacity_bytes <= MAX_CAPACITY_BYTES or capacity_bytes % frame_bytes:
        raise ValueError(
            f"capacity_bytes must be a positive multiple of frame_bytes ({frame_bytes}) "
            f"up to {MAX_CAPACITY_BYTES}, got {capacity_bytes}"
        )


class FrameBuffer:
    """Cuts pushed bytes into frames of ``frame_bytes``; bounded, drop-oldest.

    ``sample_bytes`` (1 for G.711, 2 for int16 PCM) is the unit every push must
    be a whole number of.  ``dropped_bytes`` counts bytes lost to overflow;
    ``clear`` is not counted.
    """

    def __init__(self, frame_bytes: int, capacity_bytes: int, sample_bytes: int = 1) -> None:
        _check_sizes(frame_bytes, capacity_bytes, sample_bytes)
        self._frame_bytes = frame_bytes
        self._capacity = capacity_bytes
        self._sample_bytes = sample_bytes
        self._queued = bytearray()
        self._frame = bytearray(frame_bytes)
        self._frame_view = memoryview(self._frame).toreadonly()
        self._dropped_bytes = 0

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def sample_bytes(self) -> int:
        return self._sample_bytes

    @property
    def available_bytes(self) -> int:
        return len(self._queued)

    @property
    def frames_available(self) -> int:
        return len(self._queued) // self._frame_bytes

    @property
    def dropped_bytes(self) -> int:
        return self._dropped_bytes

    @property
    def dropped_frames(self) -> int:
        return self._dropped_bytes // self._frame_bytes

    def push(self, chunk: Buffer) -> None:
        """Append ``chunk``; on overflow drop the oldest bytes in whole frames."""
        self._queued += _as_bytes(chunk, self._sample_bytes)
        excess = len(self._queued) - self._capacity
        if excess > 0:
            drop = -(-excess // self._frame_bytes) * self._frame_bytes
            del self._queued[:drop]
            self._dropped_bytes += drop

    def push_within(self, chunk: Buffer) -> int:
        """Append as much of ``chunk`` as fits without dropping; return bytes refused."""
        data = _as_bytes(chunk, self._sample_bytes)
        taken = min(len(data), self._capacity - len(self._queued))
        self._queued += data[:taken]
        return len(data) - taken

    def pop_into(self, out: Any) -> bool:
        """Copy the oldest frame into ``out`` (exactly ``frame_bytes`` bytes, writable)."""
        target = memoryview(out)
        if target.readonly or not target.c_contiguous:
            raise ValueError("out must be a writable contiguous buffer")
        if target.nbytes != self._frame_bytes:
            raise ValueError(f"out holds {target.nbytes} bytes, a frame is {self._frame_bytes}")
        if len(self._queued) < self._frame_bytes:
            return False
        target.cast("B")[:] = self._queued[: self._frame_bytes]
        del self._queued[: self._frame_bytes]
        return True

    def pop(self) -> memoryview | None:
        """The oldest frame as a read-only view, reused (valid until the next pop)."""
        if len(self._queued) < self._frame_bytes:
            return None
        self._frame[:] = self._queued[: self._frame_bytes]
        del self._queued[: self._frame_bytes]
        return self._frame_view

    def clear(self) -> None:
        """Forget everything queued (not counted as dropped)."""
        self._queued.clear()
