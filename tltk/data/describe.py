"""`tltk data describe`: a report on a dataset before training on it.

Writes into `out`:
    summary.csv       per class: label, images per split, total
    image_sizes.csv   split, class, width, height of the measured images (all files of a
                      folder source; up to `size_samples` per split of a streamed one)
    samples.png       a grid of sample images, one row per class
    augmentation.png  one image and nine `tltk.data.augment.RandomAffine` (defaults) versions
    summary.md        the above in words and tables, plus skipped files
    skipped.csv       path,reason for files a folder source skipped (when any)

Figures use matplotlib's Agg canvas (no pyplot, no display).

Example::

    files = describe("folder", "reports/flowers", data="../shared/data/flowers-128")
    sorted(files)  # -> ['augmentation', 'image_sizes', 'samples', 'summary', 'summary_md']
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from tltk.config import DataConfig
from tltk.data.core import Dataset, Split, resize
from tltk.data.scan import WORKERS, write_skipped_csv
from tltk.errors import TltkError
from tltk.fileio import write_bytes, write_csv, write_text

AUGMENT_SIZE = 160  # the augmentation demo shows the image at a typical training size
AUGMENTED_VIEWS = 9
THUMB_INCHES = 1.3
SKIPPED_LISTED = 20  # skipped files named in summary.md (all are in skipped.csv)


def load_any(cfg: DataConfig, seed: int) -> Dataset:
    """Load any registered dataset, test-only ones (e.g. `dogs-v2`) included."""
    from tltk.data import SOURCES, _import_sources

    _import_sources()
    return SOURCES.get(cfg.dataset, argument="DATASET")(cfg, seed)


def describe(dataset: str, out: str | Path, data: str | None = None, seed: int = 0,
             per_class: int = 4, max_classes: int = 24, size_samples: int = 2000,
             **data_options) -> dict[str, Path]:
    """Write the dataset report into `out`; returns {name: path} of the files written.

    `data` is the image folder (folder source) or the tfds data_dir; `data_options`
    are further `DataConfig` fields (e.g. `val_fraction=0.3`, `split="official"`).

    Example::

        describe("flowers", "reports/flowers", data="/data/tfds", val_fraction=0.3)
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TltkError(f"--out: {out} is a file; give a folder for the report")
    cfg = DataConfig(dataset=dataset, path=data, **{k: v for k, v in data_options.items()
                                                   if v is not None})
    ds = load_any(cfg, seed)
    counts = class_counts(ds)
    sizes = image_sizes(ds, size_samples)
    shown = ds.class_names[:max_classes]
    source_split, samples = sample_images(ds, per_class, len(shown), seed)
    files = {"summary": out / "summary.csv", "image_sizes": out / "image_sizes.csv",
             "samples": out / "samples.png", "augmentation": out / "augmentation.png",
             "summary_md": out / "summary.md"}
    write_csv(files["summary"], counts)
    write_csv(files["image_sizes"], sizes)
    plot_samples(samples, shown, files["samples"])
    first = next((images[0] for images in samples if images), None)
    if first is None:
        raise TltkError(f"DATASET: '{dataset}' has no images to show; check its splits")
    plot_augmentation(first, files["augmentation"], seed)
    if ds.skipped:
        files["skipped"] = out / "skipped.csv"
        write_skipped_csv(files["skipped"], ds.skipped)
    text = summary_markdown(ds, cfg, counts, sizes, source_split, len(shown), size_samples)
    write_text(files["summary_md"], text)
    return files


def class_counts(ds: Dataset) -> pd.DataFrame:
    """One row per class: class, label, images in each split, total."""
    table = pd.DataFrame({"class": ds.class_names, "label": range(ds.num_classes)})
    for name, split in ds.splits.items():
        table[name] = np.bincount(split.labels, minlength=ds.num_classes)[:ds.num_classes]
    table["total"] = table[list(ds.splits)].sum(axis=1)
    return table


def image_sizes(ds: Dataset, limit: int) -> pd.DataFrame:
    """split, class, width, height per measured image.

    Files are measured from their headers (all of them); streamed splits decode their
    first `limit` images, which is enough for the statistics and keeps big sets fast.
    """
    frames = []
    for name, split in ds.splits.items():
        if split.paths is not None:
            with ThreadPoolExecutor(WORKERS) as pool:
                wh = list(pool.map(_header_size, split.paths))
            labels = split.labels
        else:
            taken = [(x.shape[1], x.shape[0], int(y))
                     for x, y in split.source().take(limit).as_numpy_iterator()]
            wh = [t[:2] for t in taken]
            labels = np.asarray([t[2] for t in taken], dtype=np.int64)
        frame = pd.DataFrame(wh, columns=["width", "height"], dtype=np.int64)
        frame.insert(0, "class", [ds.class_names[y] for y in labels])
        frame.insert(0, "split", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _header_size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:  # reads the header only
        return image.size


def sample_images(ds: Dataset, per_class: int, classes: int, seed: int):
    """(split name, per class a list of up to `per_class` uint8 images) for a grid.

    Folder splits read just the chosen files from train. A streamed split must be read
    in order, so samples come from the smallest split that holds every shown class.
    """
    rng = np.random.default_rng(seed)
    name = _sample_split(ds, classes)
    split = ds.splits[name]
    chosen = {c: np.sort(rng.permutation(np.flatnonzero(split.labels == c))[:per_class])
              for c in range(classes)}
    wanted = np.sort(np.concatenate([idx for idx in chosen.values()] + [np.zeros(0, int)]))
    images = dict(zip(wanted.tolist(), _read(split, wanted)))
    return name, [[images[i] for i in chosen[c]] for c in range(classes)]


def _sample_split(ds: Dataset, classes: int) -> str:
    covering = [name for name, split in ds.splits.items()
                if set(range(classes)) <= set(np.unique(split.labels).tolist())]
    file_backed = [name for name in covering if ds.splits[name].paths is not None]
    if "train" in file_backed:
        return "train"
    candidates = file_backed or covering or list(ds.splits)
    return min(candidates, key=lambda name: len(ds.splits[name]))


def _read(split: Split, indices: np.ndarray) -> list[np.ndarray]:
    """The images of `split` at sorted `indices`, as uint8 arrays."""
    if split.paths is not None:
        return [_decode_file(split.paths[i]) for i in indices]
    wanted, found = set(indices.tolist()), []
    last = int(indices[-1]) if len(indices) else -1
    for i, (image, _) in enumerate(split.source().take(last + 1).as_numpy_iterator()):
        if i in wanted:
            found.append(image)
    return found


def _decode_file(path: str) -> np.ndarray:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return image.numpy()


def _save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())
    return path


