"""B7: peak memory of an activation cache, over the cache's own size.

A tuning stage caches the activations of the frozen part below its trainable blocks.
Here the cut is VGG16's block1_pool (blocks 2-5 tuned; weights=None: memory does not
depend on the weights) at 64 px, 32x32x64 float16 values per image, on synthetic
images made batch by batch (so the inputs hold no memory). Each N runs in a fresh
subprocess that extracts the cache and then reads one shuffled training epoch of it,
as a cached stage does; it reports its peak RSS above its RSS after building and
warming the model (memory-mapped cache pages count: they are resident once touched,
though the kernel may reclaim them). The Stanford Dogs figures extrapolate a straight
line (fixed transients + a slope per cached byte) through the two sizes.
Both tltk's streaming `FeatureCache` + memory-mapped epoch stream
and the previous code (predict, concatenate, cast, `.npz` through a BytesIO, then
`from_tensor_slices` with a full shuffle buffer) are measured.

Example:
    $ python -m benchmarks.b7_cache_memory --quick
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._common import machine_info, print_table, write_results

NAME = "b7_cache_memory"
GOAL_RATIO = 1.3
IMAGE_SIZE, BATCH_SIZE, CUT = 64, 32, "block1_pool"
# Stanford Dogs as `dogs` splits it: 120 classes, 30 val and 20 test per class.
DOGS_TRAIN, DOGS_VAL = 20_580 - 120 * 50, 120 * 30
DOGS_CUT_VALUES = 14 * 14 * 512  # VGG19 block4_pool at 224 px (block5 tuned)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _images(n: int):
    import tensorflow as tf

    def batch(i):
        seed = tf.stack([i, tf.constant(0, tf.int64)])
        return tf.random.stateless_uniform([BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3], seed,
                                           0, 255)

    full, rest = divmod(n, BATCH_SIZE)
    ds = tf.data.Dataset.range(full).map(batch)
    if rest:
        ds = ds.concatenate(tf.data.Dataset.range(full, full + 1).map(batch)
                            .map(lambda x: x[:rest]))
    return ds


def _extractor():
    import keras

    base = keras.applications.VGG16(weights=None, include_top=False,
                                    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return keras.Model(base.input, base.get_layer(CUT).output, name="frozen_part")


def _new(extractor, n: int, root: Path) -> tuple:
    """tltk: streamed extraction into a memory-mapped cache, memory-mapped epoch."""
    import numpy as np
    import tensorflow as tf

    from tltk.data.core import Split
    from tltk.engine import streams
    from tltk.engine.features import FeatureCache

    split = Split(np.zeros(n, np.int32), source=None, fingerprint=f"b7-{n}")
    feats = FeatureCache(root).get(extractor, split, {"b7": CUT}, lambda v: _images(n), 1)
    gather = streams.array_gather(feats[0], split.labels)
    stream = streams.epoch_stream(tf.data.Dataset.range(n), n, BATCH_SIZE, 0, 0, 1, n,
                                  gather=gather)
    return feats.nbytes, stream


def _old(extractor, n: int, root: Path) -> tuple:
    """The previous code path, reproduced: list of float32 batches, concatenate, cast,
    `.npz` through a BytesIO, loaded back whole, then sliced into a shuffle buffer."""
    import numpy as np
    import tensorflow as tf

    feats = extractor.predict(_images(n), verbose=0).astype(np.float16)[None]
    buffer = io.BytesIO()
    np.savez(buffer, features=feats)
    (root / "old.npz").write_bytes(buffer.getvalue())
    del buffer, feats
    with np.load(root / "old.npz", allow_pickle=False) as data:
        feats = data["features"]
    examples = tf.data.Dataset.from_tensor_slices((feats[0], np.zeros(n, np.int32)))
    return feats.nbytes, examples.shuffle(n, seed=0).batch(BATCH_SIZE)


def worker(impl: str, n: int) -> dict:
    """Run one side in this (fresh) process; peak RSS above the warmed-up baseline."""
    import numpy as np
    import psutil

    extractor = _extractor()
    extractor.predict_on_batch(np.zeros((BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))
    baseline = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory() as root:
        size, stream = {"new": _new, "old": _old}[impl](extractor, n, Path(root))
        seen = sum(len(y) for _, y in stream)
        assert seen == n, (seen, n)
        peak = _peak_rss_bytes()
    return {"impl": impl, "images": n, "cache_mb": round(size / 1e6, 1),
            "baseline_rss_mb": round(baseline / 1e6, 1),
            "peak_rss_mb": round(peak / 1e6, 1),
            "ratio": round((peak - baseline) / size, 2)}


def _run_worker(impl: str, n: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.b7_cache_memory", "--worker",
                          impl, str(n)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def linear_fit(rows: list[dict]) -> tuple[float, float]:
    """(fixed MB, MB per cache MB) of the memory above baseline, through the two sizes."""
    (small, large) = sorted(rows, key=lambda r: r["cache_mb"])
    excess = [r["peak_rss_mb"] - r["baseline_rss_mb"] for r in (small, large)]
    slope = (excess[1] - excess[0]) / (large["cache_mb"] - small["cache_mb"])
    return excess[0] - slope * small["cache_mb"], slope


def dogs_extrapolation(fit: tuple[float, float], views: int) -> dict:
    """Memory above baseline of the dogs block5 tuning cache (VGG19 block4_pool), in GB."""
    fixed_mb, slope = fit
    size_mb = DOGS_CUT_VALUES * 2 * (DOGS_TRAIN * views + DOGS_VAL) / 1e6
    return {"views": views, "cache_gb": round(size_mb / 1e3, 2),
            "peak_gb": round((fixed_mb + slope * size_mb) / 1e3, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 200 and 800")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))), flush=True)
        return {}
    sizes = (200, 800) if args.quick else (1000, 4000)
    rows = [_run_worker(impl, n) for n in sizes for impl in ("new", "old")]
    new = max(r["ratio"] for r in rows if r["impl"] == "new")
    old = min(r["ratio"] for r in rows if r["impl"] == "old")
    fits = {impl: linear_fit([r for r in rows if r["impl"] == impl]) for impl in ("new", "old")}
    from tltk.recipes.dogs import FEATURE_VIEWS

    figures = {"benchmark": NAME, "quick": args.quick, "cut": f"vgg16 {CUT} @{IMAGE_SIZE}px",
               "rows": rows, "ratio": new, "old_ratio": old, "goal_ratio": GOAL_RATIO,
               "met": new <= GOAL_RATIO,
               "fit_fixed_mb_and_mb_per_cache_mb": {
                   impl: [round(fits[impl][0], 1), round(fits[impl][1], 3)] for impl in fits},
               "dogs_vgg19_block4_pool": {
                   "train_images": DOGS_TRAIN, "val_images": DOGS_VAL,
                   **{impl: [dogs_extrapolation(fits[impl], v) for v in (1, FEATURE_VIEWS)]
                      for impl in fits}},
               "machine": machine_info()}
    path = write_results(NAME, figures)
    print_table(rows)
    print(f"peak RSS / cache size: tltk {new} (goal <= {GOAL_RATIO}, met {figures['met']}), "
          f"previous code {old}")
    for side in ("new", "old"):
        for row in figures["dogs_vgg19_block4_pool"][side]:
            print(f"dogs at block4_pool, {side}, {row['views']} view(s): cache "
                  f"{row['cache_gb']} GB, peak {row['peak_gb']} GB above baseline")
    print(f"written {path}")
    return figures


if __name__ == "__main__":
    main()
