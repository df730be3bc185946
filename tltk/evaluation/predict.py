"""Using a finished run: load its model and predict on image files.

A saved tltk model takes raw RGB 0..255 at its own input size and outputs softmax
probabilities, so prediction is: decode, resize (the run's resize policy, stretch by
default), `model.predict`. Models load in Keras safe mode
(`tltk.saving.load_model`).

Example::

    results = predict_files("runs/flowers", ["photos/"], top=2)
    print(format_predictions(results, "table"))
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from tltk.data.core import decode_image_file, prepare_image
from tltk.data.folder import list_images
from tltk.errors import TltkError
from tltk.rundir import RunDir, damaged, open_run
from tltk.saving import load_model

WEIGHTS = ("best", "final", "ema")
EXPORT_FORMATS = ("keras", "savedmodel", "tflite")
OUTPUT_FORMATS = ("table", "json", "csv")


def load_run_model(run_dir: str | Path, weights: str = "best"):
    """A run's `best.keras`, `final.keras` or `ema.keras`, loaded in safe mode."""
    run_model_path(run_dir, weights)  # an unknown name or a missing ema.keras: one line
    # tltk.saving also refuses a classes.json that does not match the model's outputs.
    return load_model(open_run(run_dir).path, weights).model


def run_model_path(run_dir: str | Path, weights: str = "best") -> Path:
    """The path of a run's `<weights>.keras`; a missing `ema.keras` says how to get one."""
    if weights not in WEIGHTS:
        raise TltkError(f"--weights: '{weights}' is not one of {', '.join(WEIGHTS)}")
    path = open_run(run_dir).file(f"{weights}.keras")
    if weights == "ema" and not path.is_file():
        raise TltkError(f"--weights ema: {path.parent} has no ema.keras; only runs with a "
                        "stage's ema set have one (e.g. --set stages.finetune.ema=0.999)")
    return path


def input_size(model) -> int:
    """The square input size a model was built for, from its input shape."""
    shape = model.input_shape
    if shape[1] is None or shape[1] != shape[2]:
        raise TltkError(f"model input shape {shape} is not a fixed square size; "
                        "tltk models take (S, S, 3)")
    return int(shape[1])


def resize_policy(run: RunDir) -> str:
    """The run's `data.resize` (stretch | crop | pad), so images match what it trained on."""
    data = run.config_dict().get("data") or {}
    policy = (data if isinstance(data, dict) else {}).get("resize") or "stretch"
    if policy not in ("stretch", "crop", "pad"):
        raise damaged(run.file("config.yaml"), f"damaged (data.resize is {policy!r})")
    return policy


def expand_inputs(items) -> list[Path]:
    """Files as given, folders expanded recursively to their image files (sorted); a file
    reached twice (named and inside a named folder) is kept once, where first seen."""
    found: dict[Path, Path] = {}
    for item in items:
        path = Path(item).expanduser()
        for file in list_images(path) if path.is_dir() else [path]:
            found.setdefault(file.resolve(), file)
    paths = list(found.values())
    if not paths:
        raise TltkError(f"IMAGE_OR_FOLDER: no image files found in {', '.join(map(str, items))}")
    return paths


def read_image(path: str | Path, size: int, policy: str = "stretch") -> np.ndarray:
    """Decode an image file to RGB and resize it to size x size; whole float32 0..255.

    TensorFlow decodes what training decoded (JPEG, PNG, GIF, BMP); other formats
    Pillow can read (WebP, TIFF) are decoded by Pillow. Raises `ValueError` with a
    short reason for missing or undecodable files.
    """
    path = Path(str(path))
    if not path.is_file():
        raise ValueError("file not found")
    try:
        image = decode_image_file(tf.constant(str(path)))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        image = _decode_with_pillow(path)
    # The same preparation as `make_pipeline`: a prediction sees the pixels evaluation saw.
    return tf.cast(prepare_image(image, size, policy), tf.float32).numpy()


def _decode_with_pillow(path: Path) -> tf.Tensor:
    try:
        with Image.open(path) as image:
            return tf.constant(np.asarray(image.convert("RGB")))
    except (UnidentifiedImageError, OSError):
        raise ValueError("not a readable image") from None


