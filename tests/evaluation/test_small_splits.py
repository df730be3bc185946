"""Small evaluation splits show each accuracy's 95 % interval, in the log and the report."""

from __future__ import annotations

import pandas as pd

from tltk.evaluation.metrics import format_table
from tltk.evaluation.reports import metrics_table

METRICS = pd.DataFrame({"weights": ["best", "best", "final", "final"],
                        "split": ["val", "test", "val", "test"],
                        "top1": [80.0, 35.0, 75.0, 40.0], "topk": [95.0, 90.0, 95.0, 85.0],
                        "k": [2, 2, 2, 2]})


def test_log_table_shows_the_interval_of_small_splits_only():
    table = format_table(METRICS, classes=5, sizes={"val": 20, "test": 649})
    header, best, final = table.splitlines()
    assert "80.00% ± 17" in best and "95.00% ± 11" in best  # val: 20 images
    assert "35.00% ±" not in best and "35.00%" in best  # test: 649 images
    assert best.index("35.00%") == final.index("40.00%"), "columns stay aligned"


def test_log_table_leaves_out_top_k_when_it_covers_every_class():
    table = format_table(METRICS, classes=2)
    assert "top-2" not in table and "95.00" not in table


def test_report_table_has_an_interval_column_beside_small_splits():
    table = metrics_table(METRICS, classes=5, sizes={"val": 20, "test": 649})
    assert list(table.columns) == ["weights", "val top-1", "val top-1 ±", "val top-2",
                                   "test top-1", "test top-2"]
    assert table["val top-1 ±"].tolist() == [17, 18]
