"""Type stub for the native jitter buffer built from ``native/jitter.pyx``.

Frames are C-contiguous int16 buffers (numpy ``int16`` arrays, ``memoryview``s of
format ``h``) or little-endian bytes of exactly ``2 * frame_samples`` bytes.  Use
through :mod:`engine.jitter`.
"""

from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

_Frame: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.int16]
_OutFrame: TypeAlias = bytearray | memoryview | npt.NDArray[np.int16]

NORMAL: Final[int]
CONCEALED: Final[int]
INSERTED: Final[int]
SILENCE: Final[int]
EMPTY: Final[int]
PUT_ACCEPTED: Final[int]
PUT_DUPLICATE: Final[int]
PUT_LATE: Final[int]
PUT_DISCARDED: Final[int]
PUT_RESYNC: Final[int]
MAX_DROPOUT: Final[int]
MAX_MISORDER: Final[int]
LATE_RUN_RESYNC: Final[int]
WINDOW_MS: Final[int]
QUANTILE_PERCENT: Final[int]
TARGET_FALL_MS: Final[int]
MAX_DELAY_LIMIT_MS: Final[int]
MAX_CAPACITY_FRAMES: Final[int]
TIME_LIMIT_MS: Final[int]

def check_jitter_config(
    clock_rate_hz: object,
    frame_ms: object,
    *,
    min_delay_ms: object,
    max_delay_ms: object,
    capacity_frames: object,
    silence_rms: object,
) -> int: ...

class JitterBuffer:
    clock_rate_hz: Final[int]
    frame_ms: Final[int]
    frame_samples: Final[int]
    min_delay_ms: Final[int]
    max_delay_ms: Final[int]
    capacity_frames: Final[int]
    silence_rms: Final[int]
    @property
    def received(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def late(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def discarded(self) -> int: ...
    @property
    def concealed(self) -> int: ...
    @property
    def inserted(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def resyncs(self) -> int: ...
    def __init__(
        self,
        clock_rate_hz: int = 8000,
        frame_ms: int = 20,
        min_delay_ms: int = 20,
        max_delay_ms: int = 200,
        capacity_frames: int = 64,
        *,
        silence_rms: int = 150,
    ) -> None: ...
    @property
    def current_delay_ms(self) -> int: ...
    @property
    def target_delay_ms(self) -> int: ...
    @property
    def buffered_frames(self) -> int: ...
    @property
    def last_timestamp(self) -> int: ...
    @property
    def playing(self) -> bool: ...
    def reset(self, clear_stats: bool = False) -> None: ...
    def put(self, seq: int, timestamp: int, pcm: _Frame, arrival_ms: int) -> int: ...
    def pull_into(self, out: _OutFrame, now_ms: int) -> int: ...
