"""``voxgate bench sip``: N concurrent SIP/RTP calls against a server, measured and summarised.

:func:`run_sip_load` starts worker processes (``python -m server.loadgen.sipload
RESULT_FILE``, a msgpack :class:`SipWorkerSpec` on stdin, a msgpack
:class:`SipWorkerResult` written to RESULT_FILE), each running many
:class:`~server.loadgen.sipcall.SipCaller` on one event loop, pinned away from
the server's core; it samples the server's CPU and RSS from ``/proc`` meanwhile
and reads its ``/metrics`` at the end.  :func:`spawn_sip_server` starts ``voxgate
serve`` with the echo agent and SIP on a free port, pinned to one core;
:func:`find_capacity` raises the number of calls until the :class:`SipSlo` fails.

Each worker sends every caller's RTP from one deadline-driven schedule: the
20 ms period is cut into :data:`SLOTS` phases and each call sends in one of
them, so the server sees packets spread over the period as from real
carriers.  How late each slot ran is the generator's own lateness; a run where
it fell a whole period behind does not measure the server (``valid`` false).

Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import os
import platform
import random
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np

from server.loadgen.runner import (
    ServerMonitor,
    ServerSample,
    SpawnedServer,
    caller_audio,
    other_cpus,
    percentiles,
    run_workers,
    spawn_server,
    worker_ramp,
)
from server.loadgen.sipcall import (
    CallerEnv,
    RtpPorts,
    SipCaller,
    SipMetrics,
    SipMetricsWire,
    SipTiming,
    Utterance,
)
from server.sip.message import Request, SipParseError, make_response, parse_message

SLOTS: Final = 10
PERIOD_S: Final = 0.020
SLOT_S: Final = PERIOD_S / SLOTS
EARLY_S: Final = 0.001
"""uvloop's timers have millisecond resolution and may fire up to 1 ms early."""
CLOSE_GRACE_S: Final = 10.0
"""How long after the last call's scheduled end a worker waits for BYEs to be answered."""
CALLS_PER_WORKER: Final = 500
"""A worker process serves up to this many calls."""
GENERATOR_LATENESS_LIMIT_MS: Final = 5.0
"""A run is invalid when the generator's p99 slot lateness exceeds this."""
GENERATOR_MAX_SKIPPED_SHARE: Final = 0.001
"""A run is invalid when the generator lost more than this share of its slot runs (a
rare stall of one period is jitter the server must absorb anyway)."""
LOCAL_HOST: Final = "127.0.0.1"
CALLER_PORTS: Final = (40000, 60000)
"""The callers' RTP/RTCP port pairs, shared out between the workers."""
RTP_PORTS: Final = "20000-29999"
"""The spawned server's RTP range: 5000 calls."""
SERVER_TOML: Final = f"""\
[agent]
name = "echo"

[sip]
host = "{LOCAL_HOST}"
rtp_ports = "{RTP_PORTS}"
"""


# ----------------------------------------------------------------------- the SLO


class SipSlo(msgspec.Struct, frozen=True, kw_only=True):
    """What a run must meet for its number of calls to count toward capacity."""

    lateness_p99_ms: float = 20.0
    """p99 of the server's outbound packets behind their 20 ms grid."""
    max_lost_packets: int = 0
    """Gaps in the server's streams (at 0 % loss on loopback)."""
    max_inexact_replies: int = 0
    """Echoes that differ from the utterance: the server's jitter buffer made audio up."""
    max_errors: int = 0
    """Failed setups, SIP errors, missing replies, calls not completed."""
    max_server_cpu: float = 0.85
    """Fraction of the server's core used with every call live."""


# ------------------------------------------------------------------- the workers


class SipWorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    server: tuple[str, int]
    """The server's SIP address (UDP)."""
    user: str
    indices: list[int]
    """The callers of this worker (their numbers in the whole run)."""
    start_at_s: float
    """:func:`time.monotonic` when the first call starts (the clock is system-wide)."""
    ramp_s: float
    """The calls' INVITEs are spread evenly over this many seconds."""
    duration_s: float
    utterances: list[bytes]
    """mu-law 8 kHz."""
    rtp_ports: tuple[int, int] = (40000, 60000)
    """``[low, high)`` of this worker's RTP/RTCP port pairs."""
    timing: SipTiming = SipTiming()
    cpus: list[int] | None = None
    seed: int = 0


