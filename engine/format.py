"""Audio formats and unit conversions: samples, bytes, milliseconds.

Internal PCM everywhere in voxgate is mono signed 16-bit little-endian.
Codecs are named by lower-case strings that match SDP/RTP encoding names where
one exists (``pcmu``, ``pcma``, ``g722``, ``opus``) plus ``l16`` (little-endian
linear PCM, the internal form) and ``l16be`` (network-order linear PCM, RTP L16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

PCM_SAMPLE_BYTES: Final = 2
"""Bytes in one internal PCM sample (int16)."""

SUPPORTED_RATES_HZ: Final = (8000, 16000, 22050, 24000, 44100, 48000)
"""Sample rates the engine resamples between."""

FRAME_MS_CHOICES: Final = (10, 20, 30)
"""Frame durations the frame buffer and the VAD accept."""

# Encoded bytes per (sample x channel) for constant-bitrate codecs; ``None`` for
# variable-bitrate ones.  G.722 carries 16 kHz audio at 64 kbit/s, i.e. 4 bits
# per sample.
_BYTES_PER_SAMPLE: Final[dict[str, float | None]] = {
    "pcmu": 1.0,
    "pcma": 1.0,
    "l16": 2.0,
    "l16be": 2.0,
    "g722": 0.5,
    "opus": None,
}

CODECS: Final = tuple(_BYTES_PER_SAMPLE)


def ms_to_samples(duration_ms: float, rate_hz: int) -> int:
    """Number of samples in ``duration_ms`` at ``rate_hz`` (must be a whole number)."""
    n = duration_ms * rate_hz / 1000
    if n != int(n):
        raise ValueError(f"{duration_ms} ms is not a whole number of samples at {rate_hz} Hz")
    return int(n)


def samples_to_ms(n_samples: int, rate_hz: int) -> float:
    """Duration in ms of ``n_samples`` at ``rate_hz``."""
    _check_rate(rate_hz)
    return n_samples * 1000 / rate_hz


def pcm_bytes_to_samples(n_bytes: int) -> int:
    """Samples in ``n_bytes`` of internal int16 PCM; odd byte counts are refused."""
    if n_bytes < 0 or n_bytes % PCM_SAMPLE_BYTES:
        raise ValueError(f"{n_bytes} bytes is not a whole number of 16-bit samples")
    return n_bytes // PCM_SAMPLE_BYTES


def _check_rate(rate_hz: int) -> None:
    if not isinstance(rate_hz, int) or isinstance(rate_hz, bool) or rate_hz <= 0:
        raise ValueError(f"sample rate must be a positive integer in Hz, got {rate_hz!r}")


def check_supported_rate(name: str, rate_hz: object) -> int:
    """``rate_hz`` if it is in :data:`SUPPORTED_RATES_HZ`, else ``ValueError`` naming ``name``."""
    if (
        not isinstance(rate_hz, int)
        or isinstance(rate_hz, bool)
        or rate_hz not in SUPPORTED_RATES_HZ
    ):
        rates = ", ".join(map(str, SUPPORTED_RATES_HZ))
        raise ValueError(f"{name} {rate_hz!r} Hz is not supported; use one of {rates}")
    return rate_hz


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """How one stream of audio is framed on some wire or inside the engine.

    ``rate_hz`` is the audio sample rate (for G.722 the 16 kHz audio rate, not
    the 8 kHz RTP clock), ``frame_ms`` the packetisation interval.
    """

    codec: str = "l16"
    rate_hz: int = 16000
    channels: int = 1
    frame_ms: int = 20

    def __post_init__(self) -> None:
        if self.codec not in _BYTES_PER_SAMPLE:
            raise ValueError(f"unsupported codec {self.codec!r}; known: {', '.join(CODECS)}")
        _check_rate(self.rate_hz)
        if not isinstance(self.channels, int) or self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels!r}")
        if (
            not isinstance(self.frame_ms, int)
            or isinstance(self.frame_ms, bool)
            or not 0 < self.frame_ms <= 120
        ):
            raise ValueError(f"frame_ms must be an integer in 1..120 ms, got {self.frame_ms!r}")
        ms_to_samples(self.frame_ms, self.rate_hz)  # must be a whole number of samples

    @property
    def frame_samples(self) -> int:
        """Samples per channel in one frame."""
        return self.frame_ms * self.rate_hz // 1000

    @property
    def is_constant_bitrate(self) -> bool:
        return _BYTES_PER_SAMPLE[self.codec] is not None

    @property
    def frame_bytes(self) -> int:
        """Encoded bytes in one frame; only for constant-bitrate codecs."""
        per_sample = _BYTES_PER_SAMPLE[self.codec]
        if per_sample is None:
            raise ValueError(f"{self.codec} is variable-bitrate: frames have no fixed size")
        return math.ceil(self.frame_samples * self.channels * per_sample)

    def bytes_to_ms(self, n_bytes: int) -> float:
        """Duration of ``n_bytes`` of encoded audio; only for constant-bitrate codecs."""
        per_sample = _BYTES_PER_SAMPLE[self.codec]
        if per_sample is None:
            raise ValueError(f"{self.codec} is variable-bitrate: byte counts carry no duration")
        n_samples = n_bytes / (per_sample * self.channels)
        if n_samples != int(n_samples):
            raise ValueError(f"{n_bytes} bytes is not a whole number of {self.codec} samples")
        return samples_to_ms(int(n_samples), self.rate_hz)

    def ms_to_bytes(self, duration_ms: float) -> int:
        """Encoded bytes in ``duration_ms``; only for constant-bitrate codecs."""
        per_sample = _BYTES_PER_SAMPLE[self.codec]
        if per_sample is None:
            raise ValueError(f"{self.codec} is variable-bitrate: durations carry no byte count")
        return math.ceil(ms_to_samples(duration_ms, self.rate_hz) * self.channels * per_sample)


PCM16K: Final = AudioFormat("l16", 16000, 1, 20)
"""The engine's VAD/STT side: 16 kHz int16, 20 ms frames (320 samples)."""

PCMU8K: Final = AudioFormat("pcmu", 8000, 1, 20)
"""Telephony G.711 mu-law, 8 kHz, 20 ms frames (160 bytes)."""
