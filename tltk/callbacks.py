"""Keras callbacks that span stages: history, best-model tracking and epoch logging.

The same callback objects are passed to every stage's `fit`, so the history and the
best-so-far metric run across stages. Each has a `stage` attribute the engine sets.

Example:
    >>> saver = BestModelSaver(model, run)
    >>> model.fit(train, validation_data=val, callbacks=[HistoryWriter(run), saver])
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from tltk.rundir import RunDir, save_model, write_csv

HISTORY_COLUMNS = ["stage", "epoch", "stage_epoch", "loss", "top1", "topk", "val_loss",
                   "val_top1", "val_topk", "lr"]


def current_lr(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


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
        write_csv(self.run.file("history.csv"), pd.DataFrame(self.rows, columns=HISTORY_COLUMNS))


class BestModelSaver(keras.callbacks.Callback):
    """Saves the whole classifier as `best.keras` whenever validation top-1 improves.

    It tracks the best value across stages (Keras's ModelCheckpoint restarts with every
    `fit`), and it saves `model`, the full classifier, even while a stage trains only
    the head on cached features.
    """

    def __init__(self, model: keras.Model, run: RunDir, monitor: str = "val_top1"):
        super().__init__()
        self.full_model, self.run, self.monitor = model, run, monitor
        self.best, self.best_epoch, self.epochs_seen, self.stage = -np.inf, -1, 0, ""
        self.best_stage = ""

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value > self.best:
            self.best, self.best_epoch = float(value), self.epochs_seen
            self.best_stage = self.stage
            save_model(self.full_model, self.run.file("best.keras"))
            self.run.set_status("running", best={"epoch": self.best_epoch, "stage": self.stage,
                                                 self.monitor: self.best})
        self.epochs_seen += 1


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
