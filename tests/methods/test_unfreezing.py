"""Gradual unfreezing and chain-thaw: generated stages and the trainable sets they give."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

from tltk.config import RunConfig  # noqa: E402
from tltk.errors import TltkError  # noqa: E402
from tltk.methods.unfreezing import chain_thaw, gradual_unfreezing  # noqa: E402
from tltk.models.backbones import block_layers, build_backbone, get_backbone, set_trainable  # noqa: E402


def test_gradual_unfreezing_adds_one_block_per_stage():
    stages = gradual_unfreezing(3, epochs_per_stage=2, optimizer="sgd", lr=1e-3,
                                head_lr=1e-2, momentum=0.9, schedule="cosine")
    assert [(s.name, s.unfreeze, s.epochs, s.lr) for s in stages] == [
        ("head", 0, 2, 1e-2), ("unfreeze-1", 1, 2, 1e-3), ("unfreeze-2", 2, 2, 1e-3),
        ("unfreeze-3", 3, 2, 1e-3)]
    assert {(s.optimizer, s.momentum, s.schedule) for s in stages} == {("sgd", 0.9, "cosine")}
    assert [s.unfreeze for s in gradual_unfreezing(2, 1, head_epochs=0)] == [1, 2]


def test_chain_thaw_goes_head_then_each_block_bottom_up_then_all():
    stages = chain_thaw(["block5", "block4", "block3"], epochs_per_stage=1, lr=1e-4,
                        head_epochs=3, final_epochs=2, block_lr_decay=0.5)
    assert [(s.name, s.unfreeze, s.epochs) for s in stages] == [
        ("head", 0, 3), ("thaw-block3", ["block3"], 1), ("thaw-block4", ["block4"], 1),
        ("thaw-block5", ["block5"], 1), ("thaw-all", "all", 2)]
    assert all(s.block_lr_decay == 0.5 for s in stages)
    top_down = chain_thaw(["b2", "b1"], 1, bottom_up=False, final_epochs=0, head_epochs=0)
    assert [s.unfreeze for s in top_down] == [["b2"], ["b1"]]


def test_generated_stages_round_trip_through_a_run_config():
    config = RunConfig(stages=chain_thaw(["block_16", "block_15"], 1))
    assert RunConfig.from_yaml(config.to_yaml()) == config


@pytest.mark.parametrize("call,message", [
    (lambda: gradual_unfreezing(0, 1), "at least one block"),
    (lambda: gradual_unfreezing(2, 0), "epochs_per_stage"),
    (lambda: chain_thaw("block5", 1), "list of block names"),
    (lambda: chain_thaw(["a", "a"], 1), "repeat"),
    (lambda: chain_thaw(["a"], 1, momentm=0.9), "momentm"),
])
def test_bad_arguments_are_user_errors(call, message):
    with pytest.raises(TltkError, match=message):
        call()


@pytest.fixture(scope="module")
def mobilenet():
    spec = get_backbone("mobilenetv2")
    keras.utils.set_random_seed(0)
    backbone = build_backbone(spec, "none", spec.min_size)
    return spec, backbone, block_layers(backbone, spec)


def trainable_names(backbone):
    return {layer.name for layer in backbone.layers if layer.trainable_weights}


def weighted_non_bn(layers):
    return {layer.name for layer in layers
            if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)}


def test_gradual_stages_unfreeze_the_top_blocks_of_a_real_backbone(mobilenet):
    spec, backbone, groups = mobilenet
    for n, stage in enumerate(gradual_unfreezing(3, 1)):
        set_trainable(backbone, spec, stage.unfreeze)
        expected = set().union(*(weighted_non_bn(groups[b]) for b in spec.blocks[:n]))
        assert trainable_names(backbone) == expected, stage.name
    assert "block_16_project" in expected and "block_14_expand" in expected
    assert "block_13_expand" not in expected


def test_chain_thaw_stages_train_one_block_at_a_time_on_a_real_backbone(mobilenet):
    spec, backbone, groups = mobilenet
    stages = chain_thaw(list(spec.blocks[:2]), 1)
    seen = []
    for stage in stages:
        set_trainable(backbone, spec, stage.unfreeze)
        seen.append(trainable_names(backbone))
    assert seen[0] == set()
    assert seen[1] == weighted_non_bn(groups["block_15"])
    assert seen[2] == weighted_non_bn(groups["block_16"])
    assert seen[3] == weighted_non_bn(backbone.layers)  # all but BatchNorm
    assert "Conv1" in seen[3] and "Conv1" not in seen[1] | seen[2]
