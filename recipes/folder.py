"""`folder`: transfer learning on your own class-per-subfolder photos.

Images are split stratified 70/15/15 (seeded) unless the folder already has
`train/`, `val/` (and `test/`) subfolders. Two stages: the head on cached features
of the frozen backbone (Adam 1e-3), then the top block fine-tuned with SGD
(momentum 0.9, lr 1e-3) with BatchNorm kept in inference mode.

Example:
    >>> from recipes import folder
    >>> result = folder.run(data={"path": "../shared/data/flowers-128"},
    ...                     backbone="mobilenetv2", weights="mnv2.weights.h5")
"""

from recipes import train_recipe
from tltk.config import DataConfig, RunConfig, StageConfig

SUMMARY = "your own photos (one subfolder per class): bottleneck, then fine-tune the top block"


def config() -> RunConfig:
    return RunConfig(
        recipe="folder", backbone="mobilenetv2", weights="imagenet",
        data=DataConfig(dataset="folder"),
        stages=[
            StageConfig("bottleneck", epochs=30, optimizer="adam", lr=1e-3, unfreeze=0),
            StageConfig("finetune", epochs=5, optimizer="sgd", lr=1e-3, momentum=0.9,
                        unfreeze=1),
        ])


def run(base: RunConfig | None = None, **overrides):
    """Train this recipe (or `base`, a config built from it) with keyword overrides."""
    return train_recipe(base or config(), overrides)
