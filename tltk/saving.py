"""Loading tltk's saved models anywhere: in tltk's commands, a notebook or a script.

Importing this module (as `import tltk` does) registers every serialisable object a
saved tltk model can hold: the Preprocess and RandomAffine layers, the learning-rate
schedules and the per-block (discriminative) optimizers. `keras.models.load_model`
then reads tltk's `.keras` files in Keras safe mode. `load_model` also checks the file
first (a zip whose every member matches its CRC) and returns the run's class names.

Example::

    import tltk
    loaded = tltk.load_model("runs/demo")  # or "runs/demo/final.keras"
    loaded.class_names[:2], loaded.model.output_shape
    # (['circle', 'ellipse'], (None, 6))
"""

from __future__ import annotations

import codecs
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras

# Importing these registers tltk's serialisable layers, schedules and optimizers.
import tltk.data.augment  # noqa: F401
import tltk.models.preprocessing  # noqa: F401
import tltk.optim.discriminative  # noqa: F401
import tltk.optim.schedules  # noqa: F401
from tltk.config import RUN_WEIGHTS
from tltk.errors import TltkError
from tltk.log import keras_chatter

# Members every `.keras` file holds (Keras 3's zip format).
KERAS_MEMBERS = ("config.json", "model.weights.h5")


class UnsafeModelError(TltkError, ValueError):
    """A model file that holds code (a Lambda layer), which safe mode never runs."""


@dataclass
class LoadedModel:
    """A saved tltk model with the class names of its outputs, in label order.

    Example::

        model, class_names = tltk.load_model("runs/demo")  # it unpacks as a pair
    """

    model: keras.Model
    class_names: list[str] | None
    path: Path

    def __iter__(self):
        return iter((self.model, self.class_names))


def load_model(path_or_run_dir, weights: str = "best") -> LoadedModel:
    """A run's `best.keras` / `final.keras` (or any tltk `.keras` file) and its classes.

    `class_names` comes from the run's classes.json (None for a file outside a run);
    a classes.json that does not match the model's outputs is refused.

    Example::

        model, names = load_model("runs/demo", weights="final")
    """
    from tltk.rundir import RunDir

    path = Path(path_or_run_dir).expanduser()
    if weights not in RUN_WEIGHTS:
        raise TltkError(f"weights: '{weights}' is not one of {', '.join(RUN_WEIGHTS)}")
    if path.is_dir():
        path = path / f"{weights}.keras"
    model = load_keras_file(path)
    run = RunDir(path.parent)
    names = None
    if run.file("classes.json").exists():
        names = run.class_names()
        check_classes(model, names, path, run.file("classes.json"))
    return LoadedModel(model, names, path)


def check_classes(model: keras.Model, names: list[str], model_path: Path,
                  classes_path: Path) -> None:
    """Refuse a classes.json whose length is not the model's number of outputs."""
    outputs = model.output_shape[-1]
    if outputs != len(names):
        raise TltkError(f"{classes_path}: lists {len(names)} classes but {model_path} "
                        f"predicts {outputs}; one of them comes from another run: retrain "
                        "into a new --out (or delete the run folder)")


def load_keras_file(path) -> keras.Model:
    """Load a tltk `.keras` model in Keras safe mode, uncompiled, after checking the file.

    A missing, truncated or garbled file is a one-line `TltkError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise TltkError(f"RUN: model file not found: {path}; is the run finished? "
                        "(retrain into a new --out if it is)")
    problem = zip_problem(path)
    if problem:
        raise TltkError(f"{path}: damaged ({problem}); retrain into a new --out (or delete "
                        "the run folder and train again)")
    # compile=False: evaluation and inference need no optimizer. A head trained on
    # cached features was compiled on its own, so the file still holds that optimizer's
    # state, which Keras reports it skips; nothing here uses it.
    try:
        with keras_chatter():
            return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - whatever Keras raises, the file is unusable
        text = str(exc).strip()
        reason = text.splitlines()[0][:160] if text else type(exc).__name__
        if "safe_mode" in text:
            raise UnsafeModelError(f"{path}: refused, it holds code that Keras safe_mode does "
                                   "not run (a Lambda layer); rebuild the model without "
                                   "it") from None
        raise TltkError(f"{path}: not a model tltk can load ({reason}); retrain into a new "
                        "--out (or delete the run folder)") from None


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def model_file_problem(path: Path) -> str | None:
    """What a file given as a Keras model holds instead of one, or None when it looks
    like one (a `.keras` zip with its members, or an HDF5 file with a model config).

    Example::

        model_file_problem(Path("notes.keras"))
        # "text beginning 'Meeting notes: ...', not a .keras zip or an HDF5 file"
    """
    with open(path, "rb") as file:
        head = file.read(64)
    if not head:
        return "an empty file"
    if head.startswith(HDF5_SIGNATURE):
        return _hdf5_problem(path)
    if not zipfile.is_zipfile(path):
        return f"{_describe_bytes(head)}, not a .keras zip or an HDF5 file"
    return zip_problem(path)


def _hdf5_problem(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            if "model_config" in file.attrs:
                return None
    except OSError as exc:
        return f"a damaged HDF5 file ({str(exc).splitlines()[0][:80]})"
    return "an HDF5 file of weights only, without a model_config"


def _describe_bytes(head: bytes) -> str:
    """'text beginning ...' or 'binary data beginning 0x...' for a file's first bytes."""
    try:  # incremental: a character cut at the 64th byte is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return f"binary data beginning 0x{head[:8].hex()}"
    if not all(c.isprintable() or c.isspace() for c in text):
        return f"binary data beginning 0x{head[:8].hex()}"
    start = " ".join(text.split())[:40]
    return f"text beginning '{start}'"


def zip_problem(path: Path) -> str | None:
    """What is wrong with a `.keras` zip, or None when every member reads back intact."""
    try:
        with zipfile.ZipFile(path) as archive:
            lacking = [m for m in KERAS_MEMBERS if m not in archive.namelist()]
            if lacking:
                return f"no {', '.join(lacking)} inside"
            bad = archive.testzip()  # reads every member, checking its CRC
            return f"{bad} fails its checksum" if bad else None
    except zipfile.BadZipFile:
        return "not a .keras zip file: truncated or overwritten"
    except (OSError, EOFError, ValueError) as exc:  # zlib errors of a truncated member
        return str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
