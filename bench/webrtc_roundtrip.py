"""Browser -> voxgate -> browser media round trip over WebRTC on loopback.

``python -m bench.webrtc_roundtrip [--bursts N] [--json PATH]``

For each receive-buffer setting (aiortc's own, which holds 4 packets, and
voxgate's pass-through), a ``voxgate serve`` with the loopback agent (every
caller frame played straight back) runs pinned to core 0, and headless
Chromium (core 1) opens the demo page and calls ``voxgate.measureRoundTrip``:
tone bursts replace the microphone, and each burst's onset at a local
AnalyserNode is timed to the echo's onset at the remote one.  Also reported,
from the page's ``getStats()``: Chromium's own receive buffer (mean
jitter-buffer delay) and its concealment (samples it had to invent because
audio arrived late or not at all: "breaking up").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from server.loadgen.runner import spawn_server
from tests.browser import fakemic
from tests.browser.chromium import Browser, find_chromium

VARIANTS: dict[str, dict[str, int]] = {
    "aiortc buffer (prefetch 4)": {"receive_prefetch_frames": 4, "send_packet_ms": 20},
    "pass-through, 20 ms packets out": {"receive_prefetch_frames": 0, "send_packet_ms": 20},
    "pass-through, 10 ms packets out": {"receive_prefetch_frames": 0, "send_packet_ms": 10},
}
"""Server ``[webrtc]`` settings compared, by name."""
RAW_AUDIO = "{echoCancellation: false, noiseSuppression: false, autoGainControl: false}"
STATS_JS = """voxgate.pc.getStats().then((report) => {
    const out = {};
    report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') Object.assign(out, {
            jitter_buffer_ms: 1000 * s.jitterBufferDelay / Math.max(1, s.jitterBufferEmittedCount),
            jitter_buffer_target_ms:
                1000 * s.jitterBufferTargetDelay / Math.max(1, s.jitterBufferEmittedCount),
            jitter_buffer_minimum_ms:
                1000 * s.jitterBufferMinimumDelay / Math.max(1, s.jitterBufferEmittedCount),
            arrival_jitter_ms: 1000 * s.jitter,
            concealed_samples: s.concealedSamples, concealment_events: s.concealmentEvents,
            samples_received: s.totalSamplesReceived, packets_lost: s.packetsLost});
    });
    return out;
})"""


TONE_WAV_BURST_MS = 200
TONE_WAV_PERIOD_MS = 900
TIMINGS = ("oscillator", "sent track", "microphone")
"""How a round trip is timed (see the module docstring)."""


def tone_bursts_wav(path: Path, seconds: int = 30) -> Path:
    """A 48 kHz WAV of 1 kHz bursts (200 ms on, 700 ms off) for the fake microphone."""
    rate = fakemic.RATE_HZ
    t = np.arange(rate * TONE_WAV_BURST_MS // 1000) / rate
    burst = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    period = np.zeros(rate * TONE_WAV_PERIOD_MS // 1000, dtype=np.int16)
    period[: len(burst)] = burst
    return fakemic.write_wav(path, np.tile(period, seconds * 1000 // TONE_WAV_PERIOD_MS), rate)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank below) of ``values``; None when empty."""
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else None


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Chromium's receive-side figures over one measurement."""
    return {
        "jitter_buffer_ms": round(after.get("jitter_buffer_ms", 0.0), 1),
        "jitter_buffer_target_ms": round(after.get("jitter_buffer_target_ms", 0.0), 1),
        "arrival_jitter_ms": round(after.get("arrival_jitter_ms", 0.0), 1),
        "concealment_events": after.get("concealment_events", 0)
        - before.get("concealment_events", 0),
        "concealed_ms": round(
            (after.get("concealed_samples", 0) - before.get("concealed_samples", 0)) / 48, 1
        ),
    }


