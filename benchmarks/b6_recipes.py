"""B6: five transfer-learning recipes on flowers-128, each under the same wall-clock budget.

History: B9 (`benchmarks/b9_fair_race.py`) replaces it. B6's peers were flawed (issue 23):
its fastai arm kept the model file's BatchNorm momentum (0.99, not PyTorch's 0.1), a new
optimizer at the unfreeze and augmentation on every image; its Keras-guide arm let
BatchNorm train during fine-tuning (keras-team/keras#20285); its thesis arm used the dogs
rate 1e-4; and tltk's defaults were chosen on the very split it scores on (seed 0), one
run per arm. `benchmarks/peers.py` now holds the fixed peers, so rerunning B6 no longer
reproduces `results/b6_recipes.json`.

One stratified 70/15/15 split (seed 0), one process, one recipe after the other:
fastai's `fine_tune`, the Keras transfer-learning guide, MediaPipe Model Maker's image
classifier, the thesis recipe (all four in plain Keras, `benchmarks/peers.py`, whose
docstring gives every default and its source) and tltk's `folder` recipe through the
public API (`tltk_config`). Backbones: EfficientNet-Lite0 (ImageNet, the model file
cut at `top_activation`) and the dog-tuned MobileNetV2, both at 160 px.

Every recipe's clock starts before it reads an image or builds a model, so decoding,
building and feature extraction count. Training stops at the first batch past the
budget; each recipe still gets one validated epoch. Fine-tuning at a constant rate runs
until the budget ends it; fastai's second one-cycle is stretched over the time left;
head stages and MediaPipe keep their documented epoch counts.
tltk's arm is stopped from outside (SIGALRM), because `tltk.train` takes no callbacks:
it loses the epoch in progress (the peers keep theirs, validated), and its per-epoch
times are the modification times of its `history.csv`. Test top-1 is reported for the
best-validation weights and for the final ones.

Outputs: results/b6_recipes.json and .png (`--quick`: b6_recipes_quick.*), with per
recipe and backbone the best val top-1, test top-1, wall time, seconds to 90 % and 95 %
of the best peer's best val top-1, the (seconds, val top-1) curve and the losses either
side of the switch from head training to fine-tuning.

Example:
    $ python -m benchmarks b6 --quick
    $ python -m benchmarks b6 --quick --backbones=mobilenetv2 --budget=30
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import json
import math
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tltk
from benchmarks import _common
from benchmarks._common import machine_info, print_table, write_results
from benchmarks._flowers import IMAGE_SIZE, SEED, flowers_split
from benchmarks.peers import (
    BACKBONES,
    EVAL_BATCH,
    LITE0,
    PEERS,
    Backbone,
    Clock,
    Data,
    batches,
    decoded,
)
from recipes import folder
from tltk.data.core import subsample_per_class
from tltk.evaluation.metrics import tta_views
from tltk.log import silent

NAME = "b6_recipes"
BUDGET_S = 360.0  # per recipe and backbone: 9 runs, about an hour in all
# The photos are 128 px, so 160 already upsamples them; 224 (Lite0's native size)
# would cost twice as much per epoch on two cores for no new detail.
LITE0_SIZE = 160
SIZES = {"lite0": LITE0_SIZE, "mobilenetv2": IMAGE_SIZE}
VAL_FRACTION = TEST_FRACTION = 0.15
TARGETS = {"90%": 0.90, "95%": 0.95}
RECIPES = (*PEERS, "tltk")
VARIANTS_NAME = "b6_variants"
# tltk variant arms (`--recipes tltk,tltk:ft_smoothing,...`): the `folder` recipe with
# its fine-tuning changed, to measure each field before it goes into a default
# (results/b6_variants.json). Each spells out the base it was measured on, `folder`'s
# former constant Adam 1e-5 (`ft_constant`), so the arms stay comparable when the
# default changes (`tltk` is now `ft_onecycle`). Fixed-length schedules get the 5
# fine-tuning epochs that fit the 360 s budget at 160 px on two cores (the head stage
# ends at about 45 s, a fine-tuning epoch takes about 55 s); the EMA arm gets 4, so
# that its stage ends and writes ema.keras.
FORMER = {"stages.finetune.schedule": "constant", "stages.finetune.lr": 1e-5,
          "stages.finetune.epochs": 8}
TOP_CACHED = {"stages.finetune.lr": 1e-4, "stages.finetune.schedule": "constant",
              "stages.finetune.cache_features": True, "stages.finetune.feature_views": 4}
VARIANTS = {
    "ft_constant": FORMER,
    "ft_smoothing": {**FORMER, "stages.finetune.label_smoothing": 0.1},
    "ft_bn_train": {**FORMER, "stages.finetune.batchnorm": "train"},
    "ft_onecycle": {"stages.finetune.schedule": "onecycle", "stages.finetune.lr": 1e-4,
                    "stages.finetune.epochs": 5},
    "ft_cosine": {"stages.finetune.schedule": "cosine", "stages.finetune.lr": 1e-4,
                  "stages.finetune.warmup_epochs": 1, "stages.finetune.epochs": 5},
    "ft_ema": {**FORMER, "stages.finetune.ema": 0.99, "stages.finetune.epochs": 4},
    "randaugment": {**FORMER, "augment_policy": "randaugment"},
    # The thesis's shape of fine-tuning with tltk's optimizer: the top two blocks only,
    # on cached activations of the frozen rest (four augmented views per image).
    "ft_top2_cached": {**TOP_CACHED, "stages.finetune.unfreeze": 2},
    # The same on the top block only: the cut `dogs` can afford with VGG19 (block4_pool
    # activations of four views of Stanford Dogs' 14,580 training images take 12 GB;
    # block3_pool's would take twice that).
    "ft_top1_cached": {**TOP_CACHED, "stages.finetune.unfreeze": 1},
}


@dataclasses.dataclass(frozen=True)
class Settings:
    budget_s: float
    train_per_class: int | None  # None: the whole training split
    eval_per_class: int | None  # None: the whole val and test splits
    image_size: int | None  # None: SIZES
    backbones: tuple[str, ...]
    recipes: tuple[str, ...] = RECIPES  # peers, "tltk" and "tltk:<variant>" arms


FULL = Settings(BUDGET_S, None, None, None, ("lite0", "mobilenetv2"))
# Quick: one backbone. Tracing each recipe's first train step costs 10-60 s on two
# cores whatever the data size, so both backbones take 6-7 minutes even at 8 s each
# (`--quick --backbones=lite0,mobilenetv2` runs them).
QUICK = Settings(8.0, 20, 8, None, ("mobilenetv2",))


# --- data -----------------------------------------------------------------------

def flowers_data(settings: Settings, split_seed: int = SEED) -> Data:
    """The 70/15/15 split (seed `split_seed`); val and test optionally cut to
    `eval_per_class` per class."""
    dataset, _ = flowers_split(settings.train_per_class, VAL_FRACTION, TEST_FRACTION,
                               split_seed)
    paths, labels = {}, {}
    for name, split in dataset.splits.items():
        keep = np.arange(len(split))
        if name != "train" and settings.eval_per_class:
            keep = subsample_per_class(split.labels, settings.eval_per_class, SEED)
        paths[name] = [split.paths[i] for i in keep]
        labels[name] = split.labels[keep]
    return Data(paths, labels, dataset.class_names)


def link_tree(data: Data, root: Path) -> Path:
    """The split as ROOT/<split>/<class>/ symlinks, which tltk's folder source reads as is."""
    for split, paths in data.paths.items():
        for path, label in zip(paths, data.labels[split]):
            link = root / split / data.class_names[label] / Path(path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return root


def top1(model: keras.Model, data: Data, split: str, transform, tta: str = "none") -> float:
    """Top-1 of an uncompiled model (tltk's saved ones) from its predictions, averaged
    over tltk's test-time views when `tta` is not none."""
    images = batches(decoded(data, split), transform, EVAL_BATCH).map(lambda x, y: x)
    probs = np.mean([model.predict(images.map(view), verbose=0) for view in tta_views(tta)],
                    axis=0)
    predicted = np.argmax(probs, axis=-1)
    return round(float(np.mean(predicted == data.labels[split])), 4)


def scores(models: dict, data: Data, transform) -> dict:
    """{"val": {"best": .., "best+tta": .., "final": ..}, "test": {...}}: every weights
    plain and with flip TTA; a missing model scores None.

    Example::

        scores({"best": best, "final": None}, data, tltk_resize(160))["test"]["best"]
        # 0.7312
    """
    views = {"": "none", "+tta": "flip"}
    return {split: {name + suffix: None if model is None else
                    top1(model, data, split, transform, tta)
                    for name, model in models.items() for suffix, tta in views.items()}
            for split in ("val", "test")}


# --- the peers ------------------------------------------------------------------

def run_peer(recipe: str, bb: Backbone, data: Data, budget: float,
             clock: Clock | None = None) -> dict:
    """Train and score one peer; its clock starts now unless a running `clock` is given."""
    clock = clock or Clock(budget)
    trained = PEERS[recipe](bb, data, clock)
    wall = clock.elapsed()
    merged = {split: {"final": trained.top1(data, split)} for split in ("val", "test")}
    trained.model.set_weights(trained.recorder.best_weights)  # after scoring the final ones
    for split, scored in merged.items():
        scored["best"] = trained.top1(data, split)
    return arm_result(trained.recorder.curve, merged, wall, budget)


def arm_result(curve: list[dict], merged: dict, wall: float, budget: float) -> dict:
    return {"status": "ok", "val_top1_best": max(p["val_top1"] for p in curve),
            "val_top1": merged["val"], "test_top1": merged["test"],
            "wall_s": round(wall, 1), "epochs": len(curve), "stopped_by_budget": wall >= budget,
            "stage_switch": stage_switch(curve), "curve": curve}


# --- tltk -----------------------------------------------------------------------

def tltk_config(backbone: Backbone, budget: float, variant: str | None = None
                ) -> tltk.RunConfig:
    """tltk's default `folder` recipe on `backbone` (changed as `VARIANTS[variant]` says);
    only a constant-rate fine-tuning is open-ended.

    A fixed-length schedule (the recipe's one-cycle) keeps its epochs; a constant-rate
    arm gets one epoch per budget second, so the budget, not its epoch count, ends it.
    """
    config = folder.config().override(VARIANTS[variant] if variant else {})
    finetune = config.stage("finetune")
    fixed = finetune.schedule != "constant" or finetune.ema is not None
    epochs = finetune.epochs if fixed else max(finetune.epochs, math.ceil(budget))
    # A model-file backbone carries its own weights; a registered one takes the file.
    named = backbone.name == "mobilenetv2"
    source = {"backbone": "mobilenetv2", "weights": str(backbone.path)} if named else {
        "backbone": str(backbone.path)}
    return config.override({**source, "data.image_size": backbone.size,
                            "stages.finetune.epochs": epochs})


class BudgetSpent(BaseException):
    """Raised into `tltk.train` by SIGALRM at the budget (BaseException: nothing swallows it)."""


class HistoryWatcher(threading.Thread):
    """Stamps each new row of a run's history.csv with its write time on `clock`."""

    def __init__(self, path: Path, clock: Clock):
        super().__init__(daemon=True)
        self.path, self.clock, self.stamps, self.done = path, clock, [], threading.Event()
        self.lock = threading.RLock()  # the alarm handler polls too, in the main thread

    def run(self):
        while not self.done.wait(0.05):
            self.poll()

    def poll(self) -> int:
        with self.lock:
            try:
                written = os.stat(self.path).st_mtime - self.clock.start_wall
                with open(self.path) as f:
                    rows = sum(1 for _ in f) - 1  # less the header
            except FileNotFoundError:
                return 0
            # Rows written between two polls share the later time (epochs under 0.05 s).
            self.stamps += [round(written, 2)] * max(0, rows - len(self.stamps))
            return len(self.stamps)

    def finish(self) -> list[float]:
        self.done.set()
        self.join()
        self.poll()
        return self.stamps


def settled(run: Path) -> bool:
    """An epoch is on record and best.keras holds the best one so far.

    tltk writes an epoch's history row first and saves an improvement just after it:
    an alarm in between would evaluate the previous best.
    """
    try:
        with open(run / "history.csv") as f:
            values = [float(row["val_top1"]) for row in csv.DictReader(f)]
        written, saved = (run / "history.csv").stat().st_mtime, (run / "best.keras").stat().st_mtime
    except (OSError, ValueError, KeyError):  # not there yet: this runs in a signal handler
        return False
    improved = bool(values) and values[-1] > max(values[:-1], default=-math.inf)
    return bool(values) and (not improved or saved >= written)


@contextlib.contextmanager
def budget_alarm(clock: Clock, epochs_done):
    """Raise BudgetSpent at the budget, but only once an epoch is done (every arm gets one)."""
    def ring(signum, frame):
        if epochs_done():
            raise BudgetSpent
        signal.setitimer(signal.ITIMER_REAL, 0.2)

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(clock.left(), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def environ(key: str, value: str):
    """Set one environment variable for a block, then restore it."""
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def run_tltk(bb: Backbone, data: Data, budget: float, variant: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="b6-tltk-") as tmp:
        work = Path(tmp)
        clock = Clock(budget)  # the symlinks take milliseconds; tltk's scan is timed
        config = tltk_config(bb, budget, variant).override({
            "data.path": str(link_tree(data, work / "data")), "out": str(work / "run"),
            "cache_dir": str(work / "features")})  # cold caches: extraction is timed
        watcher = HistoryWatcher(work / "run" / "history.csv", clock)
        watcher.start()
        try:
            with environ("TLTK_CACHE", str(work / "scan")), \
                    budget_alarm(clock, lambda: watcher.poll() and settled(work / "run")):
                tltk.train(config, say=silent)
        except BudgetSpent:
            pass
        finally:
            stamps = watcher.finish()
        wall = clock.elapsed()
        models = {name: _load(work / "run" / f"{name}.keras")
                  for name in ("best", "final", "ema")}
        merged = scores(models, data, tltk_resize(bb.size))
        return arm_result(tltk_curve(work / "run" / "history.csv", stamps), merged, wall,
                          budget)


def tltk_resize(size: int):
    """tltk's own eval images: stretched with antialiasing, rounded back to uint8 values."""
    return lambda image: tf.round(tf.image.resize(image, (size, size), antialias=True))


def _load(path: Path) -> keras.Model | None:
    # final.keras is written only when tltk.train ends on its own, not at the budget;
    # ema.keras only by a stage with `ema` set, at its end.
    return keras.models.load_model(path) if path.is_file() else None


def tltk_curve(history: Path, stamps: list[float]) -> list[dict]:
    with open(history) as f:
        rows = list(csv.DictReader(f))
    return [{"stage": row["stage"], "seconds": stamp, "val_top1": round(float(row["val_top1"]), 4),
             "loss": round(float(row["loss"]), 4), "val_loss": round(float(row["val_loss"]), 4)}
            for row, stamp in zip(rows, stamps)]


# --- summary --------------------------------------------------------------------

def stage_switch(curve: list[dict]) -> dict | None:
    """Losses of the last head epoch and the first fine-tuning epoch (None: one stage)."""
    stages = list(dict.fromkeys(p["stage"] for p in curve))
    if len(stages) < 2:
        return None
    last = [p for p in curve if p["stage"] == stages[0]][-1]
    first = next(p for p in curve if p["stage"] == stages[1])
    return {"from": stages[0], "to": stages[1],
            "last_head_epoch": {k: last[k] for k in ("loss", "val_loss")},
            "first_finetune_epoch": {k: first[k] for k in ("loss", "val_loss")},
            "loss_jump": round(first["loss"] - last["loss"], 4),
            "val_loss_jump": round(first["val_loss"] - last["val_loss"], 4)}


def add_targets(arms: dict[str, dict]) -> dict:
    """Stamp every arm with its seconds to 90 % / 95 % of the best peer's best val top-1."""
    peers = [a["val_top1_best"] for r, a in arms.items() if r in PEERS and a["status"] == "ok"]
    best = max(peers, default=None)
    for arm in arms.values():
        if arm["status"] == "ok" and best is not None:
            arm["seconds_to"] = {key: next((p["seconds"] for p in arm["curve"]
                                            if p["val_top1"] >= share * best), None)
                                 for key, share in TARGETS.items()}
    return {"best_peer_val_top1": best,
            "targets": {k: best and round(share * best, 4) for k, share in TARGETS.items()}}


def table_rows(results: dict) -> list[dict]:
    rows = []
    for backbone, arms in results.items():
        for recipe, arm in arms.items():
            row = {"backbone": backbone, "recipe": recipe}
            if arm["status"] != "ok":
                rows.append({**row, "val best": arm["status"]})
                continue
            switch = arm["stage_switch"] or {}
            reach = arm.get("seconds_to", {})
            test = arm["test_top1"]
            rows.append({**row, "val best": arm["val_top1_best"],
                         "test (best w)": test["best"], "test (best+tta)": test.get("best+tta"),
                         "test (final w)": test["final"], "test (ema)": test.get("ema"),
                         "wall s": arm["wall_s"],
                         "epochs": arm["epochs"], "s to 90%": reach.get("90%"),
                         "s to 95%": reach.get("95%"),
                         "val-loss jump": switch.get("val_loss_jump", "-")})
    return rows


def plot(figures: dict, path: Path) -> None:
    """Val top-1 against seconds, one line per recipe, one panel per backbone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results, targets, budget = figures["results"], figures["targets"], figures["budget_s"]
    fig = Figure(figsize=(6.5 * len(results), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(results), squeeze=False, sharey=True)[0]
    for ax, (backbone, arms) in zip(axes, results.items()):
        for recipe, arm in arms.items():
            if arm["status"] != "ok":
                ax.plot([], [], label=f"{recipe}: {arm['status']}")
                continue
            curve = arm["curve"]
            ax.plot([p["seconds"] for p in curve], [p["val_top1"] for p in curve],
                    marker=".", label=recipe)
        for key, value in targets[backbone]["targets"].items():
            if value:
                ax.axhline(value, color="grey", linestyle=":", linewidth=0.8)
                ax.text(0.01, value, f"{key} of best peer", fontsize=7, color="grey",
                        transform=ax.get_yaxis_transform(), va="bottom")
        ax.axvline(budget, color="grey", linestyle="--", linewidth=0.8)
        ax.set(title=f"{backbone} @ {figures['image_size'][backbone]} px", ylabel="val top-1",
               xlabel="seconds (decoding, building and extraction included)")
        ax.legend(fontsize=8)
    fig.suptitle(f"B6: flowers-128, {budget:g} s per recipe")
    fig.savefig(path, dpi=120)


# --- driver ---------------------------------------------------------------------

def run(settings: Settings) -> dict:
    """Every recipe on every backbone; returns the figures (nothing written)."""
    if "lite0" in settings.backbones and not LITE0.is_file():
        raise SystemExit(f"B6 needs {LITE0} (or --backbones=mobilenetv2)")
    data = flowers_data(settings)
    results, targets, sizes = {}, {}, {}
    for name in settings.backbones:
        bb = BACKBONES[name](settings.image_size or SIZES[name])
        sizes[name] = bb.size
        results[name] = {recipe: _run_arm(recipe, bb, data, settings.budget_s)
                         for recipe in settings.recipes}
        targets[name] = add_targets(results[name])
    return {"benchmark": NAME, "budget_s": settings.budget_s, "image_size": sizes,
            "settings": dataclasses.asdict(settings),
            "split": {"seed": SEED, "fractions": [1 - VAL_FRACTION - TEST_FRACTION,
                                                  VAL_FRACTION, TEST_FRACTION],
                      **{k: len(v) for k, v in data.labels.items()}},
            "notes": NOTES, "targets": targets, "results": results}


NOTES = {
    "test_top1": "best: weights of the best validation epoch; final: the weights when "
                 "training stopped (tltk: none when the budget interrupted it, as tltk.train "
                 "writes final.keras only at its end)",
    "seconds": "from the recipe's start, before any image is decoded or model built",
    "stage_switch": "mean training loss (cached, unaugmented features in the thesis and tltk "
                    "bottleneck stages; augmented images otherwise) and val loss of the last "
                    "head epoch and the first fine-tuning epoch",
}


def _run_arm(recipe: str, bb: Backbone, data: Data, budget: float) -> dict:
    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(SEED)
    started = time.perf_counter()
    if recipe.startswith("tltk"):
        arm = run_tltk(bb, data, budget, recipe.partition(":")[2] or None)
    else:
        arm = run_peer(recipe, bb, data, budget)
    summary = arm["status"] if arm["status"] != "ok" else (
        f"val {arm['val_top1_best']:.3f}, test {arm['test_top1']['best']:.3f}, "
        f"{arm['epochs']} epochs in {arm['wall_s']:.0f} s")
    print(f"  {bb.name}/{recipe}: {summary} ({time.perf_counter() - started:.0f} s "
          "with evaluation)", flush=True)
    return arm


def parse(argv: list[str] | None) -> tuple[bool, bool, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.budget_s:g} s per recipe, {QUICK.train_per_class} train "
                             f"and {QUICK.eval_per_class} val/test images per class, "
                             f"{','.join(QUICK.backbones)} only")
    parser.add_argument("--budget", type=float, help="seconds per recipe and backbone")
    parser.add_argument("--per-class", type=int, help="training images per class")
    parser.add_argument("--eval-per-class", type=int, help="val and test images per class")
    parser.add_argument("--image-size", type=int, help="one size for both backbones")
    parser.add_argument("--backbones", help=f"comma-separated, from {','.join(BACKBONES)}")
    parser.add_argument("--recipes", type=recipe_list,
                        help=f"comma-separated, from {','.join(RECIPES)} and tltk:<variant> "
                             f"for a variant in {','.join(VARIANTS)}; results go to "
                             f"{VARIANTS_NAME}.json unless they are the five recipes")
    parser.add_argument("--update", action="store_true",
                        help=f"re-run --recipes into the existing {NAME}.json ({VARIANTS_NAME}"
                             ".json for variant arms; same settings), replacing those arms; "
                             "the other arms keep their figures")
    args = parser.parse_args(argv)
    if args.update and not args.recipes:
        parser.error("--update needs --recipes, the arms to re-run")
    base = QUICK if args.quick else FULL
    changes = {"budget_s": args.budget, "train_per_class": args.per_class,
               "eval_per_class": args.eval_per_class, "image_size": args.image_size,
               "backbones": args.backbones and tuple(args.backbones.split(",")),
               "recipes": args.recipes}
    return args.quick, args.update, dataclasses.replace(
        base, **{k: v for k, v in changes.items() if v is not None})


def recipe_list(text: str) -> tuple[str, ...]:
    """`--recipes`: known recipes and variants only, checked before anything runs."""
    recipes = tuple(text.split(","))
    known = {*RECIPES, *(f"tltk:{v}" for v in VARIANTS)}
    unknown = [r for r in recipes if r not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from "
                                         f"{', '.join(sorted(known))}")
    return recipes


def updated(new: dict, path: Path) -> dict:
    """The figures at `path` with the arms of `new` put in (same settings but the recipes
    and backbones), targets recomputed; every re-run is listed under "updates"."""
    old = json.loads(path.read_text())
    same = ("budget_s", "train_per_class", "eval_per_class", "image_size")
    if any(old["settings"][k] != new["settings"][k] for k in same) or old["split"] != new["split"]:
        raise SystemExit(f"--update: {path.name} was measured with other settings or another "
                         "split; run the whole benchmark instead")
    for backbone, arms in new["results"].items():
        old["results"][backbone].update(arms)
        old["targets"][backbone] = add_targets(old["results"][backbone])
    old.setdefault("updates", []).append({
        "recipes": list(new["settings"]["recipes"]), "backbones": list(new["results"]),
        "machine": new["machine"]})
    return old


def results_name(recipes: tuple[str, ...], update: bool) -> str:
    """NAME for the five recipes (or an update of some), VARIANTS_NAME for anything else.

    Example:
        >>> results_name(("tltk",), update=True), results_name(("tltk:ft_ema",), update=True)
        ('b6_recipes', 'b6_variants')
    """
    plain = set(recipes) <= set(RECIPES)
    return NAME if plain and (update or set(recipes) == set(RECIPES)) else VARIANTS_NAME


def main(argv: list[str] | None = None) -> dict:
    quick, update, settings = parse(argv)
    figures = {**run(settings), "quick": quick, "machine": machine_info()}
    name = results_name(settings.recipes, update) + ("_quick" if quick else "")
    if update:
        figures = updated(figures, _common.RESULTS_DIR / f"{name}.json")
    path = write_results(name, figures)
    plot(figures, path.with_suffix(".png"))
    print_table(table_rows(figures["results"]))
    print(f"written {path} and {path.with_suffix('.png').name}")
    return figures


if __name__ == "__main__":
    main()
