"""B5: wall time to a fixed validation accuracy, tltk's default recipe vs the Keras guide.

Both sides train on the same flowers-128 70/30 split with the same MobileNetV2 @160
weights; the clock starts before data loading and model building and stops at the
first epoch whose validation top-1 reaches the target (70 %: above the 66.4 % of the
logistic-regression peer in shared/README.md). tltk runs the `folder` recipe's stages
as they are; the other side is `benchmarks/keras_guide.py`. One process, one after the
other; every epoch's (seconds, accuracy) is kept in the JSON.

Example:
    $ python -m benchmarks.b5_time_to_accuracy --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time

import keras

from benchmarks._common import report_ratio
from benchmarks._flowers import FLOWERS, IMAGE_SIZE, WEIGHTS, flowers_setup
from benchmarks.keras_guide import train_keras_guide
from tltk.engine import prepare, run_stage
from tltk.models.backbones import get_backbone
from tltk.recipes import folder

NAME = "b5_time_to_accuracy"
GOAL_RATIO = 5.0
TARGET = 0.70


class TimeToTarget(keras.callbacks.Callback):
    """Records (seconds, val accuracy) per epoch and stops at the first epoch >= target."""

    def __init__(self, target: float, start: float, key: str, budget_s: float):
        super().__init__()
        self.target, self.start, self.key, self.budget_s = target, start, key, budget_s
        self.curve, self.reached_s = [], None

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.start
        value = float((logs or {}).get(self.key, 0.0))
        self.curve.append([round(elapsed, 1), round(value, 4)])
        if value >= self.target and self.reached_s is None:
            self.reached_s = elapsed
        if self.reached_s is not None or elapsed > self.budget_s:
            self.model.stop_training = True


def run_tltk(target: float, budget_s: float) -> TimeToTarget:
    start = time.perf_counter()
    timer = TimeToTarget(target, start, "val_top1", budget_s)
    with tempfile.TemporaryDirectory() as out:
        config = folder.config().override({
            "data.path": str(FLOWERS), "data.image_size": IMAGE_SIZE, "weights": str(WEIGHTS),
            "data.val_fraction": 0.3, "data.test_fraction": 0.0, "out": f"{out}/run",
            "cache_dir": f"{out}/cache"})  # a cold feature cache: extraction is timed too
        ctx = prepare(config, get_backbone(config.backbone), say=lambda _: None)
        ctx.callbacks.append(timer)
        for stage in ctx.config.stages:
            run_stage(ctx, stage)
            if timer.reached_s is not None or time.perf_counter() - start > budget_s:
                break
    return timer


def run_keras(target: float, budget_s: float) -> TimeToTarget:
    start = time.perf_counter()
    timer = TimeToTarget(target, start, "val_accuracy", budget_s)
    train_keras_guide(flowers_setup(), timer)
    return timer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=TARGET)
    parser.add_argument("--budget-min", type=float, default=20.0,
                        help="give up on a side after this many minutes")
    parser.add_argument("--quick", action="store_true", help="a 10-minute budget per side")
    args = parser.parse_args(argv)
    budget = 60 * (10.0 if args.quick else args.budget_min)
    sides = {"tltk": run_tltk(args.target, budget)}
    keras.backend.clear_session()
    sides["keras_guide"] = run_keras(args.target, budget)
    reached = {k: v.reached_s for k, v in sides.items()}
    # Not reaching the target within the budget counts as the whole budget (a lower bound).
    keras_s = reached["keras_guide"] or budget
    ratio = keras_s / reached["tltk"] if reached["tltk"] else None
    figures = {"target_val_top1": args.target, "budget_s": budget,
               "seconds_to_target": {k: v and round(v, 1) for k, v in reached.items()},
               "curves_s_vs_val_top1": {k: v.curve for k, v in sides.items()},
               "ratio": ratio and round(ratio, 2),
               "ratio_is_lower_bound": reached["keras_guide"] is None}
    rows = [{"side": k, "seconds to target": v or "not reached",
             "best val top-1": max((a for _, a in sides[k].curve), default=0.0)}
            for k, v in reached.items()]
    return report_ratio(NAME, figures, args.quick, GOAL_RATIO, rows)


if __name__ == "__main__":
    main()
