"""Playout queue: one call's outbound audio, in fixed frames, with generations and marks.

The queue holds encoded audio (any codec with fixed-size frames: 160 bytes of
mu-law per 20 ms for telephony) and hands it out one frame per media-clock
tick.  It knows nothing of codecs beyond ``frame_bytes``, ``frame_ms`` and
the byte that encodes silence (``0xFF`` mu-law, ``0xD5`` A-law, ``0x00`` PCM).

Generations.  Every bot utterance has an integer generation.  ``generation``
is the oldest one still wanted: ``clear(new_generation)`` drops all queued
audio at once and raises it, and audio or marks of an older generation that
arrive later are dropped on arrival (``late_chunks`` / ``late_bytes`` count
them).  Audio of a newer generation pushed without a ``clear`` is queued
behind what is already there (the next utterance waits its turn) and raises
``generation``; the previous utterance's partial frame is padded first.

Frames.  ``push`` cuts chunks of any size into frames; a partial last frame
waits for more audio, or for ``end_of_segment`` to pad it with silence.
``pop_into(out)`` copies the next whole frame into ``out`` and counts it as
played; it returns ``False`` while paused or when no whole frame is queued.

Marks.  ``mark(name, generation)`` names the current end of the queued audio.
A mark is passed when every byte queued before it has been played;
``take_played_marks()`` returns the passed ones in order.  ``clear`` returns
the names of the marks it dropped: they will never be played.

Time.  ``played_ms`` counts every frame played; ``heard_ms`` counts the
frames played of ``playing_generation`` (the utterance the last played frame
belonged to), which is what the caller has heard of it.  ``queued_ms``
includes a partial frame.

Capacity.  At most ``capacity_ms`` are queued; audio beyond that is refused
(``overflow_bytes``), never the audio already queued.  Use ``queued_ms`` for
back-pressure on the producer.

Hot path: ``pop_into`` and a ``push`` of the same generation allocate nothing;
``take_played_marks`` returns the shared empty tuple when no mark was passed.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

import numpy as np

from engine.format import AudioFormat
from engine.framebuf import FrameBuffer

if TYPE_CHECKING:
    from engine._framebuf import BufferLike

SILENCE_BYTE: Final = {"pcmu": 0xFF, "pcma": 0xD5, "l16": 0x00, "l16be": 0x00}
"""The byte that encodes digital silence, per codec with a one-byte silence pattern."""

_NO_MARKS: Final[tuple[str, ...]] = ()
_NEVER: Final = 1 << 62  # a frame count that is never reached


def _byte_view(chunk: BufferLike) -> memoryview:
    return chunk.data if isinstance(chunk, np.ndarray) else memoryview(chunk)


class PlayoutQueue:
    """Outbound audio of one call: fixed frames, utterance generations, named marks.

    ``frame_bytes`` and ``frame_ms`` describe one encoded frame, ``silence_byte``
    pads a partial last frame, ``capacity_ms`` (a multiple of ``frame_ms``)
    bounds what is queued, ``sample_bytes`` (2 for PCM) is the unit every push
    must be a whole number of.
    """

    __slots__ = (
        "_boundaries",
        "_frame_bytes",
        "_frame_ms",
        "_frames",
        "_generation",
        "_late_bytes",
        "_late_chunks",
        "_marks",
        "_next_event",
        "_overflow_bytes",
        "_padding",
        "_paused",
        "_played_frames",
        "_played_marks",
        "_playing_generation",
        "_playing_since",
        "_tail_generation",
    )

    def __init__(
        self,
        frame_bytes: int,
        frame_ms: int,
        silence_byte: int,
        *,
        capacity_ms: int = 60_000,
        sample_bytes: int = 1,
        generation: int = 0,
    ) -> None:
        if frame_ms <= 0:
            raise ValueError(f"frame_ms must be positive, got {frame_ms}")
        if not 0 <= silence_byte <= 0xFF:
            raise ValueError(f"silence_byte must be in 0..255, got {silence_byte}")
        if capacity_ms <= 0 or capacity_ms % frame_ms:
            raise ValueError(
                f"capacity_ms must be a positive multiple of frame_ms ({frame_ms}), "
                f"got {capacity_ms}"
            )
        self._frames = FrameBuffer(
            frame_bytes, frame_bytes * (capacity_ms // frame_ms), sample_bytes
        )
        self._frame_bytes = frame_bytes
        self._frame_ms = frame_ms
        self._padding = bytes([silence_byte]) * frame_bytes
        self._generation = generation
        self._tail_generation = generation  # generation of the last audio queued
        self._paused = False
        # Positions are byte offsets in the stream of everything queued: the
        # played position is _played_frames * frame_bytes (whole frames), the
        # end of the queued audio that plus the bytes in _frames (see _end_bytes).
        self._played_frames = 0
        self._marks: deque[tuple[int, str]] = deque()  # (frames to play to pass it, name)
        self._boundaries: deque[tuple[int, int]] = deque()  # (first frame, generation)
        self._next_event = _NEVER  # smallest frame count at which a mark/boundary is due
        self._played_marks: list[str] = []
        self._playing_generation = generation
        self._playing_since = 0  # _played_frames when playing_generation started
        self._late_chunks = 0
        self._late_bytes = 0
        self._overflow_bytes = 0

    @classmethod
    def for_format(cls, fmt: AudioFormat, capacity_ms: int = 60_000) -> PlayoutQueue:
        """A queue of ``fmt`` frames (G.711 or PCM; others have no one-byte silence)."""
        if fmt.codec not in SILENCE_BYTE:
            raise ValueError(f"no one-byte silence for {fmt.codec}: build the queue directly")
        sample_bytes = 2 if fmt.codec in ("l16", "l16be") else 1
        return cls(
            fmt.frame_bytes,
            fmt.frame_ms,
            SILENCE_BYTE[fmt.codec],
            capacity_ms=capacity_ms,
            sample_bytes=sample_bytes,
        )

    # -- state -----------------------------------------------------------------

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    @property
    def frame_ms(self) -> int:
        return self._frame_ms

    @property
    def generation(self) -> int:
        """Oldest generation still accepted."""
        return self._generation

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def frames_ready(self) -> int:
        """Whole frames queued (a partial last frame is not counted)."""
        return self._frames.frames_available

    @property
    def queued_ms(self) -> float:
        """Audio queued, including a partial last frame."""
        return self._frames.available_bytes * self._frame_ms / self._frame_bytes

    @property
    def played_ms(self) -> int:
        """Audio played since the queue was made, all generations."""
        return self._played_frames * self._frame_ms

    @property
    def playing_generation(self) -> int:
        """Generation of the last frame played (the initial generation before any)."""
        return self._playing_generation

    @property
    def heard_ms(self) -> int:
        """Audio of ``playing_generation`` played so far (kept across ``clear``)."""
        return (self._played_frames - self._playing_since) * self._frame_ms

    @property
    def late_chunks(self) -> int:
        """Chunks dropped on arrival because their generation was already cleared."""
        return self._late_chunks

    @property
    def late_bytes(self) -> int:
        return self._late_bytes

    @property
    def overflow_bytes(self) -> int:
        """Bytes refused because the queue held ``capacity_ms`` already."""
        return self._overflow_bytes

    # -- producer side -----------------------------------------------------------

    def push(self, chunk: BufferLike, generation: int) -> bool:
        """Queue audio of ``generation``; ``False`` if it was dropped as late.

        ``chunk`` is any C-contiguous buffer (bytes, bytearray, numpy array)
        whose size is a whole number of samples; ``ValueError`` otherwise.
        """
        if generation < self._generation:
            self._late_chunks += 1
            self._late_bytes += _byte_view(chunk).nbytes
            return False
        if generation != self._tail_generation:
            size = _byte_view(chunk).nbytes  # check before changing any state
            if size % self._frames.sample_bytes:
                raise ValueError(f"chunk of {size} bytes is not a whole number of samples")
            self._start_utterance(generation)
        self._generation = generation
        refused = self._frames.push_within(chunk)
        if refused:
            self._overflow_bytes += refused
        return True

    def end_of_segment(self, generation: int) -> None:
        """Pad a partial last frame with silence so it can be played (unless late)."""
        if generation >= self._generation:
            self._pad_tail()

    def mark(self, name: str, generation: int) -> bool:
        """Put a mark at the current end of the queued audio; ``False`` if late.

        A mark with nothing left to play before it is passed at once.
        """
        if not self._accept(generation):
            return False
        due = -(-self._end_bytes() // self._frame_bytes)  # frames to play to pass it
        if due <= self._played_frames:
            self._played_marks.append(name)
        else:
            self._marks.append((due, name))
            self._schedule()
        return True

    def clear(self, new_generation: int) -> list[str]:
        """Drop all queued audio now and accept only ``new_generation`` or newer.

        Returns the names of the marks dropped with it, which will never be
        played.  ``new_generation`` may equal the current one (flush the
        current utterance) but not be older.
        """
        if new_generation < self._generation:
            raise ValueError(
                f"generation {new_generation} is older than the current {self._generation}"
            )
        self._generation = new_generation
        self._frames.clear()
        self._boundaries.clear()
        # Audio queued from now on continues the playing utterance only if it
        # has the same generation; anything else starts a new heard_ms count.
        self._tail_generation = self._playing_generation
        dropped = [name for _, name in self._marks]
        self._marks.clear()
        self._next_event = _NEVER
        return dropped

    # -- consumer side (media clock) -------------------------------------------

    def pop_into(self, out: BufferLike) -> bool:
        """Copy the next frame into ``out`` (exactly ``frame_bytes``) and count it played.

        ``False`` (and ``out`` untouched) while paused or with no whole frame.
        """
        if self._paused or not self._frames.pop_into(out):
            return False
        self._played_frames += 1
        if self._played_frames >= self._next_event:
            self._pass_events()
        return True

    def take_played_marks(self) -> tuple[str, ...]:
        """Names of the marks passed since the last call, in order (``()`` if none)."""
        if not self._played_marks:
            return _NO_MARKS
        passed = tuple(self._played_marks)
        self._played_marks.clear()
        return passed

    def pause(self) -> None:
        """Stop handing out frames; the queue and its position are kept."""
        self._paused = True

    def resume(self) -> None:
        """Continue from where ``pause`` stopped."""
        self._paused = False

    # -- internals -----------------------------------------------------------------

    def _accept(self, generation: int) -> bool:
        if generation < self._generation:
            return False
        self._generation = generation
        return True

    def _end_bytes(self) -> int:
        """Stream position of the end of the queued audio."""
        return self._played_frames * self._frame_bytes + self._frames.available_bytes

    def _start_utterance(self, generation: int) -> None:
        """Audio of another generation follows: close the previous one's last frame."""
        self._pad_tail()
        self._boundaries.append((self._end_bytes() // self._frame_bytes, generation))
        self._tail_generation = generation
        self._schedule()

    def _pad_tail(self) -> None:
        # The played position is frame-aligned, so the partial frame is what
        # the buffer holds beyond whole frames; there is always room to finish it.
        partial = self._frames.available_bytes % self._frame_bytes
        if partial:
            self._frames.push(memoryview(self._padding)[: self._frame_bytes - partial])

    def _schedule(self) -> None:
        """Recompute the frame count at which the next mark or boundary is due."""
        due = _NEVER
        if self._marks:
            due = self._marks[0][0]
        if self._boundaries:
            due = min(due, self._boundaries[0][0] + 1)  # its first frame has played
        self._next_event = due

    def _pass_events(self) -> None:
        played = self._played_frames
        while self._boundaries and self._boundaries[0][0] < played:
            start, generation = self._boundaries.popleft()
            self._playing_generation = generation
            self._playing_since = start
        while self._marks and self._marks[0][0] <= played:
            self._played_marks.append(self._marks.popleft()[1])
        self._schedule()
