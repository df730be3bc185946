"""The command line: end to end on demo, listings, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tltk.cli import main


def tltk(*args, **kw):
    return subprocess.run([sys.executable, "-m", "tltk.cli", *args], capture_output=True,
                          text=True, timeout=600, **kw)


@pytest.mark.slow
def test_train_demo_end_to_end_through_the_cli(tmp_path):
    out = tmp_path / "demo"
    proc = tltk("train", "demo", "--image-size", "32", "--per-class", "20",
                "--epochs-head", "2", "--epochs-finetune", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage train" in proc.stdout and "stage anneal" in proc.stdout
    assert "recompiling with sgd" in proc.stdout
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["weights"]) == {"best", "final"}
    assert set(metrics["split"]) == {"val", "test"}
    assert (metrics["k"] == 5).all()
    assert "val top-1" in proc.stdout  # the thesis-style table is printed

    again = CliRunner().invoke(main, ["evaluate", str(out), "--weights", "best"])
    assert again.exit_code == 0, again.output
    assert "best" in again.output


@pytest.mark.parametrize("args,message", [
    (["train", "dgos"], "RECIPE: unknown name 'dgos'; did you mean 'dogs'?"),
    (["train", "demo", "--backbone", "vgg91"], "--backbone: unknown name 'vgg91'"),
    (["train", "folder", "--data", "/no/such/folder"], "--data: folder not found"),
    (["train", "demo", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["train", "demo", "--config", "/no/such.yaml"], "--config: file not found"),
    (["evaluate", "/no/run"], "is not a tltk run directory"),
])
def test_user_errors_are_one_line_with_exit_status_2(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def small_folder(root: Path, classes=("a", "b"), per_class=8) -> Path:
    """A tiny class-per-subfolder set of solid-colour PNGs."""
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            colour = (200 * i, 10 * j, 255 - 200 * i)
            Image.new("RGB", (24, 24), colour).save(root / name / f"{j}.png")
    return root


@pytest.mark.slow
def test_unavailable_imagenet_weights_fail_before_training_in_one_line(tmp_path):
    data = small_folder(tmp_path / "photos")
    proc = tltk("train", "folder", "--data", str(data), "--backbone", "vgg16",
                "--image-size", "32", "--out", str(tmp_path / "run"),
                env={**os.environ, "KERAS_HOME": str(tmp_path / "keras")})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--weights PATH" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists(), "nothing is written before the weights load"


def test_malformed_yaml_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: [unclosed\n")
    result = CliRunner().invoke(main, ["train", "demo", "--config", str(bad)])
    assert result.exit_code == 2
    assert "malformed YAML" in result.output and "bad.yaml" in result.output


def test_listings():
    runner = CliRunner()
    backbones = runner.invoke(main, ["backbones"])
    assert backbones.exit_code == 0
    for name in ("vgg19", "resnet50", "densenet201", "inceptionv3", "mobilenetv2",
                 "efficientnetb0", "scratch"):
        assert name in backbones.output
    assert "299" in backbones.output  # InceptionV3's default size
    recipes = runner.invoke(main, ["recipes"])
    assert recipes.exit_code == 0
    assert all(name in recipes.output for name in ("demo", "folder", "flowers", "dogs"))


def test_set_mixup_and_unfreezing_flags_reach_the_config():
    from tltk.methods.unfreezing import restage
    from tltk.recipes import configure, folder

    config = configure(folder.config(), {"backbone": "vgg16"},
                       ["stages.finetune.schedule=cosine", "stages.finetune.lr=3e-5",
                        "head.dropout=0.2", "data.resize=crop"],
                       epochs_finetune=2, mixup=0.2)
    tune = config.stage("finetune")
    assert (tune.schedule, tune.lr, tune.epochs) == ("cosine", 3e-5, 2)
    assert config.head.dropout == 0.2 and config.data.resize == "crop"
    assert {s.mixup for s in config.stages} == {0.2}
    thawed = restage(config, "chain-thaw", blocks=2)
    assert [s.unfreeze for s in thawed.stages] == [0, ["block4"], ["block5"], "all"]
    assert all(s.lr == 3e-5 and s.epochs == 2 and s.mixup == 0.2 for s in thawed.stages[1:])


@pytest.mark.parametrize("args, message", [
    (["train", "demo", "--set", "stages.train.bogus=1"], "unknown config key 'bogus'; valid keys"),
    (["train", "demo", "--set", "nokey"], "--set: expected KEY=VALUE"),
    (["train", "demo", "--unfreezing", "gradual"], "--unfreezing: needs a pretrained"),
    (["train", "folder", "--unfreezing", "gradual", "--unfreeze-blocks", "99"],
     "--unfreeze-blocks: mobilenetv2 has 17 blocks"),
    (["train", "demo", "--mixup", "-1"], "--mixup must be 0 (off) or a positive alpha"),
])
def test_new_training_flags_fail_in_one_line(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
