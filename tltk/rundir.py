"""The run directory: every file is written atomically (temp file + rename).

Layout of a run directory:
    config.yaml     the fully resolved RunConfig
    run.json        status (running | complete | failed), timings, stage log
    classes.json    class names, in label order
    history.csv     one row per epoch across all stages, with a `stage` column (epochs
                    count from 1; accuracies are fractions 0-1)
    best.keras      the model with the best validation top-1 accuracy
    final.keras     the model after the last epoch
    metrics.csv     weights,split,top1,topk,k (accuracies in percent)
    predictions/    <weights>-<split>.npz: probs, labels (for reports and ensembles)
    skipped.csv     files a folder source skipped, with reasons (when any)
    backup/         resume state of an unfinished run (see `tltk.engine.checkpoint`); removed when
                    the run completes

An unfinished run whose config matches is resumed, not restarted; while a process
trains into a run directory it holds an exclusive lock on it, so a second process
pointed at the same `--out` is refused instead of interleaving its writes.

Files are written and read back through `tltk.fileio` (atomic writes after a free-space
check; checked reads): a missing, truncated, garbled or wrongly shaped file is a
one-line `TltkError` that names it, says what is wrong and what to do, never a traceback.

Example::

    run = RunDir.create("runs/x", config)
    run.write_json("classes.json", ["cat", "dog"])
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tltk.errors import TltkError
from tltk.fileio import (
    REEVALUATE,
    RETRAIN,
    damaged,
    read_csv,
    read_json,
    read_npz,
    read_text,
    read_yaml,
    write_text,
)

STATUS_FILE = "run.json"
# Config keys that may differ between a run and its resume: the directory may be named
# another way (relative or absolute), and the same run may be resumed on other devices.
RUNTIME_KEYS = ("out", "strategy")


class RunDir:
    """A run directory; see the module docstring for its files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.resumed = False  # True when `create` found this run unfinished
        self._lock_fd: int | None = None

    @classmethod
    def create(cls, path: str | Path, config_yaml: str) -> RunDir:
        """Create the directory, or reopen an unfinished run of the same config.

        A finished run, a different run or a folder that is not a run is refused;
        the returned run holds this process's lock on the directory (see `close`).

        Example::

            run = RunDir.create("runs/x", config.to_yaml())
            run.resumed  # -> False; True when runs/x held an unfinished run of this config
        """
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise TltkError(f"--out: {run.path} is a file, not a directory; choose another --out")
        existing = run.path.is_dir() and any(run.path.iterdir())
        if existing and not (run.path / "config.yaml").is_file():
            raise TltkError(f"--out: {run.path} exists and is not a tltk run; "
                            "choose another --out")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TltkError(f"--out: cannot create {run.path} ({exc.strerror or exc}); "
                            "choose a writable --out") from None
        run._lock()
        if existing:
            run._check_resumable(config_yaml)
            run.resumed = True
        write_text(run.path / "config.yaml", config_yaml)
        if run.resumed:
            resumes = (run.status() or {}).get("resumed", [])
            run.set_status("running", error=None, resumed=[*resumes, time.time()])
        else:
            run.set_status("running", started=time.time())
        return run

    def _check_resumable(self, config_yaml: str) -> None:
        try:
            status = (self.status() or {}).get("status")
            saved = read_text(self.path / "config.yaml")
        except TltkError:
            self.close()
            raise
        if status == "complete":
            self.close()
            raise TltkError(f"--out: {self.path} already holds a finished run; "
                            "choose another --out")
        if not same_run(saved, config_yaml):
            self.close()
            raise TltkError(f"--out: {self.path} holds an unfinished run with a different "
                            "config; rerun it with its own settings (--resume "
                            f"{self.path}) or choose another --out")

    def _lock(self) -> None:
        """Lock the directory for this process; the kernel drops the lock when it dies."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): runs are simply not guarded
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TltkError(f"--out: {self.path} is being written by another tltk process; "
                            "wait for it to finish or choose another --out") from None
        self._lock_fd = fd

    def close(self) -> None:
        """Release the directory lock (also released when the process exits)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def file(self, name: str) -> Path:
        return self.path / name

    def status(self) -> dict | None:
        """run.json, or None when there is none yet."""
        path = self.path / STATUS_FILE
        return read_json(path, dict) if path.exists() else None

    def set_status(self, status: str, **extra) -> None:
        """Update run.json; a `None` value removes that key (e.g. a cleared error)."""
        data = self.status() or {}
        data.update(status=status, updated=time.time(), **extra)
        self.write_json(STATUS_FILE, {k: v for k, v in data.items() if v is not None})

    def write_json(self, name: str, data) -> None:
        write_text(self.path / name, json.dumps(data, indent=2) + "\n")

    def read_json(self, name: str, expect: type | None = None, fix: str = RETRAIN):
        return read_json(self.path / name, expect, fix)

    def config_dict(self) -> dict:
        """config.yaml as a plain mapping (checked to be one)."""
        return read_yaml(self.path / "config.yaml", dict)

    def class_names(self) -> list[str]:
        """classes.json: a non-empty list of distinct names."""
        path = self.path / "classes.json"
        names = read_json(path, list)
        if not names or not all(isinstance(n, str) for n in names) or \
                len(set(names)) != len(names):
            raise damaged(path, "damaged (expected a list of distinct class names)")
        return names

    def metrics(self) -> pd.DataFrame:
        """metrics.csv, checked; a trained run's has best and final rows for every split."""
        path = self.path / "metrics.csv"
        frame = read_csv(path, ["weights", "split", "top1", "topk", "k"],
                         ["top1", "topk", "k"], REEVALUATE)
        splits = {w: set(frame.loc[frame["weights"] == w, "split"]) for w in ("best", "final")}
        # A trained run (its stages are in run.json) evaluates both; others may hold one.
        trained = path.with_name(STATUS_FILE).is_file() and bool((self.status() or {}).get(
            "stages"))
        if (splits["final"] or trained) and splits["best"] != splits["final"]:
            # A file cut at a line boundary parses; its missing rows show here.
            raise damaged(path, "damaged (best and final rows do not cover the same splits: "
                          "truncated?)", REEVALUATE)
        return frame

    def history(self) -> pd.DataFrame:
        return read_csv(self.path / "history.csv", ["epoch", "stage"], ["epoch"])

    def predictions(self, weights: str, split: str) -> dict[str, np.ndarray]:
        """predictions/<weights>-<split>.npz: probs [N, C] and labels [N], checked."""
        path = self.path / "predictions" / f"{weights}-{split}.npz"
        arrays = read_npz(path, ("probs", "labels"), REEVALUATE)
        probs, labels = arrays["probs"], arrays["labels"]
        if probs.ndim != 2 or labels.shape != probs.shape[:1] or \
                not np.issubdtype(labels.dtype, np.integer):
            raise damaged(path, f"damaged (probs {probs.shape}, labels {labels.shape})",
                          REEVALUATE)
        if not np.isfinite(probs).all() or (labels < 0).any() or \
                (labels >= probs.shape[1]).any():
            raise damaged(path, "damaged (non-finite probabilities or labels out of range)",
                          REEVALUATE)
        return arrays


def same_run(saved_yaml: str, new_yaml: str) -> bool:
    """Whether two config.yaml texts describe the same run (ignoring `RUNTIME_KEYS`).

    Example:
        >>> same_run("seed: 0\\nout: a\\n", "seed: 0\\nout: /abs/a\\n")
        True
    """
    def significant(text: str) -> dict:
        data = yaml.safe_load(text) or {}
        return {k: v for k, v in data.items() if k not in RUNTIME_KEYS}

    try:
        return significant(saved_yaml) == significant(new_yaml)
    except yaml.YAMLError:
        return False


def open_run(path: str | Path) -> RunDir:
    """Open an existing run directory, with a clear error if it is not one."""
    run = RunDir(path)
    if not (run.path / "config.yaml").is_file():
        raise TltkError(f"RUN: {run.path} is not a tltk run directory (no config.yaml)")
    return run