class SipWorkerResult(msgspec.Struct, frozen=True, kw_only=True):
    metrics: SipMetricsWire
    slot_lateness_ms: bytes
    """float64 per slot run: how late the generator sent its callers' packets."""
    skipped_slot_runs: int
    """Slot runs lost because the generator fell a whole period behind."""
    cpu_s: float


class _SipProtocol(asyncio.DatagramProtocol):
    """The worker's SIP socket: messages go to the caller whose Call-ID they carry."""

    def __init__(self, worker: SipWorker) -> None:
        self.worker = worker

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.worker.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.worker.metrics.error("sip_socket_error")


class SipWorker:
    """The callers of one process, their 20 ms send schedule and their shared metrics."""

    def __init__(self, spec: SipWorkerSpec) -> None:
        self.spec = spec
        self.metrics = SipMetrics()
        self.utterances = tuple(Utterance.from_ulaw(u) for u in spec.utterances)
        self.slots: list[list[SipCaller]] = [[] for _ in range(SLOTS)]
        self.callers: dict[str, SipCaller] = {}
        self.slot_lateness_ms = array("d")
        self.skipped_slot_runs = 0
        self._pending = len(spec.indices)
        self._all_done = asyncio.Event()
        self._next_slot = 0
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.DatagramTransport | None = None

    async def run(self) -> SipWorkerResult:
        loop = asyncio.get_running_loop()
        spec = self.spec
        cpu0 = time.process_time()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _SipProtocol(self), local_addr=(LOCAL_HOST, 0)
        )
        self._transport = transport
        env = CallerEnv(
            loop=loop,
            send_sip=self._send_sip,
            sip_local=transport.get_extra_info("sockname")[:2],
            server=spec.server,
            user=spec.user,
            utterances=self.utterances,
            timing=spec.timing,
            rtp_ports=RtpPorts(LOCAL_HOST, *spec.rtp_ports),
            metrics=self.metrics,
        )
        rng = random.Random(spec.seed)
        n = len(spec.indices)
        for k, index in enumerate(spec.indices):
            caller = SipCaller(
                env,
                index,
                duration_s=spec.duration_s,
                ssrc=rng.getrandbits(32),
                on_done=self._on_done,
            )
            self.callers[caller.call_id] = caller
            self.slots[index % SLOTS].append(caller)
            loop.call_at(spec.start_at_s + (spec.ramp_s * k / n if n else 0.0), caller.start)
        self._arm()
        deadline = spec.start_at_s + spec.ramp_s + spec.duration_s + CLOSE_GRACE_S
        if self._pending:
            try:
                await asyncio.wait_for(self._all_done.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                for caller in self.callers.values():
                    caller.abort("not_closed")
        if self._timer is not None:
            self._timer.cancel()
        transport.close()
        return SipWorkerResult(
            metrics=SipMetricsWire.of(self.metrics),
            slot_lateness_ms=self.slot_lateness_ms.tobytes(),
            skipped_slot_runs=self.skipped_slot_runs,
            cpu_s=time.process_time() - cpu0,
        )

    def _send_sip(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, self.spec.server)

    def _on_done(self, caller: SipCaller) -> None:
        # The caller stays in ``callers``: retransmitted responses still reach it.
        self._pending -= 1
        if self._pending <= 0:
            self._all_done.set()

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse_message(data)
        except SipParseError:
            self.metrics.error("sip_unparseable")
            return
        caller = self.callers.get(message.call_id or "")
        if caller is not None:
            caller.on_sip(message, addr)
            return
        self.metrics.error("sip_stray")
        if isinstance(message, Request) and message.method != "ACK":
            try:
                response = make_response(message, 481)
            except (SipParseError, ValueError):
                return
            self._send_sip(response.serialize())

    # -- the schedule -------------------------------------------------------------------

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self.spec.start_at_s + self._next_slot * SLOT_S
        # The loop clock and time.monotonic() share CLOCK_MONOTONIC.
        self._timer = loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        now = time.monotonic()
        start = self.spec.start_at_s
        last_due = int((now + EARLY_S - start) / SLOT_S)
        first = self._next_slot
        behind = last_due - first + 1 - SLOTS
        if behind > 0:  # more than a whole period late: those slots' packets are lost
            self.skipped_slot_runs += behind
            first += behind
        for index in range(first, last_due + 1):
            self.slot_lateness_ms.append(max(0.0, now - (start + index * SLOT_S)) * 1000)
            for caller in self.slots[index % SLOTS]:
                caller.tick(now)
        self._next_slot = max(self._next_slot, last_due + 1)
        self._arm()


def worker_main() -> int:
    """The worker process: spec on stdin, result to the file named by ``argv[1]``."""
    spec = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=SipWorkerSpec)
    # A full collection would stall every caller's packets at once; the per-packet
    # garbage is freed by reference counting alone.
    gc.disable()
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    try:
        import uvloop

        result = uvloop.run(SipWorker(spec).run())
    except ImportError:
        result = asyncio.run(SipWorker(spec).run())
    with open(sys.argv[1], "wb") as out:
        out.write(msgspec.msgpack.encode(result))
    return 0


