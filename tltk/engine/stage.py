"""One stage: freeze or unfreeze blocks, choose images or cached features, and fit.

A stage is a `StageConfig` (data). `run_stage` decides, in this order:
1. which backbone blocks train (`set_trainable`), and whether their BatchNorm trains
   (`batchnorm: train`, on a training-mode view of the classifier) or stays frozen;
2. whether to train on cached features (`_use_cache`): the head alone on pooled
   features of a frozen backbone, the top blocks on cached activations of the frozen
   part below them, or the whole classifier on images;
3. the optimizer (with an EMA of the weights when `ema` is set) and the loss (label
   smoothing, mixup) it recompiles with (`_compile`), and the augmentation policy;
4. the `model.fit` that continues after the stage's last committed epoch (`_fit`),
   then `ema.keras` when the stage averages its weights.

A new kind of stage (a new field of `StageConfig`) is read here.

Example::

    ctx = tltk.engine.prepare(config, spec)
    for stage in ctx.config.stages:
        run_stage(ctx, stage)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tltk.config import StageConfig
from tltk.data.core import decode_split, images_fit_in_memory, make_pipeline
from tltk.engine import checkpoint, streams
from tltk.engine.callbacks import NonFiniteLossGuard, NumericalFault, RawWeights
from tltk.engine.context import Context
from tltk.engine.features import FeatureCache, cache_budget, cache_bytes
from tltk.errors import TltkError
from tltk.fileio import save_model
from tltk.models.backbones import (
    block_layers,
    cache_name,
    resolve_unfreeze,
    set_trainable,
    weights_checksum,
)
from tltk.models.heads import backbone_of, split_at_blocks, training_view
from tltk.optim import discriminative
from tltk.optim.schedules import make_lr

# Shuffle buffer of a training image stream (decoded images are held in it).
SHUFFLE_BUFFER = 10_000


@dataclass(frozen=True)
class CachePlan:
    """The cache a stage trains on: where the classifier is cut, and its size.

    `over` says why it does not fit the memory budget (the stage then trains on images).
    """

    kind: str  # "pooled" (frozen backbone) or "activations" (below the trainable blocks)
    cut: str
    shape: tuple
    views: int
    bytes: float
    over: str | None


@dataclass(frozen=True)
class StagePlan:
    """Everything `run_stage`, the dry run and the LR finder need to train a stage.

    `fitted` is the model view `fit` trains: the classifier, its training-mode view
    (`batchnorm: train`), or the part above the cut when the stage trains on a cache
    (`lower` computes the cached input). Labels are one-hot when `one_hot` (mixup,
    label smoothing); `mixer` makes them so per batch and mixes images when asked.

    Example::

        plan = plan_stage(ctx, ctx.config.stage("finetune"))
        plan.cache.kind, plan.blocks  # -> ('activations', ['block5'])
        plan.compile(steps=100)
    """

    stage: StageConfig
    blocks: list
    trainable: int
    cache: CachePlan | None
    lower: keras.Model | None
    fitted: keras.Model
    loss: keras.losses.Loss
    one_hot: bool
    k: int
    jit: bool
    make_optimizer: Callable[[Any], keras.optimizers.Optimizer]
    make_augmenter: Callable[[int], Callable | None]
    mixer: Callable | None

    @property
    def cached(self) -> str | None:
        """The cache kind the stage trains on, or None when it trains on images."""
        return self.cache.kind if self.cache and not self.cache.over else None

    def metrics(self) -> list:
        """Fresh top-1 and top-k metrics for the stage's form of labels."""
        if self.one_hot:
            return [keras.metrics.CategoricalAccuracy(name="top1"),
                    keras.metrics.TopKCategoricalAccuracy(self.k, name="topk")]
        return [keras.metrics.SparseCategoricalAccuracy(name="top1"),
                keras.metrics.SparseTopKCategoricalAccuracy(self.k, name="topk")]

    def compile(self, steps_per_epoch: int) -> None:
        """Compile `fitted` with the stage's optimizer (schedule over its steps) and loss."""
        optimizer = self.make_optimizer(make_lr(self.stage, steps_per_epoch))
        self.fitted.compile(optimizer=optimizer, loss=self.loss, metrics=self.metrics(),
                            jit_compile=self.jit)

    def labels(self, dataset: tf.data.Dataset, classes: int) -> tf.data.Dataset:
        """`(x, y)` batches with labels in the form the stage's loss expects."""
        if not self.one_hot:
            return dataset
        return dataset.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), classes)))


