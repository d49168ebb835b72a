"""RTP per-packet paths: the receive path into the jitter buffer, and building a packet.

Group ``rtp_receive`` (``frames`` = packets): one call takes a fresh call state
through a 10 s trace of 500 PCMU datagrams (20 ms each, 0-30 ms of seeded
arrival jitter so some arrive out of order; sequence numbers and timestamps
cross their wraps).

* ``voxgate``: what a SIP call does per datagram after ``recvfrom``:
  :func:`server.rtp.packet.parse_rtp` into a reused header, payload type and
  SSRC check, :meth:`server.rtp.seqtrack.SeqTracker.update` and
  ``update_jitter``, G.711 decode with ``engine.g711.ulaw_decode_into`` into a
  preallocated frame, then ``engine.jitter.JitterBuffer.put``.  The media tick's
  ``pull_into`` is not part of it (measured in ``bench_jitter``); the buffer is
  sized to hold the whole trace, so every ``put`` takes the steady-state path.
* ``aiortc``: ``aiortc.rtp.RtpPacket.parse`` plus
  ``aiortc.jitterbuffer.JitterBuffer(capacity=16, prefetch=4).add``, the way
  ``RTCRtpReceiver`` handles an audio packet (it decodes later, elsewhere).

Group ``rtp_build`` (``frames`` = packets): 500 outgoing PCMU packets.

* ``voxgate``: :func:`server.rtp.packet.build_rtp_into` into one preallocated
  buffer per call.
* ``aiortc``: ``RtpPacket(...).serialize()``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from aiortc.jitterbuffer import JitterBuffer as AiortcJitterBuffer
from aiortc.rtp import RtpPacket

from bench.conftest import Measure
from engine.g711 import ulaw_decode_into, ulaw_encode
from engine.jitter import JitterBuffer
from server.rtp.packet import RtpHeader, build_rtp, build_rtp_into, parse_rtp
from server.rtp.seqtrack import SeqStatus, SeqTracker

N_PACKETS = 500
FRAME_SAMPLES = 160
SSRC = 0x5EED1234
PT_PCMU = 0
SEQ_START = 65535 - 40
TS_START = 2**32 - 160 * 25
IMPLS = ["voxgate", "aiortc"]

Datagram = tuple[bytes, int]  # (datagram, arrival_ms)


def pcmu_trace(seed: int = 7) -> list[Datagram]:
    """500 PCMU datagrams of a 300 Hz + 1170 Hz tone, in arrival order."""
    t = np.arange(N_PACKETS * FRAME_SAMPLES) / 8000
    signal = 9000 * np.sin(2 * np.pi * 300 * t) + 4000 * np.sin(2 * np.pi * 1170 * t)
    codes = ulaw_encode(signal.astype(np.int16).tobytes())
    rng = random.Random(seed)
    rows = []
    for k in range(N_PACKETS):
        payload = codes[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
        data = build_rtp(
            pt=PT_PCMU,
            seq=SEQ_START + k,
            ts=TS_START + k * FRAME_SAMPLES,
            ssrc=SSRC,
            marker=k == 0,
            payload=payload,
        )
        jitter_ms = rng.randrange(31) if k >= 3 else 0  # a clean start: probation ends at once
        rows.append((data, 40 + 20 * k + jitter_ms))
    rows.sort(key=lambda row: row[1])
    return rows


class ReceivePath:
    """The per-datagram work of one call's RTP receiver (socket and clock excluded)."""

    def __init__(self) -> None:
        self.header = RtpHeader()
        self.tracker = SeqTracker()
        self.pcm = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self.jb = JitterBuffer(clock_rate_hz=8000, frame_ms=20, capacity_frames=1024)
        self.ignored = 0

    def reset(self) -> None:
        self.tracker = SeqTracker()
        self.jb.reset(clear_stats=True)
        self.ignored = 0

    def on_datagram(self, data: bytes, arrival_ms: int) -> None:
        h = parse_rtp(data, self.header)
        if h.payload_type != PT_PCMU or h.ssrc != SSRC:
            self.ignored += 1
            return
        status = self.tracker.update(h.sequence)
        if status is SeqStatus.DUPLICATE or status is SeqStatus.PROBATION:
            return
        if status is SeqStatus.JUMP:
            self.ignored += 1
            return
        self.tracker.update_jitter(h.timestamp, arrival_ms * 8)
        start = h.payload_offset
        ulaw_decode_into(data[start : start + h.payload_length], self.pcm)
        self.jb.put(h.sequence, h.timestamp, self.pcm, arrival_ms)


