"""Type stub for the native energy kernel built from ``native/energy.pyx``.

``*_i16`` functions take a C-contiguous int16 buffer (numpy ``int16`` array or a
``memoryview`` of format ``h``); ``*_le`` functions take little-endian int16 PCM
packed in a byte buffer.  Callers validate through :mod:`engine.energy`.
"""

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

_Frame: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.int16]

def sum_squares_i16(x: _Frame) -> int: ...
def sum_squares_le(b: _Frame) -> int: ...
def peak_i16(x: _Frame) -> int: ...
def peak_le(b: _Frame) -> int: ...
def sum_squares_at_least_i16(x: _Frame, threshold: int) -> bool: ...
def sum_squares_at_least_le(b: _Frame, threshold: int) -> bool: ...
