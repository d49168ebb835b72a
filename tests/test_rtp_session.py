"""The per-call RTP session over real loopback sockets: audio both ways, latching, DTMF, RTCP.

A test-side peer (built on ``server.rtp.packet``) sends and receives on 127.0.0.1.
Nothing is ever sent to another address: every session's ``sendto`` goes
through :class:`GuardedSend`, which records non-loopback destinations instead.
The media clock is driven by hand (``now_ms`` + 20 per tick); a datagram is
awaited before the tick that should play it, so no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.avcodec import G722Decoder, G722Encoder, OpusDecoder, OpusEncoder
from engine.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from server.rtp.dtmf import DtmfError, TelephoneEvent, parse_telephone_event
from server.rtp.packet import RtpHeader, build_rtp, parse_rtp
from server.rtp.portpool import PortPair, PortPool
from server.rtp.rtcp import (
    RtcpBye,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    build_compound,
    parse_rtcp,
)
from server.rtp.session import MAX_QUEUED_FRAMES, RtpSession
from server.sip.offeranswer import ChosenCodec, Negotiated
from server.sip.offeranswer import TelephoneEvent as NegotiatedEvent
from tests.udpports import free_udp_range

PCMU = ChosenCodec("PCMU", 0, 8000, 8000, 1, "")
PCMA = ChosenCodec("PCMA", 8, 8000, 8000, 1, "")
G722 = ChosenCodec("G722", 9, 8000, 16000, 1, "")
OPUS = ChosenCodec("opus", 111, 48000, 48000, 2, "useinbandfec=1")
TE = NegotiatedEvent(101, 8000)
PEER_SSRC = 0x1234ABCD
NAT_ADDRESS = ("192.0.2.1", 6002)  # TEST-NET-1: must never be sent to


# -- set-up ------------------------------------------------------------------------------


@pytest.fixture
def pool() -> Iterator[PortPool]:
    low = free_udp_range(32)[0]
    ports = PortPool("127.0.0.1", low, low + 31)
    yield ports


def negotiated(
    port: int,
    codec: ChosenCodec = PCMU,
    *,
    address: str = "127.0.0.1",
    event: NegotiatedEvent | None = TE,
    direction: Any = "sendrecv",
    on_hold: bool = False,
    ptime_ms: int = 20,
) -> Negotiated:
    return Negotiated(
        media_index=0,
        codec=codec,
        telephone_event=event,
        remote_address=address,
        remote_port=port,
        remote_rtcp_address=address,
        remote_rtcp_port=port + 1,
        rtcp_mux=False,
        direction=direction,
        remote_direction="sendrecv",
        ptime_ms=ptime_ms,
        on_hold=on_hold,
    )


class GuardedSend:
    """Wraps a socket's ``sendto``: loopback goes out, anything else is only recorded."""

    def __init__(self, real: Callable[..., int]) -> None:
        self.real = real
        self.blocked: list[tuple[Any, ...]] = []
        self.sent: list[tuple[Any, ...]] = []

    def __call__(self, data: Any, dest: tuple[Any, ...]) -> int:
        if not str(dest[0]).startswith("127."):
            self.blocked.append(dest)
            return len(data)
        self.sent.append(dest)
        return self.real(data, dest)


class Peer:
    """The far end: an RTP/RTCP port pair that sends packets and collects what arrives."""

    def __init__(self, pair: PortPair, ssrc: int = PEER_SSRC) -> None:
        self.pair = pair
        self.addr = ("127.0.0.1", pair.rtp_port)
        self.ssrc = ssrc
        self.seq = 65530  # crosses the wrap early
        self.ts = 0xFFFFF000

    def packet(
        self, payload: bytes, pt: int = 0, *, step: int = 160, marker: bool = False
    ) -> bytes:
        data = build_rtp(
            pt=pt, seq=self.seq, ts=self.ts, ssrc=self.ssrc, marker=marker, payload=payload
        )
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + step) & 0xFFFFFFFF
        return data

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        self.pair.rtp.sendto(data, dest)

    @staticmethod
    def _drain(sock: socket.socket) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096))
            except BlockingIOError:
                return out

    def rtp(self) -> list[RtpHeader]:
        return [parse_rtp(d) for d in self._drain(self.pair.rtp)]

    def rtcp(self) -> list[bytes]:
        return self._drain(self.pair.rtcp)