def receive_voxgate(path: ReceivePath, trace: list[Datagram]) -> int:
    path.reset()
    on_datagram = path.on_datagram
    for data, arrival_ms in trace:
        on_datagram(data, arrival_ms)
    return path.jb.received


def receive_aiortc(trace: list[Datagram]) -> int:
    jb = AiortcJitterBuffer(capacity=16, prefetch=4)
    emitted = 0
    for data, _ in trace:
        packet = RtpPacket.parse(data)
        packet._data = packet.payload  # type: ignore[attr-defined]  # as RTCRtpReceiver does
        _, frame = jb.add(packet)
        if frame is not None:
            emitted += 1
    return emitted


@pytest.mark.benchmark(group="rtp_receive")
@pytest.mark.parametrize("impl", IMPLS)
def test_rtp_receive(measure: Measure, impl: str) -> None:
    trace = pcmu_trace()
    if impl == "aiortc":
        emitted = measure("aiortc", receive_aiortc, trace, frames=N_PACKETS)
        assert emitted > 0.9 * N_PACKETS - 16
        return
    path = ReceivePath()
    received = measure("voxgate", receive_voxgate, path, trace, frames=N_PACKETS)
    # the first packet is spent on RFC 3550 probation; everything else goes in
    assert received == N_PACKETS - 1
    assert path.ignored == 0
    assert path.jb.duplicates == 0 and path.jb.resyncs == 0 and path.jb.discarded == 0
    assert path.tracker.received == N_PACKETS - 1
    assert path.tracker.lost == 0
    assert 0 < path.tracker.jitter < 30 * 8  # RTP units; arrivals jitter by 0-30 ms


def build_voxgate(buf: bytearray, payload: bytes) -> int:
    total = 0
    for k in range(N_PACKETS):
        total += build_rtp_into(
            buf, pt=PT_PCMU, seq=SEQ_START + k, ts=TS_START + k * 160, ssrc=SSRC, payload=payload
        )
    return total


def build_aiortc(payload: bytes) -> int:
    total = 0
    for k in range(N_PACKETS):
        packet = RtpPacket(
            payload_type=PT_PCMU,
            sequence_number=(SEQ_START + k) & 0xFFFF,
            timestamp=(TS_START + k * 160) & 0xFFFFFFFF,
            ssrc=SSRC,
            payload=payload,
        )
        total += len(packet.serialize())
    return total


@pytest.mark.benchmark(group="rtp_build")
@pytest.mark.parametrize("impl", IMPLS)
def test_rtp_build(measure: Measure, benchmark: Any, impl: str) -> None:
    payload = bytes(range(160))
    if impl == "aiortc":
        assert measure("aiortc", build_aiortc, payload, frames=N_PACKETS) == 172 * N_PACKETS
        return
    buf = bytearray(1500)
    assert measure("voxgate", build_voxgate, buf, payload, frames=N_PACKETS) == 172 * N_PACKETS
    # the last packet written is byte-exact what aiortc serializes
    last = N_PACKETS - 1
    reference = RtpPacket(
        payload_type=PT_PCMU,
        sequence_number=(SEQ_START + last) & 0xFFFF,
        timestamp=(TS_START + last * 160) & 0xFFFFFFFF,
        ssrc=SSRC,
        payload=payload,
    ).serialize()
    assert bytes(buf[:172]) == reference
