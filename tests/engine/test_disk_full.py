"""A full disk in a real process, on a real 3 MB tmpfs (root only): one line, exit 2,
and the run resumes once it has room. Without root, `test_faults.py` simulates the
failed writes with a file-size limit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.forked import tltk_cli

# The demo recipe, shrunk: its scratch CNN's 4 MB of weights cannot fit a 3 MB disk.
DEMO = ["train", "demo", "--per-class", "10", "--image-size", "32",
        "--set", "stages.train.epochs=1", "--set", "stages.anneal.epochs=1"]
# `tltk` with the disk's free space misreported: the write itself meets the full disk.
LYING = """
import collections, sys
import shutil
usage = collections.namedtuple("usage", "total used free")
shutil.disk_usage = lambda path: usage(10**12, 0, 10**12)
from tltk.cli import main
main(sys.argv[1:], prog_name="tltk")
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs mounted for the test (skipped unless root can mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
            capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_run_that_cannot_fit_is_refused_before_training(small_disk):
    done = tltk_cli([*DEMO, "--out", str(small_disk / "run")])
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: not enough space in {small_disk / 'run'}: the run needs "
                           "about ") and "MB free" in line and "rerun the same command" in line
    assert "epoch" not in done.stdout  # refused before any training


@pytest.mark.slow
def test_a_disk_filling_mid_run_is_one_line_and_the_moved_run_resumes(small_disk, tmp_path):
    run = small_disk / "run"
    done = subprocess.run([sys.executable, "-c", LYING, *DEMO, "--out", str(run)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    # Before: two h5py tracebacks, then a segmentation fault (exit 139).
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: cannot write {run / 'backup' / 'train'}")
    assert "No space left on device" in line and "rerun the same command" in line
    assert not [p for p in run.rglob(".*") if p.is_file()], "no half-written temp file left"

    moved = tmp_path / "big" / "run"
    shutil.copytree(run, moved)
    resumed = tltk_cli(["train", "--resume", str(moved)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((moved / "run.json").read_text())["status"] == "complete"
    assert Path(moved / "best.keras").is_file()
