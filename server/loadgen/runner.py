"""Run a load test: worker processes, the server's CPU and memory, the summary and the SLO.

``run_load`` drives ``calls`` concurrent simulated Twilio calls against a
server for ``duration_s`` each, from worker processes pinned away from the
server's core, while sampling the server process (``/proc/<pid>``).
``find_capacity`` repeats it with more calls until the SLO fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np

from engine.g711 import ulaw_encode
from server.espeak_cli import synthesize
from server.loadgen.scenario import CallMetrics, Timing
from server.loadgen.worker import WorkerResult, WorkerSpec

UTTERANCE_A = "please tell me the status of my order number four two seven"
UTTERANCE_B = "no wait, I meant the other order from last week"
CALLS_PER_WORKER = 400
"""A worker process serves up to this many calls (measured to stay under 50 % of a core)."""
GENERATOR_LATENESS_LIMIT_MS = 5.0
"""A run is invalid when the generator's p99 slot lateness exceeds this."""
SAMPLE_PERIOD_S = 1.0
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- the SLO


class Slo(msgspec.Struct, frozen=True, kw_only=True):
    """The service level a run must meet to count toward capacity."""

    lateness_p99_ms: float = 20.0
    max_underruns: int = 0
    turn_p95_over_endpointing_ms: float = 30.0
    max_errors: int = 0


def percentiles(samples: array[float] | list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of ``samples`` (``None`` each when there are none)."""
    if len(samples) == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    values = np.frombuffer(samples, dtype=np.float64) if isinstance(samples, array) else samples
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "n": len(samples),
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "max": round(float(np.max(values)), 2),
    }


# ------------------------------------------------------------- server sampling


class ServerSample(msgspec.Struct, frozen=True):
    t_s: float
    cpu_s: float
    rss_bytes: int


def read_process(pid: int) -> tuple[float, int]:
    """(CPU seconds used, resident bytes) of ``pid`` from ``/proc``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    with open(f"/proc/{pid}/statm", "rb") as f:
        rss_pages = int(f.read().split()[1])
    return cpu_s, rss_pages * PAGE_BYTES


class ServerMonitor:
    """Samples a process's CPU time and RSS every :data:`SAMPLE_PERIOD_S` on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[ServerSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-monitor", daemon=True)

    def sample(self) -> ServerSample:
        cpu_s, rss = read_process(self.pid)
        s = ServerSample(time.monotonic(), cpu_s, rss)
        self.samples.append(s)
        return s

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.sample()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_PERIOD_S):
            try:
                self.sample()
            except OSError:
                return


# -------------------------------------------------------------------- running


@dataclass
class LoadPlan:
    url: str
    calls: int
    duration_s: float
    ramp_s: float | None = None
    """Connects spread over this (default: 50 new calls per second, at most a third of
    ``duration_s``, so every call is live together for at least a third of the run)."""
    workers: int | None = None
    generator_cpus: list[int] | None = None
    server_pid: int | None = None
    endpointing_ms: int = 200
    timing: Timing = field(default_factory=Timing)
    slo: Slo = field(default_factory=Slo)
    seed: int = 1

    def effective_ramp_s(self) -> float:
        return self.ramp_s if self.ramp_s is not None else min(self.duration_s / 3, self.calls / 50)

    def effective_workers(self) -> int:
        return self.workers or max(1, math.ceil(self.calls / CALLS_PER_WORKER))


def caller_audio() -> tuple[bytes, bytes]:
    """The callers' two utterances, synthesised now with espeak-ng, as μ-law 8 kHz."""
    return (
        ulaw_encode(synthesize(UTTERANCE_A, 8000).tobytes()),
        ulaw_encode(synthesize(UTTERANCE_B, 8000).tobytes()),
    )


def run_load(plan: LoadPlan, audio: tuple[bytes, bytes] | None = None) -> dict[str, Any]:
    """Run one load test and return its summary (see :func:`summarise`)."""
    if plan.calls < 1 or plan.duration_s <= 0:
        raise ValueError("a load test needs at least one call and a positive duration")
    if plan.effective_ramp_s() >= plan.duration_s:
        raise ValueError("the ramp must be shorter than the duration, or calls never all overlap")
    utterance_a, utterance_b = audio or caller_audio()
    n_workers = min(plan.effective_workers(), plan.calls)
    ramp_s = plan.effective_ramp_s()
    start_at = time.monotonic() + 1.0 + 0.2 * n_workers  # workers start their interpreters
    sids = [f"CA{plan.seed:08x}{i:024x}" for i in range(plan.calls)]
    specs = []
    for w in range(n_workers):
        mine = sids[w::n_workers]
        worker_start_s, worker_ramp_s = worker_ramp(w, n_workers, len(mine), plan.calls, ramp_s)
        specs.append(
            WorkerSpec(
                url=plan.url,
                call_sids=mine,
                start_at_s=start_at + worker_start_s,
                ramp_s=worker_ramp_s,
                duration_s=plan.duration_s,
                utterance_a=utterance_a,
                utterance_b=utterance_b,
                timing=plan.timing,
                cpus=plan.generator_cpus,
                seed=plan.seed * 1000 + w,
            )
        )
    results, failures, monitor = run_workers(
        "server.loadgen.worker", specs, WorkerResult, plan.server_pid
    )
    return summarise(plan, results, failures, monitor, start_at=start_at, ramp_s=ramp_s)


def worker_ramp(
    worker: int, workers: int, share: int, calls: int, ramp_s: float
) -> tuple[float, float]:
    """``(start offset, ramp)`` in s of ``worker``'s ``share`` of ``calls``: the workers'
    ramps interleave so new calls stay evenly spread over ``ramp_s``."""
    start_s = ramp_s * worker / calls
    return start_s, ramp_s * (share / calls) * workers if calls > 1 else 0.0


ResultT = TypeVar("ResultT")


def run_workers(
    module: str, specs: list[Any], result_type: type[ResultT], server_pid: int | None
) -> tuple[list[ResultT], list[str], ServerMonitor | None]:
    """Run ``python -m module RESULT`` per spec (msgpack on stdin, result msgpack in
    RESULT), sampling ``server_pid`` meanwhile; returns the results, the failures and
    the stopped monitor."""
    result_dir = Path(tempfile.mkdtemp(prefix="voxgate-load-"))
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for w, spec in enumerate(specs):
        result_path = result_dir / f"worker-{w}.msgpack"
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(result_path)], stdin=subprocess.PIPE
        )
        assert proc.stdin is not None
        proc.stdin.write(msgspec.msgpack.encode(spec))
        proc.stdin.close()
        procs.append((proc, result_path))
    monitor = ServerMonitor(server_pid) if server_pid else None
    if monitor is not None:
        monitor.start()
    results: list[ResultT] = []
    failures: list[str] = []
    for proc, result_path in procs:
        if proc.wait() != 0 or not result_path.exists():
            failures.append(f"worker {proc.pid} exited with {proc.returncode}")
            continue
        results.append(msgspec.msgpack.decode(result_path.read_bytes(), type=result_type))
    shutil.rmtree(result_dir, ignore_errors=True)
    if monitor is not None:
        monitor.stop()
    return results, failures, monitor


