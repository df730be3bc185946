"""Bottleneck feature caching for frozen stages.

While the backbone is frozen, its pooled features for an image never change, so
they are computed once (optionally for K augmented views per training image) and
the head trains on them, hundreds of times faster than re-running the backbone
every epoch. Features live on disk as `.npz` (no pickle) under a key of the data,
split, backbone, weights checksum, image size, preprocessing, augmentation and views,
so runs and tuner trials reuse them and any change rebuilds them. Each cache file has
a `.sha256` sidecar written after it; a file that does not match it (truncated by a
full disk, a killed copy) is logged in one line, deleted and rebuilt (`verify`).

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
from tltk.engine.checkpoint import fault_point
from tltk.log import log
from tltk.rundir import checksum_path, verify_checksum, write_checksum, write_npz


def default_cache_dir() -> Path:
    root = os.environ.get("TLTK_CACHE") or Path.home() / ".cache" / "tltk"
    return Path(root) / "features"


class _Progress(keras.callbacks.Callback):
    """A tqdm bar over `model.predict` batches."""

    def __init__(self, total: int | None, desc: str, fault: str = ""):
        super().__init__()
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False,
                        mininterval=2.0, disable=None)
        self.fault = fault

    def on_predict_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if batch == 0 and self.fault:
            fault_point(self.fault)

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
            feats = load_verified(path, (views, len(split)))
            if feats is not None:
                return feats
        start = time.time()
        # e.g. "features:train:mid-extraction", a test fault point in the first view.
        fault = ":".join(desc.split()) + ":mid-extraction"
        feats = np.stack([self._extract(extractor, make_inputs(v), len(split),
                                        f"{desc} view {v + 1}/{views}", fault if not v else "")
                          for v in range(views)])
        write_npz(path, features=feats, key=np.asarray(json.dumps(key, sort_keys=True)))
        write_checksum(path)
        self.last_extraction_s = time.time() - start
        return feats

    @staticmethod
    def _extract(extractor, inputs, n: int, desc: str, fault: str = "") -> np.ndarray:
        batches = int(inputs.cardinality())
        progress = _Progress(batches if batches > 0 else None, desc.strip(), fault)
        feats = extractor.predict(inputs, verbose=0, callbacks=[progress])
        assert len(feats) == n, f"extracted {len(feats)} features for {n} images"
        # Pooled vectors stay float32 (head metrics then match the whole model's
        # exactly); spatial activations are stored at half precision to halve memory.
        return feats.astype(np.float32 if feats.ndim == 2 else np.float16)


def verify(path: Path, shape: tuple | None = None) -> str | None:
    """None when the cache file at `path` is intact, else what is wrong with it.

    Intact means: its bytes match its `.sha256` sidecar and it reads back as an array
    whose leading dimensions are `shape` (views, examples).

    Example:
        >>> verify(cache.path(key), (1, 60))  # None, or e.g. 'checksum mismatch (...)'
    """
    return _read(path, shape)[1]


def _read(path: Path, shape: tuple | None) -> tuple[np.ndarray | None, str | None]:
    problem = verify_checksum(path)
    if problem:
        return None, problem
    try:
        with np.load(path, allow_pickle=False) as data:
            feats = data["features"]
    except Exception as exc:  # noqa: BLE001 - zip, zlib, numpy and OS errors alike
        return None, f"unreadable ({type(exc).__name__})"
    if shape is not None and feats.shape[:len(shape)] != tuple(shape):
        return None, f"shape {feats.shape} where {tuple(shape)} was expected"
    return feats, None


def load_verified(path: Path, shape: tuple) -> np.ndarray | None:
    """The cached features at `path`, or None (logged, file deleted) when damaged."""
    feats, problem = _read(path, shape)
    if problem:
        log(f"feature cache {path} is damaged ({problem}): deleted, rebuilding it")
        for stale in (path, checksum_path(path)):
            stale.unlink(missing_ok=True)
    return feats


def cache_bytes(shape: tuple, examples: int, views: int) -> int:
    """Memory the cached features of a split would take (see `_extract`'s dtypes)."""
    per_item = int(np.prod(shape)) * (4 if len(shape) == 1 else 2)
    return per_item * examples * views