# ---------------------------------------------------------------------- running


@dataclass
class SipLoadPlan:
    server: tuple[str, int]
    """The server's SIP address."""
    calls: int
    duration_s: float
    """How long each call lasts, INVITE to BYE (s)."""
    ramp_s: float | None = None
    """INVITEs spread over this (default: 50 calls per second, at most a third of the
    duration, so every call is live together for at least two thirds of it)."""
    workers: int | None = None
    generator_cpus: list[int] | None = None
    server_pid: int | None = None
    http_url: str | None = None
    """``http://host:port`` of the server, to read ``/metrics`` at the end."""
    user: str = "echo"
    timing: SipTiming = field(default_factory=SipTiming)
    slo: SipSlo = field(default_factory=SipSlo)
    seed: int = 1

    def effective_ramp_s(self) -> float:
        if self.ramp_s is not None:
            return self.ramp_s
        return min(self.duration_s / 3, self.calls / 50)

    def effective_workers(self) -> int:
        return min(self.calls, self.workers or max(1, math.ceil(self.calls / CALLS_PER_WORKER)))


def run_sip_load(plan: SipLoadPlan, audio: tuple[bytes, bytes] | None = None) -> dict[str, Any]:
    """Run one load test and return its summary (see :func:`summarise`)."""
    if plan.calls < 1 or plan.duration_s <= 0:
        raise ValueError("a load test needs at least one call and a positive duration")
    ramp_s = plan.effective_ramp_s()
    if ramp_s >= plan.duration_s:
        raise ValueError("the ramp must be shorter than the duration, or calls never all overlap")
    utterances = list(audio or caller_audio())
    n_workers = plan.effective_workers()
    start_at = time.monotonic() + 1.0 + 0.3 * n_workers  # workers start their interpreters
    indices = list(range(plan.calls))
    specs = []
    for w in range(n_workers):
        mine = indices[w::n_workers]
        worker_start_s, worker_ramp_s = worker_ramp(w, n_workers, len(mine), plan.calls, ramp_s)
        specs.append(
            SipWorkerSpec(
                server=plan.server,
                user=plan.user,
                indices=mine,
                start_at_s=start_at + worker_start_s,
                ramp_s=worker_ramp_s,
                duration_s=plan.duration_s,
                utterances=utterances,
                rtp_ports=_port_share(w, n_workers),
                timing=plan.timing,
                cpus=plan.generator_cpus,
                seed=plan.seed * 1000 + w,
            )
        )
    results, failures, monitor = run_workers(
        "server.loadgen.sipload", specs, SipWorkerResult, plan.server_pid
    )
    server_metrics = read_server_metrics(plan.http_url) if plan.http_url else None
    return summarise(
        plan,
        results,
        failures,
        monitor,
        server_metrics,
        start_at=start_at,
        ramp_s=ramp_s,
        workers=n_workers,
    )


def _port_share(worker: int, workers: int) -> tuple[int, int]:
    """Worker ``worker``'s share of the generator's RTP ports (:data:`CALLER_PORTS`)."""
    low, high = CALLER_PORTS
    span = (high - low) // workers
    span -= span % 2
    return low + worker * span, low + (worker + 1) * span


