"""Benchmark conventions shared by every ``bench/bench_*.py`` file.

A benchmark belongs to a *group* named after the kernel it measures
(``@pytest.mark.benchmark(group="g711_ulaw_decode")``); inside a group exactly
one entry has ``impl == "voxgate"`` and the others are baselines (``python_reference``,
``numpy``, ``pyav``, ``aiortc``, ...).  ``frames`` says how many 20 ms frames one
call of the measured function processes, so reports can show ns per frame.
``voxgate bench engine`` reads these fields from pytest-benchmark's JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pytest


class Measure(Protocol):
    def __call__(self, impl: str, fn: Callable[..., Any], *args: Any, frames: int = 1) -> Any: ...


@pytest.fixture
def measure(benchmark: Any) -> Measure:
    """Run ``fn(*args)`` under pytest-benchmark, labelled with ``impl`` and ``frames``."""

    def run(impl: str, fn: Callable[..., Any], *args: Any, frames: int = 1) -> Any:
        if frames < 1:
            raise ValueError("frames must be >= 1")
        benchmark.extra_info["impl"] = impl
        benchmark.extra_info["frames"] = frames
        return benchmark(fn, *args)

    return run