def summarise(
    plan: LoadPlan,
    results: list[WorkerResult],
    failures: list[str],
    monitor: ServerMonitor | None,
    *,
    start_at: float,
    ramp_s: float,
) -> dict[str, Any]:
    """The JSON summary: latencies (p50/p95/p99/max), errors, server cost, generator health, SLO."""
    metrics = CallMetrics()
    slot_lateness = array("d")
    generator_cpu_s = 0.0
    skipped = 0
    connected = completed = 0
    for r in results:
        metrics.merge(r.metrics.metrics())
        slot_lateness.frombytes(r.slot_lateness_ms)
        generator_cpu_s += r.cpu_s
        skipped += r.skipped_slot_runs
        connected += r.calls_connected
        completed += r.calls_completed
    errors = dict(metrics.errors)
    for failure in failures:
        errors[failure] = errors.get(failure, 0) + 1
    call_seconds = plan.calls * plan.duration_s
    generator_lateness = percentiles(slot_lateness)
    generator_p99 = generator_lateness["p99"] or 0.0
    valid = not failures and skipped == 0 and generator_p99 <= GENERATOR_LATENESS_LIMIT_MS
    summary: dict[str, Any] = {
        "url": plan.url,
        "calls": plan.calls,
        "duration_s": plan.duration_s,
        "ramp_s": ramp_s,
        "all_calls_live_s": round(plan.duration_s - ramp_s, 2),
        "endpointing_ms": plan.endpointing_ms,
        "calls_connected": connected,
        "calls_completed": completed,
        "turns": metrics.turns,
        "barge_ins": metrics.barge_ins,
        "frames_sent": metrics.frames_sent,
        "frames_received": metrics.frames_received,
        "turn_latency_ms": percentiles(metrics.turn_ms),
        "barge_in_clear_ms": percentiles(metrics.clear_ms),
        "barge_in_yield_ms": percentiles(metrics.yield_ms),
        "outbound_lateness_ms": percentiles(metrics.lateness_ms),
        "outbound_gap_ms": percentiles(metrics.gap_ms),
        "underruns": metrics.underruns,
        "errors": errors,
        "generator": {
            "workers": len(results) + len(failures),
            "slot_lateness_ms": generator_lateness,
            "skipped_slot_runs": skipped,
            "cpu_s_per_call_s": round(generator_cpu_s / call_seconds, 5),
            "valid": valid,
        },
    }
    if monitor is not None and len(monitor.samples) >= 2:
        summary["server"] = server_summary(
            monitor.samples,
            pid=plan.server_pid,
            calls=plan.calls,
            duration_s=plan.duration_s,
            start_at=start_at,
            ramp_s=ramp_s,
        )
    summary["slo"] = check_slo(summary, plan.slo)
    summary["samples"] = {
        "turn_latency_ms": _thin(metrics.turn_ms),
        "barge_in_clear_ms": _thin(metrics.clear_ms),
        "barge_in_yield_ms": _thin(metrics.yield_ms),
        "outbound_lateness_ms": _thin(metrics.lateness_ms),
    }
    return summary


