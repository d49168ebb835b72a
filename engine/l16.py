"""Linear 16-bit PCM: internal little-endian int16 <-> RTP L16 (big-endian, RFC 3551).

Hot path (native, allocation-free):

- ``l16be_to_pcm_into(src, out) -> int``: ``src`` is a bytes-like of
  big-endian int16 (even byte count), ``out`` a writable C-contiguous int16
  buffer with room for ``len(src) // 2`` samples.  Returns samples written.
- ``pcm_to_l16be_into(pcm, out) -> int``: ``pcm`` is an int16 buffer or a
  bytes-like of little-endian int16 (even byte count), ``out`` a writable byte
  buffer with room for 2 bytes per sample.  Returns samples written.

Bad arguments raise ``ValueError`` naming the problem.
"""

from __future__ import annotations

import numpy as np

from engine._g711 import l16be_to_pcm_into, pcm_to_l16be_into

__all__ = ["l16be_to_pcm", "l16be_to_pcm_into", "pcm_to_l16be", "pcm_to_l16be_into"]


def l16be_to_pcm(data: bytes) -> bytes:
    """Little-endian int16 PCM bytes of big-endian L16 bytes ``data``."""
    out = np.empty(len(data) // 2, dtype=np.int16)
    l16be_to_pcm_into(data, out)
    return out.tobytes()


def pcm_to_l16be(pcm: bytes) -> bytes:
    """Big-endian L16 bytes of little-endian int16 PCM bytes ``pcm``."""
    out = bytearray(len(pcm))
    pcm_to_l16be_into(pcm, out)
    return bytes(out)
