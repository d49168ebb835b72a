"""The load generators' send schedule: one 20 ms period cut into :data:`SLOTS` phases.

Each simulated caller belongs to one slot, and a slot's callers are served when
the slot comes due, so the server sees packets spread over the period as from
real carriers, not in one burst.  Deadlines are computed from the slot number
(``start_at_s + n * SLOT_S``), never accumulated.  How late each slot ran is
the generator's own lateness; slots more than a whole period late are skipped
and counted (a run where that happens is not a measurement of the server).
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable
from typing import Final, Generic, TypeVar

SLOTS: Final = 10
PERIOD_S: Final = 0.020
SLOT_S: Final = PERIOD_S / SLOTS
EARLY_S: Final = 0.001
"""uvloop's timers have millisecond resolution and may fire up to 1 ms early."""

T = TypeVar("T")


class SlotSchedule(Generic[T]):
    """Calls ``serve(members, now)`` for each slot as it comes due, from ``start_at_s``
    (:func:`time.monotonic`, which the event loop's clock shares) until :meth:`stop`."""

    def __init__(self, start_at_s: float, serve: Callable[[list[T], float], None]) -> None:
        self.start_at_s = start_at_s
        self.slots: list[list[T]] = [[] for _ in range(SLOTS)]
        """The members of each slot; add and remove freely between runs."""
        self.lateness_ms = array("d")
        """How late each slot run started (ms), in order."""
        self.skipped_runs = 0
        """Slot runs skipped because the loop fell more than a whole period behind."""
        self._serve = serve
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None

    def slot_after(self, now: float) -> int:
        """The slot after the one running at ``now``: a new member joins there."""
        return (int((now - self.start_at_s) / SLOT_S) + 1) % SLOTS

    def start(self) -> None:
        """Serve the slots on the running event loop."""
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        deadline = self.start_at_s + self._next * SLOT_S
        self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        now = time.monotonic()
        start = self.start_at_s
        last_due = int((now + EARLY_S - start) / SLOT_S)
        first = self._next
        behind = last_due - first + 1 - SLOTS
        if behind > 0:  # more than a whole period late: those slots' packets are lost
            self.skipped_runs += behind
            first += behind
        for index in range(first, last_due + 1):
            self.lateness_ms.append(max(0.0, now - (start + index * SLOT_S)) * 1000)
            self._serve(self.slots[index % SLOTS], now)
        self._next = max(self._next, last_due + 1)
        self._arm()
