"""Bottleneck feature caching for frozen stages.

While the backbone is frozen, its pooled features for an image never change, so
they are computed once (optionally for K augmented views per training image) and
the head trains on them, hundreds of times faster than re-running the backbone
every epoch. Features live on disk as a `.npy` array (no pickle) beside a `.json`
holding the key of the data, split, backbone, weights checksum, image size,
preprocessing, augmentation and views, so runs and tuner trials reuse them and any
change rebuilds them.

Extraction streams: the array is preallocated on disk and filled batch by batch, and
readers get it memory-mapped, so a cache never needs more than its own size (in
reclaimable page cache) plus a few batches of memory. Each array has a `.sha256`
sidecar written after it; an array that does not match it (truncated by a full disk,
a killed copy) is logged in one line, deleted and rebuilt (`verify`).

Example::

    cache = FeatureCache("~/.cache/tltk/features")
    feats = cache.get(extractor, split, key=key, make_inputs=make_inputs, views=4)
    feats.shape  # (views, examples, *feature shape), a read-only memmap
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from tltk import faults
from tltk.data.core import Split, fingerprint
from tltk.fileio import (
    atomic_path,
    checksum_path,
    require_space,
    verify_checksum,
    write_checksum,
    write_text,
)
from tltk.log import log


def default_cache_dir() -> Path:
    root = os.environ.get("TLTK_CACHE") or Path.home() / ".cache" / "tltk"
    return Path(root) / "features"


class FeatureCache:
    """An on-disk cache of backbone features, keyed by everything they depend on."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()

    def path(self, key: dict) -> Path:
        return self.root / f"{fingerprint(json.dumps(key, sort_keys=True))}.npy"

    def get(self, extractor: keras.Model, split: Split, key: dict,
            make_inputs: Callable[[int], object], views: int, desc: str = "") -> np.ndarray:
        """Features of shape (views, N, ...): view 0 plain, views 1.. augmented.

        `make_inputs(view)` returns a batched, unshuffled image dataset for that view.
        The result is a read-only memory map of the cache file.
        """
        key = {**key, "split": split.fingerprint, "views": views}
        path, item = self.path(key), tuple(extractor.output_shape[1:])
        shape, dtype = (views, len(split), *item), feature_dtype(item)
        feats = _load(path, key, shape, dtype)
        if feats is not None:
            return feats
        start = time.time()
        # e.g. "features:train:mid-extraction", a test fault point in the first view.
        fault = ":".join(desc.split()) + ":mid-extraction"
        require_space(self.root, np.prod(shape) * np.dtype(dtype).itemsize,
                      f"the {desc or 'feature'} cache")
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            _allocate(tmp)
            for view in range(views):
                self._extract(extractor, make_inputs(view), out[view],
                              f"{desc} view {view + 1}/{views}", fault if not view else "")
            out.flush()
            del out  # unmapped before the rename
        write_checksum(path)
        # The key is written last: an array without it (a kill in between) is rebuilt.
        write_text(_key_path(path), json.dumps(
            {"key": key, "shape": list(shape), "dtype": np.dtype(dtype).name}, sort_keys=True))
        self.last_extraction_s = time.time() - start
        return _load(path, key, shape, dtype)

    @staticmethod
    def _extract(extractor, inputs, out: np.ndarray, desc: str, fault: str = "") -> None:
        """Fill `out` (N, ...) with the extractor's output, one batch at a time."""
        batches = int(inputs.cardinality())
        bar = tqdm(total=batches if batches > 0 else None, desc=desc.strip(), unit="batch",
                   leave=False, mininterval=2.0, disable=None)
        filled = 0
        with bar:
            for images in inputs:
                feats = np.asarray(extractor.predict_on_batch(images))
                out[filled:filled + len(feats)] = feats  # cast to the cache's dtype
                filled += len(feats)
                bar.update(1)
                if fault and filled == len(feats):
                    faults.fault_point(fault)
        assert filled == len(out), f"extracted {filled} features for {len(out)} images"


