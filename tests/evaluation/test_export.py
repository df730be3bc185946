"""Export a run's model: the exports reproduce the Keras predictions, quantized TFLite
files are measured into exports.csv, the SavedModel serves image bytes and the exported
`.keras` loads in plain Keras, without tltk."""

import json
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.conftest import FLOWERS, require_shared
from tests.evaluation.conftest import CLASSES, SIZE, make_run
from tltk.cli import main
from tltk.errors import TltkError
from tltk.evaluation import export, measure, predict

# Run in a fresh interpreter where `import tltk` fails, as on a machine without tltk.
WITHOUT_TLTK = textwrap.dedent("""
    import sys
    class NoTltk:
        def find_spec(self, name, path=None, target=None):
            if name == "tltk" or name.startswith("tltk."):
                raise ImportError("tltk is not installed here")
    sys.meta_path.insert(0, NoTltk())
""")


def without_tltk(code: str, *args) -> str:
    """Run `code` in a fresh Python that cannot import tltk; returns its stdout."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_TLTK + textwrap.dedent(code),
                             *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("fmt, name, atol", [("keras", "model.keras", 1e-5),
                                              ("savedmodel", "saved", 1e-5),
                                              ("tflite", "model.tflite", 1e-4)])
def test_export_reproduces_predictions(run_and_model, data_root, tmp_path, fmt, name, atol):
    run, model = run_and_model  # its model holds the custom Preprocess layer of old runs
    images = sorted(data_root.rglob("*.png"))[::3]
    path = export.export_model(run.path, fmt, tmp_path / name)
    batch = np.stack([predict.read_image(p, SIZE) for p in images])
    exported = export.load_exported(path, fmt)(batch)
    np.testing.assert_allclose(exported, model.predict_on_batch(batch), atol=atol)
    assert (tmp_path / "labels.txt").read_text().split() == CLASSES


def test_export_refuses_bad_targets(run_and_model, tmp_path):
    run, _ = run_and_model
    with pytest.raises(TltkError, match="must end in .keras"):
        export.export_model(run.path, "keras", tmp_path / "model.h5")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(TltkError, match="already exists"):
        export.export_model(run.path, "savedmodel", tmp_path / "taken")
    with pytest.raises(TltkError, match="must end in .tflite"):
        measure.export_and_measure(run.path, [("tflite", "int8")], out=tmp_path / "m.lite")
    with pytest.raises(TltkError, match="--quantize int8: only TFLite"):
        export.export_model(run.path, "keras", tmp_path / "m.keras", quantize="int8")


def wide_model(seed=0):
    """A model whose weights outweigh the TFLite file's fixed overhead (~40k weights),
    trained a little on the colour-cast shapes so that its top-1 is decisive."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(256, activation="relu", name="dense")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense2")(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="wide")


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory, data_root):
    run, _ = make_run(tmp_path_factory.mktemp("runs") / "wide", data_root)
    images = sorted(data_root.rglob("*.png"))
    x = np.stack([predict.read_image(p, SIZE) for p in images])
    y = np.array([CLASSES.index(p.parent.name) for p in images])
    model = wide_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=18, verbose=0)
    model.save(run.file("best.keras"))
    return run


@pytest.mark.slow
def test_each_quantization_is_measured_into_exports_csv(wide_run, tmp_path):
    quantized = [("tflite", q) for q in export.QUANTIZE]
    rows = measure.export_and_measure(wide_run.path, quantized, out_dir=tmp_path)
    size = {row["quantization"]: row["size_kb"] for row in rows}
    assert size["int8"] < size["float16"] < size["none"] and size["dynamic"] < size["none"]
    assert size["none"] / size["int8"] > 2.5  # 4-byte weights become 1-byte
    agreement = {row["quantization"]: row["agreement"] for row in rows}
    assert agreement["none"] == agreement["float16"] == 100.0
    assert min(agreement.values()) >= 90.0
    table = pd.read_csv(wide_run.file("exports.csv"))
    assert table.columns.tolist() == measure.COLUMNS
    assert table["quantization"].tolist()[-4:] == list(export.QUANTIZE)
    last = table.iloc[-1]
    assert (last["split"], last["images"], last["io"]) == ("test", 6, "uint8")
    assert last["ms_1thread"] > 0 and last["ms_2threads"] > 0
    contract = export.TFLiteModel(tmp_path / "model-int8.tflite").contract()
    assert contract.startswith(f"input uint8 [N, {SIZE}, {SIZE}, 3] RGB pixels 0..255")


