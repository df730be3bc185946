"""B6 end to end on a tiny subset: every recipe trains, is scored and lands in the JSON;
its variant arms and `--update` merging, checked without training.

Example:
    $ python -m pytest tests/test_b6_quick.py -m slow
"""

from __future__ import annotations

import argparse
import json
import math

import pytest

from tests.conftest import require_shared

# 8 training and 4 val/test images per class at 32 px (MobileNetV2's minimum), a 4 s
# budget per recipe: each recipe gets one or two epochs (tracing a train step dominates
# on two cores).
TINY = ["--quick", "--budget", "4", "--per-class", "8", "--eval-per-class", "4",
        "--image-size", "32", "--backbones", "mobilenetv2"]


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


# --- the variant arms and --update, without training ----------------------------------

def test_variant_arms_change_one_field_of_the_recipe_they_were_measured_on():
    from benchmarks import b6_recipes
    from benchmarks.peers import BACKBONES

    bb = BACKBONES["lite0"](160)
    former = b6_recipes.tltk_config(bb, 360, "ft_constant")
    constant = former.stage("finetune")
    assert constant.epochs == 360, "a constant rate runs until the budget"
    assert (constant.schedule, constant.lr) == ("constant", 1e-5)
    onecycle = b6_recipes.tltk_config(bb, 360, "ft_onecycle")
    assert onecycle == b6_recipes.tltk_config(bb, 360), "folder's default as measured"
    finetune = onecycle.stage("finetune")
    assert (finetune.schedule, finetune.lr, finetune.epochs) == ("onecycle", 1e-4, 5)
    ema = b6_recipes.tltk_config(bb, 360, "ft_ema").stage("finetune")
    assert (ema.ema, ema.epochs) == (0.99, 4)
    smoothing = b6_recipes.tltk_config(bb, 360, "ft_smoothing")
    changed = {k for k, v in smoothing.stage("finetune").__dict__.items()
               if v != former.stage("finetune").__dict__[k]}
    assert changed == {"label_smoothing"}
    assert b6_recipes.recipe_list("tltk,fastai,tltk:ft_ema") == ("tltk", "fastai", "tltk:ft_ema")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown tltk:ft_nothing"):
        b6_recipes.recipe_list("tltk:ft_nothing")


def arm(best: float) -> dict:
    return {"status": "ok", "val_top1_best": best,
            "curve": [{"seconds": 10.0, "val_top1": best / 2}, {"seconds": 20.0, "val_top1": best}]}


def test_update_replaces_only_the_rerun_arms_and_recomputes_targets(tmp_path):
    from benchmarks import b6_recipes

    settings = {"budget_s": 360.0, "train_per_class": None, "eval_per_class": None,
                "image_size": None}
    old = {"settings": settings, "split": {"seed": 0, "train": 3019},
           "results": {"lite0": {"thesis": arm(0.8), "tltk": arm(0.7)}},
           "targets": {}, "machine": {"date": "before"}}
    path = tmp_path / "b6_recipes.json"
    path.write_text(json.dumps(old))
    new = {"settings": {**settings, "recipes": ["tltk"]}, "split": old["split"],
           "results": {"lite0": {"tltk": arm(0.9)}}, "machine": {"date": "after"}}
    merged = b6_recipes.updated(new, path)
    arms = merged["results"]["lite0"]
    assert arms["thesis"]["curve"] == arm(0.8)["curve"] and arms["tltk"]["val_top1_best"] == 0.9
    assert merged["targets"]["lite0"]["best_peer_val_top1"] == 0.8  # peers only
    assert arms["tltk"]["seconds_to"] == {"90%": 20.0, "95%": 20.0}
    assert merged["updates"] == [{"recipes": ["tltk"], "backbones": ["lite0"],
                                  "machine": {"date": "after"}}]
    assert merged["machine"] == {"date": "before"}
    other = {**new, "settings": {**new["settings"], "budget_s": 30.0}}
    with pytest.raises(SystemExit, match="other settings"):
        b6_recipes.updated(other, path)
