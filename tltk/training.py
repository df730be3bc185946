"""Staged training: stages are data, each one a `model.fit` with its own optimizer.

`train(config)` builds the backbone first (so unavailable weights fail before any
work), loads the data, grafts the head, runs every stage, then evaluates the best
and the final weights on every split. A frozen stage trains the head on cached
bottleneck features (see `tltk.features`); a stage that unfreezes blocks trains the
whole classifier on images, with augmentation in the input pipeline.

Example:
    >>> from recipes import demo
    >>> result = train(demo.config().override({"stages.finetune.epochs": 1}))
    >>> result.metrics.columns.tolist()
    ['weights', 'split', 'top1', 'topk', 'k']
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tltk import data as tltk_data
from tltk import discriminative
from tltk.backbones import (
    BackboneSpec,
    block_layers,
    build_backbone,
    check_image_size,
    get_backbone,
    resolve_unfreeze,
    set_trainable,
    weights_checksum,
)
from tltk.callbacks import BestModelSaver, EpochLogger, HistoryWriter
from tltk.config import RunConfig, StageConfig
from tltk.data.core import Dataset, make_pipeline
from tltk.errors import TltkError, unknown_name
from tltk.evaluation import default_k, evaluate_models, format_table, load_model
from tltk.features import FeatureCache, cache_bytes
from tltk.heads import backbone_of, build_classifier, split_at_blocks
from tltk.reports import write_run_report
from tltk.rundir import RunDir, save_model, write_csv
from tltk.schedules import make_lr

# Cached features must fit in memory beside the model on a modest (24 GB) machine.
CACHE_BUDGET_BYTES = 6e9



@dataclass
class RunResult:
    """What a run returns: where it lives, its metrics table and the final model."""

    run_dir: Path
    metrics: pd.DataFrame
    model: keras.Model
    config: RunConfig

    @property
    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.run_dir / "history.csv")


@dataclass
class Context:
    """What every stage needs; built once per run."""

    config: RunConfig
    spec: BackboneSpec
    dataset: Dataset
    model: keras.Model
    run: RunDir
    image_size: int
    k: int
    callbacks: list
    log: callable


def log(message: str) -> None:
    print(message, flush=True)


def validate(config: RunConfig) -> None:
    """Reject settings that cannot work, naming the argument and the fix."""
    checks = [(config.batch_size > 0, "--batch-size must be a positive integer"),
              (config.data.image_size is None or config.data.image_size > 0,
               "--image-size must be a positive integer"),
              (bool(config.stages), "the config has no stages; add at least one"),
              (config.precision in ("float32", "mixed_float16", "mixed_bfloat16"),
               "--precision must be float32, mixed_float16 or mixed_bfloat16"),
              (config.data.resize in ("stretch", "crop", "pad"),
               "--resize must be stretch, crop or pad"),
              (config.data.class_weight in (None, "balanced"),
               "--class-weight must be 'balanced' or unset")]
    for ok, message in checks:
        if not ok:
            raise TltkError(message)
    for stage in config.stages:
        if stage.epochs <= 0:
            raise TltkError(f"stage '{stage.name}': epochs must be a positive integer "
                            f"(got {stage.epochs}); set --epochs-head/--epochs-finetune")
        if stage.optimizer not in discriminative.OPTIMIZERS:
            raise unknown_name(f"stages.{stage.name}.optimizer", stage.optimizer,
                               discriminative.OPTIMIZERS)
        if stage.lr <= 0:
            raise TltkError(f"stage '{stage.name}': lr must be positive (got {stage.lr})")


def resolve(config: RunConfig, spec: BackboneSpec, dataset: Dataset) -> RunConfig:
    """Fill in what the config left open: image size, top-k and the run directory."""
    size = config.data.image_size or spec.default_size
    out = config.out or f"runs/{config.recipe}-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return replace(config, data=replace(config.data, image_size=size), out=out,
                   top_k=config.top_k or default_k(dataset.num_classes))


def train(config: RunConfig, verbose: bool = True) -> RunResult:
    """Run all stages of `config`, evaluate best and final weights, write the run dir."""
    validate(config)
    spec = get_backbone(config.backbone)
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        return _train(config, spec, log if verbose else (lambda _: None))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config: RunConfig, spec: BackboneSpec, say) -> RunResult:
    size = config.data.image_size or spec.default_size
    weights = config.weights if spec.pretrained else "none"
    check_image_size(spec, size)
    dataset = tltk_data.load(config.data, seed=config.seed)
    tltk_data.require_training_splits(dataset)
    backbone = build_backbone(spec, weights, size)  # unavailable weights fail before training
    config = resolve(config, spec, dataset)
    run = RunDir.create(config.out, config.to_yaml())
    say(f"run {run.path}: {spec.name} ({weights} weights) at {size}px on {dataset.name}: "
        f"{dataset.num_classes} classes, "
        + ", ".join(f"{name} {len(s)}" for name, s in dataset.splits.items()))
    try:
        result = _run_stages(config, spec, dataset, run, backbone, say)
    except BaseException as exc:
        run.set_status("failed", error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    run.set_status("complete", finished=time.time())
    say(f"report: {write_run_report(run.path)}")
    return result


def _run_stages(config, spec, dataset, run, backbone, say) -> RunResult:
    run.write_json("classes.json", dataset.class_names)
    if dataset.skipped:
        skipped = pd.DataFrame(dataset.skipped, columns=["path", "reason"])
        write_csv(run.file("skipped.csv"), skipped)
        say(f"skipped {len(dataset.skipped)} unreadable files: see {run.file('skipped.csv')}")
    model = build_classifier(backbone, spec, dataset.num_classes, config.head)
    saver = BestModelSaver(model, run)
    history = HistoryWriter(run)
    ctx = Context(config, spec, dataset, model, run, config.data.image_size, config.top_k,
                  [history, saver, EpochLogger(say)], say)
    for stage in config.stages:
        run_stage(ctx, stage)
    save_model(model, run.file("final.keras"))
    if not run.file("best.keras").is_file():  # no validation improvement was ever seen
        save_model(model, run.file("best.keras"))
    best = load_model(run.file("best.keras"))
    metrics = evaluate_models({"best": best, "final": model}, dataset, run, ctx.image_size,
                              config.batch_size, ctx.k, config.data.resize)
    say(f"best weights: epoch {saver.best_epoch + 1} of {saver.epochs_seen}, stage "
        f"{saver.best_stage} (val top-1 {100 * saver.best:.2f}%)")
    say(format_table(metrics))
    return RunResult(run.path, metrics, model, config)


# --- one stage ----------------------------------------------------------------

def run_stage(ctx: Context, stage: StageConfig) -> None:
    """Freeze/unfreeze blocks, recompile with the stage's optimizer, and fit."""
    backbone = backbone_of(ctx.model)
    blocks = set_trainable(backbone, ctx.spec, stage.unfreeze)
    freeze_head_batchnorm(ctx.model, frozen=bool(blocks) and ctx.spec.pretrained)
    cache = _use_cache(ctx, stage, blocks)
    trainable = sum(int(np.prod(w.shape)) for w in ctx.model.trainable_weights)
    where = {None: "", "pooled": "; head on cached features",
             "activations": "; trainable part on cached activations"}[cache]
    ctx.log(f"stage {stage.name}: {stage.epochs} epochs, {_describe_blocks(blocks, ctx.spec)}, "
            f"{trainable:,} trainable weights; recompiling with {_describe_optimizer(stage)}"
            + where)
    for cb in ctx.callbacks:
        cb.stage = stage.name
    started = time.time()
    if cache:
        fitted = _fit_on_features(ctx, stage, [] if cache == "pooled" else blocks)
    else:
        fitted = _fit_on_images(ctx, stage)
    _record_stage(ctx, stage, blocks, cache, fitted.optimizer, time.time() - started)


