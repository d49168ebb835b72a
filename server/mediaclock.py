"""One media clock per process: a drift-free 20 ms tick that serves every call.

:class:`TickSchedule` is the pure arithmetic (deadline of tick ``k`` is
``start + k * period``, computed from ``k``, never accumulated, so rounding
never drifts); :class:`MediaClock` drives it from the asyncio loop with one
timer per tick for the whole process, not one per call.

When the loop is late, the clock runs every tick that came due, in order, up to
``max_catchup`` of them, so far ends keep receiving audio at real-time rate;
ticks beyond that are skipped and counted (the far end would hear a gap
either way, and bursting minutes of audio helps nobody).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

TickHandler = Callable[[int, int], None]
"""Called as ``handler(tick_index, media_ms)`` once per tick, in order."""


@dataclass(slots=True)
class ClockStats:
    """Counters for metrics: ticks run and skipped, and how late ticks ran (ms)."""

    ticks: int = 0
    skipped: int = 0
    late_ms_max: float = 0.0
    late_ms_last: float = 0.0


class TickSchedule:
    """Which ticks are due at a given loop time (seconds), for a period in ms."""

    __slots__ = ("_next", "_period_s", "_start_s", "max_catchup", "period_ms")

    def __init__(self, start_s: float, period_ms: int = 20, max_catchup: int = 5) -> None:
        if period_ms <= 0:
            raise ValueError(f"period_ms must be positive, got {period_ms}")
        if max_catchup < 1:
            raise ValueError(f"max_catchup must be >= 1, got {max_catchup}")
        self.period_ms = period_ms
        self.max_catchup = max_catchup
        self._period_s = period_ms / 1000
        self._start_s = start_s
        self._next = 1  # tick 0 is the start itself

    def deadline_s(self, tick: int) -> float:
        """Loop time at which ``tick`` is due."""
        return self._start_s + tick * self._period_s

    @property
    def next_tick(self) -> int:
        return self._next

    def due(self, now_s: float) -> tuple[int, int, int]:
        """Ticks to run now: ``(first, count, skipped)``; advances past them.

        ``count`` is at most ``max_catchup``; older due ticks are ``skipped``.
        """
        if now_s < self.deadline_s(self._next):
            return self._next, 0, 0
        last_due = int((now_s - self._start_s) / self._period_s)
        # Guard the float division against landing one tick early or late.
        while self.deadline_s(last_due) > now_s:
            last_due -= 1
        while self.deadline_s(last_due + 1) <= now_s:
            last_due += 1
        n_due = last_due - self._next + 1
        skipped = max(0, n_due - self.max_catchup)
        first = self._next + skipped
        count = n_due - skipped
        self._next = last_due + 1
        return first, count, skipped


class MediaClock:
    """Runs ``handler(tick, media_ms)`` every ``period_ms`` on the running loop.

    ``media_ms`` is ``tick * period_ms``: the clock's own media time, the same
    for every call served in that tick.  A handler must not block; an exception
    in it is logged and the clock goes on.
    """

    def __init__(self, handler: TickHandler, period_ms: int = 20, max_catchup: int = 5) -> None:
        self._handler = handler
        self._period_ms = period_ms
        self._max_catchup = max_catchup
        self._schedule: TickSchedule | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = ClockStats()

    @property
    def running(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        """Start ticking on the running event loop."""
        if self._timer is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._schedule = TickSchedule(self._loop.time(), self._period_ms, self._max_catchup)
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        assert self._loop is not None and self._schedule is not None
        deadline = self._schedule.deadline_s(self._schedule.next_tick)
        self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None and self._schedule is not None
        now_s = self._loop.time()
        first, count, skipped = self._schedule.due(now_s)
        stats = self.stats
        if skipped:
            stats.skipped += skipped
            log.warning("media clock fell behind: skipped %d ticks", skipped)
        for tick in range(first, first + count):
            late_ms = (now_s - self._schedule.deadline_s(tick)) * 1000
            stats.late_ms_last = late_ms
            stats.late_ms_max = max(stats.late_ms_max, late_ms)
            stats.ticks += 1
            try:
                self._handler(tick, tick * self._period_ms)
            except Exception:
                log.exception("media clock handler failed at tick %d", tick)
        self._arm()
