"""One load-generator process: many simulated Twilio callers on one event loop.

The parent (:mod:`server.loadgen.runner`) starts ``python -m
server.loadgen.worker RESULT_FILE``, writes a msgpack :class:`WorkerSpec` to its
stdin and reads a msgpack :class:`WorkerResult` from ``RESULT_FILE`` once it
exits (not from a pipe: the event loop may leave stdout non-blocking, which
cuts a large write short).

Callers send in real time from one deadline-driven schedule for the whole
process (:class:`~server.loadgen.slots.SlotSchedule`): each call is served in
one of the 20 ms period's slots.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from array import array
from dataclasses import dataclass

import msgspec

from server.loadgen import wsclient
from server.loadgen.scenario import Caller, CallMetrics, Clips, Phase, Timing
from server.loadgen.slots import SlotSchedule

CLOSE_GRACE_S = 5.0
"""How long after the last call's end the worker waits for sockets to close."""


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    call_sids: list[str]
    start_at_s: float
    """:func:`time.monotonic` when the first call connects (the clock is system-wide)."""
    ramp_s: float
    """The calls' connects are spread evenly over this many seconds."""
    duration_s: float
    utterance_a: bytes
    utterance_b: bytes
    """μ-law 8 kHz."""
    timing: Timing = Timing()
    cpus: list[int] | None = None
    seed: int = 0


class MetricsWire(msgspec.Struct, frozen=True, kw_only=True):
    """:class:`CallMetrics` on the pipe: sample arrays as float64 bytes."""

    turn_ms: bytes
    clear_ms: bytes
    yield_ms: bytes
    lateness_ms: bytes
    gap_ms: bytes
    underruns: int
    frames_sent: int
    frames_received: int
    turns: int
    barge_ins: int
    errors: dict[str, int]

    @classmethod
    def of(cls, m: CallMetrics) -> MetricsWire:
        return cls(
            turn_ms=m.turn_ms.tobytes(),
            clear_ms=m.clear_ms.tobytes(),
            yield_ms=m.yield_ms.tobytes(),
            lateness_ms=m.lateness_ms.tobytes(),
            gap_ms=m.gap_ms.tobytes(),
            underruns=m.underruns,
            frames_sent=m.frames_sent,
            frames_received=m.frames_received,
            turns=m.turns,
            barge_ins=m.barge_ins,
            errors=m.errors,
        )

    def metrics(self) -> CallMetrics:
        def samples(data: bytes) -> array[float]:
            out = array("d")
            out.frombytes(data)
            return out

        return CallMetrics(
            turn_ms=samples(self.turn_ms),
            clear_ms=samples(self.clear_ms),
            yield_ms=samples(self.yield_ms),
            lateness_ms=samples(self.lateness_ms),
            gap_ms=samples(self.gap_ms),
            underruns=self.underruns,
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            turns=self.turns,
            barge_ins=self.barge_ins,
            errors=dict(self.errors),
        )


class WorkerResult(msgspec.Struct, frozen=True, kw_only=True):
    metrics: MetricsWire
    calls_connected: int
    calls_completed: int
    """Calls that ran their whole duration and sent ``stop``."""
    slot_lateness_ms: bytes
    """float64 per slot run: how late the generator served its callers."""
    skipped_slot_runs: int
    """Slot runs (each one frame for its calls) lost because the generator fell a period behind."""
    cpu_s: float


@dataclass(slots=True)
class _Live:
    caller: Caller | None = None
    client: wsclient.WebSocketClient | None = None
    done: bool = False