def predict_images(predict, size: int, num_classes: int, paths: list[Path],
                   policy: str = "stretch", batch_size: int = 32):
    """Probabilities for every readable image; returns (probs [n, C], kept paths, errors).

    `predict` maps float32 images [B, size, size, 3] to probabilities (a Keras model's
    `predict_on_batch`, or an export's, `tltk.evaluation.export.open_export`). `errors`
    lists (path, reason) for files that could not be read; they are skipped.
    """
    kept, errors, batches, batch = [], [], [], []
    for path in paths:
        try:
            batch.append(read_image(path, size, policy))
            kept.append(path)
        except ValueError as exc:
            errors.append((path, str(exc)))
        if len(batch) == batch_size:
            batches.append(predict(np.stack(batch)))
            batch = []
    if batch:
        batches.append(predict(np.stack(batch)))
    probs = np.concatenate(batches) if batches else np.zeros((0, num_classes))
    return np.asarray(probs, dtype=np.float32), kept, errors


def predict_files(source: str | Path, items, top: int = 5, weights: str = "best",
                  batch_size: int = 32, labels: str | Path | None = None,
                  explain: str | Path | None = None) -> list[dict]:
    """Top-`top` labels for each image (folders expanded), in input order.

    `source` is a run directory or an exported model (`.keras`, `.tflite` or a
    SavedModel folder; its class names from `labels`, default the `labels.txt` beside
    it). Each result is `{"path", "predictions": [{"label", "probability"}, ...]}` or,
    for a file that could not be read, `{"path", "error"}`. With `explain` (a folder),
    each result also names its Grad-CAM heatmap there (`"heatmap"`).
    """
    if top < 1:
        raise TltkError(f"--top: must be 1 or more, got {top}")
    predict, size, class_names, policy, model = _open_source(Path(source), weights, labels)
    if explain is not None and model is None:
        raise TltkError(f"--explain: {source} is not a Keras model; Grad-CAM needs a run "
                        "directory or a .keras file")
    paths = expand_inputs(items)
    probs, kept, errors = predict_images(predict, size, len(class_names), paths, policy,
                                         batch_size)
    results = {}
    for path, row in zip(kept, probs):
        order = np.argsort(-row, kind="stable")[:top]
        results[path] = {"path": str(path), "predictions": [
            {"label": class_names[i], "probability": float(row[i])} for i in order]}
    if explain is not None and kept:
        from tltk.evaluation.gradcam import explain_files

        images = np.stack([read_image(path, size, policy) for path in kept])
        for path, heatmap in zip(kept, explain_files(model, images, kept, explain)):
            results[path]["heatmap"] = str(heatmap)
    for path, reason in errors:
        results[path] = {"path": str(path), "error": reason}
    return [results[path] for path in paths]


def _open_source(source: Path, weights: str, labels):
    """(predict, input size, class names, resize policy, Keras model or None)."""
    from tltk.evaluation.export import open_export, read_labels

    if source.is_file() or (source / "saved_model.pb").is_file():
        predict, size, model = open_export(source)
        names = read_labels(source, labels)
        outputs = predict(np.zeros((1, size, size, 3), np.float32)).shape[-1]
        if len(names) != outputs:
            raise TltkError(f"--labels: {len(names)} class names for a model of {outputs} "
                            "outputs; pass the labels.txt written with it")
        # An export takes the image resized to its input size, by tltk's default (stretch).
        return predict, size, names, "stretch", model
    run = open_run(source)
    model = load_run_model(run.path, weights)
    return (model.predict_on_batch, input_size(model), run.class_names(), resize_policy(run),
            model)


def format_predictions(results: list[dict], fmt: str = "table") -> str:
    """Render `predict_files` results as an aligned text table, JSON or CSV."""
    if fmt == "json":
        return json.dumps(results, indent=2)
    rows = [{"path": r["path"], "rank": rank, "label": p["label"],
             "probability": round(p["probability"], 6), "error": ""}
            for r in results for rank, p in enumerate(r.get("predictions", []), start=1)]
    rows += [{"path": r["path"], "rank": "", "label": "", "probability": "", "error": r["error"]}
             for r in results if "error" in r]
    if fmt == "csv":
        return pd.DataFrame(rows, columns=["path", "rank", "label", "probability",
                                           "error"]).to_csv(index=False).rstrip("\n")
    if fmt != "table":
        raise TltkError(f"--format: '{fmt}' is not one of {', '.join(OUTPUT_FORMATS)}")
    return _text_table(results)


def _text_table(results: list[dict]) -> str:
    width = max((len(p["label"]) for r in results for p in r.get("predictions", [])),
                default=5)
    lines = []
    for result in results:
        lines.append(result["path"])
        if "error" in result:
            lines.append(f"  error: {result['error']}")
        for rank, pred in enumerate(result.get("predictions", []), start=1):
            lines.append(f"  {rank}. {pred['label']:<{width}} {100 * pred['probability']:6.2f}%")
        if "heatmap" in result:
            lines.append(f"  Grad-CAM: {result['heatmap']}")
    return "\n".join(lines)