@pytest.mark.slow
def test_int8_io_and_predict_on_the_exported_file(wide_run, data_root, tmp_path):
    out = tmp_path / "int8.tflite"
    result = CliRunner().invoke(main, ["export", str(wide_run.path), "--format", "tflite",
                                       "--quantize", "int8", "--int8-io", "int8",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "input int8 [N, 32, 32, 3]" in result.output and "| tflite | int8 | int8 |" in \
        result.output
    image = sorted(data_root.rglob("*.png"))[0]
    from_file = predict.predict_files(out, [image], top=1)
    from_run = predict.predict_files(wide_run.path, [image], top=1)
    assert from_file[0]["predictions"][0]["label"] == from_run[0]["predictions"][0]["label"]


def test_int8_without_training_images_is_one_line_error(data_root, tmp_path):
    shutil.copytree(data_root, tmp_path / "photos")
    run, _ = make_run(tmp_path / "run", tmp_path / "photos")
    shutil.rmtree(tmp_path / "photos")
    result = CliRunner().invoke(main, ["export", str(run.path), "--format", "tflite",
                                       "--quantize", "int8"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: --quantize int8 calibrates on the run's training images")
    assert str(tmp_path / "photos") in line
    assert not run.file("exports").exists() and not run.file("exports.csv").exists()


@pytest.mark.slow
def test_exported_keras_and_new_run_models_load_without_tltk(run_and_model, data_root,
                                                             tmp_path):
    from tests.tiny import TINY
    from tltk.config import HeadConfig
    from tltk.fileio import save_model
    from tltk.models.backbones import build_backbone
    from tltk.models.heads import build_classifier
    from tltk.optim.schedules import OneCycle

    run, model = run_and_model  # saved with tltk's Preprocess layer, as runs were before
    path = export.export_model(run.path, "keras", tmp_path / "model.keras")
    new = build_classifier(build_backbone(TINY, "none", SIZE), TINY, 3, HeadConfig(layers=1))
    new.compile(keras.optimizers.Adam(OneCycle(1e-3, total_steps=10)), "categorical_crossentropy")
    save_model(new, tmp_path / "new.keras")  # as a run saves best.keras, mid-stage
    batch = np.stack([predict.read_image(p, SIZE) for p in sorted(data_root.rglob("*.png"))])
    np.save(tmp_path / "batch.npy", batch)
    out = without_tltk("""
        import json, sys, keras, numpy as np
        batch = np.load(sys.argv[3])
        print(json.dumps([keras.models.load_model(p).predict(batch, verbose=0)
                          .tolist() for p in sys.argv[1:3]]))
    """, path, tmp_path / "new.keras", tmp_path / "batch.npy")
    exported, rebuilt = map(np.array, json.loads(out.strip().splitlines()[-1]))
    np.testing.assert_allclose(exported, model.predict_on_batch(batch), atol=1e-5)
    np.testing.assert_allclose(rebuilt, new.predict_on_batch(batch), atol=1e-5)


@pytest.mark.slow
@pytest.mark.realdata
def test_savedmodel_serves_jpeg_bytes_without_tltk(run_and_model, tmp_path):
    require_shared()
    run, _ = run_and_model
    photos = [sorted((FLOWERS / name).glob("*.jpg"))[0] for name in ("daisy", "rose", "tulip")]
    saved = export.export_model(run.path, "savedmodel", tmp_path / "saved")
    out = without_tltk("""
        import json, sys, tensorflow as tf
        serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
        images = tf.constant([open(p, "rb").read() for p in sys.argv[2:]])
        result = serve(images)
        print(json.dumps({"label": [s.decode() for s in result["label"].numpy()],
                          "classes": result["classes"].numpy()[0].astype(str).tolist(),
                          "sums": result["probabilities"].numpy().sum(axis=1).tolist()}))
    """, saved, *photos)
    served = json.loads(out.strip().splitlines()[-1])
    expected = [r["predictions"][0]["label"] for r in predict.predict_files(run.path, photos)]
    assert served["label"] == expected
    assert served["classes"] == CLASSES
    assert served["sums"] == pytest.approx([1.0] * 3, abs=1e-5)
