"""Rendering fixed utterances with the espeak-ng command line."""

from __future__ import annotations

import numpy as np
import pytest

from server.espeak_cli import EspeakMissingError, espeak_path, synthesize


def test_missing_espeak_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(EspeakMissingError, match=r"\./voxgate\.sh test"):
        espeak_path()


@pytest.mark.parametrize("rate_hz", [8000, 16000, 24000])
def test_speech_is_trimmed_and_at_the_rate(rate_hz: int) -> None:
    pcm = synthesize("hello there", rate_hz)
    assert pcm.dtype == np.int16
    seconds = len(pcm) / rate_hz
    assert 0.4 < seconds < 2.0  # two words at 160 words per minute
    # Trimmed: the sound starts and ends at the edges, no leading digital silence.
    assert np.any(pcm[: rate_hz // 100] != 0)
    assert np.any(pcm[-rate_hz // 100 :] != 0)


def test_longer_text_is_longer_speech() -> None:
    short = synthesize("yes", 8000)
    long = synthesize("yes, and then some more words after that", 8000)
    assert len(long) > 3 * len(short)


def test_empty_text_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        synthesize("   ", 8000)
