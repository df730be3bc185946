"""`flowers-thesis`: the thesis's flower protocol on tfds `tf_flowers`, kept as it was
(`flowers` is tltk's own recipe, derived from benchmark B6).

A stratified 70/30 train/validation split, VGG19 with a Dense-256 head, augmentation
on; the head is trained on cached bottleneck features, then the last convolutional
block (`block5`) is fine-tuned with SGD (momentum 0.9) at lr 0.004 for 25 epochs and
0.001 afterwards, the thesis's flower schedule. Top-2 is reported (5 classes).

Thesis figures it reproduces (full-resolution Kaggle flowers, 70/30 split): scratch
5-conv CNN about 74 % top-1 validation (79 % with augmentation); VGG19 bottleneck with
one or two 256-unit dense layers 88-89 %; VGG19 after fine-tuning 91-92 %.

The Kaggle flower folder itself (e.g. `../shared/data/flowers-128`) runs through the
same protocol with `dataset="folder"`:

Example::

    from tltk.recipes import run
    run("flowers-thesis", data={"dataset": "folder", "path": "../shared/data/flowers-128"},
        backbone="mobilenetv2", weights="mnv2.weights.h5")
"""

from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.recipes import RECIPES


@RECIPES.register("flowers-thesis")
def config() -> RunConfig:
    """thesis flower protocol: tf_flowers 70/30, VGG19, SGD 0.004 -> 0.001, top-2"""
    return RunConfig(
        recipe="flowers-thesis", backbone="vgg19", weights="imagenet",
        data=DataConfig(dataset="flowers", val_fraction=0.3, test_fraction=0.0),
        head=HeadConfig(layers=1, units=256, dropout=0.5),
        stages=[
            StageConfig("bottleneck", epochs=30, optimizer="adam", lr=1e-3, unfreeze=0),
            StageConfig("finetune", epochs=40, optimizer="sgd", lr=0.004, momentum=0.9,
                        lr_steps=[[25, 0.001]], unfreeze=1),
        ])
