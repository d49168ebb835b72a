"""Measuring what hot-path calls allocate, with tracemalloc (bytes, not time)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any


def traced_growth(fn: Callable[..., object], *args: Any) -> tuple[int, int]:
    """(retained, peak) bytes traced by tracemalloc over 100 calls of ``fn(*args)``."""
    fn(*args)  # warm up
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(100):
            fn(*args)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before, peak - before


def peak_growth(run: Callable[[int], None], iterations: int = 10_000) -> int:
    """Peak bytes traced while ``run(iterations)`` loops, after ``run(10)`` warms up."""
    run(10)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        run(iterations)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base
