"""B6 end to end on a tiny subset: every recipe trains, is scored and lands in the JSON.

Example:
    $ python -m pytest tests/test_b6_quick.py -m slow
"""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import require_shared

# 8 training and 4 val/test images per class at 64 px, a 4 s budget per recipe: each
# recipe gets one or two epochs (tracing a train step dominates on two cores).
TINY = ["--quick", "--budget", "4", "--per-class", "8", "--eval-per-class", "4",
        "--image-size", "64", "--backbones", "mobilenetv2"]


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_run_records_every_recipe(tmp_path, monkeypatch):
    require_shared()
    from benchmarks import _common, b6_recipes

    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)  # keep the real results intact
    b6_recipes.main(TINY)
    figures = json.loads((tmp_path / "b6_recipes_quick.json").read_text())
    assert (tmp_path / "b6_recipes_quick.png").is_file()
    arms = figures["results"]["mobilenetv2"]
    assert set(arms) == set(b6_recipes.RECIPES)
    for recipe, arm in arms.items():
        assert arm["status"] == "ok", recipe
        for value in (arm["val_top1_best"], arm["test_top1"]["best"]):
            assert isinstance(value, float) and 0.0 <= value <= 1.0, (recipe, value)
        seconds = [point["seconds"] for point in arm["curve"]]
        assert seconds and all(math.isfinite(s) for s in seconds), recipe
        assert all(b >= a for a, b in zip(seconds, seconds[1:])), (recipe, seconds)
