"""Audio at the WebRTC edge (server/transports/webrtc_audio.py).

Inbound 48 kHz stereo -> 8 kHz mu-law with loss concealment, outbound mu-law ->
48 kHz, the paced outbound track (run in an event loop) and the pass-through
receive buffer.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from av import AudioFrame, Packet

from engine.avcodec import OpusDecoder
from engine.g711 import ulaw_decode, ulaw_encode
from server.transports.webrtc_audio import (
    FRAME_8K,
    FRAME_48K,
    MAX_FILL_FRAMES,
    ULAW_SILENCE,
    InboundAudio,
    OutboundAudio,
    OutboundTrack,
    PassThroughJitterBuffer,
)
from tests.fakes.webrtc_peer import dominant_frequency_hz, rms, tone

TONE_HZ = 1000.0


def stereo_frames(pcm: npt.NDArray[np.int16]) -> list[npt.NDArray[np.int16]]:
    """``pcm`` (48 kHz mono) as aiortc's decoded frames: (1, 2 * 960) interleaved stereo."""
    n = len(pcm) // FRAME_48K
    return [np.repeat(pcm[i * FRAME_48K : (i + 1) * FRAME_48K], 2).reshape(1, -1) for i in range(n)]


def decode(ulaw: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(ulaw_decode(ulaw), dtype=np.int16)


# -- InboundAudio --------------------------------------------------------------------------


def test_inbound_tone_keeps_frequency_and_length() -> None:
    inbound = InboundAudio()
    frames = stereo_frames(tone(TONE_HZ, 1000))
    out = [inbound.convert(f, 2, i * FRAME_48K) for i, f in enumerate(frames)]
    assert [len(o) for o in out] == [FRAME_8K] * len(frames)  # 160 bytes per 20 ms
    pcm = decode(b"".join(out))
    assert abs(dominant_frequency_hz(pcm[800:], 8000) - TONE_HZ) < 15
    # 0.3 of full scale in: about the same level out (resampling and mu-law keep it).
    level = np.sqrt(np.mean(pcm[800:].astype(np.float64) ** 2))
    assert 0.3 * 32767 / np.sqrt(2) * 0.8 < level < 0.3 * 32767 / np.sqrt(2) * 1.2
    assert inbound.frames == len(frames)
    assert inbound.concealed_frames == 0


def test_inbound_mono_and_unknown_pts() -> None:
    inbound = InboundAudio()
    pcm = tone(TONE_HZ, 200)
    out = b"".join(
        inbound.convert(pcm[i : i + FRAME_48K].reshape(1, -1), 1, None)
        for i in range(0, len(pcm), FRAME_48K)
    )
    assert len(out) == 10 * FRAME_8K
    assert inbound.concealed_frames == 0


@pytest.mark.parametrize("k", [1, 3, MAX_FILL_FRAMES])
def test_inbound_gap_of_k_frames_adds_k_frames_of_silence(k: int) -> None:
    inbound = InboundAudio()
    frames = stereo_frames(tone(TONE_HZ, 200))
    for i in range(5):
        assert len(inbound.convert(frames[i], 2, i * FRAME_48K)) == FRAME_8K
    # Frames 5 .. 5+k-1 are lost; the next one arrives with its own pts.
    after_gap = inbound.convert(frames[5], 2, (5 + k) * FRAME_48K)
    assert len(after_gap) == (k + 1) * FRAME_8K
    assert after_gap[: k * FRAME_8K] == bytes([ULAW_SILENCE]) * (k * FRAME_8K)
    assert after_gap[k * FRAME_8K :] != bytes([ULAW_SILENCE]) * FRAME_8K
    assert inbound.concealed_frames == k
    # The stream goes on from the new position without more fill.
    assert len(inbound.convert(frames[6], 2, (6 + k) * FRAME_48K)) == FRAME_8K
    assert inbound.concealed_frames == k


@pytest.mark.parametrize("k", [MAX_FILL_FRAMES + 1, 500])
def test_inbound_gap_over_500_ms_is_a_restart(k: int) -> None:
    inbound = InboundAudio()
    frames = stereo_frames(tone(TONE_HZ, 100))
    inbound.convert(frames[0], 2, 0)
    assert len(inbound.convert(frames[1], 2, (1 + k) * FRAME_48K)) == FRAME_8K
    assert inbound.concealed_frames == 0


def test_inbound_repeated_or_older_pts_adds_nothing() -> None:
    inbound = InboundAudio()
    frames = stereo_frames(tone(TONE_HZ, 100))
    inbound.convert(frames[0], 2, 10 * FRAME_48K)
    assert len(inbound.convert(frames[1], 2, 10 * FRAME_48K)) == FRAME_8K
    assert len(inbound.convert(frames[2], 2, 3 * FRAME_48K)) == FRAME_8K
    assert inbound.concealed_frames == 0


# -- OutboundAudio -------------------------------------------------------------------------


def test_outbound_mulaw_frame_becomes_960_samples_of_the_same_tone() -> None:
    outbound = OutboundAudio()
    ulaw = ulaw_encode(tone(TONE_HZ, 400, rate_hz=8000).tobytes())
    out = [outbound.convert(ulaw[i : i + FRAME_8K]) for i in range(0, len(ulaw), FRAME_8K)]
    assert [len(o) for o in out] == [FRAME_48K] * 20
    assert all(o.dtype == np.int16 for o in out)
    pcm = np.concatenate(out)
    assert abs(dominant_frequency_hz(pcm[FRAME_48K:], 48000) - TONE_HZ) < 15
    # Each call returns a fresh array (the caller queues it).
    assert not np.shares_memory(out[0], out[1])


@pytest.mark.parametrize("size", [0, 159, 161, 320])
def test_outbound_refuses_other_frame_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="160-byte frame"):
        OutboundAudio().convert(bytes(size))