def _thin(samples: array[float], keep: int = 2000) -> list[float]:
    """Up to ``keep`` sorted samples, evenly spaced in rank (enough to draw a CDF)."""
    values = np.sort(np.frombuffer(samples, dtype=np.float64)) if len(samples) else np.zeros(0)
    if len(values) > keep:
        values = values[np.linspace(0, len(values) - 1, keep).astype(int)]
    return [round(float(v), 2) for v in values]


def server_summary(
    samples: list[ServerSample],
    *,
    pid: int | None,
    calls: int,
    duration_s: float,
    start_at: float,
    ramp_s: float,
) -> dict[str, Any]:
    """The server's CPU and RSS over a run of ``calls`` calls of ``duration_s`` each,
    started evenly over ``ramp_s`` from ``start_at``: totals, per call, and a curve of
    CPU against the calls live at each sample (from that schedule)."""
    first, last = samples[0], samples[-1]
    baseline_rss = first.rss_bytes
    peak_rss = max(s.rss_bytes for s in samples)
    curve = []
    for a, b in itertools.pairwise(samples):
        dt = b.t_s - a.t_s
        if dt <= 0:
            continue
        live = _live_calls(calls, duration_s, start_at, ramp_s, (a.t_s + b.t_s) / 2)
        curve.append(
            {
                "calls": round(live, 1),
                "cpu_fraction": round((b.cpu_s - a.cpu_s) / dt, 4),
                "rss_mb": round(b.rss_bytes / 1e6, 2),
            }
        )
    # Samples a second inside the all-live window (setup takes a moment at each end).
    steady = [c["cpu_fraction"] for c in curve if c["calls"] >= calls]
    return {
        "pid": pid,
        "cpu_s": round(last.cpu_s - first.cpu_s, 3),
        "cpu_s_per_call_s": round((last.cpu_s - first.cpu_s) / (calls * duration_s), 5),
        "cpu_fraction_at_full_load": round(float(np.median(steady)), 4) if steady else None,
        "cpu_fraction_max_at_full_load": round(max(steady), 4) if steady else None,
        "rss_baseline_mb": round(baseline_rss / 1e6, 2),
        "rss_peak_mb": round(peak_rss / 1e6, 2),
        "rss_per_call_mb": round((peak_rss - baseline_rss) / calls / 1e6, 4),
        "cpu_curve": curve,
    }


def _live_calls(calls: int, duration_s: float, start_at: float, ramp_s: float, t: float) -> float:
    """Calls live at ``t`` by the schedule: starts spread over the ramp, each lasting duration."""

    def started_by(when: float) -> float:
        if ramp_s <= 0:
            return calls if when >= start_at else 0
        return max(0.0, min(calls, (when - start_at) / ramp_s * calls))

    return started_by(t) - started_by(t - duration_s)


