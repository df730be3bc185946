"""B10: the measurements behind `tltk train --budget`'s rules, on the design split only.

flowers-128 split 70/15/15 with seed 0 (the split tltk's defaults were chosen on; B9's
held-out split is never read here), the ImageNet EfficientNet-Lite0, `folder`'s stages.
At every candidate size of the planner (`tltk.engine.budget.SIZES`):

- costs, timed with the dry run's own timing (`tltk.engine.dryrun`, median of 3
  batches of 32 after a warm-up): the frozen backbone's forward pass per image (the
  pooled-feature extraction) and its first, tracing call; the classifier's forward
  pass (validation, evaluation); a whole-network training step on images, the top
  block's cut and its training step on cached activations and a head step on cached
  features (timed inside `fit`), the first (tracing) call of each, an epoch's own
  overhead in `fit`, and one save. The planner reads per-image costs as ratios to the
  forward pass and fixed ones (traces, epoch overhead) as ratios to the forward pass's
  tracing call, both timed again on the user's machine, so a faster or slower machine,
  or a smaller model, scales them;
- the end of a run beyond its predictions (`finish_costs`): loading a saved classifier
  (the best weights) and writing the report (`write_run_report`: curves, confusion,
  Grad-CAM of 16 mistakes), timed after a one-epoch head run on 20 training and 10
  val and test images a class;
- the head stage's accuracy: `tltk train folder --epochs-finetune 0` at that size, best
  validation top-1 (a probe of how much the size gives the frozen features).

`tltk.engine.budget.DESIGN` holds the figures the planner uses; tests/test_budget.py
checks they match this file's JSON.

Outputs: results/b10_budget_design.json.

Example:
    $ python -m benchmarks b10
    $ python -m benchmarks b10 --quick
    $ python -m benchmarks b10 --costs-only --note="quiet machine"   # keep the head probes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import keras

from benchmarks._common import RESULTS_DIR, machine_info, print_table, write_results
from benchmarks.b6_recipes import Settings as SplitSettings
from benchmarks.b6_recipes import flowers_data, link_tree
from benchmarks.b9_fair_race import _call, tltk_result
from benchmarks.peers import LITE0
from tltk.config import StageConfig
from tltk.engine import budget
from tltk.engine.dryrun import seconds_per_call, timed_batches
from tltk.engine.run import prepare
from tltk.engine.stage import plan_stage
from tltk.fileio import save_model
from tltk.models.backbones import config_backbone
from tltk.recipes import base_config

NAME = "b10_budget_design"
DESIGN_SPLIT_SEED = 0
TIMED = 4  # batches: one warm-up, three timed
STEP_REPEATS = 4  # training steps are timed over the batches repeated (12 steps)


def costs(config, size: int) -> dict:
    """Seconds per image (forward, steps) and per call (traces, a save) at `size`."""
    config = config.override({"data.image_size": size})
    ctx = prepare(config, config_backbone(config), say=lambda _: None, dry_run=True)
    batches = timed_batches(ctx, "train", TIMED)
    per_image, classes = 1 / config.batch_size, ctx.dataset.num_classes
    head = plan_stage(ctx, ctx.config.stages[0])
    started = time.perf_counter()
    head.lower.predict_on_batch(batches[0][0])
    out = {"trace_predict": time.perf_counter() - started,
           "forward": seconds_per_call(lambda b: head.lower.predict_on_batch(b[0]), batches),
           "classifier": seconds_per_call(lambda b: ctx.model.predict_on_batch(b[0]), batches)}
    features = [(head.lower.predict_on_batch(x), y) for x, y in batches]
    out["head_step"], out["trace_head"] = _step(head, features, classes)
    out["epoch_overhead"] = _epoch_overhead(head, features, classes)
    whole = plan_stage(ctx, StageConfig("whole", **budget.WHOLE_STAGE))
    images = [(keras.ops.cast(x, "float32"), y) for x, y in batches]
    out["whole_step"], out["trace_whole"] = _step(whole, images, classes)
    top = plan_stage(ctx, StageConfig("top", **budget.top_stage(1)))
    out["top_cut"] = seconds_per_call(lambda b: top.lower.predict_on_batch(b[0]), batches)
    activations = [(top.lower.predict_on_batch(x), y) for x, y in batches]
    out["top_step"], out["trace_top"] = _step(top, activations, classes)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        save_model(ctx.model, Path(tmp) / "m.keras")
        out["save"] = time.perf_counter() - started
    traces = ("trace_predict", "trace_head", "trace_whole", "trace_top", "save",
              "epoch_overhead")  # seconds a call; the rest per image
    return {k: round(v if k in traces else v * per_image, 6) for k, v in out.items()}


def finish_costs(config, size: int, tree: Path, work: Path) -> dict:
    """Seconds to load a run's saved classifier and to write its report (the second
    report: `train` wrote the first, which also loads matplotlib's fonts)."""
    from tltk.engine.run import train
    from tltk.evaluation.reports import write_run_report
    from tltk.saving import load_keras_file

    run = train(config.override({"data.path": str(tree), "data.image_size": size,
                                 "stages.bottleneck.epochs": 1, "stages.finetune.epochs": 0,
                                 "out": str(work / f"finish-{size}"),
                                 "cache_dir": str(work / "cache")}), say=lambda _: None).run_dir
    started = time.perf_counter()
    load_keras_file(run / "best.keras")
    load = time.perf_counter() - started
    started = time.perf_counter()
    write_run_report(run)
    keras.backend.clear_session()
    return {"load": round(load, 3), "report": round(time.perf_counter() - started, 3)}


