"""B11: mixed_bfloat16 and XLA against float32, training step time per backbone family.

Depthwise backbones (MobileNetV2, EfficientNetB0: the Lite0 file keeps the float32
policy it was saved with) and dense ones (VGG16, ResNet50), all with random weights, a
whole-network training step on a batch of
random images (Adam, sparse cross-entropy, a 5-class softmax on the pooled features), at
160 px: float32, mixed_bfloat16, float32 with XLA (`jit_compile`) and both. The
variants of a backbone take turns (`_common.interleaved_rates`), so a busy machine slows
them alike: the ratios to float32 are the figures; the absolute images/s are not, on a
shared machine.

`--accuracy` measures what bf16 costs in accuracy: tltk's `folder` recipe, shortened
(ACCURACY_STAGES), on flowers-128's design split (split seed 0, 50 training images a
class, val and test whole) at 128 px, in float32 and in mixed_bfloat16 from the same
seed, for a depthwise backbone with real fine-tuned weights (the MobileNetV2 of
../shared, dogs19) and dense ones from random weights (ResNet50, VGG16: no ImageNet
weights offline); val and test top-1 at the best-validation weights and the run's wall
seconds. A run of some backbones keeps the last file's runs of the others.

On a GPU (`benchmarks/gpu_check.sh`) the same step runs with other flags: VGG19 and
ResNet50 at 224 px, batch 32, float32 against mixed_float16 and mixed_bfloat16.

Outputs: results/b11_precision.json (`--quick`: b11_precision_quick.json; `--name` for
another file); `--accuracy`: results/b11_precision_accuracy.json.

Example:
    $ python -m benchmarks b11 --quick
    $ python -m benchmarks b11 --accuracy --seeds=0,1
    $ python -m benchmarks b11 --families=vgg19,resnet50 --size=224 --batch=32 \
        --variants=float32,fp16,bf16 --name=b11_precision_gpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks._common import (
    RESULTS_DIR,
    interleaved_rates,
    machine_info,
    print_table,
    sample_sd,
    write_results,
)
from benchmarks._flowers import FLOWERS, WEIGHTS, require_assets
from tltk.engine import runtime

NAME = "b11_precision"
SIZE, BATCH, CLASSES = 160, 16, 5
STEPS = 3  # training steps per timed call
FAMILIES = ("mobilenetv2", "efficientnetb0", "vgg16", "resnet50")  # depthwise, then dense
QUICK_FAMILIES = ("mobilenetv2", "vgg16")
BUILDERS = {"mobilenetv2": keras.applications.MobileNetV2,
            "efficientnetb0": keras.applications.EfficientNetB0,
            "vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19,
            "resnet50": keras.applications.ResNet50,
            "densenet201": keras.applications.DenseNet201,
            "inceptionv3": keras.applications.InceptionV3}
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


# --- accuracy over a short fine-tune ---------------------------------------------------

ACCURACY_BACKBONES = {"mobilenetv2": str(WEIGHTS), "resnet50": "none", "vgg16": "none"}
ACCURACY_SIZE, ACCURACY_PER_CLASS = 128, 50
ACCURACY_STAGES = {"stages.bottleneck.epochs": 5, "stages.finetune.epochs": 3}
PRECISIONS = ("float32", "mixed_bfloat16")


def short_finetune(family: str, precision: str, seed: int, work: Path) -> dict:
    """One shortened `folder` run; its best-validation weights' val and test top-1."""
    from tltk.engine.run import train
    from tltk.log import silent
    from tltk.recipes import base_config

    config = base_config("folder", None).override({
        "backbone": family, "weights": ACCURACY_BACKBONES[family], "precision": precision,
        "seed": seed, "data.path": str(FLOWERS), "data.image_size": ACCURACY_SIZE,
        "data.per_class": ACCURACY_PER_CLASS, **ACCURACY_STAGES,
        "out": str(work / f"{family}-{precision}-{seed}"), "cache_dir": str(work / "cache")})
    started = time.perf_counter()
    result = train(config, say=silent)
    seconds = time.perf_counter() - started
    metrics = result.metrics.set_index(["weights", "split"])["top1"]
    keras.backend.clear_session()
    return {"backbone": family, "precision": precision, "seed": seed,
            "val_top1": round(float(metrics[("best", "val")]), 2),
            "test_top1": round(float(metrics[("best", "test")]), 2),
            "seconds": round(seconds, 1)}


