"""B4: bottleneck feature extraction from JPEG files vs bare `model.predict` in memory.

tltk's side is what a cached stage runs: `FeatureCache` over a `make_pipeline` of the
flowers-128 JPEGs (decode, resize) into MobileNetV2 @160 pooled features, with its
progress bar and the write to disk. The reference is `predict` on the same images
already decoded into a numpy array. Measured side by side, interleaved, in one process.

Example:
    $ python -m benchmarks.b4_extraction --quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from benchmarks._common import report_ratio
from benchmarks._flowers import BATCH_SIZE, IMAGE_SIZE, SEED, flowers_setup, in_memory
from tltk.data.core import make_pipeline
from tltk.features import FeatureCache
from tltk.heads import feature_extractor

NAME = "b4_extraction"
GOAL_RATIO = 0.9


def measure(per_class: int, repeats: int) -> dict:
    setup = flowers_setup(per_class)
    split = setup.dataset.splits["train"]
    extractor = feature_extractor(setup.model)
    x, _ = in_memory(setup.dataset, "train")
    n = len(split)

    def inputs(view):
        ds = make_pipeline(split, IMAGE_SIZE, BATCH_SIZE, training=False, seed=SEED,
                           cache=False)
        return ds.map(lambda img, y: img)

    def tltk_once():
        with tempfile.TemporaryDirectory() as root:  # a cold cache every time
            FeatureCache(root).get(extractor, split, {"run": "b4"}, inputs, views=1)

    def bare_once():
        extractor.predict(x, batch_size=BATCH_SIZE, verbose=0)

    bare_once()
    tltk_once()
    tltk_rates, bare_rates = [], []
    for _ in range(repeats):
        for fn, rates in ((tltk_once, tltk_rates), (bare_once, bare_rates)):
            start = time.perf_counter()
            fn()
            rates.append(n / (time.perf_counter() - start))
    tltk_rate, bare_rate = statistics.median(tltk_rates), statistics.median(bare_rates)
    return {"images": n, "tltk_images_per_s": round(tltk_rate, 1),
            "bare_predict_images_per_s": round(bare_rate, 1),
            "ratio": round(tltk_rate / bare_rate, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 images per class, 2 repeats")
    args = parser.parse_args(argv)
    figures = measure(60 if args.quick else 200, 2 if args.quick else 3)
    rows = [{"side": "tltk FeatureCache from JPEG files",
                  "images/s": figures["tltk_images_per_s"]},
                 {"side": "bare model.predict on in-memory tensors",
                  "images/s": figures["bare_predict_images_per_s"]}]
    return report_ratio(NAME, figures, args.quick, GOAL_RATIO, rows)


if __name__ == "__main__":
    main()
