"""The `voxgate bench engine` report: pairing, table and JSON shape."""

from __future__ import annotations

from typing import Any

from server.benchreport import (
    comparisons_from_pytest_json,
    format_rows,
    format_table,
    quality_tables,
)
from server.cli import main


def _bench(group: str, impl: str, median_s: float, frames: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "group": group,
        "name": f"test_{group}[{impl}]",
        "stats": {"median": median_s},
        "extra_info": {"impl": impl, "frames": frames, **extra},
    }


def test_pairs_voxgate_with_every_baseline_per_frame() -> None:
    report = {
        "benchmarks": [
            _bench("g711", "voxgate", 200e-9),
            _bench("g711", "numpy", 2e-6),
            _bench("g711", "python_reference", 40e-6),
            _bench("jitter", "voxgate", 50e-6, frames=100),
            _bench("jitter", "aiortc", 300e-6, frames=100),
            _bench("orphan", "numpy", 1e-6),
        ]
    }
    rows = comparisons_from_pytest_json(report)
    assert [(r.name, r.baseline) for r in rows] == [
        ("g711", "numpy"),
        ("g711", "python_reference"),
        ("jitter", "aiortc"),
    ]
    assert rows[0].voxgate_ns == 200
    assert rows[0].ratio == 10
    assert rows[2].voxgate_ns == 500  # 50 us over 100 frames
    assert rows[2].ratio == 6
    table = format_table(rows)
    assert "10.0x" in table and "python_reference" in table


def test_group_without_baseline_is_reported_alone() -> None:
    rows = comparisons_from_pytest_json({"benchmarks": [_bench("turn_tick", "voxgate", 1e-6)]})
    assert len(rows) == 1 and rows[0].baseline is None and rows[0].ratio is None
    assert "turn_tick" in format_table(rows)


def test_quality_tables_are_collected_once() -> None:
    rows = [{"trace": "loss1", "impl": "voxgate", "frames_lost": 0}]
    report = {
        "benchmarks": [
            _bench("jb", "voxgate", 1e-6, table_title="jitter quality", table_rows=rows),
            _bench("jb", "aiortc", 1e-6, table_title="jitter quality", table_rows=rows),
        ]
    }
    tables = quality_tables(report)
    assert tables == [("jitter quality", rows)]
    assert "frames_lost" in format_rows(rows)


def test_serve_refuses_bad_configuration() -> None:
    assert main(["serve", "--port", "70000"]) == 2
