"""Voice activity detection: webrtcvad per frame, energy gates, hysteresis.

Each frame gets a decision from webrtcvad and two energy gates (see
:class:`Vad`).  :class:`SpeechHysteresis` turns the per-frame decisions into
rare events:

* speech **starts** once ``start_ms`` worth of speech frames occurred within the
  last ``start_window_ms`` (both rounded up to whole frames).  The event's
  ``at_ms`` is the start of the earliest speech frame in that window: the
  media time the speech began, not the time it was confirmed.
* speech **stops** after ``stop_ms`` of continuous non-speech frames.  The
  event's ``at_ms`` is the end of the last speech frame.

Times are media-clock milliseconds: ``now_ms`` passed with a frame is the time
of its first sample.  Nothing here reads a clock or allocates per frame except
the event objects (rare) and what webrtcvad does internally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, TypeAlias

import webrtcvad

from engine import _energy
from engine.energy import PcmFrame, check_frame, dbfs_threshold
from engine.format import FRAME_MS_CHOICES

VAD_RATES_HZ: Final = (8000, 16000, 32000, 48000)
"""Sample rates webrtcvad accepts."""

MAX_WINDOW_MS: Final = 10_000
"""Upper bound for ``start_window_ms`` and ``stop_ms``."""

# webrtcvad's C entry point, called as process(handle, rate_hz, buffer, n_samples).
# The public ``Vad.is_speech`` derives the length from ``len(buf) / 2``, which is
# wrong for int16 arrays, and adds a Python call per frame.  The C function does
# not check the length against the buffer, so :meth:`Vad.process` validates the
# exact sample count before calling it.
_webrtcvad_process: Final = webrtcvad._webrtcvad.process


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at ``at_ms`` (start of the first speech frame of the confirming run)."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Speech ended at ``at_ms`` (end of the last speech frame)."""

    at_ms: int


VadEvent: TypeAlias = SpeechStarted | SpeechStopped


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")


@dataclass(frozen=True, slots=True)
class VadConfig:
    """VAD settings; invalid values raise ``ValueError`` naming the field.

    ``aggressiveness`` is webrtcvad's mode 0 (least) .. 3 (most aggressive about
    calling frames non-speech).  ``energy_floor_dbfs`` (finite, <= 0, or None to
    disable) makes frames whose RMS is below it non-speech regardless of
    webrtcvad.  ``speech_range_db`` (in (0, 120], or None to disable) makes
    frames that much quieter than the loudest frame of the current speech
    non-speech; see :class:`Vad`.
    """

    aggressiveness: int = 2
    frame_ms: int = 20
    rate_hz: int = 16000
    start_ms: int = 60
    start_window_ms: int = 120
    stop_ms: int = 300
    energy_floor_dbfs: float | None = -50.0
    speech_range_db: float | None = 35.0

    def __post_init__(self) -> None:
        _check_int("aggressiveness", self.aggressiveness, 0, 3)
        if not _is_int(self.frame_ms) or self.frame_ms not in FRAME_MS_CHOICES:
            raise ValueError(f"frame_ms must be one of {FRAME_MS_CHOICES}, got {self.frame_ms!r}")
        if not _is_int(self.rate_hz) or self.rate_hz not in VAD_RATES_HZ:
            raise ValueError(f"rate_hz must be one of {VAD_RATES_HZ}, got {self.rate_hz!r}")
        _check_int("start_ms", self.start_ms, 1, MAX_WINDOW_MS)
        _check_int("start_window_ms", self.start_window_ms, self.start_ms, MAX_WINDOW_MS)
        _check_int("stop_ms", self.stop_ms, 1, MAX_WINDOW_MS)
        floor = self.energy_floor_dbfs
        if floor is not None and (
            isinstance(floor, bool)
            or not isinstance(floor, int | float)
            or not math.isfinite(floor)
            or floor > 0
        ):
            raise ValueError(f"energy_floor_dbfs must be a finite number <= 0, got {floor!r}")
        span = self.speech_range_db
        if span is not None and (
            isinstance(span, bool)
            or not isinstance(span, int | float)
            or not math.isfinite(span)
            or not 0 < span <= 120
        ):
            raise ValueError(f"speech_range_db must be a number in (0, 120], got {span!r}")

    @property
    def frame_samples(self) -> int:
        """Samples in one frame."""
        return self.rate_hz * self.frame_ms // 1000

    @property
    def start_frames(self) -> int:
        """Speech frames needed within the start window to start speech."""
        return math.ceil(self.start_ms / self.frame_ms)

    @property
    def window_frames(self) -> int:
        """Length of the start window in frames."""
        return math.ceil(self.start_window_ms / self.frame_ms)

    @property
    def stop_frames(self) -> int:
        """Consecutive non-speech frames that stop speech."""
        return math.ceil(self.stop_ms / self.frame_ms)


