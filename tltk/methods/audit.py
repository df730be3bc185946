"""`tltk audit`: what is wrong with a dataset, found before any training.

It loads the data exactly as `tltk train` would (same scan, same split) and reads the
frozen backbone's pooled features from the cache the bottleneck stage trains on
(`tltk.engine.stage.frozen_features`), so a later `train` with the same settings extracts
nothing. Findings, one row each in `audit.csv`:

- `exact_duplicate`: files with the same bytes, or the same decoded pixels;
- `near_duplicate`: a pair whose pooled features reach `FEATURE_THRESHOLD` (cosine), or
  whose thumbnails reach `duplicates.PIXEL_THRESHOLD`;
- `conflicting_labels`: a duplicate group whose files sit in different classes;
- `leak`: a duplicate group spread over train/val/test of the split tltk makes;
- `label_error`: confident learning (cleanlab) on out-of-fold probabilities of a
  logistic regression on the features;
- `class_imbalance`, `tiny_image`, `extreme_aspect`, `unreadable`: from the class counts
  and the scan.

`audit.html` shows each finding's images side by side (embedded, one self-contained file).

Example::

    findings = audit(folder.config().override({"data.path": "photos"}), out="audit")
    findings.kind.value_counts()
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from tltk.data.duplicates import (
    PIXEL_THRESHOLD,
    components,
    exact_pairs,
    signatures,
    similar_pairs,
)
from tltk.errors import TltkError
from tltk.fileio import write_csv, write_text
from tltk.log import log

# Cosine of pooled features at which two images count as near duplicates. Measured on
# flowers-128 with EfficientNet-Lite0 at 128 px (4,317 images, 9.3 M pairs), judging every
# pair by eye: >= 0.95, 11 pairs, all copies; 0.92-0.95, 8 pairs, 7 copies or shots of the
# same scene; 0.90-0.92, 11 pairs, 4; 0.88-0.90, 1 of 16. Below 0.92 look-alikes dominate.
FEATURE_THRESHOLD = 0.92
TINY_SIDE = 32  # px: below this, every ImageNet backbone sees a blur of upsampled pixels
MAX_ASPECT = 3.0  # a stretch resize distorts such images more than 3:1
# A class with under a third of the largest class's images: accuracy then hides how the
# model does on it, and `--class-weight balanced` is worth trying.
MIN_CLASS_SHARE = 1 / 3
FOLDS = 5  # out-of-fold probabilities: each image is predicted by a model that never saw it
HTML_ROWS = 100  # findings per kind shown in audit.html (audit.csv has all)
SHOWN_FILES = 4  # files of one finding named on the terminal (audit.csv names all)
THUMB_PX = 128  # longest side of an image in audit.html
KINDS = ("exact_duplicate", "near_duplicate", "conflicting_labels", "leak", "label_error",
         "class_imbalance", "tiny_image", "extreme_aspect", "unreadable")


@dataclass
class Finding:
    """One row of `audit.csv`; `files`, `classes` and `splits` align, joined by ' | '."""

    kind: str
    files: list
    classes: list
    splits: list
    score: float
    detail: str

    def row(self) -> dict:
        return {**asdict(self), **{k: " | ".join(map(str, getattr(self, k)))
                                   for k in ("files", "classes", "splits")}}


@dataclass
class Items:
    """Every example of the dataset, splits concatenated in order."""

    paths: list  # original files (or `split[index]` for in-memory sources)
    labels: np.ndarray
    splits: np.ndarray
    scanned: list | None  # ScannedFile per example for folder sources, else None
    root: Path | None


def audit(config, out: str | Path | None = None, threshold: float = FEATURE_THRESHOLD,
          say=log) -> pd.DataFrame:
    """Audit the data of `config` (a recipe's config with its data, backbone and image
    size); write `audit.csv` and `audit.html` into `out`; return the findings.

    Example::

        audit(config, out="audit").groupby("kind").size()
    """
    from tltk import data as tltk_data

    start = time.time()
    dataset = tltk_data.load(config.data, seed=config.seed)
    items = _items(config, dataset)
    times = {"load": time.time() - start}
    feats = _features(config, dataset)
    times["features"] = time.time() - start - sum(times.values())
    sigs = signatures(items.root, items.scanned) if items.scanned else None
    names = dataset.class_names
    exact = _exact_groups(items, sigs, names)
    near, links = _near_pairs(items, feats, sigs, exact, threshold, names)
    groups = components(len(items.labels), links)
    suspects = _label_errors(items, feats, groups, names)
    times["duplicates and label errors"] = time.time() - start - sum(times.values())
    findings = [*exact, *near, *_group_findings(items, groups, names), *suspects,
                *_balance(items, names), *_image_checks(items, names), *_unreadable(dataset)]
    table = pd.DataFrame([f.row() for f in findings],
                         columns=["kind", "files", "classes", "splits", "score", "detail"])
    seconds = time.time() - start
    if out is not None:
        out = Path(out)
        write_csv(out / "audit.csv", table)
        write_text(out / "audit.html", _html(config, dataset, items, findings, seconds))
    for line in summary(table, items, names, seconds, out, times):
        say(line)
    return table


def _items(config, dataset) -> Items:
    paths, labels, splits = [], [], []
    scanned = _scanned(config) if config.data.dataset == "folder" else None
    for name, split in dataset.splits.items():
        labels.append(split.labels)
        splits += [name] * len(split)
        paths += split.paths or [f"{name}[{i}]" for i in range(len(split))]
    files = [scanned[p] for p in paths] if scanned else None
    return Items([f.path for f in files] if files else paths, np.concatenate(labels),
                 np.asarray(splits), files,
                 Path(config.data.path).expanduser() if files else None)


def _scanned(config) -> dict:
    """The folder's usable files by the path the pipeline reads (from the cached scan)."""
    from tltk.data.folder import scanned_files

    return {f.decode_path: f for f in scanned_files(Path(config.data.path).expanduser())}


