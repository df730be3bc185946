"""Head grafting: structure, float32 output, raw-pixel input and round trips."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tltk.config import HeadConfig
from tltk.models.backbones import build_backbone, get_backbone
from tltk.models.heads import build_classifier, build_head, feature_extractor


def test_head_structure_matches_the_declaration():
    head = build_head(32, 7, HeadConfig(layers=2, units=16, dropout=0.25))
    kinds = [type(layer).__name__ for layer in head.layers[1:]]
    assert kinds == ["BatchNormalization", "Dense", "BatchNormalization", "Dropout",
                     "Dense", "BatchNormalization", "Dropout", "Dense"]
    assert [layer.units for layer in head.layers if isinstance(layer, keras.layers.Dense)] \
        == [16, 16, 7]
    assert head.get_layer("head_dropout1").rate == 0.25
    assert head.get_layer("predictions").activation.__name__ == "softmax"


def test_head_without_batchnorm_is_dense_and_dropout_only():
    head = build_head(32, 7, HeadConfig(layers=2, units=16, batchnorm=False))
    kinds = [type(layer).__name__ for layer in head.layers[1:]]
    assert kinds == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
    # No moving statistics to keep: every weight is a dense kernel or bias.
    assert head.non_trainable_weights == []
    assert len(build_head(32, 7, HeadConfig(layers=2)).non_trainable_weights) == 6


def test_the_folder_recipe_head_has_no_batchnorm():
    from tltk.recipes import folder

    assert folder.config().head.batchnorm is False
    assert HeadConfig().batchnorm is True  # the thesis recipes keep theirs


def test_output_layer_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        spec = get_backbone("mobilenetv2")
        model = build_classifier(build_backbone(spec, "none", 32), spec, 4, HeadConfig())
        assert model.get_layer("head").get_layer("predictions").dtype_policy.name == "float32"
        assert model(np.zeros((1, 32, 32, 3), "float32")).dtype.name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_classifier_takes_raw_pixels_and_round_trips(tmp_path):
    spec = get_backbone("vgg16")
    model = build_classifier(build_backbone(spec, "none", 32), spec, 3, HeadConfig(units=8))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    pre = model.get_layer("preprocess")  # caffe: a frozen 1x1 conv, RGB -> BGR minus the mean
    assert isinstance(pre, keras.layers.Conv2D) and not pre.trainable
    np.testing.assert_allclose(pre(x), keras.applications.vgg16.preprocess_input(x.copy()),
                               atol=1e-3)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert not again.get_layer("preprocess").trainable
    np.testing.assert_allclose(model.predict(x, verbose=0), again.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert feature_extractor(model).output_shape == (None, 512)


def test_scratch_head_flattens():
    spec = get_backbone("scratch")
    model = build_classifier(build_backbone(spec, "none", 64), spec, 5, HeadConfig(layers=0))
    assert model.get_layer("head_pool").__class__.__name__ == "Flatten"
    assert model.get_layer("head").input_shape == (None, 2 * 2 * 256)
