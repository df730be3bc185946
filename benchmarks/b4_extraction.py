"""B4: bottleneck feature extraction from JPEG files vs bare `model.predict` in memory.

tltk's side is what a cached stage runs: `FeatureCache` over a `make_pipeline` of the
flowers-128 JPEGs (decode, resize) into MobileNetV2 @160 pooled features, with its
progress bar and the write to disk. The reference is `predict` on the same images
already decoded into a numpy array. Measured side by side, interleaved, in one process.

Example:
    $ python -m benchmarks.b4_extraction --quick
"""

from __future__ import annotations

import tempfile

from benchmarks._common import interleaved_rates, report_ratio
from benchmarks._flowers import BATCH_SIZE, IMAGE_SIZE, SEED, flowers_setup, in_memory, parse_sizes
from tltk.data.core import make_pipeline
from tltk.engine.features import FeatureCache
from tltk.models.heads import feature_extractor

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
    rates = interleaved_rates({"tltk": tltk_once, "bare": bare_once}, n, repeats)
    tltk_rate, bare_rate = rates["tltk"], rates["bare"]
    return {"images": n, "tltk_images_per_s": round(tltk_rate, 1),
            "bare_predict_images_per_s": round(bare_rate, 1),
            "ratio": round(tltk_rate / bare_rate, 3)}


def main(argv: list[str] | None = None) -> dict:
    quick, per_class, repeats = parse_sizes(argv, __doc__.splitlines()[0])
    figures = measure(per_class, repeats)
    rows = [{"side": "tltk FeatureCache from JPEG files",
             "images/s": figures["tltk_images_per_s"]},
            {"side": "bare model.predict on in-memory tensors",
             "images/s": figures["bare_predict_images_per_s"]}]
    return report_ratio(NAME, figures, quick, GOAL_RATIO, rows)


if __name__ == "__main__":
    main()
