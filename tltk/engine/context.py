"""`Context`: what every stage of a run needs, built once by `tltk.engine.run.prepare`.

It sits in its own module so that `run` (which drives the stages) and `stage` (which
trains one) both depend on it and not on each other.

Example::

    ctx = prepare(config, spec)
    ctx.dataset.num_classes, ctx.image_size, ctx.k
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keras

from tltk.config import RunConfig
from tltk.data.core import Dataset
from tltk.engine.callbacks import Trackers
from tltk.models.spec import BackboneSpec
from tltk.rundir import RunDir


@dataclass
class Context:
    """What every stage needs; built once per run by `prepare`.

    `callbacks` go to every stage's `fit` (`trackers` are among them: the history and
    the best-so-far, whose state each checkpoint saves); more may be appended. A dry
    run's context has no run directory (`run`, `trackers` None).
    """

    config: RunConfig
    spec: BackboneSpec
    dataset: Dataset
    model: keras.Model
    run: RunDir | None
    image_size: int
    k: int
    trackers: Trackers | None
    callbacks: list
    say: Callable[[str], None]  # prints one line of the run's log
    done: list = field(default_factory=list)  # stages a resumed run finished before
    rolled_back: bool = False  # a numerical fault put back the last committed weights
    resumed_seconds: float = 0.0  # training time of the current stage before a resume
