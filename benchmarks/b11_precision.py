"""B11: mixed_bfloat16 and XLA against float32, training step time per backbone family.

Depthwise backbones (MobileNetV2, EfficientNetB0: the Lite0 file keeps the float32
policy it was saved with) and dense ones (VGG16, ResNet50), all with random weights, a
whole-network training step on a batch of
random images (Adam, sparse cross-entropy, a 5-class softmax on the pooled features), at
160 px: float32, mixed_bfloat16, float32 with XLA (`jit_compile`) and both. The four
variants of a backbone take turns (`_common.interleaved_rates`), so a busy machine slows
them alike: the ratios to float32 are the figures; the absolute images/s are not, on a
shared machine. Accuracy over a short fine-tune is not measured here.

Outputs: results/b11_precision.json (`--quick`: b11_precision_quick.json).

Example:
    $ python -m benchmarks b11 --quick
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

from benchmarks._common import interleaved_rates, machine_info, print_table, write_results
from tltk.engine import runtime

NAME = "b11_precision"
SIZE, BATCH, CLASSES = 160, 16, 5
STEPS = 3  # training steps per timed call
FAMILIES = ("mobilenetv2", "efficientnetb0", "vgg16", "resnet50")  # depthwise, then dense
VARIANTS = {"float32": ("float32", False), "bf16": ("mixed_bfloat16", False),
            "float32+xla": ("float32", True), "bf16+xla": ("mixed_bfloat16", True)}


def backbone(name: str) -> keras.Model:
    """The feature extractor of a family, built under the current dtype policy."""
    build = {"mobilenetv2": keras.applications.MobileNetV2,
             "efficientnetb0": keras.applications.EfficientNetB0,
             "vgg16": keras.applications.VGG16, "resnet50": keras.applications.ResNet50}[name]
    return build(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))


def train_step(name: str, precision: str, jit: bool):
    """A compiled classifier's `train_on_batch` on one fixed random batch, traced once."""
    with runtime.precision_policy(precision):
        base = backbone(name)
        inputs = keras.Input((SIZE, SIZE, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(base(inputs))
        # The softmax in float32: the usual mixed-precision output layer.
        outputs = keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")(pooled)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy",
                      jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, BATCH)
    model.train_on_batch(x, y)  # trace outside the timing
    return lambda: [model.train_on_batch(x, y) for _ in range(STEPS)]


def run(names: tuple[str, ...], repeats: int) -> dict:
    results = {}
    for name in names:
        runs = {variant: train_step(name, *args) for variant, args in VARIANTS.items()}
        rates = interleaved_rates(runs, images=BATCH * STEPS, repeats=repeats)
        results[name] = {variant: {"images_per_s": round(rate, 1),
                                   "ratio_to_float32": round(rate / rates["float32"], 3)}
                         for variant, rate in rates.items()}
        print(f"  {name}: {results[name]}", flush=True)
        keras.backend.clear_session()
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 and VGG16, 2 repeats")
    quick = parser.parse_args(argv).quick
    names = FAMILIES[::2] if quick else FAMILIES
    figures = {"benchmark": NAME, "quick": quick, "image_size": SIZE, "batch": BATCH,
               "steps_per_timing": STEPS, "results": run(names, 2 if quick else 5),
               "machine": machine_info(),
               "note": "ratios to float32 only: the variants take turns on a shared CPU"}
    path = write_results(NAME + ("_quick" if quick else ""), figures)
    print_table([{"backbone": n, **{v: r["ratio_to_float32"] for v, r in variants.items()}}
                 for n, variants in figures["results"].items()])
    print(f"written {path}")
    return figures


if __name__ == "__main__":
    main()