# -- OutboundTrack -------------------------------------------------------------------------

# The track may hand aiortc raw 48 kHz frames or Opus packets it encoded itself:
# :class:`TrackReader` turns either into PCM, so these tests hold for both.


class Marks:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def __call__(self, name: str, played: bool) -> None:
        self.seen.append((name, played))


class TrackReader:
    """Pulls from an :class:`OutboundTrack` as aiortc's sender does; yields (pts, 48 kHz PCM)."""

    def __init__(self, track: OutboundTrack) -> None:
        self.track = track
        self._opus = OpusDecoder()

    async def next(self, timeout_s: float = 2.0) -> tuple[int, npt.NDArray[np.int16]]:
        item: AudioFrame | Packet[Any] = await asyncio.wait_for(self.track.recv(), timeout_s)
        if isinstance(item, AudioFrame):
            assert item.sample_rate == 48000
            assert item.layout.name == "mono"
            pcm = np.asarray(item.to_ndarray(), dtype=np.int16).reshape(-1)
        else:
            pcm = self._opus.decode(bytes(item))
        assert item.time_base == Fraction(1, 48000)
        assert len(pcm) == FRAME_48K * self.track.packet_ms // 20
        assert item.pts is not None
        return item.pts, pcm


def tone_frame(freq_hz: float) -> npt.NDArray[np.int16]:
    """One 20 ms 48 kHz frame of a tone (frames told apart by their frequency)."""
    return tone(freq_hz, 20)


def frequency(pcm: npt.NDArray[np.int16]) -> float:
    return dominant_frequency_hz(pcm, 48000)


async def test_track_queued_frames_come_out_in_order_at_once() -> None:
    track = OutboundTrack(Marks())
    reader = TrackReader(track)
    for freq_hz in (500, 1500, 2500):
        track.push(tone_frame(freq_hz))
    frames = [await reader.next() for _ in range(3)]
    assert [pts for pts, _ in frames] == [0, 960, 1920]
    for (_, pcm), freq_hz in zip(frames, (500, 1500, 2500), strict=True):
        assert abs(frequency(pcm) - freq_hz) <= 60
    assert track.sent_frames == 3
    assert track.silence_frames == 0
    track.stop()


async def test_track_sends_silence_on_a_20ms_cadence_when_idle() -> None:
    track = OutboundTrack(Marks())
    reader = TrackReader(track)
    loop = asyncio.get_running_loop()
    window_s = 0.5
    frames = []
    start = loop.time()
    while loop.time() - start < window_s:
        frames.append(await reader.next())
    track.stop()
    # 25 frames are due in 500 ms; the track neither floods nor stalls.  Loose
    # bounds: the machine may be busy, but silence never runs ahead of time.
    assert 10 <= len(frames) <= 28
    assert all(rms(pcm) < 50 for _, pcm in frames)
    assert track.silence_frames == track.sent_frames == len(frames)
    assert [pts for pts, _ in frames] == [960 * i for i in range(len(frames))]


async def test_track_queued_frame_interrupts_the_silence_wait() -> None:
    track = OutboundTrack(Marks())
    reader = TrackReader(track)
    await reader.next()  # starts the cadence
    waiting = asyncio.ensure_future(reader.next())
    await asyncio.sleep(0)
    track.push(tone_frame(1500))
    pts, pcm = await waiting
    assert pts == 960
    assert abs(frequency(pcm) - 1500) <= 60
    assert track.silence_frames == 1
    track.stop()


async def test_track_10ms_packets_halve_each_frame_and_space_the_halves() -> None:
    track = OutboundTrack(Marks(), packet_ms=10)
    reader = TrackReader(track)
    loop = asyncio.get_running_loop()
    track.push(tone_frame(1000))
    pushed = loop.time()
    first_pts, first = await reader.next()
    second_pts, second = await reader.next()
    waited = loop.time() - pushed
    assert (first_pts, second_pts) == (0, 480)
    assert len(first) == len(second) == 480
    # The second half is held until its audio is due: 10 ms after the push.
    assert waited >= 0.0095
    assert abs(dominant_frequency_hz(np.concatenate([first, second])[240:], 48000) - 1000) <= 60
    assert track.sent_frames == 2 and track.silence_frames == 0
    track.stop()


