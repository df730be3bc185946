"""A finished run's model and the images it takes: the pieces `predict`, `export`,
`ensemble`, `measure` and Grad-CAM share (so none of them imports another for them).

Example::

    model = load_run_model("runs/flowers")
    image = read_image("photo.jpg", input_size(model))  # float32 [S, S, 3], 0..255
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from tltk.config import RUN_WEIGHTS
from tltk.data.core import decode_image_file, prepare_image
from tltk.errors import TltkError
from tltk.fileio import damaged
from tltk.rundir import RunDir, open_run
from tltk.saving import load_model


def load_run_model(run_dir: str | Path, weights: str = "best"):
    """A run's `best.keras`, `final.keras` or `ema.keras`, loaded in safe mode."""
    run_model_path(run_dir, weights)  # an unknown name or a missing ema.keras: one line
    # tltk.saving also refuses a classes.json that does not match the model's outputs.
    return load_model(open_run(run_dir).path, weights).model


def run_model_path(run_dir: str | Path, weights: str = "best") -> Path:
    """The path of a run's `<weights>.keras`; a missing `ema.keras` says how to get one."""
    if weights not in RUN_WEIGHTS:
        raise TltkError(f"--weights: '{weights}' is not one of {', '.join(RUN_WEIGHTS)}")
    path = open_run(run_dir).file(f"{weights}.keras")
    if weights == "ema" and not path.is_file():
        raise TltkError(f"--weights ema: {path.parent} has no ema.keras; only runs with a "
                        "stage's ema set have one (e.g. --set stages.finetune.ema=0.999)")
    return path


def input_size(model) -> int:
    """The square input size a model was built for, from its input shape."""
    shape = model.input_shape
    if shape[1] is None or shape[1] != shape[2]:
        raise TltkError(f"model input shape {shape} is not a fixed square size; "
                        "tltk models take (S, S, 3)")
    return int(shape[1])


def resize_policy(run: RunDir) -> str:
    """The run's `data.resize` (stretch | crop | pad), so images match what it trained on."""
    data = run.config_dict().get("data") or {}
    policy = (data if isinstance(data, dict) else {}).get("resize") or "stretch"
    if policy not in ("stretch", "crop", "pad"):
        raise damaged(run.file("config.yaml"), f"damaged (data.resize is {policy!r})")
    return policy


def read_image(path: str | Path, size: int, policy: str = "stretch") -> np.ndarray:
    """Decode an image file to RGB and resize it to size x size; whole float32 0..255.

    TensorFlow decodes what training decoded (JPEG, PNG, GIF, BMP); other formats
    Pillow can read (WebP, TIFF) are decoded by Pillow. Raises `ValueError` with a
    short reason for missing or undecodable files.
    """
    path = Path(str(path))
    if not path.is_file():
        raise ValueError("file not found")
    try:
        image = decode_image_file(tf.constant(str(path)))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        image = _decode_with_pillow(path)
    # The same preparation as `make_pipeline`: a prediction sees the pixels evaluation saw.
    return tf.cast(prepare_image(image, size, policy), tf.float32).numpy()


def _decode_with_pillow(path: Path) -> tf.Tensor:
    try:
        with Image.open(path) as image:
            return tf.constant(np.asarray(image.convert("RGB")))
    except (UnidentifiedImageError, OSError):
        raise ValueError("not a readable image") from None
