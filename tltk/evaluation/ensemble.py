"""Ensembles: average the best models of several runs on the same examples.

Example::

    ensemble_runs(["runs/vgg19", "runs/resnet50"], out="runs/ensemble")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tltk.errors import TltkError
from tltk.evaluation.analysis import average_probs
from tltk.evaluation.metrics import metrics_rows, predict_split
from tltk.evaluation.reports import (
    SPLIT_ORDER,
    metrics_table,
    ordered,
    prediction_files,
    run_labels,
    run_top_k,
    write_table,
)
from tltk.evaluation.runmodel import input_size, load_run_model
from tltk.fileio import REEVALUATE, damaged, write_csv, write_npz
from tltk.rundir import RunDir, open_run


def _saved_predictions(run: RunDir, weights: str) -> dict[str, dict]:
    saved = {split: run.predictions(w, split) for w, split in prediction_files(run)
             if w == weights}
    classes = len(run.class_names())
    for split, arrays in saved.items():
        if arrays["probs"].shape[1] != classes:  # a file from a run on other classes
            raise damaged(run.file("predictions") / f"{weights}-{split}.npz",
                          f"damaged (probabilities of {arrays['probs'].shape[1]} classes, the "
                          f"run has {classes})", REEVALUATE)
    return saved


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
                        "data (`tltk evaluate RUN --write`)")
    for split in common:
        for run, saved in zip(runs[1:], members[1:]):
            reason = _same_examples(members[0][split], saved[split])
            if reason:
                raise TltkError(f"RUN: {run.path} and {runs[0].path} hold different examples "
                                f"in the '{split}' split ({reason}); ensemble members must be "
                                "trained on the same data and split (same --data and --seed); "
                                "stale predictions are refreshed by `tltk evaluate RUN --write`")
    return [{s: saved[s] for s in common} for saved in members], sources


def ensemble_runs(run_dirs, out: str | Path, weights: str = "best") -> pd.DataFrame:
    """Average the class probabilities of runs' `weights` models on every common split.

    Writes `metrics.csv` (weights=ensemble), `ensemble.csv` / `ensemble.md` (each
    member's row and the ensemble's), `classes.json`, `ensemble.json` and
    `predictions/ensemble-<split>.npz` to `out`; returns the table.

    Example::

        ensemble_runs(["runs/a", "runs/b"], "runs/a+b")[["run", "val top-1"]]
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


