"""The run directory: every file is written atomically (temp file + rename).

Layout of a run directory:
    config.yaml     the fully resolved RunConfig
    run.json        status (running | complete | failed), timings, stage log
    classes.json    class names, in label order
    history.csv     one row per epoch across all stages, with a `stage` column
    best.keras      the model with the best validation top-1 accuracy
    final.keras     the model after the last epoch
    metrics.csv     weights,split,top1,topk,k (accuracies in percent)
    predictions/    <weights>-<split>.npz: probs, labels (for reports and ensembles)
    skipped.csv     files a folder source skipped, with reasons (when any)

Example:
    >>> run = RunDir.create("runs/x", config)
    >>> run.write_json("classes.json", ["cat", "dog"])
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tltk.errors import TltkError

STATUS_FILE = "run.json"


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temp path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; run files should be as readable as any other output.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False))


def write_npz(path: Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def save_model(model, path: Path) -> None:
    """Save a Keras model to a `.keras` file atomically."""
    with atomic_path(path) as tmp:
        model.save(tmp)


class RunDir:
    """A run directory; see the module docstring for its files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, config_yaml: str) -> RunDir:
        """Create the directory, refusing to overwrite a different or finished run."""
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            status = run.status()
            if status is None:
                raise TltkError(f"--out: {run.path} exists and is not a tltk run; "
                                "choose another --out")
            if status.get("status") == "complete":
                raise TltkError(f"--out: {run.path} already holds a finished run; "
                                "choose another --out")
            if (run.path / "config.yaml").read_text() != config_yaml:
                raise TltkError(f"--out: {run.path} holds an unfinished run with a different "
                                "config; choose another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        write_text(run.path / "config.yaml", config_yaml)
        run.set_status("running", started=time.time())
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def status(self) -> dict | None:
        path = self.path / STATUS_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def set_status(self, status: str, **extra) -> None:
        data = self.status() or {}
        data.update(status=status, updated=time.time(), **extra)
        self.write_json(STATUS_FILE, data)

    def write_json(self, name: str, data) -> None:
        write_text(self.path / name, json.dumps(data, indent=2) + "\n")

    def read_json(self, name: str):
        return json.loads((self.path / name).read_text())

    def class_names(self) -> list[str]:
        return self.read_json("classes.json")

    def metrics(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "metrics.csv")

    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "history.csv")

    def predictions(self, weights: str, split: str) -> dict[str, np.ndarray]:
        with np.load(self.path / "predictions" / f"{weights}-{split}.npz",
                     allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


def open_run(path: str | Path) -> RunDir:
    """Open an existing run directory, with a clear error if it is not one."""
    run = RunDir(path)
    if not (run.path / "config.yaml").is_file():
        raise TltkError(f"RUN: {run.path} is not a tltk run directory (no config.yaml)")
    return run
