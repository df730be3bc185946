"""Discriminative (per-block) learning rates, as optimizers that work inside `model.fit`.

Block i of the backbone, counted from the top (i=0 for the top block), trains at
`lr * block_lr_decay**i` and the new head at `lr * head_lr_mult` (Howard & Ruder 2018
use a decay of 1/2.6 per layer group). The multiplier scales the learning rate inside
each variable's update rather than the gradient: for SGD (with momentum) both agree,
but Adam and RMSprop normalise the gradient away, so only scaling the rate works for
all of them. Multipliers are keyed by variable path, which `.keras` saving preserves,
so saved models reload with their optimizer intact.

Example::

    groups = block_layers(backbone, spec)          # {block name: layers}, top-down
    optimizer = make_optimizer(stage, model, lr=1e-3, groups=groups)
    model.compile(optimizer, loss="sparse_categorical_crossentropy")
"""

from __future__ import annotations

import keras
from keras import ops

from tltk.config import StageConfig
from tltk.errors import TltkError
from tltk.registry import Registry


class LrMultipliers:
    """Mixin for a Keras optimizer: per-variable learning-rate multipliers.

    `lr_multipliers` maps variable paths (`variable.path`) to a factor on the learning
    rate; variables not listed train at the optimizer's rate.
    """

    def __init__(self, *args, lr_multipliers: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}

    def build(self, variables):
        if self.built:
            return
        # Looked up by position: inside the update, TF hands over raw tf.Variables
        # that have no Keras path, but the optimizer's index of them is stable.
        self._factors = tuple(self.lr_multipliers.get(v.path, 1.0) for v in variables)
        super().build(variables)

    def lr_multiplier(self, variable) -> float:
        """The factor on the learning rate for one of the optimizer's variables."""
        return self._factors[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        factor = self.lr_multiplier(variable)
        if factor != 1.0:
            learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), factor)
        return super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        # Decoupled weight decay (AdamW) is proportional to the rate, so it scales too.
        if self.weight_decay is None:
            return
        for variable in variables:
            if self._use_weight_decay(variable):
                lr = ops.cast(self.learning_rate, variable.dtype) * self.lr_multiplier(variable)
                variable.assign(variable - variable * ops.cast(self.weight_decay,
                                                               variable.dtype) * lr)

    def get_config(self):
        return {**super().get_config(), "lr_multipliers": dict(self.lr_multipliers)}


@keras.saving.register_keras_serializable(package="tltk")
class DiscriminativeSGD(LrMultipliers, keras.optimizers.SGD):
    """SGD (optionally with momentum) with per-variable learning-rate multipliers."""


@keras.saving.register_keras_serializable(package="tltk")
class DiscriminativeAdam(LrMultipliers, keras.optimizers.Adam):
    """Adam with per-variable learning-rate multipliers."""


@keras.saving.register_keras_serializable(package="tltk")
class DiscriminativeAdamW(LrMultipliers, keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate (and weight-decay) multipliers."""


@keras.saving.register_keras_serializable(package="tltk")
class DiscriminativeRMSprop(LrMultipliers, keras.optimizers.RMSprop):
    """RMSprop with per-variable learning-rate multipliers."""


# stage.optimizer -> (plain optimizer, discriminative optimizer, takes momentum)
OPTIMIZERS = Registry("optimizer", {
    "sgd": (keras.optimizers.SGD, DiscriminativeSGD, True),
    "adam": (keras.optimizers.Adam, DiscriminativeAdam, False),
    "adamw": (keras.optimizers.AdamW, DiscriminativeAdamW, False),
    "rmsprop": (keras.optimizers.RMSprop, DiscriminativeRMSprop, True),
})


def block_multipliers(groups: dict[str, list], decay: float | None) -> dict[str, float]:
    """Map each block's variable paths to `decay**i`, i counting blocks from the top.

    Example:
        >>> dense1 = keras.layers.Dense(2, name="dense1")
        >>> dense2 = keras.layers.Dense(2, name="dense2")
        >>> dense1.build((None, 3)); dense2.build((None, 2))
        >>> block_multipliers({"top": [dense2], "bottom": [dense1]}, 0.5)
        {'dense2/kernel': 1.0, 'dense2/bias': 1.0, 'dense1/kernel': 0.5, 'dense1/bias': 0.5}
    """
    factors = {}
    for depth, layers in enumerate(groups.values()):
        for layer in layers:
            for variable in layer.weights:
                factors.setdefault(variable.path, 1.0 if decay is None else decay ** depth)
    return factors


def lr_multipliers(model, groups: dict[str, list], decay: float | None, head_mult: float,
                   backbone=None) -> dict[str, float]:
    """Per-variable multipliers for `model`: blocks by depth, everything else as the head.

    With `backbone` given, its variables outside the named blocks (e.g. the stem under the
    lowest block) train one decay step below the lowest block instead of as the head.
    """
    factors = block_multipliers(groups, decay)
    below = 1.0 if decay is None else decay ** len(groups)
    for variable in (backbone.weights if backbone is not None else []):
        factors.setdefault(variable.path, below)
    for variable in model.weights:
        factors.setdefault(variable.path, head_mult)
    return {path: factor for path, factor in factors.items() if factor != 1.0}


def make_optimizer(stage: StageConfig, model, lr, groups: dict[str, list] | None = None,
                   backbone=None) -> keras.optimizers.Optimizer:
    """The optimizer for `stage`: plain, or discriminative when the stage asks for it.

    `lr` is a float or a schedule (see `tltk.optim.schedules.make_lr`); `groups` maps the
    backbone's block names to their layers, top-down.

    Example::

        stage = StageConfig("ft", epochs=5, optimizer="sgd", lr=0.01, momentum=0.9,
                            block_lr_decay=0.5, head_lr_mult=10.0)
        make_optimizer(stage, model, 0.01, groups).lr_multipliers["predictions/kernel"]  # -> 10.0
    """
    plain, discriminative, takes_momentum = OPTIMIZERS.get(
        stage.optimizer, argument=f"stages.{stage.name}.optimizer")
    kwargs = {"momentum": stage.momentum} if takes_momentum else {}
    if stage.clipnorm is not None:
        kwargs["global_clipnorm"] = stage.clipnorm
    if stage.ema is not None:  # Keras's own weight averaging; fit ends on the average
        kwargs.update(use_ema=True, ema_momentum=stage.ema)
    if stage.block_lr_decay is None and stage.head_lr_mult == 1.0:
        return plain(learning_rate=lr, **kwargs)
    if stage.block_lr_decay is not None and not 0 < stage.block_lr_decay <= 1:
        raise TltkError(f"stages.{stage.name}.block_lr_decay: must lie in (0, 1], got "
                        f"{stage.block_lr_decay}; e.g. 0.38 (1/2.6) for ULMFiT-style rates")
    if stage.head_lr_mult <= 0:
        raise TltkError(f"stages.{stage.name}.head_lr_mult: must be positive, got "
                        f"{stage.head_lr_mult}")
    if stage.block_lr_decay is not None and not groups:
        # Without blocks every backbone variable would silently train as the head.
        raise ValueError("block_lr_decay needs the backbone's block groups "
                         "(tltk.models.backbones.block_layers)")
    factors = lr_multipliers(model, groups or {}, stage.block_lr_decay, stage.head_lr_mult,
                             backbone)
    return discriminative(learning_rate=lr, lr_multipliers=factors, **kwargs)