def freeze_head_batchnorm(model: keras.Model, frozen: bool) -> None:
    """While backbone blocks are tuned, the head's BatchNorm keeps its statistics too.

    Its moving statistics were learned on the bottleneck features; if it renormalised
    with batch statistics while those features drift, training mode and inference
    mode would disagree and validation accuracy can collapse to one class. Frozen,
    every BatchNorm runs in inference mode and train and eval see the same network.
    """
    for layer in model.get_layer("head").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = not frozen


def _use_cache(ctx: Context, stage: StageConfig, blocks) -> str | None:
    """None (train on images), 'pooled' (frozen backbone) or 'activations' (top blocks).

    Caching is exact because everything below the cut is frozen and in inference mode.
    By default only frozen stages cache; a tuning stage caches when it asks to.
    """
    frozen = ctx.spec.pretrained and not blocks
    wanted = frozen if stage.cache_features is None else stage.cache_features
    if not wanted:
        return None
    if frozen:
        return "pooled"
    if not ctx.spec.pretrained or resolve_unfreeze(ctx.spec, stage.unfreeze) == "all":
        raise TltkError(f"stage '{stage.name}': cache_features needs a frozen part below "
                        "the trained blocks; unfreeze fewer blocks or set cache_features false")
    return "activations"


def _record_stage(ctx, stage, blocks, cached, optimizer, seconds) -> None:
    """Append what the stage really ran with to run.json (the optimizer switch shows)."""
    entry = {"name": stage.name, "optimizer": type(optimizer).__name__,
             "momentum": float(getattr(optimizer, "momentum", 0.0) or 0.0),
             "trainable_blocks": blocks, "cached_features": cached,
             "epochs": stage.epochs, "seconds": round(seconds, 1)}
    stages = (ctx.run.status() or {}).get("stages", [])
    ctx.run.set_status("running", stages=[*stages, entry])


