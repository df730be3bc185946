"""Top-k accuracy against a brute-force reference, and the thesis-style table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tltk.evaluation.metrics import default_k, format_table, topk_accuracy


def reference_topk(probs, labels, k):
    hits = 0
    for row, label in zip(probs, labels):
        # Rank of the label: how many classes score strictly higher, ties to lower index.
        higher = sum(1 for c, p in enumerate(row)
                     if p > row[label] or (p == row[label] and c < label))
        hits += higher < k
    return hits / len(labels)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_matches_a_brute_force_reference(k):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=200)
    probs[:20] = np.round(probs[:20], 1)  # plenty of ties
    labels = rng.integers(0, 7, 200)
    assert topk_accuracy(probs, labels, k) == pytest.approx(reference_topk(probs, labels, k))


def test_default_k_is_two_for_five_classes_or_fewer():
    assert [default_k(n) for n in (2, 5, 6, 120)] == [2, 2, 5, 5]


def test_table_layout_rows_are_weights_columns_are_split_by_metric():
    metrics = pd.DataFrame([
        {"weights": w, "split": s, "top1": t1, "topk": t5, "k": 5}
        for w, s, t1, t5 in [("best", "val", 75.5, 94.0), ("best", "test", 74.75, 93.0),
                             ("final", "val", 74.0, 93.5), ("final", "test", 73.0, 92.0)]])
    lines = format_table(metrics).splitlines()
    assert lines[0].split() == ["weights", "val", "top-1", "val", "top-5", "test", "top-1",
                                "test", "top-5"]
    assert lines[1].split() == ["best", "75.50%", "94.00%", "74.75%", "93.00%"]
    assert lines[2].split()[0] == "final"
