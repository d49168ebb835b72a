"""WAV files for Chromium's fake microphone, with a record of what is said when.

Chromium's fake capture device (``--use-file-for-fake-audio-capture``) plays a WAV
file; 16-bit PCM works at any rate, 24-bit PCM and non-WAV files silently turn into
digital silence.  Files here are always 48 kHz mono 16-bit PCM, a whole number of
20 ms frames long.  Speech comes from espeak-ng through :mod:`tests.speech`.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from tests import speech

Pcm = npt.NDArray[np.int16]

RATE_HZ: Final = 48000
FRAME_MS: Final = 20
PEAK_DBFS: Final = -3.0
"""Peak level of synthesised speech, dB relative to full scale 32767."""
TAIL_S: Final = 0.3
"""Silence appended after the last utterance, so a loop boundary is audible as a gap."""


def synth_speech(text: str, rate_hz: int = RATE_HZ) -> Pcm:
    """``text`` spoken by espeak-ng: mono int16 at ``rate_hz``, peak at about -3 dBFS,
    leading and trailing silence trimmed (the sound spans the whole array)."""
    pcm = speech.speech(text, rate_hz)
    peak = int(np.max(np.abs(pcm.astype(np.int32))))
    if peak == 0:
        raise ValueError(f"espeak-ng produced silence for {text!r}")
    gain = 32767.0 * 10.0 ** (PEAK_DBFS / 20.0) / peak
    scaled: Pcm = np.clip(np.round(pcm * gain), -32768, 32767).astype(np.int16)
    return scaled


def compose(segments: Sequence[tuple[float, Pcm | None]], rate_hz: int = RATE_HZ) -> Pcm:
    """A silent timeline with each clip added at its start time (s); overlaps are summed,
    saturating.  A ``(t_s, None)`` entry only makes the timeline last at least ``t_s``.

    The result is padded with silence to a whole number of 20 ms frames.
    """
    end = 0
    placed: list[tuple[int, Pcm]] = []
    for start_s, clip in segments:
        if start_s < 0:
            raise ValueError(f"segment starts before the timeline: {start_s} s")
        start = round(start_s * rate_hz)
        if clip is None:
            end = max(end, start)
            continue
        if clip.ndim != 1:
            raise ValueError("clips must be mono (one-dimensional)")
        placed.append((start, clip))
        end = max(end, start + len(clip))
    frame = rate_hz * FRAME_MS // 1000
    total = -(-end // frame) * frame
    mixed = np.zeros(total, dtype=np.int32)
    for start, clip in placed:
        mixed[start : start + len(clip)] += clip
    return np.clip(mixed, -32768, 32767).astype(np.int16)


def write_wav(path: Path, pcm: Pcm, rate_hz: int = RATE_HZ) -> Path:
    """Write ``pcm`` (mono int16) as a 16-bit PCM WAV; returns the absolute path."""
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise ValueError(f"need mono int16 samples, got {pcm.dtype} with shape {pcm.shape}")
    path = Path(path).absolute()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


@dataclass(frozen=True, slots=True)
class Utterance:
    """One sentence in a fake-mic file, from ``start_s`` to ``end_s`` (s from file start)."""

    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Timeline:
    """A fake-mic WAV file and when each utterance in it is heard (s from file start)."""

    path: Path
    duration_s: float
    utterances: tuple[Utterance, ...]
    rate_hz: int = RATE_HZ

    def speaking_at(self, t_s: float) -> Utterance | None:
        """The utterance heard at ``t_s``, or ``None`` during silence."""
        for utterance in self.utterances:
            if utterance.start_s <= t_s < utterance.end_s:
                return utterance
        return None

    def silences(self) -> list[tuple[float, float]]:
        """The silent stretches as (start_s, end_s), in order, including lead-in and tail."""
        gaps: list[tuple[float, float]] = []
        t = 0.0
        for utterance in self.utterances:
            if utterance.start_s > t:
                gaps.append((t, utterance.start_s))
            t = utterance.end_s
        if self.duration_s > t:
            gaps.append((t, self.duration_s))
        return gaps


def speech_wav(
    path: Path,
    script: Sequence[tuple[float, str]],
    tail_s: float = TAIL_S,
    rate_hz: int = RATE_HZ,
) -> Timeline:
    """Write a WAV where each ``(start_s, text)`` of ``script`` is spoken from ``start_s``
    on, followed by ``tail_s`` of silence; returns where each utterance lies.

    Utterances must be in order and must not overlap (``ValueError`` otherwise).
    """
    utterances: list[Utterance] = []
    segments: list[tuple[float, Pcm | None]] = []
    for start_s, text in script:
        clip = synth_speech(text, rate_hz)
        start = round(start_s * rate_hz)
        if utterances and start / rate_hz < utterances[-1].end_s:
            previous = utterances[-1]
            raise ValueError(
                f"{text!r} at {start_s} s overlaps {previous.text!r} (ends {previous.end_s:.3f} s)"
            )
        utterances.append(Utterance(text, start / rate_hz, (start + len(clip)) / rate_hz))
        segments.append((start / rate_hz, clip))
    end_s = utterances[-1].end_s if utterances else 0.0
    segments.append((end_s + tail_s, None))
    pcm = compose(segments, rate_hz)
    return Timeline(write_wav(path, pcm, rate_hz), len(pcm) / rate_hz, tuple(utterances), rate_hz)


def silent_wav(path: Path, duration_s: float, rate_hz: int = RATE_HZ) -> Timeline:
    """Write a WAV of digital silence lasting ``duration_s`` (rounded up to 20 ms frames)."""
    pcm = compose([(duration_s, None)], rate_hz)
    return Timeline(write_wav(path, pcm, rate_hz), len(pcm) / rate_hz, (), rate_hz)
