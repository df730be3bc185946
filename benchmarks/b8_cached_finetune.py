"""B8: a fine-tuning epoch on images vs on cached activations (VGG19 @224, block5 tuned).

Both sides are tltk's own `run_stage` on the same data: the `demo` shapes resized to
224 px, VGG19 with weights=None (cost does not depend on the weights), the `dogs`
recipe's fine-tuning stage (SGD, block5 trainable, augmentation on). The image side
decodes, augments and runs the whole network every epoch; the cached side extracts
block4_pool activations once and then trains block5 and the head on them. The figure
is the ratio of epoch costs, each the stage's batches times the median batch seconds
(training and validation; the first, tracing batch of each dropped). The one-off
extraction is reported too, and both are extrapolated to the whole `dogs` protocol.

Example:
    $ python -m benchmarks.b8_cached_finetune --quick
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import keras

from benchmarks._common import machine_info, print_table, write_results
from tltk.config import DataConfig, RunConfig
from tltk.engine import stage as engine_stage
from tltk.engine.run import prepare
from tltk.models.backbones import get_backbone
from tltk.recipes import dogs

NAME = "b8_cached_finetune"
GOAL_RATIO = 5.0
# 96 training and 48 validation images of the demo shapes, in batches of 16: six
# training batches per epoch, five of them timed (2 cores: a 224-px VGG19 epoch of a few
# hundred images takes many minutes, which a shared machine cannot spare).
PER_CLASS, VAL_FRACTION, BATCH_SIZE = 16, 0.04, 16
# The `dogs` protocol as the issue measured it on 2 cores: 28 min of bottleneck
# extraction and 20 image-based fine-tuning epochs of about 32 min, 11.5 h in all.
DOGS_TRAIN, DOGS_VAL = 20_580 - 120 * 50, 120 * 30
DOGS_HOURS, DOGS_EPOCH_MIN, DOGS_FINETUNE_EPOCHS = 11.5, 32.0, 20


class _StepTimer(keras.callbacks.Callback):
    """Seconds of every training and validation batch (the first of each traces)."""

    def __init__(self):
        super().__init__()
        self.train, self.val = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.train.append(time.perf_counter() - self._start)

    def on_test_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_test_batch_end(self, batch, logs=None):
        self.val.append(time.perf_counter() - self._start)


def _config(root: Path, cached: bool, per_class: int, size: int) -> RunConfig:
    finetune = dogs.config().stage("finetune")
    finetune.epochs, finetune.cache_features, finetune.feature_views = 1, cached, 1
    return RunConfig(recipe="b8", backbone="vgg19", weights="none", stages=[finetune],
                     batch_size=BATCH_SIZE,
                     data=DataConfig(dataset="demo", image_size=size, per_class=per_class,
                                     val_fraction=VAL_FRACTION, test_fraction=0.0),
                     head=dogs.config().head, out=str(root / f"run-{cached}"),
                     cache_dir=str(root / "cache"))


def _side(root: Path, cached: bool, per_class: int, size: int) -> dict:
    """One 1-epoch stage through the engine: its epoch cost from the median training and
    validation batch (first ones dropped), and the extraction seconds when cached."""
    keras.utils.set_random_seed(0)
    config = _config(root, cached, per_class, size)
    ctx = prepare(config, get_backbone("vgg19"), say=lambda _: None)
    timer, extraction, features = _StepTimer(), [], engine_stage._features

    def timed_features(*args):
        start = time.perf_counter()
        out = features(*args)
        extraction.append(time.perf_counter() - start)
        return out

    ctx.callbacks.append(timer)
    engine_stage._features = timed_features
    try:
        engine_stage.run_stage(ctx, ctx.config.stages[0])
    finally:
        engine_stage._features = features
        ctx.run.close()
    train, val = len(ctx.dataset.splits["train"]), len(ctx.dataset.splits["val"])
    step, val_step = statistics.median(timer.train[1:]), statistics.median(timer.val[1:])
    epoch = math.ceil(train / BATCH_SIZE) * step + math.ceil(val / BATCH_SIZE) * val_step
    return {"train": train, "val": val, "train_batch_s": [round(t, 3) for t in timer.train],
            "val_batch_s": [round(t, 3) for t in timer.val], "epoch_s": round(epoch, 2),
            "extraction_s": round(sum(extraction), 2)}


def extrapolate(images: dict, cached: dict, views: int) -> dict:
    """The `dogs` protocol in hours, before and after, scaled from these measurements.

    Anchored: today's 32 min image epoch over this run's image epoch sets the speed of
    the machine; extraction and cached epochs scale with it.
    """
    per_image = images["epoch_s"] / images["train"]
    speed = DOGS_EPOCH_MIN * 60 / (DOGS_TRAIN * per_image)  # dogs machine vs this run
    extract_per_image = cached["extraction_s"] / (cached["train"] + cached["val"])
    extraction_h = (views * DOGS_TRAIN + DOGS_VAL) * extract_per_image * speed / 3600
    ratio = images["epoch_s"] / cached["epoch_s"]
    saved_h = DOGS_FINETUNE_EPOCHS * DOGS_EPOCH_MIN / 60 * (1 - 1 / ratio)
    return {"views": views, "before_h": DOGS_HOURS,
            "finetune_extraction_h": round(extraction_h, 2),
            "cached_epoch_min": round(DOGS_EPOCH_MIN / ratio, 1),
            "after_h": round(DOGS_HOURS - saved_h + extraction_h, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="96 px instead of 224")
    args = parser.parse_args(argv)
    size = 96 if args.quick else 224
    with tempfile.TemporaryDirectory() as root:
        images = _side(Path(root), False, PER_CLASS, size)
        cached = _side(Path(root), True, PER_CLASS, size)
    ratio = round(images["epoch_s"] / cached["epoch_s"], 2)
    figures = {"benchmark": NAME, "quick": args.quick, "image_size": size,
               "images": images, "cached": cached, "ratio": ratio, "goal_ratio": GOAL_RATIO,
               "met": ratio >= GOAL_RATIO,
               "dogs_protocol": [extrapolate(images, cached, v) for v in (1, dogs.FEATURE_VIEWS)],
               "machine": machine_info()}
    path = write_results(NAME, figures)
    print_table([{"side": "fine-tuning on images (augmented)", "epoch s": images["epoch_s"]},
                 {"side": "fine-tuning on cached activations", "epoch s": cached["epoch_s"],
                  "one-off extraction s": cached["extraction_s"]}])
    print(f"ratio {ratio}x (goal {GOAL_RATIO}x, met {figures['met']})")
    for row in figures["dogs_protocol"]:
        print(f"dogs protocol with {row['views']} cached view(s): {row['after_h']} h "
              f"(today {row['before_h']} h; extraction {row['finetune_extraction_h']} h, "
              f"cached epoch {row['cached_epoch_min']} min)")
    print(f"written {path}")
    return figures


if __name__ == "__main__":
    main()
