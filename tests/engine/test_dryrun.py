"""Knowing before you start: `tltk train --dry-run` (the plan, caches against the budget,
timed estimates; no run) and Keras's per-step progress bar on a terminal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tltk.cli import main
from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_estimates_without_training(tmp_path, tiny_backbone):
    config = RunConfig(recipe="test", backbone="tiny", weights="none",
                       data=DataConfig(dataset="demo", image_size=32, per_class=5),
                       head=HeadConfig(layers=1, units=8), batch_size=8, stages=[
                           StageConfig("head", epochs=2, unfreeze=0),
                           StageConfig("tune", epochs=3, unfreeze=1, cache_features=True,
                                       feature_views=2),
                           StageConfig("skip", epochs=0, unfreeze="all")])
    (tmp_path / "run.yaml").write_text(config.to_yaml())
    args = ["train", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"),
            "--dry-run"]
    cache = Path(os.environ["TLTK_CACHE"]) / "features"
    cached_before = set(cache.iterdir()) if cache.exists() else set()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("dry run: test on tiny (none weights) at 32px, demo")
    assert "images train 30, val 180, test 180" in lines[0] and "cache budget" in lines[0]
    assert "stage head: 2 epochs, backbone frozen" in result.output
    assert "stage tune: 3 epochs, trainable blocks block2" in result.output
    assert "cache: activations at block1_conv (16, 16, 8), 2 view(s)" in result.output
    assert "stage skip: skipped (0 epochs)" in result.output
    assert "fits the" in result.output and "per epoch on the cache" in result.output
    assert lines[-1].startswith("estimated training time:")
    assert not (tmp_path / "run").exists(), "a dry run writes no run directory"
    assert (set(cache.iterdir()) if cache.exists() else set()) == cached_before, "no cache"
    over = CliRunner().invoke(main, [*args, "--set", "cache_budget_gb=0.0001"])
    assert over.exit_code == 0, over.output
    assert "MB over the cache budget of 0.1 MB" in over.output
