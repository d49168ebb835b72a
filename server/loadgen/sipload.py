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

With a flood (:attr:`SipLoadPlan.flood_rate_per_s`), one more worker process
(:class:`SipFlooder`) sends new INVITEs at that rate while every call is live,
to a server whose ``max_calls`` the calls fill: each must be refused with 503
and Retry-After, and the live calls must not notice (lateness, gaps, echoes).

Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
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
    SpawnedServer,
    caller_audio,
    other_cpus,
    percentiles,
    run_workers,
    server_summary,
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
    non_2xx_ack,
)
from server.loadgen.slots import EARLY_S, SLOTS, SlotSchedule
from server.sip.dialog import Dialog, new_branch, new_call_id, new_tag
from server.sip.message import (
    Request,
    Response,
    SipParseError,
    make_request,
    make_response,
    parse_message,
)
from server.sip.offeranswer import make_offer
from server.sip.transaction import ClientInvite, ClientNonInvite

CLOSE_GRACE_S: Final = 10.0
"""How long after the last call's scheduled end a worker waits for BYEs to be answered."""
CALLS_PER_WORKER: Final = 500
"""A worker process serves up to this many calls."""
GENERATOR_LATENESS_LIMIT_MS: Final = 5.0
"""A run is invalid when the generator's p99 slot lateness exceeds this."""
GENERATOR_MAX_SKIPPED_SHARE: Final = 0.001
"""A run is invalid when the generator lost more than this share of its slot runs (a
rare stall of one period is jitter the server must absorb anyway)."""
FLOOD_MARGIN_S: Final = 1.0
"""The flood starts this long after the last call's INVITE and stops this long before
the first call's BYE, so that it only meets a server full of live calls."""
FLOOD_GRACE_S: Final = 5.0
"""How long after its last INVITE the flood waits for the final responses."""
LOCAL_HOST: Final = "127.0.0.1"
_FLOOD_USER_AGENT: Final = "voxgate-bench-flood"
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


class FloodSpec(msgspec.Struct, frozen=True, kw_only=True):
    """New INVITEs, one every ``1 / rate_per_s`` s from ``start_at_s`` until
    ``stop_at_s`` (:func:`time.monotonic` seconds)."""

    rate_per_s: float
    start_at_s: float
    stop_at_s: float


class FloodResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the flood's INVITEs got back (counts of INVITEs)."""

    sent: int = 0
    finals: dict[str, int] = msgspec.field(default_factory=dict)
    """Final status -> INVITEs that got it (408: no answer within Timer B)."""
    retry_after: int = 0
    """503s carrying a Retry-After of whole seconds (RFC 3261 §20.33)."""
    answered: int = 0
    """2xx: a call set up beyond ``max_calls`` (ACKed and hung up at once)."""
    unanswered: int = 0
    """No final response when the flood ended."""

    def merge(self, other: FloodResult) -> FloodResult:
        finals = dict(self.finals)
        for status, n in other.finals.items():
            finals[status] = finals.get(status, 0) + n
        return FloodResult(
            sent=self.sent + other.sent,
            finals=finals,
            retry_after=self.retry_after + other.retry_after,
            answered=self.answered + other.answered,
            unanswered=self.unanswered + other.unanswered,
        )

    @property
    def refused_503(self) -> int:
        return self.finals.get("503", 0)


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
    flood: FloodSpec | None = None
    """Set: this worker places no calls and floods instead (:class:`SipFlooder`)."""


