"""The run directory (tltk.rundir): atomic files, the lock, resume checks, status."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from tltk.config import RunConfig
from tltk.errors import TltkError
from tltk.fileio import atomic_path, storage_error, write_npz, write_text
from tltk.rundir import RunDir, same_run


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "run" / "metrics.csv"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.csv"]


def test_atomic_files_replace_in_one_rename_with_normal_permissions(tmp_path):
    target = tmp_path / "deep" / "probs.npz"
    write_npz(target, probs=np.eye(2, dtype=np.float32))
    with np.load(target, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["probs"], np.eye(2))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_a_full_disk_becomes_one_line_naming_the_file(tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(TltkError) as info:
        write_text(tmp_path / "best.keras", "x")
    assert str(info.value) == str(storage_error(tmp_path / "best.keras", OSError(errno.ENOSPC, "")))
    assert "\n" not in str(info.value) and "No space left on device" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_second_process_cannot_train_into_a_locked_run(tmp_path):
    yaml = RunConfig(recipe="demo").to_yaml()
    first = RunDir.create(tmp_path / "run", yaml)
    try:
        with pytest.raises(TltkError, match="being written by another tltk process"):
            RunDir.create(tmp_path / "run", yaml)
    finally:
        first.close()
    again = RunDir.create(tmp_path / "run", yaml)  # released: an unfinished run resumes
    assert again.resumed
    again.close()


def test_finished_different_and_foreign_directories_are_refused(tmp_path):
    yaml = RunConfig(recipe="demo").to_yaml()
    run = RunDir.create(tmp_path / "done", yaml)
    assert run.status()["status"] == "running" and not run.resumed
    run.set_status("complete")
    run.close()
    with pytest.raises(TltkError, match="already holds a finished run"):
        RunDir.create(tmp_path / "done", yaml)
    other = RunDir.create(tmp_path / "other", yaml)
    other.close()
    with pytest.raises(TltkError, match="unfinished run with a different config"):
        RunDir.create(tmp_path / "other", RunConfig(recipe="demo", seed=5).to_yaml())
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    with pytest.raises(TltkError, match="exists and is not a tltk run"):
        RunDir.create(tmp_path / "photos", yaml)
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b""  # untouched


def test_same_run_ignores_runtime_keys_only():
    assert same_run("seed: 0\nout: a\n", "seed: 0\nout: /abs/a\n")
    assert not same_run("seed: 0\n", "seed: 1\n")
