"""PNG plots of load-test results: latency CDFs and server CPU against live calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Latency CDFs of one run, and its server CPU (fraction of a core) against live calls.

    A capacity search (a summary with ``steps``) plots CPU and latency per step instead.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # matplotlib is in the dev extra
        raise RuntimeError("--plot needs matplotlib: pip install 'voxgate[dev]'") from exc

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    if "steps" in summary:
        _capacity_axes(summary, left, right)
    else:
        _run_axes(summary, left, right)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cdf(ax: Any, values: list[float], label: str) -> None:
    if not values:
        return
    n = len(values)
    ax.plot(values, [(i + 1) / n for i in range(n)], label=f"{label} (n={n})")


def _run_axes(summary: dict[str, Any], left: Any, right: Any) -> None:
    samples = summary.get("samples", {})
    for key, label in (
        ("turn_latency_ms", "turn: end of speech → reply"),
        ("barge_in_yield_ms", "barge-in: speech → reply stops"),
        ("barge_in_clear_ms", "barge-in: speech → clear"),
        ("outbound_lateness_ms", "outbound frame lateness"),
    ):
        _cdf(left, samples.get(key, []), label)
    left.axvline(summary["endpointing_ms"] + 30, color="grey", ls=":", lw=1)
    left.set_xscale("symlog", linthresh=10)
    left.set_xlabel("ms")
    left.set_ylabel("fraction of samples")
    left.set_title(f"{summary['calls']} calls × {summary['duration_s']:g} s")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    curve = summary.get("server", {}).get("cpu_curve", [])
    if curve:
        right.scatter([c["calls"] for c in curve], [100 * c["cpu_fraction"] for c in curve], s=8)
    right.set_xlabel("live calls")
    right.set_ylabel("server CPU (% of one core)")
    right.set_title("server CPU while calls ramp up and down")
    right.grid(True, alpha=0.3)


def _capacity_axes(summary: dict[str, Any], left: Any, right: Any) -> None:
    steps = summary["steps"]
    calls = [s["calls"] for s in steps]
    for key, label in (
        ("turn_latency_ms", "turn latency p95"),
        ("outbound_lateness_ms", "outbound lateness p99"),
        ("barge_in_yield_ms", "barge-in yield p95"),
    ):
        pct = "p99" if "lateness" in key else "p95"
        left.plot(calls, [s[key][pct] for s in steps], marker="o", label=label)
    left.set_xlabel("concurrent calls")
    left.set_ylabel("ms")
    left.set_title(f"capacity: {summary['calls_per_core']} calls on one core")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    cpu = [100 * (s.get("server", {}).get("cpu_fraction_at_full_load") or 0) for s in steps]
    right.plot(calls, cpu, marker="o")
    right.set_xlabel("concurrent calls")
    right.set_ylabel("server CPU at full load (% of one core)")
    right.grid(True, alpha=0.3)
