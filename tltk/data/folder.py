"""`folder`: any class-per-subfolder image directory, loaded robustly.

Either `ROOT/<class>/*.jpg` (split stratified and seeded into train/val/test by the
configured fractions) or `ROOT/train/<class>/...`, `ROOT/val/<class>/...` and
optionally `ROOT/test/<class>/...` (used as they are).

Every image file is checked once by `tltk.data.scan` (cached): JPEG, PNG, GIF, BMP and
WebP in any mode are used, files that are empty, truncated, corrupt or not images are
skipped and listed in `Dataset.skipped` with their reason (the run writes them to
`skipped.csv`). Hidden files and other extensions are ignored. A class folder without a
usable image is dropped with a warning; fewer than two classes, or a class too small for
the requested split, is a `TltkError`.

Example::

    ds = load_folder(DataConfig(dataset="folder", path="../shared/data/flowers-128"))
    ds.class_names, len(ds.skipped)  # -> (['daisy', 'dandelion', 'rose', 'sunflower', 'tulip'], 0)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tltk.data.core import Dataset, Split, file_split, stratified_indices
from tltk.data.duplicates import conflicting_copies, duplicate_groups, signatures
from tltk.data.scan import ScannedFile, scan_files
from tltk.data.sources import register
from tltk.errors import TltkError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}
SPLIT_DIRS = ("train", "val", "test")


def list_images(class_dir: Path) -> list[Path]:
    """Image files below `class_dir`, sorted; hidden files and other extensions skipped."""
    return sorted(p for p in class_dir.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))


def class_dirs(root: Path) -> list[Path]:
    """Visible subfolders of `root`, sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_classes(root: Path, class_names: list[str] | None = None, progress: bool = True):
    """Scan a class-per-subfolder directory.

    Returns (class_names, used files, labels, skipped) where `used` are the
    `ScannedFile`s that decode, `labels` their class indices and `skipped` the
    (path, reason) pairs of the files that do not.
    """
    names = class_names or [d.name for d in class_dirs(root)]
    paths, labels = [], []
    for label, name in enumerate(names):
        files = list_images(root / name) if (root / name).is_dir() else []
        paths.extend(files)
        labels.extend([label] * len(files))
    result = scan_files(root, paths, progress=progress)
    keep = [i for i, found in enumerate(result.files) if found.ok]
    used = [result.files[i] for i in keep]
    return names, used, np.asarray(labels, dtype=np.int32)[keep], result.skipped


def scanned_files(root: Path) -> list[ScannedFile]:
    """Every usable image of a folder dataset, in either layout (from the cached scan).

    Example::

        len(scanned_files(Path("../shared/data/flowers-128")))  # -> 4317
    """
    presplit = (root / "train").is_dir() and (root / "val").is_dir()
    dirs = [root / s for s in SPLIT_DIRS if (root / s).is_dir()] if presplit else [root]
    return [f for folder in dirs for f in scan_classes(folder, progress=False)[1]]