async def test_track_10ms_idle_silence_and_clear_while_a_half_waits() -> None:
    marks = Marks()
    track = OutboundTrack(marks, packet_ms=10)
    reader = TrackReader(track)
    track.push(tone_frame(1000))
    track.mark("reply")
    await reader.next()  # the first half leaves; the second waits its turn
    track.clear()  # barge-in while it waits: it and the mark are dropped
    pts, _ = await reader.next()  # silence (the decoder still rings from the cut tone)
    later_pts, later = await reader.next()
    assert (pts, later_pts) == (480, 960) and rms(later) < 50
    assert marks.seen == [("reply", False)]
    assert track.silence_frames == 2
    track.stop()


def test_track_refuses_other_packet_durations_and_frame_sizes() -> None:
    with pytest.raises(ValueError, match="packet_ms"):
        OutboundTrack(Marks(), packet_ms=30)
    track = OutboundTrack(Marks(), packet_ms=10)
    with pytest.raises(ValueError, match="960-sample"):
        track.push(np.zeros(480, dtype=np.int16))
    track.stop()


async def test_track_marks_are_played_after_the_frames_before_them() -> None:
    marks = Marks()
    track = OutboundTrack(marks)
    reader = TrackReader(track)
    track.mark("empty")  # nothing queued: reached at once
    assert marks.seen == [("empty", True)]
    track.push(tone_frame(500))
    track.mark("a")
    track.push(tone_frame(1500))
    track.mark("b")
    _, first = await reader.next()
    assert abs(frequency(first) - 500) <= 60
    assert marks.seen == [("empty", True)]
    _, second = await reader.next()
    assert abs(frequency(second) - 1500) <= 60
    assert marks.seen == [("empty", True), ("a", True)]
    await reader.next()  # "b" is reached, then silence
    assert marks.seen == [("empty", True), ("a", True), ("b", True)]
    assert track.silence_frames == 1
    track.stop()


async def test_track_clear_reports_queued_marks_not_played() -> None:
    marks = Marks()
    track = OutboundTrack(marks)
    reader = TrackReader(track)
    track.push(tone_frame(500))
    track.mark("x")
    track.push(tone_frame(1500))
    track.mark("y")
    track.push(tone_frame(2500))
    _, first = await reader.next()
    assert abs(frequency(first) - 500) <= 60
    track.clear()
    assert marks.seen == [("x", False), ("y", False)]
    await reader.next()
    assert track.silence_frames == 1  # the cleared frames are never sent
    track.clear()  # nothing left: no more reports
    assert marks.seen == [("x", False), ("y", False)]
    track.stop()


async def test_track_stopped_raises_media_stream_error() -> None:
    track = OutboundTrack(Marks())
    track.push(tone_frame(500))
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_track_stop_during_the_silence_wait_raises() -> None:
    track = OutboundTrack(Marks())
    reader = TrackReader(track)
    await reader.next()
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 1.0)


# -- PassThroughJitterBuffer ---------------------------------------------------------------


def packet(seq: int, payload: bytes = b"opus") -> RtpPacket:
    return RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960, payload=payload)


def test_buffer_passes_in_order_packets_at_once() -> None:
    buffer = PassThroughJitterBuffer()
    for seq in range(100, 110):
        loss, frame = buffer.add(packet(seq, bytes([seq])))
        assert loss is False
        assert frame is not None
        assert (frame.data, frame.timestamp) == (bytes([seq]), seq * 960)
    assert (buffer.passed, buffer.dropped) == (10, 0)
    assert buffer.capacity == 16


def test_buffer_drops_duplicates_and_late_packets() -> None:
    buffer = PassThroughJitterBuffer()
    order = [10, 11, 11, 13, 12, 14, 10, 15]
    passed = [seq for seq in order if buffer.add(packet(seq))[1] is not None]
    assert passed == [10, 11, 13, 14, 15]
    assert (buffer.passed, buffer.dropped) == (5, 3)


def test_buffer_forward_gap_passes() -> None:
    buffer = PassThroughJitterBuffer()
    assert buffer.add(packet(1))[1] is not None
    assert buffer.add(packet(2000))[1] is not None
    assert buffer.add(packet(1999))[1] is None


def test_buffer_sequence_wraps_at_65535() -> None:
    buffer = PassThroughJitterBuffer()
    passed = [seq for seq in [65533, 65534, 65535, 0, 1, 65535, 2] if buffer.add(packet(seq))[1]]
    assert passed == [65533, 65534, 65535, 0, 1, 2]
    assert buffer.dropped == 1


def test_buffer_large_backwards_jump_restarts() -> None:
    buffer = PassThroughJitterBuffer()
    assert buffer.add(packet(40000))[1] is not None
    assert buffer.add(packet(40000 - PassThroughJitterBuffer.MAX_JUMP + 1))[1] is None
    restart = 40000 - PassThroughJitterBuffer.MAX_JUMP - 1000
    assert buffer.add(packet(restart))[1] is not None
    assert buffer.add(packet(restart + 1))[1] is not None
    assert buffer.add(packet(40000))[1] is not None  # far ahead of the new position
    assert (buffer.passed, buffer.dropped) == (4, 1)
