"""The staged engine: optimizer switch, history across stages, best vs final,
cached-feature stages, and the run directory."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tltk.config import HeadConfig, RunConfig, StageConfig
from tltk.engine.run import train
from tltk.errors import TltkError
from tltk.evaluation.metrics import topk_accuracy
from tltk.log import silent
from tltk.saving import load_keras_file


def tiny(tmp_path, stages, backbone="scratch", **kw) -> RunConfig:
    """Demo shapes at 32 px, 15 training images per class."""
    return tiny_config(tmp_path / "run", stages, backbone=backbone, data={"per_class": 15},
                       head=kw.pop("head", HeadConfig(layers=1, units=16)), **kw)


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    """One finished scratch run of two stages (Adam, then SGD), shared by the tests that
    only read a finished run."""
    return train(tiny(tmp_path_factory.mktemp("two-stage"), [
        StageConfig("first", epochs=2, optimizer="adam", lr=1e-3, unfreeze="all"),
        StageConfig("second", epochs=1, optimizer="sgd", lr=1e-3, momentum=0.9,
                    unfreeze="all")]), say=silent)


@pytest.mark.slow
def test_stages_switch_optimizer_and_history_spans_them(two_stage_run):
    result = two_stage_run
    run = json.loads((result.run_dir / "run.json").read_text())
    assert [(s["name"], s["optimizer"]) for s in run["stages"]] == \
        [("first", "Adam"), ("second", "SGD")]
    assert run["stages"][1]["momentum"] == pytest.approx(0.9)
    assert run["status"] == "complete"
    history = result.history
    assert history["stage"].tolist() == ["first", "first", "second"]
    assert history["epoch"].tolist() == [1, 2, 3]
    for name in ("config.yaml", "classes.json", "best.keras", "final.keras", "metrics.csv"):
        assert (result.run_dir / name).is_file(), name
    assert RunConfig.load(result.run_dir / "config.yaml").data.image_size == 32
    assert run["splits"] == {"train": 90, "val": 180, "test": 180}
    # TensorBoard: per-epoch loss, accuracy and learning rate for `tensorboard --logdir`.
    events = list((result.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert {e.parent.name for e in events} == {"train", "validation"}
    tags = set()
    for event in events:
        for record in tf.compat.v1.train.summary_iterator(str(event)):
            tags |= {value.tag for value in record.summary.value}
    assert {"epoch_loss", "epoch_learning_rate"} <= tags


@pytest.mark.slow
def test_best_and_final_weights_are_tracked_separately(tmp_path):
    # A wildly high learning rate in the second stage wrecks the model, so the best
    # validation epoch is in the first stage and best != final.
    # Random VGG16 features (no BatchNorm) are informative enough to learn from fast.
    result = train(tiny(tmp_path, [
        StageConfig("learn", epochs=6, optimizer="adam", lr=3e-3, unfreeze=0, augment=False),
        StageConfig("wreck", epochs=1, optimizer="sgd", lr=50.0, unfreeze=0, augment=False)],
        backbone="vgg16"), say=silent)
    history, metrics = result.history, result.metrics.set_index(["weights", "split"])
    best_epoch = int(history["val_top1"].idxmax())
    assert history.loc[best_epoch, "stage"] == "learn"
    assert metrics.loc[("best", "val"), "top1"] == pytest.approx(
        100 * history["val_top1"].max(), abs=0.01)
    assert metrics.loc[("final", "val"), "top1"] == pytest.approx(
        100 * history["val_top1"].iloc[-1], abs=0.01)
    assert metrics.loc[("best", "val"), "top1"] > metrics.loc[("final", "val"), "top1"]


@pytest.mark.slow
def test_saved_best_model_reloads_and_reproduces_its_metrics(two_stage_run):
    result = two_stage_run
    model = load_keras_file(result.run_dir / "best.keras")
    saved = np.load(result.run_dir / "predictions" / "best-test.npz")
    from tltk import data as tltk_data
    from tltk.evaluation.metrics import predict_split

    ds = tltk_data.load(result.config.data, seed=result.config.seed)
    probs = predict_split(model, ds, "test", 32, 16)
    np.testing.assert_allclose(probs, saved["probs"], atol=1e-5)
    metrics = pd.read_csv(result.run_dir / "metrics.csv").set_index(["weights", "split"])
    assert metrics.loc[("best", "test"), "top1"] == pytest.approx(
        100 * topk_accuracy(probs, saved["labels"], 1), abs=0.01)


@pytest.mark.slow
def test_cached_feature_stage_metrics_equal_the_whole_models(tmp_path, tiny_backbone):
    # The two-block "tiny" backbone (no BatchNorm) stands in for a pretrained one.
    config = tiny(tmp_path, [StageConfig("bottleneck", epochs=3, unfreeze=0,
                                         feature_views=2)], backbone="tiny").override(
        {"cache_dir": str(tmp_path / "cache")})  # its own, to count what it cached
    result = train(config, say=silent)
    history = result.history
    metrics = result.metrics.set_index(["weights", "split"])
    # The last epoch's val accuracy was computed by the head on cached features, and so
    # was metrics.csv (the backbone never trained); both match the whole saved models
    # on images.
    assert metrics.loc[("final", "val"), "top1"] == pytest.approx(
        100 * history["val_top1"].iloc[-1], abs=0.01)
    from tltk import data as tltk_data
    from tltk.evaluation.metrics import predict_split

    ds = tltk_data.load(result.config.data, seed=result.config.seed)
    for weights in ("best", "final"):
        model = load_keras_file(result.run_dir / f"{weights}.keras")
        for split in ("val", "test"):
            saved = np.load(result.run_dir / "predictions" / f"{weights}-{split}.npz")
            np.testing.assert_allclose(predict_split(model, ds, split, 32, 16),
                                       saved["probs"], atol=1e-5)
    cached = list((tmp_path / "cache").glob("*.json"))
    splits = sorted({json.loads(p.read_text())["key"]["views"] for p in cached})
    assert len(cached) == 3 and splits == [1, 2], "train (2 views), val and test, on disk"


@pytest.mark.slow
def test_a_run_that_tuned_the_backbone_is_evaluated_on_images(tmp_path, tiny_backbone):
    from tltk.engine.run import prepare, shared_features

    config = tiny(tmp_path, [StageConfig("bottleneck", epochs=1, unfreeze=0, augment=False),
                             StageConfig("tune", epochs=1, unfreeze="all", augment=False)],
                  backbone="tiny")
    result = train(config, say=silent)
    ctx = prepare(result.config, tiny_backbone, say=silent, dry_run=True)  # untrained
    assert shared_features(ctx, {"before": ctx.model, "final": result.model}) is None
    assert shared_features(ctx, {"final": result.model}) is not None
    flip = dataclasses.replace(ctx, config=result.config.override({"tta": "flip"}))
    assert shared_features(flip, {"final": result.model}) is None, "TTA sees images"


@pytest.mark.slow
def test_feature_cache_is_reused_and_keyed(tmp_path, tiny_backbone):
    cache_dir = Path(os.environ["TLTK_CACHE"]) / "features"
    stages = [StageConfig("bottleneck", epochs=1, unfreeze=0, augment=False)]
    train(tiny(tmp_path / "a", stages, backbone="tiny"), say=silent)
    first = set(cache_dir.glob("*.npy"))
    train(tiny(tmp_path / "b", stages, backbone="tiny"), say=silent)
    assert set(cache_dir.glob("*.npy")) == first, "a second identical run reuses the cache"
    other = tiny(tmp_path / "c", stages, backbone="tiny").override({"data.image_size": 40})
    train(other, say=silent)
    assert len(set(cache_dir.glob("*.npy")) - first) == 3, "a new size rebuilds train, val, test"


def test_bad_settings_are_one_line_errors(tmp_path):
    good = StageConfig("s", epochs=1, unfreeze="all")
    with pytest.raises(TltkError, match=r"epochs must be 0 \(skip the stage\) or a positive"):
        train(tiny(tmp_path, [StageConfig("s", epochs=-1)]), say=silent)
    with pytest.raises(TltkError, match="every stage has 0 epochs"):  # 0 alone skips all
        train(tiny(tmp_path, [StageConfig("s", epochs=0)]), say=silent)
    with pytest.raises(TltkError, match="--batch-size"):
        train(tiny(tmp_path, [good]).override({"batch_size": -1}), say=silent)
    with pytest.raises(TltkError, match="did you mean 'sgd'"):
        train(tiny(tmp_path, [StageConfig("s", epochs=1, optimizer="sgdd")]), say=silent)


@pytest.mark.slow
def test_out_dir_holding_a_finished_run_is_refused(two_stage_run):
    config, run = two_stage_run.config, two_stage_run.run_dir
    before = (run / "metrics.csv").read_text()
    with pytest.raises(TltkError, match="already holds a finished run"):
        train(config, say=silent)
    assert (run / "metrics.csv").read_text() == before
    keras.backend.clear_session()


@pytest.mark.slow
def test_fine_tuning_top_block_on_cached_activations_is_exact(tmp_path):
    # Everything below block5 is frozen, so its output can be cached per view; the
    # stage then trains block5 + head on those activations and the whole model agrees.
    config = tiny(tmp_path, [
        StageConfig("bottleneck", epochs=1, unfreeze=0, augment=False),
        StageConfig("finetune", epochs=2, optimizer="sgd", lr=1e-3, momentum=0.9,
                    unfreeze=1, cache_features=True, feature_views=2)], backbone="vgg16")
    from tltk.models.backbones import build_backbone, get_backbone
    from tltk.models.heads import backbone_of

    keras.utils.set_random_seed(config.seed)
    initial = build_backbone(get_backbone("vgg16"), "none", 32)
    result = train(config, say=silent)
    base = backbone_of(result.model)
    assert not np.allclose(base.get_layer("block5_conv3").kernel.numpy(),
                           initial.get_layer("block5_conv3").kernel.numpy())
    np.testing.assert_array_equal(base.get_layer("block4_conv3").kernel.numpy(),
                                  initial.get_layer("block4_conv3").kernel.numpy())
    metrics = result.metrics.set_index(["weights", "split"])
    assert metrics.loc[("final", "val"), "top1"] == pytest.approx(
        100 * result.history["val_top1"].iloc[-1], abs=0.01)
    stages = json.loads((result.run_dir / "run.json").read_text())["stages"]
    assert [s["cached_features"] for s in stages] == ["pooled", "activations"]


@pytest.mark.slow
@pytest.mark.parametrize("precision,jit", [("mixed_bfloat16", False), ("float32", True)])
def test_mixed_precision_and_xla_runs_train_and_keep_float32_outputs(tmp_path, precision, jit):
    config = tiny(tmp_path, [StageConfig("s", epochs=1, unfreeze="all")],
                  precision=precision, jit=jit)
    result = train(config, say=silent)
    assert result.model.output.dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32", "policy restored"
    model = load_keras_file(result.run_dir / "final.keras")
    assert model.get_layer("head").get_layer("predictions").dtype_policy.name == "float32"
