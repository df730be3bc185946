"""Every registered recipe in every mode, on the tiny backbone and tiny data.

A recipe joins by registering itself (`tltk.recipes.RECIPES`); a mode joins by
`@mode(NAME)` below. Each recipe is one test whose modes are subtests, so a broken
mode is reported by name (`[demo] dry-run`) while the recipe's other modes still run.
tfds recipes read `tfds.testing.mock_data`; `folder` reads a folder of drawn shapes.
This is the test that catches one mode drifting from the others (as `--dry-run` once
did on every recipe whose first stage used label smoothing).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import mocked
from tests.recipes.test_recipes import dog_splits
from tltk import faults
from tltk.cli import main
from tltk.recipes import RECIPES, get_recipe

# Every recipe at 32 px on the tiny backbone, one epoch per stage.
TINY_ARGS = ["--backbone", "tiny", "--weights", "none", "--image-size", "32",
             "--batch-size", "16"]
EPOCHS = ["--epochs-head", "1", "--epochs-finetune", "1"]
FLOWERS = {"tf_flowers": {"train": np.repeat(np.arange(5), 8)}}

MODES: dict = {}


def mode(name: str):
    """Register a mode: `fn(recipe, case, tmp_path)` runs it and asserts its outcome."""
    def register(fn):
        MODES[name] = fn
        return fn
    return register


class Case:
    """One recipe's data (CLI arguments and tfds mock) and its trained run, made once."""

    def __init__(self, recipe: str, root: Path):
        self.recipe, self.root, self.config = recipe, root, get_recipe(recipe)()
        self.data_args, self.splits = _data(self.config.data.dataset, root)
        self._run = None

    def cli(self, *args: str, data: bool = True):
        """Invoke `tltk ARGS` in-process under the recipe's tfds mock."""
        extra = self.data_args if data else []
        with mocked(self.splits) if self.splits else contextlib.nullcontext():
            return CliRunner().invoke(main, [*args, *extra])

    def ok(self, *args: str, data: bool = True) -> str:
        result = self.cli(*args, data=data)
        assert result.exit_code == 0, result.output[-3000:]
        return result.output

    @property
    def run(self) -> Path:
        """A finished run of the recipe (trained by the `train` mode, or here)."""
        if self._run is None:
            out = self.root / "run"
            self.ok("train", self.recipe, *TINY_ARGS, *EPOCHS, "--out", str(out))
            self._run = out
        return self._run


def _data(dataset: str, root: Path) -> tuple[list[str], dict | None]:
    if dataset == "folder":
        return ["--data", str(_shapes_folder(root / "photos"))], None
    if dataset == "flowers":
        return [], FLOWERS
    if dataset == "dogs":
        return [], dog_splits()
    return ["--per-class", "6"], None  # demo: drawn procedurally


def _shapes_folder(root: Path) -> Path:
    """Three classes of 12 noisy colour squares each."""
    rng = np.random.default_rng(0)
    for label, colour in enumerate([(220, 30, 30), (30, 200, 40), (40, 40, 230)]):
        for i in range(12):
            pixels = np.clip(rng.normal(colour, 30, (36, 36, 3)), 0, 255).astype(np.uint8)
            path = root / f"class{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


@mode("dry-run")
def _dry_run(case: Case, tmp_path: Path) -> None:
    out = case.ok("train", case.recipe, *TINY_ARGS, *EPOCHS, "--dry-run",
                  "--out", str(tmp_path / "dry"))
    assert "dry run: " in out and "estimated training time" in out
    assert not (tmp_path / "dry").exists()


@mode("train")
def _train(case: Case, tmp_path: Path) -> None:
    metrics = pd.read_csv(case.run / "metrics.csv")
    assert set(metrics["weights"]) >= {"best", "final"}
    assert metrics["top1"].between(0, 100).all()


@mode("evaluate")
def _evaluate(case: Case, tmp_path: Path) -> None:
    assert "best" in case.ok("evaluate", str(case.run), data=False)


@mode("predict")
def _predict(case: Case, tmp_path: Path) -> None:
    image = tmp_path / "image.png"
    Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(image)
    out = case.ok("predict", str(case.run), str(image), "--top", "1", "--format", "csv",
                  data=False)
    assert "image.png" in out


@mode("export")
def _export(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "model.keras"
    case.ok("export", str(case.run), "--format", "keras", "--out", str(out), data=False)
    assert out.stat().st_size > 0


@mode("lr-find")
def _lr_find(case: Case, tmp_path: Path) -> None:
    stage = case.config.stages[-1].name
    out = case.ok("lr-find", case.recipe, *TINY_ARGS, "--stage", stage, "--steps", "6",
                  "--out", str(tmp_path / "lr"))
    assert "suggested lr" in out and (tmp_path / "lr" / "lr_find.csv").is_file()


@mode("tune")
def _tune(case: Case, tmp_path: Path) -> None:
    case.ok("tune", case.recipe, *TINY_ARGS, *EPOCHS, "--max-trials", "1",
            "--out", str(tmp_path / "tune"))
    assert len(pd.read_csv(tmp_path / "tune" / "trials.csv")) == 1


@mode("epochs-finetune-0")
def _head_only(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "head-only"
    case.ok("train", case.recipe, *TINY_ARGS, "--epochs-head", "1", "--epochs-finetune", "0",
            "--out", str(out))
    stages = set(pd.read_csv(out / "history.csv")["stage"])
    assert stages == {case.config.stages[0].name}


@mode("kill-and-resume")
def _kill_and_resume(case: Case, tmp_path: Path) -> None:
    out, first = tmp_path / "killed", case.config.stages[0].name
    point = f"{first}:end"

    def interrupt(name: str) -> None:
        if name == point:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(faults, "fault_point", interrupt)
        stopped = case.cli("train", case.recipe, *TINY_ARGS, *EPOCHS, "--out", str(out))
    assert stopped.exit_code == 130 and "resumable" in stopped.output, stopped.output[-2000:]
    assert not (out / "metrics.csv").exists()
    resumed = case.ok("train", "--resume", str(out))
    assert "resuming" in resumed and (out / "metrics.csv").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES.names())
def test_recipe_runs_in_every_mode(recipe, tmp_path, tiny_backbone, subtests):
    case = Case(recipe, tmp_path)
    for name, run_mode in MODES.items():
        with subtests.test(msg=f"[{recipe}] {name}"):
            folder = tmp_path / name
            folder.mkdir()
            run_mode(case, folder)
