"""B2: a frozen (bottleneck) epoch on cached features vs recomputing the backbone.

Same head, same data (flowers-128, MobileNetV2 @160 with the shared weights), no
augmentation on either side; measured side by side in one process. The cached side
also reports the one-off extraction and the epoch count where caching breaks even.

Example:
    $ python -m benchmarks.b2_feature_cache --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import tensorflow as tf

from benchmarks._common import machine_info, print_table, write_results
from benchmarks._flowers import BATCH_SIZE, IMAGE_SIZE, SEED, flowers_setup
from tltk.data.core import make_pipeline
from tltk.models.heads import feature_extractor

NAME = "b2_feature_cache"
GOAL_RATIO = 50.0


def _compile(model: keras.Model) -> None:
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


class _EpochTimer(keras.callbacks.Callback):
    """Wall seconds of every epoch inside one `fit` (excludes fit's own set-up)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _epoch_seconds(model: keras.Model, data, epochs: int) -> list[float]:
    """Per-epoch seconds of an `epochs + 1`-epoch fit, the first (tracing) epoch dropped."""
    timer = _EpochTimer()
    model.fit(data, epochs=epochs + 1, verbose=0, shuffle=False, callbacks=[timer])
    return timer.seconds[1:]


def measure(per_class: int | None, epochs: int) -> dict:
    setup = flowers_setup(per_class)
    train = setup.dataset.splits["train"]
    images = make_pipeline(train, IMAGE_SIZE, BATCH_SIZE, training=True, seed=SEED, cache=True)
    start = time.perf_counter()
    extractor = feature_extractor(setup.model)
    plain = make_pipeline(train, IMAGE_SIZE, BATCH_SIZE, training=False, seed=SEED, cache=False)
    features = extractor.predict(plain.map(lambda x, y: x), verbose=0)
    extraction_s = time.perf_counter() - start
    feats = (tf.data.Dataset.from_tensor_slices((features, train.labels))
             .shuffle(len(train), seed=SEED).batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE))
    head = setup.model.get_layer("head")
    _compile(head)
    _compile(setup.model)
    # Alternate the two so both see the same load from neighbours on a shared machine.
    cached, uncached = [], []
    for _ in range(2):
        cached += _epoch_seconds(head, feats, epochs)
        uncached += _epoch_seconds(setup.model, images, epochs // 2 or 1)
    cached_s, uncached_s = statistics.median(cached), statistics.median(uncached)
    return {"train_images": len(train), "extraction_s": round(extraction_s, 2),
            "cached_epoch_s": round(cached_s, 4), "uncached_epoch_s": round(uncached_s, 2),
            "ratio": round(uncached_s / cached_s, 1),
            "break_even_epochs": round(extraction_s / max(uncached_s - cached_s, 1e-9), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 images per class, 2 epochs")
    args = parser.parse_args(argv)
    figures = measure(100 if args.quick else None, 2 if args.quick else 4)
    figures.update(benchmark=NAME, quick=args.quick, goal_ratio=GOAL_RATIO,
                   met=figures["ratio"] >= GOAL_RATIO, machine=machine_info())
    path = write_results(NAME, figures)
    print_table([{"side": "cached features", "epoch s": figures["cached_epoch_s"]},
                 {"side": "frozen backbone, recomputed", "epoch s": figures["uncached_epoch_s"]}])
    print(f"ratio {figures['ratio']}x (goal {GOAL_RATIO}x, met {figures['met']}); one-off "
          f"extraction {figures['extraction_s']} s, breaks even after "
          f"{figures['break_even_epochs']} epochs")
    print(f"written {path}")
    return figures


if __name__ == "__main__":
    main()