def _features(config, dataset) -> np.ndarray:
    """Pooled features of every split, in `_items` order, through the training cache."""
    from tltk.engine.stage import frozen_features
    from tltk.models.backbones import build_backbone, check_image_size, config_backbone
    from tltk.models.heads import build_classifier

    spec = config_backbone(config)
    if not spec.pretrained:
        raise TltkError(f"--backbone: {spec.name} is untrained, so its features say nothing "
                        "about near duplicates or labels; audit with a pretrained backbone "
                        "(e.g. --backbone mobilenetv2 --weights FILE, or a .keras model file)")
    size = config.data.image_size or spec.default_size
    check_image_size(spec, size)
    backbone = build_backbone(spec, config.weights if spec.pretrained else "none", size)
    model = build_classifier(backbone, spec, dataset.num_classes, config.head)
    # What a stage reads of its run's context to find the cache: the same key as `train`.
    ctx = SimpleNamespace(config=replace(config, data=replace(config.data, image_size=size)),
                          spec=spec, dataset=dataset, model=model, image_size=size)
    return np.concatenate([np.asarray(frozen_features(ctx, name), np.float32)
                           for name in dataset.splits])


def _finding(items: Items, kind: str, members, score: float, detail: str, names) -> Finding:
    members = list(members)
    return Finding(kind, [items.paths[i] for i in members],
                   [names[items.labels[i]] for i in members],
                   [items.splits[i] for i in members], round(float(score), 4), detail)


def _exact_groups(items: Items, sigs, names) -> list[Finding]:
    """Groups of files with equal bytes (or, failing that, equal decoded pixels)."""
    if sigs is None:
        return []
    found = []
    for key, what in ((sigs.bytes_sha, "same bytes"), (sigs.pixels_sha, "same pixels")):
        group = components(len(key), exact_pairs(key))
        for g in np.unique(group[np.bincount(group)[group] > 1]):
            members = np.flatnonzero(group == g)
            if what == "same pixels" and len({sigs.bytes_sha[i] for i in members}) == 1:
                continue  # already reported as the same bytes
            found.append(_finding(items, "exact_duplicate", members, 1.0, what, names))
    return found


