"""G.722 and Opus through PyAV (FFmpeg), one persistent codec context per stream.

Each encoder/decoder object wraps one ``av.CodecContext`` kept for the whole
call, so codec state (G.722's ADPCM predictors, Opus's range coder and
overlap) carries across frames.  Internal PCM is mono int16 at the codec's
audio rate:

- G.722: 16 kHz audio at 64 kbit/s (2 samples per payload byte).  Its RTP
  clock is 8 kHz (RFC 3551), so RTP timestamps advance by half the sample
  count; :data:`G722_RTP_CLOCK_HZ` is there for the transport.
- Opus: 48 kHz, mono or stereo on the wire, mono inside; 10/20/40/60 ms
  frames, configurable bitrate.

``encode(pcm)`` takes exactly one frame (``frame_samples`` samples) as an int16
numpy array or little-endian int16 bytes and returns one payload.
``decode(payload)`` takes one payload and returns a new 1-D int16 array.
Wrong frame sizes and empty or undecodable payloads raise ``ValueError``
naming the codec.  These calls allocate inside FFmpeg and PyAV; the ``*_into``
variants only spare the caller's side (result copied into a caller buffer).
"""

from __future__ import annotations

import fractions
from typing import TYPE_CHECKING, Final, Literal

import av
import numpy as np
import numpy.typing as npt

from engine.format import ms_to_samples

if TYPE_CHECKING:
    from av.audio.codeccontext import AudioCodecContext

    from engine._g711 import BufferLike

__all__ = [
    "G722_RATE_HZ",
    "G722_RTP_CLOCK_HZ",
    "OPUS_APPLICATIONS",
    "OPUS_FRAME_MS_CHOICES",
    "OPUS_MAX_PACKET_BYTES",
    "OPUS_RATE_HZ",
    "G722Decoder",
    "G722Encoder",
    "OpusDecoder",
    "OpusEncoder",
    "frame_samples_view",
]

G722_RATE_HZ: Final = 16000
"""G.722 audio sample rate."""

G722_RTP_CLOCK_HZ: Final = 8000
"""G.722 RTP timestamp clock (RFC 3551 keeps the historical 8 kHz)."""

OPUS_RATE_HZ: Final = 48000
"""Opus rate used on the wire and inside (RTP clock is 48 kHz too)."""

OPUS_FRAME_MS_CHOICES: Final = (10, 20, 40, 60)
"""Opus frame durations accepted by :class:`OpusEncoder`."""

OPUS_BITRATE_RANGE_BPS: Final = (6000, 510000)
OPUS_APPLICATIONS: Final = ("voip", "lowdelay")
"""libopus modes: ``voip`` (SILK/hybrid, 6.5 ms look-ahead) or ``lowdelay`` (CELT only, 2.5 ms)."""
"""Bitrates libopus accepts, in bit/s."""

OPUS_MAX_PACKET_BYTES: Final = 1275 * 3 + 7
"""Largest Opus packet (RFC 6716, section 3.4): a safe size for ``encode_into`` buffers."""


def frame_samples_view(pcm: BufferLike, n_samples: int, codec: str) -> npt.NDArray[np.int16]:
    """1-D int16 view of ``pcm`` (int16 array or LE int16 bytes) holding exactly ``n_samples``.

    No copy is made.  Anything else raises ``ValueError`` naming ``codec``.
    """
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise ValueError(f"{codec}: pcm must be int16 samples, got dtype {pcm.dtype}")
        samples = pcm.reshape(-1)
    else:
        try:
            view = memoryview(pcm)
        except TypeError:
            raise ValueError(
                f"{codec}: pcm must be int16 samples or bytes, got {type(pcm).__name__}"
            ) from None
        if view.itemsize != 1:
            raise ValueError(f"{codec}: pcm bytes must have 1-byte items, got {view.format!r}")
        if view.nbytes % 2:
            raise ValueError(f"{codec}: pcm has an odd byte count ({view.nbytes})")
        samples = np.frombuffer(view, dtype="<i2")
    if samples.size != n_samples:
        raise ValueError(f"{codec}: expected one frame of {n_samples} samples, got {samples.size}")
    return samples


