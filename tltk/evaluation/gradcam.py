"""Grad-CAM (Selvaraju et al., 2017) at the backbone's last feature map.

The heatmap of class c is ReLU(sum_k a_k * A_k), where A_k are the channels of the
backbone's output feature map and a_k the spatial mean of d(logit_c)/d(A_k). The logit
(the predictions layer before its softmax) is used, as in the paper: the gradient of a
saturated softmax probability vanishes. Written here because the maintained Grad-CAM
packages are for PyTorch (grad-cam) or tf.keras 2 (tf-keras-vis), not Keras 3; it is
short and tested on images whose class depends on one region
(tests/evaluation/test_gradcam.py).

Example::

    heat = gradcam(model, images)          # [N, h, w] in 0..1, h x w the feature map
    Image.fromarray(overlay(images[0], heat[0])).save("cam.png")
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from PIL import Image

from tltk.errors import TltkError
from tltk.models.heads import backbone_of


def gradcam(model: keras.Model, images: np.ndarray, classes=None) -> np.ndarray:
    """Grad-CAM heatmaps [N, h, w] (each scaled to max 1) of a tltk classifier.

    `classes` [N] picks the explained class per image (default: the predicted one).
    """
    backbone, head = _parts(model)
    dense = head.get_layer("predictions")
    below = keras.Model(head.inputs, dense.input, name="head_below_predictions")
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        fmap = tf.cast(backbone(model.get_layer("preprocess")(x), training=False), tf.float32)
        tape.watch(fmap)
        pooled = model.get_layer("head_pool")(fmap)
        logits = tf.matmul(tf.cast(below(pooled, training=False), tf.float32),
                           tf.cast(dense.kernel, tf.float32)) + tf.cast(dense.bias, tf.float32)
        chosen = tf.argmax(logits, axis=-1) if classes is None else tf.constant(classes)
        score = tf.gather(logits, chosen, batch_dims=1)
    grads = tape.gradient(score, fmap)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
    return cam / np.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-12)


def _parts(model: keras.Model):
    try:
        return backbone_of(model), model.get_layer("head")
    except ValueError:  # get_layer or the unpacking in backbone_of: not a tltk classifier
        raise TltkError(f"--explain: model '{model.name}' is not a tltk classifier "
                        "(preprocess -> backbone -> head_pool -> head); Grad-CAM needs a "
                        "run directory or its .keras file") from None


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The image (uint8 RGB) with the heatmap resized onto it in the jet colormap."""
    size = image.shape[:2]
    heat = tf.image.resize(heat[..., None], size, method="bilinear").numpy()[..., 0]
    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
    return np.round((1 - alpha) * image + alpha * colours).astype(np.uint8)


def explain_files(model: keras.Model, images: np.ndarray, paths, out_dir) -> list[Path]:
    """Write `<out_dir>/<image stem>.gradcam.png` for each image; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heat = gradcam(model, images)
    written = []
    for image, cam, path in zip(images, heat, paths):
        target = out_dir / f"{Path(path).stem}.gradcam.png"
        Image.fromarray(overlay(image.astype(np.uint8), cam)).save(target)
        written.append(target)
    return written


def mistake_overlays(run_dir, weights: str, paths) -> list[np.ndarray | None] | None:
    """Grad-CAM overlays (of the predicted class) for a report's mistake grid, one per
    path (None for an unreadable image); None when the run's model cannot be explained
    (a missing model file, or not a tltk classifier): the grid then shows plain images."""
    from tltk.evaluation.runmodel import input_size, load_run_model, read_image, resize_policy
    from tltk.rundir import open_run

    run = open_run(run_dir)
    try:
        model = load_run_model(run.path, weights.split("+")[0])  # best+tta: the best model
        _parts(model)
    except TltkError:
        return None
    size, policy = input_size(model), resize_policy(run)
    images = {}
    for i, path in enumerate(paths):
        try:
            images[i] = read_image(path, size, policy)
        except ValueError:
            pass
    # One batch: Grad-CAM runs eagerly, and image by image its per-call overhead made a
    # report's 16 mistakes cost 12 s (half a 2-minute --budget run's evaluation).
    heat = dict(zip(images, gradcam(model, np.stack(list(images.values()))))) if images else {}
    return [overlay(images[i].astype(np.uint8), heat[i]) if i in images else None
            for i in range(len(paths))]
