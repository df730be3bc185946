"""B12: why the thesis head keeps up with tltk's in B9, on the design split only.

B9's first run (which by a bug scored on split seed 0, the design split) found the
thesis protocol level with `tltk train folder --budget` at 2 and 6 minutes and 5 points
ahead with 25 images per class, its best weights always those of its head stage. The
two heads differ in three settings: image size (160 px against the planner's 128),
head epochs (30 against 20) and label smoothing (none against 0.1). This measures each
on split seed 0 (B9's held-out split is never read), with `folder`'s own head stage:

- features: the frozen ImageNet Lite0's pooled features of the unaugmented images, as
  the head stage caches them (`plan_stage(...).lower`), at each size;
- head: `folder`'s (Dense 256, dropout 0.5, Adam 1e-3, batch 32), freshly initialised
  per training seed, with and without label smoothing 0.1;
- regimes: the whole training split, and 25 images a class drawn per seed (B9's
  few-shot regime);
- epochs: one fit of MAX_STEPS optimizer steps per arm, validated every epoch; the
  best-validation epoch within the first E epochs is what an E-epoch head stage would
  keep (the schedule is constant, so an E-epoch run is this run's prefix). Test top-1
  is read at that epoch and reported only: the choice is made on val.

The head is fit with Keras `fit` on the features in memory rather than through
`tltk train`: one run costs 20-40 s of start-up and evaluation, and the grid holds
hundreds of epochs-settings; the model, loss and optimizer are the stage's own.

Outputs: results/b12_head_design.json (every curve, the table, and `rule`: the head
steps and smoothing the planner adopts).

Example:
    $ python -m benchmarks b12
    $ python -m benchmarks b12 --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
from pathlib import Path

import keras
import numpy as np

from benchmarks._common import (
    RESULTS_DIR,
    machine_info,
    print_table,
    sample_sd,
    write_results,
)
from benchmarks.b6_recipes import Settings as SplitSettings
from benchmarks.b6_recipes import flowers_data, link_tree
from benchmarks.peers import LITE0
from tltk.data.core import make_pipeline
from tltk.data.core import subsample_per_class as few_shot
from tltk.engine import budget
from tltk.engine.run import prepare
from tltk.engine.stage import one_hot_labels, plan_stage, stage_loss
from tltk.models.backbones import config_backbone
from tltk.optim.discriminative import make_optimizer
from tltk.recipes import base_config

NAME = "b12_head_design"
DESIGN_SPLIT_SEED = 0
SEEDS = (0, 1, 2)
FEW_SHOT_PER_CLASS = 25
MAX_STEPS = 2400  # the whole split: 25 epochs, 5 beyond folder's 20
FEW_SHOT_STEPS = 1200  # 25 a class: 300 epochs of 4 steps
STEP_MARKS = (80, 160, 320, 640, 1200, 1900, 2400)  # head lengths compared, in steps


def features(config, size: int) -> tuple[dict, keras.Model, int]:
    """(pooled features and labels of every split at `size`, as the head stage caches
    them; the stage's head, untrained; the number of classes)."""
    config = config.override({"data.image_size": size})
    ctx = prepare(config, config_backbone(config), say=lambda _: None, dry_run=True)
    plan = plan_stage(ctx, ctx.config.stages[0])
    out = {}
    for name, split in ctx.dataset.splits.items():
        images = make_pipeline(split, size, 64, training=False, seed=0, cache=False)
        out[name] = (plan.lower.predict(images.map(lambda x, y: x), verbose=0), split.labels)
    return out, plan.fitted, ctx.dataset.num_classes


def head_curve(config, template: keras.Model, classes: int, feats: dict,
               train_idx: np.ndarray, smoothing: float, seed: int, max_steps: int) -> dict:
    """Val and test top-1 after every epoch of `folder`'s head stage on `feats`."""
    stage = dataclasses.replace(config.stages[0], label_smoothing=smoothing)
    keras.utils.set_random_seed(seed)
    head = keras.models.clone_model(template)  # freshly initialised from `seed`
    one_hot = one_hot_labels(stage)
    head.compile(make_optimizer(stage, head, stage.lr), stage_loss(stage))
    x, y = feats["train"][0][train_idx], feats["train"][1][train_idx]
    target = keras.utils.to_categorical(y, classes) if one_hot else y
    steps = math.ceil(len(x) / config.batch_size)
    # Val and test scored in one eager call an epoch: `validation_data` and `predict`
    # cost more per epoch than a few-shot epoch's four steps.
    held = np.concatenate([feats["val"][0], feats["test"][0]])
    cut, scores = len(feats["val"][0]), []

    def score(epoch, logs):
        right = np.argmax(keras.ops.convert_to_numpy(head(held, training=False)), -1) == \
            np.concatenate([feats["val"][1], feats["test"][1]])
        scores.append((float(right[:cut].mean()), float(right[cut:].mean())))

    head.fit(x, target, batch_size=config.batch_size, epochs=math.ceil(max_steps / steps),
             shuffle=True, verbose=0,
             callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=score)])
    val, test = zip(*scores)
    return {"steps_per_epoch": steps, "val": [round(v, 4) for v in val],
            "test": [round(v, 4) for v in test]}


