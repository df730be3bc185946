"""B1: augmentation throughput of tltk's fused RandomAffine vs the legacy ImageDataGenerator.

Both run the thesis parameters (`tltk.config.AugmentConfig`) on the same random 224 px
batches of 32, side by side in one process; the figure is images/s at the median repeat.

Example:
    $ python -m benchmarks.b1_augment --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import tensorflow as tf
from keras.src.legacy.preprocessing.image import ImageDataGenerator

from benchmarks._common import report_ratio, timeit
from tltk.config import AugmentConfig
from tltk.data.augment import RandomAffine
from tltk.engine import streams

NAME = "b1_augment"
IMAGE_SIZE = 224
BATCH_SIZE = 32
CHANNELS = 3
GOAL_RATIO = 3.0
SEED = 0
FULL = {"batches": 4, "repeats": 7, "warmup": 1}
QUICK = {"batches": 2, "repeats": 3, "warmup": 1}


def _images(batches: int) -> np.ndarray:
    """Random uint8 pixels as float32 0..255, the input both pipelines receive."""
    rng = np.random.default_rng(SEED)
    shape = (batches * BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)
    return rng.integers(0, 256, shape, dtype=np.uint8).astype(np.float32)


def _pull(iterator, batches: int):
    """One measurement: draw `batches` augmented batches from an endless iterator."""
    def run():
        for _ in range(batches):
            next(iterator)
    return run


def idg_flow(x: np.ndarray, params: dict, batches: int):
    idg = ImageDataGenerator(**params)
    return _pull(iter(idg.flow(x, batch_size=BATCH_SIZE, shuffle=False, seed=SEED)), batches)


def tltk_tf_data(x: np.ndarray, params: dict, batches: int):
    augment = streams.seeded_augment(RandomAffine(**params, seed=SEED))
    # tltk's training stream: decoded images held once as uint8 (the same pixel values
    # IDG gets as float32), shuffled indices, whole batches gathered from the array and
    # warped as uint8 with a per-batch seed; what a fine-tuning epoch on images runs.
    # Finite, and iterated afresh per measurement: an endless prefetching pipeline would
    # keep augmenting in the background while the other pipelines are being timed.
    images = x.astype(np.uint8)
    gather = streams.array_gather(images, np.zeros(len(images), np.int32))
    ds = streams.epoch_stream(tf.data.Dataset.range(len(images)), len(images), BATCH_SIZE,
                              SEED, 0, 1, len(images), augment, gather=gather)

    def run():
        for _ in ds:
            pass
    return run


def tltk_function(x: np.ndarray, params: dict, batches: int):
    layer = RandomAffine(**params, seed=SEED)
    augment = tf.function(lambda b: layer(b, training=True))
    inputs = [tf.constant(b) for b in np.split(x.astype(np.uint8), batches)]

    def run():
        for b in inputs:
            augment(b).numpy()  # materialise, so the work is done inside the timing
    return run


PIPELINES = {"idg_flow": idg_flow, "tltk_tf_data": tltk_tf_data,
             "tltk_tf_function": tltk_function}


def _timed(run) -> tuple[float, float]:
    """(wall, process CPU) seconds of one measurement; CPU time is what neighbours can't skew."""
    cpu_start = time.process_time()
    wall = timeit(run, repeats=1, warmup=0)[0]
    return wall, time.process_time() - cpu_start


def measure(settings: dict) -> dict:
    """Images per wall second and per CPU second (medians) on identical inputs.

    Repeats are interleaved round-robin, so every pipeline sees the same load from
    neighbours on a shared machine.
    """
    x = _images(settings["batches"])
    params = dataclasses.asdict(AugmentConfig())
    runs = {name: make(x, params, settings["batches"]) for name, make in PIPELINES.items()}
    for run in runs.values():
        timeit(run, repeats=0, warmup=settings["warmup"])
    samples = {name: [] for name in runs}
    for _ in range(settings["repeats"]):
        for name, run in runs.items():
            samples[name].append(_timed(run))
    images = settings["batches"] * BATCH_SIZE
    rates = {name: images / statistics.median(w for w, _ in s) for name, s in samples.items()}
    per_cpu = {name: images / statistics.median(c for _, c in s) for name, s in samples.items()}
    return {"params": params, "rates": rates, "per_cpu_second": per_cpu}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches and repeats")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    result = measure(settings)
    rates = result["rates"]
    ratio = rates["tltk_tf_data"] / rates["idg_flow"]
    figures = {
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH_SIZE,
        **settings,
        "augment_params": result["params"],
        "images_per_s": {k: round(v, 1) for k, v in rates.items()},
        "images_per_cpu_s": {k: round(v, 1) for k, v in result["per_cpu_second"].items()},
        "ratio": round(ratio, 2),  # through tf.data, the way training uses it
        "ratio_tf_function": round(rates["tltk_tf_function"] / rates["idg_flow"], 2),
    }
    per_cpu = result["per_cpu_second"]
    rows = [{"pipeline": k, "images/s": v, "x IDG": v / rates["idg_flow"],
             "images/CPU-s": per_cpu[k], "x IDG (CPU)": per_cpu[k] / per_cpu["idg_flow"]}
            for k, v in rates.items()]
    return report_ratio(NAME, figures, args.quick, GOAL_RATIO, rows)


if __name__ == "__main__":
    main()