class SipWorkerResult(msgspec.Struct, frozen=True, kw_only=True):
    metrics: SipMetricsWire
    slot_lateness_ms: bytes
    """float64 per slot run: how late the generator sent its callers' packets."""
    skipped_slot_runs: int
    """Slot runs lost because the generator fell a whole period behind."""
    cpu_s: float
    flood: FloodResult | None = None


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
        self.schedule: SlotSchedule[SipCaller] = SlotSchedule(spec.start_at_s, self._serve)
        self.callers: dict[str, SipCaller] = {}
        self._pending = len(spec.indices)
        self._all_done = asyncio.Event()
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
            self.schedule.slots[index % SLOTS].append(caller)
            loop.call_at(spec.start_at_s + (spec.ramp_s * k / n if n else 0.0), caller.start)
        self.schedule.start()
        deadline = spec.start_at_s + spec.ramp_s + spec.duration_s + CLOSE_GRACE_S
        if self._pending:
            try:
                await asyncio.wait_for(self._all_done.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                for caller in self.callers.values():
                    caller.abort("not_closed")
        self.schedule.stop()
        transport.close()
        return SipWorkerResult(
            metrics=SipMetricsWire.of(self.metrics),
            slot_lateness_ms=self.schedule.lateness_ms.tobytes(),
            skipped_slot_runs=self.schedule.skipped_runs,
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

    def _serve(self, callers: list[SipCaller], now: float) -> None:
        for caller in callers:
            caller.tick(now)


# --------------------------------------------------------------------- the flood


@dataclass(slots=True)
class _FloodInvite:
    """One flood INVITE, its client transaction and what came back."""

    invite: Request
    tx: ClientInvite | None = None
    response: Response | None = None
    """The latest response to the INVITE (what ``tx`` reports on)."""
    final: int = 0
    ack: bytes | None = None
    """The ACK of a 2xx, sent again for each retransmitted 2xx."""


class _FloodProtocol(asyncio.DatagramProtocol):
    def __init__(self, flooder: SipFlooder) -> None:
        self.flooder = flooder

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.flooder.on_datagram(data)


class SipFlooder:
    """A worker that places no calls: new INVITEs at ``spec.flood``'s rate, each a
    new Call-ID over one UDP socket, for a server that should refuse them.

    Every INVITE runs an RFC 3261 client transaction (resent on Timer A until a
    response, so a datagram the server's socket dropped is not taken for an
    unanswered INVITE); a failure response is ACKed by it, a 2xx is ACKed and
    the call hung up at once.  Each INVITE is counted once, by its final status.
    """

    def __init__(self, spec: SipWorkerSpec) -> None:
        if spec.flood is None or spec.flood.rate_per_s <= 0:
            raise ValueError("a flood worker needs a flood with a positive rate")
        self.spec = spec
        self.flood = spec.flood
        self._invites: dict[str, _FloodInvite] = {}
        self._finals: dict[str, int] = {}
        self._sent = 0
        self._pending = 0
        self._retry_after = 0
        self._answered = 0
        self._sending = True
        self._settled = asyncio.Event()
        self._offer = b""
        self._local: tuple[str, int] = (LOCAL_HOST, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.DatagramTransport | None = None

    async def run(self) -> SipWorkerResult:
        loop = asyncio.get_running_loop()
        self._loop = loop
        cpu0 = time.process_time()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _FloodProtocol(self), local_addr=(LOCAL_HOST, 0)
        )
        self._transport = transport
        self._local = transport.get_extra_info("sockname")[:2]
        # A flood call that is answered after all sends its RTP here (never read).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as media:
            media.bind((LOCAL_HOST, 0))
            offer = make_offer(
                local_ip=LOCAL_HOST,
                rtp_port=media.getsockname()[1],
                session_id=self.spec.seed & 0x7FFFFFFF,
                session_version=1,
                codecs=("PCMU",),
            )
            self._offer = offer.serialize()
            self._timer = loop.call_at(self.flood.start_at_s, self._fire)
            deadline = self.flood.stop_at_s + FLOOD_GRACE_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), max(0.0, deadline - time.monotonic()))
        if self._timer is not None:
            self._timer.cancel()
        for entry in self._invites.values():
            if entry.tx is not None:
                entry.tx.terminate()
        transport.close()
        return SipWorkerResult(
            metrics=SipMetricsWire.of(SipMetrics()),
            slot_lateness_ms=b"",
            skipped_slot_runs=0,
            cpu_s=time.process_time() - cpu0,
            flood=FloodResult(
                sent=self._sent,
                finals=dict(self._finals),
                retry_after=self._retry_after,
                answered=self._answered,
                unanswered=self._pending,
            ),
        )

    def _fire(self) -> None:
        """Send every INVITE due by now, then wait for the next one."""
        assert self._loop is not None
        flood = self.flood
        now = time.monotonic()
        while True:
            at = flood.start_at_s + self._sent / flood.rate_per_s
            if at >= flood.stop_at_s:
                self._timer = None
                self._sending = False
                self._check_settled()
                return
            if at > now + EARLY_S:
                break
            self._send_invite()
        self._timer = self._loop.call_at(at, self._fire)

    def _via(self) -> str:
        host, port = self._local
        return f"SIP/2.0/UDP {host}:{port};branch={new_branch()};rport"

    def _send_sip(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, self.spec.server)

    def _send_invite(self) -> None:
        assert self._loop is not None
        host, port = self._local
        server_host, server_port = self.spec.server
        index = self._sent
        call_id = new_call_id(host)
        invite = make_request(
            "INVITE",
            f"sip:{self.spec.user}@{server_host}:{server_port}",
            call_id=call_id,
            from_addr=f"<sip:flood{index}@{host}>;tag={new_tag()}",
            to_addr=f"<sip:{self.spec.user}@{server_host}:{server_port}>",
            cseq=1,
            via=self._via(),
            contact=f"<sip:flood{index}@{host}:{port}>",
            headers=(("User-Agent", _FLOOD_USER_AGENT),),
            body=self._offer,
            content_type="application/sdp",
        )
        entry = _FloodInvite(invite)
        self._invites[call_id] = entry
        self._sent += 1
        self._pending += 1

        def on_status(status: int) -> None:
            self._on_status(entry, status)

        def make_ack() -> bytes:
            assert entry.response is not None
            return non_2xx_ack(entry.invite, entry.response)

        entry.tx = ClientInvite(
            invite.serialize(),
            self._send_sip,
            self._loop,
            False,
            on_response=on_status,
            make_ack=make_ack,
        )

    def on_datagram(self, data: bytes) -> None:
        try:
            message = parse_message(data)
        except SipParseError:
            return
        entry = self._invites.get(message.call_id or "")
        if entry is None:
            return
        if isinstance(message, Request):
            # The server hanging up an answered flood call: say yes.
            if message.method != "ACK":
                with contextlib.suppress(SipParseError, ValueError):
                    self._send_sip(make_response(message, 200).serialize())
            return
        try:
            method = message.cseq().method
        except SipParseError:
            return
        if method != "INVITE":
            return  # the BYE's responses
        entry.response = message
        tx = entry.tx
        if tx is not None and not tx.terminated:
            tx.on_response(message.status)
        elif 200 <= message.status < 300 and entry.ack is not None:
            self._send_sip(entry.ack)  # a retransmitted 2xx: ACK it again

    def _on_status(self, entry: _FloodInvite, status: int) -> None:
        if status < 200 or entry.final:
            return
        entry.final = status
        self._pending -= 1
        key = str(status)
        self._finals[key] = self._finals.get(key, 0) + 1
        response = entry.response
        if status == 503 and response is not None:
            retry_after = (response.headers.get("Retry-After") or "").split(";")[0].strip()
            if retry_after.isdigit():
                self._retry_after += 1
        if 200 <= status < 300 and response is not None:
            self._answered += 1
            self._hang_up(entry, response)
        self._check_settled()

    def _hang_up(self, entry: _FloodInvite, response: Response) -> None:
        """ACK a 2xx (a call the server should have refused) and send BYE at once."""
        assert self._loop is not None
        try:
            dialog = Dialog.as_uac(entry.invite, response)
        except SipParseError:
            return
        entry.ack = dialog.request("ACK", via=self._via()).serialize()
        self._send_sip(entry.ack)
        bye = dialog.request("BYE", via=self._via(), headers=(("User-Agent", _FLOOD_USER_AGENT),))
        ClientNonInvite(
            bye.serialize(), self._send_sip, self._loop, False, on_final=lambda status: None
        )

    def _check_settled(self) -> None:
        if not self._sending and self._pending <= 0:
            self._settled.set()


