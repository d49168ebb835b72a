"""Audio at the WebRTC edge: Opus 48 kHz frames from aiortc <-> the call's 8 kHz mu-law.

Both directions resample with the minimum-phase ``"lowdelay"`` filters of
:mod:`engine.polyphase` (about 0.25 ms of group delay each way in the speech
band, against 2.3-2.75 ms for the linear-phase ones).

Inbound, aiortc decodes each Opus packet to an s16 48 kHz frame (stereo,
interleaved); :class:`InboundAudio` keeps one channel, resamples it to 8 kHz and
encodes mu-law, filling a gap in the frames' presentation times (lost packets)
with silence so the call's media time keeps pace with the caller's.

Outbound, :class:`OutboundTrack` is the track aiortc sends: the call hands it
20 ms frames at 48 kHz, which it encodes itself (Opus in low-delay mode, in the
event loop: no encoder thread, 4 ms less look-ahead than aiortc's encoder) and
gives aiortc's sender as soon as they are queued, keeping a steady 20 ms stream
(silence when the call has nothing to say) so the browser's jitter buffer never
sees a gap.

:class:`PassThroughJitterBuffer` replaces aiortc's receive buffer: it passes each
audio packet on as it arrives, in order, instead of holding four (~80 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from av import AudioFrame, Packet

from engine.avcodec import OpusEncoder
from engine.g711 import ulaw_decode_into, ulaw_encode_into
from engine.polyphase import PolyphaseResampler

WEBRTC_RATE_HZ: Final = 48000
CALL_RATE_HZ: Final = 8000
FRAME_MS: Final = 20
FRAME_48K: Final = WEBRTC_RATE_HZ * FRAME_MS // 1000
FRAME_8K: Final = CALL_RATE_HZ * FRAME_MS // 1000
ULAW_SILENCE: Final = 0xFF
MAX_FILL_FRAMES: Final = 25
"""A gap longer than this (500 ms) is a restart, not loss: nothing is filled."""
_TIME_BASE: Final = fractions.Fraction(1, WEBRTC_RATE_HZ)
OPUS_BITRATE_BPS: Final = 32000
"""Ample for the call's narrowband audio."""
PACKET_MS_CHOICES: Final = (10, 20)
"""Opus packet durations the outbound track sends (ms)."""


class InboundAudio:
    """48 kHz s16 frames (any length, mono or interleaved stereo) -> 8 kHz mu-law bytes."""

    __slots__ = ("_expected_pts", "_resampler", "concealed_frames", "frames")

    def __init__(self) -> None:
        self._resampler = PolyphaseResampler(WEBRTC_RATE_HZ, CALL_RATE_HZ, quality="lowdelay")
        self._expected_pts: int | None = None
        self.frames = 0
        self.concealed_frames = 0
        """20 ms frames of silence put in for lost packets."""

    def convert(self, pcm: npt.NDArray[np.int16], channels: int, pts: int | None) -> bytes:
        """mu-law for one decoded frame; ``pts`` in 48 kHz samples (``None``: unknown)."""
        samples = pcm.reshape(-1)[::channels] if channels > 1 else pcm.reshape(-1)
        fill = b""
        if pts is not None:
            expected = self._expected_pts
            if expected is not None and pts > expected:
                missing = (pts - expected) // FRAME_48K
                if 0 < missing <= MAX_FILL_FRAMES:
                    self.concealed_frames += missing
                    fill = bytes([ULAW_SILENCE]) * (missing * FRAME_8K)
            self._expected_pts = pts + len(samples)
        self.frames += 1
        resampled = self._resampler.process(np.ascontiguousarray(samples))
        out = bytearray(len(resampled))
        ulaw_encode_into(resampled, out)
        return fill + bytes(out)


class OutboundAudio:
    """8 kHz mu-law (20 ms frames) -> 48 kHz s16 mono :class:`av.AudioFrame`."""

    __slots__ = ("_pcm8k", "_pcm48k", "_resampler")

    def __init__(self) -> None:
        self._resampler = PolyphaseResampler(CALL_RATE_HZ, WEBRTC_RATE_HZ, quality="lowdelay")
        self._pcm8k = np.zeros(FRAME_8K, dtype=np.int16)
        self._pcm48k = np.zeros(self._resampler.max_output(FRAME_8K), dtype=np.int16)

    def convert(self, ulaw: bytes) -> npt.NDArray[np.int16]:
        """A fresh array of 48 kHz samples for ``ulaw`` (one 20 ms frame: 960 samples)."""
        if len(ulaw) != FRAME_8K:
            raise ValueError(f"expected a {FRAME_8K}-byte frame, got {len(ulaw)}")
        ulaw_decode_into(ulaw, self._pcm8k)
        n = self._resampler.process_into(self._pcm8k, self._pcm48k)
        return self._pcm48k[:n].copy()


def audio_frame(pcm: npt.NDArray[np.int16], pts: int) -> AudioFrame:
    """A mono 48 kHz s16 :class:`av.AudioFrame` holding ``pcm``, stamped ``pts`` samples."""
    frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = WEBRTC_RATE_HZ
    frame.pts = pts
    frame.time_base = _TIME_BASE
    return frame


def opus_packet(payload: bytes, pts: int) -> Packet[Any]:
    """An encoded Opus frame as aiortc's sender takes it, stamped ``pts`` samples at 48 kHz."""
    packet = Packet(payload)
    packet.pts = pts
    packet.time_base = _TIME_BASE
    return packet