def _step(plan, batches, classes: int) -> tuple[float, float]:
    """(seconds a training step takes inside `fit`, seconds of the first, tracing fit).

    Timed through `fit` over the batches repeated STEP_REPEATS times, not
    `train_on_batch`, whose per-call overhead dwarfs a head step on cached features.
    """
    batches = _labelled(plan, batches, classes)  # label smoothing takes one-hot labels
    xs = keras.ops.concatenate([x for x, _ in batches] * STEP_REPEATS)
    ys = keras.ops.concatenate([y for _, y in batches] * STEP_REPEATS)
    size = int(batches[0][0].shape[0])
    plan.compile(100)
    started = time.perf_counter()
    plan.fitted.fit(xs[:size], ys[:size], batch_size=size, epochs=1, verbose=0)
    first = time.perf_counter() - started
    started = time.perf_counter()
    plan.fitted.fit(xs, ys, batch_size=size, epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - started) / (len(batches) * STEP_REPEATS), first


def _epoch_overhead(plan, batches, classes: int) -> float:
    """Seconds an epoch of `fit` costs beyond its steps: five one-step epochs with
    validation, after a warm-up fit, less five steps."""
    x, y = _labelled(plan, batches, classes)[0]
    step, _ = _step(plan, batches, classes)
    plan.fitted.fit(x, y, validation_data=(x, y), epochs=1, verbose=0)
    started = time.perf_counter()
    plan.fitted.fit(x, y, validation_data=(x, y), epochs=5, verbose=0)
    return max(0.0, (time.perf_counter() - started) / 5 - step)


def _labelled(plan, batches, classes: int) -> list:
    if not plan.one_hot:
        return batches
    return [(x, keras.ops.one_hot(keras.ops.cast(y, "int32"), classes)) for x, y in batches]


def head_probe(config, size: int, tree: Path, work: Path) -> dict:
    """Best val top-1 of `folder`'s head stage alone at `size` (a real run)."""
    run = work / f"head-{size}"
    run.mkdir()
    command = [sys.executable, "-m", "tltk.cli", "train", "folder", "--backbone", config.backbone,
               "--data", str(tree), "--out", str(run / "run"), "--image-size", str(size),
               "--epochs-finetune", "0", "--set", f"cache_dir={run / 'cache'}"]
    started = time.time()
    _call(command, run, env={"TLTK_CACHE": str(run / "scan")})
    result = tltk_result(run / "run", started)
    return {"val_top1": result["val_top1_best"], "seconds": result["clock_s"],
            "head_epochs": result["stages"]["bottleneck"]}