class Worker:
    """The callers of one process, their schedule and their merged metrics."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.clips = Clips.from_ulaw(spec.utterance_a, spec.utterance_b)
        self.metrics = CallMetrics()
        self.schedule: SlotSchedule[_Live] = SlotSchedule(spec.start_at_s, self._serve)
        self.connected = 0
        self.completed = 0
        self._live: list[_Live] = []
        self._rng = random.Random(spec.seed)
        self._all_done = asyncio.Event()

    async def run(self) -> WorkerResult:
        loop = asyncio.get_running_loop()
        spec = self.spec
        n = len(spec.call_sids)
        cpu0 = time.process_time()
        connects: list[asyncio.Task[None]] = []
        for i, sid in enumerate(spec.call_sids):
            live = _Live()
            self._live.append(live)
            at = spec.start_at_s + (spec.ramp_s * i / n if n else 0.0)
            connects.append(loop.create_task(self._connect(live, sid, at)))
        self.schedule.start()
        deadline = spec.start_at_s + spec.ramp_s + spec.duration_s + CLOSE_GRACE_S
        try:
            await asyncio.wait_for(self._all_done.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            for live in self._live:
                if not live.done:
                    self.metrics.error("not_closed")
                    if live.client is not None:
                        live.client.abort()
        self.schedule.stop()
        for task in connects:
            task.cancel()
        await asyncio.gather(*connects, return_exceptions=True)
        return WorkerResult(
            metrics=MetricsWire.of(self.metrics),
            calls_connected=self.connected,
            calls_completed=self.completed,
            slot_lateness_ms=self.schedule.lateness_ms.tobytes(),
            skipped_slot_runs=self.schedule.skipped_runs,
            cpu_s=time.process_time() - cpu0,
        )

    # -- calls --------------------------------------------------------------------------

    async def _connect(self, live: _Live, call_sid: str, at_s: float) -> None:
        await asyncio.sleep(max(0.0, at_s - time.monotonic()))
        caller_metrics = CallMetrics()

        def on_open() -> None:
            now = time.monotonic()
            self.connected += 1
            caller = Caller(
                call_sid,
                self.clips,
                self.spec.timing,
                start_s=now,
                duration_s=self.spec.duration_s,
                metrics=caller_metrics,
            )
            live.caller = caller
            assert live.client is not None
            for message in caller.opening():
                live.client.send_text(message)
            # Serve the call in the slot after the current one: spread, and one per period.
            self.schedule.slots[self.schedule.slot_after(now)].append(live)

        def on_text(text: str) -> None:
            caller = live.caller
            client = live.client
            if caller is None or client is None:
                return
            for message in caller.on_message(text, time.monotonic()):
                client.send_text(message)

        def on_close(code: int, reason: str) -> None:
            caller = live.caller
            if caller is None:
                caller_metrics.error(f"refused_{code}" if code >= 400 else "handshake_failed")
            elif caller.phase is not Phase.STOPPED:
                caller_metrics.error(f"closed_early_{code}")
            else:
                self.completed += 1
            self._finish(live, caller_metrics)

        live.client = wsclient.WebSocketClient(
            self.spec.url, on_open, on_text, on_close, random.Random(self._rng.getrandbits(64))
        )
        try:
            await wsclient.open_connection(live.client)
        except OSError:
            caller_metrics.error("connect_failed")
            self._finish(live, caller_metrics)

    def _finish(self, live: _Live, caller_metrics: CallMetrics) -> None:
        if live.done:
            return
        live.done = True
        self.metrics.merge(caller_metrics)
        for slot in self.schedule.slots:
            if live in slot:
                slot.remove(live)
        if all(other.done for other in self._live):
            self._all_done.set()

    # -- the schedule -------------------------------------------------------------------

    def _serve(self, slot: list[_Live], now: float) -> None:
        for live in list(slot):
            caller, client = live.caller, live.client
            if caller is None or client is None:
                continue
            for message in caller.tick(now):
                client.send_text(message)
            if caller.phase is Phase.STOPPED:
                slot.remove(live)
                client.close()


def main() -> int:
    spec = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=WorkerSpec)
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    try:
        import uvloop

        result = uvloop.run(Worker(spec).run())
    except ImportError:
        result = asyncio.run(Worker(spec).run())
    with open(sys.argv[1], "wb") as out:
        out.write(msgspec.msgpack.encode(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
