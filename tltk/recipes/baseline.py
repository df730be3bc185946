"""`baseline`: the from-scratch CNN that transfer learning must beat.

Five 3x3 convolutions, each followed by 2x2 max-pooling, then flatten ->
BatchNormalization -> softmax (`tltk.models.backbones.build_scratch`), trained from random
weights in one Adam stage. `run()` trains it twice, with and without augmentation,
and returns the thesis's Table 3 grid (best/final weights x augmented/plain) in one
table.

Thesis figures it reproduces: Stanford Dogs 38 % top-1; Kaggle flowers about 74 %
top-1 validation without augmentation and about 79 % with it.

Example::

    from tltk.recipes import baseline
    result = baseline.run(data={"dataset": "folder", "path": "photos/"})
    result.grid  # rows: variant x weights; columns: split x metric
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.recipes import RECIPES, run_config

VARIANTS = {"augmented": True, "plain": False}


@dataclass
class BaselineResult:
    """Both runs of the baseline and their combined table."""

    runs: dict  # variant -> tltk.engine.run.RunResult
    grid: pd.DataFrame


@RECIPES.register("baseline")
def config() -> RunConfig:
    """from-scratch 5-conv CNN, trained with and without augmentation (Table 3 grid)"""
    return RunConfig(
        recipe="baseline", backbone="scratch", weights="none",
        data=DataConfig(dataset="flowers", val_fraction=0.3, test_fraction=0.0,
                        image_size=128),
        head=HeadConfig(layers=0),
        stages=[StageConfig("scratch", epochs=40, optimizer="adam", lr=1e-3,
                            unfreeze="all", augment=True)])


def variant(config: RunConfig, name: str) -> RunConfig:
    """The config for one variant: augmentation on or off, its own run directory."""
    out = f"{config.out}/{name}" if config.out else None
    stages = [{**vars(s), "augment": VARIANTS[name]} for s in config.stages]
    return RunConfig.from_dict({**config.to_dict(), "stages": stages, "out": out})


def grid(runs: dict) -> pd.DataFrame:
    """Rows = variant x weights, columns = split x {top1, topk} (percent)."""
    frames = [r.metrics.assign(variant=name) for name, r in runs.items()]
    table = pd.concat(frames).pivot_table(index=["variant", "weights"], columns="split",
                                          values=["top1", "topk"], sort=False)
    return table.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)


def run(base: RunConfig | None = None, **overrides) -> BaselineResult:
    """Train the augmented and plain variants; print and return the grid."""
    from tltk.engine.run import train

    cfg = run_config(base or config(), dict(overrides))
    runs = {name: train(variant(cfg, name)) for name in VARIANTS}
    table = grid(runs)
    print(table.round(2).to_string())
    return BaselineResult(runs, table)