def _describe_blocks(blocks, spec) -> str:
    if not spec.pretrained:
        return "training from scratch"
    if not blocks:
        return "backbone frozen"
    if len(blocks) == len(spec.blocks):
        return "all blocks trainable"
    return f"trainable blocks {', '.join(blocks)}"


def _describe_optimizer(stage: StageConfig) -> str:
    text = f"{stage.optimizer} lr={stage.lr:g}"
    if stage.optimizer in ("sgd", "rmsprop"):
        text += f" momentum={stage.momentum:g}"
    if stage.lr_steps:
        text += " steps " + ", ".join(f"epoch {e}: {lr:g}" for e, lr in stage.lr_steps)
    if stage.schedule != "constant":
        text += f" {stage.schedule} schedule"
    if stage.warmup_epochs:
        text += f" after {stage.warmup_epochs} warm-up epochs"
    if stage.block_lr_decay is not None:
        text += f", x{stage.block_lr_decay:g} per block down"
    if stage.head_lr_mult != 1.0:
        text += f", head x{stage.head_lr_mult:g}"
    return text


def make_optimizer(ctx: Context, model: keras.Model, stage: StageConfig,
                   steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The stage's optimizer: its schedule, and per-block rates when it asks for them."""
    base = backbone_of(ctx.model)
    groups = block_layers(base, ctx.spec) if stage.block_lr_decay is not None else None
    lr = make_lr(stage, steps_per_epoch)
    return discriminative.make_optimizer(stage, model, lr, groups, base)


def _compile(ctx: Context, model: keras.Model, stage: StageConfig, steps: int) -> None:
    model.compile(optimizer=make_optimizer(ctx, model, stage, steps),
                  loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                           keras.metrics.SparseTopKCategoricalAccuracy(ctx.k, name="topk")],
                  jit_compile=ctx.config.jit)


def class_weights(ctx: Context) -> dict | None:
    """'balanced' weights: n / (classes x count), as scikit-learn defines them."""
    if ctx.config.data.class_weight != "balanced":
        return None
    labels = ctx.dataset.splits["train"].labels
    counts = np.bincount(labels, minlength=ctx.dataset.num_classes)
    return {c: len(labels) / (len(counts) * max(n, 1)) for c, n in enumerate(counts)}


