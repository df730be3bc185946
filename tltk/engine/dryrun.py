"""`tltk train ... --dry-run`: the plan, the caches against the budget, and time estimates.

Nothing is trained or written: the data is loaded and the classifier built as a run
would (`prepare` without a run directory), then for every stage `plan_stage` tells
which blocks train and what it caches, and a few real batches are timed on this
machine (after one warm-up batch) through that same plan: training steps on images, or
the extraction of the cut and training steps on its output. The
estimate is those times scaled to the stage's steps and epochs (evaluation after the
last stage is not included).

Example::

    lines = dry_run(dogs.config().override({"data.path": "~/tensorflow_datasets"}))
    lines[-1]
    # 'estimated training time: 4.6 h (from 3 timed batches per stage on this machine)'
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf

from tltk.config import RunConfig
from tltk.data.core import make_pipeline
from tltk.engine import runtime
from tltk.engine.context import Context
from tltk.engine.features import AVAILABLE_FRACTION, cache_budget
from tltk.engine.run import prepare
from tltk.engine.stage import CachePlan, StagePlan, describe_blocks, describe_optimizer, plan_stage
from tltk.log import duration, log, silent
from tltk.models.backbones import config_backbone

TIMED_BATCHES = 3


def dry_run(config: RunConfig, say=log) -> list[str]:
    """Print (and return) the plan of `config`'s run with estimated times; trains nothing."""
    config.validate()
    spec = config_backbone(config)
    keras.utils.set_random_seed(config.seed)
    lines = []

    def out(text: str) -> None:
        lines.append(text)
        say(text)

    with runtime.precision_policy(config.precision):
        ctx = prepare(config, spec, say=silent, dry_run=True)
        out(_header(ctx))
        total = 0.0
        for stage in ctx.config.stages:
            if not stage.epochs:
                out(f"stage {stage.name}: skipped (0 epochs)")
                continue
            plan = plan_stage(ctx, stage, strict=False)
            out(f"stage {stage.name}: {stage.epochs} epochs, "
                f"{describe_blocks(plan.blocks, spec)}, {plan.trainable:,} trainable "
                f"weights, {describe_optimizer(stage)}")
            if plan.cache:
                out(_cache_line(ctx, plan.cache))
            seconds, how = estimate_stage(ctx, plan)
            total += seconds
            out(f"  estimated {duration(seconds)} ({how})")
    out(f"estimated training time: {duration(total)} (from {TIMED_BATCHES} timed batches "
        "per stage on this machine; final evaluation not included)")
    return lines


def _header(ctx: Context) -> str:
    cfg = ctx.config
    budget = cache_budget(cfg.cache_budget_gb)
    where = ("set by cache_budget_gb" if cfg.cache_budget_gb is not None else
             f"{AVAILABLE_FRACTION:.0%} of the memory available now; --set cache_budget_gb=GB")
    counts = ", ".join(f"{name} {len(s):,}" for name, s in ctx.dataset.splits.items())
    return (f"dry run: {cfg.recipe} on {ctx.spec.name} ({cfg.weights} weights) at "
            f"{ctx.image_size}px, {ctx.dataset.name}: {ctx.dataset.num_classes} classes; images "
            f"{counts}; cache budget {budget / 1e9:.2f} GB ({where})")


def _cache_line(ctx: Context, cache: CachePlan) -> str:
    budget = cache_budget(ctx.config.cache_budget_gb)
    verdict = (f"over the {budget / 1e9:.2f} GB budget: " + cache.over.split(": ", 1)[1]
               if cache.over else f"fits the {budget / 1e9:.2f} GB budget")
    what = "pooled features" if cache.kind == "pooled" else "activations"
    return (f"  cache: {what} at {cache.cut} {cache.shape}, {cache.views} view(s) of "
            f"train + plain val: {cache.bytes / 1e9:.2f} GB, {verdict}")


def timed_batches(ctx: Context, split: str, count: int) -> list:
    """`count` batches of `split`, decoded and resized as training reads them."""
    ds = make_pipeline(ctx.dataset.splits[split], ctx.image_size, ctx.config.batch_size,
                       training=False, seed=ctx.config.seed, resize_policy=ctx.config.data.resize,
                       cache=False)
    return list(ds.take(count))


def seconds_per_call(fn, items: list) -> float:
    """Median seconds of `fn(item)` over `items[1:]` (the first call warms up)."""
    fn(items[0])
    times = []
    for item in items[1:] or items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def estimate_stage(ctx: Context, plan: StagePlan) -> tuple[float, str]:
    """(seconds, how it was estimated) for the whole stage, from timed batches.

    The batches go through the plan as `run_stage` sends them: the cut's extraction and
    steps on its output when the stage trains on a cache, else augmented images; then
    the label transform (one-hot, mixup) and the plan's compiled model.
    """
    cfg, splits = ctx.config, ctx.dataset.splits
    steps = math.ceil(len(splits["train"]) / cfg.batch_size)
    val_steps = math.ceil(len(splits["val"]) / cfg.batch_size)
    batches = timed_batches(ctx, "train", TIMED_BATCHES + 1)
    seed = tf.constant([0, 0], tf.int64)
    extract = 0.0
    if plan.cached:
        extract = seconds_per_call(lambda b: plan.lower.predict_on_batch(b[0]), batches)
        inputs = [(plan.lower.predict_on_batch(x), y) for x, y in batches]
    else:
        augment = plan.make_augmenter(cfg.seed) or (lambda x, _: x)
        inputs = [(augment(tf.cast(x, tf.uint8), seed), y) for x, y in batches]
    if plan.mixer is not None:
        inputs = [plan.mixer(x, y, seed) for x, y in inputs]
    plan.compile(steps)
    step = seconds_per_call(lambda b: plan.fitted.train_on_batch(*b), inputs)
    val = seconds_per_call(lambda b: plan.fitted.predict_on_batch(b[0]), inputs)
    epoch = steps * step + val_steps * val
    if not plan.cached:
        return plan.stage.epochs * epoch, (f"{plan.stage.epochs} x {duration(epoch)} per "
                                           "epoch on images")
    extracted = math.ceil((len(splits["train"]) * plan.cache.views + len(splits["val"]))
                          / cfg.batch_size) * extract
    return (extracted + plan.stage.epochs * epoch,
            f"extraction {duration(extracted)} once, then {plan.stage.epochs} x "
            f"{duration(epoch)} per epoch on the cache")


