"""A Python WebRTC peer for tests: real aiortc offers, real audio out, what comes back recorded.

It stands in for a browser page: it offers audio (a looping 48 kHz signal, by
default a tone) and the ``voxgate`` data channel, applies the server's answer,
keeps every 20 ms frame the server sends (mono int16 at 48 kHz) and every JSON
message of the data channel.  It never uses a STUN server
(``RTCConfiguration(iceServers=[])``) and refuses to run unless aioice gathers
on loopback only (the server's ``install_ice_policy``, in place once the app
is built), so its traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from typing import Any, Final

import aioice.ice
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from av import AudioFrame

RATE_HZ: Final = 48000
FRAME_SAMPLES: Final = 960
"""20 ms at 48 kHz."""
LOOPBACK: Final = "127.0.0.1"

Pcm = npt.NDArray[np.int16]


def tone(freq_hz: float, duration_ms: int, level: float = 0.3, rate_hz: int = RATE_HZ) -> Pcm:
    """A sine of ``freq_hz`` at ``level`` of full scale, ``duration_ms`` long, int16."""
    n = rate_hz * duration_ms // 1000
    t = np.arange(n) / rate_hz
    return np.round(level * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def dominant_frequency_hz(pcm: npt.NDArray[Any], rate_hz: int) -> float:
    """The frequency (Hz) of the largest peak of ``pcm``'s spectrum (Hann window)."""
    x = np.asarray(pcm, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * rate_hz / len(x))


def rms(pcm: npt.NDArray[Any]) -> float:
    """Root mean square of ``pcm`` (int16 units)."""
    x = np.asarray(pcm, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def candidate_addresses(sdp: str) -> list[str]:
    """The connection address of every ``a=candidate`` line of ``sdp``."""
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


class SignalTrack(AudioStreamTrack):
    """Sends ``pcm`` (48 kHz mono int16) on a loop in 20 ms frames, paced to real time."""

    def __init__(self, pcm: Pcm) -> None:
        super().__init__()
        n = len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES
        if n == 0:
            raise ValueError(f"the signal needs at least {FRAME_SAMPLES} samples")
        self._pcm = pcm[:n]
        self._offset = 0
        self._pts = 0
        self._t0: float | None = None
        self.sent_frames = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            delay_s = self._t0 + self._pts / RATE_HZ - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
        chunk = self._pcm[self._offset : self._offset + FRAME_SAMPLES]
        self._offset = (self._offset + FRAME_SAMPLES) % len(self._pcm)
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE_HZ
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE_HZ)
        self._pts += FRAME_SAMPLES
        self.sent_frames += 1
        return frame


class WebRtcPeer:
    """One browser-like peer connection (offerer).

    ``audio``: the signal to send (48 kHz mono int16) or ``None`` for an offer
    with no audio section; ``channel``: whether to open the ``voxgate`` data
    channel.  Use :meth:`close` (or ``async with``) to release its sockets.
    """

    def __init__(self, audio: Pcm | None, *, channel: bool = True) -> None:
        addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
        if not addresses or any(a != LOOPBACK for a in addresses):
            raise RuntimeError(
                f"aioice would gather on {addresses}: build the app (ice_addresses = "
                '["127.0.0.1"]) before making a peer, so it stays on loopback'
            )
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = SignalTrack(audio) if audio is not None else None
        if self.track is not None:
            self.pc.addTrack(self.track)
        self.channel = self.pc.createDataChannel("voxgate") if channel else None
        self.messages: list[dict[str, Any]] = []
        self.received: list[Pcm] = []
        """Every frame the server sent, mono int16 at 48 kHz, in order."""
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._changed.set)
        if self.channel is not None:
            self.channel.on("message", self._on_message)
            self.channel.on("open", self._changed.set)

    async def __aenter__(self) -> WebRtcPeer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def offer(self) -> str:
        """The offer SDP with every candidate gathered (non-trickle), loopback only."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        addresses = candidate_addresses(sdp)
        if not addresses or any(a != LOOPBACK for a in addresses):
            raise RuntimeError(f"the peer's candidates are not loopback-only: {addresses}")
        return sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def wait_for(self, predicate: Any, timeout_s: float) -> None:
        """Wait until ``predicate()`` holds (checked on every event); TimeoutError after."""

        async def until() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout_s)

    async def connected(self, timeout_s: float = 10.0) -> None:
        """Wait for the peer connection and (if any) the data channel to be up."""
        await self.wait_for(
            lambda: (
                self.pc.connectionState == "connected"
                and (self.channel is None or self.channel.readyState == "open")
            ),
            timeout_s,
        )

    async def message(self, kind: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The first data-channel message of ``type`` ``kind`` (waiting for it)."""
        await self.wait_for(lambda: any(m.get("type") == kind for m in self.messages), timeout_s)
        return next(m for m in self.messages if m.get("type") == kind)

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a JSON object, or raw text or bytes as they are, on the data channel."""
        if self.channel is None:
            raise RuntimeError("this peer has no data channel")
        self.channel.send(message if isinstance(message, str | bytes) else json.dumps(message))

    def loud_frames(self, threshold: float = 500.0) -> list[Pcm]:
        """Received frames whose RMS is above ``threshold`` (int16 units)."""
        return [f for f in self.received if rms(f) > threshold]

    async def close(self) -> None:
        """Close the connection and stop the reader; idempotent."""
        await self.pc.close()
        if self.track is not None:
            self.track.stop()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(
                self._read(track), name="webrtc-peer-audio"
            )

    def _on_message(self, data: str | bytes) -> None:
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                message = json.loads(data)
                if isinstance(message, dict):
                    self.messages.append(message)
        self._changed.set()

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            pcm = frame.to_ndarray()  # type: ignore[union-attr]
            channels = len(frame.layout.channels)  # type: ignore[union-attr]
            self.received.append(pcm.reshape(-1)[::channels].copy())
            self._changed.set()
