"""keras-hub presets as backbones, offline: a tiny preset saved by keras-hub itself."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.errors import TltkError
from tltk.log import silent
from tltk.models import hub
from tltk.models.backbones import build_backbone, get_backbone

keras_hub = pytest.importorskip("keras_hub")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A two-stack ResNet (stock Keras layers only) and its image converter, as a preset."""
    folder = tmp_path_factory.mktemp("hub") / "tiny_resnet"
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    backbone.save_to_preset(str(folder))
    keras_hub.layers.ResNetImageConverter(
        image_size=(32, 32), scale=[1 / (255 * s) for s in STD],
        offset=[-m / s for m, s in zip(MEAN, STD)]).save_to_preset(str(folder))
    return folder


def test_preset_directory_spec_blocks_and_converter_rescaling(preset):
    spec = get_backbone(f"hub:{preset}")
    assert spec.blocks == ("stack1_block0", "stack0_block0")
    assert spec.preprocess == "none" and spec.top_classes is None
    assert spec.source == f"hub:{preset}" and spec.default_size == 224
    base = build_backbone(spec, "imagenet", 32)
    assert base.layers[1].name == "preset_rescaling"
    x = np.full((1, 32, 32, 3), 255.0, np.float32)
    expected = np.array([(1 - m) / s for m, s in zip(MEAN, STD)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(base.layers[1](x))[0, 0, 0],
                               expected, rtol=1e-5)
    assert spec.params == base.count_params()


def test_unreadable_missing_and_offline_presets_fail_in_one_line(tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, message in [(f"hub:{broken}", "not a readable keras-hub preset"),
                          (f"hub:{empty}", "not a readable keras-hub preset"),
                          (f"hub:{tmp_path / 'nope'}", "preset directory not found"),
                          ("hub:resnet_51_imagenet", "unknown keras-hub preset")]:
        with pytest.raises(TltkError) as info:
            get_backbone(name)
        assert message in str(info.value) and "\n" not in str(info.value), name

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(TltkError) as info:
        hub.load_backbone("hub:resnet_18_imagenet", "resnet_18_imagenet")
    assert "not available offline" in str(info.value)
    assert "save_to_preset(DIR), then pass --backbone hub:DIR" in str(info.value)


def test_relative_preset_directories_become_absolute(preset, monkeypatch):
    monkeypatch.chdir(preset.parent)
    assert hub.canonical("hub:tiny_resnet") == f"hub:{preset}"
    assert hub.resolve("hub:tiny_resnet") == str(preset)
    assert hub.canonical("hub:resnet_18_imagenet") == "hub:resnet_18_imagenet"


@pytest.mark.slow
def test_preset_trains_end_to_end_and_saves_stock_keras_layers(preset, tmp_path):
    from tltk.engine.run import train
    from tltk.saving import load_keras_file

    config = RunConfig(recipe="test", backbone=f"hub:{preset}",
                       data=DataConfig(dataset="demo", image_size=32, per_class=8),
                       head=HeadConfig(layers=0), batch_size=16, out=str(tmp_path / "run"),
                       stages=[StageConfig("head", epochs=1, unfreeze=0),
                               StageConfig("tune", epochs=1, unfreeze=1, lr=1e-4)])
    result = train(config, say=silent)
    assert result.history["stage"].tolist() == ["head", "tune"]
    model = load_keras_file(result.run_dir / "final.keras")  # safe mode
    inner = [layer for sub in model.layers for layer in getattr(sub, "layers", [sub])]
    # Flattened: no keras_hub class in the saved graph, so it loads without keras-hub.
    assert not any(type(layer).__module__.startswith("keras_hub") for layer in inner)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), result.model.predict(x, verbose=0),
                               atol=1e-5)
