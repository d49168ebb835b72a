"""G.711 mu-law (PCMU) and A-law (PCMA), bit-exact with ITU-T G.711 / G.191.

Hot path: the ``*_into`` functions, native and allocation-free.

- ``ulaw_decode_into(src, out) -> int``: ``src`` is any bytes-like of codes,
  ``out`` a writable C-contiguous int16 buffer (numpy int16, ``memoryview``
  cast to ``'h'``, ``array('h')``) with room for ``len(src)`` samples.
  Returns the number of samples written.
- ``ulaw_encode_into(pcm, out) -> int``: ``pcm`` is an int16 buffer or a
  bytes-like of little-endian int16 (an odd byte count is refused), ``out`` a
  writable byte buffer (bytearray, numpy uint8) with room for one byte per
  sample.  Returns the number of codes written.
- ``alaw_decode_into`` / ``alaw_encode_into``: the A-law twins.

Every problem with the arguments (wrong item size or format, read-only or
non-contiguous ``out``, ``out`` too small, odd byte count) raises
``ValueError`` naming it.  The functions without ``_into`` allocate and are
meant for tests, tools and one-off conversions.
"""

from __future__ import annotations

import numpy as np

from engine._g711 import (
    alaw_decode_into,
    alaw_encode_into,
    ulaw_decode_into,
    ulaw_encode_into,
)

__all__ = [
    "alaw_decode",
    "alaw_decode_into",
    "alaw_encode",
    "alaw_encode_into",
    "ulaw_decode",
    "ulaw_decode_into",
    "ulaw_encode",
    "ulaw_encode_into",
]


def ulaw_decode(data: bytes) -> bytes:
    """Little-endian int16 PCM (2 bytes per code) of mu-law codes ``data``."""
    out = np.empty(len(data), dtype=np.int16)
    ulaw_decode_into(data, out)
    return out.tobytes()


def alaw_decode(data: bytes) -> bytes:
    """Little-endian int16 PCM (2 bytes per code) of A-law codes ``data``."""
    out = np.empty(len(data), dtype=np.int16)
    alaw_decode_into(data, out)
    return out.tobytes()


def ulaw_encode(pcm: bytes) -> bytes:
    """mu-law codes (1 byte per sample) of little-endian int16 PCM ``pcm``."""
    out = bytearray(len(pcm) // 2)
    ulaw_encode_into(pcm, out)
    return bytes(out)


def alaw_encode(pcm: bytes) -> bytes:
    """A-law codes (1 byte per sample) of little-endian int16 PCM ``pcm``."""
    out = bytearray(len(pcm) // 2)
    alaw_encode_into(pcm, out)
    return bytes(out)
