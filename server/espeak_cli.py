"""Speech from the ``espeak-ng`` command line, as mono int16 PCM at a chosen rate.

Used where a fixed utterance is rendered ahead of time (test signals, the load
generator's scripted callers).  Live synthesis for calls is the espeak TTS
provider's job.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

DEFAULT_VOICE: Final = "en-us"
DEFAULT_WORDS_PER_MINUTE: Final = 160


class EspeakMissingError(RuntimeError):
    """The ``espeak-ng`` program is not installed."""


def espeak_path() -> str:
    """Path of ``espeak-ng``; :class:`EspeakMissingError` names the fix when it is missing."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakMissingError(
            "espeak-ng was not found on PATH; `./voxgate.sh test` installs it "
            "(or: apt-get install espeak-ng)"
        )
    return path


def synthesize(
    text: str,
    rate_hz: int,
    *,
    voice: str = DEFAULT_VOICE,
    words_per_minute: int = DEFAULT_WORDS_PER_MINUTE,
) -> npt.NDArray[np.int16]:
    """``text`` spoken by espeak-ng at ``rate_hz``, leading and trailing digital silence trimmed.

    The first and last samples of the result are the first and last non-zero
    samples espeak-ng wrote, so silences placed around it are exact.
    """
    if not text.strip():
        raise ValueError("nothing to say: text is empty")
    with tempfile.TemporaryDirectory(prefix="voxgate-espeak-") as tmp:
        wav_path = Path(tmp) / "speech.wav"
        subprocess.run(
            [espeak_path(), "-v", voice, "-s", str(words_per_minute), "-w", str(wav_path), text],
            check=True,
            capture_output=True,
        )
        with wave.open(str(wav_path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise RuntimeError("espeak-ng did not write mono 16-bit PCM")
            source_rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    voiced = np.flatnonzero(raw)
    if voiced.size:
        raw = raw[voiced[0] : voiced[-1] + 1]
    pcm = raw if source_rate == rate_hz else soxr.resample(raw, source_rate, rate_hz)
    return np.ascontiguousarray(pcm, dtype=np.int16)
