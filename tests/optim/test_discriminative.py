"""Discriminative learning rates: measured update sizes per block equal the multipliers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tltk.config import StageConfig  # noqa: E402
from tltk.errors import TltkError  # noqa: E402
from tltk.optim.discriminative import (  # noqa: E402
    DiscriminativeAdam,
    DiscriminativeSGD,
    lr_multipliers,
    make_optimizer,
)

BLOCKS = ["block3", "block2", "block1"]  # top-down, as backbones list them
DECAY, HEAD = 0.5, 4.0


def tiny_model(seed=0):
    """A small functional 'backbone' (stem + 3 named blocks) inside a classifier."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem_conv")(inputs)
    for block in reversed(BLOCKS):
        x = keras.layers.Conv2D(4, 3, padding="same", name=f"{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{block}_bn")(x)
        x = keras.layers.Activation("tanh", name=f"{block}_act")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    images = keras.Input((8, 8, 3))
    features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(images))
    outputs = keras.layers.Dense(3, activation="softmax", name="head_dense")(features)
    return keras.Model(images, outputs), backbone


def groups_by_name(backbone):
    return {b: [layer for layer in backbone.layers if layer.name.startswith(f"{b}_")]
            for b in BLOCKS}


def expected_factor(path):
    for depth, block in enumerate(BLOCKS):
        if path.startswith(f"{block}_"):
            return DECAY ** depth
    return DECAY ** len(BLOCKS) if path.startswith("stem_") else HEAD


def stage_for(optimizer, **extra):
    return StageConfig("ft", epochs=1, optimizer=optimizer, lr=0.01, unfreeze="all",
                       momentum=0.9 if optimizer == "sgd" else 0.0,
                       block_lr_decay=DECAY, head_lr_mult=HEAD, **extra)


def one_fit_step(optimizer_for):
    """Weights before and after one `model.fit` step, for a model compiled by the caller."""
    model, backbone = tiny_model()
    model.compile(optimizer_for(model, backbone), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 8)
    before = {v.path: v.numpy() for v in model.trainable_variables}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return {v.path: v.numpy() - before[v.path] for v in model.trainable_variables}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_one_fit_step_moves_each_block_by_its_multiplier(name):
    stage = stage_for(name)
    tuned = one_fit_step(lambda m, b: make_optimizer(stage, m, 0.01, groups_by_name(b), b))
    plain = one_fit_step(lambda m, b: make_optimizer(
        StageConfig("ft", epochs=1, optimizer=name, lr=0.01, momentum=stage.momentum), m, 0.01))
    assert len(tuned) == 2 + 4 * len(BLOCKS) + 2
    for path, delta in tuned.items():
        size = np.abs(delta).sum() / np.abs(plain[path]).sum()
        # rel 2e-3: deltas of weights near 1 lose float32 digits in (after - before)
        assert size == pytest.approx(expected_factor(path), rel=2e-3), path


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "adamw"])
def test_updates_scale_over_several_steps_with_momentum_state(name):
    """Apply the same fixed gradients 3 times: every update is the multiplier times plain."""
    stage = stage_for(name)
    deltas = {}
    for kind in ("tuned", "plain"):
        model, backbone = tiny_model()
        groups = groups_by_name(backbone) if kind == "tuned" else None
        chosen = stage if kind == "tuned" else StageConfig(
            "ft", epochs=1, optimizer=name, lr=0.01, momentum=stage.momentum)
        optimizer = make_optimizer(chosen, model, 0.01, groups, backbone)
        variables = model.trainable_variables
        rng = np.random.default_rng(1)
        grads = [rng.normal(size=v.shape).astype("float32") for v in variables]
        before = [v.numpy() for v in variables]
        for _ in range(3):
            optimizer.apply(grads, variables)
        deltas[kind] = {v.path: v.numpy() - b for v, b in zip(variables, before)}
    for path, delta in deltas["tuned"].items():
        np.testing.assert_allclose(delta, expected_factor(path) * deltas["plain"][path],
                                   rtol=2e-4, atol=1e-7, err_msg=path)


def test_scaling_gradients_instead_would_not_scale_adam_updates():
    """Why the optimizer scales rates: Adam normalises a scaled gradient away."""
    deltas = []
    for scale in (1.0, 0.25):
        variable = keras.Variable(np.zeros(4, "float32"))
        optimizer = keras.optimizers.Adam(0.01)
        optimizer.apply([scale * np.array([1.0, -2.0, 3.0, 0.5], "float32")], [variable])
        deltas.append(variable.numpy())
    np.testing.assert_allclose(deltas[1], deltas[0], rtol=1e-4)