class Harness:
    """One session with recording callbacks and a hand-driven media clock."""

    def __init__(self, pool: PortPool, media_for: Callable[[int], Negotiated], **kw: Any) -> None:
        self.pool = pool
        self.pair = pool.acquire()
        self.peer = Peer(pool.acquire())
        self.audio: list[bytes] = []
        self.digits: list[str] = []
        self.timeouts = 0
        self.now_ms = 0
        kw.setdefault("media_timeout_s", 30.0)
        self.session = RtpSession(
            self.pair,
            media_for(self.peer.pair.rtp_port),
            on_audio=self.audio.append,
            on_dtmf=self.digits.append,
            on_timeout=self._timeout,
            cname="test@voxgate",
            **kw,
        )
        self.rtp_send = GuardedSend(self.pair.rtp.sendto)
        self.rtcp_send = GuardedSend(self.pair.rtcp.sendto)
        self.session._rtp_sendto = self.rtp_send
        self.session._rtcp_sendto = self.rtcp_send
        self.dest = ("127.0.0.1", self.pair.rtp_port)

    def _timeout(self) -> None:
        self.timeouts += 1

    async def start(self) -> Harness:
        await self.session.start()
        return self

    def tick(self, frame: bytes | None = None) -> None:
        self.now_ms += 20
        self.session.on_tick(self.now_ms)
        if frame is not None:
            self.session.send_frame(frame)
        self.session.end_tick()

    async def deliver(self, data: bytes, *, tick: bool = True, peer: Peer | None = None) -> None:
        """Send ``data`` from the peer, wait until the session has it, then tick."""
        want = self.session.stats.packets_in + 1
        (peer or self.peer).send(data, self.dest)
        await until(lambda: self.session.stats.packets_in >= want)
        if tick:
            self.tick()

    async def close(self) -> None:
        self.session.close("test over")
        await asyncio.sleep(0)
        self.pool.release(self.pair)
        self.pool.release(self.peer.pair)


