"""Speech detection and scripted words for the fake STT services.

The fakes take their words from a script (one text per utterance) but their
timing from the audio they receive: :class:`SpeechScript` classifies each
20 ms frame as speech when its RMS level is at least ``threshold_dbfs``, opens a
segment on the first speech frame, and hands out the current utterance's words
in proportion to how long speech has lasted (one word per ``ms_per_word``).
Word times are spread over the detected speech span, in ms of received audio.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

FRAME_MS = 20


@dataclass(frozen=True)
class TimedWord:
    text: str
    start_ms: float
    end_ms: float


def frame_dbfs(frame: bytes) -> float:
    """RMS level of int16 little-endian PCM, dB relative to full scale 32768."""
    samples = np.frombuffer(frame, dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples * samples))) / 32768.0
    return 20.0 * float(np.log10(max(rms, 1e-6)))


class SpeechScript:
    """Energy detector over 20 ms frames plus the script's words for the open segment.

    Feed audio through :meth:`frames`; after each frame the attributes describe
    the audio so far, so a fake can decide what to send before the next frame.
    """

    def __init__(
        self,
        script: Sequence[str],
        rate_hz: int,
        *,
        threshold_dbfs: float = -45.0,
        ms_per_word: float = 300.0,
    ) -> None:
        self._script = [text.split() for text in script]
        self._next_utterance = 0
        self._words: list[str] = []
        self._frame_bytes = rate_hz * 2 * FRAME_MS // 1000
        self._pending = bytearray()
        self.threshold_dbfs = threshold_dbfs
        self.ms_per_word = ms_per_word
        self.audio_ms = 0.0
        """End of the last frame processed (ms of audio received)."""
        self.in_speech = False
        """The last frame was speech."""
        self.started = False
        """The last frame opened a segment."""
        self.segment_open = False
        self.segment_start_ms = 0.0
        self.speech_end_ms = 0.0
        """End of the last speech frame (of the open segment, or of the last one)."""

    @property
    def words_left(self) -> int:
        """Words of the current utterance not yet handed out by :meth:`close_segment`."""
        return len(self._words)

    @property
    def silence_ms(self) -> float:
        """Audio since the last speech frame."""
        return self.audio_ms - self.speech_end_ms

    def frames(self, pcm: bytes) -> Iterator[bool]:
        """Classify each whole frame of ``pcm`` (int16 LE); a partial frame waits for more."""
        self._pending += pcm
        while len(self._pending) >= self._frame_bytes:
            frame = bytes(self._pending[: self._frame_bytes])
            del self._pending[: self._frame_bytes]
            start_ms = self.audio_ms
            self.audio_ms += FRAME_MS
            self.started = False
            self.in_speech = frame_dbfs(frame) >= self.threshold_dbfs
            if self.in_speech:
                if not self.segment_open:
                    self._open(start_ms)
                self.speech_end_ms = self.audio_ms
            yield self.in_speech

    def _open(self, start_ms: float) -> None:
        self.segment_open = True
        self.started = True
        self.segment_start_ms = start_ms
        if not self._words and self._next_utterance < len(self._script):
            self._words = list(self._script[self._next_utterance])
            self._next_utterance += 1

    def revealed(self) -> list[TimedWord]:
        """Words heard so far in the open segment, timed over its speech."""
        if not self.segment_open:
            return []
        heard_ms = self.speech_end_ms - self.segment_start_ms
        count = min(len(self._words), 1 + int(heard_ms // self.ms_per_word))
        return self._timed(self._words[:count])

    def close_segment(self, *, whole: bool) -> list[TimedWord]:
        """End the open segment: all the utterance's remaining words if ``whole``,
        else only those heard so far (the rest wait for the next segment)."""
        if not self.segment_open:
            return []
        words = self._timed(self._words) if whole else self.revealed()
        del self._words[: len(words)]
        self.segment_open = False
        return words

    def _timed(self, words: Sequence[str]) -> list[TimedWord]:
        if not words:
            return []
        start, end = self.segment_start_ms, self.speech_end_ms
        weights = [len(w) + 1 for w in words]
        total = sum(weights)
        out: list[TimedWord] = []
        at = start
        for word, weight in zip(words, weights, strict=True):
            span = (end - start) * weight / total
            out.append(TimedWord(word, round(at, 1), round(at + span * 0.9, 1)))
            at += span
        return out
