"""One call's full-duplex engine work per 20 ms frame.

Inbound: 160 bytes of mu-law -> decode -> frame buffer (8 kHz) -> resample to
16 kHz -> frame buffer (16 kHz, 20 ms) -> VAD -> turn state machine.
Outbound: 20 ms of 24 kHz TTS PCM -> resample to 8 kHz -> mu-law encode ->
playout queue -> one wire frame out.  voxgate resamples with its native
polyphase filter (2-3 ms delay); soxr streams hold 73-119 ms back.

The caller's side is real speech (espeak-ng) with pauses, so the VAD and the
turn machine go through onsets, endpoints and barge-ins while we measure.
``frames`` is the number of 20 ms media frames in one measured timeline.

Baselines do the same work the ways Python voice stacks commonly do it:
``pyav_aiortc`` uses PyAV's pcm_mulaw codec and AudioResampler as aiortc does,
with bytearray framing and plain webrtcvad; ``audioop_soxr`` uses the stdlib
audioop G.711 (as Pipecat does) with soxr streams, bytearray framing and plain
webrtcvad.  Both drive the same turn state machine as voxgate.
"""

from __future__ import annotations

import fractions
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
import soxr
import webrtcvad

from bench.conftest import Measure
from engine.framebuf import pcm_frame_buffer
from engine.g711 import ulaw_decode_into, ulaw_encode, ulaw_encode_into
from engine.playout import PlayoutQueue
from engine.polyphase import PolyphaseResampler
from engine.turn import (
    ClearPlayout,
    Commands,
    PausePlayout,
    ResumePlayout,
    StartResponse,
    TurnMachine,
)
from engine.vad import SpeechHysteresis, SpeechStarted, SpeechStopped, Vad, VadConfig
from tests import speech

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_MS = 20
WIRE_RATE_HZ = 8000
VAD_RATE_HZ = 16000
TTS_RATE_HZ = 24000
WIRE_FRAME = WIRE_RATE_HZ * FRAME_MS // 1000  # 160 samples = 160 mu-law bytes
VAD_FRAME = VAD_RATE_HZ * FRAME_MS // 1000  # 320 samples
TTS_FRAME = TTS_RATE_HZ * FRAME_MS // 1000  # 480 samples


def caller_frames() -> list[bytes]:
    """The caller's side on the wire: speech, pauses and a short burst, as 20 ms mu-law."""
    parts = [
        speech.silence(600, WIRE_RATE_HZ),
        speech.speech("hello, I would like to check my order", WIRE_RATE_HZ),
        speech.silence(900, WIRE_RATE_HZ),
        speech.cough(rate_hz=WIRE_RATE_HZ),
        speech.silence(700, WIRE_RATE_HZ),
        speech.speech("no wait, stop, that is wrong", WIRE_RATE_HZ),
        speech.silence(800, WIRE_RATE_HZ),
    ]
    pcm = speech.concat(parts)
    n = len(pcm) // WIRE_FRAME * WIRE_FRAME
    wire = ulaw_encode(pcm[:n].tobytes())
    return [wire[i : i + WIRE_FRAME] for i in range(0, n, WIRE_FRAME)]


def tts_frames() -> list[npt.NDArray[np.int16]]:
    """The bot's side: 20 ms chunks of 24 kHz speech, as a TTS stream delivers them."""
    pcm = speech.speech("your order shipped yesterday and arrives on monday", TTS_RATE_HZ)
    n = len(pcm) // TTS_FRAME * TTS_FRAME
    return [pcm[i : i + TTS_FRAME].copy() for i in range(0, n, TTS_FRAME)]


class _Bot:
    """Applies the turn machine's playout commands; shared by every pipeline."""

    def __init__(self) -> None:
        self.turn = TurnMachine()
        self.generation = 0
        self.paused = False
        self.cleared = 0

    def apply(self, commands: Commands, now_ms: int) -> None:
        for command in commands:
            if isinstance(command, StartResponse):
                self.generation = command.generation
                self.turn.on_playout_started(command.generation, now_ms)
            elif isinstance(command, PausePlayout):
                self.paused = True
            elif isinstance(command, ResumePlayout):
                self.paused = False
            elif isinstance(command, ClearPlayout):
                self.paused = False
                self.cleared += 1


