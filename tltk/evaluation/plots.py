"""PNG figures for reports: learning curves, confusion matrices, misclassified images.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never pyplot, so
nothing depends on a display or on pyplot's global state. Each function writes its PNG
atomically and returns the path.

Example::

    plot_learning_curves(pd.read_csv("runs/x/history.csv"), "runs/x/report/curves.png")
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from tltk.fileio import write_bytes

# Learning-curve panels: (title, train column, validation column, is an accuracy).
CURVE_PANELS = (("loss", "loss", "val_loss", False),
                ("top-1 accuracy (%)", "top1", "val_top1", True),
                ("top-{k} accuracy (%)", "topk", "val_topk", True))


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def stage_spans(history: pd.DataFrame) -> list[tuple[str, int, int]]:
    """Consecutive runs of the `stage` column as (name, first epoch, last epoch).

    Example:
        >>> h = pd.DataFrame({"stage": ["head", "head", "finetune"], "epoch": [1, 2, 3]})
        >>> stage_spans(h)
        [('head', 1, 2), ('finetune', 3, 3)]
    """
    spans: list[tuple[str, int, int]] = []
    for stage, epoch in zip(history["stage"], history["epoch"]):
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], int(epoch))
        else:
            spans.append((str(stage), int(epoch), int(epoch)))
    return spans


def plot_learning_curves(history: pd.DataFrame, path: str | Path, k: int | None = None) -> Path:
    """Loss, top-1 and top-k for training and validation over all epochs, one PNG.

    Stage boundaries are dashed vertical lines; each stage is named above its span.
    """
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, len(CURVE_PANELS))
    epochs = history["epoch"].to_numpy()
    marker = "o" if len(history) <= 30 else None
    for ax, (title, train_col, val_col, is_acc) in zip(axes, CURVE_PANELS):
        scale = 100.0 if is_acc else 1.0
        for column, label in ((train_col, "train"), (val_col, "validation")):
            if column in history and history[column].notna().any():
                ax.plot(epochs, history[column] * scale, marker=marker, markersize=3,
                        label=label)
        ax.set_title(title.format(k=k or "k"), pad=16)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _mark_stages(ax, stage_spans(history))
    _mark_best(axes[1], history)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _mark_best(ax, history: pd.DataFrame) -> None:
    # best.keras is the epoch with the highest validation top-1; show where it was saved.
    if "val_top1" not in history or history["val_top1"].isna().all():
        return
    row = history.loc[history["val_top1"].idxmax()]
    ax.plot(row["epoch"], 100.0 * row["val_top1"], marker="*", markersize=12, color="black",
            linestyle="none", label=f"best ({100.0 * row['val_top1']:.1f}%)")
    ax.legend(loc="lower right", fontsize=8)


def _mark_stages(ax, spans) -> None:
    for index, (name, first, last) in enumerate(spans):
        if index:  # a boundary sits half-way between the last epoch of one stage and the next
            ax.axvline(first - 0.5, color="grey", linestyle="--", linewidth=1)
        # Names sit just above the plot area (the title is padded), clear of the curves.
        ax.text((first + last) / 2, 1.01, name, transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="dimgrey")


def confusion_figure_size(num_classes: int) -> tuple[float, int]:
    """(figure inches, tick font size) so that every class label stays legible.

    About 0.16 in per class (11.5 pt, room for a 7-pt label) with a floor for
    small matrices.

    Example:
        >>> confusion_figure_size(5), confusion_figure_size(120)
        ((6.0, 10), (22.2, 7))
    """
    inches = round(max(6.0, 0.16 * num_classes + 3.0), 1)
    fontsize = int(np.clip(360 / max(num_classes, 1), 7, 10))
    return inches, fontsize


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | Path,
                   title: str = "") -> Path:
    """Row-normalised confusion matrix (true rows, predicted columns), one PNG.

    Cells carry their percentage when there are 20 classes or fewer.
    """
    from tltk.evaluation.analysis import normalise_rows

    num = len(class_names)
    inches, fontsize = confusion_figure_size(num)
    rates = normalise_rows(np.asarray(matrix))
    fig = Figure(figsize=(inches + 1.5, inches))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(num), class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(num), class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row-normalised)")
    if num <= 20:
        for (i, j), rate in np.ndenumerate(rates):
            if rate > 0:
                ax.text(j, i, f"{100 * rate:.0f}", ha="center", va="center", fontsize=fontsize,
                        color="white" if rate > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, shrink=0.5 if num > 20 else 1.0)
    fig.tight_layout()
    # Small labels on large matrices need more pixels per point to stay legible.
    return _save(fig, path, dpi=130 if num > 40 else 100)


def _thumbnail(path: str, size: int = 160):
    """(pixels at most `size` on a side, never enlarged; the file's own (width, height))."""
    try:
        with Image.open(path) as image:
            native = image.size
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return np.asarray(image), native
    except (OSError, ValueError):
        return None, None


def plot_misclassified(mistakes: pd.DataFrame, path: str | Path, columns: int = 4,
                       cell: int = 160, heatmaps=None) -> Path:
    """A grid of misclassified images, each titled with its file name, true and predicted
    label, confidence and its own size.

    Each image is drawn at its own resolution (only images over `cell` pixels are
    shrunk), in a `cell` x `cell` frame: a 64-px photo looks small, as the network's
    blown-up input would not show. `mistakes` is `tltk.evaluation.analysis.misclassified(...)`
    with its `path` column; `heatmaps`, one image per row
    (`tltk.evaluation.gradcam.mistake_overlays`), replaces each photo with its Grad-CAM
    overlay, drawn at the photo's size.
    """
    count = max(len(mistakes), 1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(2.6 * columns, 3.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    heatmaps = heatmaps or [None] * len(mistakes)
    for ax, item, heat in zip(axes, mistakes.itertuples(index=False), heatmaps):
        pixels, native = _thumbnail(item.path, cell)
        if pixels is not None and heat is not None:
            pixels = np.asarray(Image.fromarray(heat).resize(pixels.shape[1::-1]))
        name = Path(item.path).name
        name = name if len(name) <= 28 else name[:12] + "…" + name[-14:]
        if pixels is None:
            ax.text(0.5, 0.5, "image unreadable", ha="center", va="center", fontsize=8)
            size = ""
        else:
            ax.imshow(pixels, extent=(0, pixels.shape[1], pixels.shape[0], 0),
                      interpolation="nearest")
            ax.set_xlim(0, cell)
            ax.set_ylim(cell, 0)
            size = f", {native[0]}x{native[1]}"
        ax.set_title(f"{name}\ntrue: {item.true}{size}\npred: {item.predicted} "
                     f"({item.confidence:.0f}%)", fontsize=7, color="firebrick")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(table: pd.DataFrame, path: str | Path, blocks: int) -> Path:
    """Validation top-1 vs frozen depth, one line per training-set size (`tltk sweep`).

    Error bars are the standard deviation over repeats; a size's scratch baseline is
    a dashed line of the same colour. Depth `all` sits at `blocks`.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for index, (size, rows) in enumerate(table.groupby("per_class", sort=False)):
        colour = f"C{index}"
        transfer = rows[rows.depth != "scratch"]
        x = pd.Series([blocks if d == "all" else int(d) for d in transfer.depth],
                      index=transfer.index)
        transfer = transfer.loc[x.sort_values().index]
        ax.errorbar(x.sort_values(), transfer.val_mean, yerr=transfer.val_std.fillna(0),
                    marker="o",
                    capsize=3, color=colour, label=f"{size} per class")
        for value in rows[rows.depth == "scratch"].val_mean:
            ax.axhline(value, color=colour, linestyle="--", linewidth=1)
    ax.set_xlabel(f"frozen blocks from the bottom ({blocks} = all)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("freeze depth x training-set size (dashed: scratch CNN)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