def run(quick: bool, heads: dict | None = None) -> dict:
    """Costs and head probes at every size; `heads` (size -> probe) reuses earlier probes."""
    per_class = 20 if quick else None
    data = flowers_data(SplitSettings(0, per_class, 10 if quick else None, None, ()),
                        DESIGN_SPLIT_SEED)
    sizes = budget.SIZES[:1] if quick else budget.SIZES
    by_size = {}
    small = flowers_data(SplitSettings(0, 20, 10, None, ()), DESIGN_SPLIT_SEED)
    with tempfile.TemporaryDirectory(prefix="b10-") as tmp:
        tree = link_tree(data, Path(tmp) / "data")
        small_tree = link_tree(small, Path(tmp) / "small")
        config = base_config("folder", None).override(
            {"backbone": str(LITE0), "data.path": str(tree)})
        for size in sizes:
            by_size[size] = {"costs": {**costs(config, size),
                                       **finish_costs(config, size, small_tree, Path(tmp))},
                             "head": (heads or {}).get(str(size))
                             or head_probe(config, size, tree, Path(tmp))}
            print(f"  {size} px: {by_size[size]}", flush=True)
    return {"benchmark": NAME, "split": {"seed": DESIGN_SPLIT_SEED,
                                         **{k: len(v) for k, v in data.labels.items()}},
            "backbone": str(LITE0), "by_size": by_size, "derived": derived(by_size)}


def derived(by_size: dict) -> dict:
    """The ratios to the forward pass the planner uses (median over sizes), and how the
    forward pass grows with the side (exponent of a log-log fit)."""
    sizes = sorted(by_size)
    ratio = {key: round(statistics.median(by_size[s]["costs"][key]
                                          / by_size[s]["costs"]["forward"] for s in sizes), 3)
             for key in ("classifier", "head_step", "whole_step", "top_cut", "top_step")}
    if len(sizes) > 1:
        import numpy as np

        logs = np.log([[s, by_size[s]["costs"]["forward"]] for s in sizes])
        exponent = round(float(np.polyfit(logs[:, 0], logs[:, 1], 1)[0]), 2)
    else:
        exponent = None
    ref = sizes[len(sizes) // 2]
    fixed = ("trace_head", "trace_whole", "trace_top", "epoch_overhead", "load", "report")
    return {"ratio_to_forward": ratio, "side_exponent": exponent, "reference_size": ref,
            "ratio_to_trace": {k: round(statistics.median(
                by_size[s]["costs"][k] / by_size[s]["costs"]["trace_predict"] for s in sizes), 3)
                for k in fixed},
            "head_val_top1": {s: by_size[s]["head"]["val_top1"] for s in sizes}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one size, 20 images a class")
    parser.add_argument("--costs-only", action="store_true",
                        help="re-time the costs, keep the head probes of the last full run "
                             "(accuracies do not depend on the machine's load)")
    parser.add_argument("--note", default="", help="how the machine was when timed")
    args = parser.parse_args(argv)
    quick = args.quick
    heads = None
    if args.costs_only:
        last = json.loads((RESULTS_DIR / f"{NAME}.json").read_text())
        heads = {size: v["head"] for size, v in last["by_size"].items()}
    figures = {**run(quick, heads), "quick": quick, "machine": machine_info(),
               "head_probes_from": "the previous full run" if heads else "this run",
               "note": args.note}
    path = write_results(NAME + ("_quick" if quick else ""), figures)
    print_table([{"size": s, **v["costs"], "head val": v["head"]["val_top1"]}
                 for s, v in figures["by_size"].items()])
    print(f"derived: {figures['derived']}")
    print(f"written {path}")
    return figures


if __name__ == "__main__":
    main()
