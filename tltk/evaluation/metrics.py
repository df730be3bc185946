"""Top-1 / top-k evaluation of best, final (and ema) weights on every split.

k is 5, or 2 when there are 5 classes or fewer (top-5 of 5 classes is always 100 %).
With test-time augmentation (`tta`), every weights also get a `<weights>+tta` row: the
softmax averaged over the image and its horizontal flip (`flip`), plus three fixed
affine views, a 10 % zoom-in and +-8 degree rotations (`flip+affine`).

Example:
    >>> topk_accuracy(np.array([[.1, .7, .2], [.5, .3, .2]]), np.array([2, 0]), k=2)
    1.0
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import tensorflow as tf

from tltk import faults
from tltk.data.core import Dataset, make_pipeline
from tltk.fileio import write_csv, write_npz
from tltk.rundir import RunDir
from tltk.saving import load_keras_file

WEIGHTS = ("best", "final")
# The fixed affine views of `flip+affine` TTA, in RandomAffine's (IDG's) parameters.
AFFINE_VIEWS = ({"zx": 0.9, "zy": 0.9}, {"theta": 8.0}, {"theta": -8.0})


# Below this many images a split's accuracy is shown with its 95 % interval: at 50 %
# accuracy the interval is then wider than +-10 points, more than the gaps between the
# recipes runs are compared on (the demo's 180 images: +-7).
SMALL_SPLIT = 100


def interval(percent: float, n: int) -> float:
    """Half the width of the 95 % Wilson interval of an accuracy, in points.

    Wilson's interval, unlike the normal approximation, is not zero at 0 % or 100 %.

    Example:
        >>> round(interval(80.0, 20), 1), round(interval(100.0, 20), 1)
        (16.8, 8.1)
    """
    z, p = 1.959964, percent / 100.0
    return float(100.0 * z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)))


def plus_minus(percent: float, n: int | None) -> str:
    """' ± 17' after an accuracy measured on a small split (`SMALL_SPLIT`), else ''.

    Example:
        >>> plus_minus(80.0, 20), plus_minus(80.0, 649)
        (' ± 17', '')
    """
    if not n or n >= SMALL_SPLIT or not np.isfinite(percent):
        return ""
    return f" ± {interval(percent, n):.0f}"


def small_splits_warning(sizes: dict[str, int]) -> str | None:
    """The one warning a run gives at its start when an evaluation split is small.

    Example:
        >>> print(small_splits_warning({"val": 20, "test": 20}))
        val has 20 images and test 20: their accuracies are uncertain by up to ± 20 points
        (95 % interval), shown next to each figure; more images (or larger val/test
        fractions) narrow it
    """
    small = {name: n for name, n in sizes.items() if 0 < n < SMALL_SPLIT}
    if not small:
        return None
    names = list(small)
    counts = f"{names[0]} has {small[names[0]]} images" + "".join(
        f" and {name} {small[name]}" for name in names[1:])
    their = "their accuracies are" if len(small) > 1 else "its accuracy is"
    return (f"{counts}: {their} uncertain by up to ± {interval(50.0, min(small.values())):.0f} "
            "points (95 % interval), shown next to each figure; more images (or larger "
            "val/test fractions) narrow it")


def default_k(num_classes: int) -> int:
    return 2 if num_classes <= 5 else 5


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest probabilities.

    Ties are broken towards the lower class index, as `np.argsort` is stable.
    """
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(order == labels[:, None], axis=1)))


def tta_views(tta: str) -> list:
    """The views of a TTA mode as functions of a float `[B, H, W, C]` batch.

    Example:
        >>> len(tta_views("flip")), len(tta_views("flip+affine"))
        (2, 5)
    """
    if tta == "none":
        return [tf.identity]
    views = [tf.identity, lambda x: tf.reverse(x, axis=[2])]  # axis 2: the image's width
    if tta == "flip+affine":
        from tltk.data.augment import RandomAffine

        warp = RandomAffine()
        views += [lambda x, p=params: warp.apply_transform(x, p) for params in AFFINE_VIEWS]
    return views


def predict_split(model, dataset: Dataset, split: str, image_size: int, batch_size: int,
                  resize_policy: str = "stretch", tta: str = "none") -> np.ndarray:
    """Class probabilities for every example of a split, in order; with `tta`, the
    mean of the softmax over the views of `tta_views`."""
    ds = make_pipeline(dataset.splits[split], image_size, batch_size, training=False, seed=0,
                       resize_policy=resize_policy, cache=False)
    images = ds.map(lambda x, y: x)
    return np.mean([model.predict(images.map(view), verbose=0) for view in tta_views(tta)],
                   axis=0)


def metrics_rows(weights: str, split: str, probs: np.ndarray, labels: np.ndarray,
                 k: int) -> dict:
    return {"weights": weights, "split": split,
            "top1": round(100 * topk_accuracy(probs, labels, 1), 2),
            "topk": round(100 * topk_accuracy(probs, labels, k), 2), "k": k}