def summarise(
    plan: SipLoadPlan,
    results: list[SipWorkerResult],
    failures: list[str],
    monitor: ServerMonitor | None,
    server_metrics: dict[str, Any] | None,
    *,
    start_at: float,
    ramp_s: float,
    workers: int,
) -> dict[str, Any]:
    """The JSON summary: calls, setup, outbound lateness, gaps, echoes, errors, costs, SLO."""
    m = SipMetrics()
    slot_lateness = array("d")
    generator_cpu_s = 0.0
    skipped = 0
    for r in results:
        m.merge(r.metrics.metrics())
        slot_lateness.frombytes(r.slot_lateness_ms)
        generator_cpu_s += r.cpu_s
        skipped += r.skipped_slot_runs
    errors = dict(m.errors)
    for failure in failures:
        errors[failure] = errors.get(failure, 0) + 1
    if m.calls_started < plan.calls:
        errors["not_started"] = plan.calls - m.calls_started
    lateness = m.lateness_ms
    late = np.frombuffer(lateness, dtype=np.float64) if len(lateness) else np.zeros(0)
    slot = percentiles(slot_lateness)
    receive_delay = percentiles(m.receive_delay_ms)
    kernel_share = m.kernel_timestamps / m.packets_received if m.packets_received else 0.0
    kernel_clock = kernel_share >= 0.99
    valid = (
        not failures
        and skipped <= GENERATOR_MAX_SKIPPED_SHARE * (len(slot_lateness) + skipped)
        and (slot["p99"] or 0.0) <= GENERATOR_LATENESS_LIMIT_MS
        and (kernel_clock or (receive_delay["p99"] or 0.0) <= GENERATOR_LATENESS_LIMIT_MS)
    )
    call_seconds = plan.calls * plan.duration_s
    summary: dict[str, Any] = {
        "server_sip": f"{plan.server[0]}:{plan.server[1]}",
        "codec": "PCMU",
        "calls": plan.calls,
        "duration_s": plan.duration_s,
        "ramp_s": round(ramp_s, 2),
        "all_calls_live_s": round(plan.duration_s - ramp_s, 2),
        "calls_started": m.calls_started,
        "calls_answered": m.calls_answered,
        "calls_completed": m.calls_completed,
        "setup_ms": percentiles(m.setup_ms),
        "outbound_lateness_ms": percentiles(lateness),
        "outbound_late_packets": {
            "over_10_ms": int(np.count_nonzero(late > 10.0)),
            "over_20_ms": int(np.count_nonzero(late > 20.0)),
            "over_40_ms": int(np.count_nonzero(late > 40.0)),
        },
        "interarrival_jitter_ms": percentiles(m.jitter_ms),
        "packets": {
            "sent": m.packets_sent,
            "received": m.packets_received,
            "lost": m.packets_lost,
            "duplicates": m.duplicates,
            "unknown_pt": m.unknown_pt,
            "wrong_ssrc": m.wrong_ssrc,
            "malformed": m.malformed,
            "rtcp_received": m.rtcp_received,
        },
        "echo": {
            "utterances": m.utterances,
            "replies": m.replies,
            "exact": m.replies_exact,
            "cut_off_by_hangup": m.replies_cut_off,
            "inexact": m.replies - m.replies_exact,
            "reply_latency_ms": percentiles(m.reply_ms),
            "length_ratio": percentiles(m.reply_ratio),
        },
        "errors": errors,
        "generator": {
            "workers": workers,
            "slot_lateness_ms": slot,
            "skipped_slot_runs": skipped,
            "receive_delay_ms": receive_delay,
            "kernel_timestamps": round(kernel_share, 4),
            "cpu_s_per_call_s": round(generator_cpu_s / call_seconds, 5),
            "valid": valid,
        },
    }
    if monitor is not None and len(monitor.samples) >= 2:
        summary["server"] = _server_summary(monitor.samples, plan, start_at, ramp_s)
    if server_metrics is not None:
        summary["server_metrics"] = server_metrics
    summary["slo"] = check_slo(summary, plan.slo)
    return summary


