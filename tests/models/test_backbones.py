"""Backbone registry: builds, named blocks, unfreezing and frozen BatchNorm."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tltk.config import HeadConfig
from tltk.errors import TltkError
from tltk.models.backbones import (
    BACKBONES,
    block_layers,
    build_backbone,
    get_backbone,
    resolve_unfreeze,
    set_trainable,
)
from tltk.models.heads import backbone_of, build_classifier


def _bn_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_and_declares_real_blocks(name):
    spec = get_backbone(name)
    base = build_backbone(spec, "none", spec.min_size)
    groups = block_layers(base, spec)
    assert list(groups) == list(spec.blocks)
    assert all(groups[b] for b in spec.blocks), "every declared block owns layers"
    owned = [layer.name for layers in groups.values() for layer in layers]
    assert len(owned) == len(set(owned)), "blocks do not overlap"
    # The top block holds the model's output layer.
    assert groups[spec.blocks[0]][-1] is base.layers[-1]
    # `tltk backbones` prints the declared parameter count: it must be the built one's.
    assert base.count_params() == spec.params


@pytest.mark.parametrize("name", ["vgg19", "resnet50", "inceptionv3", "mobilenetv2"])
def test_unfreezing_top_block_makes_exactly_its_layers_trainable(name):
    spec = get_backbone(name)
    base = build_backbone(spec, "none", spec.min_size)
    chosen = set_trainable(base, spec, unfreeze=1)
    assert chosen == [spec.blocks[0]]
    top = set(block_layers(base, spec)[spec.blocks[0]])
    for layer in base.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable == (layer in top and not is_bn), layer.name
    assert all(not layer.trainable for layer in _bn_layers(base))


def test_unfreeze_all_keeps_batchnorm_frozen():
    spec = get_backbone("mobilenetv2")
    base = build_backbone(spec, "none", 32)
    set_trainable(base, spec, "all")
    assert all(layer.trainable for layer in base.layers if layer not in _bn_layers(base))
    assert _bn_layers(base) and not any(layer.trainable for layer in _bn_layers(base))


@pytest.mark.slow
def test_batchnorm_statistics_do_not_move_while_fine_tuning():
    spec = get_backbone("mobilenetv2")
    model = build_classifier(build_backbone(spec, "none", 32), spec, 3, HeadConfig())
    base = backbone_of(model)
    set_trainable(base, spec, unfreeze=2)
    bn = base.get_layer("block_16_project_BN")
    conv = base.get_layer("block_16_project")
    frozen_conv = base.get_layer("block_1_project")
    before = [keras.ops.convert_to_numpy(w).copy() for w in
              (bn.moving_mean, bn.moving_variance, conv.kernel, frozen_conv.kernel)]
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    model(x, training=True)
    after = [keras.ops.convert_to_numpy(w) for w in
             (bn.moving_mean, bn.moving_variance, conv.kernel, frozen_conv.kernel)]
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert not np.array_equal(before[2], after[2]), "the unfrozen block learns"
    np.testing.assert_array_equal(before[3], after[3])


def test_unfreeze_forms():
    spec = get_backbone("vgg19")
    assert resolve_unfreeze(spec, 0) == []
    assert resolve_unfreeze(spec, 2) == ["block5", "block4"]
    assert resolve_unfreeze(spec, "block4,block5") == ["block4", "block5"]
    assert resolve_unfreeze(spec, "all") == "all"
    with pytest.raises(TltkError, match="did you mean 'block5'"):
        resolve_unfreeze(spec, ["blok5"])
    with pytest.raises(TltkError, match="outside 0..5"):
        resolve_unfreeze(spec, 9)


def test_unknown_backbone_suggests_a_close_name():
    with pytest.raises(TltkError, match="did you mean 'vgg19'"):
        get_backbone("vgg91")


def test_image_size_below_minimum_is_a_clear_error():
    with pytest.raises(TltkError, match="--image-size: 64 is below inceptionv3's minimum of 75"):
        build_backbone(get_backbone("inceptionv3"), "none", 64)


def test_missing_and_mismatched_weights_files(tmp_path):
    spec = get_backbone("mobilenetv2")
    with pytest.raises(TltkError, match="--weights: file not found"):
        build_backbone(spec, str(tmp_path / "nope.h5"), 32)
    other = build_backbone(get_backbone("vgg16"), "none", 32)
    path = tmp_path / "vgg16.weights.h5"
    other.save_weights(path)
    with pytest.raises(TltkError, match="does not fit backbone mobilenetv2"):
        build_backbone(spec, str(path), 32)


def test_imagenet_weights_offline_fail_in_one_line():
    with pytest.raises(TltkError) as info:
        build_backbone(get_backbone("vgg16"), "imagenet", 32)
    message = str(info.value)
    assert "\n" not in message and "--weights PATH" in message
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message


@pytest.mark.slow
def test_efficientnet_local_weights_build_the_network_imagenet_builds(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    spec = get_backbone("efficientnetb0")
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    build_backbone(spec, "none", 32).save_weights(path)
    # Keras's own weights="imagenet" code path, with the download served from `path`.
    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: str(path))
    reference = spec.builder((32, 32, 3), "imagenet")
    local = build_backbone(spec, str(path), 32)

    def stack(model):  # layer classes and configs; auto-generated names differ
        return [(type(layer).__name__, {k: v for k, v in layer.get_config().items()
                                        if k != "name"}) for layer in model.layers]

    assert stack(local) == stack(reference)
    assert sum(isinstance(layer, keras.layers.Rescaling) for layer in local.layers) == 2
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(local.predict(x, verbose=0), reference.predict(x, verbose=0),
                               atol=1e-5)
