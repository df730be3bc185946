"""Shared fixtures: the ../shared assets, a tiny backbone, mocked tfds and quiet TensorFlow.

Markers: `slow` (more than a few seconds; `-m "not slow"` is the fast loop) and
`realdata` (needs ../shared; skipped with the reason when it is absent).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tests.tiny import TINY, build_tiny  # noqa: E402, F401
from tltk.config import DataConfig, RunConfig  # noqa: E402
from tltk.models import backbones  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TLTK_SHARED") or ROOT.parent / "shared")  # as benchmarks/_flowers
FLOWERS = SHARED / "data" / "flowers-128"
MNV2_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_dogs19_notop.weights.h5"


def require_shared():
    """Skip a real-data test, with the reason, when ../shared is absent."""
    if not (FLOWERS.is_dir() and MNV2_WEIGHTS.is_file()):
        pytest.skip(f"real assets not found at {SHARED} (flowers-128 and MobileNetV2 weights)")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Feature caches and the Keras cache live in temp folders, never in $HOME."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("TLTK_CACHE", str(root / "tltk-cache"))
    monkeypatch.setenv("KERAS_HOME", str(root / "keras-home"))


@pytest.fixture(autouse=True, scope="module")
def _clear_keras():
    """Free Keras graph state once per test module (per test, the gc pause costs more)."""
    yield
    import keras

    keras.backend.clear_session()


# --- a tiny run config -----------------------------------------------------------------

# 10 training images per class of the demo shapes, with small val and test splits.
SMALL_SPLITS = {"per_class": 10, "val_fraction": 0.05, "test_fraction": 0.05}


def tiny_config(out=None, stages=(), *, recipe="test", backbone="tiny", data=None,
                **fields) -> RunConfig:
    """A run small enough for engine tests: demo shapes at 32 px, batch 16, no weights.

    `data` updates the DataConfig fields (e.g. `SMALL_SPLITS`, or `dataset="folder"`);
    `fields` are further RunConfig fields (head, seed, deterministic, ...).
    """
    data = DataConfig(**{"dataset": "demo", "image_size": 32, **(data or {})})
    if out is not None:
        fields["out"] = str(out)
    return RunConfig(recipe=recipe, backbone=backbone, weights="none", batch_size=16,
                     data=data, stages=list(stages), **fields)


# --- a tiny "pretrained" backbone ----------------------------------------------------

# build_tiny and TINY live in tests/tiny.py, which subprocesses import without pytest.


def build_tiny_bn(input_shape, weights=None) -> keras.Model:
    """TINY with a BatchNormalization layer in block2, for BatchNorm-mode tests."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                            name="block1_conv")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="block2_conv")(x)
    x = keras.layers.BatchNormalization(name="block2_bn")(x)
    x = keras.layers.ReLU(name="block2_relu")(x)
    return keras.Model(inputs, x, name="tiny_bn")


TINY_BN = backbones.BackboneSpec(name="tiny_bn", description="TINY with BatchNorm in block2",
                                 builder=build_tiny_bn, preprocess="tf", default_size=32,
                                 min_size=32, blocks=("block2", "block1"))


@pytest.fixture
def tiny_bn_backbone():
    """Register TINY_BN as backbone "tiny_bn" for one test."""
    backbones.BACKBONES.register("tiny_bn", TINY_BN)
    yield TINY_BN
    backbones.BACKBONES.unregister("tiny_bn")


@pytest.fixture
def tiny_backbone():
    """Register TINY as backbone "tiny" for one test."""
    backbones.BACKBONES.register("tiny", TINY)
    yield TINY
    backbones.BACKBONES.unregister("tiny")
    return TINY


# --- tfds under mock_data ------------------------------------------------------------

def colour(label: int) -> tuple[int, int, int]:
    return (label % 50) * 5, (label // 50) * 12, 7


def png(label: int) -> bytes:
    image = np.zeros((6 + label % 3, 5, 3), np.uint8) + np.uint8(colour(label))
    return tf.io.encode_png(image).numpy()


def mocked(splits: dict):
    """mock_data serving `splits`; datasets not in it behave as not prepared."""
    images = {}

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        if self.name not in splits:
            raise AssertionError(f"Dataset {self.name}: could not find data")
        labels = np.concatenate([splits[self.name][part] for part in str(split).split("+")])
        wanted = decoders.extract_features(self.info.features).keys()
        example = {"label": tf.constant(labels, tf.int64)}
        if "image" in wanted:
            # The sources must never decode images inside tfds: they filter first.
            assert isinstance(decoders.decoders["image"], tfds.decode.SkipDecoding)
            for label in set(labels.tolist()) - set(images):
                images[label] = png(label)
            example["image"] = tf.constant([images[label] for label in labels])
        return tf.data.Dataset.from_tensor_slices(example)

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)