def summarize_accuracy(runs: list[dict]) -> list[dict]:
    """Mean ± sd per backbone and precision, and bf16's paired difference (same seed).

    Example:
        >>> runs = [{"backbone": "b", "precision": p, "seed": s, "val_top1": v,
        ...          "test_top1": v, "seconds": t}
        ...         for p, s, v, t in [("float32", 0, 70.0, 100), ("float32", 1, 72.0, 100),
        ...                            ("mixed_bfloat16", 0, 71.0, 50),
        ...                            ("mixed_bfloat16", 1, 71.0, 50)]]
        >>> rows = summarize_accuracy(runs)
        >>> rows[1]["val_top1"], rows[1]["val_diff"], rows[1]["time_ratio"]
        ('71.0 ± 0.0', 0.0, 0.5)
    """
    def spread(values):
        return f"{statistics.mean(values):.1f} ± {sample_sd(values):.1f}"

    rows = []
    for family in dict.fromkeys(r["backbone"] for r in runs):
        base = {r["seed"]: r for r in runs if r["backbone"] == family
                and r["precision"] == "float32"}
        for precision in PRECISIONS:
            mine = [r for r in runs if r["backbone"] == family and r["precision"] == precision]
            paired = [(r, base[r["seed"]]) for r in mine if r["seed"] in base]
            def mean_over_seeds(change, digits, paired=paired):
                return round(statistics.mean(change(r, b) for r, b in paired), digits)

            rows.append({
                "backbone": family, "precision": precision, "seeds": len(mine),
                "val_top1": spread([r["val_top1"] for r in mine]),
                "test_top1": spread([r["test_top1"] for r in mine]),
                "val_diff": mean_over_seeds(lambda r, b: r["val_top1"] - b["val_top1"], 2),
                "test_diff": mean_over_seeds(lambda r, b: r["test_top1"] - b["test_top1"], 2),
                "time_ratio": mean_over_seeds(lambda r, b: r["seconds"] / b["seconds"], 3)})
    return rows


def accuracy(seeds: tuple[int, ...], families: tuple[str, ...], earlier=()) -> dict:
    """The runs of `families` over `seeds`, and `earlier` runs of other backbones kept."""
    require_assets()
    runs = [r for r in earlier if r["backbone"] not in families]
    with tempfile.TemporaryDirectory(prefix="b11-") as tmp:
        for family in families:
            for seed in seeds:
                for precision in PRECISIONS if seed % 2 == 0 else PRECISIONS[::-1]:
                    runs.append(short_finetune(family, precision, seed, Path(tmp)))
                    print(f"  {runs[-1]}", flush=True)
    return {"benchmark": NAME + "_accuracy", "image_size": ACCURACY_SIZE,
            "train_per_class": ACCURACY_PER_CLASS, "split_seed": 0, "stages": ACCURACY_STAGES,
            "weights": ACCURACY_BACKBONES, "table": summarize_accuracy(runs), "runs": runs,
            "cpu_flags": bf16_flags(), "machine": machine_info(),
            "note": "val and test top-1 % at the best-validation weights; diff: bf16 minus "
                    "float32 on the same seed; time_ratio: bf16's wall over float32's"}


def bf16_flags() -> list[str]:
    """The CPU flags that decide whether bf16 has hardware here."""
    return sorted(f for f in runtime.cpu_flags() if "bf16" in f or f in ("avx512f", "amx_tile"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 and VGG16, 2 repeats")
    parser.add_argument("--families", help=f"comma-separated, from {','.join(BUILDERS)}")
    parser.add_argument("--variants", default=",".join(CPU_VARIANTS),
                        help=f"comma-separated, from {','.join(VARIANTS)} (float32 first)")
    parser.add_argument("--size", type=int, default=SIZE, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=BATCH, help="images per step")
    parser.add_argument("--name", default=NAME, help="the results file's name")
    parser.add_argument("--accuracy", action="store_true",
                        help="float32 against mixed_bfloat16 over a short fine-tune")
    parser.add_argument("--seeds", default="0,1", help="training seeds of --accuracy")
    args = parser.parse_args(argv)
    if args.accuracy:
        families = tuple(args.families.split(",")) if args.families else tuple(
            ACCURACY_BACKBONES)
        unknown = sorted(set(families) - set(ACCURACY_BACKBONES))
        if unknown:
            raise SystemExit(f"b11 --accuracy: unknown {unknown}; from {list(ACCURACY_BACKBONES)}")
        last = RESULTS_DIR / f"{NAME}_accuracy.json"
        earlier = json.loads(last.read_text())["runs"] if last.is_file() else ()
        figures = accuracy(tuple(int(s) for s in args.seeds.split(",")), families, earlier)
        print_table(figures["table"])
        print(f"written {write_results(figures['benchmark'], figures)}")
        return figures
    names = (tuple(args.families.split(",")) if args.families
             else QUICK_FAMILIES if args.quick else FAMILIES)
    variants = tuple(args.variants.split(","))
    unknown = sorted(set(names) - set(BUILDERS)) + sorted(set(variants) - set(VARIANTS))
    if unknown or variants[0] != "float32":
        raise SystemExit(f"b11: unknown {unknown}, or float32 is not the first variant")
    figures = {"benchmark": NAME, "quick": args.quick, "image_size": args.size,
               "batch": args.batch, "steps_per_timing": STEPS,
               "devices": [d.device_type for d in _devices()],
               "results": run(names, 2 if args.quick else 5, variants, args.size, args.batch),
               "cpu_flags": bf16_flags(), "machine": machine_info(),
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