async def until(condition: Callable[[], bool], limit_s: float = 3.0) -> None:
    """Yield to the loop until ``condition()`` holds (a bound, not a timed assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


async def harness(pool: PortPool, media_for: Callable[[int], Negotiated], **kw: Any) -> Harness:
    return await Harness(pool, media_for, **kw).start()


# -- signals -----------------------------------------------------------------------------


def tone(freq_hz: float, n: int, rate_hz: int, amplitude: float = 8000.0) -> npt.NDArray[np.int16]:
    t = np.arange(n) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def speechlike(n: int, seed: int = 1) -> npt.NDArray[np.int16]:
    """Band-limited noise with a syllable envelope: correlates only at the right lag."""
    rng = np.random.default_rng(seed)
    noise = np.convolve(rng.standard_normal(n + 16), np.ones(4) / 4, "same")[:n]
    envelope = 0.4 + 0.6 * np.abs(np.sin(np.arange(n) / 8000 * np.pi * 3))
    return (6000 * noise * envelope).astype(np.int16)


def dominant_hz(pcm: npt.NDArray[np.int16], rate_hz: int) -> float:
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.argmax(spectrum) * rate_hz / len(pcm))


def best_correlation(reference: npt.NDArray[np.int16], heard: npt.NDArray[np.int16]) -> float:
    a = reference.astype(np.float64)
    b = heard.astype(np.float64)
    best = 0.0
    for lag in range(len(b) - len(a) + 1):
        seg = b[lag : lag + len(a)]
        denom = np.linalg.norm(a) * np.linalg.norm(seg)
        if denom:
            best = max(best, float(np.dot(a, seg) / denom))
    return best


def pcm(ulaw: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(ulaw_decode(ulaw), dtype="<i2")


# -- receiving audio -----------------------------------------------------------------------


async def test_pcmu_in_reaches_on_audio_through_the_jitter_buffer(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    try:
        h.tick()
        assert h.audio == []  # nothing before the caller's first packet
        signal = speechlike(160 * 40)
        codes = ulaw_encode(signal.tobytes())
        for k in range(40):
            await h.deliver(h.peer.packet(codes[160 * k : 160 * (k + 1)]))
        assert h.session.stats.frames_concealed == 0
        buffered = h.session.jitter_stats().buffered_frames
        for _ in range(5):  # the stream has ended: the buffer plays out, then conceals
            h.tick()
        stats = h.session.stats
        assert stats.frames_concealed + stats.frames_silence == 5 - buffered
        assert stats.frames_concealed >= 1  # the first missing frame is concealed
        assert all(len(frame) == 160 for frame in h.audio)
        heard = pcm(b"".join(h.audio))
        # the first packet is spent on RFC 3550 probation; the rest comes out in order
        reference = pcm(codes[160 * 2 : 160 * 38])
        assert best_correlation(reference, heard) > 0.99
        stats = h.session.stats
        assert stats.probation == 1
        assert stats.audio_in == 39
        assert stats.latches == 1
        assert h.session.latched == h.peer.addr
        assert h.session.remote_ssrc == PEER_SSRC
    finally:
        await h.close()


async def test_a_packet_of_two_frames_gives_two_frames(pool: PortPool) -> None:
    h = await harness(pool, lambda port: negotiated(port, PCMA, ptime_ms=40))
    try:
        signal = tone(600, 320 * 12, 8000)
        for k in range(12):
            chunk = alaw_encode(signal[320 * k : 320 * (k + 1)].tobytes())
            await h.deliver(h.peer.packet(chunk, pt=8, step=320))
            h.tick()
        assert h.session.stats.audio_in == 11
        assert h.session.stats.bad_payload == 0
        heard = pcm(b"".join(h.audio))
        assert abs(dominant_hz(heard[-1600:], 8000) - 600) < 10
    finally:
        await h.close()


async def test_g722_in_keeps_a_tone(pool: PortPool) -> None:
    h = await harness(pool, lambda port: negotiated(port, G722))
    try:
        encoder = G722Encoder()
        signal = tone(1500, 320 * 30, 16000)
        for k in range(30):
            payload = encoder.encode(signal[320 * k : 320 * (k + 1)])
            assert len(payload) == 160
            await h.deliver(h.peer.packet(payload, pt=9, step=160))  # 8 kHz RTP clock
        assert h.session.stats.audio_in == 29
        assert h.session.stats.frames_concealed == 0
        heard = pcm(b"".join(h.audio))
        assert abs(dominant_hz(heard[-2400:], 8000) - 1500) < 10
    finally:
        await h.close()


async def test_opus_in_keeps_a_tone(pool: PortPool) -> None:
    h = await harness(pool, lambda port: negotiated(port, OPUS))
    try:
        encoder = OpusEncoder(channels=2)
        signal = tone(1000, 960 * 30, 48000)
        for k in range(30):
            payload = encoder.encode(signal[960 * k : 960 * (k + 1)])
            await h.deliver(h.peer.packet(payload, pt=111, step=960))
        assert h.session.stats.audio_in == 29
        heard = pcm(b"".join(h.audio))
        assert abs(dominant_hz(heard[-2400:], 8000) - 1000) < 10
    finally:
        await h.close()


# -- sending audio -------------------------------------------------------------------------


async def test_pcmu_out_is_the_frames_with_contiguous_seq_and_timestamps(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    try:
        frames = [bytes([k]) * 160 for k in range(10)]
        for frame in frames:
            h.tick(frame)
        await until(lambda: h.session.stats.packets_out == 10)
        await asyncio.sleep(0.01)
        got = h.peer.rtp()
        assert [bytes(p.payload) for p in got] == frames  # byte-exact pass-through
        assert {p.payload_type for p in got} == {0}
        assert {p.ssrc for p in got} == {h.session.ssrc}
        assert [(p.sequence - got[0].sequence) & 0xFFFF for p in got] == list(range(10))
        assert [(p.timestamp - got[0].timestamp) & 0xFFFFFFFF for p in got] == [
            160 * k for k in range(10)
        ]
        assert [p.marker for p in got] == [True] + [False] * 9
        assert h.rtp_send.blocked == []
    finally:
        await h.close()


async def test_one_frame_per_tick_queue_and_silence(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    try:
        a, b, c = b"\x01" * 160, b"\x02" * 160, b"\x03" * 160
        h.session.on_tick(20)
        h.session.send_frame(a)
        h.session.send_frame(b)  # same tick: waits
        h.session.send_frame(c)
        h.session.end_tick()
        for now in (40, 60, 80):
            h.session.on_tick(now)
            h.session.end_tick()
        await until(lambda: h.session.stats.packets_out == 4)
        await asyncio.sleep(0.01)
        got = [bytes(p.payload) for p in h.peer.rtp()]
        assert got == [a, b, c, b"\xff" * 160]
        assert h.session.stats.silence_out == 1
        h.session.on_tick(100)
        for _ in range(MAX_QUEUED_FRAMES + 3):
            h.session.send_frame(a)
        assert h.session.stats.frames_dropped == 2
        with pytest.raises(ValueError, match="160 bytes"):
            h.session.send_frame(b"\x00" * 80)
    finally:
        await h.close()


async def test_pcma_ptime_40_sends_320_byte_packets_every_other_tick(pool: PortPool) -> None:
    h = await harness(pool, lambda port: negotiated(port, PCMA, ptime_ms=40))
    try:
        signal = tone(500, 160 * 8, 8000)
        codes = ulaw_encode(signal.tobytes())
        for k in range(8):
            h.tick(codes[160 * k : 160 * (k + 1)])
        await until(lambda: h.session.stats.packets_out == 4)
        await asyncio.sleep(0.01)
        got = h.peer.rtp()
        assert [p.payload_length for p in got] == [320] * 4
        assert {p.payload_type for p in got} == {8}
        assert [(p.timestamp - got[0].timestamp) & 0xFFFFFFFF for p in got] == [0, 320, 640, 960]
        heard = np.frombuffer(alaw_decode(b"".join(bytes(p.payload) for p in got)), "<i2")
        assert np.max(np.abs(heard.astype(int) - pcm(codes).astype(int))) < 300  # A-law step
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("codec", "decoder_rate"), [(G722, 16000), (OPUS, 48000)], ids=["g722", "opus"]
)
async def test_wideband_out_decodes_to_the_tone(
    pool: PortPool, codec: ChosenCodec, decoder_rate: int
) -> None:
    h = await harness(pool, lambda port: negotiated(port, codec))
    try:
        codes = ulaw_encode(tone(1000, 160 * 25, 8000).tobytes())
        for k in range(25):
            h.tick(codes[160 * k : 160 * (k + 1)])
        await until(lambda: h.session.stats.packets_out == 25)
        await asyncio.sleep(0.01)
        got = h.peer.rtp()
        assert {p.payload_type for p in got} == {codec.payload_type}
        step = 160 if codec is G722 else 960
        assert [(p.timestamp - got[0].timestamp) & 0xFFFFFFFF for p in got] == [
            step * k for k in range(25)
        ]
        decoder = G722Decoder() if codec is G722 else OpusDecoder()
        out = np.concatenate([decoder.decode(bytes(p.payload)) for p in got])
        assert len(out) == 25 * decoder_rate // 50
        assert abs(dominant_hz(out[len(out) // 2 :], decoder_rate) - 1000) < 10
    finally:
        await h.close()


async def test_hold_stops_sending_and_resume_marks_and_jumps_the_timestamp(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    try:
        port = h.peer.pair.rtp_port
        for _ in range(3):
            h.tick(b"\x10" * 160)
        h.session.update(negotiated(port, direction="recvonly", on_hold=True))
        for _ in range(5):
            h.tick(b"\x10" * 160)  # held: the call's frames are dropped
        h.session.update(negotiated(port))
        for _ in range(2):
            h.tick(b"\x10" * 160)
        await until(lambda: h.session.stats.packets_out == 5)
        await asyncio.sleep(0.01)
        got = h.peer.rtp()
        assert len(got) == 5
        assert [(p.sequence - got[0].sequence) & 0xFFFF for p in got] == [0, 1, 2, 3, 4]
        assert [(p.timestamp - got[0].timestamp) & 0xFFFFFFFF for p in got] == [
            0,
            160,
            320,
            160 * 8,
            160 * 9,
        ]
        assert [p.marker for p in got] == [True, False, False, True, False]
        assert {p.ssrc for p in got} == {h.session.ssrc}
    finally:
        await h.close()


async def test_codec_change_keeps_ssrc_and_sequence(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    try:
        h.tick(b"\x20" * 160)
        h.tick(b"\x20" * 160)
        h.session.update(negotiated(h.peer.pair.rtp_port, PCMA))
        h.tick(b"\x20" * 160)
        await until(lambda: h.session.stats.packets_out == 3)
        await asyncio.sleep(0.01)
        got = h.peer.rtp()
        assert [p.payload_type for p in got] == [0, 0, 8]
        assert [(p.sequence - got[0].sequence) & 0xFFFF for p in got] == [0, 1, 2]
        assert {p.ssrc for p in got} == {h.session.ssrc}
    finally:
        await h.close()


# -- latching ------------------------------------------------------------------------------


async def test_latching_moves_from_the_sdp_address_to_the_real_source(pool: PortPool) -> None:
    h = await harness(pool, lambda port: negotiated(NAT_ADDRESS[1], address=NAT_ADDRESS[0]))
    try:
        session = h.session
        assert session.destination == NAT_ADDRESS
        assert session.rtcp_destination == ("192.0.2.1", 6003)
        h.tick()  # the first silence packet goes to the SDP address (recorded, not sent)
        assert h.rtp_send.blocked == [NAT_ADDRESS]
        await h.deliver(h.peer.packet(b"\xff" * 160))  # probation: not latched yet
        assert not session.latched
        await h.deliver(h.peer.packet(b"\xff" * 160))
        assert session.latched == h.peer.addr
        assert session.destination == h.peer.addr
        assert session.rtcp_destination == ("127.0.0.1", h.peer.pair.rtp_port + 1)
        h.rtp_send.blocked.clear()
        h.tick(b"\x33" * 160)
        await until(lambda: len(h.rtp_send.sent) >= 2)
        await asyncio.sleep(0.01)
        got = h.peer.rtp()
        assert bytes(got[-1].payload) == b"\x33" * 160
        assert h.rtp_send.blocked == []
    finally:
        await h.close()


async def test_waiting_for_the_peer_sends_nothing_to_the_sdp_address(pool: PortPool) -> None:
    h = await harness(
        pool,
        lambda port: negotiated(NAT_ADDRESS[1], address=NAT_ADDRESS[0]),
        wait_for_peer=True,
    )
    try:
        session = h.session
        assert session.destination is None and session.rtcp_destination is None
        h.tick()
        h.tick()
        assert h.rtp_send.blocked == [] and session.stats.packets_out == 0
        await h.deliver(h.peer.packet(b"\xff" * 160))
        await h.deliver(h.peer.packet(b"\xff" * 160))
        assert session.latched == h.peer.addr
        h.tick(b"\x33" * 160)
        await until(lambda: len(h.rtp_send.sent) >= 1)
        assert h.rtp_send.blocked == []
    finally:
        await h.close()


async def test_a_second_source_is_ignored_and_port_zero_never_latched(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    intruder = Peer(pool.acquire(), ssrc=0x0BADF00D)
    try:
        session = h.session
        good = h.peer.packet(b"\xff" * 160)
        session.receive_rtp(good, ("127.0.0.1", 0))
        session.receive_rtp(h.peer.packet(b"\xff" * 160), ("127.0.0.1", 0))
        assert session.stats.port_zero == 2
        assert not session.latched
        for _ in range(3):
            await h.deliver(h.peer.packet(b"\xff" * 160))
        assert session.latched == h.peer.addr
        for _ in range(4):
            await h.deliver(intruder.packet(b"\x00" * 160), peer=intruder)
        assert session.stats.wrong_source == 4
        assert session.latched == h.peer.addr
        assert session.remote_ssrc == PEER_SSRC
    finally:
        pool.release(intruder.pair)
        await h.close()


async def test_relatch_after_silence(pool: PortPool) -> None:
    h = await harness(pool, negotiated, relatch_after_s=0.05)
    other = Peer(pool.acquire(), ssrc=0x22222222)
    try:
        session = h.session
        for _ in range(3):
            await h.deliver(h.peer.packet(b"\xff" * 160))
        assert session.latched == h.peer.addr
        await asyncio.sleep(0.08)
        for _ in range(3):
            await h.deliver(other.packet(b"\xff" * 160), peer=other)
        assert session.latched == other.addr
        assert session.stats.relatches == 1
        assert session.remote_ssrc == 0x22222222
    finally:
        pool.release(other.pair)
        await h.close()


async def test_new_ssrc_takes_over_only_after_three_in_a_row(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    try:
        session = h.session
        for _ in range(3):
            await h.deliver(h.peer.packet(b"\xff" * 160))
        other = Peer(h.peer.pair, ssrc=0x77777777)  # same socket, another stream
        for _ in range(3):  # interleaved: never three in a row
            await h.deliver(other.packet(b"\xff" * 160))
            await h.deliver(h.peer.packet(b"\xff" * 160))
        assert session.remote_ssrc == PEER_SSRC
        assert session.stats.wrong_ssrc == 3
        for _ in range(3):
            await h.deliver(other.packet(b"\xff" * 160))
        assert session.remote_ssrc == 0x77777777
        assert session.stats.ssrc_changes == 1
    finally:
        await h.close()


async def test_unknown_payload_types_and_garbage_are_counted(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    try:
        await h.deliver(h.peer.packet(b"\x00" * 20, pt=18))
        await h.deliver(b"not an rtp packet at all")
        await h.deliver(b"\x80")
        await h.deliver(h.peer.packet(b"\xff" * 100))  # PCMU, but not 20 ms
        await h.deliver(h.peer.packet(b"\xff" * 160))
        await h.deliver(h.peer.packet(b"\xff" * 100))
        stats = h.session.stats
        assert stats.unknown_pt == 1
        assert stats.malformed == 2
        assert stats.bad_payload == 1
        assert stats.packets_in == 6
    finally:
        await h.close()


# -- DTMF ----------------------------------------------------------------------------------


async def test_a_baresip_style_digit_gives_one_on_dtmf(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    try:
        for _ in range(3):
            await h.deliver(h.peer.packet(b"\xff" * 160))
        start = h.peer.ts
        for k in range(12):  # 9 updates and 3 end packets, audio in between
            end = k >= 9
            duration = 160 * min(k + 1, 9)
            event = TelephoneEvent(5, end, 10, duration).encode()
            data = build_rtp(
                pt=101, seq=h.peer.seq, ts=start, ssrc=PEER_SSRC, marker=k == 0, payload=event
            )
            h.peer.seq = (h.peer.seq + 1) & 0xFFFF
            await h.deliver(data, tick=False)
            await h.deliver(h.peer.packet(b"\xff" * 160))
        assert h.digits == ["5"]
        assert h.session.stats.dtmf_in == 12
        assert h.session.stats.digits_in == 1
    finally:
        await h.close()


async def test_send_digits_reach_the_peer_alongside_audio(pool: PortPool) -> None:
    h = await harness(pool, negotiated)
    try:
        h.session.send_digits("1#")
        for _ in range(40):
            h.tick(b"\x55" * 160)
        await until(lambda: h.session.stats.packets_out >= 60)
        await asyncio.sleep(0.01)
        got = h.peer.rtp()
        audio = [p for p in got if p.payload_type == 0]
        events = [p for p in got if p.payload_type == 101]
        assert len(audio) == 40
        assert [(p.sequence - got[0].sequence) & 0xFFFF for p in got] == list(range(len(got)))
        assert {p.ssrc for p in got} == {h.session.ssrc}
        digits: dict[int, str] = {}
        for p in events:
            te = parse_telephone_event(p.payload)
            digits.setdefault(p.timestamp, "0123456789*#ABCD"[te.event])
        assert list(digits.values()) == ["1", "#"]
        ends = [p for p in events if parse_telephone_event(p.payload).end]
        assert len(ends) == 6  # each digit's end packet three times
        assert sum(p.marker for p in events) == 2
        with pytest.raises(DtmfError):
            h.session.send_digits("x")
    finally:
        await h.close()


async def test_send_digits_without_telephone_event_is_refused(pool: PortPool) -> None:
    h = await harness(pool, lambda port: negotiated(port, event=None))
    try:
        with pytest.raises(DtmfError, match="telephone-event"):
            h.session.send_digits("1")
        await h.deliver(h.peer.packet(b"\x00\x80\x00\xa0", pt=101))
        assert h.session.stats.unknown_pt == 1
    finally:
        await h.close()


# -- media timeout -------------------------------------------------------------------------


async def test_media_timeout_fires_once(pool: PortPool) -> None:
    h = await harness(pool, negotiated, media_timeout_s=0.2)
    try:
        await h.deliver(h.peer.packet(b"\xff" * 160))
        assert h.timeouts == 0
        await asyncio.sleep(0.3)
        h.tick()
        h.tick()
        await asyncio.sleep(0.3)
        h.tick()
        assert h.timeouts == 1
        assert h.session.stats.timeouts == 1
    finally:
        await h.close()


async def test_no_media_timeout_while_on_hold(pool: PortPool) -> None:
    held = lambda port: negotiated(port, direction="recvonly", on_hold=True)  # noqa: E731
    h = await harness(pool, held, media_timeout_s=0.2)
    try:
        await asyncio.sleep(0.3)
        h.tick()
        assert h.timeouts == 0
        h.session.update(negotiated(h.peer.pair.rtp_port))  # resumed: the window restarts
        h.tick()
        assert h.timeouts == 0
        await asyncio.sleep(0.3)
        h.tick()
        assert h.timeouts == 1
    finally:
        await h.close()


# -- RTCP ----------------------------------------------------------------------------------


async def test_sender_report_reaches_the_peers_rtcp_port(pool: PortPool) -> None:
    h = await harness(pool, negotiated, rtcp_interval_s=0.02)
    try:
        for _ in range(5):
            await h.deliver(h.peer.packet(b"\xff" * 160))
            h.session.send_frame(b"\x01" * 160)
        sr_from_peer = build_compound(
            [
                RtcpSenderReport(PEER_SSRC, 0x1234567890ABCDEF, 0, 5, 800),
                RtcpSdes.cname(PEER_SSRC, "peer"),
            ]
        )
        h.peer.pair.rtcp.sendto(sr_from_peer, ("127.0.0.1", h.pair.rtp_port + 1))
        await until(lambda: h.session.stats.rtcp_in == 1)
        await asyncio.sleep(0.03)
        sent_before = h.session.stats.packets_out
        h.tick()  # the report leaves in on_tick, before this tick's packet
        await until(lambda: h.session.stats.rtcp_out >= 1)
        await asyncio.sleep(0.01)
        reports = [parse_rtcp(d) for d in h.peer.rtcp()]
        assert reports
        first = reports[-1]
        sr = first[0]
        assert isinstance(sr, RtcpSenderReport)
        assert sr.ssrc == h.session.ssrc
        assert sr.packet_count == sent_before
        assert sr.octet_count == 160 * sent_before
        assert len(sr.reports) == 1
        block = sr.reports[0]
        assert block.ssrc == PEER_SSRC
        assert block.lsr == (0x1234567890ABCDEF >> 16) & 0xFFFFFFFF
        sdes = first[1]
        assert isinstance(sdes, RtcpSdes)
        assert sdes.chunks[0].cname == "test@voxgate"
        assert h.rtcp_send.blocked == []
    finally:
        await h.close()


async def test_close_sends_bye_and_leaves_nothing_running(pool: PortPool) -> None:
    tasks_before = asyncio.all_tasks()
    h = await harness(pool, negotiated)
    for _ in range(3):
        await h.deliver(h.peer.packet(b"\xff" * 160))
    h.session.close("bye now")
    h.session.close("again")  # idempotent
    await asyncio.sleep(0.01)
    assert h.pair.rtp.fileno() == -1 and h.pair.rtcp.fileno() == -1  # the endpoints closed them
    compounds = [parse_rtcp(d) for d in h.peer.rtcp()]
    assert len(compounds) == 1
    kinds = [type(p) for p in compounds[0]]
    assert kinds == [RtcpSenderReport, RtcpSdes, RtcpBye]  # we sent: SR, not RR
    bye = compounds[0][2]
    assert isinstance(bye, RtcpBye)
    assert bye.ssrcs == (h.session.ssrc,)
    assert bye.reason == "bye now"
    h.session.on_tick(1000)
    h.session.send_frame(b"\x00" * 160)
    h.session.end_tick()
    assert asyncio.all_tasks() == tasks_before
    pool.release(h.pair)
    pool.release(h.peer.pair)
    assert pool.in_use == 0


async def test_close_before_start_finishes(pool: PortPool) -> None:
    h = Harness(pool, negotiated)
    start = asyncio.ensure_future(h.session.start())
    h.session.close("early")
    await start
    assert h.session._transports == []
    await h.close()


# -- fuzzing -------------------------------------------------------------------------------


def _real_datagrams() -> list[bytes]:
    peer_ssrc = PEER_SSRC
    audio = build_rtp(pt=0, seq=7, ts=1120, ssrc=peer_ssrc, payload=b"\x7f" * 160)
    event = build_rtp(
        pt=101, seq=8, ts=1280, ssrc=peer_ssrc, marker=True, payload=b"\x05\x0a\x00\xa0"
    )
    g722 = build_rtp(pt=9, seq=9, ts=1440, ssrc=peer_ssrc, payload=bytes(range(160)))
    opus = build_rtp(pt=111, seq=10, ts=1600, ssrc=peer_ssrc, payload=b"\xfc\xff\xfe")
    rtcp = build_compound(
        [RtcpReceiverReport(peer_ssrc), RtcpSdes.cname(peer_ssrc, "x"), RtcpBye((peer_ssrc,))]
    )
    return [audio, event, g722, opus, rtcp]


def _real_payload(codec: ChosenCodec) -> bytes:
    pcm20 = tone(700, codec.audio_rate_hz // 50, codec.audio_rate_hz)
    if codec is G722:
        return G722Encoder().encode(pcm20)
    if codec is OPUS:
        return OpusEncoder().encode(pcm20)
    return ulaw_encode(pcm20.tobytes())


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_real_datagrams())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 2))
        if op == 0 and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            del data[draw(st.integers(0, len(data))) :]
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(max_size=8))
    return bytes(data)


@pytest.mark.parametrize("codec", [PCMU, G722, OPUS], ids=["pcmu", "g722", "opus"])
def test_fuzz_the_receive_path(pool: PortPool, codec: ChosenCodec) -> None:
    """Random and mutated datagrams: nothing escapes, every one is counted somewhere."""
    loop = asyncio.new_event_loop()

    async def make() -> Harness:
        return Harness(pool, lambda port: negotiated(port, codec))

    h = loop.run_until_complete(make())
    session = h.session
    sources = [h.peer.addr, ("127.0.0.1", 0), ("127.0.0.1", 40000)]
    session.on_tick(20)  # audio gets as far as the jitter buffer and the codec

    stream = {"seq": 100, "ts": 16000}

    def stream_packet(pt: int, payload: bytes) -> bytes:
        """A well-formed packet of the latched stream carrying ``payload`` (decoder fuzz)."""
        data = build_rtp(pt=pt, seq=stream["seq"], ts=stream["ts"], ssrc=PEER_SSRC, payload=payload)
        stream["seq"] = (stream["seq"] + 1) & 0xFFFF
        stream["ts"] = (stream["ts"] + 160) & 0xFFFFFFFF
        return data

    for _ in range(3):  # latch the peer, so stream packets reach the decoders
        session.receive_rtp(stream_packet(codec.payload_type, _real_payload(codec)), sources[0])

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=st.one_of(
            st.binary(max_size=400),
            mutated(),
            st.tuples(
                st.sampled_from([codec.payload_type, 101]),
                st.one_of(st.binary(max_size=400), st.binary(min_size=160, max_size=160)),
            ),
        ),
        source=st.sampled_from(sources),
        as_rtcp=st.booleans(),
    )
    def feed(data: bytes | tuple[int, bytes], source: tuple[str, int], as_rtcp: bool) -> None:
        stats = session.stats
        if isinstance(data, tuple):
            data, source, as_rtcp = stream_packet(*data), sources[0], False
        before = (stats.packets_in, stats.rtcp_in + stats.rtcp_malformed)
        if as_rtcp:
            session.receive_rtcp(data, source)
            assert stats.rtcp_in + stats.rtcp_malformed == before[1] + 1
        else:
            session.receive_rtp(data, source)
            assert stats.packets_in == before[0] + 1
        session.on_tick(session_now())

    ticks = iter(range(40, 10**9, 20))

    def session_now() -> int:
        return next(ticks)

    try:
        feed()
        stats = session.stats
        outcomes = (
            stats.malformed
            + stats.unknown_pt
            + stats.port_zero
            + stats.wrong_source
            + stats.wrong_ssrc
            + stats.probation
            + stats.duplicates
            + stats.jumps
            + stats.bad_payload
            + stats.audio_in
            + stats.dtmf_in
            + stats.early
        )
        assert outcomes > 0
        assert stats.latches == 1
        assert stats.audio_in > 0 and stats.bad_payload > 0  # the decoders saw payloads
    finally:
        session.close("fuzz over")
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        pool.release(h.pair)
        pool.release(h.peer.pair)


async def test_rtcp_mux_reads_rtcp_on_the_rtp_port(pool: PortPool) -> None:
    def muxed(port: int) -> Negotiated:
        return replace(negotiated(port), rtcp_mux=True, remote_rtcp_port=port)

    h = await harness(pool, muxed)
    try:
        assert h.session.rtcp_destination == h.peer.addr
        report = build_compound([RtcpReceiverReport(PEER_SSRC), RtcpSdes.cname(PEER_SSRC, "p")])
        await h.deliver(report)
        stats = h.session.stats
        assert (stats.rtcp_in, stats.malformed, stats.unknown_pt) == (1, 0, 0)
    finally:
        await h.close()


# -- where RTCP goes -----------------------------------------------------------------------


def _sdp(
    sdp_port: int,
    *,
    address: str = "127.0.0.1",
    rtcp_address: str | None = None,
    rtcp_port: int | None = None,
    mux: bool = False,
) -> Callable[[int], Negotiated]:
    """Media whose SDP says ``address:sdp_port`` with ``a=rtcp`` as given (the peer's real
    port is ignored: the session learns it by latching)."""

    def media_for(port: int) -> Negotiated:
        base = negotiated(sdp_port, address=address)
        return replace(
            base,
            remote_rtcp_address=rtcp_address or address,
            remote_rtcp_port=sdp_port if mux else (rtcp_port or sdp_port + 1),
            rtcp_mux=mux,
        )

    return media_for


def _latch(h: Harness) -> None:
    for _ in range(2):  # RFC 3550 probation: two in sequence
        h.session.receive_rtp(h.peer.packet(b"\xff" * 160), h.peer.addr)
    assert h.session.latched == h.peer.addr


async def test_rtcp_goes_to_the_sdp_before_latching(pool: PortPool) -> None:
    h = await harness(pool, _sdp(NAT_ADDRESS[1], address=NAT_ADDRESS[0], rtcp_port=7000))
    try:
        assert h.session.rtcp_destination == (NAT_ADDRESS[0], 7000)
    finally:
        await h.close()


async def test_latched_and_not_nated_keeps_the_a_rtcp_port(pool: PortPool) -> None:
    # The SDP address is the host the RTP comes from: a=rtcp (RFC 3605) is believed.
    h = await harness(pool, lambda port: _sdp(port, rtcp_port=port + 7)(port))
    try:
        _latch(h)
        assert h.session.rtcp_destination == ("127.0.0.1", h.peer.pair.rtp_port + 7)
    finally:
        await h.close()


async def test_latched_behind_nat_uses_the_latched_rtp_port_plus_one(pool: PortPool) -> None:
    h = await harness(pool, _sdp(NAT_ADDRESS[1], address=NAT_ADDRESS[0], rtcp_port=7000))
    try:
        _latch(h)
        assert h.session.rtcp_destination == ("127.0.0.1", h.peer.pair.rtp_port + 1)
    finally:
        await h.close()


async def test_a_rtcp_on_another_host_than_the_latched_one_is_not_believed(
    pool: PortPool,
) -> None:
    h = await harness(
        pool, lambda port: _sdp(port, rtcp_address="192.0.2.7", rtcp_port=port + 7)(port)
    )
    try:
        _latch(h)
        assert h.session.rtcp_destination == ("127.0.0.1", h.peer.pair.rtp_port + 1)
    finally:
        await h.close()


async def test_latched_under_rtcp_mux_sends_rtcp_to_the_rtp_source(pool: PortPool) -> None:
    h = await harness(pool, _sdp(NAT_ADDRESS[1], address=NAT_ADDRESS[0], mux=True))
    try:
        assert h.session.rtcp_destination == NAT_ADDRESS
        _latch(h)
        assert h.session.rtcp_destination == h.peer.addr
    finally:
        await h.close()


async def test_a_latched_rtcp_source_wins_over_the_sdp(pool: PortPool) -> None:
    h = await harness(pool, lambda port: _sdp(port, rtcp_port=port + 7)(port))
    try:
        _latch(h)
        rtcp_source = ("127.0.0.1", h.peer.pair.rtp_port + 3)
        report = build_compound([RtcpReceiverReport(PEER_SSRC), RtcpSdes.cname(PEER_SSRC, "p")])
        h.session.receive_rtcp(report, rtcp_source)
        assert h.session.rtcp_destination == rtcp_source
        # from another host than the latched one, RTCP is not latched
        other = await harness(pool, lambda port: _sdp(port)(port))
        try:
            _latch(other)
            other.session.receive_rtcp(report, ("127.0.0.2", 9999))
            assert other.session.rtcp_destination == ("127.0.0.1", other.peer.pair.rtp_port + 1)
        finally:
            await other.close()
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("sdp_address", "source_host", "same"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("::1", "0:0:0:0:0:0:0:1", True),
        ("2001:db8::1", "2001:DB8:0::1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("pbx.example", "127.0.0.1", False),
        ("", "127.0.0.1", False),
    ],
)
def test_same_host_compares_addresses_not_spellings(
    sdp_address: str, source_host: str, same: bool
) -> None:
    from server.rtp.session import _same_host

    assert _same_host(sdp_address, source_host) is same