def plan_stage(ctx: Context, stage: StageConfig, strict: bool = True) -> StagePlan:
    """Decide how `stage` trains: blocks, cache, model view, loss, labels, augmentation.

    Sets the model's trainable flags as the stage trains them. A cache the stage asked
    for (`cache_features: true`) that is over the budget raises when `strict`.

    Example::

        plan_stage(ctx, ctx.config.stage("finetune")).cache
        # CachePlan(kind='activations', cut='block4_pool', shape=(14, 14, 512), views=4, ...)
    """
    blocks = set_trainable(backbone_of(ctx.model), ctx.spec, stage.unfreeze,
                           batchnorm=stage.batchnorm)
    freeze_head_batchnorm(ctx.model, frozen=bool(blocks) and ctx.spec.pretrained
                          and stage.batchnorm == "frozen")
    trainable = sum(int(np.prod(w.shape)) for w in ctx.model.trainable_weights)
    cache, lower, fitted = _plan_cache(ctx, stage, blocks, strict)
    one_hot = one_hot_labels(stage)
    return StagePlan(
        stage=stage, blocks=blocks, trainable=trainable, cache=cache, lower=lower,
        fitted=fitted, loss=stage_loss(stage), one_hot=one_hot, k=ctx.k,
        jit=ctx.config.jit,
        make_optimizer=lambda lr: _optimizer(ctx, fitted, stage, lr),
        make_augmenter=lambda seed: _augmenter(ctx, stage, seed),
        mixer=_mixer(ctx, stage))


def _plan_cache(ctx: Context, stage: StageConfig, blocks: list, strict: bool):
    """(cache plan or None, the cached part or None, the model view to fit)."""
    kind = _use_cache(ctx, stage, blocks)
    if kind:
        lower, upper, cut = split_at_blocks(ctx.model, ctx.spec,
                                            [] if kind == "pooled" else blocks,
                                            train_batchnorm=stage.batchnorm == "train")
        shape, views = tuple(lower.output_shape[1:]), stage.feature_views if stage.augment else 1
        splits = ctx.dataset.splits
        need = cache_bytes(shape, len(splits["train"]) * views + len(splits["val"]),
                           ctx.config.batch_size)
        cache = CachePlan(kind, cut, shape, views, need,
                          check_cache_budget(ctx, stage, need, views, strict))
        if not cache.over:
            return cache, lower, upper
    else:
        cache = None
    # The classifier runs a pretrained backbone in inference mode; BatchNorm that trains
    # needs the backbone called in training mode, in a view sharing every layer.
    trains_bn = (stage.batchnorm == "train" and ctx.spec.pretrained
                 and bool(resolve_unfreeze(ctx.spec, stage.unfreeze)))
    return cache, None, training_view(ctx.model) if trains_bn else ctx.model


def run_stage(ctx: Context, stage: StageConfig) -> None:
    """Plan the stage (`plan_stage`), recompile with its optimizer, and fit.

    A stage a resumed run finished before (`ctx.done`) is skipped; a stage it was in
    the middle of continues after its last committed epoch.
    """
    if stage.name in ctx.done:
        return
    if not stage.epochs:
        ctx.say(f"stage {stage.name}: skipped (0 epochs)")
        checkpoint.complete_stage(ctx.run, stage.name, ctx.model, ctx.trackers,
                                  {"name": stage.name, "skipped": True, "epochs": 0,
                                   "seconds": 0.0})
        return
    plan = plan_stage(ctx, stage)
    where = {None: "", "pooled": "; head on cached features",
             "activations": "; trainable part on cached activations"}[
        plan.cache.kind if plan.cache else None]
    ctx.say(f"stage {stage.name}: {stage.epochs} epochs, {describe_blocks(plan.blocks, ctx.spec)}"
            f", {plan.trainable:,} trainable weights; recompiling with "
            f"{describe_optimizer(stage)}" + _describe_augment(ctx, stage) + where)
    if plan.cache and plan.cache.over:
        ctx.say(f"  {plan.cache.over}: training on images instead")
    for cb in ctx.callbacks:
        cb.stage = stage.name
    started, ctx.resumed_seconds = time.time(), 0.0
    fitted = _fit_on_features(ctx, plan) if plan.cached else _fit_on_images(ctx, plan)
    seconds = ctx.resumed_seconds + time.time() - started
    _record_stage(ctx, stage, plan.blocks, plan.cached, fitted.optimizer, seconds)


