"""The built-in preprocessing layers (and the Preprocess layer of older models) reproduce
keras.applications' conventions inside the model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tltk.models.preprocessing import Preprocess, builtin_preprocess, preprocess_layer


@pytest.mark.parametrize("mode,reference", [
    ("tf", keras.applications.mobilenet_v2.preprocess_input),
    ("torch", keras.applications.densenet.preprocess_input),
    ("caffe", keras.applications.vgg19.preprocess_input),
    ("none", keras.applications.efficientnet.preprocess_input),
])
@pytest.mark.parametrize("build", [preprocess_layer, Preprocess])
def test_preprocess_modes_match_keras_applications(mode, reference, build):
    x = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    expected = reference(x.copy())
    np.testing.assert_allclose(build(mode)(x), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "torch"])
def test_builtin_layers_are_keras_layers_that_reload(tmp_path, mode):
    inputs = keras.Input((4, 4, 3))
    layer = builtin_preprocess(Preprocess(mode, name="preprocess"))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(2).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert reloaded.get_layer("preprocess").__class__.__module__.startswith("keras.")
    assert reloaded.get_layer("preprocess").trainable_weights == []
    np.testing.assert_allclose(reloaded(x), model(x), rtol=1e-6)


def test_preprocess_saves_and_reloads_with_its_mode(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, Preprocess("caffe", name="preprocess")(inputs))
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(2).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert reloaded.get_layer("preprocess").mode == "caffe"
    np.testing.assert_allclose(reloaded(x), model(x), rtol=1e-6)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="one of .*got 'lab'"):
        Preprocess("lab")