def _allocate(path: Path) -> None:
    """Give the sparse memory-mapped file its disk blocks now: a full disk is then an
    OSError here, not a SIGBUS that kills the process at the first unbacked page."""
    with open(path, "r+b") as file:
        with contextlib.suppress(AttributeError):  # no posix_fallocate: macOS, Windows
            os.posix_fallocate(file.fileno(), 0, os.path.getsize(path))


def feature_dtype(shape: tuple) -> np.dtype:
    """Pooled vectors stay float32 (head metrics then match the whole model's exactly);
    spatial activations are stored at half precision to halve memory."""
    return np.dtype(np.float32 if len(shape) == 1 else np.float16)


def _key_path(path: Path) -> Path:
    return path.with_suffix(".json")


def verify(path: Path, shape: tuple | None = None) -> str | None:
    """None when the cache array at `path` is intact, else what is wrong with it.

    Intact means: its bytes match its `.sha256` sidecar and it reads back as an array
    whose leading dimensions are `shape` (views, examples).

    Example::

        verify(cache.path(key), (1, 60))  # None, or e.g. 'checksum mismatch (...)'
    """
    return _read(path, shape)[1]


def _read(path: Path, shape: tuple | None) -> tuple[np.ndarray | None, str | None]:
    problem = verify_checksum(path)
    if problem:
        return None, problem
    try:
        feats = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    if shape is not None and feats.shape[:len(shape)] != tuple(shape):
        return None, f"shape {feats.shape} where {tuple(shape)} was expected"
    return feats, None


def load_verified(path: Path, shape: tuple, problem: str | None = None) -> np.ndarray | None:
    """The cached array at `path`, memory-mapped; None (logged, deleted) when damaged.

    `problem` is a fault the caller already found (e.g. a key file that does not match).
    """
    feats, found = _read(path, shape)
    problem = found or problem
    if problem:
        log(f"feature cache {path} is damaged ({problem}): deleted, rebuilding it")
        for stale in (path, checksum_path(path), _key_path(path)):
            stale.unlink(missing_ok=True)
        return None
    return feats


def _load(path: Path, key: dict, shape: tuple, dtype: np.dtype) -> np.ndarray | None:
    """The cached array memory-mapped, or None when it is missing (or damaged: rebuild)."""
    meta = _key_path(path)
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        saved = json.loads(meta.read_text())
    except (OSError, ValueError):
        saved = None
    expected = {"key": json.loads(json.dumps(key)), "shape": list(shape),
                "dtype": np.dtype(dtype).name}
    mismatch = None if saved == expected else "its key file does not match it"
    feats = load_verified(path, shape, mismatch)
    if feats is not None and feats.dtype != dtype:
        return load_verified(path, shape, f"dtype {feats.dtype}, not {np.dtype(dtype)}")
    return feats


# Batches alive beside a cache: the extractor's float32 output and its cast while
# extracting; while training, the gathered batch, its float32 copy in the model and
# the prefetched ones.
TRANSIENT_BATCHES = 8


def cache_bytes(shape: tuple, examples: int, batch_size: int = 32) -> int:
    """Memory a cache of `examples` items (all views and splits) takes, with transients.

    Example:
        >>> round(cache_bytes((14, 14, 512), 10_000) / 1e9, 2)  # VGG19 block4_pool maps
        2.11
    """
    values = int(np.prod(shape))
    stored = values * feature_dtype(shape).itemsize * examples
    return stored + TRANSIENT_BATCHES * batch_size * values * 4


# Of the memory available when a run starts, the part a cache may take (the model,
# its gradients and the input pipeline need the rest).
AVAILABLE_FRACTION = 0.7


def cache_budget(budget_gb: float | None) -> float:
    """The cache memory budget in bytes: `budget_gb`, or a share of the available memory.

    Example:
        >>> cache_budget(6.0)
        6000000000.0
    """
    if budget_gb is not None:
        return budget_gb * 1e9
    import psutil

    return AVAILABLE_FRACTION * psutil.virtual_memory().available
