"""The audio pipelines of one SIP call's RTP stream, between the codec and the call model.

The call model speaks 8 kHz mu-law in 20 ms frames (160 bytes); the wire speaks
the negotiated codec at its own rate and packet time.

* :class:`InboundAudio`: one received payload -> decoded PCM at the codec's audio
  rate (8 kHz PCMU/PCMA, 16 kHz G.722, 48 kHz Opus) -> the engine's
  :class:`~engine.jitter.JitterBuffer` in 20 ms frames; per media tick, one 20 ms
  frame out of the buffer -> 8 kHz -> mu-law.
* :class:`OutboundAudio`: 20 ms mu-law frames in -> the codec's audio rate ->
  payloads of the packet time (``ptime``) out.  PCMU at 20 ms passes the bytes
  through untouched.

Timestamp rules.  The jitter buffer counts samples of the audio rate, so a
received RTP timestamp is scaled by ``audio_rate_hz / clock_rate_hz``: x2 for
G.722 (16 kHz audio on the historical 8 kHz RTP clock), x1 otherwise, modulo
2**32.  A packet may carry several 20 ms frames (ptime 40, 60 ...): it goes into
the buffer as that many frames, with consecutive timestamps and sequence numbers
derived from the packet's extended sequence number (``ext_seq * frames + i``).
Payloads that are not a whole number of 20 ms frames (10 ms or 30 ms packets),
longer than :data:`MAX_PACKET_FRAMES` frames, or undecodable are refused.

Nothing here touches sockets or clocks: times are arguments.  G.711 decoding and
encoding write into buffers owned by the pipeline; G.722 and Opus allocate inside
PyAV.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from engine.avcodec import OPUS_FRAME_MS_CHOICES
from engine.codecs import Decoder, Encoder, make_decoder, make_encoder
from engine.format import AudioFormat
from engine.g711 import ulaw_decode_into, ulaw_encode_into
from engine.jitter import FrameKind, JitterBuffer
from engine.polyphase import PolyphaseResampler
from server.sip.offeranswer import ChosenCodec

__all__ = [
    "FRAME_MS",
    "MAX_PACKET_FRAMES",
    "ULAW_SILENCE_FRAME",
    "WIRE_FRAME_BYTES",
    "WIRE_RATE_HZ",
    "InboundAudio",
    "OutboundAudio",
    "packet_ms_for",
]

FRAME_MS: Final = 20
"""The media tick and the call model's frame, ms."""
WIRE_RATE_HZ: Final = 8000
"""The call model's sample rate (mu-law)."""
WIRE_FRAME_BYTES: Final = WIRE_RATE_HZ * FRAME_MS // 1000
"""One 20 ms mu-law frame: 160 bytes."""
ULAW_SILENCE_FRAME: Final = b"\xff" * WIRE_FRAME_BYTES
MAX_PACKET_FRAMES: Final = 6
"""Longest received packet taken: 6 frames (120 ms, Opus's longest)."""

_CODEC_NAMES: Final = {"pcmu": "pcmu", "pcma": "pcma", "g722": "g722", "opus": "opus"}


def _format(codec: ChosenCodec, frame_ms: int) -> AudioFormat:
    name = _CODEC_NAMES.get(codec.name.lower())
    if name is None:
        raise ValueError(f"codec {codec.name!r} has no RTP pipeline here")
    return AudioFormat(name, codec.audio_rate_hz, 1, frame_ms)


def packet_ms_for(codec: ChosenCodec, ptime_ms: int) -> int:
    """The packet time we send for ``codec`` when the peer asked for ``ptime_ms`` (ms).

    A multiple of 10 ms from 10 to 60 is taken as is, except that Opus has no
    30 or 50 ms frame: those (and anything unusable) fall back to 20 ms.
    """
    if ptime_ms % 10 or not 10 <= ptime_ms <= 60:
        return FRAME_MS
    if codec.name.lower() == "opus" and ptime_ms not in OPUS_FRAME_MS_CHOICES:
        return FRAME_MS
    return ptime_ms


