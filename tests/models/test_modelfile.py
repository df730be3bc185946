"""Model files as backbones: cut, inferred blocks, preprocessing, the kept top, errors."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import SHARED
from tltk.cli import main
from tltk.config import BackboneOptions, DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.errors import TltkError
from tltk.log import silent
from tltk.models import modelfile
from tltk.models.backbones import (
    block_layers,
    build_backbone,
    get_backbone,
    set_trainable,
)

LITE0 = SHARED / "weights" / "efficientnet_lite0_imagenet.keras"


def tiny_classifier(rescale: bool = True, classes: int = 10, name: str = "tinyclf"):
    """Rescaling -> two named conv blocks -> pooling -> a softmax top, any input size."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")(inputs) if rescale \
        else inputs
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                            name="block1_conv")(x)
    x = keras.layers.BatchNormalization(name="block1_bn")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                            name="block2_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def save(model, path):
    model.save(path)
    return str(path)


@pytest.mark.parametrize("app", [
    "VGG16", "MobileNetV2", "EfficientNetB0", "ResNet50",
    pytest.param("InceptionV3", marks=pytest.mark.slow),
    pytest.param("DenseNet201", marks=pytest.mark.slow)])
def test_blocks_inferred_from_keras_applications_names_match_the_registry(app):
    spec = get_backbone(app.lower())
    base = getattr(keras.applications, app)(weights=None, include_top=False,
                                            input_shape=(spec.min_size, spec.min_size, 3))
    layout = modelfile.infer_blocks(base)
    assert layout["blocks"] == spec.blocks
    inferred = dataclasses.replace(spec, **layout)
    # The same layers per block as the hand-declared spec.
    assert {b: [x.name for x in ls] for b, ls in block_layers(base, inferred).items()} == \
        {b: [x.name for x in ls] for b, ls in block_layers(base, spec).items()}


def test_resolution_stages_when_layer_names_carry_no_blocks():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="a")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="b")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c")(x)
    layout = modelfile.infer_blocks(keras.Model(inputs, x))
    assert layout["blocks"] == ("stage2", "stage1")
    assert layout["block_ends"] == {"stage1": "b", "stage2": "c"}


def test_model_file_spec_cut_blocks_top_and_preprocessing(tmp_path):
    path = save(tiny_classifier(), tmp_path / "clf.keras")
    spec = get_backbone(path)
    assert (spec.name, spec.cut, spec.preprocess, spec.top_classes) == \
        ("clf", "block2_conv", "none", 10)
    assert spec.blocks == ("block2", "block1") and spec.default_size == 224
    base = build_backbone(spec, "imagenet", 32)
    assert base.input_shape == (None, 32, 32, 3) and base.output_shape == (None, 8, 8, 16)
    assert spec.params == base.count_params()
    assert [layer.name for layer in base.layers][1] == "rescaling"
    original = keras.saving.load_model(path)
    for layer in ("block1_conv", "block2_conv"):  # the file's weights, not random ones
        np.testing.assert_array_equal(base.get_layer(layer).get_weights()[0],
                                      original.get_layer(layer).get_weights()[0])
    random = build_backbone(spec, "none", 32)
    assert not np.array_equal(random.get_layer("block2_conv").get_weights()[0],
                              original.get_layer("block2_conv").get_weights()[0])
    assert set_trainable(base, spec, 1) == ["block2"]
    assert spec.top_builder((32, 32, 3)).output_shape == (None, 10)


def test_cut_blocks_and_preprocess_options(tmp_path):
    path = save(tiny_classifier(rescale=False), tmp_path / "raw.h5")
    with pytest.raises(TltkError, match="pass --preprocess caffe|torch|tf|none"):
        get_backbone(path)
    spec = get_backbone(path, BackboneOptions(cut="block1_bn", preprocess="tf"))
    # One named block below the cut is too few to trust: resolution stages instead.
    assert (spec.cut, spec.preprocess, spec.blocks) == ("block1_bn", "tf", ("stage1",))
    chosen = get_backbone(path, BackboneOptions(blocks=["block1", "block2"], preprocess="tf"))
    assert chosen.blocks == ("block2", "block1")  # ordered top-down whatever the order given
    with pytest.raises(TltkError) as unknown:
        get_backbone(path, BackboneOptions(cut="block3_conv", preprocess="tf"))
    assert "--cut" in str(unknown.value) and "did you mean 'block2_conv'" in str(unknown.value)
    with pytest.raises(TltkError, match="not a 4-D feature map"):
        get_backbone(path, BackboneOptions(cut="predictions", preprocess="tf"))
    with pytest.raises(TltkError, match="--blocks: 'stem' names no layer"):
        get_backbone(path, BackboneOptions(blocks=["stem"], preprocess="tf"))
    with pytest.raises(TltkError, match="--cut/--blocks: only for a model-file"):
        get_backbone("vgg16", BackboneOptions(cut="block5_pool"))


