"""Cross-stage callbacks (tltk.engine.callbacks), driven by hand on a tiny model."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pandas as pd
import pytest

from tltk.engine.callbacks import (
    HISTORY_COLUMNS,
    BestModelSaver,
    EpochLogger,
    HistoryWriter,
    NonFiniteLossGuard,
    NumericalFault,
    Trackers,
)
from tltk.errors import TltkError
from tltk.rundir import RunDir


@pytest.fixture
def run(tmp_path):
    run = RunDir.create(tmp_path / "run", "seed: 0\n")
    yield run
    run.close()


@pytest.fixture(scope="module")
def model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="out")])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


def epochs(callback, stage: str, logs: list[dict]):
    callback.stage = stage
    for epoch, values in enumerate(logs):
        callback.on_epoch_end(epoch, values)


def test_history_rows_run_across_stages_and_record_the_lr(run, model):
    writer = HistoryWriter(run)
    writer.set_model(model)
    epochs(writer, "head", [{"loss": 1.0, "val_top1": 0.5}, {"loss": 0.8, "val_top1": 0.6}])
    epochs(writer, "finetune", [{"loss": 0.5, "val_top1": 0.7, "ignored": 3.0}])
    history = pd.read_csv(run.file("history.csv"))
    assert list(history.columns) == HISTORY_COLUMNS
    assert history[["stage", "epoch", "stage_epoch"]].values.tolist() == [
        ["head", 1, 1], ["head", 2, 2], ["finetune", 3, 1]]
    assert history["loss"].tolist() == [1.0, 0.8, 0.5]
    assert np.allclose(history["lr"], 0.05) and history["top1"].isna().all()


def test_history_restore_keeps_the_checkpointed_rows_only(run, model):
    writer = HistoryWriter(run)
    writer.set_model(model)
    epochs(writer, "head", [{"loss": 1.0 / 3}, {"loss": 0.25}, {"loss": 0.125}])
    again = HistoryWriter(run)
    again.restore(rows=2)
    assert [row["loss"] for row in again.rows] == [1.0 / 3, 0.25]  # bit-exact
    with pytest.raises(TltkError, match="history.csv has 3 of the 5 checkpointed epochs"):
        again.restore(rows=5)


def test_best_model_saver_tracks_the_best_across_stages(run, model):
    saver = BestModelSaver(model, run)
    epochs(saver, "head", [{"val_top1": 0.5}, {"val_top1": 0.7}])
    first = run.file("best.keras").stat().st_mtime_ns
    epochs(saver, "finetune", [{"val_top1": 0.6}, {}])  # worse, then no metric
    assert (saver.best, saver.best_epoch, saver.best_stage, saver.epochs_seen) == (
        0.7, 1, "head", 4)
    assert run.file("best.keras").stat().st_mtime_ns == first  # not rewritten
    best = json.loads(run.file("run.json").read_text())["best"]
    assert best == {"epoch": 2, "stage": "head", "val_top1": 0.7}  # epochs count from 1


def test_deferred_saver_writes_only_on_publish_and_state_round_trips(run, model):
    saver = BestModelSaver(model, run, deferred=True)
    assert saver.state()["best"] is None  # -inf is not JSON
    epochs(saver, "head", [{"val_top1": 0.4}])
    assert saver.pending and not run.file("best.keras").exists()
    saver.publish()
    assert run.file("best.keras").is_file() and not saver.pending
    resumed = BestModelSaver(model, run)
    resumed.restore(json.loads(json.dumps(saver.state())))
    assert resumed.state() == saver.state() == {"best": 0.4, "best_epoch": 1,
                                                "best_stage": "head", "epochs_seen": 1}
    trackers = Trackers(HistoryWriter(run), resumed)
    assert trackers.state() == {"history_rows": 0, "saver": saver.state()}


LOGS = {"loss": 0.5, "top1": 0.25, "val_loss": 0.75, "val_top1": 0.5, "val_topk": 1.0}


def test_epoch_logger_writes_one_line_per_epoch_with_seconds_and_time_to_go(model):
    lines = []
    logger = EpochLogger(lines.append, [("head", 2), ("finetune", 3)], k=5, classes=10)
    logger.set_model(model)
    logger.set_params({"epochs": 2, "steps": 4})
    logger.stage = "head"
    for epoch in range(2):
        logger.on_epoch_begin(epoch)
        logger.started -= 2.0  # the epoch took 2 s
        logger.on_epoch_end(epoch, LOGS)
    assert lines[0] == ("  head epoch 1/2  2.0 s | loss 0.500  top-1 25.0% | val loss 0.750  "
                        "top-1 50.0%  top-5 100.0% | lr 0.05 | at least 8 s to go")
    assert lines[1].endswith("| at least 6 s to go")  # finetune's 3 epochs at head's pace
    logger.stage, lines[:] = "finetune", []
    logger.set_params({"epochs": 3, "steps": 4})
    logger.on_epoch_begin(0)
    logger.started -= 4.0
    logger.on_epoch_end(0, LOGS)
    assert lines[0].endswith("| about 8 s to go")  # the last stage, at its own pace


def test_epoch_logger_leaves_out_top_k_when_k_covers_every_class(model):
    lines = []
    logger = EpochLogger(lines.append, [("head", 1)], k=2, classes=2)
    logger.set_model(model)
    logger.set_params({"epochs": 1, "steps": 4})
    logger.stage = "head"
    logger.on_epoch_begin(0)
    logger.on_epoch_end(0, LOGS)
    assert "top-2" not in lines[0] and "to go" not in lines[0]  # last epoch: nothing left


def test_epoch_logger_bar_only_on_a_terminal_and_cleared_before_the_line(model):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen, lines = Terminal(), []
    logger = EpochLogger(lines.append, [("head", 1)], stream=screen)
    logger.LONG_EPOCH_S = 0.0  # every epoch counts as long here
    logger.set_model(model)
    logger.set_params({"epochs": 1, "steps": 3})
    logger.stage = "head"
    logger.on_epoch_begin(0)
    for batch in range(3):
        logger.on_train_batch_end(batch)
    logger.on_epoch_end(0, LOGS)
    drawn = screen.getvalue()
    assert "head epoch 1/1" in drawn and "/3 [" in drawn  # the bar, of 3 batches
    assert drawn.endswith(" \r"), "the bar's line is blanked before the epoch's line"
    assert len(lines) == 1
    quiet = EpochLogger(lines.append, [("head", 1)], stream=io.StringIO())
    quiet.set_model(model)
    quiet.set_params({"epochs": 1, "steps": 3})
    quiet.on_epoch_begin(0)
    assert quiet.bar is None  # a log file or a notebook: lines only


def test_non_finite_loss_guard_names_stage_epoch_batch_and_fix():
    guard = NonFiniteLossGuard("finetune", "lower its lr")
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 1.5})
    with pytest.raises(NumericalFault) as info:
        guard.on_train_batch_end(4, {"loss": math.inf})
    assert str(info.value) == ("stage 'finetune' epoch 3, batch 5: the training loss became "
                               "inf; lower its lr")
