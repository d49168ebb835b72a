"""Reply audio from a TTS (16-bit PCM at its rate) to the wire (8 kHz mu-law).

One :class:`WireEncoder` per TTS stream: it keeps whole samples across chunks
of any byte length, resamples when the TTS rate is not 8 kHz (soxr, streaming)
and encodes mu-law.  ``finish`` returns what the resampler still holds.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from engine.g711 import ulaw_encode
from engine.resample import StreamResampler
from server.providers.ttsmux import SampleCarry

WIRE_RATE_HZ: Final = 8000
WIRE_BYTES_PER_MS: Final = WIRE_RATE_HZ // 1000
"""mu-law bytes per ms of wire audio."""


class WireEncoder:
    """PCM s16le mono at ``rate_hz`` in, 8 kHz mu-law out."""

    def __init__(self, rate_hz: int) -> None:
        self.rate_hz = rate_hz
        self._carry = SampleCarry()
        self._resampler = StreamResampler(rate_hz, WIRE_RATE_HZ, "HQ") if rate_hz != 8000 else None

    def encode(self, pcm: bytes) -> bytes:
        """mu-law for ``pcm`` (possibly empty, or held back a little by the resampler)."""
        whole = self._carry.take(pcm)
        if not whole:
            return b""
        if self._resampler is None:
            return ulaw_encode(whole)
        out = self._resampler.process(np.frombuffer(whole, dtype="<i2"))
        return ulaw_encode(out.tobytes()) if len(out) else b""

    def finish(self) -> bytes:
        """mu-law of what the resampler held back; the stream is over."""
        if self._resampler is None:
            return b""
        tail = self._resampler.flush()
        return ulaw_encode(tail.tobytes()) if len(tail) else b""


def wire_ms(ulaw: bytes) -> float:
    """Duration (ms) of 8 kHz mu-law bytes."""
    return len(ulaw) / WIRE_BYTES_PER_MS
