"""Resume: an interrupted run continues after its last committed epoch and ends exactly
as an uninterrupted one, also in stages that train the head (or an upper sub-model) on
cached features. Interruptions here are exceptions raised at the fault points; the
SIGKILL versions are in test_faults.py."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.conftest import SMALL_SPLITS, tiny_config
from tltk import faults
from tltk.cli import main
from tltk.config import HeadConfig, RunConfig, StageConfig
from tltk.engine import checkpoint as resume
from tltk.engine.run import train
from tltk.errors import TltkError
from tltk.log import silent
from tltk.rundir import RunDir


class Interrupted(BaseException):
    """Stands in for a crash: like KeyboardInterrupt, nothing catches it on the way out."""


@pytest.fixture(autouse=True)
def _tiny(tiny_backbone):
    """Every test here trains the two-block "tiny" backbone."""


def cached_stages_config(out) -> RunConfig:
    """The head on cached pooled features of two augmented views (with dropout), then the
    top block + head on cached activations of the block below (SGD with momentum)."""
    return tiny_config(
        out, [StageConfig("bottleneck", epochs=2, unfreeze=0, feature_views=2),
              StageConfig("finetune", epochs=3, optimizer="sgd", lr=1e-3, momentum=0.9,
                          unfreeze=1, cache_features=True, augment=False)],
        data=SMALL_SPLITS, head=HeadConfig(layers=1, units=16, dropout=0.5), deterministic=True)


def crash_at(monkeypatch, point: str) -> None:
    def fault_point(name: str) -> None:
        if name == point:
            raise Interrupted(name)

    monkeypatch.setattr(faults, "fault_point", fault_point)


@pytest.mark.slow
def test_interrupted_cached_feature_stages_resume_to_the_uninterrupted_result(
        tmp_path, monkeypatch):
    reference = train(cached_stages_config(tmp_path / "reference"), say=silent)

    config = cached_stages_config(tmp_path / "run")
    for point in ("bottleneck:end", "finetune:2:mid-epoch"):
        crash_at(monkeypatch, point)
        with pytest.raises(Interrupted):
            train(config, say=silent)
    run = RunDir(tmp_path / "run")
    status = run.status()
    assert status["status"] == "failed" and "Interrupted" in status["error"]
    assert [s["name"] for s in status["stages"]] == ["bottleneck"]
    state = resume.stage_state(run, "finetune")
    assert state["epochs_done"] == 1, "epoch 2 was cut short; epoch 1 is the last commit"
    assert (run.path / "backup" / "stage-bottleneck.weights.h5").is_file()

    monkeypatch.setattr(faults, "fault_point", lambda name: None)
    result = train(config, say=silent)  # the same --out: resumes on its own
    status = json.loads((result.run_dir / "run.json").read_text())
    assert status["status"] == "complete" and len(status["resumed"]) == 2
    assert "error" not in status
    assert not (result.run_dir / "backup").exists(), "resume state is removed when complete"
    assert [s["cached_features"] for s in status["stages"]] == ["pooled", "activations"]
    for name in ("history.csv", "metrics.csv"):
        assert (result.run_dir / name).read_text() == \
            (reference.run_dir / name).read_text(), name
    assert status["best"] == json.loads((reference.run_dir / "run.json").read_text())["best"]


def test_resume_of_a_finished_run_is_a_one_line_error(tmp_path):
    run = tmp_path / "done"
    run.mkdir()
    (run / "config.yaml").write_text(RunConfig(recipe="demo").to_yaml())
    (run / "run.json").write_text(json.dumps({"status": "complete"}))
    result = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: --resume: {run} is a finished run, there is nothing to resume; its results "
        f"are in {run / 'metrics.csv'}")


def test_resume_keeps_the_runs_own_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config = RunConfig(recipe="demo", backbone="scratch", seed=3, out="elsewhere")
    (run / "config.yaml").write_text(config.to_yaml())
    resumed = resume.resume_config(run)
    assert resumed.seed == 3 and resumed.out == str(run)
    with pytest.raises(TltkError, match="is a 'demo' run, not 'folder'"):
        resume.resume_config(run, recipe="folder")
    other = CliRunner().invoke(main, ["train", "--resume", str(run), "--out", str(tmp_path)])
    assert other.exit_code == 2 and "--out: not used with --resume" in other.output


def test_a_fault_point_fires_on_the_main_thread(monkeypatch, tmp_path):
    """Keras dispatches async-safe batch hooks on a worker thread; a fault's Ctrl-C sent
    from there would land wherever the main thread is (a `__del__` swallows it)."""
    callback = resume.EpochCheckpoint(RunDir(tmp_path / "run"), "head", None, ())
    monkeypatch.delenv("TLTK_FAULT", raising=False)
    assert callback.async_safe
    monkeypatch.setenv("TLTK_FAULT", "head:1:mid-epoch")
    assert not callback.async_safe
