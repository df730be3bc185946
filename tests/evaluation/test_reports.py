"""Comparison tables, learning curves, confusion plots and the run report, from synthetic
run directories written in tmp_path (no training involved)."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.evaluation.conftest import assert_png, write_history
from tltk.cli import main
from tltk.config import RunConfig, StageConfig
from tltk.errors import TltkError
from tltk.evaluation import reports

CLASSES = ["daisy", "rose", "tulip"]


def make_run(root, name="run", top1=(80.0, 78.0), with_paths=True, seed=0):
    """A finished run directory with metrics, history and predictions for val and test."""
    run = root / name
    (run / "predictions").mkdir(parents=True)
    config = RunConfig(recipe="folder", stages=[StageConfig("head", 3),
                                                StageConfig("finetune", 2, unfreeze=1)])
    (run / "config.yaml").write_text(config.to_yaml())
    (run / "run.json").write_text(json.dumps({"status": "complete"}))
    (run / "classes.json").write_text(json.dumps(CLASSES))
    write_history(run / "history.csv")
    rows = [{"weights": w, "split": s, "top1": t - i, "topk": 99.0, "k": 2}
            for w, t in zip(("best", "final"), top1) for i, s in enumerate(("val", "test"))]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(exist_ok=True)
    for split in ("val", "test"):
        labels = np.repeat(np.arange(3), 4).astype(np.int32)
        probs = rng.dirichlet(np.ones(3), size=len(labels)).astype(np.float32)
        arrays = {"probs": probs, "labels": labels}
        if with_paths:
            paths = []
            for i in range(len(labels)):
                path = images / f"{split}{i}.png"
                Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
                paths.append(str(path))
            arrays["paths"] = np.asarray(paths)
        for weights in ("best", "final"):
            np.savez(run / "predictions" / f"{weights}-{split}.npz", **arrays)
    return run


def test_metrics_table_thesis_layout():
    metrics = pd.DataFrame({"weights": ["final", "final", "best", "best"],
                            "split": ["test", "val", "test", "val"],
                            "top1": [70.0, 72.0, 80.0, 81.0], "topk": [95.0, 96.0, 97.0, 98.0],
                            "k": [5, 5, 5, 5]})
    table = reports.metrics_table(metrics)
    assert list(table.columns) == ["weights", "val top-1", "val top-5", "test top-1",
                                   "test top-5"]
    assert table["weights"].tolist() == ["best", "final"]
    assert table.loc[0, "val top-1"] == 81.0 and table.loc[1, "test top-5"] == 95.0


def test_compare_runs_rows_run_by_weights_and_unique_labels(tmp_path):
    first = make_run(tmp_path / "a", "vgg19", top1=(88.0, 86.0))
    second = make_run(tmp_path / "b", "vgg19", top1=(91.0, 92.0))
    other = make_run(tmp_path, "scratch", top1=(74.0, 73.0))
    table = reports.compare_runs([first, second, other])
    assert table[["run", "weights"]].values.tolist() == [
        ["a/vgg19", "best"], ["a/vgg19", "final"], ["b/vgg19", "best"], ["b/vgg19", "final"],
        ["scratch", "best"], ["scratch", "final"]]
    assert list(table.columns[2:]) == ["val top-1", "val top-2", "test top-1", "test top-2"]
    assert table["val top-1"].tolist() == [88.0, 86.0, 91.0, 92.0, 74.0, 73.0]
    assert table["test top-1"].tolist() == [87.0, 85.0, 90.0, 91.0, 73.0, 72.0]
    assert reports.run_labels([first, first]) == ["vgg19", "vgg19 (2)"]


def test_compare_runs_without_metrics_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TltkError, match="no metrics.csv.*tltk evaluate"):
        reports.compare_runs([tmp_path / "empty"])


def test_markdown_table_right_aligns_numbers_and_marks_missing():
    frame = pd.DataFrame({"run": ["x"], "val top-1": [91.25], "test top-1": [np.nan]})
    assert reports.to_markdown(frame).splitlines() == [
        "| run | val top-1 | test top-1 |", "|:--|--:|--:|", "| x | 91.2 | – |"]


@pytest.mark.slow
def test_run_report_md_and_self_contained_html(tmp_path):
    run = make_run(tmp_path, "flowers")
    md_path = reports.write_run_report(run)
    markdown = md_path.read_text()
    html = (run / "report.html").read_text()
    for heading in ("Accuracy (%)", "Learning curves", "Most-confused pairs",
                    "Per-class accuracy", "Most confident mistakes"):
        assert heading in markdown and heading in html
    assert "best weights on the test split" in markdown
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert linked == ["report/curves.png", "report/confusion-best-test.png",
                      "report/misclassified-best-test.png"]
    for link in linked:
        assert_png(run / link)
    assert html.count("data:image/png;base64,") == 3 and 'src="report/' not in html
    per_class = pd.read_csv(run / "report" / "per_class-best-test.csv")
    assert sorted(per_class["class"]) == CLASSES and per_class["support"].sum() == 12


def test_run_report_helps_fix_the_data(tmp_path):
    run = make_run(tmp_path, "fix")
    status = {"status": "complete", "splits": {"train": 30, "val": 12, "test": 12},
              "best": {"epoch": 3, "stage": "finetune"},
              "stages": [{"name": "head", "seconds": 12.4}, {"name": "finetune", "seconds": 300}]}
    (run / "run.json").write_text(json.dumps(status))
    (run / "best.keras").write_bytes(b"model")
    markdown = reports.write_run_report(run).read_text()
    assert "Images per split: train 30, val 12, test 12." in markdown
    assert "Stage time: head 12 s, finetune 5.0 min." in markdown
    assert f"Best weights: {(run / 'best.keras').resolve()} (epoch 4, stage finetune)." in markdown
    assert "Per-class precision, recall and F1 (%)" in markdown
    data = np.load(run / "predictions" / "best-test.npz")
    predicted = data["probs"].argmax(1)
    scores = pd.read_csv(run / "report" / "scores-best-test.csv").set_index("class")
    for index, name in enumerate(CLASSES):
        hits = np.sum((predicted == index) & (data["labels"] == index))
        assert scores.loc[name, "recall"] == pytest.approx(100 * hits / 4)
        if np.sum(predicted == index):
            assert scores.loc[name, "precision"] == pytest.approx(
                100 * hits / np.sum(predicted == index))
    mistakes = pd.read_csv(run / "mistakes.csv")
    assert list(mistakes.columns) == ["file", "true", "predicted", "confidence", "loss"]
    assert len(mistakes) == np.sum(predicted != data["labels"])
    assert mistakes["confidence"].is_monotonic_decreasing
    first = list(data["paths"]).index(mistakes["file"][0])
    assert mistakes["loss"][0] == pytest.approx(
        -np.log(data["probs"][first, data["labels"][first]]), rel=1e-5)


def test_run_report_without_paths_explains_missing_grid(tmp_path):
    run = make_run(tmp_path, "demo", with_paths=False)
    markdown = reports.write_run_report(run, split="val").read_text()
    assert "not file-backed" in markdown and "misclassified-" not in markdown
    assert "best weights on the val split" in markdown


def test_cli_report_compares_runs_and_regenerates_one(tmp_path):
    first, second = make_run(tmp_path, "one"), make_run(tmp_path, "two", seed=1)
    runner = CliRunner()
    result = runner.invoke(main, ["report", str(first), str(second), "--out",
                                  str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert table["run"].tolist() == ["one", "one", "two", "two"]
    assert (tmp_path / "cmp" / "comparison.md").read_text().startswith("| run | weights |")

    result = runner.invoke(main, ["report", str(first)])
    assert result.exit_code == 0 and (first / "report.html").is_file()

    result = runner.invoke(main, ["report", str(first), str(second)])
    assert result.exit_code == 2 and "--out" in result.output
