"""`folder`: transfer learning on your own class-per-subfolder photos.

Images are split stratified 70/15/15 (seeded) unless the folder already has
`train/`, `val/` (and `test/`) subfolders. Two stages:

1. `bottleneck`: a Dense-256 head without BatchNorm on cached features of the frozen
   backbone (Adam 1e-3, label smoothing 0.1, 20 epochs; fine-tuning starts from the last
   head epoch, and `best.keras` keeps the run's best-validation epoch);
2. `finetune`: the whole backbone for 5 epochs of a one-cycle Adam schedule peaking at
   1e-4, every BatchNorm in inference mode, with live augmentation.

Why these settings (measured on flowers-128 with the dog-tuned MobileNetV2 weights in
`../shared`, 160 px, 2 CPU cores): the head peaks after a few epochs and then overfits
its cached features, so the stage is short. SGD with momentum 0.9 (the thesis's
fine-tuning optimizer, kept by `flowers-thesis` and `dogs-thesis`) did not pay off here:
at 1e-3 on the top one or four blocks validation top-1 stayed at 68-69 % against 70 %
after the bottleneck (unclipped it collapsed to one class); on the whole network at
2e-4 with the gradient norm clipped at 1 it touched 70.1 % and fell back. Adam at 1e-5
on the whole network rose steadily: 70.0 % -> 71.5 % validation (72.6 % test) in six
epochs, still rising, which made it this recipe's first fine-tuning default.

The head stage was re-measured on the ImageNet EfficientNet-Lite0 in `../shared` (224 px,
cached pooled `top_activation` features, Dense-256 head, mean of 3 seeds): the best
validation epoch within 20 epochs averaged 74.0 % against 73.1 % within 6, and label
smoothing 0.1 (MediaPipe Model Maker's default) kept 74.1 % val and lifted test top-1
from 74.0 % to 74.9 %. Cached epochs take about a second, so the longer stage is cheap.
The head's BatchNorm layers (`HeadConfig.batchnorm`) cost 2 points there (72.0 % against
74.1 %), so this recipe's head has none.

B6 (`python -m benchmarks b6`, README) compares the whole recipe with fastai's
`fine_tune`, the Keras guide, MediaPipe Model Maker and the thesis recipe under 360 s
each at 160 px, and measures one change at a time (`results/b6_variants.json`). On the
Lite0 the constant Adam 1e-5 added 2.3 points to the head stage (76.0 % val); a
one-cycle schedule to 1e-4 over 5 epochs added 5.7 (79.3 % val, 78.1 % test), warm-up
plus cosine to 1e-4 4.5, while label smoothing, BatchNorm in training mode, EMA 0.99
and RandAugment in fine-tuning added nothing or lost. So fine-tuning is one-cycle; as
the default it reached 77.0 % val / 78.9 % test on the Lite0 in a second run, and
74.0 % / 76.7 % on the dog-tuned MobileNetV2, where the constant 1e-5 had gained
nothing over the head (69.8 %).

Example::

    from tltk.recipes import folder
    result = folder.run(data={"path": "../shared/data/flowers-128"},
                        backbone="mobilenetv2", weights="mnv2.weights.h5")
"""

from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.recipes import train_recipe

SUMMARY = "your own photos (one subfolder per class): bottleneck, then whole-net one-cycle Adam"


def config() -> RunConfig:
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


def run(base: RunConfig | None = None, **overrides):
    """Train this recipe (or `base`, a config built from it) with keyword overrides."""
    return train_recipe(base or config(), overrides)
