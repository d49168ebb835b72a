"""Codec registry: an encoder and a decoder for every codec in ``engine.format.CODECS``.

An :class:`Encoder` turns one frame of internal PCM (mono int16, ``frame_samples``
samples at ``rate_hz``) into one payload; a :class:`Decoder` turns one payload
into mono int16 PCM.  ``make_encoder(fmt)`` / ``make_decoder(fmt)`` pick the
implementation for an :class:`~engine.format.AudioFormat` and refuse codec,
rate, channel and frame combinations the codec cannot carry.

Per-frame use without allocation (G.711 and L16 big-endian; G.722 and Opus
allocate inside PyAV but still spare the caller a new bytes object)::

    enc = make_encoder(PCMU8K)
    payload = bytearray(enc.max_payload_bytes)
    n = enc.encode_into(pcm_frame, payload)      # payload[:n] goes on the wire

G.711 and L16 objects are stateless wrappers over the native kernels; G.722 and
Opus keep one FFmpeg context per stream, so make one object per call direction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

import numpy as np
import numpy.typing as npt

from engine import avcodec
from engine.format import SUPPORTED_RATES_HZ, AudioFormat
from engine.g711 import alaw_decode_into, alaw_encode_into, ulaw_decode_into, ulaw_encode_into
from engine.l16 import l16be_to_pcm_into, pcm_to_l16be_into

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine._g711 import BufferLike

__all__ = ["OPUS_DEFAULT_BITRATE_BPS", "Decoder", "Encoder", "make_decoder", "make_encoder"]

OPUS_DEFAULT_BITRATE_BPS: Final = 32000
"""Opus bitrate used when ``make_encoder`` is not given one, in bit/s."""


class Encoder(Protocol):
    """Encodes one frame of internal PCM into one payload."""

    @property
    def rate_hz(self) -> int:
        """Audio sample rate of the PCM this encoder takes."""
        ...

    @property
    def frame_samples(self) -> int:
        """Samples in the one frame each call takes."""
        ...

    @property
    def max_payload_bytes(self) -> int:
        """Upper bound of one payload's size, for ``encode_into`` buffers."""
        ...

    def encode(self, pcm: BufferLike) -> bytes:
        """Payload of exactly one frame (int16 array or LE int16 bytes)."""
        ...

    def encode_into(self, pcm: BufferLike, out: bytearray) -> int:
        """Write the payload of one frame into ``out``; return its length in bytes."""
        ...


class Decoder(Protocol):
    """Decodes one payload into mono int16 PCM."""

    @property
    def rate_hz(self) -> int:
        """Audio sample rate of the PCM this decoder produces."""
        ...

    def decode(self, payload: BufferLike) -> npt.NDArray[np.int16]:
        """PCM of one non-empty payload, as a new 1-D int16 array."""
        ...

    def decode_into(self, payload: BufferLike, out: npt.NDArray[np.int16]) -> int:
        """Write the PCM of one payload into ``out``; return samples written."""
        ...


class _KernelEncoder:
    """Stateless encoder over a native ``*_into`` kernel (G.711, L16 big-endian)."""

    def __init__(
        self,
        codec: str,
        rate_hz: int,
        frame_samples: int,
        bytes_per_sample: int,
        kernel: Callable[[BufferLike, BufferLike], int],
    ) -> None:
        self.codec: Final = codec
        self.rate_hz: Final = rate_hz
        self.frame_samples: Final = frame_samples
        self.max_payload_bytes: Final = frame_samples * bytes_per_sample
        self._kernel = kernel

    def encode(self, pcm: BufferLike) -> bytes:
        n_samples = _frame_samples(pcm, self.codec)
        if n_samples != self.frame_samples:
            raise ValueError(
                f"{self.codec}: expected one frame of {self.frame_samples} samples, got {n_samples}"
            )
        out = bytearray(self.max_payload_bytes)
        self._kernel(pcm, out)
        return bytes(out)

    def encode_into(self, pcm: BufferLike, out: bytearray) -> int:
        """Allocation-free; on ``ValueError`` the contents of ``out`` are unspecified."""
        n_samples = self._kernel(pcm, out)
        if n_samples != self.frame_samples:
            raise ValueError(
                f"{self.codec}: expected one frame of {self.frame_samples} samples, got {n_samples}"
            )
        return self.max_payload_bytes