def plot_samples(samples: list[list[np.ndarray]], class_names: list[str], path: Path) -> Path:
    """One row per class, its sample images left to right, the class name on the left."""
    rows, cols = len(samples), max(1, max(len(row) for row in samples))
    fig = Figure(figsize=(cols * THUMB_INCHES + 1.2, rows * THUMB_INCHES))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (name, images) in enumerate(zip(class_names, samples)):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c])
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    return _save_figure(fig, path)


def plot_augmentation(image: np.ndarray, path: Path, seed: int) -> Path:
    """The image resized to AUGMENT_SIZE, then nine RandomAffine (defaults) versions."""
    from tltk.data.augment import RandomAffine  # registers the layer; imported only when used

    base = resize(tf.constant(image), AUGMENT_SIZE)
    batch = tf.repeat(base[None], AUGMENTED_VIEWS, axis=0)
    views = RandomAffine(seed=seed)(batch, training=True).numpy()
    panels = [("original", base.numpy())] + [(f"augmented {i + 1}", v)
                                             for i, v in enumerate(views)]
    fig = Figure(figsize=(5 * 2.0, 2 * 2.2))
    axes = fig.subplots(2, 5)
    for ax, (title, panel) in zip(axes.flat, panels):
        ax.imshow(np.clip(panel, 0, 255).astype(np.uint8))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return _save_figure(fig, path)


def size_statistics(sizes: pd.DataFrame) -> pd.DataFrame:
    """Per split: images measured and min / median / max of width and height."""
    stats = sizes.groupby("split", sort=False)[["width", "height"]].agg(
        ["min", "median", "max"])
    stats.columns = [f"{dim} {stat}" for dim, stat in stats.columns]
    stats.insert(0, "measured", sizes.groupby("split", sort=False).size())
    return stats.reset_index()


def _markdown_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def summary_markdown(ds: Dataset, cfg: DataConfig, counts: pd.DataFrame,
                     sizes: pd.DataFrame, sample_split: str, shown: int,
                     size_samples: int) -> str:
    """The summary.md text."""
    split_sizes = pd.DataFrame({"split": list(ds.splits),
                                "images": [len(s) for s in ds.splits.values()]})
    per_class = counts["total"]
    lines = [
        f"# Dataset `{ds.name}`",
        "",
        f"Source `{cfg.dataset}`" + (f" from `{cfg.path}`" if cfg.path else "")
        + f", split `{cfg.split}` (val {cfg.val_fraction:g}, test {cfg.test_fraction:g}).",
        f"{ds.num_classes} classes, {int(per_class.sum())} images; per class "
        f"min {per_class.min()}, median {per_class.median():g}, max {per_class.max()}"
        f" (imbalance {per_class.max() / max(per_class.min(), 1):.1f}x).",
        "",
        "## Splits",
        "",
        _markdown_table(split_sizes),
        "",
        "## Images per class",
        "",
        _markdown_table(counts),
        "",
        "## Image sizes (pixels)",
        "",
        _markdown_table(size_statistics(sizes)),
        "",
        "Folder splits are measured in full; streamed splits on their first "
        f"{size_samples} images. Per image: `image_sizes.csv`.",
        "",
        "## Samples",
        "",
        f"From the `{sample_split}` split"
        + (f", first {shown} of {ds.num_classes} classes" if shown < ds.num_classes else "")
        + ".",
        "",
        "![samples](samples.png)",
        "",
        "## Augmentation",
        "",
        f"One image at {AUGMENT_SIZE} px and {AUGMENTED_VIEWS} draws of "
        "`tltk.data.augment.RandomAffine` with its default (thesis) parameters.",
        "",
        "![augmentation](augmentation.png)",
        "",
    ]
    lines += _skipped_section(ds.skipped)
    return "\n".join(lines)


def _skipped_section(skipped: list[tuple[str, str]]) -> list[str]:
    if not skipped:
        return ["## Skipped files", "", "None: every image file decoded.", ""]
    listed = pd.DataFrame(skipped[:SKIPPED_LISTED], columns=["path", "reason"])
    more = len(skipped) - len(listed)
    return ["## Skipped files", "",
            f"{len(skipped)} file(s) could not be used; all are in `skipped.csv`.", "",
            _markdown_table(listed), ""] + ([f"... and {more} more.", ""] if more else [])
