"""Learning-rate range test (Smith 2017; popularised as the fastai "LR finder").

Train for up to `steps` batches while the learning rate grows exponentially from
`start_lr` to `end_lr`, record the loss per batch, and stop once the smoothed loss
diverges (exceeds 4x the best smoothed loss so far). The suggestion is the rate where
the smoothed loss falls fastest (steepest descent in log-lr); the rate at the minimum
loss divided by 10 is reported as a more cautious alternative. The model's weights and
its compiled optimizer are restored afterwards, so the test leaves no trace.

Example::

    result = find_lr(model, train_ds, optimizer="sgd", steps=100)
    result.suggestion, result.rule  # -> (0.0123, 'steepest descent of the smoothed loss')
    plot_lr_find(result, "runs/x/lr_find.png")
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tltk.errors import TltkError, unknown_name
from tltk.fileio import write_bytes, write_csv

STEEPEST = "steepest descent of the smoothed loss"
MIN_OVER_10 = "minimum of the smoothed loss / 10"
FINDER_OPTIMIZERS = {"sgd": lambda: keras.optimizers.SGD(1e-7, momentum=0.9),
                     "adam": lambda: keras.optimizers.Adam(1e-7)}


@dataclass
class LRFinderResult:
    """Per-batch learning rates and losses of a range test, and the suggested rate."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    rule: str
    alternative: float  # rate at the minimum smoothed loss / 10
    alternative_rule: str = MIN_OVER_10
    diverged: bool = False

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"step": np.arange(len(self.lrs)), "lr": self.lrs,
                             "loss": self.losses, "smoothed": self.smoothed})

    def summary(self) -> str:
        return (f"suggested lr {self.suggestion:.3g} ({self.rule}); "
                f"alternative {self.alternative:.3g} ({self.alternative_rule})")


class _RangeTest(keras.callbacks.Callback):
    """Raise the rate exponentially per batch; stop when the smoothed loss diverges."""

    def __init__(self, start_lr: float, end_lr: float, steps: int, beta: float,
                 diverge: float):
        super().__init__()
        self.lrs = start_lr * (end_lr / start_lr) ** (np.arange(steps) / max(steps - 1, 1))
        self.beta, self.diverge = beta, diverge
        self.losses, self.smoothed, self.average, self.best = [], [], 0.0, math.inf
        self.diverged = False

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = float(self.lrs[len(self.losses)])

    def on_train_batch_end(self, batch, logs=None):
        # Each fit epoch is a single batch, so the logged (epoch-mean) loss is its loss.
        loss = float(logs["loss"])
        self.losses.append(loss)
        self.average = self.beta * self.average + (1 - self.beta) * loss
        smoothed = self.average / (1 - self.beta ** len(self.losses))  # bias-corrected EMA
        self.smoothed.append(smoothed)
        self.best = min(self.best, smoothed)
        if not math.isfinite(loss) or smoothed > self.diverge * self.best:
            self.diverged = True
            self.model.stop_training = True


def find_lr(model: keras.Model, train_ds, start_lr: float = 1e-7, end_lr: float = 1.0,
            steps: int = 100, optimizer="sgd", loss=None, beta: float = 0.98,
            diverge: float = 4.0) -> LRFinderResult:
    """Run a learning-rate range test on `model` over batches of `train_ds`.

    `train_ds` yields `(images, labels)` batches (it is repeated as needed). The loss is
    the model's compiled loss, or `loss` (default sparse categorical cross-entropy) for
    an uncompiled model; `optimizer` is "sgd" (momentum 0.9), "adam", or a fresh Keras
    optimizer built with a float learning rate (e.g. a stage's discriminative one).
    Weights are restored exactly; a compiled model gets its own optimizer object back
    (with its state), an uncompiled one stays compiled with the finder's loss.

    Example::

        result = find_lr(model, train_ds, start_lr=1e-6, end_lr=1, steps=80)
    """
    if isinstance(optimizer, str):
        if optimizer not in FINDER_OPTIMIZERS:
            raise unknown_name("--optimizer", optimizer, FINDER_OPTIMIZERS)
        optimizer = FINDER_OPTIMIZERS[optimizer]()
    _check_range(start_lr, end_lr, steps)
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    compiled = getattr(model, "_compile_config", None) if model.compiled else None
    compile_args = dict(compiled.config) if compiled is not None else {}
    if compile_args:  # the very object in use (a LossScaleOptimizer wraps the compiled one)
        compile_args["optimizer"] = model.optimizer
    finder_loss = loss or compile_args.get("loss") or "sparse_categorical_crossentropy"
    test = _RangeTest(start_lr, end_lr, steps, beta, diverge)
    try:
        model.compile(optimizer=optimizer, loss=finder_loss)
        model.fit(train_ds.repeat(), epochs=steps, steps_per_epoch=1, callbacks=[test],
                  verbose=0, shuffle=False)
    finally:
        for variable, value in zip(model.weights, weights):
            variable.assign(value)
        if compile_args:
            model.compile(**compile_args)  # the same optimizer object, its state intact
    return _result(test)


def _check_range(start_lr: float, end_lr: float, steps: int) -> None:
    if not 0 < start_lr < end_lr:
        raise TltkError(f"--start-lr/--end-lr: need 0 < start < end, got {start_lr:g} and "
                        f"{end_lr:g}")
    if steps < 5:
        raise TltkError(f"--steps: the range test needs at least 5 steps, got {steps}")


