"""`dogs-thesis`: the thesis's Stanford Dogs protocol, kept as it was (`dogs` is tltk's
own recipe, derived from benchmark B6).

All 20,580 Stanford Dogs images pooled and split per class into 30 validation,
20 test and the rest training images (seeded); VGG19 by default (any backbone via
`backbone=`), a head with two 256-unit dense layers, augmentation on; the head is
trained on cached bottleneck features, then the last convolutional block is
fine-tuned with SGD (momentum 0.9, lr 1e-4) with BatchNorm in inference mode, on
cached activations of the frozen part below it: `FEATURE_VIEWS` augmented views of
every training image and the plain validation images, extracted once. That is exact
(the frozen layers and inference-mode BatchNorm never change) and much faster on a
CPU; `--set stages.finetune.cache_features=false` trains that stage on freshly
augmented images every epoch instead (the thesis' way, sensible on a GPU). Best
and final weights are evaluated on `val`, `test` and `v2`, the 120 dog classes of
ImageNetV2 (matched frequency): it must be prepared too (`tltk data prepare dogs-v2`),
or left out on purpose with `--no-v2`.

Thesis figures it reproduces (VGG19, top-1 validation / test / ImageNetV2):
75.5 % / 74.75 % / 46.08 %; its scratch CNN reached 38 %.

Example::

    from tltk.recipes import run
    result = run("dogs-thesis", backbone="resnet50", data={"path": "~/tensorflow_datasets"})
"""

from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.recipes import RECIPES
from tltk.recipes.dogs import FEATURE_VIEWS  # the same fine-tuning cache as `dogs`


@RECIPES.register("dogs-thesis")
def config() -> RunConfig:
    """thesis Stanford Dogs protocol: 30/20 per class, VGG19, 2x256 head, val/test/v2"""
    return RunConfig(
        recipe="dogs-thesis", backbone="vgg19", weights="imagenet",
        data=DataConfig(dataset="dogs"),
        head=HeadConfig(layers=2, units=256, dropout=0.5),
        stages=[
            StageConfig("bottleneck", epochs=50, optimizer="adam", lr=1e-3, unfreeze=0),
            StageConfig("finetune", epochs=20, optimizer="sgd", lr=1e-4, momentum=0.9,
                        unfreeze=1, cache_features=True, feature_views=FEATURE_VIEWS),
        ])