def _server_summary(
    samples: list[ServerSample], plan: SipLoadPlan, start_at: float, ramp_s: float
) -> dict[str, Any]:
    first, last = samples[0], samples[-1]
    baseline_rss = first.rss_bytes
    peak_rss = max(s.rss_bytes for s in samples)
    curve = []
    for a, b in itertools.pairwise(samples):
        dt = b.t_s - a.t_s
        if dt <= 0:
            continue
        curve.append(
            {
                "calls": round(_live_calls(plan, start_at, ramp_s, (a.t_s + b.t_s) / 2), 1),
                "cpu_fraction": round((b.cpu_s - a.cpu_s) / dt, 4),
                "rss_mb": round(b.rss_bytes / 1e6, 2),
            }
        )
    # Samples a second inside the all-live window (setup takes a moment at each end).
    steady = [c["cpu_fraction"] for c in curve if c["calls"] >= plan.calls]
    return {
        "pid": plan.server_pid,
        "cpu_s": round(last.cpu_s - first.cpu_s, 3),
        "cpu_s_per_call_s": round((last.cpu_s - first.cpu_s) / (plan.calls * plan.duration_s), 5),
        "cpu_fraction_at_full_load": round(float(np.median(steady)), 4) if steady else None,
        "cpu_fraction_max_at_full_load": round(max(steady), 4) if steady else None,
        "rss_baseline_mb": round(baseline_rss / 1e6, 2),
        "rss_peak_mb": round(peak_rss / 1e6, 2),
        "rss_per_call_mb": round((peak_rss - baseline_rss) / plan.calls / 1e6, 4),
        "cpu_curve": curve,
    }


def _live_calls(plan: SipLoadPlan, start_at: float, ramp_s: float, t: float) -> float:
    """Calls live at ``t`` by the schedule: starts spread over the ramp, each lasting duration."""
    n = plan.calls

    def started_by(when: float) -> float:
        if ramp_s <= 0:
            return n if when >= start_at else 0
        return max(0.0, min(n, (when - start_at) / ramp_s * n))

    return started_by(t) - started_by(t - plan.duration_s)


def check_slo(summary: dict[str, Any], slo: SipSlo) -> dict[str, Any]:
    """Each SLO criterion with its measured value and limit, and whether the run passed."""
    lateness = summary["outbound_lateness_ms"]["p99"]
    cpu = summary.get("server", {}).get("cpu_fraction_at_full_load")
    n_errors = sum(summary["errors"].values())
    checks = {
        "calls_answered": {
            "value": summary["calls_answered"],
            "limit": summary["calls"],
            "ok": summary["calls_answered"] == summary["calls"],
        },
        "outbound_lateness_p99_ms": {
            "value": lateness,
            "limit": slo.lateness_p99_ms,
            "ok": lateness is not None and lateness <= slo.lateness_p99_ms,
        },
        "lost_packets": {
            "value": summary["packets"]["lost"],
            "limit": slo.max_lost_packets,
            "ok": summary["packets"]["lost"] <= slo.max_lost_packets,
        },
        "inexact_replies": {
            "value": summary["echo"]["inexact"],
            "limit": slo.max_inexact_replies,
            "ok": summary["echo"]["inexact"] <= slo.max_inexact_replies,
        },
        "errors": {"value": n_errors, "limit": slo.max_errors, "ok": n_errors <= slo.max_errors},
        "server_cpu": {
            "value": cpu,
            "limit": slo.max_server_cpu,
            # Unknown (a server we did not spawn, and no --pid) does not fail the run.
            "ok": cpu is None or cpu <= slo.max_server_cpu,
        },
    }
    return {
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
        # The capacity criteria alone (calls, lateness, gaps, errors, CPU), without the
        # caller-side evidence of jitter-buffer underruns.
        "passed_without_echo": all(
            c["ok"] for name, c in checks.items() if name != "inexact_replies"
        ),
        "valid": summary["generator"]["valid"],
    }


def step_line(summary: dict[str, Any]) -> str:
    """One line per run for the console."""
    server = summary.get("server", {})
    slo = summary["slo"]
    if slo["passed"]:
        verdict = "PASS"
    else:
        verdict = "PASS but inexact echo" if slo["passed_without_echo"] else "FAIL"
    if not slo["valid"]:
        verdict += " (generator behind: invalid)"
    failed = [name for name, check in slo["checks"].items() if not check["ok"]]
    return (
        f"{summary['calls']:5d} calls  answered {summary['calls_answered']}  "
        f"setup p99 {summary['setup_ms']['p99']} ms  "
        f"late p50/p99 {summary['outbound_lateness_ms']['p50']}/"
        f"{summary['outbound_lateness_ms']['p99']} ms  lost {summary['packets']['lost']}  "
        f"echo {summary['echo']['exact']}/{summary['echo']['replies']} exact  "
        f"errors {sum(summary['errors'].values())}  "
        f"cpu {server.get('cpu_fraction_at_full_load')}  "
        f"rss/call {server.get('rss_per_call_mb')} MB  {verdict}"
        + (f" ({', '.join(failed)})" if failed else "")
    )