def check_slo(summary: dict[str, Any], slo: Slo) -> dict[str, Any]:
    """Each SLO criterion with its measured value, and whether the run passed."""
    lateness = summary["outbound_lateness_ms"]["p99"]
    turn_p95 = summary["turn_latency_ms"]["p95"]
    turn_limit = summary["endpointing_ms"] + slo.turn_p95_over_endpointing_ms
    n_errors = sum(summary["errors"].values())
    checks = {
        "outbound_lateness_p99_ms": {
            "value": lateness,
            "limit": slo.lateness_p99_ms,
            "ok": lateness is not None and lateness <= slo.lateness_p99_ms,
        },
        "underruns": {
            "value": summary["underruns"],
            "limit": slo.max_underruns,
            "ok": summary["underruns"] <= slo.max_underruns,
        },
        "turn_latency_p95_ms": {
            "value": turn_p95,
            "limit": turn_limit,
            "ok": turn_p95 is not None and turn_p95 <= turn_limit,
        },
        "errors": {"value": n_errors, "limit": slo.max_errors, "ok": n_errors <= slo.max_errors},
    }
    return {
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
        "valid": summary["generator"]["valid"],
    }


# ------------------------------------------------------------ a server to test


@dataclass
class SpawnedServer:
    """A ``voxgate serve`` child pinned to one core, for capacity runs."""

    process: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn_server(
    core: int,
    endpointing_ms: int,
    log_path: Path | None = None,
    config: Path | None = None,
    sip_port: int = 0,
    *,
    max_calls: int = 100_000,
) -> SpawnedServer:
    """Start ``voxgate serve`` on a free loopback port, pinned to ``core``.

    The agent is the echo agent, unless ``config`` (a TOML file) says otherwise.
    SIP is off unless ``sip_port`` is given.  Calls beyond ``max_calls`` are
    refused (503 over SIP).
    """
    port = free_port()
    env = dict(os.environ)
    env["VOXGATE_SIP__PORT"] = str(sip_port)
    env["VOXGATE_SERVER__MAX_CALLS"] = str(max_calls)
    env["VOXGATE_SERVER__LOG_LEVEL"] = "warning"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [
            *("taskset", "-c", str(core)),
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            *("--host", "127.0.0.1", "--port", str(port)),
            *(("--config", str(config)) if config is not None else ("--agent", "echo")),
            *("--endpointing-ms", str(endpointing_ms)),
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    server = SpawnedServer(process, f"ws://127.0.0.1:{port}/twilio")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"voxgate serve exited with {process.returncode} at start")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("voxgate serve did not become ready within 30 s")


def other_cpus(core: int) -> list[int]:
    """The CPUs this process may use, except ``core`` (all of them if that leaves none)."""
    cpus = sorted(os.sched_getaffinity(0) - {core})
    return cpus or sorted(os.sched_getaffinity(0))


def find_capacity(
    plan: LoadPlan, start: int, step: int, maximum: int, server_core: int = 0
) -> dict[str, Any]:
    """Raise the number of calls by ``step`` until the SLO fails; each step on a fresh server.

    The result's ``calls_per_core`` is the largest number of calls that passed
    with a valid generator; a step where the generator fell behind stops the
    search (the generator, not the server, was the limit).
    """
    audio = caller_audio()
    steps: list[dict[str, Any]] = []
    capacity = 0
    calls = start
    stopped_by = "maximum reached"
    while calls <= maximum:
        server = spawn_server(server_core, plan.endpointing_ms)
        try:
            step_plan = dataclasses.replace(
                plan,
                url=server.url,
                calls=calls,
                generator_cpus=plan.generator_cpus or other_cpus(server_core),
                server_pid=server.pid,
                seed=plan.seed + calls,
            )
            summary = run_load(step_plan, audio)
        finally:
            server.stop()
        summary.pop("samples", None)
        steps.append(summary)
        print(step_line(summary), flush=True)
        if not summary["slo"]["valid"]:
            stopped_by = f"generator fell behind at {calls} calls"
            break
        if not summary["slo"]["passed"]:
            stopped_by = f"SLO failed at {calls} calls"
            break
        capacity = calls
        calls += step
    return {
        "calls_per_core": capacity,
        "server_core": server_core,
        "stopped_by": stopped_by,
        "slo": msgspec.to_builtins(plan.slo),
        "steps": steps,
    }


def step_line(summary: dict[str, Any]) -> str:
    """One line per run for the console."""
    server = summary.get("server", {})
    slo = summary["slo"]
    verdict = "PASS" if slo["passed"] else "FAIL"
    if not slo["valid"]:
        verdict += " (generator behind: invalid)"
    return (
        f"{summary['calls']:5d} calls  turn p95 {summary['turn_latency_ms']['p95']} ms  "
        f"late p99 {summary['outbound_lateness_ms']['p99']} ms  "
        f"underruns {summary['underruns']}  errors {sum(summary['errors'].values())}  "
        f"cpu {server.get('cpu_fraction_at_full_load')}  "
        f"rss/call {server.get('rss_per_call_mb')} MB  {verdict}"
    )
