"""Export a run's model as .keras, a SavedModel or TFLite, checked against Keras.

Example::

    path = export_model("runs/flowers", "tflite", "flowers.tflite")
    check_export("runs/flowers", path, "tflite")  # max |probability difference|
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from tltk.errors import TltkError
from tltk.evaluation.predict import input_size, load_run_model, run_model_path
from tltk.rundir import atomic_path, open_run, write_bytes
from tltk.saving import load_keras_file

WEIGHTS = ("best", "final")
EXPORT_FORMATS = ("keras", "savedmodel", "tflite")
OUTPUT_FORMATS = ("table", "json", "csv")


def export_model(run_dir: str | Path, fmt: str, out: str | Path, weights: str = "best") -> Path:
    """Export a run's model as `.keras` (a copy), a TF SavedModel folder or a `.tflite` file.

    All three take raw RGB 0..255 float32 [N, S, S, 3] and return softmax probabilities.
    """
    if fmt not in EXPORT_FORMATS:
        raise TltkError(f"--format: '{fmt}' is not one of {', '.join(EXPORT_FORMATS)}")
    run = open_run(run_dir)
    out = Path(out)
    if fmt == "keras":
        if out.suffix != ".keras":
            raise TltkError(f"--out: a Keras model file must end in .keras, got {out}")
        source = run_model_path(run.path, weights)
        load_run_model(run.path, weights)  # a damaged model is refused, never copied
        with atomic_path(out) as tmp:
            shutil.copyfile(source, tmp)
        return out
    model = load_run_model(run.path, weights)
    if fmt == "savedmodel":
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise TltkError(f"--out: {out} already exists; choose a new folder or delete it")
        _export_saved_model(model, out)
        return out
    with tempfile.TemporaryDirectory(prefix="tltk-export-") as tmp:
        saved = Path(tmp) / "saved_model"
        _export_saved_model(model, saved)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        write_bytes(out, converter.convert())
    return out


def _export_saved_model(model, out: Path) -> None:
    # Export into a sibling temp folder and rename, so a failed export leaves no half folder.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_exported(path: str | Path, fmt: str):
    """A callable `images [N, S, S, 3] float32 0..255 -> probs [N, C]` for an export.

    Example::

        predict = load_exported("flowers.tflite", "tflite")
        predict(np.zeros((2, 160, 160, 3), np.float32)).shape  # -> (2, 5)
    """
    path = Path(path)
    if fmt == "keras":
        model = load_keras_file(path)
        return lambda images: np.asarray(model.predict_on_batch(images))
    if fmt == "savedmodel":
        # Keep the loaded object alive: `serve` only holds weak references to its variables.
        loaded = tf.saved_model.load(str(path))
        return lambda images: loaded.serve(tf.constant(images, tf.float32)).numpy()
    if fmt == "tflite":
        return _tflite_predictor(path)
    raise TltkError(f"--format: '{fmt}' is not one of {', '.join(EXPORT_FORMATS)}")


def _tflite_predictor(path: Path):
    with warnings.catch_warnings():
        # TF warns that tf.lite.Interpreter moves to the separate ai-edge-litert package;
        # it still ships with TensorFlow and is the interpreter tltk depends on.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]

    def predict(images: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(source["index"], images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], images.astype(np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(target["index"]).copy()
    return predict


def check_export(run_dir: str | Path, path: str | Path, fmt: str, weights: str = "best",
                 count: int = 4, seed: int = 0) -> float:
    """Largest absolute difference between the export's and the run model's probabilities
    on `count` random images (a cheap round-trip check after exporting)."""
    model = load_run_model(run_dir, weights)
    size = input_size(model)
    images = np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3))
    images = images.astype(np.float32)
    expected = np.asarray(model.predict_on_batch(images))
    return float(np.max(np.abs(load_exported(path, fmt)(images) - expected)))
