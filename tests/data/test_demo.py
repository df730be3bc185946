"""The offline demo source (tltk.data.demo): six procedural shape classes."""

from __future__ import annotations

import numpy as np

from tltk.config import DataConfig
from tltk.data import load
from tltk.data.demo import CLASSES, make_shapes


def test_shapes_are_balanced_uint8_and_depend_only_on_the_seed():
    images, labels = make_shapes(per_class=3, seed=5, size=32)
    assert images.shape == (18, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [3] * len(CLASSES)
    again, _ = make_shapes(per_class=3, seed=5, size=32)
    other, _ = make_shapes(per_class=3, seed=6, size=32)
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(images, other)
    assert len({image.tobytes() for image in images}) == len(images)  # no two alike


def test_load_splits_by_fraction():
    ds = load(DataConfig(dataset="demo", val_fraction=0.1, test_fraction=0.2), seed=0)
    assert ds.name == "demo" and ds.class_names == CLASSES and ds.num_classes == 6
    assert {name: len(split) for name, split in ds.splits.items()} == {
        "train": 840, "val": 120, "test": 240}
    assert ds.eval_splits() == ["val", "test"]
