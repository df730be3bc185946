"""Stage training options: label smoothing, BatchNorm mode, weight EMA, RandAugment."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.data.core import make_pipeline
from tltk.engine.run import end_run, finish, prepare, train
from tltk.engine.stage import run_stage, stage_loss
from tltk.errors import TltkError
from tltk.log import silent
from tltk.models.backbones import get_backbone
from tltk.models.heads import backbone_of
from tltk.saving import load_keras_file


def tiny(tmp_path, stages, backbone="tiny", **kw) -> RunConfig:
    """Demo shapes at 32 px, 15 training images per class (90 images: 3 batches of 32)."""
    return RunConfig(recipe="test", backbone=backbone, weights="none",
                     data=DataConfig(dataset="demo", image_size=32, per_class=15),
                     head=HeadConfig(layers=1, units=8), stages=stages, batch_size=32,
                     out=str(tmp_path / "run"), **kw)


def smoothed_ce(probs, labels, eps):
    """Keras's categorical cross-entropy on (1 - eps) * one-hot + eps / K targets."""
    classes = probs.shape[1]
    targets = (1 - eps) * np.eye(classes)[labels] + eps / classes
    probs = np.clip(probs / probs.sum(1, keepdims=True), 1e-7, 1 - 1e-7)
    return float(np.mean(-np.sum(targets * np.log(probs), axis=1)))


def test_label_smoothing_loss_is_keras_definition_on_a_tiny_batch():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=5).astype("float32")
    labels = np.array([0, 3, 1, 1, 2])
    loss = stage_loss(StageConfig("ft", epochs=1, label_smoothing=0.2))
    got = float(loss(np.eye(4, dtype="float32")[labels], probs))
    assert got == pytest.approx(smoothed_ce(probs, labels, 0.2), rel=1e-5)
    assert got != pytest.approx(smoothed_ce(probs, labels, 0.0), rel=1e-3)
    plain = stage_loss(StageConfig("ft", epochs=1))
    assert float(plain(labels, probs)) == pytest.approx(smoothed_ce(probs, labels, 0.0), rel=1e-5)


@pytest.mark.slow
def test_a_label_smoothing_stage_trains_and_validates_on_the_smoothed_loss(tmp_path,
                                                                          tiny_backbone):
    stage = StageConfig("ft", epochs=1, unfreeze="all", augment=False, label_smoothing=0.3)
    result = train(tiny(tmp_path, [stage]), say=silent)
    val = make_pipeline(_dataset(result).splits["val"], 32, 32, training=False, seed=0)
    images = np.concatenate([x for x, _ in val.as_numpy_iterator()])
    labels = np.concatenate([y for _, y in val.as_numpy_iterator()])
    probs = result.model.predict(images, verbose=0)
    # The last val_loss of history.csv is the compiled (smoothed) loss on the val split.
    val_loss = result.history["val_loss"].iloc[-1]
    assert val_loss == pytest.approx(smoothed_ce(probs, labels, 0.3), rel=1e-4)
    entry = json.loads((result.run_dir / "run.json").read_text())["stages"][0]
    assert entry["label_smoothing"] == 0.3


def _dataset(result):
    from tltk import data as tltk_data

    return tltk_data.load(result.config.data, seed=result.config.seed)


@pytest.mark.slow
@pytest.mark.parametrize("mode,cache", [("frozen", False), ("train", False), ("train", True)],
                         ids=["frozen", "train-images", "train-cached-activations"])
def test_batchnorm_mode_moves_or_keeps_the_moving_statistics(tmp_path, tiny_bn_backbone,
                                                             mode, cache):
    stage = StageConfig("ft", epochs=1, unfreeze=1, augment=False, batchnorm=mode,
                        cache_features=cache)
    result = train(tiny(tmp_path, [stage], backbone="tiny_bn"), say=silent)
    block_bn = backbone_of(result.model).get_layer("block2_bn")
    head_bn = result.model.get_layer("head").get_layer("head_bn")
    for bn in (block_bn, head_bn):
        moved = not (np.allclose(bn.moving_mean.numpy(), 0.0)
                     and np.allclose(bn.moving_variance.numpy(), 1.0))
        assert moved == (mode == "train"), bn.name
    # Frozen BatchNorm keeps its scale too; trained, the optimizer moves it.
    assert np.allclose(block_bn.gamma.numpy(), 1.0) == (mode == "frozen")
    entry = json.loads((result.run_dir / "run.json").read_text())["stages"][0]
    assert entry["batchnorm"] == mode
    assert entry["cached_features"] == ("activations" if cache else None)


