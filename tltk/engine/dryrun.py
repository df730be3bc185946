"""`tltk train ... --dry-run`: the plan, the caches against the budget, and time estimates.

Nothing is trained or written: the data is loaded and the classifier built as a run
would, then for every stage `stage_plan` tells which blocks train and what it caches,
and a few real batches are timed on this machine (after one warm-up batch): training
steps on images, or the extraction of the cut and training steps on its output. The
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

from tltk import data as tltk_data
from tltk.config import RunConfig, StageConfig
from tltk.data.core import make_pipeline
from tltk.engine import runtime
from tltk.engine.features import AVAILABLE_FRACTION, cache_budget
from tltk.engine.run import Context, resolve
from tltk.log import log
from tltk.models.backbones import build_backbone, check_image_size, get_backbone
from tltk.models.heads import split_at_blocks

TIMED_BATCHES = 3


def dry_run(config: RunConfig, say=log) -> list[str]:
    """Print (and return) the plan of `config`'s run with estimated times; trains nothing."""
    from tltk.engine.stage import _describe_blocks, _describe_optimizer, stage_plan

    config.validate()
    spec = get_backbone(config.backbone)
    keras.utils.set_random_seed(config.seed)
    lines = []

    def out(text: str) -> None:
        lines.append(text)
        say(text)

    with runtime.precision_policy(config.precision):
        ctx = _context(config, spec)
        out(_header(ctx))
        total = 0.0
        for stage in ctx.config.stages:
            if not stage.epochs:
                out(f"stage {stage.name}: skipped (0 epochs)")
                continue
            plan = stage_plan(ctx, stage, strict=False)
            out(f"stage {stage.name}: {stage.epochs} epochs, "
                f"{_describe_blocks(plan['blocks'], spec)}, {plan['trainable']:,} trainable "
                f"weights, {_describe_optimizer(stage)}")
            cache = plan["cache"]
            if cache:
                out(_cache_line(ctx, cache))
            seconds, how = _estimate(ctx, stage, plan)
            total += seconds
            out(f"  estimated {_duration(seconds)} ({how})")
    out(f"estimated training time: {_duration(total)} (from {TIMED_BATCHES} timed batches "
        "per stage on this machine; final evaluation not included)")
    return lines


def _context(config: RunConfig, spec) -> Context:
    """What `prepare` builds, without a run directory."""
    from tltk.models.heads import build_classifier

    size = config.data.image_size or spec.default_size
    check_image_size(spec, size)
    dataset = tltk_data.load(config.data, seed=config.seed)
    tltk_data.require_training_splits(dataset)
    weights = config.weights if spec.pretrained else "none"
    model = build_classifier(build_backbone(spec, weights, size), spec, dataset.num_classes,
                             config.head)
    config = resolve(config, spec, dataset)
    return Context(config, spec, dataset, model, run=None, image_size=size, k=config.top_k,
                   trackers=None, callbacks=[], log=lambda _: None)


def _header(ctx: Context) -> str:
    cfg = ctx.config
    budget = cache_budget(cfg.cache_budget_gb)
    where = ("set by cache_budget_gb" if cfg.cache_budget_gb is not None else
             f"{AVAILABLE_FRACTION:.0%} of the memory available now; --set cache_budget_gb=GB")
    counts = ", ".join(f"{name} {len(s):,}" for name, s in ctx.dataset.splits.items())
    return (f"dry run: {cfg.recipe} on {ctx.spec.name} ({cfg.weights} weights) at "
            f"{ctx.image_size}px, {ctx.dataset.name}: {ctx.dataset.num_classes} classes; images "
            f"{counts}; cache budget {budget / 1e9:.2f} GB ({where})")


def _cache_line(ctx: Context, cache: dict) -> str:
    budget = cache_budget(ctx.config.cache_budget_gb)
    verdict = (f"over the {budget / 1e9:.2f} GB budget: " + cache["over"].split(": ", 1)[1]
               if cache["over"] else f"fits the {budget / 1e9:.2f} GB budget")
    what = "pooled features" if cache["kind"] == "pooled" else "activations"
    return (f"  cache: {what} at {cache['cut']} {cache['shape']}, {cache['views']} view(s) of "
            f"train + plain val: {cache['bytes'] / 1e9:.2f} GB, {verdict}")


def _batches(ctx: Context, split: str, count: int) -> list:
    ds = make_pipeline(ctx.dataset.splits[split], ctx.image_size, ctx.config.batch_size,
                       training=False, seed=ctx.config.seed, resize_policy=ctx.config.data.resize,
                       cache=False)
    return list(ds.take(count))


def _seconds_per_call(fn, items: list) -> float:
    """Median seconds of `fn(item)` over `items[1:]` (the first call warms up)."""
    fn(items[0])
    times = []
    for item in items[1:] or items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _estimate(ctx: Context, stage: StageConfig, plan: dict) -> tuple[float, str]:
    """(seconds, how it was estimated) for the whole stage."""
    from tltk.engine.stage import _augmenter, _compile

    cfg, splits = ctx.config, ctx.dataset.splits
    steps = math.ceil(len(splits["train"]) / cfg.batch_size)
    val_steps = math.ceil(len(splits["val"]) / cfg.batch_size)
    batches = _batches(ctx, "train", TIMED_BATCHES + 1)
    if stage.mixup:  # its loss takes (mixed) one-hot labels
        classes = ctx.dataset.num_classes
        batches = [(x, tf.one_hot(tf.cast(y, tf.int32), classes)) for x, y in batches]
    cache = plan["cache"]
    if cache and not cache["over"]:
        lower, upper, _ = split_at_blocks(ctx.model, ctx.spec,
                                          [] if cache["kind"] == "pooled" else plan["blocks"])
        extract = _seconds_per_call(lambda b: lower.predict_on_batch(b[0]), batches)
        feats = [(lower.predict_on_batch(x), y) for x, y in batches]
        _compile(ctx, upper, stage, steps)
        step = _seconds_per_call(lambda b: upper.train_on_batch(*b), feats)
        val = _seconds_per_call(lambda b: upper.predict_on_batch(b[0]), feats)
        extracted = math.ceil((len(splits["train"]) * cache["views"] + len(splits["val"]))
                              / cfg.batch_size)
        epoch = steps * step + val_steps * val
        return (extracted * extract + stage.epochs * epoch,
                f"extraction {_duration(extracted * extract)} once, then "
                f"{stage.epochs} x {_duration(epoch)} per epoch on the cache")
    augment = _augmenter(ctx, stage, cfg.seed) or (lambda x, _: x)
    seed = tf.constant([0, 0], tf.int64)
    images = [(augment(tf.cast(x, tf.uint8), seed), y) for x, y in batches]
    _compile(ctx, ctx.model, stage, steps)
    step = _seconds_per_call(lambda b: ctx.model.train_on_batch(*b), images)
    val = _seconds_per_call(lambda b: ctx.model.predict_on_batch(b[0]), images)
    epoch = steps * step + val_steps * val
    return stage.epochs * epoch, f"{stage.epochs} x {_duration(epoch)} per epoch on images"


def _duration(seconds: float) -> str:
    """Seconds in the unit a person reads best.

    Example:
        >>> _duration(42), _duration(420), _duration(42_000)
        ('42 s', '7.0 min', '11.7 h')
    """
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