MarkCallback = Callable[[str, bool], None]
"""Told ``(name, played)`` when a mark is reached (True) or cleared away (False)."""


class OutboundTrack(MediaStreamTrack):
    """The call's audio as aiortc's sender pulls it: one Opus packet per ``packet_ms``.

    Each 20 ms frame pushed is cut into packets of ``packet_ms`` (10 or 20).  The
    first packet of a frame may leave as soon as the sender asks; packet ``k`` of
    it not before ``k * packet_ms`` after the push, so the packets reach the
    browser spaced as the audio they hold and its jitter buffer can stay one
    short packet deep.  Frames queued ahead (a reply being played) go out at
    once unless the stream is already ``max_ahead_ms`` ahead of real time.  With
    nothing queued, the track waits until the next packet is due plus
    ``grace_ms`` (a late media tick) and then sends silence, so the stream never
    pauses.
    """

    kind = "audio"

    def __init__(
        self,
        on_mark: MarkCallback,
        *,
        packet_ms: int = 20,
        grace_ms: float = 10.0,
        max_ahead_ms: float = 60.0,
    ) -> None:
        super().__init__()
        if packet_ms not in PACKET_MS_CHOICES:
            raise ValueError(f"packet_ms must be one of {PACKET_MS_CHOICES}, got {packet_ms!r}")
        self._on_mark = on_mark
        self.packet_ms = packet_ms
        self._packet_samples = WEBRTC_RATE_HZ * packet_ms // 1000
        self._packet_s = packet_ms / 1000
        self._grace_s = grace_ms / 1000
        self._max_ahead_s = max_ahead_ms / 1000
        self._queue: deque[tuple[npt.NDArray[np.int16], float] | str] = deque()
        self._ready = asyncio.Event()
        self._due_s: float | None = None  # when the next packet is due, wall clock
        self._pts = 0
        self._silence = np.zeros(self._packet_samples, dtype=np.int16)
        self._encoder = OpusEncoder(
            bitrate_bps=OPUS_BITRATE_BPS, frame_ms=packet_ms, application="lowdelay"
        )
        self.sent_frames = 0
        """Packets sent (``packet_ms`` each), silence included."""
        self.silence_frames = 0
        """Packets of silence sent because nothing was queued."""

    def push(self, pcm: npt.NDArray[np.int16]) -> None:
        """Queue one 20 ms frame of 48 kHz samples (960)."""
        if len(pcm) != FRAME_48K:
            raise ValueError(f"expected a {FRAME_48K}-sample frame, got {len(pcm)}")
        now = time.monotonic()
        step = self._packet_samples
        for k in range(FRAME_48K // step):
            self._queue.append((pcm[k * step : (k + 1) * step], now + k * self._packet_s))
        self._ready.set()

    def mark(self, name: str) -> None:
        """Report ``name`` played once every frame queued before it has been sent."""
        if self._queue:
            self._queue.append(name)
        else:
            self._on_mark(name, True)

    def clear(self) -> None:
        """Drop everything queued (barge-in); its marks are reported not played."""
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, str):
                self._on_mark(item, False)

    async def recv(self) -> Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._due_s is None or now - self._due_s > 0.1:
            self._due_s = now  # first packet, or the loop stalled: restart the cadence
        elif self._due_s - now > self._max_ahead_s:
            await asyncio.sleep(self._due_s - now - self._max_ahead_s)
        pcm = await self._next_packet()
        if pcm is None:
            wait_s = self._due_s + self._grace_s - time.monotonic()
            if wait_s > 0:
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), wait_s)
            if self.readyState != "live":
                raise MediaStreamError
            pcm = await self._next_packet()
        if pcm is None:
            pcm = self._silence
            self.silence_frames += 1
        self.sent_frames += 1
        self._due_s += self._packet_s
        packet = opus_packet(self._encoder.encode(pcm), self._pts)
        self._pts += self._packet_samples
        return packet

    async def _next_packet(self) -> npt.NDArray[np.int16] | None:
        """The next queued packet, once its time has come; None when nothing is queued."""
        queue = self._queue
        while queue:
            item = queue[0]
            if isinstance(item, str):
                queue.popleft()
                self._on_mark(item, True)
                continue
            wait_s = item[1] - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                if self.readyState != "live":
                    raise MediaStreamError
                continue  # a clear may have emptied the queue meanwhile
            queue.popleft()
            return item[0]
        return None


class PassThroughJitterBuffer:
    """Stands in for aiortc's audio ``JitterBuffer``: each packet leaves as it arrives.

    Packets older than the last one passed on (late or duplicate) are dropped
    and counted; a jump of more than ``MAX_JUMP`` sequence numbers is taken as
    a restart.  Audio packets are whole frames, so nothing needs reassembly.
    """

    MAX_JUMP: Final = 3000

    def __init__(self) -> None:
        self._last_seq: int | None = None
        self.passed = 0
        self.dropped = 0

    @property
    def capacity(self) -> int:
        return 16

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """aiortc's interface: ``(picture_loss, frame or None)``."""
        seq = packet.sequence_number
        last = self._last_seq
        if last is not None:
            ahead = (seq - last) & 0xFFFF
            if ahead == 0 or (ahead > 0x8000 and 0x10000 - ahead < self.MAX_JUMP):
                self.dropped += 1
                return False, None
        self._last_seq = seq
        self.passed += 1
        return False, JitterFrame(data=packet.payload, timestamp=packet.timestamp)