def check_stages(ctx: Context) -> None:
    """Fail before any training when a stage's requested cache cannot fit the budget."""
    for stage in ctx.config.stages:
        if stage.name not in ctx.done and stage.epochs:
            plan_stage(ctx, stage)


def freeze_head_batchnorm(model: keras.Model, frozen: bool) -> None:
    """While backbone blocks are tuned, the head's BatchNorm keeps its statistics too.

    Its moving statistics were learned on the bottleneck features; if it renormalised
    with batch statistics while those features drift, training mode and inference
    mode would disagree. Frozen, every BatchNorm runs in inference mode and train and
    eval see the same network. A `batchnorm: train` stage lets it train (`frozen=False`).
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
    # A scratch backbone trains whole, so a recipe's caching default cannot apply.
    if not wanted or not ctx.spec.pretrained:
        return None
    if frozen:
        return "pooled"
    if resolve_unfreeze(ctx.spec, stage.unfreeze) == "all":
        raise TltkError(f"stage '{stage.name}': cache_features needs a frozen part below "
                        "the trained blocks; unfreeze fewer blocks or set cache_features false")
    return "activations"


def _record_stage(ctx, stage, blocks, cached, optimizer, seconds) -> None:
    """Append what the stage really ran with to run.json (the optimizer switch shows),
    with the weights a resume restarts from."""
    entry = {"name": stage.name, "optimizer": type(optimizer).__name__,
             "momentum": float(getattr(optimizer, "momentum", 0.0) or 0.0),
             "trainable_blocks": blocks, "cached_features": cached, "mixup": stage.mixup,
             "label_smoothing": stage.label_smoothing, "batchnorm": stage.batchnorm,
             "ema": stage.ema, "schedule": stage.schedule,
             "augment": _augment_policy(ctx, stage), "epochs": stage.epochs,
             "seconds": round(seconds, 1)}
    checkpoint.complete_stage(ctx.run, stage.name, ctx.model, ctx.trackers, entry)


def describe_blocks(blocks, spec) -> str:
    """Which part of the backbone trains, in words."""
    if not spec.pretrained:
        return "training from scratch"
    if not blocks:
        return "backbone frozen"
    if len(blocks) == len(spec.blocks):
        return "all blocks trainable"
    return f"trainable blocks {', '.join(blocks)}"


def describe_optimizer(stage: StageConfig) -> str:
    """The stage's optimizer, schedule and loss settings, as its log line shows them."""
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
    if stage.clipnorm is not None:
        text += f", gradient norm clipped at {stage.clipnorm:g}"
    if stage.mixup:
        text += f", mixup alpha={stage.mixup:g}"
    if stage.label_smoothing:
        text += f", label smoothing {stage.label_smoothing:g}"
    if stage.batchnorm == "train":
        text += ", BatchNorm training"
    if stage.ema is not None:
        text += f", weight EMA decay {stage.ema:g}"
    return text


def _augment_policy(ctx: Context, stage: StageConfig) -> str:
    return ctx.config.augment_policy if stage.augment else "none"


def _describe_augment(ctx: Context, stage: StageConfig) -> str:
    policy = _augment_policy(ctx, stage)
    if policy == "randaugment":
        return f"; RandAugment factor {ctx.config.randaugment_factor:g}"
    return "" if policy == "affine" else "; no augmentation"


def _optimizer(ctx: Context, fitted: keras.Model, stage: StageConfig,
               learning_rate) -> keras.optimizers.Optimizer:
    """The stage's optimizer at `learning_rate` (a float or a schedule), with per-block
    rates when the stage asks for them."""
    base = backbone_of(ctx.model)
    groups = block_layers(base, ctx.spec) if stage.block_lr_decay is not None else None
    return discriminative.make_optimizer(stage, fitted, learning_rate, groups, base)


