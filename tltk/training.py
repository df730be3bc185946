"""Staged training: stages are data, each one a `model.fit` with its own optimizer.

`train(config)` builds the backbone first (so unavailable weights fail before any
work), loads the data, grafts the head, runs every stage, then evaluates the best
and the final weights on every split. A frozen stage trains the head on cached
bottleneck features (see `tltk.features`); a stage that unfreezes blocks trains the
whole classifier on images, with augmentation in the input pipeline.

Every epoch is committed to the run directory, so an interrupted run resumes after
its last completed epoch (see `tltk.resume`); a NaN or infinite loss stops the run
with the weights of the last good epoch kept and evaluated. `config.strategy` runs
it all in a `tf.distribute` strategy (see `tltk.distribute`).

Example:
    >>> from recipes import demo
    >>> result = train(demo.config().override({"stages.finetune.epochs": 1}))
    >>> result.metrics.columns.tolist()
    ['weights', 'split', 'top1', 'topk', 'k']
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tltk import data as tltk_data
from tltk import discriminative, distribute, resume
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
from tltk.callbacks import (
    BestModelSaver,
    EpochLogger,
    HistoryWriter,
    NonFiniteLossGuard,
    NumericalFault,
)
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
# Shuffle buffer of a training image stream (decoded images are held in it).
SHUFFLE_BUFFER = 10_000

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
    done: list = field(default_factory=list)  # stages a resumed run finished before
    rolled_back: bool = False  # a numerical fault put back the last committed weights
    resumed_seconds: float = 0.0  # training time of the current stage before a resume


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
               "--class-weight must be 'balanced' or unset"),
              (config.data.per_class is None or config.data.per_class > 0,
               "--per-class must be a positive integer (or unset for all images)")]
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
        if stage.mixup < 0:
            raise TltkError(f"stage '{stage.name}': --mixup must be 0 (off) or a positive "
                            f"alpha such as 0.2 (got {stage.mixup:g})")
        make_lr(stage, steps_per_epoch=1)  # a bad schedule fails now, not after a stage
    names = [stage.name for stage in config.stages]
    if len(set(names)) != len(names):
        raise TltkError(f"stage names must be unique (got {names}); rename the repeated one")
    if config.strategy not in distribute.STRATEGIES:
        raise unknown_name("--strategy", config.strategy, distribute.STRATEGIES)


def resolve(config: RunConfig, spec: BackboneSpec, dataset: Dataset) -> RunConfig:
    """Fill in what the config left open: image size, top-k and the run directory."""
    size = config.data.image_size or spec.default_size
    out = config.out or f"runs/{config.recipe}-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return replace(config, data=replace(config.data, image_size=size), out=out,
                   top_k=config.top_k or default_k(dataset.num_classes))


def train(config: RunConfig, verbose: bool = True) -> RunResult:
    """Run all stages of `config`, evaluate best and final weights, write the run dir.

    When `config.out` holds an unfinished run of the same config, it is resumed after
    its last committed epoch instead.
    """
    validate(config)
    spec = get_backbone(config.backbone)
    for stage in config.stages:
        resolve_unfreeze(spec, stage.unfreeze)  # bad block names fail before any work
    strategy = distribute.make_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    with precision_policy(config.precision), op_determinism(config.deterministic), \
            strategy.scope():
        return _train(config, spec, log if verbose else (lambda _: None), strategy)


@contextlib.contextmanager
def precision_policy(name: str):
    """Set Keras's global dtype policy for a block and restore the previous one after.

    Example:
        >>> with precision_policy("mixed_bfloat16"):
        ...     model = build_classifier(...)
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """Turn on TensorFlow's deterministic kernels for a block (`--deterministic`).

    TensorFlow only exports `enable_op_determinism`; its internal query and disable
    (when present) switch it off again, so one deterministic run in a notebook or a
    test session does not slow down the ones after it.

    Example:
        >>> with op_determinism(True):
        ...     model.fit(...)  # bit-identical on a rerun with the same seed
    """
    from tensorflow.python.framework import config as tf_config

    is_enabled = getattr(tf_config, "is_op_determinism_enabled", lambda: True)
    was = not enabled or is_enabled()
    if not was:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was and hasattr(tf_config, "disable_op_determinism"):
            tf_config.disable_op_determinism()


def _train(config: RunConfig, spec: BackboneSpec, say, strategy=None) -> RunResult:
    ctx = prepare(config, spec, say, strategy)
    try:
        for stage in ctx.config.stages:
            run_stage(ctx, stage)
        result = finish(ctx)
    except NumericalFault as fault:
        raise _after_fault(ctx, fault) from None
    except BaseException as exc:
        _mark_failed(ctx, f"{type(exc).__name__}: {exc}")
        ctx.run.close()
        raise
    ctx.run.set_status("complete", finished=time.time())
    resume.clear(ctx.run)
    ctx.run.close()
    say(f"report: {write_run_report(ctx.run.path)}")
    distribute.cleanup(ctx.run, strategy)
    return result


