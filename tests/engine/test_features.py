"""The bottleneck feature cache (tltk.engine.features): public behaviour only.

A second `get` with the same key returns the same features without recomputing them;
any change of key (or of the split's content) recomputes.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tltk.data.core import array_split
from tltk.engine.features import FeatureCache

IMAGES = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 3), dtype=np.uint8)
LABELS = np.arange(10) % 2


@pytest.fixture(scope="module")
def extractor():
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(inputs))


class Inputs:
    """`make_inputs(view)`: view 0 the plain images, view v brightened by v; counts calls."""

    def __init__(self, images=IMAGES):
        self.images, self.calls = images, 0

    def __call__(self, view: int):
        self.calls += 1
        return tf.data.Dataset.from_tensor_slices(self.images.astype("float32") + view).batch(4)


def get(cache, extractor, inputs, key, split=None, views=2):
    split = split or array_split(IMAGES, LABELS, tag="train")
    return cache.get(extractor, split, key=key, make_inputs=inputs, views=views)


def test_same_key_is_served_from_the_cache(tmp_path, extractor):
    cache, inputs = FeatureCache(tmp_path), Inputs()
    first = get(cache, extractor, inputs, {"backbone": "tiny"})
    assert first.shape == (2, 10, 3) and inputs.calls == 2  # (views, examples, channels)
    expected = IMAGES.astype("float32").mean(axis=(1, 2))
    np.testing.assert_allclose(first[0], expected, rtol=1e-6)
    np.testing.assert_allclose(first[1], expected + 1, rtol=1e-6)
    again = get(FeatureCache(tmp_path), extractor, inputs, {"backbone": "tiny"})
    assert inputs.calls == 2  # nothing recomputed, even by a new cache object
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))


@pytest.mark.parametrize("change", ["key", "views", "split"])
def test_a_different_key_recomputes(tmp_path, extractor, change):
    cache, inputs = FeatureCache(tmp_path), Inputs()
    get(cache, extractor, inputs, {"backbone": "tiny", "image_size": 8})
    calls = inputs.calls
    key = {"backbone": "tiny", "image_size": 8 if change != "key" else 16}
    views = 3 if change == "views" else 2
    split = array_split(IMAGES[::-1], LABELS, tag="train") if change == "split" else None
    changed = get(cache, extractor, inputs, key, split=split, views=views)
    assert inputs.calls == calls + views and changed.shape == (views, 10, 3)
