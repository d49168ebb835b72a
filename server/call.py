"""One live call: the transport, the engine state and the agent, joined.

Inbound, per 20 ms of caller audio (``on_audio``): mu-law frame -> agent
history -> decode -> 8->16 kHz -> VAD -> turn machine -> commands.
Outbound, per media-clock tick (``on_tick``): frames from the playout queue
to the transport, keeping the far end ``lead_frames`` ahead of real time
(enough to absorb a late tick, shallow enough that a pause is heard within a
frame or two), and the queue's passed marks after them.

Times given to the turn machine are the call's inbound media time in ms
(20 ms per inbound frame), since carriers stream caller audio continuously,
silence included.  Nothing here awaits: transports buffer or drop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.framebuf import FrameBuffer
from engine.g711 import ulaw_decode_into
from engine.playout import PlayoutQueue
from engine.polyphase import PolyphaseResampler
from engine.turn import (
    ClearPlayout,
    Commands,
    FalseInterruption,
    Interrupted,
    PausePlayout,
    ResumePlayout,
    StartResponse,
    TurnConfig,
    TurnMachine,
)
from engine.vad import Vad, VadConfig
from server.agents.echo import EchoAgent
from server.config import AgentSection
from server.transport import (
    AudioIn,
    CallStarted,
    Dtmf,
    Hangup,
    MarkPlayed,
    Transport,
    TransportEvent,
)

log = logging.getLogger(__name__)

FRAME_MS = 20
WIRE_RATE_HZ = 8000
VAD_RATE_HZ = 16000
WIRE_FRAME_BYTES = 160  # 20 ms of mu-law
ULAW_SILENCE = 0xFF
END_MARK_PREFIX = "end-"
MAX_LEAD_FRAMES = 2


@dataclass(slots=True)
class CallStats:
    """Per-call counters, summed into process metrics when the call ends."""

    frames_in: int = 0
    frames_out: int = 0
    turns: int = 0
    interruptions: int = 0
    false_interruptions: int = 0
    dtmf: int = 0
    clears: int = 0


class LatencyObserver(Protocol):
    """Where a call reports its latencies (ms, in the call's media time)."""

    def observe_turn_ms(self, latency_ms: float) -> None:
        """End of the caller's speech to the first frame of the reply sent."""

    def observe_yield_ms(self, latency_ms: float) -> None:
        """Onset of speech over the bot to playout paused."""

    def observe_confirm_ms(self, latency_ms: float) -> None:
        """Onset of speech over the bot to the interruption confirmed."""


class _NoObserver:
    def observe_turn_ms(self, latency_ms: float) -> None:
        pass

    def observe_yield_ms(self, latency_ms: float) -> None:
        pass

    def observe_confirm_ms(self, latency_ms: float) -> None:
        pass


def vad_config_for(agent: AgentSection) -> VadConfig:
    """VAD settings whose stop hangover never outlasts the endpointing silence.

    The turn ends ``endpointing_ms`` after the last speech frame, but the turn
    machine only learns that speech stopped from the VAD: a longer hangover
    would delay every turn by the difference.
    """
    default = VadConfig()
    frame_ms = default.frame_ms
    stop_ms = max(frame_ms, min(default.stop_ms, agent.endpointing_ms // frame_ms * frame_ms))
    return VadConfig(stop_ms=stop_ms)


def turn_config_for(agent: AgentSection) -> TurnConfig:
    """Turn-taking parameters from the agent configuration."""
    return TurnConfig(
        min_delay_ms=agent.endpointing_ms,
        max_delay_ms=max(agent.endpointing_ms, 3000),
        min_interruption_ms=agent.min_interruption_ms,
        false_interruption_timeout_ms=agent.false_interruption_timeout_ms,
    )


class Call:
    """Engine state and echo agent for one call, driven by events and the media clock."""

    def __init__(
        self,
        call_id: str,
        transport: Transport,
        config: AgentSection,
        lead_frames: int = 1,
        observer: LatencyObserver | None = None,
    ) -> None:
        if not 0 <= lead_frames <= MAX_LEAD_FRAMES:
            raise ValueError(f"lead_frames must be in 0..{MAX_LEAD_FRAMES}, got {lead_frames}")
        self.call_id = call_id
        self.transport = transport
        self.agent = EchoAgent(preroll_ms=config.preroll_ms)
        self.turn = TurnMachine(turn_config_for(config))
        self.vad = Vad(vad_config_for(config))
        self.lead_frames = lead_frames
        self.observer: LatencyObserver = observer or _NoObserver()
        self._answering: tuple[int, int] | None = None  # (generation, end of the speech it answers)
        self.stats = CallStats()
        self.ended = False
        self._inbound = FrameBuffer(WIRE_FRAME_BYTES, WIRE_FRAME_BYTES * 50)
        self._up = PolyphaseResampler(WIRE_RATE_HZ, VAD_RATE_HZ)
        self._ulaw_in = bytearray(WIRE_FRAME_BYTES)
        self._pcm8k = np.zeros(WIRE_FRAME_BYTES, dtype=np.int16)
        self._pcm16k = np.zeros(self._up.max_output(WIRE_FRAME_BYTES), dtype=np.int16)
        self._playout = PlayoutQueue(WIRE_FRAME_BYTES, FRAME_MS, ULAW_SILENCE)
        self._wire_out = bytearray(WIRE_FRAME_BYTES)
        self._inbound_ms = 0
        self._far_end_frames = 0  # frames sent and not yet played, by real time
        self._playing_generation = -1  # generation whose audio is being sent
        self._done_generation = -1  # generation fully queued, not yet reported done

    @property
    def now_ms(self) -> int:
        """The call's inbound media time (ms)."""
        return self._inbound_ms

    # -- inbound ---------------------------------------------------------------------

    def on_event(self, event: TransportEvent) -> None:
        """Handle one event from the transport."""
        if self.ended:
            return
        if isinstance(event, AudioIn):
            self.on_audio(event.payload)
        elif isinstance(event, MarkPlayed):
            self._on_mark(event)
        elif isinstance(event, Dtmf):
            self.stats.dtmf += 1
            self._apply(self.turn.on_dtmf(event.digit, self._inbound_ms))
        elif isinstance(event, Hangup):
            self.end(event.reason)
        elif isinstance(event, CallStarted):
            log.info("call %s started (stream %s)", self.call_id, event.stream_id)

    def on_audio(self, ulaw: bytes) -> None:
        """Caller audio (mu-law, any length); processed in whole 20 ms frames."""
        self._inbound.push(ulaw)
        while self._inbound.pop_into(self._ulaw_in):
            now_ms = self._inbound_ms
            self.stats.frames_in += 1
            self.agent.on_caller_audio(self._ulaw_in, now_ms)
            ulaw_decode_into(self._ulaw_in, self._pcm8k)
            self._up.process_into(self._pcm8k, self._pcm16k)
            event = self.vad.process(self._pcm16k, now_ms)
            # The call has now heard up to the end of this frame.
            self._inbound_ms = heard_ms = now_ms + FRAME_MS
            if event is not None:
                self._apply(self.turn.on_vad_event(event, heard_ms))
            commands = self.turn.tick(heard_ms, self.vad.voiced_until_ms)
            if commands:
                self._apply(commands)

    def _on_mark(self, event: MarkPlayed) -> None:
        if not event.played or not event.name.startswith(END_MARK_PREFIX):
            return
        try:
            generation = int(event.name[len(END_MARK_PREFIX) :])
        except ValueError:
            return
        self._apply(self.turn.on_playout_finished(generation, self._inbound_ms))

    # -- turn commands -----------------------------------------------------------------

    def _apply(self, commands: Commands) -> None:
        for command in commands:
            if isinstance(command, StartResponse):
                self._respond(command)
            elif isinstance(command, PausePlayout):
                self._playout.pause()
                if (yield_ms := self.turn.stats.last_time_to_yield_ms) is not None:
                    self.observer.observe_yield_ms(yield_ms)
            elif isinstance(command, ResumePlayout):
                self._playout.resume()
            elif isinstance(command, ClearPlayout):
                self._playout.clear(max(self._playout.generation, command.generation + 1))
                # The pause was for the audio just dropped; the next reply plays at once.
                self._playout.resume()
                self._far_end_frames = 0
                self.transport.clear()
                self.stats.clears += 1
            elif isinstance(command, Interrupted):
                self.stats.interruptions += 1
                if (confirm_ms := self.turn.stats.last_confirm_ms) is not None:
                    self.observer.observe_confirm_ms(confirm_ms)
            elif isinstance(command, FalseInterruption):
                self.stats.false_interruptions += 1

    def _respond(self, command: StartResponse) -> None:
        generation = command.generation
        now_ms = self._inbound_ms
        self.stats.turns += 1
        start, end = command.speech_start_ms, command.speech_end_ms
        reply = b"" if start is None or end is None else self.agent.reply(start, end)
        self._apply(self.turn.on_response_started(generation, now_ms))
        self._answering = None if end is None else (generation, end)
        if reply and self._playout.push(reply, generation):
            self._playout.end_of_segment(generation)
            self._playout.mark(f"{END_MARK_PREFIX}{generation}", generation)
            # The whole reply is queued; tell the machine once it starts playing
            # (done before any audio means "nothing to say" to it).
            self._done_generation = generation
        else:
            self._apply(self.turn.on_response_done(generation, now_ms))

    # -- outbound (media clock) --------------------------------------------------------

    def on_tick(self) -> None:
        """Send outbound frames due now; called by the media clock every 20 ms.

        One frame of the far end's buffer played since the last tick; top it up
        to ``lead_frames`` + 1 frames (the one playing and the lead).
        """
        if self.ended:
            return
        if self._far_end_frames:
            self._far_end_frames -= 1
        while self._far_end_frames <= self.lead_frames and self._send_frame():
            self._far_end_frames += 1
        for name in self._playout.take_played_marks():
            self.transport.mark(name)

    def _send_frame(self) -> bool:
        if not self._playout.pop_into(self._wire_out):
            return False
        generation = self._playout.playing_generation
        if generation != self._playing_generation:
            self._playing_generation = generation
            if self._answering is not None and self._answering[0] == generation:
                self.observer.observe_turn_ms(self._inbound_ms - self._answering[1])
                self._answering = None
            self._apply(self.turn.on_playout_started(generation, self._inbound_ms))
            if generation == self._done_generation:
                self._apply(self.turn.on_response_done(generation, self._inbound_ms))
        self.transport.send_audio(bytes(self._wire_out))
        self.stats.frames_out += 1
        return not self.ended

    def end(self, reason: str) -> None:
        """Stop the call's work; idempotent."""
        if not self.ended:
            self.ended = True
            log.info("call %s ended: %s (%s)", self.call_id, reason, self.stats)