def end_run(ctx: Context) -> None:
    """Mark a run complete without evaluating it: drop its resume state, release its lock.

    The tuner ends each trial with it (trials are compared on validation only).
    """
    ctx.run.set_status("complete", finished=time.time())
    resume.clear(ctx.run)
    ctx.run.close()


def _restore(ctx: Context) -> None:
    """On a resumed run: restore the end of its last finished stage, which `run_stage`
    then skips with the ones before it."""
    if not ctx.run.resumed:
        return
    ctx.done = resume.restore_stages(ctx.run, ctx.model, _trackers(ctx))
    if ctx.done:
        ctx.log(f"resuming: stage(s) {', '.join(ctx.done)} finished before the interruption")


def _mark_failed(ctx: Context, reason: str) -> None:
    try:
        ctx.run.set_status("failed", error=reason[:500])
    except (OSError, TltkError):  # a full disk must not hide the original error
        pass


def _after_fault(ctx: Context, fault: NumericalFault) -> NumericalFault:
    """Evaluate what the run kept (best and last good weights), mark it failed."""
    kept = ""
    try:
        if ctx.rolled_back or ctx.run.file("best.keras").is_file():
            finish(ctx)
            kept = f"; kept the best and the last good weights in {ctx.run.path}"
    finally:
        _mark_failed(ctx, f"NumericalFault: {fault}")
        ctx.run.close()
    return NumericalFault(f"{fault}{kept}")


def prepare(config: RunConfig, spec: BackboneSpec, say=log, strategy=None) -> Context:
    """Load data, build the classifier and create the run directory (no training yet).

    The pieces `train` runs stage by stage; the tuner and the LR finder use them too.
    """
    size = config.data.image_size or spec.default_size
    weights = config.weights if spec.pretrained else "none"
    check_image_size(spec, size)
    dataset = tltk_data.load(config.data, seed=config.seed)
    tltk_data.require_training_splits(dataset)
    backbone = build_backbone(spec, weights, size)  # unavailable weights fail before training
    config = resolve(config, spec, dataset)
    run = RunDir.create(distribute.run_path(config.out, strategy), config.to_yaml())
    say(f"run {run.path}: {spec.name} ({weights} weights) at {size}px on {dataset.name}: "
        f"{dataset.num_classes} classes, "
        + ", ".join(f"{name} {len(s)}" for name, s in dataset.splits.items())
        + (" (resumed)" if run.resumed else ""))
    run.write_json("classes.json", dataset.class_names)
    if dataset.skipped:
        skipped = pd.DataFrame(dataset.skipped, columns=["path", "reason"])
        write_csv(run.file("skipped.csv"), skipped)
        say(f"skipped {len(dataset.skipped)} unreadable files: see {run.file('skipped.csv')}")
    model = build_classifier(backbone, spec, dataset.num_classes, config.head)
    callbacks = [HistoryWriter(run), BestModelSaver(model, run), EpochLogger(say)]
    ctx = Context(config, spec, dataset, model, run, size, config.top_k, callbacks, say)
    try:
        _restore(ctx)
    except BaseException:
        run.close()
        raise
    return ctx


def _trackers(ctx: Context) -> tuple[HistoryWriter, BestModelSaver]:
    history = next(cb for cb in ctx.callbacks if isinstance(cb, HistoryWriter))
    saver = next(cb for cb in ctx.callbacks if isinstance(cb, BestModelSaver))
    return history, saver


def finish(ctx: Context) -> RunResult:
    """Save the final model, evaluate best and final weights, print the table."""
    run, model, config = ctx.run, ctx.model, ctx.config
    saver = _trackers(ctx)[1]
    save_model(model, run.file("final.keras"))
    if not run.file("best.keras").is_file():  # no validation improvement was ever seen
        save_model(model, run.file("best.keras"))
    best = load_model(run.file("best.keras"))
    metrics = evaluate_models({"best": best, "final": model}, ctx.dataset, run, ctx.image_size,
                              config.batch_size, ctx.k, config.data.resize)
    ctx.log(f"best weights: epoch {saver.best_epoch + 1} of {saver.epochs_seen}, stage "
            f"{saver.best_stage} (val top-1 {100 * saver.best:.2f}%)")
    ctx.log(format_table(metrics))
    return RunResult(run.path, metrics, model, config)