# ---------------------------------------------------------------- the server side


def read_server_metrics(http_url: str) -> dict[str, Any] | None:
    """The server's counters that matter here, from ``GET /metrics`` (None if unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{http_url.rstrip('/')}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    ended: dict[str, int] = {}
    refused: dict[str, int] = {}
    bad: dict[str, int] = {}
    buckets: list[tuple[float, float]] = []
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "voxgate_calls_total" and s.labels.get("transport") == "sip":
                ended[s.labels["reason"]] = int(s.value)
            elif s.name == "voxgate_refused_calls_total":
                refused[s.labels["reason"]] = int(s.value)
            elif s.name == "voxgate_bad_messages_total":
                bad[s.labels["transport"]] = int(s.value)
            elif s.name == "voxgate_media_clock_skipped_ticks_total":
                out["clock_skipped_ticks"] = int(s.value)
            elif s.name == "voxgate_media_clock_lateness_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == "voxgate_active_calls":
                out["active_calls_at_end"] = int(s.value)
    out["sip_calls_ended"] = ended
    out["refused_calls"] = refused
    out["bad_messages"] = bad
    out["clock_lateness"] = _histogram_summary(sorted(buckets))
    return out


def _histogram_summary(buckets: list[tuple[float, float]]) -> dict[str, Any]:
    """Tick count and the bucket bounds (ms) that hold the p50/p99/p99.9 tick lateness."""
    if not buckets or buckets[-1][1] <= 0:
        return {"ticks": 0}
    total = buckets[-1][1]

    def bound(q: float) -> float | None:
        for le, count in buckets:
            if count >= q * total:
                return None if math.isinf(le) else round(le * 1000, 3)
        return None

    return {
        "ticks": int(total),
        "p50_at_most_ms": bound(0.5),
        "p99_at_most_ms": bound(0.99),
        "p999_at_most_ms": bound(0.999),
        "over_20_ms": int(total - next((c for le, c in buckets if le >= 0.02), total)),
    }


def free_sip_port() -> int:
    """A port free for both UDP and TCP on loopback (SIP listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOCAL_HOST, 0))
            port: int = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind((LOCAL_HOST, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both UDP and TCP on loopback")


@dataclass
class SipServer:
    """A spawned ``voxgate serve`` with SIP on: its process, SIP address and HTTP base URL."""

    spawned: SpawnedServer
    sip: tuple[str, int]
    http_url: str
    config_dir: Path

    @property
    def pid(self) -> int:
        return self.spawned.pid

    def stop(self) -> int:
        try:
            return self.spawned.stop()
        finally:
            shutil.rmtree(self.config_dir, ignore_errors=True)


def spawn_sip_server(core: int, log_path: Path | None = None) -> SipServer:
    """``voxgate serve`` with the echo agent, SIP on a free port, RTP from
    :data:`RTP_PORTS`, pinned to ``core``."""
    config_dir = Path(tempfile.mkdtemp(prefix="voxgate-sipbench-"))
    config = config_dir / "voxgate.toml"
    config.write_text(SERVER_TOML)
    sip_port = free_sip_port()
    try:
        spawned = spawn_server(core, 200, log_path, config=config, sip_port=sip_port)
    except BaseException:
        shutil.rmtree(config_dir, ignore_errors=True)
        raise
    http_url = spawned.url.removeprefix("ws://").removesuffix("/twilio")
    return SipServer(spawned, (LOCAL_HOST, sip_port), f"http://{http_url}", config_dir)


def find_capacity(
    plan: SipLoadPlan,
    start: int,
    step: int,
    maximum: int,
    *,
    server_core: int = 0,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """Raise the number of calls by ``step`` until the SLO fails; each step on a fresh server.

    ``calls_per_core`` is the largest number of calls that met the capacity
    criteria (every SLO check but the echo's exactness) with a valid generator;
    ``calls_per_core_exact_echo`` the largest up to which every step also echoed
    every utterance exactly (no jitter-buffer underrun).  A step where the
    generator fell behind stops the search (the generator, not the server, was
    the limit then).
    """
    audio = caller_audio()
    steps: list[dict[str, Any]] = []
    capacity = 0
    exact_capacity = 0
    exact_so_far = True
    calls = start
    stopped_by = "maximum reached"
    while calls <= maximum:
        server = spawn_sip_server(server_core, log_path)
        try:
            step_plan = SipLoadPlan(
                server=server.sip,
                calls=calls,
                duration_s=plan.duration_s,
                ramp_s=plan.ramp_s,
                workers=plan.workers,
                generator_cpus=plan.generator_cpus or other_cpus(server_core),
                server_pid=server.pid,
                http_url=server.http_url,
                user=plan.user,
                timing=plan.timing,
                slo=plan.slo,
                seed=plan.seed + calls,
            )
            summary = run_sip_load(step_plan, audio)
        finally:
            exit_code = server.stop()
        summary["server_exit_code"] = exit_code
        steps.append(summary)
        print(step_line(summary), flush=True)
        if not summary["slo"]["valid"]:
            stopped_by = f"generator fell behind at {calls} calls"
            break
        if not summary["slo"]["passed_without_echo"]:
            stopped_by = f"SLO failed at {calls} calls"
            break
        capacity = calls
        exact_so_far = exact_so_far and summary["slo"]["passed"]
        if exact_so_far:
            exact_capacity = calls
        calls += step
    passed = next((s for s in reversed(steps) if s["calls"] == capacity), None)
    return {
        "calls_per_core": capacity,
        "calls_per_core_exact_echo": exact_capacity,
        "server_core": server_core,
        "stopped_by": stopped_by,
        "slo": msgspec.to_builtins(plan.slo),
        "best": _headline(passed) if passed is not None else None,
        "steps": steps,
    }


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures a reader wants from one passing step."""
    server = summary.get("server", {})
    return {
        "calls": summary["calls"],
        "outbound_lateness_ms": summary["outbound_lateness_ms"],
        "server_cpu_fraction": server.get("cpu_fraction_at_full_load"),
        "rss_per_call_mb": server.get("rss_per_call_mb"),
        "setup_ms": summary["setup_ms"],
        "lost_packets": summary["packets"]["lost"],
        "echo_exact": f"{summary['echo']['exact']}/{summary['echo']['replies']}",
    }


# ------------------------------------------------------------------- the command


def _parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"voxgate bench sip: --target must be HOST:PORT, got {text!r}")
    return host, int(port)


def run_cli(args: argparse.Namespace) -> int:
    """``voxgate bench sip`` (options: see ``server/cli.py``); exit 0 when the SLO passed."""
    if args.calls < 1 or args.duration <= 0:
        raise SystemExit("voxgate bench sip: --calls and --duration must be positive")
    plan = SipLoadPlan(
        server=(LOCAL_HOST, 0),
        calls=args.calls,
        duration_s=args.duration,
        ramp_s=args.ramp,
        workers=args.workers,
        server_pid=args.pid,
        http_url=args.http,
        user=args.user,
    )
    if args.find_capacity:
        if args.target:
            raise SystemExit("voxgate bench sip: --find-capacity spawns its own servers")
        summary = find_capacity(
            plan,
            args.start,
            args.step,
            args.max,
            server_core=args.server_core,
            log_path=args.server_log,
        )
        print(
            f"capacity: {summary['calls_per_core']} calls on one core ({summary['stopped_by']}); "
            f"with every echo exact: {summary['calls_per_core_exact_echo']}"
        )
        ok = summary["calls_per_core"] > 0
    else:
        if args.target:
            plan.server = _parse_target(args.target)
            plan.generator_cpus = other_cpus(args.server_core)
            summary = run_sip_load(plan)
        else:
            server = spawn_sip_server(args.server_core, args.server_log)
            plan.server, plan.server_pid = server.sip, server.pid
            plan.http_url = server.http_url
            plan.generator_cpus = other_cpus(args.server_core)
            try:
                summary = run_sip_load(plan)
            finally:
                exit_code = server.stop()
            summary["server_exit_code"] = exit_code
        print(step_line(summary))
        ok = summary["slo"]["passed"] and summary["slo"]["valid"]
    if args.json:
        summary["command"] = " ".join(["voxgate", *sys.argv[1:]])
        summary["host"] = _host()
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok else 1


def _host() -> dict[str, Any]:
    """The machine the figures come from."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}


if __name__ == "__main__":
    sys.exit(worker_main())
