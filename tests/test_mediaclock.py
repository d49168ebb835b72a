"""The media clock: drift-free deadlines, catch-up and skipping, and the asyncio driver.

The driver tests run on a real loop (asyncio's and uvloop's, which order timers,
ready callbacks and I/O differently) and assert orders and counts, never durations.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from server.mediaclock import MediaClock, TickSchedule

T = TypeVar("T")


def _run_asyncio(main: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(main)


def _run_uvloop(main: Coroutine[Any, Any, T]) -> T:
    uvloop = pytest.importorskip("uvloop")
    result: T = uvloop.run(main)
    return result


LOOPS = pytest.mark.parametrize("run", [_run_asyncio, _run_uvloop], ids=["asyncio", "uvloop"])
Runner = Callable[[Coroutine[Any, Any, Any]], Any]


# ------------------------------------------------------------------- the schedule


def test_deadlines_are_computed_not_accumulated() -> None:
    schedule = TickSchedule(start_s=1000.0, period_ms=20)
    hours = 3
    ticks = hours * 3600 * 50
    assert schedule.deadline_s(ticks) == pytest.approx(1000.0 + hours * 3600, abs=1e-9)


def test_no_drift_over_simulated_hours_with_late_wakeups() -> None:
    rng = random.Random(7)
    start = 12345.678
    schedule = TickSchedule(start_s=start, period_ms=20, max_catchup=5)
    ran: list[int] = []
    now = start
    end = start + 2 * 3600
    while now < end:
        # Wake up at the next deadline plus 0-30 ms of scheduling lateness, then
        # take every due tick (each catch-up tick a little later than the last).
        now = max(now, schedule.deadline_s(schedule.next_tick)) + rng.uniform(0, 0.030)
        while True:
            tick, skipped = schedule.take(now)
            assert skipped == 0  # 30 ms late never exceeds the catch-up window
            if tick is None:
                break
            ran.append(tick)
            now += rng.uniform(0, 0.0005)
    # Every tick ran exactly once, in order, and the tick count matches wall time.
    assert ran == list(range(1, len(ran) + 1))
    assert abs(ran[-1] - (now - start) / 0.020) <= 1


def test_long_stall_skips_beyond_catchup_and_counts_it() -> None:
    schedule = TickSchedule(start_s=0.0, period_ms=20, max_catchup=3)
    assert schedule.take(0.019) == (None, 0)
    assert schedule.take(0.020) == (1, 0)
    assert schedule.behind(0.2005) == 9  # ticks 2..10 due
    assert schedule.take(0.2005) == (8, 6)  # 8, 9 and 10 are owed, 2..7 skipped
    assert schedule.take(0.2005) == (9, 0)
    assert schedule.take(0.2005) == (10, 0)
    assert schedule.take(0.2005) == (None, 0)
    assert schedule.next_tick == 11


def test_never_more_than_max_catchup_ticks_owed_while_catching_up() -> None:
    schedule = TickSchedule(start_s=0.0, period_ms=20, max_catchup=3)
    assert schedule.take(0.2005) == (8, 7)  # ticks 1..10 due
    # Catching up took 40 ms: ticks 11 and 12 came due, so 9..12 are owed; 9 goes.
    assert schedule.take(0.2405) == (10, 1)
    assert schedule.behind(0.2405) == 2
    assert [schedule.take(0.2405) for _ in range(3)] == [(11, 0), (12, 0), (None, 0)]


def test_a_tick_on_its_deadline_is_due_despite_float_rounding() -> None:
    for start in (0.0, 0.1, 12345.678, 987654.321):
        schedule = TickSchedule(start_s=start, period_ms=20)
        for tick in range(1, 2000):
            assert schedule.take(schedule.deadline_s(tick)) == (tick, 0)


@pytest.mark.parametrize(("period_ms", "catchup"), [(0, 5), (-20, 5), (20, 0)])
def test_bad_parameters(period_ms: int, catchup: int) -> None:
    with pytest.raises(ValueError):
        TickSchedule(0.0, period_ms, catchup)


# --------------------------------------------------------------------- the driver


@LOOPS
def test_clock_runs_handler_in_order_and_survives_errors(run: Runner) -> None:
    seen: list[tuple[int, int]] = []

    def handler(tick: int, media_ms: int) -> None:
        seen.append((tick, media_ms))
        if tick == 2:
            raise RuntimeError("a bad call must not stop the clock")

    async def main() -> MediaClock:
        clock = MediaClock(handler, period_ms=5)
        clock.start()
        while len(seen) < 6:
            await asyncio.sleep(0.005)
        clock.stop()
        return clock

    clock = run(main())
    ticks = [t for t, _ in seen]
    assert ticks == list(range(1, len(ticks) + 1))
    assert all(ms == t * 5 for t, ms in seen)
    assert clock.stats.ticks == len(seen)
    assert clock.stats.late_ms_max >= clock.stats.late_ms_last
    assert not clock.running


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.log.append(data.decode())


@LOOPS
def test_io_during_a_stall_is_read_between_catch_up_ticks(run: Runner) -> None:
    """Tick 1 stalls the loop for 100 ms while datagrams arrive: the catch-up ticks
    that follow must each let the loop read its sockets first."""
    log: list[str] = []
    stall_s = 0.100

    async def main() -> MediaClock:
        loop = asyncio.get_running_loop()
        stalled, _ = await loop.create_datagram_endpoint(
            lambda: _Inbox(log), local_addr=("127.0.0.1", 0)
        )
        probe, _ = await loop.create_datagram_endpoint(
            lambda: _Inbox(log), local_addr=("127.0.0.1", 0)
        )
        stalled_addr = stalled.get_extra_info("sockname")
        probe_addr = probe.get_extra_info("sockname")
        done = loop.create_future()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:

            def handler(tick: int, media_ms: int) -> None:
                log.append(f"t{tick}")
                if tick == 1:
                    # Three packets arrive while the loop is stuck in this tick.
                    for n in range(3):
                        tx.sendto(f"s{n}".encode(), stalled_addr)
                    time.sleep(stall_s)
                elif tick <= 6:
                    # Arrives during a catch-up tick: must be read before the next one.
                    tx.sendto(f"x{tick}".encode(), probe_addr)
                elif not done.done():
                    done.set_result(None)

            clock = MediaClock(handler, period_ms=20, max_catchup=10)
            clock.start()
            await asyncio.wait_for(done, 10)
            clock.stop()
        stalled.close()
        probe.close()
        return clock

    clock = run(main())
    ticks = [int(e[1:]) for e in log if e[0] == "t"]
    assert ticks == list(range(1, len(ticks) + 1))
    assert clock.stats.skipped == 0
    # Ticks 2..5 were due when tick 1 returned (>= 120 ms after the start), so they
    # ran as catch-up ticks, one per loop iteration with reads in between.
    assert clock.stats.catchup >= 4
    for k in (2, 3, 4):
        assert log.index(f"x{k}") < log.index(f"t{k + 1}"), log
    assert all(log.index(f"s{n}") < log.index("t5") for n in range(3)), log


@LOOPS
def test_a_long_stall_skips_the_oldest_ticks_and_counts_them(run: Runner) -> None:
    seen: list[int] = []

    async def main() -> MediaClock:
        done = asyncio.get_running_loop().create_future()

        def handler(tick: int, media_ms: int) -> None:
            seen.append(tick)
            if tick == 1:
                time.sleep(0.215)  # ticks 2..11 come due: 10 owed, 3 may run
            elif len(seen) >= 6 and not done.done():
                done.set_result(None)

        clock = MediaClock(handler, period_ms=20, max_catchup=3)
        clock.start()
        await asyncio.wait_for(done, 10)
        clock.stop()
        return clock

    clock = run(main())
    resumed = seen[1]
    assert resumed >= 9  # at least ticks 2..8 skipped
    assert seen == [1, *range(resumed, resumed + len(seen) - 1)]
    assert clock.stats.skipped == resumed - 2
    assert clock.stats.ticks == len(seen)
    assert clock.stats.late_ms_max >= 39.0  # the first catch-up tick was 2 periods late


@LOOPS
def test_stop_from_inside_the_handler_stops_the_clock(run: Runner) -> None:
    seen: list[int] = []

    async def main() -> MediaClock:
        clock: MediaClock

        def handler(tick: int, media_ms: int) -> None:
            seen.append(tick)
            if tick == 1:
                time.sleep(0.05)  # the next ticks are due: the clock would yield
            if tick == 2:
                clock.stop()

        clock = MediaClock(handler, period_ms=10)
        clock.start()
        await asyncio.sleep(0.2)
        return clock

    clock = run(main())
    assert seen == [1, 2]
    assert not clock.running


def test_the_registry_exports_skipped_ticks_once_each() -> None:
    """``voxgate_media_clock_skipped_ticks`` grows by what the clock skipped, never twice."""
    from server.app import CallRegistry
    from server.config import Config
    from server.metrics import Metrics

    async def main() -> list[float]:
        registry = CallRegistry(Config(), Metrics())
        counted = []
        for skipped in (0, 3, 3, 5):
            registry.clock.stats.skipped = skipped
            registry._tick(1, 20)
            counted.append(registry.metrics.clock_skipped._value.get())
        return counted

    assert _run_asyncio(main()) == [0, 3, 3, 5]
