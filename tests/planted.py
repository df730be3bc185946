"""A small image folder with planted problems, and a backbone whose features separate it.

Three classes of 48 px PNGs: random 8x8-block patterns over a red, green or blue cast, so
classes are linearly separable and no two images look alike. Planted:

- `red/r0_copy.png`: a byte copy of `red/r0.png`;
- `green/g1_small.png`: `green/g1.png` resized to 40 px;
- `red/b2_in_red.png`: a byte copy of `blue/b2.png`, filed under another class;
- `green/mislabelled.png`: a red-cast image filed as green.

`THUMBS` pools each image to a 4x4 grid and flattens it: its features are the image at
4x4, so duplicates match and different patterns do not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tltk.models import backbones

CASTS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
PER_CLASS = 12
SIZE = 48
# Planted groups: files that must land in one split, and what audit must call them.
GROUPS = {"byte copy": ["red/r0.png", "red/r0_copy.png"],
          "resized copy": ["green/g1.png", "green/g1_small.png"],
          "other class": ["blue/b2.png", "red/b2_in_red.png"]}
MISLABELLED = "green/mislabelled.png"


def pattern(cast, rng) -> Image.Image:
    blocks = rng.integers(0, 256, (6, 6, 3))
    pixels = 0.35 * np.asarray(cast) + 0.65 * np.kron(blocks, np.ones((8, 8, 1)))
    return Image.fromarray(pixels.round().astype(np.uint8))


def planted_folder(root: Path, seed: int = 0) -> Path:
    """Write the folder described above under `root`; returns `root`."""
    rng = np.random.default_rng(seed)
    for name, cast in CASTS.items():
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            pattern(cast, rng).save(root / name / f"{name[0]}{i}.png")
    shutil.copyfile(root / "red/r0.png", root / "red/r0_copy.png")
    with Image.open(root / "green/g1.png") as image:
        image.resize((40, 40), Image.BILINEAR).save(root / "green/g1_small.png")
    shutil.copyfile(root / "blue/b2.png", root / "red/b2_in_red.png")
    pattern(CASTS["red"], rng).save(root / MISLABELLED)
    return root


def build_thumbs(input_shape, weights=None):
    import keras

    inputs = keras.Input(input_shape)
    pooled = keras.layers.AveragePooling2D(input_shape[0] // 4, name="block1_pool")(inputs)
    return keras.Model(inputs, pooled, name="thumbs")


THUMBS = backbones.BackboneSpec(name="thumbs", description="the image at 4x4, flattened",
                                builder=build_thumbs, preprocess="tf", default_size=SIZE,
                                min_size=8, blocks=("block1",), pooling="flatten")
