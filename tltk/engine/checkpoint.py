"""Resuming a run after a crash, exactly where it stopped.

Every epoch ends with a commit: the trained model's weights (its optimizer state and
step counter included, so learning-rate schedules continue) go to a new
`epoch-<n>.weights.h5`, then `state.json` is replaced in one rename to point at it
together with the history length, the best-so-far and the dropout seed states. A
kill at any moment leaves the previous commit or the new one. A finished stage saves
the whole classifier and is recorded in run.json, so a resume skips it.

Layout, under the run directory:
    backup/stage-<name>.weights.h5      the classifier when stage <name> ended
    backup/<name>/state.json            the last committed epoch of the running stage
    backup/<name>/epoch-<n>.weights.h5  the trained model and optimizer at that epoch

`backup/` is removed when the run completes. Resuming is exact because the inputs of
epoch e depend only on (seed, e) (see `tltk.engine.streams`), so an interrupted and
resumed run ends with the same weights as an uninterrupted one. This is the one file
that decides where a run resumes: `restore_stages` (whole stages) and `restore_epoch`
(within a stage).

Example::

    config = resume_config("runs/demo")  # an interrupted run
    tltk.engine.train(config)            # continues after its last committed epoch
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from tltk import faults
from tltk.config import RunConfig
from tltk.errors import TltkError
from tltk.fileio import atomic_path, damaged, model_bytes, read_json, require_space, save_weights
from tltk.log import keras_chatter
from tltk.rundir import RunDir

BACKUP = "backup"
STATE_FILE = "state.json"


def resume_config(run_dir: str | Path, recipe: str | None = None) -> RunConfig:
    """The config of the unfinished run in `run_dir`, for `tltk train --resume`.

    Example::

        train(resume_config("runs/demo"))
    """
    run = RunDir(run_dir)
    if not run.file("config.yaml").is_file():
        raise TltkError(f"--resume: {run.path} is not a tltk run directory (no config.yaml); "
                        "give the --out folder of an interrupted run")
    if (run.status() or {}).get("status") == "complete":
        raise TltkError(f"--resume: {run.path} is a finished run, there is nothing to resume; "
                        f"its results are in {run.file('metrics.csv')}")
    config = RunConfig.load(run.file("config.yaml"))
    if recipe and recipe != config.recipe:
        raise TltkError(f"--resume: {run.path} is a '{config.recipe}' run, not '{recipe}'; "
                        "leave out RECIPE or give the run's own")
    return config.override({"out": str(run_dir)})


# --- checkpoints ----------------------------------------------------------------

def _stage_dir(run: RunDir, stage: str) -> Path:
    return run.path / BACKUP / stage


def _stage_end_file(run: RunDir, stage: str) -> Path:
    return run.path / BACKUP / f"stage-{stage}.weights.h5"


def seed_states(model: keras.Model) -> list[list[int]]:
    """The [seed, counter] state of every SeedGenerator in `model` (dropout masks).

    Keras does not save them with the weights; without them a resumed stage would
    replay the dropout masks of its first steps.
    """
    return [[int(x) for x in keras.ops.convert_to_numpy(v)] for v in _seed_variables(model)]


def set_seed_states(model: keras.Model, states: list) -> None:
    for variable, state in zip(_seed_variables(model), states, strict=True):
        variable.assign(np.asarray(state, dtype=variable.dtype))


def _seed_variables(model: keras.Model) -> list:
    return [v for v in model.variables if v.name == "seed_generator_state"]


class EpochCheckpoint(keras.callbacks.Callback):
    """Commits every epoch of one stage to `backup/<stage>/` (see the module docstring).

    It must follow the HistoryWriter and the (deferred) BestModelSaver in the callback
    list: the commit records their state after the epoch, then publishes best.keras.

    Example::

        saver.deferred = True
        model.fit(..., callbacks=[history, saver, EpochCheckpoint(run, "head", model,
                                                                  (history, saver))])
    """

    @property
    def async_safe(self) -> bool:
        """Its batch hook is only the test fault point: Keras may dispatch it on a worker
        thread, except under a fault, whose Ctrl-C must be raised where it fires: from a
        worker thread it lands wherever the main thread is, and a `__del__` there
        swallows it (the run then finishes; CI saw it once in a while)."""
        return not faults.armed()

    def __init__(self, run: RunDir, stage: str, full_model: keras.Model, trackers,
                 seconds_before: float = 0.0, frozen_checksum: str | None = None):
        super().__init__()
        self.run, self.stage, self.full_model, self.trackers = run, stage, full_model, trackers
        self.started, self.seconds_before = time.time(), seconds_before
        # Checksum of the frozen layers below a cached stage's cut: a resume must find them
        # unchanged, or the cached features no longer match.
        self.frozen_checksum = frozen_checksum
        self._epoch = 0

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            faults.fault_point(f"{self.stage}:{self._epoch + 1}:mid-epoch")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        folder = _stage_dir(self.run, self.stage)
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        require_space(folder, model_bytes(self.model), f"the checkpoint {name}")
        with atomic_path(folder / name) as tmp:
            self.model.save_weights(tmp)
            faults.fault_point(f"{self.stage}:{epoch + 1}:checkpoint-write")
        state = {"stage": self.stage, "epochs_done": epoch + 1, "weights": name,
                 "seeds": seed_states(self.full_model),
                 "frozen_checksum": self.frozen_checksum,
                 "seconds": round(self.seconds_before + time.time() - self.started, 1),
                 **self.trackers.state()}
        self.run.write_json(f"{BACKUP}/{self.stage}/{STATE_FILE}", state)  # the commit
        self.trackers.saver.publish()
        for old in folder.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink()


def _redo(run: RunDir, stage: str) -> str:
    return (f"delete {_stage_dir(run, stage)} to redo stage '{stage}' from its start, "
            "or start a new run with another --out")


def stage_state(run: RunDir, stage: str) -> dict | None:
    """The last committed epoch of `stage`, or None when none was committed.

    A damaged state.json (or one pointing at a missing weights file) is a `TltkError`.
    """
    path = _stage_dir(run, stage) / STATE_FILE
    if not path.exists():
        return None
    state = read_json(path, dict, _redo(run, stage))
    fields = {"epochs_done": int, "weights": str, "seeds": list, "history_rows": int}
    wrong = [k for k, kind in fields.items() if not isinstance(state.get(k), kind)]
    if wrong:
        raise damaged(path, f"damaged (bad or missing {', '.join(wrong)})", _redo(run, stage))
    if not (_stage_dir(run, stage) / state["weights"]).is_file():
        raise damaged(path, f"points at {state['weights']}, which is missing",
                      _redo(run, stage))
    return state


def _load_weights(run: RunDir, stage: str, model: keras.Model, path: Path,
                  fix: str | None = None) -> None:
    """`model.load_weights(path)`; a damaged or mismatched file is one line naming it."""
    try:
        with keras_chatter():
            model.load_weights(path)
    except Exception as exc:  # noqa: BLE001 - h5py, OS and shape errors alike
        text = str(exc).strip()
        reason = text.splitlines()[0][:120] if text else type(exc).__name__
        raise damaged(path, f"cannot be loaded ({reason})", fix or _redo(run, stage)) from None


def restore_epoch(run: RunDir, stage: str, fitted: keras.Model, full_model: keras.Model,
                  trackers, frozen_checksum: str | None = None) -> dict | None:
    """Load the stage's last commit into `fitted` (compiled) and the trackers.

    Returns the committed state (`epochs_done` is the epoch to continue from), or None
    when the stage starts afresh.
    """
    state = stage_state(run, stage)
    if state is None:
        return None
    # States written before the rename call the checksum "frozen".
    if state.get("frozen_checksum", state.get("frozen")) != frozen_checksum:
        raise TltkError(f"cannot resume stage '{stage}' in {run.path}: the frozen layers "
                        "below its cached features have other weights than when it started "
                        "(was --weights changed?); start a new run with another --out")
    if not fitted.optimizer.built:
        fitted.optimizer.build(fitted.trainable_variables)
    _load_weights(run, stage, fitted, _stage_dir(run, stage) / state["weights"])
    set_seed_states(full_model, state["seeds"])
    trackers.restore(state)
    saver = trackers.saver
    if saver.best_epoch == saver.epochs_seen - 1:
        # A kill between the commit and best.keras would leave an older best behind;
        # the restored weights are that epoch's, so write it again.
        saver.publish(force=True)
    return state


def rollback(run: RunDir, stage: str, fitted: keras.Model, full_model: keras.Model) -> bool:
    """Put back the weights of the last committed epoch; False when none exists."""
    state = stage_state(run, stage)
    if state is not None:
        _load_weights(run, stage, fitted, _stage_dir(run, stage) / state["weights"])
        return True
    previous = [s["name"] for s in (run.status() or {}).get("stages", [])]
    if previous and _stage_end_file(run, previous[-1]).is_file():
        with warnings.catch_warnings():
            # The file's optimizer is the previous stage's; only the weights matter here.
            warnings.simplefilter("ignore", UserWarning)
            full_model.load_weights(_stage_end_file(run, previous[-1]))
        return True
    return False


def complete_stage(run: RunDir, stage: str, full_model: keras.Model, trackers,
                   entry: dict) -> None:
    """Save the classifier at the end of `stage`, record it in run.json, drop its backup.

    Only the latest stage's weights are kept: a resume needs nothing older.
    """
    save_weights(full_model, _stage_end_file(run, stage))
    entry = {**entry, "resume": {"seeds": seed_states(full_model), **trackers.state()}}
    stages = (run.status() or {}).get("stages", [])
    run.set_status("running", stages=[*stages, entry])
    for done in stages:
        _stage_end_file(run, done["name"]).unlink(missing_ok=True)
    shutil.rmtree(_stage_dir(run, stage), ignore_errors=True)
    faults.fault_point(f"{stage}:end")


def restore_stages(run: RunDir, full_model: keras.Model, trackers) -> list[str]:
    """Restore the classifier and trackers at the end of the last recorded stage.

    Returns the names of the stages a resume skips (none for a fresh run).
    """
    stages = (run.status() or {}).get("stages", [])
    if not stages:
        return []
    ok = isinstance(stages, list) and all(
        isinstance(s, dict) and isinstance(s.get("name"), str)
        and isinstance(s.get("resume"), dict) and "seeds" in s["resume"] for s in stages)
    if not ok:
        raise damaged(run.file("run.json"), "damaged (its stage records are malformed)",
                      "start a new run with another --out")
    last = stages[-1]
    path = _stage_end_file(run, last["name"])
    if not path.is_file():
        raise TltkError(f"cannot resume {run.path}: {path} is missing; start a new run with "
                        "another --out")
    _load_weights(run, last["name"], full_model, path,
                  f"start a new run with another --out (stage '{last['name']}' must be redone)")
    set_seed_states(full_model, last["resume"]["seeds"])
    trackers.restore(last["resume"])
    return [s["name"] for s in stages]


def clear(run: RunDir) -> None:
    """Remove the resume state of a completed run."""
    shutil.rmtree(run.path / BACKUP, ignore_errors=True)
