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
import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tltk.errors import TltkError
from tltk.fileio import read_csv, save_model, write_csv
from tltk.log import duration
from tltk.rundir import RunDir

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
        # Epochs count from 1, as the log and the report count them.
        row = {"stage": self.stage, "epoch": len(self.rows) + 1, "stage_epoch": epoch + 1,
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

            writer.restore(rows=3)  # epochs 1-3 survive a crash during epoch 4
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
        # run.json counts epochs from 1, as history.csv and the log do.
        self.run.set_status("running", best={"epoch": self.best_epoch + 1,
                                             "stage": self.best_stage, self.monitor: self.best})
        self.pending = False

    def state(self) -> dict:
        """What a checkpoint records (JSON-safe: no best yet is `None`; epochs from 1,
        0 before any)."""
        return {"best": None if math.isinf(self.best) else self.best,
                "best_epoch": self.best_epoch + 1, "best_stage": self.best_stage,
                "epochs_seen": self.epochs_seen}

    def restore(self, state: dict) -> None:
        """Continue from a checkpointed `state()`."""
        self.best = -np.inf if state["best"] is None else float(state["best"])
        self.best_epoch, self.best_stage = state["best_epoch"] - 1, state["best_stage"]
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
    """One line per epoch with its seconds and the run's time to go, e.g.

        train epoch  2/12  3.1 s | loss 1.352  top-1 45.0% | val loss 1.809  top-1 16.1%
        top-5 84.4% | lr 0.001 | at least 31 s to go

    (one line on screen). `stages` lists every stage's (name, epochs): the time to go
    is the epochs left in the run at the current stage's pace, "at least" while later
    stages, whose pace is not known yet, remain. The top-k column
    shows the run's k, and is left out when k covers every class (always 100 %).
    On a terminal, an epoch still running after `LONG_EPOCH_S` gets a per-batch bar
    with its own ETA (tqdm), cleared before the epoch's line; logs and notebooks get
    the lines alone.
    """

    # Keras may call the batch hook on a worker thread: it only advances the bar.
    async_safe = True
    LONG_EPOCH_S = 10.0

    def __init__(self, say, stages=(), k: int = 5, classes: int | None = None, stream=None):
        super().__init__()
        self.say, self.stage, self.count = say, "", 0
        self.stages, self.k = list(stages), k
        self.show_k = classes is None or k < classes
        self.stream = stream
        self.bar, self.started, self.seconds = None, 0.0, []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()
        stream = self.stream or sys.stdout
        if on_terminal(stream):
            self.bar = tqdm(total=self.params.get("steps"), desc=self._name(epoch), leave=False,
                            unit="batch", file=stream, delay=self.LONG_EPOCH_S,
                            mininterval=0.5, dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()  # leave=False: the bar's line is cleared
            self.bar = None
        seconds = time.monotonic() - self.started
        if self.seconds and self.seconds[0][0] != self.stage:
            self.seconds = []
        self.seconds.append((self.stage, seconds))
        logs = logs or {}
        val = [f"val loss {logs.get('val_loss', np.nan):.3f}",
               f"top-1 {100 * logs.get('val_top1', np.nan):.1f}%"]
        if self.show_k:
            val.append(f"top-{self.k} {100 * logs.get('val_topk', np.nan):.1f}%")
        parts = [f"{self._name(epoch)}  {seconds:.1f} s",
                 f"loss {logs.get('loss', np.nan):.3f}  "
                 f"top-1 {100 * logs.get('top1', np.nan):.1f}%",
                 "  ".join(val), f"lr {current_lr(self.model):.2g}"]
        left, later = self._seconds_left(epoch)
        if left:
            # Later stages usually train more weights, so their pace can only be slower.
            parts.append(f"{'at least' if later else 'about'} {duration(left)} to go")
        self.say("  " + " | ".join(parts))

    def _name(self, epoch: int) -> str:
        total = self.params.get("epochs") if self.params else None
        width = len(str(total or ""))
        return f"{self.stage} epoch {epoch + 1:>{width}}/{total}"

    def _seconds_left(self, epoch: int) -> tuple[float, bool]:
        """Epochs left in the run times this stage's mean epoch seconds, and whether
        later stages (of a pace not yet seen) are among them."""
        names = [name for name, _ in self.stages]
        later = names[names.index(self.stage) + 1:] if self.stage in names else []
        epochs = (self.params.get("epochs") or 0) - epoch - 1
        later_epochs = sum(n for name, n in self.stages if name in later)
        pace = sum(s for _, s in self.seconds) / len(self.seconds)
        return (epochs + later_epochs) * pace, later_epochs > 0


def on_terminal(stream) -> bool:
    """Whether `stream` is a terminal (a bar may redraw in place), not a log or notebook.

    Example:
        >>> import io
        >>> on_terminal(io.StringIO())
        False
    """
    return bool(getattr(stream, "isatty", lambda: False)())


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
