"""Type stub for the native polyphase resampling kernel (native/polyphase.pyx)."""

from typing import Any, TypeAlias

import numpy as np
from typing_extensions import Buffer

BufferLike: TypeAlias = Buffer | np.ndarray[Any, Any]
"""A C-contiguous object exporting the buffer protocol (bytes, bytearray, memoryview,
array.array, numpy arrays)."""

COEF_BITS: int
BLOCK_SAMPLES: int
MAX_BRANCH_ABS_SUM: int
MAX_RATIO_TERM: int
MAX_TAPS: int
MAX_TAIL_SAMPLES: int
MAX_CHUNK_SAMPLES: int

class PolyphaseKernel:
    def __init__(self, table: BufferLike, up: int, down: int, taps: int, tail: int) -> None: ...
    @property
    def up(self) -> int: ...
    @property
    def down(self) -> int: ...
    @property
    def taps(self) -> int: ...
    @property
    def tail(self) -> int: ...
    def max_output(self, n_in: int) -> int: ...
    def reset(self) -> None: ...
    def process_into(self, pcm: BufferLike, out: BufferLike) -> int: ...
    def flush_into(self, out: BufferLike) -> int: ...