def test_bad_stage_option_values_are_one_line_errors():
    with pytest.raises(TltkError, match="batchnorm must be frozen or train"):
        StageConfig("ft", epochs=1, unfreeze=1, batchnorm="on").validate()
    with pytest.raises(TltkError, match="label_smoothing must lie in"):
        StageConfig("ft", epochs=1, label_smoothing=1.0).validate()
    with pytest.raises(TltkError, match="ema is a decay in"):
        StageConfig("ft", epochs=1, ema=1.0).validate()


class KernelRecorder(keras.callbacks.Callback):
    """The predictions layer's kernel after every optimizer step."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.kernels = layer, []

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(self.layer.kernel.numpy().copy())


@pytest.mark.slow
def test_ema_weights_equal_a_numpy_reference_and_get_their_own_rows(tmp_path, tiny_backbone):
    decay = 0.6
    stage = StageConfig("head", epochs=1, optimizer="sgd", lr=0.5, augment=False, ema=decay)
    config = tiny(tmp_path, [stage])
    config.validate()
    keras.utils.set_random_seed(config.seed)
    ctx = prepare(config, get_backbone("tiny"), lambda _: None)
    predictions = ctx.model.get_layer("head").get_layer("predictions")
    recorder = KernelRecorder(predictions)
    ctx.callbacks.append(recorder)
    run_stage(ctx, ctx.config.stages[0])
    result = finish(ctx)
    end_run(ctx)
    raw = recorder.kernels
    assert len(raw) == 3  # 90 images in batches of 32
    # Keras: the first step copies the weights (momentum 0), then m * ema + (1 - m) * w.
    ema = raw[0]
    for kernel in raw[1:]:
        ema = decay * ema + (1 - decay) * kernel
    saved = load_keras_file(result.run_dir / "ema.keras")
    np.testing.assert_allclose(saved.get_layer("head").get_layer("predictions").kernel.numpy(),
                               ema, rtol=1e-5, atol=1e-7)
    # Training (and `final`) keep the trained weights, not the average.
    np.testing.assert_array_equal(predictions.kernel.numpy(), raw[-1])
    assert not np.allclose(ema, raw[-1])
    metrics = pd.read_csv(result.run_dir / "metrics.csv")
    assert list(dict.fromkeys(metrics["weights"])) == ["best", "final", "ema"]
    assert (result.run_dir / "predictions" / "ema-test.npz").is_file()
    entry = json.loads((result.run_dir / "run.json").read_text())["stages"][0]
    assert entry["ema"] == decay


@pytest.mark.slow
def test_randaugment_policy_trains_and_is_recorded(tmp_path, tiny_backbone):
    stage = StageConfig("ft", epochs=1, unfreeze="all")
    result = train(tiny(tmp_path, [stage], augment_policy="randaugment",
                        randaugment_factor=0.3), say=silent)
    entry = json.loads((result.run_dir / "run.json").read_text())["stages"][0]
    assert entry["augment"] == "randaugment"
    assert np.isfinite(result.history["loss"]).all()
    with pytest.raises(TltkError, match="augment_policy must be affine or randaugment"):
        RunConfig(stages=[stage], augment_policy="autoaugment").validate()


def test_new_fields_flow_through_yaml_set_the_tuner_and_the_sweep(tmp_path):
    import keras_tuner

    from tltk.config import parse_set_pairs
    from tltk.methods.sweep import Condition, condition_config
    from tltk.methods.tuning import SearchSpace, trial_config
    from tltk.recipes import folder

    pairs = ["stages.finetune.label_smoothing=0.1", "stages.finetune.batchnorm=train",
             "stages.finetune.ema=0.999", "stages.finetune.schedule=onecycle",
             "stages.finetune.schedule_args={pct_start: 0.3}", "tta=flip+affine",
             "augment_policy=randaugment", "randaugment_factor=0.3"]
    config = folder.config().override(parse_set_pairs(pairs))
    config.validate()
    assert RunConfig.from_yaml(config.to_yaml()) == config
    stage = config.stage("finetune")
    assert (stage.label_smoothing, stage.batchnorm, stage.ema, stage.schedule) == \
        (0.1, "train", 0.999, "onecycle")
    spec = get_backbone(config.backbone)
    trial = trial_config(config, spec, SearchSpace(), keras_tuner.HyperParameters())
    swept = condition_config(config, spec, Condition(10, "all", 0), tmp_path, 3)  # all frozen
    swept.validate()  # batchnorm: train on a frozen backbone changes nothing, and is allowed
    for derived in (trial, swept):
        tuned = derived.stage("finetune")
        assert (tuned.label_smoothing, tuned.batchnorm, tuned.ema, tuned.schedule_args) == \
            (0.1, "train", 0.999, {"pct_start": 0.3})
        assert (derived.tta, derived.augment_policy, derived.randaugment_factor) == \
            ("flip+affine", "randaugment", 0.3)
    assert swept.stage("finetune").unfreeze == 0