class SpeechHysteresis:
    """Turns per-frame speech decisions into :class:`SpeechStarted` / :class:`SpeechStopped`.

    Frames are counted, not timed: the window and the stop run are whole frames
    of ``frame_ms`` each, and ``now_ms`` is only used to stamp events.
    """

    __slots__ = (
        "_frame_ms",
        "_last_speech_ms",
        "_pos",
        "_ring_ms",
        "_ring_speech",
        "_silent_frames",
        "_speech_in_window",
        "_start_frames",
        "_stop_frames",
        "speaking",
    )

    def __init__(self, frame_ms: int, start_frames: int, window_frames: int, stop_frames: int):
        if frame_ms <= 0 or start_frames <= 0 or stop_frames <= 0 or window_frames < start_frames:
            raise ValueError(
                "need frame_ms, start_frames, stop_frames > 0 and window_frames >= start_frames"
            )
        self._frame_ms = frame_ms
        self._start_frames = start_frames
        self._stop_frames = stop_frames
        self._ring_speech = [False] * window_frames
        self._ring_ms = [0] * window_frames
        self._pos = 0
        self._speech_in_window = 0
        self._silent_frames = 0
        self._last_speech_ms: int | None = None
        self.speaking = False
        """Whether speech has started and not yet stopped."""

    @property
    def speech_in_window(self) -> int:
        """Speech frames in the start window (0 while speaking: the window is cleared at onset)."""
        return self._speech_in_window

    @property
    def last_speech_ms(self) -> int | None:
        """Start time of the most recent speech frame, or None before any."""
        return self._last_speech_ms

    @property
    def voiced_until_ms(self) -> int | None:
        """End time of the most recent speech frame, or None before any."""
        last = self._last_speech_ms
        return None if last is None else last + self._frame_ms

    def reset(self) -> None:
        """Forget all history: not speaking, empty window."""
        self._clear_window()
        self._silent_frames = 0
        self._last_speech_ms = None
        self.speaking = False

    def _clear_window(self) -> None:
        ring = self._ring_speech
        for i in range(len(ring)):
            ring[i] = False
        self._speech_in_window = 0
        self._pos = 0

    def update(self, is_speech: bool, now_ms: int) -> VadEvent | None:
        """Feed one frame's decision; ``now_ms`` is the time of its first sample."""
        if is_speech:
            self._last_speech_ms = now_ms
        if self.speaking:
            if is_speech:
                self._silent_frames = 0
                return None
            self._silent_frames += 1
            if self._silent_frames < self._stop_frames:
                return None
            self.speaking = False
            self._silent_frames = 0
            last = self._last_speech_ms
            assert last is not None  # speaking implies a speech frame was seen
            return SpeechStopped(last + self._frame_ms)

        ring = self._ring_speech
        pos = self._pos
        if ring[pos]:
            self._speech_in_window -= 1
        ring[pos] = is_speech
        self._ring_ms[pos] = now_ms
        pos += 1
        self._pos = 0 if pos == len(ring) else pos
        if not is_speech:
            return None
        self._speech_in_window += 1
        if self._speech_in_window < self._start_frames:
            return None
        onset_ms = self._earliest_speech_in_window()
        self._clear_window()
        self.speaking = True
        self._silent_frames = 0
        return SpeechStarted(onset_ms)

    def _earliest_speech_in_window(self) -> int:
        ring = self._ring_speech
        n = len(ring)
        for k in range(n):
            i = (self._pos + k) % n  # _pos is the oldest slot
            if ring[i]:
                return self._ring_ms[i]
        raise AssertionError("window holds no speech frame")  # pragma: no cover


