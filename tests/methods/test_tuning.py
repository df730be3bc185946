"""keras-tuner search: the space, resuming, cached features across trials, memory,
results files, and a distributed chief + worker on localhost."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import keras_tuner
import pandas as pd
import pytest
from click.testing import CliRunner

import tltk.methods.tuning
from tests.conftest import SMALL_SPLITS, tiny_config
from tltk.cli import main
from tltk.config import HeadConfig, RunConfig, StageConfig
from tltk.engine.features import FeatureCache
from tltk.errors import TltkError
from tltk.log import silent
from tltk.methods.tuning import (
    SearchSpace,
    TransferHyperModel,
    make_tuner,
    scale_epochs,
    trial_config,
    tune,
)
from tltk.models.backbones import get_backbone
from tltk.recipes import demo, flowers_thesis

# One fine-tuned block keeps every trial's image stage equally small.
SPACE = SearchSpace(finetune_blocks=(1, 1))


def tiny(cache_dir: Path) -> RunConfig:
    """Demo shapes at 32 px, 8 training images per class, random VGG16, 1 + 1 epochs."""
    return tiny_config(
        None, [StageConfig("bottleneck", epochs=1, unfreeze=0, augment=False),
               StageConfig("finetune", epochs=1, optimizer="sgd", lr=1e-3, momentum=0.9,
                           unfreeze=1, augment=False)],
        recipe="demo", backbone="vgg16", data={**SMALL_SPLITS, "per_class": 8},
        head=HeadConfig(layers=1, units=16), cache_dir=str(cache_dir))


def live_layers() -> int:
    gc.collect()
    return sum(isinstance(o, keras.layers.Layer) for o in gc.get_objects())


def test_trial_config_covers_the_search_space():
    hp = keras_tuner.HyperParameters()
    base = flowers_thesis.config()  # VGG19; fine-tuning with SGD and an lr step at epoch 25
    trial_config(base, get_backbone("vgg19"), SearchSpace(finetune_blocks=(1, 99)), hp)
    assert set(hp.values) == {"head_layers", "head_units", "head_dropout", "stage1_lr",
                              "finetune_lr", "finetune_momentum", "finetune_blocks"}
    blocks = next(p for p in hp.space if p.name == "finetune_blocks")
    assert blocks.max_value == 5  # VGG19 has 5 blocks
    hp.values.update(head_layers=2, head_units=512, head_dropout=0.2, stage1_lr=3e-3,
                     finetune_lr=2e-3, finetune_momentum=0.8, finetune_blocks=3)
    config = trial_config(base, get_backbone("vgg19"), SearchSpace(), hp)
    assert (config.head.layers, config.head.units, config.head.dropout) == (2, 512, 0.2)
    head, finetune = config.stages
    assert head.lr == 3e-3 and head.unfreeze == 0
    assert (finetune.lr, finetune.momentum, finetune.unfreeze) == (2e-3, 0.8, 3)
    assert finetune.lr_steps == [[25, pytest.approx(5e-4)]]  # 0.004 -> 0.001 keeps its shape
    assert base.stages[1].lr == 0.004, "the base config is left alone"
    default = keras_tuner.HyperParameters()
    trial_config(base, get_backbone("mobilenetv2"), SearchSpace(), default)
    assert next(p for p in default.space if p.name == "finetune_blocks").max_value == 17
    # A from-scratch backbone has no blocks to choose: no fine-tune depth to search.
    scratch = keras_tuner.HyperParameters()
    trial_config(demo.config(), get_backbone("scratch"), SearchSpace(), scratch)
    assert "finetune_blocks" not in scratch.values and "finetune_momentum" in scratch.values


def test_hyperband_spreads_its_budget_over_the_stages(tmp_path):
    config = flowers_thesis.config()  # 30 + 40 epochs
    assert [s.epochs for s in scale_epochs(config, 7).stages] == [3, 4]
    assert [s.epochs for s in scale_epochs(config, 1).stages] == [1, 1]
    hypermodel = TransferHyperModel(config, tmp_path, SPACE)
    tuner = make_tuner(hypermodel, "hyperband", max_trials=4)
    assert tuner.oracle.max_epochs == 70 and tuner.oracle.max_trials == 4
    trial = tuner.oracle.create_trial("tuner0")
    assert 1 <= trial.hyperparameters.values["tuner/epochs"] <= 70
    assert not list(tmp_path.glob("trials/*")), "creating a trial builds nothing"


@pytest.mark.slow
def test_user_errors_are_one_line(tmp_path, monkeypatch):
    config = tiny(tmp_path)
    with pytest.raises(TltkError, match="--tuner: unknown name 'randm'; did you mean 'random'"):
        tune(config, tuner="randm", out=tmp_path)
    with pytest.raises(TltkError, match="--max-trials"):
        tune(config, max_trials=0, out=tmp_path)
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(TltkError, match="KERASTUNER_ORACLE_PORT, KERASTUNER_TUNER_ID|"
                                        "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_PORT"):
        tune(config, out=tmp_path)
    monkeypatch.delenv("KERASTUNER_ORACLE_IP")
    bad = config.override({"data.path": str(tmp_path / "missing"), "data.dataset": "folder"})
    with pytest.raises(TltkError, match="missing"):  # reported once, not as 3 failed trials
        tune(bad, max_trials=3, out=tmp_path / "bad", say=silent)


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A 2-trial random search interrupted during trial 1, then rerun with the same call.

    Records, per build: which call and trial, and the live Keras layers at that moment;
    and the trials during which bottleneck features were extracted.
    """
    root = tmp_path_factory.mktemp("search")
    config, out = tiny(root / "features"), root / "search"
    builds, extractions, state = [], [], {"call": 1, "trial": None}
    build, run_stage, extract = (TransferHyperModel.build, tltk.methods.tuning.run_stage,
                                 FeatureCache._extract)

    def counting_build(self, hp):
        state["trial"] = self.trial_id
        builds.append((state["call"], self.trial_id, live_layers()))
        return build(self, hp)

    def interrupting_stage(ctx, stage):
        if (state["call"], state["trial"], stage.name) == (1, "1", "finetune"):
            raise KeyboardInterrupt  # Ctrl-C in the middle of trial 1
        return run_stage(ctx, stage)

    def counting_extract(*args):
        extractions.append(state["trial"])
        return extract(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TransferHyperModel, "build", counting_build)
        mp.setattr(tltk.methods.tuning, "run_stage", interrupting_stage)
        mp.setattr(FeatureCache, "_extract", staticmethod(counting_extract))
        try:
            tune(config, max_trials=2, out=out, space=SPACE, say=silent)
        except KeyboardInterrupt:
            pass
        state["call"] = 2
        result = tune(config, max_trials=2, out=out, space=SPACE, say=silent)
    return {"config": config, "out": out, "result": result, "builds": builds,
            "extractions": extractions}