# --- one stage ----------------------------------------------------------------

def run_stage(ctx: Context, stage: StageConfig) -> None:
    """Freeze/unfreeze blocks, recompile with the stage's optimizer, and fit.

    A stage a resumed run finished before (`ctx.done`) is skipped; a stage it was in
    the middle of continues after its last committed epoch.
    """
    if stage.name in ctx.done:
        return
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
    started, ctx.resumed_seconds = time.time(), 0.0
    if cache:
        fitted = _fit_on_features(ctx, stage, [] if cache == "pooled" else blocks)
    else:
        fitted = _fit_on_images(ctx, stage)
    seconds = ctx.resumed_seconds + time.time() - started
    _record_stage(ctx, stage, blocks, cache, fitted.optimizer, seconds)


def freeze_head_batchnorm(model: keras.Model, frozen: bool) -> None:
    """While backbone blocks are tuned, the head's BatchNorm keeps its statistics too.

    Its moving statistics were learned on the bottleneck features; if it renormalised
    with batch statistics while those features drift, training mode and inference
    mode would disagree. Frozen, every BatchNorm runs in inference mode and train and
    eval see the same network.
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
    """Append what the stage really ran with to run.json (the optimizer switch shows),
    with the weights a resume restarts from."""
    entry = {"name": stage.name, "optimizer": type(optimizer).__name__,
             "momentum": float(getattr(optimizer, "momentum", 0.0) or 0.0),
             "trainable_blocks": blocks, "cached_features": cached, "mixup": stage.mixup,
             "epochs": stage.epochs, "seconds": round(seconds, 1)}
    resume.complete_stage(ctx.run, stage.name, ctx.model, _trackers(ctx), entry)


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
    return text


def make_optimizer(ctx: Context, model: keras.Model, stage: StageConfig,
                   steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The stage's optimizer: its schedule, and per-block rates when it asks for them."""
    base = backbone_of(ctx.model)
    groups = block_layers(base, ctx.spec) if stage.block_lr_decay is not None else None
    lr = make_lr(stage, steps_per_epoch)
    return discriminative.make_optimizer(stage, model, lr, groups, base)


def _compile(ctx: Context, model: keras.Model, stage: StageConfig, steps: int) -> None:
    # Mixup's labels are mixed one-hot vectors, so its stages use the categorical forms.
    if stage.mixup:
        loss, metrics = "categorical_crossentropy", [
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(ctx.k, name="topk")]
    else:
        loss, metrics = "sparse_categorical_crossentropy", [
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(ctx.k, name="topk")]
    model.compile(optimizer=make_optimizer(ctx, model, stage, steps), loss=loss,
                  metrics=metrics, jit_compile=ctx.config.jit)


def _mixer(ctx: Context, stage: StageConfig):
    """The stage's mixup as `(images, labels, seed) -> (images, one-hot labels)`, or None."""
    if not stage.mixup:
        return None
    from tltk.mixup import mix_batch

    classes, alpha = ctx.dataset.num_classes, stage.mixup
    return lambda x, y, seed: mix_batch(tf.cast(x, tf.float32), y, classes, alpha, seed)


def _validation(ctx: Context, stage: StageConfig, val_ds: tf.data.Dataset) -> tf.data.Dataset:
    """Validation batches with labels in the form the stage's loss expects."""
    if not stage.mixup:
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
    from tltk.augment import RandomAffine

    return resume.seeded_augment(RandomAffine(**vars(ctx.config.augment), seed=seed))


def _fit(ctx: Context, stage: StageConfig, fitted: keras.Model, steps: int, make_train,
         val_ds, frozen: str | None = None) -> keras.Model:
    """Compile `fitted`, continue after the stage's last committed epoch, fit the rest.

    `make_train(first)` returns the training batches of epochs `first`.. of the stage.
    """
    _compile(ctx, fitted, stage, steps)
    trackers = _trackers(ctx)
    state = resume.restore_epoch(ctx.run, stage.name, fitted, ctx.model, trackers, frozen)
    first = state["epochs_done"] if state else 0
    if state:
        ctx.resumed_seconds = state["seconds"]
        ctx.log(f"  resuming stage {stage.name} after epoch {first} of {stage.epochs}")
    if first >= stage.epochs:
        return fitted
    checkpoint = resume.EpochCheckpoint(ctx.run, stage.name, ctx.model, trackers,
                                        ctx.resumed_seconds, frozen)
    guard = NonFiniteLossGuard(stage.name, fix=f"lower stages.{stage.name}.lr (now {stage.lr:g}) "
                               f"or set stages.{stage.name}.clipnorm (e.g. 1.0) in a --config YAML")
    trackers[1].deferred = True  # best.keras follows the epoch's commit
    try:
        fitted.fit(make_train(first), validation_data=_validation(ctx, stage, val_ds),
                   epochs=stage.epochs,
                   initial_epoch=first, steps_per_epoch=steps, verbose=0, shuffle=False,
                   callbacks=[*ctx.callbacks, checkpoint, guard],
                   class_weight=class_weights(ctx))
    except NumericalFault:
        ctx.rolled_back = resume.rollback(ctx.run, stage.name, fitted, ctx.model)
        raise
    finally:
        trackers[1].deferred = False
    return fitted


