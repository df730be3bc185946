"""Ensembles average saved (or recomputed) probabilities of runs on the same examples."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.evaluation.conftest import CLASSES, expected_probs, make_run
from tltk.cli import main
from tltk.config import RunConfig
from tltk.errors import TltkError
from tltk.evaluation import ensemble
from tltk.rundir import RunDir


def write_predictions(run, split, probs, labels):
    np.savez(run.file("predictions") / f"best-{split}.npz", probs=np.float32(probs),
             labels=np.int32(labels))


def saved_run(path, val_probs, labels, classes=CLASSES):
    run = RunDir.create(path, RunConfig(recipe="demo").to_yaml())
    run.write_json("classes.json", list(classes))
    run.file("predictions").mkdir()
    write_predictions(run, "val", val_probs, labels)
    pd.DataFrame([{"weights": "best", "split": "val", "top1": 0, "topk": 0, "k": 2}]).to_csv(
        run.file("metrics.csv"), index=False)
    return run


def test_ensemble_averages_saved_probabilities(tmp_path):
    labels = [0, 1, 2, 2]
    a = [[.6, .3, .1], [.5, .4, .1], [.1, .5, .4], [.2, .1, .7]]  # top-1 right: 1st, 4th
    b = [[.2, .7, .1], [.1, .8, .1], [.1, .1, .8], [.5, .4, .1]]  # top-1 right: 2nd, 3rd
    first = saved_run(tmp_path / "a", a, labels)
    second = saved_run(tmp_path / "b", b, labels)
    table = ensemble.ensemble_runs([first.path, second.path], tmp_path / "ens")
    # Mean: [.4,.5,.1] (wrong), [.3,.6,.1], [.1,.3,.6], [.35,.25,.4] (right): 75 % top-1,
    # and every label is in the mean's top 2; b misses the 4th label in its top 2.
    saved = np.load(tmp_path / "ens" / "predictions" / "ensemble-val.npz")
    np.testing.assert_allclose(saved["probs"], (np.array(a) + np.array(b)) / 2, atol=1e-6)
    assert table[["run", "weights"]].values.tolist() == [["a", "best"], ["b", "best"],
                                                         ["ensemble", "ensemble"]]
    assert table["val top-1"].tolist() == [50.0, 50.0, 75.0]
    assert table["val top-2"].tolist() == [100.0, 75.0, 100.0]
    metrics = pd.read_csv(tmp_path / "ens" / "metrics.csv")
    assert metrics.to_dict("records") == [{"weights": "ensemble", "split": "val",
                                           "top1": 75.0, "topk": 100.0, "k": 2}]
    assert (tmp_path / "ens" / "ensemble.md").read_text().startswith("| run | weights |")


def test_ensemble_refuses_mismatched_members(tmp_path):
    probs = np.full((3, 3), 1 / 3)
    base = saved_run(tmp_path / "a", probs, [0, 1, 2])
    renamed = saved_run(tmp_path / "b", probs, [0, 1, 2], classes=["x", "y", "z"])
    shuffled = saved_run(tmp_path / "c", probs, [2, 1, 0])
    with pytest.raises(TltkError, match="different classes"):
        ensemble.ensemble_runs([base.path, renamed.path], tmp_path / "out1")
    with pytest.raises(TltkError, match="different examples in the 'val' split"):
        ensemble.ensemble_runs([base.path, shuffled.path], tmp_path / "out2")
    with pytest.raises(TltkError, match="at least two runs"):
        ensemble.ensemble_runs([base.path], tmp_path / "out3")


def test_ensemble_computes_missing_predictions_from_best_models(tmp_path, data_root):
    run_a, model_a = make_run(tmp_path / "a", data_root, seed=1)
    run_b, model_b = make_run(tmp_path / "b", data_root, seed=2)
    # b already has saved predictions (as training writes them); a has none.
    computed_b = ensemble.compute_predictions(run_b, "best")
    run_b.file("predictions").mkdir()
    for split, arrays in computed_b.items():
        np.savez(run_b.file("predictions") / f"best-{split}.npz", **arrays)
    result = CliRunner().invoke(main, ["ensemble", str(run_a.path), str(run_b.path),
                                       "--out", str(tmp_path / "ens")])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert info["sources"] == [{"val": "computed", "test": "computed"},
                               {"val": "saved", "test": "saved"}]
    averaged = np.load(tmp_path / "ens" / "predictions" / "ensemble-test.npz")
    paths = list(averaged["paths"])
    mean = (expected_probs(model_a, paths) + expected_probs(model_b, paths)) / 2
    np.testing.assert_allclose(averaged["probs"], mean, atol=1e-4)
    assert sorted(pd.read_csv(tmp_path / "ens" / "metrics.csv")["split"]) == ["test", "val"]




@pytest.mark.slow
def test_ensemble_of_two_seeds_of_one_recipe_works_from_the_cli(tmp_path):
    # The split seed is fixed (data.split_seed: 0), so repeats hold the same val/test images.
    runs = [tmp_path / f"seed{seed}" for seed in (1, 2)]
    for seed, out in zip((1, 2), runs, strict=True):
        result = CliRunner().invoke(main, [
            "train", "demo", "--image-size", "32", "--per-class", "5", "--epochs-head", "1",
            "--epochs-finetune", "1", "--seed", str(seed), "--out", str(out)])
        assert result.exit_code == 0, result.output
        config = RunConfig.load(out / "config.yaml")
        assert (config.seed, config.data.split_seed) == (seed, 0)
    first, second = (np.load(out / "predictions" / "best-test.npz") for out in runs)
    np.testing.assert_array_equal(first["labels"], second["labels"])
    assert not np.allclose(first["probs"], second["probs"])  # two different models
    result = CliRunner().invoke(main, ["ensemble", *map(str, runs), "--out",
                                       str(tmp_path / "ens")])
    assert result.exit_code == 0, result.output
    averaged = np.load(tmp_path / "ens" / "predictions" / "ensemble-test.npz")
    np.testing.assert_allclose(averaged["probs"], (first["probs"] + second["probs"]) / 2,
                               atol=1e-6)
