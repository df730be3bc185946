"""Using finished runs: predict on image files, ensemble runs, export models.

A saved tltk model takes raw RGB 0..255 at its own input size and outputs softmax
probabilities, so prediction is: decode, resize (the run's resize policy, stretch by
default), `model.predict`. Models load in Keras safe mode (`tltk.evaluation.load_model`).

Example:
    >>> results = predict_files("runs/flowers", ["photos/"], top=2)
    >>> print(format_predictions(results, "table"))
    >>> ensemble_runs(["runs/vgg19", "runs/resnet50"], out="runs/ensemble")
    >>> export_model("runs/flowers", "tflite", "flowers.tflite")
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import yaml
from PIL import Image, UnidentifiedImageError

from tltk.analysis import average_probs
from tltk.data.core import decode_image_file, prepare_image
from tltk.data.folder import list_images
from tltk.errors import TltkError
from tltk.evaluation import load_model, metrics_rows, predict_split
from tltk.reports import (
    SPLIT_ORDER,
    metrics_table,
    ordered,
    prediction_files,
    run_labels,
    run_top_k,
    write_table,
)
from tltk.rundir import RunDir, atomic_path, open_run, write_bytes, write_csv, write_npz

WEIGHTS = ("best", "final")
EXPORT_FORMATS = ("keras", "savedmodel", "tflite")
OUTPUT_FORMATS = ("table", "json", "csv")


# --- loading -----------------------------------------------------------------------------
def load_run_model(run_dir: str | Path, weights: str = "best"):
    """A run's `best.keras` or `final.keras`, loaded in safe mode."""
    if weights not in WEIGHTS:
        raise TltkError(f"--weights: '{weights}' is not one of {', '.join(WEIGHTS)}")
    return load_model(open_run(run_dir).file(f"{weights}.keras"))


def input_size(model) -> int:
    """The square input size a model was built for, from its input shape."""
    shape = model.input_shape
    if shape[1] is None or shape[1] != shape[2]:
        raise TltkError(f"model input shape {shape} is not a fixed square size; "
                        "tltk models take (S, S, 3)")
    return int(shape[1])


def resize_policy(run: RunDir) -> str:
    """The run's `data.resize` (stretch | crop | pad), so images match what it trained on."""
    config = yaml.safe_load(run.file("config.yaml").read_text()) or {}
    return (config.get("data") or {}).get("resize") or "stretch"


# --- predict -----------------------------------------------------------------------------
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


def predict_images(model, paths: list[Path], policy: str = "stretch", batch_size: int = 32):
    """Probabilities for every readable image; returns (probs [n, C], kept paths, errors).

    `errors` lists (path, reason) for files that could not be read; they are skipped.
    """
    size = input_size(model)
    kept, errors, batches, batch = [], [], [], []
    for path in paths:
        try:
            batch.append(read_image(path, size, policy))
            kept.append(path)
        except ValueError as exc:
            errors.append((path, str(exc)))
        if len(batch) == batch_size:
            batches.append(model.predict_on_batch(np.stack(batch)))
            batch = []
    if batch:
        batches.append(model.predict_on_batch(np.stack(batch)))
    probs = np.concatenate(batches) if batches else np.zeros((0, model.output_shape[-1]))
    return np.asarray(probs, dtype=np.float32), kept, errors


def predict_files(run_dir: str | Path, items, top: int = 5, weights: str = "best",
                  batch_size: int = 32) -> list[dict]:
    """Top-`top` labels for each image (folders expanded), in input order.

    Each result is `{"path", "predictions": [{"label", "probability"}, ...]}` or, for a
    file that could not be read, `{"path", "error"}`.
    """
    run = open_run(run_dir)
    if top < 1:
        raise TltkError(f"--top: must be 1 or more, got {top}")
    model = load_run_model(run.path, weights)
    class_names = run.class_names()
    paths = expand_inputs(items)
    probs, kept, errors = predict_images(model, paths, resize_policy(run), batch_size)
    results = {}
    for path, row in zip(kept, probs):
        order = np.argsort(-row, kind="stable")[:top]
        results[path] = {"path": str(path), "predictions": [
            {"label": class_names[i], "probability": float(row[i])} for i in order]}
    for path, reason in errors:
        results[path] = {"path": str(path), "error": reason}
    return [results[path] for path in paths]


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
    return "\n".join(lines)


# --- ensembles ---------------------------------------------------------------------------
def _saved_predictions(run: RunDir, weights: str) -> dict[str, dict]:
    return {split: run.predictions(w, split) for w, split in prediction_files(run)
            if w == weights}


def compute_predictions(run: RunDir, weights: str, splits=None) -> dict[str, dict]:
    """Predict `splits` (default: every eval split) of the run's own data with its saved
    model; nothing is written to the run."""
    from tltk import data as tltk_data
    from tltk.config import RunConfig

    config = RunConfig.load(run.file("config.yaml"))
    dataset = tltk_data.load(config.data, seed=config.seed)
    model = load_run_model(run.path, weights)
    out = {}
    for split in dataset.eval_splits() if splits is None else splits:
        if split not in dataset.splits:
            continue
        data = dataset.splits[split]
        probs = predict_split(model, dataset, split, input_size(model), config.batch_size,
                              config.data.resize)
        out[split] = {"probs": probs.astype(np.float32), "labels": data.labels}
        if data.paths is not None:
            out[split]["paths"] = np.asarray(data.paths)
    return out