def _fit_on_images(ctx: Context, stage: StageConfig) -> keras.Model:
    cfg = ctx.config
    train = ctx.dataset.splits["train"]
    steps = math.ceil(len(train) / cfg.batch_size)
    fits = tltk_data.core.images_fit_in_memory(len(train), ctx.image_size)
    # Decoded, resized and cached once; every epoch then shuffles with its own seed.
    examples = make_pipeline(train, ctx.image_size, cfg.batch_size, training=False,
                             seed=cfg.seed, resize_policy=cfg.data.resize,
                             cache=cfg.data.cache_images and fits).unbatch()
    # Pixels are whole 0..255 levels: as uint8 the shuffle buffer takes a quarter of the
    # memory, and the augmenter warps uint8 batches (it returns float32).
    examples = examples.map(lambda x, y: (tf.cast(x, tf.uint8), y))
    augment = _augmenter(ctx, stage, cfg.seed) or (lambda x, _: tf.cast(x, tf.float32))
    val_ds = make_pipeline(ctx.dataset.splits["val"], ctx.image_size, cfg.batch_size,
                           training=False, seed=cfg.seed, resize_policy=cfg.data.resize,
                           cache=cfg.data.cache_images and fits)

    def make_train(first: int) -> tf.data.Dataset:
        return resume.epoch_stream(examples, len(train), cfg.batch_size, cfg.seed, first,
                                   stage.epochs, min(len(train), SHUFFLE_BUFFER), augment,
                                   _mixer(ctx, stage))

    return _fit(ctx, stage, ctx.model, steps, make_train, val_ds)


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
    frozen = weights_checksum(lower)
    train = _features(ctx, stage, lower, cut, frozen, "train", views)
    val = _features(ctx, stage, lower, cut, frozen, "val", 1)[0]
    n = train.shape[1]
    labels = ctx.dataset.splits["train"].labels
    steps = math.ceil(n / cfg.batch_size)
    flat = train.reshape(-1, *train.shape[2:])
    examples = tf.data.Dataset.from_tensor_slices((flat, np.tile(labels, views)))
    val_ds = tf.data.Dataset.from_tensor_slices((val, ctx.dataset.splits["val"].labels))

    def make_train(first: int) -> tf.data.Dataset:
        # Every epoch draws n samples from all views, so an epoch means the same as on images.
        return resume.epoch_stream(examples, n, cfg.batch_size, cfg.seed, first, stage.epochs,
                                   n * views, mix=_mixer(ctx, stage))

    return _fit(ctx, stage, upper, steps, make_train, val_ds.batch(cfg.batch_size), frozen)


def _features(ctx: Context, stage: StageConfig, lower: keras.Model, cut: str, checksum: str,
              split: str, views: int) -> np.ndarray:
    cfg = ctx.config
    # "draws" marks per-batch seeded augmentation: caches of older versions differ.
    key = {"backbone": ctx.spec.name, "cut": cut, "weights": checksum,
           "image_size": ctx.image_size, "preprocess": ctx.spec.preprocess,
           "resize": cfg.data.resize, "augment": vars(cfg.augment),
           # Only augmented views depend on the seed; plain features are shared by seeds.
           "seed": cfg.seed if views > 1 else None, "draws": "per-batch"}

    def make_inputs(view: int):
        ds = make_pipeline(ctx.dataset.splits[split], ctx.image_size, cfg.batch_size,
                           training=False, seed=cfg.seed, resize_policy=cfg.data.resize,
                           cache=False)
        augment = _augmenter(ctx, stage, cfg.seed + view) if view else None
        if augment is None:
            return ds.map(lambda x, y: x)
        view_seed = resume.epoch_seed(cfg.seed, view)
        return ds.enumerate().map(
            lambda i, xy: augment(tf.cast(xy[0], tf.uint8),
                                  tf.stack([tf.constant(view_seed, tf.int64), i])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    cache = FeatureCache(cfg.cache_dir)
    return cache.get(lower, ctx.dataset.splits[split], key, make_inputs, views,
                     desc=f"features {split}")
