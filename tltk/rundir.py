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

Every file is also checked when it is read back (`read_json`, `read_yaml`, `read_csv`,
`read_npz`): a missing, truncated, garbled or wrongly shaped file is a one-line
`TltkError` that names it, says what is wrong and what to do, never a traceback.

Example::

    run = RunDir.create("runs/x", config)
    run.write_json("classes.json", ["cat", "dog"])
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pandas.errors import EmptyDataError, ParserError

from tltk.errors import TltkError

STATUS_FILE = "run.json"
# Config keys that may differ between a run and its resume: the directory may be named
# another way (relative or absolute), and the same run may be resumed on other devices.
RUNTIME_KEYS = ("out", "strategy")
# Write failures the user fixes outside tltk (space, permissions, a read-only mount).
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                  errno.EPERM, errno.ENOTDIR}
# What to do about a damaged file, by what can remake it.
RETRAIN = "retrain into a new --out (or delete the run folder and train again)"
REEVALUATE = "rewrite it with `tltk evaluate RUN --write`"


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


# --- reading back ----------------------------------------------------------------

def damaged(path: Path, problem: str, fix: str = RETRAIN) -> TltkError:
    """The one-line error for a file tltk cannot use: which file, what is wrong, what to do.

    Example:
        >>> str(damaged(Path("runs/x/classes.json"), "not valid JSON"))
        'runs/x/classes.json: not valid JSON; retrain into a new --out (or delete ...)'
    """
    return TltkError(f"{path}: {problem}; {fix}")


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:100]


def read_bytes(path: Path, fix: str = RETRAIN) -> bytes:
    """The bytes of `path`; a missing or unreadable file is a `TltkError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise damaged(path, "missing", fix)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise damaged(path, f"cannot be read ({exc.strerror or _reason(exc)})", fix) from None


def read_text(path: Path, fix: str = RETRAIN) -> str:
    try:
        return read_bytes(path, fix).decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(path, "damaged (not UTF-8 text)", fix) from None


def _check_type(path: Path, data, expect: type | None, fix: str):
    if expect is not None and not isinstance(data, expect):
        raise damaged(path, f"damaged (expected a {_kind(expect)}, got "
                      f"{_kind(type(data))})", fix)
    return data


def _kind(cls: type) -> str:
    return {dict: "mapping", list: "list", str: "string"}.get(cls, cls.__name__)


def read_json(path: Path, expect: type | None = None, fix: str = RETRAIN):
    """Parse a JSON file, checking its top-level type.

    Example::

        read_json(Path("runs/x/classes.json"), list)
        # ['cat', 'dog']
    """
    text = read_text(path, fix)
    try:
        data = json.loads(text)
    except ValueError:
        problem = "empty" if not text.strip() else "damaged (not valid JSON)"
        raise damaged(path, problem, fix) from None
    return _check_type(path, data, expect, fix)


def read_yaml(path: Path, expect: type | None = dict, fix: str = RETRAIN):
    """Parse a YAML file (safe loader), checking its top-level type."""
    text = read_text(path, fix)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise damaged(path, "damaged (not valid YAML)", fix) from None
    if data is None:
        raise damaged(path, "empty", fix)
    return _check_type(path, data, expect, fix)


def read_csv(path: Path, columns=(), numeric=(), fix: str = RETRAIN, **kwargs) -> pd.DataFrame:
    """Read a CSV that must have `columns`; `numeric` ones must be complete numbers.

    A truncated file usually ends in a short row, whose missing cells fail that check.
    """
    read_bytes(path, fix)  # missing or unreadable
    try:
        frame = pd.read_csv(path, **kwargs)
    except EmptyDataError:
        raise damaged(path, "empty", fix) from None
    except (ParserError, UnicodeDecodeError, ValueError) as exc:
        raise damaged(path, f"damaged ({_reason(exc)})", fix) from None
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        raise damaged(path, f"damaged (no column {', '.join(lacking)})", fix)
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            raise damaged(path, f"damaged (column {column} has missing or non-numeric "
                          "values)", fix)
    return frame


def read_npz(path: Path, keys=(), fix: str = RETRAIN) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` file (no pickle); the zip's CRCs catch flipped bytes."""
    read_bytes(path, fix)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:  # zipfile, zlib, numpy and OS errors all mean "damaged"
        raise damaged(path, f"damaged ({_reason(exc)})", fix) from None
    lacking = [k for k in keys if k not in arrays]
    if lacking:
        raise damaged(path, f"damaged (no array {', '.join(lacking)})", fix)
    return arrays


def file_checksum(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (caches can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(path: Path) -> Path:
    return Path(f"{path}.sha256")


def write_checksum(path: Path) -> None:
    """Write `<path>.sha256` beside a finished file; it is written after the file, so
    a kill in between leaves a file without one, which `verify_checksum` rejects."""
    write_text(checksum_path(path), file_checksum(path) + "\n")


def verify_checksum(path: Path) -> str | None:
    """None when `path` matches its `.sha256` sidecar, else what is wrong.

    Example::

        verify_checksum(Path("cache/ab12.npz"))  # None: intact
    """
    sidecar = checksum_path(path)
    try:
        expected = sidecar.read_text().strip()
        actual = file_checksum(path)
    except OSError as exc:
        missing = isinstance(exc, FileNotFoundError)
        return "no checksum (unfinished write)" if missing else f"unreadable ({exc.strerror})"
    return None if actual == expected else "checksum mismatch (truncated or damaged)"


def save_model(model, path: Path) -> None:
    """Save a Keras model to a `.keras` file atomically, without its optimizer.

    A functional model is saved through an uncompiled model over the same layers: the
    file then holds no compile config, so `keras.models.load_model(path)` needs none of
    tltk's optimizers and schedules, and no tltk at all (its layers are built-in).
    """
    import keras

    inputs = getattr(model, "inputs", None)
    plain = keras.Model(inputs, model.outputs, name=model.name) if inputs else model
    with atomic_path(path) as tmp:
        plain.save(tmp)


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
