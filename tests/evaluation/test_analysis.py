"""Confusion, per-class accuracy, most-confused pairs and mistakes on hand-built cases."""

import numpy as np
import pytest

from tltk.evaluation import analysis

CLASSES = ["malamute", "siberian_husky", "pug"]


def onehot_probs(predicted, confidence=0.8, num_classes=3):
    """Probabilities putting `confidence` on each predicted class, the rest spread evenly."""
    rest = (1 - confidence) / (num_classes - 1)
    probs = np.full((len(predicted), num_classes), rest)
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


# 4 malamutes (2 called huskies), 5 huskies (1 called malamute, 1 pug), 1 pug (right).
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
PREDICTED = np.array([0, 0, 1, 1, 1, 1, 1, 0, 2, 2])


def test_confusion_matrix_counts_true_rows_predicted_columns():
    matrix = analysis.confusion_matrix(LABELS, PREDICTED, 3)
    assert matrix.tolist() == [[2, 2, 0], [1, 3, 1], [0, 0, 1]]


def test_normalise_rows_keeps_absent_classes_at_zero():
    rates = analysis.normalise_rows(np.array([[1, 3], [0, 0]]))
    assert rates.tolist() == [[0.25, 0.75], [0.0, 0.0]]


def test_per_class_accuracy_worst_first():
    matrix = analysis.confusion_matrix(LABELS, PREDICTED, 3)
    table = analysis.per_class_accuracy(matrix, CLASSES)
    assert table["class"].tolist() == ["malamute", "siberian_husky", "pug"]
    assert table["accuracy"].tolist() == pytest.approx([50.0, 60.0, 100.0])
    assert table["support"].tolist() == [4, 5, 1]


def test_most_confused_pairs_by_count_then_rate():
    matrix = analysis.confusion_matrix(LABELS, PREDICTED, 3)
    pairs = analysis.most_confused(matrix, CLASSES, n=2)
    assert pairs.values.tolist() == [["malamute", "siberian_husky", 2, 50.0],
                                     ["siberian_husky", "malamute", 1, 20.0]]


def test_misclassified_most_confident_first_with_paths():
    probs = onehot_probs(PREDICTED)
    probs[7] = [0.95, 0.04, 0.01]  # the husky called malamute, very confidently
    paths = [f"img{i}.jpg" for i in range(len(LABELS))]
    mistakes = analysis.misclassified(probs, LABELS, CLASSES, paths, n=3)
    assert mistakes["index"].tolist() == [7, 2, 3]
    assert mistakes.loc[0, ["path", "true", "predicted"]].tolist() == [
        "img7.jpg", "siberian_husky", "malamute"]
    assert mistakes.loc[0, "confidence"] == pytest.approx(95.0)


def test_average_probs_is_the_elementwise_mean():
    a = np.array([[0.6, 0.4], [0.2, 0.8]])
    b = np.array([[0.2, 0.8], [0.4, 0.6]])
    np.testing.assert_allclose(analysis.average_probs([a, b]), [[0.4, 0.6], [0.3, 0.7]],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        analysis.average_probs([a, b[:1]])


def test_analyse_bundles_everything():
    result = analysis.analyse(onehot_probs(PREDICTED), LABELS, CLASSES)
    assert result.top1 == pytest.approx(60.0)
    assert result.num_examples == 10 and not result.has_paths
    assert "path" not in result.mistakes
    assert len(result.mistakes) == 4
