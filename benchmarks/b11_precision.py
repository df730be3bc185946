"""B11: mixed_bfloat16 and XLA against float32, training step time per backbone family.

Depthwise backbones (MobileNetV2, EfficientNetB0: the Lite0 file keeps the float32
policy it was saved with) and dense ones (VGG16, ResNet50), all with random weights, a
whole-network training step on a batch of
random images (Adam, sparse cross-entropy, a 5-class softmax on the pooled features), at
160 px: float32, mixed_bfloat16, float32 with XLA (`jit_compile`) and both. The
variants of a backbone take turns (`_common.interleaved_rates`), so a busy machine slows
them alike: the ratios to float32 are the figures; the absolute images/s are not, on a
shared machine. Accuracy over a short fine-tune is not measured here.

On a GPU (`benchmarks/gpu_check.sh`) the same step runs with other flags: VGG19 and
ResNet50 at 224 px, batch 32, float32 against mixed_float16 and mixed_bfloat16.

Outputs: results/b11_precision.json (`--quick`: b11_precision_quick.json; `--name` for
another file).

Example:
    $ python -m benchmarks b11 --quick
    $ python -m benchmarks b11 --families=vgg19,resnet50 --size=224 --batch=32 \
        --variants=float32,fp16,bf16 --name=b11_precision_gpu
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
BUILDERS = {"mobilenetv2": keras.applications.MobileNetV2,
            "efficientnetb0": keras.applications.EfficientNetB0,
            "vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19,
            "resnet50": keras.applications.ResNet50}
VARIANTS = {"float32": ("float32", False), "bf16": ("mixed_bfloat16", False),
            "float32+xla": ("float32", True), "bf16+xla": ("mixed_bfloat16", True),
            "fp16": ("mixed_float16", False)}  # fp16: GPUs only (no fast CPU kernels)
CPU_VARIANTS = tuple(v for v in VARIANTS if v != "fp16")  # the default set


def backbone(name: str, size: int = SIZE) -> keras.Model:
    """The feature extractor of a family, built under the current dtype policy."""
    return BUILDERS[name](weights=None, include_top=False, input_shape=(size, size, 3))


def train_step(name: str, precision: str, jit: bool, size: int = SIZE, batch: int = BATCH):
    """A compiled classifier's `train_on_batch` on one fixed random batch, traced once."""
    with runtime.precision_policy(precision):
        base = backbone(name, size)
        inputs = keras.Input((size, size, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(base(inputs))
        # The softmax in float32: the usual mixed-precision output layer.
        outputs = keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")(pooled)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy",
                      jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, CLASSES, batch)
    model.train_on_batch(x, y)  # trace outside the timing
    return lambda: [model.train_on_batch(x, y) for _ in range(STEPS)]


def run(names: tuple[str, ...], repeats: int, variants: tuple[str, ...] = CPU_VARIANTS,
        size: int = SIZE, batch: int = BATCH) -> dict:
    results = {}
    for name in names:
        runs = {v: train_step(name, *VARIANTS[v], size, batch) for v in variants}
        rates = interleaved_rates(runs, images=batch * STEPS, repeats=repeats)
        results[name] = {variant: {"images_per_s": round(rate, 1),
                                   "ratio_to_float32": round(rate / rates["float32"], 3)}
                         for variant, rate in rates.items()}
        print(f"  {name}: {results[name]}", flush=True)
        keras.backend.clear_session()
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 and VGG16, 2 repeats")
    parser.add_argument("--families", help=f"comma-separated, from {','.join(BUILDERS)}")
    parser.add_argument("--variants", default=",".join(CPU_VARIANTS),
                        help=f"comma-separated, from {','.join(VARIANTS)} (float32 first)")
    parser.add_argument("--size", type=int, default=SIZE, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=BATCH, help="images per step")
    parser.add_argument("--name", default=NAME, help="the results file's name")
    args = parser.parse_args(argv)
    names = (tuple(args.families.split(",")) if args.families
             else FAMILIES[::2] if args.quick else FAMILIES)
    variants = tuple(args.variants.split(","))
    unknown = sorted(set(names) - set(BUILDERS)) + sorted(set(variants) - set(VARIANTS))
    if unknown or variants[0] != "float32":
        raise SystemExit(f"b11: unknown {unknown}, or float32 is not the first variant")
    figures = {"benchmark": NAME, "quick": args.quick, "image_size": args.size,
               "batch": args.batch, "steps_per_timing": STEPS,
               "devices": [d.device_type for d in _devices()],
               "results": run(names, 2 if args.quick else 5, variants, args.size, args.batch),
               "machine": machine_info(),
               "note": "ratios to float32 only: the variants take turns on a shared machine"}
    path = write_results(args.name + ("_quick" if args.quick else ""), figures)
    print_table([{"backbone": n, **{v: r["ratio_to_float32"] for v, r in variants.items()}}
                 for n, variants in figures["results"].items()])
    print(f"written {path}")
    return figures


def _devices() -> list:
    import tensorflow as tf

    return tf.config.list_logical_devices()


if __name__ == "__main__":
    main()
