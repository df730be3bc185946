"""`demo`: the offline quick start on procedurally drawn shapes.

Six shape classes at 64 px (`tltk.data.demo`), no download and no pretrained
weights needed, so it runs on a fresh offline machine in about a minute on two CPU
cores. It trains the from-scratch baseline CNN (`backbone="scratch"`) in two stages
(12 epochs of Adam, then 3 of SGD with momentum 0.9, both at lr 1e-3) and writes a
complete run directory: configs, history, best and final models, metrics and the report.
For transfer learning on your own photos, see `recipes.folder`.

Example::

    from tltk.recipes import run
    result = run("demo", epochs_finetune=1)
"""

from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.recipes import RECIPES


@RECIPES.register("demo")
def config() -> RunConfig:
    """offline quick start: 6 procedurally drawn shape classes, scratch CNN at 64 px"""
    return RunConfig(
        recipe="demo", backbone="scratch", weights="none",
        data=DataConfig(dataset="demo", image_size=64),
        head=HeadConfig(layers=0),
        stages=[
            StageConfig("train", epochs=12, optimizer="adam", lr=1e-3, unfreeze="all"),
            StageConfig("anneal", epochs=3, optimizer="sgd", lr=1e-3, momentum=0.9,
                        unfreeze="all"),
        ])