class InboundAudio:
    """Received payloads -> jitter buffer -> one 8 kHz mu-law frame per tick.

    ``min_delay_ms``/``max_delay_ms`` bound the jitter buffer's playout delay.
    """

    def __init__(
        self, codec: ChosenCodec, *, min_delay_ms: int = 20, max_delay_ms: int = 200
    ) -> None:
        fmt = _format(codec, FRAME_MS)
        self.codec = codec
        self.rate_hz = fmt.rate_hz
        self.frame_samples = fmt.frame_samples
        self._ts_scale = fmt.rate_hz // codec.clock_rate_hz if fmt.codec == "g722" else 1
        self._g711 = fmt.codec in ("pcmu", "pcma")
        self._decoder: Decoder = make_decoder(fmt)
        self.jitter = JitterBuffer(
            clock_rate_hz=fmt.rate_hz,
            frame_ms=FRAME_MS,
            min_delay_ms=min_delay_ms,
            max_delay_ms=max_delay_ms,
        )
        n = self.frame_samples
        self._frame_in = np.zeros(n, dtype=np.int16)
        self._packet_in = np.zeros(n * MAX_PACKET_FRAMES, dtype=np.int16)
        self._frame_out = np.zeros(n, dtype=np.int16)
        self._down = None if fmt.rate_hz == WIRE_RATE_HZ else PolyphaseResampler(fmt.rate_hz, 8000)
        self._pcm8k = np.zeros(WIRE_FRAME_BYTES, dtype=np.int16)
        self._ulaw = bytearray(WIRE_FRAME_BYTES)
        self.started = False
        """True once a frame other than EMPTY came out: from then on every tick gives one."""
        self.last_kind = FrameKind.EMPTY
        """What the last :meth:`pull` took from the jitter buffer."""

    def put(
        self, payload: memoryview, seq: int, ext_seq: int, timestamp: int, arrival_ms: int
    ) -> bool:
        """Decode one packet's payload into the jitter buffer; False when it is refused.

        ``seq`` is the 16-bit sequence number, ``ext_seq`` the extended one (used
        when the packet holds several frames), ``timestamp`` the RTP timestamp (RTP
        clock units), ``arrival_ms`` the arrival on the media clock (ms).  Never
        raises on payload contents.
        """
        n = self.frame_samples
        pcm: npt.NDArray[np.int16]
        if self._g711:
            size = payload.nbytes
            if size == n:
                pcm = self._frame_in
            elif size and size % n == 0 and size <= n * MAX_PACKET_FRAMES:
                pcm = self._packet_in
            else:
                return False
            self._decoder.decode_into(payload, pcm)
        else:
            if not payload.nbytes:
                return False
            try:
                pcm = self._decoder.decode(payload)
            except ValueError:
                return False
            size = pcm.size
            if size % n or not n <= size <= n * MAX_PACKET_FRAMES:
                return False
        ts = (timestamp * self._ts_scale) & 0xFFFFFFFF
        if size == n:
            self.jitter.put(seq, ts, pcm, arrival_ms)
            return True
        frames = size // n
        for i in range(frames):
            self.jitter.put(
                (ext_seq * frames + i) & 0xFFFF,
                (ts + i * n) & 0xFFFFFFFF,
                pcm[i * n : (i + 1) * n],
                arrival_ms,
            )
        return True

    def pull(self, now_ms: int) -> bytes | None:
        """The next 20 ms of caller audio as 160 mu-law bytes, or None before the first frame.

        ``now_ms`` is the media clock (ms, the same basis as ``arrival_ms``).
        """
        kind = self.jitter.pull_into(self._frame_out, now_ms)
        self.last_kind = FrameKind(kind)
        if kind == FrameKind.EMPTY and not self.started:
            return None
        self.started = True
        if self._down is None:
            ulaw_encode_into(self._frame_out, self._ulaw)
        else:
            self._down.process_into(self._frame_out, self._pcm8k)
            ulaw_encode_into(self._pcm8k, self._ulaw)
        return bytes(self._ulaw)

    def reset(self) -> None:
        """A new stream (SSRC change, sender restart): empty the buffer, keep the counters."""
        self.jitter.reset()


class OutboundAudio:
    """20 ms mu-law frames in, payloads of ``packet_ms`` out (at most one frame buffered)."""

    def __init__(self, codec: ChosenCodec, ptime_ms: int) -> None:
        self.codec = codec
        self.packet_ms = packet_ms_for(codec, ptime_ms)
        fmt = _format(codec, self.packet_ms)
        self.rate_hz = fmt.rate_hz
        self.samples_per_packet = codec.clock_rate_hz * self.packet_ms // 1000
        """RTP timestamp step per packet (RTP clock units)."""
        self.samples_per_frame = codec.clock_rate_hz * FRAME_MS // 1000
        """RTP timestamp step per 20 ms frame (RTP clock units)."""
        self._passthrough = fmt.codec == "pcmu" and self.packet_ms == FRAME_MS
        self._encoder: Encoder = make_encoder(fmt)
        self.max_payload_bytes = self._encoder.max_payload_bytes
        self._up = None if fmt.rate_hz == WIRE_RATE_HZ else PolyphaseResampler(8000, fmt.rate_hz)
        self._pcm8k = np.zeros(WIRE_FRAME_BYTES, dtype=np.int16)
        self._packet_samples = fmt.frame_samples
        frame_audio = fmt.rate_hz * FRAME_MS // 1000
        self._fifo = np.zeros(self._packet_samples + frame_audio, dtype=np.int16)
        self._fill = 0
        self._frame: bytes | bytearray | memoryview = b""
        self._encoded = bytearray(self.max_payload_bytes)

    def push(self, ulaw: bytes | bytearray | memoryview) -> None:
        """Add one 20 ms frame (160 mu-law bytes; the caller checks the size)."""
        if self._passthrough:
            self._frame = ulaw
            return
        ulaw_decode_into(ulaw, self._pcm8k)
        start = self._fill
        if self._up is None:
            self._fifo[start : start + WIRE_FRAME_BYTES] = self._pcm8k
            self._fill = start + WIRE_FRAME_BYTES
        else:
            self._fill = start + self._up.process_into(self._pcm8k, self._fifo[start:])

    def pop_into(self, out: memoryview) -> int:
        """Write the next complete payload into ``out``; its size in bytes, 0 if none is ready."""
        if self._passthrough:
            frame = self._frame
            if not frame:
                return 0
            out[:WIRE_FRAME_BYTES] = frame
            self._frame = b""
            return WIRE_FRAME_BYTES
        n = self._packet_samples
        if self._fill < n:
            return 0
        fifo = self._fifo
        size = self._encoder.encode_into(fifo[:n], self._encoded)
        out[:size] = memoryview(self._encoded)[:size]
        rest = self._fill - n
        if rest:
            fifo[:rest] = fifo[n : n + rest]
        self._fill = rest
        return size

    def reset(self) -> None:
        """Drop buffered audio (sending paused): the next packet starts afresh."""
        self._fill = 0
        self._frame = b""
        if self._up is not None:
            self._up.reset()
