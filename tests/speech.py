"""Test signals: real synthesised speech (espeak-ng) and scripted noise, as int16 arrays.

Speech is rendered once per (text, rate) by :func:`server.espeak_cli.synthesize`
and cached as ``.npy`` in a temp directory (and in memory).  Every other
signal is generated from a seeded RNG, so all tests are deterministic.
Levels are RMS dBFS relative to full scale 32768, as in :mod:`engine.energy`.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from server.espeak_cli import DEFAULT_VOICE, DEFAULT_WORDS_PER_MINUTE, synthesize

Pcm = npt.NDArray[np.int16]

CACHE_DIR: Final = Path(tempfile.gettempdir()) / "voxgate-test-speech"


@functools.lru_cache(maxsize=64)
def _speech_cached(text: str, rate_hz: int) -> bytes:
    key = hashlib.sha256(
        f"trimmed|{DEFAULT_VOICE}|{DEFAULT_WORDS_PER_MINUTE}|{rate_hz}|{text}".encode()
    ).hexdigest()[:24]
    npy = CACHE_DIR / f"{key}.npy"
    if npy.exists():
        cached: Pcm = np.load(npy)
        return cached.tobytes()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    pcm = synthesize(text, rate_hz)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        partial = Path(tmp) / "speech.npy"
        np.save(partial, pcm)
        partial.replace(npy)  # atomic, so parallel test runs never read half a file
    return pcm.tobytes()


def speech(text: str, rate_hz: int = 16000) -> Pcm:
    """``text`` spoken by espeak-ng, mono int16 at ``rate_hz`` (a fresh, writable array).

    Leading and trailing silence is trimmed, so the sound spans the whole array
    and pauses placed around it are exact.
    """
    return np.frombuffer(_speech_cached(text, rate_hz), dtype=np.int16).copy()


def silence(duration_ms: int, rate_hz: int = 16000) -> Pcm:
    """Digital silence."""
    return np.zeros(_n(duration_ms, rate_hz), dtype=np.int16)


def noise(duration_ms: int, level_dbfs: float, rate_hz: int = 16000, seed: int = 0) -> Pcm:
    """White Gaussian noise with RMS ``level_dbfs``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(_n(duration_ms, rate_hz))
    return _to_pcm(_scale_to(x, level_dbfs))


def cough(
    duration_ms: int = 120, level_dbfs: float = -12.0, rate_hz: int = 16000, seed: int = 1
) -> Pcm:
    """A cough-like burst: low-passed noise under a fast-attack, decaying envelope."""
    if not 20 <= duration_ms <= 400:
        raise ValueError("a cough lasts 20..400 ms")
    rng = np.random.default_rng(seed)
    n = _n(duration_ms, rate_hz)
    x = rng.standard_normal(n)
    taps = max(1, rate_hz // 2000)  # moving average: roughly a 1 kHz low-pass
    x = np.convolve(x, np.ones(taps) / taps, mode="same")
    t = np.arange(n) / n
    envelope = np.minimum(t / 0.08, 1.0) * np.exp(-4.0 * t)
    return _to_pcm(_scale_to(x * envelope, level_dbfs))


def concat(parts: Iterable[Pcm]) -> Pcm:
    """Join signals end to end."""
    return np.ascontiguousarray(np.concatenate(list(parts)), dtype=np.int16)


def utterance_with_pauses(texts: Iterable[str], pause_ms: int, rate_hz: int = 16000) -> Pcm:
    """Each text spoken in turn, separated by ``pause_ms`` of silence."""
    parts: list[Pcm] = []
    for i, text in enumerate(texts):
        if i:
            parts.append(silence(pause_ms, rate_hz))
        parts.append(speech(text, rate_hz))
    return concat(parts)


def mix(base: Pcm, overlay: Pcm, at_ms: int, rate_hz: int = 16000) -> Pcm:
    """``base`` with ``overlay`` added from ``at_ms`` on (saturating), same length as base."""
    out = base.astype(np.int32)
    start = _n(at_ms, rate_hz)
    end = min(len(out), start + len(overlay))
    out[start:end] += overlay[: end - start]
    return np.clip(out, -32768, 32767).astype(np.int16)


def frames(signal: Pcm, frame_ms: int, rate_hz: int = 16000) -> list[tuple[int, Pcm]]:
    """(start_ms, frame) for each whole frame of ``signal``; a trailing partial frame is dropped."""
    n = _n(frame_ms, rate_hz)
    return [(i * frame_ms, signal[i * n : (i + 1) * n]) for i in range(len(signal) // n)]


def active_bounds_ms(
    signal: Pcm, rate_hz: int = 16000, window_ms: int = 5, below_peak_db: float = 40.0
) -> tuple[float, float]:
    """True (start_ms, end_ms) of the sound in ``signal`` from its energy envelope.

    The envelope is the RMS over ``window_ms`` windows; the sound spans from the
    first to the last window within ``below_peak_db`` of the loudest window
    (and above -60 dBFS).
    """
    n = _n(window_ms, rate_hz)
    usable = len(signal) // n * n
    windows = signal[:usable].astype(np.float64).reshape(-1, n)
    rms = np.sqrt(np.mean(windows * windows, axis=1)) / 32768.0
    level = 20.0 * np.log10(np.maximum(rms, 1e-12))
    threshold = max(float(level.max()) - below_peak_db, -60.0)
    active = np.flatnonzero(level >= threshold)
    if active.size == 0:
        raise ValueError("signal holds no sound")
    return float(active[0] * window_ms), float((active[-1] + 1) * window_ms)


def _n(duration_ms: int, rate_hz: int) -> int:
    n = duration_ms * rate_hz / 1000
    if n != int(n):
        raise ValueError(f"{duration_ms} ms is not a whole number of samples at {rate_hz} Hz")
    return int(n)


def _scale_to(x: npt.NDArray[np.float64], level_dbfs: float) -> npt.NDArray[np.float64]:
    rms = float(np.sqrt(np.mean(x * x)))
    if rms == 0.0:
        return x
    scaled: npt.NDArray[np.float64] = x * (32768.0 * 10.0 ** (level_dbfs / 20.0) / rms)
    return scaled


def _to_pcm(x: npt.NDArray[np.float64]) -> Pcm:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)