class VoxgateCall:
    """The engine's per-call state, driven exactly as the server's media clock does."""

    def __init__(self) -> None:
        self.bot = _Bot()
        self.pcm8k = np.zeros(WIRE_FRAME, dtype=np.int16)
        self.frame8k = np.zeros(WIRE_FRAME, dtype=np.int16)
        self.frame16k = np.zeros(VAD_FRAME, dtype=np.int16)
        self.ulaw_out = bytearray(4 * WIRE_FRAME)
        self.ulaw_view = memoryview(self.ulaw_out)
        self.wire_out = bytearray(WIRE_FRAME)
        self.inbound8k = pcm_frame_buffer(WIRE_RATE_HZ, FRAME_MS, 200)
        self.inbound16k = pcm_frame_buffer(VAD_RATE_HZ, FRAME_MS, 200)
        self.up = PolyphaseResampler(WIRE_RATE_HZ, VAD_RATE_HZ)
        self.down = PolyphaseResampler(TTS_RATE_HZ, WIRE_RATE_HZ)
        self.up_out = np.zeros(self.up.max_output(WIRE_FRAME), dtype=np.int16)
        self.down_out = np.zeros(self.down.max_output(TTS_FRAME), dtype=np.int16)
        self.vad = Vad()
        self.playout = PlayoutQueue(WIRE_FRAME, FRAME_MS, 0xFF, capacity_ms=2000)
        self.sent_frames = 0

    def frame(self, payload: bytes, tts: npt.NDArray[np.int16], now_ms: int) -> None:
        bot = self.bot
        turn = bot.turn
        # inbound
        ulaw_decode_into(payload, self.pcm8k)
        self.inbound8k.push(self.pcm8k)
        while self.inbound8k.pop_into(self.frame8k):
            n = self.up.process_into(self.frame8k, self.up_out)
            self.inbound16k.push(self.up_out[:n])
        while self.inbound16k.pop_into(self.frame16k):
            event = self.vad.process(self.frame16k, now_ms)
            if event is not None:
                bot.apply(turn.on_vad_event(event, now_ms), now_ms)
            commands = turn.tick(now_ms, self.vad.voiced_until_ms)
            if commands:
                bot.apply(commands, now_ms)
        # outbound
        playout = self.playout
        if playout.generation < bot.generation:
            playout.clear(bot.generation)
        if playout.paused != bot.paused:
            if bot.paused:
                playout.pause()
            else:
                playout.resume()
        if playout.queued_ms < 100:
            n = self.down.process_into(tts, self.down_out)
            n = ulaw_encode_into(self.down_out[:n], self.ulaw_out)
            playout.push(self.ulaw_view[:n], bot.generation)
        if playout.pop_into(self.wire_out):
            self.sent_frames += 1


class _BytearrayFramer:
    """The common ``buf += chunk; frame = buf[:n]; del buf[:n]`` framing."""

    def __init__(self, frame_bytes: int) -> None:
        self.buf = bytearray()
        self.frame_bytes = frame_bytes

    def push(self, chunk: bytes) -> None:
        self.buf += chunk

    def pop(self) -> bytes | None:
        if len(self.buf) < self.frame_bytes:
            return None
        frame = bytes(self.buf[: self.frame_bytes])
        del self.buf[: self.frame_bytes]
        return frame


class _RawVad:
    """Plain webrtcvad with the same hysteresis rules, as a stack without our VAD would."""

    def __init__(self) -> None:
        config = VadConfig()
        self.vad = webrtcvad.Vad(config.aggressiveness)
        self.hysteresis = SpeechHysteresis(
            config.frame_ms, config.start_frames, config.window_frames, config.stop_frames
        )

    def process(self, frame: bytes, now_ms: int) -> SpeechStarted | SpeechStopped | None:
        return self.hysteresis.update(self.vad.is_speech(frame, VAD_RATE_HZ), now_ms)


class _BaselineCall:
    """Shared outer loop of the baselines; subclasses supply the codec and resamplers."""

    def __init__(self) -> None:
        self.bot = _Bot()
        self.inbound8k = _BytearrayFramer(2 * WIRE_FRAME)
        self.inbound16k = _BytearrayFramer(2 * VAD_FRAME)
        self.outbound = _BytearrayFramer(WIRE_FRAME)
        self.vad = _RawVad()
        self.generation = 0
        self.sent: deque[bytes] = deque(maxlen=8)

    def decode(self, payload: bytes) -> bytes:
        raise NotImplementedError

    def upsample(self, pcm8k: bytes) -> bytes:
        raise NotImplementedError

    def downsample_encode(self, tts: npt.NDArray[np.int16]) -> bytes:
        raise NotImplementedError

    def frame(self, payload: bytes, tts: npt.NDArray[np.int16], now_ms: int) -> None:
        bot = self.bot
        self.inbound8k.push(self.decode(payload))
        while (frame8k := self.inbound8k.pop()) is not None:
            self.inbound16k.push(self.upsample(frame8k))
        while (frame16k := self.inbound16k.pop()) is not None:
            event = self.vad.process(frame16k, now_ms)
            if event is not None:
                bot.apply(bot.turn.on_vad_event(event, now_ms), now_ms)
            commands = bot.turn.tick(now_ms, self.vad.hysteresis.voiced_until_ms)
            if commands:
                bot.apply(commands, now_ms)
        if self.generation < bot.generation:
            self.outbound.buf.clear()
            self.generation = bot.generation
        if len(self.outbound.buf) < 5 * WIRE_FRAME:
            self.outbound.push(self.downsample_encode(tts))
        if not bot.paused and (wire := self.outbound.pop()) is not None:
            self.sent.append(wire)


