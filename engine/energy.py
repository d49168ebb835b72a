"""Frame energy of int16 PCM: sum of squares, peak, RMS in dBFS, energy gate.

A frame is mono int16 PCM given either as a 1-D C-contiguous numpy ``int16``
array (or a ``memoryview`` of format ``h``), or as little-endian bytes
(``bytes``, ``bytearray``, ``memoryview`` of format ``B``).  Every public
function validates the frame and raises ``ValueError`` naming the problem.

dBFS is relative to a full-scale square wave: ``10 * log10(sum_squares /
(n_samples * 32768**2))``, so a frame of all -32768 is 0 dBFS and digital
silence is ``-inf``.  dBFS values are derived in Python from the kernel's exact
integer sum, so native and reference results are identical, not just close.

Hot path: :func:`check_frame` once per frame, then the ``engine._energy``
kernel chosen by its result (see :class:`engine.vad.Vad`), which returns a
constant ``bool`` and allocates nothing.
"""

from __future__ import annotations

import math
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

from engine import _energy

PcmFrame: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.int16]
"""One frame of mono int16 PCM (see the module docstring for accepted forms)."""

FULL_SCALE: Final = 32768
"""Magnitude of a full-scale int16 sample."""

MAX_FRAME_SAMPLES: Final = 1 << 24
"""Longest frame accepted (about 17 minutes at 16 kHz); keeps 64-bit sums exact."""

_SUM_SQUARES_BOUND: Final = MAX_FRAME_SAMPLES * FULL_SCALE * FULL_SCALE + 1
_INT16: Final = np.dtype(np.int16)
_BYTE_FORMATS: Final = frozenset({"B", "b", "c"})


def check_frame(frame: PcmFrame, n_samples: int | None = None) -> bool:
    """Validate ``frame``; return True for an int16 sample buffer, False for bytes.

    With ``n_samples`` the frame must hold exactly that many samples.
    """
    if isinstance(frame, np.ndarray):
        if frame.dtype is not _INT16 and frame.dtype != _INT16:
            raise ValueError(f"frame dtype must be int16, got {frame.dtype}")
        if frame.ndim != 1:
            raise ValueError(f"frame must be 1-D (mono), got {frame.ndim} dimensions")
        if not frame.flags.c_contiguous:
            raise ValueError("frame must be C-contiguous")
        n = frame.shape[0]
        is_int16 = True
    elif isinstance(frame, bytes | bytearray):
        n = _samples_in_bytes(len(frame))
        is_int16 = False
    elif isinstance(frame, memoryview):
        if frame.ndim != 1 or not frame.c_contiguous:
            raise ValueError("frame memoryview must be 1-D and C-contiguous")
        if frame.format == "h":
            n = frame.shape[0] if frame.shape is not None else 0
            is_int16 = True
        elif frame.format in _BYTE_FORMATS:
            n = _samples_in_bytes(frame.nbytes)
            is_int16 = False
        else:
            raise ValueError(f"frame memoryview format must be 'h' or 'B', got {frame.format!r}")
    else:
        raise ValueError(f"frame must be an int16 numpy array or bytes-like, got {type(frame)}")
    if n_samples is not None and n != n_samples:
        raise ValueError(f"frame holds {n} samples, expected {n_samples}")
    if n > MAX_FRAME_SAMPLES:
        raise ValueError(f"frame holds {n} samples, more than the {MAX_FRAME_SAMPLES} allowed")
    return is_int16


def _samples_in_bytes(n_bytes: int) -> int:
    if n_bytes % 2:
        raise ValueError(f"frame has an odd byte count ({n_bytes}); int16 PCM needs 2 per sample")
    return n_bytes // 2


def frame_sum_squares(frame: PcmFrame) -> int:
    """Exact sum of the squared samples of ``frame``."""
    if check_frame(frame):
        return _energy.sum_squares_i16(frame)
    return _energy.sum_squares_le(frame)


def frame_peak(frame: PcmFrame) -> int:
    """Largest absolute sample of ``frame``, 0..32768 (0 when empty)."""
    if check_frame(frame):
        return _energy.peak_i16(frame)
    return _energy.peak_le(frame)


def frame_rms_dbfs(frame: PcmFrame) -> float:
    """RMS level of ``frame`` in dBFS (``-inf`` for silence or an empty frame)."""
    if check_frame(frame):
        total = _energy.sum_squares_i16(frame)
        n = len(frame)
    else:
        total = _energy.sum_squares_le(frame)
        n = _byte_len(frame) // 2
    return sum_squares_to_dbfs(total, n)


def _byte_len(frame: PcmFrame) -> int:
    return frame.nbytes if isinstance(frame, memoryview | np.ndarray) else len(frame)


def frame_energy_at_least(frame: PcmFrame, threshold: int) -> bool:
    """Whether the frame's sum of squares is >= ``threshold`` (see :func:`dbfs_threshold`)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    # No frame can reach a larger sum; clamping keeps the kernel's int64 argument in range.
    threshold = min(threshold, _SUM_SQUARES_BOUND)
    if check_frame(frame):
        return _energy.sum_squares_at_least_i16(frame, threshold)
    return _energy.sum_squares_at_least_le(frame, threshold)


def sum_squares_to_dbfs(sum_squares: int, n_samples: int) -> float:
    """RMS level in dBFS of ``n_samples`` samples whose squares sum to ``sum_squares``."""
    if sum_squares < 0 or n_samples < 0:
        raise ValueError("sum_squares and n_samples must be >= 0")
    if sum_squares == 0 or n_samples == 0:
        return -math.inf
    return 10.0 * math.log10(sum_squares / (n_samples * FULL_SCALE * FULL_SCALE))


def dbfs_threshold(level_dbfs: float, n_samples: int) -> int:
    """Smallest integer sum of squares over ``n_samples`` samples whose RMS is >= ``level_dbfs``.

    ``frame_energy_at_least(frame, dbfs_threshold(level, len))`` is then an exact
    integer test of ``frame_rms_dbfs(frame) >= level`` (up to float rounding of
    the level itself).  ``level_dbfs`` must be a finite number <= 0.
    """
    if not math.isfinite(level_dbfs) or level_dbfs > 0:
        raise ValueError(f"level_dbfs must be a finite number <= 0, got {level_dbfs!r}")
    if n_samples <= 0:
        raise ValueError(f"n_samples must be > 0, got {n_samples}")
    ratio = math.pow(10.0, level_dbfs / 10.0)
    return math.ceil(n_samples * FULL_SCALE * FULL_SCALE * ratio)
