"""B3: fine-tuning throughput from JPEG files through tltk's pipeline vs in-memory tensors.

The model is a fine-tuning stage's (MobileNetV2 @160, top block unfrozen, SGD). One
side reads flowers-128 JPEGs the way a fine-tuning stage on images does (decoded and
resized once into one uint8 array, then shuffled indices, whole batches gathered and
augmented); the other trains on the same images already decoded into
a numpy array, with no augmentation at all. The pipeline keeps pace if the ratio of
images/s is close to 1. Measured side by side, interleaved, in one process.

Example:
    $ python -m benchmarks.b3_pipeline --quick
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf

from benchmarks._common import interleaved_rates, report_ratio
from benchmarks._flowers import BATCH_SIZE, IMAGE_SIZE, SEED, flowers_setup, in_memory, parse_sizes
from tltk.config import AugmentConfig
from tltk.data.augment import RandomAffine
from tltk.data.core import decode_split
from tltk.engine import streams
from tltk.models.backbones import get_backbone, set_trainable
from tltk.models.heads import backbone_of

NAME = "b3_pipeline"
GOAL_RATIO = 0.9


def measure(per_class: int, repeats: int) -> dict:
    setup = flowers_setup(per_class)
    model = setup.model
    set_trainable(backbone_of(model), get_backbone("mobilenetv2"), unfreeze=1)
    model.compile(keras.optimizers.SGD(1e-3, momentum=0.9), "sparse_categorical_crossentropy")
    train = setup.dataset.splits["train"]
    augment = RandomAffine(**vars(AugmentConfig()), seed=SEED)
    n = len(train)
    # As a fine-tuning stage on images does: the JPEGs decoded once into one uint8 array
    # (timed with the first epoch), then shuffled indices, whole batches gathered from it
    # and augmented with per-batch seeds (`tltk.engine.streams.epoch_stream`).
    start = time.perf_counter()
    images = decode_split(train, IMAGE_SIZE, BATCH_SIZE)
    pipeline = streams.epoch_stream(tf.data.Dataset.range(n), n, BATCH_SIZE, SEED, 0, 1, n,
                                    streams.seeded_augment(augment),
                                    gather=streams.array_gather(images, train.labels))
    model.fit(pipeline, epochs=1, verbose=0)
    first_epoch = n / (time.perf_counter() - start)
    x, y = in_memory(setup.dataset, "train")
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0)  # warm-up of the other path
    rates = interleaved_rates({
        "files": lambda: model.fit(pipeline, epochs=1, verbose=0),
        "memory": lambda: model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0,
                                    shuffle=True)}, n, repeats)
    pipe, mem = rates["files"], rates["memory"]
    return {"train_images": n, "first_epoch_images_per_s": round(first_epoch, 1),
            "pipeline_images_per_s": round(pipe, 1), "in_memory_images_per_s": round(mem, 1),
            "ratio": round(pipe / mem, 3)}


def main(argv: list[str] | None = None) -> dict:
    quick, per_class, repeats = parse_sizes(argv, __doc__.splitlines()[0])
    figures = measure(per_class, repeats)
    rows = [
        {"side": "JPEG files, first epoch (decode + augment)",
         "images/s": figures["first_epoch_images_per_s"]},
        {"side": "JPEG files via tltk pipeline (cached decode, augment)",
         "images/s": figures["pipeline_images_per_s"]},
        {"side": "in-memory tensors, no augmentation",
         "images/s": figures["in_memory_images_per_s"]}]
    return report_ratio(NAME, figures, quick, GOAL_RATIO, rows)


if __name__ == "__main__":
    main()