def _check_root(path: str | None) -> Path:
    if not path:
        raise TltkError("--data: the folder dataset needs --data PATH (one subfolder per class)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise TltkError(f"--data: folder not found: {root}")
    return root


def _split(files: list[ScannedFile], labels: np.ndarray, tag: str) -> Split:
    # Sizes and mtimes make the fingerprint change when a file is edited in place.
    stamps = np.asarray([[f.width, f.height, f.size, f.mtime_ns] for f in files], np.int64)
    return file_split([f.decode_path for f in files], labels, (tag, stamps))


@register("folder")
def load_folder(cfg, seed: int = 0) -> Dataset:
    """Load `cfg.path` as a class-per-subfolder image directory."""
    root = _check_root(cfg.path)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return _load_presplit(root)
    names, files, labels, skipped = scan_classes(root)
    names, files, labels = _drop_empty(root, names, files, labels)
    fractions = {"val": cfg.val_fraction, "test": cfg.test_fraction}
    check_split_sizes(root, names, labels, fractions)
    sigs = signatures(root, files)
    groups = duplicate_groups(sigs)
    # An old config (group_duplicates false) keeps the split its runs were made on.
    parts = stratified_indices(labels, fractions, seed=seed,
                               groups=groups if getattr(cfg, "group_duplicates", False) else None)
    warn_duplicates(root, names, sigs, labels, groups, parts)
    splits = {name: _split([files[i] for i in idx], labels[idx], f"folder/{name}/{seed}")
              for name, idx in parts.items() if len(idx)}
    return Dataset(name=root.name, class_names=names, splits=splits, skipped=skipped)


def warn_duplicates(root: Path, names: list[str], sigs, labels: np.ndarray,
                    groups: np.ndarray, parts: dict[str, np.ndarray]) -> None:
    """One warning line when byte-identical files carry different classes or duplicates
    straddle the splits, pointing to `tltk audit`."""
    conflicts = conflicting_copies(sigs, labels)
    split_of = np.empty(len(labels), object)
    for name, idx in parts.items():
        split_of[idx] = name
    leaked = sum(len(set(split_of[groups == g])) > 1 for g in np.unique(groups))
    problems = []
    if conflicts:
        pairs = sorted({"/".join(sorted({names[labels[i]] for i in group})) for group in conflicts})
        problems.append(f"{len(conflicts)} byte-identical image(s) filed under two classes "
                        f"({', '.join(pairs)})")
    if leaked:
        problems.append(f"{leaked} duplicate group(s) span train/val/test")
    if problems:
        log.warning("warning: %s: %s; see `tltk audit %s`", root, "; ".join(problems), root)


def _load_presplit(root: Path) -> Dataset:
    names = [d.name for d in class_dirs(root / "train")]
    scanned = {split: scan_classes(root / split, names)
               for split in SPLIT_DIRS if (root / split).is_dir()}
    _warn_unknown_classes(root, names)
    _, files, labels, _ = scanned["train"]
    kept, _, _ = _drop_empty(root / "train", names, files, labels)
    # Re-index labels onto the classes that survived in train/.
    remap = {names.index(name): i for i, name in enumerate(kept)}
    splits, skipped, every, parts = {}, [], ([], []), {}
    for split, (_, files, labels, bad) in scanned.items():
        skipped.extend(bad)
        keep = [i for i, y in enumerate(labels) if y in remap]
        new_labels = np.asarray([remap[labels[i]] for i in keep], dtype=np.int32)
        splits[split] = _split([files[i] for i in keep], new_labels, f"presplit/{split}")
        parts[split] = len(every[0]) + np.arange(len(keep))
        every[0].extend(files[i] for i in keep)
        every[1].extend(new_labels)
    sigs = signatures(root, every[0])
    warn_duplicates(root, kept, sigs, np.asarray(every[1]), duplicate_groups(sigs), parts)
    return Dataset(name=root.name, class_names=kept, splits=splits, skipped=skipped)


def _warn_unknown_classes(root: Path, names: list[str]) -> None:
    for split in SPLIT_DIRS[1:]:
        if (root / split).is_dir():
            extra = sorted(d.name for d in class_dirs(root / split) if d.name not in names)
            if extra:
                log.warning("%s: class folder(s) %s are not in %s and are ignored",
                            root / split, ", ".join(extra), root / "train")


def _drop_empty(root: Path, names: list[str], files: list, labels: np.ndarray):
    """Drop classes without a usable image (with a warning); at least two must remain."""
    counts = np.bincount(labels, minlength=len(names))
    empty = [n for n, c in zip(names, counts) if c == 0]
    if empty:
        log.warning("%s: ignoring class folder(s) with no usable image: %s",
                    root, ", ".join(empty))
    kept = [n for n, c in zip(names, counts) if c > 0]
    if len(kept) < 2:
        raise TltkError(f"--data: {root} needs at least two class subfolders with images, "
                        f"found {len(kept)}; put each class's images in its own subfolder")
    new_index = np.cumsum(counts > 0) - 1  # old label -> new label for kept classes
    return kept, files, new_index[labels].astype(np.int32)


def check_split_sizes(root, names: list[str], labels: np.ndarray,
                      fractions: dict[str, float]) -> None:
    """Raise if a class cannot fill every requested split; warn if a split misses it.

    Example:
        >>> check_split_sizes("photos", ["a", "b"], np.array([0, 1, 1]), {"val": .2})
        Traceback (most recent call last):
        tltk.errors.TltkError: --data: class 'a' in photos has 1 image(s), but ...
    """
    wanted = [name for name, fraction in fractions.items() if fraction > 0]
    need = 1 + len(wanted)  # one image for train and each requested split
    counts = np.bincount(labels, minlength=len(names))
    for name, count in zip(names, counts):
        if count < need:
            raise TltkError(
                f"--data: class '{name}' in {root} has {count} image(s), but train+"
                f"{'+'.join(wanted)} need at least {need}; add images to that folder or "
                "lower the val/test fractions")
    for split in wanted:
        short = [n for n, c in zip(names, counts) if round(fractions[split] * c) == 0]
        if short:
            log.warning("%s: class(es) %s get no %s images at fraction %.2f", root,
                        ", ".join(short), split, fractions[split])