def evaluate_models(models: dict, dataset: Dataset, run: RunDir, image_size: int,
                    batch_size: int, k: int, resize_policy: str = "stretch",
                    write: bool = True, tta: str = "none",
                    features: Callable[[str], np.ndarray] | None = None) -> pd.DataFrame:
    """Evaluate {"best": model, "final": model, ...} on every eval split.

    With `tta` other than none, each weights also gets `<weights>+tta` rows. With
    `write`, the table goes to metrics.csv and predictions to
    `predictions/<weights>-<split>.npz` (for reports and ensembles). `features(split)`,
    the pooled features every model's backbone gives (they share its weights), lets
    each model's head classify them instead of its whole network the images.
    """
    rows = []
    modes = ["none"] if tta == "none" else ["none", tta]
    for name, model in models.items():
        for mode in modes:
            weights = name if mode == "none" else f"{name}+tta"
            for split in dataset.eval_splits():
                data = dataset.splits[split]
                probs = (predict_split(model, dataset, split, image_size, batch_size,
                                       resize_policy, mode) if features is None or tta != "none"
                         else model.get_layer("head").predict(features(split),
                                                              batch_size=batch_size, verbose=0))
                arrays = {"probs": probs.astype(np.float32), "labels": data.labels}
                if data.paths is not None:
                    arrays["paths"] = np.asarray(data.paths)
                if write:
                    write_npz(run.file("predictions") / f"{weights}-{split}.npz", **arrays)
                    faults.fault_point(f"evaluate:{weights}-{split}")
                rows.append(metrics_rows(weights, split, probs, data.labels, k))
    table = pd.DataFrame(rows, columns=["weights", "split", "top1", "topk", "k"])
    if write:
        write_csv(run.file("metrics.csv"), table)
    return table


def covers_all(ks, classes: int | None) -> bool:
    """Whether top-k says nothing: k reaches the number of classes (always 100 %).

    Example:
        >>> covers_all([2], 2), covers_all([2], 5), covers_all([5], None)
        (True, False, False)
    """
    return classes is not None and len(ks) > 0 and min(int(k) for k in ks) >= classes


def format_table(metrics: pd.DataFrame, classes: int | None = None,
                 sizes: dict[str, int] | None = None) -> str:
    """The thesis's layout: rows = weights, columns = split x {top-1, top-k}; top-k is
    left out when k covers all `classes`, and a small split (`sizes`, images per
    split) shows each figure's 95 % interval (`plus_minus`)."""
    k = int(metrics["k"].iloc[0])
    values = ["top1"] if covers_all([k], classes) else ["top1", "topk"]
    wide = metrics.pivot(index="weights", columns="split", values=values)
    splits = list(dict.fromkeys(metrics["split"]))
    width = max(8, *(len(w) + 1 for w in metrics["weights"]))  # e.g. "final+tta"
    labels = {"top1": "top-1", "topk": f"top-{k}"}
    sizes = sizes or {}
    cell = {s: 18 if plus_minus(50.0, sizes.get(s)) else 13 for s in splits}
    header = f"{'weights':<{width}}" + "".join(f"{s + ' ' + labels[v]:>{cell[s]}}"
                                         for s in splits for v in values)
    lines = [header]
    for weights in dict.fromkeys(metrics["weights"]):
        cells = "".join(
            f"{_figure(wide.loc[weights, (v, s)], sizes.get(s)):>{cell[s]}}"
            for s in splits for v in values)
        lines.append(f"{weights:<{width}}{cells}".rstrip())
    return "\n".join(lines)


def _figure(percent: float, n: int | None) -> str:
    # "± 9 " and "± 17" take the same width, so the figures stay aligned.
    spread = plus_minus(percent, n)
    return f"{percent:.2f}%{spread:<5}" if spread else f"{percent:.2f}%"


def evaluate_run(run_dir, which: str = "both", write: bool = False) -> pd.DataFrame:
    """Reload a run's saved models and its data, re-evaluate, print and return the table.

    The run's own metrics.csv is left as it is (this is a check), unless `write`: then
    metrics.csv and predictions/ are rewritten, e.g. after they were damaged.
    """
    import keras

    from tltk import data as tltk_data
    from tltk.config import RunConfig
    from tltk.errors import TltkError
    from tltk.rundir import open_run
    from tltk.saving import check_classes

    run = open_run(run_dir)
    if write and which != "both":
        raise TltkError("--write: metrics.csv holds both weights; leave out --weights")
    config = RunConfig.load(run.file("config.yaml"))
    dataset = tltk_data.load(config.data, seed=config.seed)
    names = WEIGHTS if which == "both" else (which,)
    if which == "both" and run.file("ema.keras").is_file():
        names = (*names, "ema")
    models = {w: load_keras_file(run.file(f"{w}.keras")) for w in names}
    for weights, model in models.items():  # a model file from a run on other classes
        check_classes(model, dataset.class_names, run.file(f"{weights}.keras"),
                      run.file("config.yaml"))
    size = next(iter(models.values())).input_shape[1]
    k = config.top_k or default_k(dataset.num_classes)
    table = evaluate_models(models, dataset, run, size, config.batch_size, k,
                            config.data.resize, write=write, tta=config.tta)
    print(format_table(table, dataset.num_classes, dataset.sizes()))
    keras.backend.clear_session()
    return table
