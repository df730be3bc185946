"""PNG figures (tltk.evaluation.plots): learning curves, confusion matrices, mistakes."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.evaluation.conftest import assert_png, write_history
from tltk.evaluation import plots


def test_learning_curves_png_marks_stages(tmp_path):
    write_history(tmp_path / "history.csv")
    history = pd.read_csv(tmp_path / "history.csv")
    assert plots.stage_spans(history) == [("head", 0, 2), ("finetune", 3, 4)]
    assert_png(plots.plot_learning_curves(history, tmp_path / "curves.png", k=2))


@pytest.mark.slow
def test_confusion_plot_scales_with_120_classes(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"breed_{i:03d}" for i in range(120)]
    matrix = rng.integers(0, 5, (120, 120)) + np.eye(120, dtype=int) * 20
    small = assert_png(plots.plot_confusion(matrix[:5, :5], names[:5], tmp_path / "small.png"))
    large = assert_png(plots.plot_confusion(matrix, names, tmp_path / "large.png"))
    # 120 rows of labels need roughly 0.16 in (16 px at 100 dpi) each.
    assert large[1] > 120 * 14 and large[1] > 2.5 * small[1]


def test_confusion_figure_grows_with_the_class_count():
    assert plots.confusion_figure_size(5) == (6.0, 10)
    assert plots.confusion_figure_size(120) == (22.2, 7)


def test_misclassified_grid_shows_unreadable_images_too(tmp_path):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "rose.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    mistakes = pd.DataFrame({"path": [str(tmp_path / "rose.png"), str(tmp_path / "broken.jpg")],
                             "true": ["rose", "tulip"], "predicted": ["tulip", "rose"],
                             "confidence": [71.0, 55.0]})
    width, height = assert_png(plots.plot_misclassified(mistakes, tmp_path / "mistakes.png"))
    assert width > height  # one row of two thumbnails
    assert not list(tmp_path.glob(".mistakes.png.*"))  # written atomically
