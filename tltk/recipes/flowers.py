"""`flowers`: tltk's own recipe on tfds `tf_flowers`, `folder`'s stages on VGG19.

A stratified 70/15/15 train/validation/test split (seeded), VGG19 with `folder`'s
Dense-256 head, augmentation on, top-2 reported (5 classes). The stages are `folder`'s
as benchmark B6 chose them on the same flower photos: a 20-epoch head on cached features
with label smoothing 0.1, then the whole backbone for 5 epochs of a one-cycle Adam
schedule peaking at 1e-4, BatchNorm in inference mode. Why: see `folder` (evidence in
`benchmarks/results/recipe_history.md`). The thesis's own protocol
(70/30, SGD 0.004 -> 0.001 on `block5`) is the `flowers-thesis` recipe.

`tf_flowers` must be prepared first (`tltk data prepare flowers`); the Kaggle flower
folder itself runs through the same stages as `folder` (or here with
`data={"dataset": "folder", "path": DIR}`).

Example::

    from tltk.recipes import run
    result = run("flowers", data={"path": "~/tensorflow_datasets"}, epochs_finetune=3)
    result.metrics  # best and final weights, val and test, top-1 and top-2
"""

from tltk.config import RunConfig
from tltk.recipes import RECIPES, folder


@RECIPES.register("flowers")
def config() -> RunConfig:
    """tf_flowers 70/15/15, VGG19, folder's stages (one-cycle whole-net), top-2"""
    return folder.config().override({"recipe": "flowers", "backbone": "vgg19",
                                     "data.dataset": "flowers"})
