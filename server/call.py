"""One live call: the transport, the engine state and the agent, joined.

Inbound, per 20 ms of caller audio (``on_audio``): mu-law frame -> decode ->
8->16 kHz -> agent -> VAD -> turn machine -> commands, carried out here
(playout) and handed to the agent (responses, STT, interruptions).
Outbound, per media-clock tick (``on_tick``): frames from the playout queue
to the transport, keeping the far end ``lead_frames`` ahead of real time
(enough to absorb a late tick, shallow enough that a pause is heard within a
frame or two), and the queue's passed marks after them.

Times given to the turn machine are the call's inbound media time in ms
(20 ms per inbound frame), since carriers stream caller audio continuously,
silence included.  Nothing here awaits: transports buffer or drop.

A transport that can show the call (a browser page) sets :attr:`Call.listener`:
the call then publishes its turn states, the reply latency and its end, and
the agent its transcripts and stage breakdowns (:mod:`server.callevents`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import msgspec
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
from server.agents.base import Agent, CallControl
from server.agents.echo import EchoAgent
from server.callevents import (
    CallEnded,
    CallEvent,
    CallListener,
    StateChanged,
    Transcript,
    TurnLatency,
)
from server.config import AgentSection
from server.transport import (
    AudioIn,
    CallStarted,
    Dtmf,
    Hangup,
    MarkPlayed,
    TextIn,
    Transport,
    TransportEvent,
    media_stats_of,
)

log = logging.getLogger(__name__)

FRAME_MS = 20
WIRE_RATE_HZ = 8000
VAD_RATE_HZ = 16000
WIRE_FRAME_BYTES = 160  # 20 ms of mu-law
ULAW_SILENCE = 0xFF
END_MARK_PREFIX = "end-"
MAX_LEAD_FRAMES = 2

AgentFactory = Callable[[CallControl], Agent]
"""Builds a call's agent, given the call it answers through."""


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


def turn_config_for(agent: AgentSection, eou_budget_ms: int = 3000) -> TurnConfig:
    """Turn-taking parameters from the agent configuration.

    The turn machine's longest wait for a caller who seems not done is the
    end-of-utterance budget, so the turn decision never misses it.
    """
    return TurnConfig(
        min_delay_ms=agent.endpointing_ms,
        max_delay_ms=max(agent.endpointing_ms, eou_budget_ms),
        min_interruption_ms=agent.min_interruption_ms,
        false_interruption_timeout_ms=agent.false_interruption_timeout_ms,
    )