def _near_pairs(items: Items, feats, sigs, exact, threshold: float, names):
    """Near-duplicate pair findings, and every duplicate link (exact ones included)."""
    by_features, cosines = similar_pairs(feats, threshold)
    found = {tuple(p): f"features {c:.3f}" for p, c in zip(by_features.tolist(), cosines)}
    links = [by_features]
    if sigs is not None:
        by_pixels, thumb = similar_pairs(sigs.thumbs, PIXEL_THRESHOLD)
        for pair, score in zip(by_pixels.tolist(), thumb):
            found[tuple(pair)] = ", ".join(filter(None, [found.get(tuple(pair)),
                                                         f"thumbnails {score:.3f}"]))
        links += [by_pixels, exact_pairs(sigs.bytes_sha), exact_pairs(sigs.pixels_sha)]
    same = {frozenset(f.files) for f in exact}
    unit = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    rows = [_finding(items, "near_duplicate", pair, unit[pair[0]] @ unit[pair[1]], detail, names)
            for pair, detail in sorted(found.items())]
    rows = [r for r in rows if not any(set(r.files) <= s for s in same)]
    return sorted(rows, key=lambda r: -r.score), np.concatenate(links)


def _group_findings(items: Items, groups: np.ndarray, names) -> list[Finding]:
    """Duplicate groups across classes (conflicting labels) and across splits (leaks)."""
    found = []
    for g in np.unique(groups[np.bincount(groups)[groups] > 1]):
        members = np.flatnonzero(groups == g)
        classes = sorted({names[items.labels[i]] for i in members})
        splits = sorted(set(items.splits[members]))
        if len(classes) > 1:
            found.append(_finding(items, "conflicting_labels", members, 1.0,
                                  f"duplicates filed as {' and '.join(classes)}", names))
        if len(splits) > 1:
            found.append(_finding(items, "leak", members, 1.0,
                                  f"duplicates in {' and '.join(splits)}", names))
    return found


def _label_errors(items: Items, feats, groups, names) -> list[Finding]:
    """Likely label errors: cleanlab's confident learning on out-of-fold probabilities.

    The cheap model is a logistic regression on the (L2-normalised) pooled features, the
    linear probe of the transfer literature; folds keep duplicate groups whole, so no
    image is judged by a model that saw its copy. Files already in a conflicting-labels
    group are left out: that finding names them.
    """
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    labels = items.labels
    folds = min(FOLDS, int(np.bincount(labels).min()), len(np.unique(groups)))
    if folds < 2 or len(np.unique(labels)) < 2:
        return []
    unit = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    probs = cross_val_predict(LogisticRegression(max_iter=2000), unit, labels, groups=groups,
                              cv=StratifiedGroupKFold(folds, shuffle=True, random_state=0),
                              method="predict_proba")
    issues = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    conflicted = {i for g in np.unique(groups)
                  for i in np.flatnonzero(groups == g)
                  if len(set(labels[groups == g])) > 1}
    found = []
    for i in issues:
        if int(i) in conflicted:
            continue
        guess = int(probs[i].argmax())
        found.append(_finding(items, "label_error", [i], probs[i, labels[i]],
                              f"looks like {names[guess]} ({probs[i, guess]:.0%}); "
                              f"p({names[labels[i]]}) = {probs[i, labels[i]]:.2f}", names))
    return found


def _balance(items: Items, names) -> list[Finding]:
    counts = np.bincount(items.labels, minlength=len(names))
    return [Finding("class_imbalance", [], [name], [], round(count / counts.max(), 4),
                    f"{count} images, {count / counts.max():.0%} of the largest class "
                    f"({names[counts.argmax()]}, {counts.max()})")
            for name, count in zip(names, counts) if count < MIN_CLASS_SHARE * counts.max()]


def _image_checks(items: Items, names) -> list[Finding]:
    found = []
    for i, f in enumerate(items.scanned or []):
        short, long = sorted((f.width, f.height))
        if short < TINY_SIDE:
            found.append(_finding(items, "tiny_image", [i], short,
                                  f"{f.width}x{f.height} px", names))
        elif long / short > MAX_ASPECT:
            found.append(_finding(items, "extreme_aspect", [i], long / short,
                                  f"{f.width}x{f.height} px ({long / short:.1f}:1)", names))
    return found


