"""The shared real-data setup of benchmarks B2-B5: flowers-128 and MobileNetV2 @160.

Both assets come from `../shared` beside the repository (see its README); the
benchmarks stop with a clear message when it is absent.

Example::

    setup = flowers_setup(per_class=100)
    setup.model.output_shape  # -> (None, 5)
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tltk import data as tltk_data
from tltk.config import DataConfig, HeadConfig
from tltk.data.core import Dataset, make_pipeline
from tltk.models.backbones import build_backbone, get_backbone
from tltk.models.heads import build_classifier

# ../shared beside the checkout; TLTK_SHARED points elsewhere (a git worktree's parent
# has none).
SHARED = Path(os.environ.get("TLTK_SHARED") or Path(__file__).resolve().parents[2] / "shared")
FLOWERS = SHARED / "data" / "flowers-128"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_dogs19_notop.weights.h5"
IMAGE_SIZE = 160
BATCH_SIZE = 32
SEED = 0


@dataclass
class FlowersSetup:
    dataset: Dataset
    model: keras.Model  # raw RGB in, softmax out; backbone frozen
    data_config: DataConfig


def require_assets() -> None:
    if not (FLOWERS.is_dir() and WEIGHTS.is_file()):
        raise SystemExit(f"benchmark needs ../shared (flowers-128 and the MobileNetV2 "
                         f"weights); not found at {SHARED}")


def flowers_split(per_class: int | None = None, val_fraction: float = 0.3,
                  test_fraction: float = 0.0, seed: int = SEED) -> tuple[Dataset, DataConfig]:
    """flowers-128 split stratified with `seed` (train optionally subsampled per class).

    The seed goes into `split_seed` too: `DataConfig.split_seed` is fixed (0) by default,
    so without it every seed drew split 0 (B9's first run scored on it).

    Example::

        dataset, cfg = flowers_split(val_fraction=0.15, test_fraction=0.15)
    """
    require_assets()
    cfg = DataConfig(dataset="folder", path=str(FLOWERS), image_size=IMAGE_SIZE,
                     val_fraction=val_fraction, test_fraction=test_fraction,
                     per_class=per_class, split_seed=seed)
    return tltk_data.load(cfg, seed=seed), cfg


def flowers_setup(per_class: int | None = None, val_fraction: float = 0.3) -> FlowersSetup:
    """flowers-128 split 70/30 (train optionally subsampled) and a frozen MobileNetV2."""
    keras.utils.set_random_seed(SEED)
    dataset, cfg = flowers_split(per_class, val_fraction)
    spec = get_backbone("mobilenetv2")
    base = build_backbone(spec, str(WEIGHTS), IMAGE_SIZE)
    base.trainable = False
    model = build_classifier(base, spec, dataset.num_classes, HeadConfig())
    return FlowersSetup(dataset, model, cfg)


def in_memory(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split decoded and resized once into float32 arrays (the in-memory reference)."""
    ds = make_pipeline(dataset.splits[split], IMAGE_SIZE, BATCH_SIZE, training=False,
                       seed=SEED, cache=False)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def parse_sizes(argv: list[str] | None, description: str) -> tuple[bool, int, int]:
    """`--quick` for the flowers ratio benchmarks: (quick, images per class, repeats).

    Example:
        >>> parse_sizes(["--quick"], "B4")
        (True, 60, 2)
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="60 images per class, 2 repeats")
    quick = parser.parse_args(argv).quick
    return quick, (60 if quick else 200), (2 if quick else 3)