def _augmenter(ctx: Context, stage: StageConfig, seed: int):
    if not stage.augment:
        return None
    from tltk.augment import RandomAffine

    return RandomAffine(**vars(ctx.config.augment), seed=seed)


def _fit_on_images(ctx: Context, stage: StageConfig) -> keras.Model:
    cfg = ctx.config
    train = ctx.dataset.splits["train"]
    steps = math.ceil(len(train) / cfg.batch_size)
    fits = tltk_data.core.images_fit_in_memory(len(train), ctx.image_size)
    train_ds = make_pipeline(train, ctx.image_size, cfg.batch_size, training=True,
                             seed=cfg.seed, augment=_augmenter(ctx, stage, cfg.seed),
                             resize_policy=cfg.data.resize, cache=cfg.data.cache_images and fits)
    val_ds = make_pipeline(ctx.dataset.splits["val"], ctx.image_size, cfg.batch_size,
                           training=False, seed=cfg.seed, resize_policy=cfg.data.resize,
                           cache=cfg.data.cache_images and fits)
    _compile(ctx, ctx.model, stage, steps)
    ctx.model.fit(train_ds, validation_data=val_ds, epochs=stage.epochs, verbose=0,
                  shuffle=False, callbacks=ctx.callbacks, class_weight=class_weights(ctx))
    return ctx.model


def _fit_on_features(ctx: Context, stage: StageConfig, blocks: list[str]) -> keras.Model:
    """Fit the part above the frozen cut on cached features of K augmented views."""
    cfg = ctx.config
    lower, upper, cut = split_at_blocks(ctx.model, ctx.spec, blocks)
    views = stage.feature_views if stage.augment else 1
    need = cache_bytes(lower.output_shape[1:], len(ctx.dataset.splits["train"]), views)
    if need > CACHE_BUDGET_BYTES:
        ctx.log(f"  cached activations would need {need / 1e9:.1f} GB (budget "
                f"{CACHE_BUDGET_BYTES / 1e9:.0f} GB): training on images instead")
        return _fit_on_images(ctx, stage)
    train = _features(ctx, stage, lower, cut, "train", views)
    val = _features(ctx, stage, lower, cut, "val", 1)[0]
    n = train.shape[1]
    labels = ctx.dataset.splits["train"].labels
    steps = math.ceil(n / cfg.batch_size)
    flat = train.reshape(-1, *train.shape[2:])
    # Every epoch draws n samples from all views, so an epoch means the same as on images.
    train_ds = (tf.data.Dataset.from_tensor_slices((flat, np.tile(labels, views)))
                .shuffle(n * views, seed=cfg.seed).repeat().batch(cfg.batch_size)
                .prefetch(tf.data.AUTOTUNE))
    val_ds = tf.data.Dataset.from_tensor_slices((val, ctx.dataset.splits["val"].labels))
    _compile(ctx, upper, stage, steps)
    upper.fit(train_ds, validation_data=val_ds.batch(cfg.batch_size), epochs=stage.epochs,
              steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=ctx.callbacks,
              class_weight=class_weights(ctx))
    return upper


def _features(ctx: Context, stage: StageConfig, lower: keras.Model, cut: str, split: str,
              views: int) -> np.ndarray:
    cfg = ctx.config
    key = {"backbone": ctx.spec.name, "cut": cut, "weights": weights_checksum(lower),
           "image_size": ctx.image_size, "preprocess": ctx.spec.preprocess,
           "resize": cfg.data.resize, "augment": vars(cfg.augment), "seed": cfg.seed}

    def make_inputs(view: int):
        augment = _augmenter(ctx, stage, cfg.seed + view) if view else None
        ds = make_pipeline(ctx.dataset.splits[split], ctx.image_size, cfg.batch_size,
                           training=False, seed=cfg.seed, augment=augment,
                           resize_policy=cfg.data.resize, cache=False)
        return ds.map(lambda x, y: x)

    cache = FeatureCache(cfg.cache_dir)
    return cache.get(lower, ctx.dataset.splits[split], key, make_inputs, views,
                     desc=f"features {split}")