def _payload_bytes(payload: BufferLike, codec: str) -> bytes:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ValueError(f"{codec}: payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload)
    if not data:
        # An empty packet would tell FFmpeg to drain (end of stream), not decode.
        raise ValueError(f"{codec}: empty payload")
    return data


def _open_context(
    name: Literal["g722", "libopus"],
    mode: Literal["r", "w"],
    rate_hz: int,
    layout: str,
    *,
    options: dict[str, str] | None = None,
    bitrate_bps: int | None = None,
) -> AudioCodecContext:
    context = av.CodecContext.create(name, mode)
    context.format = "s16"
    context.layout = layout
    context.sample_rate = rate_hz
    if bitrate_bps is not None:
        context.bit_rate = bitrate_bps
    if mode == "w":
        context.time_base = fractions.Fraction(1, rate_hz)
    if options:
        context.options = options
    context.open()
    return context


class _FrameEncoder:
    """One encode context plus one reusable s16 input frame (shared plumbing)."""

    def __init__(
        self, context: AudioCodecContext, codec: str, n_samples: int, channels: int
    ) -> None:
        self._context = context
        self._codec = codec
        self._frame = av.AudioFrame(
            format="s16", layout="mono" if channels == 1 else "stereo", samples=n_samples
        )
        self._frame.sample_rate = context.sample_rate
        self._frame.time_base = context.time_base
        # Interleaved samples of the frame's single plane, shape (n_samples, channels).
        self._plane = np.frombuffer(memoryview(self._frame.planes[0]), dtype=np.int16).reshape(
            -1, channels
        )
        self._n_samples = n_samples
        self._pts = 0

    def encode(self, pcm: BufferLike) -> bytes:
        samples = frame_samples_view(pcm, self._n_samples, self._codec)
        self._plane[:] = samples[:, np.newaxis]  # mono into every wire channel
        self._frame.pts = self._pts
        self._pts += self._n_samples
        try:
            packets = self._context.encode(self._frame)
        except av.FFmpegError as exc:
            raise ValueError(f"{self._codec}: encoder failed: {exc}") from None
        if len(packets) != 1:
            raise RuntimeError(f"{self._codec}: encoder returned {len(packets)} packets, not 1")
        return bytes(packets[0])

    def encode_into(self, pcm: BufferLike, out: bytearray | memoryview) -> int:
        payload = self.encode(pcm)
        view = memoryview(out)
        if len(payload) > view.nbytes:
            raise ValueError(
                f"{self._codec}: out is too small: {view.nbytes} bytes for {len(payload)}"
            )
        view[: len(payload)] = payload
        return len(payload)


class _FrameDecoder:
    """One decode context producing mono s16 (shared plumbing)."""

    def __init__(self, context: AudioCodecContext, codec: str) -> None:
        self._context = context
        self._codec = codec

    def decode(self, payload: BufferLike) -> npt.NDArray[np.int16]:
        packet = av.Packet(_payload_bytes(payload, self._codec))
        try:
            frames = self._context.decode(packet)
        except av.FFmpegError as exc:
            raise ValueError(f"{self._codec}: cannot decode payload: {exc}") from None
        if not frames:
            raise ValueError(f"{self._codec}: payload decoded to no audio")
        chunks = [frame.to_ndarray().reshape(-1) for frame in frames]
        pcm = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        return np.ascontiguousarray(pcm, dtype=np.int16)

    def decode_into(self, payload: BufferLike, out: npt.NDArray[np.int16]) -> int:
        pcm = self.decode(payload)
        if out.dtype != np.int16 or out.ndim != 1:
            raise ValueError(f"{self._codec}: out must be a 1-D int16 array")
        if pcm.size > out.size:
            raise ValueError(
                f"{self._codec}: out is too small: room for {out.size} samples, need {pcm.size}"
            )
        out[: pcm.size] = pcm
        return int(pcm.size)


class G722Encoder(_FrameEncoder):
    """G.722 at 64 kbit/s: one frame of 16 kHz mono int16 in, ``frame_samples // 2`` bytes out."""

    rate_hz: Final = G722_RATE_HZ

    def __init__(self, frame_ms: int = 20) -> None:
        n_samples = ms_to_samples(frame_ms, G722_RATE_HZ)
        context = _open_context(
            "g722", "w", G722_RATE_HZ, "mono", options={"frame_size": str(n_samples)}
        )
        super().__init__(context, "G.722", n_samples, channels=1)
        self.frame_samples: Final = n_samples
        self.max_payload_bytes: Final = n_samples // 2


class G722Decoder(_FrameDecoder):
    """G.722 at 64 kbit/s: one payload in, ``2 * len(payload)`` samples of 16 kHz int16 out."""

    rate_hz: Final = G722_RATE_HZ

    def __init__(self) -> None:
        super().__init__(_open_context("g722", "r", G722_RATE_HZ, "mono"), "G.722")


class OpusEncoder(_FrameEncoder):
    """Opus (libopus) at 48 kHz: one frame of mono int16 in, one packet out.

    ``channels`` is the count on the wire (1 or 2); stereo sends the mono
    input on both channels.  ``bitrate_bps`` is the target bitrate in bit/s.
    ``application`` is one of :data:`OPUS_APPLICATIONS` (``lowdelay`` saves 4 ms
    of look-ahead: for audio that is already narrowband, like the call's).
    """

    rate_hz: Final = OPUS_RATE_HZ

    def __init__(
        self,
        bitrate_bps: int = 32000,
        channels: int = 1,
        frame_ms: int = 20,
        application: str = "voip",
    ) -> None:
        low, high = OPUS_BITRATE_RANGE_BPS
        if isinstance(bitrate_bps, bool) or not isinstance(bitrate_bps, int):
            raise ValueError(f"Opus: bitrate_bps must be an int, got {bitrate_bps!r}")
        if not low <= bitrate_bps <= high:
            raise ValueError(f"Opus: bitrate {bitrate_bps} bit/s is outside {low}..{high}")
        if channels not in (1, 2):
            raise ValueError(f"Opus: channels must be 1 or 2, got {channels!r}")
        if frame_ms not in OPUS_FRAME_MS_CHOICES:
            raise ValueError(
                f"Opus: frame_ms must be one of {OPUS_FRAME_MS_CHOICES}, got {frame_ms!r}"
            )
        if application not in OPUS_APPLICATIONS:
            raise ValueError(
                f"Opus: application must be one of {OPUS_APPLICATIONS}, got {application!r}"
            )
        context = _open_context(
            "libopus",
            "w",
            OPUS_RATE_HZ,
            "mono" if channels == 1 else "stereo",
            options={"application": application, "frame_duration": str(frame_ms)},
            bitrate_bps=bitrate_bps,
        )
        n_samples = ms_to_samples(frame_ms, OPUS_RATE_HZ)
        super().__init__(context, "Opus", n_samples, channels)
        self.frame_samples: Final = n_samples
        self.channels: Final = channels
        self.bitrate_bps: Final = bitrate_bps
        self.max_payload_bytes: Final = OPUS_MAX_PACKET_BYTES


class OpusDecoder(_FrameDecoder):
    """Opus at 48 kHz: one packet (mono or stereo) in, mono int16 out.

    libopus downmixes stereo packets itself, so the wire channel count does not
    matter here.  Output length is the packet's duration (e.g. 960 for 20 ms).
    """

    rate_hz: Final = OPUS_RATE_HZ

    def __init__(self) -> None:
        super().__init__(_open_context("libopus", "r", OPUS_RATE_HZ, "mono"), "Opus")
