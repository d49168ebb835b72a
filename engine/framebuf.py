"""Frame buffer: chunks of any size in, fixed frames out (native ring buffer).

:class:`FrameBuffer` (from ``engine._framebuf``) is a bounded byte ring that
cuts a stream into frames of ``frame_bytes``.  It does not know about codecs,
so the same buffer serves int16 PCM (``sample_bytes=2``: odd pushes are
refused) and G.711 bytes (``sample_bytes=1``).

Contract (all sizes in bytes):

- ``push(chunk) -> None``: ``chunk`` is any C-contiguous buffer of bytes, or
  of int16 when ``sample_bytes == 2``.  If the buffer would hold more than
  ``capacity_bytes``, the oldest bytes are dropped in whole frames (rounded
  up), so later frames still start on a frame boundary of the pushed stream;
  ``dropped_bytes`` / ``dropped_frames`` count them over the buffer's life.
- ``push_within(chunk) -> int``: the no-drop variant: appends as much of
  ``chunk`` as fits and returns how many bytes it refused (0 if all fit).
- ``pop_into(out) -> bool``: copies the oldest whole frame into ``out`` (a
  writable C-contiguous buffer of exactly ``frame_bytes`` bytes, e.g. a
  bytearray or an int16 array of ``frame_bytes // 2`` samples).  ``False``
  when less than a frame is queued; a partial frame waits for more data.
- ``pop() -> memoryview | None``: zero-copy variant; returns the same
  read-only view of one internal frame every time, valid until the next pop.
- ``available_bytes``, ``frames_available``, ``clear()`` (not counted as a drop).

Hot path: ``push``, ``push_within`` and ``pop_into``/``pop`` allocate nothing; bad arguments
raise ``ValueError`` naming the problem.
"""

from __future__ import annotations

from engine._framebuf import FrameBuffer
from engine.format import PCM_SAMPLE_BYTES, AudioFormat

__all__ = ["FrameBuffer", "frame_buffer_for", "pcm_frame_buffer"]

# Unit every push must be a whole number of, per codec (G.722 packs two
# samples per byte, so its unit is one byte).
_SAMPLE_BYTES = {
    "l16": PCM_SAMPLE_BYTES,
    "l16be": PCM_SAMPLE_BYTES,
    "pcmu": 1,
    "pcma": 1,
    "g722": 1,
}


def pcm_frame_buffer(rate_hz: int, frame_ms: int = 20, capacity_ms: int = 1000) -> FrameBuffer:
    """A frame buffer of int16 PCM at ``rate_hz`` giving ``frame_ms`` frames and holding
    at most ``capacity_ms`` (a multiple of ``frame_ms``)."""
    return frame_buffer_for(AudioFormat("l16", rate_hz, 1, frame_ms), capacity_ms)


def frame_buffer_for(fmt: AudioFormat, capacity_ms: int) -> FrameBuffer:
    """A frame buffer cutting ``fmt``-encoded audio into ``fmt.frame_ms`` frames.

    ``capacity_ms`` must be a positive multiple of ``fmt.frame_ms``.  Only
    constant-bitrate codecs have fixed frames (Opus is refused).
    """
    if fmt.codec not in _SAMPLE_BYTES:
        raise ValueError(f"{fmt.codec} is variable-bitrate: it has no fixed frame size")
    if capacity_ms <= 0 or capacity_ms % fmt.frame_ms:
        raise ValueError(
            f"capacity_ms must be a positive multiple of frame_ms ({fmt.frame_ms}), "
            f"got {capacity_ms}"
        )
    frame_bytes = fmt.frame_bytes
    capacity_bytes = frame_bytes * (capacity_ms // fmt.frame_ms)
    return FrameBuffer(frame_bytes, capacity_bytes, _SAMPLE_BYTES[fmt.codec])
