"""VAD kernels over one 20 ms 16 kHz frame.

``frame_energy``: RMS in dBFS of one frame. ``voxgate`` is
:func:`engine.energy.frame_rms_dbfs` (validation + native sum of squares),
``python_reference`` the pure-Python reference, ``numpy`` a float64 dot product.

``vad_frame``: one frame through the full :class:`engine.vad.Vad` (validation,
webrtcvad, energy gates, hysteresis) against ``webrtcvad_raw``, webrtcvad's
``Vad.is_speech`` alone, to show what the hysteresis and gates cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import webrtcvad

from bench.conftest import Measure
from engine.energy import frame_rms_dbfs, sum_squares_to_dbfs
from engine.reference import energy as ref
from engine.vad import Vad, VadConfig

RATE_HZ = 16000
FRAME = 320  # 20 ms at 16 kHz


def voiced_frame(n: int = FRAME) -> npt.NDArray[np.int16]:
    """A vowel-like frame: harmonics of 140 Hz with a falling spectrum, about -16 dBFS."""
    t = np.arange(n) / RATE_HZ
    signal = sum((6000 / k) * np.sin(2 * np.pi * 140 * k * t + 0.3 * k) for k in range(1, 25))
    frame: npt.NDArray[np.int16] = np.clip(np.asarray(signal), -32768, 32767).astype(np.int16)
    return frame


def numpy_rms_dbfs(frame: npt.NDArray[np.int16]) -> float:
    x = frame.astype(np.float64)
    total = float(np.dot(x, x))
    if total == 0.0:
        return -math.inf
    return 10.0 * math.log10(total / (len(frame) * 32768.0 * 32768.0))


def reference_rms_dbfs(pcm: bytes) -> float:
    return sum_squares_to_dbfs(ref.sum_squares(pcm), len(pcm) // 2)


@pytest.mark.benchmark(group="frame_energy")
@pytest.mark.parametrize("impl", ["voxgate", "python_reference", "numpy"])
def test_frame_energy(measure: Measure, impl: str) -> None:
    frame = voiced_frame()
    pcm = frame.tobytes()
    fn: Callable[..., float]
    arg: Any
    if impl == "voxgate":
        fn, arg = frame_rms_dbfs, frame
    elif impl == "python_reference":
        fn, arg = reference_rms_dbfs, pcm
    else:
        fn, arg = numpy_rms_dbfs, frame
    # The sum of squares is an exact integer below 2**53 in every implementation.
    assert fn(arg) == frame_rms_dbfs(frame)
    measure(impl, fn, arg, frames=1)


@pytest.mark.benchmark(group="vad_frame")
@pytest.mark.parametrize("impl", ["voxgate", "webrtcvad_raw"])
def test_vad_frame(measure: Measure, impl: str) -> None:
    frame = voiced_frame()
    pcm = frame.tobytes()
    if impl == "voxgate":
        vad = Vad(VadConfig(rate_hz=RATE_HZ, frame_ms=20))
        for i in range(10):  # into steady speech: the per-frame path while speaking
            vad.process(frame, i * 20)
        assert vad.speaking and vad.last_frame_speech
        measure(impl, vad.process, frame, 200, frames=1)
        assert vad.speaking
    else:
        raw = webrtcvad.Vad(2)
        assert raw.is_speech(pcm, RATE_HZ)
        measure(impl, raw.is_speech, pcm, RATE_HZ, frames=1)