def worker_main() -> int:
    """The worker process: spec on stdin, result to the file named by ``argv[1]``."""
    spec = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=SipWorkerSpec)
    # A full collection would stall every caller's packets at once; the per-packet
    # garbage is freed by reference counting alone.
    gc.disable()
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    worker = SipFlooder(spec) if spec.flood is not None else SipWorker(spec)
    try:
        import uvloop

        result = uvloop.run(worker.run())
    except ImportError:
        result = asyncio.run(worker.run())
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
    flood_rate_per_s: float = 0.0
    """New INVITEs per second while every call is live (0: no flood).  The server's
    ``max_calls`` should equal :attr:`calls`, so that each is refused."""

    def effective_ramp_s(self) -> float:
        if self.ramp_s is not None:
            return self.ramp_s
        return min(self.duration_s / 3, self.calls / 50)

    def effective_workers(self) -> int:
        return min(self.calls, self.workers or max(1, math.ceil(self.calls / CALLS_PER_WORKER)))

    def flood_window(self, start_at: float) -> tuple[float, float]:
        """``(start, stop)`` of the flood (monotonic s) for calls starting at ``start_at``:
        after the last call's INVITE, before the first call's BYE (:data:`FLOOD_MARGIN_S`)."""
        start = start_at + self.effective_ramp_s() + FLOOD_MARGIN_S
        stop = start_at + self.duration_s - FLOOD_MARGIN_S
        if stop - start < 1.0:
            raise ValueError(
                "a flood needs every call live for over "
                f"{2 * FLOOD_MARGIN_S + 1:.0f} s: make the duration longer than the ramp by that"
            )
        return start, stop


