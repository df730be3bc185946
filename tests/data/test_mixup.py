"""Mixup: pixel and label mixing on a hand-built batch, Beta weights, seeding."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tltk.data.mixup import beta_weights, mix_batch, mixup_batches  # noqa: E402
from tltk.log import silent

B = 8
LABELS = np.array([0, 1, 2, 0, 1, 2, 2, 0], dtype=np.int32)


def identity_batch():
    """Image i is 1 at pixel i and 0 elsewhere, so a mix shows who was mixed, and how."""
    return np.eye(B, dtype=np.float32).reshape(B, 1, B, 1) * np.ones((1, 1, 1, 3), "float32")


def test_pixels_and_labels_mix_with_the_same_weight_and_partner():
    # alpha=1: uniform weights, away from the 0/1 extremes that would hide the partner.
    images, labels = mix_batch(identity_batch(), LABELS, num_classes=3, alpha=1.0,
                               seed=[3, 7])
    images, labels = images.numpy()[:, 0, :, 0], labels.numpy()
    np.testing.assert_allclose(images.sum(axis=1), 1.0, rtol=1e-6)  # convex combinations
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)  # label mass 1 per row
    partners = []
    for i in range(B):
        others = np.delete(np.arange(B), i)
        j = others[np.argmax(images[i, others])] if images[i, i] < 1 else i
        lam = images[i, i]
        partners.append(j)
        expected = lam * np.eye(3)[LABELS[i]] + (1 - lam) * np.eye(3)[LABELS[j]]
        np.testing.assert_allclose(labels[i], expected, atol=1e-6)
    assert sorted(partners) == list(range(B))  # partners are a permutation of the batch
    assert sum(p != i for i, p in enumerate(partners)) >= B // 2


def test_weights_follow_beta_alpha_alpha():
    draws = beta_weights(20000, 0.4, tf.constant([1, 2], tf.int64)).numpy()
    assert draws.min() >= 0 and draws.max() <= 1
    reference = np.random.default_rng(0).beta(0.4, 0.4, size=200_000)
    quantiles = [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(np.quantile(draws, quantiles), np.quantile(reference, quantiles),
                               atol=0.02)
    assert draws.var() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), rel=0.05)


def dataset():
    images = np.random.default_rng(0).uniform(0, 255, (16, 4, 4, 3)).astype("float32")
    labels = np.arange(16, dtype=np.int32) % 3
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)


def collect(ds):
    return np.concatenate([y.numpy() for _, y in ds])


def test_pipeline_is_seeded_per_batch_and_changes_between_epochs():
    mixed = mixup_batches(dataset(), alpha=1.0, num_classes=3, seed=5)
    first, second = collect(mixed), collect(mixed)
    assert not np.allclose(first, second)  # new weights each epoch
    again = mixup_batches(dataset(), alpha=1.0, num_classes=3, seed=5)
    np.testing.assert_array_equal(collect(again), first)  # same seed, same draws
    other = mixup_batches(dataset(), alpha=1.0, num_classes=3, seed=6)
    assert not np.allclose(collect(other), first)
    x, y = next(iter(other))
    assert x.shape == (4, 4, 4, 3) and y.shape == (4, 3) and y.dtype == tf.float32


def test_mixed_batches_train_with_categorical_cross_entropy():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", loss="categorical_crossentropy")
    history = model.fit(mixup_batches(dataset(), 0.2, 3, seed=0), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="alpha"):
        mixup_batches(dataset(), alpha=0.0, num_classes=3)
    as_uint8 = dataset().map(lambda x, y: (tf.cast(x, tf.uint8), y))
    with pytest.raises(ValueError, match="float images"):
        mixup_batches(as_uint8, alpha=0.2, num_classes=3)


def test_epoch_stream_mixes_per_batch_and_a_resumed_stream_repeats_the_tail():
    from tltk.data.mixup import mix_batch
    from tltk.engine.streams import epoch_stream

    examples = dataset().unbatch()

    def mix(x, y, seed):
        return mix_batch(x, y, 3, 0.4, seed)

    def batches(first):
        return [(x.numpy(), y.numpy()) for x, y in
                epoch_stream(examples, B, 4, seed=3, first=first, epochs=3, buffer=B, mix=mix)]

    full, resumed = batches(0), batches(1)
    assert len(full) == 6 and full[0][1].shape == (4, 3)
    for (x, y), (rx, ry) in zip(full[2:], resumed):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    np.testing.assert_allclose(full[0][1].sum(axis=1), 1.0, rtol=1e-6)
    # Beta(0.4, 0.4) draws sit near 0 or 1, so one batch may look one-hot; an epoch can't.
    first_epoch = np.concatenate([y for _, y in full[:2]])
    assert not np.allclose(first_epoch.max(axis=1), 1.0), "labels are mixed, not one-hot"


@pytest.mark.slow
@pytest.mark.parametrize("backbone, unfreeze", [("scratch", "all"), ("vgg16", 0)])
def test_training_stages_take_mixup_on_images_and_on_cached_features(tmp_path, backbone,
                                                                       unfreeze):
    from tests.conftest import tiny_config
    from tltk.config import HeadConfig, StageConfig
    from tltk.engine.run import train

    config = tiny_config(tmp_path / "run",
                         [StageConfig("mix", epochs=2, unfreeze=unfreeze, mixup=0.4)],
                         backbone=backbone, data={"per_class": 10},
                         head=HeadConfig(layers=1, units=8))
    result = train(config, say=silent)
    stage = json.loads((result.run_dir / "run.json").read_text())["stages"][0]
    assert stage["mixup"] == 0.4
    assert stage["cached_features"] == ("pooled" if backbone == "vgg16" else None)
    history = result.history
    assert np.isfinite(history["loss"]).all() and history["val_top1"].between(0, 1).all()
    assert set(result.metrics["split"]) == {"val", "test"}
