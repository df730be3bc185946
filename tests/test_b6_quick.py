"""B6 (history; B9 replaced it, and tests/test_b9_quick.py runs a race end to end):
its variant arms and `--update` merging, checked without training.

Example:
    $ python -m pytest tests/test_b6_quick.py
"""

from __future__ import annotations

import argparse
import json

import pytest

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