class Vad:
    """webrtcvad, energy gates and :class:`SpeechHysteresis` for one audio stream.

    A frame is speech when webrtcvad says so, it is not below the energy floor
    and it is within ``speech_range_db`` of the loudest speech frame of the
    current speech (or, before an onset, of the speech frames in the start
    window).  The last rule trims webrtcvad's built-in hangover (about 100 ms
    of quiet frames it still calls speech after any burst): stop times land on
    the real end of speech, and a short click does not grow into an onset.

    ``process(frame, now_ms)`` takes exactly ``config.frame_samples`` samples of
    int16 PCM at ``config.rate_hz`` (any form :func:`engine.energy.check_frame`
    accepts; the buffer is passed through without copying).
    """

    __slots__ = (
        "_floor_threshold",
        "_handle",
        "_hysteresis",
        "_n_samples",
        "_peak_energy",
        "_range_ratio",
        "_rate_hz",
        "_vad",
        "config",
        "last_frame_speech",
    )

    def __init__(self, config: VadConfig | None = None):
        self.config = config if config is not None else VadConfig()
        c = self.config
        self._vad = webrtcvad.Vad(c.aggressiveness)
        self._handle = self._vad._vad
        self._rate_hz = c.rate_hz
        self._n_samples = c.frame_samples
        self._floor_threshold = (
            0
            if c.energy_floor_dbfs is None
            else dbfs_threshold(c.energy_floor_dbfs, self._n_samples)
        )
        # A frame is within range of the peak when energy * ratio >= peak energy.
        self._range_ratio = (
            0.0 if c.speech_range_db is None else math.pow(10.0, c.speech_range_db / 10.0)
        )
        self._peak_energy = 0
        self._hysteresis = SpeechHysteresis(
            c.frame_ms, c.start_frames, c.window_frames, c.stop_frames
        )
        self.last_frame_speech = False
        """The decision for the most recent frame, before hysteresis."""

    @property
    def speaking(self) -> bool:
        """Whether speech has started and not yet stopped."""
        return self._hysteresis.speaking

    @property
    def voiced_until_ms(self) -> int | None:
        """End time of the most recent speech frame, or None before any."""
        return self._hysteresis.voiced_until_ms

    def reset(self) -> None:
        """Forget the hysteresis state (webrtcvad keeps its adaptation)."""
        self._hysteresis.reset()
        self._peak_energy = 0
        self.last_frame_speech = False

    def process(self, frame: PcmFrame, now_ms: int) -> VadEvent | None:
        """Feed one frame whose first sample is at media time ``now_ms``; maybe return an event."""
        is_int16 = check_frame(frame, self._n_samples)
        # webrtcvad sees every frame so that its noise adaptation tracks the real signal.
        speech: bool = _webrtcvad_process(self._handle, self._rate_hz, frame, self._n_samples)
        hysteresis = self._hysteresis
        if not hysteresis.speaking and not hysteresis.speech_in_window:
            self._peak_energy = 0  # nothing left to compare against
        if speech and (self._floor_threshold or self._range_ratio):
            energy = _energy.sum_squares_i16(frame) if is_int16 else _energy.sum_squares_le(frame)
            if energy < self._floor_threshold:
                speech = False
            elif self._range_ratio:
                if energy > self._peak_energy:
                    self._peak_energy = energy
                elif energy * self._range_ratio < self._peak_energy:
                    speech = False
        self.last_frame_speech = speech
        return hysteresis.update(speech, now_ms)
