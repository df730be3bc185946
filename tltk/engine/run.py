"""The run lifecycle: one config in, one run directory out.

    train(config)
      prepare   load data, build backbone + head, create (or reopen) the run directory
      stage...  `tltk.engine.stage.run_stage` for every stage, one `model.fit` each
      finish    save final.keras, evaluate best, final (and ema) weights on every split

`train` builds the backbone first, so unavailable weights fail before any work.
Every epoch is committed to the run directory, so an interrupted run resumes after
its last completed epoch (see `tltk.engine.checkpoint`); a NaN or infinite loss stops
the run with the weights of the last good epoch kept and evaluated. `config.strategy`
runs it all in a `tf.distribute` strategy (see `tltk.engine.runtime`).

Example::

    from tltk.recipes import demo
    result = train(demo.config().override({"stages.anneal.epochs": 1}))
    result.metrics.columns.tolist()  # -> ['weights', 'split', 'top1', 'topk', 'k']
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import pandas as pd

from tltk import data as tltk_data
from tltk import faults
from tltk.config import RunConfig
from tltk.data.core import Dataset
from tltk.engine import checkpoint, runtime
from tltk.engine.callbacks import (
    BestModelSaver,
    EpochLogger,
    HistoryWriter,
    NumericalFault,
    Trackers,
)
from tltk.engine.context import Context
from tltk.engine.stage import check_stages, frozen_features, run_stage
from tltk.errors import TltkError
from tltk.evaluation.metrics import (
    default_k,
    evaluate_models,
    format_table,
    plus_minus,
    small_splits_warning,
)
from tltk.evaluation.reports import write_run_report
from tltk.fileio import model_bytes, require_space, save_model, write_csv
from tltk.log import log
from tltk.models.backbones import (
    OWN_WEIGHTS,
    build_backbone,
    canonical_backbone,
    check_image_size,
    config_backbone,
    resolve_unfreeze,
    weights_checksum,
    weights_label,
)
from tltk.models.heads import build_classifier, feature_extractor
from tltk.models.spec import BackboneSpec
from tltk.rundir import RunDir
from tltk.saving import load_keras_file


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


def resolve(config: RunConfig, spec: BackboneSpec, dataset: Dataset) -> RunConfig:
    """Fill in what the config left open: image size, top-k and the run directory."""
    size = config.data.image_size or spec.default_size
    out = config.out or f"runs/{config.recipe}-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # A model file's weights are its own: config.yaml and the report say so, not 'imagenet'.
    weights = OWN_WEIGHTS if spec.source and config.weights == "imagenet" else config.weights
    return replace(config, backbone=canonical_backbone(config.backbone), weights=weights,
                   data=replace(config.data, image_size=size), out=out,
                   top_k=config.top_k or default_k(dataset.num_classes))


def train(config: RunConfig, say=log, on_start=None, callbacks=()) -> RunResult:
    """Run all stages of `config`, evaluate best and final weights, write the run dir.

    When `config.out` holds an unfinished run of the same config, it is resumed after
    its last committed epoch instead. `on_start(run)` is called once the run directory
    is open (the CLI names it when Ctrl-C stops the run). `callbacks` join every stage's
    `fit` (`--budget`'s Deadline).
    """
    config.validate()
    spec = config_backbone(config)
    for stage in config.stages:
        resolve_unfreeze(spec, stage.unfreeze)  # bad block names fail before any work
    strategy = runtime.make_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    with runtime.precision_policy(config.precision), \
            runtime.op_determinism(config.deterministic), strategy.scope():
        return _train(config, spec, say, strategy, on_start, callbacks)


def _train(config: RunConfig, spec: BackboneSpec, say, strategy=None,
           on_start=None, callbacks=()) -> RunResult:
    ctx = prepare(config, spec, say, strategy)
    ctx.callbacks.extend(callbacks)
    try:
        check_stages(ctx)
        if on_start:
            on_start(ctx.run)
        for stage in ctx.config.stages:
            run_stage(ctx, stage)
        result = finish(ctx)
    except NumericalFault as fault:
        raise _after_fault(ctx, fault) from None
    except KeyboardInterrupt:
        # Every committed epoch stays: rerunning the command resumes after the last one.
        _mark_failed(ctx, "interrupted (Ctrl-C)", status="interrupted")
        ctx.run.close()
        raise
    except BaseException as exc:
        _mark_failed(ctx, f"{type(exc).__name__}: {exc}")
        ctx.run.close()
        raise
    end_run(ctx)
    write_run_report(ctx.run.path)
    say_where(ctx.run.path, say)
    runtime.cleanup(ctx.run, strategy)
    return result


def say_where(path: Path, say) -> None:
    """Where a finished run's model and report are, and the Python line that loads it.

    Example:
        >>> say_where(Path("runs/demo"), print)
        best model: runs/demo/best.keras
        report:     runs/demo/report.html
        in Python:  import tltk; model, class_names = tltk.load_model("runs/demo")
    """
    say(f"best model: {path / 'best.keras'}")
    say(f"report:     {path / 'report.html'}")
    say(f'in Python:  import tltk; model, class_names = tltk.load_model("{path}")')


def end_run(ctx: Context) -> None:
    """Mark a run complete: drop its resume state, release its lock.

    The tuner ends each trial with it without `finish` (trials are compared on
    validation only).
    """
    ctx.run.set_status("complete", finished=time.time())
    checkpoint.clear(ctx.run)
    ctx.run.close()


def _restore(ctx: Context) -> None:
    """On a resumed run: restore the end of its last finished stage, which `run_stage`
    then skips with the ones before it."""
    if not ctx.run.resumed:
        return
    ctx.done = checkpoint.restore_stages(ctx.run, ctx.model, ctx.trackers)
    if ctx.done:
        ctx.say(f"resuming: stage(s) {', '.join(ctx.done)} finished before the interruption")


def _mark_failed(ctx: Context, reason: str, status: str = "failed") -> None:
    try:
        ctx.run.set_status(status, error=reason[:500])
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


def prepare(config: RunConfig, spec: BackboneSpec, say=log, strategy=None,
            dry_run: bool = False) -> Context:
    """Load data, build the classifier and create the run directory (no training yet).

    The pieces `train` runs stage by stage; the tuner, the LR finder and the dry run use
    them too. With `dry_run` no run directory is created (the context's `run` is None).
    """
    size = config.data.image_size or spec.default_size
    weights = config.weights if spec.pretrained else "none"
    check_image_size(spec, size)
    dataset = tltk_data.load(config.data, seed=config.seed)
    tltk_data.require_training_splits(dataset)
    backbone = build_backbone(spec, weights, size)  # unavailable weights fail before training
    config = resolve(config, spec, dataset)
    if dry_run:
        model = build_classifier(backbone, spec, dataset.num_classes, config.head)
        return Context(config, spec, dataset, model, None, size, config.top_k, None, [], say)
    run = RunDir.create(runtime.run_path(config.out, strategy), config.to_yaml())
    say(f"run {run.path}: {spec.name} ({weights_label(spec, weights)} weights) at {size}px "
        f"on {dataset.name}: "
        f"{dataset.num_classes} classes, "
        + ", ".join(f"{name} {len(s)}" for name, s in dataset.splits.items())
        + (" (resumed)" if run.resumed else ""))
    run.write_json("classes.json", dataset.class_names)
    run.set_status("running", splits={name: len(s) for name, s in dataset.splits.items()})
    warning = small_splits_warning(dataset.sizes())
    if warning:
        logging.getLogger(__name__).warning("warning: %s", warning)
    if dataset.skipped:
        skipped = pd.DataFrame(dataset.skipped, columns=["path", "reason"])
        write_csv(run.file("skipped.csv"), skipped)
        say(f"skipped {len(dataset.skipped)} unreadable files: see {run.file('skipped.csv')}")
    model = build_classifier(backbone, spec, dataset.num_classes, config.head)
    try:
        require_space(run.path, run_bytes(model, run.path), "the run")
    except TltkError:
        run.close()
        raise
    trackers = Trackers(HistoryWriter(run), BestModelSaver(model, run))
    logger = EpochLogger(say, [(s.name, s.epochs) for s in config.stages], config.top_k,
                         dataset.num_classes)
    # TensorBoard: loss, accuracy and learning rate per epoch, `tensorboard --logdir runs/`.
    board = keras.callbacks.TensorBoard(str(run.file("tensorboard")), write_graph=False,
                                        profile_batch=0)
    callbacks = [trackers.history, trackers.saver, logger, board]
    ctx = Context(config, spec, dataset, model, run, size, config.top_k, trackers, callbacks,
                  say)
    try:
        _restore(ctx)
    except BaseException:
        run.close()
        raise
    return ctx


def shared_features(ctx: Context, models: dict):
    """`split -> pooled features` when no stage changed the pretrained backbone (every
    model's feature extractor has the same weights), else None.

    The models then differ only in their heads, so each split goes through the backbone
    once, from (or into) the feature cache the head trained on, instead of once per
    weights: on a CPU that is most of the evaluation's time (B9: 35 of a 2-minute
    budget), and exact, as pooled features are cached in float32.
    """
    if not ctx.spec.pretrained or ctx.config.tta != "none":
        return None
    if len({weights_checksum(feature_extractor(m)) for m in models.values()}) > 1:
        return None
    return functools.cache(lambda split: frozen_features(ctx, split))


def run_bytes(model: keras.Model, path: Path) -> int:
    """Roughly the disk space a run still needs: at its peak it holds best.keras,
    final.keras and an epoch checkpoint (each the weights with an Adam state of twice
    their size), a stage's end weights, and one of them again as a temp file while it
    is written; what the run directory already holds counts as written.

    Example::

        run_bytes(model, Path("runs/x"))  # about 13 times the weights, for a new run
    """
    weights = model_bytes(model, optimizer=False)
    held = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return max(0, 13 * weights - held)


def finish(ctx: Context) -> RunResult:
    """Save the final model, evaluate best, final and (when a stage averaged its
    weights) ema weights, with TTA rows when `config.tta` asks, print the table."""
    run, model, config = ctx.run, ctx.model, ctx.config
    saver = ctx.trackers.saver
    save_model(model, run.file("final.keras"))
    if not run.file("best.keras").is_file():  # no validation improvement was ever seen
        save_model(model, run.file("best.keras"))
    faults.fault_point("evaluate:start")
    models = {"best": load_keras_file(run.file("best.keras")), "final": model}
    if any(stage.ema is not None for stage in config.stages) and run.file("ema.keras").is_file():
        models["ema"] = load_keras_file(run.file("ema.keras"))
    ctx.say(f"evaluating {' and '.join(models)} weights on "
            f"{', '.join(ctx.dataset.eval_splits())}"
            + (" (with flip TTA)" if config.tta != "none" else ""))
    metrics = evaluate_models(models, ctx.dataset, run, ctx.image_size, config.batch_size,
                              ctx.k, config.data.resize, tta=config.tta,
                              features=shared_features(ctx, models))
    sizes = ctx.dataset.sizes()
    best = 100 * saver.best
    ctx.say(f"best weights: epoch {saver.best_epoch + 1} of {saver.epochs_seen}, stage "
            f"{saver.best_stage} (val top-1 {best:.2f}%{plus_minus(best, sizes.get('val'))})")
    ctx.say(format_table(metrics, ctx.dataset.num_classes, sizes))
    return RunResult(run.path, metrics, model, config)