class Call:
    """Engine state and agent of one call, driven by events and the media clock.

    It is the agent's :class:`server.agents.base.CallControl`.  ``agent``
    builds the agent (default: the echo agent).  The call hangs up by itself
    after ``config.max_call_s``, or ``config.idle_hangup_s`` without caller
    speech or agent audio.
    """

    def __init__(
        self,
        call_id: str,
        transport: Transport,
        config: AgentSection,
        lead_frames: int = 1,
        *,
        observer: LatencyObserver | None = None,
        agent: AgentFactory | None = None,
        eou_budget_ms: int = 3000,
    ) -> None:
        if not 0 <= lead_frames <= MAX_LEAD_FRAMES:
            raise ValueError(f"lead_frames must be in 0..{MAX_LEAD_FRAMES}, got {lead_frames}")
        self.call_id = call_id
        self.transport = transport
        self.started_at = time.time()
        self.turn = TurnMachine(turn_config_for(config, eou_budget_ms))
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
        self._kicked = False  # a reply's first frame left between two ticks
        self._playing_generation = -1  # generation whose audio is being sent
        self._done_generation = -1  # generation fully queued, not yet reported done
        self._max_call_ms = round(config.max_call_s * 1000) or None
        self._idle_ms = round(config.idle_hangup_s * 1000) or None
        self._active_ms = 0  # last media time the caller spoke or the agent played
        self.end_reason: str | None = None
        self.listener: CallListener | None = None
        """Where the call's events go (set by a transport that shows them), else nowhere."""
        self._shown_state = self.turn.state
        self.agent: Agent = (
            agent(self) if agent is not None else EchoAgent(self, preroll_ms=config.preroll_ms)
        )

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
            self._active_ms = self._inbound_ms
            self._apply(self.turn.on_dtmf(event.digit, self._inbound_ms))
            self.agent.on_dtmf(event.digit)
        elif isinstance(event, TextIn):
            self._active_ms = self._inbound_ms
            self.agent.on_text(event.text)
        elif isinstance(event, Hangup):
            self.end(event.reason)
        elif isinstance(event, CallStarted):
            log.info("call %s started (stream %s)", self.call_id, event.stream_id)
            self.agent.on_start(event.parameters)

    def on_audio(self, ulaw: bytes) -> None:
        """Caller audio (mu-law, any length); processed in whole 20 ms frames."""
        self._inbound.push(ulaw)
        while self._inbound.pop_into(self._ulaw_in):
            now_ms = self._inbound_ms
            self.stats.frames_in += 1
            ulaw_decode_into(self._ulaw_in, self._pcm8k)
            self._up.process_into(self._pcm8k, self._pcm16k)
            self.agent.on_caller_frame(self._ulaw_in, self._pcm16k, now_ms)
            event = self.vad.process(self._pcm16k, now_ms)
            # The call has now heard up to the end of this frame.
            self._inbound_ms = heard_ms = now_ms + FRAME_MS
            if event is not None:
                self._active_ms = heard_ms
                self._apply(self.turn.on_vad_event(event, heard_ms))
            commands = self.turn.tick(heard_ms, self.vad.voiced_until_ms)
            if commands:
                self._apply(commands)
            elif self.listener is not None:
                self._show_state()
            if self.ended:
                return
            if self._max_call_ms is not None and heard_ms >= self._max_call_ms:
                self.hangup("max_call")
            elif (
                self._idle_ms is not None
                and heard_ms - self._active_ms >= self._idle_ms
                and not self.vad.speaking
            ):
                self.hangup("idle")

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
                self.stats.turns += 1
                end = command.speech_end_ms
                self._answering = None if end is None else (command.generation, end)
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
                self._kicked = False
                self.transport.clear()
                self.stats.clears += 1
            elif isinstance(command, Interrupted):
                self.stats.interruptions += 1
                if (confirm_ms := self.turn.stats.last_confirm_ms) is not None:
                    self.observer.observe_confirm_ms(confirm_ms)
            elif isinstance(command, FalseInterruption):
                self.stats.false_interruptions += 1
            self.agent.on_command(command)
            if self.ended:
                return
        if self.listener is not None:
            self._show_state()

    def _show_state(self) -> None:
        state = self.turn.state
        if state is not self._shown_state:
            self._shown_state = state
            self.publish(StateChanged(state.value))

    # -- the agent's side (CallControl) -----------------------------------------------

    def play(self, ulaw: bytes | bytearray, generation: int) -> bool:
        """Queue reply audio (8 kHz mu-law) of ``generation``; False if stale or full."""
        if self.ended:
            return False
        accepted = self._playout.push(ulaw, generation)
        if not accepted or self._playout.paused or self._far_end_frames > self.lead_frames:
            return accepted
        # The far end holds no more than the lead: the audio leaves now rather than
        # at the next tick.  From idle, the next tick counts the first frame as still
        # playing (less than a period has passed).
        idle = self._far_end_frames == 0
        sent = False
        while self._far_end_frames <= self.lead_frames and self._send_frame():
            self._far_end_frames += 1
            sent = True
        if sent:
            self._kicked = self._kicked or idle
            self._pass_progress()
        return accepted

    def finish(self, generation: int) -> None:
        """Everything of ``generation`` is queued; the turn machine hears "done" when it
        starts playing (at once if it already is, or if nothing was queued)."""
        if self.ended or generation != self.turn.generation:
            return
        playout = self._playout
        if generation == self._playing_generation:
            self._end_segment(generation)
            self._apply(self.turn.on_response_done(generation, self._inbound_ms))
        elif playout.generation == generation and playout.queued_ms > 0:
            self._end_segment(generation)
            self._done_generation = generation
        else:
            self._apply(self.turn.on_response_done(generation, self._inbound_ms))

    def _end_segment(self, generation: int) -> None:
        self._playout.end_of_segment(generation)
        self._playout.mark(f"{END_MARK_PREFIX}{generation}", generation)

    def response_started(self, generation: int) -> None:
        if not self.ended:
            self._apply(self.turn.on_response_started(generation, self._inbound_ms))

    def transcript(self, text: str, is_final: bool) -> None:
        if not self.ended:
            self.publish(Transcript("user", text, final=False))
            self._apply(self.turn.on_transcript(text, is_final, self._inbound_ms))

    def send_dtmf(self, digits: str) -> bool:
        """Send keys to the far end through the transport (False: it cannot)."""
        return not self.ended and self.transport.send_dtmf(digits)

    def publish(self, event: CallEvent) -> None:
        """Hand ``event`` to the call's listener, if any."""
        if self.listener is not None:
            self.listener.on_call_event(event)

    def request_turn(self) -> bool:
        if self.ended:
            return False
        before = self.turn.generation
        self._apply(self.turn.start_bot_response(self._inbound_ms))
        return self.turn.generation != before

    def heard_ms(self, generation: int) -> int:
        """Ms of ``generation`` the far end has played: sent minus what is still ahead."""
        if generation != self._playout.playing_generation:
            return 0
        return max(0, self._playout.heard_ms - self._far_end_frames * FRAME_MS)

    def hangup(self, reason: str) -> None:
        """End the call from our side: the transport hangs up, the agent stops."""
        if not self.ended:
            log.info("call %s: hanging up (%s)", self.call_id, reason)
            self.end_reason = reason  # the transport may tell the far end why
            self.transport.hangup()
            self.end(reason)

    # -- outbound (media clock) --------------------------------------------------------

    def on_tick(self) -> None:
        """Send outbound frames due now; called by the media clock every 20 ms.

        One frame of the far end's buffer played since the last tick; top it up
        to ``lead_frames`` + 1 frames (the one playing and the lead).
        """
        if self.ended:
            return
        if self._kicked:
            self._kicked = False
        elif self._far_end_frames:
            self._far_end_frames -= 1
        while self._far_end_frames <= self.lead_frames and self._send_frame():
            self._far_end_frames += 1
        self._pass_progress()

    def _pass_progress(self) -> None:
        """Tell the turn machine how much was heard; send the marks now passed."""
        generation = self._playing_generation
        if generation == self.turn.generation and not self.ended:
            self._active_ms = self._inbound_ms
            self.turn.on_playout_progress(generation, self.heard_ms(generation), self._inbound_ms)
        for name in self._playout.take_played_marks():
            self.transport.mark(name)

    def _send_frame(self) -> bool:
        if not self._playout.pop_into(self._wire_out):
            return False
        generation = self._playout.playing_generation
        if generation != self._playing_generation:
            self._playing_generation = generation
            if self._answering is not None and self._answering[0] == generation:
                latency_ms = self._inbound_ms - self._answering[1]
                self.observer.observe_turn_ms(latency_ms)
                self.publish(TurnLatency(generation, latency_ms))
                self._answering = None
            self.agent.on_first_audio(generation)
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
            self.end_reason = reason
            self.agent.close(reason)
            log.info("call %s ended: %s (%s)", self.call_id, reason, self.stats)
            self.publish(CallEnded(reason))

    def summary(self) -> dict[str, object]:
        """The call so far: identity, state, counters, the agent's own summary and,
        when the transport keeps them, its media statistics (``media``, see
        :class:`server.transport.MediaStats`)."""
        summary: dict[str, object] = {
            "call_id": self.call_id,
            "started_at": self.started_at,
            "media_ms": self._inbound_ms,
            "state": self.turn.state.value,
            "ended": self.end_reason,
            "stats": asdict(self.stats),
            **self.agent.summary(),
        }
        media = media_stats_of(self.transport)
        if media is not None:
            summary["media"] = msgspec.to_builtins(media)
        return summary
