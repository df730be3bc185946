"""User errors through the CLI: one line naming the argument and the fix, exit status 2,
no traceback (tracebacks only with `tltk --debug`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from tltk.cli import main
from tltk.config import RunConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A malformed YAML, a config with a misspelt schedule, a weights file of the wrong
    shape, a folder holding another run and a regular file to nest --out under."""
    root = tmp_path_factory.mktemp("errors")
    (root / "bad.yaml").write_text("backbone: [unclosed\n")
    config = RunConfig(recipe="demo", stages=[{"name": "train", "epochs": 1}])
    (root / "schedule.yaml").write_text(
        config.to_yaml().replace("schedule: constant", "schedule: cosin"))
    with h5py.File(root / "wrong.weights.h5", "w") as f:
        f["layers/dense/vars/0"] = np.zeros((3, 3), np.float32)
    (root / "other").mkdir()
    (root / "other" / "config.yaml").write_text(RunConfig(recipe="demo", seed=5).to_yaml())
    (root / "other" / "run.json").write_text(json.dumps({"status": "running"}))
    (root / "a-file").write_text("not a folder\n")
    return root


SMALL = ["--image-size", "32", "--per-class", "2"]

CASES = {
    "unknown recipe": (["train", "dmeo"], "RECIPE: unknown name 'dmeo'; did you mean 'demo'?"),
    "unknown backbone": (["train", "demo", "--backbone", "vgg91"],
                         "--backbone: unknown name 'vgg91'; did you mean 'vgg19'?"),
    "unknown dataset": (["train", "demo", "--dataset", "flowrs"],
                        "--data/dataset: unknown name 'flowrs'; did you mean 'flowers'?"),
    "unknown tuner": (["tune", "demo", "--tuner", "randm"],
                      "--tuner: unknown name 'randm'; did you mean 'random'?"),
    "unknown schedule": (["train", "demo", "--config", "{root}/schedule.yaml"],
                         "stages.train.schedule: unknown name 'cosin'; did you mean 'cosine'?"),
    "unknown strategy": (["train", "demo", "--strategy", "mirored"],
                         "--strategy: unknown name 'mirored'; did you mean 'mirrored'?"),
    "malformed yaml": (["train", "demo", "--config", "{root}/bad.yaml"],
                       "{root}/bad.yaml: malformed YAML (line 2); fix the file's syntax"),
    # One stage at 0 epochs is skipped; all of them at 0 leaves nothing to train.
    "zero epochs": (["train", "demo", "--epochs-head", "0", "--epochs-finetune", "0"],
                    "every stage has 0 epochs, so nothing would train; give at least one "
                    "stage epochs (--epochs-head / --epochs-finetune)"),
    "negative epochs": (["train", "demo", "--epochs-finetune", "-2"],
                        "stage 'anneal': epochs must be 0 (skip the stage) or a positive "
                        "integer (got -2)"),
    "zero batch size": (["train", "demo", "--batch-size", "0"],
                        "--batch-size must be a positive integer"),
    "negative batch size": (["train", "demo", "--batch-size", "-8"],
                            "--batch-size must be a positive integer"),
    "zero image size": (["train", "demo", "--image-size", "0"],
                        "--image-size must be a positive integer"),
    "negative image size": (["train", "demo", "--image-size", "-64"],
                            "--image-size must be a positive integer"),
    "image size below the minimum": (["train", "demo", "--image-size", "16"],
                                     "--image-size: 16 is below scratch's minimum of 32 px; "
                                     "use --image-size 32 or more"),
    "zero per class": (["train", "demo", "--per-class", "0"],
                       "--per-class must be a positive integer"),
    "missing weights file": (["train", "demo", "--backbone", "vgg16", "--weights",
                              "{root}/none.weights.h5", *SMALL],
                             "--weights: file not found: {root}/none.weights.h5"),
    "weights that do not fit": (["train", "demo", "--backbone", "vgg16", "--weights",
                                 "{root}/wrong.weights.h5", *SMALL],
                                "--weights: {root}/wrong.weights.h5 does not fit backbone "
                                "vgg16 without top"),
    "out holds a different run": (["train", "demo", *SMALL, "--out", "{root}/other"],
                                  "--out: {root}/other holds an unfinished run with a "
                                  "different config"),
    "out under a regular file": (["train", "demo", *SMALL, "--out", "{root}/a-file/run"],
                                 "--out: cannot create {root}/a-file/run (Not a directory); "
                                 "choose a writable --out"),
    "out is a file": (["train", "demo", *SMALL, "--out", "{root}/a-file"],
                      "--out: {root}/a-file is a file, not a directory"),
    "resume of something else": (["train", "--resume", "{root}"],
                                 "--resume: {root} is not a tltk run directory"),
    "no recipe": (["train"], "RECIPE: missing; give a recipe"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_are_one_line_exit_2_without_traceback(case, files):
    args, message = CASES[case]
    args = [a.format(root=files) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.output
    assert message.format(root=files) in errors[0]
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_real_process_prints_only_the_error_line_and_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "tltk.cli", "train", "demo", "--image-size", "16"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2
    assert proc.stderr == ("error: --image-size: 16 is below scratch's minimum of 32 px; "
                           "use --image-size 32 or more\n")
    debug = CliRunner().invoke(main, ["--debug", "train", "demo", "--image-size", "16"])
    assert debug.exit_code == 2 and "Traceback" in debug.output