@pytest.mark.slow
def test_rerun_continues_an_interrupted_search(search):
    calls = [(call, trial) for call, trial, _ in search["builds"]]
    assert calls == [(1, "0"), (1, "1"), (2, "1")], "trial 0 is not rerun"
    trials = pd.read_csv(search["out"] / "trials.csv", dtype={"trial": str})
    assert sorted(trials["trial"]) == ["0", "1"] and set(trials["status"]) == {"completed"}
    assert search["result"].ran == ["1"]
    # The retried trial went on from its finished bottleneck stage.
    history = pd.read_csv(search["out"] / "trials" / "1" / "history.csv")
    assert history["stage"].tolist() == ["bottleneck", "finetune"]


@pytest.mark.slow
def test_trials_after_the_first_reuse_cached_features(search):
    assert search["extractions"] and set(search["extractions"]) == {"0"}


@pytest.mark.slow
def test_live_keras_layers_do_not_grow_across_trials(search):
    counts = [layers for _, _, layers in search["builds"]]
    # A leaked trial would keep its ~30 layers (VGG16 + head) alive into the next.
    assert max(counts) - counts[0] < 10, counts


@pytest.mark.slow
def test_results_table_and_best_config(search):
    out, result = search["out"], search["result"]
    trials = pd.read_csv(out / "trials.csv", dtype={"trial": str})
    assert list(trials.columns[:3]) == ["trial", "status", "val_top1"]
    for name in ("head_layers", "head_units", "head_dropout", "stage1_lr", "finetune_lr",
                 "finetune_momentum", "finetune_blocks", "tuner", "seconds"):
        assert name in trials.columns, name
    assert trials["val_top1"].is_monotonic_decreasing and trials["val_top1"].between(0, 1).all()
    assert set(trials["tuner"]) == {"tuner0"} and (trials["finetune_blocks"] == 1).all()
    for run_dir in trials["run_dir"]:
        assert {"config.yaml", "history.csv", "best.keras", "final.keras"} <= {
            p.name for p in Path(run_dir).iterdir()}
    best_row = trials.iloc[0]
    history = pd.read_csv(Path(best_row["run_dir"]) / "history.csv")
    assert history["val_top1"].max() == pytest.approx(best_row["val_top1"])
    best = RunConfig.load(out / "best_config.yaml")
    assert best == result.best_config and best.out is None
    assert (best.head.layers, best.head.units) == (best_row["head_layers"], best_row["head_units"])
    assert best.stages[0].lr == pytest.approx(best_row["stage1_lr"])
    assert best.stages[1].momentum == pytest.approx(best_row["finetune_momentum"])
    with pytest.raises(TltkError, match="different config"):
        tune(search["config"].override({"seed": 1}), max_trials=2, out=out)


@pytest.mark.slow
def test_best_config_trains_with_tltk_train_config(search, tmp_path):
    run = tmp_path / "retrained"
    result = CliRunner().invoke(main, ["train", "demo", "--config",
                                       str(search["out"] / "best_config.yaml"),
                                       "--out", str(run)])
    assert result.exit_code == 0, result.output
    trained = RunConfig.load(run / "config.yaml")
    assert trained.head == search["result"].best_config.head
    assert set(pd.read_csv(run / "metrics.csv")["split"]) == {"val", "test"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_distributed_chief_and_worker_on_localhost(tmp_path):
    config, out = tmp_path / "base.yaml", tmp_path / "search"
    config.write_text(tiny(tmp_path / "features").to_yaml())
    command = [sys.executable, "-m", "tltk.cli", "tune", "demo", "--config", str(config),
               "--tuner", "bayesian", "--max-trials", "1", "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(free_port())}
    chief = subprocess.Popen(command, env={**env, "KERASTUNER_TUNER_ID": "chief"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        worker = subprocess.run(command, env={**env, "KERASTUNER_TUNER_ID": "tuner1"},
                                capture_output=True, text=True, timeout=240)
        chief_output, _ = chief.communicate(timeout=60)
    finally:
        chief.kill()
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert "worker tuner1 ran trial(s) 0" in worker.stdout
    assert chief.returncode == 0, chief_output[-2000:]
    trials = pd.read_csv(out / "trials.csv", dtype={"trial": str})
    assert trials[["trial", "status", "tuner"]].values.tolist() == [["0", "completed", "tuner1"]]
    assert RunConfig.load(out / "best_config.yaml").backbone == "vgg16"
    assert "tltk train demo --config" in chief_output
