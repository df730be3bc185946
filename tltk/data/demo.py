"""`demo`: a procedurally generated, deterministic image set that needs no network.

Six visually distinct shape classes drawn in random colours, positions, sizes and
rotations over noisy gradient backgrounds, 64 px. Small enough that
`tltk train demo` finishes in about two minutes on two cores.

Example:
    >>> images, labels = make_shapes(per_class=4, seed=0)
    >>> images.shape, images.dtype
    ((24, 64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import numpy as np

from tltk.data.core import Dataset, array_split, stratified_indices
from tltk.data.sources import register

CLASSES = ["circle", "square", "triangle", "cross", "ring", "stripes"]
SIZE = 64
PER_CLASS = 200


def _grid(rng, size):
    """Pixel coordinates centred on a random point and rotated by a random angle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return u, v


def _mask(shape: str, rng, size: int) -> np.ndarray:
    u, v = _grid(rng, size)
    r = rng.uniform(0.15, 0.3) * size
    if shape == "circle":
        return u**2 + v**2 < r**2
    if shape == "square":
        return (np.abs(u) < r * 0.85) & (np.abs(v) < r * 0.85)
    if shape == "triangle":
        return (v < r * 0.6) & (v > 2 * np.abs(u) - r)
    if shape == "cross":
        arm = r * 0.3
        return ((np.abs(u) < arm) & (np.abs(v) < r)) | ((np.abs(v) < arm) & (np.abs(u) < r))
    if shape == "ring":
        d2 = u**2 + v**2
        return (d2 < r**2) & (d2 > (0.6 * r) ** 2)
    if shape == "stripes":
        period = rng.uniform(0.12, 0.2) * size
        return (np.mod(u, period) < period / 2) & (u**2 + v**2 < (1.6 * r) ** 2)
    raise ValueError(shape)


def _background(rng, size: int) -> np.ndarray:
    base = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    # Bilinear upsampling of a 2x2 colour grid gives a smooth gradient.
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    top = base[0, 0] * (1 - t) + base[0, 1] * t
    bottom = base[1, 0] * (1 - t) + base[1, 1] * t
    grad = top[None, :, 0] * (1 - t) + bottom[None, :, 0] * t
    return grad + rng.normal(0, 12, (size, size, 3))


def make_shapes(per_class: int = PER_CLASS, seed: int = 0, size: int = SIZE):
    """Generate `per_class` images of every class; returns (uint8 images, int labels)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, shape in enumerate(CLASSES):
        for _ in range(per_class):
            image = _background(rng, size)
            colour = rng.uniform(0, 255, 3)
            # Keep the shape visible: push its colour away from the background mean.
            colour = np.where(np.abs(colour - image.mean((0, 1))) < 60, 255 - colour, colour)
            image[_mask(shape, rng, size)] = colour
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int32)


@register("demo")
def load_demo(cfg, seed: int = 0) -> Dataset:
    """Load the demo set, split stratified by `cfg.val_fraction` / `cfg.test_fraction`."""
    # The images themselves do not depend on the run seed, only the split does.
    images, labels = make_shapes(seed=1234)
    parts = stratified_indices(labels, {"val": cfg.val_fraction, "test": cfg.test_fraction},
                               seed=seed)
    splits = {name: array_split(images[idx], labels[idx], tag=f"demo/{name}/{seed}")
              for name, idx in parts.items() if len(idx)}
    return Dataset(name="demo", class_names=list(CLASSES), splits=splits)
