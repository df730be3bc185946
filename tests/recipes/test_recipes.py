"""The recipes end to end under tfds mock data (dogs, the thesis protocols) and on the
demo shapes (baseline), at 32 px and one epoch per stage, plus `tltk recipes`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import mocked
from tltk.cli import main
from tltk.data.tfds_sources import DOGS_PER_CLASS, dog_wnids, imagenet_to_dogs, tfds_builder
from tltk.recipes import (
    RECIPES,
    baseline,
    dogs,
    dogs_thesis,
    flowers,
    flowers_thesis,
    folder,
    get_recipe,
    run,
    run_config,
    summary,
)

BREEDS = [3, 7]  # two breeds keep a run to seconds; the head still has 120 outputs
TINY = {"image_size": 32}


def dog_splits() -> dict:
    """Stanford Dogs with 60 images of each of BREEDS, and ImageNetV2 images of them."""
    imagenet = tfds_builder("imagenet_v2/matched-frequency", None).info.features["label"]
    table = imagenet_to_dogs(imagenet.names, dog_wnids(tfds_builder("stanford_dogs", None)))
    return {"stanford_dogs": {"train": np.repeat(BREEDS, 45), "test": np.repeat(BREEDS, 15)},
            "imagenet_v2": {"test": np.repeat(np.flatnonzero(np.isin(table, BREEDS)), 3)}}


def stages_run(run_dir) -> list[dict]:
    return json.loads((run_dir / "run.json").read_text())["stages"]


def test_thesis_recipe_configs_follow_the_thesis_protocol():
    cfg = dogs_thesis.config()
    assert cfg.recipe == "dogs-thesis"
    assert (cfg.backbone, cfg.data.dataset, cfg.data.split) == ("vgg19", "dogs", "default")
    assert DOGS_PER_CLASS == {"val": 30, "test": 20}
    assert (cfg.head.layers, cfg.head.units) == (2, 256)
    bottleneck, finetune = cfg.stages
    assert (bottleneck.unfreeze, bottleneck.optimizer) == (0, "adam")
    assert (finetune.optimizer, finetune.lr, finetune.momentum, finetune.unfreeze) == \
        ("sgd", 1e-4, 0.9, 1)
    # The fast, exact CPU protocol: block5 tunes on cached activations of K views.
    assert (finetune.cache_features, finetune.feature_views) == (True, dogs_thesis.FEATURE_VIEWS)
    cfg = flowers_thesis.config()
    assert cfg.recipe == "flowers-thesis"
    assert (cfg.data.val_fraction, cfg.data.test_fraction) == (0.3, 0.0)
    assert (cfg.backbone, cfg.head.layers, cfg.head.units) == ("vgg19", 1, 256)
    finetune = cfg.stage("finetune")
    assert (finetune.lr, finetune.lr_steps, finetune.momentum) == (0.004, [[25, 0.001]], 0.9)
    cfg = baseline.config()
    assert (cfg.backbone, cfg.head.layers, cfg.data.val_fraction) == ("scratch", 0, 0.3)
    for module in (dogs_thesis, flowers_thesis, baseline):
        assert "Thesis figures it reproduces" in module.__doc__, module.__name__


def test_tltk_recipes_take_folders_stages_as_b6_chose_them():
    base = folder.config()
    head, finetune = base.stages
    assert (head.label_smoothing, head.epochs, base.head.batchnorm) == (0.1, 20, False)
    assert (finetune.optimizer, finetune.schedule, finetune.lr, finetune.epochs) == \
        ("adam", "onecycle", 1e-4, 5)
    assert (finetune.unfreeze, finetune.batchnorm) == ("all", "frozen")
    cfg = flowers.config()
    assert (cfg.recipe, cfg.backbone, cfg.data.dataset) == ("flowers", "vgg19", "flowers")
    assert (cfg.data.val_fraction, cfg.data.test_fraction) == (0.15, 0.15)
    assert (cfg.head, cfg.stages) == (base.head, base.stages)
    cfg = dogs.config()
    assert (cfg.recipe, cfg.backbone, cfg.data.dataset) == ("dogs", "vgg19", "dogs")
    assert (cfg.head, cfg.stages[0]) == (base.head, head)
    tuned = cfg.stage("finetune")
    assert (tuned.optimizer, tuned.schedule, tuned.lr, tuned.epochs) == \
        ("adam", "constant", 1e-4, 20)
    assert (tuned.unfreeze, tuned.cache_features, tuned.feature_views) == \
        (1, True, dogs.FEATURE_VIEWS)


def test_tltk_recipes_lists_each_recipe_on_one_line():
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    for name, line in zip(RECIPES, lines):
        assert line.endswith(summary(name))


def reference_checking(get, checked: list):
    """Wrap `FeatureCache.get`: the streamed cache must equal the in-memory extraction."""
    def checked_get(self, extractor, split, key, make_inputs, views, desc=""):
        streamed = get(self, extractor, split, key, make_inputs, views, desc)
        reference = np.stack([extractor.predict(make_inputs(v), verbose=0)
                              for v in range(views)])
        np.testing.assert_allclose(streamed, reference.astype(streamed.dtype), rtol=1e-3,
                                   atol=1e-3)
        checked.append((extractor.output_shape[1:], views))
        return streamed

    return checked_get


@pytest.mark.slow
def test_tltk_train_dogs_thesis_vgg19_runs_the_thesis_protocol(tmp_path, monkeypatch):
    from tltk.engine.features import FeatureCache

    out, checked = tmp_path / "dogs-vgg19", []
    monkeypatch.setattr(FeatureCache, "get", reference_checking(FeatureCache.get, checked))
    with mocked(dog_splits()):
        result = CliRunner().invoke(main, [
            "train", "dogs-thesis", "--backbone", "vgg19", "--weights", "none",
            "--image-size", "32",
            "--epochs-head", "1", "--epochs-finetune", "1", "--batch-size", "16",
            "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "recompiling with sgd lr=0.0001 momentum=0.9" in result.output
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["split"]) == {"val", "test", "v2"} and (metrics["k"] == 5).all()
    sizes = {name: len(np.load(out / "predictions" / f"best-{name}.npz")["labels"])
             for name in ("val", "test", "v2")}
    assert sizes == {"val": 30 * len(BREEDS), "test": 20 * len(BREEDS), "v2": 3 * len(BREEDS)}
    bottleneck, finetune = stages_run(out)
    assert bottleneck["cached_features"] == "pooled"
    assert (finetune["optimizer"], finetune["trainable_blocks"]) == ("SGD", ["block5"])
    # Fine-tuning ran at the full cut (block4_pool) on K streamed views + plain val.
    assert finetune["cached_features"] == "activations"
    assert ((2, 2, 512), dogs_thesis.FEATURE_VIEWS) in checked and ((2, 2, 512), 1) in checked


@pytest.mark.slow
def test_dogs_without_v2_fails_unless_no_v2_and_a_0_epoch_stage_is_skipped(tmp_path,
                                                                         tiny_backbone):
    splits = dog_splits()
    del splits["imagenet_v2"]
    args = ["train", "dogs", "--backbone", "tiny", "--weights", "none",
            "--image-size", "32", "--epochs-head", "1", "--epochs-finetune", "0",
            "--batch-size", "16", "--out", str(tmp_path / "run")]
    with mocked(splits):
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 2 and "tltk data prepare dogs-v2" in refused.output
        assert "--no-v2" in refused.output and not (tmp_path / "run").exists()
        result = CliRunner().invoke(main, [*args, "--no-v2"])
    assert result.exit_code == 0, result.output
    assert "stage finetune: skipped (0 epochs)" in result.output
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["v2"] is False
    assert set(pd.read_csv(run / "metrics.csv")["split"]) == {"val", "test"}
    report = (run / "report.md").read_text()
    assert "Splits evaluated: val, test." in report and "--no-v2" in report
    assert [s.get("skipped", False) for s in stages_run(run)] == [False, True]
    assert set(pd.read_csv(run / "history.csv")["stage"]) == {"bottleneck"}
    everything_off = CliRunner().invoke(main, [*args, "--no-v2", "--epochs-head", "0"])
    assert everything_off.exit_code == 2 and "every stage has 0 epochs" in everything_off.output


def test_dogs_thesis_recipe_takes_another_backbone_and_its_top_block():
    # Training every recipe is tests/test_matrix.py's job; here only what the resnet50
    # override changes: the config and the block the fine-tuning stage unfreezes.
    from tltk.models.backbones import get_backbone, resolve_unfreeze

    config = run_config(get_recipe("dogs-thesis")(), {"backbone": "resnet50"})
    assert config.head.layers == 2 and config.backbone == "resnet50"
    assert resolve_unfreeze(get_backbone("resnet50"), config.stage("finetune").unfreeze) == \
        ["conv5_block3"]


@pytest.mark.slow
def test_flowers_thesis_recipe_reports_top2_and_steps_its_learning_rate(tmp_path):
    splits = {"tf_flowers": {"train": np.repeat(np.arange(5), 10)}}
    with mocked(splits):
        result = run("flowers-thesis", weights="none", data=TINY, epochs_head=1, epochs_finetune=2,
                             batch_size=16, out=str(tmp_path / "run"),
                             stages={"finetune": {"lr_steps": [[1, 0.001]]}})
    assert set(result.metrics["split"]) == {"val"} and (result.metrics["k"] == 2).all()
    history = result.history
    finetune = history[history["stage"] == "finetune"]
    assert finetune["lr"].tolist() == pytest.approx([0.004, 0.001])
    assert history.loc[history["stage"] == "bottleneck", "lr"].tolist() == pytest.approx([1e-3])


@pytest.mark.slow
def test_flowers_recipe_splits_70_15_15_and_tunes_with_one_cycle(tmp_path, tiny_backbone):
    splits = {"tf_flowers": {"train": np.repeat(np.arange(5), 20)}}
    with mocked(splits):
        result = run("flowers", backbone="tiny", weights="none", data=TINY, epochs_head=1,
                             epochs_finetune=2, batch_size=16, out=str(tmp_path / "run"))
    assert set(result.metrics["split"]) == {"val", "test"} and (result.metrics["k"] == 2).all()
    sizes = {name: len(np.load(result.run_dir / "predictions" / f"best-{name}.npz")["labels"])
             for name in ("val", "test")}
    assert sizes == {"val": 15, "test": 15}
    finetune = result.history[result.history["stage"] == "finetune"]
    assert finetune["lr"].iloc[0] > finetune["lr"].iloc[-1] > 0  # one-cycle annealing
    assert stages_run(result.run_dir)[1]["optimizer"] == "Adam"


@pytest.mark.slow
def test_baseline_returns_the_table3_grid_on_demo(tmp_path):
    result = baseline.run(data={"dataset": "demo", "image_size": 32, "per_class": 8,
                                "val_fraction": 0.05},
                          epochs_head=1, batch_size=16, out=str(tmp_path / "baseline"))
    grid = result.grid
    assert grid.index.tolist() == [("augmented", "best"), ("augmented", "final"),
                                   ("plain", "best"), ("plain", "final")]
    assert grid.columns.tolist() == [("val", "top1"), ("val", "topk")]
    plain = result.runs["plain"].metrics.set_index("weights")
    assert grid.loc[("plain", "final"), ("val", "top1")] == plain.loc["final", "top1"]
    assert [r.config.stages[0].augment for r in result.runs.values()] == [True, False]
    assert (tmp_path / "baseline" / "augmented").is_dir() and \
        (tmp_path / "baseline" / "plain").is_dir()
