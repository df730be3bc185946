"""Learning-rate schedules for one training stage.

A stage's `schedule` is `constant`, `step` (driven by `lr_steps`), `cosine` (annealed
to `schedule_args["min_lr"]` over the stage), `sgdr` (cosine with warm restarts,
Loshchilov & Hutter 2017: `period` in epochs, `t_mul`, `m_mul`, `min_lr`) or
`onecycle` (fastai's one-cycle: `pct_start`, `div_factor`, `final_div_factor`), with an
optional linear warmup of `warmup_epochs` in front (not for `onecycle`, which warms up
itself). Warm-up then cosine, as MediaPipe Model Maker trains, is `schedule: cosine`
with `warmup_epochs: 1` or more. Schedules are functions of the
optimizer's step counter, which starts at 0 with each stage's fresh optimizer and is
saved with it, so a resumed stage continues where it stopped. Without warmup they are
Keras' own schedules, so saved models load with plain Keras; a warmup wraps them in
`LinearWarmup`, registered on importing this module.

Example:
    >>> stage = StageConfig("finetune", epochs=30, optimizer="sgd", lr=0.004,
    ...                     lr_steps=[[25, 0.001]])
    >>> schedule = make_lr(stage, steps_per_epoch=100)  # 0.004 to step 2499, then 0.001
    >>> round(float(schedule(2500)), 6)
    0.001
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tltk.config import StageConfig


@keras.saving.register_keras_serializable(package="tltk")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's one-cycle rate over `total_steps`: two cosine half-waves.

    From `lr / div_factor` up to `lr` over the first `pct_start` of the steps, then
    down to `lr / final_div_factor` (relative to the peak, as fastai's `div_final`;
    PyTorch's OneCycleLR divides the start instead). Momentum is not cycled: Keras
    optimizers take a fixed momentum.

    Example:
        >>> schedule = OneCycle(0.01, total_steps=100, pct_start=0.25)
        >>> [round(float(schedule(s)), 6) for s in (0, 25, 100)]
        [0.0004, 0.01, 0.0]
    """

    def __init__(self, lr: float, total_steps: int, pct_start: float = 0.25,
                 div_factor: float = 25.0, final_div_factor: float = 1e5):
        self.lr, self.total_steps = float(lr), int(total_steps)
        self.pct_start = float(pct_start)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)

    def __call__(self, step):
        position = ops.minimum(ops.cast(step, "float32") / float(self.total_steps), 1.0)
        start, end = self.lr / self.div_factor, self.lr / self.final_div_factor
        rising = position < self.pct_start
        progress = ops.where(rising, position / self.pct_start,
                             (position - self.pct_start) / (1.0 - self.pct_start))
        low = ops.where(rising, start, end)
        # A cosine from `low` at progress 1 (rising: 0) to the peak `lr`.
        wave = (1.0 + ops.cos(ops.where(rising, 1.0 - progress, progress) * math.pi)) / 2.0
        return low + (self.lr - low) * wave

    def get_config(self):
        return {"lr": self.lr, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}


@keras.saving.register_keras_serializable(package="tltk")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Scale `after` by a linear ramp (step + 1) / `warmup_steps` during warmup.

    `after` is a schedule or a float; it is evaluated at `step - offset` (never below 0),
    so `offset=warmup_steps` starts it after the warmup (cosine, sgdr) and `offset=0`
    keeps it on the stage's own epochs (step).

    Example:
        >>> [round(float(LinearWarmup(0.1, warmup_steps=4)(s)), 6) for s in (0, 3, 9)]
        [0.025, 0.1, 0.1]
    """

    def __init__(self, after, warmup_steps: int, offset: int = 0):
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self.offset = int(offset)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        ramp = ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        if not callable(self.after):
            return ramp * float(self.after)
        inner = ops.maximum(step - float(self.offset), 0.0)
        return ramp * ops.cast(self.after(inner), "float32")

    def get_config(self):
        after = self.after
        if callable(after):
            after = keras.saving.serialize_keras_object(after)
        return {"after": after, "warmup_steps": self.warmup_steps, "offset": self.offset}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["after"], dict):
            config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


def make_lr(stage: StageConfig, steps_per_epoch: int):
    """The learning rate for `stage`: a float, or a serialisable schedule over steps.

    Example:
        >>> stage = StageConfig("ft", epochs=10, lr=0.01, schedule="cosine",
        ...                     warmup_epochs=1, schedule_args={"min_lr": 1e-4})
        >>> schedule = make_lr(stage, steps_per_epoch=50)   # 50 warmup + 450 cosine steps
    """
    args = stage.schedule_args_checked()  # every schedule field, checked in one place
    name = stage.effective_schedule()
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    warmup_steps = stage.warmup_epochs * steps_per_epoch
    main = _main_schedule(stage, name, args, steps_per_epoch, warmup_steps)
    if not warmup_steps:
        return main
    offset = 0 if name == "step" else warmup_steps
    return LinearWarmup(main, warmup_steps=warmup_steps, offset=offset)


def _main_schedule(stage, name, args, steps_per_epoch, warmup_steps):
    lr = float(stage.lr)
    if name == "constant":
        return lr
    if name == "step":
        epochs, values = stage.lr_steps_checked()
        # Keras keeps values[k] while step <= boundaries[k], so a rate that starts at
        # epoch e has its boundary on the last step of epoch e - 1.
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [e * steps_per_epoch - 1 for e in epochs], [lr, *values])
    if name == "onecycle":
        return OneCycle(lr, stage.epochs * steps_per_epoch, float(args["pct_start"]),
                        float(args["div_factor"]), float(args["final_div_factor"]))
    # Keras' cosine schedules express the floor as a fraction of the initial rate.
    alpha = args["min_lr"] / lr if lr else 0.0
    if name == "cosine":
        decay_steps = stage.epochs * steps_per_epoch - warmup_steps
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=decay_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecayRestarts(
        lr, first_decay_steps=int(round(args["period"] * steps_per_epoch)),
        t_mul=float(args["t_mul"]), m_mul=float(args["m_mul"]), alpha=alpha)
