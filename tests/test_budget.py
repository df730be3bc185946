"""`tltk train --budget`: the planner's rules, the plan in config.yaml, and real runs that
keep their budget and resume with their plan.

Example:
    $ python -m pytest tests/test_budget.py -m "not slow"
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.forked import tltk_cli
from tltk.config import RunConfig
from tltk.engine import budget
from tltk.engine.budget import MODES, Measured, apply_plan, expected_top1, make_plan, parse_duration
from tltk.errors import TltkError
from tltk.recipes import base_config

ROOT = Path(__file__).resolve().parents[1]
# Lite0-like costs on flowers-128's 70/15/15 split: 10 ms an image forward at 160 px.
FLOWERS = Measured(size=160, forward=0.01, trace=1.0, save=0.5, build=5.0, elapsed=8.0,
                   train=3019, val=649, test=649)


def test_durations_read_as_a_user_writes_them():
    assert parse_duration(" 2m ") == 120 and parse_duration("45") == 45
    for bad in ("ten minutes", "0s", "-5m", "5d"):
        with pytest.raises(TltkError, match="--budget: cannot read"):
            parse_duration(bad)


def test_a_larger_budget_never_plans_less_training():
    """Never a plan the design evidence expects worse, nor less training at one size.

    A larger budget may trade a fine-tuning mode that only a small image affords for a
    larger image (B12: the head gains more from 160 px than the cached top block adds).
    """
    plans = [make_plan(seconds, FLOWERS, head_epochs=20) for seconds in range(30, 3600, 15)]
    for small, large in zip(plans, plans[1:]):
        if min(small.head_epochs, large.head_epochs) < budget.HEAD_SATURATED_EPOCHS:
            assert large.head_epochs >= small.head_epochs, (small, large)
            continue
        assert expected_top1(large) >= expected_top1(small) - budget.HEAD_TIE, (small, large)
        if large.image_size == small.image_size:
            mode = MODES.index(large.finetune) - MODES.index(small.finetune)
            assert mode > 0 or (mode == 0 and large.head_epochs >= small.head_epochs)
            if mode == 0 and large.finetune != "none":
                assert (large.views, large.finetune_epochs) >= (small.views,
                                                                small.finetune_epochs)
    assert {p.finetune for p in plans} == set(MODES), "every mode is planned somewhere"


def test_the_plan_prefers_the_larger_image_the_design_split_ranks_higher():
    plans = {size: budget._plan_at(size, 240, FLOWERS, 20) for size in budget.SIZES}
    plan = make_plan(240, FLOWERS, head_epochs=20)
    assert plans[128].finetune == "top" and plans[160].finetune == "none"
    assert plan.image_size > 128 and plan.finetune == "none", plan
    assert expected_top1(plan) > expected_top1(plans[128]) + budget.HEAD_TIE


def test_a_frozen_backbone_leaves_evaluation_to_cached_features():
    """Without fine-tuning the heads classify cached features and only test is extracted,
    so a 2-minute budget affords 160 px, where B9's first held-out race (evaluating every
    weights on images) could only afford 128."""
    cost = budget._Costs(FLOWERS, 160)
    assert cost.evaluation("none") < cost.evaluation("whole") / 2
    assert cost.evaluation("none") > FLOWERS.test * FLOWERS.forward  # test is extracted
    plan = make_plan(120, FLOWERS, head_epochs=20)
    assert (plan.image_size, plan.head_epochs, plan.finetune) == (160, 20, "none"), plan


def test_a_measured_head_epoch_costs_the_same_at_every_size():
    """Pooled features have one size whatever the image's, so the timed head epoch
    (`time_head`) is not scaled with the image side as the forward pass is."""
    measured = dataclasses.replace(FLOWERS, head_step=2e-4, head_trace=1.5)
    epochs = {budget._Costs(measured, size).head_epoch for size in budget.SIZES}
    expected = budget.IMPROVING * FLOWERS.save + (FLOWERS.train + FLOWERS.val) * 2e-4
    assert len(epochs) == 1 and epochs.pop() == pytest.approx(expected)
    assert budget._Costs(measured, 224).trace("trace_head") == 1.5


def test_a_head_epoch_that_does_not_fit_whole_is_still_planned():
    """B9: a run that timed its head on a busy moment refused a budget it fitted; when
    the extraction and the evaluation fit, one head epoch is planned (the Deadline ends
    it in time), and only when they do not is the budget refused."""
    slow = dataclasses.replace(FLOWERS, head_step=0.02, head_trace=1.0, elapsed=20.0)
    plan = make_plan(120, slow, head_epochs=20)
    assert plan.head_epochs == 1 and plan.finetune == "none", plan
    assert make_plan(60, slow, head_epochs=20).head_epochs == 0


def test_every_plan_ends_within_its_budget():
    for seconds in (20, 60, 120, 360, 1200):
        plan = make_plan(seconds, FLOWERS, head_epochs=20)
        if plan.head_epochs:
            assert plan.estimated_s <= seconds * budget.SAFETY + 1e-6, plan
            assert plan.train_until_s < seconds


def test_fixed_costs_never_fall_below_a_first_fit():
    """A tiny backbone's forward pass traces in milliseconds, but a fit's own set-up does
    not shrink with the model: the head's timed first fit is the floor of every fixed
    cost, so the plan keeps time for the report and the first whole-network epoch."""
    tiny = dataclasses.replace(FLOWERS, trace=0.05, head_step=1e-4, head_trace=1.0)
    traced = dataclasses.replace(tiny, trace=1.0)
    assert make_plan(120, tiny, 20) == make_plan(120, traced, 20)
    plan = make_plan(120, tiny, 20, sizes=(160,))
    report = budget.DESIGN["ratio_to_trace"]["report"] * tiny.head_trace
    assert 120 * budget.SAFETY - plan.train_until_s > report, "the Deadline leaves it"


def test_a_fixed_image_size_is_kept():
    plan = make_plan(1200, FLOWERS, head_epochs=20, sizes=(128,))
    assert plan.image_size == 128 and plan.finetune == "whole"


def test_the_plan_round_trips_through_config_yaml():
    plan = make_plan(360, FLOWERS, head_epochs=20)
    config = apply_plan(base_config("folder"), plan, FLOWERS)
    again = RunConfig.from_yaml(config.to_yaml())
    assert again == config
    assert again.budget["plan"] == dataclasses.asdict(plan)
    assert again.data.image_size == plan.image_size
    head, tune = again.stages
    assert (head.epochs, tune.epochs) == (plan.head_epochs, plan.finetune_epochs)


def test_bf16_is_planned_where_b11_found_it_faster():
    from tltk.models.backbones import get_backbone

    amx, plain = frozenset({"amx_bf16", "avx512f"}), frozenset({"avx2"})
    assert budget.choose_precision(get_backbone("vgg19"), amx) == "mixed_bfloat16"
    assert budget.choose_precision(get_backbone("vgg19"), plain) == "float32"
    for slower in ("resnet50", "mobilenetv2", "efficientnetb0"):  # B11
        assert budget.choose_precision(get_backbone(slower), amx) == "float32"
    bf16 = dataclasses.replace(FLOWERS, precision="mixed_bfloat16")
    plan = make_plan(360, bf16, head_epochs=20)
    assert plan.precision == "mixed_bfloat16" and " in mixed_bfloat16: " in plan.describe()
    config = apply_plan(base_config("folder"), plan, bf16)
    assert config.precision == "mixed_bfloat16"
    assert RunConfig.from_yaml(config.to_yaml()).budget["measured"]["precision"] == (
        "mixed_bfloat16")


def test_recipes_without_a_head_stage_are_refused():
    plan = make_plan(360, FLOWERS, head_epochs=20)
    with pytest.raises(TltkError, match="--budget: recipe 'demo' does not start with a frozen"):
        apply_plan(base_config("demo"), plan, FLOWERS)


# --- real runs ----------------------------------------------------------------------

def photo_folder(root: Path, per_class: int = 12) -> Path:
    """Three classes of 32-px colour photos, one subfolder each."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            image[..., label] += 150
            (root / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return root


@pytest.mark.slow
def test_a_tiny_model_keeps_a_tiny_budget(tmp_path):
    seconds = 40.0  # a fresh interpreter's start-up (TensorFlow, 5-30 s here) is inside it
    run = tmp_path / "run"
    started = time.time()
    photos = photo_folder(tmp_path / "photos")
    done = subprocess.run([sys.executable, "-m", "tests.tiny", "train", "folder", "--backbone",
                           "tiny", "--image-size", "32", "--data", str(photos), "--out",
                           str(run), "--budget", f"{seconds:g}s"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    wall = time.time() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plan for 40 s at 32 px" in done.stdout
    assert wall <= seconds * 1.1, (wall, done.stdout)
    saved = RunConfig.load(run / "config.yaml").budget
    assert saved["seconds"] == seconds and saved["plan"]["head_epochs"] > 0
    assert saved["measured"]["head_step"] > 0 and saved["measured"]["head_trace"] > 0


@pytest.mark.slow
def test_the_plan_survives_resume(tmp_path):
    run, photos = tmp_path / "run", photo_folder(tmp_path / "photos")
    args = ["train", "folder", "--backbone", "tiny", "--image-size", "32", "--data", str(photos),
            "--out", str(run)]
    killed = tltk_cli([*args, "--budget", "40s"], {"TLTK_FAULT": "bottleneck:2:checkpoint-write"},
                      tiny=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    planned = (run / "config.yaml").read_text()
    done = tltk_cli(["train", "--resume", str(run)], tiny=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "config.yaml").read_text() == planned
    plan = RunConfig.load(run / "config.yaml").budget["plan"]
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert stages[0]["epochs"] == plan["head_epochs"]
    refused = tltk_cli(["train", "--resume", str(run), "--budget", "1m"], tiny=True)
    assert refused.returncode == 2 and "--budget: not used with --resume" in refused.stderr


@pytest.mark.slow
def test_dry_run_shows_the_plan_and_trains_nothing(tmp_path):
    out = tmp_path / "run"
    done = tltk_cli(["train", "folder", "--backbone", "tiny", "--image-size", "32", "--data",
                     str(photo_folder(tmp_path / "photos")), "--out", str(out), "--budget",
                     "10m", "--dry-run"], tiny=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plan for 10.0 min at 32 px" in done.stdout and not out.exists()


@pytest.mark.slow
def test_the_planner_times_and_runs_the_precision_it_picks(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tltk.cli import main

    monkeypatch.setattr(budget.runtime, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    args = ["train", "folder", "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
            "--data", str(photo_folder(tmp_path / "photos")), "--budget", "10m", "--dry-run"]
    picked = CliRunner().invoke(main, args)
    assert picked.exit_code == 0, picked.output
    assert "plan for 10.0 min at 32 px in mixed_bfloat16: " in picked.output
    kept = CliRunner().invoke(main, [*args, "--precision", "float32"])
    assert kept.exit_code == 0 and "plan for 10.0 min at 32 px: " in kept.output, kept.output


def test_the_rules_use_b10s_design_split_measurements():
    figures = json.loads((ROOT / "benchmarks" / "results" / "b10_budget_design.json").read_text())
    assert figures["split"]["seed"] == 0 and not figures["quick"]
    derived = figures["derived"]
    derived.pop("head_val_top1")  # B10's one-run probe; B12 measured it over 3 seeds
    assert {k: v for k, v in budget.DESIGN.items() if k != "head_val_top1"} == derived
    heads = json.loads((ROOT / "benchmarks" / "results" / "b12_head_design.json").read_text())
    assert heads["split"]["seed"] == 0 and not heads["quick"] and len(heads["seeds"]) >= 3
    head = base_config("folder").stages[0]
    steps = head.epochs * -(-heads["split"]["train"] // base_config("folder").batch_size)
    probe = {r["size"]: r["val"] for r in heads["table"] if r["regime"] == "full"
             and r["smoothing"] == head.label_smoothing and r["steps"] == steps}
    assert budget.DESIGN["head_val_top1"] == probe
    assert tuple(sorted(probe)) == budget.SIZES