async def measure(settings: dict[str, int], bursts: int, workdir: Path) -> dict[str, Any]:
    """One server with ``settings``, one Chromium: the oscillator bursts, then the mic's."""
    config = workdir / "voxgate.toml"
    config.write_text(
        '[agent]\nname = "loopback"\n[webrtc]\nice_addresses = ["127.0.0.1"]\n'
        + "".join(f"{key} = {value}\n" for key, value in settings.items())
    )
    wav = tone_bursts_wav(workdir / "bursts.wav")
    server = spawn_server(
        core=0, endpointing_ms=200, log_path=workdir / "server.log", config=config
    )
    base = "http" + server.url[len("ws") : -len("/twilio")]
    try:
        async with Browser.launch(
            fake_audio_wav=wav, loop_audio=True, log_path=workdir / "chromium.log"
        ) as browser:
            page = await browser.new_page(base + "/")
            await page.evaluate(f"voxgate.start({{audio: {RAW_AUDIO}}})", await_promise=True)
            await asyncio.sleep(1.0)  # let both jitter buffers settle
            before = await page.evaluate(STATS_JS, await_promise=True)
            probe = await page.evaluate(
                f"voxgate.measureRoundTrip({{count: {bursts}}})",
                await_promise=True,
                timeout_s=bursts * 4 + 30,
            )
            middle = await page.evaluate(STATS_JS, await_promise=True)
            mic = await page.evaluate(
                f"voxgate.measureMicRoundTrip({{count: {bursts}}})",
                await_promise=True,
                timeout_s=bursts * 4 + 30,
            )
            after = await page.evaluate(STATS_JS, await_promise=True)
            await page.evaluate("voxgate.stop()", await_promise=True)
    finally:
        server.stop()
    return {
        **settings,
        "bursts": {"oscillator": probe["sent"], "microphone": mic["sent"]},
        "samples_ms": {
            "oscillator": probe["samples"],
            "sent track": probe["track_samples"],
            "microphone": mic["samples"],
        },
        "browser": {
            "oscillator": stats_delta(before, middle),
            "microphone": stats_delta(middle, after),
        },
    }


async def run(bursts: int, rounds: int, names: list[str]) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="voxgate-rtt-") as tmp:
        for _ in range(rounds):  # alternate, so drift in machine load hits all alike
            for name in names:
                results[name].append(await measure(VARIANTS[name], bursts, Path(tmp)))
    summary = {}
    for name, runs in results.items():
        timings = {}
        for timing in TIMINGS:
            samples = [x for r in runs for x in r["samples_ms"][timing]]
            source = "microphone" if timing == "microphone" else "oscillator"
            timings[timing] = {
                "median_ms": statistics.median(samples) if samples else None,
                "p90_ms": percentile(samples, 0.9),
                "detected": len(samples),
                "bursts": sum(r["bursts"][source] for r in runs),
                "browser_jitter_buffer_ms": statistics.median(
                    r["browser"][source]["jitter_buffer_ms"] for r in runs
                ),
                "browser_concealment_events": sum(
                    r["browser"][source]["concealment_events"] for r in runs
                ),
            }
        summary[name] = {"settings": VARIANTS[name], "timings": timings, "runs": runs}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=20, help="tone bursts per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--variant",
        action="append",
        choices=list(VARIANTS),
        help="server settings to measure (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("chromium not found (install Debian's chromium)", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})  # Chromium and this driver on core 1, the server on 0
    summary = asyncio.run(run(args.bursts, args.rounds, args.variant or list(VARIANTS)))
    header = ("server settings", "timing", "median", "p90", "detected", "browser jb", "conc.")
    print("{:34} {:11} {:>8} {:>8} {:>9} {:>11} {:>5}".format(*header))
    for name, result in summary.items():
        for timing, t in result["timings"].items():
            median = "-" if t["median_ms"] is None else f"{t['median_ms']:.1f}ms"
            p90 = "-" if t["p90_ms"] is None else f"{t['p90_ms']:.1f}ms"
            print(
                f"{name:34} {timing:11} {median:>8} {p90:>8} "
                f"{t['detected']:>4}/{t['bursts']:<4} {t['browser_jitter_buffer_ms']:9.1f}ms "
                f"{t['browser_concealment_events']:>5}"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
