"""B9: the race's bookkeeping without training (rotation, the long rung's best peers,
reruns of runs on a busy machine, the goals), and one real quick race on a tiny model.

Example:
    $ python -m pytest tests/test_b9_quick.py -m "not slow"
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import b9_fair_race as b9
from tests.conftest import require_shared
from tests.tiny import tiny_model_file


def record(rung: str, arm: str, seed: int, test: float, budget: float = 120.0, **extra):
    return {"rung": rung, "arm": arm, "seed": seed, "status": "ok", "test_top1": test,
            "val_top1_best": test, "clock_s": budget, "budget_s": budget,
            "cpu_per_wall": 1.8, **extra}


def test_rounds_rotate_the_arms_and_the_long_rung_takes_the_best_peers(monkeypatch, tmp_path):
    scores = {"tltk": 0.80, "fastai": 0.70, "keras_guide": 0.78, "mediapipe": 0.72,
              "thesis": 0.76}
    calls = []

    def fake_run(rung, arm, seed, settings, data, work):
        calls.append((rung.name, arm, seed))
        busy = rung.name == "1min" and arm == "thesis" and seed == 2 and work.name != "rerun"
        return record(rung.name, arm, seed, scores[arm] + seed / 1000, rung.budget_s,
                      cpu_per_wall=0.9 if busy else 1.8, few_shot=rung.few_shot)

    monkeypatch.setattr(b9, "run_one", fake_run)
    monkeypatch.setattr(b9, "split", lambda settings, few_shot: None)
    settings = b9.Settings(b9.ladder((60,), (1, 2), 180, 2, 60, (1,)))
    records = b9.race(settings, tmp_path)
    first, second = ([arm for rung, arm, seed in calls[:10] if seed == s] for s in (1, 2))
    assert first == list(b9.ARMS) and second == [*b9.ARMS[1:], b9.ARMS[0]]
    assert [c for c in calls if c[0] == "few-shot 1min"][0][1] == b9.ARMS[2]
    assert {arm for rung, arm, _ in calls if rung == "3min"} == {"tltk", "keras_guide", "thesis"}
    assert calls[-1] == ("1min", "thesis", 2), "the busy run is rerun once, at the end"
    replaced = [r for r in records if r.get("replaced")]
    assert len(replaced) == 1 and replaced[0]["flagged"]
    assert b9.table(records, "1min")["thesis"]["n"] == 2, "the rerun replaces it"


def test_goals_judge_margins_against_the_noise():
    records = [record("2min", "tltk", s, t) for s, t in ((1, .80), (2, .82), (3, .81))]
    records += [record("2min", "fastai", s, t) for s, t in ((1, .70), (2, .74), (3, .72))]
    records += [record("2min", "thesis", s, t) for s, t in ((1, .79), (2, .80), (3, .81))]
    records += [record("20min", "tltk", 1, .86, 1200), record("20min", "fastai", 1, .75, 1200)]
    records += [record("few-shot 2min", a, 1, t) for a, t in (("tltk", .6), ("fastai", .5))]
    settings = b9.Settings(b9.ladder((120,), (1, 2, 3), 1200, 1, 120, (1,)))
    goals = b9.goals(records, settings)
    lead = goals["lead_at_2min"]
    assert not lead["met"] and lead["peers"]["fastai"]["met"]
    assert lead["peers"]["thesis"] == {"margin": 0.01, "larger_sd": 0.01, "sd_from": ["2min"],
                                       "met": False}
    long = goals["lead_at_20min"]["peers"]["fastai"]
    assert long["met"] and long["sd_from"] == ["2min"], "one seed borrows the 2-min sd"
    assert goals["few_shot_lead_at_2min"]["met"]
    stretch = [k for k in goals if "stretch" in k]
    assert stretch == ["stretch_85pct_test_top1_at_20min"] and goals[stretch[0]]["met"]
    assert goals["budget_kept_by_every_tltk_run"] == {"met": True, "worst_clock_over_budget": 1.0,
                                                     "runs": 5, "failed": []}
    refused = {**record("2min", "tltk", 4, 0.0), "status": "failed: RunFailed: exit 2"}
    kept = b9.goals([*records, refused], settings)["budget_kept_by_every_tltk_run"]
    assert not kept["met"] and kept["failed"] == ["2min seed 4: failed: RunFailed: exit 2"]


def test_the_full_run_is_planned_to_about_three_and_a_half_hours():
    runs = b9.planned_runs(b9.FULL)
    assert len(runs) == 15 + 15 + 5 + 3
    assert 3.0 < b9.estimate_s(b9.FULL) / 3600 < 4.0
    assert b9.FULL.split_seed == b9.HOLDOUT_SEED != 0


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_race_writes_every_run_goals_and_plot(tmp_path, monkeypatch):
    require_shared()
    from benchmarks import _common

    # Keep the real results intact: the JSON goes through _common, the runs log is b9's.
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(b9, "RESULTS_DIR", tmp_path)
    model = tiny_model_file(tmp_path / "tiny.keras", 32)
    # tltk and one peer at 40 s (a process's TensorFlow start-up is inside the budget).
    b9.main(["--quick", "--arms=tltk,keras_guide", "--budgets=40", "--long=0",
             "--few-shot-seeds=", "--image-size=32", f"--backbone-file={model}",
             "--per-class=4", "--eval-per-class=2"])
    figures = json.loads((tmp_path / "b9_fair_race_quick.json").read_text())
    assert (tmp_path / "b9_fair_race_quick.png").is_file()
    assert (tmp_path / "b9_fair_race_quick_runs.jsonl").is_file()
    runs = {r["arm"]: r for r in figures["runs"]}
    assert set(runs) == {"tltk", "keras_guide"}
    for arm, run in runs.items():
        assert run["status"] == "ok", (arm, run["status"])
        assert 0.0 <= run["test_top1"] <= 1.0 and math.isfinite(run["cpu_s"])
    assert runs["tltk"]["plan"]["image_size"] == 32
    assert set(figures["goals"]) == {"lead_at_40s", "stretch_85pct_test_top1_at_40s",
                                     "budget_kept_by_every_tltk_run"}
    assert all(isinstance(g["met"], bool) for g in figures["goals"].values())


@pytest.mark.realdata
def test_the_held_out_split_is_not_the_design_split():
    require_shared()
    from benchmarks.b6_recipes import Settings, flowers_data

    held_out = b9.split(b9.FULL, few_shot=False)
    design = flowers_data(Settings(0, None, None, None, ()), 0)
    for name in ("train", "val", "test"):
        assert held_out.paths[name] != design.paths[name], name
    overlap = set(held_out.paths["test"]) & set(design.paths["test"])
    assert len(overlap) < 0.3 * len(design.paths["test"]), "a fresh 15 % draw shares ~15 %"
