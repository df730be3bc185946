"""Files written atomically and read back checked: the I/O every part of tltk uses.

Writes go to a temporary file renamed into place (`atomic_path`), after checking that
the disk has room (`require_space`); a full disk or a read-only folder becomes one line
naming the folder (`storage_error`). Reads (`read_json`, `read_yaml`, `read_csv`,
`read_npz`) turn a missing, truncated, garbled or wrongly shaped file into a one-line
`TltkError` that names it and says what to do (`damaged`). `tltk.rundir` builds the run
directory on these.

Example::

    write_csv(Path("out/table.csv"), frame)
    frame = read_csv(Path("out/table.csv"), columns=["a", "b"])
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import os
import shutil
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pandas.errors import EmptyDataError, ParserError

from tltk.errors import TltkError

# Write failures the user fixes outside tltk (space, permissions, a read-only mount).
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                  errno.EPERM, errno.ENOTDIR}
# Room left beyond a write's own size (file-system metadata, the run's small files).
SPACE_SLACK = 1_000_000
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


def is_storage_error(exc: BaseException) -> bool:
    """Whether `exc` is a write failure the user fixes outside tltk (see STORAGE_ERRORS).

    h5py reports a full disk in its message ("errno = 28") with no `errno` of its own.
    """
    if getattr(exc, "errno", None) in STORAGE_ERRORS:
        return True
    return isinstance(exc, (OSError, RuntimeError)) and (
        f"errno = {errno.ENOSPC}," in str(exc) or os.strerror(errno.ENOSPC) in str(exc))


def _mb(nbytes: float) -> str:
    """Bytes as a rounded size for messages.

    Example:
        >>> _mb(3.2e6), _mb(2.5e9)
        ('3 MB', '2.5 GB')
    """
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f} MB"


def require_space(folder: Path, need: float, what: str = "") -> None:
    """Refuse a write of about `need` bytes into `folder` before it starts when the disk
    has less room: a full disk found mid-write can crash h5py, and a memory-mapped
    cache dies of SIGBUS.

    Example::

        require_space(Path("runs/x"), 25e6, "the run")
        # TltkError: not enough space in runs/x: the run needs about 25 MB, 3 MB free; ...
    """
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if free < need + SPACE_SLACK:
        raise TltkError(f"not enough space in {folder}: {what or 'this write'} needs about "
                        f"{_mb(need + SPACE_SLACK)}, {_mb(free)} free; free space (or move the "
                        "folder to a larger disk), then rerun the same command to resume")


def model_bytes(model, optimizer: bool = True) -> int:
    """Bytes a saved `model` takes: its weights, and its optimizer's state when built.

    Example::

        model_bytes(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))  # 40
    """
    variables = list(model.weights)
    if optimizer and getattr(model, "optimizer", None) is not None:
        variables += list(getattr(model.optimizer, "variables", []))
    return int(sum(np.prod(v.shape) * np.dtype(str(getattr(v.dtype, "name", v.dtype))).itemsize
                   for v in variables))


def _release(tmp: str, exc: BaseException) -> None:
    """After a storage failure: empty the temp file and drop the frames that hold its
    writer (h5py), so the writer's last flush finds room and nothing crashes at exit."""
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    traceback.clear_frames(exc.__traceback__)
    gc.collect()


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
    except (OSError, RuntimeError) as exc:
        if is_storage_error(exc):
            _release(tmp, exc)
            raise storage_error(path, exc) from None
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
    require_space(Path(path).parent, model_bytes(model), Path(path).name)
    with atomic_path(path) as tmp:
        plain.save(tmp)


def save_weights(model, path: Path) -> None:
    """Save a model's weights to a `.weights.h5` file atomically, when there is room."""
    require_space(Path(path).parent, model_bytes(model, optimizer=False), Path(path).name)
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