def run_sip_load(plan: SipLoadPlan, audio: tuple[bytes, bytes] | None = None) -> dict[str, Any]:
    """Run one load test and return its summary (see :func:`summarise`)."""
    if plan.calls < 1 or plan.duration_s <= 0:
        raise ValueError("a load test needs at least one call and a positive duration")
    ramp_s = plan.effective_ramp_s()
    if ramp_s >= plan.duration_s:
        raise ValueError("the ramp must be shorter than the duration, or calls never all overlap")
    if plan.flood_rate_per_s < 0:
        raise ValueError("the flood rate must not be negative")
    utterances = list(audio or caller_audio())
    n_workers = plan.effective_workers()
    flooding = plan.flood_rate_per_s > 0
    # Workers (and the flooder) start their interpreters meanwhile.
    start_at = time.monotonic() + 1.0 + 0.3 * (n_workers + flooding)
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
    if flooding:
        flood_start, flood_stop = plan.flood_window(start_at)
        specs.append(
            SipWorkerSpec(
                server=plan.server,
                user=plan.user,
                indices=[],
                start_at_s=start_at,
                ramp_s=0.0,
                duration_s=plan.duration_s,
                utterances=[],
                cpus=plan.generator_cpus,
                seed=plan.seed * 1000 + n_workers,
                flood=FloodSpec(
                    rate_per_s=plan.flood_rate_per_s,
                    start_at_s=flood_start,
                    stop_at_s=flood_stop,
                ),
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
    flood: FloodResult | None = None
    for r in results:
        if r.flood is not None:
            flood = r.flood if flood is None else flood.merge(r.flood)
            continue  # the flooder's CPU is not the callers' cost
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
        summary["server"] = server_summary(
            monitor.samples,
            pid=plan.server_pid,
            calls=plan.calls,
            duration_s=plan.duration_s,
            start_at=start_at,
            ramp_s=ramp_s,
        )
    if server_metrics is not None:
        summary["server_metrics"] = server_metrics
    if plan.flood_rate_per_s > 0:
        if flood is None:
            flood = FloodResult()
            errors["flood_worker_failed"] = 1
        summary["flood"] = {
            "rate_per_s": plan.flood_rate_per_s,
            **msgspec.to_builtins(flood),
            "refused_503": flood.refused_503,
        }
    summary["slo"] = check_slo(summary, plan.slo)
    return summary


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
    flood = summary.get("flood")
    if flood is not None:
        # Every flood INVITE refused with 503 and a Retry-After, none answered or lost.
        checks["flood_refused"] = {
            "value": flood["retry_after"],
            "limit": flood["sent"],
            "ok": 0 < flood["sent"] == flood["refused_503"] == flood["retry_after"],
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
    flood = summary.get("flood")
    flooded = (
        f"flood {flood['sent']} INVITEs at {flood['rate_per_s']:g}/s: "
        f"{flood['retry_after']} x 503 + Retry-After  "
        if flood is not None
        else ""
    )
    return (
        f"{summary['calls']:5d} calls  answered {summary['calls_answered']}  "
        f"setup p99 {summary['setup_ms']['p99']} ms  "
        f"late p50/p99 {summary['outbound_lateness_ms']['p50']}/"
        f"{summary['outbound_lateness_ms']['p99']} ms  lost {summary['packets']['lost']}  "
        f"echo {summary['echo']['exact']}/{summary['echo']['replies']} exact  "
        f"errors {sum(summary['errors'].values())}  "
        f"cpu {server.get('cpu_fraction_at_full_load')}  "
        f"rss/call {server.get('rss_per_call_mb')} MB  {flooded}{verdict}"
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
    frames_in: dict[str, int] = {}
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
            elif s.name == "voxgate_media_frames_in_total" and s.labels.get("transport") == "sip":
                # Caller audio played by ended calls: concealed/silence ones were made up.
                frames_in[s.labels["kind"]] = int(s.value)
            elif s.name == "voxgate_media_clock_skipped_ticks_total":
                out["clock_skipped_ticks"] = int(s.value)
            elif s.name == "voxgate_media_clock_lateness_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == "voxgate_active_calls":
                out["active_calls_at_end"] = int(s.value)
    out["sip_calls_ended"] = ended
    out["refused_calls"] = refused
    out["bad_messages"] = bad
    if frames_in:
        out["media_frames_in"] = frames_in
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


def spawn_sip_server(
    core: int, log_path: Path | None = None, *, max_calls: int = 100_000
) -> SipServer:
    """``voxgate serve`` with the echo agent, SIP on a free port, RTP from
    :data:`RTP_PORTS`, pinned to ``core``; calls beyond ``max_calls`` get 503."""
    config_dir = Path(tempfile.mkdtemp(prefix="voxgate-sipbench-"))
    config = config_dir / "voxgate.toml"
    config.write_text(SERVER_TOML)
    sip_port = free_sip_port()
    try:
        spawned = spawn_server(
            core, 200, log_path, config=config, sip_port=sip_port, max_calls=max_calls
        )
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
        server = spawn_sip_server(server_core, log_path, max_calls=_max_calls(plan, calls))
        try:
            step_plan = dataclasses.replace(
                plan,
                server=server.sip,
                calls=calls,
                generator_cpus=plan.generator_cpus or other_cpus(server_core),
                server_pid=server.pid,
                http_url=server.http_url,
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


def _max_calls(plan: SipLoadPlan, calls: int) -> int:
    """A spawned server's ``max_calls``: the calls exactly when flooding (so the flood
    meets a full server), otherwise no limit that matters."""
    return calls if plan.flood_rate_per_s > 0 else 100_000


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
        **({"flood": summary["flood"]} if "flood" in summary else {}),
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
        # ``--flood-rate`` (INVITEs/s beyond max_calls while all calls are live).
        flood_rate_per_s=getattr(args, "flood_rate", None) or 0.0,
    )
    if plan.flood_rate_per_s < 0:
        raise SystemExit("voxgate bench sip: --flood-rate must not be negative")
    if plan.flood_rate_per_s > 0:
        try:
            plan.flood_window(0.0)
        except ValueError as exc:
            raise SystemExit(f"voxgate bench sip: --flood-rate: {exc}") from None
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
            server = spawn_sip_server(
                args.server_core, args.server_log, max_calls=_max_calls(plan, plan.calls)
            )
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
