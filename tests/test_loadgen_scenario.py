"""The load generator's simulated caller, tick by tick with scripted server messages."""

from __future__ import annotations

import base64
import json

import pytest

from server.loadgen.scenario import (
    FRAME_BYTES,
    FRAME_S,
    Caller,
    CallMetrics,
    Clips,
    Phase,
    Player,
    Timing,
)
from server.transport import CallStarted
from server.transports import twilio

SID = "CA" + "7" * 32
A = bytes(range(256)) * 5  # 1280 bytes: 8 frames
B = bytes(reversed(range(256))) * 5


def make_caller(duration_s: float = 60.0, **timing: int) -> Caller:
    clips = Clips.from_ulaw(A, B)
    return Caller(SID, clips, Timing(**timing), start_s=0.0, duration_s=duration_s)


def media(caller: Caller) -> str:
    return twilio.encode_media(caller.stream_sid, b"\x7f" * FRAME_BYTES)


def run_until(caller: Caller, t: float, until: float, sent: list[str]) -> float:
    while t < until - 1e-9:
        sent.extend(caller.tick(t))
        t += FRAME_S
    return t


def test_opening_and_media_are_valid_twilio_messages() -> None:
    caller = make_caller()
    stream = twilio.TwilioStream()
    events = [stream.receive(m) for m in caller.opening()]
    assert events[0] is None  # connected
    assert isinstance(events[1], CallStarted)
    assert events[1].call_id == SID
    frames = caller.tick(0.0) + caller.tick(0.02)
    for text in frames:
        message = twilio.decode(text)
        assert isinstance(message, twilio.MediaMessage)
        assert len(message.media.payload) == FRAME_BYTES
    chunks = [json.loads(t)["media"]["chunk"] for t in frames]
    seqs = [json.loads(t)["sequenceNumber"] for t in frames]
    assert chunks == ["1", "2"]  # strings, as Twilio sends them
    assert seqs == ["2", "3"]  # start was "1"


def test_utterance_follows_the_lead_in_then_silence() -> None:
    caller = make_caller(lead_ms=100)
    payloads = []
    t = 0.0
    for _ in range(15):
        (text,) = caller.tick(t)
        payloads.append(base64.b64decode(json.loads(text)["media"]["payload"]))
        t += FRAME_S
    silence = b"\xff" * FRAME_BYTES
    assert payloads[:5] == [silence] * 5
    assert b"".join(payloads[5:13]) == A
    assert payloads[13:] == [silence] * 2
    assert caller.phase is Phase.WAIT_A


def test_turn_latency_barge_in_and_marks() -> None:
    caller = make_caller(lead_ms=100, barge_after_ms=100)
    sent: list[str] = []
    t = run_until(caller, 0.0, 0.26, sent)  # lead-in and all of A (last frame at 0.24)
    assert caller.phase is Phase.WAIT_A
    # The reply starts 210 ms after the last frame of A went out.
    t = run_until(caller, t, 0.45, sent)
    for i in range(6):
        caller.on_message(media(caller), 0.45 + i * FRAME_S)
        t = run_until(caller, t, 0.45 + (i + 1) * FRAME_S, sent)
    assert caller.metrics.turn_ms[0] == pytest.approx(210, abs=0.01)
    assert caller.phase is Phase.SPEAK_B  # barged in 100 ms into the reply
    barge_start = t - FRAME_S
    # Two more reply frames, then the server pauses and later clears.
    caller.on_message(media(caller), t)
    caller.on_message(twilio.encode_mark(caller.stream_sid, "m1"), t)
    replies = caller.on_message(twilio.encode_clear(caller.stream_sid), t + 0.3)
    # The pending mark comes back at once on clear.
    assert [json.loads(r)["mark"]["name"] for r in replies] == ["m1"]
    assert caller.metrics.clear_ms[0] == pytest.approx((t + 0.3 - barge_start) * 1000)
    assert caller.metrics.yield_ms[0] == pytest.approx((t - barge_start) * 1000)
    assert caller.metrics.errors == {}


def test_reply_end_mark_is_answered_after_playout_then_rest() -> None:
    caller = make_caller(lead_ms=100, barge_after_ms=10_000)
    sent: list[str] = []
    t = run_until(caller, 0.0, 0.26, sent)
    # A whole reply of 5 frames arrives at once, then its mark.
    for _ in range(5):
        caller.on_message(media(caller), t)
    caller.on_message(twilio.encode_mark(caller.stream_sid, "end-1"), t)
    sent.clear()
    t2 = run_until(caller, t, t + 0.08, sent)
    assert not any('"mark"' in m for m in sent)  # 100 ms of audio still playing
    run_until(caller, t2, t + 0.14, sent)
    marks = [json.loads(m)["mark"]["name"] for m in sent if '"event":"mark"' in m]
    assert marks == ["end-1"]


def test_no_reply_is_an_error_and_the_caller_moves_on() -> None:
    caller = make_caller(lead_ms=100, reply_timeout_ms=500, rest_ms=200)
    sent: list[str] = []
    run_until(caller, 0.0, 1.0, sent)
    assert caller.metrics.errors == {"no_reply": 1}
    assert caller.phase in (Phase.REST, Phase.SPEAK_A)


def test_stop_ends_the_call_mid_utterance() -> None:
    caller = make_caller(duration_s=0.2, lead_ms=100)
    sent: list[str] = []
    run_until(caller, 0.0, 0.3, sent)
    assert caller.phase is Phase.STOPPED
    assert json.loads(sent[-1])["event"] == "stop"
    assert caller.tick(0.4) == []


def test_bad_and_foreign_server_messages_are_counted() -> None:
    caller = make_caller()
    assert caller.on_message("{nope", 0.0) == []
    other = twilio.encode_clear("MZ" + "9" * 32)
    assert caller.on_message(other, 0.0) == []
    assert caller.metrics.errors == {"bad_message": 1, "wrong_stream_sid": 1}


def test_player_counts_late_frames_and_underruns() -> None:
    metrics = CallMetrics()
    player = Player(metrics)
    # Two frames at once (a one-frame lead), then one per 20 ms, then one 30 ms late.
    arrivals = [0.0, 0.0, 0.02, 0.04, 0.06, 0.11, 0.12]
    for t in arrivals:
        player.on_frame(t, measure=True)
    assert metrics.frames_received == 7
    # Lateness against the best cadence: the 6th frame is 30 ms late.
    assert [round(x, 6) for x in metrics.lateness_ms] == [0, 0, 0, 0, 30, 20]
    # The buffer held 40 ms at 0.06 s; the frame at 0.11 came after it ran dry.
    assert metrics.underruns == 1
    assert player.play_end == pytest.approx(0.15)


def test_merge_adds_samples_and_counts() -> None:
    a, b = CallMetrics(), CallMetrics()
    a.turn_ms.append(1.0)
    b.turn_ms.append(2.0)
    b.underruns = 3
    b.error("x")
    a.merge(b)
    assert list(a.turn_ms) == [1.0, 2.0]
    assert a.underruns == 3
    assert a.errors == {"x": 1}