def _result(test: _RangeTest) -> LRFinderResult:
    n = len(test.losses)
    lrs, losses, smoothed = test.lrs[:n], np.array(test.losses), np.array(test.smoothed)
    suggestion, rule, alternative = suggest(lrs, smoothed)
    return LRFinderResult(lrs, losses, smoothed, suggestion, rule, alternative,
                          diverged=test.diverged)


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, str, float]:
    """(suggested rate, the rule that chose it, minimum-loss rate / 10) for a loss curve.

    The steepest descent is the most negative slope of the smoothed loss against log10
    lr, each slope taken over a few neighbouring points (1/25 of the test each side) to
    ride over batch noise, and searched only between the 10th point (or 10%, if more)
    and the minimum: early on the bias-corrected average still falls as it forgets the
    first batches, and past the minimum the loss only rises. Too short a curve falls
    back to the minimum / 10 rule.

    Example:
        >>> lrs = np.logspace(-5, 0, 50); loss = 1 / (1 + np.exp(4 * (np.log10(lrs) + 2)))
        >>> rate, rule, alternative = suggest(lrs, loss)
        >>> round(rate, 4), rule  # ~1e-2, where the sigmoid drops fastest
        (0.0091, 'steepest descent of the smoothed loss')
    """
    finite = np.isfinite(smoothed)
    lowest = int(np.argmin(np.where(finite, smoothed, np.inf)))
    alternative = float(lrs[lowest] / 10)
    start = max(10, len(lrs) // 10)
    if lowest - start < 2:
        return alternative, MIN_OVER_10, alternative
    half = max(1, len(lrs) // 25)
    points = np.arange(start, lowest + 1)
    low, high = np.maximum(points - half, start), np.minimum(points + half, lowest)
    log_lr = np.log10(lrs)
    slope = (smoothed[high] - smoothed[low]) / (log_lr[high] - log_lr[low])
    return float(lrs[points[int(np.argmin(slope))]]), STEEPEST, alternative


def plot_lr_find(result: LRFinderResult, path: str | Path) -> Path:
    """Loss against learning rate (log scale) with both suggestions marked, as a PNG."""
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss per batch")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="smoothed loss")
    ax.axvline(result.suggestion, color="C3", lw=1.5,
               label=f"suggestion {result.suggestion:.2g}: {result.rule}")
    ax.axvline(result.alternative, color="C2", lw=1.5, ls="--",
               label=f"alternative {result.alternative:.2g}: {result.alternative_rule}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if finite.size and finite.max() > finite.min() > 0:  # hide the diverging tail
        ax.set_ylim(finite.min() * 0.9, min(finite.max(), 4 * finite.min()) * 1.05)
    ax.set_title("learning-rate range test")
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def write_lr_find(result: LRFinderResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `lr_find.csv` and `lr_find.png` into `out_dir`."""
    out = Path(out_dir)
    write_csv(out / "lr_find.csv", result.to_frame())
    return out / "lr_find.csv", plot_lr_find(result, out / "lr_find.png")


def lr_find_config(config, stage: str | None = None, steps: int = 100, start_lr: float = 1e-7,
                   end_lr: float = 1.0, out: str | Path | None = None,
                   say=print) -> LRFinderResult:
    """Range-test one stage of a run config, on the model `tltk train` would build.

    The stage (default: the first) is planned as `tltk train` plans it
    (`tltk.engine.plan_stage`): its trainable blocks, model view, loss and labels (label
    smoothing, mixup), augmentation and optimizer (momentum, per-block multipliers; the
    rate found is the top block's). A stage that trains on a cache is fed the cut's
    output computed on the fly. Writes `lr_find.csv` and `lr_find.png` into `out` when
    given.

    Example::

        result = lr_find_config(recipes.folder.config().override(
            {"data.path": "photos/"}), stage="finetune", out="runs/lr")
    """
    from tltk.engine.run import prepare
    from tltk.engine.runtime import precision_policy
    from tltk.log import silent
    from tltk.models.backbones import config_backbone

    _check_range(start_lr, end_lr, steps)
    chosen = config.stage(stage) if stage else _first_stage(config)
    spec = config_backbone(config)
    keras.utils.set_random_seed(config.seed)
    with precision_policy(config.precision):
        ctx = prepare(config, spec, say=silent, dry_run=True)
        return _lr_find(ctx, ctx.config.stage(chosen.name), steps, start_lr, end_lr, out, say)


def _lr_find(ctx, chosen, steps, start_lr, end_lr, out, say) -> LRFinderResult:
    from tltk.engine.stage import plan_stage, training_images

    plan = plan_stage(ctx, chosen, strict=False)
    make_train, _ = training_images(ctx, plan, through=plan.lower if plan.cached else None,
                                    in_memory=False)
    train = ctx.dataset.splits["train"]
    say(f"lr-find: stage {chosen.name} ({chosen.optimizer}, "
        f"{len(plan.blocks)} trainable blocks) on {ctx.spec.name} at {ctx.image_size}px, "
        f"{ctx.dataset.name} train {len(train)} images; {steps} steps "
        f"{start_lr:g}..{end_lr:g}")
    result = find_lr(plan.fitted, make_train(0), start_lr, end_lr, steps,
                     optimizer=plan.make_optimizer(float(start_lr)), loss=plan.loss)
    if out is not None:
        csv, png = write_lr_find(result, out)
        say(f"wrote {csv} and {png}")
    return result


def _first_stage(config):
    if not config.stages:
        raise TltkError("--stage: the config has no stages; add one or pass --config")
    return config.stages[0]
