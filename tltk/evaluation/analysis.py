"""Analysis of saved predictions: accuracy, confusion, most-confused pairs, mistakes.

Everything here is numpy/pandas over `probs` [N, C] and integer `labels` [N] (the
arrays of `predictions/<weights>-<split>.npz`), so it is cheap to test and reuse.
Accuracies and rates are percentages, like `metrics.csv`.

Example:
    >>> probs = np.array([[.9, .1], [.4, .6], [.7, .3]])
    >>> labels = np.array([0, 1, 1])
    >>> confusion_matrix(labels, probs.argmax(1), 2).tolist()
    [[1, 0], [1, 1]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tltk.evaluation.metrics import topk_accuracy


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true, predicted] as an int64 matrix of shape [C, C]."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predicted, np.int64)
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the fraction of a true class predicted as each class).

    Rows of classes absent from the split stay zero instead of becoming NaN.
    """
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def per_class_accuracy(matrix: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per class: support, correct and accuracy (%), worst classes first."""
    support = matrix.sum(axis=1)
    correct = np.diag(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(support > 0, 100.0 * correct / np.maximum(support, 1), np.nan)
    frame = pd.DataFrame({"class": class_names, "support": support, "correct": correct,
                          "accuracy": accuracy})
    return frame.sort_values(["accuracy", "class"], kind="stable").reset_index(drop=True)


def per_class_scores(matrix: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Precision, recall and F1 (%) per class from a confusion matrix [true, predicted].

    Example:
        >>> per_class_scores(np.array([[8, 2], [4, 6]]), ["a", "b"]).round(1).values.tolist()
        [['a', 10, 66.7, 80.0, 72.7], ['b', 10, 75.0, 60.0, 66.7]]
    """
    from sklearn.metrics import precision_recall_fscore_support

    classes = np.arange(len(class_names))
    # The matrix back to one (true, predicted) pair per example; cell [t, p] is ravel t*C+p.
    true = np.repeat(np.repeat(classes, len(classes)), matrix.ravel())
    pred = np.repeat(np.tile(classes, len(classes)), matrix.ravel())
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=classes, zero_division=0)
    return pd.DataFrame({"class": class_names, "support": support, "precision": 100 * precision,
                         "recall": 100 * recall, "f1": 100 * f1})


def mistakes_table(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                   paths=None) -> pd.DataFrame:
    """Every misclassified example, most confident first: file (or index), true label,
    predicted label, confidence (%) and loss (cross-entropy of the true label).

    Example:
        >>> mistakes_table(np.array([[.9, .1], [.3, .7]]), np.array([1, 1]), ["a", "b"],
        ...                ["x.jpg", "y.jpg"]).round(3).values.tolist()
        [['x.jpg', 'b', 'a', 90.0, 2.303]]
    """
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]
    return pd.DataFrame({
        "file": [str(paths[i]) for i in order] if paths is not None else order,
        "true": [class_names[labels[i]] for i in order],
        "predicted": [class_names[predicted[i]] for i in order],
        "confidence": 100.0 * probs[order, predicted[order]],
        "loss": -np.log(np.maximum(probs[order, labels[order]].astype(np.float64), 1e-12)),
    })


def most_confused(matrix: np.ndarray, class_names: list[str], n: int = 10) -> pd.DataFrame:
    """The `n` largest off-diagonal cells: true, predicted, count and rate.

    `rate` is the percentage of the true class's examples predicted as `predicted`.

    Example:
        >>> m = np.array([[8, 2], [5, 5]])
        >>> most_confused(m, ["malamute", "husky"]).values.tolist()
        [['husky', 'malamute', 5, 50.0], ['malamute', 'husky', 2, 20.0]]
    """
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    true, pred = np.nonzero(off)
    support = matrix.sum(axis=1)
    frame = pd.DataFrame({
        "true": [class_names[i] for i in true],
        "predicted": [class_names[j] for j in pred],
        "count": off[true, pred].astype(np.int64),
        "rate": 100.0 * off[true, pred] / support[true],
    })
    frame = frame.sort_values(["count", "rate", "true", "predicted"],
                              ascending=[False, False, True, True], kind="stable")
    return frame.head(n).reset_index(drop=True)


def misclassified(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                  paths=None, n: int = 16) -> pd.DataFrame:
    """The `n` most confident mistakes: index, (path), true, predicted, confidence (%)."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:n]
    frame = pd.DataFrame({
        "index": order,
        "true": [class_names[labels[i]] for i in order],
        "predicted": [class_names[predicted[i]] for i in order],
        "confidence": 100.0 * probs[order, predicted[order]],
    })
    if paths is not None:
        frame.insert(1, "path", [str(paths[i]) for i in order])
    return frame


def average_probs(members: list[np.ndarray]) -> np.ndarray:
    """The ensemble's class probabilities: the mean of its members' [N, C] probabilities."""
    shapes = {np.shape(p) for p in members}
    if len(shapes) != 1:
        raise ValueError(f"members' probabilities differ in shape: {sorted(shapes)}")
    return np.mean(np.stack(members).astype(np.float64), axis=0).astype(np.float32)


@dataclass
class Analysis:
    """Everything the report shows for one prediction file."""

    matrix: np.ndarray  # counts [true, predicted]
    per_class: pd.DataFrame
    scores: pd.DataFrame  # precision, recall, F1 per class
    confused: pd.DataFrame
    mistakes: pd.DataFrame
    top1: float
    num_examples: int
    has_paths: bool


def analyse(probs: np.ndarray, labels: np.ndarray, class_names: list[str], paths=None,
            top_pairs: int = 10, max_mistakes: int = 16) -> Analysis:
    """Run every analysis over one split's predictions.

    Example:
        >>> a = analyse(np.eye(3)[[0, 1, 1]], np.array([0, 1, 2]), ["a", "b", "c"])
        >>> a.confused.values.tolist()
        [['c', 'b', 1, 100.0]]
    """
    labels = np.asarray(labels, dtype=np.int64)
    matrix = confusion_matrix(labels, probs.argmax(axis=1), len(class_names))
    return Analysis(
        matrix=matrix,
        per_class=per_class_accuracy(matrix, class_names),
        scores=per_class_scores(matrix, class_names),
        confused=most_confused(matrix, class_names, top_pairs),
        mistakes=misclassified(probs, labels, class_names, paths, max_mistakes),
        top1=100.0 * topk_accuracy(probs, labels, 1),
        num_examples=len(labels),
        has_paths=paths is not None,
    )
