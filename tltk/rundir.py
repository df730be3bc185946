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
    backup/         resume state of an unfinished run (see `tltk.engine.checkpoint`); removed when
                    the run completes

An unfinished run whose config matches is resumed, not restarted; while a process
trains into a run directory it holds an exclusive lock on it, so a second process
pointed at the same `--out` is refused instead of interleaving its writes.

Example:
    >>> run = RunDir.create("runs/x", config)
    >>> run.write_json("classes.json", ["cat", "dog"])
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tltk.errors import TltkError

STATUS_FILE = "run.json"
# Config keys that may differ between a run and its resume: the directory may be named
# another way (relative or absolute), and the same run may be resumed on other devices.
RUNTIME_KEYS = ("out", "strategy")
# Write failures the user fixes outside tltk (space, permissions, a read-only mount).
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                  errno.EPERM, errno.ENOTDIR}


def storage_error(path: Path, exc: OSError) -> TltkError:
    """The one-line error for a file that cannot be written (disk full, read-only, ...).

    Example:
        >>> str(storage_error(Path("runs/x/best.keras"), OSError(28, "No space left")))
        'cannot write runs/x/best.keras: No space left on device; free space or ...'
    """
    reason = os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0][:120]
    return TltkError(f"cannot write {path}: {reason}; free space or make it writable, then "
                     "rerun the same command to resume (or choose another --out)")


def _suffix(path: Path) -> str:
    # Keras only writes weights to names ending in `.weights.h5`.
    return ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix or ".tmp"


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temp path beside `path`; on success it replaces `path` in one rename.

    A kill at any moment leaves the old file or the new one, never a torn one; a
    storage failure (disk full, read-only) becomes a one-line `TltkError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_suffix(path),
                                   dir=path.parent)
    except OSError as exc:
        if exc.errno in STORAGE_ERRORS or isinstance(exc, FileExistsError):
            raise storage_error(path, exc) from exc
        raise
    os.close(fd)
    # mkstemp creates 0600 files; run files should be as readable as any other output.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in STORAGE_ERRORS:
            raise storage_error(path, exc) from exc
        raise
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
    """Save arrays to an `.npz` atomically, streamed to disk (no copy in memory)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)


def save_model(model, path: Path) -> None:
    """Save a Keras model to a `.keras` file atomically."""
    with atomic_path(path) as tmp:
        model.save(tmp)


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

        Example:
            >>> run = RunDir.create("runs/x", config.to_yaml())
            >>> run.resumed  # True when runs/x held an unfinished run of this config
            False
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
        status = (self.status() or {}).get("status")
        if status == "complete":
            self.close()
            raise TltkError(f"--out: {self.path} already holds a finished run; "
                            "choose another --out")
        if not same_run((self.path / "config.yaml").read_text(), config_yaml):
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
        path = self.path / STATUS_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def set_status(self, status: str, **extra) -> None:
        """Update run.json; a `None` value removes that key (e.g. a cleared error)."""
        data = self.status() or {}
        data.update(status=status, updated=time.time(), **extra)
        self.write_json(STATUS_FILE, {k: v for k, v in data.items() if v is not None})

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


def same_run(saved_yaml: str, new_yaml: str) -> bool:
    """Whether two config.yaml texts describe the same run (ignoring `RUNTIME_KEYS`).

    Example:
        >>> same_run("seed: 0\nout: a\n", "seed: 0\nout: /abs/a\n")
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
