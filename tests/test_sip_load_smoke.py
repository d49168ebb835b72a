"""SIP load smoke test: 20 simulated SIP callers for 11 s against a real ``voxgate serve``.

Asserts that every call was set up, echoed and hung up, and that the report's
counts add up; the latency figures themselves are measurements, not asserted.
Also the load generator's pure parts: metrics on the wire, port pairs, the SLO.
"""

from __future__ import annotations

import json
import math

import msgspec
import pytest

from server.loadgen import runner, sipload
from server.loadgen.sipcall import FRAME_BYTES, RtpPorts, SipMetrics, SipMetricsWire, Utterance

CALLS = 20


@pytest.mark.slow
def test_twenty_sip_calls_answered_echoed_and_hung_up() -> None:
    server = sipload.spawn_sip_server(core=0)
    try:
        plan = sipload.SipLoadPlan(
            server=server.sip,
            calls=CALLS,
            duration_s=11.0,
            ramp_s=1.0,
            server_pid=server.pid,
            http_url=server.http_url,
            generator_cpus=runner.other_cpus(0),
        )
        summary = sipload.run_sip_load(plan)
    finally:
        assert server.stop() == 0  # drained and exited cleanly on SIGTERM
    assert summary["errors"] == {}
    assert summary["calls_started"] == summary["calls_answered"] == CALLS
    assert summary["calls_completed"] == CALLS
    assert summary["setup_ms"]["n"] == CALLS
    # Every call said its first utterance and heard it back, about as long as said.
    echo = summary["echo"]
    assert echo["replies"] >= CALLS
    assert echo["utterances"] == echo["replies"] + echo["cut_off_by_hangup"]
    assert echo["exact"] + echo["inexact"] == echo["replies"]
    assert echo["length_ratio"]["n"] == echo["replies"]
    assert 0.9 <= echo["length_ratio"]["p50"] <= 1.1
    # Every server audio packet was measured; the server streamed the whole call.
    packets = summary["packets"]
    assert summary["outbound_lateness_ms"]["n"] == packets["received"]
    assert packets["received"] >= CALLS * 8 * 50  # 8 s of the 11 at 50 packets/s
    assert packets["sent"] >= CALLS * 8 * 50
    assert packets["malformed"] == packets["unknown_pt"] == packets["wrong_ssrc"] == 0
    assert summary["generator"]["kernel_timestamps"] > 0.99
    # The server saw the same calls end the same way.
    metrics = summary["server_metrics"]
    assert metrics["sip_calls_ended"] == {"remote_bye": CALLS}
    assert metrics["active_calls_at_end"] == 0
    assert metrics["clock_lateness"]["ticks"] > 0
    assert summary["server"]["rss_peak_mb"] >= summary["server"]["rss_baseline_mb"] > 0
    assert set(summary["slo"]["checks"]) == {
        "calls_answered",
        "outbound_lateness_p99_ms",
        "lost_packets",
        "inexact_replies",
        "errors",
        "server_cpu",
    }
    json.dumps(summary)  # the --json output
    assert sipload.step_line(summary).startswith(f"{CALLS:5d} calls")


def test_metrics_survive_the_wire_and_merge() -> None:
    m = SipMetrics()
    m.setup_ms.extend([1.5, 2.5])
    m.lateness_ms.append(0.25)
    m.packets_received = 7
    m.error("invite_503")
    back = msgspec_roundtrip(m)
    assert list(back.setup_ms) == [1.5, 2.5]
    assert list(back.lateness_ms) == [0.25]
    assert back.packets_received == 7
    assert back.errors == {"invite_503": 1}
    back.merge(m)
    assert list(back.setup_ms) == [1.5, 2.5, 1.5, 2.5]
    assert back.packets_received == 14
    assert back.errors == {"invite_503": 2}


def msgspec_roundtrip(m: SipMetrics) -> SipMetrics:
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(SipMetricsWire.of(m)), type=SipMetricsWire)
    return wire.metrics()


def test_utterance_frames_and_the_echo_it_expects() -> None:
    ulaw = b"\xff" * 200 + bytes(range(0x10, 0x7F)) + b"\x7f\x7f\x20" + b"\xff" * 10
    utterance = Utterance.from_ulaw(ulaw)
    assert all(len(frame) == FRAME_BYTES for frame in utterance.frames)
    assert b"".join(utterance.frames).startswith(ulaw)
    assert len(utterance.frames) == math.ceil(len(ulaw) / FRAME_BYTES)
    # The server re-encodes mu-law 0x7F (a zero) as 0xFF; silence is trimmed.
    assert utterance.expected == bytes(range(0x10, 0x7F)) + b"\xff\xff\x20"
    with pytest.raises(ValueError, match="silence"):
        Utterance.from_ulaw(b"\xff\x7f" * 400)


def test_rtp_port_pairs_are_even_odd_and_skip_taken_ports() -> None:
    ports = RtpPorts("127.0.0.1", 47001, 47011)  # pairs from 47002
    rtp, rtcp = ports.open_pair()
    try:
        first = rtp.getsockname()[1]
        assert first % 2 == 0
        assert rtcp.getsockname()[1] == first + 1
        rtp2, rtcp2 = ports.open_pair()
        assert rtp2.getsockname()[1] == first + 2
        rtp2.close()
        rtcp2.close()
    finally:
        rtp.close()
        rtcp.close()
    with pytest.raises(ValueError):
        RtpPorts("127.0.0.1", 100, 200)


def test_slo_fails_on_each_criterion() -> None:
    def summary(**changes: object) -> dict[str, object]:
        base: dict[str, object] = {
            "calls": 10,
            "calls_answered": 10,
            "outbound_lateness_ms": {"p99": 5.0},
            "packets": {"lost": 0},
            "echo": {"inexact": 0},
            "errors": {},
            "server": {"cpu_fraction_at_full_load": 0.5},
            "generator": {"valid": True},
        }
        base.update(changes)
        return base

    slo = sipload.SipSlo()
    ok = sipload.check_slo(summary(), slo)
    assert ok["passed"] and ok["passed_without_echo"] and ok["valid"]
    for changes in (
        {"calls_answered": 9},
        {"outbound_lateness_ms": {"p99": 20.5}},
        {"packets": {"lost": 1}},
        {"errors": {"invite_503": 1}},
        {"server": {"cpu_fraction_at_full_load": 0.9}},
    ):
        verdict = sipload.check_slo(summary(**changes), slo)
        assert not verdict["passed"] and not verdict["passed_without_echo"], changes
    echo_only = sipload.check_slo(summary(echo={"inexact": 2}), slo)
    assert not echo_only["passed"] and echo_only["passed_without_echo"]


def test_clock_lateness_histogram_summary() -> None:
    buckets = [(0.001, 90.0), (0.005, 99.0), (0.02, 99.5), (0.1, 100.0), (math.inf, 100.0)]
    assert sipload._histogram_summary(buckets) == {
        "ticks": 100,
        "p50_at_most_ms": 1.0,
        "p99_at_most_ms": 5.0,
        "p999_at_most_ms": 100.0,
        "over_20_ms": 0,
    }
    assert sipload._histogram_summary([]) == {"ticks": 0}
