"""Predict on image files with a saved run (synthetic runs, and real JPEGs)."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.conftest import FLOWERS, require_shared
from tests.evaluation.conftest import (
    CLASSES,
    SIZE,
    expected_probs,
    make_run,
    tiny_model,
)
from tltk.cli import main
from tltk.evaluation import export, predict


def test_predict_expands_folders_and_reports_unreadable_files(run_and_model, data_root,
                                                              tmp_path):
    run, model = run_and_model
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    results = predict.predict_files(run.path, [data_root / "square", broken,
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
    results = predict.predict_files(run.path, [data_root / "circle" / "0.png"], top=3)
    table = predict.format_predictions(results, "table").splitlines()
    assert table[0].endswith("0.png") and table[1].lstrip().startswith("1. ")
    assert len(table) == 4 and table[1].endswith("%")
    rows = pd.read_csv(io.StringIO(predict.format_predictions(results, "csv")))
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
    # Issue 16: some inputs failed, so exit 1 (it was 0); the good ones are still printed.
    assert result.exit_code == 1, result.output
    parsed = json.loads(result.stdout)
    assert len(parsed) == 7 and parsed[-1]["error"] == "not a readable image"
    assert all(len(r["predictions"]) == 1 for r in parsed[:-1])
    assert "1 of 7 file(s) could not be read" in result.stderr



@pytest.mark.realdata
def test_predict_matches_the_eval_pipeline_on_real_jpegs(tmp_path):
    from tltk.data.core import file_split, make_pipeline

    require_shared()
    flowers = FLOWERS
    names = sorted(p.name for p in flowers.iterdir() if p.is_dir())
    files = [sorted((flowers / name).glob("*.jpg"))[0] for name in names]
    run, model = make_run(tmp_path / "flowers", flowers, classes=names)
    results = predict.predict_files(run.path, [str(f) for f in files], top=len(names))
    # The images predict decodes must be the very tensors evaluation feeds the model.
    pipeline = make_pipeline(file_split(files, np.arange(len(files))), SIZE, len(files),
                             training=False, seed=0, cache=False)
    batch = next(iter(pipeline))[0].numpy()
    np.testing.assert_allclose(np.stack([predict.read_image(f, SIZE) for f in files]), batch)
    probs = model.predict_on_batch(batch)
    for result, row in zip(results, probs):
        by_label = {p["label"]: p["probability"] for p in result["predictions"]}
        np.testing.assert_allclose([by_label[n] for n in names], row, atol=1e-6)


def test_predict_and_export_take_the_ema_weights(run_and_model, data_root, tmp_path):
    run, _ = run_and_model
    missing = CliRunner().invoke(main, ["predict", str(run.path), str(data_root / "circle"),
                                        "--weights", "ema"])
    assert missing.exit_code == 2 and "has no ema.keras" in missing.output
    ema_model = tiny_model(seed=7)
    ema_model.save(run.file("ema.keras"))
    try:
        result = CliRunner().invoke(main, ["predict", str(run.path), str(data_root / "circle"),
                                           "--weights", "ema", "--format", "json"])
        assert result.exit_code == 0, result.output
        parsed = json.loads(result.stdout)
        paths = [r["path"] for r in parsed]
        probs = expected_probs(ema_model, paths)
        top = [CLASSES[i] for i in probs.argmax(1)]
        assert [r["predictions"][0]["label"] for r in parsed] == top
        batch = np.stack([predict.read_image(p, SIZE) for p in paths])
        export.export_model(run.path, "keras", tmp_path / "e.keras", weights="ema")
        exported = export.load_exported(tmp_path / "e.keras", "keras")
        np.testing.assert_allclose(exported(batch), ema_model.predict_on_batch(batch), atol=1e-5)
    finally:
        run.file("ema.keras").unlink()  # the run fixture is shared by the module
