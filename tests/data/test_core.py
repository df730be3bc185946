"""Splits, stratification and the tf.data pipeline (tltk.data.core)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tltk.data.core import (
    array_split,
    fingerprint,
    make_pipeline,
    prepare_image,
    stratified_indices,
    subsample_per_class,
    subset,
)

LABELS = np.repeat([0, 1, 2], [10, 20, 30])


def test_stratified_fractions_are_per_class_disjoint_and_seeded():
    parts = stratified_indices(LABELS, {"val": 0.2, "test": 0.1}, seed=3)
    assert [np.bincount(LABELS[parts[k]]).tolist() for k in ("train", "val", "test")] == [
        [7, 14, 21], [2, 4, 6], [1, 2, 3]]
    assert sorted(np.concatenate(list(parts.values()))) == list(range(len(LABELS)))
    again = stratified_indices(LABELS, {"val": 0.2, "test": 0.1}, seed=3)
    other = stratified_indices(LABELS, {"val": 0.2, "test": 0.1}, seed=4)
    assert all((parts[k] == again[k]).all() for k in parts)
    assert not (parts["val"] == other["val"]).all()


def test_fixed_counts_and_per_class_subsamples():
    parts = stratified_indices(LABELS, {}, seed=0, counts={"val": 3})
    assert np.bincount(LABELS[parts["val"]]).tolist() == [3, 3, 3]
    keep = subsample_per_class(LABELS, 4, seed=0)
    assert np.bincount(LABELS[keep]).tolist() == [4, 4, 4] and (np.diff(keep) > 0).all()


def test_prepare_image_rounds_to_uint8_at_the_size():
    image = tf.constant(np.full((40, 30, 3), 100, np.uint8))
    out = prepare_image(image, 16)
    assert out.dtype == tf.uint8 and out.shape == (16, 16, 3)
    assert int(tf.reduce_min(out)) == int(tf.reduce_max(out)) == 100


def test_pipeline_batches_float_images_in_label_order_for_evaluation():
    images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    split = array_split(images, [0, 1, 0, 1, 0, 1], tag="t")
    batches = list(make_pipeline(split, 4, 4, training=False, seed=0))
    assert [b[0].shape for b in batches] == [(4, 4, 4, 3), (2, 4, 4, 3)]
    assert batches[0][0].dtype == tf.float32
    firsts = np.concatenate([b[0][:, 0, 0, 0].numpy() for b in batches])
    assert firsts.tolist() == [0, 1, 2, 3, 4, 5]
    assert np.concatenate([b[1].numpy() for b in batches]).tolist() == split.labels.tolist()


def test_training_pipeline_shuffles_with_its_seed():
    images = np.arange(32, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    split = array_split(images, np.zeros(32), tag="t")

    def order(seed):
        ds = make_pipeline(split, 4, 32, training=True, seed=seed)
        return next(iter(ds))[0][:, 0, 0, 0].numpy().tolist()

    assert order(1) == order(1) != order(2) and sorted(order(1)) == list(range(32))


def test_subset_keeps_the_order_and_changes_the_fingerprint():
    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    split = array_split(images, [0, 1, 2, 3, 4], tag="t")
    part = subset(split, np.array([1, 3]), tag="s")
    assert len(part) == 2 and part.labels.tolist() == [1, 3]
    assert [int(y) for _, y in part.source()] == [1, 3]
    assert part.fingerprint != split.fingerprint
    assert fingerprint("a", np.zeros(2)) == fingerprint("a", np.zeros(2)) != fingerprint("a")
    with pytest.raises(ValueError, match="sorted and unique"):
        subset(split, np.array([3, 1]))
