"""--seed and --deterministic: two runs give identical history.csv and metrics.csv, and a
run writes only into its run directory and the cache. (test_faults.py shows the same
across processes: epochs trained in killed subprocesses match an in-process run.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.conftest import SMALL_SPLITS, tiny_config
from tltk.config import HeadConfig, RunConfig, StageConfig
from tltk.engine.run import train
from tltk.log import silent


def config(out=None) -> RunConfig:
    """Everything random is on: seeded splits, per-epoch shuffles, augmentation, dropout
    and initialisation."""
    return tiny_config(out, [StageConfig("train", epochs=2, optimizer="adam", unfreeze="all")],
                       recipe="demo", backbone="scratch", data=SMALL_SPLITS, seed=7,
                       head=HeadConfig(layers=1, units=16, dropout=0.5), deterministic=True)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.slow
def test_same_seed_runs_are_identical_and_write_only_their_run_and_cache_dirs(
        tmp_path, monkeypatch):
    home, cwd, tmp = (tmp_path / name for name in ("home", "cwd", "tmp"))
    for folder in (home, cwd, tmp):
        folder.mkdir()
    with monkeypatch.context() as patch:  # TLTK_CACHE stays the test session's
        patch.setenv("HOME", str(home))
        patch.setenv("TMPDIR", str(tmp))
        patch.setattr(tempfile, "tempdir", str(tmp))
        patch.chdir(cwd)
        first = train(config(), say=silent)  # default --out: runs/<recipe>-<backbone>-<time>
        run = first.run_dir.resolve()
    assert run.parent == cwd / "runs"
    assert files_under(cwd) == {"runs", f"runs/{run.name}"} | \
        {f"runs/{run.name}/{name}" for name in files_under(run)}
    assert files_under(home) == set()
    # TensorFlow's autograph keeps the code it generates in TMPDIR until the process exits.
    assert {f for f in files_under(tmp) if not f.startswith("__autograph_generated_file")} \
        == set()

    second = train(config(tmp_path / "second"), say=silent)
    for name in ("history.csv", "metrics.csv"):
        assert (second.run_dir / name).read_text() == (run / name).read_text(), name
    assert len(second.history) == 2
