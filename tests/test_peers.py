"""The peers of B6/B9 as their documentation has them, on a tiny model file: fastai's
BatchNorm momentum, one optimizer and per-image augmentation; the Keras guide's frozen
BatchNorm during fine-tuning.

Example:
    $ python -m pytest tests/test_peers.py
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from benchmarks import keras_guide
from benchmarks.keras_guide import batchnorm_layers
from benchmarks.peers import (
    FASTAI_BN_MOMENTUM,
    Backbone,
    RandomApply,
    _compile_fastai,
    _train_body,
    _unfreeze_fastai,
    fastai_model,
    fastai_optimizer,
)
from tests.tiny import tiny_model_file

SIZE, CLASSES = 32, 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Backbone:
    path = tiny_model_file(tmp_path_factory.mktemp("peers") / "tiny.keras", SIZE)
    return Backbone("tiny", path, SIZE, "block7a_")


def batch(n: int = 8):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    return images, rng.integers(0, CLASSES, n)


def test_fastai_runs_every_batchnorm_at_pytorch_momentum(tiny):
    model, base = fastai_model(tiny, CLASSES)
    momenta = [bn.momentum for bn in batchnorm_layers(model)]
    assert len(momenta) == 4, "two in the body, two in the head"
    assert momenta == [FASTAI_BN_MOMENTUM] * 4 and FASTAI_BN_MOMENTUM == 0.9


@pytest.mark.slow  # two train-step traces with augmentation: about 9 s on 2 busy cores
def test_fastai_keeps_one_optimizer_across_freeze_and_unfreeze(tiny):
    model, base = fastai_model(tiny, CLASSES)
    optimizer = fastai_optimizer(model, base)
    x, y = batch()
    _train_body(base, batchnorm_only=True)
    _compile_fastai(model, optimizer)
    model.train_on_batch(x, y)
    _unfreeze_fastai(model, base, optimizer)
    model.train_on_batch(x, y)
    assert model.optimizer is optimizer
    steps = {v.path: int(optimizer._steps[optimizer._get_variable_index(v)].numpy())
             for v in model.trainable_variables}
    assert steps["stem_conv/kernel"] == 1, "frozen in the first cycle: one step since"
    assert steps["stem_bn/gamma"] == 2, "BatchNorm trains in both cycles"
    assert float(optimizer.body_mult.numpy()) == pytest.approx(0.01)


def test_random_apply_changes_about_its_share_of_images():
    images = np.ones((400, 2, 2, 3), "float32")
    doubled = keras.layers.Rescaling(2.0)
    out = np.asarray(RandomApply(doubled, 0.75, seed=1)(images, training=True))
    changed = float(np.mean(out[:, 0, 0, 0] == 2.0))
    assert 0.65 < changed < 0.85
    assert np.all(np.asarray(RandomApply(doubled, 0.75)(images, training=False)) == 1.0)


def _moving_statistics(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for bn in batchnorm_layers(model)
            for w in (bn.moving_mean, bn.moving_variance)]


def _guide_step(tiny, freeze_batchnorm: bool) -> tuple[list, list, keras.Model]:
    """Moving statistics before and after one fine-tuning step of the guide's model."""
    base = tiny.load()
    model = keras_guide.guide_model(base, tiny.preprocess(), CLASSES, SIZE,
                                    keras_guide.guide_augmentation())
    keras_guide.compile_stage(model, base, "finetune")
    if not freeze_batchnorm:  # the guide's end-to-end code alone: base.trainable = True
        for bn in batchnorm_layers(base):
            bn.trainable = True
        model.compile(keras.optimizers.Adam(keras_guide.FINETUNE_LR),
                      "sparse_categorical_crossentropy")
    before = _moving_statistics(model)
    model.fit(*batch(), epochs=1, batch_size=8, verbose=0)
    return before, _moving_statistics(model), base


@pytest.mark.slow  # two train-step traces: about 6 s on 2 busy cores
def test_keras_guide_fine_tuning_leaves_batchnorm_statistics_alone(tiny):
    before, after, base = _guide_step(tiny, freeze_batchnorm=True)
    assert len(before) == 4
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
    assert base.get_layer("stem_conv").trainable, "the rest of the base is unfrozen"
    # The guide's code without the BatchNorm freeze moves them (keras-team/keras#20285).
    before, after, _ = _guide_step(tiny, freeze_batchnorm=False)
    assert any(not np.array_equal(old, new) for old, new in zip(before, after, strict=True))
