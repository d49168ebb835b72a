"""Type stub for the native concealment kernel built from ``native/plc.pyx``.

Frames are C-contiguous int16 buffers (numpy ``int16`` arrays, ``memoryview``s of
format ``h``) or little-endian bytes of exactly ``2 * frame_samples`` bytes; the
methods raise ``ValueError`` for anything else.  Use through :mod:`engine.plc`.
"""

from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

_Frame: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.int16]
_OutFrame: TypeAlias = bytearray | memoryview | npt.NDArray[np.int16]

FRAME_MS_CHOICES: Final[tuple[int, ...]]
MAX_CONCEAL_MS: Final[int]
C_API: Final[object]
"""Capsule ``engine._plc.C_API_v1`` for other native kernels (see native/plc.pyx)."""

def check_config(rate_hz: object, frame_ms: object) -> int: ...

class Concealer:
    rate_hz: Final[int]
    frame_ms: Final[int]
    frame_samples: Final[int]
    def __init__(self, rate_hz: int = 8000, frame_ms: int = 20) -> None: ...
    def reset(self) -> None: ...
    @property
    def erased_samples(self) -> int: ...
    @property
    def pitch_samples(self) -> int: ...
    def good_into(self, src: _Frame, out: _OutFrame) -> int: ...
    def conceal_into(self, out: _OutFrame) -> int: ...
