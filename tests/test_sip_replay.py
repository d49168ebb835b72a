"""Loss and jitter replay through the SIP media path (bench/sip_replay.py): deterministic,
no timing.  Seeded traces go as RTP datagrams into an RtpSession on a manual clock."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from bench.jitter_traces import NETWORKS, Trace, make_trace, run_voxgate
from bench.sip_replay import (
    SIP_IMPL,
    SipPlayout,
    compare_sip_on_traces,
    main,
    replay_sip,
    score_sip,
)
from engine.jitter import FrameKind

ISOLATED = ["loss_1pct", "loss_5pct", "jitter_40ms", "loss_5pct_jitter_40ms"]
"""Traces whose gaps are single packets: each must cost exactly one concealed frame."""


@cache
def replayed(name: str) -> tuple[Trace, SipPlayout]:
    trace = make_trace(name)
    return trace, replay_sip(trace)


def test_the_issue_trace_has_5pct_loss_and_40ms_jitter() -> None:
    net = NETWORKS["loss_5pct_jitter_40ms"]
    assert (net.loss, net.jitter_ms) == (0.05, 40)
    trace, _ = replayed("loss_5pct_jitter_40ms")
    assert 0.04 < len(trace.lost) / trace.n_frames < 0.07
    delays = [p.arrival_ms - p.send_ms for p in trace.packets]
    assert max(delays) - min(delays) >= 60


def test_a_replay_is_deterministic() -> None:
    trace = make_trace("loss_5pct_jitter_40ms", n_frames=400)
    first, second = replay_sip(trace), replay_sip(trace)
    assert first.playout == second.playout
    assert first.heard == second.heard
    assert first.media.packets_in == second.media.packets_in
    assert first.media.frames_in == second.media.frames_in


@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_sip_path_plays_what_the_engine_buffer_alone_plays(name: str) -> None:
    """Sockets, RTP parsing, latching, PCMU decoding and the session's clock add nothing:
    the same frame kinds and indices at the same ticks as the bare jitter buffer."""
    trace, replay = replayed(name)
    assert replay.playout.frames == run_voxgate(trace).frames
    row = score_sip(trace, replay)
    assert row["exact_frames"] == 1.0  # received audio reaches the call sample for sample


@pytest.mark.parametrize("name", ISOLATED)
def test_every_missing_packet_costs_one_concealed_frame_at_its_slot(name: str) -> None:
    trace, replay = replayed(name)
    row = score_sip(trace, replay)
    assert row["impl"] == SIP_IMPL
    assert row["frames_lost"] == 0
    assert row["stall_ms"] == 0
    assert row["concealed"] == row["missing"]
    scored = trace.scored
    concealed = [
        index
        for _, kind, index in replay.playout.frames
        if kind == FrameKind.CONCEALED and 0 <= index < scored.stop
    ]
    normal = {index for _, kind, index in replay.playout.frames if kind == FrameKind.NORMAL}
    assert len(concealed) == len(set(concealed))  # no slot concealed twice
    assert set(concealed) == {k for k in scored if k not in normal}
    assert trace.lost & set(scored) <= set(concealed)
    if row["missing"]:
        assert row["concealed_per_missing"] == 1.0


def test_the_sip_path_beats_aiortc_on_every_lossy_trace() -> None:
    rows = compare_sip_on_traces()
    by_trace: dict[str, dict[str, dict[str, object]]] = {}
    for row in rows:
        by_trace.setdefault(str(row["trace"]), {})[str(row["impl"])] = row
    assert list(by_trace) == list(NETWORKS)
    for name, pair in by_trace.items():
        sip, aiortc = pair[SIP_IMPL], pair["aiortc"]
        assert sip["lost_packets"] == aiortc["lost_packets"]  # the same packets
        if sip["lost_packets"]:
            assert int(sip["frames_lost"]) < int(aiortc["frames_lost"]), name  # type: ignore[call-overload]
            assert int(sip["stall_ms"]) < int(aiortc["stall_ms"]), name  # type: ignore[call-overload]
        assert float(sip["mean_delay_ms"]) < float(aiortc["mean_delay_ms"]), name  # type: ignore[arg-type]


def test_the_session_counters_agree_with_the_trace() -> None:
    trace, replay = replayed("loss_5pct_jitter_40ms")
    media = replay.media
    received = {p.index for p in trace.packets}
    normal = {index for _, kind, index in replay.playout.frames if kind == FrameKind.NORMAL}
    packets = media.packets_in
    assert packets["received"] == len(trace.packets) + 2  # the two warm-up packets
    assert packets["probation"] == 1 and packets["early"] == 1
    assert packets["audio"] == len(trace.packets)
    # RFC 3550 loss: sequence numbers missing below the highest received
    assert packets["lost"] == sum(1 for k in trace.lost if k < max(received))
    assert packets["late"] == len(received - normal) > 0
    for refused in ("malformed", "unknown_pt", "wrong_source", "wrong_ssrc", "duplicate"):
        assert packets[refused] == 0, refused
    frames = media.frames_in
    assert frames["played"] == sum(1 for frame in replay.heard if frame is not None)
    assert frames["concealed"] == sum(
        1 for _, kind, _ in replay.playout.frames if kind == FrameKind.CONCEALED
    )
    assert media.events["latches"] == 1
    assert media.jitter_ms is not None and media.jitter_ms > 5
    # one packet of ours per tick, every one delivered to the (latched) peer
    assert replay.packets_back == len(replay.playout.frames) == media.packets_out["sent"]
    _, clean = replayed("clean")
    assert clean.media.jitter_ms is not None and clean.media.jitter_ms < media.jitter_ms


def test_main_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "replay.json"
    assert main(["--frames", "300", "--trace", "loss_5pct", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| trace | impl | lost_packets")
    assert f"| loss_5pct | {SIP_IMPL} |" in table and "| loss_5pct | aiortc |" in table
    result = json.loads(out.read_text())
    assert result["frames_per_trace"] == 300
    assert [row["impl"] for row in result["rows"]] == [SIP_IMPL, "aiortc"]
    assert result["rows"][0]["session"]["packets_in"]["audio"] > 0