class _KernelDecoder:
    """Stateless decoder over a native ``*_into`` kernel (G.711, L16 big-endian)."""

    def __init__(
        self,
        codec: str,
        rate_hz: int,
        bytes_per_sample: int,
        kernel: Callable[[BufferLike, BufferLike], int],
    ) -> None:
        self.codec: Final = codec
        self.rate_hz: Final = rate_hz
        self._bytes_per_sample = bytes_per_sample
        self._kernel = kernel

    def decode(self, payload: BufferLike) -> npt.NDArray[np.int16]:
        out = np.empty(_payload_nbytes(payload, self.codec) // self._bytes_per_sample, np.int16)
        self._kernel(payload, out)
        return out

    def decode_into(self, payload: BufferLike, out: npt.NDArray[np.int16]) -> int:
        """Allocation-free: the kernel checks ``payload`` and ``out``."""
        n_samples = self._kernel(payload, out)
        if n_samples == 0:
            raise ValueError(f"{self.codec}: empty payload")
        return n_samples


class _L16Encoder:
    """Internal PCM is already little-endian L16: encoding is a checked copy."""

    codec: Final = "l16"

    def __init__(self, rate_hz: int, frame_samples: int) -> None:
        self.rate_hz: Final = rate_hz
        self.frame_samples: Final = frame_samples
        self.max_payload_bytes: Final = 2 * frame_samples

    def encode(self, pcm: BufferLike) -> bytes:
        return avcodec.frame_samples_view(pcm, self.frame_samples, self.codec).tobytes()

    def encode_into(self, pcm: BufferLike, out: bytearray) -> int:
        samples = avcodec.frame_samples_view(pcm, self.frame_samples, self.codec)
        view = memoryview(out)
        if view.nbytes < self.max_payload_bytes:
            raise ValueError(f"l16: out is too small: {view.nbytes} bytes, need {samples.nbytes}")
        view[: self.max_payload_bytes] = samples.data.cast("B")
        return self.max_payload_bytes


class _L16Decoder:
    """Little-endian L16 payload to internal PCM: a checked copy."""

    codec: Final = "l16"

    def __init__(self, rate_hz: int) -> None:
        self.rate_hz: Final = rate_hz

    def decode(self, payload: BufferLike) -> npt.NDArray[np.int16]:
        n_bytes = _payload_nbytes(payload, self.codec)
        if n_bytes % 2:
            raise ValueError(f"l16: payload has an odd byte count ({n_bytes})")
        return np.frombuffer(_as_memoryview(payload), dtype="<i2").astype(np.int16)

    def decode_into(self, payload: BufferLike, out: npt.NDArray[np.int16]) -> int:
        pcm = self.decode(payload)
        if out.dtype != np.int16 or out.ndim != 1 or out.size < pcm.size:
            raise ValueError(f"l16: out must be a 1-D int16 array of at least {pcm.size} samples")
        out[: pcm.size] = pcm
        return int(pcm.size)


def _as_memoryview(obj: BufferLike) -> memoryview:
    """``memoryview(obj)``; TypeError if ``obj`` exports no buffer."""
    return obj.data if isinstance(obj, np.ndarray) else memoryview(obj)


def _frame_samples(pcm: BufferLike, codec: str) -> int:
    """Samples in ``pcm`` (int16 buffer or LE int16 bytes); the kernel checks the rest."""
    try:
        view = _as_memoryview(pcm)
    except TypeError:
        raise ValueError(
            f"{codec}: pcm must be int16 samples or bytes, got {type(pcm).__name__}"
        ) from None
    if view.itemsize not in (1, 2):
        raise ValueError(f"{codec}: pcm must be int16 samples or bytes, got format {view.format!r}")
    return view.nbytes // 2


def _payload_nbytes(payload: BufferLike, codec: str) -> int:
    try:
        n_bytes = _as_memoryview(payload).nbytes
    except TypeError:
        raise ValueError(f"{codec}: payload must be bytes, got {type(payload).__name__}") from None
    if n_bytes == 0:
        raise ValueError(f"{codec}: empty payload")
    return n_bytes


def _check_format(fmt: AudioFormat) -> None:
    codec = fmt.codec
    if codec in ("pcmu", "pcma") and fmt.rate_hz != 8000:
        raise ValueError(f"{codec} is defined at 8000 Hz only, got {fmt.rate_hz} Hz")
    if codec == "g722" and fmt.rate_hz != avcodec.G722_RATE_HZ:
        raise ValueError(
            f"g722 carries 16000 Hz audio (its RTP clock is 8000 Hz), got {fmt.rate_hz} Hz"
        )
    if codec == "opus":
        if fmt.rate_hz != avcodec.OPUS_RATE_HZ:
            raise ValueError(f"opus runs at 48000 Hz here, got {fmt.rate_hz} Hz")
        if fmt.frame_ms not in avcodec.OPUS_FRAME_MS_CHOICES:
            raise ValueError(
                f"opus frames must be one of {avcodec.OPUS_FRAME_MS_CHOICES} ms, got {fmt.frame_ms}"
            )
    if codec in ("l16", "l16be") and fmt.rate_hz not in SUPPORTED_RATES_HZ:
        raise ValueError(f"{codec} at {fmt.rate_hz} Hz is not one of {SUPPORTED_RATES_HZ}")
    if codec != "opus" and fmt.channels != 1:
        raise ValueError(f"{codec} is mono only here, got {fmt.channels} channels")


def make_encoder(fmt: AudioFormat, *, bitrate_bps: int | None = None) -> Encoder:
    """Encoder for ``fmt``; ``bitrate_bps`` applies to Opus only (default 32 kbit/s)."""
    _check_format(fmt)
    if bitrate_bps is not None and fmt.codec != "opus":
        raise ValueError(f"{fmt.codec} has a fixed bitrate; bitrate_bps is for opus only")
    n = fmt.frame_samples
    if fmt.codec == "pcmu":
        return _KernelEncoder("pcmu", fmt.rate_hz, n, 1, ulaw_encode_into)
    if fmt.codec == "pcma":
        return _KernelEncoder("pcma", fmt.rate_hz, n, 1, alaw_encode_into)
    if fmt.codec == "l16be":
        return _KernelEncoder("l16be", fmt.rate_hz, n, 2, pcm_to_l16be_into)
    if fmt.codec == "l16":
        return _L16Encoder(fmt.rate_hz, n)
    if fmt.codec == "g722":
        return avcodec.G722Encoder(fmt.frame_ms)
    return avcodec.OpusEncoder(
        bitrate_bps=OPUS_DEFAULT_BITRATE_BPS if bitrate_bps is None else bitrate_bps,
        channels=fmt.channels,
        frame_ms=fmt.frame_ms,
    )


def make_decoder(fmt: AudioFormat) -> Decoder:
    """Decoder for ``fmt`` (output is always mono int16 at ``fmt.rate_hz``)."""
    _check_format(fmt)
    if fmt.codec == "pcmu":
        return _KernelDecoder("pcmu", fmt.rate_hz, 1, ulaw_decode_into)
    if fmt.codec == "pcma":
        return _KernelDecoder("pcma", fmt.rate_hz, 1, alaw_decode_into)
    if fmt.codec == "l16be":
        return _KernelDecoder("l16be", fmt.rate_hz, 2, l16be_to_pcm_into)
    if fmt.codec == "l16":
        return _L16Decoder(fmt.rate_hz)
    if fmt.codec == "g722":
        return avcodec.G722Decoder()
    return avcodec.OpusDecoder()
