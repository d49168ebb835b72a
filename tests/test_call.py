"""A call driven frame by frame: echo replies, marks, barge-in and false interruptions.

The transport is a recording fake and the media clock is stepped in lockstep
with the caller's audio (one inbound frame, one tick), as the server does.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

from engine.g711 import ulaw_encode
from engine.turn import TurnState
from server.agents.loopback import LoopbackAgent
from server.call import Call
from server.callevents import CallEnded, CallEvent, StateChanged, TurnLatency
from server.config import AgentSection
from server.transport import Dtmf, Hangup, MarkPlayed
from tests import speech

FRAME = 160  # 20 ms of mu-law


class RecordingTransport:
    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []

    def send_audio(self, frame: bytes) -> None:
        self.log.append(("audio", frame))

    def clear(self) -> None:
        self.log.append(("clear", None))

    def mark(self, name: str) -> None:
        self.log.append(("mark", name))

    def send_dtmf(self, digits: str) -> bool:
        self.log.append(("dtmf", digits))
        return True

    def hangup(self) -> None:
        self.log.append(("hangup", None))

    def audio(self) -> bytes:
        return b"".join(f for kind, f in self.log if kind == "audio")  # type: ignore[misc]

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.log]


def wire(pcm: npt.NDArray[np.int16]) -> list[bytes]:
    n = len(pcm) // FRAME * FRAME
    data = ulaw_encode(pcm[:n].tobytes())
    return [data[i : i + FRAME] for i in range(0, n, FRAME)]


def run(call: Call, frames: list[bytes]) -> None:
    for frame in frames:
        call.on_audio(frame)
        call.on_tick()


def make_call(lead_frames: int = 1, **agent: int) -> tuple[Call, RecordingTransport]:
    transport = RecordingTransport()
    config = AgentSection(
        endpointing_ms=agent.get("endpointing_ms", 200),
        min_interruption_ms=agent.get("min_interruption_ms", 300),
        false_interruption_timeout_ms=agent.get("false_interruption_timeout_ms", 600),
    )
    return Call("CA1", transport, config, lead_frames=lead_frames), transport


def test_echo_reply_is_the_utterance_as_heard() -> None:
    call, transport = make_call()
    utterance = wire(speech.speech("please call me back tomorrow", 8000))
    lead = wire(speech.silence(1000, 8000))
    run(call, lead + utterance)
    assert transport.audio() == b""  # nothing while the caller speaks
    run(call, wire(speech.silence(3000, 8000)))
    reply = transport.audio()
    heard = b"".join(lead + utterance)
    # The reply is a contiguous slice of what the caller sent, covering the utterance.
    body = b"".join(utterance[2:-2])
    assert body in reply
    assert reply in heard + bytes([0xFF]) * FRAME
    assert call.stats.turns == 1
    # One mark after the last reply frame.
    kinds = transport.kinds()
    assert kinds.count("mark") == 1 and kinds[-1] == "mark"
    assert call.turn.state is TurnState.BOT_SPEAKING
    mark = transport.log[-1][1]
    assert isinstance(mark, str)
    call.on_event(MarkPlayed(mark, played=True))
    assert call.turn.state is TurnState.LISTENING


def test_reply_starts_after_endpointing_delay() -> None:
    call, transport = make_call(endpointing_ms=200)
    utterance = wire(speech.speech("hello there", 8000))
    run(call, wire(speech.silence(600, 8000)) + utterance)
    frames_before = len(transport.log)
    waited = 0
    for frame in wire(speech.silence(2000, 8000)):
        run(call, [frame])
        waited += 20
        if len(transport.log) > frames_before:
            break
    # The 200 ms endpoint counts from the last speech frame; the VAD's stop
    # hangover does not add to it.  A frame or two of detection slack.
    assert 200 <= waited <= 200 + 60


def test_barge_in_pauses_then_clears() -> None:
    call, transport = make_call(min_interruption_ms=300)
    run(call, wire(speech.silence(600, 8000)))
    run(call, wire(speech.speech("tell me about the weather today in paris", 8000)))
    run(call, wire(speech.silence(800, 8000)))  # reply playing, past the echo guard
    assert call.turn.state is TurnState.BOT_SPEAKING
    sent_before = call.stats.frames_out
    run(call, wire(speech.speech("no stop stop that is not what I asked", 8000)))
    assert "clear" in transport.kinds()
    assert call.stats.interruptions == 1
    # Playout stopped within a few frames of the interruption's onset.
    assert call.stats.frames_out - sent_before <= 10


def test_the_interruption_is_echoed_in_turn() -> None:
    call, transport = make_call(min_interruption_ms=300)
    run(call, wire(speech.silence(600, 8000)))
    run(call, wire(speech.speech("tell me about the weather today in paris", 8000)))
    run(call, wire(speech.silence(800, 8000)))
    interruption = wire(speech.speech("no stop that is not what I asked", 8000))
    run(call, interruption)
    assert "clear" in transport.kinds()
    cleared_at = len(transport.log) - transport.kinds()[::-1].index("clear")
    run(call, wire(speech.silence(4000, 8000)))
    reply = b"".join(f for kind, f in transport.log[cleared_at:] if kind == "audio")  # type: ignore[misc]
    # The new reply is the interruption as heard, not the rest of the old one.
    assert b"".join(interruption[2:-2]) in reply
    assert call.stats.turns == 2


def test_far_end_is_kept_lead_frames_ahead() -> None:
    for lead in (0, 1, 2):
        call, _ = make_call(lead_frames=lead)
        run(call, wire(speech.silence(600, 8000)))
        run(call, wire(speech.speech("one two three four five", 8000)))
        per_tick: list[int] = []
        for frame in wire(speech.silence(1000, 8000)):
            before = call.stats.frames_out
            run(call, [frame])
            per_tick.append(call.stats.frames_out - before)
        sending = [n for n in per_tick if n]
        # The first tick of a reply fills the far end's buffer; then one frame per tick.
        assert sending[0] == lead + 1
        assert set(sending[1:10]) == {1}


def test_cough_during_reply_resumes() -> None:
    call, transport = make_call(min_interruption_ms=400, false_interruption_timeout_ms=400)
    run(call, wire(speech.silence(600, 8000)))
    run(call, wire(speech.speech("read me the whole list of options please", 8000)))
    run(call, wire(speech.silence(800, 8000)))  # reply playing, past the echo guard
    assert call.turn.state is TurnState.BOT_SPEAKING
    run(call, wire(speech.cough(rate_hz=8000)))
    run(call, wire(speech.silence(1500, 8000)))
    assert "clear" not in transport.kinds()
    assert call.stats.false_interruptions == 1
    assert call.stats.interruptions == 0


def test_dtmf_cuts_the_bot_off_and_hangup_ends() -> None:
    call, transport = make_call()
    run(call, wire(speech.silence(600, 8000)))
    run(call, wire(speech.speech("what are your opening hours", 8000)))
    run(call, wire(speech.silence(400, 8000)))
    call.on_event(Dtmf("5"))
    assert "clear" in transport.kinds()
    assert ("dtmf", "5") in transport.log  # the echo agent plays keys back too
    call.on_event(Hangup("stop"))
    assert call.ended
    n = len(transport.log)
    run(call, wire(speech.silence(200, 8000)))
    assert len(transport.log) == n  # nothing after hangup


class RecordingListener:
    def __init__(self) -> None:
        self.events: list[CallEvent] = []

    def on_call_event(self, event: CallEvent) -> None:
        self.events.append(event)


def test_listener_hears_states_latency_and_the_end() -> None:
    call, transport = make_call()
    listener = RecordingListener()
    call.listener = listener
    run(call, wire(speech.silence(600, 8000)))
    run(call, wire(speech.speech("what are your opening hours", 8000)))
    run(call, wire(speech.silence(4000, 8000)))
    for kind, name in transport.log:
        if kind == "mark":  # the far end played the reply to its end
            call.on_event(MarkPlayed(str(name), True))
    call.on_event(Hangup("caller"))
    states = [e.state for e in listener.events if isinstance(e, StateChanged)]
    # Each change is published once, in order.
    assert states[:4] == ["user_speaking", "thinking", "bot_speaking", "listening"]
    assert all(a != b for a, b in itertools.pairwise(states))
    latencies = [e for e in listener.events if isinstance(e, TurnLatency)]
    assert len(latencies) == 1 and latencies[0].generation == 1
    assert 200 <= latencies[0].latency_ms <= 400  # endpointing plus at most a few frames
    assert listener.events[-1] == CallEnded("caller")


def test_loopback_agent_plays_every_frame_back_without_a_barge_in() -> None:
    transport = RecordingTransport()
    call = Call("CA2", transport, AgentSection(), agent=LoopbackAgent)
    frames = wire(speech.silence(400, 8000)) + wire(speech.speech("one two three", 8000))
    frames += wire(speech.silence(1000, 8000))
    for frame in frames:
        before = len(transport.audio())
        call.on_audio(frame)
        # The frame is sent back at once, before any tick.
        assert transport.audio()[before:] == frame
        call.on_tick()
    assert transport.audio() == b"".join(frames)
    assert "clear" not in transport.kinds()
    assert call.stats.interruptions == 0 and call.stats.turns >= 1
