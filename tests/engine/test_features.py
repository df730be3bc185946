"""The streamed feature cache: filled batch by batch on disk, read back memory-mapped,
rebuilt when stale or torn, within a memory budget that counts its transients; a second
`get` with the same key returns the same features without recomputing them, and any
change of key (or of the split's content) recomputes."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.data.core import Split, array_split
from tltk.engine import streams
from tltk.engine.features import FeatureCache, cache_budget, cache_bytes
from tltk.engine.run import train
from tltk.errors import TltkError
from tltk.log import silent


def extractor() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    return keras.Model(inputs, x)


def images(n: int, view: int) -> tf.data.Dataset:
    rng = np.random.default_rng(view)
    return tf.data.Dataset.from_tensor_slices(
        rng.uniform(0, 1, (n, 8, 8, 3)).astype(np.float32)).batch(3)


def test_streamed_cache_equals_predict_and_is_a_read_only_memmap(tmp_path):
    model, n = extractor(), 7
    split = Split(np.zeros(n, np.int32), source=None, fingerprint="seven")
    cache = FeatureCache(tmp_path)
    feats = cache.get(model, split, {"k": 1}, lambda v: images(n, v), views=2)
    reference = np.stack([model.predict(images(n, v), verbose=0) for v in range(2)])
    assert isinstance(feats, np.memmap) and not feats.flags.writeable
    assert feats.shape == (2, n, 8, 8, 4) and feats.dtype == np.float16  # spatial: halved
    np.testing.assert_array_equal(feats, reference.astype(np.float16))
    # no temp file left: the array, its checksum sidecar and its key
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy", ".sha256"]
    calls = []
    again = cache.get(model, split, {"k": 1}, lambda v: calls.append(v) or images(n, v), 2)
    assert not calls and np.array_equal(again, feats), "the second get reads the cache"


def test_a_torn_or_stale_cache_is_rebuilt(tmp_path):
    model, n = extractor(), 4
    split = Split(np.zeros(n, np.int32), source=None, fingerprint="four")
    cache = FeatureCache(tmp_path)
    path = cache.path({"k": 1, "split": "four", "views": 1})
    cache.get(model, split, {"k": 1}, lambda v: images(n, v), views=1)
    meta = path.with_suffix(".json")
    saved = json.loads(meta.read_text())
    meta.write_text(json.dumps({**saved, "shape": [1, 5, 8, 8, 4]}))  # stale
    calls = []
    cache.get(model, split, {"k": 1}, lambda v: calls.append(v) or images(n, v), 1)
    meta.unlink()  # a kill between the array and its key: the array is not trusted
    cache.get(model, split, {"k": 1}, lambda v: calls.append(v) or images(n, v), 1)
    assert calls == [0, 0]


def test_epoch_stream_gathering_batches_equals_slicing_examples():
    features = np.arange(20, dtype=np.float16).reshape(10, 2)
    labels = np.arange(10) % 3
    sliced = tf.data.Dataset.from_tensor_slices((features, labels))
    gather = streams.array_gather(features, labels)
    for first in (0, 2):
        a = streams.epoch_stream(sliced, 10, 4, seed=1, first=first, epochs=3, buffer=10)
        b = streams.epoch_stream(tf.data.Dataset.range(10), 10, 4, seed=1, first=first,
                                 epochs=3, buffer=10, gather=gather)
        pairs = list(zip(a, b, strict=True))
        assert len(pairs) == 3 * (3 - first)
        for (xa, ya), (xb, yb) in pairs:
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_cache_bytes_count_the_stored_array_and_its_transient_batches():
    stored = 14 * 14 * 512 * 2 * 10_000
    need = cache_bytes((14, 14, 512), 10_000, batch_size=32)
    assert stored < need < 1.2 * stored
    assert cache_bytes((512,), 10, batch_size=1) > 512 * 4 * 10  # pooled: float32
    assert cache_budget(2.5) == 2.5e9 and cache_budget(None) > 0


def test_a_requested_cache_over_budget_fails_before_training_saying_by_how_much(
        tmp_path, tiny_backbone):
    config = RunConfig(recipe="test", backbone="tiny", weights="none",
                       data=DataConfig(dataset="demo", image_size=32, per_class=5),
                       head=HeadConfig(layers=1, units=8), batch_size=8,
                       out=str(tmp_path / "run"), cache_budget_gb=1e-4, stages=[
                           StageConfig("head", epochs=1, unfreeze=0),
                           StageConfig("tune", epochs=1, unfreeze=1, cache_features=True)])
    with pytest.raises(TltkError) as info:
        train(config, say=silent)
    message = str(info.value)
    assert "\n" not in message and "stage 'tune'" in message
    assert "MB over the cache budget of 0.1 MB" in message
    assert "cache_budget_gb" in message and "stages.tune.cache_features=false" in message
    assert not (tmp_path / "run" / "history.csv").exists(), "failed before any epoch"


# --- keying ---------------------------------------------------------------------------

IMAGES = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 3), dtype=np.uint8)
LABELS = np.arange(10) % 2


@pytest.fixture(scope="module")
def pooling_extractor():
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(inputs))


class Inputs:
    """`make_inputs(view)`: view 0 the plain images, view v brightened by v; counts calls."""

    def __init__(self, images=IMAGES):
        self.images, self.calls = images, 0

    def __call__(self, view: int):
        self.calls += 1
        return tf.data.Dataset.from_tensor_slices(self.images.astype("float32") + view).batch(4)


def get(cache, model, inputs, key, split=None, views=2):
    split = split or array_split(IMAGES, LABELS, tag="train")
    return cache.get(model, split, key=key, make_inputs=inputs, views=views)


def test_same_key_is_served_from_the_cache(tmp_path, pooling_extractor):
    cache, inputs = FeatureCache(tmp_path), Inputs()
    first = get(cache, pooling_extractor, inputs, {"backbone": "tiny"})
    assert first.shape == (2, 10, 3) and inputs.calls == 2  # (views, examples, channels)
    expected = IMAGES.astype("float32").mean(axis=(1, 2))
    np.testing.assert_allclose(first[0], expected, rtol=1e-6)
    np.testing.assert_allclose(first[1], expected + 1, rtol=1e-6)
    again = get(FeatureCache(tmp_path), pooling_extractor, inputs, {"backbone": "tiny"})
    assert inputs.calls == 2  # nothing recomputed, even by a new cache object
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))


@pytest.mark.parametrize("change", ["key", "views", "split"])
def test_a_different_key_recomputes(tmp_path, pooling_extractor, change):
    cache, inputs = FeatureCache(tmp_path), Inputs()
    get(cache, pooling_extractor, inputs, {"backbone": "tiny", "image_size": 8})
    calls = inputs.calls
    key = {"backbone": "tiny", "image_size": 8 if change != "key" else 16}
    views = 3 if change == "views" else 2
    split = array_split(IMAGES[::-1], LABELS, tag="train") if change == "split" else None
    changed = get(cache, pooling_extractor, inputs, key, split=split, views=views)
    assert inputs.calls == calls + views and changed.shape == (views, 10, 3)
