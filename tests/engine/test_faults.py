"""Fault injection: SIGKILL at the worst moments, a full disk, NaN losses, corrupt images
and unsafe files. A killed run resumes to exactly the result of an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import subprocess
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import SMALL_SPLITS, tiny_config
from tests.forked import tltk_cli
from tltk.cli import main
from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.engine.callbacks import NumericalFault
from tltk.engine.run import train
from tltk.errors import TltkError
from tltk.log import silent
from tltk.saving import load_keras_file

ROOT = Path(__file__).resolve().parents[2]
COMPLETE = {"config.yaml", "run.json", "classes.json", "history.csv", "best.keras",
            "final.keras", "metrics.csv", "predictions", "report.md", "report.html", "report",
            "mistakes.csv", "tensorboard"}


def demo_config(out=None, **kw) -> RunConfig:
    """The demo recipe, shrunk: 32 px, 10 training images per class, one 3-epoch stage
    with a cosine schedule (its position must survive a kill), a dropout head (its seed
    state too), augmentation and determinism."""
    stages = kw.pop("stages", None) or [
        StageConfig("train", epochs=3, optimizer="adam", unfreeze="all", schedule="cosine")]
    return tiny_config(out, stages, recipe="demo", backbone="scratch", data=SMALL_SPLITS,
                       head=HeadConfig(layers=1, units=16, dropout=0.5), deterministic=True,
                       **kw)


def killed(args: list[str], point: str, tiny: bool = False) -> subprocess.CompletedProcess:
    """Run `tltk ARGS` in a child process that SIGKILLs itself at fault point `point`."""
    return tltk_cli(args, {"TLTK_FAULT": point, "TF_CPP_MIN_LOG_LEVEL": "3"}, tiny=tiny)


@pytest.mark.slow
def test_sigkill_mid_epoch_and_mid_checkpoint_then_resume_matches_uninterrupted(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(demo_config().to_yaml())
    run = tmp_path / "run"

    first = killed(["train", "demo", "--config", str(config), "--out", str(run)],
                   "train:2:mid-epoch")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    state = json.loads((run / "backup" / "train" / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["history_rows"] == 1
    assert json.loads((run / "run.json").read_text())["status"] == "running"

    second = killed(["train", "--resume", str(run)], "train:3:checkpoint-write")
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert "resuming stage train after epoch 1 of 3" in second.stdout
    backup = run / "backup" / "train"
    assert [p.name for p in backup.glob(".epoch-0003.weights.h5.*")], "the torn write"
    state = json.loads((backup / "state.json").read_text())
    assert state["epochs_done"] == 2 and (backup / state["weights"]).is_file()

    resumed = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming stage train after epoch 2 of 3" in resumed.output
    reference = CliRunner().invoke(main, ["train", "demo", "--config", str(config),
                                          "--out", str(tmp_path / "reference")])
    assert reference.exit_code == 0, reference.output

    assert {p.name for p in run.iterdir()} == COMPLETE, "complete, no backup or temp files"
    for name in ("history.csv", "metrics.csv"):
        assert (run / name).read_text() == (tmp_path / "reference" / name).read_text(), name
    assert pd.read_csv(run / "history.csv")["lr"].is_monotonic_decreasing  # cosine went on
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "complete" and len(status["resumed"]) == 2
    assert [s["name"] for s in status["stages"]] == ["train"]

    again = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert again.exit_code == 2 and "is a finished run" in again.output


@pytest.mark.slow
def test_nan_loss_stops_with_one_line_keeps_best_and_writes_metrics(tmp_path):
    # One good epoch, then a learning rate of 1e9 from the second epoch on.
    config = demo_config(str(tmp_path / "run"), stages=[
        StageConfig("wreck", epochs=3, optimizer="sgd", lr=1e-3, lr_steps=[[1, 1e9]],
                    unfreeze="all", augment=False)])
    with pytest.raises(NumericalFault) as fault:
        train(config, say=silent)
    message = str(fault.value)
    assert "\n" not in message
    assert re.match(r"stage 'wreck' epoch 2, batch \d+: the training loss became (nan|inf)",
                    message)
    assert "lower stages.wreck.lr (now 0.001) or set stages.wreck.clipnorm" in message
    run = tmp_path / "run"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("NumericalFault:")
    history = pd.read_csv(run / "history.csv")
    assert history["stage_epoch"].tolist() == [1], "the broken epoch is not recorded"
    metrics = pd.read_csv(run / "metrics.csv").set_index(["weights", "split"])
    assert set(metrics.index.get_level_values(0)) == {"best", "final"}
    # "final" is the last good epoch, the first, which is also the best.
    assert metrics.loc[("final", "val"), "top1"] == pytest.approx(
        100 * history["val_top1"].iloc[-1], abs=0.01)
    final = load_keras_file(run / "final.keras")
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in final.weights)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes_after(tmp_path):
    # A 1 MB file-size limit makes every larger write fail with EFBIG, as a full disk
    # fails with ENOSPC; unlike chmod it also stops root.
    config = demo_config(str(tmp_path / "run"), stages=[
        StageConfig("train", epochs=1, unfreeze="all", augment=False)])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, hard))
    try:
        with pytest.raises(TltkError) as error:
            train(config, say=silent)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    message = str(error.value)
    assert message.startswith(f"cannot write {tmp_path / 'run' / 'backup' / 'train'}")
    assert os.strerror(errno.EFBIG) in message and "rerun the same command" in message
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed"
    assert not list((tmp_path / "run").rglob(".*.weights.h5")), "no half-written file left"

    result = train(config, say=silent)
    assert result.history["epoch"].tolist() == [1]


@pytest.mark.slow
def test_corrupt_images_in_a_folder_are_skipped_and_reported(tmp_path):
    data = tmp_path / "photos"
    for i, name in enumerate(("round", "square")):
        (data / name).mkdir(parents=True)
        for j in range(10):
            Image.new("RGB", (24, 24), (200 * i, 20 * j, 90)).save(data / name / f"{j}.png")
    (data / "round" / "empty.jpg").write_bytes(b"")
    (data / "square" / "truncated.png").write_bytes(
        (data / "square" / "0.png").read_bytes()[:40])
    out, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text(tiny_config(
        None, [StageConfig("train", epochs=1, unfreeze="all", augment=False)],
        recipe="folder", backbone="scratch", data={"dataset": "folder"}).to_yaml())
    result = CliRunner().invoke(main, ["train", "folder", "--config", str(config),
                                       "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable files" in result.output
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(Path(p).name for p in skipped["path"]) == ["empty.jpg", "truncated.png"]
    assert skipped["reason"].str.len().min() > 0
    assert (out / "metrics.csv").is_file()


def test_loading_is_safe_no_pickle_and_keras_safe_mode(tmp_path):
    for path in sorted((ROOT / "tltk").rglob("*.py")):
        source = path.read_text()
        assert "import pickle" not in source and "safe_mode=False" not in source, path
        for call in re.findall(r"np\.load\((.*?)\)", source, flags=re.S):
            assert "allow_pickle=False" in call, f"{path}: np.load({call})"
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="safe_mode"):
        load_keras_file(tmp_path / "lambda.keras")  # code in a model file is never run


# --- ten kill points over both stages, SIGKILL and Ctrl-C ----------------------------

# Feature extraction, the frozen stage on cached features, the stage boundary, the
# fine-tuning stage on images and the final evaluation.
KILL_POINTS = ["features:train:mid-extraction", "features:val:mid-extraction",
               "head:1:mid-epoch", "head:2:checkpoint-write", "head:end",
               "finetune:1:mid-epoch", "finetune:1:checkpoint-write", "finetune:2:mid-epoch",
               "evaluate:start", "evaluate:best-test"]


def two_stage_yaml(cache_dir: Path) -> str:
    """The tiny backbone: a frozen, cached head stage, then fine-tuning with augmentation,
    a dropout head and a cosine schedule (their states must survive a kill)."""
    return RunConfig(
        recipe="demo", backbone="tiny", weights="none", batch_size=16, deterministic=True,
        cache_dir=str(cache_dir),
        data=DataConfig(dataset="demo", image_size=32, per_class=4, val_fraction=0.05,
                        test_fraction=0.05),
        head=HeadConfig(layers=1, units=16, dropout=0.5),
        stages=[StageConfig("head", epochs=2, unfreeze="none", augment=False),
                StageConfig("finetune", epochs=2, optimizer="adam", lr=1e-3, unfreeze="all",
                            schedule="cosine")]).to_yaml()


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    """The tiny backbone registered, and one uninterrupted reference run of the config."""
    from tests.tiny import TINY
    from tltk.models import backbones

    backbones.BACKBONES.register("tiny", TINY)
    root = tmp_path_factory.mktemp("kill")
    (root / "reference.yaml").write_text(two_stage_yaml(root / "reference-cache"))
    done = CliRunner().invoke(main, ["train", "demo", "--config", str(root / "reference.yaml"),
                                     "--out", str(root / "reference")])
    assert done.exit_code == 0, done.output
    yield root
    backbones.BACKBONES.unregister("tiny")


def assert_same_as_reference(run: Path, reference: Path) -> None:
    assert {p.name for p in run.iterdir()} == COMPLETE, "complete, no backup or temp files"
    for name in ("history.csv", "metrics.csv"):
        assert (run / name).read_text() == (reference / name).read_text(), name
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def fresh_run(root: Path, tag: str) -> tuple[Path, Path]:
    """A config whose feature cache is empty (extraction runs again), and its --out."""
    config = root / f"{tag}.yaml"
    config.write_text(two_stage_yaml(root / f"{tag}-cache"))
    return config, root / tag


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_each_point_then_resume_matches_uninterrupted(two_stage, point):
    config, run = fresh_run(two_stage, point.replace(":", "-"))
    killed_run = killed(["train", "demo", "--config", str(config), "--out", str(run)], point,
                        tiny=True)
    assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    resumed = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert_same_as_reference(run, two_stage / "reference")


@pytest.mark.slow
def test_ctrl_c_at_each_point_stops_in_one_line_and_resumes_to_the_same_result(
        two_stage, monkeypatch):
    """One run interrupted at all ten points in turn, each resume reaching the next."""
    config, run = fresh_run(two_stage, "ctrl-c")
    monkeypatch.setenv("TLTK_FAULT_SIGNAL", "INT")
    args = ["train", "demo", "--config", str(config), "--out", str(run)]
    for point in KILL_POINTS:
        monkeypatch.setenv("TLTK_FAULT", point)
        stopped = CliRunner().invoke(main, args)
        assert stopped.exit_code == 130, (point, stopped.output)
        assert "Traceback" not in stopped.output
        message = (f"interrupted: {run} is resumable; continue it with "
                   f"`tltk train --resume {run}`")
        assert stopped.output.splitlines()[-1] == message, (point, stopped.output)
        status = json.loads((run / "run.json").read_text())
        assert status["status"] == "interrupted", point
        args = ["train", "--resume", str(run)]
    monkeypatch.delenv("TLTK_FAULT")
    resumed = CliRunner().invoke(main, args)
    assert resumed.exit_code == 0, resumed.output
    assert_same_as_reference(run, two_stage / "reference")
    assert len(json.loads((run / "run.json").read_text())["resumed"]) == len(KILL_POINTS)


@pytest.mark.slow
def test_ctrl_c_in_a_real_process_is_one_line_and_exit_130(two_stage):
    config, run = fresh_run(two_stage, "sigint")
    stopped = tltk_cli(["train", "demo", "--config", str(config), "--out", str(run)],
                       {"TLTK_FAULT": "head:1:mid-epoch", "TLTK_FAULT_SIGNAL": "INT"},
                       tiny=True)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    # The last line (a small-split warning may come before it, at the run's start).
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"interrupted: {run} is resumable; continue it with `tltk train --resume {run}`")
    assert "Traceback" not in stopped.stderr
    resumed = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert_same_as_reference(run, two_stage / "reference")
