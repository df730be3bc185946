"""Export a run's model and measure each export on the run's own data.

Each export is evaluated on the run's test split (val when there is none) with the
pipeline's own decoding and resizing: top-1 and top-k, their change against the Keras
model, the share of images whose top-1 agrees with it, the file size, and the median
latency per image at batch 1 with 1 and with 2 threads. One row per export is appended
to `RUN/exports.csv`.

Example::

    rows = export_and_measure("runs/flowers", [("tflite", "int8")])
    rows[0]["agreement"]  # e.g. 99.2 (% of test images)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tltk import data as tltk_data
from tltk.config import RunConfig
from tltk.data.core import decode_split, subsample_per_class, subset
from tltk.errors import TltkError
from tltk.evaluation.export import check_target, export_model, load_exported
from tltk.evaluation.metrics import default_k, topk_accuracy
from tltk.evaluation.runmodel import input_size, load_run_model, resize_policy
from tltk.fileio import read_csv, write_csv
from tltk.rundir import open_run

# (format, quantization) -> file name under the export folder; `--format all` writes all.
FILE_NAMES = {("keras", "none"): "model.keras", ("savedmodel", "none"): "saved_model",
              ("tflite", "none"): "model.tflite", ("tflite", "dynamic"): "model-dynamic.tflite",
              ("tflite", "float16"): "model-float16.tflite",
              ("tflite", "int8"): "model-int8.tflite"}
EXPORTS_CSV = "exports.csv"
COLUMNS = ["format", "quantization", "io", "file", "size_kb", "split", "images", "k", "top1",
           "topk", "top1_change", "topk_change", "agreement", "ms_1thread", "ms_2threads"]
# Calibration only estimates each activation's range; the TFLite guide suggests
# 100-500 samples. 40 per class (200 for flowers-128's five) covers every class evenly.
CALIBRATION_PER_CLASS = 40
# Batch-1 latency: the median of 30 timed images after 3 warm-up calls.
LATENCY_IMAGES, WARMUP = 30, 3
THREADS = (1, 2)


def export_and_measure(run_dir, exports, out_dir=None, weights: str = "best",
                       int8_io: str = "uint8", out=None) -> list[dict]:
    """Write each (format, quantization) of `exports`, measure it and append its row.

    Files go to `out` (one export) or `out_dir` / FILE_NAMES (default `RUN/exports/`).
    The data is checked before anything is written: an int8 export needs the run's
    training images (calibration), every export its test (or val) images.
    """
    run = open_run(run_dir)
    out_dir = Path(out_dir) if out_dir else run.file("exports")
    targets = [Path(out) if out else out_dir / FILE_NAMES[pair] for pair in exports]
    for (fmt, _), path in zip(exports, targets):
        check_target(fmt, path)  # before the data is loaded: a wrong --out fails at once
    config = RunConfig.load(run.file("config.yaml"))
    model = load_run_model(run.path, weights)
    calibrate = any(quantize == "int8" for _, quantize in exports)
    data = _measuring_data(config, input_size(model), resize_policy(run), calibrate)
    reference = _predict(lambda x: np.asarray(model.predict_on_batch(x)), data["images"])
    rows = []
    for (fmt, quantize), path in zip(exports, targets):
        export_model(run.path, fmt, path, weights, quantize, int8_io, data["representative"])
        probs = _predict(load_exported(path, fmt), data["images"])
        row = {"format": fmt, "quantization": quantize,
               "io": int8_io if quantize == "int8" else "float32", "file": str(path),
               "size_kb": round(_size(path) / 1e3, 1), "split": data["split"],
               "images": len(data["labels"]), "k": data["k"],
               **_accuracy(probs, reference, data["labels"], data["k"]),
               **{_latency_column(n): latency(path, fmt, n, data["images"]) for n in THREADS}}
        append_row(run.file(EXPORTS_CSV), row)
        rows.append(row)
    return rows


def _measuring_data(config: RunConfig, size: int, policy: str, calibrate: bool) -> dict:
    """The evaluation split's uint8 images and labels, k, and (`calibrate`) the int8
    calibration images; a one-line error when the images they need are gone."""
    calibration_need = "--quantize int8 calibrates on the run's training images"
    dataset = _load_data(config, calibration_need if calibrate else
                         "measuring an export needs the run's evaluation images")
    split = "test" if len(dataset.splits.get("test", [])) else "val"
    representative = None
    if calibrate:
        train = dataset.splits.get("train")
        _require_files(train, calibration_need)
        keep = subsample_per_class(train.labels, CALIBRATION_PER_CLASS, config.seed)
        representative = decode_split(subset(train, keep), size, resize_policy=policy)
    _require_files(dataset.splits[split], f"measuring an export needs the run's {split} images")
    return {"split": split, "labels": dataset.splits[split].labels,
            "images": decode_split(dataset.splits[split], size, resize_policy=policy),
            "representative": representative,
            "k": config.top_k or default_k(dataset.num_classes)}


def _load_data(config: RunConfig, need: str):
    try:
        return tltk_data.load(config.data, seed=config.seed)
    except TltkError as exc:
        raise TltkError(f"{need}, which cannot be loaded: {exc}") from None


def _require_files(split, need: str) -> None:
    """A one-line error naming the missing images of a file-backed split."""
    if split is None or len(split) == 0:
        raise TltkError(f"{need}, but the run has none")
    missing = [p for p in (split.paths or []) if not os.path.isfile(p)]
    if missing:
        raise TltkError(f"{need}, but {len(missing)} of {len(split)} are missing (first: "
                        f"{missing[0]}); restore them where the run found them")


def _predict(predict, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([predict(images[i:i + batch_size].astype(np.float32))
                           for i in range(0, len(images), batch_size)])


def _accuracy(probs, reference, labels, k: int) -> dict:
    ours = {"top1": topk_accuracy(probs, labels, 1), "topk": topk_accuracy(probs, labels, k)}
    keras = {"top1": topk_accuracy(reference, labels, 1),
             "topk": topk_accuracy(reference, labels, k)}
    agreement = np.mean(probs.argmax(axis=1) == reference.argmax(axis=1))
    return {"top1": round(100 * ours["top1"], 2), "topk": round(100 * ours["topk"], 2),
            "top1_change": round(100 * (ours["top1"] - keras["top1"]), 2),
            "topk_change": round(100 * (ours["topk"] - keras["topk"]), 2),
            "agreement": round(100 * agreement, 2)}


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _latency_column(threads: int) -> str:
    return f"ms_{threads}thread" + ("s" if threads > 1 else "")


def median_latency(predict, images: np.ndarray) -> float:
    """Median milliseconds of `predict` on one image (batch 1), after warm-up calls."""
    for image in images[:WARMUP]:
        predict(image[None].astype(np.float32))
    times = []
    for image in images[:LATENCY_IMAGES]:
        batch = image[None].astype(np.float32)
        start = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 2)


def latency(path: Path, fmt: str, threads: int, images: np.ndarray) -> float:
    """Median batch-1 latency (ms) of an export with `threads` threads.

    TFLite sets its threads per interpreter. TensorFlow fixes its thread pools when its
    runtime starts, so `.keras` and SavedModel exports are timed in a fresh process.
    """
    if fmt == "tflite":
        return median_latency(load_exported(path, fmt, threads), images)
    with tempfile.TemporaryDirectory(prefix="tltk-latency-") as tmp:
        np.save(Path(tmp) / "images.npy", images[:LATENCY_IMAGES])
        code = ("import sys; from tltk.evaluation.measure import _timed_in_process as t; "
                "t(*sys.argv[1:])")
        result = subprocess.run([sys.executable, "-c", code, str(path), fmt, str(threads),
                                 str(Path(tmp) / "images.npy")], capture_output=True,
                                text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise TltkError(f"{path}: timing it in a fresh process failed: {tail}")
    return float(result.stdout.strip().splitlines()[-1])


def _timed_in_process(path: str, fmt: str, threads: str, images: str) -> None:
    """Print an export's median batch-1 latency, with TF's thread pools set first."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(median_latency(load_exported(Path(path), fmt), np.load(images, allow_pickle=False)))


def append_row(path: Path, row: dict) -> None:
    """Append one row to exports.csv (the whole file is rewritten atomically)."""
    old = read_csv(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)
    frame = pd.concat([old, pd.DataFrame([row], columns=COLUMNS)], ignore_index=True) \
        if len(old) else pd.DataFrame([row], columns=COLUMNS)
    write_csv(path, frame)


def format_rows(rows: list[dict]) -> str:
    """The measured rows as a Markdown table (sizes in kB, accuracies and changes in %)."""
    from tltk.evaluation.reports import to_markdown

    frame = pd.DataFrame(rows, columns=COLUMNS).drop(columns=["file", "split", "images", "k"])
    return to_markdown(frame, floatfmt=".2f")
