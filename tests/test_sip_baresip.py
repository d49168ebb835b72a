"""voxgate's SIP front door against a real softphone: baresip 1.0.0 on 127.0.0.1.

baresip calls ``sip:echo@...`` with a WAV (silence, an espeak utterance,
silence) as its microphone; the echo agent plays the utterance back, and
baresip's decode dump must contain it (normalised cross-correlation against
what baresip encoded, compared at 8 kHz, the call model's rate).  Also: RFC
4733 DTMF both ways, hold and resume over TCP, and either side hanging up.

The server's log level is ``warning`` (set by ``spawn_server``), so end
reasons are read from ``/metrics`` (``voxgate_calls_total{reason=...}``)
rather than from its log; live counters come from ``GET /calls/{id}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from server.loadgen.runner import SpawnedServer, free_port, spawn_server
from tests.peers.baresip import (
    REQUIRE_ENV,
    BaresipPeer,
    Codec,
    Event,
    LoopbackCapture,
    Pcm,
    Recording,
    baresip_binary,
    parse_sip_trace,
    rtp_audio,
)
from tests.speech import speech
from tests.udpports import free_udp_range

pytestmark = pytest.mark.slow

UTTERANCE = "hello from the baresip test"
RATE_HZ = 8000
MIN_CORRELATION = 0.9
Signal = npt.NDArray[np.float64]


# ------------------------------------------------------------------ the server


@dataclass
class Server:
    """A spawned ``voxgate serve`` with SIP on ``sip_port`` and RTP from ``rtp_ports``."""

    spawned: SpawnedServer
    sip_port: int
    rtp_ports: tuple[int, int]
    log_path: Path

    @property
    def http(self) -> str:
        return self.spawned.url.replace("ws://", "http://").removesuffix("/twilio")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.http + path, timeout=5) as response:
            return json.loads(response.read())

    def calls(self) -> list[str]:
        calls: list[str] = self.get("/calls")["calls"]
        return calls

    def ended(self, reason: str) -> int:
        """How many SIP calls ended with ``reason`` so far (from ``/metrics``)."""
        with urllib.request.urlopen(self.http + "/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if (
                line.startswith("voxgate_calls_total{")
                and f'reason="{reason}"' in line
                and 'transport="sip"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def wait_no_calls(self, timeout_s: float = 5.0) -> list[str]:
        """The live calls once none is left, or as they are after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (calls := self.calls()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return calls

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def require_baresip() -> None:
    if baresip_binary() is None:
        message = "baresip is not installed (Debian package baresip-core)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)


def start_server(tmp: Path, toml: str) -> Iterator[Server]:
    require_baresip()
    rtp_ports = free_udp_range(64)
    config = tmp / "voxgate.toml"
    config.write_text(f'{toml}\n[sip]\nrtp_ports = "{rtp_ports[0]}-{rtp_ports[1]}"\n')
    sip_port = free_port()
    log_path = tmp / "server.log"
    spawned = spawn_server(0, 200, log_path, config, sip_port=sip_port)
    try:
        yield Server(spawned, sip_port, rtp_ports, log_path)
    finally:
        spawned.stop()


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(tmp_path_factory.mktemp("sip-echo"), '[agent]\nname = "echo"')


@pytest.fixture(scope="module")
def short_call_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The echo agent, but the call model hangs up after 3 s."""
    yield from start_server(
        tmp_path_factory.mktemp("sip-short"), '[agent]\nname = "echo"\nmax_call_s = 3'
    )


# -------------------------------------------------------------------- signals


def utterance() -> Pcm:
    return speech(UTTERANCE, RATE_HZ)


def with_silence(lead_s: float, pcm: Pcm, tail_s: float) -> Pcm:
    lead = np.zeros(round(lead_s * RATE_HZ), dtype=np.int16)
    tail = np.zeros(round(tail_s * RATE_HZ), dtype=np.int16)
    return np.concatenate([lead, pcm, tail])


def at_8k(recording: Recording) -> Signal:
    """The recording as float samples at 8 kHz (band-limited by soxr when resampled)."""
    x = recording.pcm.astype(np.float64)
    if recording.rate_hz == RATE_HZ:
        return x
    return np.asarray(soxr.resample(x, recording.rate_hz, RATE_HZ), dtype=np.float64)


def active_span(x: Signal, threshold_dbfs: float = -40.0) -> tuple[int, int]:
    """(first, end) sample of the 20 ms frames louder than ``threshold_dbfs``."""
    frame = RATE_HZ // 50
    n = len(x) // frame
    power = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1) / 32768.0**2
    loud = np.flatnonzero(10 * np.log10(power + 1e-12) > threshold_dbfs)
    assert len(loud), "no sound above the threshold"
    return int(loud[0]) * frame, (int(loud[-1]) + 1) * frame


def best_match(reference: Signal, signal: Signal) -> tuple[float, int]:
    """(max normalised cross-correlation of ``reference`` within ``signal``, its offset).

    Each lag's correlation is normalised by the energies of ``reference`` and
    of the window of ``signal`` it covers, so 1.0 means an exact scaled copy.
    """
    n, m = len(reference), len(signal)
    assert 0 < n <= m, f"signal of {m} samples is shorter than the reference ({n})"
    size = 1 << (n + m).bit_length()
    spectrum = np.fft.rfft(signal, size) * np.conj(np.fft.rfft(reference, size))
    numerator = np.fft.irfft(spectrum, size)[: m - n + 1]
    energy = np.concatenate([[0.0], np.cumsum(signal**2)])
    window = energy[n:] - energy[:-n]
    r = numerator / np.sqrt(np.maximum(window, 1e-9) * float(np.sum(reference**2)))
    lag = int(np.argmax(r))
    return float(r[lag]), lag


# --------------------------------------------------------------------- calls


def connect(peer: BaresipPeer, server: Server) -> Event:
    """Dial the server's echo user and wait for the call to be up (≤ 10 s)."""
    peer.dial_server(server.sip_port)
    event = peer.wait_event(["CALL_ESTABLISHED", "CALL_CLOSED"], 10)
    assert event is not None and event.type == "CALL_ESTABLISHED", (
        f"no CALL_ESTABLISHED: {[(e.type, e.param) for e in peer.events]}\n{server.log_tail()}"
    )
    return event


def live_call_id(peer: BaresipPeer, server: Server, timeout_s: float = 3.0) -> str:
    """The server's id of the one live call (polled while baresip's events keep flowing)."""
    deadline = time.monotonic() + timeout_s
    while not (calls := server.calls()) and time.monotonic() < deadline:
        peer.pump(0.05)
    assert len(calls) == 1, f"expected one live call, got {calls}"
    return calls[0]


def wait_closed(peer: BaresipPeer, timeout_s: float) -> Event:
    event = peer.first("CALL_CLOSED") or peer.wait_event(["CALL_CLOSED"], timeout_s)
    assert event is not None, f"no CALL_CLOSED: {[(e.type, e.param) for e in peer.events]}"
    return event


# ------------------------------------------------------------ 1. echo per codec


@pytest.mark.parametrize("codec", ["pcmu", "pcma", "g722", "opus"])
def test_echo_returns_the_utterance(echo_server: Server, codec: Codec, tmp_path: Path) -> None:
    """baresip speaks, the echo agent answers with the utterance; baresip hangs up at EOF."""
    byes_before = echo_server.ended("remote_bye")
    audio = with_silence(1.0, utterance(), 2.5)
    with BaresipPeer(tmp_path, audio, codec=codec) as peer:
        connect(peer, echo_server)
        closed = wait_closed(peer, len(audio) / RATE_HZ + 5)
        assert closed.param == "end of file"  # baresip ran out of WAV and sent BYE
    trace = parse_sip_trace(peer.log())
    byes = [m for m in trace if m.method == "BYE" and not m.is_response]
    assert byes and byes[0].source.endswith(f":{peer.sip_port}")
    assert [m.status for m in trace if m.method == "BYE" and m.is_response] == [200]

    sent, heard = at_8k(peer.recording("enc")), at_8k(peer.recording("dec"))
    first, end = active_span(sent)
    r, lag = best_match(sent[first:end], heard)
    assert r >= MIN_CORRELATION, f"{codec}: echo correlates only {r:.3f}"
    assert lag >= end, f"{codec}: the echo at {lag} starts before the utterance ended ({end})"
    assert echo_server.wait_no_calls() == []
    assert echo_server.ended("remote_bye") == byes_before + 1


# ---------------------------------------------------------------------- 2. DTMF


@dataclass
class DtmfResult:
    peer: BaresipPeer
    server_dtmf: int


@pytest.fixture(scope="module")
def dtmf_call(echo_server: Server, tmp_path_factory: pytest.TempPathFactory) -> DtmfResult:
    """One call: baresip sends ``159#`` over RFC 4733; the server's count is read live."""
    audio = with_silence(4.0, np.zeros(0, dtype=np.int16), 0.0)
    with BaresipPeer(tmp_path_factory.mktemp("dtmf"), audio) as peer:
        connect(peer, echo_server)
        call_id = live_call_id(peer, echo_server)
        peer.pump(0.5)
        peer.send_digits("159#")
        dtmf = 0
        deadline = time.monotonic() + 3
        while dtmf < 4 and time.monotonic() < deadline:
            peer.pump(0.1)
            dtmf = echo_server.get(f"/calls/{call_id}")["stats"]["dtmf"]
        peer.pump(0.5)  # the last echoed digit's events
        wait_closed(peer, 10)
    assert echo_server.wait_no_calls() == []
    return DtmfResult(peer, dtmf)


def test_dtmf_from_baresip_reaches_the_call(dtmf_call: DtmfResult) -> None:
    assert dtmf_call.server_dtmf == 4


def test_dtmf_echoed_back_to_baresip(dtmf_call: DtmfResult) -> None:
    """The echo agent sends every received digit back as RFC 4733 events."""
    assert dtmf_call.peer.digits_received() == "159#"


# ------------------------------------------------------------ 3. hold over TCP


@dataclass
class HoldResult:
    peer: BaresipPeer
    stats_at_resume: dict[str, int]
    stats_last: dict[str, int]
    reference: Signal
    """The utterance as baresip sent it (8 kHz)."""
    after_resume: Pcm | None
    """RTP audio the server sent to baresip after the resume (``None``: no capture)."""


@pytest.fixture(scope="module")
def hold_call(echo_server: Server, tmp_path_factory: pytest.TempPathFactory) -> HoldResult:
    """TCP call: hold at 0.5 s, resume at 1.5 s, then the utterance from 2.5 s."""
    audio = with_silence(2.5, utterance(), 2.5)
    capture = LoopbackCapture(echo_server.rtp_ports) if LoopbackCapture.available() else None
    with contextlib.ExitStack() as stack:
        peer = stack.enter_context(
            BaresipPeer(tmp_path_factory.mktemp("hold"), audio, transport="tcp")
        )
        if capture is not None:
            stack.enter_context(capture)
        connect(peer, echo_server)
        call_id = live_call_id(peer, echo_server)
        peer.pump(0.5)
        peer.hold()
        peer.pump(1.0)
        peer.resume()
        resumed_at = time.monotonic()
        peer.pump(0.2)
        stats_at_resume = echo_server.get(f"/calls/{call_id}")["stats"]
        stats_last = stats_at_resume
        while peer.first("CALL_CLOSED") is None and time.monotonic() < resumed_at + 10:
            peer.pump(0.1)
            try:
                stats_last = echo_server.get(f"/calls/{call_id}")["stats"]
            except urllib.error.HTTPError:  # the call just ended
                break
        wait_closed(peer, 10)
    after_resume = None
    if capture is not None:
        to_peer = [
            d
            for d in capture.datagrams
            if d.at_s > resumed_at and peer.rtp_ports[0] <= d.destination[1] <= peer.rtp_ports[1]
        ]
        after_resume = rtp_audio(to_peer, payload_type=0)
    sent = at_8k(peer.recording("enc"))
    first, end = active_span(sent)
    assert echo_server.wait_no_calls() == []
    return HoldResult(peer, stats_at_resume, stats_last, sent[first:end], after_resume)


def test_hold_and_resume_answered(hold_call: HoldResult) -> None:
    """Both re-INVITEs get 200 with the mirrored direction (no 488/491)."""
    trace = parse_sip_trace(hold_call.peer.log())
    invites = [m for m in trace if m.method == "INVITE" and not m.is_response]
    assert len(invites) == 3, [m.first_line for m in invites]
    finals = {m.cseq: m for m in trace if m.method == "INVITE" and m.status and m.status >= 200}
    for invite, offered, answered in zip(
        invites[1:], ("sendonly", "sendrecv"), ("recvonly", "sendrecv"), strict=True
    ):
        assert f"a={offered}" in invite.body
        response = finals[invite.cseq]
        assert response.status == 200, response.first_line
        assert f"a={answered}" in response.body


def test_echo_continues_after_resume(hold_call: HoldResult) -> None:
    """After resume the server hears the utterance and plays it back to baresip."""
    at_resume, last = hold_call.stats_at_resume, hold_call.stats_last
    assert last["turns"] == at_resume["turns"] + 1
    reply_frames = len(hold_call.reference) // 160
    assert last["frames_out"] - at_resume["frames_out"] >= reply_frames
    if hold_call.after_resume is None:
        return  # no CAP_NET_RAW: the wire check needs a packet socket on lo
    heard = hold_call.after_resume.astype(np.float64)
    r, _ = best_match(hold_call.reference, heard)
    assert r >= MIN_CORRELATION, f"echo on the wire after resume correlates only {r:.3f}"


def test_tcp_call_stays_on_tcp(hold_call: HoldResult) -> None:
    trace = parse_sip_trace(hold_call.peer.log())
    assert trace
    assert {m.transport for m in trace} == {"TCP"}, [
        (m.transport, m.first_line) for m in trace if m.transport != "TCP"
    ]


# ------------------------------------------------------------------ 4./5. hangups


def test_voxgate_hangs_up_first(short_call_server: Server, tmp_path: Path) -> None:
    """``max_call_s = 3``: the server sends BYE long before baresip's WAV ends."""
    audio = with_silence(1.0, utterance(), 6.0)
    with BaresipPeer(tmp_path, audio) as peer:
        established = connect(peer, short_call_server)
        closed = wait_closed(peer, 10)
    assert closed.param == "Connection reset by peer"  # baresip's words for a BYE received
    assert closed.at_s - established.at_s < len(audio) / RATE_HZ - 2
    trace = parse_sip_trace(peer.log())
    bye = next(m for m in trace if m.method == "BYE" and not m.is_response)
    assert bye.source.endswith(f":{short_call_server.sip_port}"), bye
    assert [m.status for m in trace if m.method == "BYE" and m.is_response] == [200]
    assert short_call_server.wait_no_calls() == []
    assert short_call_server.ended("remote_bye") == 0
    assert short_call_server.ended("local") + short_call_server.ended("max_call") == 1


def test_baresip_hangs_up_mid_call(echo_server: Server, tmp_path: Path) -> None:
    """baresip hangs up 1 s into the call: the server ends it and frees it."""
    byes_before = echo_server.ended("remote_bye")
    audio = with_silence(1.0, utterance(), 4.0)
    with BaresipPeer(tmp_path, audio) as peer:
        established = connect(peer, echo_server)
        live_call_id(peer, echo_server)
        peer.pump(1.0)
        peer.hangup()
        closed = wait_closed(peer, 5)
    assert closed.at_s - established.at_s < 3
    assert echo_server.wait_no_calls() == []
    assert echo_server.ended("remote_bye") == byes_before + 1
    trace = parse_sip_trace(peer.log())
    assert [m.status for m in trace if m.method == "BYE" and m.is_response] == [200]


def test_trace_parser_reads_a_message() -> None:
    """The trace splitter on a fixed sample of baresip's ``-s`` output."""
    log = (
        "call: connecting\n\x1b[36;1m#\nTCP 127.0.0.1:5 -> 127.0.0.1:6\n"
        "SIP/2.0 200 OK\r\nCSeq: 7 INVITE\r\nContent-Length: 4\r\n\r\nv=0\n\x1b[;m\n"
    )
    (message,) = parse_sip_trace(log)
    assert message.transport == "TCP" and message.source == "127.0.0.1:5"
    assert (message.status, message.method, message.cseq) == (200, "INVITE", 7)
    assert message.body == "v=0\n" and message.header("content-length") == "4"
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", message.destination)


# ------------------------------------------------------- 6. the pipeline agent over SIP


@pytest.fixture(scope="module")
def pipeline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The offline pipeline agent (local STT, rules LLM, espeak TTS), as ``voxgate serve``."""
    yield from start_server(tmp_path_factory.mktemp("sip-pipeline"), '[agent]\nname = "pipeline"')


def test_the_pipeline_agent_holds_a_conversation_over_sip(
    pipeline_server: Server, tmp_path: Path
) -> None:
    """baresip asks a question after the greeting: the call's turns show the greeting and
    an answered user turn with what was heard, and the replies reach baresip's ears."""
    audio = with_silence(6.0, speech("what can you do", RATE_HZ), 6.0)
    summary: dict[str, Any] = {}
    with BaresipPeer(tmp_path, audio) as peer:
        connect(peer, pipeline_server)
        call_id = live_call_id(peer, pipeline_server)
        deadline = time.monotonic() + len(audio) / RATE_HZ + 5
        while peer.first("CALL_CLOSED") is None and time.monotonic() < deadline:
            peer.pump(0.2)
            try:
                summary = pipeline_server.get(f"/calls/{call_id}")
            except urllib.error.HTTPError:  # the call just ended
                break
        wait_closed(peer, 10)
    assert summary.get("agent") == "pipeline", summary
    outcomes = [(t["kind"], t["outcome"]) for t in summary["turns"]]
    assert ("greeting", "answered") in outcomes, outcomes
    assert ("user", "answered") in outcomes, outcomes
    roles = [m["role"] for m in summary["history"]]
    assert "user" in roles and "assistant" in roles, summary["history"]
    user_said = " ".join(m["content"] for m in summary["history"] if m["role"] == "user")
    # The offline recogniser is rough on 8 kHz espeak: some of the words will do.
    assert {"what", "can", "you", "do"} & set(user_said.lower().split()), user_said
    assert summary["media"]["packets_in"]["received"] > 0  # SIP media stats, live
    # What baresip heard: the agent's voice (greeting and answer), more than a second of it.
    heard = at_8k(peer.recording("dec"))
    frame = RATE_HZ // 50
    n = len(heard) // frame
    power_db = 10 * np.log10(
        (heard[: n * frame].reshape(n, frame) ** 2).mean(axis=1) / 32768.0**2 + 1e-12
    )
    assert int((power_db > -40).sum()) * 20 >= 1000, "baresip heard less than 1 s of the agent"
    assert pipeline_server.wait_no_calls() == []
