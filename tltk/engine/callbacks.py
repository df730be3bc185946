"""Keras callbacks that span stages: history, best-model tracking and epoch logging.

The same callback objects are passed to every stage's `fit`, so the history and the
best-so-far metric run across stages. Each has a `stage` attribute the engine sets.
Their state is small and restorable (`state()` / `restore()`), so a resumed run
continues the same history and best-so-far (see `tltk.engine.checkpoint`).

Example::

    saver = BestModelSaver(model, run)
    model.fit(train, validation_data=val, callbacks=[HistoryWriter(run), saver])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from tltk.errors import TltkError
from tltk.rundir import RunDir, read_csv, save_model, write_csv

HISTORY_COLUMNS = ["stage", "epoch", "stage_epoch", "loss", "top1", "topk", "val_loss",
                   "val_top1", "val_topk", "lr"]


def current_lr(model) -> float:
    """The rate of the optimizer's last step, i.e. what the epoch just ending trained with.

    `optimizer.learning_rate` evaluates a schedule at the *next* step: at an epoch's end
    it would show a step schedule's new rate one epoch early.
    """
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        step = keras.ops.maximum(optimizer.iterations - 1, 0)
        return float(keras.ops.convert_to_numpy(schedule(step)))
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class HistoryWriter(keras.callbacks.Callback):
    """Rewrites `history.csv` atomically after every epoch (one row per epoch)."""

    def __init__(self, run: RunDir):
        super().__init__()
        self.run, self.rows, self.stage = run, [], ""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"stage": self.stage, "epoch": len(self.rows), "stage_epoch": epoch,
               "lr": current_lr(self.model)}
        row.update({k: float(logs[k]) for k in HISTORY_COLUMNS if k in logs})
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        write_csv(self.run.file("history.csv"), pd.DataFrame(self.rows, columns=HISTORY_COLUMNS))

    def restore(self, rows: int) -> None:
        """Continue after the first `rows` rows of history.csv (later ones, written after
        the last checkpoint, are dropped by the next epoch's rewrite).

        Example::

            writer.restore(rows=3)  # epochs 0-2 survive a crash during epoch 3
        """
        path = self.run.file("history.csv")
        self.rows = []
        if rows and path.is_file():
            # round_trip parsing keeps every float bit-exact, so a resumed run's
            # history.csv equals an uninterrupted one's.
            frame = read_csv(path, ["epoch", "stage"], ["epoch"],
                             "start a new run with another --out",
                             float_precision="round_trip", keep_default_na=False,
                             na_values=[""])
            self.rows = frame.head(rows).to_dict("records")
        if len(self.rows) != rows:
            raise TltkError(f"cannot resume {self.run.path}: history.csv has {len(self.rows)} "
                            f"of the {rows} checkpointed epochs; start a new run with "
                            "another --out")


class BestModelSaver(keras.callbacks.Callback):
    """Saves the whole classifier as `best.keras` whenever validation top-1 improves.

    It tracks the best value across stages (Keras's ModelCheckpoint restarts with every
    `fit`), and it saves `model`, the full classifier, even while a stage trains only
    the head on cached features. With `deferred`, an improvement is only noted at the
    end of the epoch and written by `publish()`, which the epoch checkpoint calls once
    the epoch is committed: best.keras then never holds an epoch a resume would redo.
    """

    def __init__(self, model: keras.Model, run: RunDir, monitor: str = "val_top1",
                 deferred: bool = False):
        super().__init__()
        self.full_model, self.run, self.monitor = model, run, monitor
        self.best, self.best_epoch, self.epochs_seen, self.stage = -np.inf, -1, 0, ""
        self.best_stage = ""
        self.deferred, self.pending = deferred, False

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value > self.best:
            self.best, self.best_epoch = float(value), self.epochs_seen
            self.best_stage = self.stage
            self.pending = True
        self.epochs_seen += 1
        if not self.deferred:
            self.publish()

    def publish(self, force: bool = False) -> None:
        """Write best.keras and run.json's `best` for a noted improvement."""
        if not (self.pending or force) or self.best_epoch < 0:
            return
        save_model(self.full_model, self.run.file("best.keras"))
        self.run.set_status("running", best={"epoch": self.best_epoch, "stage": self.best_stage,
                                             self.monitor: self.best})
        self.pending = False

    def state(self) -> dict:
        """What a checkpoint records (JSON-safe: no best yet is `None`)."""
        return {"best": None if math.isinf(self.best) else self.best,
                "best_epoch": self.best_epoch, "best_stage": self.best_stage,
                "epochs_seen": self.epochs_seen}

    def restore(self, state: dict) -> None:
        """Continue from a checkpointed `state()`."""
        self.best = -np.inf if state["best"] is None else float(state["best"])
        self.best_epoch, self.best_stage = state["best_epoch"], state["best_stage"]
        self.epochs_seen, self.pending = state["epochs_seen"], False


class RawWeights(keras.callbacks.Callback):
    """The trained weights at the end of a fit's last epoch, before Keras replaces them.

    With an optimizer's `use_ema`, `fit` ends by overwriting the weights with their
    moving average; `values` keeps what training itself reached.

    Example::

        raw = RawWeights()
        model.fit(x, y, epochs=3, callbacks=[raw])   # raw.values: epoch 3's weights
    """

    def __init__(self):
        super().__init__()
        self.values = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.params["epochs"] or self.model.stop_training:
            self.values = [keras.ops.convert_to_numpy(v) for v in self.model.trainable_weights]


class EpochLogger(keras.callbacks.Callback):
    """One concise line per epoch (Keras's progress bars flood logs and notebooks)."""

    def __init__(self, say):
        super().__init__()
        self.say, self.stage, self.count = say, "", 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"{self.stage} epoch {epoch + 1:>3}", f"loss {logs.get('loss', np.nan):.4f}",
                 f"top-1 {100 * logs.get('top1', np.nan):5.1f}%",
                 f"val loss {logs.get('val_loss', np.nan):.4f}",
                 f"val top-1 {100 * logs.get('val_top1', np.nan):5.1f}%",
                 f"val top-k {100 * logs.get('val_topk', np.nan):5.1f}%",
                 f"lr {current_lr(self.model):.2g}"]
        self.say("  " + " | ".join(parts))


class NumericalFault(TltkError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops a stage at the first batch whose running loss is NaN or infinite.

    Unlike Keras's TerminateOnNaN it raises before the epoch ends, so the broken
    epoch never reaches the history, best.keras or a checkpoint; `fix` names the
    stage's settings to change.

    Example::

        model.fit(data, callbacks=[NonFiniteLossGuard("finetune", "lower its lr")])
    """

    # Keras then runs the batch check on a worker thread instead of syncing every step;
    # an error surfaces a few batches later at most, and always before the epoch ends.
    async_safe = True

    def __init__(self, stage: str, fix: str):
        super().__init__()
        self.stage, self.fix, self.epoch = stage, fix, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NumericalFault(f"stage '{self.stage}' epoch {self.epoch + 1}, batch {batch + 1}: "
                                 f"the training loss became {float(loss)}; {self.fix}")


@dataclass
class Trackers:
    """The cross-stage callbacks whose state every checkpoint saves and restores.

    Example::

        trackers = Trackers(HistoryWriter(run), BestModelSaver(model, run))
        trackers.restore(trackers.state())  # a no-op round trip
    """

    history: HistoryWriter
    saver: BestModelSaver

    def state(self) -> dict:
        return {"history_rows": len(self.history.rows), "saver": self.saver.state()}

    def restore(self, state: dict) -> None:
        self.history.restore(state["history_rows"])
        self.saver.restore(state["saver"])
