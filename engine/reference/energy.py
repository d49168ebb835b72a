"""Pure-Python specification of the ``engine._energy`` kernel.

Every function takes little-endian int16 PCM as bytes (``len`` even) and works on
exact Python integers, so the native kernel must match it bit for bit.
"""

from __future__ import annotations

import struct


def samples(pcm: bytes) -> list[int]:
    """The int16 sample values of little-endian PCM ``pcm``."""
    return [s for (s,) in struct.iter_unpack("<h", pcm)]


def sum_squares(pcm: bytes) -> int:
    """Sum of the squared samples (an exact integer)."""
    return sum(s * s for s in samples(pcm))


def peak(pcm: bytes) -> int:
    """Largest absolute sample value, 0..32768 (0 for an empty buffer)."""
    return max((abs(s) for s in samples(pcm)), default=0)


def sum_squares_at_least(pcm: bytes, threshold: int) -> bool:
    """Whether ``sum_squares(pcm) >= threshold``."""
    return sum_squares(pcm) >= threshold
