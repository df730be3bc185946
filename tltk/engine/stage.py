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

import keras
import numpy as np
import tensorflow as tf

from tltk.config import StageConfig
from tltk.data.core import decode_split, images_fit_in_memory, make_pipeline
from tltk.engine import checkpoint, streams
from tltk.engine.callbacks import NonFiniteLossGuard, NumericalFault, RawWeights
from tltk.engine.features import FeatureCache, cache_budget, cache_bytes
from tltk.engine.run import Context
from tltk.errors import TltkError
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
from tltk.rundir import save_model

# Shuffle buffer of a training image stream (decoded images are held in it).
SHUFFLE_BUFFER = 10_000


def run_stage(ctx: Context, stage: StageConfig) -> None:
    """Freeze/unfreeze blocks, recompile with the stage's optimizer, and fit.

    A stage a resumed run finished before (`ctx.done`) is skipped; a stage it was in
    the middle of continues after its last committed epoch.
    """
    if stage.name in ctx.done:
        return
    if not stage.epochs:
        ctx.log(f"stage {stage.name}: skipped (0 epochs)")
        checkpoint.complete_stage(ctx.run, stage.name, ctx.model, ctx.trackers,
                                  {"name": stage.name, "skipped": True, "epochs": 0,
                                   "seconds": 0.0})
        return
    backbone = backbone_of(ctx.model)
    blocks = set_trainable(backbone, ctx.spec, stage.unfreeze, batchnorm=stage.batchnorm)
    freeze_head_batchnorm(ctx.model, frozen=bool(blocks) and ctx.spec.pretrained
                          and stage.batchnorm == "frozen")
    cache = _use_cache(ctx, stage, blocks)
    trainable = sum(int(np.prod(w.shape)) for w in ctx.model.trainable_weights)
    where = {None: "", "pooled": "; head on cached features",
             "activations": "; trainable part on cached activations"}[cache]
    ctx.log(f"stage {stage.name}: {stage.epochs} epochs, {_describe_blocks(blocks, ctx.spec)}, "
            f"{trainable:,} trainable weights; recompiling with {_describe_optimizer(stage)}"
            + _describe_augment(ctx, stage) + where)
    for cb in ctx.callbacks:
        cb.stage = stage.name
    started, ctx.resumed_seconds = time.time(), 0.0
    if cache:
        fitted = _fit_on_features(ctx, stage, [] if cache == "pooled" else blocks)
    else:
        fitted = _fit_on_images(ctx, stage)
    seconds = ctx.resumed_seconds + time.time() - started
    _record_stage(ctx, stage, blocks, cache, fitted.optimizer, seconds)


def stage_plan(ctx: Context, stage: StageConfig, strict: bool = True) -> dict:
    """What `run_stage` will do: trainable blocks and weights, and the cache it builds.

    Sets the model's trainable flags as the stage will (`run_stage` sets them again).
    A requested cache over the budget raises (see `check_cache_budget`) when `strict`.

    Example::

        stage_plan(ctx, ctx.config.stage("finetune"))["cache"]
        # {'kind': 'activations', 'cut': 'block4_pool', 'views': 4, 'bytes': 12.4e9, ...}
    """
    blocks = set_trainable(backbone_of(ctx.model), ctx.spec, stage.unfreeze)
    freeze_head_batchnorm(ctx.model, frozen=bool(blocks) and ctx.spec.pretrained)
    trainable = sum(int(np.prod(w.shape)) for w in ctx.model.trainable_weights)
    plan = {"blocks": blocks, "trainable": trainable, "cache": None}
    kind = _use_cache(ctx, stage, blocks)
    if kind:
        lower, _, cut = split_at_blocks(ctx.model, ctx.spec, [] if kind == "pooled" else blocks)
        shape, views = tuple(lower.output_shape[1:]), stage.feature_views if stage.augment else 1
        splits = ctx.dataset.splits
        plan["cache"] = {"kind": kind, "cut": cut, "shape": shape, "views": views,
                         "bytes": cache_bytes(shape, len(splits["train"]) * views
                                              + len(splits["val"]), ctx.config.batch_size),
                         "over": check_cache_budget(ctx, stage, shape, views, strict)}
    return plan


def check_stages(ctx: Context) -> None:
    """Fail before any training when a stage's requested cache cannot fit the budget."""
    for stage in ctx.config.stages:
        if stage.name not in ctx.done and stage.epochs:
            stage_plan(ctx, stage)


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


def stage_optimizer(ctx: Context, model: keras.Model, stage: StageConfig,
                   steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The stage's optimizer: its schedule, and per-block rates when it asks for them."""
    base = backbone_of(ctx.model)
    groups = block_layers(base, ctx.spec) if stage.block_lr_decay is not None else None
    lr = make_lr(stage, steps_per_epoch)
    return discriminative.make_optimizer(stage, model, lr, groups, base)


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


def _compile(ctx: Context, model: keras.Model, stage: StageConfig, steps: int) -> None:
    loss = stage_loss(stage)
    if one_hot_labels(stage):
        metrics = [
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(ctx.k, name="topk")]
    else:
        metrics = [
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(ctx.k, name="topk")]
    model.compile(optimizer=stage_optimizer(ctx, model, stage, steps), loss=loss,
                  metrics=metrics, jit_compile=ctx.config.jit)


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


def _validation(ctx: Context, stage: StageConfig, val_ds: tf.data.Dataset) -> tf.data.Dataset:
    """Validation batches with labels in the form the stage's loss expects."""
    if not one_hot_labels(stage):
        return val_ds
    classes = ctx.dataset.num_classes
    return val_ds.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), classes)))


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


