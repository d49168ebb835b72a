"""Load smoke test: 20 simulated Twilio calls for 12 s against a real ``voxgate serve``.

Asserts what every call did (turns, barge-ins, marks, clean stops) and that the
report is complete; the latency figures themselves are benchmarks, not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.loadgen import runner
from server.loadgen.plot import plot_summary

CALLS = 20


@pytest.mark.slow
def test_twenty_calls_echo_barge_in_and_stop(tmp_path: Path) -> None:
    server = runner.spawn_server(core=0, endpointing_ms=200)
    try:
        plan = runner.LoadPlan(
            url=server.url,
            calls=CALLS,
            duration_s=12.0,
            ramp_s=1.0,
            server_pid=server.pid,
            generator_cpus=runner.other_cpus(0),
        )
        summary = runner.run_load(plan)
    finally:
        assert server.stop() == 0  # drained and exited cleanly on SIGTERM
    assert summary["errors"] == {}
    assert summary["calls_connected"] == CALLS
    assert summary["calls_completed"] == CALLS
    # Every call spoke, heard its echo, barged in and got a clear.
    assert summary["turns"] >= CALLS
    assert summary["barge_ins"] >= CALLS
    assert summary["barge_in_clear_ms"]["n"] == summary["barge_ins"]
    # The server waits the endpointing silence before it answers, never less.
    assert summary["turn_latency_ms"]["p50"] >= 200
    # The reply stops before the barge-in is confirmed (pause, then clear).
    assert summary["barge_in_yield_ms"]["p50"] < summary["barge_in_clear_ms"]["p50"]
    server_stats = summary["server"]
    assert server_stats["rss_peak_mb"] >= server_stats["rss_baseline_mb"] > 0
    assert server_stats["cpu_s"] > 0
    assert set(summary["slo"]["checks"]) == {
        "outbound_lateness_p99_ms",
        "underruns",
        "turn_latency_p95_ms",
        "errors",
    }
    json.dumps(summary)  # the --json output
    png = tmp_path / "load.png"
    plot_summary(summary, png)
    assert png.read_bytes().startswith(b"\x89PNG")