def one_hot_labels(stage: StageConfig) -> bool:
    """Mixup's labels are mixed one-hot vectors, and Keras's sparse cross-entropy has no
    label smoothing: such stages train and validate on one-hot labels."""
    return bool(stage.mixup or stage.label_smoothing)


def stage_loss(stage: StageConfig) -> keras.losses.Loss:
    """The stage's cross-entropy: categorical (smoothed) on one-hot labels, else sparse.

    Example:
        >>> stage_loss(StageConfig("ft", epochs=1, label_smoothing=0.1)).label_smoothing
        0.1
    """
    if one_hot_labels(stage):
        return keras.losses.CategoricalCrossentropy(label_smoothing=stage.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def _mixer(ctx: Context, stage: StageConfig):
    """The stage's mixup as `(images, labels, seed) -> (images, one-hot labels)`, the
    one-hot labels alone for label smoothing, or None."""
    classes, alpha = ctx.dataset.num_classes, stage.mixup
    if not one_hot_labels(stage):
        return None
    if not alpha:
        return lambda x, y, _: (x, tf.one_hot(tf.cast(y, tf.int32), classes))
    from tltk.data.mixup import mix_batch

    return lambda x, y, seed: mix_batch(tf.cast(x, tf.float32), y, classes, alpha, seed)


def class_weights(ctx: Context) -> dict | None:
    """'balanced' weights: n / (classes x count), as scikit-learn defines them."""
    if ctx.config.data.class_weight != "balanced":
        return None
    labels = ctx.dataset.splits["train"].labels
    counts = np.bincount(labels, minlength=ctx.dataset.num_classes)
    return {c: len(labels) / (len(counts) * max(n, 1)) for c, n in enumerate(counts)}


def _augmenter(ctx: Context, stage: StageConfig, seed: int):
    """The stage's augmentation as `(images, batch seed) -> images`, or None."""
    if not stage.augment:
        return None
    from tltk.data.augment import make_augmenter

    return streams.seeded_augment(make_augmenter(ctx.config, seed))


def _fit(ctx: Context, plan: StagePlan, steps: int, make_train, val_ds,
         frozen_checksum: str | None = None) -> keras.Model:
    """Compile the plan's model, continue after the stage's last committed epoch, fit
    the rest.

    `make_train(first)` returns the training batches of epochs `first`.. of the stage.
    """
    stage, fitted = plan.stage, plan.fitted
    plan.compile(steps)
    trackers = ctx.trackers
    state = checkpoint.restore_epoch(ctx.run, stage.name, fitted, ctx.model, trackers,
                                     frozen_checksum)
    first = state["epochs_done"] if state else 0
    if state:
        ctx.resumed_seconds = state["seconds"]
        ctx.say(f"  resuming stage {stage.name} after epoch {first} of {stage.epochs}")
    if first >= stage.epochs:
        if stage.ema is not None:  # all epochs were committed before the interruption
            _keep_ema(ctx, fitted, None)
        return fitted
    commit = checkpoint.EpochCheckpoint(ctx.run, stage.name, ctx.model, trackers,
                                        ctx.resumed_seconds, frozen_checksum)
    guard = NonFiniteLossGuard(stage.name, fix=f"lower stages.{stage.name}.lr (now {stage.lr:g}) "
                               f"or set stages.{stage.name}.clipnorm (e.g. 1.0) in a --config YAML")
    raw = RawWeights() if stage.ema is not None else None
    trackers.saver.deferred = True  # best.keras follows the epoch's commit
    try:
        fitted.fit(make_train(first),
                   validation_data=plan.labels(val_ds, ctx.dataset.num_classes),
                   epochs=stage.epochs,
                   # EpochLogger prints each epoch's line (and a batch bar on a terminal).
                   initial_epoch=first, steps_per_epoch=steps, verbose=0,
                   shuffle=False,
                   callbacks=[*ctx.callbacks, commit, guard, *([raw] if raw else [])],
                   class_weight=class_weights(ctx))
    except NumericalFault:
        ctx.rolled_back = checkpoint.rollback(ctx.run, stage.name, fitted, ctx.model)
        raise
    finally:
        trackers.saver.deferred = False
    if raw is not None:
        _keep_ema(ctx, fitted, raw.values)
    return fitted


def _keep_ema(ctx: Context, fitted: keras.Model, raw: list | None) -> None:
    """Save the classifier with the optimizer's averaged weights as `ema.keras`, then put
    the trained weights back: later stages, `final` and resumes continue from those.

    Keras's `fit` ends by overwriting the weights with their EMA (`raw` holds them from
    before); with `raw` None no fit ran, and the restored optimizer's average is applied.
    """
    variables = fitted.trainable_weights
    if raw is None:
        raw = [keras.ops.convert_to_numpy(v) for v in variables]
        fitted.optimizer.finalize_variable_values(variables)
    save_model(ctx.model, ctx.run.file("ema.keras"))
    for variable, value in zip(variables, raw, strict=True):
        variable.assign(value)


def _fit_on_images(ctx: Context, plan: StagePlan) -> keras.Model:
    cfg = ctx.config
    make_train, steps = training_images(ctx, plan)
    val_ds = make_pipeline(ctx.dataset.splits["val"], ctx.image_size, cfg.batch_size,
                           training=False, seed=cfg.seed, resize_policy=cfg.data.resize,
                           cache=_images_in_memory(ctx))
    return _fit(ctx, plan, steps, make_train, val_ds)


def _images_in_memory(ctx: Context) -> bool:
    cfg = ctx.config
    return cfg.data.cache_images and images_fit_in_memory(len(ctx.dataset.splits["train"]),
                                                          ctx.image_size)


def training_images(ctx: Context, plan: StagePlan, through: keras.Model | None = None,
                    in_memory: bool | None = None):
    """`(make_train, steps per epoch)`: the stage's seeded, augmented, mixed training
    batches on images; `make_train(first)` streams epochs `first`.. of the stage.

    `through` (e.g. the plan's `lower`) runs on each augmented batch before mixing, so a
    cached plan can be fed on the fly (the LR finder). `in_memory` None decodes the
    split into memory when it fits (`data.cache_images`).

    Example::

        make_train, steps = training_images(ctx, plan_stage(ctx, stage))
        x, y = next(iter(make_train(0)))
    """
    cfg, stage = ctx.config, plan.stage
    train = ctx.dataset.splits["train"]
    warp = plan.make_augmenter(cfg.seed) or (lambda x, _: tf.cast(x, tf.float32))

    def augment(x, seed):
        return warp(x, seed) if through is None else through(warp(x, seed), training=False)
    if _images_in_memory(ctx) if in_memory is None else in_memory:
        # Decoded and resized once into one uint8 array; every epoch shuffles indices
        # with its own seed and gathers whole batches from it (no shuffle buffer of images).
        ctx.say(f"  decoding {len(train):,} training images at {ctx.image_size} px into memory")
        images = decode_split(train, ctx.image_size, cfg.batch_size, cfg.data.resize)
        examples, gather = tf.data.Dataset.range(len(train)), streams.array_gather(
            images, train.labels)
    else:
        # Pixels are whole 0..255 levels: as uint8 the shuffle buffer takes a quarter of
        # the memory, and the augmenter warps uint8 batches (it returns float32).
        examples = make_pipeline(train, ctx.image_size, cfg.batch_size, training=False,
                                 seed=cfg.seed, resize_policy=cfg.data.resize,
                                 cache=False).unbatch()
        examples, gather = examples.map(lambda x, y: (tf.cast(x, tf.uint8), y)), None

    def make_train(first: int) -> tf.data.Dataset:
        return streams.epoch_stream(examples, len(train), cfg.batch_size, cfg.seed, first,
                                   max(stage.epochs, 1), min(len(train), SHUFFLE_BUFFER),
                                   augment, plan.mixer, gather=gather)

    return make_train, math.ceil(len(train) / cfg.batch_size)


def check_cache_budget(ctx: Context, stage: StageConfig, need: float, views: int,
                       strict: bool = True) -> str | None:
    """None when a cache of `need` bytes (`views` per training image) fits the memory
    budget, else why it does not.

    A stage that asked for caching (`cache_features: true`) fails instead (when
    `strict`), saying by how much the cache is over and what to change.
    """
    budget = cache_budget(ctx.config.cache_budget_gb)
    if need <= budget:
        return None
    name = stage.name
    why = (f"stage '{name}': cached features would need {_size(need)}, "
           f"{_size(need - budget)} over the cache budget of {_size(budget)}")
    if stage.cache_features and strict:
        raise TltkError(f"{why}; raise it with --set cache_budget_gb=GB if the memory is "
                        f"there, lower stages.{name}.feature_views (now {views}), or set "
                        f"stages.{name}.cache_features=false to train on images")
    return why


def _size(nbytes: float) -> str:
    """Bytes as GB, or MB below 1 GB.

    Example:
        >>> _size(12.43e9), _size(5.2e6)
        ('12.43 GB', '5.2 MB')
    """
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def _fit_on_features(ctx: Context, plan: StagePlan) -> keras.Model:
    """Fit the part above the frozen cut on cached features of K augmented views.

    The caches stay memory-mapped on disk: training shuffles indices and gathers each
    batch from them, so no second copy of the features is made.
    """
    cfg, stage, lower = ctx.config, plan.stage, plan.lower
    cut, views = plan.cache.cut, plan.cache.views
    frozen_checksum = weights_checksum(lower)
    train = _features(ctx, lower, plan.make_augmenter, cut, frozen_checksum, "train", views)
    val = _features(ctx, lower, plan.make_augmenter, cut, frozen_checksum, "val", 1)[0]
    n = train.shape[1]
    labels = ctx.dataset.splits["train"].labels
    steps = math.ceil(n / cfg.batch_size)
    flat = train.reshape(-1, *train.shape[2:])  # a view of the memory map, not a copy
    # Half-precision activations are widened per batch: CPU kernels are float32.
    gather = streams.array_gather(flat, np.tile(labels, views), tf.float32)
    val_ds = streams.batches(len(val), cfg.batch_size, streams.array_gather(
        val, ctx.dataset.splits["val"].labels, tf.float32))

    def make_train(first: int) -> tf.data.Dataset:
        # Every epoch draws n samples from all views, so an epoch means the same as on images.
        return streams.epoch_stream(tf.data.Dataset.range(n * views), n, cfg.batch_size,
                                   cfg.seed, first, stage.epochs, n * views,
                                   mix=plan.mixer, gather=gather)

    return _fit(ctx, plan, steps, make_train, val_ds, frozen_checksum)


def _features(ctx: Context, lower: keras.Model, make_augmenter, cut: str, checksum: str,
              split: str, views: int) -> np.ndarray:
    cfg = ctx.config
    # "draws" marks per-batch seeded augmentation: caches of older versions differ.
    key = {"backbone": cache_name(ctx.spec), "cut": cut, "weights": checksum,
           "image_size": ctx.image_size, "preprocess": ctx.spec.preprocess,
           "resize": cfg.data.resize, "augment": vars(cfg.augment),
           # Only augmented views depend on the seed; plain features are shared by seeds.
           "seed": cfg.seed if views > 1 else None, "draws": "per-batch"}
    if views > 1 and cfg.augment_policy != "affine":  # affine keys stay as they were
        key.update(policy=cfg.augment_policy, factor=cfg.randaugment_factor)
    if cfg.precision != "float32":  # a bf16 backbone's features differ; float32 keys stay
        key["precision"] = cfg.precision

    def make_inputs(view: int):
        ds = make_pipeline(ctx.dataset.splits[split], ctx.image_size, cfg.batch_size,
                           training=False, seed=cfg.seed, resize_policy=cfg.data.resize,
                           cache=False)
        augment = make_augmenter(cfg.seed + view) if view else None
        if augment is None:
            return ds.map(lambda x, y: x)
        view_seed = streams.epoch_seed(cfg.seed, view)
        return ds.enumerate().map(
            lambda i, xy: augment(tf.cast(xy[0], tf.uint8),
                                  tf.stack([tf.constant(view_seed, tf.int64), i])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    cache = FeatureCache(cfg.cache_dir)
    return cache.get(lower, ctx.dataset.splits[split], key, make_inputs, views,
                     desc=f"features {split}")


def frozen_features(ctx: Context, split: str) -> np.ndarray:
    """Pooled features [N, D] of the frozen classifier on one split, from (or into) the
    very cache a frozen stage trains on, so `tltk audit` leaves `train` nothing to extract.

    Example::

        frozen_features(ctx, "val").shape  # -> (649, 1280)
    """
    lower, _, cut = split_at_blocks(ctx.model, ctx.spec, [])
    return _features(ctx, lower, None, cut, weights_checksum(lower), split, 1)[0]