def test_files_that_are_not_usable_models_fail_in_one_line(tmp_path):
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    inputs = keras.Input((8,))
    mlp = save(keras.Model(inputs, keras.layers.Dense(3, name="out")(inputs)),
               tmp_path / "mlp.keras")
    weights_only = tmp_path / "w.weights.h5"
    tiny_classifier().save_weights(weights_only)
    cases = {str(junk): "is not a Keras model file", mlp: "has no 4-D feature map",
             str(weights_only): "is not a Keras model file",
             str(tmp_path / "missing.keras"): "file not found"}
    for path, message in cases.items():
        with pytest.raises(TltkError) as info:
            get_backbone(path)
        assert message in str(info.value) and "\n" not in str(info.value), path


def test_file_backbone_refuses_a_weights_file(tmp_path):
    spec = get_backbone(save(tiny_classifier(), tmp_path / "clf.keras"))
    with pytest.raises(TltkError, match="carries its own weights"):
        build_backbone(spec, str(tmp_path / "other.weights.h5"), 32)


def test_backbone_options_round_trip_through_yaml_and_set():
    config = RunConfig(backbone="x.keras").override({"backbone_options.cut": "top_conv"})
    again = RunConfig.from_yaml(config.to_yaml())
    assert again.backbone_options == BackboneOptions(cut="top_conv")


@pytest.mark.slow
def test_model_file_trains_end_to_end_and_the_run_model_reloads(tmp_path):
    from tltk.engine.run import train
    from tltk.evaluation.export import export_model, load_exported
    from tltk.evaluation.predict import load_run_model, predict_files

    path = save(tiny_classifier(), tmp_path / "clf.keras")
    config = RunConfig(recipe="test", backbone=path,
                       data=DataConfig(dataset="demo", image_size=32, per_class=10),
                       head=HeadConfig(layers=0), batch_size=16, out=str(tmp_path / "run"),
                       stages=[StageConfig("head", epochs=1, unfreeze=0),
                               StageConfig("tune", epochs=1, unfreeze=1, lr=1e-4)])
    result = train(config, say=silent)
    assert RunConfig.load(result.run_dir / "config.yaml").backbone == path
    image = tmp_path / "photo.png"
    keras.utils.save_img(image, np.full((40, 30, 3), 128, np.uint8))
    (prediction,) = predict_files(result.run_dir, [image], top=2)
    assert len(prediction["predictions"]) == 2
    exported = export_model(result.run_dir, "keras", tmp_path / "out.keras")
    batch = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(load_exported(exported, "keras")(batch),
                               load_run_model(result.run_dir).predict_on_batch(batch), atol=1e-6)


def test_backbones_command_prints_what_was_inferred(tmp_path):
    path = save(tiny_classifier(), tmp_path / "clf.keras")
    result = CliRunner().invoke(main, ["backbones", path])
    assert result.exit_code == 0, result.output
    for text in ("2 blocks: block2, block1", "output of layer 'block2_conv'", "preprocess   none",
                 "10-class classifier kept", "input size   224 px default"):
        assert text in result.output, text
    listing = CliRunner().invoke(main, ["backbones"])
    assert "VGG16 (Simonyan & Zisserman 2014)" in listing.output
    assert "14,714,688" in listing.output


@pytest.mark.realdata
@pytest.mark.slow
def test_shared_lite0_file_reads_as_an_efficientnet_with_its_imagenet_top():
    if not LITE0.is_file():
        pytest.skip(f"real asset not found: {LITE0}")
    spec = get_backbone(str(LITE0))
    assert spec.blocks == get_backbone("efficientnetb0").blocks  # same block names, B0's
    assert (spec.cut, spec.preprocess, spec.top_classes) == ("top_activation", "none", 1000)
    assert spec.params == 3_413_024  # 4,694,024 minus the 1280 x 1000 + 1000 classifier
    base = build_backbone(spec, "imagenet", 64)
    assert base.output_shape == (None, 2, 2, 1280)
