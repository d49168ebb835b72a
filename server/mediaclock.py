"""One media clock per process: a drift-free 20 ms tick that serves every call.

:class:`TickSchedule` is the pure arithmetic (deadline of tick ``k`` is
``start + k * period``, computed from ``k``, never accumulated, so rounding
never drifts); :class:`MediaClock` drives it from the asyncio loop with one
timer per tick for the whole process, not one per call.

When the loop is late, the clock runs the ticks that came due in order, but
one per event-loop iteration: between two ticks the loop always polls its
sockets, so RTP that arrived during a stall reaches the jitter buffers before
the catch-up ticks pull them.  At most ``max_catchup`` ticks are ever owed:
older ones are skipped and counted (the far end would hear a gap either way,
and bursting minutes of audio helps nobody).
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
    """Counters for metrics.

    ``late_ms_*`` is how long after its deadline a tick's handler was called
    (ms; the last tick's and the largest so far).  ``catchup`` counts ticks
    that were already due when the previous one finished, so they ran after
    a yield to the loop rather than on their own timer.
    """

    ticks: int = 0
    skipped: int = 0
    catchup: int = 0
    late_ms_max: float = 0.0
    late_ms_last: float = 0.0


class TickSchedule:
    """Which tick is due at a given loop time (seconds), for a period in ms."""

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
        """The tick :meth:`take` hands out next (unless it has to skip)."""
        return self._next

    def behind(self, now_s: float) -> int:
        """How many ticks are due at ``now_s`` and not taken yet (0 when on time)."""
        if now_s < self.deadline_s(self._next):
            return 0
        last_due = int((now_s - self._start_s) / self._period_s)
        # Guard the float division against landing one tick early or late.
        while self.deadline_s(last_due) > now_s:
            last_due -= 1
        while self.deadline_s(last_due + 1) <= now_s:
            last_due += 1
        return last_due - self._next + 1

    def take(self, now_s: float) -> tuple[int | None, int]:
        """The oldest due tick, to run now, and how many older ones were skipped.

        Returns ``(None, 0)`` when no tick is due yet.  When more than
        ``max_catchup`` ticks are owed, the oldest are skipped so that the one
        returned and the ones after it number ``max_catchup``.
        """
        owed = self.behind(now_s)
        if owed == 0:
            return None, 0
        skipped = max(0, owed - self.max_catchup)
        tick = self._next + skipped
        self._next = tick + 1
        return tick, skipped


class MediaClock:
    """Runs ``handler(tick, media_ms)`` every ``period_ms`` on the running loop.

    ``media_ms`` is ``tick * period_ms``: the clock's own media time, the same
    for every call served in that tick.  A handler must not block; an exception
    in it is logged and the clock goes on.

    Ticks run in order, one per callback.  A tick that is due when the previous
    one finishes (the loop was late) runs after two ``call_soon`` hops rather
    than at once: the loop polls its selector in between (one hop may not be
    enough: uvloop runs callbacks queued from a timer before its next poll).
    """

    def __init__(self, handler: TickHandler, period_ms: int = 20, max_catchup: int = 5) -> None:
        self._handler = handler
        self._period_ms = period_ms
        self._max_catchup = max_catchup
        self._schedule: TickSchedule | None = None
        self._pending: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = ClockStats()

    @property
    def running(self) -> bool:
        return self._schedule is not None

    def start(self) -> None:
        """Start ticking on the running event loop."""
        if self._schedule is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        schedule = TickSchedule(loop.time(), self._period_ms, self._max_catchup)
        self._schedule = schedule
        self._pending = loop.call_at(schedule.deadline_s(schedule.next_tick), self._on_time)

    def stop(self) -> None:
        """Stop ticking (also from inside the handler); :meth:`start` begins afresh."""
        self._schedule = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _on_time(self) -> None:
        """Run the oldest due tick, then wait for the next one (or yield, if already due)."""
        loop, schedule = self._loop, self._schedule
        if loop is None or schedule is None:
            return
        self._pending = None
        tick, skipped = schedule.take(loop.time())
        stats = self.stats
        if skipped:
            stats.skipped += skipped
            log.warning("media clock fell behind: skipped %d ticks", skipped)
        if tick is not None:
            late_ms = (loop.time() - schedule.deadline_s(tick)) * 1000
            stats.late_ms_last = late_ms
            stats.late_ms_max = max(stats.late_ms_max, late_ms)
            stats.ticks += 1
            try:
                self._handler(tick, tick * self._period_ms)
            except Exception:
                log.exception("media clock handler failed at tick %d", tick)
            if self._schedule is not schedule:
                return  # stopped (or restarted) by the handler
        deadline_s = schedule.deadline_s(schedule.next_tick)
        if tick is not None and deadline_s <= loop.time():
            stats.catchup += 1
            self._pending = loop.call_soon(self._yield_again)
        else:
            # Not due yet, or a timer that fired early (uvloop timers are 1 ms coarse).
            self._pending = loop.call_at(deadline_s, self._on_time)

    def _yield_again(self) -> None:
        """The second hop before a catch-up tick: by now the loop has polled for I/O."""
        loop = self._loop
        if loop is None or self._schedule is None:
            return
        self._pending = loop.call_soon(self._on_time)
