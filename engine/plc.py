"""Packet-loss concealment for mono int16 PCM, in the spirit of G.711 Appendix I.

:class:`Concealer` keeps ~49 ms of played audio.  For a lost frame it estimates
the pitch period (5..15 ms) by normalised autocorrelation and repeats the last
one, two, then three periods, fading 20 % per 10 ms after the first 10 ms and
reaching silence at 60 ms (:data:`MAX_CONCEAL_MS`); the first good frame after a
loss is crossfaded in.  The algorithm is specified by
:mod:`engine.reference.plc`; the class here is the native kernel.

Per-frame use, allocation-free (``out`` and ``frame`` are caller-owned int16
arrays of ``frame_samples``)::

    plc = Concealer(rate_hz=8000, frame_ms=20)
    plc.good_into(frame, out)       # a frame arrived
    audible = plc.conceal_into(out)  # a frame is missing; 0 once it is silence

The jitter buffer (:mod:`engine.jitter`) drives one internally; use this class
directly only where frames arrive on time but may be missing (e.g. a decoder
that reports loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from engine._plc import FRAME_MS_CHOICES, MAX_CONCEAL_MS, Concealer, check_config

PcmFrame: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.int16]
"""One frame of mono int16 PCM: an int16 array or little-endian bytes."""

__all__ = ["FRAME_MS_CHOICES", "MAX_CONCEAL_MS", "Concealer", "check_config", "conceal_stream"]


def conceal_stream(
    frames: Sequence[PcmFrame | None], rate_hz: int = 8000, frame_ms: int = 20
) -> npt.NDArray[np.int16]:
    """Join ``frames`` into one signal, concealing each ``None`` (allocates; not for hot paths)."""
    plc = Concealer(rate_hz, frame_ms)
    n = plc.frame_samples
    out = np.zeros(n * len(frames), dtype=np.int16)
    for k, frame in enumerate(frames):
        dest = out[k * n : (k + 1) * n]
        if frame is None:
            plc.conceal_into(dest)
        else:
            plc.good_into(frame, dest)
    return out