def test_multipliers_cover_blocks_stem_and_head():
    model, backbone = tiny_model()
    factors = lr_multipliers(model, groups_by_name(backbone), DECAY, HEAD, backbone)
    assert factors["head_dense/kernel"] == HEAD
    assert factors["block2_bn/gamma"] == DECAY
    assert factors["block1_conv/kernel"] == DECAY ** 2
    assert factors["stem_conv/kernel"] == DECAY ** 3
    assert "block3_conv/kernel" not in factors  # the top block trains at the base rate


def test_plain_stage_gets_a_plain_optimizer_and_bad_settings_are_user_errors():
    model, backbone = tiny_model()
    optimizer = make_optimizer(StageConfig("ft", epochs=1, optimizer="sgd", momentum=0.9),
                               model, 0.1)
    assert type(optimizer) is keras.optimizers.SGD and optimizer.momentum == 0.9
    with pytest.raises(TltkError, match="did you mean 'adam'"):
        make_optimizer(StageConfig("ft", epochs=1, optimizer="adma"), model, 0.1)
    with pytest.raises(TltkError, match="block_lr_decay"):
        make_optimizer(StageConfig("ft", epochs=1, block_lr_decay=1.5), model, 0.1, {})
    with pytest.raises(TltkError, match="head_lr_mult"):
        make_optimizer(StageConfig("ft", epochs=1, head_lr_mult=0.0), model, 0.1, {})
    with pytest.raises(ValueError, match="block groups"):
        make_optimizer(StageConfig("ft", epochs=1, block_lr_decay=0.5), model, 0.1, None)
    head_only = make_optimizer(StageConfig("ft", epochs=1, head_lr_mult=3.0), model, 0.1)
    assert head_only.lr_multipliers["head_dense/kernel"] == 3.0
    # Without blocks or a backbone the whole model counts as head, as when a frozen stage
    # compiles the head alone on cached features.
    assert head_only.lr_multipliers["block1_conv/kernel"] == 3.0


@pytest.mark.slow
def test_saved_model_reloads_its_discriminative_optimizer(tmp_path):
    model, backbone = tiny_model()
    stage = stage_for("adam")
    model.compile(make_optimizer(stage, model, 0.01, groups_by_name(backbone), backbone),
                  loss="sparse_categorical_crossentropy")
    x, y = np.ones((4, 8, 8, 3), "float32"), np.array([0, 1, 2, 0])
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, DiscriminativeAdam)
    assert loaded.optimizer.lr_multipliers == model.optimizer.lr_multipliers
    loaded.fit(x, y, epochs=1, verbose=0)  # builds from the restored state and trains on
    head = [v for v in loaded.trainable_variables if v.path == "head_dense/kernel"][0]
    assert loaded.optimizer.lr_multiplier(head) == HEAD
    assert int(loaded.optimizer.iterations) == 2


def test_sgd_config_round_trip():
    optimizer = DiscriminativeSGD(0.1, momentum=0.9, lr_multipliers={"a/kernel": 0.5})
    again = DiscriminativeSGD.from_config(optimizer.get_config())
    assert again.lr_multipliers == {"a/kernel": 0.5} and again.momentum == 0.9


def test_multipliers_on_a_real_backbone_inside_the_classifier():
    from tltk.config import HeadConfig
    from tltk.models.backbones import block_layers, build_backbone, get_backbone
    from tltk.models.heads import backbone_of, build_classifier

    spec = get_backbone("mobilenetv2")
    model = build_classifier(build_backbone(spec, "none", 32), spec, 5, HeadConfig(layers=1))
    backbone = backbone_of(model)
    stage = stage_for("sgd")
    optimizer = make_optimizer(stage, model, 0.01, block_layers(backbone, spec), backbone)
    factors = optimizer.lr_multipliers
    assert "block_16_project/kernel" not in factors and "Conv_1/kernel" not in factors  # top
    assert factors["block_15_expand/kernel"] == DECAY
    assert factors["expanded_conv_project/kernel"] == DECAY ** 16
    assert factors["Conv1/kernel"] == DECAY ** 17  # the stem, below the lowest block
    assert factors["predictions/kernel"] == HEAD and factors["head_dense1/kernel"] == HEAD
