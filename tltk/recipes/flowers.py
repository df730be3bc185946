"""`flowers`: tltk's own recipe on tfds `tf_flowers`, `folder`'s stages on VGG19.

A stratified 70/15/15 train/validation/test split (seeded), VGG19 with `folder`'s
Dense-256 head, augmentation on, top-2 reported (5 classes). The stages are `folder`'s
as benchmark B6 chose them on the same flower photos: a 20-epoch head on cached features
with label smoothing 0.1, then the whole backbone for 5 epochs of a one-cycle Adam
schedule peaking at 1e-4, BatchNorm in inference mode. On the ImageNet
EfficientNet-Lite0 that fine-tuning gained 5.7 points over the head stage (79.3 % val),
where the thesis's SGD on the top block gained 1.1 (74.7 %). The thesis's own protocol
(70/30, SGD 0.004 -> 0.001 on `block5`) is the `flowers-thesis` recipe.

The Kaggle flower folder itself (e.g. `../shared/data/flowers-128`) runs through the
same recipe with `dataset="folder"`:

Example::

    from tltk.recipes import flowers
    flowers.run(data={"dataset": "folder", "path": "../shared/data/flowers-128"},
                backbone="mobilenetv2", weights="mnv2.weights.h5")
"""

from tltk.config import RunConfig
from tltk.recipes import folder, train_recipe

SUMMARY = "tf_flowers 70/15/15, VGG19, folder's stages (one-cycle whole-net), top-2"


def config() -> RunConfig:
    return folder.config().override({"recipe": "flowers", "backbone": "vgg19",
                                     "data.dataset": "flowers"})


def run(base: RunConfig | None = None, **overrides):
    """Train this recipe (or `base`, a config built from it) with keyword overrides."""
    return train_recipe(base or config(), overrides)