def _fit(ctx: Context, stage: StageConfig, fitted: keras.Model, steps: int, make_train,
         val_ds, frozen: str | None = None) -> keras.Model:
    """Compile `fitted`, continue after the stage's last committed epoch, fit the rest.

    `make_train(first)` returns the training batches of epochs `first`.. of the stage.
    """
    _compile(ctx, fitted, stage, steps)
    trackers = ctx.trackers
    state = checkpoint.restore_epoch(ctx.run, stage.name, fitted, ctx.model, trackers, frozen)
    first = state["epochs_done"] if state else 0
    if state:
        ctx.resumed_seconds = state["seconds"]
        ctx.log(f"  resuming stage {stage.name} after epoch {first} of {stage.epochs}")
    if first >= stage.epochs:
        if stage.ema is not None:  # all epochs were committed before the interruption
            _keep_ema(ctx, fitted, None)
        return fitted
    commit = checkpoint.EpochCheckpoint(ctx.run, stage.name, ctx.model, trackers,
                                        ctx.resumed_seconds, frozen)
    guard = NonFiniteLossGuard(stage.name, fix=f"lower stages.{stage.name}.lr (now {stage.lr:g}) "
                               f"or set stages.{stage.name}.clipnorm (e.g. 1.0) in a --config YAML")
    raw = RawWeights() if stage.ema is not None else None
    trackers.saver.deferred = True  # best.keras follows the epoch's commit
    try:
        fitted.fit(make_train(first), validation_data=_validation(ctx, stage, val_ds),
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


def _fit_on_images(ctx: Context, stage: StageConfig) -> keras.Model:
    cfg = ctx.config
    train = ctx.dataset.splits["train"]
    steps = math.ceil(len(train) / cfg.batch_size)
    fits = cfg.data.cache_images and images_fit_in_memory(len(train), ctx.image_size)
    augment = _augmenter(ctx, stage, cfg.seed) or (lambda x, _: tf.cast(x, tf.float32))
    val_ds = make_pipeline(ctx.dataset.splits["val"], ctx.image_size, cfg.batch_size,
                           training=False, seed=cfg.seed, resize_policy=cfg.data.resize,
                           cache=fits)
    if fits:
        # Decoded and resized once into one uint8 array; every epoch shuffles indices
        # with its own seed and gathers whole batches from it (no shuffle buffer of images).
        ctx.log(f"  decoding {len(train):,} training images at {ctx.image_size} px into memory")
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
                                   stage.epochs, min(len(train), SHUFFLE_BUFFER), augment,
                                   _mixer(ctx, stage), gather=gather)

    # The classifier runs a pretrained backbone in inference mode; BatchNorm that trains
    # needs the backbone called in training mode, in a view sharing every layer.
    trains_bn = (stage.batchnorm == "train" and ctx.spec.pretrained
                 and bool(resolve_unfreeze(ctx.spec, stage.unfreeze)))
    fitted = training_view(ctx.model) if trains_bn else ctx.model
    return _fit(ctx, stage, fitted, steps, make_train, val_ds)


def check_cache_budget(ctx: Context, stage: StageConfig, shape: tuple, views: int,
                       strict: bool = True) -> str | None:
    """None when the stage's cache fits the memory budget, else why it does not.

    A stage that asked for caching (`cache_features: true`) fails instead (when
    `strict`), saying by how much the cache is over and what to change.
    """
    splits = ctx.dataset.splits
    need = cache_bytes(shape, len(splits["train"]) * views + len(splits["val"]),
                       ctx.config.batch_size)
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


def _fit_on_features(ctx: Context, stage: StageConfig, blocks: list[str]) -> keras.Model:
    """Fit the part above the frozen cut on cached features of K augmented views.

    The caches stay memory-mapped on disk: training shuffles indices and gathers each
    batch from them, so no second copy of the features is made.
    """
    cfg = ctx.config
    lower, upper, cut = split_at_blocks(ctx.model, ctx.spec, blocks,
                                        train_batchnorm=stage.batchnorm == "train")
    views = stage.feature_views if stage.augment else 1
    over = check_cache_budget(ctx, stage, lower.output_shape[1:], views)
    if over:
        ctx.log(f"  {over}: training on images instead")
        return _fit_on_images(ctx, stage)
    frozen = weights_checksum(lower)
    train = _features(ctx, stage, lower, cut, frozen, "train", views)
    val = _features(ctx, stage, lower, cut, frozen, "val", 1)[0]
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
                                   mix=_mixer(ctx, stage), gather=gather)

    return _fit(ctx, stage, upper, steps, make_train, val_ds, frozen)


def _features(ctx: Context, stage: StageConfig, lower: keras.Model, cut: str, checksum: str,
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

    def make_inputs(view: int):
        ds = make_pipeline(ctx.dataset.splits[split], ctx.image_size, cfg.batch_size,
                           training=False, seed=cfg.seed, resize_policy=cfg.data.resize,
                           cache=False)
        augment = _augmenter(ctx, stage, cfg.seed + view) if view else None
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
