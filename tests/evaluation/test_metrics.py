"""Top-k accuracy against a brute-force reference, and the thesis-style table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.evaluation.conftest import SIZE, tiny_model
from tltk.evaluation.metrics import (
    AFFINE_VIEWS,
    default_k,
    format_table,
    predict_split,
    topk_accuracy,
)


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


def _folder_dataset(data_root):
    from tltk import data as tltk_data
    from tltk.config import DataConfig

    return tltk_data.load(DataConfig(dataset="folder", path=str(data_root), val_fraction=0.34,
                                     test_fraction=0.34))


def _images(dataset, split):
    from tltk.data.core import make_pipeline

    ds = make_pipeline(dataset.splits[split], SIZE, 4, training=False, seed=0, cache=False)
    return np.concatenate([x for x, _ in ds.as_numpy_iterator()])


def test_flip_tta_averages_the_softmax_of_the_image_and_its_mirror(data_root):
    model = tiny_model(seed=3)
    dataset = _folder_dataset(data_root)
    images = _images(dataset, "val")
    manual = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 2
    got = predict_split(model, dataset, "val", SIZE, 4, tta="flip")
    np.testing.assert_allclose(got, manual, rtol=1e-5, atol=1e-6)
    plain = predict_split(model, dataset, "val", SIZE, 4)
    assert not np.allclose(plain, got)  # the mirror really is another view


@pytest.mark.slow
def test_flip_affine_tta_adds_the_fixed_affine_views(data_root):
    from tltk.data.augment import RandomAffine

    model = tiny_model(seed=3)
    dataset = _folder_dataset(data_root)
    images = _images(dataset, "val")
    warp = RandomAffine()
    views = [images, images[:, :, ::-1],
             *(warp.apply_transform(images, params).numpy() for params in AFFINE_VIEWS)]
    manual = np.mean([model.predict(v, verbose=0) for v in views], axis=0)
    got = predict_split(model, dataset, "val", SIZE, 4, tta="flip+affine")
    np.testing.assert_allclose(got, manual, rtol=1e-5, atol=1e-6)
    assert AFFINE_VIEWS[0] == {"zx": 0.9, "zy": 0.9}  # the zoom-in the README names


@pytest.mark.slow
def test_tta_rows_sit_beside_the_plain_ones(data_root, tmp_path):
    from tltk.evaluation.metrics import evaluate_models
    from tltk.rundir import RunDir

    dataset = _folder_dataset(data_root)
    run = RunDir.create(tmp_path / "run", "recipe: test\n")
    models = {"best": tiny_model(seed=1), "final": tiny_model(seed=2)}
    table = evaluate_models(models, dataset, run, SIZE, 4, k=2, tta="flip")
    assert list(dict.fromkeys(table["weights"])) == ["best", "best+tta", "final", "final+tta"]
    saved = np.load(run.file("predictions") / "best+tta-test.npz")
    labels = dataset.splits["test"].labels
    expected = predict_split(models["best"], dataset, "test", SIZE, 4, tta="flip")
    np.testing.assert_allclose(saved["probs"], expected, rtol=1e-5, atol=1e-6)
    row = table.set_index(["weights", "split"]).loc[("best+tta", "test")]
    assert row["top1"] == round(100 * topk_accuracy(expected, labels, 1), 2)
    assert format_table(table).splitlines()[2].split()[0] == "best+tta"
