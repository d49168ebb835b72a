"""``voxgate bench engine``: run the kernel benchmarks and report them against baselines.

The benchmarks live in ``bench/`` of a source checkout and follow the
conventions in ``bench/conftest.py``: one pytest-benchmark group per kernel,
``extra_info["impl"]`` naming the implementation (``voxgate`` or a baseline)
and ``extra_info["frames"]`` the 20 ms frames one measured call processes.
Figures are medians, in ns per 20 ms frame.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VOXGATE_IMPL = "voxgate"


@dataclass(frozen=True, slots=True)
class Comparison:
    """One kernel against one baseline, both in ns per 20 ms frame."""

    name: str
    voxgate_ns: float
    baseline: str | None
    baseline_ns: float | None

    @property
    def ratio(self) -> float | None:
        """How many times faster voxgate is than the baseline (``None`` without one)."""
        if self.baseline_ns is None or self.voxgate_ns <= 0:
            return None
        return self.baseline_ns / self.voxgate_ns


def find_bench_dir() -> Path:
    """The ``bench/`` folder of the source checkout this package runs from."""
    here = Path(__file__).resolve().parent.parent / "bench"
    if not (here / "conftest.py").is_file():
        raise FileNotFoundError(
            f"no benchmarks at {here}: `voxgate bench` runs from a source checkout"
        )
    return here


def machine_info(pinned_core: int | None) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "pinned_core": pinned_core,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def comparisons_from_pytest_json(report: dict[str, Any]) -> list[Comparison]:
    """Pair every group's ``voxgate`` entry with each baseline entry of the same group."""
    groups: dict[str, dict[str, float]] = {}
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        impl = info.get("impl")
        group = bench.get("group") or bench.get("name")
        if impl is None:
            continue
        frames = int(info.get("frames", 1))
        per_frame_ns = bench["stats"]["median"] * 1e9 / frames
        groups.setdefault(group, {})[impl] = per_frame_ns
    rows: list[Comparison] = []
    for group in sorted(groups):
        impls = groups[group]
        ours = impls.get(VOXGATE_IMPL)
        if ours is None:
            continue
        baselines = sorted((n, ns) for n, ns in impls.items() if n != VOXGATE_IMPL)
        if not baselines:
            rows.append(Comparison(group, ours, None, None))
        for name, ns in baselines:
            rows.append(Comparison(group, ours, name, ns))
    return rows


def format_table(rows: list[Comparison]) -> str:
    """A plain-text table: kernel, voxgate ns/frame, baseline, baseline ns/frame, ratio."""
    header = ("kernel", "voxgate ns/frame", "baseline", "baseline ns/frame", "speed-up")
    body = [
        (
            r.name,
            f"{r.voxgate_ns:,.0f}",
            r.baseline or "-",
            "-" if r.baseline_ns is None else f"{r.baseline_ns:,.0f}",
            "-" if r.ratio is None else f"{r.ratio:.1f}x",
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in body:
        lines.append(
            "  ".join(
                c.ljust(w) if i in (0, 2) else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def run_engine_benchmarks(
    *,
    json_path: Path | None,
    pinned_core: int | None,
    max_time_s: float,
    select: str | None,
) -> int:
    """Run ``bench/`` under pytest-benchmark, print the table, optionally write JSON."""
    bench_dir = find_bench_dir()
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-") as tmp:
        raw = Path(tmp) / "pytest-benchmark.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(bench_dir),
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-only",
            f"--benchmark-json={raw}",
            f"--benchmark-max-time={max_time_s}",
            "--benchmark-min-rounds=20",
            "--benchmark-warmup=on",
        ]
        if select:
            cmd += ["-k", select]

        def pin() -> None:
            if pinned_core is not None:
                os.sched_setaffinity(0, {pinned_core})

        proc = subprocess.run(cmd, cwd=bench_dir.parent, preexec_fn=pin, check=False)
        if proc.returncode != 0:
            print(f"benchmarks failed (pytest exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
        report = json.loads(raw.read_text())
    rows = comparisons_from_pytest_json(report)
    print()
    print(format_table(rows))
    tables = quality_tables(report)
    for title, table_rows in tables:
        print()
        print(title)
        print(format_rows(table_rows))
    if json_path is not None:
        doc = {
            "machine": machine_info(pinned_core),
            "results": [asdict(r) | {"ratio": r.ratio} for r in rows],
            "tables": [{"title": t, "rows": tr} for t, tr in tables],
        }
        json_path.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
        print(f"\nwrote {json_path}")
    return 0


def quality_tables(report: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Non-timing results a benchmark attached as ``extra_info["table_title"/"table_rows"]``.

    Used for quality comparisons measured on the same input, such as the jitter
    buffer's frames lost and stall time per lost packet against aiortc's.
    """
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        title, rows = info.get("table_title"), info.get("table_rows")
        if title and rows and all(t != title for t, _ in tables):
            tables.append((str(title), list(rows)))
    return tables


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of dict rows sharing the first row's keys."""
    keys = list(rows[0])
    cells = [[_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)