def best_within(curve: dict, steps: int) -> tuple[float, float]:
    """(val, test) top-1 at the best-validation epoch of the first `steps` steps (at least
    one epoch), as a head stage of that length keeps it."""
    epochs = max(1, min(len(curve["val"]), round(steps / curve["steps_per_epoch"])))
    best = int(np.argmax(curve["val"][:epochs]))
    return curve["val"][best], curve["test"][best]


def summarize(runs: list[dict], marks) -> list[dict]:
    """Mean and sd over seeds of val and test top-1 per regime, size, smoothing, steps."""
    groups: dict[tuple, list] = {}
    for run in runs:
        for steps in marks:
            if steps > len(run["val"]) * run["steps_per_epoch"]:
                continue  # beyond this regime's fit
            key = (run["regime"], run["size"], run["smoothing"], steps)
            groups.setdefault(key, []).append(best_within(run, steps))
    rows = []
    for (regime, size, smoothing, steps), scores in sorted(groups.items()):
        val, test = zip(*scores)
        rows.append({"regime": regime, "size": size, "smoothing": smoothing, "steps": steps,
                     "val": _mean(val), "val_sd": _sd(val), "test": _mean(test),
                     "test_sd": _sd(test), "seeds": len(scores)})
    return rows


def _mean(values) -> float:
    return round(statistics.mean(values), 4)


def _sd(values) -> float:
    return round(sample_sd(values), 4)


def rule(rows: list[dict]) -> dict:
    """Per regime, the best setting by mean val top-1, and the shortest head whose mean
    val is within one sd of it (fewer steps cost less of a budget)."""
    out = {}
    for regime in sorted({r["regime"] for r in rows}):
        mine = [r for r in rows if r["regime"] == regime]
        best = max(mine, key=lambda r: r["val"])
        close = [r for r in mine if r["val"] >= best["val"] - max(best["val_sd"], 0.005)]
        out[regime] = {"best": best, "shortest_close": min(close, key=lambda r: r["steps"])}
    return out


def run(quick: bool, sizes: tuple[int, ...] | None = None, earlier: list | None = None) -> dict:
    """The grid at `sizes` (default: the planner's), `earlier` runs (other sizes) kept."""
    sizes = sizes or ((128,) if quick else budget.SIZES)
    seeds = SEEDS[:1] if quick else SEEDS
    max_steps = 400 if quick else MAX_STEPS
    marks = tuple(m for m in STEP_MARKS if m <= max_steps)
    data = flowers_data(SplitSettings(0, 20 if quick else None, 10 if quick else None,
                                      None, ()), DESIGN_SPLIT_SEED)
    runs = []
    with tempfile.TemporaryDirectory(prefix="b12-") as tmp:
        tree = link_tree(data, Path(tmp) / "data")
        config = base_config("folder", None).override(
            {"backbone": str(LITE0), "data.path": str(tree)})
        for size in sizes:
            feats, template, classes = features(config, size)
            labels = feats["train"][1]
            for seed in seeds:
                regimes = {"full": np.arange(len(labels)),
                           "few-shot": few_shot(labels, 5 if quick else FEW_SHOT_PER_CLASS,
                                                seed)}
                for regime, idx in regimes.items():
                    for smoothing in (0.0, 0.1):
                        steps = min(FEW_SHOT_STEPS, max_steps) if regime == "few-shot" \
                            else max_steps
                        curve = head_curve(config, template, classes, feats, idx, smoothing,
                                           seed, steps)
                        runs.append({"regime": regime, "size": size, "seed": seed,
                                     "smoothing": smoothing, **curve})
                        print(f"  {regime} {size}px seed {seed} smoothing {smoothing}: best "
                              f"val {max(curve['val']):.4f}", flush=True)
    runs = [r for r in earlier or () if r["size"] not in sizes] + runs
    sizes = tuple(sorted({r["size"] for r in runs}))
    rows = summarize(runs, marks)
    return {"benchmark": NAME, "split": {"seed": DESIGN_SPLIT_SEED,
                                         **{k: len(v) for k, v in data.labels.items()}},
            "backbone": str(LITE0), "sizes": list(sizes), "seeds": list(seeds),
            "step_marks": list(marks), "table": rows, "rule": rule(rows), "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one size and seed, 20 a class")
    parser.add_argument("--sizes", help="comma-separated sizes to (re)measure; the last full "
                                        "run's other sizes are kept")
    args = parser.parse_args(argv)
    sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else None
    last = RESULTS_DIR / f"{NAME}.json"
    earlier = json.loads(last.read_text())["runs"] if sizes and last.is_file() else None
    figures = {**run(args.quick, sizes, earlier), "quick": args.quick,
               "machine": machine_info()}
    path = write_results(NAME + ("_quick" if args.quick else ""), figures)
    print_table(figures["table"])
    print(f"rule: {figures['rule']}")
    print(f"written {path}")
    return figures


if __name__ == "__main__":
    main()
