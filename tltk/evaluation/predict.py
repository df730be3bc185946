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

from tltk.config import PREDICT_FORMATS
from tltk.data.folder import list_images
from tltk.errors import TltkError
from tltk.evaluation.runmodel import (  # noqa: F401 (re-exported)
    input_size,
    load_run_model,
    read_image,
    resize_policy,
    run_model_path,
)
from tltk.rundir import open_run


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
        raise TltkError(f"--format: '{fmt}' is not one of {', '.join(PREDICT_FORMATS)}")
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


