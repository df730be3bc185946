"""Helpers shared by the benchmarks: machine info, timing, tables, result files.

Example::

    times = timeit(lambda: sum(range(1000)), repeats=5, warmup=1)
    path = write_results("b0_demo", {"median_s": sorted(times)[2], **machine_info()})
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_VERSIONED = ("tensorflow", "keras", "numpy")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Where and when a figure was measured; cheap (imports no framework)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        # Shared machines: a busy neighbour explains a slow run.
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **{package: _version(package) for package in _VERSIONED},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def sample_sd(values) -> float:
    """The sample standard deviation over seeds; 0.0 for a single run.

    Example:
        >>> sample_sd([70.0, 72.0]), sample_sd([70.0])
        (1.4142135623730951, 0.0)
    """
    return statistics.stdev(values) if len(values) > 1 else 0.0


def write_results(name: str, figures: dict) -> Path:
    """Write `figures` to results/<name>.json atomically, so readers never see half a file."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    with tempfile.NamedTemporaryFile("w", dir=RESULTS_DIR, prefix=f"{name}.",
                                     suffix=".tmp", delete=False) as tmp:
        json.dump(figures, tmp, indent=2, sort_keys=False)
        tmp.write("\n")
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)
    return path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    """Print dicts as an aligned text table; columns in first-seen key order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    print("  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))


def timeit(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Seconds per call of `fn` for `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def interleaved_rates(runs: dict[str, Callable[[], object]], images: int,
                      repeats: int) -> dict[str, float]:
    """Median images/s of each run, the runs taking turns so they share the load.

    Example::

        interleaved_rates({"a": fit_a, "b": fit_b}, images=600, repeats=3)
        # -> {'a': 190.2, 'b': 218.4}
    """
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name] += timeit(run, repeats=1, warmup=0)
    return {name: images / statistics.median(times) for name, times in seconds.items()}


def report_ratio(name: str, figures: dict, quick: bool, goal: float, rows: list[dict]) -> dict:
    """Stamp a ratio benchmark's figures (goal, met, machine), write them and print a table.

    `figures` must hold "ratio" (tltk over the reference, higher is better).
    """
    ratio = figures["ratio"]  # None when tltk never reached a time-to-target goal
    figures.update(benchmark=name, quick=quick, goal_ratio=goal,
                   met=ratio is not None and ratio >= goal, machine=machine_info())
    path = write_results(name, figures)
    print_table(rows)
    print(f"ratio {figures['ratio']} (goal {goal}, met {figures['met']})")
    print(f"written {path}")
    return figures
