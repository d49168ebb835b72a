"""The media clock: drift-free deadlines, catch-up and skipping, and the asyncio driver."""

from __future__ import annotations

import asyncio
import random

import pytest

from server.mediaclock import MediaClock, TickSchedule


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
        # Wake up at the next deadline plus 0-30 ms of scheduling lateness.
        now = max(now, schedule.deadline_s(schedule.next_tick)) + rng.uniform(0, 0.030)
        first, count, skipped = schedule.due(now)
        assert skipped == 0  # 30 ms late never exceeds the catch-up window
        ran.extend(range(first, first + count))
    # Every tick ran exactly once, in order, and the tick count matches wall time.
    assert ran == list(range(1, len(ran) + 1))
    assert abs(ran[-1] - (now - start) / 0.020) <= 1


def test_long_stall_skips_beyond_catchup_and_counts_it() -> None:
    schedule = TickSchedule(start_s=0.0, period_ms=20, max_catchup=3)
    assert schedule.due(0.019) == (1, 0, 0)
    assert schedule.due(0.020) == (1, 1, 0)
    first, count, skipped = schedule.due(0.2005)  # ticks 2..10 due
    assert (first, count, skipped) == (8, 3, 6)
    assert schedule.next_tick == 11


@pytest.mark.parametrize(("period_ms", "catchup"), [(0, 5), (-20, 5), (20, 0)])
def test_bad_parameters(period_ms: int, catchup: int) -> None:
    with pytest.raises(ValueError):
        TickSchedule(0.0, period_ms, catchup)


def test_clock_runs_handler_in_order_and_survives_errors() -> None:
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

    clock = asyncio.run(main())
    ticks = [t for t, _ in seen]
    assert ticks == list(range(1, len(ticks) + 1))
    assert all(ms == t * 5 for t, ms in seen)
    assert clock.stats.ticks == len(seen)
    assert not clock.running
