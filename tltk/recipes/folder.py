"""`folder`: transfer learning on your own class-per-subfolder photos.

Images are split stratified 70/15/15 (seeded) unless the folder already has
`train/`, `val/` (and `test/`) subfolders. Two stages:

1. `bottleneck`: a Dense-256 head without BatchNorm on cached features of the frozen
   backbone (Adam 1e-3, label smoothing 0.1, 20 epochs; fine-tuning starts from the last
   head epoch, and `best.keras` keeps the run's best-validation epoch);
2. `finetune`: the whole backbone for 5 epochs of a one-cycle Adam schedule peaking at
   1e-4, every BatchNorm in inference mode, with live augmentation.

Why: a short head stage on cached features, then a one-cycle whole-network fine-tune,
was the best of the settings measured on flowers-128 (evidence: `benchmarks/results/
b6_variants.json` and `recipe_history.md` there).

Example::

    from tltk.recipes import run
    result = run("folder", data={"path": "../shared/data/flowers-128"},
                 backbone="mobilenetv2", weights="mnv2.weights.h5")
"""

from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.recipes import RECIPES


@RECIPES.register("folder")
def config() -> RunConfig:
    """your own photos (one subfolder per class): bottleneck, then whole-net one-cycle Adam"""
    return RunConfig(
        recipe="folder", backbone="mobilenetv2", weights="imagenet",
        data=DataConfig(dataset="folder"),
        head=HeadConfig(layers=1, units=256, dropout=0.5, batchnorm=False),
        stages=[
            StageConfig("bottleneck", epochs=20, optimizer="adam", lr=1e-3, unfreeze=0,
                        label_smoothing=0.1),
            StageConfig("finetune", epochs=5, optimizer="adam", lr=1e-4, unfreeze="all",
                        schedule="onecycle"),
        ])
