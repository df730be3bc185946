"""Export a run's model; the export reproduces the Keras predictions."""


import numpy as np
import pytest

from tests.evaluation.conftest import SIZE
from tltk.errors import TltkError
from tltk.evaluation import export, predict


@pytest.mark.parametrize("fmt, name, atol", [("keras", "model.keras", 1e-6),
                                              ("savedmodel", "saved", 1e-5),
                                              ("tflite", "model.tflite", 1e-4)])
def test_export_reproduces_predictions(run_and_model, data_root, tmp_path, fmt, name, atol):
    run, model = run_and_model
    images = sorted(data_root.rglob("*.png"))[::3]
    path = export.export_model(run.path, fmt, tmp_path / name)
    batch = np.stack([predict.read_image(p, SIZE) for p in images])
    exported = export.load_exported(path, fmt)(batch)
    np.testing.assert_allclose(exported, model.predict_on_batch(batch), atol=atol)
    assert export.check_export(run.path, path, fmt) < atol


def test_export_refuses_bad_targets(run_and_model, tmp_path):
    run, _ = run_and_model
    with pytest.raises(TltkError, match="must end in .keras"):
        export.export_model(run.path, "keras", tmp_path / "model.h5")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(TltkError, match="already exists"):
        export.export_model(run.path, "savedmodel", tmp_path / "taken")


