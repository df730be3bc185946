"""Datasets: a registry of sources, each `load(cfg: DataConfig, seed) -> Dataset`.

Example:
    >>> from tltk.config import DataConfig
    >>> ds = load(DataConfig(dataset="demo"), seed=0)
    >>> ds.class_names[:2], sorted(ds.splits)
    (['circle', 'square'], ['test', 'train', 'val'])
"""

from __future__ import annotations

from tltk.data.core import Dataset, Split, make_pipeline, subsample_per_class, subset
from tltk.data.sources import SOURCES, register
from tltk.errors import TltkError


def load(cfg, seed: int = 0) -> Dataset:
    """Load the dataset named by `cfg.dataset`, then apply `cfg.per_class`.

    The split is drawn with `cfg.split_seed` (fixed, 0 by default; None: `seed`), the
    per-class subsample with `seed`.
    """
    _import_sources()
    source = SOURCES.get(cfg.dataset)
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    dataset = source(cfg, split_seed)
    if cfg.per_class and "train" in dataset.splits:
        train = dataset.splits["train"]
        keep = subsample_per_class(train.labels, cfg.per_class, seed)
        dataset.splits["train"] = subset(train, keep, tag=f"per_class={cfg.per_class}")
    return dataset


def require_training_splits(dataset: Dataset) -> None:
    """Training needs non-empty 'train' and 'val' splits (test-only sets can't train)."""
    for name in ("train", "val"):
        if len(dataset.splits.get(name, [])) == 0:
            raise TltkError(f"dataset '{dataset.name}' has no '{name}' images, so it cannot "
                            "be trained on; use it for evaluation, or pick another dataset")


def _import_sources() -> None:
    # Importing a source module registers it; kept lazy so `import tltk` stays light.
    from tltk.data import demo, folder, tfds_sources  # noqa: F401


__all__ = ["Dataset", "Split", "load", "make_pipeline", "register", "SOURCES"]
