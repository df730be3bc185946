"""Run the benchmarks by hand: `python -m benchmarks [--quick] [b1 b2 ...]`.

Each writes its figures to `benchmarks/results/<name>.json` and prints a table.

Example:
    $ python -m benchmarks --quick b1 b2
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {"b1": "b1_augment", "b2": "b2_feature_cache", "b3": "b3_pipeline",
              "b4": "b4_extraction", "b5": "b5_time_to_accuracy", "b6": "b6_recipes",
              "b7": "b7_cache_memory", "b8": "b8_cached_finetune", "b9": "b9_fair_race",
              "b10": "b10_budget_design", "b11": "b11_precision", "b12": "b12_head_design"}


def main(argv: list[str]) -> None:
    flags = [a for a in argv if a.startswith("-")]
    names = [a for a in argv if not a.startswith("-")] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    for name in names:
        print(f"== {name}: {BENCHMARKS[name]}", flush=True)
        importlib.import_module(f"benchmarks.{BENCHMARKS[name]}").main(flags)


if __name__ == "__main__":
    main(sys.argv[1:])