class PyAvCall(_BaselineCall):
    """PyAV codec contexts and resamplers, used the way aiortc uses them."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = av.CodecContext.create("pcm_mulaw", "r")
        self.decoder.format = "s16"
        self.decoder.layout = "mono"
        self.decoder.sample_rate = WIRE_RATE_HZ
        self.encoder = av.CodecContext.create("pcm_mulaw", "w")
        self.encoder.format = "s16"
        self.encoder.layout = "mono"
        self.encoder.sample_rate = WIRE_RATE_HZ
        self.encoder.time_base = fractions.Fraction(1, WIRE_RATE_HZ)
        self.up = av.AudioResampler(format="s16", layout="mono", rate=VAD_RATE_HZ)
        self.down = av.AudioResampler(format="s16", layout="mono", rate=WIRE_RATE_HZ)
        self.pts = 0

    def decode(self, payload: bytes) -> bytes:
        return b"".join(f.to_ndarray().tobytes() for f in self.decoder.decode(av.Packet(payload)))

    def _resample(self, resampler: Any, pcm: npt.NDArray[np.int16], rate_hz: int) -> list[Any]:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate_hz
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, rate_hz)
        self.pts += len(pcm)
        return list(resampler.resample(frame))

    def upsample(self, pcm8k: bytes) -> bytes:
        pcm = np.frombuffer(pcm8k, dtype=np.int16)
        return b"".join(
            f.to_ndarray().tobytes() for f in self._resample(self.up, pcm, WIRE_RATE_HZ)
        )

    def downsample_encode(self, tts: npt.NDArray[np.int16]) -> bytes:
        packets = []
        for frame in self._resample(self.down, tts, TTS_RATE_HZ):
            packets += self.encoder.encode(frame)
        return b"".join(bytes(p) for p in packets)


class AudioopSoxrCall(_BaselineCall):
    """Stdlib audioop G.711 with soxr streams, as Pipecat's serializers do."""

    def __init__(self) -> None:
        super().__init__()
        self.up = soxr.ResampleStream(WIRE_RATE_HZ, VAD_RATE_HZ, 1, dtype="int16")
        self.down = soxr.ResampleStream(TTS_RATE_HZ, WIRE_RATE_HZ, 1, dtype="int16")

    def decode(self, payload: bytes) -> bytes:
        return audioop.ulaw2lin(payload, 2)

    def upsample(self, pcm8k: bytes) -> bytes:
        return bytes(self.up.resample_chunk(np.frombuffer(pcm8k, dtype=np.int16)))

    def downsample_encode(self, tts: npt.NDArray[np.int16]) -> bytes:
        return audioop.lin2ulaw(bytes(self.down.resample_chunk(tts)), 2)


PIPELINES: dict[str, Callable[[], Any]] = {
    "voxgate": VoxgateCall,
    "pyav_aiortc": PyAvCall,
    "audioop_soxr": AudioopSoxrCall,
}


def run_timeline(
    call: Any, wire: list[bytes], tts: list[npt.NDArray[np.int16]], start_ms: list[int]
) -> None:
    """Feed one pass of the caller timeline (and matching TTS) through ``call``."""
    now_ms = start_ms[0]
    n_tts = len(tts)
    for i, payload in enumerate(wire):
        call.frame(payload, tts[i % n_tts], now_ms)
        now_ms += FRAME_MS
    start_ms[0] = now_ms


@pytest.fixture(scope="module")
def media() -> tuple[list[bytes], list[npt.NDArray[np.int16]]]:
    return caller_frames(), tts_frames()


@pytest.mark.benchmark(group="full_duplex_frame")
@pytest.mark.parametrize("impl", list(PIPELINES))
def test_full_duplex_frame(
    measure: Measure, impl: str, media: tuple[list[bytes], list[npt.NDArray[np.int16]]]
) -> None:
    wire, tts = media
    call = PIPELINES[impl]()
    clock = [0]
    # One unmeasured pass: the turn machine must see the caller's turns and
    # barge-ins, and the bot must get audio out, or the benchmark measures idling.
    run_timeline(call, wire, tts, clock)
    assert call.bot.turn.stats.user_turns >= 1
    measure(impl, run_timeline, call, wire, tts, clock, frames=len(wire))
