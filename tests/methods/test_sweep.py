"""`tltk sweep`: grid parsing, condition configs, subsampling, the table, the heuristic."""

import os
from dataclasses import replace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from tests.conftest import tiny_config  # noqa: E402
from tltk import data as tltk_data  # noqa: E402
from tltk.cli import main  # noqa: E402
from tltk.config import HeadConfig, RunConfig, StageConfig  # noqa: E402
from tltk.errors import TltkError  # noqa: E402
from tltk.methods.sweep import (  # noqa: E402
    Condition,
    condition_config,
    heuristic,
    parse_depths,
    parse_sizes,
    summarise,
    sweep,
    unfreeze_for,
)
from tltk.models.backbones import get_backbone  # noqa: E402

VGG = get_backbone("vgg16")  # five blocks


def base_config(tmp_path) -> RunConfig:
    return tiny_config(tmp_path / "unused",
                       [StageConfig("head", epochs=1, unfreeze=0),
                        StageConfig("tune", epochs=1, optimizer="sgd", lr=1e-3, momentum=0.9,
                                    unfreeze=1)],
                       backbone="vgg16", head=HeadConfig(layers=1, units=8), seed=7)


def test_grid_options_parse_and_reject_bad_values():
    assert parse_sizes("10, 25,all") == [10, 25, None]
    assert parse_depths("0,2,5,all", VGG) == [0, 2, "all"]  # 5 of 5 blocks is 'all'
    for text, option in (("10,x", "--per-class"), ("0,-1", "--freeze"), ("6", "--freeze"),
                         ("", "--per-class")):
        parse = parse_sizes if option == "--per-class" else lambda t: parse_depths(t, VGG)
        with pytest.raises(TltkError, match=option):
            parse(text)


def test_freeze_depth_counts_frozen_blocks_from_the_bottom():
    assert [unfreeze_for(d, VGG) for d in (0, 1, 4, "all")] == ["all", 4, 1, 0]


@pytest.mark.slow
def test_conditions_keep_the_split_and_the_head_stage_and_vary_the_seed(tmp_path):
    base = base_config(tmp_path)
    configs = [condition_config(base, VGG, Condition(6, depth, r), tmp_path, 3)
               for depth, r in ((2, 0), (2, 1), ("scratch", 0))]
    tuned, repeat, scratch = configs
    assert [s.unfreeze for s in tuned.stages] == [0, 3]
    assert tuned.stages[1].optimizer == "sgd" and tuned.data.per_class == 6
    # The data config's fixed split seed (0 by default), whatever the run's seed (7).
    assert tuned.data.split_seed == repeat.data.split_seed == scratch.data.split_seed == 0
    following = replace(base, data=replace(base.data, split_seed=None))
    assert condition_config(following, VGG, Condition(6, 2, 1), tmp_path, 3).data.split_seed == 7
    assert (tuned.seed, repeat.seed) == (7, 8)
    assert tuned.out != repeat.out
    assert scratch.backbone == "scratch" and scratch.stages[0].epochs == 3

    def splits(config):
        return tltk_data.load(config.data, seed=config.seed).splits

    a, b = splits(tuned), splits(repeat)
    np.testing.assert_array_equal(a["val"].labels, b["val"].labels)
    assert a["val"].fingerprint == b["val"].fingerprint  # one fixed validation set
    assert a["train"].fingerprint != b["train"].fingerprint  # a new subsample per repeat
    assert np.bincount(a["train"].labels).max() == 6


def test_recipes_without_a_frozen_head_stage_are_refused(tmp_path):
    result = CliRunner().invoke(main, ["sweep", "demo", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "sweep: needs a pretrained backbone" in result.output


def test_table_and_heuristic_from_known_numbers():
    runs = pd.DataFrame({
        "per_class": [10, 10, 10, 10, 100, 100, 100, 100],
        "depth": [0, 0, "all", "all", 0, 0, "all", "all"],
        "repeat": [0, 1] * 4,
        "val_top1": [50.0, 54.0, 70.0, 72.0, 86.0, 88.0, 80.0, 80.0],
        "images_per_class": [10.0] * 4 + [100.0] * 4})
    runs = pd.concat([runs, pd.DataFrame({"per_class": [10, 100], "depth": ["scratch"] * 2,
                                          "repeat": [0, 0], "val_top1": [30.0, 45.0],
                                          "images_per_class": [10.0, 100.0]})])
    table = summarise(runs)
    assert len(table) == 6 and list(table.repeats) == [2, 2, 2, 2, 1, 1]
    row = table[(table.per_class == 10) & (table.depth == 0)].iloc[0]
    assert row.val_mean == 52.0
    assert row.val_std == pytest.approx(np.std([50, 54], ddof=1), abs=0.005)
    text = heuristic(table)
    assert ("Heuristic: keep the whole backbone frozen when you have fewer than 100 images "
            "per class; from 100, fine-tune every block.") in text
    # Within one std of the best, the more frozen (cheaper) depth is recommended.
    tied = table.assign(val_mean=table.val_mean.where(table.depth != 0, 70.0))
    assert "Heuristic: keep the whole backbone frozen at every size tried" in heuristic(tied)
    assert "10 per class: transfer 71.0% vs scratch 30.0%" in text


@pytest.mark.slow
def test_sweep_end_to_end_on_tiny_data(tmp_path, tiny_backbone):
    base = base_config(tmp_path).override({"backbone": "tiny"})  # two blocks: a fast "all"
    out = tmp_path / "sweep"
    result = sweep(base, [4], ["all"], repeats=1, out=out, scratch_epochs=1,
                   say=lambda _: None)
    assert list(result.runs.depth) == ["all", "scratch"]
    assert result.runs.train_images.eq(4 * 6).all()  # 4 per class of the demo's 6 classes
    assert list(result.table.columns[:4]) == ["per_class", "depth", "val_mean", "val_std"]
    for name in ("sweep.csv", "sweep_runs.csv", "sweep.png", "sweep.md"):
        assert (out / name).stat().st_size > 0
    assert "Heuristic:" in (out / "sweep.md").read_text()
    again = sweep(base, [4], ["all"], repeats=1, out=out, scratch_epochs=1,
                  say=lambda _: None)  # finished runs are reused, not retrained
    pd.testing.assert_frame_equal(again.runs, result.runs)
    changed = base.override({"stages.tune.epochs": 2})
    with pytest.raises(TltkError, match="finished run with other settings"):
        sweep(changed, [4], ["all"], repeats=1, out=out, scratch_epochs=1, say=lambda _: None)
