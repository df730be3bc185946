"""Bottleneck feature caching for frozen stages.

While the backbone is frozen, its pooled features for an image never change, so
they are computed once (optionally for K augmented views per training image) and
the head trains on them, hundreds of times faster than re-running the backbone
every epoch. Features live on disk as `.npz` (no pickle) under a key of the data,
split, backbone, weights checksum, image size, preprocessing, augmentation and views,
so runs and tuner trials reuse them and any change rebuilds them.

Example::

    cache = FeatureCache("~/.cache/tltk/features")
    feats = cache.get(extractor, split, key=key, make_inputs=make_inputs, views=4)
    feats.shape  # (views, examples, channels)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from tltk.data.core import Split, fingerprint
from tltk.rundir import write_npz


def default_cache_dir() -> Path:
    root = os.environ.get("TLTK_CACHE") or Path.home() / ".cache" / "tltk"
    return Path(root) / "features"


class _Progress(keras.callbacks.Callback):
    """A tqdm bar over `model.predict` batches."""

    def __init__(self, total: int | None, desc: str):
        super().__init__()
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False,
                        mininterval=2.0, disable=None)

    def on_predict_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_predict_end(self, logs=None):
        self.bar.close()


class FeatureCache:
    """An on-disk cache of pooled backbone features, keyed by everything they depend on."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()

    def path(self, key: dict) -> Path:
        return self.root / f"{fingerprint(json.dumps(key, sort_keys=True))}.npz"

    def get(self, extractor: keras.Model, split: Split, key: dict,
            make_inputs: Callable[[int], object], views: int, desc: str = "") -> np.ndarray:
        """Features of shape (views, N, D): view 0 plain, views 1.. augmented.

        `make_inputs(view)` returns a batched, unshuffled image dataset for that view.
        """
        key = {**key, "split": split.fingerprint, "views": views}
        path = self.path(key)
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                return data["features"]
        start = time.time()
        feats = np.stack([self._extract(extractor, make_inputs(v), len(split),
                                        f"{desc} view {v + 1}/{views}") for v in range(views)])
        write_npz(path, features=feats, key=np.asarray(json.dumps(key, sort_keys=True)))
        self.last_extraction_s = time.time() - start
        return feats

    @staticmethod
    def _extract(extractor, inputs, n: int, desc: str) -> np.ndarray:
        batches = int(inputs.cardinality())
        progress = _Progress(batches if batches > 0 else None, desc.strip())
        feats = extractor.predict(inputs, verbose=0, callbacks=[progress])
        assert len(feats) == n, f"extracted {len(feats)} features for {n} images"
        # Pooled vectors stay float32 (head metrics then match the whole model's
        # exactly); spatial activations are stored at half precision to halve memory.
        return feats.astype(np.float32 if feats.ndim == 2 else np.float16)


def cache_bytes(shape: tuple, examples: int, views: int) -> int:
    """Memory the cached features of a split would take (see `_extract`'s dtypes)."""
    per_item = int(np.prod(shape)) * (4 if len(shape) == 1 else 2)
    return per_item * examples * views
