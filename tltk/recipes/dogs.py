"""`dogs`: tltk's own Stanford Dogs recipe.

The thesis's data protocol: all 20,580 images pooled and split per class into 30
validation, 20 test and the rest training images (seeded), evaluated on `val`, `test`
and `v2`, the 120 dog classes of ImageNetV2 (matched frequency; prepare it with
`tltk data prepare dogs-v2`, or leave it out on purpose with `--no-v2`). VGG19 by
default (any backbone via `backbone=`).

The stages follow benchmark B6 (README) rather than the thesis: `folder`'s head (one
Dense-256 layer without BatchNorm, label smoothing 0.1, 20 epochs on cached features),
then the top block at Adam 1e-4 on cached activations of the frozen part below it:
`FEATURE_VIEWS` augmented views of every training image and the plain validation
images, extracted once. That is exact (the frozen layers and inference-mode BatchNorm
never change) and, on 14,580 training images, what makes fine-tuning affordable on a
CPU. `--set stages.finetune.cache_features=false` trains on freshly augmented images
every epoch instead.

Why: on the cached top block Adam 1e-4 gained the most per CPU second of the settings
measured (evidence: `benchmarks/results/b6_variants.json` and `recipe_history.md`).
The thesis's own protocol is the `dogs-thesis` recipe, with its figures.

Example::

    from tltk.recipes import run
    result = run("dogs", backbone="resnet50", data={"path": "~/tensorflow_datasets"})
"""

from tltk.config import RunConfig
from tltk.recipes import RECIPES, folder

# Augmented views per training image in the fine-tuning cache: 20 epochs then see each
# view five times; the cache (VGG19 block4_pool, float16) takes about 12 GB.
FEATURE_VIEWS = 4



@RECIPES.register("dogs")
def config() -> RunConfig:
    """Stanford Dogs 30/20 per class, VGG19, top block cached at Adam 1e-4, val/test/v2"""
    return folder.config().override({
        "recipe": "dogs", "backbone": "vgg19", "data.dataset": "dogs",
        "stages.finetune.epochs": 20, "stages.finetune.unfreeze": 1,
        "stages.finetune.lr": 1e-4, "stages.finetune.schedule": "constant",
        "stages.finetune.cache_features": True,
        "stages.finetune.feature_views": FEATURE_VIEWS})