def _same_examples(a: dict, b: dict) -> str | None:
    """Why two splits' predictions cover different examples, or None when they agree."""
    if len(a["labels"]) != len(b["labels"]):
        return f"{len(a['labels'])} vs {len(b['labels'])} examples"
    if not np.array_equal(a["labels"], b["labels"]):
        return "labels differ"
    both_have_paths = "paths" in a and "paths" in b
    if both_have_paths and list(map(_path_tail, a["paths"])) != list(map(_path_tail, b["paths"])):
        return "image files differ"
    return None


def _path_tail(path) -> tuple[str, ...]:
    # Class folder and file name: the same data under another root (or cwd) still agrees.
    return Path(str(path)).parts[-2:]


def _check_classes(runs: list[RunDir]) -> list[str]:
    names = runs[0].class_names()
    for run in runs[1:]:
        other = run.class_names()
        if other != names:
            where = next((i for i, (x, y) in enumerate(zip(names, other)) if x != y),
                         min(len(names), len(other)))
            raise TltkError(f"RUN: {run.path} and {runs[0].path} have different classes "
                            f"({len(other)} vs {len(names)} classes, first difference at "
                            f"label {where}); ensemble members must share class names")
    return names


def member_predictions(runs: list[RunDir], weights: str = "best"):
    """Per run, {split: arrays} over the splits common to all runs, and where they came from.

    Saved predictions are used when present; missing splits are predicted with the
    run's model. Raises `TltkError` when runs disagree on a split's examples.
    """
    members = [_saved_predictions(run, weights) for run in runs]
    wanted = list(dict.fromkeys(s for saved in members for s in saved))
    sources = [{split: "saved" for split in saved} for saved in members]
    for run, saved, source in zip(runs, members, sources):
        if saved and all(split in saved for split in wanted):
            continue
        # Predict what is missing; a run with no saved predictions gets all its eval splits.
        splits = [split for split in wanted if split not in saved] if saved else None
        computed = compute_predictions(run, weights, splits)
        saved.update(computed)
        source.update({split: "computed" for split in computed})
    splits = ordered([s for saved in members for s in saved], SPLIT_ORDER)
    common = [s for s in splits if all(s in saved for saved in members)]
    if not common:
        raise TltkError("RUN: the runs share no evaluated split; evaluate them on the same "
                        "data (`tltk evaluate RUN`)")
    for split in common:
        for run, saved in zip(runs[1:], members[1:]):
            reason = _same_examples(members[0][split], saved[split])
            if reason:
                raise TltkError(f"RUN: {run.path} and {runs[0].path} hold different examples "
                                f"in the '{split}' split ({reason}); ensemble members must be "
                                "trained on the same data and split (same --data and --seed); "
                                "stale predictions are refreshed by `tltk evaluate RUN`")
    return [{s: saved[s] for s in common} for saved in members], sources


def ensemble_runs(run_dirs, out: str | Path, weights: str = "best") -> pd.DataFrame:
    """Average the class probabilities of runs' `weights` models on every common split.

    Writes `metrics.csv` (weights=ensemble), `ensemble.csv` / `ensemble.md` (each
    member's row and the ensemble's), `classes.json`, `ensemble.json` and
    `predictions/ensemble-<split>.npz` to `out`; returns the table.

    Example:
        >>> ensemble_runs(["runs/a", "runs/b"], "runs/a+b")[["run", "val top-1"]]
    """
    if len(run_dirs) < 2:
        raise TltkError("RUN: an ensemble needs at least two runs")
    runs = [open_run(p) for p in run_dirs]
    class_names = _check_classes(runs)
    members, sources = member_predictions(runs, weights)
    k = run_top_k(runs[0], len(class_names))
    out = Path(out)
    rows = []
    for label, member in zip(run_labels(run_dirs), members):
        rows += [{"run": label, **metrics_rows(weights, split, data["probs"], data["labels"], k)}
                 for split, data in member.items()]
    ensemble_rows = []
    for split, reference in members[0].items():
        probs = average_probs([member[split]["probs"] for member in members])
        arrays = {"probs": probs, "labels": reference["labels"]}
        if "paths" in reference:
            arrays["paths"] = reference["paths"]
        write_npz(out / "predictions" / f"ensemble-{split}.npz", **arrays)
        ensemble_rows.append(metrics_rows("ensemble", split, probs, reference["labels"], k))
    metrics = pd.DataFrame(ensemble_rows, columns=["weights", "split", "top1", "topk", "k"])
    write_csv(out / "metrics.csv", metrics)
    RunDir(out).write_json("classes.json", class_names)
    RunDir(out).write_json("ensemble.json", {
        "weights": weights, "members": [str(Path(p)) for p in run_dirs],
        "sources": [dict(s) for s in sources]})
    table = metrics_table(pd.DataFrame(rows + [{"run": "ensemble", **r} for r in ensemble_rows]),
                          index=("run", "weights"))
    write_table(table, out, name="ensemble")
    return table


# --- export ------------------------------------------------------------------------------
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
        source = run.file(f"{weights}.keras")
        if not source.is_file():
            raise TltkError(f"RUN: model file not found: {source}; is the run finished?")
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

    Example:
        >>> predict = load_exported("flowers.tflite", "tflite")
        >>> predict(np.zeros((2, 160, 160, 3), np.float32)).shape
        (2, 5)
    """
    path = Path(path)
    if fmt == "keras":
        model = load_model(path)
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