def _unreadable(dataset) -> list[Finding]:
    return [Finding("unreadable", [path], [Path(path).parent.name], [], 0.0, reason)
            for path, reason in dataset.skipped]


def summary(table: pd.DataFrame, items: Items, names, seconds: float, out,
            times: dict) -> list[str]:
    """The terminal summary: counts per kind, class counts, where the files are."""
    counts = table.kind.value_counts()
    per_split = pd.Series(items.splits).value_counts()
    lines = [f"audited {len(items.labels)} images ("
             + ", ".join(f"{s} {per_split[s]}" for s in dict.fromkeys(items.splits))
             + f") in {seconds:.0f} s: "
             + ", ".join(f"{what} {t:.0f} s" for what, t in times.items()),
             "classes: " + ", ".join(f"{n} {c}" for n, c in
                                     zip(names, np.bincount(items.labels, minlength=len(names))))]
    lines += [f"  {kind:<19}{counts.get(kind, 0):>5}" for kind in KINDS]
    for kind in ("conflicting_labels", "leak", "label_error"):
        rows = table[table.kind == kind]
        for row in rows.head(3).itertuples():
            files = row.files.split(" | ")
            more = f" | ... {len(files) - SHOWN_FILES} more" if len(files) > SHOWN_FILES else ""
            lines.append(f"  {kind}: {' | '.join(files[:SHOWN_FILES])}{more} ({row.detail})")
        if len(rows) > 3:
            lines.append(f"  ... {len(rows) - 3} more {kind} rows")
    if out is not None:
        lines.append(f"wrote {Path(out) / 'audit.csv'} and {Path(out) / 'audit.html'}")
    return lines


def _thumbnail(path: str) -> str:
    """An image as an inline JPEG data URI, at most THUMB_PX on its longest side."""
    from PIL import Image

    from tltk.data.scan import to_rgb

    try:
        with Image.open(path) as image:
            image = to_rgb(image)
            image.thumbnail((THUMB_PX, THUMB_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:70em}"
         ".f{display:flex;gap:1em;align-items:flex-start;border-top:1px solid #ddd;"
         "padding:.5em 0}.f figure{margin:0;font-size:.8em;max-width:14em;"
         "overflow-wrap:anywhere}.f .d{font-size:.9em;min-width:14em}"
         "table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:right}")


def _html(config, dataset, items: Items, findings: list[Finding], seconds: float) -> str:
    esc = html.escape
    counts = pd.Series([f.kind for f in findings], dtype=object).value_counts()
    parts = [f"<h1>tltk audit: {esc(dataset.name)}</h1>",
             f"<p>{len(items.labels)} images, {len(dataset.class_names)} classes; backbone "
             f"{esc(config.backbone)} at {config.data.image_size or 'default'} px; "
             f"{seconds:.0f} s</p>",
             "<table><tr><th>kind</th><th>findings</th></tr>"
             + "".join(f"<tr><td>{k}</td><td>{counts.get(k, 0)}</td></tr>" for k in KINDS)
             + "</table>"]
    for kind in KINDS:
        rows = [f for f in findings if f.kind == kind]
        if not rows:
            continue
        shown = f" (first {HTML_ROWS}; all in audit.csv)" if len(rows) > HTML_ROWS else ""
        parts.append(f"<h2>{kind} ({len(rows)}){shown}</h2>")
        for f in rows[:HTML_ROWS]:
            figures = "".join(
                f'<figure><img src="{_thumbnail(path)}" alt=""><figcaption>{esc(Path(path).name)}'
                f"<br>{esc(cls)}{' · ' + esc(split) if split else ''}</figcaption></figure>"
                for path, cls, split in zip(f.files, f.classes, f.splits or [""] * len(f.files))
                if items.scanned and f.kind != "unreadable")
            parts.append(f'<div class="f"><div class="d">{esc(f.detail)}<br>score {f.score:g}'
                         f"<br>{esc(', '.join(f.classes))}</div>{figures}</div>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>tltk audit "
            f"{esc(dataset.name)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
