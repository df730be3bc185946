"""The Preprocess layer reproduces keras.applications' conventions inside the model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tltk.models.preprocessing import Preprocess


@pytest.mark.parametrize("mode,reference", [
    ("tf", keras.applications.mobilenet_v2.preprocess_input),
    ("torch", keras.applications.densenet.preprocess_input),
    ("caffe", keras.applications.vgg19.preprocess_input),
    ("none", keras.applications.efficientnet.preprocess_input),
])
def test_preprocess_modes_match_keras_applications(mode, reference):
    x = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    expected = reference(x.copy())
    np.testing.assert_allclose(Preprocess(mode)(x), expected, rtol=1e-5, atol=1e-4)


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
