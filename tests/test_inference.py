"""Predict, export and ensemble with tiny Keras models saved in synthetic run directories."""

import io
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tltk import inference
from tltk.cli import main
from tltk.config import DataConfig, RunConfig
from tltk.errors import TltkError
from tltk.preprocessing import Preprocess
from tltk.rundir import RunDir

CLASSES = ["circle", "square", "triangle"]
SIZE = 32


def tiny_model(seed=0, num_classes=3):
    """Raw RGB 0..255 in, softmax out, with tltk's custom Preprocess layer inside."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = Preprocess("tf", name="preprocess")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny")


def make_image_folder(root, per_class=6, size=40, seed=0):
    """ROOT/<class>/*.png with a different colour cast per class."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (size, size, 3)) + np.eye(3, dtype=int)[label] * 120
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def make_run(path, data_root, seed=0, classes=CLASSES):
    """A finished run over the folder `data_root` whose best/final models are tiny."""
    config = RunConfig(recipe="folder", seed=0,
                       data=DataConfig(dataset="folder", path=str(data_root),
                                       val_fraction=0.34, test_fraction=0.34))
    run = RunDir.create(path, config.to_yaml())
    run.write_json("classes.json", list(classes))
    model = tiny_model(seed, len(classes))
    model.save(run.file("best.keras"))
    tiny_model(seed + 100, len(classes)).save(run.file("final.keras"))
    run.set_status("complete")
    return run, model


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="module")
def run_and_model(tmp_path_factory, data_root):
    return make_run(tmp_path_factory.mktemp("runs") / "tiny", data_root)


def expected_probs(model, paths):
    images = np.stack([inference.read_image(p, SIZE) for p in paths])
    return model.predict_on_batch(images)


def test_predict_expands_folders_and_reports_unreadable_files(run_and_model, data_root,
                                                              tmp_path):
    run, model = run_and_model
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    results = inference.predict_files(run.path, [data_root / "square", broken,
                                                 tmp_path / "missing.png"], top=2)
    square = sorted((data_root / "square").glob("*.png"))
    expected = [*square, broken, tmp_path / "missing.png"]
    assert [r["path"] for r in results] == [str(p) for p in expected]
    assert results[-2]["error"] == "not a readable image"
    assert results[-1]["error"] == "file not found"
    probs = expected_probs(model, square)
    for result, row in zip(results, probs):
        top = np.argsort(-row)[:2]
        assert [p["label"] for p in result["predictions"]] == [CLASSES[i] for i in top]
        assert result["predictions"][0]["probability"] == pytest.approx(row[top[0]], abs=1e-6)


def test_predict_formats(run_and_model, data_root):
    run, _ = run_and_model
    results = inference.predict_files(run.path, [data_root / "circle" / "0.png"], top=3)
    table = inference.format_predictions(results, "table").splitlines()
    assert table[0].endswith("0.png") and table[1].lstrip().startswith("1. ")
    assert len(table) == 4 and table[1].endswith("%")
    rows = pd.read_csv(io.StringIO(inference.format_predictions(results, "csv")))
    assert rows["rank"].tolist() == [1, 2, 3]
    assert rows["probability"].sum() == pytest.approx(1.0, abs=1e-5)


def test_cli_predict_json_and_errors(run_and_model, data_root, tmp_path):
    run, _ = run_and_model
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["predict", str(run.path), str(tmp_path / "empty")])
    assert result.exit_code == 2 and "IMAGE_OR_FOLDER: no image files" in result.output
    result = CliRunner().invoke(main, ["predict", str(run.path), str(data_root / "circle"),
                                       str(tmp_path / "notes.txt"), "--format", "json",
                                       "--top", "1"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert len(parsed) == 7 and parsed[-1]["error"] == "not a readable image"
    assert all(len(r["predictions"]) == 1 for r in parsed[:-1])
    assert "1 of 7 file(s) could not be read" in result.stderr


@pytest.mark.parametrize("fmt, name, atol", [("keras", "model.keras", 1e-6),
                                              ("savedmodel", "saved", 1e-5),
                                              ("tflite", "model.tflite", 1e-4)])
def test_export_reproduces_predictions(run_and_model, data_root, tmp_path, fmt, name, atol):
    run, model = run_and_model
    images = sorted(data_root.rglob("*.png"))[::3]
    path = inference.export_model(run.path, fmt, tmp_path / name)
    batch = np.stack([inference.read_image(p, SIZE) for p in images])
    exported = inference.load_exported(path, fmt)(batch)
    np.testing.assert_allclose(exported, model.predict_on_batch(batch), atol=atol)
    assert inference.check_export(run.path, path, fmt) < atol


def test_export_refuses_bad_targets(run_and_model, tmp_path):
    run, _ = run_and_model
    with pytest.raises(TltkError, match="must end in .keras"):
        inference.export_model(run.path, "keras", tmp_path / "model.h5")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(TltkError, match="already exists"):
        inference.export_model(run.path, "savedmodel", tmp_path / "taken")


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
    table = inference.ensemble_runs([first.path, second.path], tmp_path / "ens")
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
        inference.ensemble_runs([base.path, renamed.path], tmp_path / "out1")
    with pytest.raises(TltkError, match="different examples in the 'val' split"):
        inference.ensemble_runs([base.path, shuffled.path], tmp_path / "out2")
    with pytest.raises(TltkError, match="at least two runs"):
        inference.ensemble_runs([base.path], tmp_path / "out3")


def test_ensemble_computes_missing_predictions_from_best_models(tmp_path, data_root):
    run_a, model_a = make_run(tmp_path / "a", data_root, seed=1)
    run_b, model_b = make_run(tmp_path / "b", data_root, seed=2)
    # b already has saved predictions (as training writes them); a has none.
    computed_b = inference.compute_predictions(run_b, "best")
    run_b.file("predictions").mkdir()
    for split, arrays in computed_b.items():
        np.savez(run_b.file("predictions") / f"best-{split}.npz", **arrays)
    result = CliRunner().invoke(main, ["ensemble", str(run_a.path), str(run_b.path),
                                       "--out", str(tmp_path / "ens")])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert info["sources"] == [{"val": "computed", "test": "computed"},
                               {"val": "saved", "test": "saved"}]
    ensemble = np.load(tmp_path / "ens" / "predictions" / "ensemble-test.npz")
    paths = list(ensemble["paths"])
    mean = (expected_probs(model_a, paths) + expected_probs(model_b, paths)) / 2
    np.testing.assert_allclose(ensemble["probs"], mean, atol=1e-4)
    assert sorted(pd.read_csv(tmp_path / "ens" / "metrics.csv")["split"]) == ["test", "val"]


def test_predict_matches_the_eval_pipeline_on_real_jpegs(tmp_path):
    from tltk.data.core import file_split, make_pipeline

    flowers = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers-128"
    if not flowers.is_dir():
        pytest.skip(f"real flower images (flowers-128) not found at {flowers}")
    names = sorted(p.name for p in flowers.iterdir() if p.is_dir())
    files = [sorted((flowers / name).glob("*.jpg"))[0] for name in names]
    run, model = make_run(tmp_path / "flowers", flowers, classes=names)
    results = inference.predict_files(run.path, [str(f) for f in files], top=len(names))
    # The images predict decodes must be the very tensors evaluation feeds the model.
    pipeline = make_pipeline(file_split(files, np.arange(len(files))), SIZE, len(files),
                             training=False, seed=0, cache=False)
    batch = next(iter(pipeline))[0].numpy()
    np.testing.assert_allclose(np.stack([inference.read_image(f, SIZE) for f in files]), batch)
    probs = model.predict_on_batch(batch)
    for result, row in zip(results, probs):
        by_label = {p["label"]: p["probability"] for p in result["predictions"]}
        np.testing.assert_allclose([by_label[n] for n in names], row, atol=1e-6)
